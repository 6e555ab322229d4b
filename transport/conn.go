package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

const (
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
	raw syscall.RawConn // nc's, for appendOutput's own writes; nil when nc has none
	// rawBuf and rawWritten are tryWrite's, bound once in rawWriteFn so
	// that an inline write allocates nothing. Only the goroutine that set
	// inline uses them.
	rawBuf     []byte
	rawWritten int
	rawWriteFn func(fd uintptr) bool
	logger     *slog.Logger // the server's, with the peer's uid and pid
	log        func(msg string, args ...any)
	// fd is nc's descriptor (-1: none), for the server to see whether the
	// client has closed while the read loop is busy or parked.
	fd int32
	// counted says the connection counts against MaxConnections. Under
	// the server's mu.
	counted bool

	// held is what the budget accounts to this connection: its read
	// buffer, its output, its waiting publishes.
	held atomic.Int64
	fr   frameReader // read loop only

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
	// shrinking is set while the write loop waits, idle, to drop buffers
	// grown for a burst (shrinkWhenIdle); shrinkTimer is its timer.
	shrinking   bool
	shrinkTimer *time.Timer // write loop only
	// bookGrown says that the bookkeeping of waiting publishes or of a
	// subscription's deliveries grew for a burst: the write loop shrinks
	// it along with the output buffers once idle. live is the
	// subscriptions, for that (subs is the read loop's), under omu.
	bookGrown atomic.Bool
	live      []*subscription
	// inline is set while a producer writes the output on its own
	// goroutine (appendOutput); the write loop leaves the socket alone
	// meanwhile.
	inline     bool
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
}

func newConn(s *Server, nc net.Conn, peer peerCred) *conn {
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
		fd:         -1,
	}
	c.room = sync.NewCond(&c.omu)
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw = raw
			c.rawWriteFn = c.rawWrite
			raw.Control(func(fd uintptr) { c.fd = int32(fd) }) //nolint:errcheck // fails only on a closed socket: fd stays -1
		}
	}
	c.internFn = c.intern
	c.fr.c = c
	c.logger = s.log
	if peer.known {
		c.logger = s.log.With("peer_uid", peer.uid, "peer_pid", peer.pid)
	}
	c.log = func(msg string, args ...any) { c.logger.Debug(msg, args...) }
	return c
}

// serve runs the read loop and, when it ends, closes everything the
// connection owns in order: publishes are withdrawn, subscriptions closed
// (their unacked events return to the queues), queued output flushed.
func (c *conn) serve() {
	go c.writeLoop()
	c.log("connection opened")
	c.readLoop()
	c.fr.release()
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
	// From the socket's shutdown on, the client sees the connection end
	// and may connect again: it must find its place free.
	c.s.uncount(c)
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
		c.logger.Warn("connection closed: slow consumer did not read its output in time", "reason", reason, "write_timeout", c.s.cfg.WriteTimeout)
	case CloseFrameTooLarge:
		c.logger.Warn("connection closed: frame too large", "reason", reason, "limit", c.s.cfg.MaxFrameBytes)
	case CloseFrameTimeout:
		c.logger.Warn("connection closed: frame not completed in time", "reason", reason, "frame_timeout", c.s.cfg.FrameTimeout)
	case CloseOverBudget:
		c.logger.Warn("connection closed: held more than its share of the buffered-bytes budget for too long", "reason", reason,
			"budget_timeout", c.s.cfg.BudgetTimeout, "max_buffered_bytes", c.s.budget.Limit())
	case CloseReadError, CloseWriteError:
		c.logger.Warn("connection closed: socket failed", "reason", reason, "err", err)
	default:
		if err != nil {
			c.logger.Debug("connection closed", "reason", reason, "err", err)
		} else {
			c.logger.Debug("connection closed", "reason", reason)
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
		dropped := len(c.obuf)
		c.obuf = c.obuf[:0]
		c.room.Broadcast()
		c.omu.Unlock()
		c.s.budget.charge(c, -int64(dropped), 0)
		c.nc.Close()
	}
}

