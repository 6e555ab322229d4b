package wal

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestFailedSyncWritesAgainWhatItMayHaveDropped fails an fdatasync after
// records were written without one (acks in fsync always, appends in
// interval mode), with the file seam losing what was written since the
// last good sync, as Linux may: it drops the dirty pages it could not
// write and marks them clean, so the next fdatasync succeeds without
// them. Once a later sync reports success, a restart must find every
// record written before it.
func TestFailedSyncWritesAgainWhatItMayHaveDropped(t *testing.T) {
	ackSize := int64(len(appendSettle(nil, settleRec{typ: recAck, seq: 1})))
	for _, tc := range []struct {
		name     string
		mode     FsyncMode
		interval time.Duration
		// run writes records without a sync, fails a sync, then gets
		// one to succeed; it returns the seqs a restart must recover.
		run func(t *testing.T, l *Log, fsys *faultFS, seg string) []uint64
	}{
		{"always: acks written before an append's failed sync", FsyncAlways, time.Hour, func(t *testing.T, l *Log, fsys *faultFS, seg string) []uint64 {
			acked := appendT(t, l, "acked")
			kept := appendT(t, l, "kept")
			size := fileSize(t, seg)
			mustOK(t, 0, "ack", l.Ack(acked))
			waitFor(t, "the ack to be written", func() bool { return fileSize(t, seg) == size+ackSize })
			fsys.set(func(f *faultFS) { f.syncErr = syscall.EIO })
			if _, err := l.Append(context.Background(), []byte("fails"), "", fixedNow); !errors.Is(err, ErrStorage) {
				t.Fatalf("Append with a failing fdatasync: %v, want ErrStorage", err)
			}
			fsys.set(func(f *faultFS) { f.syncErr = nil })
			mustOK(t, 0, "sync", l.Sync(context.Background()))
			return []uint64{kept, appendT(t, l, "after")}
		}},
		{"interval: appends written before a SyncAsync's failed sync", FsyncInterval, time.Hour, func(t *testing.T, l *Log, fsys *faultFS, _ string) []uint64 {
			accepted := appendT(t, l, "accepted")
			fsys.set(func(f *faultFS) { f.syncErr = syscall.EIO })
			if err := l.Sync(context.Background()); !errors.Is(err, ErrStorage) {
				t.Fatalf("Sync with a failing fdatasync: %v, want ErrStorage", err)
			}
			fsys.set(func(f *faultFS) { f.syncErr = nil })
			mustOK(t, 0, "sync", l.Sync(context.Background()))
			return []uint64{accepted}
		}},
		{"interval: appends written before the ticker's failed sync", FsyncInterval, time.Millisecond, func(t *testing.T, l *Log, fsys *faultFS, _ string) []uint64 {
			fsys.set(func(f *faultFS) { f.syncErr = syscall.EIO })
			accepted := appendT(t, l, "accepted")
			n := fsys.syncCount()
			waitFor(t, "a failed sync of the append", func() bool { return fsys.syncCount() > n })
			fsys.set(func(f *faultFS) { f.syncErr = nil })
			n = fsys.syncCount()
			waitFor(t, "a sync that succeeds", func() bool { return fsys.syncCount() > n })
			return []uint64{accepted}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := newFaultFS()
			fsys.loseUnsynced = true
			opts := testOpts()
			opts.FS = fsys
			opts.Fsync = tc.mode
			opts.FsyncInterval = tc.interval // an hour: only SyncAsync syncs
			dir := t.TempDir()
			l, _ := openT(t, dir, opts)
			t.Cleanup(func() { l.Close() })
			want := tc.run(t, l, fsys, segFiles(t, dir)[0])
			closeT(t, l)

			l, rec := openT(t, dir, testOpts())
			t.Cleanup(func() { l.Close() })
			if got := seqs(rec.Records); !slices.Equal(got, want) || rec.TornBytes != 0 {
				t.Fatalf("recovered %v with %d torn bytes, want %v and none", got, rec.TornBytes, want)
			}
		})
	}
}
