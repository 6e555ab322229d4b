// Package protocol is the sidecar's wire format: the newline-delimited JSON
// frames of docs/protocol.md, their encoders and decoders, and the W3C
// traceparent they carry. The server (transport) and the Go client (client)
// both use it, so the client does not depend on the server.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Op names a request (client to sidecar) or, for OpDeliver, a delivery
// (sidecar to client).
type Op string

// The protocol's operations; docs/protocol.md describes each.
const (
	OpPublish     Op = "publish"
	OpCancel      Op = "cancel"
	OpSubscribe   Op = "subscribe"
	OpUnsubscribe Op = "unsubscribe"
	OpAck         Op = "ack"
	OpNack        Op = "nack"
	OpStats       Op = "stats"
	OpPing        Op = "ping"
	OpDeliver     Op = "deliver"
)

// RequestOps lists the operations a client may send, in the order error
// messages name them.
var RequestOps = []Op{OpPublish, OpCancel, OpSubscribe, OpUnsubscribe, OpAck, OpNack, OpStats, OpPing}

func opNames() string {
	names := make([]string, len(RequestOps))
	for i, op := range RequestOps {
		names[i] = string(op)
	}
	return strings.Join(names, ", ")
}

// Status is a reply's status. The publish statuses equal bus.Outcome values.
type Status string

// Reply statuses.
const (
	StatusAccepted  Status = "accepted"
	StatusDropped   Status = "dropped"
	StatusTimeout   Status = "timeout"
	StatusCancelled Status = "cancelled"
	StatusError     Status = "error"
	StatusOK        Status = "ok"
)

// Code classifies an error reply so that clients can branch without parsing
// the human-readable message.
type Code string

// Error codes carried in the "code" field of error replies.
const (
	CodeBadRequest        Code = "bad_request"
	CodeFrameTooLarge     Code = "frame_too_large"
	CodeUnknownQueue      Code = "unknown_queue"
	CodeInvalidEvent      Code = "invalid_event"
	CodeShuttingDown      Code = "shutting_down"
	CodeUnknownSeq        Code = "unknown_seq"
	CodeNotSubscribed     Code = "not_subscribed"
	CodeAlreadySubscribed Code = "already_subscribed"
	// CodeTooManyConnections comes in the one frame, without an id, that a
	// connection over the server's MaxConnections gets before it is closed.
	CodeTooManyConnections Code = "too_many_connections"
	// CodePermissionDenied comes in the one frame, without an id, that a
	// connection from a process whose uid and gid the server does not
	// allow gets before it is closed.
	CodePermissionDenied Code = "permission_denied"
	// CodeFrameTimeout comes in the one frame, without an id, that a
	// connection gets when a frame was not completed within the server's
	// frame timeout; the connection is then closed.
	CodeFrameTimeout Code = "frame_timeout"
	// CodeStorageError answers a publish to a durable queue whose log could
	// not be written or synced (disk full, I/O error): the event was not
	// accepted and may be published again.
	CodeStorageError Code = "storage_error"
	CodeInternal     Code = "internal"
)

// MaxMsgIDBytes bounds a publish's msg_id, in bytes of the decoded string;
// it equals bus.MaxMsgIDBytes (protocol does not import the bus).
const MaxMsgIDBytes = 256

// MaxNackReasonBytes bounds the nack reason the sidecar keeps: a reason
// travels with a dead-lettered event, so a longer one is cut, not refused,
// since refusing the nack would leave the event in flight.
const MaxNackReasonBytes = 1024

// ClipNackReason cuts a nack reason to MaxNackReasonBytes, on a rune
// boundary so that the rest stays valid UTF-8.
func ClipNackReason(r string) string {
	if len(r) <= MaxNackReasonBytes {
		return r
	}
	cut := MaxNackReasonBytes
	for cut > 0 && !utf8.RuneStart(r[cut]) {
		cut--
	}
	return r[:cut]
}

// MaxPrefetch bounds a subscription's prefetch, which bounds the events in
// flight to one consumer.
const MaxPrefetch = 65536

// EnqueuedAtLayout formats a delivery's enqueued_at: RFC 3339 in UTC with
// exactly nine fractional digits.
const EnqueuedAtLayout = "2006-01-02T15:04:05.000000000Z07:00"

