package transport

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// metricValue returns the sum or gauge value of the named int64 metric.
func metricValue(t *testing.T, r *sdkmetric.ManualReader, name string) (int64, bool) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				var v int64
				for _, p := range d.DataPoints {
					v += p.Value
				}
				return v, true
			case metricdata.Gauge[int64]:
				var v int64
				for _, p := range d.DataPoints {
					v += p.Value
				}
				return v, true
			}
		}
	}
	return 0, false
}

func TestConnectionsGaugeAndInvalidTraceparentCounter(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	ts := startServer(t, withConfig(func(c *Config) { c.MeterProvider = mp }))

	if v, ok := metricValue(t, reader, "eventbus.traceparent.invalid"); !ok || v != 0 {
		t.Fatalf("eventbus.traceparent.invalid = %d (exists %v), want a 0 series from start-up", v, ok)
	}
	a := dialRaw(t, ts.path)
	b := dialRaw(t, ts.path)
	a.expectReply(a.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	b.expectReply(b.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	if v, _ := metricValue(t, reader, "eventbus.connections"); v != 2 {
		t.Fatalf("eventbus.connections = %d, want 2", v)
	}
	tests := []string{"garbage", "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "00-00000000000000000000000000000000-b7ad6b7169203331-01"}
	for i, tp := range tests {
		a.expectReply(a.roundTrip(`{"op":"publish","id":%d,"type":"T","traceparent":%q}`, i+2, tp), int64(i+2), protocol.StatusAccepted)
	}
	if v, _ := metricValue(t, reader, "eventbus.traceparent.invalid"); v != int64(len(tests)) {
		t.Fatalf("eventbus.traceparent.invalid = %d, want %d", v, len(tests))
	}
	if n := ts.bus.Stats()["data"].Size; n != len(tests) {
		t.Fatalf("data size %d: events with a bad traceparent must still be accepted", n)
	}
	b.nc.Close()
	testkit.Eventually(t, "gauge back to 1", func() bool {
		v, _ := metricValue(t, reader, "eventbus.connections")
		return v == 1
	})
}

// TestDeliverCarriesDeliverSpanTraceparent checks that the deliver frame
// carries the bus's deliver span, in the publisher's trace.
func TestDeliverCarriesDeliverSpanTraceparent(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	ts := startServer(t, withBusOptions(bus.WithTracerProvider(tp)))
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"ORDER_PLACED","traceparent":%q}`, parent), 1, protocol.StatusAccepted)
	c.expectReply(c.roundTrip(`{"op":"subscribe","id":2,"queue":"order"}`), 2, protocol.StatusOK)
	d := c.recv()
	sc, err := protocol.ParseTraceparent(d.Deliver.Traceparent)
	if err != nil {
		t.Fatalf("deliver traceparent %q: %v", d.Deliver.Traceparent, err)
	}
	if sc.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("deliver trace id %s, want the publisher's", sc.TraceID())
	}
	if sc.SpanID().String() == "b7ad6b7169203331" {
		t.Fatal("deliver traceparent is the publisher's span, want the deliver span")
	}
	c.send(`{"op":"ack","seq":%d}`, d.Deliver.Seq)
	testkit.Eventually(t, "deliver span ended", func() bool {
		for _, s := range exp.GetSpans() {
			if s.SpanContext.SpanID() == sc.SpanID() {
				return s.Name == "deliver order"
			}
		}
		return false
	})
}
