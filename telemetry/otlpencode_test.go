package telemetry

import (
	"bytes"
	"context"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// recordingClient is an otlptrace.Client that keeps what the stock
// exporter would upload.
type recordingClient struct {
	uploads [][]*tracepb.ResourceSpans
}

func (c *recordingClient) Start(context.Context) error { return nil }
func (c *recordingClient) Stop(context.Context) error  { return nil }
func (c *recordingClient) UploadTraces(_ context.Context, rs []*tracepb.ResourceSpans) error {
	c.uploads = append(c.uploads, rs)
	return nil
}

// stockRequest is the request the stock otlptrace exporter sends for spans.
func stockRequest(t testing.TB, spans []sdktrace.ReadOnlySpan) *coltracepb.ExportTraceServiceRequest {
	t.Helper()
	c := &recordingClient{}
	exp, err := otlptrace.New(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if err := exp.ExportSpans(context.Background(), spans); err != nil {
		t.Fatal(err)
	}
	if err := exp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(c.uploads) != 1 {
		t.Fatalf("stock exporter uploaded %d times, want once", len(c.uploads))
	}
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: c.uploads[0]}
}

// recordSpans runs build against a tracer provider with res and limits and
// returns the spans it ended.
func recordSpans(t testing.TB, res *resource.Resource, limits *sdktrace.SpanLimits, build func(tp trace.TracerProvider)) []sdktrace.ReadOnlySpan {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	opts := []sdktrace.TracerProviderOption{sdktrace.WithSpanProcessor(rec), sdktrace.WithResource(res)}
	if limits != nil {
		opts = append(opts, sdktrace.WithRawSpanLimits(*limits))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	build(tp)
	if err := tp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	return rec.Ended()
}

// everyAttributeType covers each attribute.Type, zero values, and strings
// long enough for one-, two- and three-byte length prefixes.
func everyAttributeType() []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.Bool("bool.true", true),
		attribute.Bool("bool.false", false),
		attribute.Int("int", -42),
		attribute.Int64("int64.zero", 0),
		attribute.Int64("int64.min", math.MinInt64),
		attribute.Float64("float", 3.25),
		attribute.Float64("float.zero", 0),
		attribute.Float64("float.nan", math.NaN()),
		attribute.String("string", "value"),
		attribute.String("string.empty", ""),
		attribute.String("string.200", strings.Repeat("x", 200)),
		attribute.String("string.20000", strings.Repeat("y", 20000)),
		attribute.BoolSlice("bools", []bool{true, false}),
		attribute.IntSlice("ints", []int{1, -2, 3}),
		attribute.Int64Slice("int64s", []int64{math.MaxInt64}),
		attribute.Float64Slice("floats", []float64{1.5, -0.25}),
		attribute.StringSlice("strings", []string{"a", "", "c"}),
		attribute.StringSlice("strings.empty", []string{}),
		attribute.ByteSlice("bytes", []byte{0, 1, 0xff}),
		attribute.ByteSlice("bytes.empty", nil),
		attribute.Slice("slice", attribute.StringValue("s"), attribute.IntValue(7),
			attribute.SliceValue(attribute.BoolValue(true)), attribute.MapValue(attribute.String("k", "v"))),
		attribute.Map("map", attribute.Int("n", 1), attribute.Map("nested", attribute.Float64("f", 2))),
		{Key: "empty"},
		{Key: "", Value: attribute.StringValue("no key")},
	}
}

