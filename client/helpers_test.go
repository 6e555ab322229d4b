package client

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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
	if queues == nil {
		queues = bus.DefaultQueues()
	}
	b, err := bus.New(queues, opts...)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := transport.New(transport.Config{Bus: b})
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

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}
