package telemetry

import (
	"bytes"
	"context"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	collectormetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// Inputs shared by the metric encoder's cases.
var (
	mStart = time.Unix(1_700_000_000, 123)
	mNow   = time.Unix(1_700_000_060, 456_789)

	mTraceID = []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	mSpanID  = []byte{0xa, 0xb, 0xc, 0xd, 0xe, 0xf, 0x10, 0x11}

	mSchemaURL = "https://opentelemetry.io/schemas/1.26.0"
)

func metricTestResource() *resource.Resource {
	return resource.NewWithAttributes(mSchemaURL,
		attribute.String("service.name", "eventbus-sidecar"), attribute.Int("pid", 4242))
}

// metricTestScope has a version, attributes and a schema URL.
func metricTestScope() instrumentation.Scope {
	return instrumentation.Scope{
		Name: "github.com/eventbus-sidecar/eventbus-sidecar/bus", Version: "1.2.3",
		SchemaURL: "https://example.com/scope-schema", Attributes: attribute.NewSet(attribute.Bool("scoped", true)),
	}
}

// Expected-message builders.

func strKV(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func intKV(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

func boolKV(k string, v bool) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: v}}}
}

func ptr[T any](v T) *T { return &v }

func wantResource() *resourcepb.Resource {
	return &resourcepb.Resource{Attributes: []*commonpb.KeyValue{intKV("pid", 4242), strKV("service.name", "eventbus-sidecar")}}
}

func wantScope() *commonpb.InstrumentationScope {
	return &commonpb.InstrumentationScope{
		Name: "github.com/eventbus-sidecar/eventbus-sidecar/bus", Version: "1.2.3",
		Attributes: []*commonpb.KeyValue{boolKV("scoped", true)},
	}
}

// oneScope wraps metrics in the test resource and scope, and want in the
// request that should carry them.
func oneScope(ms []metricdata.Metrics, want []*metricspb.Metric) (*metricdata.ResourceMetrics, *collectormetricspb.ExportMetricsServiceRequest) {
	rm := &metricdata.ResourceMetrics{
		Resource:     metricTestResource(),
		ScopeMetrics: []metricdata.ScopeMetrics{{Scope: metricTestScope(), Metrics: ms}},
	}
	req := &collectormetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
		Resource:  wantResource(),
		SchemaUrl: mSchemaURL,
		ScopeMetrics: []*metricspb.ScopeMetrics{{
			Scope: wantScope(), Metrics: want, SchemaUrl: "https://example.com/scope-schema",
		}},
	}}}
	return rm, req
}

type metricCase struct {
	name string
	rm   *metricdata.ResourceMetrics
	want *collectormetricspb.ExportMetricsServiceRequest
	// stockDiffers: the stock exporter sends something else that means the
	// same (see metricEncoder), so the differential test skips the case.
	stockDiffers bool
}

