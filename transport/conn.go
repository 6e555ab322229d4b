package transport

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

const (
	readBufferSize = 64 << 10
	// maxInternedTypes bounds a connection's cache of event type strings,
	// which saves an allocation per publish for the usual handful of types.
	maxInternedTypes = 256
)

// conn is one client connection, served by one read loop and one write
// loop. The read loop (serve) owns the subscriptions and runs the cleanup;
// the write loop owns the socket's write side; pumps and the bus's answers
// to waiting publishes only append to the output buffer. Whichever loop
// detects the end of the connection records why, once (closeWith).
type conn struct {
	s   *Server
	nc  net.Conn
	log func(msg string, args ...any)

	ctx    context.Context
	cancel context.CancelCauseFunc
	// pubCtx is ctx without its cancellation, for bus.PublishAsync (see
	// cancelAllPublishes).
	pubCtx context.Context

	// Output: producers append frames to obuf; the write loop swaps it out
	// and writes it in one call, so a busy connection batches many frames
	// per write and an idle one writes at once.
	omu        sync.Mutex
	room       *sync.Cond // signalled when output drains or the conn dies
	obuf       []byte
	spare      []byte
	writing    int
	oclosed    bool // no more output will be produced
	dead       bool // output is discarded (write failed or forced close)
	writerIdle bool
	roomWait   int
	wake       chan struct{}
	writerDone chan struct{}
	// reason and closeErr say why the connection ends; the first recorded
	// wins. Under omu, so that a failed write records its reason in the
	// same step that marks the output dead: the read loop, woken by that,
	// must not see a dead connection without its reason.
	reason   CloseReason
	closeErr error

	killOnce sync.Once

	waits     *publishWaits
	pubSeq    uint64   // read loop only: numbers each publish
	spareCall *pubCall // read loop only: reusable after an immediate outcome

	subs     map[string]*subscription // read loop only
	producer sync.WaitGroup           // pumps

	types    map[string]string     // read loop only
	internFn func(b []byte) string // c.intern, bound once
	big      []byte                // read loop only: accumulates long frames
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancelCause(context.Background())
	c := &conn{
		s:          s,
		nc:         nc,
		ctx:        ctx,
		cancel:     cancel,
		pubCtx:     context.WithoutCancel(ctx),
		wake:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),
		waits:      newPublishWaits(),
		subs:       make(map[string]*subscription),
		types:      make(map[string]string),
		writerIdle: true,
	}
	c.room = sync.NewCond(&c.omu)
	c.internFn = c.intern
	c.log = func(msg string, args ...any) { s.log.Debug(msg, args...) }
	return c
}

// serve runs the read loop and, when it ends, closes everything the
// connection owns in order: publishes are withdrawn, subscriptions closed
// (their unacked events return to the queues), queued output flushed.
func (c *conn) serve() {
	go c.writeLoop()
	c.s.log.Debug("connection opened")
	c.readLoop()
	// Withdraw every waiting publish (the bus answers each through its
	// done callback, "cancelled" or "shutting down" by the context's
	// cause); their replies are written before the output closes.
	c.cancel(c.closeCause())
	c.cancelAllPublishes()
	for q, sub := range c.subs {
		sub.stop()
		delete(c.subs, q)
	}
	c.producer.Wait()
	c.waits.waitEmpty()
	c.omu.Lock()
	c.oclosed = true
	c.room.Broadcast()
	c.omu.Unlock()
	c.signalWriter()
	<-c.writerDone
	c.lingerClose()
	reason, err := c.closeState()
	c.logClose(reason, err)
	c.s.forget(c, reason)
}

// logClose writes the one log line of a connection's end: a warning when
// the server cut the client off or the socket failed, debug otherwise.
func (c *conn) logClose(reason CloseReason, err error) {
	switch reason {
	case CloseSlowConsumer:
		c.s.log.Warn("connection closed: slow consumer did not read its output in time", "reason", reason, "write_timeout", c.s.cfg.WriteTimeout)
	case CloseFrameTooLarge:
		c.s.log.Warn("connection closed: frame too large", "reason", reason, "limit", c.s.cfg.MaxFrameBytes)
	case CloseReadError, CloseWriteError:
		c.s.log.Warn("connection closed: socket failed", "reason", reason, "err", err)
	default:
		if err != nil {
			c.s.log.Debug("connection closed", "reason", reason, "err", err)
		} else {
			c.s.log.Debug("connection closed", "reason", reason)
		}
	}
}

