package bus

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"
)

const (
	numOutcomes    = 5 // len(Outcomes)
	numDropReasons = 2 // len(DropReasons)
)

func outcomeIndex(o Outcome) int {
	switch o {
	case Accepted:
		return 0
	case Dropped:
		return 1
	case TimedOut:
		return 2
	case Cancelled:
		return 3
	default:
		return 4
	}
}

func dropReasonIndex(r DropReason) int {
	if r == DropEvicted {
		return 1
	}
	return 0
}

// Bus holds named, bounded queues and hands their events to competing
// consumers. All methods are safe for concurrent use.
type Bus struct {
	clock  Clock
	logger *slog.Logger
	tel    telemetry

	queues     []*queue // configured order
	byName     map[string]*queue
	names      []string
	validNames string // for error messages

	dropLogInterval time.Duration
	systemClock     bool // clock is SystemClock: durations via time.Since

	// closing refuses new publishes; it is read under each queue's lock so
	// that no publish can slip in after Shutdown has looked at a queue.
	closing atomic.Bool
	// finished is set, and done closed, once Shutdown has finished draining.
	finished atomic.Bool
	done     chan struct{}
	// drainCh wakes Shutdown when an ack or close may have emptied the bus.
	drainCh chan struct{}

	shutdownOnce sync.Once
	undelivered  map[string]int // written before done is closed
	shutdownErr  error
}

// queue is one named queue. mu guards the store, the waiters, the idle
// consumers and every consumer's in-flight map; counters are atomics so
// that Stats and metric callbacks never take the lock.
type queue struct {
	bus      *Bus
	name     string
	capacity int
	policy   Policy
	timeout  time.Duration
	tel      queueTelemetry
	counters counters

	mu      sync.Mutex
	store   store
	nextSeq uint64
	waiters []*waiter   // FIFO: the head gets the next free slot
	idle    []*Consumer // consumers blocked in Receive with prefetch room
}

// counters are the single source of Stats and of the observable metrics.
type counters struct {
	published   [numOutcomes]atomic.Uint64
	drops       [numDropReasons]atomic.Uint64
	delivered   atomic.Uint64
	redelivered atomic.Uint64
	acked       atomic.Uint64
	size        atomic.Int64
	waiting     atomic.Int64
	consumers   atomic.Int64
	inFlight    atomic.Int64

	// Drops and timeouts not yet reported in a log summary, and when the
	// last summary was written (UnixNano).
	unloggedDrops    [numDropReasons]atomic.Uint64
	unloggedTimeouts atomic.Uint64
	lastDropLog      atomic.Int64
}

// waiter is a publish blocked on a full queue.
type waiter struct {
	ev    Event
	pubSC trace.SpanContext
	ready chan struct{} // closed once resolved by someone else
	// Set under the queue lock before ready is closed.
	resolved bool
	seq      uint64 // != 0: admitted into the queue
	err      error  // != nil: failed by Shutdown
}

// New builds a bus with the given queues (see DefaultQueues). Invalid
// configurations fail with an error wrapping ErrInvalidConfig that names the
// field, the bad value and the allowed values.
func New(queues []QueueConfig, opts ...Option) (*Bus, error) {
	if err := Validate(queues); err != nil {
		return nil, err
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt.apply(&o)
	}
	b := &Bus{
		clock:           o.clock,
		logger:          o.logger,
		byName:          make(map[string]*queue, len(queues)),
		dropLogInterval: o.dropLogInterval,
		systemClock:     o.clock == SystemClock(),
		done:            make(chan struct{}),
		drainCh:         make(chan struct{}, 1),
	}
	for _, qc := range queues {
		q := &queue{
			bus:      b,
			name:     qc.Name,
			capacity: qc.Capacity,
			policy:   qc.Policy,
			tel:      newQueueTelemetry(qc.Name),
			store:    newRing(qc.Capacity),
		}
		if qc.Policy == PolicyDrop || qc.Policy == PolicyFail {
			q.timeout = qc.Timeout
		}
		b.queues = append(b.queues, q)
		b.byName[q.name] = q
		b.names = append(b.names, q.name)
	}
	b.validNames = strings.Join(b.names, ", ")
	tel, err := newTelemetry(b, o)
	if err != nil {
		return nil, err
	}
	b.tel = tel
	for _, q := range b.queues {
		b.logger.Debug("queue configured", "queue", q.name, "capacity", q.capacity,
			"policy", string(q.policy), "timeout", q.timeout)
	}
	return b, nil
}

