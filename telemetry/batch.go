package telemetry

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// batchProcessor is a bounded, never-blocking batch span processor. It does
// what the SDK's BatchSpanProcessor does, but counts every span it loses
// (the SDK's only reports drops through global self-observability), so that
// a collector that is down, slow or blackholed shows up as a metric.
type batchProcessor struct {
	exp  sdktrace.SpanExporter
	opts batchOptions
	loss *lossCounters

	queue   chan sdktrace.ReadOnlySpan
	flushCh chan chan struct{}
	stopCh  chan struct{}
	done    chan struct{}
	stopped atomic.Bool

	// pending is the partial batch the worker held when it stopped; only
	// Shutdown reads it, after done is closed.
	pending []sdktrace.ReadOnlySpan

	stopOnce sync.Once
	stopErr  error
}

type batchOptions struct {
	queueSize int
	batchSize int
	delay     time.Duration
	timeout   time.Duration
}

var _ sdktrace.SpanProcessor = (*batchProcessor)(nil)

func newBatchProcessor(exp sdktrace.SpanExporter, opts batchOptions, loss *lossCounters) *batchProcessor {
	p := &batchProcessor{
		exp:     exp,
		opts:    opts,
		loss:    loss,
		queue:   make(chan sdktrace.ReadOnlySpan, opts.queueSize),
		flushCh: make(chan chan struct{}),
		stopCh:  make(chan struct{}),
		done:    make(chan struct{}),
	}
	go p.run()
	return p
}

// OnStart does nothing: spans are handled when they end.
func (p *batchProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues s for export, or counts it as lost when the queue is full.
// It never blocks: the bus's publish path calls it.
func (p *batchProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if p.stopped.Load() {
		p.loss.spansShutdown.Add(1)
		return
	}
	select {
	case p.queue <- s:
	default:
		p.loss.spansQueueFull.Add(1)
	}
}

func (p *batchProcessor) len() int      { return len(p.queue) }
func (p *batchProcessor) capacity() int { return cap(p.queue) }

// run is the export worker: it sends a batch when it is full, when the
// oldest span has waited opts.delay, or when a flush asks.
func (p *batchProcessor) run() {
	defer close(p.done)
	batch := make([]sdktrace.ReadOnlySpan, 0, p.opts.batchSize)
	timer := time.NewTimer(p.opts.delay)
	defer timer.Stop()
	export := func() {
		if len(batch) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), p.opts.timeout)
			p.export(ctx, batch)
			cancel()
			clear(batch)
			batch = batch[:0]
		}
		timer.Reset(p.opts.delay)
	}
	for {
		select {
		case s := <-p.queue:
			batch = append(batch, s)
			if len(batch) >= p.opts.batchSize {
				export()
			}
		case <-timer.C:
			export()
		case reply := <-p.flushCh:
			// Export what was queued when the flush arrived, batch by batch.
			for n := len(p.queue); n > 0; n-- {
				batch = append(batch, <-p.queue)
				if len(batch) >= p.opts.batchSize {
					export()
				}
			}
			export()
			close(reply)
		case <-p.stopCh:
			// Hand the partial batch back to the queue's owner: Shutdown
			// drains queue and batch under the caller's deadline.
			p.pending = batch
			return
		}
	}
}

func (p *batchProcessor) export(ctx context.Context, batch []sdktrace.ReadOnlySpan) {
	if err := p.exp.ExportSpans(ctx, batch); err != nil {
		p.loss.spanExportsFailed.Add(1)
		p.loss.spansExportFailed.Add(uint64(len(batch)))
		p.loss.setLastErr("traces", err)
		return
	}
	p.loss.spansExported.Add(uint64(len(batch)))
	p.loss.clearFailing("traces")
}

// ForceFlush exports every span queued before the call, within ctx.
func (p *batchProcessor) ForceFlush(ctx context.Context) error {
	if p.stopped.Load() {
		return nil
	}
	reply := make(chan struct{})
	select {
	case p.flushCh <- reply:
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-reply:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops accepting spans, exports what is queued while ctx allows
// (counting the rest as lost), and shuts the exporter down.
func (p *batchProcessor) Shutdown(ctx context.Context) error {
	p.stopOnce.Do(func() {
		p.stopped.Store(true)
		close(p.stopCh)
		select {
		case <-p.done:
		case <-ctx.Done():
			// The worker is inside an export that ignores ctx; it ends
			// within opts.timeout. Spans still queued are lost.
			p.stopErr = ctx.Err()
			p.loss.spansShutdown.Add(uint64(len(p.queue)))
			p.stopErr = errors.Join(p.stopErr, p.exp.Shutdown(ctx))
			return
		}
		batch := p.pending
		p.pending = nil
		for {
			drained := false
			for !drained && len(batch) < p.opts.batchSize {
				select {
				case s := <-p.queue:
					batch = append(batch, s)
				default:
					drained = true
				}
			}
			if len(batch) == 0 {
				break
			}
			if ctx.Err() != nil {
				p.loss.spansShutdown.Add(uint64(len(batch) + len(p.queue)))
				p.stopErr = ctx.Err()
				break
			}
			p.export(ctx, batch)
			batch = batch[:0]
			if drained {
				break
			}
		}
		p.stopErr = errors.Join(p.stopErr, p.exp.Shutdown(ctx))
	})
	return p.stopErr
}
