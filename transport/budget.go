package transport

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// The budget's shares of MaxBufferedBytes. Publish payloads (waiting and
// queued) may take half, so that deliveries, which free queued bytes
// once acked, always find room. The last sixteenth is kept for the small
// replies that are never delayed (they answer requests already read), and
// the eighth before it only for light connections (those that hold no
// more than an idle one and a few replies), so that a well-behaved client
// goes on while heavy ones are held back; the same goes for the last
// eighth of the publish share. The waiting publishes of one connection
// may hold a sixteenth.
const (
	pubShareDiv    = 2
	slackDiv       = 16
	headroomDiv    = 8
	lightBytes     = minReadBuffer + 2<<10
	connWaitDiv    = 16
	replyAllowance = 256
)

// errPeerGone: the client closed its end while its reader was parked.
var errPeerGone = errors.New("client disconnected while its requests were not being read")

// errOverBudget: the connection held more than its fair share (the
// budget divided among the open connections) while the budget was
// exhausted for longer than BudgetTimeout.
var errOverBudget = errors.New("over the buffered-bytes budget")

// budget accounts every byte the server holds on behalf of clients: read
// buffers, output buffers, the payloads of waiting publishes and of
// accepted events still in the bus. Large holdings are reserved before
// they are taken (reserve blocks until they fit); small replies are
// charged as they are written and fit in the slack.
//
// Every event passes through the budget several times (its frame read,
// its reply, its delivery, its ack), so the counts are atomics: the
// totals here, each connection's own in conn.held, each queue's in
// queueBytes. A reservation that fits takes its bytes with a
// compare-and-swap and touches no lock; mu is only for the reservations
// that wait for bytes to be released.
type budget struct {
	light int64         // a connection holding at most this is light
	conns *atomic.Int64 // open connections, for the fair share; nil: 1
	// shares are the limits in force; setLimit replaces them.
	shares atomic.Pointer[shares]

	held atomic.Int64
	pub  atomic.Int64
	// queued is fixed by newBudget (the server's queues do not change
	// while it runs), so it is read without a lock.
	queued map[string]*queueBytes

	// waiters counts the reservations parked on freed. It changes under
	// mu; a release reads it without the lock and only then takes mu to
	// wake them.
	waiters atomic.Int32
	mu      sync.Mutex
	freed   chan struct{} // closed when bytes are released and waiters > 0

	// shrunk is set while more is held than a shrunk limit leaves room
	// for: no connection is cut off for waiting then (see setLimit). A
	// release reads it without the lock, to take the slow path that
	// clears it. Under mu: unshrunk, when it was cleared last, and graced,
	// the cut-off deadlines that passed while shrunk.
	shrunk   atomic.Bool
	unshrunk time.Time
	graced   int
}

// shares divides one budget among its uses.
type shares struct {
	limit    int64
	pubLimit int64 // publish payloads, waiting and queued
	slack    int64
	headroom int64
}

func newShares(limit int64) *shares {
	return &shares{limit: limit, pubLimit: limit / pubShareDiv, slack: limit / slackDiv, headroom: limit / headroomDiv}
}

// room is what may be held before heavy connections wait.
func (s *shares) room() int64 { return s.limit - s.slack - s.headroom }

// queueBytes approximates the bytes of accepted events still in one queue.
// An event's bytes are added before it is counted and its count is taken
// before its bytes, so that an ack never finds an event without bytes.
type queueBytes struct {
	bytes  atomic.Int64
	events atomic.Int64
}

func newBudget(limit int64, queues []string, conns *atomic.Int64) *budget {
	b := &budget{
		light:  lightBytes,
		conns:  conns,
		queued: make(map[string]*queueBytes, len(queues)),
		freed:  make(chan struct{}),
	}
	b.shares.Store(newShares(limit))
	for _, q := range queues {
		b.queued[q] = &queueBytes{}
	}
	return b
}

// setLimit changes the budget while it is in use. Growing it wakes the
// waiting connections, which may fit now. Shrinking it takes nothing
// away: what is held stays until it is written, acked or released, and
// meanwhile every connection that needs more waits (backpressure). While
// more is held than the smaller budget leaves room for, no connection is
// cut off for waiting, since the shortage is not its doing; once the
// holdings are under, the usual rules apply again.
func (b *budget) setLimit(limit int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sh := newShares(limit)
	b.shares.Store(sh)
	b.shrunk.Store(b.held.Load() > sh.room())
	b.wakeLocked()
}

