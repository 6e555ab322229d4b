package bus

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// WithDataDir keeps every Durable queue's accepted events in a write-ahead
// log under dir/queues/<name>/, so that they survive a crash: New creates
// dir (0700), locks it against a second bus, and gives back every event
// not yet acked, in order, with its seq, its delivery count and the msg ids
// of the dedupe window. Without it Durable is ignored and every queue lives
// in memory. A bus with a data directory runs two goroutines per durable
// queue (the log's syncer and completer): Shutdown stops them and releases
// the directory.
func WithDataDir(dir string) Option {
	return optionFunc(func(o *options) { o.dataDir = dir })
}

// WithWALOptions sets the write-ahead log options for tests and tuning:
// the file system (fault injection), segment and record sizes, and an
// extra OnSync hook. The bus sets Fsync, FsyncInterval, DedupeWindow and
// Now from the queue's configuration and its clock, and Logger when unset.
func WithWALOptions(opts wal.Options) Option {
	return optionFunc(func(o *options) { o.walOptions = opts })
}

// Durable reports whether the named queue's accepted events survive a
// crash: a Durable queue on a bus with a data directory. It is false for
// an unknown queue.
func (b *Bus) Durable(queue string) bool {
	q, ok := b.byName[queue]
	return ok && q.log != nil
}

// openLogs locks the data directory and opens the log of every durable
// queue, finishes the dead-letter moves a crash interrupted (finishMoves:
// every log must be open for that), then fills the queues with what they
// recovered. On error everything opened is closed again.
func (b *Bus) openLogs(o options, durable map[string]QueueConfig) (err error) {
	dir := o.dataDir
	fsys := o.walOptions.FS
	if fsys == nil {
		fsys = wal.OSFS{}
	}
	if err := fsys.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bus: create data dir %s: %w", dir, err)
	}
	lock, err := fsys.Lock(filepath.Join(dir, "LOCK"))
	if err != nil {
		return fmt.Errorf("bus: data dir %s is in use (another sidecar, or another bus in this process, holds its lock): %w", dir, err)
	}
	b.dirLock = lock
	defer func() {
		if err != nil {
			_ = b.closeLogs() // the open error is the one to report
		}
	}()
	recovered := make(map[*queue][]entry, len(durable))
	for _, q := range b.queues {
		qc, ok := durable[q.name]
		if !ok {
			continue
		}
		if q.name == "." || q.name == ".." {
			return fmt.Errorf("bus: durable queue %q: the name cannot name its log directory under %s; rename the queue", q.name, dir)
		}
		entries, err := q.openLog(o, filepath.Join(dir, "queues", q.name), qc)
		if err != nil {
			return err
		}
		recovered[q] = entries
	}
	if err := b.finishMoves(recovered); err != nil {
		return err
	}
	for _, q := range b.queues {
		for _, e := range recovered[q] {
			q.store.Push(e)
		}
		q.setSizeLocked(q.store.Len())
	}
	return nil
}

