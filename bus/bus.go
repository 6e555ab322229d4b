package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
	"go.opentelemetry.io/otel/trace"
)

const (
	numOutcomes    = 6 // len(Outcomes)
	numDropReasons = 2 // len(DropReasons)
)

// acceptedIndex is outcomeIndex(Accepted).
const acceptedIndex = 0

func outcomeIndex(o Outcome) int {
	switch o {
	case Accepted:
		return acceptedIndex
	case Dropped:
		return 1
	case TimedOut:
		return 2
	case Cancelled:
		return 3
	case Duplicate:
		return 5
	default:
		return 4
	}
}

func dropReasonIndex(r DropReason) int {
	if r == DropEvicted {
		return 1
	}
	return 0
}

// Bus holds named, bounded queues and hands their events to competing
// consumers. All methods are safe for concurrent use.
type Bus struct {
	clock  Clock
	logger *slog.Logger
	tel    telemetry

	queues     []*queue // configured order
	byName     map[string]*queue
	names      []string
	validNames string // for error messages

	systemClock bool // clock is SystemClock: durations via time.Since
	// anchor is a reading of the system clock, wall and monotonic, that
	// now extends by the monotonic clock alone (nil until the first call).
	anchor atomic.Pointer[time.Time]

	// closing refuses new publishes; it is read under each queue's lock so
	// that no publish can slip in after Shutdown has looked at a queue.
	closing atomic.Bool
	// finished is set, and done closed, once Shutdown has finished draining.
	finished atomic.Bool
	done     chan struct{}
	// drainCh wakes Shutdown when an ack or close may have emptied the bus.
	drainCh chan struct{}

	shutdownOnce sync.Once
	undelivered  map[string]int // written before done is closed
	shutdownErr  error

	// dirLock holds the data directory (WithDataDir) until Shutdown.
	dirLock io.Closer

	// held are the dead-letter moves waiting for their source's ack to
	// become durable after a failed sync.
	held heldMoves
}

// queue is one named queue. mu guards the store, the waiters, the idle
// consumers and every consumer's in-flight set; counters are atomics so
// that Stats and metric callbacks never take the lock.
type queue struct {
	bus      *Bus
	name     string
	tel      queueTelemetry
	counters counters
	// hist are the queue's histograms when the bus records them itself
	// (WithHistograms), else nil.
	hist *queueHistograms

	// settings is what Stats, the metric callback and the drop summaries
	// report: a copy of the fields below, swapped whole by Reconfigure, so
	// that those readers never take the lock.
	settings atomic.Pointer[QueueConfig]

	mu sync.Mutex
	// capacity, policy and timeout (0 unless the policy uses one) change
	// under mu only (Reconfigure), so that every publish sees one
	// consistent set.
	capacity int
	policy   Policy
	timeout  time.Duration
	store    *fifo
	nextSeq  uint64
	waiters  []*Pending  // FIFO: the head gets the next free slot
	idle     []*Consumer // consumers blocked in Receive with prefetch room

	// timer times the waiters out: one per queue rather than one per
	// waiter, because every waiter of a queue has the same timeout and
	// joins at the tail at the current time, so deadlines never decrease
	// along the FIFO (cancels remove waiters, nothing reorders them). It
	// is armed while there are waiters, for a deadline no later than the
	// head's. timerGen tells a callback of a timer that was stopped or
	// replaced, and may still run, that it is stale.
	timer    Timer
	timerGen uint64

	// log keeps a durable queue's events (nil: the queue lives in memory).
	// Its events join the store once their append is done; until then
	// they hold reserved slots, so that the queue never exceeds its
	// capacity and consumers see only stored events.
	log      *wal.Log
	reserved int
	// storing are the publishes whose events the log is storing, in seq
	// order, until it answers them (appendLocked, land).
	storing pendingFIFO
	// onStored is storedOne, bound once: the log's callback for every
	// publish's append, so that an append allocates no closure.
	onStored func(wal.Appended, error)
	// landed gathers the log's answers within one write (storedOne). Only
	// the log's callbacks touch it, and they run one at a time.
	landed []landing
	// fsyncInterval says the log answers an append once written, not
	// synced (a dead-letter move syncs its dead letter itself).
	fsyncInterval bool
	scratch       []byte // record encoding buffer
	dedupe        dedupe

	maxDeliveries int
	deadLetter    *queue // nil: no dead letters
}

// counters are the single source of Stats and of the observable metrics.
type counters struct {
	published [numOutcomes]atomic.Uint64
	drops     [numDropReasons]atomic.Uint64
	// Every delivery ends in an ack or a return (a nack, or Close giving
	// it back), so the events in flight are the difference (inFlight)
	// and need no counter of their own, which would cost each delivery
	// two more atomic operations. delivered and returned are counted
	// under q.mu; acked once the log has the ack, after q.mu: until then
	// the delivery still counts as in flight, which can only make a
	// Shutdown drain wait for the ack's notifyDrain.
	delivered   atomic.Uint64
	acked       atomic.Uint64
	returned    atomic.Uint64
	redelivered atomic.Uint64
	// sizeMark is the number of waiting events plus delivered, minus a
	// memory queue's accepted publishes, as of its last store
	// (setSizeLocked). A delivery takes one waiting event and counts it in
	// delivered under q.mu, and a memory queue's accepted publish counts
	// its event under q.mu as it pushes it (pushLocked), so that the depth
	// (queue.depth) stays right without a store of its own for either:
	// two atomic operations fewer per event.
	sizeMark  atomic.Int64
	waiting   atomic.Int64
	consumers atomic.Int64

	deadLettered  atomic.Uint64
	storageErrors atomic.Uint64

	// Drops and timeouts not yet reported in a log summary, and when the
	// window they were counted in began (UnixNano on the bus clock): the
	// last summary, or New.
	unloggedDrops    [numDropReasons]atomic.Uint64
	unloggedTimeouts atomic.Uint64
	summarySince     atomic.Int64
}