// Request is one client-to-sidecar frame. Has* fields tell a present field
// from its zero value.
type Request struct {
	Op    Op
	ID    int64
	HasID bool
	// Queue names the target queue (publish, subscribe, unsubscribe, and
	// optionally ack/nack). Empty and !HasQueue means "not given".
	Queue    string
	HasQueue bool
	Type     string
	HasType  bool
	// Payload is the raw JSON value, which aliases the decoded frame's
	// buffer: copy it before the buffer is reused.
	Payload     json.RawMessage
	Traceparent string
	Ref         int64
	HasRef      bool
	Seq         uint64
	HasSeq      bool
	Prefetch    int
	HasPrefetch bool
	// MsgID makes a publish idempotent within its queue's dedupe window;
	// empty means not given.
	MsgID string
	// Reason is a nack's reason, kept with the event if it is dead-lettered;
	// empty means not given.
	Reason string
}

// RequestError is a request the sidecar refuses before acting on it. When
// the frame's id could be read, the error reply carries it.
type RequestError struct {
	Code Code
	Msg  string
}

// Error returns the message sent to the client.
func (e *RequestError) Error() string { return e.Msg }

func badRequest(format string, args ...any) *RequestError {
	return &RequestError{Code: CodeBadRequest, Msg: fmt.Sprintf(format, args...)}
}

// DecodeRequest parses one frame (without its newline). On error the
// returned Request still carries the id if the frame had a valid one, so
// that the error reply can name the request. Errors are *RequestError.
func DecodeRequest(line []byte) (Request, error) {
	return decodeRequest(line, nil)
}

// DecodeRequestInterned is DecodeRequest with the request's strings (op,
// queue, type) made by intern, which may return a string it made before:
// the server uses it to skip an allocation per publish for the queue name
// and the event type. intern is called only with bytes of the frame and
// must not keep them.
func DecodeRequestInterned(line []byte, intern func(b []byte) string) (Request, error) {
	return decodeRequest(line, internFunc(intern))
}

// interner turns a decoded string's bytes into a string, reusing one it
// has seen before.
type interner interface {
	intern(b []byte) string
}

// internFunc adapts a function to interner; a func is pointer-shaped, so the
// conversion to the interface does not allocate.
type internFunc func(b []byte) string

func (f internFunc) intern(b []byte) string { return f(b) }

func decodeRequest(line []byte, in interner) (Request, error) {
	var r Request
	if bytes.HasPrefix(line, utf8BOM) {
		return r, badRequest("frame starts with a UTF-8 byte-order mark (bytes EF BB BF); send the JSON object without it")
	}
	if !utf8.Valid(line) {
		return r, badRequest("frame is not valid UTF-8")
	}
	it := newFieldIter(line)
	var opSet bool
	var op string
	var opErr error
	var fieldErr error
	setErr := func(err error) {
		if fieldErr == nil {
			fieldErr = err
		}
	}
	for it.next() {
		v := it.val
		null := v[0] == 'n'
		var err error
		switch {
		case it.keyIs("op"):
			opSet = !null
			if !null {
				op, opErr = it.strInterned("op", in)
			}
		case it.keyIs("id"):
			r.HasID = false
			if !null {
				r.ID, err = parseInt("id", v)
				r.HasID = err == nil
			}
		case it.keyIs("queue"):
			r.HasQueue = false
			if !null {
				r.Queue, err = it.strInterned("queue", in)
				r.HasQueue = err == nil
			}
		case it.keyIs("type"):
			r.HasType = false
			if !null {
				r.Type, err = it.strInterned("type", in)
				r.HasType = err == nil
			}
		case it.keyIs("payload"):
			r.Payload = v
		case it.keyIs("traceparent"):
			r.Traceparent = ""
			if !null {
				r.Traceparent, err = it.str("traceparent")
			}
		case it.keyIs("ref"):
			r.HasRef = false
			if !null {
				r.Ref, err = parseInt("ref", v)
				r.HasRef = err == nil
			}
		case it.keyIs("seq"):
			r.HasSeq = false
			if !null {
				r.Seq, err = parseUint("seq", v)
				r.HasSeq = err == nil
			}
		case it.keyIs("msg_id"):
			r.MsgID = ""
			if !null {
				r.MsgID, err = it.str("msg_id")
				if err == nil && len(r.MsgID) > MaxMsgIDBytes {
					err = fmt.Errorf("field \"msg_id\" is %d bytes long; at most %d bytes are allowed", len(r.MsgID), MaxMsgIDBytes)
					r.MsgID = ""
				}
			}
		case it.keyIs("reason"):
			r.Reason = ""
			if !null {
				r.Reason, err = it.str("reason")
			}
		case it.keyIs("prefetch"):
			r.HasPrefetch = false
			if !null {
				var n int64
				n, err = parseInt("prefetch", v)
				if err == nil && (n < 1 || n > MaxPrefetch) {
					err = fmt.Errorf("field \"prefetch\" must be between 1 and %d, got %d", MaxPrefetch, n)
				}
				r.Prefetch, r.HasPrefetch = int(n), err == nil
			}
		}
		if err != nil {
			setErr(err)
		}
	}
	if it.err != nil {
		return Request{}, &RequestError{Code: CodeBadRequest, Msg: it.err.Error()}
	}
	if !opSet {
		return r, badRequest("missing field \"op\"; valid ops: %s", opNames())
	}
	if opErr != nil {
		return r, badRequest("%v; valid ops: %s", opErr, opNames())
	}
	r.Op = Op(op)
	if fieldErr != nil {
		return r, badRequest("%s: %v", op, fieldErr)
	}
	return r, r.validate()
}

