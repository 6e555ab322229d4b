package wal

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestRotatedSegmentSupersedesOlderOnes leaves the old segment of a
// rotation in place, by a removal that fails or a crash just before or
// in the middle of the removals, after a rotation whose snapshot absorbed
// an ack and an append: the acked event must not come back (its ack is in
// no segment, the new one just has no copy of it) and the append must.
func TestRotatedSegmentSupersedesOlderOnes(t *testing.T) {
	for _, tc := range []struct {
		name string
		// rotations is how many rotations run; the removal of the
		// first one's old segment fails when removeFails is set; the
		// process dies at the crashAtRemove-th removal of the last one.
		rotations     int
		removeFails   bool
		crashAtRemove int
	}{
		{name: "removal fails", rotations: 1, removeFails: true},
		{name: "crash before removal", rotations: 1, crashAtRemove: 1},
		{name: "crash within removal", rotations: 2, removeFails: true, crashAtRemove: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, fsys, opts, dir := openSmallFaulty(t)
			want := []uint64{appendT(t, l, "kept")}
			for i := 1; i <= tc.rotations; i++ {
				acked := appendT(t, l, "acked as the rotation starts")
				fsys.set(func(f *faultFS) {
					if i == 1 && tc.removeFails {
						f.removeErr = syscall.EIO
					}
					if i == tc.rotations {
						f.crashAtRemove = tc.crashAtRemove
					}
				})
				want = append(want, rotateAbsorbing(t, l, fsys, dir, opts, acked))
				fsys.set(func(f *faultFS) { f.removeErr = nil })
			}
			l.Close() // after a crash, its writes go nowhere
			if n := len(segFiles(t, dir)); n != 2 {
				t.Fatalf("%d segment files before the restart, want the new one and an old one", n)
			}

			l, rec := openT(t, dir, testOpts())
			t.Cleanup(func() { l.Close() })
			if got := seqs(rec.Records); !slices.Equal(got, want) {
				t.Fatalf("recovered %v, want %v: no acked event back, no accepted one lost", got, want)
			}
			if n := len(segFiles(t, dir)); n != 1 {
				t.Fatalf("%d segment files after the restart, want 1", n)
			}
		})
	}
}

// rotateAbsorbing makes l rotate with an ack of acked and an append in
// its snapshot: it fills the current segment with acked events until one
// more ack crosses SegmentSize of dead bytes, holds the fdatasync of the
// old segment that the rotation starts with, and meanwhile acks acked and
// appends an event. The rotation takes both with its snapshot: the ack is
// not written anywhere (the new segment has no copy of its event), the
// append is copied. It returns the append's seq once it is answered.
func rotateAbsorbing(t *testing.T, l *Log, fsys *faultFS, dir string, opts Options, acked uint64) uint64 {
	t.Helper()
	seq, err := rotateAbsorbingErr(t, l, fsys, dir, opts, acked, nil)
	if err != nil {
		t.Fatalf("append absorbed by the rotation: %v", err)
	}
	return seq
}

// rotateAbsorbingErr is rotateAbsorbing returning the absorbed append's
// answer; absorbing, when set, gets the channel closed when the absorbed
// append is answered, before the rotation may start.
func rotateAbsorbingErr(t *testing.T, l *Log, fsys *faultFS, dir string, opts Options, acked uint64, absorbing func(answered <-chan struct{})) (uint64, error) {
	t.Helper()
	ackSize := int64(len(appendSettle(nil, settleRec{typ: recAck, seq: 1})))
	segs := segFiles(t, dir)
	cur := segs[len(segs)-1]
	data := strings.Repeat("r", 200)
	step := int64(eventRecordSize("", []byte(data))) + ackSize // an event and its ack
	dead := func() int64 {
		// Once Append returns, every record taken before it is written.
		l.mu.Lock()
		defer l.mu.Unlock()
		return fileSize(t, cur) - l.liveBytes
	}
	minSize := int64(eventRecordSize("", nil)) + 1
	// Acked events until there is room for one more and a last event.
	var d int64
	for {
		filler := appendT(t, l, data)
		d = dead()
		mustOK(t, 0, "ack", l.Ack(filler))
		if d+2*step+minSize >= opts.SegmentSize {
			break
		}
	}
	// The last event is sized so that its ack crosses SegmentSize of
	// dead bytes: the ack alone, written by a flush of its own, starts
	// the rotation (which then syncs the old segment first), not the
	// event's removal from the live set, which may come before the check
	// of the flush that wrote it.
	d += step // once the last filler's ack is written
	lastData := strings.Repeat("x", int(opts.SegmentSize-d-1-int64(eventRecordSize("", nil))))
	last := appendT(t, l, lastData)
	if got := dead(); got != d {
		t.Fatalf("%d dead bytes, want %d", got, d)
	}
	release := fsys.holdSyncs(t, cur)
	mustOK(t, 0, "ack", l.Ack(last))
	waitFor(t, "the rotation's sync of the old segment", func() bool { return fsys.gatedCount() > 0 })

	mustOK(t, 0, "ack", l.Ack(acked))
	res := make(chan error, 1)
	seq, b, err := l.enqueue([]byte("appended as the rotation starts"), "", fixedNow, func(_ Appended, err error) { res <- err })
	if err != nil {
		t.Fatal(err)
	}
	if absorbing != nil {
		absorbing(b.done)
	}
	release()
	err = <-res
	if err == nil {
		// The rotation removes the old segments after it answered: the
		// next flush, which a Sync waits for, comes after the removal.
		mustOK(t, 0, "sync", l.Sync(context.Background()))
	}
	if got := segFiles(t, dir); slices.Contains(got, cur) && got[len(got)-1] == cur {
		t.Fatalf("segments %v: the rotation did not start a new one", got)
	}
	return seq, err
}

