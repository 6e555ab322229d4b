package telemetry

import (
	"math"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	"google.golang.org/protobuf/encoding/protowire"
)

// metricEncoder writes an SDK metric export as the protobuf bytes of an
// OTLP ExportMetricsServiceRequest (opentelemetry-proto
// collector/metrics/v1) without going through the generated metricspb
// structs, so that the binary need not link the protobuf runtime, gRPC and
// the generated OTLP types just to export metrics.
//
// The request carries what the stock otlpmetric exporter sends, field for
// field, with these differences, none of which a receiver can tell apart:
//   - an export with no scope metrics (or a nil one) is the empty request
//     (zero bytes) rather than one ResourceMetrics holding only the
//     resource, since there is nothing to report;
//   - the zero instrumentation scope is left out instead of sent as an
//     empty message, as the span encoder does;
//   - exemplar trace and span IDs that are all zero are left out, as they
//     name no span.
//
// Metrics the stock exporter rejects (an aggregation type it does not know,
// an unknown temporality) are left out, as the stock exporter leaves them
// out of what it sends.
//
// The zero value is ready to use. A metricEncoder is not safe for
// concurrent use.
type metricEncoder struct {
	// res and resField cache the encoded ResourceMetrics.resource field
	// (tag, length, attributes) of the last resource: a resource is
	// immutable and a MeterProvider hands the same pointer to every
	// export, so the attributes are encoded once per process.
	res      *resource.Resource
	resField []byte
	resValid bool
}

// Field numbers of the OTLP messages written here (opentelemetry-proto
// metrics/v1, collector/metrics/v1). Resource, InstrumentationScope and
// KeyValue are shared with the span encoder.
const (
	fieldRequestResourceMetrics protowire.Number = 1

	fieldResourceMetricsResource     protowire.Number = 1
	fieldResourceMetricsScopeMetrics protowire.Number = 2
	fieldResourceMetricsSchemaURL    protowire.Number = 3

	fieldScopeMetricsScope     protowire.Number = 1
	fieldScopeMetricsMetrics   protowire.Number = 2
	fieldScopeMetricsSchemaURL protowire.Number = 3

	fieldMetricName                 protowire.Number = 1
	fieldMetricDescription          protowire.Number = 2
	fieldMetricUnit                 protowire.Number = 3
	fieldMetricGauge                protowire.Number = 5
	fieldMetricSum                  protowire.Number = 7
	fieldMetricHistogram            protowire.Number = 9
	fieldMetricExponentialHistogram protowire.Number = 10
	fieldMetricSummary              protowire.Number = 11

	// Gauge, Sum, Histogram, ExponentialHistogram and Summary share these.
	fieldAggregationDataPoints  protowire.Number = 1
	fieldAggregationTemporality protowire.Number = 2
	fieldSumIsMonotonic         protowire.Number = 3

	fieldNumberStartTime  protowire.Number = 2
	fieldNumberTime       protowire.Number = 3
	fieldNumberAsDouble   protowire.Number = 4
	fieldNumberExemplars  protowire.Number = 5
	fieldNumberAsInt      protowire.Number = 6
	fieldNumberAttributes protowire.Number = 7

	fieldHistStartTime      protowire.Number = 2
	fieldHistTime           protowire.Number = 3
	fieldHistCount          protowire.Number = 4
	fieldHistSum            protowire.Number = 5
	fieldHistBucketCounts   protowire.Number = 6
	fieldHistExplicitBounds protowire.Number = 7
	fieldHistExemplars      protowire.Number = 8
	fieldHistAttributes     protowire.Number = 9
	fieldHistMin            protowire.Number = 11
	fieldHistMax            protowire.Number = 12

	fieldExpHistAttributes    protowire.Number = 1
	fieldExpHistStartTime     protowire.Number = 2
	fieldExpHistTime          protowire.Number = 3
	fieldExpHistCount         protowire.Number = 4
	fieldExpHistSum           protowire.Number = 5
	fieldExpHistScale         protowire.Number = 6
	fieldExpHistZeroCount     protowire.Number = 7
	fieldExpHistPositive      protowire.Number = 8
	fieldExpHistNegative      protowire.Number = 9
	fieldExpHistExemplars     protowire.Number = 11
	fieldExpHistMin           protowire.Number = 12
	fieldExpHistMax           protowire.Number = 13
	fieldExpHistZeroThreshold protowire.Number = 14

	fieldBucketsOffset       protowire.Number = 1
	fieldBucketsBucketCounts protowire.Number = 2

	fieldSummaryStartTime      protowire.Number = 2
	fieldSummaryTime           protowire.Number = 3
	fieldSummaryCount          protowire.Number = 4
	fieldSummarySum            protowire.Number = 5
	fieldSummaryQuantileValues protowire.Number = 6
	fieldSummaryAttributes     protowire.Number = 7

	fieldQuantileQuantile protowire.Number = 1
	fieldQuantileValue    protowire.Number = 2

	fieldExemplarTime               protowire.Number = 2
	fieldExemplarAsDouble           protowire.Number = 3
	fieldExemplarSpanID             protowire.Number = 4
	fieldExemplarTraceID            protowire.Number = 5
	fieldExemplarAsInt              protowire.Number = 6
	fieldExemplarFilteredAttributes protowire.Number = 7
)

