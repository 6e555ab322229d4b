package transport

import (
	"context"
	"errors"
	"sync"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// pubReq is a publish read from the connection, waiting for its lane.
type pubReq struct {
	id        int64
	ev        bus.Event
	cancelled bool
}

// lane publishes one connection's events to one queue, in the order they
// were read. Each (connection, queue) has its own lane so that a publish
// waiting for room in a full queue holds up only later publishes to that
// same queue, never the connection's other queues.
type lane struct {
	c     *conn
	queue string

	mu    sync.Mutex
	ready *sync.Cond // the lane goroutine waits for work
	space *sync.Cond // the read loop waits for room in q
	q     []pubReq
	head  int
	idle  bool
	// The publish being processed, which cancelRef can withdraw.
	active    int64
	hasActive bool
	// ctx is the context of the current bus.Publish call. It is replaced
	// after a cancel op used it, so that one cancel withdraws one publish.
	ctx     context.Context
	cancel  context.CancelFunc
	closing bool
}

func newLane(c *conn, queue string) *lane {
	l := &lane{c: c, queue: queue}
	l.ready = sync.NewCond(&l.mu)
	l.space = sync.NewCond(&l.mu)
	l.ctx, l.cancel = context.WithCancel(c.ctx)
	return l
}

// push queues a publish; it blocks while the lane holds the maximum, which
// pauses reading this connection (documented flow control).
func (l *lane) push(r pubReq) {
	l.mu.Lock()
	for len(l.q)-l.head >= l.c.s.cfg.MaxPendingPublishes && !l.closing {
		l.space.Wait()
	}
	if l.closing {
		l.mu.Unlock()
		l.c.replyCancelled(r.id)
		return
	}
	if len(l.q) == cap(l.q) && l.head > 0 {
		// Reuse the consumed prefix instead of growing without bound
		// under a load that never lets the lane empty.
		n := copy(l.q, l.q[l.head:])
		clear(l.q[n:])
		l.q, l.head = l.q[:n], 0
	}
	l.q = append(l.q, r)
	wake := l.idle
	l.idle = false
	l.mu.Unlock()
	if wake {
		l.ready.Signal()
	}
}

// cancelRef withdraws publish ref if it is queued in or being processed by
// this lane.
func (l *lane) cancelRef(ref int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hasActive && l.active == ref {
		l.cancel()
	}
	for i := l.head; i < len(l.q); i++ {
		if l.q[i].id == ref {
			l.q[i].cancelled = true
		}
	}
}

// close makes the lane withdraw everything it holds and stop.
func (l *lane) close() {
	l.mu.Lock()
	l.closing = true
	l.cancel()
	l.mu.Unlock()
	l.ready.Broadcast()
	l.space.Broadcast()
}

func (l *lane) run() {
	defer l.c.producer.Done()
	defer l.cancel()
	s := l.c.s
	for {
		l.mu.Lock()
		for l.head == len(l.q) && !l.closing {
			l.idle = true
			l.ready.Wait()
		}
		if l.head == len(l.q) {
			l.mu.Unlock()
			return
		}
		pending := len(l.q) - l.head
		r := l.q[l.head]
		l.q[l.head] = pubReq{}
		l.head++
		if l.head == len(l.q) {
			l.q, l.head = l.q[:0], 0
		}
		if pending >= s.cfg.MaxPendingPublishes {
			l.space.Signal()
		}
		if r.cancelled || l.closing {
			l.mu.Unlock()
			l.c.replyCancelled(r.id)
			continue
		}
		l.active, l.hasActive = r.id, true
		ctx := l.ctx
		l.mu.Unlock()

		outcome, err := s.bus.Publish(ctx, r.ev, l.queue)

		l.mu.Lock()
		l.hasActive = false
		if ctx.Err() != nil && !l.closing {
			l.ctx, l.cancel = context.WithCancel(l.c.ctx)
		}
		l.mu.Unlock()
		l.replyOutcome(r.id, outcome, err)
	}
}

func (l *lane) replyOutcome(id int64, outcome bus.Outcome, err error) {
	c := l.c
	switch outcome {
	case bus.Accepted:
		c.reply(id, StatusAccepted)
	case bus.Dropped:
		c.reply(id, StatusDropped)
	case bus.TimedOut:
		c.reply(id, StatusTimeout)
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
	c.reply(id, StatusCancelled)
}