// setSizeLocked records that n events are waiting. Called with q.mu held,
// where neither delivered nor a memory queue's accepted count can change.
func (q *queue) setSizeLocked(n int) {
	c := &q.counters
	c.sizeMark.Store(int64(n) + int64(c.delivered.Load()) - int64(q.pushed()))
}

// pushed is the number of events a memory queue has accepted, which
// pushLocked counts as it pushes them; 0 on a durable queue, whose events
// join the store by setSizeLocked.
func (q *queue) pushed() uint64 {
	if q.log != nil {
		return 0
	}
	return q.counters.published[acceptedIndex].Load()
}

// depth is the number of waiting events, read without the lock: exact
// as of one moment when no push or delivery ran while it read, which it
// retries for a few times; past those, off by the events of that moment
// and never below zero.
func (q *queue) depth() int64 {
	c := &q.counters
	var n int64
	for range 8 {
		d, p := c.delivered.Load(), q.pushed()
		n = c.sizeMark.Load() + int64(p) - int64(d)
		if c.delivered.Load() == d && q.pushed() == p {
			break
		}
	}
	return max(n, 0)
}

// inFlight is the number of delivered events not settled yet. It may be a
// few events off, but never below the truth nor negative: the ends are
// read before the deliveries, and each is counted after the delivery it
// ends.
func (c *counters) inFlight() int64 {
	ended := c.acked.Load() + c.returned.Load()
	return int64(c.delivered.Load() - ended)
}

// New builds a bus with the given queues (see DefaultQueues). Invalid
// configurations fail with an error wrapping ErrInvalidConfig that names the
// field, the bad value and the allowed values.
func New(queues []QueueConfig, opts ...Option) (*Bus, error) {
	if err := Validate(queues); err != nil {
		return nil, err
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt.apply(&o)
	}
	b := &Bus{
		clock:       o.clock,
		logger:      o.logger,
		byName:      make(map[string]*queue, len(queues)),
		systemClock: o.clock == SystemClock(),
		done:        make(chan struct{}),
		drainCh:     make(chan struct{}, 1),
	}
	started := o.clock.Now().UnixNano()
	durable := make(map[string]QueueConfig)
	for _, qc := range queues {
		window := qc.DedupeWindow
		if window == 0 {
			window = DefaultDedupeWindow
		}
		q := &queue{
			bus:           b,
			name:          qc.Name,
			tel:           newQueueTelemetry(qc.Name),
			store:         newFIFO(),
			dedupe:        newDedupe(window),
			maxDeliveries: qc.MaxDeliveries,
		}
		if o.histograms != nil {
			q.hist = newQueueHistograms(qc.Name)
		}
		if qc.Durable && o.dataDir != "" {
			durable[qc.Name] = qc
		}
		q.setLocked(qc)
		q.counters.summarySince.Store(started)
		b.queues = append(b.queues, q)
		b.byName[q.name] = q
		b.names = append(b.names, q.name)
	}
	b.validNames = strings.Join(b.names, ", ")
	for _, qc := range queues {
		if qc.DeadLetter != "" {
			b.byName[qc.Name].deadLetter = b.byName[qc.DeadLetter]
		}
	}
	tel, err := newTelemetry(b, o)
	if err != nil {
		return nil, err
	}
	b.tel = tel
	if o.histograms != nil {
		hs := make([]*queueHistograms, len(b.queues))
		for i, q := range b.queues {
			hs[i] = q.hist
		}
		if err := o.histograms.attach(hs, o.clock.Now()); err != nil {
			_ = tel.registration.Unregister()
			return nil, err
		}
	}
	if o.dataDir != "" {
		if err := b.openLogs(o, durable); err != nil {
			_ = tel.registration.Unregister()
			if o.histograms != nil {
				o.histograms.detach()
			}
			return nil, err
		}
	}
	for _, q := range b.queues {
		b.logger.Debug("queue configured", "queue", q.name, "capacity", q.capacity,
			"policy", string(q.policy), "timeout", q.timeout)
	}
	return b, nil
}

// Queues returns the queue names in configured order.
func (b *Bus) Queues() []string {
	return append([]string(nil), b.names...)
}

func (b *Bus) unknownQueue(name string) error {
	return fmt.Errorf("%w %q: valid queues are %s", ErrUnknownQueue, clip(name), b.validNames)
}

// maxNameInError bounds how much of a client-supplied name goes into an
// error message or span attribute: the name may be a megabyte of garbage.
const maxNameInError = 64

