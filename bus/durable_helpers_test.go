package bus_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// faultFS is the real file system with faults switched on and off by the
// test: a full disk (every write fails with ENOSPC) and a gate that holds
// every fdatasync (or those of the files under one directory) until it is
// opened.
type faultFS struct {
	wal.OSFS
	mu        sync.Mutex
	full      bool
	gate      chan struct{} // nil: syncs pass
	gateUnder string        // "": the gate holds every sync
	syncs     int
	// failing fails the fdatasyncs (EIO), and with failWrites the writes
	// too (ENOSPC), of files whose path contains it; failures counts them.
	failing    string
	failWrites bool
	failures   int
}

// failUnder makes the fdatasyncs of files whose path contains dir fail,
// and with writes their writes too, until the returned func is called.
func (f *faultFS) failUnder(dir string, writes bool) (recover func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing, f.failWrites = dir, writes
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.failing, f.failWrites = "", false
	}
}

func (f *faultFS) failureCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failures
}

// fails reports whether an operation on name fails now, and counts it.
// Called with f.mu held.
func (f *faultFS) failsLocked(name string, write bool) bool {
	if f.failing == "" || !strings.Contains(name, f.failing) || write && !f.failWrites {
		return false
	}
	f.failures++
	return true
}

func (f *faultFS) syncCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncs
}

func (f *faultFS) setFull(full bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.full = full
}

// holdSyncs makes every fdatasync wait until the returned func is called.
func (f *faultFS) holdSyncs() (open func()) { return f.holdSyncsUnder("") }

// holdSyncsUnder makes the fdatasyncs of files whose path contains dir
// wait until the returned func (which may be called again) is called;
// syncCount then counts only them.
func (f *faultFS) holdSyncsUnder(dir string) (open func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := make(chan struct{})
	f.gate, f.gateUnder, f.syncs = g, dir, 0
	return sync.OnceFunc(func() {
		f.mu.Lock()
		f.gate = nil
		f.mu.Unlock()
		close(g)
	})
}

func (f *faultFS) OpenFile(name string, flag int, perm os.FileMode) (wal.File, error) {
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f, name: name}, nil
}

type faultFile struct {
	wal.File
	fs   *faultFS
	name string
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	full := f.fs.full || f.fs.failsLocked(f.name, true)
	f.fs.mu.Unlock()
	if full {
		return 0, &os.PathError{Op: "write", Path: "segment", Err: syscall.ENOSPC}
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	f.fs.mu.Lock()
	g := f.fs.gate
	if !strings.Contains(f.name, f.fs.gateUnder) {
		g = nil
	} else {
		f.fs.syncs++
	}
	failed := f.fs.failsLocked(f.name, false)
	f.fs.mu.Unlock()
	if g != nil {
		<-g
	}
	if failed {
		return &os.PathError{Op: "fdatasync", Path: f.name, Err: syscall.EIO}
	}
	return f.File.Sync()
}

// durableQueues is one durable blocking queue "order", one memory queue
// "data" and a durable dead-letter queue "dlq" for order's events past
// two deliveries.
func durableQueues() []bus.QueueConfig {
	return []bus.QueueConfig{
		{Name: "order", Capacity: 64, Policy: bus.PolicyBlock, Durable: true, MaxDeliveries: 2, DeadLetter: "dlq"},
		{Name: "data", Capacity: 64, Policy: bus.PolicyBlock},
		{Name: "dlq", Capacity: 4, Policy: bus.PolicyBlock, Durable: true},
	}
}

// openDurable builds a bus on dir with a fake clock; stop shuts it down
// (also at cleanup) as a restart would, leaving what is undelivered in the
// logs.
func openDurable(t *testing.T, dir string, queues []bus.QueueConfig, clk *testkit.Clock, opts ...bus.Option) (b *bus.Bus, stop func()) {
	t.Helper()
	b, err := bus.New(queues, append([]bus.Option{bus.WithClock(clk), bus.WithDataDir(dir)}, opts...)...)
	if err != nil {
		t.Fatalf("New on %s: %v", dir, err)
	}
	stop = func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // like a crash: do not wait for consumers
		_, _ = b.Shutdown(ctx)
	}
	t.Cleanup(stop)
	return b, stop
}

func publishID(t *testing.T, b *bus.Bus, queue string, id int, msgID string) bus.Outcome {
	t.Helper()
	ev := event("ORDER", id)
	ev.MsgID = msgID
	out, err := b.Publish(context.Background(), ev, queue)
	if err != nil {
		t.Fatalf("publish %d (msg id %q) to %s: %v, %v", id, msgID, queue, out, err)
	}
	return out
}
