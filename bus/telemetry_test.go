package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// traced builds a bus on a fake clock that records every span.
func traced(t *testing.T, queues []bus.QueueConfig, opts ...sdktrace.TracerProviderOption) (*bus.Bus, *testkit.Clock, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(append([]sdktrace.TracerProviderOption{sdktrace.WithSpanProcessor(rec)}, opts...)...)
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	b, clk := newBus(t, queues, bus.WithTracerProvider(tp))
	return b, clk, rec
}

func parentSC(t *testing.T) trace.SpanContext {
	t.Helper()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true})
}

func ended(rec *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func onlySpan(t *testing.T, rec *tracetest.SpanRecorder, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	spans := ended(rec, name)
	if len(spans) != 1 {
		var names []string
		for _, s := range rec.Ended() {
			names = append(names, s.Name())
		}
		t.Fatalf("want one %q span, have %d (all: %v)", name, len(spans), names)
	}
	return spans[0]
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// wantAttrs checks that s carries each attribute with the given value.
func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[string]any) {
	t.Helper()
	got := attrs(s)
	for k, v := range want {
		g, ok := got[attribute.Key(k)]
		if !ok {
			t.Errorf("%s: attribute %s missing", s.Name(), k)
			continue
		}
		if g.AsInterface() != v {
			t.Errorf("%s: %s = %v (%T), want %v (%T)", s.Name(), k, g.AsInterface(), g.AsInterface(), v, v)
		}
	}
}

func TestPublishSpan(t *testing.T) {
	tests := []struct {
		name       string
		parent     trace.SpanContext
		typ        string
		wantOut    string
		wantStatus codes.Code
	}{
		{"child of traceparent", parentSC(t), "ORDER_PLACED", "accepted", codes.Unset},
		{"new root without traceparent", trace.SpanContext{}, "ORDER_PLACED", "accepted", codes.Unset},
		{"invalid event is an error", parentSC(t), "", "error", codes.Error},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _, rec := traced(t, bus.DefaultQueues())
			publishN(t, b, "order", "ORDER_PLACED", 0, 2) // depth 2 at the traced publish
			before := len(rec.Ended())
			// The caller's ctx carries an unrelated span: it must not become the parent.
			ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: trace.TraceID{9}, SpanID: trace.SpanID{9}, TraceFlags: trace.FlagsSampled}))
			_, _ = b.Publish(ctx, bus.Event{Type: tt.typ, Payload: []byte(`1`), Parent: tt.parent}, "order")
			spans := rec.Ended()[before:]
			if len(spans) != 1 {
				t.Fatalf("%d spans for one publish", len(spans))
			}
			s := spans[0]
			if s.Name() != "publish order" || s.SpanKind() != trace.SpanKindProducer {
				t.Fatalf("span %q kind %v", s.Name(), s.SpanKind())
			}
			if tt.parent.IsValid() {
				if s.Parent().SpanID() != tt.parent.SpanID() || s.SpanContext().TraceID() != tt.parent.TraceID() {
					t.Errorf("parent = %v, want %v", s.Parent(), tt.parent)
				}
			} else if s.Parent().IsValid() {
				t.Errorf("parent = %v, want a new root", s.Parent())
			}
			want := map[string]any{
				"messaging.system":           "eventbus",
				"messaging.destination.name": "order",
				"messaging.operation.type":   "send",
				"messaging.operation.name":   "publish",
				"eventbus.event.type":        tt.typ,
				"eventbus.outcome":           tt.wantOut,
				"eventbus.queue.depth":       int64(2),
			}
			if tt.wantOut == "accepted" {
				want["messaging.message.id"] = "3"
			}
			wantAttrs(t, s, want)
			if s.Status().Code != tt.wantStatus {
				t.Errorf("status = %v, want %v", s.Status(), tt.wantStatus)
			}
		})
	}
}

func TestUnknownQueuePublishSpanHasBoundedName(t *testing.T) {
	b, _, rec := traced(t, bus.DefaultQueues())
	_, _ = b.Publish(context.Background(), event("T", 0), "no-such-queue")
	s := onlySpan(t, rec, "publish")
	wantAttrs(t, s, map[string]any{"eventbus.outcome": "error", "messaging.destination.name": "no-such-queue"})
	if s.Status().Code != codes.Error {
		t.Errorf("status = %v", s.Status())
	}
}