func clip(s string) string {
	if len(s) <= maxNameInError {
		return s
	}
	cut := maxNameInError
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// Publish offers ev to the named queue and returns what happened to it:
//
//   - (Accepted, nil): the event is in the queue.
//   - (Dropped, nil): a PolicyDrop queue stayed full for its timeout.
//   - (TimedOut, err wrapping ErrTimeout): a PolicyFail queue stayed full.
//   - (Cancelled, err wrapping ctx.Err()): ctx ended while waiting for room;
//     nothing was enqueued.
//   - (Duplicate, nil): ev.MsgID was accepted on the queue within its
//     dedupe window; nothing was enqueued. A duplicate of a publish still
//     being stored gets that publish's outcome (Duplicate, or its failure).
//   - (Failed, err wrapping ErrUnknownQueue or ErrInvalidEvent, or
//     ErrShuttingDown itself, or ErrStorage: a durable queue's log could
//     not store the event).
//
// On a durable queue (WithDataDir) Accepted means the event is in the
// queue's log, synced (fsync always) or written (fsync interval); Publish
// waits for that even when ctx ends meanwhile, since the event may already
// be stored.
//
// A queue with room accepts at once, even if ctx is already done: only a
// publish that has to wait can be withdrawn. Waiting publishers of one
// queue get room in arrival order. The bus keeps ev.Payload by reference:
// the caller must not modify it afterwards.
func (b *Bus) Publish(ctx context.Context, ev Event, queueName string) (Outcome, error) {
	p, outcome, err := b.begin(ctx, &ev, queueName, nil)
	if p == nil {
		return outcome, err
	}
	p.release()
	// The blocked caller watches ctx itself: cheaper than an AfterFunc
	// registration with ctx for every wait.
	select {
	case <-p.ch:
	case <-ctx.Done():
		p.q.withdrawCtx(p, ctx)
		<-p.ch // resolved by this withdraw or by whoever came first
	}
	return p.outcome, p.err
}

// PublishAsync is Publish without blocking, for a caller that must keep
// several publishes in flight in order (one connection's pipelined frames).
// The event takes its place at once, in call order: accepted (or evicting,
// for PolicyDropOldest) when the queue has room, otherwise registered as a
// waiting publisher at the tail of the queue's FIFO with its timeout counted
// from now. done is called exactly once with the (Outcome, error) Publish
// would return: before PublishAsync returns when the outcome is immediate
// (PublishAsync then returns nil), otherwise later from the goroutine that
// resolves the wait (a consumer freeing room, the queue's timer, ctx's AfterFunc,
// Shutdown or Pending.Cancel), or, on a durable queue, from the log's
// goroutine once the event is stored. The bus holds none of its locks while
// calling done, but done runs on those goroutines: it must not block, nor
// take locks its caller may hold around PublishAsync or Cancel.
//
// Ending ctx withdraws a waiting publish (done gets Cancelled, nothing is
// enqueued), as does Cancel on the returned handle; a non-nil handle may
// already be resolved by the time the caller looks at it. Watching ctx
// costs a context.AfterFunc per wait unless ctx can never end (ctx.Done()
// is nil, as for context.WithoutCancel): a caller that keeps the handles
// anyway can pass such a ctx and Cancel them itself.
func (b *Bus) PublishAsync(ctx context.Context, ev Event, queueName string, done func(Outcome, error)) *Pending {
	if done == nil {
		done = func(Outcome, error) {}
	}
	p, outcome, err := b.begin(ctx, &ev, queueName, done)
	if p == nil {
		done(outcome, err)
		return nil
	}
	if p.release() {
		return nil // resolved while registering: done has run
	}
	return p
}

// Pending is a publish started by PublishAsync that is waiting for room.
type Pending struct {
	q      *queue
	ctx    context.Context
	ev     Event
	pubSC  trace.SpanContext
	traced bool       // the publish span is recorded (see entry.traced)
	span   trace.Span // the publish span; nil without tracing
	start  time.Time
	depth  int // the queue depth the publish found
	// done receives the result of PublishAsync; ch is closed instead for
	// Publish.
	done func(Outcome, error)
	ch   chan struct{}

	// Set while registering, read by finish only.
	waitStart time.Time
	waitSpan  trace.Span
	stopCtx   func() bool

	// deadline is when the wait times out; zero while the queue's policy
	// has no timeout. Set at registration and by Reconfigure, under q.mu.
	deadline time.Time

	// refs is 2 at registration: the registering goroutine and the
	// resolver each drop one, and whoever drops the last one finishes the
	// publish. So a wait resolved while its telemetry is still being set
	// up is finished by the registrant, without a lock held across it.
	refs atomic.Int32

	// Guarded by q.mu until resolved is set; fixed afterwards, except for
	// a publish waiting for the log (see settlingLocked).
	resolved   bool
	resolvedAt time.Time
	outcome    Outcome
	seq        uint64 // != 0: admitted into the queue
	err        error
	next       *Pending // list of resolved waits to finish after unlocking

	// sync is the log sync that stored the event, for the publish span.
	sync time.Duration
	// dups are later publishes of the same msg id that wait for this one
	// to be stored (guarded by q.mu).
	dups []*Pending
}

// settlingLocked marks p as no longer withdrawable because its outcome
// now depends on the log (its own append, or the append of the publish it
// duplicates): the log's callback answers it through complete. Called
// with q.mu held.
func (p *Pending) settlingLocked(at time.Time) {
	if p.refs.Load() == 0 {
		p.refs.Store(2) // a new publish: its caller and the callback
	}
	p.resolved, p.resolvedAt = true, at
}

// complete answers a publish that waited for the log: outcome when err is
// nil, else Failed with err.
func (p *Pending) complete(outcome Outcome, seq uint64, sync time.Duration, err error) {
	if err != nil {
		outcome, seq = Failed, 0
	}
	p.outcome, p.seq, p.sync, p.err = outcome, seq, sync, err
	p.release()
}

// Cancel withdraws the publish if it is still waiting for room: done is
// then called with (Cancelled, an error wrapping context.Canceled) in this
// goroutine before Cancel returns true. It returns false, doing nothing,
// when the publish was already resolved (or p is nil).
func (p *Pending) Cancel() bool {
	if p == nil {
		return false
	}
	return p.q.withdraw(p, fmt.Errorf("publish to queue %q withdrawn while waiting for room: %w", p.q.name, context.Canceled))
}

// begin runs a publish up to the point where it has to wait. It returns
// the outcome when that is immediate, otherwise the registered wait, which
// the caller must release once. ev is the caller's, by pointer so that the
// event is copied once, into its queue slot or its Pending; begin does not
// keep the pointer.
func (b *Bus) begin(ctx context.Context, ev *Event, queueName string, done func(Outcome, error)) (*Pending, Outcome, error) {
	q, ok := b.byName[queueName]
	if !ok {
		outcome, err := b.publishUnknown(ctx, *ev, queueName)
		return nil, outcome, err
	}
	start := b.now()
	var span trace.Span
	pubSC := ev.Parent // without tracing, deliveries carry the publisher's context on
	traced := false
	if b.tel.tracing {
		ctx, span = b.tel.startPublish(ctx, q, ev, start)
		pubSC = span.SpanContext()
		traced = span.IsRecording()
	}
	var invalid error
	switch {
	case ev.Type == "":
		invalid = fmt.Errorf("%w: empty type for queue %q: a non-empty event type is required", ErrInvalidEvent, q.name)
	case len(ev.MsgID) > MaxMsgIDBytes:
		invalid = fmt.Errorf("%w: msg id of %d bytes for queue %q: at most %d bytes", ErrInvalidEvent, len(ev.MsgID), q.name, MaxMsgIDBytes)
	}
	if invalid != nil {
		outcome, err := q.finishPublish(ctx, span, ev.Type, start, Failed, 0, int(q.depth()), invalid)
		return nil, outcome, err
	}

	q.mu.Lock()
	if b.closing.Load() {
		depth := q.store.Len()
		q.mu.Unlock()
		outcome, err := q.finishPublish(ctx, span, ev.Type, start, Failed, 0, depth, ErrShuttingDown)
		return nil, outcome, err
	}
	depth := q.store.Len()
	newPending := func() *Pending {
		p := &Pending{q: q, ctx: ctx, ev: *ev, pubSC: pubSC, traced: traced, span: span, start: start, depth: depth, done: done}
		if done == nil {
			p.ch = make(chan struct{})
		}
		return p
	}
	if ev.MsgID != "" {
		if r, ok := q.dedupe.lookup(ev.MsgID, start); ok {
			if r.commit == nil {
				q.mu.Unlock()
				outcome, err := q.finishPublish(ctx, span, ev.Type, start, Duplicate, 0, depth, nil)
				return nil, outcome, err
			}
			// The first publish is being stored: answer as it is answered.
			p := newPending()
			p.settlingLocked(start)
			r.commit.dups = append(r.commit.dups, p)
			q.mu.Unlock()
			return p, "", nil
		}
	}
	if depth+q.reserved < q.capacity && len(q.waiters) == 0 {
		if q.log != nil {
			p := newPending()
			p.settlingLocked(start)
			err := q.appendLocked(p, nil)
			q.mu.Unlock()
			if err != nil {
				outcome, err := q.finishPublish(ctx, span, ev.Type, start, Failed, 0, depth, err)
				return nil, outcome, err
			}
			return p, "", nil
		}
		pubSCp := &pubSC
		if !b.tel.tracing {
			pubSCp = &ev.Parent // what pubSC holds: setEvent checks it once
		}
		seq := q.pushLocked(ev, pubSCp, traced, start)
		q.wakeConsumersLocked()
		q.mu.Unlock()
		outcome, err := q.finishPublish(ctx, span, ev.Type, start, Accepted, seq, depth, nil)
		return nil, outcome, err
	}
	if q.policy == PolicyDropOldest {
		return q.publishEvict(ctx, span, newPending, ev, pubSC, traced, start, depth)
	}
	p := newPending()
	q.registerLocked(p)
	return p, "", nil
}

// publishEvict makes room by dropping the oldest waiting event. Called
// with q.mu held; releases it. One arrival evicts one event at most, even
// when the queue holds more than its capacity (events returned by Nack or
// Close, or a capacity lowered by Reconfigure): the depth then stays where
// it is and falls as consumers drain it, instead of one publish throwing
// away everything above the capacity at once. A durable queue cannot evict
// events whose append is still in flight: when those alone fill it, the new
// event takes a slot past capacity rather than wait, as the policy promises.
func (q *queue) publishEvict(ctx context.Context, span trace.Span, newPending func() *Pending, ev *Event, pubSC trace.SpanContext, traced bool, start time.Time, depth int) (*Pending, Outcome, error) {
	var one [1]entry
	evicted := one[:0]
	if q.store.Len() > 0 && q.store.Len()+q.reserved >= q.capacity {
		evicted = append(evicted, *q.store.oldest()) // Pop, inlined
		q.store.dropHead()
		q.setSizeLocked(q.store.Len())
	}
	var p *Pending
	var seq uint64
	var err error
	if q.log != nil {
		p = newPending()
		p.settlingLocked(start)
		err = q.appendLocked(p, nil)
	} else {
		seq = q.pushLocked(ev, &pubSC, traced, start)
		q.wakeConsumersLocked()
	}
	q.mu.Unlock()
	b := q.bus
	for i := range evicted {
		// Recorded as an ack, so that an evicted event never comes back.
		q.walSettle(walAck, evicted[i].seq, "")
		q.countDrop(DropEvicted)
		if b.tel.tracing {
			b.tel.dropSpan(q, evicted[i].pubSC(), DropEvicted, evicted[i].seq, start)
		}
	}
	if err != nil {
		outcome, err := q.finishPublish(ctx, span, ev.Type, start, Failed, 0, depth, err)
		return nil, outcome, err
	}
	if p == nil {
		outcome, err := q.finishPublish(ctx, span, ev.Type, start, Accepted, seq, depth, nil)
		return nil, outcome, err
	}
	return p, "", nil
}

// registerLocked puts p at the tail of the queue's waiting publishers and
// starts its timeout now, so that each wait is timed from its own arrival.
// Called with q.mu held; releases it. p may be resolved by others as soon
// as the lock is released; the caller's release finishes it then.
func (q *queue) registerLocked(p *Pending) {
	b := q.bus
	p.refs.Store(2)
	p.waitStart = b.now()
	q.waiters = append(q.waiters, p)
	if q.policy.UsesTimeout() {
		p.deadline = p.waitStart.Add(q.timeout)
		if q.timer == nil {
			// The only waiter: any earlier one has been resolved, which
			// stopped the timer when the FIFO emptied.
			q.armLocked(q.timeout)
		}
	}
	// Counted after arming: tests advance a fake clock once they see it.
	q.counters.waiting.Store(int64(len(q.waiters)))
	q.mu.Unlock()

	if p.traced {
		_, p.waitSpan = b.tel.tracer.Start(p.ctx, q.tel.waitName, b.tel.startOpts(q.tel.childStart, p.waitStart)...)
	}
	// ctx is captured: finish clears p.ctx, and a callback that has
	// already started cannot be stopped.
	ctx := p.ctx
	switch {
	case ctx.Done() == nil:
	case ctx.Err() != nil:
		q.withdrawCtx(p, ctx)
	case p.done != nil: // Publish watches ctx while it blocks
		p.stopCtx = context.AfterFunc(ctx, func() { q.withdrawCtx(p, ctx) })
	}
}

// withdrawCtx cancels p's wait because ctx ended.
func (q *queue) withdrawCtx(p *Pending, ctx context.Context) {
	q.withdraw(p, ctxError(ctx, fmt.Sprintf("publish to queue %q withdrawn while waiting for room", q.name)))
}

// resolveLocked ends p's wait with outcome unless something else has
// already; it reports whether it did. The caller takes p off q.waiters.
func (p *Pending) resolveLocked(outcome Outcome, seq uint64, err error, at time.Time) bool {
	if p.resolved {
		return false
	}
	p.resolved, p.resolvedAt, p.outcome, p.seq, p.err = true, at, outcome, seq, err
	return true
}

// armLocked starts the queue's timer to fire after d. Called with q.mu
// held and no timer armed.
func (q *queue) armLocked(d time.Duration) {
	q.timerGen++
	gen := q.timerGen
	q.timer = q.bus.clock.AfterFunc(d, func() { q.expire(gen) })
}

// stopTimerLocked stops the queue's timer, if armed, once no waiter needs
// it. A callback already running finds its generation outdated and does
// nothing. Called with q.mu held.
func (q *queue) stopTimerLocked() {
	if q.timer == nil {
		return
	}
	q.timer.Stop()
	q.timer = nil
	q.timerGen++
}

// expire is the queue's timer (generation gen): every waiter whose
// deadline has passed stayed full for its timeout. They are at the head of
// the FIFO, oldest first; the timer is re-armed for the next deadline.
func (q *queue) expire(gen uint64) {
	q.mu.Lock()
	if gen != q.timerGen {
		q.mu.Unlock()
		return // stopped or replaced after it fired
	}
	q.timer = nil
	// The policy is read under the lock: Reconfigure may have changed it
	// since the timer was armed, and the waiters time out by the current one.
	outcome, err := Dropped, error(nil)
	if q.policy == PolicyFail {
		outcome = TimedOut
		err = fmt.Errorf("queue %q stayed full (capacity %d) for %v: %w", q.name, q.capacity, q.timeout, ErrTimeout)
	}
	now := q.bus.clock.Now()
	var resolved pendingList
	for len(q.waiters) > 0 && !q.waiters[0].deadline.After(now) {
		p := q.popWaiterLocked()
		p.resolveLocked(outcome, 0, err, now)
		resolved.push(p)
	}
	if len(q.waiters) > 0 {
		// The head that armed the timer was admitted or withdrawn: wait
		// for the new head's deadline, which is later than now.
		q.armLocked(q.waiters[0].deadline.Sub(now))
	}
	q.mu.Unlock()
	resolved.release()
}

// withdraw cancels p's wait with err (wrapping context.Canceled) and
// reports whether it did.
func (q *queue) withdraw(p *Pending, err error) bool {
	q.mu.Lock()
	ok := p.resolveLocked(Cancelled, 0, err, q.bus.clock.Now())
	if ok {
		q.removeWaiterLocked(p)
	}
	q.mu.Unlock()
	if ok {
		p.release()
	}
	return ok
}

// release drops one reference to a registered publish and finishes it when
// that was the last one; it reports whether it did.
func (p *Pending) release() bool {
	if p.refs.Add(-1) != 0 {
		return false
	}
	p.finish()
	return true
}

// pendingList links waits resolved under the queue lock, in order, to be
// released once the lock is released.
type pendingList struct{ head, tail *Pending }

func (l *pendingList) push(p *Pending) {
	if l.tail == nil {
		l.head = p
	} else {
		l.tail.next = p
	}
	l.tail = p
}

// release releases the waits in list order. Call it without q.mu.
func (l pendingList) release() {
	for p := l.head; p != nil; {
		next := p.next
		p.next = nil
		p.release()
		p = next
	}
}

// finish ends a resolved wait: it stops the ctx watch, does the accounting
// and telemetry, and hands the result over.
func (p *Pending) finish() {
	q := p.q
	b := q.bus
	if p.stopCtx != nil {
		p.stopCtx()
	}
	// The wait ended when it was resolved, not when it is finished here.
	outcome, err, end := p.outcome, p.err, p.resolvedAt
	if !p.waitStart.IsZero() {
		b.tel.record(p.ctx, q, HistogramWait, end.Sub(p.waitStart))
	}
	if p.waitSpan != nil {
		if p.waitSpan.IsRecording() {
			p.waitSpan.SetAttributes(AttrOutcome.String(string(outcome)))
		}
		b.tel.end(p.waitSpan, end)
	}
	switch outcome {
	case Dropped:
		q.countDrop(DropTimeout)
		if b.tel.tracing {
			b.tel.dropSpan(q, p.pubSC, DropTimeout, 0, end)
		}
	case TimedOut:
		q.counters.unloggedTimeouts.Add(1)
	}
	if q.log != nil && outcome == Accepted && p.span != nil && p.span.IsRecording() {
		p.span.SetAttributes(AttrWALSyncMs.Float64(syncMillis(p.sync)))
	}
	p.outcome, p.err = q.finishPublish(p.ctx, p.span, p.ev.Type, p.start, outcome, p.seq, p.depth, err)
	done := p.done
	// The caller may keep the handle: let go of what it no longer needs.
	p.ctx, p.ev, p.span, p.waitSpan, p.stopCtx, p.done = nil, Event{}, nil, nil, nil, nil
	if done != nil {
		done(p.outcome, p.err)
		return
	}
	close(p.ch)
}

func (q *queue) removeWaiterLocked(p *Pending) {
	for i, x := range q.waiters {
		if x != p {
			continue
		}
		if i == 0 {
			q.popWaiterLocked()
			return
		}
		copy(q.waiters[i:], q.waiters[i+1:])
		q.waiters[len(q.waiters)-1] = nil
		q.waiters = q.waiters[:len(q.waiters)-1]
		break
	}
	q.waitersChangedLocked()
}

// popWaiterLocked removes the head waiter by moving the slice start, so
// that a long FIFO drained from its head is not shifted on every removal
// (append compacts it when it next grows).
func (q *queue) popWaiterLocked() *Pending {
	p := q.waiters[0]
	q.waiters[0] = nil
	if len(q.waiters) == 1 {
		q.waiters = q.waiters[:0] // keep the array: no allocation for the next wait
	} else {
		q.waiters = q.waiters[1:]
	}
	q.waitersChangedLocked()
	return p
}

// waitersChangedLocked publishes the number of waiters after a removal
// and stops the timer when none is left to time out.
func (q *queue) waitersChangedLocked() {
	q.counters.waiting.Store(int64(len(q.waiters)))
	if len(q.waiters) == 0 {
		q.stopTimerLocked()
	}
}

// finishPublish counts the outcome (but a memory queue's accepted event,
// which pushLocked counted), records the duration and ends the span.
func (q *queue) finishPublish(ctx context.Context, span trace.Span, evType string, start time.Time, outcome Outcome, seq uint64, depth int, err error) (Outcome, error) {
	if outcome != Accepted || q.log != nil {
		q.counters.published[outcomeIndex(outcome)].Add(1)
	}
	b := q.bus
	if span != nil {
		end := b.clock.Now()
		if b.tel.metrics {
			b.tel.record(ctx, q, HistogramPublish, end.Sub(start))
		}
		b.tel.endPublish(span, q.tel.publishAttrs[:], evType, outcome, seq, depth, err, end)
	} else if b.tel.metrics {
		b.tel.record(ctx, q, HistogramPublish, b.since(start))
	}
	return outcome, err
}

// publishUnknown fails a publish to a queue that does not exist. Its span
// is named plain "publish" so that arbitrary client input cannot create
// new span names.
func (b *Bus) publishUnknown(ctx context.Context, ev Event, name string) (Outcome, error) {
	err := b.unknownQueue(name)
	if b.tel.tracing {
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithNewRoot()}
		if ev.Parent.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, ev.Parent)
			opts = opts[:1]
		}
		_, span := b.tel.tracer.Start(ctx, string(SpanPublish), opts...)
		if span.IsRecording() {
			span.SetAttributes(AttrMessagingSystem.String(MessagingSystem),
				AttrDestinationName.String(clip(name)))
		}
		b.tel.endPublish(span, nil, clip(ev.Type), Failed, 0, 0, err, b.spanNow())
	}
	return Failed, err
}