// TestFailedDirectorySyncAfterRotation fails the directory sync after a
// rotation renamed its new segment into place: the new segment's name may
// not survive a power loss, so nothing the rotation absorbed may be
// answered as stored, nor any append after it until a directory sync
// succeeds; the old segment stays; and a restart brings back no acked
// event and loses no stored one.
func TestFailedDirectorySyncAfterRotation(t *testing.T) {
	l, fsys, opts, dir := openSmallFaulty(t)
	kept := appendT(t, l, "kept")
	acked := appendT(t, l, "acked as the rotation starts")
	fsys.set(func(f *faultFS) { f.syncDirErr = syscall.EIO })
	absorbed, err := rotateAbsorbingErr(t, l, fsys, dir, opts, acked, nil)
	if !errors.Is(err, ErrStorage) {
		t.Fatalf("append absorbed by a rotation whose directory sync failed: %v, want ErrStorage", err)
	}
	if n := len(segFiles(t, dir)); n != 2 {
		t.Fatalf("%d segment files, want the new one and the old one kept", n)
	}
	if _, err := l.Append(context.Background(), []byte("directory still failing"), "", fixedNow); !errors.Is(err, ErrStorage) {
		t.Fatalf("Append while the directory sync fails: %v, want ErrStorage", err)
	}
	fsys.set(func(f *faultFS) { f.syncDirErr = nil })
	dirSyncs := fsys.syncDirCount()
	stored := appendT(t, l, "stored")
	if fsys.syncDirCount() == dirSyncs {
		t.Fatal("an append was answered stored without the directory sync the new segment still owed")
	}
	closeT(t, l)

	l, rec := openT(t, dir, testOpts())
	t.Cleanup(func() { l.Close() })
	got := seqs(rec.Records)
	if slices.Contains(got, acked) || !slices.Contains(got, kept) || !slices.Contains(got, stored) {
		t.Fatalf("recovered %v: want %d and %d, not the acked %d (the failed %d may come back)", got, kept, stored, acked, absorbed)
	}
}

func TestCheckReportsSupersededSegments(t *testing.T) {
	l, fsys, opts, dir := openSmallFaulty(t)
	appendT(t, l, "kept")
	acked := appendT(t, l, "acked")
	fsys.set(func(f *faultFS) { f.removeErr = syscall.EIO })
	rotateAbsorbing(t, l, fsys, dir, opts, acked)
	closeT(t, l)

	rep, err := Check(context.Background(), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Segments) != 2 || !rep.Segments[0].Superseded || rep.Segments[1].Superseded || rep.Live != 2 {
		t.Fatalf("Check report %+v, want the old segment superseded and 2 live events", rep)
	}
	if !strings.Contains(rep.String(), fmt.Sprintf("%s: superseded", "0000000000000001.wal")) {
		t.Fatalf("report does not name the superseded segment:\n%s", rep)
	}
}

// TestRotationAnswersBeforeRemovingOldSegments checks that the appends a
// rotation absorbed are answered before the old segment is removed: they
// are durable in the new segment, and the removal (an unlink of a full
// segment and a directory sync) would add milliseconds to their latency.
func TestRotationAnswersBeforeRemovingOldSegments(t *testing.T) {
	l, fsys, opts, dir := openSmallFaulty(t)
	acked := appendT(t, l, "acked as the rotation starts")
	var answeredFirst []bool // at each removal; read after Close stopped the syncer
	rotateAbsorbingErr(t, l, fsys, dir, opts, acked, func(answered <-chan struct{}) {
		fsys.set(func(f *faultFS) {
			f.onRemove = func() {
				select {
				case <-answered:
					answeredFirst = append(answeredFirst, true)
				default:
					answeredFirst = append(answeredFirst, false)
				}
			}
		})
	})
	closeT(t, l) // the removal is done by the time Close returns
	if len(answeredFirst) == 0 || slices.Contains(answeredFirst, false) {
		t.Fatalf("absorbed append answered before each removal: %v, want true for at least one removal", answeredFirst)
	}
}
