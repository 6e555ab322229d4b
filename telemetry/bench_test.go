package telemetry

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// BenchmarkBusTelemetry measures in-process publish + deliver + ack on the
// real bus with telemetry off, metrics only, metrics plus spans under the
// default export CPU budget (which may shed spans: see spans-lost/op), and
// metrics plus every span exported (no budget), over OTLP gRPC to a server
// that takes the requests without decoding them, so that only the bus's
// own cost is measured. Compare the modes as ratios within one run:
//
//	go test -run '^$' -bench BusTelemetry -benchmem ./telemetry/
func BenchmarkBusTelemetry(b *testing.B) {
	modes := []struct {
		name string
		cfg  func(addr string) Config
	}{
		{"off", func(string) Config { return Config{Disabled: true} }},
		{"metrics", func(string) Config { return Config{TracesDisabled: true} }},
		{"spans", func(addr string) Config { return Config{OTLPEndpoint: addr, OTLPInsecure: true} }},
		{"spans-all", func(addr string) Config { return Config{OTLPEndpoint: addr, OTLPInsecure: true, SpanExportCPU: 1} }},
	}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			cfg := m.cfg(startDiscardCollector(b))
			cfg.LookupEnv = envMap(nil)
			cfg.MetricInterval = time.Hour
			tel, err := Setup(context.Background(), cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = tel.Shutdown(context.Background()) }()
			bs, err := bus.New([]bus.QueueConfig{{Name: "data", Capacity: 1024, Policy: bus.PolicyBlock}},
				bus.WithTracerProvider(tel.TracerProvider()), bus.WithMeterProvider(tel.MeterProvider()),
				bus.WithHistograms(tel.BusHistograms()))
			if err != nil {
				b.Fatal(err)
			}
			cons, err := bs.Subscribe("data", 256)
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for range b.N {
					d, err := cons.Receive(context.Background())
					if err != nil {
						return
					}
					_ = cons.Ack(d.Seq)
				}
			}()
			ev := bus.Event{Type: "CANDLE_UPDATE", Payload: json.RawMessage(`{"s":"AAPL","c":1.5}`)}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if o, err := bs.Publish(ctx, ev, "data"); o != bus.Accepted {
					b.Fatal(o, err)
				}
			}
			<-done
			b.StopTimer()
			cons.Close()
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			_, _ = bs.Shutdown(sctx)
			cancel()
			s := tel.Stats()
			b.ReportMetric(float64(s.SpansDroppedQueueFull)/float64(b.N), "spans-lost/op")
		})
	}
}
