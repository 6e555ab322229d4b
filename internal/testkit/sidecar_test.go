package testkit

import (
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestSidecarBinary runs the real sidecar as a child process, as the e2e
// and deploy tests do.
func TestSidecarBinary(t *testing.T) {
	bin, err := BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := StartSidecar(t, SidecarConfig{
		Binary: bin,
		Config: "queues:\n  - {name: risk, capacity: 3, policy: block}\n",
		Args:   []string{"--telemetry-disabled"},
	})
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st["risk"].MaxSize != 3 {
		t.Errorf("/stats %+v: want the config's risk queue of capacity 3", st)
	}
	if s.Pid() == 0 || s.Exited() {
		t.Fatalf("pid %d, exited %v: want a running child process", s.Pid(), s.Exited())
	}
	if code := s.Stop(); code != 0 {
		t.Fatalf("Stop: exit %d, want 0; output:\n%s", code, s.Logs())
	}
	if !strings.Contains(s.Logs(), "drain complete") {
		t.Errorf("output lacks the drain:\n%s", s.Logs())
	}

	// Restart on the same socket without the admin listener: ready once the
	// socket accepts.
	again := StartSidecar(t, SidecarConfig{Binary: bin, Socket: s.Socket, NoAdmin: true, Args: []string{"--telemetry-disabled", "--drain-timeout", "1m"}})
	c, err := net.Dial("unix", again.Socket)
	if err != nil {
		t.Fatal(err)
	}
	// An open connection with a publish queued keeps the drain going;
	// the second SIGTERM ends it at once, killed by the signal.
	if _, err := io.WriteString(c, `{"op":"publish","id":1,"queue":"order","type":"X","payload":{}}`+"\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := again.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	Eventually(t, "the drain to start", func() bool { return strings.Contains(again.Logs(), "shutdown requested") })
	if err := again.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := again.Wait(); code != 128+int(syscall.SIGTERM) {
		t.Errorf("exit %d after the second SIGTERM, want %d; output:\n%s", code, 128+int(syscall.SIGTERM), again.Logs())
	}
}

// TestSidecarInProcess checks the command line and environment a MainFunc
// gets, and that Stop ends its context.
func TestSidecarInProcess(t *testing.T) {
	var gotArgs, gotEnv []string
	main := func(ctx context.Context, args, env []string, stdout, stderr io.Writer) int {
		gotArgs, gotEnv = args, env
		addr := args[slices.Index(args, "--admin-addr")+1]
		l, err := net.Listen("tcp", addr)
		if err != nil {
			io.WriteString(stderr, err.Error())
			return 1
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})}
		go srv.Serve(l) //nolint:errcheck // ends with Close below
		io.WriteString(stderr, "serving\n")
		<-ctx.Done()
		srv.Close()
		return 3
	}
	s := StartSidecar(t, SidecarConfig{Main: main, Config: "log_level: warn\n", Args: []string{"--drain-timeout", "1s"}, Env: []string{"A=b"}})
	if s.Pid() != 0 || s.Signal(syscall.SIGTERM) == nil {
		t.Errorf("in-process: pid %d, Signal accepted; want 0 and an error", s.Pid())
	}
	if code := s.Stop(); code != 3 {
		t.Errorf("Stop = %d, want Main's 3", code)
	}
	want := []string{"eventbus-sidecar", "serve", "--socket", s.Socket, "--admin-addr", s.AdminAddr, "--config"}
	if len(gotArgs) != len(want)+3 || !slices.Equal(gotArgs[:len(want)], want) || !slices.Equal(gotArgs[len(want)+1:], []string{"--drain-timeout", "1s"}) {
		t.Errorf("args %q, want %q, the config file, then the extra args", gotArgs, want)
	}
	if !slices.Equal(gotEnv, []string{"A=b"}) {
		t.Errorf("env %q, want only the configured A=b", gotEnv)
	}
	if s.Logs() != "serving\n" {
		t.Errorf("Logs() = %q", s.Logs())
	}
}