func (r *Request) validate() error {
	missing := func(field string) error {
		return badRequest("%s: missing field %q", r.Op, field)
	}
	switch r.Op {
	case OpPublish:
		if !r.HasID {
			return missing("id")
		}
		if !r.HasType {
			return missing("type")
		}
		if r.Type == "" {
			return &RequestError{Code: CodeInvalidEvent, Msg: "publish: field \"type\" must not be empty"}
		}
	case OpCancel:
		if !r.HasRef {
			return missing("ref")
		}
	case OpSubscribe, OpUnsubscribe:
		if !r.HasID {
			return missing("id")
		}
		if !r.HasQueue {
			return missing("queue")
		}
	case OpAck, OpNack:
		if !r.HasSeq {
			return missing("seq")
		}
	case OpStats, OpPing:
		if !r.HasID {
			return missing("id")
		}
	default:
		return badRequest("unknown op %s; valid ops: %s", Quote(string(r.Op)), opNames())
	}
	return nil
}

// AppendRequest appends r as one frame, newline included. Only the fields
// present (Has*, non-empty strings, non-nil payload) are written.
func AppendRequest(dst []byte, r *Request) []byte {
	dst = append(dst, `{"op":`...)
	dst = appendString(dst, string(r.Op))
	if r.HasID {
		dst = append(dst, `,"id":`...)
		dst = strconv.AppendInt(dst, r.ID, 10)
	}
	if r.HasQueue {
		dst = append(dst, `,"queue":`...)
		dst = appendString(dst, r.Queue)
	}
	if r.HasType {
		dst = append(dst, `,"type":`...)
		dst = appendString(dst, r.Type)
	}
	if r.Payload != nil {
		dst = append(dst, `,"payload":`...)
		dst = append(dst, r.Payload...)
	}
	if r.Traceparent != "" {
		dst = append(dst, `,"traceparent":`...)
		dst = appendString(dst, r.Traceparent)
	}
	if r.MsgID != "" {
		dst = append(dst, `,"msg_id":`...)
		dst = appendString(dst, r.MsgID)
	}
	if r.HasRef {
		dst = append(dst, `,"ref":`...)
		dst = strconv.AppendInt(dst, r.Ref, 10)
	}
	if r.HasSeq {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, r.Seq, 10)
	}
	if r.HasPrefetch {
		dst = append(dst, `,"prefetch":`...)
		dst = strconv.AppendInt(dst, int64(r.Prefetch), 10)
	}
	if r.Reason != "" {
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, r.Reason)
	}
	return append(dst, '}', '\n')
}

// AppendReply appends a reply without error text: {"id":N,"status":S}.
func AppendReply(dst []byte, id int64, status Status) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	dst = append(dst, `,"status":"`...)
	dst = append(dst, status...)
	return append(dst, '"', '}', '\n')
}

