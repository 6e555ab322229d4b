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
// log next to the same in-memory ring, so ring is the one implementation,
// and the queue holds it by its concrete type (see below); the interface
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

// ring is the in-memory store: a growable circular buffer of entries kept
// by value, so the steady state allocates nothing per event. It starts
// empty and doubles when full, so that it holds slots (256 bytes each) for
// the most events its queue has held at once rather than for its capacity:
// a queue sized for bursts costs nothing while idle, and one whose events
// pass a few at a time does not touch a slot per unit of capacity as its
// head goes round.
type ring struct {
	buf  []entry // len(buf) is zero or a power of two
	head int
	n    int
}

// minRing is the size of a ring's first buffer.
const minRing = 8

// The queue holds its ring by its concrete type, so that the per-event
// calls inline and a publish can fill its slot in place.
var _ store = (*ring)(nil)

func newRing() *ring { return &ring{} }

func (r *ring) Len() int { return r.n }

func (r *ring) mask(i int) int { return i & (len(r.buf) - 1) }

func (r *ring) grow() {
	nb := make([]entry, max(len(r.buf)*2, minRing))
	for i := 0; i < r.n; i++ {
		nb[i] = r.buf[r.mask(r.head+i)]
	}
	r.buf, r.head = nb, 0
}

func (r *ring) Push(e entry) { *r.pushSlot() = e }

// pushSlot appends a zero entry and returns it, for the caller to fill in
// place: a publish writes its fields straight into the ring instead of
// building an entry to copy there.
func (r *ring) pushSlot() *entry {
	if r.n == len(r.buf) {
		r.grow()
	}
	e := &r.buf[r.mask(r.head+r.n)] // zero: Pop clears what it takes
	r.n++
	return e
}

func (r *ring) Pop() entry {
	e := *r.oldest()
	r.dropHead()
	return e
}

// oldest is the oldest event's slot, for a caller that copies it out itself
// before dropHead. Len must be > 0.
func (r *ring) oldest() *entry { return &r.buf[r.head] }

// dropHead removes the oldest event. Len must be > 0.
func (r *ring) dropHead() {
	r.buf[r.head] = entry{} // release the payload for the GC
	r.head = r.mask(r.head + 1)
	r.n--
}

func (r *ring) Requeue(e entry) {
	if r.n == len(r.buf) {
		r.grow()
	}
	// k = number of waiting events that must stay ahead of e.
	k := 0
	for k < r.n && r.buf[r.mask(r.head+k)].seq < e.seq {
		k++
	}
	r.head = r.mask(r.head - 1 + len(r.buf))
	for i := 0; i < k; i++ {
		r.buf[r.mask(r.head+i)] = r.buf[r.mask(r.head+i+1)]
	}
	r.buf[r.mask(r.head+k)] = e
	r.n++
}
