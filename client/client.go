// Package client talks to an eventbus sidecar over its Unix socket. It
// gives the same outcomes and sentinel errors as the in-process bus, so a
// program can move from bus.Bus to the sidecar by changing a constructor.
//
// A Client is one connection, safe for concurrent use: requests from many
// goroutines are pipelined on it and replies are matched by id.
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// Sentinel errors of the connection itself; the outcomes of publishes use
// the bus package's sentinels (bus.ErrTimeout, bus.ErrUnknownQueue, ...).
var (
	// ErrClosed: Close was called on this client.
	ErrClosed = errors.New("eventbus client closed")
	// ErrConnectionLost: the connection to the sidecar broke (the sidecar
	// stopped or restarted). Dial again to continue.
	ErrConnectionLost = errors.New("connection to the eventbus sidecar lost")
	// ErrOutcomeUnknown: a publish was cancelled but the sidecar did not
	// say within the cancel grace period whether the event got in.
	ErrOutcomeUnknown = errors.New("publish outcome unknown")
)

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
}

// WithLogger sets where the client reports problems that belong to no
// call, such as a refused ack (default: discarded).
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

// Client is one connection to the sidecar.
type Client struct {
	nc   net.Conn
	path string
	opts options
	prop propagation.TraceContext

	mu         sync.Mutex
	nextID     int64
	pending    map[int64]*call
	subs       map[string]*subscription
	err        error // why the connection is unusable; nil while it works
	wbuf       []byte
	spare      []byte
	writerIdle bool

	wake       chan struct{}
	readerDone chan struct{}
	writerDone chan struct{}
	closeOnce  sync.Once
}

type result struct {
	msg transport.Message
	err error
}

type call struct {
	ch chan result
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan result, 1)} }}

// Dial connects to the sidecar's socket.
func Dial(ctx context.Context, socketPath string, opts ...Option) (*Client, error) {
	o := options{logger: slog.New(slog.DiscardHandler), cancelGrace: DefaultCancelGrace}
	for _, opt := range opts {
		opt.apply(&o)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("dial eventbus sidecar at %s: %w", socketPath, err)
	}
	c := &Client{
		nc:         nc,
		path:       socketPath,
		opts:       o,
		pending:    make(map[int64]*call),
		subs:       make(map[string]*subscription),
		writerIdle: true,
		wake:       make(chan struct{}, 1),
		readerDone: make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	go c.readLoop()
	go c.writeLoop()
	return c, nil
}

// Close closes the connection. Calls in progress fail with ErrClosed; the
// sidecar withdraws this connection's waiting publishes and returns its
// unacked deliveries to their queues.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.fail(ErrClosed)
		c.nc.Close()
		<-c.readerDone
		<-c.writerDone
	})
	return nil
}

// fail marks the client unusable and wakes everything waiting on it.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	pending := c.pending
	c.pending = make(map[int64]*call)
	subs := c.subs
	c.subs = make(map[string]*subscription)
	c.mu.Unlock()
	for _, cl := range pending {
		cl.ch <- result{err: err}
	}
	for _, s := range subs {
		s.lost(err)
	}
	c.signalWriter()
}

// send registers cl (when not nil) under a fresh id and queues the request
// frame for the write loop.
func (c *Client) send(r *transport.Request, cl *call) error {
	return c.queue(r, cl, true)
}

// queue is send with control over waking the write loop: a consumer acking
// a burst of deliveries queues its acks and wakes the writer with the last.
func (c *Client) queue(r *transport.Request, cl *call, wakeWriter bool) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if cl != nil {
		c.nextID++
		r.ID, r.HasID = c.nextID, true
		c.pending[r.ID] = cl
	}
	c.wbuf = transport.AppendRequest(c.wbuf, r)
	wake := wakeWriter && c.writerIdle
	if wake {
		c.writerIdle = false
	}
	c.mu.Unlock()
	if wake {
		c.signalWriter()
	}
	return nil
}

func (c *Client) signalWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// forget drops a call whose answer nobody will wait for.
func (c *Client) forget(id int64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *Client) writeLoop() {
	defer close(c.writerDone)
	for {
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		if len(c.wbuf) == 0 {
			c.writerIdle = true
			c.mu.Unlock()
			<-c.wake
			// Let the goroutines that are about to send run first, so
			// that one write carries many frames.
			runtime.Gosched()
			continue
		}
		buf := c.wbuf
		c.wbuf = c.spare[:0]
		c.mu.Unlock()
		_, err := c.nc.Write(buf)
		c.mu.Lock()
		c.spare = buf[:0]
		c.mu.Unlock()
		if err != nil {
			c.fail(fmt.Errorf("%w: write to %s: %v", ErrConnectionLost, c.path, err))
			c.nc.Close()
			return
		}
	}
}

