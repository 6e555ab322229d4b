package wal

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestSyncAsyncWaitsForAnFdatasync checks that SyncAsync answers only
// after an fdatasync that covers what the log took before it, in both
// fsync modes, and without one when nothing was written since the last.
func TestSyncAsyncWaitsForAnFdatasync(t *testing.T) {
	for _, mode := range []FsyncMode{FsyncAlways, FsyncInterval} {
		for _, before := range []string{"nothing", "an ack", "an async append"} {
			t.Run(fmt.Sprintf("%s/%s", mode, before), func(t *testing.T) {
				fsys := newFaultFS()
				opts := testOpts()
				opts.FS = fsys
				opts.Fsync = mode
				opts.FsyncInterval = time.Hour // the ticker never syncs here
				l, _ := openT(t, t.TempDir(), opts)
				t.Cleanup(func() { l.Close() })
				seq := appendT(t, l, "settled below")
				if mode == FsyncInterval {
					mustOK(t, 0, "sync", l.Sync(context.Background()))
				}
				gate := make(chan struct{})
				fsys.set(func(f *faultFS) { f.gate = gate })
				syncs := fsys.syncCount()
				switch before {
				case "an ack":
					mustOK(t, 0, "ack", l.Ack(seq))
				case "an async append":
					if _, err := l.AppendAsync([]byte("x"), "", fixedNow, func(Appended, error) {}); err != nil {
						t.Fatal(err)
					}
				}
				done := make(chan error, 1)
				mustOK(t, 0, "SyncAsync", l.SyncAsync(func(err error) { done <- err }))
				if before == "nothing" {
					if err := <-done; err != nil {
						t.Fatal(err)
					}
					if got := fsys.syncCount(); got != syncs {
						t.Fatalf("%d fdatasyncs with nothing to sync, want none", got-syncs)
					}
					return
				}
				waitFor(t, "an fdatasync to start", func() bool { return fsys.syncCount() > syncs })
				select {
				case err := <-done:
					t.Fatalf("SyncAsync answered (%v) while its fdatasync was held", err)
				default:
				}
				fsys.set(func(f *faultFS) { f.gate = nil })
				close(gate)
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func TestSyncAsyncReportsFailure(t *testing.T) {
	fsys := newFaultFS()
	opts := testOpts()
	opts.FS = fsys
	opts.Fsync = FsyncInterval
	opts.FsyncInterval = time.Hour
	l, _ := openT(t, t.TempDir(), opts)
	mustOK(t, 0, "ack", l.Ack(appendT(t, l, "x")))
	fsys.set(func(f *faultFS) { f.syncErr = syscall.EIO })
	if err := l.Sync(context.Background()); !errors.Is(err, ErrStorage) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync on a failing disk: %v, want ErrStorage wrapping EIO", err)
	}
	fsys.set(func(f *faultFS) { f.syncErr = nil })
	mustOK(t, 0, "sync", l.Sync(context.Background()))
	closeT(t, l)
	if err := l.SyncAsync(func(error) { t.Error("done called after Close") }); !errors.Is(err, ErrClosed) {
		t.Fatalf("SyncAsync after Close: %v, want ErrClosed", err)
	}
}
