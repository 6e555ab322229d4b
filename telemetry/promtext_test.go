package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

// recordEveryKind records, on mp, every kind of instrument with the
// names, units, attributes and descriptions that exercise the translation
// to Prometheus names: dots and odd characters, units with and without a
// Prometheus name, annotations, rates, names that already carry their
// suffix, keys that collide once translated, values that need escaping.
func recordEveryKind(t testing.TB, mp metric.MeterProvider) {
	t.Helper()
	ctx := context.Background()
	m := mp.Meter("example.com/scope", metric.WithInstrumentationVersion("v1.2.3"),
		metric.WithSchemaURL("https://opentelemetry.io/schemas/1.26.0"),
		metric.WithInstrumentationAttributes(attribute.String("team.name", "desk"), attribute.String("name", "shadowed")))
	other := mp.Meter("other")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	q := func(name string) metric.MeasurementOption {
		return metric.WithAttributes(attribute.String("queue", name))
	}

	c, err := m.Int64Counter("eventbus.events.published", metric.WithUnit("{event}"), metric.WithDescription("Publishes by outcome."))
	must(err)
	c.Add(ctx, 3, metric.WithAttributes(attribute.String("queue", "data"), attribute.String("outcome", "accepted")))
	c.Add(ctx, 1, metric.WithAttributes(attribute.String("queue", "order"), attribute.String("outcome", "timeout")))
	c.Add(ctx, 2, metric.WithAttributes(attribute.String("queue", "a\"b\\c\nd"), attribute.String("outcome", "x")))

	fc, err := m.Float64Counter("requests.total", metric.WithUnit("1"), metric.WithDescription("Already\nends in total \\ here."))
	must(err)
	fc.Add(ctx, 0.5)
	fc.Add(ctx, 1e21, metric.WithAttributes(attribute.String("http.method", "GET"), attribute.String("http_method", "POST"), attribute.Int("2xx", 7)))

	bytesOut, err := m.Int64Counter("net.io", metric.WithUnit("By/s"))
	must(err)
	bytesOut.Add(ctx, 1<<40)

	ud, err := m.Int64UpDownCounter("eventbus.connections", metric.WithUnit("{connection}"), metric.WithDescription("Open connections."))
	must(err)
	ud.Add(ctx, -4)

	ratio, err := m.Float64Gauge("cache.hit", metric.WithUnit("1"))
	must(err)
	ratio.Record(ctx, 0.25, metric.WithAttributes(attribute.Bool("warm", true), attribute.StringSlice("tags", []string{"a", "b"})))

	g, err := m.Int64ObservableGauge("queue.depth.bytes", metric.WithUnit("By"))
	must(err)
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(g, 0, q("data"))
		o.ObserveInt64(g, -1, q("order"))
		return nil
	}, g)
	must(err)

	h, err := m.Float64Histogram("eventbus.publish.duration", metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(1e-6, 2.5e-5, 0.001, 1, 2.5))
	must(err)
	for _, v := range []float64{5e-7, 2e-5, 2e-5, 0.5, 3, 100} {
		h.Record(ctx, v, q("data"))
	}
	h.Record(ctx, 0.002, q("signal"))

	ih, err := m.Int64Histogram("lives.9", metric.WithUnit("ms"), metric.WithDescription(""))
	must(err)
	ih.Record(ctx, 12)

	temp, err := other.Float64Gauge("room.temp", metric.WithUnit("Cel"))
	must(err)
	temp.Record(ctx, -12.5)
}

// recordSharedNames records, on mp, instruments of another scope under a
// name recordEveryKind uses, with another description and another type.
func recordSharedNames(t testing.TB, mp metric.MeterProvider) {
	t.Helper()
	ctx := context.Background()
	other := mp.Meter("other")
	oc, err := other.Int64Counter("eventbus.events.published", metric.WithUnit("{event}"), metric.WithDescription("Something else."))
	if err != nil {
		t.Fatal(err)
	}
	oc.Add(ctx, 9, metric.WithAttributes(attribute.String("queue", "data")))
	og, err := other.Float64Gauge("eventbus.events.published", metric.WithUnit("{event}"))
	if err != nil {
		t.Fatal(err)
	}
	og.Record(ctx, 1)
}

