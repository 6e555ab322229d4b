package bus_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// TestHotPathDoesNotAllocate pins the hot path's zero allocations per
// publish, receive and ack, with the noop default and with real SDK
// metrics (precomputed attribute sets, observable counters), the duration
// histograms in the SDK or in the bus.
func TestHotPathDoesNotAllocate(t *testing.T) {
	tests := []struct {
		name string
		opts []bus.Option
	}{
		{"noop", nil},
		{"sdk metrics", []bus.Option{bus.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())))}},
		{"sdk metrics, bus histograms", []bus.Option{bus.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))),
			bus.WithHistograms(bus.NewHistograms())}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := bus.New(bus.DefaultQueues(), tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _, _ = b.Shutdown(cancelledCtx()) })
			c := subscribe(t, b, "order", 1)
			ctx := context.Background()
			ev := bus.Event{Type: "ORDER_PLACED", Payload: json.RawMessage(`{"id":1}`)}
			allocs := testing.AllocsPerRun(1000, func() {
				if out, err := b.Publish(ctx, ev, "order"); out != bus.Accepted {
					t.Fatal(out, err)
				}
				d, err := c.Receive(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Ack(d.Seq); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("%v allocations per publish+receive+ack, want 0", allocs)
			}
		})
	}
}
