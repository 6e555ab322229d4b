package bus

// deadLetterMove is an event on its way from a queue to that queue's
// dead-letter queue. It has left the source queue's memory but stays live
// in the source's log until the dead-letter queue holds it: a crash in
// between redelivers it rather than losing it.
type deadLetterMove struct {
	src *queue
	e   entry // as it left src, its last delivery counted
	dl  DeadLetter
	ne  entry // the new event in the dead-letter queue
}

// deadLetterDue reports whether e, nacked or abandoned with its
// redeliveries counted, has used up the queue's deliveries.
func (q *queue) deadLetterDue(e *entry) bool {
	return q.deadLetter != nil && q.maxDeliveries > 0 && e.redeliveries >= q.maxDeliveries
}

// sendToDeadLetter moves e to the dead-letter queue as a new event there.
// It never blocks on room: like a requeue, the move may take the
// dead-letter queue past its capacity, because the event was accepted
// once and must not be lost. Called without any queue lock.
func (q *queue) sendToDeadLetter(e entry) {
	m := &deadLetterMove{src: q, e: e, dl: DeadLetter{Queue: q.name, Seq: e.seq, Deliveries: e.redeliveries, Reason: e.reason}}
	dlq := q.deadLetter
	now := q.bus.clock.Now()
	m.ne = entry{ev: e.ev, enqueuedAt: now, pubSC: e.pubSC, traced: e.traced, dl: &m.dl}
	dlq.mu.Lock()
	if dlq.log == nil {
		dlq.nextSeq++
		m.ne.seq = dlq.nextSeq
		dlq.store.Push(m.ne)
		dlq.counters.size.Store(int64(dlq.store.Len()))
		dlq.wakeConsumersLocked()
		dlq.mu.Unlock()
		m.done(nil)
		return
	}
	err := dlq.appendLocked(nil, m)
	dlq.mu.Unlock()
	if err != nil {
		m.done(err)
	}
}

// done ends the move: the source forgets the event for good, or takes it
// back when the dead-letter queue could not store it.
func (m *deadLetterMove) done(err error) {
	q := m.src
	b := q.bus
	if err != nil {
		b.logger.Warn("dead letter not moved; the event goes back to its queue", "queue", q.name,
			"seq", m.e.seq, "dead_letter", q.deadLetter.name, "err", err)
		q.mu.Lock()
		q.walSettle(walNack, m.e.seq)
		q.store.Requeue(m.e)
		q.counters.size.Store(int64(q.store.Len()))
		q.wakeConsumersLocked()
		q.mu.Unlock()
		b.notifyDrain()
		return
	}
	// An ack in the source log, so that the event never comes back there.
	q.walSettle(walAck, m.e.seq)
	if b.tel.tracing && m.e.traced {
		b.tel.deadLetterSpan(q, &m.e, &m.dl, b.spanNow())
	}
	q.counters.deadLettered.Add(1)
	b.notifyDrain()
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