// openLog opens q's log and returns the unacked events it holds, lowest
// seq first, for openLogs to put in the queue.
func (q *queue) openLog(o options, dir string, qc QueueConfig) ([]entry, error) {
	b := q.bus
	wo := o.walOptions
	wo.Fsync = wal.FsyncMode(qc.Fsync)
	wo.FsyncInterval = qc.FsyncInterval
	wo.DedupeWindow = q.dedupe.window
	wo.Now = b.clock.Now
	if wo.Logger == nil {
		wo.Logger = b.logger.With("queue", q.name)
	}
	hook := wo.OnSync
	wo.OnSync = func(si wal.SyncInfo) {
		if b.tel.metrics {
			b.tel.record(context.Background(), q, HistogramSync, si.Duration)
		}
		if hook != nil {
			hook(si)
		}
	}
	l, rec, err := wal.Open(context.Background(), dir, wo)
	if err != nil {
		return nil, fmt.Errorf("bus: queue %q: open write-ahead log: %w", q.name, err)
	}
	entries := make([]entry, 0, len(rec.Records))
	for _, r := range rec.Records {
		e, err := decodeRecord(r.Data, r.Seq, r.MsgID, r.AcceptedAt, r.Deliveries)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("bus: queue %q: recover from %s: %w", q.name, dir, err)
		}
		if r.Reason != "" {
			e.setRare(func(er *entryRare) { er.reason = r.Reason })
		}
		entries = append(entries, e)
	}
	for _, id := range rec.MsgIDs {
		q.dedupe.add(id.ID, id.Seq, id.AcceptedAt, nil)
	}
	q.nextSeq = rec.NextSeq - 1
	q.log = l
	q.onStored = q.storedOne
	q.fsyncInterval = wo.Fsync == wal.FsyncInterval
	if len(rec.Records) > 0 || rec.NextSeq > 1 {
		b.logger.Info("queue recovered", "queue", q.name, "events", len(rec.Records),
			"next_seq", rec.NextSeq, "msg_ids", len(rec.MsgIDs), "torn_bytes", rec.TornBytes)
	}
	return entries, nil
}

// closeLogs closes every open log and releases the data directory.
func (b *Bus) closeLogs() error {
	var errs []error
	for _, q := range b.queues {
		if q.log == nil {
			continue
		}
		if err := q.log.Close(); err != nil && !errors.Is(err, wal.ErrClosed) {
			errs = append(errs, fmt.Errorf("bus: queue %q: close write-ahead log: %w", q.name, err))
		}
	}
	if b.dirLock != nil {
		errs = append(errs, b.dirLock.Close())
		b.dirLock = nil
	}
	return errors.Join(errs...)
}

// maxScratch bounds the encoding buffer a queue keeps between appends.
const maxScratch = 64 << 10

// appendLocked starts storing an event in the queue's log and reserves
// its slot: the event of publish p, or a dead letter on its way in
// (moved). Called with q.mu held.
//
// A publish waits in q.storing for the log's answer (storedOne); its
// entry is rebuilt from p then. A dead letter has a callback of its own.
func (q *queue) appendLocked(p *Pending, moved *deadLetterMove) error {
	var e entry
	done := q.onStored
	if moved != nil {
		e = moved.ne
		done = func(a wal.Appended, err error) {
			q.land() // the publishes before it, in seq order
			moved.stored(a, err)
		}
	} else {
		e = p.entry()
	}
	q.scratch = encodeRecord(q.scratch[:0], &e)
	msgID := e.msgID
	if moved != nil {
		msgID = "" // kept in the data; see encodeRecord
	}
	seq, err := q.log.AppendAsync(q.scratch, msgID, e.enqueuedAt, done)
	if cap(q.scratch) > maxScratch {
		q.scratch = nil
	}
	switch {
	case errors.Is(err, wal.ErrClosed):
		return fmt.Errorf("queue %q: %w", q.name, ErrShuttingDown)
	case errors.Is(err, wal.ErrInvalid):
		return fmt.Errorf("%w: queue %q: %w", ErrInvalidEvent, q.name, err)
	case err != nil:
		return fmt.Errorf("queue %q: %w: %w", q.name, ErrStorage, err)
	}
	q.reserved++
	if moved == nil {
		q.storing.push(p)
		if msgID != "" {
			q.dedupe.add(msgID, seq, e.enqueuedAt, p)
		}
	}
	return nil
}

// entry is the queue entry of a publish being stored: accepted when it
// started settling (settlingLocked).
func (p *Pending) entry() entry {
	e := entry{enqueuedAt: p.resolvedAt}
	e.setEvent(&p.ev, &p.pubSC, p.traced)
	return e
}

// landing is the log's answer to one publish's append.
type landing struct {
	seq  uint64
	sync time.Duration
	err  error
	p    *Pending
	dups []*Pending
}

