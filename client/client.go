// Package client talks to an eventbus sidecar over its Unix socket. It
// gives the same outcomes and sentinel errors as the in-process bus, so a
// program can move from bus.Bus to the sidecar by changing a constructor.
//
// A Client is one connection at a time, safe for concurrent use: requests
// from many goroutines are pipelined on it and replies are matched by id.
// By default a lost connection leaves the client unusable; WithReconnect
// makes it redial by itself and resume its subscriptions.
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// Sentinel errors of the connection itself; the outcomes of publishes use
// the bus package's sentinels (bus.ErrTimeout, bus.ErrUnknownQueue, ...).
var (
	// ErrClosed: Close was called on this client.
	ErrClosed = errors.New("eventbus client closed")
	// ErrConnectionLost: the connection to the sidecar broke (the sidecar
	// stopped, restarted or closed it) before the call got its answer, so
	// the call's outcome is unknown: a publish may or may not have been
	// enqueued. Without WithReconnect the client stays unusable and later
	// calls fail with it too (Dial again to continue); with it, later calls
	// wait for the new connection.
	ErrConnectionLost = errors.New("connection to the eventbus sidecar lost")
	// ErrOutcomeUnknown: a publish was cancelled but the sidecar did not
	// say within the cancel grace period whether the event got in.
	ErrOutcomeUnknown = errors.New("publish outcome unknown")
	// ErrTooManyConnections: the sidecar serves its max_connections
	// already and turned this connection away unread. Dial fails with it;
	// with WithReconnect, such an attempt counts as failed and is retried.
	ErrTooManyConnections = errors.New("eventbus sidecar refused the connection: too many connections")
	// ErrPermissionDenied: the sidecar's allowed_uids and allowed_gids do
	// not admit this process; it sent permission_denied naming the uid and
	// closed the connection. Retrying does not help.
	ErrPermissionDenied = errors.New("eventbus sidecar refused the connection: permission denied")
)

// PublishLostError is Publish's error when the connection broke before the
// sidecar answered: the event may or may not be in the queue. MsgID is the
// msg_id the publish was sent with (the caller's, or the one the client
// made), so publishing the event again with ev.MsgID = MsgID cannot place
// it twice while the sidecar remembers it (it answers Duplicate). It wraps
// ErrConnectionLost.
type PublishLostError struct {
	MsgID string
	Err   error
}

func (e *PublishLostError) Error() string {
	return fmt.Sprintf("%v; publishing again with msg_id %q cannot place it twice", e.Err, e.MsgID)
}

func (e *PublishLostError) Unwrap() error { return e.Err }

// DefaultCancelGrace is how long a cancelled Publish waits for the
// sidecar's final answer (cancelled, or accepted if the event got in first).
const DefaultCancelGrace = 5 * time.Second

// Option configures a Client. It is sealed: only this package creates options.
type Option interface {
	apply(*options)
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	logger      *slog.Logger
	cancelGrace time.Duration
	backoff     *Backoff // nil: a lost connection is not replaced
}

// WithLogger sets where the client reports problems that belong to no
// call, such as a refused ack, and the connection's state changes under
// WithReconnect (default: discarded).
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) {
		if l != nil {
			o.logger = l
		}
	})
}

// WithCancelGrace sets how long a cancelled Publish waits for the
// sidecar's final answer (default DefaultCancelGrace).
func WithCancelGrace(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d > 0 {
			o.cancelGrace = d
		}
	})
}