// sdkSpans builds spans of many shapes through the real SDK: two
// resources, several scopes interleaved, every attribute type, events,
// links, remote and local parents, trace state, status and span limits.
func sdkSpans(t testing.TB) []sdktrace.ReadOnlySpan {
	t.Helper()
	ctx := context.Background()
	res1 := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.26.0",
		attribute.String("service.name", "sidecar"), attribute.Int("pid", 7), attribute.StringSlice("tags", []string{"a", "b"}))
	res2 := resource.NewSchemaless(attribute.String("service.name", "other"))

	ts, err := trace.ParseTraceState("vendor=abc,other=x-y")
	if err != nil {
		t.Fatal(err)
	}
	remote := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6}, TraceFlags: trace.FlagsSampled,
		TraceState: ts, Remote: true,
	})
	linked := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{9}, SpanID: trace.SpanID{8}})
	start := time.Date(2026, 11, 28, 12, 0, 0, 123456789, time.UTC)

	first := recordSpans(t, res1, nil, func(tp trace.TracerProvider) {
		bus := tp.Tracer("github.com/eventbus-sidecar/eventbus-sidecar/bus")
		versioned := tp.Tracer("versioned", trace.WithInstrumentationVersion("1.2.3"),
			trace.WithSchemaURL("https://opentelemetry.io/schemas/1.20.0"),
			trace.WithInstrumentationAttributes(attribute.String("scope.attr", "v"), attribute.Bool("b", true)))
		for i := range 40 {
			// The bus's span shapes, interleaved with another scope's.
			busEventSpans(ctx, bus, i)
			if i%10 == 0 {
				_, v := versioned.Start(ctx, "versioned op")
				v.End()
			}
		}

		_, all := versioned.Start(trace.ContextWithRemoteSpanContext(ctx, remote), "every attribute",
			trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start),
			trace.WithAttributes(everyAttributeType()...),
			trace.WithLinks(
				trace.Link{SpanContext: remote, Attributes: []attribute.KeyValue{attribute.String("link", "remote")}},
				trace.Link{SpanContext: linked}))
		all.AddEvent("plain")
		all.AddEvent("with attributes", trace.WithTimestamp(start.Add(time.Millisecond)),
			trace.WithAttributes(everyAttributeType()...))
		all.RecordError(errors.New("boom"), trace.WithStackTrace(true))
		all.SetStatus(codes.Error, "it failed")
		all.End(trace.WithTimestamp(start.Add(time.Second)))

		for _, kind := range []trace.SpanKind{trace.SpanKindInternal, trace.SpanKindClient, trace.SpanKindUnspecified} {
			_, s := bus.Start(ctx, "kind "+kind.String(), trace.WithSpanKind(kind))
			s.SetStatus(codes.Ok, "ignored for ok")
			s.End()
		}
		_, unnamed := tp.Tracer("").Start(ctx, "")
		unnamed.End()
	})

	limits := sdktrace.NewSpanLimits()
	limits.AttributeCountLimit = 2
	limits.EventCountLimit = 1
	limits.LinkCountLimit = 1
	limits.AttributePerEventCountLimit = 1
	limits.AttributePerLinkCountLimit = 1
	second := recordSpans(t, res2, &limits, func(tp trace.TracerProvider) {
		tr := tp.Tracer("limited")
		_, s := tr.Start(ctx, "over every limit", trace.WithAttributes(everyAttributeType()...),
			trace.WithLinks(trace.Link{SpanContext: remote, Attributes: everyAttributeType()}, trace.Link{SpanContext: linked}))
		s.AddEvent("one", trace.WithAttributes(everyAttributeType()...))
		s.AddEvent("two")
		s.End()
	})

	// Interleave the two providers' spans so that grouping is exercised.
	var out []sdktrace.ReadOnlySpan
	for i, s := range first {
		out = append(out, s)
		if i == 3 {
			out = append(out, second...)
		}
	}
	return out
}

// stubSpans are spans the SDK's API cannot make but a ReadOnlySpan can
// carry: the zero scope, a nil resource, times before the epoch, unknown
// kinds and status codes, negative and huge dropped counts.
func stubSpans() []sdktrace.ReadOnlySpan {
	stubs := tracetest.SpanStubs{
		{
			Name:                 "zero scope, nil resource",
			SpanContext:          trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}}),
			StartTime:            time.Unix(-5, 0),
			SpanKind:             trace.SpanKind(99),
			Status:               sdktrace.Status{Code: codes.Code(7), Description: "odd"},
			DroppedAttributes:    -1,
			DroppedEvents:        math.MaxInt64,
			DroppedLinks:         3,
			ChildSpanCount:       1,
			InstrumentationScope: instrumentation.Scope{},
		},
		{
			Name:                 "schema only scope",
			InstrumentationScope: instrumentation.Scope{SchemaURL: "https://example.test/schema"},
			Resource:             resource.Empty(),
		},
	}
	return append(stubs.Snapshots(), nil)
}

// addLinkTraceState puts each link's trace state into want: the stock
// transform leaves Link.trace_state out, the encoder sends it.
func addLinkTraceState(want *coltracepb.ExportTraceServiceRequest, spans []sdktrace.ReadOnlySpan) {
	bySpanID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		if s != nil {
			bySpanID[s.SpanContext().SpanID()] = s
		}
	}
	for _, rs := range want.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				src := bySpanID[trace.SpanID(sp.GetSpanId())]
				for i, l := range sp.GetLinks() {
					l.TraceState = src.Links()[i].SpanContext.TraceState().String()
				}
			}
		}
	}
}

// sortResourceSpans orders resource groups by their resource: the stock
// exporter emits them in map order.
func sortResourceSpans(req *coltracepb.ExportTraceServiceRequest) {
	det := proto.MarshalOptions{Deterministic: true}
	slices.SortStableFunc(req.ResourceSpans, func(a, b *tracepb.ResourceSpans) int {
		ab, _ := det.Marshal(a.GetResource())
		bb, _ := det.Marshal(b.GetResource())
		return bytes.Compare(ab, bb)
	})
}

