package bus

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// A dead-letter move takes an event that used up its deliveries out of its
// queue (the source) into the source's dead-letter queue, exactly once,
// also across a crash. Between two durable queues it goes in four steps,
// each on stable storage before the next starts:
//
//  1. the source's log records the nack that ended the last delivery, with
//     its reason: a crash before step 2 is on disk leaves the event in the
//     source with its deliveries used up, and the next start moves it;
//  2. the dead-letter queue's log stores the new event, whose data names
//     its origin (source queue and seq), and syncs it;
//  3. the source's log records an ack and syncs it (wal.SyncAsync): a
//     crash between 2 and 3 leaves the event in both logs, and the next
//     start acks the source copy because a live dead letter names it
//     (finishMoves). A failed sync holds the move and retries it until
//     it succeeds or the bus shuts down (srcSynced);
//  4. only then does the new event join the dead-letter queue. Until step
//     3 is durable the dead letter cannot be delivered, so it cannot be
//     acked and dropped from its log either, which would hide the origin
//     that step 3's recovery relies on.
//
// A dead-letter queue in memory is as durable as its memory: the move is
// one push and an ack in the source's log.
type deadLetterMove struct {
	src *queue
	dlq *queue
	e   entry // as it left src, its last delivery counted
	dl  DeadLetter
	ne  entry // the new event in the dead-letter queue
	// neRare is ne's rare part, allocated with the move.
	neRare entryRare
	// backoff is the wait before the next retry of a held move's source
	// sync (0: never held); guarded by the bus's held.mu.
	backoff time.Duration
}

// deadLetterDue reports whether e, nacked or abandoned with its
// redeliveries counted, has used up the queue's deliveries.
func (q *queue) deadLetterDue(e *entry) bool {
	return q.deadLetter != nil && q.maxDeliveries > 0 && e.redeliveries() >= q.maxDeliveries
}

// newMove starts the move of e, which has left q's memory, at now.
func (q *queue) newMove(e entry, now time.Time) *deadLetterMove {
	m := &deadLetterMove{src: q, dlq: q.deadLetter, e: e,
		dl: DeadLetter{Queue: q.name, Seq: e.seq, Deliveries: e.redeliveries(), Reason: e.reason()}}
	r := e.r()
	m.neRare = entryRare{parent: r.parent, pubSC: r.pubSC, traced: r.traced, dl: &m.dl}
	m.ne = entry{typ: e.typ, payload: e.payload, msgID: e.msgID, enqueuedAt: now, rare: &m.neRare}
	return m
}

// sendToDeadLetter moves e, whose last nack is recorded in q's log (step
// 1), to the dead-letter queue as a new event there. It never blocks on
// room: like a requeue, the move may take the dead-letter queue past its
// capacity, because the event was accepted once and must not be lost.
// Called without any queue lock.
func (q *queue) sendToDeadLetter(e entry) {
	m := q.newMove(e, q.bus.clock.Now())
	dlq := m.dlq
	dlq.mu.Lock()
	if dlq.log == nil {
		dlq.nextSeq++
		m.ne.seq = dlq.nextSeq
		dlq.store.Push(m.ne)
		dlq.setSizeLocked(dlq.store.Len())
		dlq.wakeConsumersLocked()
		dlq.mu.Unlock()
		q.walSettle(walAck, e.seq, "")
		m.moved()
		return
	}
	err := dlq.appendLocked(nil, m) // step 2; stored goes on from there
	dlq.mu.Unlock()
	if err != nil {
		m.failed(err)
	}
}

// stored is the dead-letter queue log's answer to step 2, on that log's
// completer goroutine.
func (m *deadLetterMove) stored(a wal.Appended, err error) {
	if err != nil {
		m.dlq.counters.storageErrors.Add(1)
		m.release(false)
		m.failed(fmt.Errorf("queue %q: dead letter not stored: %w: %w", m.dlq.name, ErrStorage, err))
		return
	}
	m.ne.seq = a.Seq
	if m.dlq.fsyncInterval {
		// Appended means written, not synced: the ack of step 3 must not
		// reach the disk before the dead letter does.
		if err := m.dlq.log.SyncAsync(m.dlqSynced); err == nil {
			return
		}
		// Closed: Close has synced what was written.
	}
	m.dlqSynced(nil)
}

