package telemetry

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
)

// histBus is a bus on a fake clock, with a durable queue, whose histograms
// go either to the SDK's instruments (the reference) or to bus.Histograms
// and a histogramProducer (what the sidecar runs), read by a ManualReader,
// the sidecar's Prometheus text and, for reference, the OpenTelemetry
// Prometheus exporter.
type histBus struct {
	b      *bus.Bus
	clock  *testkit.Clock
	reader *sdkmetric.ManualReader
	prom   *prometheus.Registry
	text   *promExposition
}

func newHistBus(t *testing.T, own, delta bool) *histBus {
	t.Helper()
	hb := &histBus{clock: testkit.NewClock(), prom: prometheus.NewRegistry()}
	var readerOpts []sdkmetric.ManualReaderOption
	var promOpts []otelprom.Option
	var textProducers []sdkmetric.Producer
	busOpts := []bus.Option{bus.WithClock(hb.clock), bus.WithDataDir(t.TempDir())}
	if delta {
		readerOpts = append(readerOpts, sdkmetric.WithTemporalitySelector(sdkmetric.DeltaTemporalitySelector))
	}
	if own {
		h := bus.NewHistograms()
		readerOpts = append(readerOpts, sdkmetric.WithProducer(newHistogramProducer(h, delta, true)))
		promOpts = append(promOpts, otelprom.WithProducer(newHistogramProducer(h, false, !delta)))
		textProducers = append(textProducers, newHistogramProducer(h, false, !delta))
		busOpts = append(busOpts, bus.WithHistograms(h))
	}
	hb.reader = sdkmetric.NewManualReader(readerOpts...)
	promReader, err := otelprom.New(append(promOpts, otelprom.WithRegisterer(hb.prom))...)
	if err != nil {
		t.Fatal(err)
	}
	hb.text = newPromExposition(slog.New(slog.DiscardHandler), textProducers...)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(hb.reader), sdkmetric.WithReader(promReader), sdkmetric.WithReader(hb.text.reader),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	hb.b, err = bus.New([]bus.QueueConfig{
		{Name: "data", Capacity: 1, Policy: bus.PolicyDrop, Timeout: time.Second},
		{Name: "order", Capacity: 10, Policy: bus.PolicyBlock, Durable: true, Fsync: bus.FsyncAlways},
	}, append(busOpts, bus.WithMeterProvider(mp))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, _ = hb.b.Shutdown(ctx)
	})
	return hb
}

func histEvent() bus.Event { return bus.Event{Type: "CANDLE_UPDATE", Payload: json.RawMessage(`{}`)} }

