package telemetry

import (
	"context"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// shedProvider wraps the SDK provider so that, while bulk spans (publish,
// wait and deliver on the sampled queues) have used up their part of the
// export queue, new bulk spans are not built at all: they would be dropped
// at the queue anyway, and creating a span costs the bus far more than not
// creating it. Under export overload the CPU thus goes back to the bus
// instead of into spans nobody will see. Drop spans and every span of the
// other queues (order, signal) are always built, and the queue keeps a
// reserve for them. A shed span is counted as lost to a full queue; it
// behaves like a no-op span that carries its parent's context, so a delivery
// still links to the publisher's trace.
//
// The same holds, by design rather than by loss, for publish spans on the
// sampled queues beyond the trace rate (limit): those publishes are not
// traced at all, and count as sampled out. The bus starts no wait or
// deliver span under a publish that is not recorded, so the limit keeps
// traces whole.
type shedProvider struct {
	embedded.TracerProvider
	sdk   *sdktrace.TracerProvider
	proc  *batchProcessor
	loss  *lossCounters
	limit *traceLimiter
}

func newShedProvider(sdk *sdktrace.TracerProvider, proc *batchProcessor, loss *lossCounters, limit *traceLimiter) *shedProvider {
	return &shedProvider{sdk: sdk, proc: proc, loss: loss, limit: limit}
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
	op, bulk := t.p.proc.bulkOp(name)
	if bulk {
		if t.p.proc.bulkFull() {
			t.p.loss.spansQueueFull.Add(1)
			return tracenoop.Tracer{}.Start(ctx, name)
		}
		if op == bus.SpanPublish && !t.p.limit.allow() {
			t.p.loss.spansSampledOut.Add(1)
			return tracenoop.Tracer{}.Start(ctx, name)
		}
	}
	return t.sdk.Start(ctx, name, opts...)
}
