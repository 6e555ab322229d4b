package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// BinaryEnv names a prebuilt sidecar binary for BuildSidecar to return
// instead of building one (a CI step that built it already, say).
const BinaryEnv = "EVENTBUS_SIDECAR_BIN"

// BuildSidecar compiles the module's eventbus-sidecar command into dir and
// returns the binary's path, or returns $EVENTBUS_SIDECAR_BIN when set. A
// package that starts many sidecars builds once, in TestMain; one that
// starts one can pass t.TempDir().
func BuildSidecar(ctx context.Context, dir string) (string, error) {
	if bin := os.Getenv(BinaryEnv); bin != "" {
		return filepath.Abs(bin)
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "eventbus-sidecar")
	// The tags the Makefile and the image build with (BUILD_TAGS there), so
	// that memory tests measure the binary that ships.
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "urfave_cli_no_docs", "-o", bin, ".")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

// moduleRoot is the root module's directory: this file is
// internal/testkit/sidecar.go under it. Tests of the modules under deploy/
// reach this file through a replace directive, so the path is still the
// checkout's.
func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("testkit: cannot locate the module root: no caller information")
	}
	root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("testkit: module root %s: %w", root, err)
	}
	return root, nil
}

// MainFunc runs the sidecar's command line in-process: args[0] is the
// program name, env holds KEY=VALUE pairs. It returns the exit code, and
// must return once ctx ends, which is the in-process SIGTERM.
type MainFunc func(ctx context.Context, args, env []string, stdout, stderr io.Writer) int

// SidecarConfig says how StartSidecar runs a sidecar. Exactly one of
// Binary and Main must be set.
type SidecarConfig struct {
	// Binary is the executable to run as a child process (see BuildSidecar).
	Binary string
	// Main runs the sidecar in the test's own process instead, so that the
	// race detector and coverage see it.
	Main MainFunc
	// Config is the body of a YAML config file passed with --config; empty
	// passes none, so the embedded defaults apply.
	Config string
	// Args follow serve's --socket, --admin-addr and --config flags, so
	// they override them.
	Args []string
	// Env adds KEY=VALUE variables. A child process gets the test's own
	// environment without OTEL_* and EVENTBUS_* (a developer's settings
	// must not send test data to a real collector) plus these; Main gets
	// these only.
	Env []string
	// Socket is the socket path; empty takes a fresh one in a temporary
	// directory. Set it to restart on the path of a sidecar that stopped.
	Socket string
	// NoAdmin turns the admin listener off; the sidecar is then ready when
	// its socket accepts a connection instead of when /readyz answers 200.
	NoAdmin bool
}

// Sidecar is a running sidecar started by StartSidecar.
type Sidecar struct {
	// Socket is the Unix socket the sidecar serves.
	Socket string
	// AdminAddr is the admin listener's host:port; empty with NoAdmin.
	AdminAddr string

	logs    *SyncBuffer
	proc    *os.Process // nil in-process
	cancel  context.CancelFunc
	done    chan struct{}
	code    int // valid once done is closed
	stopped sync.Once
	waited  atomic.Bool // Wait returned, so the test has the exit code
}

// stopPatience bounds how long Stop waits for a child process to drain
// and exit before it kills it.
const stopPatience = 30 * time.Second

// StartSidecar runs `serve` on a temporary socket (and a free loopback port
// for the admin listener), waits until it is ready, and stops it when the
// test ends, failing the test if it then exits with a code other than 0
// (unless the test took the exit code itself from Stop or Wait). A
// sidecar that exits during start-up fails the test with its output, and
// the output of any sidecar is logged when its test failed.
func StartSidecar(t testing.TB, cfg SidecarConfig) *Sidecar {
	t.Helper()
	if (cfg.Binary == "") == (cfg.Main == nil) {
		t.Fatalf("testkit.StartSidecar: set exactly one of Binary (%q) and Main (set: %v)", cfg.Binary, cfg.Main != nil)
	}
	s := &Sidecar{Socket: cfg.Socket, logs: &SyncBuffer{}, done: make(chan struct{})}
	if s.Socket == "" {
		s.Socket = filepath.Join(ShortTempDir(t), "s.sock")
	}
	args := []string{"serve", "--socket", s.Socket, "--admin-addr", "off"}
	if !cfg.NoAdmin {
		s.AdminAddr = FreeAddr(t)
		args[len(args)-1] = s.AdminAddr
	}
	if cfg.Config != "" {
		file := filepath.Join(ShortTempDir(t), "config.yaml")
		if err := os.WriteFile(file, []byte(cfg.Config), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", file)
	}
	args = append(args, cfg.Args...)

	if cfg.Main != nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.cancel = cancel
		go func() {
			defer close(s.done)
			s.code = cfg.Main(ctx, append([]string{"eventbus-sidecar"}, args...), cfg.Env, s.logs, s.logs)
		}()
	} else {
		cmd := exec.Command(cfg.Binary, args...)
		cmd.Env = append(cleanEnv(os.Environ()), cfg.Env...)
		cmd.Stdout, cmd.Stderr = s.logs, s.logs
		// A test binary killed by its -timeout takes its sidecars with it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting %s: %v", cfg.Binary, err)
		}
		s.proc = cmd.Process
		go func() {
			defer close(s.done)
			_ = cmd.Wait()
			s.code = exitCode(cmd.ProcessState)
		}()
	}
	t.Cleanup(func() {
		// A test that waited for the exit has seen the code and judged it.
		if !s.waited.Load() {
			if code := s.Stop(); code != 0 {
				t.Errorf("sidecar on %s exited %d", s.Socket, code)
			}
		}
		if t.Failed() {
			t.Logf("sidecar on %s, output:\n%s", s.Socket, tail(s.Logs(), 80))
		}
	})
	Eventually(t, "the sidecar on "+s.Socket+" to be ready", func() error {
		if s.Exited() {
			t.Fatalf("sidecar exited %d during start-up; output:\n%s", s.Wait(), s.Logs())
		}
		return s.ready()
	})
	return s
}

