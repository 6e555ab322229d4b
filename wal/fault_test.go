package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStorageFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject func(f *faultFS)
		clear  func(f *faultFS)
		cause  error
	}{
		{"disk full mid-write",
			func(f *faultFS) { f.budget = 10 },
			func(f *faultFS) { f.budget = -1 },
			syscall.ENOSPC},
		{"I/O error on fdatasync",
			func(f *faultFS) { f.syncErr = syscall.EIO },
			func(f *faultFS) { f.syncErr = nil },
			syscall.EIO},
		{"short write",
			func(f *faultFS) { f.short = true },
			func(*faultFS) {},
			io.ErrShortWrite},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := newFaultFS()
			var logs logBuffer
			opts := testOpts()
			opts.FS = fsys
			opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			dir := t.TempDir()
			l, _ := openT(t, dir, opts)
			good1 := appendT(t, l, "before")
			name := segFiles(t, dir)[0]
			sizeBefore := fileSize(t, name)

			fsys.set(tc.inject)
			_, err := l.Append(context.Background(), []byte("this one fails to be stored"), "m-failed", fixedNow)
			if !errors.Is(err, ErrStorage) || !errors.Is(err, tc.cause) {
				t.Fatalf("Append under %s: %v, want ErrStorage wrapping %v", tc.name, err, tc.cause)
			}
			if got := fileSize(t, name); got != sizeBefore {
				t.Fatalf("segment is %d bytes after the failed append, want it cut back to %d", got, sizeBefore)
			}
			fsys.set(tc.clear)

			good2 := appendT(t, l, "after")
			if out := logs.String(); strings.Count(out, "storage failing") != 1 || strings.Count(out, "storage recovered") != 1 {
				t.Fatalf("want the failure and the recovery logged once each, got:\n%s", out)
			}
			if good2 != good1+2 {
				t.Fatalf("seq after the failure %d, want %d (the failed seq is not reused)", good2, good1+2)
			}
			closeT(t, l)
			l, rec := openT(t, dir, testOpts())
			defer closeT(t, l)
			if got := fmt.Sprint(seqs(rec.Records)); got != fmt.Sprint([]uint64{good1, good2}) {
				t.Fatalf("recovered %s, want [%d %d]: the failed append must not come back", got, good1, good2)
			}
			for _, id := range rec.MsgIDs {
				if id.ID == "m-failed" {
					t.Fatalf("the failed append's msg id came back: %+v", rec.MsgIDs)
				}
			}
		})
	}
}

func TestFailedWriteIsCutBeforeTheNextOne(t *testing.T) {
	fsys := newFaultFS()
	opts := testOpts()
	opts.FS = fsys
	dir := t.TempDir()
	l, _ := openT(t, dir, opts)
	good1 := appendT(t, l, "before")
	// The disk fills mid-write and refuses the truncate too: the partial
	// record stays until the file system lets the log cut it.
	fsys.set(func(f *faultFS) { f.budget, f.truncErr = 10, syscall.EIO })
	if _, err := l.Append(context.Background(), []byte("partial"), "", fixedNow); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append on a full disk: %v", err)
	}
	fsys.set(func(f *faultFS) { f.budget = -1 })
	if _, err := l.Append(context.Background(), []byte("blocked"), "", fixedNow); !errors.Is(err, ErrStorage) {
		t.Fatalf("Append while the partial write cannot be cut: %v, want ErrStorage", err)
	}
	fsys.set(func(f *faultFS) { f.truncErr = nil })
	good2 := appendT(t, l, "after")
	closeT(t, l)
	l, rec := openT(t, dir, testOpts())
	defer closeT(t, l)
	if got := fmt.Sprint(seqs(rec.Records)); got != fmt.Sprint([]uint64{good1, good2}) {
		t.Fatalf("recovered %s, want [%d %d]", got, good1, good2)
	}
}

func TestIntervalModeSyncsOnTheTicker(t *testing.T) {
	fsys := newFaultFS()
	opts := testOpts()
	opts.FS = fsys
	opts.Fsync = FsyncInterval
	opts.FsyncInterval = time.Millisecond
	dir := t.TempDir()
	l, _ := openT(t, dir, opts)
	before := fsys.syncCount()
	a, err := l.Append(context.Background(), []byte("x"), "", fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	if a.Sync != 0 {
		t.Fatalf("interval append reported a sync of %v", a.Sync)
	}
	waitFor(t, "the interval sync", func() bool { return fsys.syncCount() > before })
	closeT(t, l)
	l, rec := openT(t, dir, testOpts())
	defer closeT(t, l)
	if len(rec.Records) != 1 || rec.Records[0].Seq != a.Seq {
		t.Fatalf("recovered %+v", rec.Records)
	}
}

func fileSize(t *testing.T, name string) int64 {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func seqs(rs []Record) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.Seq
	}
	return out
}

