package bus_test

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// ioCounter is the real file system, counting the log's write and
// fdatasync system calls (one WriteAt is one pwrite) and the records its
// syncs covered, so that a benchmark can report them per event.
type ioCounter struct {
	wal.OSFS
	writes, syncs, records atomic.Int64
	syncTime               atomic.Int64 // ns in fdatasync
}

func (c *ioCounter) OpenFile(name string, flag int, perm os.FileMode) (wal.File, error) {
	f, err := c.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &countedFile{File: f, c: c}, nil
}

func (c *ioCounter) observe(si wal.SyncInfo) {
	c.records.Add(int64(si.Records))
	c.syncTime.Add(int64(si.Duration))
}

// options gives the log c as its file system and sync hook.
func (c *ioCounter) options() bus.Option {
	return bus.WithWALOptions(wal.Options{FS: c, OnSync: c.observe})
}

// start zeroes the counts (after the log's opening writes).
func (c *ioCounter) start() {
	c.writes.Store(0)
	c.syncs.Store(0)
	c.records.Store(0)
	c.syncTime.Store(0)
}

// report adds writes/event, syncs/event, records/sync and sync-ns/op (the
// time spent in fdatasync per event: what ns/op cannot go below when the
// syncs are not overlapped) to b's result.
func (c *ioCounter) report(b *testing.B) {
	b.Helper()
	n := float64(b.N)
	b.ReportMetric(float64(c.writes.Load())/n, "writes/event")
	b.ReportMetric(float64(c.syncs.Load())/n, "syncs/event")
	b.ReportMetric(float64(c.syncTime.Load())/n, "sync-ns/op")
	if s := c.syncs.Load(); s > 0 {
		b.ReportMetric(float64(c.records.Load())/float64(s), "records/sync")
	}
}

type countedFile struct {
	wal.File
	c *ioCounter
}

func (f *countedFile) WriteAt(p []byte, off int64) (int, error) {
	f.c.writes.Add(1)
	return f.File.WriteAt(p, off)
}

func (f *countedFile) Sync() error {
	f.c.syncs.Add(1)
	return f.File.Sync()
}

// benchBus is one blocking queue, durable (fsync always) or in memory.
func benchBus(b *testing.B, durable bool, opts ...bus.Option) *bus.Bus {
	b.Helper()
	qs := []bus.QueueConfig{{Name: "order", Capacity: 1024, Policy: bus.PolicyBlock, Durable: durable}}
	if durable {
		opts = append(opts, bus.WithDataDir(b.TempDir()))
	}
	bb, err := bus.New(qs, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = bb.Shutdown(context.Background()) })
	return bb
}

// ackAll receives and acks on queue until ctx ends; wait returns once it
// has stopped.
func ackAll(ctx context.Context, b *testing.B, bb *bus.Bus, prefetch int) (wait func()) {
	b.Helper()
	c, err := bb.Subscribe("order", prefetch)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer c.Close()
		for {
			d, err := c.Receive(ctx)
			if err != nil {
				return
			}
			_ = c.Ack(d.Seq)
		}
	}()
	return func() { <-done }
}

var benchEvent = bus.Event{Type: "ORDER_NEW", Payload: json.RawMessage(`{"symbol":"BTCUSDT","side":"buy","qty":"0.010","px":"64250.5"}`)}