// storedOne is the log's answer to a publish's append (appendLocked), on
// one of the log's goroutines, which call back one at a time, in seq
// order. The answers of one write are gathered and handled together at
// the last one (land): one lock of the queue for the lot rather than one
// per event, which the publishers and consumers contend for.
func (q *queue) storedOne(a wal.Appended, err error) {
	q.landed = append(q.landed, landing{seq: a.Seq, sync: a.Sync, err: err})
	if a.Last {
		q.land()
	}
}

// land handles the gathered answers (storedOne): each event joins the
// queue, or its slot is freed, and its publisher (and the publishes of
// the same msg id that waited for it) hears the outcome.
func (q *queue) land() {
	if len(q.landed) == 0 {
		return
	}
	failed := false
	var admitted pendingList
	q.mu.Lock()
	for i := range q.landed {
		l := &q.landed[i]
		p := q.storing.pop()
		l.p, l.dups = p, p.dups
		p.dups = nil
		q.reserved--
		id := p.ev.MsgID
		if l.err == nil {
			e := p.entry()
			e.seq = l.seq
			q.store.Push(e)
			if id != "" {
				q.dedupe.stored(id, l.seq)
			}
			continue
		}
		failed = true
		if id != "" {
			q.dedupe.forget(id, l.seq)
		}
	}
	q.setSizeLocked(q.store.Len())
	q.wakeConsumersLocked()
	if failed {
		admitted = q.admitWaitersLocked() // the reserved slots are free again
	}
	q.mu.Unlock()
	admitted.release()

	for i := range q.landed {
		l := q.landed[i]
		q.landed[i] = landing{}
		err := l.err
		if err != nil {
			q.counters.storageErrors.Add(1)
			err = fmt.Errorf("queue %q: event not stored: %w: %w", q.name, ErrStorage, err)
		}
		l.p.complete(Accepted, l.seq, l.sync, err)
		for _, d := range l.dups {
			d.complete(Duplicate, 0, 0, err)
		}
	}
	q.landed = q.landed[:0]
	q.bus.notifyDrain()
}

// pendingFIFO is a queue of publishes, oldest first.
type pendingFIFO struct {
	buf  []*Pending
	head int
}

func (f *pendingFIFO) push(p *Pending) {
	if f.head > 0 && len(f.buf) == cap(f.buf) {
		// Reuse the room popped at the front rather than grow.
		n := copy(f.buf, f.buf[f.head:])
		clear(f.buf[n:])
		f.buf, f.head = f.buf[:n], 0
	}
	f.buf = append(f.buf, p)
}

// pop removes the oldest publish; the FIFO must not be empty.
func (f *pendingFIFO) pop() *Pending {
	p := f.buf[f.head]
	f.buf[f.head] = nil
	f.head++
	if f.head == len(f.buf) {
		f.buf, f.head = f.buf[:0], 0
	}
	return p
}

// walOp is what walSettle records.
type walOp uint8

const (
	walDeliver walOp = iota
	walAck
	walNack
)

// walSettle records a delivery, ack or nack in the queue's log, if it has
// one; a nack carries the reason the event holds from then on (the
// nack's own, or, for an abandoned delivery, the one it kept). Only a
// closed log refuses (after Shutdown, the record is not needed: the event
// stays in the log as it was); anything else is a bug worth a line.
func (q *queue) walSettle(op walOp, seq uint64, reason string) {
	if q.log == nil {
		return
	}
	var err error
	switch op {
	case walDeliver:
		err = q.log.Deliver(seq)
	case walAck:
		err = q.log.Ack(seq)
	default:
		err = q.log.NackReason(seq, reason)
	}
	if err != nil && !errors.Is(err, wal.ErrClosed) {
		q.bus.logger.Error("write-ahead log refused a settle", "queue", q.name, "seq", seq, "err", err)
	}
}

// syncMillis is d in milliseconds, for the publish span.
func syncMillis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
