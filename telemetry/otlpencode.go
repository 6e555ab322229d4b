package telemetry

import (
	"math"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protowire"
)

// spanEncoder writes SDK spans as the protobuf bytes of an OTLP
// ExportTraceServiceRequest (opentelemetry-proto collector/trace/v1),
// straight from the ReadOnlySpans. The stock exporter first builds the
// tracepb structs (about 30 allocations a span) and then marshals them,
// which costs more than the bus spends on the event the spans describe.
//
// The request is what the stock exporter sends, field for field, with one
// addition: links carry their trace state, which the stock transform
// leaves out. Spans are grouped by resource, then by instrumentation
// scope, in the order each group first appears.
//
// A spanEncoder is not safe for concurrent use; its scratch space is
// reused between calls so that a steady stream of batches does not
// allocate.
type spanEncoder struct {
	// resources caches each resource's encoded ResourceSpans.resource
	// field (tag, length, attributes) by pointer: a resource is immutable
	// and the SDK hands the same pointer with every span of a provider.
	resources map[*resource.Resource][]byte

	// Scratch for one call: the resource and scope groups in the order
	// they first appear, each span's scope group, and the span indices
	// ordered by group.
	resGroups   []resourceGroup
	scopeGroups []scopeGroup
	spanScope   []int32
	order       []int32
}

type resourceGroup struct {
	res *resource.Resource
	key attribute.Distinct
}

type scopeGroup struct {
	resIdx int
	scope  instrumentation.Scope
	n      int // spans in the group
	next   int // where its next span goes in order
}

// maxCachedResources bounds the resource cache; a process normally has one
// resource, so a cache this full means resources are being created per
// batch and caching them does not pay.
const maxCachedResources = 16

// Field numbers of the OTLP messages written here (opentelemetry-proto
// trace/v1, common/v1, resource/v1, collector/trace/v1).
const (
	fieldRequestResourceSpans protowire.Number = 1

	fieldResourceSpansResource   protowire.Number = 1
	fieldResourceSpansScopeSpans protowire.Number = 2
	fieldResourceSpansSchemaURL  protowire.Number = 3

	fieldResourceAttributes protowire.Number = 1

	fieldScopeSpansScope     protowire.Number = 1
	fieldScopeSpansSpans     protowire.Number = 2
	fieldScopeSpansSchemaURL protowire.Number = 3

	fieldScopeName       protowire.Number = 1
	fieldScopeVersion    protowire.Number = 2
	fieldScopeAttributes protowire.Number = 3

	fieldSpanTraceID       protowire.Number = 1
	fieldSpanSpanID        protowire.Number = 2
	fieldSpanTraceState    protowire.Number = 3
	fieldSpanParentSpanID  protowire.Number = 4
	fieldSpanName          protowire.Number = 5
	fieldSpanKind          protowire.Number = 6
	fieldSpanStartTime     protowire.Number = 7
	fieldSpanEndTime       protowire.Number = 8
	fieldSpanAttributes    protowire.Number = 9
	fieldSpanDroppedAttrs  protowire.Number = 10
	fieldSpanEvents        protowire.Number = 11
	fieldSpanDroppedEvents protowire.Number = 12
	fieldSpanLinks         protowire.Number = 13
	fieldSpanDroppedLinks  protowire.Number = 14
	fieldSpanStatus        protowire.Number = 15
	fieldSpanFlags         protowire.Number = 16 // the only tag here longer than a byte

	fieldEventTime         protowire.Number = 1
	fieldEventName         protowire.Number = 2
	fieldEventAttributes   protowire.Number = 3
	fieldEventDroppedAttrs protowire.Number = 4

	fieldLinkTraceID      protowire.Number = 1
	fieldLinkSpanID       protowire.Number = 2
	fieldLinkTraceState   protowire.Number = 3
	fieldLinkAttributes   protowire.Number = 4
	fieldLinkDroppedAttrs protowire.Number = 5
	fieldLinkFlags        protowire.Number = 6

	fieldStatusMessage protowire.Number = 2
	fieldStatusCode    protowire.Number = 3

	fieldKeyValueKey   protowire.Number = 1
	fieldKeyValueValue protowire.Number = 2

	fieldAnyString protowire.Number = 1
	fieldAnyBool   protowire.Number = 2
	fieldAnyInt    protowire.Number = 3
	fieldAnyDouble protowire.Number = 4
	fieldAnyArray  protowire.Number = 5
	fieldAnyKvlist protowire.Number = 6
	fieldAnyBytes  protowire.Number = 7

	fieldArrayValues  protowire.Number = 1
	fieldKvlistValues protowire.Number = 1
)