// AppendDuplicateReply appends the reply to a publish whose msg_id was
// already accepted on its queue: {"id":N,"status":"accepted","duplicate":true}.
// The publisher may treat it as accepted; the event was not enqueued again.
func AppendDuplicateReply(dst []byte, id int64) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	return append(dst, `,"status":"accepted","duplicate":true}`+"\n"...)
}

// AppendErrorReply appends an error reply. Without an id (the frame's id
// could not be read) the "id" field is omitted.
func AppendErrorReply(dst []byte, id int64, hasID bool, code Code, msg string) []byte {
	dst = append(dst, '{')
	if hasID {
		dst = append(dst, `"id":`...)
		dst = strconv.AppendInt(dst, id, 10)
		dst = append(dst, ',')
	}
	dst = append(dst, `"status":"error","code":"`...)
	dst = append(dst, code...)
	dst = append(dst, `","error":`...)
	dst = appendString(dst, msg)
	return append(dst, '}', '\n')
}

// AppendTooManyConnections appends the one frame a connection over the
// server's connection limit gets: an error without id, since it answers no
// request.
func AppendTooManyConnections(dst []byte, limit int) []byte {
	return AppendErrorReply(dst, 0, false, CodeTooManyConnections, fmt.Sprintf(
		"too many connections: the sidecar serves at most %d at once (max connections); "+
			"this one is closed without reading its requests. Close idle connections or share one, and reconnect with backoff", limit))
}

// AppendStatsReply appends {"id":N,"status":"ok","stats":<stats>}; stats is
// already-encoded JSON.
func AppendStatsReply(dst []byte, id int64, stats []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	dst = append(dst, `,"status":"ok","stats":`...)
	dst = append(dst, stats...)
	return append(dst, '}', '\n')
}

// Deliver is the content of a deliver frame.
type Deliver struct {
	Queue       string
	Seq         uint64
	Type        string
	Payload     json.RawMessage // nil is written as null
	Traceparent string          // omitted when empty
	EnqueuedAt  time.Time
	// Redeliveries counts earlier deliveries; redelivered is Redeliveries > 0.
	Redeliveries int
	// DeadLetter, on an event moved to a dead-letter queue, says where it
	// came from; nil omits the field.
	DeadLetter *DeadLetter
}

// DeadLetter is a deliver frame's "dead_letter" object.
type DeadLetter struct {
	// Queue is the queue the event was published to.
	Queue string
	// Seq is its sequence number there.
	Seq uint64
	// Deliveries counts its deliveries there.
	Deliveries int
	// Reason is the last nack's reason, empty if none was given.
	Reason string
}

// AppendDeliver appends a deliver frame.
func AppendDeliver(dst []byte, d *Deliver) []byte {
	return appendDeliver(dst, d, d.Traceparent)
}

// AppendDeliverTraceparent is AppendDeliver with the traceparent given as
// bytes (d.Traceparent is ignored; empty omits it), so that the server can
// pass a traceparent it formatted without making a string per event.
func AppendDeliverTraceparent(dst []byte, d *Deliver, traceparent []byte) []byte {
	return appendDeliver(dst, d, traceparent)
}

func appendDeliver[T string | []byte](dst []byte, d *Deliver, traceparent T) []byte {
	dst = append(dst, `{"op":"deliver","queue":`...)
	dst = appendString(dst, d.Queue)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, d.Seq, 10)
	dst = append(dst, `,"type":`...)
	dst = appendString(dst, d.Type)
	dst = append(dst, `,"payload":`...)
	if d.Payload == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, d.Payload...)
	}
	if len(traceparent) > 0 {
		// A traceparent is hex and dashes: nothing to escape.
		dst = append(dst, `,"traceparent":"`...)
		dst = append(dst, traceparent...)
		dst = append(dst, '"')
	}
	dst = append(dst, `,"enqueued_at":"`...)
	dst = appendEnqueuedAt(dst, d.EnqueuedAt)
	if d.Redeliveries > 0 {
		dst = append(dst, `","redelivered":true,"redeliveries":`...)
		dst = strconv.AppendInt(dst, int64(d.Redeliveries), 10)
	} else {
		dst = append(dst, `","redelivered":false,"redeliveries":0`...)
	}
	if dl := d.DeadLetter; dl != nil {
		dst = append(dst, `,"dead_letter":{"queue":`...)
		dst = appendString(dst, dl.Queue)
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, dl.Seq, 10)
		dst = append(dst, `,"deliveries":`...)
		dst = strconv.AppendInt(dst, int64(dl.Deliveries), 10)
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, dl.Reason)
		dst = append(dst, '}')
	}
	return append(dst, '}', '\n')
}