// Client is a connection to the sidecar; with WithReconnect, the
// connections one after the other.
type Client struct {
	path string
	opts options
	prop propagation.TraceContext

	// ctx ends when Close is called; it stops the redialling.
	ctx    context.Context
	cancel context.CancelFunc
	// wg owns every goroutine of the client: each connection's reader and
	// writer and the reconnect loop. Add only under mu while err is nil, so
	// that Close's Wait sees them all.
	wg sync.WaitGroup

	mu        sync.Mutex
	nextID    int64
	cn        *conn           // the working connection; nil while there is none
	err       error           // why the client is unusable for good; nil while it is not
	lost      error           // while reconnecting: what broke the last connection
	dialErr   error           // while reconnecting: why the last attempt failed
	greeting  net.Conn        // while reconnecting: the new connection being checked
	ready     chan struct{}   // while reconnecting: closed when that ends, by a new connection or Close
	consumers map[string]bool // queues with a Subscribe running
	closeOnce sync.Once

	// msgPrefix and msgSeq make the msg_id of each publish that has none:
	// unique per client (a random 64-bit prefix) and cheap (a counter).
	msgPrefix string
	msgSeq    atomic.Uint64
}

// conn is one connection to the sidecar. Its fields are guarded by the
// client's mu; what was queued on it or awaits an answer from it dies
// with it, so that an ack is never sent on a connection that did not
// deliver the event.
type conn struct {
	nc         net.Conn
	pending    map[int64]*call
	subs       map[string]*subscription
	err        error // why it broke; nil while it works
	wbuf       []byte
	spare      []byte
	writerIdle bool
	wake       chan struct{}
}

type result struct {
	msg protocol.Message
	err error
}

type call struct {
	ch chan result
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan result, 1)} }}

// Dial connects to the sidecar's socket and checks with a ping that the
// sidecar serves the connection. It fails when the sidecar cannot be
// reached now or refuses the connection (an error wrapping
// ErrTooManyConnections at its connection limit, ErrPermissionDenied when
// its allowlist does not admit this process), even with WithReconnect,
// which replaces a connection only once there has been one.
func Dial(ctx context.Context, socketPath string, opts ...Option) (*Client, error) {
	o := options{logger: slog.New(slog.DiscardHandler), cancelGrace: DefaultCancelGrace}
	for _, opt := range opts {
		opt.apply(&o)
	}
	if o.backoff != nil {
		b, err := o.backoff.withDefaults()
		if err != nil {
			return nil, fmt.Errorf("dial eventbus sidecar at %s: %w", socketPath, err)
		}
		o.backoff = &b
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("dial eventbus sidecar at %s: %w", socketPath, err)
	}
	c := &Client{path: socketPath, opts: o, consumers: make(map[string]bool), msgPrefix: strconv.FormatUint(rand.Uint64()|1<<63, 16) + "-"}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	// The ping's read honours ctx: its deadline, and cancellation, which
	// moves the deadline to now.
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	br, err := c.greet(nc)
	if !stop() || err != nil {
		c.cancel()
		nc.Close()
		if err == nil || ctx.Err() != nil {
			err = errors.Join(ctx.Err(), err)
		}
		return nil, fmt.Errorf("dial eventbus sidecar at %s: %w", socketPath, err)
	}
	_ = nc.SetDeadline(time.Time{})
	c.install(nc, br)
	return c, nil
}

// readBufferSize holds many replies, so that one read serves many calls.
const readBufferSize = 64 << 10

// install makes nc the client's connection and starts its reader (on br,
// which reads nc) and writer, unless the client was closed meanwhile.
func (c *Client) install(nc net.Conn, br *bufio.Reader) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		nc.Close()
		return false
	}
	cn := &conn{
		nc:         nc,
		pending:    make(map[int64]*call),
		subs:       make(map[string]*subscription),
		writerIdle: true,
		wake:       make(chan struct{}, 1),
	}
	c.cn, c.lost, c.dialErr = cn, nil, nil
	if c.ready != nil {
		close(c.ready)
		c.ready = nil
	}
	c.wg.Go(func() { c.readLoop(cn, br) })
	c.wg.Go(func() { c.writeLoop(cn) })
	return true
}

