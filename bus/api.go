// Package bus holds events in named, bounded queues with per-queue overflow
// policies and hands them to competing consumers with acknowledgement.
//
// This file fixes the package's public contract (types, outcomes, sentinel
// errors). The queue engine lives in the other files of the package.
//
// Each queue has one mutex guarding its waiting events (a fifo of blocks
// that implements the small store interface), its FIFO list of
// publishers waiting for room, and its consumers' in-flight sets. Capacity
// bounds waiting events only; events coming back from Nack or Close go to
// the head in seq order even past capacity, so nothing accepted is lost.
// Counters are atomics read by Stats and by the observable metrics alike.
// Reconfigure changes a running queue's capacity, policy and timeout under
// the same lock, keeping every event it holds.
// The bus starts no goroutines of its own: a publish waiting for room
// (Publish or PublishAsync, one implementation) is a record in the queue's
// FIFO, resolved by whoever gets there first under the queue lock (a
// consumer freeing room, the queue's Clock.AfterFunc timer, its context's
// AfterFunc, Pending.Cancel or Shutdown). A queue has one timer for all its
// waiters, armed for the earliest deadline (deadlines rise along the FIFO),
// and stopped when no waiter is left; the context watch, registered only
// for a context that can end, is stopped as soon as the wait is resolved.
//
// Telemetry (OpenTelemetry API, noop unless providers are given):
//
//   - Spans: "publish <queue>" (PRODUCER; child of Event.Parent, else a
//     new root), "wait <queue>" (the time blocked for room), "drop <queue>"
//     (child of the dropped or evicted event's publish span; attribute
//     eventbus.drop.reason), "deliver <queue>" (CONSUMER, hand-over to
//     ack/nack; attributes eventbus.time_in_queue_seconds,
//     eventbus.redelivery.count, eventbus.delivery.result), "dead_letter
//     <queue>" (child of the event's publish span when it moves to the
//     dead-letter queue; attributes eventbus.dead_letter.queue,
//     eventbus.dead_letter.reason, eventbus.delivery.count). An accepted
//     publish on a durable queue carries eventbus.wal.sync_ms. All carry
//     messaging.system=eventbus and messaging.destination.name from start.
//     Span processors read names and attributes through SpanName,
//     ParseSpanName and the Attr* keys, never by restating them.
//   - Metrics (attribute queue on every series): gauges
//     eventbus.queue.depth, eventbus.queue.capacity,
//     eventbus.publishers.waiting, eventbus.consumers; counters
//     eventbus.events.published{outcome}, eventbus.events.dropped{reason},
//     eventbus.events.delivered, eventbus.events.redelivered,
//     eventbus.events.dead_lettered, eventbus.storage.errors; histograms in
//     seconds eventbus.publish.duration, eventbus.queue.wait.duration,
//     eventbus.event.queued.duration, eventbus.wal.sync.duration.
//
// Durability (WithDataDir): a durable queue appends each event to its
// write-ahead log (package wal) and answers the publish once the append is
// synced; the event holds a reserved slot meanwhile and reaches consumers
// only once stored. A goroutine of the log runs the answer, so that no
// publish needs a goroutine and concurrent publishes share one sync. A
// move to a durable dead-letter queue is exactly-once across a crash (see
// deadLetterMove in deadletter.go): New finishes the moves a crash
// interrupted before anything is delivered.
package bus