// Message is one sidecar-to-client frame: a reply (Op empty) or a delivery
// (Op == OpDeliver).
type Message struct {
	Op Op
	// Reply fields.
	ID     int64
	HasID  bool
	Status Status
	// Duplicate marks an accepted reply to a publish whose msg_id the queue
	// had accepted before.
	Duplicate bool
	Code      Code
	Error     string
	// Stats is the raw stats object of a stats reply (aliases the frame).
	Stats json.RawMessage
	// Deliver fields; Payload aliases the frame.
	Deliver Deliver
}

// ErrMalformedMessage wraps every DecodeMessage error.
var ErrMalformedMessage = errors.New("malformed message from sidecar")

// DecodeMessage parses one sidecar-to-client frame (without its newline).
// Unknown fields are ignored, so that the protocol can grow.
func DecodeMessage(line []byte) (Message, error) {
	return decodeMessage(line, nil)
}

// MessageDecoder decodes sidecar-to-client frames like DecodeMessage but
// reuses the strings it has seen (queue names, event types, statuses),
// saving allocations per delivery. It is not safe for concurrent use.
type MessageDecoder struct {
	strs map[string]string
}

// maxDecoderStrings bounds a MessageDecoder's cache.
const maxDecoderStrings = 1024

// Decode parses one frame (without its newline); see DecodeMessage.
func (d *MessageDecoder) Decode(line []byte) (Message, error) {
	return decodeMessage(line, d)
}

func (d *MessageDecoder) intern(b []byte) string {
	if s, ok := d.strs[string(b)]; ok {
		return s
	}
	s := string(b)
	if d.strs == nil {
		d.strs = make(map[string]string)
	}
	if len(d.strs) < maxDecoderStrings {
		d.strs[s] = s
	}
	return s
}

func decodeMessage(line []byte, in interner) (Message, error) {
	var m Message
	it := newFieldIter(line)
	var err error
	var hasSeq, hasStatus, hasEnq bool
	for it.next() && err == nil {
		v := it.val
		if v[0] == 'n' && !it.keyIs("payload") {
			continue
		}
		switch {
		case it.keyIs("op"):
			var s string
			s, err = it.strInterned("op", in)
			m.Op = Op(s)
		case it.keyIs("id"):
			m.ID, err = parseInt("id", v)
			m.HasID = true
		case it.keyIs("status"):
			var s string
			s, err = it.strInterned("status", in)
			m.Status, hasStatus = Status(s), true
		case it.keyIs("duplicate"):
			m.Duplicate, err = parseBool("duplicate", v)
		case it.keyIs("dead_letter"):
			m.Deliver.DeadLetter, err = decodeDeadLetter(v)
		case it.keyIs("code"):
			var s string
			s, err = it.str("code")
			m.Code = Code(s)
		case it.keyIs("error"):
			m.Error, err = it.str("error")
		case it.keyIs("stats"):
			m.Stats = v
		case it.keyIs("queue"):
			m.Deliver.Queue, err = it.strInterned("queue", in)
		case it.keyIs("seq"):
			m.Deliver.Seq, err = parseUint("seq", v)
			hasSeq = true
		case it.keyIs("type"):
			m.Deliver.Type, err = it.strInterned("type", in)
		case it.keyIs("payload"):
			m.Deliver.Payload = v
		case it.keyIs("traceparent"):
			m.Deliver.Traceparent, err = it.str("traceparent")
		case it.keyIs("enqueued_at"):
			var s string
			if s, err = it.str("enqueued_at"); err == nil {
				m.Deliver.EnqueuedAt, err = parseEnqueuedAt(s)
				hasEnq = true
			}
		case it.keyIs("redeliveries"):
			var n int64
			n, err = parseInt("redeliveries", v)
			m.Deliver.Redeliveries = int(n)
		case it.keyIs("redelivered"):
			if v[0] != 't' && v[0] != 'f' {
				err = fmt.Errorf("field \"redelivered\" must be a boolean, got %s", kindName(v[0]))
			} else if v[0] == 't' && m.Deliver.Redeliveries == 0 {
				// Older senders may carry only the flag.
				m.Deliver.Redeliveries = 1
			}
		}
	}
	if it.err != nil {
		return m, fmt.Errorf("%w: %v", ErrMalformedMessage, it.err)
	}
	if err != nil {
		return m, fmt.Errorf("%w: %v", ErrMalformedMessage, err)
	}
	switch {
	case m.Op == OpDeliver:
		if m.Deliver.Queue == "" || !hasSeq || !hasEnq {
			return m, fmt.Errorf("%w: deliver frame needs queue, seq and enqueued_at", ErrMalformedMessage)
		}
	case m.Op != "":
		return m, fmt.Errorf("%w: unknown op %s", ErrMalformedMessage, Quote(string(m.Op)))
	case !hasStatus:
		return m, fmt.Errorf("%w: reply without status", ErrMalformedMessage)
	}
	return m, nil
}