func TestWaitAndDropSpansOnTimeout(t *testing.T) {
	tests := []struct {
		policy     bus.Policy
		outcome    string
		wantDrop   bool
		wantStatus codes.Code
	}{
		{bus.PolicyDrop, "dropped", true, codes.Unset},
		{bus.PolicyFail, "timeout", false, codes.Error},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			b, clk, rec := traced(t, oneQueue("q", 1, tt.policy, time.Second))
			publishN(t, b, "q", "T", 0, 1)
			res := publishAsync(context.Background(), b, bus.Event{Type: "T", Parent: parentSC(t)}, "q")
			testkit.Eventually(t, "waiting", func() bool { return clk.Timers() == 1 })
			clk.Advance(time.Second)
			await(t, res)

			var pub sdktrace.ReadOnlySpan
			for _, s := range ended(rec, "publish q") {
				if s.Parent().SpanID() == parentSC(t).SpanID() {
					pub = s
				}
			}
			if pub == nil {
				t.Fatal("no publish span under the traceparent")
			}
			wantAttrs(t, pub, map[string]any{"eventbus.outcome": tt.outcome, "eventbus.queue.depth": int64(1)})
			if _, ok := attrs(pub)["messaging.message.id"]; ok {
				t.Error("a publish that was not accepted carries a message id")
			}
			if pub.Status().Code != tt.wantStatus {
				t.Errorf("publish status = %v, want %v", pub.Status(), tt.wantStatus)
			}
			wait := onlySpan(t, rec, "wait q")
			if wait.Parent().SpanID() != pub.SpanContext().SpanID() {
				t.Errorf("wait parent = %v, want the publish span", wait.Parent().SpanID())
			}
			if d := wait.EndTime().Sub(wait.StartTime()); d != time.Second {
				t.Errorf("wait span covers %v of fake time, want exactly the 1s waited", d)
			}
			wantAttrs(t, wait, map[string]any{"eventbus.outcome": tt.outcome, "messaging.destination.name": "q"})
			drops := ended(rec, "drop q")
			if !tt.wantDrop {
				if len(drops) != 0 {
					t.Fatalf("%d drop spans for a policy that never drops", len(drops))
				}
				return
			}
			if len(drops) != 1 {
				t.Fatalf("%d drop spans, want 1", len(drops))
			}
			d := drops[0]
			if d.Parent().SpanID() != pub.SpanContext().SpanID() || d.SpanContext().TraceID() != parentSC(t).TraceID() {
				t.Errorf("drop parent = %v, want the publish span", d.Parent())
			}
			wantAttrs(t, d, map[string]any{"eventbus.drop.reason": "timeout"})
			if d.Status().Code == codes.Error {
				t.Error("drop span has status Error; dropping is designed behaviour")
			}
		})
	}
}

func TestNoWaitSpanWhenRoom(t *testing.T) {
	b, _, rec := traced(t, bus.DefaultQueues())
	publishN(t, b, "data", "T", 0, 3)
	if n := len(ended(rec, "wait data")); n != 0 {
		t.Fatalf("%d wait spans without a full queue", n)
	}
}

func TestEvictionDropSpanParentIsEvictedPublish(t *testing.T) {
	b, _, rec := traced(t, oneQueue("risk", 1, bus.PolicyDropOldest, 0))
	publishN(t, b, "risk", "T", 0, 1)
	first := onlySpan(t, rec, "publish risk")
	publishN(t, b, "risk", "T", 1, 1)
	d := onlySpan(t, rec, "drop risk")
	if d.Parent().SpanID() != first.SpanContext().SpanID() || d.SpanContext().TraceID() != first.SpanContext().TraceID() {
		t.Errorf("drop parent = %v, want the evicted event's publish span %v", d.Parent().SpanID(), first.SpanContext().SpanID())
	}
	wantAttrs(t, d, map[string]any{"eventbus.drop.reason": "evicted", "messaging.message.id": "1"})
	if d.Status().Code == codes.Error {
		t.Error("eviction marked as Error")
	}
	if n := len(ended(rec, "wait risk")); n != 0 {
		t.Errorf("drop_oldest produced %d wait spans", n)
	}
}

