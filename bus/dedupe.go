package bus

import (
	"hash/maphash"
	"time"
)

// dedupe remembers a queue's accepted msg ids for its dedupe window, at
// most MaxDedupeIDs of them. Guarded by the queue's lock.
//
// Every publish with a msg id looks it up and adds it, so the window is
// kept in two flat arrays that a busy queue reuses rather than a map that
// grows, rehashes and leaves deleted slots behind: ring holds the ids in
// accept order (which is time order on one clock), so that expired ones
// are found at its head without a scan and the oldest is forgotten first;
// slots is an open-addressing hash table of indexes into ring, for the
// lookup. Both grow by doubling while the window fills, up to their bound;
// a queue that never sees a msg id allocates neither.
type dedupe struct {
	window time.Duration
	seed   maphash.Seed
	ring   []dedupeEntry
	head   int // ring index of the oldest entry
	n      int // entries in ring, forgotten ones included
	// slots holds, for each remembered id, the high half of its hash
	// (which also places it) above its ring index+1; 0 is empty. Linear
	// probing, at most a quarter full, so that probes and the moves of a
	// deletion stay short: a probe compares hashes here and reads the
	// ring only on a match. At the bound that is 1 MiB, the ring 1.5 MiB.
	slots []uint64
	// lastID and lastHash are the last id looked up and its hash: a
	// publish looks its id up, then adds it.
	lastID   string
	lastHash uint64
	// base is the first accept time added with a monotonic reading (see
	// stamp); zero until then.
	base time.Time
}

// dedupeEntry is one accepted msg id. An id forgotten before it leaves the
// ring (its append failed, or it was accepted again) keeps its place with
// an empty id, so that the ring stays in accept order. It takes 48 bytes
// rather than 64: the accept time as one number (stamp), and of the hash
// only the high half, which is all the table uses.
type dedupeEntry struct {
	id     string
	seq    uint64
	at     int64 // see stamp
	commit *Pending
	hashHi uint32
	// mono says at counts the monotonic clock from the dedupe's base;
	// otherwise it is the wall clock's UnixNano.
	mono bool
}

// hash is the part of the id's hash that the table uses.
func (e *dedupeEntry) hash() uint64 { return uint64(e.hashHi) << 32 }

type msgIDRec struct {
	seq uint64
	// commit is the publish whose log append is still in flight: a
	// duplicate waits for its outcome. nil once the event is stored.
	commit *Pending
}

const (
	// minDedupeRing is the ring's first size.
	minDedupeRing = 64
	// slotsPerEntry is the table's size against the ring's, at least.
	slotsPerEntry = 4
)

func newDedupe(window time.Duration) dedupe {
	return dedupe{window: window, seed: maphash.MakeSeed()}
}

// lookup returns the record of id if it was accepted within the window.
func (d *dedupe) lookup(id string, now time.Time) (msgIDRec, bool) {
	d.expire(now)
	if d.n == 0 {
		return msgIDRec{}, false
	}
	h := maphash.String(d.seed, id)
	d.lastID, d.lastHash = id, h
	slot, ok := d.find(id, h)
	if !ok {
		return msgIDRec{}, false
	}
	e := d.entry(slot)
	return msgIDRec{seq: e.seq, commit: e.commit}, true
}

// stamp is at as a dedupe entry keeps it, so that expire compares it with
// a cutoff as time.Time.Before would. A time with a monotonic reading (a
// live accept on the system clock) is compared on that clock: it is kept
// as the monotonic nanoseconds since base, the first such time added. One
// without (an id recovered from the log, which has only the wall clock, or
// any time of a clock other than the system's) is compared on the wall
// clock: it is kept as its UnixNano.
func (d *dedupe) stamp(at time.Time) (ns int64, mono bool) {
	if at.Round(0) == at { // Round(0) strips only the monotonic reading
		return at.UnixNano(), false
	}
	if d.base.IsZero() {
		d.base = at
	}
	return int64(at.Sub(d.base)), true
}

// hash returns id's hash, reusing lookup's for the same id.
func (d *dedupe) hash(id string) uint64 {
	if id == d.lastID {
		return d.lastHash
	}
	return maphash.String(d.seed, id)
}

// entry is the ring entry that slot refers to.
func (d *dedupe) entry(slot int) *dedupeEntry {
	return &d.ring[uint32(d.slots[slot])-1]
}

// slotTag is the part of a slot that comes from the hash h.
func slotTag(h uint64) uint64 { return h &^ (1<<32 - 1) }