// Queues returns the queue names in configured order.
func (b *Bus) Queues() []string {
	return append([]string(nil), b.names...)
}

func (b *Bus) unknownQueue(name string) error {
	return fmt.Errorf("%w %q: valid queues are %s", ErrUnknownQueue, clip(name), b.validNames)
}

// maxNameInError bounds how much of a client-supplied name goes into an
// error message or span attribute: the name may be a megabyte of garbage.
const maxNameInError = 64

func clip(s string) string {
	if len(s) <= maxNameInError {
		return s
	}
	cut := maxNameInError
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// Publish offers ev to the named queue and returns what happened to it:
//
//   - (Accepted, nil): the event is in the queue.
//   - (Dropped, nil): a PolicyDrop queue stayed full for its timeout.
//   - (TimedOut, err wrapping ErrTimeout): a PolicyFail queue stayed full.
//   - (Cancelled, err wrapping ctx.Err()): ctx ended while waiting for room;
//     nothing was enqueued.
//   - (Failed, err wrapping ErrUnknownQueue or ErrInvalidEvent, or
//     ErrShuttingDown itself).
//
// A queue with room accepts at once, even if ctx is already done: only a
// publish that has to wait can be withdrawn. Waiting publishers of one
// queue get room in arrival order. The bus keeps ev.Payload by reference:
// the caller must not modify it afterwards.
func (b *Bus) Publish(ctx context.Context, ev Event, queueName string) (Outcome, error) {
	q, ok := b.byName[queueName]
	if !ok {
		return b.publishUnknown(ctx, ev, queueName)
	}
	start := b.clock.Now()
	var span trace.Span
	pubSC := ev.Parent // without tracing, deliveries carry the publisher's context on
	if b.tel.tracing {
		ctx, span = b.tel.startPublish(ctx, q, &ev, start)
		pubSC = span.SpanContext()
	}
	if ev.Type == "" {
		err := fmt.Errorf("%w: empty type for queue %q: a non-empty event type is required", ErrInvalidEvent, q.name)
		return q.finishPublish(ctx, span, start, Failed, 0, int(q.counters.size.Load()), err)
	}

	q.mu.Lock()
	if b.closing.Load() {
		depth := q.store.Len()
		q.mu.Unlock()
		return q.finishPublish(ctx, span, start, Failed, 0, depth, ErrShuttingDown)
	}
	depth := q.store.Len()
	if depth < q.capacity && len(q.waiters) == 0 {
		seq := q.pushLocked(ev, pubSC, start)
		q.wakeConsumersLocked()
		q.mu.Unlock()
		return q.finishPublish(ctx, span, start, Accepted, seq, depth, nil)
	}
	if q.policy == PolicyDropOldest {
		return q.publishEvict(ctx, span, ev, pubSC, start, depth)
	}
	return q.publishWait(ctx, span, ev, pubSC, start, depth)
}

// publishEvict makes room by dropping the oldest waiting events. Called
// with q.mu held; releases it.
func (q *queue) publishEvict(ctx context.Context, span trace.Span, ev Event, pubSC trace.SpanContext, start time.Time, depth int) (Outcome, error) {
	var one [1]entry
	evicted := one[:0]
	for q.store.Len() >= q.capacity {
		evicted = append(evicted, q.store.Pop())
	}
	seq := q.pushLocked(ev, pubSC, start)
	q.wakeConsumersLocked()
	q.mu.Unlock()
	b := q.bus
	for i := range evicted {
		q.countDrop(DropEvicted)
		if b.tel.tracing {
			b.tel.dropSpan(q, evicted[i].pubSC, DropEvicted, evicted[i].seq, start)
		}
	}
	b.maybeLogDrops(q)
	return q.finishPublish(ctx, span, start, Accepted, seq, depth, nil)
}

// publishWait blocks until the queue has room for ev, the queue's timeout
// passes, ctx ends or Shutdown fails the wait. Called with q.mu held;
// releases it.
func (q *queue) publishWait(ctx context.Context, span trace.Span, ev Event, pubSC trace.SpanContext, start time.Time, depth int) (Outcome, error) {
	b := q.bus
	w := &waiter{ev: ev, pubSC: pubSC, ready: make(chan struct{})}
	q.waiters = append(q.waiters, w)
	q.counters.waiting.Store(int64(len(q.waiters)))
	waitStart := b.clock.Now()
	q.mu.Unlock()

	var waitSpan trace.Span
	if b.tel.tracing {
		_, waitSpan = b.tel.tracer.Start(ctx, q.tel.waitName, b.tel.startOpts(q.tel.childStart, waitStart)...)
	}
	var timeout <-chan time.Time
	if q.policy != PolicyBlock {
		t := b.clock.NewTimer(q.timeout)
		defer t.Stop()
		timeout = t.C()
	}

	var outcome Outcome
	var err error
	select {
	case <-w.ready:
	case <-timeout:
		if q.policy == PolicyDrop {
			outcome = Dropped
		} else {
			outcome = TimedOut
			err = fmt.Errorf("queue %q stayed full (capacity %d) for %v: %w", q.name, q.capacity, q.timeout, ErrTimeout)
		}
	case <-ctx.Done():
		outcome = Cancelled
		err = ctxError(ctx, fmt.Sprintf("publish to queue %q withdrawn while waiting for room", q.name))
	}

	// Someone else may have resolved the wait between the select and here:
	// an admission wins over a timeout, because the event is already queued.
	q.mu.Lock()
	if w.resolved {
		outcome, err = Accepted, nil
		if w.err != nil {
			outcome, err = Failed, w.err
		}
	} else {
		w.resolved = true
		q.removeWaiterLocked(w)
	}
	q.mu.Unlock()

	end := b.clock.Now()
	b.tel.waitDuration.Record(ctx, end.Sub(waitStart).Seconds(), q.tel.record...)
	if waitSpan != nil {
		if waitSpan.IsRecording() {
			waitSpan.SetAttributes(attrOutcome.String(string(outcome)))
		}
		b.tel.end(waitSpan, end)
	}
	switch outcome {
	case Dropped:
		q.countDrop(DropTimeout)
		if b.tel.tracing {
			b.tel.dropSpan(q, pubSC, DropTimeout, 0, end)
		}
		b.maybeLogDrops(q)
	case TimedOut:
		q.counters.unloggedTimeouts.Add(1)
		b.maybeLogDrops(q)
	}
	return q.finishPublish(ctx, span, start, outcome, w.seq, depth, err)
}

func (q *queue) removeWaiterLocked(w *waiter) {
	for i, x := range q.waiters {
		if x == w {
			copy(q.waiters[i:], q.waiters[i+1:])
			q.waiters[len(q.waiters)-1] = nil
			q.waiters = q.waiters[:len(q.waiters)-1]
			break
		}
	}
	q.counters.waiting.Store(int64(len(q.waiters)))
}

// finishPublish counts the outcome, records the duration and ends the span.
func (q *queue) finishPublish(ctx context.Context, span trace.Span, start time.Time, outcome Outcome, seq uint64, depth int, err error) (Outcome, error) {
	q.counters.published[outcomeIndex(outcome)].Add(1)
	b := q.bus
	if span != nil {
		end := b.clock.Now()
		if b.tel.metrics {
			b.tel.publishDuration.Record(ctx, end.Sub(start).Seconds(), q.tel.record...)
		}
		b.tel.endPublish(span, outcome, seq, depth, err, end)
	} else if b.tel.metrics {
		b.tel.publishDuration.Record(ctx, b.since(start).Seconds(), q.tel.record...)
	}
	return outcome, err
}

// publishUnknown fails a publish to a queue that does not exist. Its span
// is named plain "publish" so that arbitrary client input cannot create
// new span names.
func (b *Bus) publishUnknown(ctx context.Context, ev Event, name string) (Outcome, error) {
	err := b.unknownQueue(name)
	if b.tel.tracing {
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithNewRoot()}
		if ev.Parent.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, ev.Parent)
			opts = opts[:1]
		}
		_, span := b.tel.tracer.Start(ctx, "publish", opts...)
		if span.IsRecording() {
			span.SetAttributes(attrMessagingSystem.String(messagingSystemValue),
				attrDestinationName.String(clip(name)), attrEventType.String(clip(ev.Type)))
		}
		b.tel.endPublish(span, Failed, 0, 0, err, b.spanNow())
	}
	return Failed, err
}

