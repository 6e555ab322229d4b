package bus

import (
	"hash/maphash"
	"time"
)

// dedupe remembers a queue's accepted msg ids for its dedupe window, at
// most MaxDedupeIDs of them. Guarded by the queue's lock.
//
// Every publish with a msg id looks it up and adds it, so the window is
// kept in flat arrays that a busy queue reuses rather than a map that
// grows, rehashes and leaves deleted slots behind: a ring holds the ids in
// accept order (which is time order on one clock), so that expired ones
// are found at its head without a scan and the oldest is forgotten first;
// slots is an open-addressing hash table of positions in the ring, for
// the lookup. The ring is kept in fixed-size blocks, as a queue's fifo
// is: it grows by a block and copies nothing, so that a window that fills
// leaves no outgrown ring behind for the collector (a ring that doubled
// would leave as many bytes of garbage as it ends up holding), and it
// gives back the blocks its head leaves. The table doubles, up to its
// bound. A queue that never sees a msg id allocates neither.
type dedupe struct {
	window time.Duration
	seed   maphash.Seed
	// blocks is the ring: the entry at position p is entry p%dedupeBlockLen
	// of block p/dedupeBlockLen, which blocks holds at that block number
	// modulo its length, a power of two at least the number of blocks the
	// entries span. Positions count the adds in a uint32 that wraps around,
	// which a power of two of blocks divides, so a block keeps its place
	// across the wrap; an entry keeps its position while it is in the
	// ring, which is what the table refers to it by. A block the head has
	// left is nil.
	blocks    []*dedupeBlock
	blockMask uint32 // len(blocks)-1
	// headBlock and tailBlock are the blocks of the oldest entry and of
	// the newest, kept beside blocks for the reads and writes of every
	// publish at the ring's two ends. headBlock is nil while no entry has
	// gone to the head's position, tailBlock once the head has left the
	// newest entry's block.
	headBlock, tailBlock *dedupeBlock
	// spare is the last block the head left, kept for the tail's next
	// one: at a steady rate the head leaves a block about as often as the
	// tail needs one, so that a busy window allocates nothing.
	spare *dedupeBlock
	head  uint32 // position of the oldest entry
	n     int    // entries in the ring, forgotten ones included
	// slots holds, for each remembered id, the high half of its hash
	// (which also places it) above its position (see slotOf); 0 is empty.
	// Linear probing, at most a quarter full, so that probes and the
	// moves of a deletion stay short: a probe compares hashes here and
	// reads the ring only on a match. At the bound that is 1 MiB, the
	// ring 1.5 MiB.
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
	// dedupeBlockLen is the number of entries in a block of the ring: a
	// power of two, so that a position splits into block and entry with a
	// shift and a mask, and 3 KiB of them, a size class of the allocator.
	// The default queues' windows fill 16, 2 and 1 of them (1000, 100 and
	// 50 ids), the bound 512.
	dedupeBlockLen = 64
	// minDedupeBlocks is the block list's first length.
	minDedupeBlocks = 4
	// slotsPerEntry is the table's size against the entries in the ring,
	// at least.
	slotsPerEntry = 4
	// minDedupeSlots is the table's first size.
	minDedupeSlots = slotsPerEntry * dedupeBlockLen
	// slotUsed is set in every slot that holds an id, so that one is never
	// 0, whatever its hash and position (see slotOf).
	slotUsed = 1 << 31
)

type dedupeBlock [dedupeBlockLen]dedupeEntry

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
	return d.at(uint32(d.slots[slot]))
}

// at is the ring entry at position pos, which must be in a block the ring
// holds.
func (d *dedupe) at(pos uint32) *dedupeEntry {
	return &d.blocks[pos/dedupeBlockLen&d.blockMask][pos%dedupeBlockLen]
}

// slotOf is the slot of the entry at position pos whose id hashes to h.
// slotUsed takes the place of the position's top bit: the other 31 tell
// it from every other position in the ring, which spans at most
// MaxDedupeIDs of them, and at reads fewer still.
func slotOf(h uint64, pos uint32) uint64 { return h&^(1<<32-1) | uint64(pos|slotUsed) }