func TestDeliverSpan(t *testing.T) {
	b, clk, rec := traced(t, bus.DefaultQueues())
	publishN(t, b, "signal", "SIGNAL_GENERATED", 0, 1)
	pub := onlySpan(t, rec, "publish signal")
	clk.Advance(250 * time.Millisecond)
	c := subscribe(t, b, "signal", 1)
	d := mustReceive(t, c)
	if n := len(ended(rec, "deliver signal")); n != 0 {
		t.Fatal("deliver span ended before ack/nack")
	}
	_ = c.Nack(d.Seq)
	d2 := mustReceive(t, c)
	_ = c.Ack(d2.Seq)
	spans := ended(rec, "deliver signal")
	if len(spans) != 2 {
		t.Fatalf("%d deliver spans, want 2", len(spans))
	}
	for i, s := range spans {
		if s.SpanKind() != trace.SpanKindConsumer {
			t.Errorf("kind = %v", s.SpanKind())
		}
		if s.Parent().SpanID() != pub.SpanContext().SpanID() || s.SpanContext().TraceID() != pub.SpanContext().TraceID() {
			t.Errorf("deliver %d parent = %v, want the publish span", i, s.Parent())
		}
		wantAttrs(t, s, map[string]any{
			"messaging.system":               "eventbus",
			"messaging.destination.name":     "signal",
			"messaging.message.id":           "1",
			"eventbus.time_in_queue_seconds": 0.25,
			"eventbus.redelivery.count":      int64(i),
			"eventbus.delivery.result":       []string{"nack", "ack"}[i],
		})
	}
	if !d.SpanContext.Equal(spans[0].SpanContext()) || !d2.SpanContext.Equal(spans[1].SpanContext()) {
		t.Errorf("Delivery.SpanContext is not the deliver span's context")
	}
}

func TestDeliveryCarriesTraceparentWithoutTracing(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	p := parentSC(t)
	if _, err := b.Publish(context.Background(), bus.Event{Type: "T", Parent: p}, "order"); err != nil {
		t.Fatal(err)
	}
	d := mustReceive(t, subscribe(t, b, "order", 1))
	if !d.SpanContext.Equal(p) || !d.Event.Parent.Equal(p) {
		t.Errorf("delivery context = %v, want the publisher's %v", d.SpanContext, p)
	}
}

// shedPublishSpans hands out a no-op span for the data queue's publish
// spans, as the telemetry package's provider does while its export queue
// is full: the span carries the parent's context and records nothing.
type shedPublishSpans struct {
	embedded.TracerProvider
	sdk *sdktrace.TracerProvider
}

func (p shedPublishSpans) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return shedPublishTracer{sdk: p.sdk.Tracer(name, opts...)}
}

type shedPublishTracer struct {
	embedded.Tracer
	sdk trace.Tracer
}

func (t shedPublishTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if name == "publish data" {
		return tracenoop.Tracer{}.Start(ctx, name)
	}
	return t.sdk.Start(ctx, name, opts...)
}

// TestUntracedPublishGetsNoWaitOrDeliverSpan: an event whose publish span
// was not recorded gets no wait or deliver span, which would otherwise
// hang straight under the publisher's own span as if there had been no
// publish; its delivery carries the publisher's context on. Its drop is
// still traced: every drop is.
func TestUntracedPublishGetsNoWaitOrDeliverSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	b, clk := newBus(t, oneQueue("data", 1, bus.PolicyDrop, time.Second), bus.WithTracerProvider(shedPublishSpans{sdk: tp}))
	p := parentSC(t)
	ev := func(n int) bus.Event { e := event("T", n); e.Parent = p; return e }
	if _, err := b.Publish(context.Background(), ev(1), "data"); err != nil {
		t.Fatal(err)
	}
	// The queue is full: one publish waits for room and is admitted, the
	// next one waits and is dropped.
	admitted := publishAsync(context.Background(), b, ev(2), "data")
	testkit.Eventually(t, "waiting", func() bool { return clk.Timers() == 1 })
	c := subscribe(t, b, "data", 1)
	d := mustReceive(t, c)
	if !d.SpanContext.Equal(p) {
		t.Errorf("delivery context = %v, want the publisher's %v", d.SpanContext, p)
	}
	if err := c.Ack(d.Seq); err != nil {
		t.Fatal(err)
	}
	if r := await(t, admitted); r.out != bus.Accepted {
		t.Fatalf("second publish: %v %v", r.out, r.err)
	}
	dropped := publishAsync(context.Background(), b, ev(3), "data")
	testkit.Eventually(t, "waiting", func() bool { return clk.Timers() == 1 })
	clk.Advance(time.Second)
	if r := await(t, dropped); r.out != bus.Dropped {
		t.Fatalf("third publish: %v %v", r.out, r.err)
	}
	for _, name := range []string{"publish data", "wait data", "deliver data"} {
		if n := len(ended(rec, name)); n != 0 {
			t.Errorf("%d %q spans, want none", n, name)
		}
	}
	if drop := onlySpan(t, rec, "drop data"); drop.Parent().SpanID() != p.SpanID() {
		t.Errorf("drop span parent %v, want the publisher's span %v", drop.Parent().SpanID(), p.SpanID())
	}
}