// dlqSynced ends step 2 and starts step 3.
func (m *deadLetterMove) dlqSynced(err error) {
	if err != nil {
		// The dead letter may or may not be on disk: withdraw it and give
		// the event back to its source. Should both survive a crash, the
		// next start keeps the dead letter and acks the source.
		m.dlq.counters.storageErrors.Add(1)
		m.dlq.walSettle(walAck, m.ne.seq, "")
		m.release(false)
		m.failed(fmt.Errorf("queue %q: dead letter not synced: %w: %w", m.dlq.name, ErrStorage, err))
		return
	}
	src := m.src
	if src.log == nil {
		m.land()
		return
	}
	src.walSettle(walAck, m.e.seq, "")
	if err := src.log.SyncAsync(m.srcSynced); err != nil {
		// Closed: the next start finds the dead letter naming the event
		// and acks it in the source.
		m.land()
	}
}

// srcSynced ends step 3. Should the source's sync fail, the move is held:
// the dead letter keeps its reserved slot, undelivered, and the sync is
// tried again (the source's log writes the ack again with it) until it
// succeeds or the bus shuts down. Delivered while a crash could still
// give the event back to its source, the dead letter could be consumed
// and dropped, and the event delivered again from the source.
func (m *deadLetterMove) srcSynced(err error) {
	b := m.src.bus
	if err != nil {
		m.src.counters.storageErrors.Add(1)
		b.held.hold(m, err)
		return
	}
	b.held.release(m)
	m.land()
}

// retrySrcSync is a held move's timer: it asks the source's log for
// another sync.
func (m *deadLetterMove) retrySrcSync() {
	defer m.src.bus.held.wg.Done()
	if !m.src.bus.held.fired(m) {
		return
	}
	// ErrClosed: the bus is shutting down; the dead letter stays in its
	// log, and the next start acks the source's copy.
	_ = m.src.log.SyncAsync(m.srcSynced)
}

// Held moves retry the source's sync after heldRetryMin, doubling up to
// heldRetryMax: a disk that comes back is noticed within seconds, and a
// dead one costs a failed sync every few seconds per move.
const (
	heldRetryMin = 50 * time.Millisecond
	heldRetryMax = 5 * time.Second
)

// heldMoves owns the retry timers of the held dead-letter moves (see
// srcSynced), so that Shutdown can stop them all and wait for any that
// already fired.
type heldMoves struct {
	mu      sync.Mutex
	moves   map[*deadLetterMove]Timer // armed timers
	bySrc   map[*queue]int            // held moves per source queue
	stopped bool
	wg      sync.WaitGroup // timers armed and not stopped, or running
}

// hold arms m's next retry after a failed sync of its source. The first
// hold of a queue's moves starts a failure episode, logged once; every
// failure is counted in the queue's storage errors by the caller.
func (h *heldMoves) hold(m *deadLetterMove, err error) {
	b := m.src.bus
	h.mu.Lock()
	defer h.mu.Unlock()
	if m.backoff == 0 {
		m.backoff = heldRetryMin
		if h.bySrc == nil {
			h.bySrc = make(map[*queue]int)
		}
		h.bySrc[m.src]++
		if h.bySrc[m.src] == 1 {
			b.logger.Error("dead letters held: the source's write-ahead log cannot make the acks of their moves durable; retrying until it can",
				"queue", m.src.name, "seq", m.e.seq, "dead_letter", m.dlq.name, "dead_letter_seq", m.ne.seq, "err", err)
		}
	} else {
		m.backoff = min(2*m.backoff, heldRetryMax)
	}
	if h.stopped {
		return // shutting down: see stop
	}
	if h.moves == nil {
		h.moves = make(map[*deadLetterMove]Timer)
	}
	h.wg.Add(1)
	h.moves[m] = b.clock.AfterFunc(m.backoff, m.retrySrcSync)
}

