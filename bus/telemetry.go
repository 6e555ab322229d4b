package bus

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of the bus's spans and metrics.
const ScopeName = "github.com/eventbus-sidecar/eventbus-sidecar/bus"

// Metric attribute keys: short, since every series carries them.
const (
	metricAttrQueue      = attribute.Key("queue")
	metricAttrOutcome    = attribute.Key("outcome")
	metricAttrDropReason = attribute.Key("reason")
)

// durationBuckets are histogram boundaries in seconds, from 1 µs to 10 s:
// the exporters' defaults start at milliseconds, which would put every
// in-process wait into the first bucket.
func durationBuckets() []float64 {
	return []float64{
		1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
		1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
	}
}

// queueTelemetry holds what a queue's spans and metrics need, computed once
// so that the hot path builds no names, options or attribute sets.
type queueTelemetry struct {
	publishName, waitName, dropName, deliverName, deadLetterName string

	publishStart     []trace.SpanStartOption // with a parent from Event.Parent
	publishStartRoot []trace.SpanStartOption // no valid parent: a new root
	deliverStart     []trace.SpanStartOption
	childStart       []trace.SpanStartOption // wait and drop

	// The attributes every span of a kind carries, set together with the
	// span's own ones in one SetAttributes call when the span ends: the SDK
	// copies start-option attributes into a slice of their own and grows the
	// span's slice on each later call, which costs allocations per span.
	publishAttrs [4]attribute.KeyValue
	deliverAttrs [4]attribute.KeyValue

	record  []metric.RecordOption
	observe []metric.ObserveOption
	// observeOutcome and observeReason are indexed like Outcomes and DropReasons.
	observeOutcome [numOutcomes][]metric.ObserveOption
	observeReason  [numDropReasons][]metric.ObserveOption
}

func newQueueTelemetry(name string) queueTelemetry {
	dest := AttrDestinationName.String(name)
	system := AttrMessagingSystem.String(MessagingSystem)
	t := queueTelemetry{
		publishName: SpanName(SpanPublish, name),
		waitName:    SpanName(SpanWait, name),
		dropName:    SpanName(SpanDrop, name),
		deliverName: SpanName(SpanDeliver, name),

		deadLetterName: SpanName(SpanDeadLetter, name),
	}
	t.publishAttrs = [4]attribute.KeyValue{system, dest, AttrOperationType.String("send"), AttrOperationName.String(string(SpanPublish))}
	t.deliverAttrs = [4]attribute.KeyValue{system, dest, AttrOperationType.String("process"), AttrOperationName.String(string(SpanDeliver))}
	t.publishStart = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
	t.publishStartRoot = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithNewRoot()}
	t.deliverStart = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
	t.childStart = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(system, dest)}

	qa := metricAttrQueue.String(name)
	set := attribute.NewSet(qa)
	t.record = []metric.RecordOption{metric.WithAttributeSet(set)}
	t.observe = []metric.ObserveOption{metric.WithAttributeSet(set)}
	for i, o := range Outcomes {
		t.observeOutcome[i] = []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(qa, metricAttrOutcome.String(string(o))))}
	}
	for i, r := range DropReasons {
		t.observeReason[i] = []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(qa, metricAttrDropReason.String(string(r))))}
	}
	return t
}

// telemetry is the bus's tracer and instruments.
type telemetry struct {
	tracer trace.Tracer
	// tracing is false for the noop provider: the hot path then skips span
	// work entirely and passes the publisher's context through unchanged,
	// which is what the noop provider would do anyway.
	tracing bool
	// metrics is false for the noop meter provider: histograms are then
	// not recorded. Observable instruments cost nothing on the hot path.
	metrics bool
	// stamp passes the bus clock's times to span start and end. With the
	// system clock the SDK reads the same clock itself, and the options
	// would only cost allocations.
	stamp bool

	// hist are the duration histograms, indexed by HistogramKind, when
	// the bus records them into the meter provider's instruments rather
	// than into Histograms (WithHistograms).
	hist         [numHistograms]metric.Float64Histogram
	registration metric.Registration
}

// record records d into the queue's histogram of kind k: the queue's own
// when the bus keeps them (WithHistograms), else the instrument.
func (t *telemetry) record(ctx context.Context, q *queue, k HistogramKind, d time.Duration) {
	if q.hist != nil {
		q.hist.record(k, d)
		return
	}
	t.hist[k].Record(ctx, d.Seconds(), q.tel.record...)
}