func metricCases() []metricCase {
	queueA := attribute.NewSet(attribute.String("queue", "a"))
	queueB := attribute.NewSet(attribute.String("queue", "b"), attribute.Int("shard", 3))
	longName := strings.Repeat("n", 200) // a Metric longer than a one-byte length
	cases := []metricCase{}
	add := func(name string, ms []metricdata.Metrics, want []*metricspb.Metric) {
		rm, req := oneScope(ms, want)
		cases = append(cases, metricCase{name: name, rm: rm, want: req})
	}

	add("gauge int64, empty attributes, zero value",
		[]metricdata.Metrics{{Name: "depth", Description: "queue depth", Unit: "{event}", Data: metricdata.Gauge[int64]{
			DataPoints: []metricdata.DataPoint[int64]{{Time: mNow, Value: -7}, {Attributes: queueA, StartTime: mStart, Time: mNow, Value: 0}},
		}}},
		[]*metricspb.Metric{{Name: "depth", Description: "queue depth", Unit: "{event}", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
			DataPoints: []*metricspb.NumberDataPoint{
				{TimeUnixNano: uint64(mNow.UnixNano()), Value: &metricspb.NumberDataPoint_AsInt{AsInt: -7}},
				{Attributes: []*commonpb.KeyValue{strKV("queue", "a")}, StartTimeUnixNano: uint64(mStart.UnixNano()),
					TimeUnixNano: uint64(mNow.UnixNano()), Value: &metricspb.NumberDataPoint_AsInt{AsInt: 0}},
			},
		}}}})

	add("gauge float64",
		[]metricdata.Metrics{{Name: "load", Data: metricdata.Gauge[float64]{
			DataPoints: []metricdata.DataPoint[float64]{{Attributes: queueB, Time: mNow, Value: 0.25}, {Time: mNow, Value: 0}},
		}}},
		[]*metricspb.Metric{{Name: "load", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
			DataPoints: []*metricspb.NumberDataPoint{
				{Attributes: []*commonpb.KeyValue{strKV("queue", "b"), intKV("shard", 3)},
					TimeUnixNano: uint64(mNow.UnixNano()), Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: 0.25}},
				{TimeUnixNano: uint64(mNow.UnixNano()), Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: 0}},
			},
		}}}})

	add("sum int64 cumulative monotonic",
		[]metricdata.Metrics{{Name: "published", Unit: "{event}", Data: metricdata.Sum[int64]{
			Temporality: metricdata.CumulativeTemporality, IsMonotonic: true,
			DataPoints: []metricdata.DataPoint[int64]{{Attributes: queueA, StartTime: mStart, Time: mNow, Value: math.MaxInt64}},
		}}},
		[]*metricspb.Metric{{Name: "published", Unit: "{event}", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, IsMonotonic: true,
			DataPoints: []*metricspb.NumberDataPoint{{Attributes: []*commonpb.KeyValue{strKV("queue", "a")},
				StartTimeUnixNano: uint64(mStart.UnixNano()), TimeUnixNano: uint64(mNow.UnixNano()),
				Value: &metricspb.NumberDataPoint_AsInt{AsInt: math.MaxInt64}}},
		}}}})

	add("sum float64 delta not monotonic",
		[]metricdata.Metrics{{Name: "inflight", Data: metricdata.Sum[float64]{
			Temporality: metricdata.DeltaTemporality,
			DataPoints:  []metricdata.DataPoint[float64]{{StartTime: mStart, Time: mNow, Value: -1.5}},
		}}},
		[]*metricspb.Metric{{Name: "inflight", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
			DataPoints: []*metricspb.NumberDataPoint{{StartTimeUnixNano: uint64(mStart.UnixNano()), TimeUnixNano: uint64(mNow.UnixNano()),
				Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: -1.5}}},
		}}}})

	add("sum with no data points",
		[]metricdata.Metrics{{Name: "idle", Data: metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality}}},
		[]*metricspb.Metric{{Name: "idle", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
		}}}})

	add("exemplars with trace and span ids and filtered attributes",
		[]metricdata.Metrics{
			{Name: "bytes", Data: metricdata.Sum[float64]{Temporality: metricdata.DeltaTemporality, IsMonotonic: true,
				DataPoints: []metricdata.DataPoint[float64]{{Time: mNow, Value: 10, Exemplars: []metricdata.Exemplar[float64]{
					{FilteredAttributes: []attribute.KeyValue{attribute.String("event.id", "e1"), attribute.Int("size", 7)},
						Time: mNow, Value: 3.5, SpanID: mSpanID, TraceID: mTraceID},
					{Time: mStart, Value: 0},
				}}}}},
			{Name: "count", Data: metricdata.Gauge[int64]{
				DataPoints: []metricdata.DataPoint[int64]{{Time: mNow, Value: 1, Exemplars: []metricdata.Exemplar[int64]{
					{Time: mNow, Value: -3, SpanID: mSpanID, TraceID: mTraceID},
				}}}}},
		},
		[]*metricspb.Metric{
			{Name: "bytes", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
				AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, IsMonotonic: true,
				DataPoints: []*metricspb.NumberDataPoint{{TimeUnixNano: uint64(mNow.UnixNano()),
					Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: 10},
					Exemplars: []*metricspb.Exemplar{
						{FilteredAttributes: []*commonpb.KeyValue{strKV("event.id", "e1"), intKV("size", 7)},
							TimeUnixNano: uint64(mNow.UnixNano()), Value: &metricspb.Exemplar_AsDouble{AsDouble: 3.5},
							SpanId: mSpanID, TraceId: mTraceID},
						{TimeUnixNano: uint64(mStart.UnixNano()), Value: &metricspb.Exemplar_AsDouble{AsDouble: 0}},
					}}},
			}}},
			{Name: "count", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
				DataPoints: []*metricspb.NumberDataPoint{{TimeUnixNano: uint64(mNow.UnixNano()),
					Value: &metricspb.NumberDataPoint_AsInt{AsInt: 1},
					Exemplars: []*metricspb.Exemplar{{TimeUnixNano: uint64(mNow.UnixNano()),
						Value: &metricspb.Exemplar_AsInt{AsInt: -3}, SpanId: mSpanID, TraceId: mTraceID}}}},
			}}},
		})

	bounds := []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000}
	counts := make([]uint64, len(bounds)+1)
	for i := range counts {
		counts[i] = uint64(i * 1000)
	}
	add("histogram float64 delta with min and max and exemplar",
		[]metricdata.Metrics{{Name: "latency", Unit: "s", Data: metricdata.Histogram[float64]{
			Temporality: metricdata.DeltaTemporality,
			DataPoints: []metricdata.HistogramDataPoint[float64]{{
				Attributes: queueA, StartTime: mStart, Time: mNow, Count: 120000, Bounds: bounds, BucketCounts: counts,
				Min: metricdata.NewExtrema(0.0), Max: metricdata.NewExtrema(9000.5), Sum: 12345.75,
				Exemplars: []metricdata.Exemplar[float64]{{Time: mNow, Value: 0.002, SpanID: mSpanID, TraceID: mTraceID,
					FilteredAttributes: []attribute.KeyValue{attribute.String("k", "v")}}},
			}},
		}}},
		[]*metricspb.Metric{{Name: "latency", Unit: "s", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
			DataPoints: []*metricspb.HistogramDataPoint{{
				Attributes: []*commonpb.KeyValue{strKV("queue", "a")}, StartTimeUnixNano: uint64(mStart.UnixNano()),
				TimeUnixNano: uint64(mNow.UnixNano()), Count: 120000, Sum: ptr(12345.75), BucketCounts: counts, ExplicitBounds: bounds,
				Min: ptr(0.0), Max: ptr(9000.5),
				Exemplars: []*metricspb.Exemplar{{FilteredAttributes: []*commonpb.KeyValue{strKV("k", "v")},
					TimeUnixNano: uint64(mNow.UnixNano()), Value: &metricspb.Exemplar_AsDouble{AsDouble: 0.002},
					SpanId: mSpanID, TraceId: mTraceID}},
			}},
		}}}})

	add("histogram int64 cumulative without min and max, zero sum",
		[]metricdata.Metrics{{Name: "sizes", Data: metricdata.Histogram[int64]{
			Temporality: metricdata.CumulativeTemporality,
			DataPoints: []metricdata.HistogramDataPoint[int64]{
				{StartTime: mStart, Time: mNow, Bounds: []float64{1, 10}, BucketCounts: []uint64{0, 0, 0}},
				{Attributes: queueB, StartTime: mStart, Time: mNow, Count: 3, Bounds: []float64{1, 10}, BucketCounts: []uint64{1, 1, 1},
					Min: metricdata.NewExtrema[int64](-2), Max: metricdata.NewExtrema[int64](40), Sum: 45,
					Exemplars: []metricdata.Exemplar[int64]{{Time: mNow, Value: 40}}},
				{Time: mNow}, // no buckets at all
			},
		}}},
		[]*metricspb.Metric{{Name: "sizes", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
			DataPoints: []*metricspb.HistogramDataPoint{
				{StartTimeUnixNano: uint64(mStart.UnixNano()), TimeUnixNano: uint64(mNow.UnixNano()), Sum: ptr(0.0),
					BucketCounts: []uint64{0, 0, 0}, ExplicitBounds: []float64{1, 10}},
				{Attributes: []*commonpb.KeyValue{strKV("queue", "b"), intKV("shard", 3)},
					StartTimeUnixNano: uint64(mStart.UnixNano()), TimeUnixNano: uint64(mNow.UnixNano()), Count: 3, Sum: ptr(45.0),
					BucketCounts: []uint64{1, 1, 1}, ExplicitBounds: []float64{1, 10}, Min: ptr(-2.0), Max: ptr(40.0),
					Exemplars: []*metricspb.Exemplar{{TimeUnixNano: uint64(mNow.UnixNano()), Value: &metricspb.Exemplar_AsInt{AsInt: 40}}}},
				{TimeUnixNano: uint64(mNow.UnixNano()), Sum: ptr(0.0)},
			},
		}}}})

	add("exponential histogram float64 with positive and negative buckets",
		[]metricdata.Metrics{{Name: "exp", Data: metricdata.ExponentialHistogram[float64]{
			Temporality: metricdata.DeltaTemporality,
			DataPoints: []metricdata.ExponentialHistogramDataPoint[float64]{{
				Attributes: queueA, StartTime: mStart, Time: mNow, Count: 310, Sum: -12.5,
				Min: metricdata.NewExtrema(-8.0), Max: metricdata.NewExtrema(1e6),
				Scale: -3, ZeroCount: 2, ZeroThreshold: 1e-9,
				PositiveBucket: metricdata.ExponentialBucket{Offset: -4, Counts: []uint64{1, 0, 300, 1 << 40}},
				NegativeBucket: metricdata.ExponentialBucket{Offset: 7, Counts: []uint64{5}},
				Exemplars:      []metricdata.Exemplar[float64]{{Time: mNow, Value: 2, TraceID: mTraceID, SpanID: mSpanID}},
			}},
		}}},
		[]*metricspb.Metric{{Name: "exp", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
			DataPoints: []*metricspb.ExponentialHistogramDataPoint{{
				Attributes: []*commonpb.KeyValue{strKV("queue", "a")}, StartTimeUnixNano: uint64(mStart.UnixNano()),
				TimeUnixNano: uint64(mNow.UnixNano()), Count: 310, Sum: ptr(-12.5), Min: ptr(-8.0), Max: ptr(1e6),
				Scale: -3, ZeroCount: 2, ZeroThreshold: 1e-9,
				Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: -4, BucketCounts: []uint64{1, 0, 300, 1 << 40}},
				Negative: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 7, BucketCounts: []uint64{5}},
				Exemplars: []*metricspb.Exemplar{{TimeUnixNano: uint64(mNow.UnixNano()),
					Value: &metricspb.Exemplar_AsDouble{AsDouble: 2}, TraceId: mTraceID, SpanId: mSpanID}},
			}},
		}}}})

	add("exponential histogram int64 cumulative, empty buckets",
		[]metricdata.Metrics{{Name: "exp-int", Data: metricdata.ExponentialHistogram[int64]{
			Temporality: metricdata.CumulativeTemporality,
			DataPoints: []metricdata.ExponentialHistogramDataPoint[int64]{
				{Time: mNow, Scale: 20},
				{Time: mNow, Count: 1, Sum: 9, Min: metricdata.NewExtrema[int64](9), Max: metricdata.NewExtrema[int64](9),
					PositiveBucket: metricdata.ExponentialBucket{Offset: 63, Counts: []uint64{1}}},
			},
		}}},
		[]*metricspb.Metric{{Name: "exp-int", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
			DataPoints: []*metricspb.ExponentialHistogramDataPoint{
				{TimeUnixNano: uint64(mNow.UnixNano()), Sum: ptr(0.0), Scale: 20,
					Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{}, Negative: &metricspb.ExponentialHistogramDataPoint_Buckets{}},
				{TimeUnixNano: uint64(mNow.UnixNano()), Count: 1, Sum: ptr(9.0), Min: ptr(9.0), Max: ptr(9.0),
					Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 63, BucketCounts: []uint64{1}},
					Negative: &metricspb.ExponentialHistogramDataPoint_Buckets{}},
			},
		}}}})

	add("summary",
		[]metricdata.Metrics{{Name: "bridged", Data: metricdata.Summary{DataPoints: []metricdata.SummaryDataPoint{{
			Attributes: queueA, StartTime: mStart, Time: mNow, Count: 4, Sum: 10,
			QuantileValues: []metricdata.QuantileValue{{Quantile: 0, Value: 1}, {Quantile: 0.5, Value: 2.5}, {Quantile: 1, Value: 4}},
		}}}}},
		[]*metricspb.Metric{{Name: "bridged", Data: &metricspb.Metric_Summary{Summary: &metricspb.Summary{
			DataPoints: []*metricspb.SummaryDataPoint{{
				Attributes: []*commonpb.KeyValue{strKV("queue", "a")}, StartTimeUnixNano: uint64(mStart.UnixNano()),
				TimeUnixNano: uint64(mNow.UnixNano()), Count: 4, Sum: 10,
				QuantileValues: []*metricspb.SummaryDataPoint_ValueAtQuantile{{Quantile: 0, Value: 1}, {Quantile: 0.5, Value: 2.5}, {Quantile: 1, Value: 4}},
			}},
		}}}})

	add("unknown aggregation and temporality are skipped, long metric kept",
		[]metricdata.Metrics{
			{Name: "no-data"},
			{Name: "bad-temporality", Data: metricdata.Sum[int64]{DataPoints: []metricdata.DataPoint[int64]{{Value: 1}}}},
			{Name: "bad-histogram", Data: metricdata.Histogram[float64]{Temporality: 99}},
			{Name: "bad-exp", Data: metricdata.ExponentialHistogram[int64]{}},
			{Name: longName, Description: longName, Data: metricdata.Gauge[int64]{DataPoints: []metricdata.DataPoint[int64]{{Value: 300}}}},
		},
		[]*metricspb.Metric{{Name: longName, Description: longName, Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
			DataPoints: []*metricspb.NumberDataPoint{{Value: &metricspb.NumberDataPoint_AsInt{AsInt: 300}}},
		}}}})

	// Two scopes, one of them the zero scope (left out), one with no
	// metrics, and a resource with neither schema URL nor attributes.
	gauge := metricdata.Metrics{Name: "g", Data: metricdata.Gauge[int64]{DataPoints: []metricdata.DataPoint[int64]{{Value: 1}}}}
	wantGauge := &metricspb.Metric{Name: "g", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
		DataPoints: []*metricspb.NumberDataPoint{{Value: &metricspb.NumberDataPoint_AsInt{AsInt: 1}}}}}}
	cases = append(cases, metricCase{
		name: "two scopes, zero scope, empty resource",
		rm: &metricdata.ResourceMetrics{Resource: resource.Empty(), ScopeMetrics: []metricdata.ScopeMetrics{
			{Scope: metricTestScope(), Metrics: []metricdata.Metrics{gauge}},
			{Metrics: []metricdata.Metrics{gauge, gauge}},
			{Scope: instrumentation.Scope{Name: "empty"}},
		}},
		want: &collectormetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
			Resource: &resourcepb.Resource{},
			ScopeMetrics: []*metricspb.ScopeMetrics{
				{Scope: wantScope(), Metrics: []*metricspb.Metric{wantGauge}, SchemaUrl: "https://example.com/scope-schema"},
				{Metrics: []*metricspb.Metric{wantGauge, wantGauge}},
				{Scope: &commonpb.InstrumentationScope{Name: "empty"}},
			},
		}}},
		stockDiffers: true, // it sends the zero scope as an empty message
	})
	cases = append(cases, metricCase{
		name: "nil resource",
		rm:   &metricdata.ResourceMetrics{ScopeMetrics: []metricdata.ScopeMetrics{{Scope: metricTestScope(), Metrics: []metricdata.Metrics{gauge}}}},
		want: &collectormetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
			Resource: &resourcepb.Resource{},
			ScopeMetrics: []*metricspb.ScopeMetrics{
				{Scope: wantScope(), Metrics: []*metricspb.Metric{wantGauge}, SchemaUrl: "https://example.com/scope-schema"},
			},
		}}},
	})
	cases = append(cases,
		metricCase{name: "nil export", want: &collectormetricspb.ExportMetricsServiceRequest{}, stockDiffers: true},
		metricCase{name: "no scope metrics", rm: &metricdata.ResourceMetrics{Resource: metricTestResource()},
			want: &collectormetricspb.ExportMetricsServiceRequest{}, stockDiffers: true},
	)
	return cases
}