// add records id as accepted at at with seq (commit: still being stored),
// forgetting the oldest ids past MaxDedupeIDs.
func (d *dedupe) add(id string, seq uint64, at time.Time, commit *Pending) {
	if d.n == len(d.ring) {
		if len(d.ring) < MaxDedupeIDs {
			d.grow()
		} else {
			d.dropOldest()
		}
	}
	h := d.hash(id)
	tail := d.head + d.n
	if tail >= len(d.ring) {
		tail -= len(d.ring)
	}
	ns, mono := d.stamp(at)
	d.ring[tail] = dedupeEntry{id: id, hashHi: uint32(h >> 32), seq: seq, at: ns, mono: mono, commit: commit}
	d.n++
	slot, ok := d.find(id, h)
	if ok {
		// Accepted again: the newer record replaces the older one,
		// which stays in the ring until its turn to go.
		old := d.entry(slot)
		old.id, old.commit = "", nil
	}
	d.slots[slot] = slotTag(h) | uint64(tail+1)
}

// find returns the slot that holds id (ok) or, if none does, the empty
// slot where id goes.
func (d *dedupe) find(id string, h uint64) (slot int, ok bool) {
	mask := len(d.slots) - 1
	tag := slotTag(h)
	for i := int(h>>32) & mask; ; i = (i + 1) & mask {
		s := d.slots[i]
		if s == 0 {
			return i, false
		}
		if slotTag(s) == tag && d.ring[uint32(s)-1].id == id {
			return i, true
		}
	}
}

// findIndex returns the slot that refers to ring index i, whose id hashes
// to h, if one does.
func (d *dedupe) findIndex(i int, h uint64) (slot int, ok bool) {
	mask := len(d.slots) - 1
	want := slotTag(h) | uint64(i+1)
	for j := int(h>>32) & mask; ; j = (j + 1) & mask {
		switch d.slots[j] {
		case 0:
			return j, false
		case want:
			return j, true
		}
	}
}

// grow doubles the ring, up to MaxDedupeIDs, and rebuilds the table for
// it. Called when the ring is full.
func (d *dedupe) grow() {
	ring := make([]dedupeEntry, min(max(2*len(d.ring), minDedupeRing), MaxDedupeIDs))
	for i := range d.n {
		j := d.head + i
		if j >= len(d.ring) {
			j -= len(d.ring)
		}
		ring[i] = d.ring[j]
	}
	d.ring, d.head = ring, 0
	size := 1
	for size < slotsPerEntry*len(ring) {
		size <<= 1
	}
	d.slots = make([]uint64, size)
	for i := range d.n {
		if e := &d.ring[i]; e.id != "" {
			slot, _ := d.find(e.id, e.hash())
			d.slots[slot] = slotTag(e.hash()) | uint64(i+1)
		}
	}
}

// dropOldest forgets the oldest entry of the ring.
func (d *dedupe) dropOldest() {
	e := &d.ring[d.head]
	if e.id != "" {
		if slot, ok := d.findIndex(d.head, e.hash()); ok {
			d.deleteSlot(slot)
		}
	}
	*e = dedupeEntry{}
	d.n--
	d.head++
	if d.head == len(d.ring) {
		d.head = 0
	}
}

// deleteSlot empties slot i, moving back the entries after it that
// linear probing would no longer find (backward-shift deletion, so that
// the table never fills with deleted markers).
func (d *dedupe) deleteSlot(i int) {
	mask := len(d.slots) - 1
	for j := (i + 1) & mask; d.slots[j] != 0; j = (j + 1) & mask {
		home := int(d.slots[j]>>32) & mask
		// The entry at j may move to i unless its home lies cyclically
		// in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			d.slots[i] = d.slots[j]
			i = j
		}
	}
	d.slots[i] = 0
}

// stored marks id's append as done.
func (d *dedupe) stored(id string, seq uint64) {
	if d.n == 0 {
		return
	}
	if slot, ok := d.find(id, d.hash(id)); ok {
		if e := d.entry(slot); e.seq == seq {
			e.commit = nil
		}
	}
}

// forget removes id, accepted as seq, whose append failed: a retry must be
// stored, not answered as a duplicate.
func (d *dedupe) forget(id string, seq uint64) {
	if d.n == 0 {
		return
	}
	if slot, ok := d.find(id, d.hash(id)); ok {
		if e := d.entry(slot); e.seq == seq {
			e.id, e.commit = "", nil
			d.deleteSlot(slot)
		}
	}
}

// expire forgets the ids accepted before the window.
func (d *dedupe) expire(now time.Time) {
	if d.n == 0 {
		return
	}
	cutoff := now.Add(-d.window)
	// The cutoff on both clocks, to compare each entry on its own (see
	// stamp). The bus reads one clock, so that a cutoff has a monotonic
	// reading whenever an entry does; without one, an entry that has is
	// taken to have kept pace with the wall clock since base.
	wall := cutoff.UnixNano()
	mono := wall - d.base.UnixNano()
	if !d.base.IsZero() && cutoff.Round(0) != cutoff {
		mono = int64(cutoff.Sub(d.base))
	}
	for d.n > 0 {
		e := &d.ring[d.head]
		if e.mono && e.at >= mono || !e.mono && e.at >= wall {
			break
		}
		d.dropOldest()
	}
}
