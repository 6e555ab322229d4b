package bus

import (
	"errors"
	"fmt"
	"time"
)

// Reconfigure applies new capacities, policies and timeouts to the running
// queues, matched by name; their order in queues does not matter. It
// validates like New and changes nothing when anything is wrong: an error
// wrapping ErrInvalidConfig for a bad setting, ErrRestartRequired naming
// each queue that would be added or removed (the queues a bus has are fixed
// for its life: publishers, routes and metrics refer to them by name) and
// each change to a queue's durability, dedupe or dead-letter settings, or
// ErrShuttingDown once Shutdown has begun.
//
// Each queue changes under its lock, so a publish sees either the old
// settings or the new ones. Nothing already accepted is lost: events
// waiting or in flight stay where they are, and a publisher waiting for
// room keeps its place in the FIFO.
//
//   - A larger capacity admits waiting publishers at once, oldest first,
//     as far as the new room goes.
//   - A capacity below the current depth keeps every event; the queue
//     accepts nothing new until consumers drain it below the new capacity
//     (publishes wait per the policy, and a drop_oldest publish evicts
//     one event for each one it adds, so the depth does not grow).
//   - A new policy or timeout applies to the publishes already waiting, as
//     someone who changes it on a live queue means it to: each may wait the
//     new timeout counted from now, but no longer than its old deadline,
//     so a reload never lengthens a wait already promised. Waiting
//     publishes of a queue switched from block to drop or fail therefore
//     end at the latest one timeout after the reload; those of a queue
//     switched to block (or to drop_oldest, which never times out) wait
//     until there is room or their context ends.
func (b *Bus) Reconfigure(queues []QueueConfig) error {
	if err := Validate(queues); err != nil {
		return err
	}
	if err := b.sameQueues(queues); err != nil {
		return err
	}
	if b.closing.Load() {
		return ErrShuttingDown
	}
	for _, qc := range queues {
		b.byName[qc.Name].reconfigure(qc)
	}
	return nil
}

// sameQueues refuses a queue list that adds or removes queues or changes
// what a queue keeps until a restart.
func (b *Bus) sameQueues(queues []QueueConfig) error {
	var errs []error
	given := make(map[string]bool, len(queues))
	for _, qc := range queues {
		given[qc.Name] = true
		q, ok := b.byName[qc.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("%w: queue %q is not running (running queues: %s): adding a queue needs a restart",
				ErrRestartRequired, qc.Name, b.validNames))
			continue
		}
		cur := q.settings.Load()
		for _, f := range restartOnlyFields() {
			if from, to := f.get(*cur), f.get(qc); from != to {
				errs = append(errs, fmt.Errorf("%w: queue %q: %s %q -> %q: only capacity, policy and timeout change on a running queue",
					ErrRestartRequired, qc.Name, f.name, fmt.Sprint(from), fmt.Sprint(to)))
			}
		}
	}
	for _, name := range b.names {
		if !given[name] {
			errs = append(errs, fmt.Errorf("%w: queue %q is missing from the new configuration: removing a queue needs a restart",
				ErrRestartRequired, name))
		}
	}
	return errors.Join(errs...)
}

// restartOnlyFields are the QueueConfig fields a queue keeps for the life
// of the bus: where its events are stored and what becomes of them across
// a crash are fixed when the bus opens the queue's log.
func restartOnlyFields() []struct {
	name string
	get  func(QueueConfig) any
} {
	return []struct {
		name string
		get  func(QueueConfig) any
	}{
		{"durable", func(q QueueConfig) any { return q.Durable }},
		{"fsync", func(q QueueConfig) any { return q.Fsync }},
		{"fsync_interval", func(q QueueConfig) any { return q.FsyncInterval }},
		{"dedupe_window", func(q QueueConfig) any { return q.DedupeWindow }},
		{"max_deliveries", func(q QueueConfig) any { return q.MaxDeliveries }},
		{"dead_letter", func(q QueueConfig) any { return q.DeadLetter }},
	}
}

// setLocked installs qc as the queue's settings. Called with q.mu held, or
// before the queue is shared.
func (q *queue) setLocked(qc QueueConfig) {
	if !qc.Policy.UsesTimeout() {
		qc.Timeout = 0 // ignored by the policy; Stats reports 0
	}
	q.capacity, q.policy, q.timeout = qc.Capacity, qc.Policy, qc.Timeout
	q.settings.Store(&qc)
}

// reconfigure applies qc (a valid configuration of this queue).
func (q *queue) reconfigure(qc QueueConfig) {
	b := q.bus
	q.mu.Lock()
	old := *q.settings.Load()
	q.setLocked(qc)
	cur := *q.settings.Load()
	if cur == old {
		q.mu.Unlock()
		return
	}
	if cur.Policy != old.Policy || cur.Timeout != old.Timeout {
		q.retimeWaitersLocked(b.clock.Now())
	}
	admitted := q.admitWaitersLocked()
	depth, waiting := q.store.Len(), len(q.waiters)
	q.mu.Unlock()
	admitted.release()

	b.logger.Info("queue reconfigured", "queue", q.name,
		"capacity", cur.Capacity, "policy", string(cur.Policy), "timeout", cur.Timeout,
		"old_capacity", old.Capacity, "old_policy", string(old.Policy), "old_timeout", old.Timeout,
		"depth", depth, "waiting", waiting)
	if depth > cur.Capacity {
		// Said once, here: the publishes that wait or evict meanwhile are
		// counted and summarised like any others.
		effect := "new publishes wait for room"
		if cur.Policy == PolicyDropOldest {
			effect = "each new publish evicts the oldest event"
		}
		b.logger.Warn("queue holds more events than its new capacity: "+effect+" until consumers drain it below",
			"queue", q.name, "depth", depth, "capacity", cur.Capacity, "policy", string(cur.Policy))
	}
}

// retimeWaitersLocked gives the publishes already waiting the deadlines of
// the queue's current policy and timeout (see Reconfigure) and re-arms the
// timer for them. Deadlines stay non-decreasing along the FIFO, which the
// single timer relies on: they were before, and each is lowered to at most
// the same limit. Called with q.mu held.
func (q *queue) retimeWaitersLocked(now time.Time) {
	if len(q.waiters) == 0 {
		return
	}
	q.stopTimerLocked()
	if !q.policy.UsesTimeout() {
		for _, p := range q.waiters {
			p.deadline = time.Time{}
		}
		return
	}
	limit := now.Add(q.timeout)
	for _, p := range q.waiters {
		if p.deadline.IsZero() || p.deadline.After(limit) {
			p.deadline = limit
		}
	}
	q.armLocked(q.waiters[0].deadline.Sub(now))
}