func TestSpanEncoderMatchesStockExporter(t *testing.T) {
	tests := []struct {
		name  string
		spans func(t *testing.T) []sdktrace.ReadOnlySpan
	}{
		{"sdk spans of every shape", func(t *testing.T) []sdktrace.ReadOnlySpan { return sdkSpans(t) }},
		{"stub edge cases", func(*testing.T) []sdktrace.ReadOnlySpan { return stubSpans() }},
		{"one span", func(t *testing.T) []sdktrace.ReadOnlySpan { return sdkSpans(t)[:1] }},
		{"sdk and stub spans mixed", func(t *testing.T) []sdktrace.ReadOnlySpan {
			return append(stubSpans(), sdkSpans(t)...)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spans := tt.spans(t)
			want := stockRequest(t, spans)
			addLinkTraceState(want, spans)

			var enc spanEncoder
			prefix := []byte("prefix")
			b := enc.encode(append([]byte(nil), prefix...), spans)
			if !bytes.HasPrefix(b, prefix) {
				t.Fatalf("encode overwrote the bytes before dst's length")
			}
			got := &coltracepb.ExportTraceServiceRequest{}
			if err := proto.Unmarshal(b[len(prefix):], got); err != nil {
				t.Fatalf("unmarshal the encoder's bytes: %v", err)
			}
			sortResourceSpans(want)
			sortResourceSpans(got)
			if !proto.Equal(got, want) {
				t.Fatalf("encoder and stock exporter differ\n--- encoder:\n%s\n--- stock:\n%s",
					prototext.Format(got), prototext.Format(want))
			}
			// What proto.Marshal makes of the same message is as long: no
			// padded varints, no fields sent that proto3 would leave out.
			if n := proto.Size(got); n != len(b)-len(prefix) {
				t.Errorf("encoded %d bytes, proto.Marshal would send %d", len(b)-len(prefix), n)
			}

			// A second batch on the same encoder (cached resource, reused
			// scratch) gives the same bytes.
			again := enc.encode(nil, spans)
			if !bytes.Equal(again, b[len(prefix):]) {
				t.Errorf("second encode of the same spans differs")
			}
		})
	}
}

func TestSpanEncoderEmptyBatch(t *testing.T) {
	var enc spanEncoder
	if b := enc.encode(nil, nil); len(b) != 0 {
		t.Errorf("empty batch encoded as %d bytes, want an empty request", len(b))
	}
	if b := enc.encode(nil, []sdktrace.ReadOnlySpan{nil}); len(b) != 0 {
		t.Errorf("batch of nil spans encoded as %d bytes, want an empty request", len(b))
	}
}

// busEventSpans ends the publish and deliver spans the bus makes for its
// i-th accepted and acknowledged event (bus/telemetry.go): 8 and 9
// attributes.
func busEventSpans(ctx context.Context, tr trace.Tracer, i int) {
	id := strconv.Itoa(i)
	pctx, pub := tr.Start(ctx, "publish data", trace.WithSpanKind(trace.SpanKindProducer))
	pub.SetAttributes(attribute.String("messaging.system", "eventbus"),
		attribute.String("messaging.destination.name", "data"),
		attribute.String("messaging.operation.type", "send"),
		attribute.String("messaging.operation.name", "publish"),
		attribute.String("eventbus.event.type", "CANDLE_UPDATE"),
		attribute.String("eventbus.outcome", "accepted"),
		attribute.Int("eventbus.queue.depth", i%50),
		attribute.String("messaging.message.id", id))
	pub.End()
	_, del := tr.Start(pctx, "deliver data", trace.WithSpanKind(trace.SpanKindConsumer))
	del.SetAttributes(attribute.String("messaging.system", "eventbus"),
		attribute.String("messaging.destination.name", "data"),
		attribute.String("messaging.operation.type", "process"),
		attribute.String("messaging.operation.name", "deliver"),
		attribute.String("messaging.message.id", id),
		attribute.String("eventbus.event.type", "CANDLE_UPDATE"),
		attribute.Float64("eventbus.time_in_queue_seconds", float64(i)*1e-6),
		attribute.Int("eventbus.redelivery.count", 0),
		attribute.String("eventbus.delivery.result", "ack"))
	del.End()
}

// busSpans are 512 spans of 256 bus events, as one export batch sees them.
func busSpans(t testing.TB) []sdktrace.ReadOnlySpan {
	t.Helper()
	res := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.26.0",
		attribute.String("service.name", "eventbus-sidecar"), attribute.String("service.instance.id", "b0c1"),
		attribute.String("telemetry.sdk.language", "go"), attribute.String("telemetry.sdk.name", "opentelemetry"))
	return recordSpans(t, res, nil, func(tp trace.TracerProvider) {
		tr := tp.Tracer("github.com/eventbus-sidecar/eventbus-sidecar/bus")
		for i := range 256 {
			busEventSpans(context.Background(), tr, i)
		}
	})
}

func TestSpanEncoderSteadyStateDoesNotAllocate(t *testing.T) {
	spans := busSpans(t)
	var enc spanEncoder
	buf := enc.encode(nil, spans)
	allocs := testing.AllocsPerRun(20, func() {
		buf = enc.encode(buf[:0], spans)
	})
	if allocs != 0 {
		t.Errorf("encode allocates %v times per batch of %d spans once warm, want 0", allocs, len(spans))
	}
}