// Span.flags and Link.flags bits above the W3C trace flags.
const (
	spanFlagsHasIsRemoteMask uint32 = 0x100 // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
	spanFlagsIsRemoteMask    uint32 = 0x200 // SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
)

// OTLP Status.code values; they differ from the SDK's codes.Code numbers.
const (
	statusCodeUnset = 0
	statusCodeOK    = 1
	statusCodeError = 2
)

// encode appends the ExportTraceServiceRequest for spans to b and
// returns it. Nil spans are skipped, as the stock exporter does.
func (e *spanEncoder) encode(b []byte, spans []sdktrace.ReadOnlySpan) []byte {
	e.group(spans)
	for ri, rg := range e.resGroups {
		var rs, ss int
		b, rs = openField(b, fieldRequestResourceSpans)
		if rg.res != nil {
			b = append(b, e.resource(rg.res)...)
		}
		for si := range e.scopeGroups {
			sg := &e.scopeGroups[si]
			if sg.resIdx != ri {
				continue
			}
			b, ss = openField(b, fieldResourceSpansScopeSpans)
			b = appendScope(b, fieldScopeSpansScope, sg.scope)
			for _, i := range e.order[sg.next-sg.n : sg.next] {
				b = appendSpan(b, spans[i])
			}
			b = appendStringField(b, fieldScopeSpansSchemaURL, sg.scope.SchemaURL)
			b = closeField(b, ss)
		}
		b = appendStringField(b, fieldResourceSpansSchemaURL, rg.res.SchemaURL())
		b = closeField(b, rs)
	}
	clear(e.resGroups) // drop the references to resources and scopes
	clear(e.scopeGroups)
	return b
}

// group fills the scratch groups: resources compare by their attributes'
// identity (as the stock exporter's do), scopes by value, and the span
// indices in e.order are sorted by scope group, keeping span order within
// a group. After group, e.order[g.next-g.n:g.next] are group g's spans.
func (e *spanEncoder) group(spans []sdktrace.ReadOnlySpan) {
	e.resGroups = e.resGroups[:0]
	e.scopeGroups = e.scopeGroups[:0]
	e.spanScope = e.spanScope[:0]
	lastRes, lastScope := -1, -1
	var lastResPtr *resource.Resource
	for _, s := range spans {
		if s == nil {
			e.spanScope = append(e.spanScope, -1)
			continue
		}
		res := s.Resource()
		if lastRes < 0 || res != lastResPtr {
			lastRes, lastResPtr = e.resourceGroup(res), res
			lastScope = -1
		}
		scope := s.InstrumentationScope()
		if lastScope < 0 || e.scopeGroups[lastScope].scope != scope {
			lastScope = e.scopeGroup(lastRes, scope)
		}
		e.scopeGroups[lastScope].n++
		e.spanScope = append(e.spanScope, int32(lastScope)) //nolint:gosec // bounded by len(spans)
	}
	// Lay the groups out resource by resource, then place each span.
	next := 0
	for ri := range e.resGroups {
		for si := range e.scopeGroups {
			if sg := &e.scopeGroups[si]; sg.resIdx == ri {
				sg.next = next
				next += sg.n
			}
		}
	}
	e.order = slices.Grow(e.order[:0], next)[:next] // every element is set below
	for i, si := range e.spanScope {
		if si < 0 {
			continue
		}
		sg := &e.scopeGroups[si]
		e.order[sg.next] = int32(i) //nolint:gosec // bounded by len(spans)
		sg.next++
	}
}

func (e *spanEncoder) resourceGroup(res *resource.Resource) int {
	key := res.Equivalent()
	for i, g := range e.resGroups {
		if g.res == res || g.key == key {
			return i
		}
	}
	e.resGroups = append(e.resGroups, resourceGroup{res: res, key: key})
	return len(e.resGroups) - 1
}

