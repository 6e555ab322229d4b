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

// TestSettlesOfAFailedWriteGoAgain: an ack taken into a write or sync
// that fails keeps its effect in memory, so the disk must get it too: the
// next sync that succeeds covers it, and the event is not live on disk
// any more (Check reads the disk while the log stays open, as a crash
// would find it).
func TestSettlesOfAFailedWriteGoAgain(t *testing.T) {
	for _, mode := range []FsyncMode{FsyncAlways, FsyncInterval} {
		for _, tc := range []struct {
			name   string
			inject func(f *faultFS)
			clear  func(f *faultFS)
		}{
			{"fdatasync fails", func(f *faultFS) { f.syncErr = syscall.EIO }, func(f *faultFS) { f.syncErr = nil }},
			{"disk full", func(f *faultFS) { f.budget = 0 }, func(f *faultFS) { f.budget = -1 }},
		} {
			t.Run(fmt.Sprintf("%s/%s", mode, tc.name), func(t *testing.T) {
				fsys := newFaultFS()
				opts := testOpts()
				opts.FS = fsys
				opts.Fsync = mode
				opts.FsyncInterval = time.Hour // only SyncAsync syncs
				dir := t.TempDir()
				l, _ := openT(t, dir, opts)
				t.Cleanup(func() { l.Close() })
				acked := appendT(t, l, "acked while the disk fails")
				mustOK(t, 0, "sync", l.Sync(context.Background()))

				// The syncer is held in the sync of another append, so
				// that the ack and its sync join the next flush, and the
				// failure takes the ack record with it.
				gate := make(chan struct{})
				fsys.set(func(f *faultFS) { f.gate = gate })
				syncs := fsys.syncCount()
				kept, err := l.AppendAsync([]byte("left unacked"), "", fixedNow, func(Appended, error) {})
				if err != nil {
					t.Fatal(err)
				}
				mustOK(t, 0, "SyncAsync", l.SyncAsync(func(error) {}))
				waitFor(t, "the syncer to hold in a sync", func() bool { return fsys.syncCount() > syncs })
				mustOK(t, 0, "ack", l.Ack(acked))
				done := make(chan error, 1)
				mustOK(t, 0, "SyncAsync", l.SyncAsync(func(err error) { done <- err }))
				fsys.set(func(f *faultFS) { f.gate = nil; tc.inject(f) })
				close(gate)
				if err := <-done; !errors.Is(err, ErrStorage) {
					t.Fatalf("sync of the ack on a failing disk: %v, want ErrStorage", err)
				}

				fsys.set(tc.clear)
				mustOK(t, 0, "sync", l.Sync(context.Background()))
				rep, err := Check(context.Background(), dir, Options{})
				if err != nil {
					t.Fatal(err)
				}
				if rep.Live != 1 {
					t.Fatalf("the disk holds %d live events after a sync that succeeded, want 1 (seq %d; seq %d was acked):\n%s", rep.Live, kept, acked, rep)
				}
			})
		}
	}
}