// pushLocked appends an accepted event with the next seq.
func (q *queue) pushLocked(ev Event, pubSC trace.SpanContext, at time.Time) uint64 {
	q.nextSeq++
	q.store.Push(entry{seq: q.nextSeq, ev: ev, enqueuedAt: at, pubSC: pubSC})
	q.counters.size.Store(int64(q.store.Len()))
	return q.nextSeq
}

// admitWaitersLocked moves waiting publishers into the queue, oldest first,
// while there is room.
func (q *queue) admitWaitersLocked() {
	if len(q.waiters) == 0 || q.store.Len() >= q.capacity {
		return
	}
	now := q.bus.clock.Now() // the waiters' EnqueuedAt
	for len(q.waiters) > 0 && q.store.Len() < q.capacity {
		w := q.waiters[0]
		copy(q.waiters, q.waiters[1:])
		q.waiters[len(q.waiters)-1] = nil
		q.waiters = q.waiters[:len(q.waiters)-1]
		w.seq = q.pushLocked(w.ev, w.pubSC, now)
		w.resolved = true
		close(w.ready)
	}
	q.counters.waiting.Store(int64(len(q.waiters)))
	q.wakeConsumersLocked()
}

// wakeConsumersLocked wakes as many idle consumers as there are waiting
// events.
func (q *queue) wakeConsumersLocked() {
	for n := q.store.Len(); n > 0 && len(q.idle) > 0; n-- {
		c := q.idle[0]
		copy(q.idle, q.idle[1:])
		q.idle[len(q.idle)-1] = nil
		q.idle = q.idle[:len(q.idle)-1]
		c.idle = false
		c.wake()
	}
}

