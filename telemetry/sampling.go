package telemetry

import (
	"context"
	"encoding/binary"
	"math"
	"sync/atomic"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// ratioFilter decides, when a span ends, whether it is exported. Spans are
// always recorded (the sampler is AlwaysSample) because whether a publish is
// worth keeping — it was dropped, timed out or failed — is known only at its
// end. A span is left out only when it is on a sampled queue, is not a drop
// span, has no error status, its eventbus.outcome (if any) is "accepted",
// and its trace ID falls outside the ratio. The trace-ID test is the one the
// SDK's TraceIDRatioBased sampler uses, so every span of one trace gets the
// same answer and traces stay whole.
type ratioFilter struct {
	next sdktrace.SpanProcessor
	// bound is the trace-ID threshold of the ratio, or keepAll for a
	// ratio of 1 (nothing is filtered, and no span's attributes are
	// read). Atomic: a configuration reload changes it while spans end.
	bound  atomic.Uint64
	queues map[string]bool
	loss   *lossCounters
}

var _ sdktrace.SpanProcessor = (*ratioFilter)(nil)

// keepAll is ratioFilter.bound for a ratio of 1: no threshold reaches it.
const keepAll = math.MaxUint64

func newRatioFilter(next sdktrace.SpanProcessor, ratio float64, queues []string, loss *lossCounters) *ratioFilter {
	f := &ratioFilter{next: next, queues: map[string]bool{}, loss: loss}
	f.setRatio(ratio)
	for _, q := range queues {
		f.queues[q] = true
	}
	return f
}

// setRatio applies ratio (0..1) to the spans that end from now on.
func (f *ratioFilter) setRatio(ratio float64) {
	var bound uint64
	switch {
	case ratio >= 1:
		bound = keepAll
	case ratio > 0:
		bound = uint64(ratio * (1 << 63))
	}
	f.bound.Store(bound)
}

// OnStart forwards to the next processor.
func (f *ratioFilter) OnStart(ctx context.Context, s sdktrace.ReadWriteSpan) { f.next.OnStart(ctx, s) }

// OnEnd forwards s unless the ratio leaves it out.
func (f *ratioFilter) OnEnd(s sdktrace.ReadOnlySpan) {
	if bound := f.bound.Load(); bound == keepAll || f.keep(s, bound) {
		f.next.OnEnd(s)
		return
	}
	f.loss.spansSampledOut.Add(1)
}

func (f *ratioFilter) keep(s sdktrace.ReadOnlySpan, bound uint64) bool {
	if s.Status().Code == codes.Error {
		return true
	}
	op, queue := bus.ParseSpanName(s.Name())
	if op == bus.SpanDrop {
		return true
	}
	for _, kv := range s.Attributes() {
		switch kv.Key {
		case bus.AttrDestinationName:
			queue = kv.Value.AsString()
		case bus.AttrOutcome:
			if kv.Value.AsString() != string(bus.Accepted) {
				return true
			}
		}
	}
	if !f.queues[queue] {
		return true
	}
	return inRatio(s.SpanContext().TraceID(), bound)
}

// inRatio is TraceIDRatioBased's decision for id at the ratio of bound.
func inRatio(id trace.TraceID, bound uint64) bool {
	return binary.BigEndian.Uint64(id[8:16])>>1 < bound
}

// ForceFlush forwards to the next processor.
func (f *ratioFilter) ForceFlush(ctx context.Context) error { return f.next.ForceFlush(ctx) }

// Shutdown forwards to the next processor.
func (f *ratioFilter) Shutdown(ctx context.Context) error { return f.next.Shutdown(ctx) }