// decodeMetricRequest unmarshals what the encoder wrote.
func decodeMetricRequest(t *testing.T, b []byte) *collectormetricspb.ExportMetricsServiceRequest {
	t.Helper()
	got := &collectormetricspb.ExportMetricsServiceRequest{}
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatalf("unmarshal the encoder's bytes: %v", err)
	}
	// The encoder sends nothing proto3 would leave out, and no padded
	// varints: re-marshalling what it sent takes as many bytes.
	if n := proto.Size(got); n != len(b) {
		t.Errorf("encoded %d bytes, proto.Marshal would send %d", len(b), n)
	}
	return got
}

func assertRequestEqual(t *testing.T, got, want *collectormetricspb.ExportMetricsServiceRequest) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("requests differ\n--- encoder:\n%s\n--- want:\n%s", prototext.Format(got), prototext.Format(want))
	}
}

func TestMetricEncoder(t *testing.T) {
	for _, tt := range metricCases() {
		t.Run(tt.name, func(t *testing.T) {
			var enc metricEncoder
			prefix := []byte("prefix")
			b := enc.encode(append([]byte(nil), prefix...), tt.rm)
			if !bytes.HasPrefix(b, prefix) {
				t.Fatalf("encode overwrote the bytes before dst's length")
			}
			assertRequestEqual(t, decodeMetricRequest(t, b[len(prefix):]), tt.want)
			// Again with the resource cached.
			if again := enc.encode(nil, tt.rm); !bytes.Equal(again, b[len(prefix):]) {
				t.Errorf("second encode of the same export differs")
			}
		})
	}
}