func (q *queue) countDrop(r DropReason) {
	i := dropReasonIndex(r)
	q.counters.drops[i].Add(1)
	q.counters.unloggedDrops[i].Add(1)
}

// maybeLogDrops writes one summary of a queue's drops and timeouts per
// interval at most, in the publisher's goroutine (no background worker to
// own): the first drop after a quiet interval is reported at once, later
// ones are summed into the next line. Stats and the metrics callback also
// call it, so that withheld drops are reported once their interval is over
// even when no further drop comes.
func (b *Bus) maybeLogDrops(q *queue) {
	c := &q.counters
	if c.unloggedDrops[0].Load() == 0 && c.unloggedDrops[1].Load() == 0 && c.unloggedTimeouts.Load() == 0 {
		return
	}
	now := b.clock.Now().UnixNano()
	last := q.counters.lastDropLog.Load()
	if last != 0 && now-last < int64(b.dropLogInterval) {
		return
	}
	if !q.counters.lastDropLog.CompareAndSwap(last, now) {
		return
	}
	b.logDrops(q)
}

// logDrops reports and resets the unlogged drops and timeouts of q.
func (b *Bus) logDrops(q *queue) {
	c := &q.counters
	timeouts := c.unloggedTimeouts.Swap(0)
	byTimeout := c.unloggedDrops[0].Swap(0)
	evicted := c.unloggedDrops[1].Swap(0)
	if timeouts == 0 && byTimeout == 0 && evicted == 0 {
		return
	}
	// Timeouts mean a queue that must not lose events is overloaded: the
	// seed logs them as errors, drops as warnings.
	level := slog.LevelWarn
	if timeouts > 0 {
		level = slog.LevelError
	}
	b.logger.Log(context.Background(), level, "queue overflow", "queue", q.name, "policy", string(q.policy),
		"capacity", q.capacity, "dropped_timeout", byTimeout, "dropped_evicted", evicted,
		"publish_timeouts", timeouts, "drops_total", c.drops[0].Load()+c.drops[1].Load(),
		"summary_interval", b.dropLogInterval)
}

// Stats returns a snapshot of every queue. Counters are read without
// locking, so fields of one snapshot may be a few events apart under load.
func (b *Bus) Stats() Stats {
	st := make(Stats, len(b.queues))
	for _, q := range b.queues {
		b.maybeLogDrops(q)
		c := &q.counters
		pub := make(map[Outcome]uint64, numOutcomes)
		for i, o := range Outcomes {
			pub[o] = c.published[i].Load()
		}
		drops := make(map[DropReason]uint64, numDropReasons)
		var total uint64
		for i, r := range DropReasons {
			n := c.drops[i].Load()
			drops[r] = n
			total += n
		}
		st[q.name] = QueueStats{
			Size:           int(c.size.Load()),
			MaxSize:        q.capacity,
			Drops:          total,
			Policy:         q.policy,
			TimeoutSeconds: q.timeout.Seconds(),
			Published:      pub,
			DropsByReason:  drops,
			Timeouts:       pub[TimedOut],
			Delivered:      c.delivered.Load(),
			Redelivered:    c.redelivered.Load(),
			Acked:          c.acked.Load(),
			Waiting:        int(c.waiting.Load()),
			Consumers:      int(c.consumers.Load()),
			InFlight:       int(c.inFlight.Load()),
		}
	}
	return st
}

// ctxError wraps ctx.Err() and, when the context was cancelled with a
// cause (context.WithCancelCause), the cause too, so that callers can
// branch on either.
func ctxError(ctx context.Context, msg string) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if cause != nil && cause != err {
		return fmt.Errorf("%s: %w: %w", msg, err, cause)
	}
	return fmt.Errorf("%s: %w", msg, err)
}