// Scopes that share a name make one family with the first scope's
// description, in scope-name order on every scrape (the Prometheus
// exporter keeps whichever scope it saw first), and the series of another
// type are left out.
func TestPromTextSharedNames(t *testing.T) {
	own := newPromExposition(slog.New(slog.DiscardHandler))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(own.reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	recordEveryKind(t, mp)
	recordSharedNames(t, mp)
	first := scrape(t, own)
	for _, want := range []string{
		"# HELP eventbus_events_published_total Publishes by outcome.\n# TYPE eventbus_events_published_total counter\n",
		`eventbus_events_published_total{otel_scope_name="other",otel_scope_schema_url="",otel_scope_version="",queue="data"} 9` + "\n",
	} {
		if !strings.Contains(first, want) {
			t.Errorf("page lacks %q:\n%s", want, first)
		}
	}
	if strings.Contains(first, "Something else") || strings.Count(first, "# TYPE eventbus_events_published_total") != 1 {
		t.Errorf("shared name not one counter family with the first description:\n%s", first)
	}
	for range 20 {
		if got := scrape(t, own); got != first {
			t.Fatalf("scrapes differ:\n%s\nthen:\n%s", first, got)
		}
	}
}

func testResource(t *testing.T) *resource.Resource {
	t.Helper()
	res, err := resource.New(context.Background(), resource.WithAttributes(
		attribute.String("service.name", "eventbus-sidecar"), attribute.String("service.instance.id", "i-1"),
		attribute.String("k8s.pod.name", `pod "a"`)))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// The exposition writes, byte for byte, what the OpenTelemetry Prometheus
// exporter and the Prometheus client write for the same metrics, so the
// alert rules and dashboards built on those names keep working.
func TestPromTextMatchesPrometheusExporter(t *testing.T) {
	registry := prometheus.NewRegistry()
	ref, err := otelprom.New(otelprom.WithRegisterer(registry))
	if err != nil {
		t.Fatal(err)
	}
	own := newPromExposition(slog.New(slog.DiscardHandler))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(testResource(t)),
		sdkmetric.WithReader(ref), sdkmetric.WithReader(own.reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	recordEveryKind(t, mp)

	want := scrape(t, promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	got := scrape(t, own)
	if got != want {
		t.Errorf("exposition differs from the Prometheus exporter's\n got:\n%s\nwant:\n%s", got, want)
	}
	golden := filepath.Join("testdata", "metrics.prom")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantGolden, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(wantGolden) {
		t.Errorf("exposition differs from %s (UPDATE_GOLDEN=1 rewrites it)\n got:\n%s", golden, got)
	}
}

// The bus's own histograms reach /metrics through the producer exactly as
// the SDK's instruments would.
func TestPromTextWithProducerMatchesPrometheusExporter(t *testing.T) {
	for _, own := range []bool{false, true} {
		hb := newHistBus(t, own, false)
		hb.queued(t, "data", histogramBoundaryDurations()...)
		hb.dropAfterWait(t)
		want := scrape(t, promhttp.HandlerFor(hb.prom, promhttp.HandlerOpts{}))
		if got := scrape(t, hb.text); got != want {
			t.Errorf("own=%v: exposition differs from the Prometheus exporter's\n got:\n%s\nwant:\n%s", own, got, want)
		}
	}
}

func TestPromTextGzip(t *testing.T) {
	own := newPromExposition(slog.New(slog.DiscardHandler))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(testResource(t)), sdkmetric.WithReader(own.reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	recordEveryKind(t, mp)
	plain := scrape(t, own)

	for _, accept := range []string{"gzip", "deflate, gzip;q=0.5", "GZIP", "br;q=1.0, gzip;q=0.8, *;q=0.1"} {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept-Encoding", accept)
		rec := httptest.NewRecorder()
		own.ServeHTTP(rec, req)
		if rec.Header().Get("Content-Encoding") != "gzip" {
			t.Fatalf("Accept-Encoding %q: Content-Encoding %q, want gzip", accept, rec.Header().Get("Content-Encoding"))
		}
		zr, err := gzip.NewReader(rec.Body)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		if string(body) != plain {
			t.Errorf("Accept-Encoding %q: gunzipped body differs from the plain one", accept)
		}
	}
	for _, accept := range []string{"", "identity", "gzip;q=0", "deflate", "xgzip"} {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		if accept != "" {
			req.Header.Set("Accept-Encoding", accept)
		}
		rec := httptest.NewRecorder()
		own.ServeHTTP(rec, req)
		if enc := rec.Header().Get("Content-Encoding"); enc != "" || rec.Body.String() != plain {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q, body plain %v; want no encoding", accept, enc, rec.Body.String() == plain)
		}
	}
}

// After the meter provider shuts down, and with telemetry off, the page is
// empty but still a page: a scrape is not an error.
func TestPromTextEmpty(t *testing.T) {
	own := newPromExposition(slog.New(slog.DiscardHandler))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(own.reader))
	recordEveryKind(t, mp)
	if body := scrape(t, own); body == "" {
		t.Fatal("no metrics before shutdown")
	}
	if err := mp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if body := scrape(t, own); body != "" {
		t.Errorf("after shutdown: %q, want an empty page", body)
	}
	if body := scrape(t, &promExposition{}); body != "" {
		t.Errorf("telemetry off: %q, want an empty page", body)
	}
}

func TestPromMetricName(t *testing.T) {
	tests := []struct {
		name, unit         string
		counter, unitGauge bool
		want               string
	}{
		{"eventbus.queue.depth", "{event}", false, false, "eventbus_queue_depth"},
		{"eventbus.events.published", "{event}", true, false, "eventbus_events_published_total"},
		{"eventbus.publish.duration", "s", false, false, "eventbus_publish_duration_seconds"},
		{"eventbus.buffered", "By", false, false, "eventbus_buffered_bytes"},
		{"duration.seconds", "s", false, false, "duration_seconds"},
		{"requests.total", "1", true, false, "requests_total"},
		{"total.requests", "", true, false, "requests_total"},
		{"cache.hit", "1", false, true, "cache_hit_ratio"},
		{"cache.ratio.hit", "1", false, true, "cache_hit_ratio"},
		{"net.io", "By/s", true, false, "net_io_bytes_per_second_total"},
		{"net.io", "{packet}/s", false, false, "net_io_per_second"},
		{"net.io", "By/{x}", false, false, "net_io_bytes"},
		{"net.io", "foo bar/fortnight", false, false, "net_io_foo_bar_per_fortnight"},
		{"9lives", "ms", false, false, "_9lives_milliseconds"},
		{"a..b__c", "", false, false, "a_b_c"},
		{"ns:metric", "%", false, false, "ns:metric_percent"},
		{"...", "", false, false, ""},
		{"", "s", false, false, "seconds"},
	}
	for _, tt := range tests {
		if got := promMetricName(tt.name, tt.unit, tt.counter, tt.unitGauge); got != tt.want {
			t.Errorf("promMetricName(%q, %q, counter=%v, unitGauge=%v) = %q, want %q",
				tt.name, tt.unit, tt.counter, tt.unitGauge, got, tt.want)
		}
	}
}

func TestPromLabelName(t *testing.T) {
	tests := map[string]string{
		"queue":        "queue",
		"http.method":  "http_method",
		"a..b__c":      "a_b_c",
		"2xx":          "key_2xx",
		"__reserved__": "__reserved__",
		"__a.b__":      "__a_b__",
		"ünï":          "_n_",
		"...":          "_",
	}
	for in, want := range tests {
		if got := promLabelName(in); got != want {
			t.Errorf("promLabelName(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkPromText(b *testing.B) {
	own := newPromExposition(slog.New(slog.DiscardHandler))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(resource.Default()), sdkmetric.WithReader(own.reader))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	recordEveryKind(b, mp)
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	var sink bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		rec.Body = &sink
		sink.Reset()
		own.ServeHTTP(rec, req)
	}
}