// add records id as accepted at at with seq (commit: still being stored),
// forgetting the oldest ids past MaxDedupeIDs.
func (d *dedupe) add(id string, seq uint64, at time.Time, commit *Pending) {
	if d.n == MaxDedupeIDs {
		d.dropOldest()
	}
	if slotsPerEntry*(d.n+1) > len(d.slots) {
		d.growTable()
	}
	h := d.hash(id)
	tail := d.head + uint32(d.n)
	if tail%dedupeBlockLen == 0 {
		d.addBlock(tail)
	}
	ns, mono := d.stamp(at)
	d.tailBlock[tail%dedupeBlockLen] = dedupeEntry{id: id, hashHi: uint32(h >> 32), seq: seq, at: ns, mono: mono, commit: commit}
	d.n++
	slot, ok := d.find(id, h)
	if ok {
		// Accepted again: the newer record replaces the older one,
		// which stays in the ring until its turn to go.
		old := d.entry(slot)
		old.id, old.commit = "", nil
	}
	d.slots[slot] = slotOf(h, tail)
}

// find returns the slot that holds id (ok) or, if none does, the empty
// slot where id goes.
func (d *dedupe) find(id string, h uint64) (slot int, ok bool) {
	mask := len(d.slots) - 1
	for i := int(h>>32) & mask; ; i = (i + 1) & mask {
		s := d.slots[i]
		if s == 0 {
			return i, false
		}
		// The same high half of the hash, compared so that find
		// stays small enough to inline into lookup and add.
		if (s^h)>>32 == 0 && d.at(uint32(s)).id == id {
			return i, true
		}
	}
}

// findIndex returns the slot that refers to position pos, whose id hashes
// to h, if one does.
func (d *dedupe) findIndex(pos uint32, h uint64) (slot int, ok bool) {
	mask := len(d.slots) - 1
	want := slotOf(h, pos)
	for j := int(h>>32) & mask; ; j = (j + 1) & mask {
		switch d.slots[j] {
		case 0:
			return j, false
		case want:
			return j, true
		}
	}
}

// addBlock gives the ring a block for position pos, the first of a block,
// at its tail.
func (d *dedupe) addBlock(pos uint32) {
	// The blocks from the head's to pos's, pos's included; the
	// subtraction wraps around with the positions.
	if spanned := int((pos-d.head&^(dedupeBlockLen-1))/dedupeBlockLen) + 1; spanned > len(d.blocks) {
		d.growBlocks()
	}
	b := d.spare
	if b != nil {
		d.spare = nil
	} else {
		b = new(dedupeBlock)
	}
	d.blocks[pos/dedupeBlockLen&d.blockMask] = b
	d.tailBlock = b
	if pos == d.head {
		d.headBlock = b
	}
}

// growBlocks doubles the block list, placing each block at its number
// modulo the new length.
func (d *dedupe) growBlocks() {
	blocks := make([]*dedupeBlock, max(2*len(d.blocks), minDedupeBlocks))
	for i := range len(d.blocks) {
		k := int(d.head/dedupeBlockLen) + i
		blocks[k&(len(blocks)-1)] = d.blocks[k&(len(d.blocks)-1)]
	}
	d.blocks, d.blockMask = blocks, uint32(len(blocks)-1)
}

// growTable doubles the table, up to its size for MaxDedupeIDs, and
// fills it again from the ring.
func (d *dedupe) growTable() {
	d.slots = make([]uint64, max(2*len(d.slots), minDedupeSlots))
	for i := range d.n {
		pos := d.head + uint32(i)
		if e := d.at(pos); e.id != "" {
			slot, _ := d.find(e.id, e.hash())
			d.slots[slot] = slotOf(e.hash(), pos)
		}
	}
}

// dropOldest forgets the oldest entry of the ring, and lets go of its
// block once the head has left it.
func (d *dedupe) dropOldest() {
	e := &d.headBlock[d.head%dedupeBlockLen]
	if e.id != "" {
		if slot, ok := d.findIndex(d.head, e.hash()); ok {
			d.deleteSlot(slot)
		}
	}
	*e = dedupeEntry{}
	d.n--
	d.head++
	if d.head%dedupeBlockLen == 0 {
		d.leaveBlock()
	}
}

// leaveBlock follows dropOldest when the head has left its block: the
// block goes to the spare or to the collector.
func (d *dedupe) leaveBlock() {
	d.blocks[(d.head-1)/dedupeBlockLen&d.blockMask] = nil
	if d.spare == nil {
		d.spare = d.headBlock
	}
	if d.n == 0 {
		d.tailBlock = nil
	}
	d.headBlock = d.blocks[d.head/dedupeBlockLen&d.blockMask]
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
		e := &d.headBlock[d.head%dedupeBlockLen]
		if e.mono && e.at >= mono || !e.mono && e.at >= wall {
			break
		}
		d.dropOldest()
	}
}