// readLoop reads and handles frames until the client goes away or the
// connection is killed. The reason is recorded where the end is detected:
// here for a failed read, by the write loop or kill otherwise.
func (c *conn) readLoop() {
	for {
		// Stop reading while the client does not read its replies, while
		// too many of its publishes (by count or bytes) wait for room, or
		// while the server's budget has no room for a reply: each bounds
		// what one client can make the server hold.
		if !c.waitRoom(c.ctx) {
			return
		}
		if !c.waits.waitBelow(c.s.cfg.MaxWaitingPublishes, &c.s.waitShare, c.peerGone) {
			// The client went away, or kill stopped the waits after
			// recording its own reason, which then stands.
			c.closeWith(CloseClientGone, errPeerGone)
			return
		}
		if err := c.s.budget.admit(c.ctx, c, replyAllowance, c.s.cfg.BudgetTimeout, c.budgetWait); err != nil {
			c.readFailed(err)
			return
		}
		line, err := c.fr.next()
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

// budgetWait runs while the read loop waits for room in the budget; false
// means the client is gone.
func (c *conn) budgetWait() bool {
	c.s.reconcileQueued()
	return !c.peerGone()
}

// recheckParked is how often a parked read loop checks whether its client
// has gone.
const recheckParked = 100 * time.Millisecond

// peerGone reports whether the client has shut down its end, without
// reading: the read loop is parked and the client's unread requests may
// be in the way of the end-of-file.
func (c *conn) peerGone() bool {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	if err := raw.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		n, err := unix.Poll(pfd, 0)
		gone = err == nil && n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
	}); err != nil {
		return true
	}
	return gone
}

