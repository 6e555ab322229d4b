package bus

import (
	"context"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// Consumer receives events from one queue, competing with the queue's other
// consumers. Each delivery stays in flight until acked or nacked; at most
// prefetch deliveries are in flight at once. Its methods are safe for
// concurrent use; concurrent Receive calls take turns.
type Consumer struct {
	q        *queue
	prefetch int
	notify   chan struct{} // buffered(1): "look again"
	// turnCh (buffered(1)) wakes a Receive waiting for its turn; see
	// receiving.
	turnCh   chan struct{}
	closedCh chan struct{}

	// Guarded by q.mu.
	inflight inflightSet
	closed   bool
	idle     bool // in q.idle: blocked in Receive with prefetch room
	waiting  bool // blocked in Receive (idle or at the prefetch limit)
	// receiving admits one Receive at a time: the idle bookkeeping above
	// is per consumer, and a second concurrent Receive could otherwise
	// sleep through the wake-up meant for the first. It is taken and
	// given back under the lock Receive takes anyway, so that the usual
	// case, a single receiver, pays nothing for it. turnWaiters counts the
	// Receive calls waiting for it.
	receiving   bool
	turnWaiters int
}

// flight is a delivered, unsettled event.
type flight struct {
	e    entry
	span trace.Span // nil without tracing
	// deliveredAt is the hand-over time, for the deliver span's time in
	// queue (set only with tracing).
	deliveredAt time.Time
	// settled marks a tombstone in the consumer's in-flight ring.
	settled bool
}

// Subscribe attaches a consumer to the named queue with a prefetch limit
// (>= 1). It fails with ErrUnknownQueue, ErrInvalidConfig for a bad
// prefetch, or ErrShuttingDown once the bus has finished shutting down.
// Subscribing while Shutdown drains is allowed, so that consumers can help
// empty the queues.
func (b *Bus) Subscribe(queueName string, prefetch int) (*Consumer, error) {
	q, ok := b.byName[queueName]
	if !ok {
		return nil, b.unknownQueue(queueName)
	}
	if prefetch < 1 {
		return nil, fmt.Errorf("%w: prefetch: %d: must be >= 1", ErrInvalidConfig, prefetch)
	}
	if b.finished.Load() {
		return nil, ErrShuttingDown
	}
	c := &Consumer{
		q:        q,
		prefetch: prefetch,
		notify:   make(chan struct{}, 1),
		turnCh:   make(chan struct{}, 1),
		closedCh: make(chan struct{}),
		inflight: newInflightSet(prefetch),
	}
	q.counters.consumers.Add(1)
	return c, nil
}

// Queue names the queue the consumer receives from.
func (c *Consumer) Queue() string { return c.q.name }

func (c *Consumer) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// Receive blocks until an event is waiting in the queue and fewer than
// prefetch deliveries are in flight, then hands the oldest waiting event
// over. It fails with ErrConsumerClosed after Close, with ErrShuttingDown
// once the bus has finished shutting down, and with an error wrapping
// ctx.Err() when ctx ends first. Like Publish, it only consults ctx when it
// has to wait: an event that is ready is handed over at once.
func (c *Consumer) Receive(ctx context.Context) (d Delivery, err error) {
	q := c.q
	b := q.bus
	q.mu.Lock()
	if err := c.takeTurnLocked(ctx); err != nil {
		q.mu.Unlock()
		return Delivery{}, err
	}
	for {
		if c.closed {
			c.releaseTurnLocked()
			q.mu.Unlock()
			return Delivery{}, ErrConsumerClosed
		}
		if b.finished.Load() {
			q.leaveIdleLocked(c)
			c.releaseTurnLocked()
			q.mu.Unlock()
			return Delivery{}, ErrShuttingDown
		}
		if c.inflight.len() < c.prefetch && q.store.Len() > 0 {
			q.leaveIdleLocked(c)
			c.releaseTurnLocked()
			// Filled in place: the delivery is a few hundred bytes.
			c.deliverLocked(ctx, &d)
			return d, nil
		}
		c.waiting = true
		if c.inflight.len() < c.prefetch && !c.idle {
			c.idle = true
			q.idle = append(q.idle, c)
		}
		q.mu.Unlock()

		select {
		case <-c.notify:
		case <-c.closedCh:
		case <-b.done:
		case <-ctx.Done():
			c.abandonWait()
			return Delivery{}, ctxError(ctx, fmt.Sprintf("receive from queue %q", q.name))
		}
		q.mu.Lock()
	}
}

// takeTurnLocked waits until no other Receive of c is running and takes
// the turn. Called with q.mu held; it holds it again on return. It fails
// like Receive when c is closed, the bus has shut down or ctx ends while
// it waits.
func (c *Consumer) takeTurnLocked(ctx context.Context) error {
	q := c.q
	b := q.bus
	for c.receiving {
		c.turnWaiters++
		q.mu.Unlock()
		var err error
		select {
		case <-c.turnCh:
		case <-c.closedCh:
			err = ErrConsumerClosed
		case <-b.done:
			err = ErrShuttingDown
		case <-ctx.Done():
			err = ctxError(ctx, fmt.Sprintf("receive from queue %q", q.name))
		}
		q.mu.Lock()
		c.turnWaiters--
		if err != nil {
			return err
		}
	}
	c.receiving = true
	return nil
}

// releaseTurnLocked ends a Receive's turn and wakes a Receive waiting for
// it. A waiter that finds the turn taken again by then waits once more;
// whoever took it wakes a waiter in turn. Called with q.mu held.
func (c *Consumer) releaseTurnLocked() {
	c.receiving = false
	if c.turnWaiters > 0 {
		select {
		case c.turnCh <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// abandonWait undoes a Receive's wait when its ctx ends, and ends its
// turn.
func (c *Consumer) abandonWait() {
	q := c.q
	q.mu.Lock()
	defer q.mu.Unlock()
	c.releaseTurnLocked()
	c.waiting = false
	if c.idle {
		q.leaveIdleLocked(c)
		return
	}
	// We may have been woken for an event we will not take: pass the
	// wake-up on to another idle consumer.
	q.wakeConsumersLocked()
}

// leaveIdleLocked takes c off the queue's idle list.
func (q *queue) leaveIdleLocked(c *Consumer) {
	c.waiting = false
	if !c.idle {
		return
	}
	c.idle = false
	if i := slices.Index(q.idle, c); i >= 0 {
		q.idle = slices.Delete(q.idle, i, i+1)
	}
}

// deliverLocked hands the head event to c in *d. Called with q.mu held;
// releases it.
func (c *Consumer) deliverLocked(ctx context.Context, d *Delivery) {
	q := c.q
	b := q.bus
	// The head goes straight from the fifo into the in-flight record: one
	// copy of the entry instead of two.
	f := c.inflight.add(q.store.oldest())
	q.store.dropHead()
	q.counters.delivered.Add(1) // with the pop: see counters.sizeMark
	e := &f.e
	q.walSettle(walDeliver, e.seq, "")
	var now time.Time
	if b.tel.tracing {
		now = b.clock.Now() // for the queued-duration metric too
	}
	sc := e.pubSC()
	if e.traced() {
		f.span = b.tel.startDeliver(q, e, now)
		f.deliveredAt = now
		sc = f.span.SpanContext()
	}
	// Copied under the lock: once it is released, an ack may clear f.
	*d = Delivery{
		Queue:        q.name,
		Seq:          e.seq,
		Event:        e.event(),
		EnqueuedAt:   e.enqueuedAt,
		Redeliveries: e.redeliveries(),
		SpanContext:  sc,
		More:         c.inflight.len() < c.prefetch && q.store.Len() > 0,
	}
	dl := e.dl() // never changed once set: copied for the caller below
	admitted := q.admitWaitersLocked()
	// Other idle consumers may be owed a wake-up for events still waiting.
	q.wakeConsumersLocked()
	q.mu.Unlock()
	admitted.release()

	if d.Redeliveries > 0 {
		q.counters.redelivered.Add(1)
	}
	if b.tel.metrics {
		var queued time.Duration
		if b.tel.tracing {
			queued = now.Sub(d.EnqueuedAt)
		} else {
			queued = b.since(d.EnqueuedAt)
		}
		b.tel.record(ctx, q, HistogramQueued, queued)
	}
	d.DeadLetter = deadLetterCopy(dl)
}

// settle removes seq from c's in-flight set, copying its record to out
// unless out is nil. The caller counts the delivery's end (see counters).
func (c *Consumer) settle(seq uint64, op string, out *flight) error {
	q := c.q
	if !c.inflight.take(seq, out) {
		return fmt.Errorf("%s seq %d on queue %q: %w", op, seq, q.name, ErrUnknownSeq)
	}
	if c.waiting && !c.idle {
		c.wake() // Receive was blocked at the prefetch limit
	}
	return nil
}

// Ack settles a delivery for good. It fails with ErrUnknownSeq when seq is
// not in flight on this consumer (never delivered, already settled, or
// returned to the queue by Close).
func (c *Consumer) Ack(seq uint64) error {
	q := c.q
	if q.bus.tel.tracing {
		return c.ackTraced(seq)
	}
	q.mu.Lock()
	err := c.settle(seq, "ack", nil)
	q.mu.Unlock()
	if err != nil {
		return err
	}
	c.acked(seq)
	return nil
}

// ackTraced is Ack with tracing, which needs the settled record for the
// deliver span: a function of its own, so that an ack without tracing
// does not clear a record's worth of stack on every call.
func (c *Consumer) ackTraced(seq uint64) error {
	q := c.q
	var f flight
	q.mu.Lock()
	err := c.settle(seq, "ack", &f)
	q.mu.Unlock()
	if err != nil {
		return err
	}
	c.acked(seq)
	if f.span != nil {
		q.bus.tel.endDeliver(q, &f, DeliveryAck, q.bus.spanNow())
	}
	return nil
}

// acked records a settled ack in the log and the counters.
func (c *Consumer) acked(seq uint64) {
	q := c.q
	q.walSettle(walAck, seq, "")
	q.counters.acked.Add(1) // once the log has the ack: see counters
	q.bus.notifyDrain()
}

// Nack returns a delivery to the head of its queue, before every waiting
// event with a higher seq, to be redelivered (to any consumer). It fails
// with ErrUnknownSeq like Ack. It is NackReason without a reason.
func (c *Consumer) Nack(seq uint64) error { return c.NackReason(seq, "") }

// NackReason is Nack with the consumer's reason, which travels with the
// event if it moves to the queue's dead-letter queue (this delivery or a
// later abandoned one was its MaxDeliveries-th; see
// QueueConfig.DeadLetter) and then shows in its Delivery.DeadLetter. The
// event keeps it until its next nack, across a restart on a durable queue.
// A reason longer than MaxReasonBytes is cut there.
func (c *Consumer) NackReason(seq uint64, reason string) error {
	if len(reason) > MaxReasonBytes {
		reason = clipTo(reason, MaxReasonBytes)
	}
	q := c.q
	q.mu.Lock()
	var f flight
	if err := c.settle(seq, "nack", &f); err != nil {
		q.mu.Unlock()
		return err
	}
	q.counters.returned.Add(1)
	e := f.e // f stays as delivered, for the deliver span
	e.returned(reason)
	dead := q.deadLetterDue(&e)
	// Recorded for a dead letter too: until its move is done the event
	// stays in the log with its deliveries spent and its reason, which a
	// crash must not lose (see deadLetterMove).
	q.walSettle(walNack, seq, reason)
	if !dead {
		q.store.Requeue(e)
		q.setSizeLocked(q.store.Len())
		q.wakeConsumersLocked()
	}
	q.mu.Unlock()
	if dead {
		q.sendToDeadLetter(e)
	}
	q.bus.notifyDrain()
	if f.span != nil {
		q.bus.tel.endDeliver(q, &f, DeliveryNack, q.bus.spanNow())
	}
	return nil
}

// Close detaches the consumer. Its unsettled deliveries return to the head
// of the queue in their original order, to be redelivered to other
// consumers. A blocked Receive returns ErrConsumerClosed. Close is
// idempotent.
func (c *Consumer) Close() {
	q := c.q
	q.mu.Lock()
	if c.closed {
		q.mu.Unlock()
		return
	}
	c.closed = true
	q.leaveIdleLocked(c)
	returned := c.inflight.release() // in seq order
	var dead []entry
	for i := range returned {
		e := returned[i].e // returned stays as delivered, for the deliver spans
		// An abandoned delivery keeps the reason of the nack before it.
		e.returned(e.reason())
		q.walSettle(walNack, e.seq, e.reason())
		if q.deadLetterDue(&e) {
			dead = append(dead, e)
			continue
		}
		q.store.Requeue(e)
	}
	q.counters.returned.Add(uint64(len(returned)))
	q.setSizeLocked(q.store.Len())
	q.counters.consumers.Add(-1)
	q.wakeConsumersLocked()
	q.mu.Unlock()
	for _, e := range dead {
		q.sendToDeadLetter(e)
	}
	close(c.closedCh)
	q.bus.notifyDrain()
	if len(returned) > 0 && returned[0].span != nil {
		now := q.bus.spanNow()
		for i := range returned {
			q.bus.tel.endDeliver(q, &returned[i], DeliveryAbandoned, now)
		}
	}
}

// MaxReasonBytes bounds a nack's reason as it is kept: it is stored with
// the event in its queue's log and with a dead letter, both next to the
// payload.
const MaxReasonBytes = wal.MaxReasonBytes

// clipTo cuts s to at most n bytes at a rune boundary.
func clipTo(s string, n int) string {
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