// ready reports whether the sidecar serves: /readyz answers 200, or,
// without the admin listener, the socket accepts a connection.
func (s *Sidecar) ready() error {
	if s.AdminAddr == "" {
		c, err := net.Dial("unix", s.Socket)
		if err != nil {
			return err
		}
		return c.Close()
	}
	code, body, err := s.get("/readyz")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("/readyz answered %d %q", code, body)
	}
	return nil
}

// Stop ends the sidecar the way an orchestrator does (SIGTERM, or ending
// Main's context in-process), waits for the drain and returns the exit
// code. Calling it again, or after Signal(SIGTERM), only waits: a second
// SIGTERM would force the exit. A child process that has not exited after
// stopPatience is killed.
func (s *Sidecar) Stop() int {
	s.interrupt()
	if s.proc != nil {
		select {
		case <-s.done:
		case <-time.After(stopPatience):
			_ = s.proc.Kill()
		}
	}
	return s.Wait()
}

func (s *Sidecar) interrupt() {
	s.stopped.Do(func() {
		if s.proc != nil {
			_ = s.proc.Signal(syscall.SIGTERM)
			return
		}
		s.cancel()
	})
}

// Signal sends sig to a sidecar running as a child process. SIGTERM and
// SIGINT count as the Stop signal, so that Stop does not send a second.
func (s *Sidecar) Signal(sig syscall.Signal) error {
	if s.proc == nil {
		return fmt.Errorf("testkit: signal %v: the sidecar runs in-process; use Stop", sig)
	}
	if sig == syscall.SIGTERM || sig == syscall.SIGINT {
		s.stopped.Do(func() {}) // Stop must not send a second one
	}
	return s.proc.Signal(sig)
}

// Wait waits until the sidecar exits and returns its exit code: 128+n for
// a child process killed by signal n, as a shell reports it.
func (s *Sidecar) Wait() int {
	<-s.done
	s.waited.Store(true)
	return s.code
}

// Exited reports, without waiting, whether the sidecar has exited.
func (s *Sidecar) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Pid is the child process's id; 0 in-process.
func (s *Sidecar) Pid() int {
	if s.proc == nil {
		return 0
	}
	return s.proc.Pid
}

// Logs returns what the sidecar wrote to stdout and stderr so far.
func (s *Sidecar) Logs() string { return s.logs.String() }

// Stats returns the bus statistics from the admin listener's /stats.
func (s *Sidecar) Stats() (bus.Stats, error) {
	if s.AdminAddr == "" {
		return nil, errors.New("testkit: stats: the sidecar runs without the admin listener")
	}
	code, body, err := s.get("/stats")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("/stats answered %d %q", code, body)
	}
	var st bus.Stats
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return nil, fmt.Errorf("/stats: %w in %q", err, body)
	}
	return st, nil
}

// get fetches path from the admin listener on a connection of its own, so
// that no keep-alive goroutine outlives the request (goleak checks).
func (s *Sidecar) get(path string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + s.AdminAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// exitCode maps a finished process's state to a shell's exit status.
func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// cleanEnv drops the variables that would point a test's sidecar at a real
// collector or override its config.
func cleanEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "OTEL_") && !strings.HasPrefix(kv, "EVENTBUS_") {
			out = append(out, kv)
		}
	}
	return out
}

// ShortTempDir returns a fresh temporary directory with a short path,
// removed when the test ends: a Unix socket path is limited to 107 bytes
// and t.TempDir() paths, which contain the test's name, can be longer.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ebs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// FreeAddr returns a loopback host:port that nothing listened on a moment
// ago. Another process may take it before the caller binds it; tests accept
// that small chance for a server whose port must be known before it starts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// SyncBuffer is a bytes.Buffer that a process or logger writes while a
// test reads it: a log sink for code under test.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns the written lines that contain substr.
func (b *SyncBuffer) Lines(substr string) []string {
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