// OTLP AggregationTemporality values; the SDK numbers its temporalities
// differently.
const (
	aggregationTemporalityDelta      = 1
	aggregationTemporalityCumulative = 2
)

// encode appends the ExportMetricsServiceRequest for rm to b and returns
// it. A nil rm, or one without scope metrics, appends nothing: zero bytes
// are a valid, empty request.
func (e *metricEncoder) encode(b []byte, rm *metricdata.ResourceMetrics) []byte {
	if rm == nil || len(rm.ScopeMetrics) == 0 {
		return b
	}
	b, rmm := openField(b, fieldRequestResourceMetrics)
	b = append(b, e.resource(rm.Resource)...)
	for i := range rm.ScopeMetrics {
		sm := &rm.ScopeMetrics[i]
		var smm int
		b, smm = openField(b, fieldResourceMetricsScopeMetrics)
		b = appendScope(b, fieldScopeMetricsScope, sm.Scope)
		for j := range sm.Metrics {
			b = appendMetric(b, &sm.Metrics[j])
		}
		b = appendStringField(b, fieldScopeMetricsSchemaURL, sm.Scope.SchemaURL)
		b = closeField(b, smm)
	}
	b = appendStringField(b, fieldResourceMetricsSchemaURL, rm.Resource.SchemaURL())
	return closeField(b, rmm)
}

// resource returns the encoded ResourceMetrics.resource field of res. It
// is written even without attributes (and for a nil res), as the stock
// exporter does.
func (e *metricEncoder) resource(res *resource.Resource) []byte {
	if e.resValid && e.res == res {
		return e.resField
	}
	b, m := openField(e.resField[:0], fieldResourceMetricsResource)
	for it := res.Iter(); it.Next(); {
		kv := it.Attribute()
		b = appendKeyValue(b, fieldResourceAttributes, &kv)
	}
	e.resField = closeField(b, m)
	e.res, e.resValid = res, true
	return e.resField
}

// appendMetric writes m as a ScopeMetrics.metrics field, or nothing when
// its data is of a kind OTLP cannot carry.
func appendMetric(b []byte, m *metricdata.Metrics) []byte {
	mark := len(b)
	b, mm := openField(b, fieldScopeMetricsMetrics)
	b = appendStringField(b, fieldMetricName, m.Name)
	b = appendStringField(b, fieldMetricDescription, m.Description)
	b = appendStringField(b, fieldMetricUnit, m.Unit)
	ok := true
	switch a := m.Data.(type) {
	case metricdata.Gauge[int64]:
		b = appendGauge(b, a.DataPoints)
	case metricdata.Gauge[float64]:
		b = appendGauge(b, a.DataPoints)
	case metricdata.Sum[int64]:
		b, ok = appendSum(b, &a)
	case metricdata.Sum[float64]:
		b, ok = appendSum(b, &a)
	case metricdata.Histogram[int64]:
		b, ok = appendHistogram(b, &a)
	case metricdata.Histogram[float64]:
		b, ok = appendHistogram(b, &a)
	case metricdata.ExponentialHistogram[int64]:
		b, ok = appendExpHistogram(b, &a)
	case metricdata.ExponentialHistogram[float64]:
		b, ok = appendExpHistogram(b, &a)
	case metricdata.Summary:
		b = appendSummary(b, &a)
	default:
		ok = false
	}
	if !ok {
		// Drop what was written of the metric rather than send one
		// without data, which receivers reject.
		return b[:mark]
	}
	return closeField(b, mm)
}

