package telemetry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// setup runs Setup with an empty environment plus env, and shuts down at
// the end of the test.
func setup(t *testing.T, cfg Config, env map[string]string) *Telemetry {
	t.Helper()
	cfg.LookupEnv = envMap(env)
	tel, err := Setup(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(ctx)
	})
	return tel
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics status %d", rec.Code)
	}
	if got := rec.Header().Get("Content-Type"); got != promContentType {
		t.Errorf("/metrics Content-Type %q, want %q", got, promContentType)
	}
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

// emitSpans ends n publish spans on the order queue (never sampled out).
func emitSpans(tp trace.TracerProvider, n int) {
	tr := tp.Tracer("test")
	for range n {
		_, s := tr.Start(context.Background(), "publish order",
			trace.WithAttributes(attribute.String("messaging.destination.name", "order")))
		s.SetAttributes(attribute.String("eventbus.outcome", "accepted"))
		s.End()
	}
}

func TestSetupExportsSpansAndMetricsOverOTLP(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	tel := setup(t, Config{
		OTLPEndpoint: rcv.addr, OTLPInsecure: true, ServiceVersion: "1.2.3", InstanceID: "test-instance",
		MetricInterval: time.Hour, // only ForceFlush exports
	}, map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.name=from-attrs"})

	emitSpans(tel.TracerProvider(), 3)
	c, err := tel.MeterProvider().Meter("test").Int64Counter("eventbus.events.dropped")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 1)
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatalf("ForceFlush: %v", err)
	}
	testkit.Eventually(t, "3 spans at the receiver", func() bool { return len(rcv.spanNames()) == 3 })
	testkit.Eventually(t, "metrics at the receiver", func() bool {
		m := rcv.metricNames()
		return m["eventbus.events.dropped"] && m[MetricSpansDropped] && m[MetricExportsFailed]
	})

	got := map[string]string{}
	for _, kv := range rcv.resourceSpans()[0].GetResource().GetAttributes() {
		got[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	want := map[string]string{
		"service.name": "from-attrs", "service.version": "1.2.3", "service.instance.id": "test-instance",
		"deployment.environment": "test", "telemetry.sdk.language": "go",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("resource %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if s := tel.Stats(); s.SpansExported != 3 || s.SpansDroppedQueueFull+s.SpansDroppedExportFailed != 0 {
		t.Errorf("stats = %+v, want 3 exported, none lost", s)
	}
}

func TestMetricsHandlerPrometheusNames(t *testing.T) {
	tel := setup(t, Config{}, nil)
	m := tel.MeterProvider().Meter("github.com/eventbus-sidecar/eventbus-sidecar/bus")
	dropped, _ := m.Int64Counter("eventbus.events.dropped", metric.WithUnit("{event}"))
	dropped.Add(context.Background(), 2, metric.WithAttributes(attribute.String("queue", "data"), attribute.String("reason", "timeout")))
	depth, _ := m.Int64Gauge("eventbus.queue.depth", metric.WithUnit("{event}"))
	depth.Record(context.Background(), 50, metric.WithAttributes(attribute.String("queue", "order")))
	hist, _ := m.Float64Histogram("eventbus.publish.duration", metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(1e-6, 1e-5, 1e-3, 1))
	hist.Record(context.Background(), 3e-6, metric.WithAttributes(attribute.String("queue", "data")))

	body := scrape(t, tel.MetricsHandler())
	for _, want := range []string{
		`eventbus_events_dropped_total{`,
		`queue="data",reason="timeout"} 2`,
		`eventbus_queue_depth{`,
		`eventbus_publish_duration_seconds_bucket{`,
		`le="1e-06"} 0`,
		`le="1e-05"} 1`,
		`eventbus_telemetry_spans_dropped_total{`,
		`reason="queue_full"} 0`,
		`eventbus_telemetry_exports_failed_total{`,
		`signal="metrics"} 0`,
		`target_info{`,
		`service_name="eventbus-sidecar"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}

func TestDisabledIsNoop(t *testing.T) {
	tel := setup(t, Config{OTLPEndpoint: "127.0.0.1:1"}, map[string]string{"OTEL_SDK_DISABLED": "true"})
	_, s := tel.TracerProvider().Tracer("t").Start(context.Background(), "x")
	if s.IsRecording() {
		t.Error("disabled telemetry records spans")
	}
	c, _ := tel.MeterProvider().Meter("t").Int64Counter("eventbus.events.published")
	c.Add(context.Background(), 1)
	if body := scrape(t, tel.MetricsHandler()); strings.Contains(body, "eventbus_") {
		t.Errorf("disabled telemetry serves metrics:\n%s", body)
	}
}

func TestNoEndpointMeansNoSpans(t *testing.T) {
	tel := setup(t, Config{}, nil)
	_, s := tel.TracerProvider().Tracer("t").Start(context.Background(), "x")
	if s.IsRecording() {
		t.Error("spans are recorded although nothing exports them")
	}
}

func TestCollectorDownLossCountedAndExportResumes(t *testing.T) {
	addr := freeAddr(t)
	tel := setup(t, Config{
		OTLPEndpoint: addr, OTLPInsecure: true, SpanQueueSize: 16, SpanBatchSize: 4,
		SpanBatchDelay: 10 * time.Millisecond, ExportTimeout: 200 * time.Millisecond, MetricInterval: time.Hour,
	}, nil)

	// Nothing listens: every End returns at once, the queue stays bounded,
	// and every span is accounted for as lost.
	emitSpans(tel.TracerProvider(), 5000)
	if s := tel.Stats(); s.SpanQueueSize > s.SpanQueueCapacity || s.SpanQueueCapacity != 16 {
		t.Fatalf("span queue %d of %d: not bounded", s.SpanQueueSize, s.SpanQueueCapacity)
	}
	testkit.Eventually(t, "failed span exports counted", func() bool {
		s := tel.Stats()
		return s.SpansDroppedQueueFull > 0 && s.SpanExportsFailed > 0 && s.SpansDroppedExportFailed > 0
	})
	_ = tel.MeterProvider() // the metric export fails too, and is counted
	if err := tel.ForceFlush(context.Background()); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("ForceFlush while the collector is down: %v", err)
	}
	testkit.Eventually(t, "failed metric export counted", func() bool { return tel.Stats().MetricExportsFailed > 0 })
	body := scrape(t, tel.MetricsHandler())
	for _, want := range []string{`reason="queue_full"`, `reason="export_failed"`, `signal="traces"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// The collector comes back on the same address: export resumes.
	rcv := startReceiver(t, addr)
	testkit.Eventually(t, "spans exported after the collector returned", func() bool {
		emitSpans(tel.TracerProvider(), 1)
		return len(rcv.spanNames()) > 0
	})
	testkit.Eventually(t, "metrics exported after the collector returned", func() bool {
		_ = tel.ForceFlush(context.Background())
		return rcv.metricNames()[MetricSpansDropped]
	})
}

func TestSlowCollectorNeverBlocksAndAccountsForEverySpan(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	rcv.block()
	cfg := Config{
		OTLPEndpoint: rcv.addr, OTLPInsecure: true, SpanQueueSize: 32, SpanBatchSize: 8,
		SpanBatchDelay: 10 * time.Millisecond, ExportTimeout: 300 * time.Millisecond, MetricInterval: time.Hour,
		LookupEnv: envMap(nil),
	}
	tel, err := Setup(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	emitSpans(tel.TracerProvider(), n)
	if s := tel.Stats(); s.SpanQueueSize > s.SpanQueueCapacity {
		t.Fatalf("span queue %d over capacity %d", s.SpanQueueSize, s.SpanQueueCapacity)
	}
	testkit.Eventually(t, "queue-full drops counted", func() bool { return tel.Stats().SpansDroppedQueueFull > 0 })
	rcv.open()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	s := tel.Stats()
	lost := s.SpansDroppedQueueFull + s.SpansDroppedExportFailed + s.SpansDroppedShutdown
	if s.SpansExported+lost != n {
		t.Errorf("exported %d + lost %d = %d, want every one of %d spans accounted for (%+v)",
			s.SpansExported, lost, s.SpansExported+lost, n, s)
	}
	// A batch whose export timed out just as the receiver let it through
	// reaches the receiver but counts as failed: delivery is at most once
	// as far as the counters know, never more than claimed.
	if got := uint64(len(rcv.spanNames())); got < s.SpansExported || got > s.SpansExported+s.SpansDroppedExportFailed {
		t.Errorf("receiver has %d spans, stats say %d exported and %d failed", got, s.SpansExported, s.SpansDroppedExportFailed)
	}
}

func TestShutdownHonoursDeadlineWhenBlackholed(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	rcv.block()
	tel, err := Setup(context.Background(), Config{
		OTLPEndpoint: rcv.addr, OTLPInsecure: true, SpanQueueSize: 64, SpanBatchSize: 8,
		SpanBatchDelay: time.Millisecond, ExportTimeout: 30 * time.Second, MetricInterval: time.Hour,
		LookupEnv: envMap(nil),
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// The worker is stuck in an export and the queue is full behind it.
	// Which spans go into that export depends on when the worker runs, so
	// the queue is filled only once the receiver holds the export: a
	// worker that took spans after the queue was full would leave it short
	// of full for good.
	emitSpans(tel.TracerProvider(), 8)
	testkit.Eventually(t, "a span export held by the receiver", func() bool { return rcv.spanExportsHeld() == 1 })
	emitSpans(tel.TracerProvider(), 92)
	if s := tel.Stats(); s.SpanQueueSize != 64 || s.SpansDroppedQueueFull == 0 {
		t.Fatalf("want a full queue of 64 behind the blocked export and the rest dropped: %+v", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = tel.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the deadline's error", err)
	}
	s := tel.Stats()
	if s.SpansDroppedShutdown == 0 {
		t.Errorf("spans still queued at the deadline not counted: %+v", s)
	}
	if total := s.SpansExported + s.SpansDroppedQueueFull + s.SpansDroppedExportFailed + s.SpansDroppedShutdown; total != 100 {
		t.Errorf("%d of 100 spans accounted for: %+v", total, s)
	}
	if err2 := tel.Shutdown(context.Background()); !errors.Is(err2, context.DeadlineExceeded) {
		t.Errorf("second Shutdown = %v, want the first result", err2)
	}
}

func TestSetupRejectsBadConfig(t *testing.T) {
	_, err := Setup(context.Background(), Config{LookupEnv: envMap(map[string]string{"OTEL_TRACES_SAMPLER": "jaeger_remote"})}, nil)
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "jaeger_remote") {
		t.Errorf("err = %v, want ErrInvalidConfig naming jaeger_remote", err)
	}
}