func TestRotationFailureKeepsTheLogUsable(t *testing.T) {
	fsys := newFaultFS()
	var logs logBuffer
	opts := smallSegmentOpts()
	opts.FS = fsys
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	dir := t.TempDir()
	l, _ := openT(t, dir, opts)
	ackSize := int64(len(appendSettle(nil, settleRec{typ: recAck, seq: 1})))
	// The header counts as dead.
	last := fillToRotation(t, l, opts, headerSize)
	segBefore := segFiles(t, dir)
	// Room for the ack record, none for the new segment.
	fsys.set(func(f *faultFS) { f.budget = ackSize })
	mustOK(t, 0, "ack", l.Ack(last))
	waitFor(t, "the failed rotation to be logged", func() bool { return strings.Contains(logs.String(), "cannot start a new segment") })
	if got := segFiles(t, dir); fmt.Sprint(got) != fmt.Sprint(segBefore) {
		t.Fatalf("segments %v after a failed rotation, want %v", got, segBefore)
	}
	fsys.set(func(f *faultFS) { f.budget = -1 })
	kept := appendT(t, l, "after the disk recovered")
	waitFor(t, "the rotation to succeed", func() bool { return strings.Contains(logs.String(), "new segment started again") })
	if got := segFiles(t, dir); len(got) != 1 || got[0] == segBefore[0] {
		t.Fatalf("segments %v, want one new segment in place of %v", got, segBefore)
	}
	if n := strings.Count(logs.String(), "cannot start a new segment"); n != 1 {
		t.Fatalf("rotation failure logged %d times, want once:\n%s", n, logs.String())
	}
	closeT(t, l)
	l, rec := openT(t, dir, testOpts())
	defer closeT(t, l)
	if got := fmt.Sprint(seqs(rec.Records)); got != fmt.Sprint([]uint64{kept}) {
		t.Fatalf("recovered %s, want [%d]", got, kept)
	}
}

// TestRotationLetsRecordsInWhileItSyncs holds the new segment's fdatasync
// during a rotation: acks, deliveries, nacks and appends taken meanwhile
// must not wait for it (they need the log's lock only briefly), and must
// reach the new segment after the copies, which carry the state before
// them.
func TestRotationLetsRecordsInWhileItSyncs(t *testing.T) {
	l, fsys, opts, dir := openSmallFaulty(t)
	acked := appendT(t, l, "acked during the rotation")
	nacked := appendT(t, l, "delivered and nacked during the rotation")
	kept := appendT(t, l, "left alone")
	mustOK(t, 0, "deliver", l.Deliver(nacked))

	// The header and the delivery count as dead.
	last := fillToRotation(t, l, opts, headerSize+int64(len(appendSettle(nil, settleRec{typ: recDeliver, seq: nacked}))))
	// The crossing ack starts a rotation; hold the new segment's sync.
	openNew := fsys.holdSyncs(t, segName(dir, 2))
	mustOK(t, 0, "ack", l.Ack(last))
	waitFor(t, "the new segment's fdatasync", func() bool { return fsys.gatedCount() > 0 })

	done := make(chan error, 1)
	var appended uint64
	go func() {
		err := errors.Join(l.Ack(acked), l.Deliver(nacked), l.NackReason(nacked, "while rotating"))
		if err == nil {
			appended, err = l.AppendAsync([]byte("appended during the rotation"), "", fixedNow, func(Appended, error) {})
		}
		done <- err
	}()
	var err error
	waitFor(t, "the records taken while the new segment syncs", func() bool {
		select {
		case err = <-done:
			return true
		default:
			return false
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	openNew()
	closeT(t, l)

	l, rec := openT(t, dir, testOpts())
	t.Cleanup(func() { l.Close() })
	if got, want := fmt.Sprint(seqs(rec.Records)), fmt.Sprint([]uint64{nacked, kept, appended}); got != want {
		t.Fatalf("recovered %s, want %s", got, want)
	}
	if r := rec.Records[0]; r.Deliveries != 2 || r.InFlight || r.Reason != "while rotating" {
		t.Fatalf("seq %d recovered with %d deliveries, in flight %v, reason %q; want 2, false, %q", r.Seq, r.Deliveries, r.InFlight, r.Reason, "while rotating")
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files, want 1", n)
	}
}