// Close closes the connection and stops any reconnecting. Calls in
// progress, and calls waiting for a new connection, fail with ErrClosed;
// the sidecar withdraws this connection's waiting publishes and returns
// its unacked deliveries to their queues. Close returns once every
// goroutine of the client has stopped.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		if c.err == nil {
			c.err = ErrClosed
		}
		cn, greeting := c.cn, c.greeting
		if c.ready != nil {
			close(c.ready)
			c.ready = nil
		}
		c.mu.Unlock()
		c.cancel()
		if greeting != nil {
			greeting.Close()
		}
		if cn != nil {
			c.lose(cn, ErrClosed)
		}
		c.wg.Wait()
	})
	return nil
}

// lose tears cn down after err broke it: the calls waiting for its answers
// fail with err and its subscriptions end. If cn was the client's
// connection, the client is then unusable for good or, with WithReconnect
// and unless it is closing, starts reconnecting. Only the first call for a
// connection counts.
func (c *Client) lose(cn *conn, err error) {
	c.mu.Lock()
	if cn.err != nil {
		c.mu.Unlock()
		return
	}
	cn.err = err
	pending, subs := cn.pending, cn.subs
	cn.pending, cn.subs = nil, nil
	if c.cn == cn {
		c.cn = nil
		switch {
		case c.err != nil: // closing
		case c.opts.backoff == nil:
			c.err = err
		default:
			c.lost = err
			c.ready = make(chan struct{})
			since := time.Now()
			c.wg.Go(func() { c.reconnect(since, err) })
		}
	}
	c.mu.Unlock()
	cn.nc.Close()
	for _, cl := range pending {
		cl.ch <- result{err: err}
	}
	for _, s := range subs {
		s.lost(err)
	}
	signalWriter(cn) // it sees cn.err and stops
}

// send registers cl (when not nil) under a fresh id and queues the request
// frame on the client's connection, waiting for the reconnection under way
// until ctx ends. With s, it also routes the connection's deliveries of
// s.queue to s. It returns the connection the request went on.
func (c *Client) send(ctx context.Context, r *protocol.Request, cl *call, s *subscription) (*conn, error) {
	for {
		c.mu.Lock()
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return nil, err
		}
		if cn := c.cn; cn != nil {
			wake := c.appendLocked(cn, r, cl, true)
			if s != nil {
				cn.subs[s.queue] = s
			}
			c.mu.Unlock()
			if wake {
				signalWriter(cn)
			}
			return cn, nil
		}
		ready, lost, dialErr := c.ready, c.lost, c.dialErr
		c.mu.Unlock()
		select {
		case <-ready:
		case <-ctx.Done():
			// Not ErrConnectionLost: this request was never sent.
			why := fmt.Sprintf("lost: %v", lost)
			if dialErr != nil {
				why += fmt.Sprintf("; last attempt: %v", dialErr)
			}
			return nil, fmt.Errorf("still reconnecting to the eventbus sidecar at %s (%s): %w", c.path, why, ctx.Err())
		}
	}
}

// sendOn queues the request on cn only, for requests that mean nothing on
// another connection (acks, cancels, unsubscribes). A consumer acking a
// burst of deliveries wakes the writer only with the last.
func (c *Client) sendOn(cn *conn, r *protocol.Request, cl *call, wakeWriter bool) error {
	c.mu.Lock()
	if cn.err != nil {
		err := cn.err
		c.mu.Unlock()
		return err
	}
	wake := c.appendLocked(cn, r, cl, wakeWriter)
	c.mu.Unlock()
	if wake {
		signalWriter(cn)
	}
	return nil
}

// appendLocked registers cl and appends r to cn's write buffer, and says
// whether the caller must wake the writer. c.mu is held.
func (c *Client) appendLocked(cn *conn, r *protocol.Request, cl *call, wakeWriter bool) bool {
	if cl != nil {
		c.nextID++
		r.ID, r.HasID = c.nextID, true
		cn.pending[r.ID] = cl
	}
	cn.wbuf = protocol.AppendRequest(cn.wbuf, r)
	wake := wakeWriter && cn.writerIdle
	if wake {
		cn.writerIdle = false
	}
	return wake
}

