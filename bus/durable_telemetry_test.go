package bus_test

import (
	"context"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestDurableTelemetry(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	fsys := &faultFS{}
	b, _ := openDurable(t, t.TempDir(), durableQueues(), testkit.NewClock(),
		bus.WithTracerProvider(tp), bus.WithMeterProvider(mp), bus.WithWALOptions(wal.Options{FS: fsys}))

	ev := event("ORDER", 1)
	ev.Parent = parentSC(t)
	if out, err := b.Publish(context.Background(), ev, "order"); out != bus.Accepted {
		t.Fatal(out, err)
	}
	pub := onlySpan(t, rec, "publish order")
	if v, ok := attrs(pub)[bus.AttrWALSyncMs]; !ok || v.AsFloat64() <= 0 {
		t.Fatalf("publish span: %s = %v (present %v), want the sync time", bus.AttrWALSyncMs, v.AsFloat64(), ok)
	}

	c := subscribe(t, b, "order", 1)
	for _, reason := range []string{"first", "poison"} {
		d := mustReceive(t, c)
		if err := c.NackReason(d.Seq, reason); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, "the move is done", func() bool { return b.Stats()["order"].DeadLettered == 1 })
	dl := onlySpan(t, rec, "dead_letter order")
	if dl.Parent().SpanID() != pub.SpanContext().SpanID() {
		t.Fatalf("dead_letter span parent %v, want the publish span %v", dl.Parent().SpanID(), pub.SpanContext().SpanID())
	}
	wantAttrs(t, dl, map[string]any{
		string(bus.AttrDeadLetterQueue):  "dlq",
		string(bus.AttrDeadLetterReason): "poison",
		string(bus.AttrDeliveryCount):    int64(2),
		string(bus.AttrMessageID):        "1",
	})
	// The dead letter's deliveries stay in the original trace.
	dc := subscribe(t, b, "dlq", 1)
	if d := mustReceive(t, dc); d.SpanContext.TraceID() != ev.Parent.TraceID() {
		t.Fatalf("dead letter delivered in trace %v, want %v", d.SpanContext.TraceID(), ev.Parent.TraceID())
	}

	fsys.setFull(true)
	if out, _ := b.Publish(context.Background(), event("ORDER", 2), "order"); out != bus.Failed {
		t.Fatalf("publish on a full disk: %v", out)
	}
	fsys.setFull(false)

	ms := collect(t, r)
	if got := series(t, ms["eventbus.events.dead_lettered"], ""); got["order"] != 1 || got["dlq"] != 0 || got["data"] != 0 {
		t.Fatalf("eventbus.events.dead_lettered = %v, want order 1", got)
	}
	if got := series(t, ms["eventbus.storage.errors"], ""); got["order"] != 1 || got["dlq"] != 0 {
		t.Fatalf("eventbus.storage.errors = %v, want order 1", got)
	}
	h, ok := ms["eventbus.wal.sync.duration"].Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("eventbus.wal.sync.duration: %T", ms["eventbus.wal.sync.duration"].Data)
	}
	counts := map[string]uint64{}
	for _, p := range h.DataPoints {
		q, _ := p.Attributes.Value("queue")
		counts[q.AsString()] = p.Count
	}
	if counts["order"] == 0 || counts["dlq"] == 0 || counts["data"] != 0 {
		t.Fatalf("sync histogram counts %v, want syncs on order and dlq only", counts)
	}
	if ms["eventbus.wal.sync.duration"].Unit != "s" {
		t.Fatalf("sync histogram unit %q, want s", ms["eventbus.wal.sync.duration"].Unit)
	}
}