// pushLocked appends an accepted event with the next seq to a memory
// queue. ev and pubSC are pointers so that the event is copied once, into
// its slot.
func (q *queue) pushLocked(ev *Event, pubSC *trace.SpanContext, traced bool, at time.Time) uint64 {
	q.nextSeq++
	e := q.store.pushSlot()
	e.seq, e.enqueuedAt = q.nextSeq, at
	e.setEvent(ev, pubSC, traced)
	// Counted here rather than by finishPublish: the count is the push
	// for the queue's depth (see counters.sizeMark).
	q.counters.published[acceptedIndex].Add(1)
	if ev.MsgID != "" {
		q.dedupe.add(ev.MsgID, q.nextSeq, at, nil)
	}
	return q.nextSeq
}

// admitWaitersLocked moves waiting publishers into the queue, oldest first,
// while there is room. It returns them as a list, which the caller
// releases once it has released q.mu.
func (q *queue) admitWaitersLocked() pendingList {
	var admitted pendingList
	if len(q.waiters) == 0 || q.store.Len()+q.reserved >= q.capacity {
		return admitted
	}
	now := q.bus.now() // the waiters' EnqueuedAt
	for len(q.waiters) > 0 && q.store.Len()+q.reserved < q.capacity {
		p := q.popWaiterLocked()
		if id := p.ev.MsgID; id != "" {
			if r, ok := q.dedupe.lookup(id, now); ok {
				if r.commit != nil {
					p.settlingLocked(now)
					r.commit.dups = append(r.commit.dups, p)
					continue
				}
				p.resolveLocked(Duplicate, 0, nil, now)
				admitted.push(p)
				continue
			}
		}
		if q.log != nil {
			p.settlingLocked(now)
			if err := q.appendLocked(p, nil); err != nil {
				p.outcome, p.err = Failed, err
				admitted.push(p)
			}
			continue
		}
		p.resolveLocked(Accepted, q.pushLocked(&p.ev, &p.pubSC, p.traced, now), nil, now)
		admitted.push(p)
	}
	q.wakeConsumersLocked()
	return admitted
}

