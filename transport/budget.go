package transport

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
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
	// eventOverhead approximates what the bus holds per queued event
	// besides its payload and type: the entry, its span context and times.
	eventOverhead = 128
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
type budget struct {
	light int64         // a connection holding at most this is light
	conns *atomic.Int64 // open connections, for the fair share; nil: 1

	mu sync.Mutex
	// limit and its shares change with setLimit.
	limit    int64
	pubLimit int64 // publish payloads, waiting and queued
	slack    int64
	headroom int64
	// shrunk is set while more is held than a shrunk limit leaves room
	// for: no connection is cut off for waiting then (see setLimit).
	// unshrunk is when it was cleared last.
	shrunk   bool
	unshrunk time.Time
	// graced counts the cut-off deadlines that passed while shrunk.
	graced  int
	held    int64
	pub     int64
	queued  map[string]*queueBytes
	waiters int
	freed   chan struct{} // closed when bytes are released and waiters > 0
}

// queueBytes approximates the bytes of accepted events still in one queue.
type queueBytes struct {
	bytes  int64
	events int64
}

func newBudget(limit int64, queues []string, conns *atomic.Int64) *budget {
	b := &budget{
		light:  lightBytes,
		conns:  conns,
		queued: make(map[string]*queueBytes, len(queues)),
		freed:  make(chan struct{}),
	}
	b.setLimitLocked(limit)
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
	b.setLimitLocked(limit)
	b.shrunk = b.held > b.roomLocked()
	b.wakeLocked()
}

func (b *budget) setLimitLocked(limit int64) {
	b.limit = limit
	b.pubLimit = limit / pubShareDiv
	b.slack = limit / slackDiv
	b.headroom = limit / headroomDiv
}

// roomLocked is what may be held before heavy connections wait.
func (b *budget) roomLocked() int64 { return b.limit - b.slack - b.headroom }

// Limit reports the budget in force.
func (b *budget) Limit() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit
}

// fits reports whether n more bytes (pub of them publish payload) may be
// taken by c. Called with mu held.
func (b *budget) fits(c *conn, n, pub int64) bool {
	limit, pubLimit := b.limit-b.slack, b.pubLimit
	if c != nil && c.held+n > b.light {
		limit -= b.headroom
		pubLimit -= b.pubLimit / headroomDiv
	}
	if b.held+n > limit {
		return false
	}
	return pub == 0 || b.pub+pub <= pubLimit
}

// fairShare is what each open connection may hold when all hold alike.
func (b *budget) fairShare() int64 {
	n := int64(1)
	if b.conns != nil {
		n = max(b.conns.Load(), 1)
	}
	return b.roomLocked() / n
}

// reserve takes n bytes (pub of them publish payload) for c, waiting
// while they do not fit. With killAfter > 0 it gives up with
// errOverBudget once it has waited that long while c holds more than its
// fair share; one that holds less keeps waiting. onWait, if not nil,
// runs before each wait and every recheckParked while waiting, without
// the lock held; when it returns false reserve gives up with errPeerGone.
func (b *budget) reserve(ctx context.Context, c *conn, n, pub int64, killAfter time.Duration, onWait func() bool) error {
	var timer *time.Timer
	var deadline <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		b.mu.Lock()
		if b.fits(c, n, pub) {
			b.takeLocked(c, n, pub)
			b.mu.Unlock()
			return nil
		}
		if timer == nil && killAfter > 0 {
			timer = time.NewTimer(killAfter)
			deadline = timer.C
		}
		b.waiters++
		freed := b.freed
		b.mu.Unlock()
		var recheck <-chan time.Time
		if onWait != nil {
			// onWait may free bytes the budget cannot see go (see
			// Server.reconcileQueued) or find the client gone: run it
			// again now and then.
			if !onWait() {
				b.doneWaiting()
				return errPeerGone
			}
			recheck = time.After(recheckParked)
		}
		select {
		case <-recheck:
		case <-freed:
		case <-ctx.Done():
		case <-deadline:
			b.mu.Lock()
			heavy := c != nil && c.held > max(b.light, b.fairShare())
			// The budget shrank under what was held: wait on, and count
			// the deadline from when the holdings are under.
			grace := killAfter
			if !b.shrunk {
				grace = killAfter - time.Since(b.unshrunk)
			}
			if grace > 0 {
				b.graced++
			}
			b.mu.Unlock()
			switch {
			case grace > 0:
				timer.Reset(grace)
			case heavy:
				b.doneWaiting()
				return errOverBudget
			default:
				deadline = nil
			}
		}
		b.doneWaiting()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

func (b *budget) doneWaiting() {
	b.mu.Lock()
	b.waiters--
	b.mu.Unlock()
}

func (b *budget) takeLocked(c *conn, n, pub int64) {
	b.held += n
	b.pub += pub
	if c != nil {
		c.held += n
	}
	if n < 0 || pub < 0 {
		b.wakeLocked()
	}
}

func (b *budget) wakeLocked() {
	if b.shrunk && b.held <= b.roomLocked() {
		b.shrunk, b.unshrunk = false, time.Now()
	}
	if b.waiters > 0 {
		close(b.freed)
		b.freed = make(chan struct{})
	}
}

// charge adds n bytes (negative: releases them) to c's holding without
// waiting.
func (b *budget) charge(c *conn, n, pub int64) {
	if n == 0 && pub == 0 {
		return
	}
	b.mu.Lock()
	b.takeLocked(c, n, pub)
	b.mu.Unlock()
}

// accepted moves an accepted event's cost from c's holding to its queue:
// the bytes stay counted until the event is acked.
func (b *budget) accepted(c *conn, queue string, cost int64) {
	b.mu.Lock()
	c.held -= cost
	if q := b.queued[queue]; q != nil {
		q.bytes += cost
		q.events++
	} else {
		b.held -= cost
		b.pub -= cost
		b.wakeLocked()
	}
	b.mu.Unlock()
}

// acked releases an acked event's cost from its queue.
func (b *budget) acked(queue string, cost int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queued[queue]
	if q == nil || q.events == 0 {
		return
	}
	cost = min(cost, q.bytes)
	q.bytes -= cost
	q.events--
	b.held -= cost
	b.pub -= cost
	b.wakeLocked()
}

// reconcile shrinks a queue's count to the events the bus still holds
// (waiting or in flight) when events left it unseen: evicted by a
// drop_oldest queue, or acked by a consumer outside this server. The
// bytes shrink in proportion.
func (b *budget) reconcile(held map[string]int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for name, q := range b.queued {
		n, ok := held[name]
		if !ok || q.events <= n {
			continue
		}
		keep := int64(0)
		if q.events > 0 {
			keep = q.bytes * n / q.events
		}
		drop := q.bytes - keep
		q.bytes, q.events = keep, n
		b.held -= drop
		b.pub -= drop
	}
	b.wakeLocked()
}

// Held reports the bytes accounted now.
func (b *budget) Held() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held
}

func (b *budget) connHeld(c *conn) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return c.held
}

// eventCost approximates what an accepted event holds in the bus.
func eventCost(payload int, typ string) int64 {
	return int64(payload + len(typ) + eventOverhead)
}
