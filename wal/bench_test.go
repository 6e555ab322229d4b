package wal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/cputime"
	"golang.org/x/sys/unix"
)

// syncCounter counts syncs and the records they covered.
type syncCounter struct{ syncs, records atomic.Int64 }

func (c *syncCounter) observe(si SyncInfo) {
	c.syncs.Add(1)
	c.records.Add(int64(si.Records))
}

func (c *syncCounter) report(b *testing.B) {
	if n := c.syncs.Load(); n > 0 {
		b.ReportMetric(float64(c.records.Load())/float64(n), "records/sync")
	}
}

// runWriters has w goroutines share b.N calls of op.
func runWriters(b *testing.B, w int, op func()) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range w {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				op()
			}
		})
	}
	wg.Wait()
}

func BenchmarkAppend(b *testing.B) {
	for _, bc := range []struct {
		mode    FsyncMode
		writers int
		size    int
	}{
		{FsyncAlways, 1, 256}, {FsyncAlways, 8, 256}, {FsyncAlways, 64, 256},
		{FsyncAlways, 64, 1024},
		{FsyncInterval, 8, 256},
	} {
		b.Run(fmt.Sprintf("fsync=%s/writers=%d/bytes=%d", bc.mode, bc.writers, bc.size), func(b *testing.B) {
			var sc syncCounter
			// Segments large enough that the benchmark never rotates:
			// nothing is acked, and rotation would copy it all.
			l, _, err := Open(context.Background(), b.TempDir(), Options{Fsync: bc.mode, FsyncInterval: 10 * time.Millisecond, SegmentSize: 1 << 30, OnSync: sc.observe})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			data := make([]byte, bc.size)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			runWriters(b, bc.writers, func() {
				if _, err := l.Append(ctx, data, "", time.Time{}); err != nil {
					b.Error(err)
				}
			})
			b.StopTimer()
			sc.report(b)
		})
	}
}

