package wal

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestRotationKeepsItsMsgIDsWhileTheWindowIsTrimmed trims the dedupe
// window (2*MaxMsgIDs msg ids appended) while a rotation is in the middle
// of writing the window into its new segment, which it does from the
// log's own list, without a copy: the segment must still get the ids of
// the moment it started, so that after a restart every msg id the log
// held then, and every one appended since, is remembered. The window was
// trimmed once before, so that its list has the room to be trimmed in
// place, and its ids are of acked events, so that only the rotation's msg
// id records carry them forward.
func TestRotationKeepsItsMsgIDsWhileTheWindowIsTrimmed(t *testing.T) {
	// Segments large enough that the msg ids alone do not start another
	// rotation after this one, which would write the window as trimmed.
	fsys := newFaultFS()
	fsys.noSync = true
	opts := testOpts()
	opts.FS, opts.SegmentSize, opts.MaxRecord = fsys, 4<<20, 4096
	dir := t.TempDir()
	l, _ := openT(t, dir, opts)
	t.Cleanup(func() { l.Close() })
	ctx := context.Background()
	noop := func(Appended, error) {}
	// Ids long enough that one chunk of them fills a write.
	idLen := segmentChunk / msgIDsPerChunk
	n := 0
	appendID := func() (uint64, string) {
		t.Helper()
		id := fmt.Sprintf("%0*d", idLen, n)
		n++
		seq, err := l.AppendAsync([]byte("e"), id, fixedNow, noop)
		if err != nil {
			t.Fatal(err)
		}
		return seq, id
	}
	for n <= 2*MaxMsgIDs {
		seq, _ := appendID()
		mustOK(t, 0, "ack", l.Ack(seq))
	}
	mustOK(t, 0, "sync", l.Sync(ctx))
	l.mu.Lock()
	var want []string
	for _, id := range l.ids {
		want = append(want, id.ID)
	}
	l.mu.Unlock()

	writing, resume := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(resume) })
	t.Cleanup(release)
	var once sync.Once
	fsys.set(func(f *faultFS) {
		f.onWrite = func(name string, off int64) {
			// A new segment's first write; the segment keeps its
			// temporary name as the file's once renamed.
			if strings.HasSuffix(name, ".tmp") && off == 0 {
				once.Do(func() {
					close(writing)
					<-resume
				})
			}
		}
	})
	filler := []byte(strings.Repeat("f", 3500))
	for i := 0; ; i++ {
		if i == 10000 {
			t.Fatal("no rotation after 10000 acked events")
		}
		seq, err := l.AppendAsync(filler, "", fixedNow, noop)
		if err != nil {
			t.Fatal(err)
		}
		mustOK(t, 0, "ack", l.Ack(seq))
		synced := make(chan error, 1)
		mustOK(t, 0, "sync", l.SyncAsync(func(err error) { synced <- err }))
		select {
		case <-writing:
		case err := <-synced:
			mustOK(t, 0, "sync", err)
			continue
		}
		break
	}

	// The rotation waits in its first write: fill the window past the
	// point where it is trimmed again.
	for {
		l.mu.Lock()
		held := len(l.ids)
		l.mu.Unlock()
		if held < len(want) {
			break
		}
		_, id := appendID()
		want = append(want, id)
	}
	release()
	mustOK(t, 0, "sync", l.Sync(ctx))
	closeT(t, l)

	l2, rec := openT(t, dir, testOpts())
	t.Cleanup(func() { l2.Close() })
	got := make(map[string]bool, len(rec.MsgIDs))
	for _, id := range rec.MsgIDs {
		got[id.ID] = true
	}
	var missing []string
	for _, id := range want {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d msg ids not recovered, the first %q", len(missing), len(want), missing[0])
	}
}