var errConnClosed = errors.New("connection closed")

// closeCause is why the connection's context ends: waiting publishes are
// answered "shutting down" when the server is, "cancelled" otherwise.
func (c *conn) closeCause() error {
	if c.s.shutting.Load() {
		return bus.ErrShuttingDown
	}
	return errConnClosed
}

// closeWith records why the connection ends, unless a reason is recorded
// already; err is the failure behind it, if any.
func (c *conn) closeWith(r CloseReason, err error) {
	c.omu.Lock()
	c.closeWithLocked(r, err)
	c.omu.Unlock()
}

func (c *conn) closeWithLocked(r CloseReason, err error) {
	if c.reason == "" {
		c.reason, c.closeErr = r, err
	}
}

func (c *conn) closeState() (CloseReason, error) {
	c.omu.Lock()
	defer c.omu.Unlock()
	if c.reason == "" {
		// Every path that ends the read loop records a reason first; this
		// only keeps a metric label from being empty should one not.
		return CloseReadError, errors.New("connection ended without a recorded reason")
	}
	return c.reason, c.closeErr
}

// lingerTimeout bounds how long a closing connection discards the client's
// unread requests.
const lingerTimeout = 250 * time.Millisecond

// lingerClose closes the connection without losing the replies just
// written: closing a Unix socket with unread input resets the connection,
// and the client then loses what it had not read yet. So the write side is
// shut first and the client's leftover requests are read and discarded
// until it closes too or lingerTimeout passes.
func (c *conn) lingerClose() {
	defer c.nc.Close()
	c.omu.Lock()
	skip := c.dead || c.reason == CloseClientGone
	c.omu.Unlock()
	if skip {
		return
	}
	lingerDiscard(c.nc)
}

// lingerDiscard shuts nc's write side, then reads and discards what the
// client sends until it closes too or lingerTimeout passes. The caller
// closes nc afterwards.
func lingerDiscard(nc net.Conn) {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return
	}
	if err := uc.CloseWrite(); err != nil {
		return
	}
	uc.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, uc) //nolint:errcheck // ends at EOF, error or deadline
}

// kill makes the read loop end soon. With force, pending output is
// discarded and the socket closed at once (a stuck writer is released).
func (c *conn) kill(reason CloseReason, force bool) {
	c.closeWith(reason, nil)
	c.killOnce.Do(func() {
		c.cancel(c.closeCause())
		// The read loop may be held by MaxWaitingPublishes.
		c.waits.stop()
		// An expired read deadline wakes the read loop without closing the
		// socket, so queued replies can still be flushed.
		c.nc.SetReadDeadline(time.Unix(1, 0))
		c.omu.Lock()
		c.room.Broadcast()
		c.omu.Unlock()
	})
	if force {
		c.omu.Lock()
		c.dead = true
		c.obuf = c.obuf[:0]
		c.room.Broadcast()
		c.omu.Unlock()
		c.nc.Close()
	}
}

// readLoop reads and handles frames until the client goes away or the
// connection is killed. The reason is recorded where the end is detected:
// here for a failed read, by the write loop or kill otherwise.
func (c *conn) readLoop() {
	br := bufio.NewReaderSize(c.nc, readBufferSize)
	for {
		// Stop reading while the client does not read its replies, or
		// while too many of its publishes wait for room: both bound what
		// one client can make the server hold.
		if !c.waitRoom(c.ctx) {
			return
		}
		if !c.waits.waitBelow(c.s.cfg.MaxWaitingPublishes) {
			return
		}
		line, err := c.readFrame(br)
		if err != nil {
			c.readFailed(err)
			return
		}
		if protocol.IsBlank(line) {
			continue
		}
		c.handle(line)
	}
}

var errFrameTooLarge = errors.New("frame too large")