// temporality maps the SDK's temporality onto OTLP's; ok is false for one
// OTLP has no number for.
func temporality(t metricdata.Temporality) (uint64, bool) {
	switch t {
	case metricdata.DeltaTemporality:
		return aggregationTemporalityDelta, true
	case metricdata.CumulativeTemporality:
		return aggregationTemporalityCumulative, true
	default:
		return 0, false
	}
}

// appendGauge writes a Metric.gauge field holding dps.
func appendGauge[N int64 | float64](b []byte, dps []metricdata.DataPoint[N]) []byte {
	b, m := openField(b, fieldMetricGauge)
	for i := range dps {
		b = appendNumberDataPoint(b, &dps[i])
	}
	return closeField(b, m)
}

// appendSum writes a Metric.sum field; ok is false, and nothing is
// written, for a temporality OTLP cannot express.
func appendSum[N int64 | float64](b []byte, s *metricdata.Sum[N]) ([]byte, bool) {
	t, ok := temporality(s.Temporality)
	if !ok {
		return b, false
	}
	b, m := openField(b, fieldMetricSum)
	for i := range s.DataPoints {
		b = appendNumberDataPoint(b, &s.DataPoints[i])
	}
	b = appendVarintField(b, fieldAggregationTemporality, t)
	if s.IsMonotonic {
		b = appendVarintField(b, fieldSumIsMonotonic, 1)
	}
	return closeField(b, m), true
}

// appendNumberDataPoint writes dp as a Gauge or Sum data_points field.
func appendNumberDataPoint[N int64 | float64](b []byte, dp *metricdata.DataPoint[N]) []byte {
	b, m := openField(b, fieldAggregationDataPoints)
	b = appendFixed64Field(b, fieldNumberStartTime, unixNano(dp.StartTime))
	b = appendFixed64Field(b, fieldNumberTime, unixNano(dp.Time))
	b = appendNumber(b, fieldNumberAsInt, fieldNumberAsDouble, dp.Value)
	for i := range dp.Exemplars {
		b = appendExemplar(b, fieldNumberExemplars, &dp.Exemplars[i])
	}
	b = appendAttributeSet(b, fieldNumberAttributes, &dp.Attributes)
	return closeField(b, m)
}

// appendHistogram writes a Metric.histogram field; ok is false, and
// nothing is written, for a temporality OTLP cannot express.
func appendHistogram[N int64 | float64](b []byte, h *metricdata.Histogram[N]) ([]byte, bool) {
	t, ok := temporality(h.Temporality)
	if !ok {
		return b, false
	}
	b, m := openField(b, fieldMetricHistogram)
	for i := range h.DataPoints {
		b = appendHistogramDataPoint(b, &h.DataPoints[i])
	}
	b = appendVarintField(b, fieldAggregationTemporality, t)
	return closeField(b, m), true
}