// wakeConsumersLocked wakes as many idle consumers as there are waiting
// events.
func (q *queue) wakeConsumersLocked() {
	for n := q.store.Len(); n > 0 && len(q.idle) > 0; n-- {
		c := q.idle[0]
		copy(q.idle, q.idle[1:])
		q.idle[len(q.idle)-1] = nil
		q.idle = q.idle[:len(q.idle)-1]
		c.idle = false
		c.wake()
	}
}

func (q *queue) countDrop(r DropReason) {
	i := dropReasonIndex(r)
	q.counters.drops[i].Add(1)
	q.counters.unloggedDrops[i].Add(1)
}

// LogDrops writes, for each queue that dropped events or timed out
// publishes since its last summary, one log line with those counts, and
// nothing for a queue without any. The bus never logs a drop as it happens:
// an overloaded queue drops thousands of events a second, and a line each
// (or a line whenever something reads Stats or scrapes metrics) would flood
// the log exactly when it is needed. The bus's owner calls LogDrops on a
// ticker (DefaultDropLogInterval) so that summaries come at a steady pace;
// Shutdown writes the last ones. Safe to call concurrently with everything.
func (b *Bus) LogDrops() {
	for _, q := range b.queues {
		b.logDrops(q)
	}
}

// logDrops reports and resets the unlogged drops and timeouts of q.
func (b *Bus) logDrops(q *queue) {
	c := &q.counters
	timeouts := c.unloggedTimeouts.Swap(0)
	byTimeout := c.unloggedDrops[0].Swap(0)
	evicted := c.unloggedDrops[1].Swap(0)
	if timeouts == 0 && byTimeout == 0 && evicted == 0 {
		return
	}
	now := b.clock.Now()
	since := time.Duration(now.UnixNano() - c.summarySince.Swap(now.UnixNano()))
	// A timeout is a failed publish on a queue whose events must not be
	// lost, which the publisher has to handle: an error. A drop is the
	// queue's policy doing what it was configured to do: a warning.
	level := slog.LevelWarn
	if timeouts > 0 {
		level = slog.LevelError
	}
	set := q.settings.Load()
	b.logger.Log(context.Background(), level, "queue overflow", "queue", q.name, "policy", string(set.Policy),
		"capacity", set.Capacity, "dropped_timeout", byTimeout, "dropped_evicted", evicted,
		"publish_timeouts", timeouts, "drops_total", c.drops[0].Load()+c.drops[1].Load(),
		"since", since)
}

