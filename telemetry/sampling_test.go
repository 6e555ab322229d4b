package telemetry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// filteredProvider is a real SDK provider whose spans pass the ratio filter
// into an in-memory exporter.
func filteredProvider(t *testing.T, ratio float64) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter, *lossCounters) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	loss := &lossCounters{}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(newRatioFilter(sdktrace.NewSimpleSpanProcessor(exp), ratio, []string{"data"}, loss)),
	)
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp, loss
}

// publishTrace emits what the bus emits for one publish on queue: a
// publish span, optionally a wait span, and a drop or deliver child.
func publishTrace(tr trace.Tracer, queue, outcome string, waited bool, fail bool) trace.SpanContext {
	dest := attribute.String("messaging.destination.name", queue)
	ctx, pub := tr.Start(context.Background(), "publish "+queue,
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(dest), trace.WithNewRoot())
	if waited {
		_, w := tr.Start(ctx, "wait "+queue, trace.WithAttributes(dest))
		w.SetAttributes(attribute.String("eventbus.outcome", outcome))
		w.End()
	}
	switch outcome {
	case "dropped":
		_, d := tr.Start(ctx, "drop "+queue, trace.WithAttributes(dest, attribute.String("eventbus.drop.reason", "timeout")))
		d.End()
	case "accepted":
		_, d := tr.Start(ctx, "deliver "+queue, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(dest))
		d.End()
	}
	pub.SetAttributes(attribute.String("eventbus.outcome", outcome))
	if fail {
		pub.SetStatus(codes.Error, "timeout waiting for room in queue")
	}
	pub.End()
	return pub.SpanContext()
}

func TestRatioFilterKeepsWhatMustBeTraced(t *testing.T) {
	tests := []struct {
		name     string
		queue    string
		outcome  string
		waited   bool
		fail     bool
		exported []string
	}{
		{"accepted data publish left out at ratio 0", "data", "accepted", true, false, nil},
		{"dropped data publish kept with its wait and drop", "data", "dropped", true, false, []string{"wait data", "drop data", "publish data"}},
		{"cancelled data publish kept", "data", "cancelled", true, false, []string{"wait data", "publish data"}},
		{"order publish always kept", "order", "accepted", true, false, []string{"wait order", "deliver order", "publish order"}},
		{"signal timeout kept", "signal", "timeout", true, true, []string{"wait signal", "publish signal"}},
		{"data error kept even without outcome", "data", "error", false, true, []string{"publish data"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, exp, loss := filteredProvider(t, 0)
			publishTrace(tp.Tracer("test"), tt.queue, tt.outcome, tt.waited, tt.fail)
			var got []string
			for _, s := range exp.GetSpans() {
				got = append(got, s.Name)
			}
			if len(got) != len(tt.exported) {
				t.Fatalf("exported %v, want %v", got, tt.exported)
			}
			for i := range got {
				if got[i] != tt.exported[i] {
					t.Fatalf("exported %v, want %v", got, tt.exported)
				}
			}
			if tt.exported == nil && loss.spansSampledOut.Load() != 3 {
				t.Errorf("sampled out = %d, want 3 (publish, wait, deliver)", loss.spansSampledOut.Load())
			}
		})
	}
}

func TestRatioFilterKeepsTracesWholeAndMatchesTraceIDRatio(t *testing.T) {
	const n, r = 2000, 0.3
	tp, exp, loss := filteredProvider(t, r)
	tr := tp.Tracer("test")
	sdkSampler := sdktrace.TraceIDRatioBased(r)
	wantKept := 0
	for range n {
		sc := publishTrace(tr, "data", "accepted", true, false)
		res := sdkSampler.ShouldSample(sdktrace.SamplingParameters{TraceID: sc.TraceID(), Name: "publish data"})
		if res.Decision == sdktrace.RecordAndSample {
			wantKept++
		}
	}
	perTrace := map[trace.TraceID]int{}
	for _, s := range exp.GetSpans() {
		perTrace[s.SpanContext.TraceID()]++
	}
	for id, c := range perTrace {
		if c != 3 {
			t.Errorf("trace %s exported %d of its 3 spans: traces must stay whole", id, c)
		}
		res := sdkSampler.ShouldSample(sdktrace.SamplingParameters{TraceID: id})
		if res.Decision != sdktrace.RecordAndSample {
			t.Errorf("trace %s exported but TraceIDRatioBased(%v) would not sample it", id, r)
		}
	}
	if len(perTrace) != wantKept {
		t.Errorf("exported %d traces, TraceIDRatioBased kept %d", len(perTrace), wantKept)
	}
	if got, want := loss.spansSampledOut.Load(), uint64(3*(n-wantKept)); got != want {
		t.Errorf("sampled out = %d, want %d", got, want)
	}
	if wantKept == 0 || wantKept == n {
		t.Errorf("ratio %v kept %d of %d: the test does not exercise both branches", r, wantKept, n)
	}
}

func TestRatioFilterRatioOneKeepsEverything(t *testing.T) {
	tp, exp, loss := filteredProvider(t, 1)
	for range 50 {
		publishTrace(tp.Tracer("test"), "data", "accepted", false, false)
	}
	if got := len(exp.GetSpans()); got != 100 {
		t.Errorf("exported %d spans, want 100", got)
	}
	if loss.spansSampledOut.Load() != 0 {
		t.Errorf("sampled out %d at ratio 1", loss.spansSampledOut.Load())
	}
	if err := tp.ForceFlush(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("ForceFlush: %v", err)
	}
}

func TestSetDataSampleRatioWhileRunning(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	tel := setup(t, Config{
		OTLPEndpoint: rcv.addr, OTLPInsecure: true, DataSampleRatio: ratio(0),
		SpanBatchDelay: time.Millisecond, MetricInterval: time.Hour,
	}, map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
	tr := tel.TracerProvider().Tracer("test")
	// Each accepted data publish without a wait is two spans: publish and deliver.
	publish := func() { publishTrace(tr, "data", "accepted", false, false) }
	sampledOut := func() uint64 { return tel.Stats().SpansSampledOut }

	publish()
	if got := sampledOut(); got != 2 {
		t.Fatalf("at ratio 0: %d spans sampled out, want 2", got)
	}

	one := 1.0
	if err := tel.SetDataSampleRatio(&one); err != nil {
		t.Fatal(err)
	}
	publish()
	if got := sampledOut(); got != 2 {
		t.Fatalf("at ratio 1: %d spans sampled out, want still 2", got)
	}
	testkit.Eventually(t, "the ratio-1 trace exported", func() bool { return len(rcv.spanNames()) == 2 })

	bad := 1.5
	if err := tel.SetDataSampleRatio(&bad); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "1.5") {
		t.Fatalf("SetDataSampleRatio(1.5) = %v, want ErrInvalidConfig naming 1.5", err)
	}
	publish()
	if got := sampledOut(); got != 2 {
		t.Fatalf("after a refused ratio: %d spans sampled out, want 2 (ratio 1 kept)", got)
	}

	// nil: back to the environment's ratio, 0 here.
	if err := tel.SetDataSampleRatio(nil); err != nil {
		t.Fatal(err)
	}
	publish()
	if got := sampledOut(); got != 4 {
		t.Fatalf("back at the environment's ratio 0: %d spans sampled out, want 4", got)
	}
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(rcv.spanNames()); got != 4 {
		t.Fatalf("receiver has %d spans, want the 4 of the two traces kept at ratio 1", got)
	}
}