// appendHistogramDataPoint writes dp as a Histogram data_points field.
// Sums and extrema of integer instruments go out as doubles, which is all
// OTLP offers.
func appendHistogramDataPoint[N int64 | float64](b []byte, dp *metricdata.HistogramDataPoint[N]) []byte {
	b, m := openField(b, fieldAggregationDataPoints)
	b = appendFixed64Field(b, fieldHistStartTime, unixNano(dp.StartTime))
	b = appendFixed64Field(b, fieldHistTime, unixNano(dp.Time))
	b = appendFixed64Field(b, fieldHistCount, dp.Count)
	// sum is an optional field: present even when zero.
	b = appendDouble(b, fieldHistSum, float64(dp.Sum))
	if len(dp.BucketCounts) > 0 {
		b = appendTag(b, fieldHistBucketCounts, protowire.BytesType)
		b = appendVarint(b, uint64(8*len(dp.BucketCounts))) //nolint:gosec // a length
		for _, c := range dp.BucketCounts {
			b = protowire.AppendFixed64(b, c)
		}
	}
	if len(dp.Bounds) > 0 {
		b = appendTag(b, fieldHistExplicitBounds, protowire.BytesType)
		b = appendVarint(b, uint64(8*len(dp.Bounds))) //nolint:gosec // a length
		for _, x := range dp.Bounds {
			b = protowire.AppendFixed64(b, math.Float64bits(x))
		}
	}
	for i := range dp.Exemplars {
		b = appendExemplar(b, fieldHistExemplars, &dp.Exemplars[i])
	}
	b = appendAttributeSet(b, fieldHistAttributes, &dp.Attributes)
	if v, ok := dp.Min.Value(); ok {
		b = appendDouble(b, fieldHistMin, float64(v))
	}
	if v, ok := dp.Max.Value(); ok {
		b = appendDouble(b, fieldHistMax, float64(v))
	}
	return closeField(b, m)
}

// appendExpHistogram writes a Metric.exponential_histogram field; ok is
// false, and nothing is written, for a temporality OTLP cannot express.
func appendExpHistogram[N int64 | float64](b []byte, h *metricdata.ExponentialHistogram[N]) ([]byte, bool) {
	t, ok := temporality(h.Temporality)
	if !ok {
		return b, false
	}
	b, m := openField(b, fieldMetricExponentialHistogram)
	for i := range h.DataPoints {
		b = appendExpHistogramDataPoint(b, &h.DataPoints[i])
	}
	b = appendVarintField(b, fieldAggregationTemporality, t)
	return closeField(b, m), true
}

// appendExpHistogramDataPoint writes dp as an ExponentialHistogram
// data_points field.
func appendExpHistogramDataPoint[N int64 | float64](b []byte, dp *metricdata.ExponentialHistogramDataPoint[N]) []byte {
	b, m := openField(b, fieldAggregationDataPoints)
	b = appendAttributeSet(b, fieldExpHistAttributes, &dp.Attributes)
	b = appendFixed64Field(b, fieldExpHistStartTime, unixNano(dp.StartTime))
	b = appendFixed64Field(b, fieldExpHistTime, unixNano(dp.Time))
	b = appendFixed64Field(b, fieldExpHistCount, dp.Count)
	// sum is an optional field: present even when zero.
	b = appendDouble(b, fieldExpHistSum, float64(dp.Sum))
	b = appendVarintField(b, fieldExpHistScale, protowire.EncodeZigZag(int64(dp.Scale)))
	b = appendFixed64Field(b, fieldExpHistZeroCount, dp.ZeroCount)
	// The stock exporter always sends both bucket messages, even empty.
	b = appendBuckets(b, fieldExpHistPositive, &dp.PositiveBucket)
	b = appendBuckets(b, fieldExpHistNegative, &dp.NegativeBucket)
	for i := range dp.Exemplars {
		b = appendExemplar(b, fieldExpHistExemplars, &dp.Exemplars[i])
	}
	if v, ok := dp.Min.Value(); ok {
		b = appendDouble(b, fieldExpHistMin, float64(v))
	}
	if v, ok := dp.Max.Value(); ok {
		b = appendDouble(b, fieldExpHistMax, float64(v))
	}
	b = appendFixed64Field(b, fieldExpHistZeroThreshold, math.Float64bits(dp.ZeroThreshold))
	return closeField(b, m)
}

// appendBuckets writes an ExponentialHistogramDataPoint.Buckets field; its
// counts are packed varints, whose size is summed up front so that the
// (often long) list is not moved by closeField.
func appendBuckets(b []byte, num protowire.Number, bk *metricdata.ExponentialBucket) []byte {
	b, m := openField(b, num)
	b = appendVarintField(b, fieldBucketsOffset, protowire.EncodeZigZag(int64(bk.Offset)))
	if len(bk.Counts) > 0 {
		n := 0
		for _, c := range bk.Counts {
			n += protowire.SizeVarint(c)
		}
		b = appendTag(b, fieldBucketsBucketCounts, protowire.BytesType)
		b = appendVarint(b, uint64(n)) //nolint:gosec // a length
		for _, c := range bk.Counts {
			b = appendVarint(b, c)
		}
	}
	return closeField(b, m)
}

