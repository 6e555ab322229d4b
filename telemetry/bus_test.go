package telemetry

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestWithRealBus runs the real bus on these providers, with data sampled at
// ratio 0: accepted data publishes (and their deliveries) are left out,
// everything else reaches a real OTLP receiver, and the metrics stay exact.
func TestWithRealBus(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	tel := setup(t, Config{
		OTLPEndpoint: rcv.addr, OTLPInsecure: true, DataSampleRatio: ratio(0),
		SpanBatchDelay: 10 * time.Millisecond, MetricInterval: time.Hour,
	}, nil)
	b, err := bus.New([]bus.QueueConfig{
		{Name: "data", Capacity: 1, Policy: bus.PolicyDrop, Timeout: 20 * time.Millisecond},
		{Name: "signal", Capacity: 1, Policy: bus.PolicyFail, Timeout: 20 * time.Millisecond},
		{Name: "order", Capacity: 1, Policy: bus.PolicyBlock},
	}, bus.WithTracerProvider(tel.TracerProvider()), bus.WithMeterProvider(tel.MeterProvider()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Events left in signal and order are not drained: give up at once.
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, _ = b.Shutdown(ctx)
	})
	ctx := context.Background()
	ev := func(typ string) bus.Event { return bus.Event{Type: typ, Payload: json.RawMessage(`{}`)} }

	wantOutcomes := []struct {
		queue string
		want  bus.Outcome
	}{
		{"data", bus.Accepted}, // sampled out
		{"data", bus.Dropped},  // full: waits, then dropped: kept
		{"signal", bus.Accepted},
		{"signal", bus.TimedOut},
		{"order", bus.Accepted},
	}
	for _, w := range wantOutcomes {
		if got, _ := b.Publish(ctx, ev("T"), w.queue); got != w.want {
			t.Fatalf("publish %s = %s, want %s", w.queue, got, w.want)
		}
	}
	cons, err := b.Subscribe("data", 1)
	if err != nil {
		t.Fatal(err)
	}
	d, err := cons.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cons.Ack(d.Seq); err != nil {
		t.Fatal(err)
	}
	cons.Close()
	if err := tel.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}

	want := []string{"drop data", "publish data", "publish order", "publish signal", "publish signal", "wait data", "wait signal"}
	var got []string
	testkit.Eventually(t, "the spans at the receiver", func() bool {
		got = rcv.spanNames()
		slices.Sort(got)
		return len(got) >= len(want)
	})
	if !slices.Equal(got, want) {
		t.Errorf("exported spans %v, want %v", got, want)
	}
	if s := tel.Stats(); s.SpansSampledOut != 2 {
		t.Errorf("sampled out %d spans, want 2 (accepted data publish, its deliver)", s.SpansSampledOut)
	}

	// Metrics are exact whatever the sampling.
	body := scrape(t, tel.MetricsHandler())
	for _, w := range []string{
		`eventbus_events_published_total{otel_scope_name="github.com/eventbus-sidecar/eventbus-sidecar/bus",otel_scope_schema_url="",otel_scope_version="",outcome="accepted",queue="data"} 1`,
		`eventbus_events_dropped_total{otel_scope_name="github.com/eventbus-sidecar/eventbus-sidecar/bus",otel_scope_schema_url="",otel_scope_version="",queue="data",reason="timeout"} 1`,
		`eventbus_events_delivered_total{otel_scope_name="github.com/eventbus-sidecar/eventbus-sidecar/bus",otel_scope_schema_url="",otel_scope_version="",queue="data"} 1`,
		`eventbus_publish_duration_seconds_bucket{otel_scope_name="github.com/eventbus-sidecar/eventbus-sidecar/bus",otel_scope_schema_url="",otel_scope_version="",queue="order",le="1e-06"}`,
		`eventbus_queue_wait_duration_seconds_count{`,
		`eventbus_event_queued_duration_seconds_count{`,
		`eventbus_queue_capacity{otel_scope_name="github.com/eventbus-sidecar/eventbus-sidecar/bus",otel_scope_schema_url="",otel_scope_version="",queue="order"} 1`,
	} {
		if !strings.Contains(body, w) {
			t.Errorf("/metrics lacks %s", w)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}