// queued publishes one event to queue per duration, and receives and acks
// it that long after: one queued duration each, publish durations of 0.
func (hb *histBus) queued(t *testing.T, queue string, ds ...time.Duration) {
	t.Helper()
	c, err := hb.b.Subscribe(queue, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for _, d := range ds {
		if out, err := hb.b.Publish(ctx, histEvent(), queue); out != bus.Accepted {
			t.Fatal(out, err)
		}
		hb.clock.Advance(d)
		del, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(del.Seq); err != nil {
			t.Fatal(err)
		}
	}
}

// dropAfterWait fills data and has one more publish wait its full timeout
// and be dropped: a wait and a publish of one second, then empties data.
func (hb *histBus) dropAfterWait(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if out, err := hb.b.Publish(ctx, histEvent(), "data"); out != bus.Accepted {
		t.Fatal(out, err)
	}
	done := make(chan bus.Outcome, 1)
	hb.b.PublishAsync(ctx, histEvent(), "data", func(o bus.Outcome, _ error) { done <- o })
	hb.clock.Advance(time.Second)
	if o := <-done; o != bus.Dropped {
		t.Fatalf("the waiting publish: %v, want dropped", o)
	}
	c, err := hb.b.Subscribe("data", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	del, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(del.Seq); err != nil {
		t.Fatal(err)
	}
}

// histograms returns the bus's histogram metrics from one collection, by name.
func (hb *histBus) histograms(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := hb.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, hm := range bus.HistogramMetrics() {
		names[hm.Name] = true
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if !names[m.Name] {
				continue
			}
			if sm.Scope.Name != bus.ScopeName || sm.Scope.Version != "" || sm.Scope.SchemaURL != "" {
				t.Errorf("%s in scope %+v, want %s alone", m.Name, sm.Scope, bus.ScopeName)
			}
			if _, dup := out[m.Name]; dup {
				t.Errorf("%s reported twice", m.Name)
			}
			out[m.Name] = m
		}
	}
	return out
}

// histogramBoundaryDurations are every bound, a nanosecond either side of
// it, zero and a value above the last bound.
func histogramBoundaryDurations() []time.Duration {
	ds := []time.Duration{0, 11 * time.Second}
	for _, s := range bus.HistogramMetrics()[bus.HistogramQueued].Bounds {
		d := time.Duration(math.Round(s * 1e9))
		ds = append(ds, d-1, d, d+1)
	}
	return ds
}

// assertSameHistograms compares the histograms of the reference and the
// bus's own. Sums are compared apart, within rounding: the SDK adds
// float64 seconds, the bus whole nanoseconds.
func assertSameHistograms(t *testing.T, want, got map[string]metricdata.Metrics) {
	t.Helper()
	if len(want) == 0 {
		t.Fatal("the reference recorded no histogram")
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("%s: missing", name)
			continue
		}
		wh, gh := w.Data.(metricdata.Histogram[float64]), g.Data.(metricdata.Histogram[float64])
		if name == bus.HistogramMetrics()[bus.HistogramSync].Name {
			// The write-ahead log times its syncs on the real clock: only
			// the number of them is the same on both sides.
			if wc, gc := histogramCount(wh), histogramCount(gh); wc != gc || wc == 0 {
				t.Errorf("%s: %d syncs, want %d (and some)", name, gc, wc)
			}
			metricdatatest.AssertEqual(t, w, g, metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreValue())
			continue
		}
		for i := range gh.DataPoints {
			gp := &gh.DataPoints[i]
			for _, wp := range wh.DataPoints {
				if wp.Attributes.Equals(&gp.Attributes) {
					if math.Abs(wp.Sum-gp.Sum) > 1e-12*math.Max(1, math.Abs(wp.Sum)) {
						t.Errorf("%s %v: sum %v, want %v", name, gp.Attributes.ToSlice(), gp.Sum, wp.Sum)
					}
					gp.Sum = wp.Sum
				}
			}
		}
		g.Data = gh
		metricdatatest.AssertEqual(t, w, g, metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: reported, the SDK reports no such metric", name)
		}
	}
}

func histogramCount(h metricdata.Histogram[float64]) uint64 {
	var n uint64
	for _, dp := range h.DataPoints {
		n += dp.Count
	}
	return n
}

func TestBusHistogramsMatchSDK(t *testing.T) {
	sdk, own := newHistBus(t, false, false), newHistBus(t, true, false)
	for _, hb := range []*histBus{sdk, own} {
		hb.queued(t, "data", histogramBoundaryDurations()...)
		hb.queued(t, "order", time.Millisecond, 3*time.Millisecond)
		hb.dropAfterWait(t)
	}
	assertSameHistograms(t, sdk.histograms(t), own.histograms(t))

	// Through the Prometheus handler: every line of the histograms' series
	// is the same, sums within rounding (and the syncs' values aside).
	wantLines, gotLines := promHistogramLines(t, sdk.text), promHistogramLines(t, own.text)
	if len(wantLines) == 0 || len(wantLines) != len(gotLines) {
		t.Fatalf("Prometheus: %d histogram lines, want %d:\n%s", len(gotLines), len(wantLines), strings.Join(gotLines, "\n"))
	}
	for i := range wantLines {
		w, g := wantLines[i], gotLines[i]
		if strings.HasPrefix(w, "eventbus_wal_sync_duration_seconds_") {
			w, g = w[:strings.LastIndexByte(w, ' ')], g[:max(strings.LastIndexByte(g, ' '), 0)]
		}
		if w != g && !sameSumLine(w, g) {
			t.Errorf("Prometheus line\n%s\nwant\n%s", g, w)
		}
	}
}