// BenchmarkDurablePublishDeliver compares durable (fsync always) with
// memory-only publish+deliver+ack in one run: sequential (one publish at a
// time, waiting for each answer: one fdatasync per event) and pipelined
// (PublishAsync with up to 512 publishes in flight, as one connection's
// pipelined frames or many connections produce; they share syncs), and
// pipelined64 with 64 in flight (one connection of the load tool).
//
//	go test -run '^$' -bench 'DurablePublishDeliver' -benchtime 200ms ./bus
func BenchmarkDurablePublishDeliver(b *testing.B) {
	for _, mode := range []string{"sequential", "pipelined", "pipelined64"} {
		for _, durable := range []bool{false, true} {
			name := mode + "/memory"
			if durable {
				name = mode + "/durable"
			}
			b.Run(name, func(b *testing.B) {
				var io ioCounter
				bb := benchBus(b, durable, io.options())
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				if mode == "sequential" {
					c, err := bb.Subscribe("order", 1)
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					io.start()
					benchRoundTrips(b, bb, c, benchEvent, nil)
					if durable {
						io.report(b)
					}
					return
				}
				wait := ackAll(ctx, b, bb, 256)
				window := 512
				if mode == "pipelined64" {
					window = 64 // one connection of the load tool
				}
				sem := make(chan struct{}, window)
				var failed sync.Once
				done := func(out bus.Outcome, err error) {
					if out != bus.Accepted {
						failed.Do(func() { b.Error(out, err) })
					}
					<-sem
				}
				b.ReportAllocs()
				io.start()
				cpu := startCPUClock(b)
				b.ResetTimer()
				for range b.N {
					sem <- struct{}{}
					bb.PublishAsync(ctx, benchEvent, "order", done)
				}
				for bb.Stats()["order"].Acked < uint64(b.N) {
					time.Sleep(50 * time.Microsecond) // the consumer drains the tail
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
				cpu.report(b)
				if durable {
					io.report(b)
				}
				cancel()
				wait()
			})
		}
	}
}

// BenchmarkDurableLatency publishes to a durable queue (fsync always) at
// 1,000 events/s, open loop: each publish is scheduled 1 ms after the one
// before and its latency runs from that intended time to its answer, so a
// stall shows in the percentiles instead of slowing the schedule down. A
// consumer acks everything. The fdatasync durations are reported too
// (sync-p50-ms, sync-p99-ms): the floor under the publish latency. Run it
// for a few seconds of events:
//
//	go test -run '^$' -bench 'DurableLatency' -benchtime 3000x ./bus
func BenchmarkDurableLatency(b *testing.B) {
	var syncMu sync.Mutex
	var syncs []time.Duration
	bb := benchBus(b, true, bus.WithWALOptions(wal.Options{OnSync: func(si wal.SyncInfo) {
		syncMu.Lock()
		syncs = append(syncs, si.Duration)
		syncMu.Unlock()
	}}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := ackAll(ctx, b, bb, 64)
	lat := make([]time.Duration, b.N)
	service := make([]time.Duration, b.N) // from the actual send
	var wg sync.WaitGroup
	wg.Add(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		intended := start.Add(time.Duration(i) * time.Millisecond)
		if d := time.Until(intended); d > 0 {
			time.Sleep(d)
		}
		sent := time.Now()
		bb.PublishAsync(ctx, benchEvent, "order", func(out bus.Outcome, err error) {
			if out != bus.Accepted {
				b.Error(out, err)
			}
			lat[i] = time.Since(intended)
			service[i] = time.Since(sent)
			wg.Done()
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(percentileMs(lat, 0.50), "p50-ms")
	b.ReportMetric(percentileMs(lat, 0.90), "p90-ms")
	b.ReportMetric(percentileMs(lat, 0.99), "p99-ms")
	b.ReportMetric(percentileMs(lat, 0.999), "p99.9-ms")
	b.ReportMetric(percentileMs(lat, 1), "max-ms")
	b.ReportMetric(percentileMs(service, 0.50), "sent-p50-ms")
	b.ReportMetric(percentileMs(service, 0.99), "sent-p99-ms")
	syncMu.Lock()
	b.ReportMetric(percentileMs(syncs, 0.50), "sync-p50-ms")
	b.ReportMetric(percentileMs(syncs, 0.99), "sync-p99-ms")
	syncMu.Unlock()
	cancel()
	wait()
}

// percentileMs is the p-th percentile (0 < p <= 1) of d in milliseconds;
// it sorts d.
func percentileMs(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / float64(time.Millisecond)
}