// Limit reports the budget in force.
func (b *budget) Limit() int64 { return b.shares.Load().limit }

// room is what may be held before heavy connections wait.
func (b *budget) room() int64 { return b.shares.Load().room() }

// limits returns what the total and the publish payloads may reach when c
// takes n more bytes: a connection that would no longer be light stops
// short of the headroom kept for the light ones.
func (b *budget) limits(c *conn, n int64) (limit, pubLimit int64) {
	sh := b.shares.Load()
	limit, pubLimit = sh.limit-sh.slack, sh.pubLimit
	if c != nil && c.held.Load()+n > b.light {
		limit -= sh.headroom
		pubLimit -= sh.pubLimit / headroomDiv
	}
	return limit, pubLimit
}

// fits reports whether n more bytes (pub of them publish payload) may be
// taken by c now, without taking them.
func (b *budget) fits(c *conn, n, pub int64) bool {
	limit, pubLimit := b.limits(c, n)
	return b.held.Load()+n <= limit && (pub == 0 || b.pub.Load()+pub <= pubLimit)
}

// tryTake takes n bytes (pub of them publish payload) for c if they fit.
// The total never passes its limit: the bytes are taken by a
// compare-and-swap against the value checked.
func (b *budget) tryTake(c *conn, n, pub int64) bool {
	limit, pubLimit := b.limits(c, n)
	for {
		h := b.held.Load()
		if h+n > limit {
			return false
		}
		if b.held.CompareAndSwap(h, h+n) {
			break
		}
	}
	for pub != 0 {
		p := b.pub.Load()
		if p+pub > pubLimit {
			b.held.Add(-n)
			b.wake()
			return false
		}
		if b.pub.CompareAndSwap(p, p+pub) {
			break
		}
	}
	if c != nil {
		c.held.Add(n)
	}
	return true
}

// fairShare is what each open connection may hold when all hold alike.
func (b *budget) fairShare() int64 {
	n := int64(1)
	if b.conns != nil {
		n = max(b.conns.Load(), 1)
	}
	return b.room() / n
}

// reserve takes n bytes (pub of them publish payload) for c, waiting
// while they do not fit. With killAfter > 0 it gives up with
// errOverBudget once it has waited that long while c holds more than its
// fair share; one that holds less keeps waiting. onWait, if not nil,
// runs before each wait and every recheckParked while waiting; when it
// returns false reserve gives up with errPeerGone.
func (b *budget) reserve(ctx context.Context, c *conn, n, pub int64, killAfter time.Duration, onWait func() bool) error {
	if b.tryTake(c, n, pub) {
		return nil
	}
	return b.wait(ctx, c, killAfter, onWait, func() bool { return b.tryTake(c, n, pub) })
}

// admit waits, as reserve does, until n bytes would fit for c, but takes
// nothing: the read loop's check that a reply would find room before it
// reads the request.
func (b *budget) admit(ctx context.Context, c *conn, n int64, killAfter time.Duration, onWait func() bool) error {
	if b.fits(c, n, 0) {
		return nil
	}
	return b.wait(ctx, c, killAfter, onWait, func() bool { return b.fits(c, n, 0) })
}