// readFailed records why reading stopped.
func (c *conn) readFailed(err error) {
	switch {
	case errors.Is(err, errFrameTooLarge):
		msg := fmt.Sprintf("frame exceeds the limit of %d bytes (max frame bytes); closing the connection", c.s.cfg.MaxFrameBytes)
		c.output(func(b []byte) []byte { return protocol.AppendErrorReply(b, 0, false, protocol.CodeFrameTooLarge, msg) })
		c.closeWith(CloseFrameTooLarge, nil)
	case errors.Is(err, io.EOF):
		c.closeWith(CloseClientGone, nil)
	case errors.Is(err, io.ErrUnexpectedEOF):
		c.closeWith(CloseClientGone, errors.New("client disconnected mid-frame"))
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Only kill expires the read deadline, after recording its reason.
		c.closeWith(CloseShutdown, nil)
	case clientGone(err):
		c.closeWith(CloseClientGone, err)
	default:
		c.closeWith(CloseReadError, err)
	}
}

// clientGone reports whether a socket error means the client closed its
// end (or the connection was closed under us), as opposed to a fault.
func clientGone(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// readFrame returns the next line without its newline (and without a
// trailing CR). The slice is valid until the next call.
func (c *conn) readFrame(br *bufio.Reader) ([]byte, error) {
	limit := c.s.cfg.MaxFrameBytes
	line, err := br.ReadSlice('\n')
	if err == nil {
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) > limit {
			return nil, errFrameTooLarge
		}
		return line, nil
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		if len(line) > 0 && errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	c.big = append(c.big[:0], line...)
	for {
		if len(c.big) > limit+1 {
			return nil, errFrameTooLarge
		}
		line, err = br.ReadSlice('\n')
		c.big = append(c.big, line...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	line = c.big[:len(c.big)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > limit {
		return nil, errFrameTooLarge
	}
	if cap(c.big) > 4*readBufferSize {
		// Do not keep a megabyte per idle connection after one big frame.
		defer func() { c.big = nil }()
		return append([]byte(nil), line...), nil
	}
	return line, nil
}

// handle dispatches one frame. Nothing it does blocks: a publish that has
// to wait for room is left with the bus, which answers it later.
func (c *conn) handle(line []byte) {
	req, err := protocol.DecodeRequestInterned(line, c.internFn)
	if err != nil {
		c.replyErr(req.ID, req.HasID, err)
		return
	}
	switch req.Op {
	case protocol.OpPublish:
		c.publish(&req)
	case protocol.OpCancel:
		c.cancelPublish(req.Ref)
		if req.HasID {
			c.reply(req.ID, protocol.StatusOK)
		}
	case protocol.OpSubscribe:
		c.subscribe(&req)
	case protocol.OpUnsubscribe:
		sub, ok := c.subs[req.Queue]
		if !ok {
			c.replyErr(req.ID, true, &protocol.RequestError{Code: protocol.CodeNotSubscribed, Msg: fmt.Sprintf("unsubscribe: this connection is not subscribed to queue %s", protocol.Quote(req.Queue))})
			return
		}
		sub.stop()
		delete(c.subs, req.Queue)
		c.reply(req.ID, protocol.StatusOK)
	case protocol.OpAck, protocol.OpNack:
		c.settle(&req)
	case protocol.OpStats:
		stats, err := json.Marshal(c.s.bus.Stats())
		if err != nil {
			c.replyErr(req.ID, true, &protocol.RequestError{Code: protocol.CodeInternal, Msg: fmt.Sprintf("stats: %v", err)})
			return
		}
		c.output(func(b []byte) []byte { return protocol.AppendStatsReply(b, req.ID, stats) })
	case protocol.OpPing:
		c.reply(req.ID, protocol.StatusOK)
	}
}

func (c *conn) publish(req *protocol.Request) {
	if c.s.shutting.Load() {
		c.replyShuttingDown(req.ID)
		return
	}
	queue, err := c.s.route(req)
	if err != nil {
		c.replyErr(req.ID, true, err)
		return
	}
	ev := bus.Event{Type: req.Type, MsgID: req.MsgID}
	if req.Payload != nil {
		ev.Payload = append(json.RawMessage(nil), req.Payload...)
	}
	if req.Traceparent != "" {
		sc, err := protocol.ParseTraceparent(req.Traceparent)
		if err != nil {
			c.s.metrics.invalidTraceparent.Add(c.ctx, 1)
			c.log("ignoring invalid traceparent", "id", req.ID, "err", err)
		} else {
			ev.Parent = sc
		}
	}
	if c.ctx.Err() != nil {
		// Read just before the connection was told to stop: withdrawn
		// like the publishes already waiting.
		c.replyCancelled(req.ID)
		return
	}
	call := c.spareCall
	if call == nil {
		call = &pubCall{c: c}
		call.fn = call.done
	}
	c.pubSeq++
	call.n, call.id = c.pubSeq, req.ID
	// The event takes its place in the queue now, in the order the frames
	// were read: accepted, or waiting with its own timeout counted from
	// now, without holding up this connection's other frames.
	p := c.s.bus.PublishAsync(c.pubCtx, ev, queue, call.fn)
	if p == nil {
		// Answered already: the bus is done with call.
		c.spareCall = call
		return
	}
	c.spareCall = nil // the bus calls it later
	c.waits.add(call.n, call.id, p)
}

// pubCall is one publish's done callback. The read loop reuses it after an
// immediate outcome, so that a publish that does not wait allocates no
// callback.
type pubCall struct {
	c  *conn
	n  uint64
	id int64
	fn func(bus.Outcome, error) // call.done, bound once
}

func (call *pubCall) done(outcome bus.Outcome, err error) {
	call.c.publishDone(call.n, call.id, outcome, err)
}

// publishDone answers publish n (request id) once the bus has decided it.
// It may run on the read loop (inside PublishAsync or Cancel) or on a bus
// goroutine (a consumer's Receive, a timer), so it only appends the reply
// and updates the bookkeeping; it never blocks.
func (c *conn) publishDone(n uint64, id int64, outcome bus.Outcome, err error) {
	// The reply goes first: once the last wait is gone, serve closes the
	// output.
	c.replyOutcome(id, outcome, err)
	c.waits.resolve(n, id)
}

// cancelPublish withdraws the waiting publishes with id ref; each is
// answered "cancelled" before this returns. A publish already answered is
// left alone.
func (c *conn) cancelPublish(ref int64) {
	for _, p := range c.waits.withID(ref) {
		p.Cancel()
	}
}

// cancelAllPublishes withdraws every publish of the connection that waits
// for room. Publishes are handed to the bus with a context that never ends
// (pubCtx), which spares the bus a context registration per waiting
// publish; the connection withdraws them itself when it closes. Read loop
// only, after reading has stopped.
func (c *conn) cancelAllPublishes() {
	for _, p := range c.waits.all() {
		p.Cancel()
	}
}

func (c *conn) replyOutcome(id int64, outcome bus.Outcome, err error) {
	switch outcome {
	case bus.Accepted:
		c.reply(id, protocol.StatusAccepted)
	case bus.Duplicate:
		c.output(func(b []byte) []byte { return protocol.AppendDuplicateReply(b, id) })
	case bus.Dropped:
		c.reply(id, protocol.StatusDropped)
	case bus.TimedOut:
		c.reply(id, protocol.StatusTimeout)
	case bus.Cancelled:
		c.replyCancelled(id)
	default:
		if err == nil {
			err = errors.New("publish failed")
		}
		c.replyErr(id, true, busError("publish", err))
	}
}

// replyCancelled answers a withdrawn publish: "cancelled" when the client
// asked for it (or went away), "shutting down" when the server did.
func (c *conn) replyCancelled(id int64) {
	if errors.Is(context.Cause(c.ctx), bus.ErrShuttingDown) {
		c.replyShuttingDown(id)
		return
	}
	c.reply(id, protocol.StatusCancelled)
}

// intern returns b as a string, reusing the queue names and the
// connection's recent event types. Read loop only.
func (c *conn) intern(b []byte) string {
	for _, q := range c.s.queues {
		if q == string(b) {
			return q
		}
	}
	if s, ok := c.types[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(c.types) < maxInternedTypes {
		c.types[s] = s
	}
	return s
}

func (c *conn) subscribe(req *protocol.Request) {
	if _, ok := c.subs[req.Queue]; ok {
		c.replyErr(req.ID, true, &protocol.RequestError{Code: protocol.CodeAlreadySubscribed, Msg: fmt.Sprintf("subscribe: this connection is already subscribed to queue %s; raise prefetch instead or use another connection", protocol.Quote(req.Queue))})
		return
	}
	if !slices.Contains(c.s.queues, req.Queue) {
		// Checked here rather than left to the bus so that the message is
		// worded as for a publish.
		c.replyErr(req.ID, true, c.s.unknownQueue(req.Queue))
		return
	}
	prefetch := 1
	if req.HasPrefetch {
		prefetch = req.Prefetch
	}
	cons, err := c.s.bus.Subscribe(req.Queue, prefetch)
	if err != nil {
		c.replyErr(req.ID, true, busError("subscribe", err))
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	sub := &subscription{c: c, queue: req.Queue, cons: cons, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	c.subs[req.Queue] = sub
	// The reply goes out before the pump starts, so it precedes every
	// delivery of this subscription on the wire.
	c.reply(req.ID, protocol.StatusOK)
	c.producer.Add(1)
	go sub.pump()
}

func (c *conn) settle(req *protocol.Request) {
	var sub *subscription
	switch {
	case req.HasQueue:
		sub = c.subs[req.Queue]
		if sub == nil {
			c.replyErrMaybe(req, &protocol.RequestError{Code: protocol.CodeNotSubscribed, Msg: fmt.Sprintf("%s %d: this connection is not subscribed to queue %s", req.Op, req.Seq, protocol.Quote(req.Queue))})
			return
		}
	case len(c.subs) == 1:
		for _, s := range c.subs {
			sub = s
		}
	case len(c.subs) == 0:
		c.replyErrMaybe(req, &protocol.RequestError{Code: protocol.CodeNotSubscribed, Msg: fmt.Sprintf("%s %d: this connection has no subscription", req.Op, req.Seq)})
		return
	default:
		names := make([]string, 0, len(c.subs))
		for q := range c.subs {
			names = append(names, q)
		}
		sort.Strings(names)
		c.replyErrMaybe(req, &protocol.RequestError{Code: protocol.CodeBadRequest, Msg: fmt.Sprintf("%s %d: this connection subscribes to several queues (%s); name one in field \"queue\"", req.Op, req.Seq, strings.Join(names, ", "))})
		return
	}
	var err error
	if req.Op == protocol.OpAck {
		err = sub.cons.Ack(req.Seq)
	} else {
		err = sub.cons.NackReason(req.Seq, protocol.ClipNackReason(req.Reason))
	}
	if err != nil {
		c.replyErrMaybe(req, busError(fmt.Sprintf("%s %d on queue %q", req.Op, req.Seq, sub.queue), err))
		return
	}
	if req.HasID {
		c.reply(req.ID, protocol.StatusOK)
	}
}

// replyErrMaybe answers a failed ack/nack: with its id when it had one,
// otherwise with an id-less error so that the mistake is still visible.
func (c *conn) replyErrMaybe(req *protocol.Request, err error) {
	c.replyErr(req.ID, req.HasID, err)
}

// busError maps a bus error to a coded reply error.
func busError(what string, err error) *protocol.RequestError {
	code := protocol.CodeInternal
	switch {
	case errors.Is(err, bus.ErrUnknownQueue):
		code = protocol.CodeUnknownQueue
	case errors.Is(err, bus.ErrShuttingDown):
		return &protocol.RequestError{Code: protocol.CodeShuttingDown, Msg: "shutting down"}
	case errors.Is(err, bus.ErrInvalidEvent), errors.Is(err, bus.ErrInvalidConfig):
		code = protocol.CodeInvalidEvent
		if errors.Is(err, bus.ErrInvalidConfig) {
			code = protocol.CodeBadRequest
		}
	case errors.Is(err, bus.ErrUnknownSeq):
		code = protocol.CodeUnknownSeq
	case errors.Is(err, bus.ErrStorage):
		code = protocol.CodeStorageError
	}
	return &protocol.RequestError{Code: code, Msg: fmt.Sprintf("%s: %v", what, err)}
}

func (c *conn) reply(id int64, st protocol.Status) {
	c.output(func(b []byte) []byte { return protocol.AppendReply(b, id, st) })
}

func (c *conn) replyShuttingDown(id int64) {
	c.output(func(b []byte) []byte {
		return protocol.AppendErrorReply(b, id, true, protocol.CodeShuttingDown, "shutting down")
	})
}

func (c *conn) replyErr(id int64, hasID bool, err error) {
	var re *protocol.RequestError
	if !errors.As(err, &re) {
		re = &protocol.RequestError{Code: protocol.CodeInternal, Msg: err.Error()}
	}
	c.output(func(b []byte) []byte { return protocol.AppendErrorReply(b, id, hasID, re.Code, re.Msg) })
}

// output appends one frame to the connection's output and wakes the write
// loop if it is idle. It never blocks on the client: callers that produce
// unbounded output wait for room first (waitRoom).
func (c *conn) output(appendFrame func([]byte) []byte) {
	c.omu.Lock()
	if c.dead || c.oclosed {
		c.omu.Unlock()
		return
	}
	c.obuf = appendFrame(c.obuf)
	wake := c.writerIdle
	c.writerIdle = false
	c.omu.Unlock()
	if wake {
		c.signalWriter()
	}
}

func (c *conn) signalWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// waitRoom blocks while the connection's queued output is over its bound.
// It returns false when the connection is going away or ctx (the
// connection's or a subscription's) ends.
func (c *conn) waitRoom(ctx context.Context) bool {
	c.omu.Lock()
	defer c.omu.Unlock()
	for len(c.obuf)+c.writing >= c.s.cfg.MaxOutputBytes {
		if c.dead || c.oclosed || ctx.Err() != nil {
			return false
		}
		c.roomWait++
		c.room.Wait()
		c.roomWait--
	}
	return !c.dead && ctx.Err() == nil
}

// writeLoop writes queued output until the connection is closed and its
// output flushed, or a write fails or stays stuck past the write timeout.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	for {
		c.omu.Lock()
		if len(c.obuf) == 0 || c.dead {
			if c.oclosed || c.dead {
				c.omu.Unlock()
				return
			}
			c.writerIdle = true
			c.omu.Unlock()
			<-c.wake
			continue
		}
		buf := c.obuf
		c.obuf = c.spare[:0]
		c.writing = len(buf)
		c.omu.Unlock()

		c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
		_, err := c.nc.Write(buf)

		var reason CloseReason
		if err != nil {
			reason = writeFailure(err)
		}
		c.omu.Lock()
		c.writing = 0
		c.spare = buf[:0]
		if c.roomWait > 0 {
			c.room.Broadcast()
		}
		if err != nil {
			// Dead and why, in one step: see conn.reason.
			c.closeWithLocked(reason, err)
			c.dead = true
			c.obuf = c.obuf[:0]
			c.room.Broadcast()
		}
		c.omu.Unlock()
		if err != nil {
			c.kill(reason, false)
			return
		}
	}
}

// writeFailure classifies a failed write: a write stuck past the write
// timeout is a slow consumer, a closed peer is the client going away.
func writeFailure(err error) CloseReason {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return CloseSlowConsumer
	case clientGone(err):
		return CloseClientGone
	default:
		return CloseWriteError
	}
}

// subscription pumps one consumer's deliveries into the connection's
// output.
type subscription struct {
	c      *conn
	queue  string
	cons   *bus.Consumer
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *subscription) pump() {
	defer s.c.producer.Done()
	defer close(s.done)
	c := s.c
	var tp []byte
	for {
		if !c.waitRoom(s.ctx) {
			return
		}
		d, err := s.cons.Receive(s.ctx)
		if err != nil {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, bus.ErrConsumerClosed) && !errors.Is(err, bus.ErrShuttingDown) {
				c.s.log.Warn("subscription stopped", "queue", s.queue, "err", err)
			}
			return
		}
		f := protocol.Deliver{
			Queue:        d.Queue,
			Seq:          d.Seq,
			Type:         d.Event.Type,
			Payload:      d.Event.Payload,
			EnqueuedAt:   d.EnqueuedAt,
			Redeliveries: d.Redeliveries,
		}
		if dl := d.DeadLetter; dl != nil {
			f.DeadLetter = &protocol.DeadLetter{Queue: dl.Queue, Seq: dl.Seq, Deliveries: dl.Deliveries, Reason: dl.Reason}
		}
		tp = tp[:0]
		if d.SpanContext.IsValid() {
			tp = protocol.AppendTraceparent(tp, d.SpanContext)
		}
		c.output(func(b []byte) []byte { return protocol.AppendDeliverTraceparent(b, &f, tp) })
	}
}

// stop ends the pump and closes the consumer, which returns its unacked
// events to the queue head. Read loop only.
func (s *subscription) stop() {
	s.cancel()
	s.c.omu.Lock()
	s.c.room.Broadcast()
	s.c.omu.Unlock()
	<-s.done
	s.cons.Close()
}
