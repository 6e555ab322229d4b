package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// testTimeout bounds every wait; it is a safety net, not a timing assertion.
const testTimeout = 10 * time.Second

// sidecar is a real bus behind a real transport server on a real socket.
type sidecar struct {
	bus    *bus.Bus
	srv    *transport.Server
	path   string
	served chan error
}

func smallQueues() []bus.QueueConfig {
	return []bus.QueueConfig{
		{Name: "data", Capacity: 4, Policy: bus.PolicyDrop, Timeout: 20 * time.Millisecond},
		{Name: "signal", Capacity: 2, Policy: bus.PolicyFail, Timeout: 20 * time.Millisecond},
		{Name: "order", Capacity: 1, Policy: bus.PolicyBlock},
	}
}

// startSidecar serves queues (default: the seed's) on path, or on a fresh
// path when path is "".
func startSidecar(t testing.TB, path string, queues []bus.QueueConfig, opts ...bus.Option) *sidecar {
	t.Helper()
	return startSidecarConfig(t, path, transport.Config{}, queues, opts...)
}

// startSidecarConfig is startSidecar with the transport configured by cfg
// (its Bus is set here).
func startSidecarConfig(t testing.TB, path string, cfg transport.Config, queues []bus.QueueConfig, opts ...bus.Option) *sidecar {
	t.Helper()
	if queues == nil {
		queues = bus.DefaultQueues()
	}
	b, err := bus.New(queues, opts...)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Bus = b
	srv, err := transport.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if path == "" {
		dir, err := os.MkdirTemp("", "ebc")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		path = filepath.Join(dir, "bus.sock")
	}
	l, err := transport.Listen(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	sc := &sidecar{bus: b, srv: srv, path: path, served: make(chan error, 1)}
	go func() { sc.served <- srv.Serve(l) }()
	t.Cleanup(func() { sc.stop(t) })
	return sc
}

// stop shuts the sidecar down; calling it twice is harmless.
func (sc *sidecar) stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := sc.srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	select {
	case err := <-sc.served:
		if !errors.Is(err, transport.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	default:
	}
	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	sc.bus.Shutdown(short) //nolint:errcheck // leftovers are expected in some tests
}

func dial(t testing.TB, path string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func dialWith(t testing.TB, path string, opts ...Option) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// connected reports whether c has a working connection right now.
func connected(c *Client) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cn != nil
}

// relay forwards connections from its own socket to a sidecar's, and can
// cut them all at once: the connection drops as in a crash, without a
// final reply, while the sidecar lives on and takes back what the
// connection held.
type relay struct {
	path string
	l    net.Listener
	wg   sync.WaitGroup

	mu     sync.Mutex
	target string // where new connections go (retarget)
	conns  map[net.Conn]struct{}
	closed bool
}

func startRelay(t testing.TB, target string) *relay {
	t.Helper()
	dir, err := os.MkdirTemp("", "ebr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &relay{path: filepath.Join(dir, "relay.sock"), target: target, conns: make(map[net.Conn]struct{})}
	if r.l, err = net.Listen("unix", r.path); err != nil {
		t.Fatal(err)
	}
	r.wg.Go(r.accept)
	t.Cleanup(func() {
		r.l.Close()
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.cut()
		r.wg.Wait()
	})
	return r
}

func (r *relay) accept() {
	for {
		down, err := r.l.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		target := r.target
		r.mu.Unlock()
		up, err := net.Dial("unix", target)
		if err != nil {
			down.Close()
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			down.Close()
			up.Close()
			return
		}
		r.conns[down], r.conns[up] = struct{}{}, struct{}{}
		r.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src) //nolint:errcheck // either side closing ends the relay
			dst.Close()
			src.Close()
		}
		r.wg.Go(func() { pipe(up, down) })
		r.wg.Go(func() { pipe(down, up) })
	}
}

// retarget sends the connections accepted from now on to another socket.
func (r *relay) retarget(path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target = path
}

// cut closes every relayed connection, on both sides.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
	}
	clear(r.conns)
}

// logRecorder keeps the client's log records for the test to read.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// records returns the records whose message is msg.
func (h *logRecorder) records(msg string) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.recs {
		if r.Message == msg {
			out = append(out, r)
		}
	}
	return out
}

// attr returns r's attribute key.
func attr(r slog.Record, key string) slog.Value {
	var v slog.Value
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value
			return false
		}
		return true
	})
	return v
}