func signalWriter(cn *conn) {
	select {
	case cn.wake <- struct{}{}:
	default:
	}
}

// forget drops a call whose answer nobody will wait for.
func (c *Client) forget(cn *conn, id int64) {
	c.mu.Lock()
	delete(cn.pending, id)
	c.mu.Unlock()
}

func (c *Client) writeLoop(cn *conn) {
	for {
		c.mu.Lock()
		if cn.err != nil {
			c.mu.Unlock()
			return
		}
		if len(cn.wbuf) == 0 {
			cn.writerIdle = true
			c.mu.Unlock()
			<-cn.wake
			// Let the goroutines that are about to send run first, so
			// that one write carries many frames.
			runtime.Gosched()
			continue
		}
		buf := cn.wbuf
		cn.wbuf = cn.spare[:0]
		c.mu.Unlock()
		_, err := cn.nc.Write(buf)
		c.mu.Lock()
		cn.spare = buf[:0]
		c.mu.Unlock()
		if err != nil {
			c.lose(cn, fmt.Errorf("%w: write to %s: %v", ErrConnectionLost, c.path, err))
			return
		}
	}
}

func (c *Client) readLoop(cn *conn, br *bufio.Reader) {
	var dec protocol.MessageDecoder
	var long []byte
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the sidecar closed the connection")
			}
			c.lose(cn, fmt.Errorf("%w: %s: %v", ErrConnectionLost, c.path, err))
			return
		}
		m, err := dec.Decode(line[:len(line)-1])
		if err != nil {
			c.lose(cn, fmt.Errorf("%w: %s: %v", ErrConnectionLost, c.path, err))
			return
		}
		if m.Op == protocol.OpDeliver {
			c.dispatch(cn, m)
			continue
		}
		if !m.HasID {
			// An error for a request without id (a refused ack, or a frame
			// the sidecar could not read): nobody waits for it.
			c.opts.logger.Warn("eventbus sidecar reported an error", "code", m.Code, "error", m.Error)
			continue
		}
		c.mu.Lock()
		cl, ok := cn.pending[m.ID]
		delete(cn.pending, m.ID)
		c.mu.Unlock()
		if ok {
			m.Stats = append(json.RawMessage(nil), m.Stats...)
			cl.ch <- result{msg: m}
		}
	}
}

// roundTrip sends r and waits for its reply or ctx.
func (c *Client) roundTrip(ctx context.Context, r *protocol.Request) (protocol.Message, error) {
	cl := callPool.Get().(*call)
	cn, err := c.send(ctx, r, cl, nil)
	if err != nil {
		callPool.Put(cl)
		return protocol.Message{}, err
	}
	select {
	case res := <-cl.ch:
		callPool.Put(cl)
		return res.msg, res.err
	case <-ctx.Done():
		c.forget(cn, r.ID)
		return protocol.Message{}, ctx.Err()
	}
}

