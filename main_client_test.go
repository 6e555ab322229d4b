package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestShellTour is the README's tour, in-process: publish, consume and
// stats against a real sidecar over its socket.
func TestShellTour(t *testing.T) {
	s := startSidecar(t, "--config", writeConfig(t, "queues:\n  - {name: risk, capacity: 2, policy: fail, timeout: 50ms}\nroutes:\n  RISK_LIMIT: risk\n"))
	sock := []string{"--socket", s.Socket}

	code, out, stderr := cmd(t, "", append([]string{"publish", "--type", "ORDER_PLACED", "--payload", `{"symbol":"AAPL","qty":10}`}, sock...)...)
	if code != 0 || !strings.Contains(out, `"status":"accepted"`) {
		t.Fatalf("publish: exit %d, out %q, err %q", code, out, stderr)
	}

	ndjson := `{"type":"CANDLE_UPDATE","payload":{"close":1.5}}
{"type":"RISK_LIMIT","payload":1}
{"type":"RISK_LIMIT","payload":2}
{"type":"RISK_LIMIT","payload":3}
{"type":"X","queue":"nope","payload":null}
{"op":"publish","id":7,"type":"ORDER_FILLED","queue":"signal","payload":{}}
not json
{"op":"stats","id":8}
`
	code, out, _ = cmd(t, ndjson, append([]string{"publish"}, sock...)...)
	if code != exitFailed {
		t.Errorf("publish with a timeout and an unknown queue: exit %d, want %d", code, exitFailed)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	wantStatus := []string{"accepted", "accepted", "accepted", "timeout", "error", "accepted", "error", "error"}
	if len(lines) != len(wantStatus) {
		t.Fatalf("publish printed %d replies, want %d:\n%s", len(lines), len(wantStatus), out)
	}
	for i, l := range lines {
		var r publishResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("reply %d %q: %v", i, l, err)
		}
		if r.Status != wantStatus[i] {
			t.Errorf("reply %d status %q, want %q (%s)", i, r.Status, wantStatus[i], l)
		}
	}
	if !strings.Contains(lines[4], "nope") || !strings.Contains(lines[4], "data, signal, order, risk") {
		t.Errorf("unknown queue reply should name the queue and the valid ones: %s", lines[4])
	}

	code, out, stderr = cmd(t, "", append([]string{"stats", "--json"}, sock...)...)
	var st bus.Stats
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("stats --json: exit %d, %v, %q %q", code, err, out, stderr)
	}
	if !strings.Contains(lines[6], "stdin line 7") || !strings.Contains(lines[7], `op \"stats\"`) {
		t.Errorf("bad stdin lines should be reported with their line number and problem:\n%s\n%s", lines[6], lines[7])
	}
	if st["order"].Size != 1 || st["risk"].Size != 2 || st["risk"].Timeouts != 1 || st["data"].Size != 1 || st["signal"].Size != 1 {
		t.Errorf("stats after publishing: %+v", st)
	}

	code, out, stderr = cmd(t, "", append([]string{"consume", "--queue", "order", "--count", "1", "--timeout", "20s"}, sock...)...)
	if code != 0 {
		t.Fatalf("consume: exit %d, %q", code, stderr)
	}
	var d deliveryLine
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &d); err != nil {
		t.Fatalf("consume printed %q: %v", out, err)
	}
	if d.Queue != "order" || d.Type != "ORDER_PLACED" || string(d.Payload) != `{"symbol":"AAPL","qty":10}` || d.Redelivered {
		t.Errorf("delivery %+v", d)
	}

	code, out, _ = cmd(t, "", append([]string{"stats"}, sock...)...)
	if code != 0 {
		t.Fatalf("stats: exit %d", code)
	}
	if !strings.Contains(out, "QUEUE") || !strings.Contains(out, "risk") {
		t.Errorf("stats table:\n%s", out)
	}
	testkit.Eventually(t, "the consumed order to be acked", func() bool {
		_, out, _ := cmd(t, "", append([]string{"stats", "--json"}, sock...)...)
		var st bus.Stats
		return json.Unmarshal([]byte(out), &st) == nil && st["order"].Acked == 1 && st["order"].Size == 0
	})
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "eventbus.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClientCommandsWithoutSidecar(t *testing.T) {
	sock := socketPath(t)
	for _, args := range [][]string{
		{"stats", "--socket", sock},
		{"publish", "--type", "X", "--socket", sock},
		{"consume", "--socket", sock},
	} {
		code, _, stderr := cmd(t, "", args...)
		if code != exitFailed || !strings.Contains(stderr, "is `eventbus-sidecar serve` running?") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

// TestBinary runs the real binary: SIGTERM drains and exits 0 logging what
// was left, a live socket is never stolen, a second signal forces exit.
func TestBinary(t *testing.T) {
	bin, err := testkit.BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	start := func(t *testing.T, args ...string) *testkit.Sidecar {
		t.Helper()
		return testkit.StartSidecar(t, testkit.SidecarConfig{Binary: bin, NoAdmin: true, Args: args})
	}

	t.Run("SIGTERM drains, logs undelivered per queue, exits 0", func(t *testing.T) {
		p := start(t, "--drain-timeout", "300ms")
		for range 2 {
			if code, out, stderr := cmd(t, "", "publish", "--socket", p.Socket, "--type", "SIGNAL_GENERATED"); code != 0 {
				t.Fatalf("publish: %d %s %s", code, out, stderr)
			}
		}
		if code := p.Stop(); code != 0 {
			t.Errorf("exit code %d, want 0; stderr:\n%s", code, p.Logs())
		}
		log := p.Logs()
		for _, w := range []string{"shutdown requested", "undelivered.signal=2", "undelivered.data=0", "undelivered.order=0", "eventbus-sidecar stopped"} {
			if !strings.Contains(log, w) {
				t.Errorf("log lacks %q:\n%s", w, log)
			}
		}
		// "stopped" comes after everything else, the telemetry flush too.
		lines := strings.Split(strings.TrimSpace(log), "\n")
		if last := lines[len(lines)-1]; !strings.Contains(last, "eventbus-sidecar stopped") {
			t.Errorf("last log line is %q, want the stopped line", last)
		}
		if _, err := os.Stat(p.Socket); !os.IsNotExist(err) {
			t.Errorf("socket file left behind: %v", err)
		}
	})

	t.Run("publishes are refused while draining, consumers still receive", func(t *testing.T) {
		p := start(t, "--drain-timeout", "1m")
		sock := p.Socket
		if code, _, stderr := cmd(t, "", "publish", "--socket", sock, "--type", "ORDER_PLACED", "--count", "3"); code != 0 {
			t.Fatalf("publish: %s", stderr)
		}
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, "draining", func() bool { return strings.Contains(p.Logs(), "shutdown requested") })
		code, out, _ := cmd(t, "", "publish", "--socket", sock, "--type", "ORDER_PLACED")
		if code != exitFailed || !strings.Contains(out, "shutting down") {
			t.Errorf("publish while draining: exit %d, %q; want an error reply saying shutting down", code, out)
		}
		code, out, stderr := cmd(t, "", "consume", "--socket", sock, "--queue", "order", "--count", "3", "--timeout", "20s")
		if code != 0 || strings.Count(out, `"op":"deliver"`) != 3 {
			t.Errorf("consume while draining: exit %d, %q %q", code, out, stderr)
		}
		if code := p.Wait(); code != 0 || !strings.Contains(p.Logs(), "drain complete") {
			t.Errorf("exit %d; stderr:\n%s", code, p.Logs())
		}
	})

	t.Run("a live socket is not stolen", func(t *testing.T) {
		first := start(t)
		sock := first.Socket
		second := exec.Command(bin, "serve", "--socket", sock, "--admin-addr", "off")
		second.Env = []string{}
		out, err := second.CombinedOutput()
		if second.ProcessState == nil || second.ProcessState.ExitCode() != exitFailed {
			t.Errorf("second serve: %v, want exit 1:\n%s", err, out)
		}
		if !strings.Contains(string(out), "in use") || !strings.Contains(string(out), sock) {
			t.Errorf("second serve should say the socket is in use:\n%s", out)
		}
		if first.Exited() {
			t.Fatalf("first sidecar died:\n%s", first.Logs())
		}
		if code, _, stderr := cmd(t, "", "stats", "--socket", sock); code != 0 {
			t.Errorf("first sidecar no longer answers: %s", stderr)
		}
	})

	t.Run("a second signal forces exit", func(t *testing.T) {
		p := start(t, "--drain-timeout", "10m")
		if code, _, stderr := cmd(t, "", "publish", "--socket", p.Socket, "--type", "ORDER_PLACED"); code != 0 {
			t.Fatalf("publish: %s", stderr)
		}
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, "draining", func() bool { return strings.Contains(p.Logs(), "shutdown requested") })
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// testkit reports a process killed by signal n as 128+n.
		if code := p.Wait(); code != 128+int(syscall.SIGTERM) {
			t.Errorf("exit %d, want %d: killed by the second SIGTERM; stderr:\n%s", code, 128+int(syscall.SIGTERM), p.Logs())
		}
	})
}