func (e *spanEncoder) scopeGroup(resIdx int, scope instrumentation.Scope) int {
	for i := range e.scopeGroups {
		if g := &e.scopeGroups[i]; g.resIdx == resIdx && g.scope == scope {
			return i
		}
	}
	e.scopeGroups = append(e.scopeGroups, scopeGroup{resIdx: resIdx, scope: scope})
	return len(e.scopeGroups) - 1
}

// resource returns the encoded ResourceSpans.resource field of res.
func (e *spanEncoder) resource(res *resource.Resource) []byte {
	if b, ok := e.resources[res]; ok {
		return b
	}
	if e.resources == nil || len(e.resources) >= maxCachedResources {
		e.resources = map[*resource.Resource][]byte{}
	}
	b, m := openField(nil, fieldResourceSpansResource)
	for it := res.Iter(); it.Next(); {
		kv := it.Attribute()
		b = appendKeyValue(b, fieldResourceAttributes, &kv)
	}
	b = closeField(b, m)
	e.resources[res] = b
	return b
}

// appendScope writes sc as the InstrumentationScope field num (the scope
// of ScopeSpans or ScopeMetrics). The zero scope is left out, as the stock
// trace exporter does: a receiver reads a missing scope as an empty one.
func appendScope(b []byte, num protowire.Number, sc instrumentation.Scope) []byte {
	if sc == (instrumentation.Scope{}) {
		return b
	}
	b, m := openField(b, num)
	b = appendStringField(b, fieldScopeName, sc.Name)
	b = appendStringField(b, fieldScopeVersion, sc.Version)
	for it := sc.Attributes.Iter(); it.Next(); {
		kv := it.Attribute()
		b = appendKeyValue(b, fieldScopeAttributes, &kv)
	}
	return closeField(b, m)
}

func appendSpan(b []byte, s sdktrace.ReadOnlySpan) []byte {
	b, m := openField(b, fieldScopeSpansSpans)
	sc := s.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	b = appendBytesField(b, fieldSpanTraceID, tid[:])
	b = appendBytesField(b, fieldSpanSpanID, sid[:])
	b = appendTraceState(b, fieldSpanTraceState, sc.TraceState())
	parent := s.Parent()
	if psid := parent.SpanID(); psid.IsValid() {
		b = appendBytesField(b, fieldSpanParentSpanID, psid[:])
	}
	b = appendStringField(b, fieldSpanName, s.Name())
	b = appendVarintField(b, fieldSpanKind, spanKind(s.SpanKind()))
	b = appendFixed64Field(b, fieldSpanStartTime, unixNano(s.StartTime()))
	b = appendFixed64Field(b, fieldSpanEndTime, unixNano(s.EndTime()))
	b = appendKeyValues(b, fieldSpanAttributes, s.Attributes())
	b = appendVarintField(b, fieldSpanDroppedAttrs, clampCount(s.DroppedAttributes()))
	for _, ev := range s.Events() {
		var em int
		b, em = openField(b, fieldSpanEvents)
		b = appendFixed64Field(b, fieldEventTime, unixNano(ev.Time))
		b = appendStringField(b, fieldEventName, ev.Name)
		b = appendKeyValues(b, fieldEventAttributes, ev.Attributes)
		b = appendVarintField(b, fieldEventDroppedAttrs, clampCount(ev.DroppedAttributeCount))
		b = closeField(b, em)
	}
	b = appendVarintField(b, fieldSpanDroppedEvents, clampCount(s.DroppedEvents()))
	for _, l := range s.Links() {
		var lm int
		b, lm = openField(b, fieldSpanLinks)
		ltid, lsid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		b = appendBytesField(b, fieldLinkTraceID, ltid[:])
		b = appendBytesField(b, fieldLinkSpanID, lsid[:])
		b = appendTraceState(b, fieldLinkTraceState, l.SpanContext.TraceState())
		b = appendKeyValues(b, fieldLinkAttributes, l.Attributes)
		b = appendVarintField(b, fieldLinkDroppedAttrs, clampCount(l.DroppedAttributeCount))
		b = appendFixed32Field(b, fieldLinkFlags, spanFlags(l.SpanContext.TraceFlags(), l.SpanContext.IsRemote()))
		b = closeField(b, lm)
	}
	b = appendVarintField(b, fieldSpanDroppedLinks, clampCount(s.DroppedLinks()))
	// The stock exporter always sends a status, even an unset one.
	st := s.Status()
	b, sm := openField(b, fieldSpanStatus)
	b = appendStringField(b, fieldStatusMessage, st.Description)
	b = appendVarintField(b, fieldStatusCode, statusCode(st.Code))
	b = closeField(b, sm)
	b = appendFixed32Field(b, fieldSpanFlags, spanFlags(sc.TraceFlags(), parent.IsRemote()))
	return closeField(b, m)
}

