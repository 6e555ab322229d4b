package bus

import (
	"time"

	"go.opentelemetry.io/otel/trace"
)

// entry is one accepted event with what the bus must remember about it.
type entry struct {
	seq          uint64
	ev           Event
	enqueuedAt   time.Time
	redeliveries int
	// pubSC is the publish span's context: the parent of the event's
	// deliver and drop spans, even after the publish span has ended.
	pubSC trace.SpanContext
	// traced says the publish span was recorded. An event whose publish
	// span was not (shed under export overload, or not sampled) gets no
	// deliver span either: it would hang under the publisher's own parent
	// with no publish span between them, a trace that misleads.
	traced bool
	// dl is set on an event that came to this queue as a dead letter.
	dl *DeadLetter
	// reason is the last nack's reason, carried into a dead letter.
	reason string
}

// store holds the events waiting in one queue, oldest (lowest seq) first.
// The bus calls it only under the queue's lock, so an implementation needs
// no locking of its own. Durable queues keep their events in a write-ahead
// log next to the same in-memory fifo, so fifo is the one implementation,
// and the queue holds it by its concrete type (see fifo); the interface
// states the contract.
type store interface {
	// Len is the number of waiting events.
	Len() int
	// Push appends a newly accepted event; its seq is higher than any other.
	Push(e entry)
	// Pop removes and returns the oldest event. Len must be > 0.
	Pop() entry
	// Requeue puts back an event that was in flight (nacked or abandoned).
	// It goes before every waiting event with a higher seq, so returned
	// events keep their original order at the head of the queue.
	Requeue(e entry)
}