func (c *Client) readLoop() {
	defer close(c.readerDone)
	br := bufio.NewReaderSize(c.nc, 64<<10)
	var dec transport.MessageDecoder
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
			c.fail(fmt.Errorf("%w: %s: %v", ErrConnectionLost, c.path, err))
			return
		}
		m, err := dec.Decode(line[:len(line)-1])
		if err != nil {
			c.fail(fmt.Errorf("%w: %s: %v", ErrConnectionLost, c.path, err))
			c.nc.Close()
			return
		}
		if m.Op == transport.OpDeliver {
			c.dispatch(m)
			continue
		}
		if !m.HasID {
			// An error for a request without id (a refused ack, or a frame
			// the sidecar could not read): nobody waits for it.
			c.opts.logger.Warn("eventbus sidecar reported an error", "code", m.Code, "error", m.Error)
			continue
		}
		c.mu.Lock()
		cl, ok := c.pending[m.ID]
		delete(c.pending, m.ID)
		c.mu.Unlock()
		if ok {
			m.Stats = append(json.RawMessage(nil), m.Stats...)
			cl.ch <- result{msg: m}
		}
	}
}

// roundTrip sends r and waits for its reply or ctx.
func (c *Client) roundTrip(ctx context.Context, r *transport.Request) (transport.Message, error) {
	cl := callPool.Get().(*call)
	if err := c.send(r, cl); err != nil {
		callPool.Put(cl)
		return transport.Message{}, err
	}
	select {
	case res := <-cl.ch:
		callPool.Put(cl)
		return res.msg, res.err
	case <-ctx.Done():
		c.forget(r.ID)
		return transport.Message{}, ctx.Err()
	}
}

// Publish sends ev to queue and waits for the outcome, with the in-process
// bus's semantics: (Accepted, nil), (Dropped, nil), (TimedOut, an error
// wrapping bus.ErrTimeout), (Cancelled, ctx's error), or (Failed, an error
// wrapping bus.ErrUnknownQueue, bus.ErrInvalidEvent or bus.ErrShuttingDown).
// An empty queue lets the sidecar route the event by type.
//
// Cancelling ctx while the publish waits for room withdraws it: the sidecar
// is told to cancel and Publish returns its final answer, which is
// Cancelled unless the event got in first. The trace context in ctx (or
// else ev.Parent) is sent as the event's traceparent.
func (c *Client) Publish(ctx context.Context, ev bus.Event, queue string) (bus.Outcome, error) {
	if err := ctx.Err(); err != nil {
		return bus.Cancelled, err
	}
	r := transport.Request{Op: transport.OpPublish, Type: ev.Type, HasType: true, Payload: ev.Payload}
	if queue != "" {
		r.Queue, r.HasQueue = queue, true
	}
	r.Traceparent = c.traceparent(ctx, ev.Parent)
	cl := callPool.Get().(*call)
	if err := c.send(&r, cl); err != nil {
		callPool.Put(cl)
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
	if err := c.send(&transport.Request{Op: transport.OpCancel, Ref: r.ID, HasRef: true}, absorb); err != nil {
		res := <-cl.ch // fail() answers every pending call
		return publishOutcome(ctx, queue, res)
	}
	t := time.NewTimer(c.opts.cancelGrace)
	defer t.Stop()
	select {
	case res := <-cl.ch:
		callPool.Put(cl)
		return publishOutcome(ctx, queue, res)
	case <-t.C:
		c.forget(r.ID)
		return bus.Failed, fmt.Errorf("publish to %q: no answer %v after cancelling: %w", queue, c.opts.cancelGrace, errors.Join(ErrOutcomeUnknown, ctx.Err()))
	}
}

func publishOutcome(ctx context.Context, queue string, res result) (bus.Outcome, error) {
	if res.err != nil {
		return bus.Failed, res.err
	}
	m := res.msg
	switch m.Status {
	case transport.StatusAccepted:
		return bus.Accepted, nil
	case transport.StatusDropped:
		return bus.Dropped, nil
	case transport.StatusTimeout:
		return bus.TimedOut, fmt.Errorf("publish to %q: %w", queue, bus.ErrTimeout)
	case transport.StatusCancelled:
		err := ctx.Err()
		if err == nil {
			err = context.Canceled
		}
		return bus.Cancelled, fmt.Errorf("publish to %q withdrawn: %w", queue, err)
	case transport.StatusError:
		return bus.Failed, replyError(m)
	default:
		return bus.Failed, fmt.Errorf("%w: unexpected publish status %q", ErrConnectionLost, m.Status)
	}
}

// Error is an error reply from the sidecar. It unwraps to the bus sentinel
// matching its code, so errors.Is(err, bus.ErrUnknownQueue) and the like
// work as with the in-process bus.
type Error struct {
	Code    transport.Code
	Message string
}

// Error returns the sidecar's message, which names the bad value and the valid ones.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the bus sentinel for the error's code, or nil.
func (e *Error) Unwrap() error {
	switch e.Code {
	case transport.CodeUnknownQueue:
		return bus.ErrUnknownQueue
	case transport.CodeShuttingDown:
		return bus.ErrShuttingDown
	case transport.CodeInvalidEvent:
		return bus.ErrInvalidEvent
	case transport.CodeUnknownSeq:
		return bus.ErrUnknownSeq
	}
	return nil
}

func replyError(m transport.Message) error {
	if m.Status != transport.StatusError {
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
		return string(transport.AppendTraceparent(nil, parent))
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
	m, err := c.roundTrip(ctx, &transport.Request{Op: transport.OpStats})
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
	m, err := c.roundTrip(ctx, &transport.Request{Op: transport.OpPing})
	if err != nil {
		return err
	}
	return replyError(m)
}
