package telemetry

import (
	"context"
	"strings"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// shedProvider wraps the SDK provider so that, while the export queue is
// full, new publish, wait and deliver spans on sampled queues are not built
// at all: they would be dropped at the full queue anyway, and creating a
// span costs the bus far more than not creating it. Under export overload
// the CPU thus goes back to the bus instead of into spans nobody will see.
// Drop spans and every span of the other queues (order, signal) are always
// built. A shed span is counted as lost to a full queue; it behaves like a
// no-op span that carries its parent's context, so a delivery still links
// to the publisher's trace.
type shedProvider struct {
	embedded.TracerProvider
	sdk    *sdktrace.TracerProvider
	proc   *batchProcessor
	queues map[string]bool
	loss   *lossCounters
}

func newShedProvider(sdk *sdktrace.TracerProvider, proc *batchProcessor, queues []string, loss *lossCounters) *shedProvider {
	p := &shedProvider{sdk: sdk, proc: proc, queues: map[string]bool{}, loss: loss}
	for _, q := range queues {
		p.queues[q] = true
	}
	return p
}

// Tracer implements trace.TracerProvider.
func (p *shedProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return &shedTracer{sdk: p.sdk.Tracer(name, opts...), p: p}
}

type shedTracer struct {
	embedded.Tracer
	sdk trace.Tracer
	p   *shedProvider
}

// Start implements trace.Tracer.
func (t *shedTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if t.p.proc.len() >= t.p.proc.capacity() && t.p.sheddable(name) {
		t.p.loss.spansQueueFull.Add(1)
		return tracenoop.Tracer{}.Start(ctx, name)
	}
	return t.sdk.Start(ctx, name, opts...)
}

// sheddable reports whether a span named "<op> <queue>" may be shed.
func (p *shedProvider) sheddable(name string) bool {
	op, queue, _ := strings.Cut(name, " ")
	return op != "drop" && p.queues[queue]
}
