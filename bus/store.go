package bus

import (
	"encoding/json"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// entry is one accepted event with what the bus must remember about it.
// It is a queue's slot, so it holds inline only what every event has;
// what few events carry (a trace context, a nack, a dead letter's origin)
// is behind rare, which is nil for the untraced, never-nacked event that
// fills a busy queue. That keeps the slot at 96 bytes rather than the 256
// it took with all of it inline, which for a full queue of small events
// is most of its memory.
type entry struct {
	seq     uint64
	typ     string
	payload json.RawMessage
	msgID   string
	// enqueuedAt is a time.Time rather than nanoseconds on some base: the
	// bus's times carry both the wall clock, refreshed at most a second
	// old, and the monotonic clock, and no single number gives both back.
	enqueuedAt time.Time
	rare       *entryRare
}

// entryRare is the part of an entry that few events have. It is never
// changed once an entry points to it, because copies of the entry share
// it: the in-flight record keeps the entry as delivered (for its deliver
// span) while the nacked copy goes back to the queue. A change makes a
// new one (returned).
type entryRare struct {
	// parent is the publisher's trace context (Event.Parent).
	parent trace.SpanContext
	// pubSC is the publish span's context: the parent of the event's
	// deliver and drop spans, even after the publish span has ended.
	// Without tracing it is the publisher's own context.
	pubSC trace.SpanContext
	// traced says the publish span was recorded. An event whose publish
	// span was not (shed under export overload, or not sampled) gets no
	// deliver span either: it would hang under the publisher's own parent
	// with no publish span between them, a trace that misleads.
	traced       bool
	redeliveries int
	// dl is set on an event that came to this queue as a dead letter.
	dl *DeadLetter
	// reason is the last nack's reason, carried into a dead letter.
	reason string
}

// noRare is what an entry without rare reads.
var noRare entryRare

// setEvent fills e with ev, its publish span's context and whether that
// span was recorded; e's other fields are kept. rare is allocated only
// for an event with a trace context. pubSC may be &ev.Parent, as for a
// publish without tracing: the one context is then checked once. Each
// check is about 5 % of an untraced publish and delivery in process.
func (e *entry) setEvent(ev *Event, pubSC *trace.SpanContext, traced bool) {
	e.typ, e.payload, e.msgID = ev.Type, ev.Payload, ev.MsgID
	e.rare = nil
	if traced || !zeroSpanContext(pubSC) || pubSC != &ev.Parent && !zeroSpanContext(&ev.Parent) {
		e.rare = &entryRare{parent: ev.Parent, pubSC: *pubSC, traced: traced}
	}
}

// zeroSpanContext reports whether sc is the zero SpanContext, which an
// entry need not keep.
func zeroSpanContext(sc *trace.SpanContext) bool {
	return !sc.HasTraceID() && !sc.HasSpanID() && sc.TraceFlags() == 0 && !sc.IsRemote() && sc.TraceState().Len() == 0
}

// empty reports whether r holds nothing, so that an entry need not point
// to it.
func (r *entryRare) empty() bool {
	return !r.traced && r.redeliveries == 0 && r.dl == nil && r.reason == "" &&
		zeroSpanContext(&r.parent) && zeroSpanContext(&r.pubSC)
}

// r is e's rare part, the zero one if it has none.
func (e *entry) r() *entryRare {
	if e.rare == nil {
		return &noRare
	}
	return e.rare
}

// event is the published event.
func (e *entry) event() Event {
	return Event{Type: e.typ, Payload: e.payload, Parent: e.r().parent, MsgID: e.msgID}
}

func (e *entry) pubSC() trace.SpanContext { return e.r().pubSC }
func (e *entry) traced() bool             { return e.r().traced }
func (e *entry) redeliveries() int        { return e.r().redeliveries }
func (e *entry) dl() *DeadLetter          { return e.r().dl }
func (e *entry) reason() string           { return e.r().reason }

// setRare gives e a new rare part: e's own, changed by change. The old one
// may be shared with copies of e, which keep it as it was.
func (e *entry) setRare(change func(r *entryRare)) {
	r := *e.r()
	change(&r)
	e.rare = &r
}

// returned counts a delivery of e that came back (nacked or abandoned),
// with the reason the consumer gave, if any.
func (e *entry) returned(reason string) {
	e.setRare(func(r *entryRare) {
		r.redeliveries++
		r.reason = reason
	})
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