// fired takes m's timer off the armed ones as it fires, and reports
// whether it should still retry.
func (h *heldMoves) fired(m *deadLetterMove) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.moves, m)
	return !h.stopped
}

// release ends m's hold, if it had one, after its source's sync
// succeeded; the last of a queue's held moves ends its failure episode.
func (h *heldMoves) release(m *deadLetterMove) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m.backoff == 0 {
		return
	}
	h.bySrc[m.src]--
	if h.bySrc[m.src] == 0 {
		delete(h.bySrc, m.src)
		m.src.bus.logger.Info("dead letters released: their moves' acks are durable in the source's write-ahead log",
			"queue", m.src.name, "dead_letter", m.dlq.name)
	}
}

// stop disarms every retry and waits for those already running. A move
// still held then stays so: its dead letter is in its log, undelivered,
// and the next start acks the source's copy that the dead letter names.
func (h *heldMoves) stop() {
	h.mu.Lock()
	h.stopped = true
	for m, t := range h.moves {
		if t.Stop() {
			h.wg.Done()
		}
		delete(h.moves, m)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// land is step 4: the dead letter joins its queue.
func (m *deadLetterMove) land() {
	m.release(true)
	m.moved()
}

// release gives up the dead letter's reserved slot in the dead-letter
// queue, putting the dead letter in its place when it landed.
func (m *deadLetterMove) release(landed bool) {
	dlq := m.dlq
	var admitted pendingList
	dlq.mu.Lock()
	dlq.reserved--
	if landed {
		// By seq: events appended after it may have joined first.
		dlq.store.Requeue(m.ne)
		dlq.setSizeLocked(dlq.store.Len())
		dlq.wakeConsumersLocked()
	} else {
		admitted = dlq.admitWaitersLocked()
	}
	dlq.mu.Unlock()
	admitted.release()
}

// failed gives the event back to its source: the dead-letter queue could
// not store it.
func (m *deadLetterMove) failed(err error) {
	q := m.src
	b := q.bus
	b.logger.Warn("dead letter not moved; the event goes back to its queue", "queue", q.name,
		"seq", m.e.seq, "dead_letter", m.dlq.name, "err", err)
	q.mu.Lock()
	q.walSettle(walNack, m.e.seq, m.e.reason())
	q.store.Requeue(m.e)
	q.setSizeLocked(q.store.Len())
	q.wakeConsumersLocked()
	q.mu.Unlock()
	b.notifyDrain()
}

// moved counts a finished move and records its span.
func (m *deadLetterMove) moved() {
	q := m.src
	b := q.bus
	if b.tel.tracing && m.e.traced() {
		b.tel.deadLetterSpan(q, &m.e, &m.dl, b.spanNow())
	}
	q.counters.deadLettered.Add(1)
	b.notifyDrain()
}

// origin names an event by its queue and seq, as a dead letter does.
type origin struct {
	queue string
	seq   uint64
}

// finishMoves completes, at start and before anything is delivered, the
// dead-letter moves a crash interrupted (see deadLetterMove):
//
//   - an event that a live dead letter names as its origin, with the same
//     type, msg id and payload, was moved: its source acks it. (Comparing
//     the event too keeps a seq given again after a power loss in fsync
//     interval mode from being taken for the moved event.)
//   - an event whose deliveries were used up (its last nack recorded, or
//     its last delivery in flight at the crash) is moved now, as step 2
//     onwards would have.
//
// rec holds each durable queue's recovered events and gains the new dead
// letters. Every ack is synced before it returns, after the dead letters
// it depends on (a recovered one is durable already: wal.Open rewrote it
// into a synced segment), so that no dead letter can be consumed while
// its source could still give the event back. A storage error fails the
// start; the next start finds the same state and finishes again.
func (b *Bus) finishMoves(rec map[*queue][]entry) error {
	ctx := context.Background()
	named := make(map[origin]Event)
	for _, es := range rec {
		for i := range es {
			if dl := es[i].dl(); dl != nil {
				named[origin{dl.Queue, dl.Seq}] = es[i].event()
			}
		}
	}
	type sourceAck struct {
		q   *queue
		seq uint64
	}
	var acks []sourceAck
	var due []*deadLetterMove
	now := b.clock.Now()
	for _, q := range b.queues {
		if q.log == nil {
			continue
		}
		kept := rec[q][:0]
		for _, e := range rec[q] {
			ev, ok := named[origin{q.name, e.seq}]
			switch {
			case ok && sameEvent(ev, e.event()):
				acks = append(acks, sourceAck{q, e.seq})
			case q.deadLetterDue(&e):
				due = append(due, q.newMove(e, now))
			default:
				kept = append(kept, e)
			}
		}
		rec[q] = kept
	}
	// Step 2 for the due moves, each dead letter synced.
	finished := len(acks)
	var moved []*deadLetterMove
	for _, m := range due {
		if err := m.storeAtStart(ctx, rec); err != nil {
			b.logger.Warn("dead letter not moved at start; the event stays in its queue", "queue", m.src.name,
				"seq", m.e.seq, "dead_letter", m.dlq.name, "err", err)
			rec[m.src] = insertBySeq(rec[m.src], m.e)
			continue
		}
		moved = append(moved, m)
		acks = append(acks, sourceAck{m.src, m.e.seq})
	}
	// Step 3 for all: acks in the sources, each source synced once.
	var sources []*queue
	for _, a := range acks {
		if err := a.q.log.Ack(a.seq); err != nil {
			return fmt.Errorf("bus: queue %q: ack seq %d after its dead-letter move: %w", a.q.name, a.seq, err)
		}
		if !slices.Contains(sources, a.q) {
			sources = append(sources, a.q)
		}
	}
	for _, q := range sources {
		if err := q.log.Sync(ctx); err != nil {
			return fmt.Errorf("bus: queue %q: sync the acks of dead-letter moves: %w", q.name, err)
		}
	}
	for _, m := range moved {
		m.moved()
	}
	if len(acks) > 0 {
		b.logger.Info("dead-letter moves finished at start", "acked_in_source", finished, "moved", len(moved))
	}
	return nil
}

// storeAtStart is step 2 of a move at start: the dead letter is appended
// to its queue's log and synced, and joins rec.
func (m *deadLetterMove) storeAtStart(ctx context.Context, rec map[*queue][]entry) error {
	dlq := m.dlq
	if dlq.log == nil {
		dlq.nextSeq++
		m.ne.seq = dlq.nextSeq
		dlq.store.Push(m.ne)
		return nil
	}
	data := encodeRecord(nil, &m.ne)
	a, err := dlq.log.Append(ctx, data, "", m.ne.enqueuedAt)
	if err == nil && dlq.fsyncInterval {
		err = dlq.log.Sync(ctx)
	}
	if err != nil {
		return err
	}
	m.ne.seq = a.Seq
	rec[dlq] = append(rec[dlq], m.ne)
	return nil
}

// sameEvent reports whether a dead letter carries the event e.
func sameEvent(dead, e Event) bool {
	return dead.Type == e.Type && dead.MsgID == e.MsgID && bytes.Equal(dead.Payload, e.Payload)
}

// insertBySeq puts e into es, which is sorted by seq.
func insertBySeq(es []entry, e entry) []entry {
	i := len(es)
	for i > 0 && es[i-1].seq > e.seq {
		i--
	}
	es = append(es, entry{})
	copy(es[i+1:], es[i:])
	es[i] = e
	return es
}

// deadLetterCopy is the Delivery's copy of an entry's dead-letter info, so
// that a consumer cannot change what a redelivery will carry.
func deadLetterCopy(dl *DeadLetter) *DeadLetter {
	if dl == nil {
		return nil
	}
	c := *dl
	return &c
}