// TestMetricEncoderReuse runs every case through one encoder, twice over,
// so that each export follows a different one: nothing of an earlier
// export (the cached resource above all) may show in a later one.
func TestMetricEncoderReuse(t *testing.T) {
	cases := metricCases()
	var enc metricEncoder
	var buf []byte
	for range 2 {
		for _, tt := range cases {
			buf = enc.encode(buf[:0], tt.rm)
			got := &collectormetricspb.ExportMetricsServiceRequest{}
			if err := proto.Unmarshal(buf, got); err != nil {
				t.Fatalf("%s: unmarshal: %v", tt.name, err)
			}
			if !proto.Equal(got, tt.want) {
				t.Fatalf("%s after other exports on the same encoder:\n--- encoder:\n%s\n--- want:\n%s",
					tt.name, prototext.Format(got), prototext.Format(tt.want))
			}
		}
	}
	// A different resource at the same address cannot happen while the
	// encoder holds the pointer, but a new resource must not reuse the
	// old one's bytes.
	rm := &metricdata.ResourceMetrics{Resource: resource.NewSchemaless(attribute.String("other", "x")),
		ScopeMetrics: []metricdata.ScopeMetrics{{Metrics: []metricdata.Metrics{{Name: "m",
			Data: metricdata.Gauge[float64]{DataPoints: []metricdata.DataPoint[float64]{{Value: 1}}}}}}}}
	got := decodeMetricRequest(t, enc.encode(nil, rm))
	if attrs := got.GetResourceMetrics()[0].GetResource().GetAttributes(); len(attrs) != 1 || attrs[0].GetKey() != "other" {
		t.Errorf("resource attributes %v, want other=x only", attrs)
	}
}

