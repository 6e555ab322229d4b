package transport

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/cputime"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// BenchmarkSocketPublish measures publish round trips over the socket with
// one consumer draining and acking: each op is one event published,
// answered, delivered and acked. The raw clients here speak the protocol
// directly so that the number is the server's, not a client library's.
//
// durable publishes 64 at a time to the durable order queue, so that every
// publish waits for its log sync, as the publishes of e2e/durable_perf.sh
// do.
func BenchmarkSocketPublish(b *testing.B) {
	for _, conns := range []int{1, 8} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			benchSocketPublish(b, "data", conns, benchWindow/conns)
		})
	}
	b.Run("durable", func(b *testing.B) {
		durable := func(_ *Config, qs *[]bus.QueueConfig, _ *[]bus.Option) {
			for i := range *qs {
				if q := &(*qs)[i]; q.Name == "order" {
					q.Capacity, q.Durable, q.Fsync = 1024, true, bus.FsyncAlways
				}
			}
		}
		benchSocketPublish(b, "order", 1, 64, durable, withBusOptions(bus.WithDataDir(b.TempDir())))
	})
}

// BenchmarkSocketTelemetry compares socket throughput with telemetry off,
// metrics only (SDK meter provider, collected by a reader) and metrics plus
// every span (SDK tracer provider, always sampling, batching to an exporter
// that discards). Compare the events/s of the three within one run; the
// stack tests measure the same with the real collector.
func BenchmarkSocketTelemetry(b *testing.B) {
	modes := []struct {
		name    string
		metrics bool
		spans   bool
	}{{"off", false, false}, {"metrics", true, false}, {"metrics+spans", true, true}}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			var opts []serverOpt
			if m.metrics {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				b.Cleanup(func() { mp.Shutdown(context.Background()) })
				opts = append(opts, withBusOptions(bus.WithMeterProvider(mp)), withConfig(func(c *Config) { c.MeterProvider = mp }))
			}
			if m.spans {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				b.Cleanup(func() { tp.Shutdown(context.Background()) })
				opts = append(opts, withBusOptions(bus.WithTracerProvider(tp)))
			}
			benchSocketPublish(b, "data", 1, benchWindow, opts...)
		})
	}
}

func benchSocketPublish(b *testing.B, queue string, conns, window int, opts ...serverOpt) {
	ts := startServer(b, opts...)
	payload := []byte(`{"symbol":"BTCUSDT","open":101.5,"close":102.25,"volume":12.5}`)

	var acked atomic.Int64
	consumerDone := make(chan error, 1)
	total := int64(b.N)
	cnc, err := net.Dial("unix", ts.path)
	if err != nil {
		b.Fatal(err)
	}
	defer cnc.Close()
	go func() { consumerDone <- drainConsumer(cnc, queue, 1024, total, &acked) }()

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cputime.Process(b)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		n := total / int64(conns)
		if int64(i) < total%int64(conns) {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pipelinedPublisher(ts.path, queue, payload, n, window); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	if err := <-consumerDone; err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	cpu := cputime.Process(b) - cpu0
	b.StopTimer()
	b.ReportMetric(float64(total)/elapsed.Seconds(), "events/s")
	// The clients' CPU too: they run in this process.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	if drops := ts.bus.Stats()[queue].Drops; drops > 0 {
		b.ReportMetric(float64(drops), "drops")
	}
}

// pipelinedPublisher keeps up to window publishes in flight on one
// connection and returns when n have been answered "accepted".
func pipelinedPublisher(path, queue string, payload []byte, n int64, window int) error {
	nc, err := net.Dial("unix", path)
	if err != nil {
		return err
	}
	defer nc.Close()
	credits := make(chan struct{}, window)
	for range window {
		credits <- struct{}{}
	}
	readErr := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(nc, 64<<10)
		for got := int64(0); got < n; got++ {
			line, err := br.ReadSlice('\n')
			if err != nil {
				readErr <- err
				return
			}
			if !bytes.Contains(line, []byte(`"accepted"`)) {
				readErr <- fmt.Errorf("publish reply %s", line)
				return
			}
			credits <- struct{}{}
		}
		readErr <- nil
	}()
	req := protocol.Request{Op: protocol.OpPublish, HasID: true, Queue: queue, HasQueue: true, Type: "CANDLE_UPDATE", HasType: true, Payload: payload}
	var buf []byte
	for sent := int64(0); sent < n; {
		<-credits
		buf = buf[:0]
		for {
			sent++
			req.ID = sent
			buf = protocol.AppendRequest(buf, &req)
			if sent == n || len(buf) > 32<<10 {
				break
			}
			select {
			case <-credits:
				continue
			default:
			}
			break
		}
		if _, err := nc.Write(buf); err != nil {
			return err
		}
	}
	return <-readErr
}

// drainConsumer subscribes and acks deliveries until total are acked,
// batching its acks into one write per read batch.
func drainConsumer(nc net.Conn, queue string, prefetch int, total int64, acked *atomic.Int64) error {
	sub := protocol.AppendRequest(nil, &protocol.Request{Op: protocol.OpSubscribe, ID: 1, HasID: true, Queue: queue, HasQueue: true, Prefetch: prefetch, HasPrefetch: true})
	if _, err := nc.Write(sub); err != nil {
		return err
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	bw := bufio.NewWriterSize(nc, 64<<10)
	ack := protocol.Request{Op: protocol.OpAck, HasSeq: true, Queue: queue, HasQueue: true}
	var out []byte
	for acked.Load() < total {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		m, err := protocol.DecodeMessage(line[:len(line)-1])
		if err != nil {
			return err
		}
		if m.Op != protocol.OpDeliver {
			if m.Status != protocol.StatusOK {
				return fmt.Errorf("consumer got %s", line)
			}
			continue
		}
		ack.Seq = m.Deliver.Seq
		out = protocol.AppendRequest(out[:0], &ack)
		bw.Write(out)
		acked.Add(1)
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
	return bw.Flush()
}

// benchWindow is how many publishes the benchmark keeps in flight, split
// evenly across its connections. It stays below the data queue's capacity
// (1000) so that the benchmark measures throughput, not publishers waiting
// for room in a full queue.
const benchWindow = 512