// Stats returns a snapshot of every queue. Counters are read without
// locking, so fields of one snapshot may be a few events apart under load.
func (b *Bus) Stats() Stats {
	st := make(Stats, len(b.queues))
	for _, q := range b.queues {
		c := &q.counters
		pub := make(map[Outcome]uint64, numOutcomes)
		for i, o := range Outcomes {
			pub[o] = c.published[i].Load()
		}
		drops := make(map[DropReason]uint64, numDropReasons)
		var total uint64
		for i, r := range DropReasons {
			n := c.drops[i].Load()
			drops[r] = n
			total += n
		}
		set := q.settings.Load()
		st[q.name] = QueueStats{
			Size:           int(q.depth()),
			MaxSize:        set.Capacity,
			Drops:          total,
			Policy:         set.Policy,
			TimeoutSeconds: set.Timeout.Seconds(),
			Published:      pub,
			DropsByReason:  drops,
			Timeouts:       pub[TimedOut],
			Delivered:      c.delivered.Load(),
			Redelivered:    c.redelivered.Load(),
			Acked:          c.acked.Load(),
			Waiting:        int(c.waiting.Load()),
			Consumers:      int(c.consumers.Load()),
			InFlight:       int(c.inFlight()),
			Durable:        q.log != nil,
			DeadLettered:   c.deadLettered.Load(),
		}
	}
	return st
}