import (
	"encoding/json"
	"errors"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// Policy says what a publish does when its queue is full.
type Policy string

const (
	// PolicyDrop waits up to the queue's timeout for room, then drops the new
	// event and counts it (the default data queue).
	PolicyDrop Policy = "drop"
	// PolicyFail waits up to the queue's timeout for room, then fails the
	// publish with ErrTimeout; the event is never dropped (the default signal queue).
	PolicyFail Policy = "fail"
	// PolicyBlock waits without limit for room; the event is never dropped
	// (the default order queue). Only the caller's context ends the wait.
	PolicyBlock Policy = "block"
	// PolicyDropOldest evicts the oldest waiting event at once to make room for
	// the new one, counting the eviction as a drop. It never waits.
	PolicyDropOldest Policy = "drop_oldest"
)

// Policies lists every valid policy, in the order error messages name them.
var Policies = []Policy{PolicyDrop, PolicyFail, PolicyBlock, PolicyDropOldest}

// QueueConfig describes one queue.
type QueueConfig struct {
	// Name is how publishers and consumers address the queue.
	Name string
	// Capacity bounds the events waiting in the queue (not those in flight
	// to consumers). Must be > 0.
	Capacity int
	// Policy is applied when the queue is full.
	Policy Policy
	// Timeout is how long PolicyDrop and PolicyFail wait for room. Must be > 0
	// for those policies and is ignored by PolicyBlock and PolicyDropOldest.
	Timeout time.Duration
	// Durable keeps the queue's accepted events in a write-ahead log under
	// the bus's data directory (WithDataDir), so that they survive a crash.
	// Without a data directory every queue lives in memory.
	Durable bool
	// Fsync says when a durable queue's publish is answered: FsyncAlways
	// (the default) once the event is on stable storage, FsyncInterval once
	// it is written to the operating system, with a sync every FsyncInterval.
	Fsync Fsync
	// FsyncInterval is the sync period of FsyncInterval (default 100 ms): the
	// most a power loss can take of accepted events.
	FsyncInterval time.Duration
	// DedupeWindow is how long a publish's MsgID is remembered: a publish
	// that repeats it within the window is answered Duplicate and not
	// enqueued again (default DefaultDedupeWindow).
	DedupeWindow time.Duration
	// MaxDeliveries moves an event delivered this many times without an ack
	// to the DeadLetter queue (0: redeliver without limit).
	MaxDeliveries int
	// DeadLetter names the queue that takes this queue's events past
	// MaxDeliveries; required when MaxDeliveries > 0.
	DeadLetter string
}

// Fsync is a durable queue's sync mode.
type Fsync string

const (
	// FsyncAlways answers a publish only once an fdatasync covers it;
	// concurrent publishes share one sync.
	FsyncAlways Fsync = "always"
	// FsyncInterval answers once the event is written to the operating
	// system and syncs every FsyncInterval: a process crash loses nothing,
	// a power loss at most one interval of accepted events.
	FsyncInterval Fsync = "interval"
)

// DefaultDedupeWindow is how long a MsgID is remembered by default.
const DefaultDedupeWindow = 2 * time.Minute

// MaxDedupeIDs bounds the msg ids a queue remembers, whatever its window:
// each costs about 350 bytes, so at 10,000 publishes a second a two-minute
// window would hold 0.4 GB, far past a sidecar's memory limit. Past the
// bound the oldest id is forgotten first, so a busy queue's effective
// window is the time it takes to accept MaxDedupeIDs events (over 5 s at
// 5,000 a second; the whole window on an order queue's usual rates).
const MaxDedupeIDs = wal.MaxMsgIDs

// EventOverhead is what a memory budget charges for a queued event
// besides its payload, type and msg id: at most what the bus holds for
// it. That is the event's 96-byte slot, 97.5 bytes with its share of the
// 4 KiB block that holds 42 of them, and for an event that carries a
// trace context or came back from a consumer, the 176 bytes beside the
// slot that keep its span contexts and redelivery count: 274 in all, and
// a little room for the spare blocks a queue keeps.
const EventOverhead = 288

// MaxMsgIDBytes bounds a publish's MsgID.
const MaxMsgIDBytes = 256

// Outcome is the result of a publish that reached a queue.
type Outcome string

const (
	// Accepted: the event is in the queue.
	Accepted Outcome = "accepted"
	// Dropped: the queue stayed full past its timeout and the event was
	// discarded by design (PolicyDrop). Not an error.
	Dropped Outcome = "dropped"
	// TimedOut: the queue stayed full past its timeout; the event was not
	// enqueued (PolicyFail). Publish returns it together with ErrTimeout.
	TimedOut Outcome = "timeout"
	// Cancelled: the caller's context ended while waiting; nothing was enqueued.
	Cancelled Outcome = "cancelled"
	// Failed: the publish was refused (unknown queue, bad event, shutting
	// down, storage failure).
	Failed Outcome = "error"
	// Duplicate: an event with the same MsgID was accepted on the queue
	// within its dedupe window; this publish was not enqueued again. For the
	// publisher it means accepted.
	Duplicate Outcome = "duplicate"
)

// Outcomes lists every outcome, so that metrics can pre-create their series.
var Outcomes = []Outcome{Accepted, Dropped, TimedOut, Cancelled, Failed, Duplicate}

// DropReason says why an event was dropped.
type DropReason string

const (
	// DropTimeout: a PolicyDrop queue stayed full past its timeout.
	DropTimeout DropReason = "timeout"
	// DropEvicted: a PolicyDropOldest queue evicted this event for a newer one.
	DropEvicted DropReason = "evicted"
)

// DropReasons lists every drop reason, so that metrics can pre-create their series.
var DropReasons = []DropReason{DropTimeout, DropEvicted}

// Sentinel errors callers branch on with errors.Is.
var (
	// ErrUnknownQueue: the named queue does not exist. The wrapping message
	// names the bad queue and lists the valid ones.
	ErrUnknownQueue = errors.New("unknown queue")
	// ErrTimeout: a PolicyFail queue stayed full past its timeout.
	ErrTimeout = errors.New("timeout waiting for room in queue")
	// ErrShuttingDown: the bus no longer accepts publishes or subscriptions.
	ErrShuttingDown = errors.New("shutting down")
	// ErrInvalidEvent: the event is malformed (for example an empty type).
	ErrInvalidEvent = errors.New("invalid event")
	// ErrUnknownSeq: ack or nack named a sequence number this consumer does
	// not hold in flight.
	ErrUnknownSeq = errors.New("unknown sequence number")
	// ErrConsumerClosed: the consumer was closed.
	ErrConsumerClosed = errors.New("consumer closed")
	// ErrStorage: a durable queue could not write or sync its log (disk
	// full, I/O error); the event was not accepted. The bus recovers when
	// the disk does.
	ErrStorage = errors.New("storage failure")
	// ErrRestartRequired: Reconfigure was asked for a change a running bus
	// cannot make (adding or removing a queue). The wrapping message names
	// the queue.
	ErrRestartRequired = errors.New("change needs a restart")
)

// Event is what publishers hand to the bus and consumers receive.
type Event struct {
	// Type names the event, e.g. "CANDLE_UPDATE". Must not be empty.
	Type string
	// Payload is opaque JSON, passed through byte for byte.
	Payload json.RawMessage
	// Parent is the publisher's trace context (from a W3C traceparent), or
	// the zero SpanContext when none was given.
	Parent trace.SpanContext
	// MsgID, when set (at most MaxMsgIDBytes), makes the publish
	// idempotent within the queue's DedupeWindow.
	MsgID string
}

// Delivery is an event handed to a consumer. It stays in flight until the
// consumer acks or nacks its Seq, or the consumer goes away.
type Delivery struct {
	// Queue is the queue the event came from.
	Queue string
	// Seq identifies the event within its queue; unique per queue for the
	// life of the bus and kept across redeliveries.
	Seq uint64
	// Event is the published event.
	Event Event
	// EnqueuedAt is when the event was accepted into the queue. On the
	// system clock the bus reads it from the monotonic clock, counted from
	// a wall-clock reading at most a second old: a step of the wall clock
	// shows in it up to a second late.
	EnqueuedAt time.Time
	// Redeliveries counts earlier deliveries of this event that were nacked
	// or abandoned; 0 on first delivery.
	Redeliveries int
	// SpanContext is the deliver span's context, for the consumer's own
	// work to join the trace (carried as the deliver frame's traceparent).
	SpanContext trace.SpanContext
	// DeadLetter is set on an event that reached this queue as a dead
	// letter: where it came from and why.
	DeadLetter *DeadLetter
	// More reports that another event was ready for the same consumer when
	// this one was handed over, so that a caller which batches its output
	// can take the next one before it writes. A hint: another consumer of
	// the queue may still take that event first.
	More bool
}

// DeadLetter describes an event moved to a dead-letter queue after
// MaxDeliveries deliveries without an ack.
type DeadLetter struct {
	// Queue is the queue the event was published to.
	Queue string
	// Seq is its sequence number there.
	Seq uint64
	// Deliveries counts its deliveries there.
	Deliveries int
	// Reason is the last nack's reason, if the consumer gave one.
	Reason string
}

// QueueStats is one queue's snapshot. Its first three fields are what the
// Python client's get_queue_stats() returns per queue; the rest is what an
// operator needs.
type QueueStats struct {
	// Size counts events waiting in the queue, not those in flight. It may
	// exceed MaxSize for a moment when deliveries return from nack or from
	// a closed consumer, because nothing accepted is thrown away.
	Size int `json:"size"`
	// MaxSize is the configured capacity.
	MaxSize int `json:"maxsize"`
	// Drops counts dropped events for every reason.
	Drops uint64 `json:"drops"`
	// Policy is the queue's overflow policy.
	Policy Policy `json:"policy"`
	// TimeoutSeconds is how long a publish waits for room (0 when the
	// policy never times out).
	TimeoutSeconds float64 `json:"timeout_seconds"`
	// Published counts publishes by outcome (keys are Outcome values).
	Published map[Outcome]uint64 `json:"published"`
	// DropsByReason splits Drops by reason (keys are DropReason values).
	DropsByReason map[DropReason]uint64 `json:"drops_by_reason"`
	// Timeouts counts publishes that failed with ErrTimeout (PolicyFail);
	// it equals Published[TimedOut].
	Timeouts uint64 `json:"timeouts"`
	// Delivered counts hand-overs to consumers, redeliveries included.
	Delivered uint64 `json:"delivered"`
	// Redelivered counts deliveries of events nacked or abandoned before.
	Redelivered uint64 `json:"redelivered"`
	// Acked counts deliveries settled for good.
	Acked uint64 `json:"acked"`
	// Waiting counts publishers blocked for room right now.
	Waiting int `json:"waiting"`
	// Consumers counts subscribed consumers right now.
	Consumers int `json:"consumers"`
	// InFlight counts delivered events not yet acked or nacked.
	InFlight int `json:"in_flight"`
	// Durable says accepted events survive a crash (a durable queue with a
	// data directory).
	Durable bool `json:"durable"`
	// DeadLettered counts events moved to the dead-letter queue.
	DeadLettered uint64 `json:"dead_lettered"`
}

// Stats maps queue name to its snapshot.
type Stats map[string]QueueStats