func newTelemetry(b *Bus, o options) (telemetry, error) {
	var t telemetry
	_, isNoop := o.tracerProvider.(tracenoop.TracerProvider)
	t.tracing = !isNoop
	t.tracer = o.tracerProvider.Tracer(ScopeName)
	_, isNoopMeter := o.meterProvider.(metricnoop.MeterProvider)
	t.metrics = !isNoopMeter || o.histograms != nil
	t.stamp = o.clock != SystemClock()

	m := o.meterProvider.Meter(ScopeName)
	if o.histograms == nil {
		for k, hm := range HistogramMetrics() {
			h, err := m.Float64Histogram(hm.Name, metric.WithUnit(hm.Unit), metric.WithDescription(hm.Description),
				metric.WithExplicitBucketBoundaries(hm.Bounds...))
			if err != nil {
				return t, fmt.Errorf("bus: creating histogram %s: %w", hm.Name, err)
			}
			t.hist[k] = h
		}
	}

	depth, err1 := m.Int64ObservableGauge("eventbus.queue.depth", metric.WithUnit("{event}"),
		metric.WithDescription("Events waiting in the queue (not counting those in flight)."))
	capacity, err2 := m.Int64ObservableGauge("eventbus.queue.capacity", metric.WithUnit("{event}"),
		metric.WithDescription("Configured capacity of the queue."))
	waiting, err3 := m.Int64ObservableGauge("eventbus.publishers.waiting", metric.WithUnit("{publisher}"),
		metric.WithDescription("Publishers blocked waiting for room right now."))
	consumers, err4 := m.Int64ObservableGauge("eventbus.consumers", metric.WithUnit("{consumer}"),
		metric.WithDescription("Consumers subscribed to the queue."))
	published, err5 := m.Int64ObservableCounter("eventbus.events.published", metric.WithUnit("{event}"),
		metric.WithDescription("Publishes by outcome."))
	dropped, err6 := m.Int64ObservableCounter("eventbus.events.dropped", metric.WithUnit("{event}"),
		metric.WithDescription("Events dropped by reason (timeout, evicted)."))
	delivered, err7 := m.Int64ObservableCounter("eventbus.events.delivered", metric.WithUnit("{event}"),
		metric.WithDescription("Deliveries to consumers, redeliveries included."))
	redelivered, err8 := m.Int64ObservableCounter("eventbus.events.redelivered", metric.WithUnit("{event}"),
		metric.WithDescription("Deliveries of events that had been nacked or abandoned before."))
	deadLettered, err9 := m.Int64ObservableCounter("eventbus.events.dead_lettered", metric.WithUnit("{event}"),
		metric.WithDescription("Events moved to the dead-letter queue after max deliveries without an ack."))
	storageErrors, err10 := m.Int64ObservableCounter("eventbus.storage.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Events a durable queue's write-ahead log failed to store (disk full, I/O error)."))
	if err := firstErr(err1, err2, err3, err4, err5, err6, err7, err8, err9, err10); err != nil {
		return t, fmt.Errorf("bus: creating observable instruments: %w", err)
	}
	reg, err := m.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		for _, q := range b.queues {
			c, tel := &q.counters, &q.tel
			obs.ObserveInt64(depth, q.depth(), tel.observe...)
			obs.ObserveInt64(capacity, int64(q.settings.Load().Capacity), tel.observe...)
			obs.ObserveInt64(waiting, c.waiting.Load(), tel.observe...)
			obs.ObserveInt64(consumers, c.consumers.Load(), tel.observe...)
			for i := range Outcomes {
				obs.ObserveInt64(published, int64(c.published[i].Load()), tel.observeOutcome[i]...)
			}
			for i := range DropReasons {
				obs.ObserveInt64(dropped, int64(c.drops[i].Load()), tel.observeReason[i]...)
			}
			obs.ObserveInt64(delivered, int64(c.delivered.Load()), tel.observe...)
			obs.ObserveInt64(redelivered, int64(c.redelivered.Load()), tel.observe...)
			obs.ObserveInt64(deadLettered, int64(c.deadLettered.Load()), tel.observe...)
			obs.ObserveInt64(storageErrors, int64(c.storageErrors.Load()), tel.observe...)
		}
		return nil
	}, depth, capacity, waiting, consumers, published, dropped, delivered, redelivered, deadLettered, storageErrors)
	if err != nil {
		return t, fmt.Errorf("bus: registering metric callback: %w", err)
	}
	t.registration = reg
	return t, nil
}

// startOpts adds the start time when the bus clock is not the system's.
// It returns a new slice: the precomputed option slices are shared between
// goroutines and must never be appended to in place.
func (t *telemetry) startOpts(opts []trace.SpanStartOption, at time.Time) []trace.SpanStartOption {
	if !t.stamp {
		return opts
	}
	out := make([]trace.SpanStartOption, len(opts), len(opts)+1)
	copy(out, opts)
	return append(out, trace.WithTimestamp(at))
}