// ctxError wraps ctx.Err() and, when the context was cancelled with a
// cause (context.WithCancelCause), the cause too, so that callers can
// branch on either.
func ctxError(ctx context.Context, msg string) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if cause != nil && cause != err {
		return fmt.Errorf("%s: %w: %w", msg, err, cause)
	}
	return fmt.Errorf("%s: %w", msg, err)
}

// since is clock.Now().Sub(t), but reads only the monotonic clock when the
// clock is the system's: half the cost of a full time.Now on the hot path.
func (b *Bus) since(t time.Time) time.Duration {
	if b.systemClock {
		return time.Since(t)
	}
	return b.clock.Now().Sub(t)
}

// anchorAge is how long now extends one wall-clock reading before it
// reads the wall clock again: how long a step of the wall clock (set by
// hand, or stepped by NTP) may take to show in the times the bus stamps.
// Between steps the kernel advances the monotonic and the wall clock
// alike (NTP slews both).
const anchorAge = time.Second

// now is clock.Now(). For the system clock it reads the monotonic clock
// only, as since does, and adds the time elapsed to an anchor taken with
// time.Now at most anchorAge ago: time.Now reads the wall clock too,
// which on a virtual machine without a usable TSC (kvm-clock) doubles the
// cost of the one clock read each publish needs. The result carries its
// monotonic reading, so durations and comparisons between bus times are
// as exact as with time.Now; its wall reading lags a step of the wall
// clock by up to anchorAge.
func (b *Bus) now() time.Time {
	if !b.systemClock {
		return b.clock.Now()
	}
	if a := b.anchor.Load(); a != nil {
		if d := time.Since(*a); d >= 0 && d < anchorAge {
			return a.Add(d)
		}
	}
	t := time.Now()
	// Concurrent callers may each store a fresh reading: any of them is a
	// good anchor.
	b.anchor.Store(&t)
	return t
}