// Publish sends ev to queue and waits for the outcome, with the in-process
// bus's semantics: (Accepted, nil), (Duplicate, nil), (Dropped, nil),
// (TimedOut, an error wrapping bus.ErrTimeout), (Cancelled, ctx's error),
// or (Failed, an error wrapping bus.ErrUnknownQueue, bus.ErrInvalidEvent,
// bus.ErrShuttingDown or bus.ErrStorage). An empty queue lets the sidecar
// route the event by type.
//
// Every publish carries a msg_id: ev.MsgID if set (at most
// protocol.MaxMsgIDBytes), else one the client makes, unique to this
// publish. Duplicate means the queue had already accepted that msg_id
// within its dedupe window and did not enqueue the event again; for the
// publisher it means accepted.
//
// Cancelling ctx while the publish waits for room withdraws it: the sidecar
// is told to cancel and Publish returns its final answer, which is
// Cancelled unless the event got in first. The trace context in ctx (or
// else ev.Parent) is sent as the event's traceparent.
//
// If the connection breaks before the answer, the event may or may not be
// in the queue. Without WithReconnect, Publish then returns Failed with a
// *PublishLostError (wrapping ErrConnectionLost) or an error wrapping
// ErrClosed; to retry without placing the event twice, publish it again
// with the error's MsgID (on a new client, from Dial). Under
// WithReconnect, Publish does that itself: it waits for the new connection
// and sends the event again with the same msg_id, until it has an answer
// or ctx ends, so that a reconnecting client never places an order twice
// (an event that got in before the loss is answered Duplicate). A Publish
// made while the client reconnects waits for the new connection; if ctx
// ends first it returns Cancelled, and the event was not sent then.
func (c *Client) Publish(ctx context.Context, ev bus.Event, queue string) (bus.Outcome, error) {
	if err := ctx.Err(); err != nil {
		return bus.Cancelled, err
	}
	if n := len(ev.MsgID); n > protocol.MaxMsgIDBytes {
		return bus.Failed, fmt.Errorf("publish to %q: msg_id is %d bytes long; at most %d bytes are allowed: %w", queue, n, protocol.MaxMsgIDBytes, bus.ErrInvalidEvent)
	}
	r := protocol.Request{Op: protocol.OpPublish, Type: ev.Type, HasType: true, Payload: ev.Payload, MsgID: ev.MsgID}
	if r.MsgID == "" {
		r.MsgID = c.newMsgID()
	}
	if queue != "" {
		r.Queue, r.HasQueue = queue, true
	}
	r.Traceparent = c.traceparent(ctx, ev.Parent)
	for {
		out, err := c.publishOnce(ctx, &r, queue)
		if !errors.Is(err, ErrConnectionLost) {
			return out, err
		}
		if c.opts.backoff == nil || ctx.Err() != nil {
			return out, &PublishLostError{MsgID: r.MsgID, Err: err}
		}
		c.opts.logger.Debug("retrying a publish lost with the connection", "queue", queue, "msg_id", r.MsgID)
	}
}

// newMsgID makes a msg_id no other publish of this client has.
func (c *Client) newMsgID() string {
	var buf [40]byte
	b := append(buf[:0], c.msgPrefix...)
	return string(strconv.AppendUint(b, c.msgSeq.Add(1), 10))
}

// publishOnce sends r once, on the connection there is or the next one,
// and waits for its outcome.
func (c *Client) publishOnce(ctx context.Context, r *protocol.Request, queue string) (bus.Outcome, error) {
	cl := callPool.Get().(*call)
	cn, err := c.send(ctx, r, cl, nil)
	if err != nil {
		callPool.Put(cl)
		if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
			return bus.Cancelled, fmt.Errorf("publish to %q not sent: %w", queue, err)
		}
		return bus.Failed, err
	}
	select {
	case res := <-cl.ch:
		callPool.Put(cl)
		return publishOutcome(ctx, queue, res)
	case <-ctx.Done():
	}
	// Withdraw the publish, then wait for its own reply: that, not the
	// cancel's, says whether the event got in.
	// The cancel's own "ok" is not waited for; its call just absorbs it.
	absorb := &call{ch: make(chan result, 1)}
	if err := c.sendOn(cn, &protocol.Request{Op: protocol.OpCancel, Ref: r.ID, HasRef: true}, absorb, true); err != nil {
		res := <-cl.ch // lose() answers every pending call of cn
		return publishOutcome(ctx, queue, res)
	}
	t := time.NewTimer(c.opts.cancelGrace)
	defer t.Stop()
	select {
	case res := <-cl.ch:
		callPool.Put(cl)
		return publishOutcome(ctx, queue, res)
	case <-t.C:
		c.forget(cn, r.ID)
		return bus.Failed, fmt.Errorf("publish to %q: no answer %v after cancelling: %w", queue, c.opts.cancelGrace, errors.Join(ErrOutcomeUnknown, ctx.Err()))
	}
}