// wait parks until done reports true after a release, for reserve and
// admit.
func (b *budget) wait(ctx context.Context, c *conn, killAfter time.Duration, onWait func() bool, done func() bool) error {
	var timer *time.Timer
	var deadline <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		// Registered before done is tried again: a release either sees
		// this waiter and wakes it, or happened before the try.
		b.mu.Lock()
		b.waiters.Add(1)
		freed := b.freed
		b.mu.Unlock()
		if done() {
			b.waiters.Add(-1)
			return nil
		}
		if timer == nil && killAfter > 0 {
			timer = time.NewTimer(killAfter)
			deadline = timer.C
		}
		var recheck <-chan time.Time
		if onWait != nil {
			// onWait may free bytes the budget cannot see go (see
			// Server.reconcileQueued) or find the client gone: run it
			// again now and then.
			if !onWait() {
				b.waiters.Add(-1)
				return errPeerGone
			}
			recheck = time.After(recheckParked)
		}
		select {
		case <-recheck:
		case <-freed:
		case <-ctx.Done():
		case <-deadline:
			// The budget shrank under what was held: wait on, and count
			// the deadline from when the holdings are under.
			b.mu.Lock()
			b.clearShrunkLocked()
			grace := killAfter
			if !b.shrunk.Load() {
				grace = killAfter - time.Since(b.unshrunk)
			}
			if grace > 0 {
				b.graced++
			}
			b.mu.Unlock()
			switch {
			case grace > 0:
				timer.Reset(grace)
			case c != nil && c.held.Load() > max(b.light, b.fairShare()):
				b.waiters.Add(-1)
				return errOverBudget
			default:
				deadline = nil
			}
		}
		b.waiters.Add(-1)
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// wake wakes the parked reservations, if any, after a release.
func (b *budget) wake() {
	if b.waiters.Load() == 0 && !b.shrunk.Load() {
		return
	}
	b.mu.Lock()
	b.wakeLocked()
	b.mu.Unlock()
}

func (b *budget) wakeLocked() {
	b.clearShrunkLocked()
	if b.waiters.Load() > 0 {
		close(b.freed)
		b.freed = make(chan struct{})
	}
}

// clearShrunkLocked ends the grace of a shrunk budget once the holdings
// are under it.
func (b *budget) clearShrunkLocked() {
	if b.shrunk.Load() && b.held.Load() <= b.room() {
		b.shrunk.Store(false)
		b.unshrunk = time.Now()
	}
}

// charge adds n bytes (negative: releases them) to c's holding without
// waiting.
func (b *budget) charge(c *conn, n, pub int64) {
	if n == 0 && pub == 0 {
		return
	}
	if n != 0 {
		b.held.Add(n)
		if c != nil {
			c.held.Add(n)
		}
	}
	if pub != 0 {
		b.pub.Add(pub)
	}
	if n < 0 || pub < 0 {
		b.wake()
	}
}

// accepted moves an accepted event's cost from c's holding to its queue:
// the bytes stay counted until the event is acked.
func (b *budget) accepted(c *conn, queue string, cost int64) {
	c.held.Add(-cost)
	if q := b.queued[queue]; q != nil {
		q.bytes.Add(cost)
		q.events.Add(1)
		return
	}
	b.held.Add(-cost)
	b.pub.Add(-cost)
	b.wake()
}

// acked releases an acked event's cost from its queue.
func (b *budget) acked(queue string, cost int64) {
	q := b.queued[queue]
	if q == nil {
		return
	}
	for {
		e := q.events.Load()
		if e == 0 {
			return
		}
		if q.events.CompareAndSwap(e, e-1) {
			break
		}
	}
	cost = q.takeBytes(func(bytes int64) int64 { return min(cost, bytes) })
	b.held.Add(-cost)
	b.pub.Add(-cost)
	b.wake()
}

// takeBytes removes what drop computes from the queue's current bytes and
// returns it.
func (q *queueBytes) takeBytes(drop func(bytes int64) int64) int64 {
	for {
		bytes := q.bytes.Load()
		d := drop(bytes)
		if q.bytes.CompareAndSwap(bytes, bytes-d) {
			return d
		}
	}
}

// reconcile shrinks a queue's count to the events the bus still holds
// (waiting or in flight) when events left it unseen: evicted by a
// drop_oldest queue, or acked by a consumer outside this server. The
// bytes shrink in proportion.
func (b *budget) reconcile(held map[string]int64) {
	for name, q := range b.queued {
		n, ok := held[name]
		if !ok {
			continue
		}
		e := q.events.Load()
		// A count that moved meanwhile is left for the next reconcile.
		if e <= n || !q.events.CompareAndSwap(e, n) {
			continue
		}
		drop := q.takeBytes(func(bytes int64) int64 { return bytes - bytes*n/e })
		b.held.Add(-drop)
		b.pub.Add(-drop)
	}
	b.wake()
}

// Held reports the bytes accounted now.
func (b *budget) Held() int64 { return b.held.Load() }

func (b *budget) connHeld(c *conn) int64 { return c.held.Load() }

// eventCost is what an accepted event holds in the bus, its msg id in the
// dedupe window aside (the memory bound counts that per queue).
func eventCost(payload int, typ, msgID string) int64 {
	return int64(payload+len(typ)+len(msgID)) + bus.EventOverhead
}
