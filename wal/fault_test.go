package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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
			opts := testOpts()
			opts.FS = fsys
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
