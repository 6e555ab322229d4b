package bus

import "time"

// dedupe remembers a queue's accepted msg ids for its dedupe window.
// Guarded by the queue's lock.
type dedupe struct {
	window time.Duration
	ids    map[string]msgIDRec
	// order lists the ids in accept order (which is time order on one
	// clock), from head on, so that expired ones are found without a scan.
	order []msgIDKey
	head  int
}

type msgIDRec struct {
	seq uint64
	at  time.Time
	// commit is the publish whose log append is still in flight: a
	// duplicate waits for its outcome. nil once the event is stored.
	commit *Pending
}

type msgIDKey struct {
	id  string
	seq uint64
	at  time.Time
}

func newDedupe(window time.Duration) dedupe {
	return dedupe{window: window, ids: make(map[string]msgIDRec)}
}

// lookup returns the record of id if it was accepted within the window.
func (d *dedupe) lookup(id string, now time.Time) (msgIDRec, bool) {
	d.expire(now)
	r, ok := d.ids[id]
	return r, ok
}

// add records id as accepted at at with seq (commit: still being stored),
// forgetting the oldest ids past MaxDedupeIDs.
func (d *dedupe) add(id string, seq uint64, at time.Time, commit *Pending) {
	d.ids[id] = msgIDRec{seq: seq, at: at, commit: commit}
	d.order = append(d.order, msgIDKey{id: id, seq: seq, at: at})
	for len(d.order)-d.head > MaxDedupeIDs {
		d.dropOldest()
	}
	d.compact()
}

// dropOldest forgets the oldest remembered id.
func (d *dedupe) dropOldest() {
	k := d.order[d.head]
	if r, ok := d.ids[k.id]; ok && r.seq == k.seq {
		delete(d.ids, k.id)
	}
	d.order[d.head] = msgIDKey{}
	d.head++
}

// stored marks id's append as done.
func (d *dedupe) stored(id string, seq uint64) {
	if r, ok := d.ids[id]; ok && r.seq == seq {
		r.commit = nil
		d.ids[id] = r
	}
}

// forget removes id, accepted as seq, whose append failed: a retry must be
// stored, not answered as a duplicate.
func (d *dedupe) forget(id string, seq uint64) {
	if r, ok := d.ids[id]; ok && r.seq == seq {
		delete(d.ids, id)
	}
}

// expire forgets the ids accepted before the window.
func (d *dedupe) expire(now time.Time) {
	cutoff := now.Add(-d.window)
	for d.head < len(d.order) && d.order[d.head].at.Before(cutoff) {
		d.dropOldest()
	}
	d.compact()
}

// compact reclaims the forgotten front of order once it is most of it.
func (d *dedupe) compact() {
	if d.head == len(d.order) {
		d.order, d.head = d.order[:0], 0
	} else if d.head > 1024 && d.head > len(d.order)/2 {
		n := copy(d.order, d.order[d.head:])
		clear(d.order[n:])
		d.order, d.head = d.order[:n], 0
	}
}