// stockMetricRequests sends each export through the stock otlpmetricgrpc
// exporter to a real OTLP receiver and returns the requests it received.
func stockMetricRequests(t *testing.T, exports []*metricdata.ResourceMetrics) []*collectormetricspb.ExportMetricsServiceRequest {
	t.Helper()
	r := startReceiver(t, "127.0.0.1:0")
	ctx := context.Background()
	exp, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithInsecure(), otlpmetricgrpc.WithEndpoint(r.addr),
		otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: false}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = exp.Shutdown(ctx) }()
	var out []*collectormetricspb.ExportMetricsServiceRequest
	for i, rm := range exports {
		// It reports the metrics it drops, and sends the rest.
		_ = exp.Export(ctx, rm)
		r.mu.Lock()
		if len(r.metrics) != i+1 {
			r.mu.Unlock()
			t.Fatalf("receiver has %d resource metrics after %d exports", len(r.metrics), i+1)
		}
		out = append(out, &collectormetricspb.ExportMetricsServiceRequest{ResourceMetrics: r.metrics[i : i+1]})
		r.mu.Unlock()
	}
	return out
}

// TestMetricEncoderMatchesStockExporter is the differential check: the
// stock exporter builds the generated structs from the same exports and
// proto.Marshals them; both sides, decoded, must be the same message.
func TestMetricEncoderMatchesStockExporter(t *testing.T) {
	var cases []metricCase
	var exports []*metricdata.ResourceMetrics
	for _, tt := range metricCases() {
		if !tt.stockDiffers {
			cases = append(cases, tt)
			exports = append(exports, tt.rm)
		}
	}
	exports = append(exports, benchExport())
	stock := stockMetricRequests(t, exports)
	var enc metricEncoder
	for i, rm := range exports {
		name := "bench export"
		if i < len(cases) {
			name = cases[i].name
		}
		t.Run(name, func(t *testing.T) {
			assertRequestEqual(t, decodeMetricRequest(t, enc.encode(nil, rm)), stock[i])
		})
	}
}