// spanNow is the time to stamp on a span end: the zero time when the SDK
// reads the (system) clock itself.
func (b *Bus) spanNow() time.Time {
	if b.tel.stamp {
		return b.clock.Now()
	}
	return time.Time{}
}

// Draining reports whether Shutdown has begun: publishes are refused from
// then on. A readiness probe reports not-ready while this is true.
func (b *Bus) Draining() bool { return b.closing.Load() }

// Done is closed once Shutdown has finished draining (or given up).
func (b *Bus) Done() <-chan struct{} { return b.done }

// notifyDrain wakes Shutdown's drain loop if it is running.
func (b *Bus) notifyDrain() {
	if b.closing.Load() {
		select {
		case b.drainCh <- struct{}{}:
		default:
		}
	}
}

// Shutdown stops the bus: publishes fail with ErrShuttingDown from now on,
// publishers waiting for room fail with ErrShuttingDown, and consumers go on
// receiving until every queue is empty with nothing in flight, or ctx ends.
// Then blocked and later Receive calls fail with ErrShuttingDown. It returns
// the events left undelivered per queue (waiting + in flight) and, if ctx
// ended first, an error wrapping ctx.Err(). Only the first call does the
// work; later calls wait for it (or their own ctx) and return its result.
func (b *Bus) Shutdown(ctx context.Context) (map[string]int, error) {
	first := false
	b.shutdownOnce.Do(func() { first = true })
	if !first {
		select {
		case <-b.done:
			return cloneCounts(b.undelivered), b.shutdownErr
		case <-ctx.Done():
			return b.undeliveredNow(), fmt.Errorf("bus shutdown still draining: %w", ctx.Err())
		}
	}

	b.closing.Store(true)
	for _, q := range b.queues {
		q.mu.Lock()
		now := b.clock.Now()
		var failed pendingList
		for _, p := range q.waiters {
			p.resolveLocked(Failed, 0, ErrShuttingDown, now)
			failed.push(p)
		}
		clear(q.waiters)
		q.waiters = q.waiters[:0]
		q.waitersChangedLocked()
		q.mu.Unlock()
		failed.release()
	}
	b.logger.Info("bus shutting down: publishes refused, draining queues")

	var err error
drain:
	for {
		if b.undeliveredTotal() == 0 {
			break
		}
		select {
		case <-b.drainCh:
		case <-ctx.Done():
			err = fmt.Errorf("bus shutdown: drain deadline passed with events undelivered: %w", ctx.Err())
			break drain
		}
	}

	left := b.leftNow()
	counts := make(map[string]int, len(left))
	for i, q := range b.queues {
		counts[q.name] = left[i].waiting + left[i].inFlight
	}
	b.finished.Store(true)
	// A move still held keeps its dead letter in its log, not delivered:
	// the next start acks the source's copy, which the dead letter names.
	b.held.stop()
	// Appends still in flight are answered by Close; what is left in a
	// log is given back by the next New on the same data directory.
	if cerr := b.closeLogs(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	b.undelivered, b.shutdownErr = counts, err
	close(b.done)
	for i, q := range b.queues {
		b.logDrops(q)
		if counts[q.name] == 0 {
			b.logger.Info("queue drained", "queue", q.name)
			continue
		}
		if q.log != nil {
			b.logger.Warn("queue left undelivered events; they stay in its write-ahead log for the next start",
				"queue", q.name, "undelivered", counts[q.name], "waiting", left[i].waiting, "in_flight", left[i].inFlight)
			continue
		}
		b.logger.Warn("queue left undelivered events", "queue", q.name, "undelivered", counts[q.name],
			"waiting", left[i].waiting, "in_flight", left[i].inFlight)
	}
	return cloneCounts(counts), err
}

// leftover is what one queue still holds.
type leftover struct{ waiting, inFlight int }

// leftNow snapshots each queue's waiting and in-flight events, in
// configured order.
func (b *Bus) leftNow() []leftover {
	left := make([]leftover, len(b.queues))
	for i, q := range b.queues {
		q.mu.Lock()
		// Reserved slots are events being stored: about to wait too.
		left[i] = leftover{q.store.Len() + q.reserved, int(q.counters.inFlight())}
		q.mu.Unlock()
	}
	return left
}

// undeliveredNow counts waiting and in-flight events per queue.
func (b *Bus) undeliveredNow() map[string]int {
	counts := make(map[string]int, len(b.queues))
	for i, l := range b.leftNow() {
		counts[b.queues[i].name] = l.waiting + l.inFlight
	}
	return counts
}

func (b *Bus) undeliveredTotal() int {
	n := 0
	for _, l := range b.leftNow() {
		n += l.waiting + l.inFlight
	}
	return n
}

func cloneCounts(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