func parseBool(field string, v []byte) (bool, error) {
	if v[0] != 't' && v[0] != 'f' {
		return false, fmt.Errorf("field %q must be a boolean, got %s", field, kindName(v[0]))
	}
	return v[0] == 't', nil
}

// decodeDeadLetter reads a deliver frame's "dead_letter" object, already
// validated as JSON by the frame's scan. Unknown fields are ignored.
func decodeDeadLetter(v []byte) (*DeadLetter, error) {
	if v[0] != '{' {
		return nil, fmt.Errorf("field \"dead_letter\" must be an object, got %s", kindName(v[0]))
	}
	var dl DeadLetter
	it := newFieldIter(v)
	var err error
	for it.next() && err == nil {
		f := it.val
		if f[0] == 'n' {
			continue
		}
		switch {
		case it.keyIs("queue"):
			dl.Queue, err = it.str("dead_letter.queue")
		case it.keyIs("seq"):
			dl.Seq, err = parseUint("dead_letter.seq", f)
		case it.keyIs("deliveries"):
			var n int64
			n, err = parseInt("dead_letter.deliveries", f)
			dl.Deliveries = int(n)
		case it.keyIs("reason"):
			dl.Reason, err = it.str("dead_letter.reason")
		}
	}
	if it.err != nil {
		return nil, it.err
	}
	if err != nil {
		return nil, err
	}
	return &dl, nil
}

// appendEnqueuedAt formats t like EnqueuedAtLayout, by hand: the generic
// formatter was a visible share of the cost of a delivery.
func appendEnqueuedAt(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, EnqueuedAtLayout)
	}
	dst = appendDigits(dst, year, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(month), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, day, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, hour, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, minute, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, sec, 2)
	dst = append(dst, '.')
	dst = appendDigits(dst, t.Nanosecond(), 9)
	return append(dst, 'Z')
}

func appendDigits(dst []byte, v, width int) []byte {
	var buf [9]byte
	for i := width - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(dst, buf[:width]...)
}

// parseEnqueuedAt reads the sidecar's own layout directly and anything
// else RFC 3339 through the time package.
func parseEnqueuedAt(s string) (time.Time, error) {
	const n = len("2006-01-02T15:04:05.000000000Z")
	if len(s) == n && s[4] == '-' && s[7] == '-' && s[10] == 'T' && s[13] == ':' && s[16] == ':' && s[19] == '.' && s[29] == 'Z' {
		year, ok1 := digits(s[0:4])
		month, ok2 := digits(s[5:7])
		day, ok3 := digits(s[8:10])
		hour, ok4 := digits(s[11:13])
		minute, ok5 := digits(s[14:16])
		sec, ok6 := digits(s[17:19])
		nsec, ok7 := digits(s[20:29])
		if ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && month >= 1 && month <= 12 && day >= 1 && day <= 31 && hour < 24 && minute < 60 && sec < 60 {
			t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
			if t.Day() == day {
				return t, nil
			}
		}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("field \"enqueued_at\": %w", err)
	}
	return t, nil
}

func digits(s string) (int, bool) {
	v := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}