// benchExport is what the sidecar's meter provider hands the exporter
// each interval: 20 metrics over 3 queues, counters, gauges and latency
// histograms with 15 bounds.
func benchExport() *metricdata.ResourceMetrics {
	res := resource.NewWithAttributes(mSchemaURL,
		attribute.String("service.name", "eventbus-sidecar"), attribute.String("service.instance.id", "b0c1"),
		attribute.String("telemetry.sdk.language", "go"), attribute.String("telemetry.sdk.name", "opentelemetry"))
	queues := []attribute.Set{
		attribute.NewSet(attribute.String("eventbus.queue", "data"), attribute.String("eventbus.outcome", "accepted")),
		attribute.NewSet(attribute.String("eventbus.queue", "control"), attribute.String("eventbus.outcome", "accepted")),
		attribute.NewSet(attribute.String("eventbus.queue", "audit"), attribute.String("eventbus.outcome", "rejected")),
	}
	bounds := []float64{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	var ms []metricdata.Metrics
	for i := range 10 {
		dps := make([]metricdata.DataPoint[int64], len(queues))
		for q := range queues {
			dps[q] = metricdata.DataPoint[int64]{Attributes: queues[q], StartTime: mStart, Time: mNow, Value: int64(1000*i + q)}
		}
		ms = append(ms, metricdata.Metrics{Name: "eventbus.events." + strconv.Itoa(i), Description: "Events handled.", Unit: "{event}",
			Data: metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: dps}})
	}
	for i := range 6 {
		dps := make([]metricdata.DataPoint[float64], len(queues))
		for q := range queues {
			dps[q] = metricdata.DataPoint[float64]{Attributes: queues[q], Time: mNow, Value: float64(i) + 0.5}
		}
		ms = append(ms, metricdata.Metrics{Name: "eventbus.queue.fill." + strconv.Itoa(i), Unit: "1",
			Data: metricdata.Gauge[float64]{DataPoints: dps}})
	}
	for i := range 4 {
		dps := make([]metricdata.HistogramDataPoint[float64], len(queues))
		for q := range queues {
			counts := make([]uint64, len(bounds)+1)
			for k := range counts {
				counts[k] = uint64(k * (q + 1) * 37)
			}
			dps[q] = metricdata.HistogramDataPoint[float64]{Attributes: queues[q], StartTime: mStart, Time: mNow,
				Count: 12345, Bounds: bounds, BucketCounts: counts, Sum: 42.5,
				Min: metricdata.NewExtrema(0.00002), Max: metricdata.NewExtrema(3.5)}
		}
		ms = append(ms, metricdata.Metrics{Name: "eventbus.latency." + strconv.Itoa(i), Unit: "s",
			Data: metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality, DataPoints: dps}})
	}
	return &metricdata.ResourceMetrics{Resource: res, ScopeMetrics: []metricdata.ScopeMetrics{{
		Scope:   instrumentation.Scope{Name: "github.com/eventbus-sidecar/eventbus-sidecar/bus", Version: "0.9.0"},
		Metrics: ms,
	}}}
}