// end ends span at the bus clock's time when that is not the system's.
func (t *telemetry) end(span trace.Span, at time.Time) {
	if t.stamp {
		span.End(trace.WithTimestamp(at))
		return
	}
	span.End()
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// startPublish starts a publish span: a child of ev.Parent when valid,
// otherwise a new root (the caller's ctx may carry an unrelated span).
func (t *telemetry) startPublish(ctx context.Context, q *queue, ev *Event, start time.Time) (context.Context, trace.Span) {
	opts := q.tel.publishStartRoot
	if ev.Parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, ev.Parent)
		opts = q.tel.publishStart
	}
	return t.tracer.Start(ctx, q.tel.publishName, t.startOpts(opts, start)...)
}

// endPublish sets all of the publish span's attributes and ends it. static
// are the queue's fixed attributes (publishAttrs; nil when the queue is
// unknown and the caller has set its own).
func (t *telemetry) endPublish(span trace.Span, static []attribute.KeyValue, evType string, outcome Outcome, seq uint64, depth int, err error, end time.Time) {
	if span.IsRecording() {
		var kvs [8]attribute.KeyValue
		n := copy(kvs[:], static)
		kvs[n] = AttrEventType.String(evType)
		kvs[n+1] = AttrOutcome.String(string(outcome))
		kvs[n+2] = AttrQueueDepth.Int(depth)
		n += 3
		if outcome == Accepted {
			kvs[n] = AttrMessageID.String(strconv.FormatUint(seq, 10))
			n++
		}
		span.SetAttributes(kvs[:n]...)
		if (outcome == TimedOut || outcome == Failed) && err != nil {
			span.SetStatus(codes.Error, err.Error())
			span.RecordError(err)
		}
	}
	t.end(span, end)
}

// dropSpan records a drop as an instant span under the dropped event's
// publish span. Dropping is designed behaviour, so the status stays Unset.
func (t *telemetry) dropSpan(q *queue, parent trace.SpanContext, reason DropReason, seq uint64, at time.Time) {
	ctx := trace.ContextWithSpanContext(context.Background(), parent)
	_, span := t.tracer.Start(ctx, q.tel.dropName, t.startOpts(q.tel.childStart, at)...)
	if span.IsRecording() {
		span.SetAttributes(AttrDropReason.String(string(reason)))
		if seq != 0 {
			span.SetAttributes(AttrMessageID.String(strconv.FormatUint(seq, 10)))
		}
	}
	t.end(span, at)
}

// startDeliver starts the deliver span at hand-over, under the event's
// publish span. Its attributes are set when it ends (endDeliver).
func (t *telemetry) startDeliver(q *queue, e *entry, at time.Time) trace.Span {
	ctx := trace.ContextWithSpanContext(context.Background(), e.pubSC())
	_, span := t.tracer.Start(ctx, q.tel.deliverName, t.startOpts(q.tel.deliverStart, at)...)
	return span
}

// endDeliver sets the deliver span's attributes, with how the delivery was
// settled, and ends it. f is the delivery as it was handed over.
func (t *telemetry) endDeliver(q *queue, f *flight, result string, at time.Time) {
	span := f.span
	if span == nil {
		return
	}
	if span.IsRecording() {
		var kvs [9]attribute.KeyValue
		n := copy(kvs[:], q.tel.deliverAttrs[:])
		kvs[n] = AttrMessageID.String(strconv.FormatUint(f.e.seq, 10))
		kvs[n+1] = AttrEventType.String(f.e.typ)
		kvs[n+2] = AttrTimeInQueue.Float64(f.deliveredAt.Sub(f.e.enqueuedAt).Seconds())
		kvs[n+3] = AttrRedeliveryCount.Int(f.e.redeliveries())
		kvs[n+4] = AttrDeliveryResult.String(result)
		span.SetAttributes(kvs[:n+5]...)
	}
	t.end(span, at)
}

// deadLetterSpan records a move to the dead-letter queue as an instant
// span under the event's publish span, named for the queue it left.
func (t *telemetry) deadLetterSpan(q *queue, e *entry, dl *DeadLetter, at time.Time) {
	ctx := trace.ContextWithSpanContext(context.Background(), e.pubSC())
	_, span := t.tracer.Start(ctx, q.tel.deadLetterName, t.startOpts(q.tel.childStart, at)...)
	if span.IsRecording() {
		span.SetAttributes(AttrMessageID.String(strconv.FormatUint(e.seq, 10)),
			AttrEventType.String(e.typ),
			AttrDeadLetterQueue.String(q.deadLetter.name),
			AttrDeliveryCount.Int(dl.Deliveries))
		if dl.Reason != "" {
			span.SetAttributes(AttrDeadLetterReason.String(clip(dl.Reason)))
		}
	}
	t.end(span, at)
}