// TestTraceparentThroughCLI: publish --traceparent parents the event, and
// consume prints a traceparent in the same trace.
func TestTraceparentThroughCLI(t *testing.T) {
	s := startSidecar(t)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	tp := "00-" + traceID + "-00f067aa0ba902b7-01"
	if code, out, stderr := cmd(t, "", "publish", "--socket", s.Socket, "--type", "ORDER_PLACED", "--traceparent", tp); code != 0 {
		t.Fatalf("publish: %d %s %s", code, out, stderr)
	}
	code, out, stderr := cmd(t, "", "consume", "--socket", s.Socket, "--queue", "order", "--count", "1", "--timeout", "20s")
	if code != 0 {
		t.Fatalf("consume: %d %s", code, stderr)
	}
	var d deliveryLine
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	if !strings.HasPrefix(d.Traceparent, "00-"+traceID+"-") {
		t.Errorf("delivery traceparent %q, want trace %s", d.Traceparent, traceID)
	}
}

// TestReadinessWhileDraining: once shutdown starts /readyz answers 503
// (orchestrators stop routing work here) while /healthz stays 200 and the
// drain goes on until a consumer empties the queue.
func TestReadinessWhileDraining(t *testing.T) {
	s := startSidecar(t, "--drain-timeout", "1m")
	if code, _, stderr := cmd(t, "", "publish", "--socket", s.Socket, "--type", "ORDER_PLACED"); code != 0 {
		t.Fatalf("publish: %s", stderr)
	}
	status := func(path string) int {
		resp, err := http.Get("http://" + s.AdminAddr + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("/readyz"); got != http.StatusOK {
		t.Fatalf("/readyz before shutdown = %d", got)
	}
	exit := make(chan int, 1)
	go func() { exit <- s.Stop() }()
	testkit.Eventually(t, "/readyz to answer 503", func() bool { return status("/readyz") == http.StatusServiceUnavailable })
	if got := status("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz while draining = %d, want 200", got)
	}
	if code, out, stderr := cmd(t, "", "consume", "--socket", s.Socket, "--queue", "order", "--count", "1", "--timeout", "20s"); code != 0 || !strings.Contains(out, "ORDER_PLACED") {
		t.Fatalf("consume while draining: %d %q %q", code, out, stderr)
	}
	if code := <-exit; code != 0 {
		t.Errorf("exit %d:\n%s", code, s.Logs())
	}
	if !strings.Contains(s.Logs(), "drain complete") {
		t.Errorf("log lacks drain complete:\n%s", s.Logs())
	}
}
