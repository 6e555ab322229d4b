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
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
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
// temporary directory, and stops both when the test ends. It stays here,
// not in testkit: testkit cannot import transport while these tests, in
// package transport, import testkit.
func startServer(t testing.TB, opts ...serverOpt) *testServer {
	t.Helper()
	ts := runServer(t, opts...)
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// runServer is startServer for a caller that stops the server itself.
func runServer(t testing.TB, opts ...serverOpt) *testServer {
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
	path := filepath.Join(testkit.ShortTempDir(t), "bus.sock")
	l, err := Listen(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, bus: b, path: path, served: make(chan error, 1)}
	go func() { ts.served <- srv.Serve(l) }()
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

// onlyConn returns the server's single open connection.
func (ts *testServer) onlyConn(t *testing.T) *conn {
	t.Helper()
	var c *conn
	testkit.Eventually(t, "one connection", func() bool {
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

// gone reports whether the server has forgotten every connection: not
// only stopped counting it (Connections drops as soon as a connection
// starts closing), but ended its goroutines and counted its close.
func (ts *testServer) gone() bool {
	ts.srv.mu.Lock()
	defer ts.srv.mu.Unlock()
	return len(ts.srv.conns) == 0
}

// readerHeldByWaitCap reports whether c's read loop is parked because
// MaxWaitingPublishes of its publishes are waiting.
func (c *conn) readerHeldByWaitCap() bool {
	return c.waits.heldAt(c.s.cfg.MaxWaitingPublishes)
}