func publishOutcome(ctx context.Context, queue string, res result) (bus.Outcome, error) {
	if res.err != nil {
		return bus.Failed, fmt.Errorf("publish to %q: no answer, the event may or may not be in the queue: %w", queue, res.err)
	}
	m := res.msg
	switch m.Status {
	case protocol.StatusAccepted:
		if m.Duplicate {
			return bus.Duplicate, nil
		}
		return bus.Accepted, nil
	case protocol.StatusDropped:
		return bus.Dropped, nil
	case protocol.StatusTimeout:
		return bus.TimedOut, fmt.Errorf("publish to %q: %w", queue, bus.ErrTimeout)
	case protocol.StatusCancelled:
		err := ctx.Err()
		if err == nil {
			err = context.Canceled
		}
		return bus.Cancelled, fmt.Errorf("publish to %q withdrawn: %w", queue, err)
	case protocol.StatusError:
		return bus.Failed, replyError(m)
	default:
		return bus.Failed, fmt.Errorf("%w: unexpected publish status %q", ErrConnectionLost, m.Status)
	}
}

// Error is an error reply from the sidecar. It unwraps to the bus sentinel
// matching its code, so errors.Is(err, bus.ErrUnknownQueue) and the like
// work as with the in-process bus.
type Error struct {
	Code    protocol.Code
	Message string
}

// Error returns the sidecar's message, which names the bad value and the valid ones.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the bus sentinel for the error's code, or nil.
func (e *Error) Unwrap() error {
	switch e.Code {
	case protocol.CodeUnknownQueue:
		return bus.ErrUnknownQueue
	case protocol.CodeShuttingDown:
		return bus.ErrShuttingDown
	case protocol.CodeInvalidEvent:
		return bus.ErrInvalidEvent
	case protocol.CodeUnknownSeq:
		return bus.ErrUnknownSeq
	case protocol.CodeTooManyConnections:
		return ErrTooManyConnections
	case protocol.CodePermissionDenied:
		return ErrPermissionDenied
	case protocol.CodeStorageError:
		return bus.ErrStorage
	}
	return nil
}

func replyError(m protocol.Message) error {
	if m.Status != protocol.StatusError {
		return nil
	}
	return &Error{Code: m.Code, Message: m.Error}
}

// traceparent returns the W3C traceparent for ctx's span, or for parent
// when ctx carries none, or "".
func (c *Client) traceparent(ctx context.Context, parent trace.SpanContext) string {
	if trace.SpanContextFromContext(ctx).IsValid() {
		var carrier tpCarrier
		c.prop.Inject(ctx, &carrier)
		return carrier.traceparent
	}
	if parent.IsValid() {
		return string(protocol.AppendTraceparent(nil, parent))
	}
	return ""
}

// tpCarrier keeps only the traceparent header the propagator writes.
type tpCarrier struct{ traceparent string }

func (t *tpCarrier) Get(key string) string {
	if key == "traceparent" {
		return t.traceparent
	}
	return ""
}

func (t *tpCarrier) Set(key, value string) {
	if key == "traceparent" {
		t.traceparent = value
	}
}

func (t *tpCarrier) Keys() []string { return []string{"traceparent"} }

// Stats returns the sidecar's per-queue statistics.
func (c *Client) Stats(ctx context.Context) (bus.Stats, error) {
	m, err := c.roundTrip(ctx, &protocol.Request{Op: protocol.OpStats})
	if err != nil {
		return nil, err
	}
	if err := replyError(m); err != nil {
		return nil, err
	}
	var st bus.Stats
	if err := json.Unmarshal(m.Stats, &st); err != nil {
		return nil, fmt.Errorf("decode stats from the sidecar: %w", err)
	}
	return st, nil
}

// Ping checks that the sidecar answers.
func (c *Client) Ping(ctx context.Context) error {
	m, err := c.roundTrip(ctx, &protocol.Request{Op: protocol.OpPing})
	if err != nil {
		return err
	}
	return replyError(m)
}
