package bus

import (
	"strings"

	"go.opentelemetry.io/otel/attribute"
)

// SpanOp is the operation a bus span records. A span's name is its
// operation, a space and the queue name (SpanName), so that a trace view
// groups spans by what happened and where.
type SpanOp string

// The operations of the bus's spans.
const (
	// SpanPublish covers a publish from the call to its outcome (PRODUCER).
	SpanPublish SpanOp = "publish"
	// SpanWait covers the time a publish waited for room in a full queue.
	SpanWait SpanOp = "wait"
	// SpanDrop marks an event dropped or evicted, as an instant child of
	// its publish span.
	SpanDrop SpanOp = "drop"
	// SpanDeliver covers a delivery from hand-over to ack or nack (CONSUMER).
	SpanDeliver SpanOp = "deliver"
	// SpanDeadLetter marks an event moved to its queue's dead-letter queue
	// after MaxDeliveries deliveries, as an instant child of its publish
	// span; the span's queue is the one the event left.
	SpanDeadLetter SpanOp = "dead_letter"
)

// SpanName is the name of op's span on queue: "<op> <queue>". A publish to
// a queue that does not exist is named plain "publish" instead, so that
// client input cannot create new span names.
func SpanName(op SpanOp, queue string) string { return string(op) + " " + queue }

// ParseSpanName splits a span name built by SpanName into its operation and
// queue. Queue names hold no spaces (CheckQueueName), so the first space
// separates the two; queue is "" for the plain "publish" span of an unknown
// queue. It does not allocate: span processors call it for every span.
func ParseSpanName(name string) (op SpanOp, queue string) {
	o, q, _ := strings.Cut(name, " ")
	return SpanOp(o), q
}

// Span attribute keys. The messaging.* keys follow the OpenTelemetry
// messaging semantic conventions; eventbus.* are this project's own.
const (
	// AttrMessagingSystem is MessagingSystem on every span.
	AttrMessagingSystem = attribute.Key("messaging.system")
	// AttrDestinationName is the queue name on every span.
	AttrDestinationName = attribute.Key("messaging.destination.name")
	// AttrOperationType is "send" on publish spans, "process" on deliver spans.
	AttrOperationType = attribute.Key("messaging.operation.type")
	// AttrOperationName is the SpanOp of publish and deliver spans.
	AttrOperationName = attribute.Key("messaging.operation.name")
	// AttrMessageID is the event's seq in its queue, once it has one.
	AttrMessageID = attribute.Key("messaging.message.id")
	// AttrEventType is the event's type on publish and deliver spans.
	AttrEventType = attribute.Key("eventbus.event.type")
	// AttrOutcome is the publish's Outcome on publish and wait spans.
	AttrOutcome = attribute.Key("eventbus.outcome")
	// AttrQueueDepth is the queue depth a publish found.
	AttrQueueDepth = attribute.Key("eventbus.queue.depth")
	// AttrDropReason is the DropReason on drop spans.
	AttrDropReason = attribute.Key("eventbus.drop.reason")
	// AttrTimeInQueue is how long a delivered event waited, in seconds.
	AttrTimeInQueue = attribute.Key("eventbus.time_in_queue_seconds")
	// AttrRedeliveryCount is Delivery.Redeliveries on deliver spans.
	AttrRedeliveryCount = attribute.Key("eventbus.redelivery.count")
	// AttrDeliveryResult is how a delivery was settled: DeliveryAck,
	// DeliveryNack or DeliveryAbandoned.
	AttrDeliveryResult = attribute.Key("eventbus.delivery.result")
	// AttrWALSyncMs is, on the accepted publish span of a durable queue,
	// how long the log sync that stored the event took, in milliseconds
	// (0 with fsync interval, which answers before syncing).
	AttrWALSyncMs = attribute.Key("eventbus.wal.sync_ms")
	// AttrDeadLetterQueue names the dead-letter queue on dead_letter spans.
	AttrDeadLetterQueue = attribute.Key("eventbus.dead_letter.queue")
	// AttrDeadLetterReason is the last nack's reason on dead_letter spans.
	AttrDeadLetterReason = attribute.Key("eventbus.dead_letter.reason")
	// AttrDeliveryCount is how many times a dead-lettered event was delivered.
	AttrDeliveryCount = attribute.Key("eventbus.delivery.count")
)

// Attribute values of the span contract.
const (
	// MessagingSystem is the value of AttrMessagingSystem.
	MessagingSystem = "eventbus"
	// DeliveryAck: the consumer acked the delivery.
	DeliveryAck = "ack"
	// DeliveryNack: the consumer nacked it; the event goes back to the queue.
	DeliveryNack = "nack"
	// DeliveryAbandoned: the consumer went away holding it; it goes back too.
	DeliveryAbandoned = "abandoned"
)