// since is clock.Now().Sub(t), but reads only the monotonic clock when the
// clock is the system's: half the cost of a full time.Now on the hot path.
func (b *Bus) since(t time.Time) time.Duration {
	if b.systemClock {
		return time.Since(t)
	}
	return b.clock.Now().Sub(t)
}

// spanNow is the time to stamp on a span end: the zero time when the SDK
// reads the (system) clock itself.
func (b *Bus) spanNow() time.Time {
	if b.tel.stamp {
		return b.clock.Now()
	}
	return time.Time{}
}

// Draining reports whether Shutdown has begun: publishes are refused from
// then on. A readiness probe reports not-ready while this is true.
func (b *Bus) Draining() bool { return b.closing.Load() }

// Done is closed once Shutdown has finished draining (or given up).
func (b *Bus) Done() <-chan struct{} { return b.done }

// notifyDrain wakes Shutdown's drain loop if it is running.
func (b *Bus) notifyDrain() {
	if b.closing.Load() {
		select {
		case b.drainCh <- struct{}{}:
		default:
		}
	}
}

// Shutdown stops the bus: publishes fail with ErrShuttingDown from now on,
// publishers waiting for room fail with ErrShuttingDown, and consumers go on
// receiving until every queue is empty with nothing in flight, or ctx ends.
// Then blocked and later Receive calls fail with ErrShuttingDown. It returns
// the events left undelivered per queue (waiting + in flight) and, if ctx
// ended first, an error wrapping ctx.Err(). Only the first call does the
// work; later calls wait for it (or their own ctx) and return its result.
func (b *Bus) Shutdown(ctx context.Context) (map[string]int, error) {
	first := false
	b.shutdownOnce.Do(func() { first = true })
	if !first {
		select {
		case <-b.done:
			return cloneCounts(b.undelivered), b.shutdownErr
		case <-ctx.Done():
			return b.undeliveredNow(), fmt.Errorf("bus shutdown still draining: %w", ctx.Err())
		}
	}

	b.closing.Store(true)
	for _, q := range b.queues {
		q.mu.Lock()
		for _, w := range q.waiters {
			w.resolved = true
			w.err = ErrShuttingDown
			close(w.ready)
		}
		clear(q.waiters)
		q.waiters = q.waiters[:0]
		q.counters.waiting.Store(0)
		q.mu.Unlock()
	}
	b.logger.Info("bus shutting down: publishes refused, draining queues")

	var err error
drain:
	for {
		if b.undeliveredTotal() == 0 {
			break
		}
		select {
		case <-b.drainCh:
		case <-ctx.Done():
			err = fmt.Errorf("bus shutdown: drain deadline passed with events undelivered: %w", ctx.Err())
			break drain
		}
	}

	left := b.leftNow()
	counts := make(map[string]int, len(left))
	for i, q := range b.queues {
		counts[q.name] = left[i].waiting + left[i].inFlight
	}
	b.undelivered, b.shutdownErr = counts, err
	b.finished.Store(true)
	close(b.done)
	for i, q := range b.queues {
		b.logDrops(q)
		if counts[q.name] == 0 {
			b.logger.Info("queue drained", "queue", q.name)
			continue
		}
		b.logger.Warn("queue left undelivered events", "queue", q.name, "undelivered", counts[q.name],
			"waiting", left[i].waiting, "in_flight", left[i].inFlight)
	}
	return cloneCounts(counts), err
}

// leftover is what one queue still holds.
type leftover struct{ waiting, inFlight int }

// leftNow snapshots each queue's waiting and in-flight events, in
// configured order.
func (b *Bus) leftNow() []leftover {
	left := make([]leftover, len(b.queues))
	for i, q := range b.queues {
		q.mu.Lock()
		left[i] = leftover{q.store.Len(), int(q.counters.inFlight.Load())}
		q.mu.Unlock()
	}
	return left
}

// undeliveredNow counts waiting and in-flight events per queue.
func (b *Bus) undeliveredNow() map[string]int {
	counts := make(map[string]int, len(b.queues))
	for i, l := range b.leftNow() {
		counts[b.queues[i].name] = l.waiting + l.inFlight
	}
	return counts
}

func (b *Bus) undeliveredTotal() int {
	n := 0
	for _, l := range b.leftNow() {
		n += l.waiting + l.inFlight
	}
	return n
}

func cloneCounts(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