// metered builds a bus whose metrics go to a manual reader.
func metered(t *testing.T, queues []bus.QueueConfig) (*bus.Bus, *testkit.Clock, *sdkmetric.ManualReader) {
	t.Helper()
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	b, clk := newBus(t, queues, bus.WithMeterProvider(mp))
	return b, clk, r
}

func collect(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// series returns the int64 data points of m keyed by "queue[/label]".
func series(t *testing.T, m metricdata.Metrics, label string) map[string]int64 {
	t.Helper()
	var pts []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		if !d.IsMonotonic || d.Temporality != metricdata.CumulativeTemporality {
			t.Errorf("%s is not a cumulative monotonic counter", m.Name)
		}
		pts = d.DataPoints
	case metricdata.Gauge[int64]:
		pts = d.DataPoints
	default:
		t.Fatalf("%s has data %T", m.Name, m.Data)
	}
	out := map[string]int64{}
	for _, p := range pts {
		q, _ := p.Attributes.Value("queue")
		key := q.AsString()
		if label != "" {
			v, ok := p.Attributes.Value(attribute.Key(label))
			if !ok {
				t.Errorf("%s point without %s: %v", m.Name, label, p.Attributes)
			}
			key += "/" + v.AsString()
		}
		out[key] = p.Value
	}
	return out
}

func TestMetricsExistFromStartUp(t *testing.T) {
	_, _, r := metered(t, bus.DefaultQueues())
	ms := collect(t, r)
	queues := []string{"data", "signal", "order"}
	tests := []struct {
		name   string
		label  string
		values []string
		want   map[string]int64 // non-zero expectations
	}{
		{"eventbus.events.published", "outcome", []string{"accepted", "dropped", "timeout", "cancelled", "error", "duplicate"}, nil},
		{"eventbus.events.dropped", "reason", []string{"timeout", "evicted"}, nil},
		{"eventbus.events.delivered", "", nil, nil},
		{"eventbus.events.redelivered", "", nil, nil},
		{"eventbus.events.dead_lettered", "", nil, nil},
		{"eventbus.storage.errors", "", nil, nil},
		{"eventbus.queue.depth", "", nil, nil},
		{"eventbus.publishers.waiting", "", nil, nil},
		{"eventbus.consumers", "", nil, nil},
		{"eventbus.queue.capacity", "", nil, map[string]int64{"data": 1000, "signal": 100, "order": 50}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ok := ms[tt.name]
			if !ok {
				t.Fatalf("metric %s missing at start-up", tt.name)
			}
			got := series(t, m, tt.label)
			n := 0
			for _, q := range queues {
				keys := []string{q}
				if tt.label != "" {
					keys = nil
					for _, v := range tt.values {
						keys = append(keys, q+"/"+v)
					}
				}
				for _, k := range keys {
					v, ok := got[k]
					if !ok {
						t.Errorf("series %s missing", k)
					}
					if v != tt.want[k] {
						t.Errorf("series %s = %d, want %d", k, v, tt.want[k])
					}
					n++
				}
			}
			if len(got) != n {
				t.Errorf("%d series, want %d: %v", len(got), n, got)
			}
		})
	}
}

