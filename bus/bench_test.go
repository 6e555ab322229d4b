package bus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/cputime"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// BenchmarkPublishDeliver measures one in-process publish, receive and ack
// per iteration, per default queue, in one goroutine.
//
//	go test -run '^$' -bench 'PublishDeliver' -benchmem ./bus
func BenchmarkPublishDeliver(b *testing.B) {
	for _, tel := range benchTelemetry() {
		for _, qc := range bus.DefaultQueues() {
			b.Run(tel.name+"/"+qc.Name, func(b *testing.B) {
				bb, err := bus.New(bus.DefaultQueues(), tel.opts()...)
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _, _ = bb.Shutdown(context.Background()) }()
				c, err := bb.Subscribe(qc.Name, 1)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				ev := bus.Event{Type: "CANDLE_UPDATE", Payload: json.RawMessage(`{"s":"BTCUSDT","c":1}`)}
				benchRoundTrips(b, bb, c, ev, nil)
			})
		}
	}
}

// BenchmarkPublishDeliverConcurrent runs publishers (b.RunParallel) against
// one consumer goroutine that receives and acks, per default queue: the
// shape of the sidecar under load, with the queue filling and waits for room.
//
//	go test -run '^$' -bench 'PublishDeliverConcurrent' -benchmem ./bus
func BenchmarkPublishDeliverConcurrent(b *testing.B) {
	for _, qc := range bus.DefaultQueues() {
		b.Run(qc.Name, func(b *testing.B) {
			queues := bus.DefaultQueues()
			for i := range queues {
				// Publishers must never lose events here: wait without limit.
				queues[i].Policy, queues[i].Timeout = bus.PolicyBlock, 0
			}
			bb, err := bus.New(queues)
			if err != nil {
				b.Fatal(err)
			}
			c, err := bb.Subscribe(qc.Name, 64)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					d, err := c.Receive(ctx)
					if err != nil {
						return
					}
					_ = c.Ack(d.Seq)
				}
			}()
			ev := bus.Event{Type: "CANDLE_UPDATE", Payload: json.RawMessage(`{"s":"BTCUSDT","c":1}`)}
			b.ReportAllocs()
			cpu := startCPUClock(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if out, err := bb.Publish(ctx, ev, qc.Name); out != bus.Accepted {
						b.Error(out, err)
						return
					}
				}
			})
			b.StopTimer()
			for bb.Stats()[qc.Name].Acked < uint64(b.N) {
				time.Sleep(50 * time.Microsecond) // the consumer drains the tail
			}
			cpu.report(b) // publishers and the consumer together
			cancel()
			<-done
			c.Close()
			_, _ = bb.Shutdown(context.Background())
		})
	}
}

// benchRoundTrips is the measured loop of the sequential benchmarks: b.N
// rounds of a publish of ev to c's queue, a receive and an ack, in one
// goroutine, reporting allocations and CPU time per round. The publish is
// Publish, which must accept, or with done set PublishAsync, whose outcome
// done checks. Only a branch on done is added to each round.
func benchRoundTrips(b *testing.B, bb *bus.Bus, c *bus.Consumer, ev bus.Event, done func(bus.Outcome, error)) {
	b.Helper()
	ctx := context.Background()
	queue := c.Queue()
	b.ReportAllocs()
	cpu := startCPUClock(b)
	b.ResetTimer()
	for range b.N {
		if done != nil {
			bb.PublishAsync(ctx, ev, queue, done)
		} else if out, err := bb.Publish(ctx, ev, queue); out != bus.Accepted {
			b.Fatal(out, err)
		}
		d, err := c.Receive(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Ack(d.Seq); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu.report(b)
}

type benchTel struct {
	name string
	opts func() []bus.Option
}

// benchTelemetry compares the noop default with the real SDKs (metrics into
// a manual reader, spans sampled and dropped without an exporter), so the
// cost of instrumentation shows as a ratio within one run. The duration
// histograms are the bus's own, as in the sidecar by default, but in the
// last case, where they are the SDK's (as with exemplars on).
func benchTelemetry() []benchTel {
	return []benchTel{
		{"noop", func() []bus.Option { return nil }},
		{"metrics", func() []bus.Option {
			return []bus.Option{bus.WithMeterProvider(sdkMeterProvider()), bus.WithHistograms(bus.NewHistograms())}
		}},
		{"metrics+spans", func() []bus.Option {
			return []bus.Option{bus.WithMeterProvider(sdkMeterProvider()), bus.WithHistograms(bus.NewHistograms()),
				bus.WithTracerProvider(sdkTracerProvider())}
		}},
		{"metrics-sdk-histograms", func() []bus.Option {
			return []bus.Option{bus.WithMeterProvider(sdkMeterProvider())}
		}},
	}
}

// sdkMeterProvider is configured as the sidecar's (telemetry.Setup) is by
// default: exemplars off, so that the benchmark measures what the sidecar
// pays per event and not the SDK's exemplar reservoir.
func sdkMeterProvider() metric.MeterProvider {
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
}

func sdkTracerProvider() trace.TracerProvider {
	return sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
}

// cpuClock measures the CPU time this process spent, so that a benchmark
// can report cpu-ns/op next to wall-clock ns/op: on a machine shared with
// other work, wall time per op swings with the load, CPU time much less.
type cpuClock struct{ start time.Duration }

func startCPUClock(b *testing.B) cpuClock {
	b.Helper()
	return cpuClock{start: cputime.Process(b)}
}

func (c cpuClock) report(b *testing.B) {
	b.Helper()
	b.ReportMetric(float64(cputime.Process(b)-c.start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkPublishDeliverWindow measures publish, receive and ack per event
// in windows of prefetch events: a window is published, received and then
// acked in delivery order (or newest first), so that the consumer holds up
// to prefetch deliveries in flight, as a pipelining consumer does.
//
//	go test -run '^$' -bench 'PublishDeliverWindow' -benchmem ./bus
func BenchmarkPublishDeliverWindow(b *testing.B) {
	for _, tt := range []struct {
		prefetch int
		newest   bool
	}{{16, false}, {256, false}, {256, true}} {
		name := fmt.Sprintf("prefetch %d/in order", tt.prefetch)
		if tt.newest {
			name = fmt.Sprintf("prefetch %d/newest first", tt.prefetch)
		}
		b.Run(name, func(b *testing.B) {
			queues := []bus.QueueConfig{{Name: "q", Capacity: tt.prefetch, Policy: bus.PolicyBlock}}
			bb, err := bus.New(queues)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _, _ = bb.Shutdown(context.Background()) }()
			c, err := bb.Subscribe("q", tt.prefetch)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			ctx := context.Background()
			ev := bus.Event{Type: "CANDLE_UPDATE", Payload: json.RawMessage(`{"s":"BTCUSDT","c":1}`)}
			seqs := make([]uint64, tt.prefetch)
			b.ReportAllocs()
			cpu := startCPUClock(b)
			b.ResetTimer()
			for done := 0; done < b.N; done += tt.prefetch {
				for range seqs {
					if out, err := bb.Publish(ctx, ev, "q"); out != bus.Accepted {
						b.Fatal(out, err)
					}
				}
				for i := range seqs {
					d, err := c.Receive(ctx)
					if err != nil {
						b.Fatal(err)
					}
					seqs[i] = d.Seq
				}
				for i := range seqs {
					if tt.newest {
						i = len(seqs) - 1 - i
					}
					if err := c.Ack(seqs[i]); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			cpu.report(b)
		})
	}
}