func TestBusHistogramsMatchSDKDelta(t *testing.T) {
	sdk, own := newHistBus(t, false, true), newHistBus(t, true, true)
	for _, hb := range []*histBus{sdk, own} {
		hb.queued(t, "data", histogramBoundaryDurations()...)
		hb.queued(t, "order", time.Millisecond, 3*time.Millisecond)
	}
	assertSameHistograms(t, sdk.histograms(t), own.histograms(t))
	// The next interval has other extremes, and order records nothing.
	for _, hb := range []*histBus{sdk, own} {
		hb.queued(t, "data", 2*time.Millisecond, 7*time.Microsecond)
		hb.dropAfterWait(t)
	}
	assertSameHistograms(t, sdk.histograms(t), own.histograms(t))
	// Nothing recorded: neither reports a histogram.
	if got := own.histograms(t); len(got) != 0 || len(sdk.histograms(t)) != 0 {
		t.Errorf("an interval without recordings reports %v", got)
	}
}

// promHistogramLines are the lines of h's Prometheus text that belong to
// the bus's duration histograms, sorted.
func promHistogramLines(t *testing.T, h http.Handler) []string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var out []string
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, hm := range bus.HistogramMetrics() {
			if strings.Contains(line, strings.ReplaceAll(hm.Name, ".", "_")+"_seconds") {
				out = append(out, line)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// sameSumLine reports whether two _sum lines differ only within rounding.
func sameSumLine(a, b string) bool {
	ai, bi := strings.LastIndexByte(a, ' '), strings.LastIndexByte(b, ' ')
	if ai < 0 || bi < 0 || a[:ai] != b[:bi] || !strings.Contains(a[:ai], "_sum") {
		return false
	}
	av, err1 := strconv.ParseFloat(a[ai+1:], 64)
	bv, err2 := strconv.ParseFloat(b[bi+1:], 64)
	return err1 == nil && err2 == nil && math.Abs(av-bv) <= 1e-12*math.Max(1, math.Abs(av))
}

// TestSetupBusHistograms checks when Setup has the bus record its own
// histograms, and that they reach a real OTLP receiver and /metrics with
// the temporality the exporter asks for.
func TestSetupBusHistograms(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string // through Config.LookupEnv
		own       bool
		wantDelta bool
	}{
		{name: "default", own: true},
		{name: "delta", env: map[string]string{"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}, own: true, wantDelta: true},
		{name: "low memory", env: map[string]string{"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "LowMemory"}, own: true, wantDelta: true},
		{name: "exemplars on", env: map[string]string{"OTEL_METRICS_EXEMPLAR_FILTER": "always_on"}},
		{name: "exponential histograms", env: map[string]string{"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "base2_exponential_bucket_histogram"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rcv := startReceiver(t, "127.0.0.1:0")
			tel := setup(t, Config{OTLPEndpoint: rcv.addr, OTLPInsecure: true, MetricInterval: time.Hour}, tt.env)
			if got := tel.BusHistograms() != nil; got != tt.own {
				t.Fatalf("BusHistograms set: %v, want %v", got, tt.own)
			}
			b, err := bus.New([]bus.QueueConfig{{Name: "order", Capacity: 10, Policy: bus.PolicyBlock}},
				bus.WithMeterProvider(tel.MeterProvider()), bus.WithHistograms(tel.BusHistograms()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _, _ = b.Shutdown(context.Background()) })
			publishAndAck := func(n int) {
				t.Helper()
				c, err := b.Subscribe("order", 1)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				for range n {
					if out, err := b.Publish(context.Background(), histEvent(), "order"); out != bus.Accepted {
						t.Fatal(out, err)
					}
					d, err := c.Receive(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					if err := c.Ack(d.Seq); err != nil {
						t.Fatal(err)
					}
				}
			}
			publishAndAck(3)
			if err := tel.ForceFlush(context.Background()); err != nil {
				t.Fatal(err)
			}
			publishAndAck(2)
			if err := tel.ForceFlush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if body := scrape(t, tel.MetricsHandler()); !strings.Contains(body, `eventbus_publish_duration_seconds_count{otel_scope_name="`+bus.ScopeName+`",otel_scope_schema_url="",otel_scope_version="",queue="order"} 5`) {
				t.Errorf("/metrics without 5 publishes on order:\n%s", body)
			}
			counts := rcv.histogramCounts("eventbus.publish.duration")
			want := []string{"cumulative 3", "cumulative 5"}
			if tt.wantDelta {
				want = []string{"delta 3", "delta 2"}
			}
			if tt.name == "exponential histograms" {
				want = nil // exported, but not as explicit buckets
			}
			if !slices.Equal(counts, want) {
				t.Errorf("OTLP eventbus.publish.duration exports %q, want %q", counts, want)
			}
		})
	}
}