// readFailed records why reading stopped.
func (c *conn) readFailed(err error) {
	switch {
	case errors.Is(err, errFrameTooLarge):
		msg := fmt.Sprintf("frame exceeds the limit of %d bytes (max frame bytes); closing the connection", c.s.cfg.MaxFrameBytes)
		c.output(func(b []byte) []byte { return protocol.AppendErrorReply(b, 0, false, protocol.CodeFrameTooLarge, msg) })
		c.closeWith(CloseFrameTooLarge, nil)
	case errors.Is(err, errFrameTimeout):
		msg := fmt.Sprintf("frame not completed within %s of its first byte (frame timeout); closing the connection", c.s.cfg.FrameTimeout)
		c.output(func(b []byte) []byte { return protocol.AppendErrorReply(b, 0, false, protocol.CodeFrameTimeout, msg) })
		c.closeWith(CloseFrameTimeout, nil)
	case errors.Is(err, errOverBudget):
		c.closeWith(CloseOverBudget, nil)
	case errors.Is(err, errPeerGone):
		c.closeWith(CloseClientGone, err)
	case errors.Is(err, context.Canceled):
		// Only kill cancels the connection's context, after recording
		// its reason.
		c.closeWith(CloseShutdown, nil)
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

// handle dispatches one frame. Nothing it does waits for the bus: a
// publish that has to wait for room is left with the bus, which answers it
// later. A publish may wait for room in the server's budget.
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
	// The event's bytes and its reply are reserved before the event is
	// taken: held for the client while it waits, then for the queue until
	// it is acked.
	cost := eventCost(len(req.Payload), req.Type, req.MsgID)
	if err := c.s.budget.reserve(c.ctx, c, cost+replyAllowance, cost, 0, c.budgetWait); err != nil {
		if errors.Is(err, errPeerGone) {
			c.kill(CloseClientGone, false)
		}
		c.replyCancelled(req.ID)
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
		c.s.budget.charge(c, -(cost + replyAllowance), -cost)
		c.replyCancelled(req.ID)
		return
	}
	call := c.spareCall
	if call == nil {
		call = &pubCall{c: c}
		call.fn = call.done
	}
	c.pubSeq++
	call.n, call.id, call.queue, call.cost = c.pubSeq, req.ID, queue, cost
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
	if c.waits.add(call.n, call.id, cost, p) {
		c.bookGrown.Store(true)
	}
}

// pubCall is one publish's done callback. The read loop reuses it after an
// immediate outcome, so that a publish that does not wait allocates no
// callback.
type pubCall struct {
	c     *conn
	n     uint64
	id    int64
	queue string
	cost  int64                    // reserved in the budget for the event
	fn    func(bus.Outcome, error) // call.done, bound once
}

func (call *pubCall) done(outcome bus.Outcome, err error) {
	call.c.publishDone(call.n, call.id, call.queue, call.cost, outcome, err)
}

// publishDone answers publish n (request id) once the bus has decided it.
// It may run on the read loop (inside PublishAsync or Cancel) or on a bus
// goroutine (a consumer's Receive, a timer), so it only appends the reply
// and updates the bookkeeping; it never blocks.
func (c *conn) publishDone(n uint64, id int64, queue string, cost int64, outcome bus.Outcome, err error) {
	// The event's bytes go to the queue or are released before the reply
	// frees the wait: once the last wait is gone, serve closes the output
	// and checks that the connection holds nothing.
	if outcome == bus.Accepted {
		c.s.budget.accepted(c, queue, cost)
	} else {
		c.s.budget.charge(c, -cost, -cost)
	}
	c.replyOutcome(id, outcome, err, replyAllowance)
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

// replyOutcome answers a publish with credit bytes already reserved for
// the reply.
func (c *conn) replyOutcome(id int64, outcome bus.Outcome, err error, credit int64) {
	switch outcome {
	case bus.Accepted:
		c.outputPaid(credit, func(b []byte) []byte { return protocol.AppendReply(b, id, protocol.StatusAccepted) })
	case bus.Duplicate:
		c.outputPaid(credit, func(b []byte) []byte { return protocol.AppendDuplicateReply(b, id) })
	case bus.Dropped:
		c.outputPaid(credit, func(b []byte) []byte { return protocol.AppendReply(b, id, protocol.StatusDropped) })
	case bus.TimedOut:
		c.outputPaid(credit, func(b []byte) []byte { return protocol.AppendReply(b, id, protocol.StatusTimeout) })
	case bus.Cancelled:
		c.s.budget.charge(c, -credit, 0)
		c.replyCancelled(id)
	default:
		c.s.budget.charge(c, -credit, 0)
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
	c.omu.Lock()
	c.live = append(c.live, sub)
	c.omu.Unlock()
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
	sub.settled(req.Seq, req.Op == protocol.OpAck)
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
// unbounded output wait for room first (waitRoom). The frame's bytes are
// charged to the budget until they are written.
func (c *conn) output(appendFrame func([]byte) []byte) { c.outputPaid(0, appendFrame) }

// outputPaid is output for a frame whose bytes, up to credit, were
// reserved in the budget already: the difference is charged or released.
func (c *conn) outputPaid(credit int64, appendFrame func([]byte) []byte) {
	c.appendOutput(credit, appendFrame, false)
}

// appendOutput appends one frame, as outputPaid. With mayWrite, for a
// producer that may write on its own goroutine: when the write loop is
// parked, the frames go out here in non-blocking writes, which spares a
// goroutine wake-up per frame on a connection that sees an event at a
// time. Whatever the socket does not take at once is left to the write
// loop, which alone waits for the socket, so the write deadline and the
// close reasons stay its own.
func (c *conn) appendOutput(credit int64, appendFrame func([]byte) []byte, mayWrite bool) {
	c.omu.Lock()
	if c.dead || c.oclosed {
		c.omu.Unlock()
		c.s.budget.charge(c, -credit, 0)
		return
	}
	n := len(c.obuf)
	c.obuf = appendFrame(c.obuf)
	added := int64(len(c.obuf) - n)
	if !mayWrite || !c.writerIdle || c.inline || c.raw == nil {
		// The write loop is awake, or is woken now, or an inline write
		// will hand it its leftovers.
		wake := c.writerIdle && !c.inline
		if wake {
			c.writerIdle = false
		}
		c.omu.Unlock()
		c.s.budget.charge(c, added-credit, 0)
		if wake {
			c.signalWriter()
		}
		return
	}
	c.inline = true
	c.writerIdle = false
	buf := c.obuf
	c.obuf = c.spare[:0]
	c.writing = len(buf)
	c.omu.Unlock()
	c.s.budget.charge(c, added-credit, 0)

	written := c.tryWrite(buf)

	c.omu.Lock()
	c.inline = false
	c.writing = 0
	released := written
	switch {
	case c.dead:
		// Killed meanwhile: the rest is discarded like the queued output.
		released = len(buf)
		c.spare = buf[:0]
	case written < len(buf):
		// The rest goes before what was appended meanwhile.
		rest := append(buf[:0], buf[written:]...)
		c.spare = c.obuf[:0]
		c.obuf = append(rest, c.obuf...)
	default:
		c.spare = buf[:0]
	}
	if c.roomWait > 0 {
		c.room.Broadcast()
	}
	// The write loop is parked (it was when the write began, and it parks
	// again if woken meanwhile): wake it if there is anything for it, or
	// if the buffers or the bookkeeping grew and it does not wait to
	// shrink them yet.
	wake := len(c.obuf) > 0 || c.oclosed || c.dead || (!c.shrinking && (c.outputGrown() || c.bookGrown.Load()))
	c.writerIdle = !wake
	c.omu.Unlock()
	c.s.budget.charge(c, -int64(released), 0)
	if wake {
		c.signalWriter()
	}
}

// tryWrite writes buf with non-blocking write calls until the socket
// takes no more, and returns how many bytes it took. Errors are left to
// the write loop, which meets them again on its next write.
func (c *conn) tryWrite(buf []byte) int {
	// The write loop's deadline of its last write may have passed, and a
	// passed deadline fails the raw write before it is tried.
	if c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout)) != nil {
		return 0
	}
	c.rawBuf, c.rawWritten = buf, 0
	_ = c.raw.Write(c.rawWriteFn)
	written := c.rawWritten
	c.rawBuf = nil
	return written
}

// rawWrite is tryWrite's raw write of c.rawBuf.
func (c *conn) rawWrite(fd uintptr) bool {
	for c.rawWritten < len(c.rawBuf) {
		n, err := syscall.Write(int(fd), c.rawBuf[c.rawWritten:])
		if err != nil || n <= 0 {
			break
		}
		c.rawWritten += n
	}
	return true // never wait for the socket here
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

// shrinkOutputBuffer: an output buffer grown past this for a burst is
// dropped once the output has been idle for shrinkIdleAfter, rather than
// kept for reuse: kept, it would hold the burst's memory for as long as
// the connection stays open, outside both the budget and
// ConnectionMemory. An idle connection's output fits in less.
const shrinkOutputBuffer = 8 << 10

// shrinkIdleAfter is how long the output stays idle before buffers grown
// for a burst are dropped: a busy connection goes idle between writes
// all the time, and dropping them at once would make it grow new ones
// for every batch (BenchmarkSocketPublish allocated four times the bytes
// per event that way).
const shrinkIdleAfter = time.Second

// outputGrown reports whether an output buffer is larger than
// shrinkOutputBuffer. Under omu.
func (c *conn) outputGrown() bool {
	return cap(c.obuf) > shrinkOutputBuffer || cap(c.spare) > shrinkOutputBuffer
}

// shrinkWhenIdle waits for output, and drops the grown buffers and
// shrinks the grown bookkeeping if none comes within shrinkIdleAfter.
// Write loop only.
func (c *conn) shrinkWhenIdle() {
	// One timer for the connection's life, so that a connection that
	// batches more than shrinkOutputBuffer and goes idle between its
	// writes allocates nothing for it.
	if c.shrinkTimer == nil {
		c.shrinkTimer = time.NewTimer(shrinkIdleAfter)
	} else {
		c.shrinkTimer.Reset(shrinkIdleAfter)
	}
	select {
	case <-c.wake:
		c.shrinkTimer.Stop()
		c.omu.Lock()
		c.shrinking = false
		c.omu.Unlock()
		return
	case <-c.shrinkTimer.C:
	}
	c.omu.Lock()
	c.shrinking = false
	// During an inline write one of the buffers is the writer's; it wakes
	// this loop when it is done, and the wait starts again.
	if !c.inline {
		if len(c.obuf) == 0 && cap(c.obuf) > shrinkOutputBuffer {
			c.obuf = nil
		}
		if cap(c.spare) > shrinkOutputBuffer {
			c.spare = nil
		}
	}
	book := c.bookGrown.Swap(false)
	var live []*subscription
	if book {
		live = slices.Clone(c.live)
	}
	c.omu.Unlock()
	if book {
		still := c.waits.shrink()
		for _, sub := range live {
			sub.mu.Lock()
			still = sub.costs.shrink() || still
			sub.mu.Unlock()
		}
		if still {
			// Not a quarter of it free yet: try again when next idle.
			c.bookGrown.Store(true)
		}
	}
}

// writeLoop writes queued output until the connection is closed and its
// output flushed, or a write fails or stays stuck past the write timeout.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	for {
		c.omu.Lock()
		if len(c.obuf) == 0 || c.dead || c.inline {
			// During an inline write the socket is appendOutput's; it
			// wakes this loop when it is done, if there is anything left.
			if (c.oclosed || c.dead) && !c.inline {
				c.omu.Unlock()
				return
			}
			c.writerIdle = true
			grown := c.outputGrown() || c.bookGrown.Load()
			c.shrinking = grown
			c.omu.Unlock()
			if grown {
				c.shrinkWhenIdle()
				continue
			}
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
		released := len(buf)
		if err != nil {
			// Dead and why, in one step: see conn.reason.
			c.closeWithLocked(reason, err)
			c.dead = true
			released += len(c.obuf)
			c.obuf = c.obuf[:0]
			c.room.Broadcast()
		}
		c.omu.Unlock()
		c.s.budget.charge(c, -int64(released), 0)
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

	// costs holds each unacked delivery's budget cost by seq, so that its
	// ack releases the bytes its publish reserved.
	mu    sync.Mutex
	costs shrinkingMap[uint64, int64]
}

// settled forgets delivery seq; with ack its bytes leave the budget (a
// nacked event is back in its queue and stays counted).
func (s *subscription) settled(seq uint64, ack bool) {
	s.mu.Lock()
	cost, ok := s.costs.get(seq)
	s.costs.delete(seq)
	s.mu.Unlock()
	if ok && ack {
		s.c.s.budget.acked(s.queue, cost)
	}
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
				c.logger.Warn("subscription stopped", "queue", s.queue, "err", err)
			}
			return
		}
		s.mu.Lock()
		grown := s.costs.put(d.Seq, eventCost(len(d.Event.Payload), d.Event.Type, d.Event.MsgID))
		s.mu.Unlock()
		if grown {
			c.bookGrown.Store(true)
		}
		// The frame's bytes are reserved before it is written, so that
		// deliveries too stay inside the budget; the event stays in flight
		// meanwhile.
		credit := int64(len(d.Event.Payload)+len(d.Event.Type)+len(d.Queue)) + deliverOverhead
		if err := c.s.budget.reserve(s.ctx, c, credit, 0, 0, nil); err != nil {
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
		appendFrame := func(b []byte) []byte { return protocol.AppendDeliverTraceparent(b, &f, tp) }
		// With more to come, the write loop batches this frame with the
		// next ones; a lone one may go out at once.
		c.appendOutput(credit, appendFrame, !d.More)
	}
}

// deliverOverhead bounds a deliver frame's bytes besides its payload, type
// and queue: field names, seq, traceparent, enqueued_at, redeliveries.
const deliverOverhead = 256

// stop ends the pump and closes the consumer, which returns its unacked
// events to the queue head. Read loop only.
func (s *subscription) stop() {
	s.cancel()
	s.c.omu.Lock()
	s.c.room.Broadcast()
	s.c.live = slices.DeleteFunc(s.c.live, func(l *subscription) bool { return l == s })
	s.c.omu.Unlock()
	<-s.done
	s.cons.Close()
}