// appendKeyValue writes one KeyValue field. Its value is always present,
// as in the stock exporter, even for an empty attribute.Value. Scalar
// values (nearly every attribute) have sizes known up front and are
// written in one pass; kv is a pointer because this is the encoder's
// innermost loop and a KeyValue is 64 bytes.
func appendKeyValue(b []byte, num protowire.Number, kv *attribute.KeyValue) []byte {
	v := &kv.Value
	var size int // of the AnyValue's content
	switch v.Type() {
	case attribute.EMPTY:
	case attribute.BOOL:
		size = 2
	case attribute.INT64:
		size = 1 + protowire.SizeVarint(uint64(v.AsInt64())) //nolint:gosec // two's complement
	case attribute.FLOAT64:
		size = 1 + 8
	case attribute.STRING:
		size = 1 + protowire.SizeBytes(len(v.AsString()))
	default:
		b, m := openField(b, num)
		b = appendStringField(b, fieldKeyValueKey, string(kv.Key))
		b, vm := openField(b, fieldKeyValueValue)
		b = appendAnyValue(b, v)
		b = closeField(b, vm)
		return closeField(b, m)
	}
	n := 1 + protowire.SizeBytes(size)
	if kv.Key != "" {
		n += 1 + protowire.SizeBytes(len(kv.Key))
	}
	b = appendTag(b, num, protowire.BytesType)
	b = appendVarint(b, uint64(n)) //nolint:gosec // a length
	b = appendStringField(b, fieldKeyValueKey, string(kv.Key))
	b = appendTag(b, fieldKeyValueValue, protowire.BytesType)
	b = appendVarint(b, uint64(size)) //nolint:gosec // a length
	return appendAnyValue(b, v)
}

// appendKeyValues writes each of kvs as a KeyValue field.
func appendKeyValues(b []byte, num protowire.Number, kvs []attribute.KeyValue) []byte {
	for i := range kvs {
		b = appendKeyValue(b, num, &kvs[i])
	}
	return b
}

// appendAnyValue writes the content of an AnyValue. A oneof member is
// written even when it holds its type's zero value: that is what tells the
// receiver which member is set. v is a pointer for appendKeyValue's sake.
func appendAnyValue(b []byte, v *attribute.Value) []byte {
	switch v.Type() {
	case attribute.EMPTY:
		return b
	case attribute.BOOL:
		b = appendTag(b, fieldAnyBool, protowire.VarintType)
		return append(b, byte(protowire.EncodeBool(v.AsBool())))
	case attribute.INT64:
		b = appendTag(b, fieldAnyInt, protowire.VarintType)
		return appendVarint(b, uint64(v.AsInt64())) //nolint:gosec // int64 is sent as two's complement
	case attribute.FLOAT64:
		b = appendTag(b, fieldAnyDouble, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(v.AsFloat64()))
	case attribute.STRING:
		b = appendTag(b, fieldAnyString, protowire.BytesType)
		return protowire.AppendString(b, v.AsString())
	case attribute.BYTESLICE:
		b = appendTag(b, fieldAnyBytes, protowire.BytesType)
		return protowire.AppendBytes(b, v.AsByteSlice())
	case attribute.BOOLSLICE:
		return appendArray(b, v.AsBoolSlice(), attribute.BoolValue)
	case attribute.INT64SLICE:
		return appendArray(b, v.AsInt64Slice(), attribute.Int64Value)
	case attribute.FLOAT64SLICE:
		return appendArray(b, v.AsFloat64Slice(), attribute.Float64Value)
	case attribute.STRINGSLICE:
		return appendArray(b, v.AsStringSlice(), attribute.StringValue)
	case attribute.SLICE:
		return appendArray(b, v.AsSlice(), func(x attribute.Value) attribute.Value { return x })
	case attribute.MAP:
		b, l := openField(b, fieldAnyKvlist)
		b = appendKeyValues(b, fieldKvlistValues, v.AsMap())
		return closeField(b, l)
	default:
		// A type newer than this encoder: say so rather than drop the
		// attribute, as the stock exporter does.
		b = appendTag(b, fieldAnyString, protowire.BytesType)
		return protowire.AppendString(b, "INVALID")
	}
}

