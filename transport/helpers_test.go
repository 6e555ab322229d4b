package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// testTimeout bounds every wait in these tests; it is a safety net, not a
// timing assertion.
const testTimeout = 10 * time.Second

type testServer struct {
	srv    *Server
	bus    *bus.Bus
	path   string
	served chan error
}

type serverOpt func(*Config, *[]bus.QueueConfig, *[]bus.Option)

func withQueues(qs ...bus.QueueConfig) serverOpt {
	return func(_ *Config, q *[]bus.QueueConfig, _ *[]bus.Option) { *q = qs }
}

func withConfig(f func(*Config)) serverOpt {
	return func(c *Config, _ *[]bus.QueueConfig, _ *[]bus.Option) { f(c) }
}

func withBusOptions(opts ...bus.Option) serverOpt {
	return func(_ *Config, _ *[]bus.QueueConfig, o *[]bus.Option) { *o = append(*o, opts...) }
}

// startServer runs a real bus behind a real server on a socket in a fresh
// temporary directory, and stops both when the test ends.
func startServer(t testing.TB, opts ...serverOpt) *testServer {
	t.Helper()
	queues := bus.DefaultQueues()
	var cfg Config
	var busOpts []bus.Option
	for _, o := range opts {
		o(&cfg, &queues, &busOpts)
	}
	b, err := bus.New(queues, busOpts...)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Bus = b
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(shortTempDir(t), "bus.sock")
	l, err := Listen(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, bus: b, path: path, served: make(chan error, 1)}
	go func() { ts.served <- srv.Serve(l) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

func (ts *testServer) stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Errorf("server shutdown: %v", err)
	}
	if err := <-ts.served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	ts.bus.Shutdown(short) //nolint:errcheck // leftovers are expected in some tests
}

// shortTempDir returns a temporary directory with a short path: socket
// paths are limited to 108 bytes and t.TempDir() names can be long.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ebt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// rawClient speaks the protocol line by line, the way a client in another
// language would.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, path string) *rawClient {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawClient{t: t, nc: nc, br: bufio.NewReaderSize(nc, 1<<16)}
}

func (c *rawClient) send(format string, args ...any) {
	c.t.Helper()
	line := fmt.Sprintf(format, args...)
	if !strings.HasSuffix(line, "\n") {
		line += "\n"
	}
	c.nc.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := c.nc.Write([]byte(line)); err != nil {
		c.t.Fatalf("send %q: %v", line, err)
	}
}

// recvLine returns the next frame from the server.
func (c *rawClient) recvLine() string {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(testTimeout))
	line, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("receive: %v (partial %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n")
}

func (c *rawClient) recv() protocol.Message {
	c.t.Helper()
	line := c.recvLine()
	m, err := protocol.DecodeMessage([]byte(line))
	if err != nil {
		c.t.Fatalf("decode %q: %v", line, err)
	}
	// Keep raw fields valid after the next read.
	m.Deliver.Payload = append([]byte(nil), m.Deliver.Payload...)
	m.Stats = append([]byte(nil), m.Stats...)
	return m
}

// roundTrip sends a request and returns the reply with its id, failing on
// any other frame in between.
func (c *rawClient) roundTrip(format string, args ...any) protocol.Message {
	c.t.Helper()
	c.send(format, args...)
	return c.recv()
}

func (c *rawClient) expectReply(m protocol.Message, id int64, st protocol.Status) {
	c.t.Helper()
	if !m.HasID || m.ID != id || m.Status != st {
		c.t.Fatalf("got %+v, want reply id %d status %s", m, id, st)
	}
}

func (c *rawClient) expectEOF() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(testTimeout))
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.t.Fatalf("connection still open after %v", testTimeout)
			}
			return
		}
		_ = line
	}
}

// eventually polls cond until it holds or testTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// manualClock is a bus.Clock whose timers fire only when Advance passes
// them, so queue timeouts are driven by the test instead of by sleeps.
type manualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

type manualTimer struct {
	clk     *manualClock
	at      time.Time
	f       func()
	stopped bool
}

func newManualClock() *manualClock {
	return &manualClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) AfterFunc(d time.Duration, f func()) bus.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	tm := &manualTimer{clk: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, tm)
	return tm
}

func (tm *manualTimer) Stop() bool {
	tm.clk.mu.Lock()
	defer tm.clk.mu.Unlock()
	was := !tm.stopped
	tm.stopped = true
	return was
}

// Advance moves the clock on by d and runs, in the order they were set, the
// timers that fall due, each in its own goroutine as time.AfterFunc does.
func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*manualTimer
	kept := c.timers[:0]
	for _, tm := range c.timers {
		switch {
		case tm.stopped:
		case !tm.at.After(c.now):
			tm.stopped = true
			due = append(due, tm)
		default:
			kept = append(kept, tm)
		}
	}
	clear(c.timers[len(kept):])
	c.timers = kept
	c.mu.Unlock()
	for _, tm := range due {
		go tm.f()
	}
}

// onlyConn returns the server's single open connection.
func (ts *testServer) onlyConn(t *testing.T) *conn {
	t.Helper()
	var c *conn
	eventually(t, "one connection", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		if len(ts.srv.conns) != 1 {
			return false
		}
		for k := range ts.srv.conns {
			c = k
		}
		return true
	})
	return c
}

// readerHeldByWaitCap reports whether c's read loop is parked because
// MaxWaitingPublishes of its publishes are waiting.
func (c *conn) readerHeldByWaitCap() bool {
	return c.waits.heldAt(c.s.cfg.MaxWaitingPublishes)
}