func TestMetricsMatchStats(t *testing.T) {
	// The clock fires a timer at its deadline, so the data publish below
	// waits exactly its timeout: 1.5 s, the wait the histogram must hold.
	b, clk, r := metered(t, []bus.QueueConfig{
		{Name: "data", Capacity: 2, Policy: bus.PolicyDrop, Timeout: 1500 * time.Millisecond},
		{Name: "risk", Capacity: 1, Policy: bus.PolicyDropOldest},
		{Name: "order", Capacity: 1, Policy: bus.PolicyBlock},
	})
	publishN(t, b, "data", "T", 0, 2)
	publishN(t, b, "risk", "T", 0, 3)
	publishN(t, b, "order", "T", 0, 1)
	res := publishAsync(context.Background(), b, event("T", 9), "data")
	testkit.Eventually(t, "waiting", func() bool { return clk.Timers() == 1 })
	clk.Advance(1500 * time.Millisecond)
	await(t, res)
	ctx, cancel := context.WithCancel(context.Background())
	blocked := publishAsync(ctx, b, event("T", 9), "order")
	testkit.Eventually(t, "order waiter", func() bool { return b.Stats()["order"].Waiting == 1 })
	c := subscribe(t, b, "data", 2)
	clk.Advance(2 * time.Millisecond)
	d := mustReceive(t, c)
	_ = c.Nack(d.Seq)
	_ = mustReceive(t, c)

	ms := collect(t, r)
	st := b.Stats()
	check := func(metric, label string, want map[string]int64) {
		t.Helper()
		got := series(t, ms[metric], label)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s{%s} = %d, want %d", metric, k, got[k], v)
			}
		}
	}
	check("eventbus.events.published", "outcome", map[string]int64{
		"data/accepted": int64(st["data"].Published[bus.Accepted]), "data/dropped": 1,
		"risk/accepted": 3, "order/accepted": 1, "order/cancelled": 0})
	check("eventbus.events.dropped", "reason", map[string]int64{
		"data/timeout": 1, "data/evicted": 0, "risk/evicted": 2, "risk/timeout": 0})
	check("eventbus.events.delivered", "", map[string]int64{"data": 2})
	check("eventbus.events.redelivered", "", map[string]int64{"data": 1})
	check("eventbus.queue.depth", "", map[string]int64{"data": int64(st["data"].Size), "risk": 1, "order": 1})
	check("eventbus.publishers.waiting", "", map[string]int64{"order": 1, "data": 0})
	check("eventbus.consumers", "", map[string]int64{"data": 1, "order": 0})

	// Histograms: in seconds, explicit microsecond-scale boundaries, queue attribute.
	for _, name := range []string{"eventbus.publish.duration", "eventbus.queue.wait.duration", "eventbus.event.queued.duration"} {
		m, ok := ms[name]
		if !ok {
			t.Errorf("histogram %s missing", name)
			continue
		}
		if m.Unit != "s" {
			t.Errorf("%s unit %q", name, m.Unit)
		}
		h, ok := m.Data.(metricdata.Histogram[float64])
		if !ok {
			t.Fatalf("%s is %T", name, m.Data)
		}
		for _, p := range h.DataPoints {
			if p.Bounds[0] > 1e-5 {
				t.Errorf("%s first boundary %v: too coarse for microsecond waits", name, p.Bounds[0])
			}
			if _, ok := p.Attributes.Value("queue"); !ok {
				t.Errorf("%s point without queue: %v", name, p.Attributes)
			}
		}
	}
	waits := ms["eventbus.queue.wait.duration"].Data.(metricdata.Histogram[float64]).DataPoints
	var dataWait *metricdata.HistogramDataPoint[float64]
	for i := range waits {
		if q, _ := waits[i].Attributes.Value("queue"); q.AsString() == "data" {
			dataWait = &waits[i]
		}
	}
	if dataWait == nil || dataWait.Count != 1 || dataWait.Sum != 1.5 {
		t.Errorf("data wait histogram = %+v, want one 1.5 s wait", dataWait)
	}
	queued := ms["eventbus.event.queued.duration"].Data.(metricdata.Histogram[float64]).DataPoints
	var total uint64
	for _, p := range queued {
		total += p.Count
	}
	if total != 2 {
		t.Errorf("queued histogram counts %d deliveries, want 2", total)
	}
	cancel()
	await(t, blocked)
	if got := series(t, collect(t, r)["eventbus.events.published"], "outcome")["order/cancelled"]; got != 1 {
		t.Errorf("order/cancelled = %d after cancel, want 1", got)
	}
}