// BenchmarkAppendAck is the steady state of a queue that keeps up: each
// event is appended, delivered and acked, segments rotate and are deleted.
// With msgids every event has a msg id, as the clients give them, so that
// each rotation carries a full dedupe window forward.
func BenchmarkAppendAck(b *testing.B) {
	for _, bc := range []struct {
		writers int
		msgIDs  bool
	}{{8, false}, {64, false}, {64, true}} {
		name := fmt.Sprintf("writers=%d", bc.writers)
		if bc.msgIDs {
			name += "/msgids"
		}
		b.Run(name, func(b *testing.B) {
			var sc syncCounter
			l, _, err := Open(context.Background(), b.TempDir(), Options{SegmentSize: 2 << 20, OnSync: sc.observe})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			data := make([]byte, 256)
			ctx := context.Background()
			var ids atomic.Uint64
			at := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cputime.Process(b)
			runWriters(b, bc.writers, func() {
				var id string
				if bc.msgIDs {
					id = fmt.Sprintf("c6f1a2b3-%d", ids.Add(1))
				}
				a, err := l.Append(ctx, data, id, at)
				if err == nil {
					err = l.Deliver(a.Seq)
				}
				if err == nil {
					err = l.Ack(a.Seq)
				}
				if err != nil {
					b.Error(err)
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(cputime.Process(b)-cpu0)/float64(b.N), "cpu-ns/op")
			sc.report(b)
		})
	}
}

// BenchmarkRecover10k opens a log of 10,000 unacked 256-byte events: a
// replay, a new segment with their copies, one sync.
func BenchmarkRecover10k(b *testing.B) {
	dir := b.TempDir()
	l, _, err := Open(context.Background(), dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 256)
	var wg sync.WaitGroup
	for w := range 50 {
		wg.Go(func() {
			for i := 0; i < 200; i++ {
				if _, err := l.Append(context.Background(), data, fmt.Sprintf("id-%d-%d", w, i), time.Now()); err != nil {
					b.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		l, rec, err := Open(context.Background(), dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if len(rec.Records) != 10000 {
			b.Fatalf("recovered %d records, want 10000", len(rec.Records))
		}
		l.Close()
	}
}

// BenchmarkFdatasync measures what one 256-byte write plus fdatasync costs
// on the disk under the test's temporary directory (the file grows, as a
// segment does), with the fdatasync's own p50 and p99: the floor under a
// durable publish's latency.
//
//	go test -run '^$' -bench Fdatasync -benchtime 2000x ./wal
func BenchmarkFdatasync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "sync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, 256)
	var off int64
	syncs := make([]time.Duration, 0, b.N)
	for b.Loop() {
		if _, err := f.WriteAt(data, off); err != nil {
			b.Fatal(err)
		}
		off += int64(len(data))
		start := time.Now()
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
		syncs = append(syncs, time.Since(start))
	}
	slices.Sort(syncs)
	pct := func(p float64) float64 {
		return float64(syncs[min(len(syncs)-1, int(p*float64(len(syncs))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "sync-p50-ms")
	b.ReportMetric(pct(0.99), "sync-p99-ms")
}

// BenchmarkAppendAsyncRoundTrip is one AppendAsync at a time, each waiting
// for its callback: the answer to a lone publish. ns/op less sync-ns/op
// (the fdatasync itself) is what the log adds: the write, waking the
// syncer and getting the callback to the waiting goroutine.
//
//	go test -run '^$' -bench AppendAsyncRoundTrip -benchtime 2000x ./wal
func BenchmarkAppendAsyncRoundTrip(b *testing.B) {
	var syncTime atomic.Int64
	l, _, err := Open(context.Background(), b.TempDir(), Options{OnSync: func(si SyncInfo) { syncTime.Add(int64(si.Duration)) }})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	data := make([]byte, 256)
	done := make(chan error, 1)
	callback := func(_ Appended, err error) { done <- err }
	b.ReportAllocs()
	syncTime.Store(0)
	for b.Loop() {
		if _, err := l.AppendAsync(data, "", time.Time{}, callback); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(syncTime.Load())/float64(b.N), "sync-ns/op")
}

// BenchmarkFdatasyncPrealloc compares the fdatasync of a 256-byte write
// into four kinds of file, interleaved write by write so that the shared
// disk's noise falls on all of them alike: a file that grows with each
// write (as a segment does without preallocation), one ftruncate'd to its
// full size (sparse: each new block is allocated at the write), one
// fallocate'd (its extents allocated but unwritten, converted at the
// write) and one written with zeros and synced beforehand (the write
// overwrites blocks that exist: only the data has to reach the disk).
// The kind that goes first turns with each round, so that none always
// follows the same one. Per kind it reports the fdatasync's p50 and p99
// and the system CPU of the calling thread inside it (getrusage): a
// journal commit's own work runs in the kernel's journal thread and is
// not counted there, so sys-us compares the caller's cost, not the whole.
//
//	go test -run '^$' -bench FdatasyncPrealloc -benchtime 3000x ./wal
func BenchmarkFdatasyncPrealloc(b *testing.B) {
	// RUSAGE_THREAD counts this thread only: keep the goroutine on it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const size = 8 << 20
	dir := b.TempDir()
	kinds := []struct {
		name    string
		prepare func(f *os.File) error
	}{
		{"grow", func(*os.File) error { return nil }},
		{"sparse", func(f *os.File) error { return f.Truncate(size) }},
		{"fallocate", func(f *os.File) error { return unix.Fallocate(int(f.Fd()), 0, 0, size) }},
		{"zeroed", func(f *os.File) error {
			_, err := f.WriteAt(make([]byte, size), 0)
			return err
		}},
	}
	files := make([]*os.File, len(kinds))
	for i, k := range kinds {
		f, err := os.Create(filepath.Join(dir, k.name))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		if err := k.prepare(f); err != nil {
			b.Fatalf("%s: %v", k.name, err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		files[i] = f
	}
	if int64(b.N)*256 > size {
		b.Fatalf("%d writes of 256 bytes run past the %d-byte files", b.N, size)
	}
	data := make([]byte, 256)
	syncs := make([][]time.Duration, len(kinds))
	sysCPU := make([]time.Duration, len(kinds))
	var before, after unix.Rusage
	var off int64
	b.ReportAllocs()
	for round := 0; b.Loop(); round++ {
		for j := range files {
			i := (round + j) % len(files)
			f := files[i]
			if _, err := f.WriteAt(data, off); err != nil {
				b.Fatal(err)
			}
			if err := unix.Getrusage(unix.RUSAGE_THREAD, &before); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
			syncs[i] = append(syncs[i], time.Since(start))
			if err := unix.Getrusage(unix.RUSAGE_THREAD, &after); err != nil {
				b.Fatal(err)
			}
			sysCPU[i] += time.Duration(after.Stime.Nano() - before.Stime.Nano())
		}
		off += int64(len(data))
	}
	for i, k := range kinds {
		s := syncs[i]
		slices.Sort(s)
		pct := func(p float64) float64 {
			return float64(s[min(len(s)-1, int(p*float64(len(s))))]) / float64(time.Millisecond)
		}
		b.ReportMetric(pct(0.50), k.name+"-p50-ms")
		b.ReportMetric(pct(0.99), k.name+"-p99-ms")
		b.ReportMetric(float64(sysCPU[i])/float64(len(s))/float64(time.Microsecond), k.name+"-sys-us")
	}
}

// BenchmarkAppendMsgIDs encodes a full dedupe window, as every rotation of
// a busy log writes into its new segment.
func BenchmarkAppendMsgIDs(b *testing.B) {
	ids := make([]MsgID, MaxMsgIDs)
	for i := range ids {
		ids[i] = MsgID{ID: fmt.Sprintf("load-%026d", i), Seq: uint64(i + 1), AcceptedAt: fixedNow}
	}
	b.ReportAllocs()
	for b.Loop() {
		if buf := appendMsgIDs(nil, ids, 1<<20+4096); len(buf) == 0 {
			b.Fatal("nothing encoded")
		}
	}
}