func TestMetricEncoderSteadyStateDoesNotAllocate(t *testing.T) {
	rm := benchExport()
	var enc metricEncoder
	buf := enc.encode(nil, rm)
	allocs := testing.AllocsPerRun(20, func() {
		buf = enc.encode(buf[:0], rm)
	})
	if allocs != 0 {
		t.Errorf("encode allocates %v times per export once warm, want 0", allocs)
	}
}

func BenchmarkMetricEncoder(b *testing.B) {
	rm := benchExport()
	var enc metricEncoder
	buf := enc.encode(nil, rm)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = enc.encode(buf[:0], rm)
	}
}

// partialSuccessResponses are responses a receiver may send, and garbage.
func partialSuccessResponses(t testing.TB) []struct {
	name     string
	resp     []byte
	rejected int64
	message  string
	ok       bool
} {
	t.Helper()
	marshal := func(m *collectormetricspb.ExportMetricsServiceResponse) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	full := marshal(&collectormetricspb.ExportMetricsServiceResponse{PartialSuccess: &collectormetricspb.ExportMetricsPartialSuccess{
		RejectedDataPoints: 12, ErrorMessage: "quota exceeded"}})
	return []struct {
		name     string
		resp     []byte
		rejected int64
		message  string
		ok       bool
	}{
		{"empty", nil, 0, "", true},
		{"full success", marshal(&collectormetricspb.ExportMetricsServiceResponse{}), 0, "", true},
		{"empty partial success", marshal(&collectormetricspb.ExportMetricsServiceResponse{
			PartialSuccess: &collectormetricspb.ExportMetricsPartialSuccess{}}), 0, "", true},
		{"partial success", full, 12, "quota exceeded", true},
		{"message only", marshal(&collectormetricspb.ExportMetricsServiceResponse{PartialSuccess: &collectormetricspb.ExportMetricsPartialSuccess{
			ErrorMessage: "warning: " + strings.Repeat("x", 300)}}), 0, "warning: " + strings.Repeat("x", 300), true},
		{"negative count", marshal(&collectormetricspb.ExportMetricsServiceResponse{PartialSuccess: &collectormetricspb.ExportMetricsPartialSuccess{
			RejectedDataPoints: -1}}), -1, "", true},
		{"unknown fields around", slices.Concat([]byte{0x10, 0x05}, full, []byte{0x1d, 1, 2, 3, 4}), 12, "quota exceeded", true},
		{"repeated message merges", slices.Concat(full, []byte{0x0a, 0x02, 0x08, 0x03}), 3, "quota exceeded", true},
		{"wrong wire type for count is unknown", []byte{0x0a, 0x09, 0x09, 1, 0, 0, 0, 0, 0, 0, 0}, 0, "", true},
		{"truncated", full[:len(full)-1], 0, "", false},
		{"bad length", []byte{0x0a, 0x7f, 0x08}, 0, "", false},
		{"field zero", []byte{0x00, 0x01}, 0, "", false},
		{"field number too large", []byte{0x80, 0x80, 0x80, 0x80, 0x10, 0x00}, 0, "", false},
		{"field number too large inside", []byte{0x0a, 0x06, 0x80, 0x80, 0x80, 0x80, 0x10, 0x00}, 0, "", false},
		{"stray end group", []byte{0x0c}, 0, "", false},
		{"overlong varint", []byte{0x0a, 0x0b, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0, "", false},
		{"message not utf-8", []byte{0x0a, 0x03, 0x12, 0x01, 0xff}, 0, "", false},
		{"garbage", []byte("HTTP/1.1 502 Bad Gateway"), 0, "", false},
	}
}

func TestDecodeMetricsPartialSuccess(t *testing.T) {
	for _, tt := range partialSuccessResponses(t) {
		t.Run(tt.name, func(t *testing.T) {
			rejected, message, ok := partialSuccessOf(tt.resp)
			if rejected != tt.rejected || message != tt.message || ok != tt.ok {
				t.Errorf("decode(%x) = %d, %q, %v; want %d, %q, %v",
					tt.resp, rejected, message, ok, tt.rejected, tt.message, tt.ok)
			}
			checkPartialSuccessAgainstProto(t, tt.resp)
		})
	}
}

// checkPartialSuccessAgainstProto compares partialSuccessOf
// with proto.Unmarshal of the generated response: they must agree on
// whether resp is valid and, if it is, on what it says.
func checkPartialSuccessAgainstProto(t *testing.T, resp []byte) {
	t.Helper()
	rejected, message, ok := partialSuccessOf(resp)
	var m collectormetricspb.ExportMetricsServiceResponse
	err := proto.Unmarshal(resp, &m)
	if (err == nil) != ok {
		t.Fatalf("decode(%x) ok=%v, proto.Unmarshal error %v", resp, ok, err)
	}
	if !ok {
		if rejected != 0 || message != "" {
			t.Fatalf("decode(%x) not ok but returned %d, %q", resp, rejected, message)
		}
		return
	}
	ps := m.GetPartialSuccess()
	if rejected != ps.GetRejectedDataPoints() || message != ps.GetErrorMessage() {
		t.Fatalf("decode(%x) = %d, %q; proto.Unmarshal says %d, %q",
			resp, rejected, message, ps.GetRejectedDataPoints(), ps.GetErrorMessage())
	}
}

// FuzzPartialSuccessOf: on any input the decoder does not
// panic and agrees with proto.Unmarshal.
func FuzzPartialSuccessOf(f *testing.F) {
	for _, tt := range partialSuccessResponses(f) {
		f.Add(tt.resp)
	}
	f.Fuzz(func(t *testing.T, resp []byte) {
		checkPartialSuccessAgainstProto(t, resp)
	})
}
