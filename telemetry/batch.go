package telemetry

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
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
	// bulk names the sampled queues; reserve is the part of the queue that
	// bulk spans may not take, kept for order, signal and drop spans so
	// that those are still exported while data spans flood the queue.
	bulk    map[string]bool
	reserve int
	// ctx parents every export; Shutdown cancels it when its deadline ends,
	// so an export in flight is abandoned and the worker finishes at once.
	ctx    context.Context
	cancel context.CancelFunc

	stopOnce sync.Once
	stopErr  error
}

type batchOptions struct {
	queueSize int
	batchSize int
	delay     time.Duration
	timeout   time.Duration
	// cpuShare is the most of one CPU the worker may spend exporting
	// (0 < cpuShare <= 1; 1: no limit). See pauseAfter.
	cpuShare float64
	// bulkQueues are the sampled queues: their publish, wait and deliver
	// spans are "bulk" and may use only the queue below the reserve.
	bulkQueues []string
}

// pauseAfter is how long the export worker rests after an export that
// used cpu, so that it spends at most share of one CPU over time. Without
// a limit an exporter that cannot keep up (a burst beyond what the
// collector takes) converts and marshals spans on a whole core, taking it
// from the bus; resting instead lets the queue fill, and spans beyond the
// budget are shed cheaply and counted (shedProvider, OnEnd).
func pauseAfter(cpu time.Duration, share float64) time.Duration {
	if share >= 1 || share <= 0 || cpu <= 0 {
		return 0
	}
	return time.Duration(float64(cpu) * (1 - share) / share)
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
		bulk:    map[string]bool{},
		reserve: opts.queueSize / 4,
	}
	for _, q := range opts.bulkQueues {
		p.bulk[q] = true
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	go p.run()
	return p
}

// OnStart does nothing: spans are handled when they end.
func (p *batchProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues s for export, or counts it as lost when the queue is full
// (for a bulk span: full up to the reserve). It never blocks: the bus's
// publish path calls it.
func (p *batchProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if p.stopped.Load() {
		p.loss.spansShutdown.Add(1)
		return
	}
	if p.bulkFull() && p.isBulk(s.Name()) {
		p.loss.spansQueueFull.Add(1)
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

// bulkFull reports whether bulk spans have used up their part of the queue.
func (p *batchProcessor) bulkFull() bool { return len(p.queue) >= cap(p.queue)-p.reserve }

// isBulk reports whether the bus span named name is a bulk span: on a
// sampled queue and not a drop.
func (p *batchProcessor) isBulk(name string) bool {
	_, bulk := p.bulkOp(name)
	return bulk
}

// bulkOp is isBulk that also returns the span's operation.
func (p *batchProcessor) bulkOp(name string) (bus.SpanOp, bool) {
	op, queue := bus.ParseSpanName(name)
	return op, op != bus.SpanDrop && p.bulk[queue]
}

// run is the export worker: it sends a batch when it is full, when the
// oldest span has waited opts.delay, or when a flush asks; on stop it
// drains the queue (see drain).
func (p *batchProcessor) run() {
	defer close(p.done)
	limited := p.opts.cpuShare > 0 && p.opts.cpuShare < 1
	batch := make([]sdktrace.ReadOnlySpan, 0, p.opts.batchSize)
	timer := time.NewTimer(p.opts.delay)
	defer timer.Stop()
	rest := time.NewTimer(time.Hour)
	rest.Stop()
	export := func() {
		if len(batch) > 0 {
			if limited {
				runtime.LockOSThread()
			}
			used := p.export(batch)
			if limited {
				runtime.UnlockOSThread()
			}
			clear(batch)
			batch = batch[:0]
			if d := pauseAfter(used, p.opts.cpuShare); limited && d > 0 {
				rest.Reset(d)
				select {
				case <-rest.C:
				case <-p.stopCh: // shutdown drains at once
				}
			}
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
			p.drain(batch)
			return
		}
	}
}

// drain exports the partial batch and everything queued until Shutdown's
// deadline cancels p.ctx; what is left then is counted as lost, so every
// span that reached the processor is accounted for exactly once (a span
// ended concurrently with Shutdown can slip past the count).
func (p *batchProcessor) drain(batch []sdktrace.ReadOnlySpan) {
	for {
		for len(batch) < p.opts.batchSize && len(p.queue) > 0 {
			batch = append(batch, <-p.queue)
		}
		if len(batch) == 0 {
			return
		}
		if p.ctx.Err() != nil {
			p.loss.spansShutdown.Add(uint64(len(batch) + len(p.queue)))
			for n := len(p.queue); n > 0; n-- {
				<-p.queue
			}
			return
		}
		p.export(batch)
		batch = batch[:0]
	}
}

// export sends batch and returns the CPU time it took on this thread (the
// wall time where the thread's CPU clock is unavailable).
func (p *batchProcessor) export(batch []sdktrace.ReadOnlySpan) time.Duration {
	if p.ctx.Err() != nil {
		// Shutdown's deadline has passed (only it cancels p.ctx): the worker
		// may still take a batch from the queue before it sees the stop, and
		// that batch is lost to the shutdown, not to a failed export.
		p.loss.spansShutdown.Add(uint64(len(batch)))
		return 0
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.opts.timeout)
	defer cancel()
	wallStart := time.Now()
	cpuStart, haveCPU := threadCPUTime()
	err := p.exp.ExportSpans(ctx, batch)
	used := time.Since(wallStart)
	if cpuEnd, ok := threadCPUTime(); haveCPU && ok {
		used = cpuEnd - cpuStart
	}
	if err != nil {
		p.loss.spanExportsFailed.Add(1)
		lost := uint64(len(batch))
		// A partial success is a delivered batch in which the collector
		// refused some spans: only those are lost.
		var partial *partialSuccessError
		if errors.As(err, &partial) && partial.rejected >= 0 && partial.rejected < int64(len(batch)) {
			lost = uint64(partial.rejected)
			p.loss.spansExported.Add(uint64(len(batch)) - lost)
		}
		p.loss.spansExportFailed.Add(lost)
		p.loss.setLastErr(SignalTraces, err)
		return used
	}
	p.loss.spansExported.Add(uint64(len(batch)))
	p.loss.clearFailing(SignalTraces)
	return used
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

// Shutdown stops accepting spans and exports what is queued until ctx
// ends; then the export in flight is abandoned and the rest is counted as
// lost. Finally the exporter is shut down.
func (p *batchProcessor) Shutdown(ctx context.Context) error {
	p.stopOnce.Do(func() {
		p.stopped.Store(true)
		close(p.stopCh)
		select {
		case <-p.done:
		case <-ctx.Done():
			p.stopErr = ctx.Err()
			p.cancel()
			<-p.done // prompt: every export now sees a cancelled context
		}
		p.cancel()
		p.stopErr = errors.Join(p.stopErr, p.exp.Shutdown(ctx))
	})
	return p.stopErr
}