// appendArray writes an ArrayValue field holding each of xs as an AnyValue.
func appendArray[T any](b []byte, xs []T, value func(T) attribute.Value) []byte {
	b, a := openField(b, fieldAnyArray)
	for _, x := range xs {
		var m int
		b, m = openField(b, fieldArrayValues)
		item := value(x)
		b = appendAnyValue(b, &item)
		b = closeField(b, m)
	}
	return closeField(b, a)
}

// openField starts a length-delimited field: it writes the tag and one
// byte for the length, and returns where the content starts, for
// closeField.
func openField(b []byte, num protowire.Number) ([]byte, int) {
	b = appendTag(b, num, protowire.BytesType)
	b = append(b, 0)
	return b, len(b)
}

// closeField ends the field openField started by writing its length. Most
// messages here (attributes, values) are under 128 bytes and fit the
// reserved byte; a longer one moves its content up by the extra length
// bytes, which costs a copy instead of a second pass to compute sizes.
func closeField(b []byte, start int) []byte {
	n := len(b) - start
	if n < 0x80 {
		b[start-1] = byte(n)
		return b
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	b = slices.Grow(b, extra)[:len(b)+extra]
	copy(b[start+extra:], b[start:start+n])
	protowire.AppendVarint(b[:start-1], uint64(n))
	return b
}

// appendTag is protowire.AppendTag for field numbers below 16, whose tag
// is one byte; small enough to be inlined. Span.flags (16) is the only
// field here above it.
func appendTag(b []byte, num protowire.Number, typ protowire.Type) []byte {
	return append(b, byte(num)<<3|byte(typ))
}

// appendVarint is protowire.AppendVarint with the one-byte case inlined:
// nearly every length here is under 128.

func appendVarint(b []byte, v uint64) []byte {
	if v < 0x80 {
		return append(b, byte(v))
	}
	return protowire.AppendVarint(b, v)
}

// The field helpers leave out zero values, as proto3 encoding does.

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = appendTag(b, num, protowire.BytesType)
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = appendTag(b, num, protowire.BytesType)
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = appendTag(b, num, protowire.VarintType)
	return appendVarint(b, v)
}

func appendFixed64Field(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = appendTag(b, num, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, v)
}

func appendFixed32Field(b []byte, num protowire.Number, v uint32) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, v)
}

// appendTraceState writes ts in its W3C header form.
func appendTraceState(b []byte, num protowire.Number, ts trace.TraceState) []byte {
	if ts.Len() == 0 {
		return b
	}
	return appendStringField(b, num, ts.String())
}

// spanFlags are the W3C trace flags plus the OTLP bits that say whether
// the parent (for a link: the linked span) is remote; like the SDK's
// exporter, it always claims to know.
func spanFlags(tf trace.TraceFlags, remote bool) uint32 {
	f := uint32(tf) | spanFlagsHasIsRemoteMask
	if remote {
		f |= spanFlagsIsRemoteMask
	}
	return f
}

// spanKind maps the SDK's kind onto OTLP's SpanKind; unknown kinds are
// unspecified.
func spanKind(k trace.SpanKind) uint64 {
	switch k {
	case trace.SpanKindInternal, trace.SpanKindServer, trace.SpanKindClient,
		trace.SpanKindProducer, trace.SpanKindConsumer:
		return uint64(k) // the same numbers in both
	default:
		return 0
	}
}

func statusCode(c codes.Code) uint64 {
	switch c {
	case codes.Ok:
		return statusCodeOK
	case codes.Error:
		return statusCodeError
	default:
		return statusCodeUnset
	}
}

// unixNano is t in nanoseconds since the epoch, 0 for times before it.
func unixNano(t time.Time) uint64 {
	return uint64(max(0, t.UnixNano())) //nolint:gosec // negative clamped
}

// clampCount fits a dropped count into OTLP's uint32.
func clampCount(n int) uint64 {
	return uint64(min(max(n, 0), math.MaxUint32)) //nolint:gosec // clamped
}