// appendSummary writes a Summary, which the SDK's aggregations never
// produce; it is here because the stock exporter sends it for data from
// other producers (bridges), and leaving it out would lose it silently.
func appendSummary(b []byte, s *metricdata.Summary) []byte {
	b, m := openField(b, fieldMetricSummary)
	for i := range s.DataPoints {
		dp := &s.DataPoints[i]
		var dm int
		b, dm = openField(b, fieldAggregationDataPoints)
		b = appendFixed64Field(b, fieldSummaryStartTime, unixNano(dp.StartTime))
		b = appendFixed64Field(b, fieldSummaryTime, unixNano(dp.Time))
		b = appendFixed64Field(b, fieldSummaryCount, dp.Count)
		b = appendFixed64Field(b, fieldSummarySum, math.Float64bits(dp.Sum))
		for _, q := range dp.QuantileValues {
			var qm int
			b, qm = openField(b, fieldSummaryQuantileValues)
			b = appendFixed64Field(b, fieldQuantileQuantile, math.Float64bits(q.Quantile))
			b = appendFixed64Field(b, fieldQuantileValue, math.Float64bits(q.Value))
			b = closeField(b, qm)
		}
		b = appendAttributeSet(b, fieldSummaryAttributes, &dp.Attributes)
		b = closeField(b, dm)
	}
	return closeField(b, m)
}

// appendExemplar writes ex as the Exemplar field num.
func appendExemplar[N int64 | float64](b []byte, num protowire.Number, ex *metricdata.Exemplar[N]) []byte {
	b, m := openField(b, num)
	b = appendFixed64Field(b, fieldExemplarTime, unixNano(ex.Time))
	b = appendNumber(b, fieldExemplarAsInt, fieldExemplarAsDouble, ex.Value)
	if !allZero(ex.SpanID) {
		b = appendBytesField(b, fieldExemplarSpanID, ex.SpanID)
	}
	if !allZero(ex.TraceID) {
		b = appendBytesField(b, fieldExemplarTraceID, ex.TraceID)
	}
	b = appendKeyValues(b, fieldExemplarFilteredAttributes, ex.FilteredAttributes)
	return closeField(b, m)
}

// appendNumber writes v as the as_int (sfixed64) or as_double member of a
// value oneof. The member is written even for zero: its presence is what
// tells the receiver which one is set.
func appendNumber[N int64 | float64](b []byte, intNum, doubleNum protowire.Number, v N) []byte {
	if isInt[N]() {
		b = appendTag(b, intNum, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, uint64(int64(v))) //nolint:gosec // sfixed64 is two's complement
	}
	return appendDouble(b, doubleNum, float64(v))
}

// isInt reports whether N is int64. It does arithmetic instead of a type
// switch so that no value is boxed into an interface on the hot path.
func isInt[N int64 | float64]() bool {
	var x N = 1
	return x/2 == 0
}

// appendDouble writes a double field even when it is zero, for optional
// fields and oneof members; appendFixed64Field with the float's bits is
// the proto3 form that leaves out (positive) zero.
func appendDouble(b []byte, num protowire.Number, v float64) []byte {
	b = appendTag(b, num, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, math.Float64bits(v))
}

// appendAttributeSet writes each attribute of s as a KeyValue field. s is
// a pointer because Set.Iter has a pointer receiver and a Set is large.
func appendAttributeSet(b []byte, num protowire.Number, s *attribute.Set) []byte {
	for it := s.Iter(); it.Next(); {
		kv := it.Attribute()
		b = appendKeyValue(b, num, &kv)
	}
	return b
}

// allZero reports whether id has no non-zero byte; an all-zero trace or
// span ID is the invalid ID, which names no span.
func allZero(id []byte) bool {
	for _, c := range id {
		if c != 0 {
			return false
		}
	}
	return true
}
