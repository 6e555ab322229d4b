package bus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// The data of a durable queue's log record: what the bus must give back
// after a restart besides what the log keeps itself (seq, accept time, msg
// id, deliveries).
//
//	version u8 | flags u8 | type (uvarint length + bytes)
//	| parent trace context (25 bytes: trace id, span id, flags)  if flagParent
//	| publish span context (25 bytes)                            if flagPubSC
//	| msg id (uvarint length + bytes)                            if flagMsgID
//	| dead letter: queue (uvarint length + bytes), seq uvarint,
//	  deliveries uvarint, reason (uvarint length + bytes)        if flagDeadLetter
//	| payload (the rest)
//
// A dead letter carries its msg id in the data: the log's own msg id field
// feeds the dead-letter queue's dedupe window, which a move must not touch.
const recordVersion = 1

const (
	flagParent byte = 1 << iota
	flagPubSC
	flagTraced
	flagMsgID
	flagDeadLetter
)

const knownFlags = flagParent | flagPubSC | flagTraced | flagMsgID | flagDeadLetter

const spanContextSize = 16 + 8 + 1

var errRecord = errors.New("malformed event record")

// encodeRecord appends e's record data to buf.
func encodeRecord(buf []byte, e *entry) []byte {
	r := e.r()
	var flags byte
	if r.parent.IsValid() {
		flags |= flagParent
	}
	if r.pubSC.IsValid() {
		flags |= flagPubSC
	}
	if r.traced {
		flags |= flagTraced
	}
	if r.dl != nil {
		flags |= flagDeadLetter
		if e.msgID != "" {
			flags |= flagMsgID
		}
	}
	buf = append(buf, recordVersion, flags)
	buf = appendString(buf, e.typ)
	if flags&flagParent != 0 {
		buf = appendSpanContext(buf, r.parent)
	}
	if flags&flagPubSC != 0 {
		buf = appendSpanContext(buf, r.pubSC)
	}
	if flags&flagMsgID != 0 {
		buf = appendString(buf, e.msgID)
	}
	if r.dl != nil {
		buf = appendString(buf, r.dl.Queue)
		buf = binary.AppendUvarint(buf, r.dl.Seq)
		buf = binary.AppendUvarint(buf, uint64(r.dl.Deliveries))
		buf = appendString(buf, r.dl.Reason)
	}
	return append(buf, e.payload...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendSpanContext(b []byte, sc trace.SpanContext) []byte {
	tid, sid := sc.TraceID(), sc.SpanID()
	b = append(b, tid[:]...)
	b = append(b, sid[:]...)
	return append(b, byte(sc.TraceFlags()))
}

// decodeRecord rebuilds the entry of a recovered record. The payload is
// copied: data points into the whole segment the log read, which would
// otherwise stay in memory until the last recovered event is acked.
func decodeRecord(data []byte, seq uint64, msgID string, acceptedAt time.Time, deliveries int) (entry, error) {
	d := recordDecoder{b: data}
	if v := d.byte(); d.err == nil && v != recordVersion {
		return entry{}, fmt.Errorf("%w: seq %d: version %d, this build reads version %d", errRecord, seq, v, recordVersion)
	}
	flags := d.byte()
	switch {
	case flags&^knownFlags != 0:
		return entry{}, fmt.Errorf("%w: seq %d: unknown flags %#x", errRecord, seq, flags&^knownFlags)
	case flags&flagMsgID != 0 && flags&flagDeadLetter == 0:
		return entry{}, fmt.Errorf("%w: seq %d: a msg id in the data of an event that is no dead letter", errRecord, seq)
	}
	e := entry{seq: seq, enqueuedAt: acceptedAt}
	r := entryRare{redeliveries: deliveries, traced: flags&flagTraced != 0}
	e.typ = d.string()
	if flags&flagParent != 0 {
		r.parent = d.spanContext()
	}
	if flags&flagPubSC != 0 {
		r.pubSC = d.spanContext()
	}
	e.msgID = msgID
	if flags&flagMsgID != 0 {
		e.msgID = d.string()
	}
	if flags&flagDeadLetter != 0 {
		r.dl = &DeadLetter{Queue: d.string(), Seq: d.uvarint(), Deliveries: int(d.uvarint()), Reason: d.string()}
	}
	if !r.empty() {
		e.rare = &r
	}
	if d.err != nil {
		return entry{}, fmt.Errorf("%w: seq %d: %w", errRecord, seq, d.err)
	}
	if len(d.b) > 0 {
		e.payload = bytes.Clone(d.b)
	}
	return e, nil
}

type recordDecoder struct {
	b   []byte
	err error
}

var errTruncated = errors.New("record data ends early")

func (d *recordDecoder) take(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b) {
		d.err = errTruncated
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) byte() byte {
	v := d.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *recordDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) string() string {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = errTruncated
		return ""
	}
	return string(d.take(int(n)))
}

func (d *recordDecoder) spanContext() trace.SpanContext {
	v := d.take(spanContextSize)
	if v == nil {
		return trace.SpanContext{}
	}
	var tid trace.TraceID
	var sid trace.SpanID
	copy(tid[:], v[:16])
	copy(sid[:], v[16:24])
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(v[24]), Remote: true})
	if !sc.IsValid() && d.err == nil {
		d.err = errors.New("invalid trace context")
	}
	return sc
}
