package wal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
func BenchmarkAppendAck(b *testing.B) {
	for _, writers := range []int{8, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			var sc syncCounter
			l, _, err := Open(context.Background(), b.TempDir(), Options{SegmentSize: 2 << 20, OnSync: sc.observe})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			data := make([]byte, 256)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			runWriters(b, writers, func() {
				a, err := l.Append(ctx, data, "", time.Time{})
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
