package wal

import "iter"

// liveSet holds the records of the live (unacked) events by seq. Every
// event is looked up three or four times (its append is placed, delivered,
// acked), so the lookup is on the hot path. Seqs are handed out in
// increasing order and a queue that keeps up settles them in about that
// order, so the recent ones sit in a ring indexed by seq: a lookup is an
// index, not a hash. An event that stays unacked while the ring fills
// behind it (a consumer that holds a delivery, a nack loop) moves to a map,
// so the ring spans at most about twice the live events however old the
// oldest one is.
type liveSet struct {
	ring []liveRec // power-of-two length; a slot with size 0 is empty
	head int       // ring index of seq base
	base uint64    // seq of the ring's first slot
	span int       // the ring holds seqs base to base+span-1
	// inRing counts the non-empty slots.
	inRing int
	// old holds live events below base (nil until one is moved there).
	old map[uint64]*liveRec
}

// minLiveRing is the ring's first length.
const minLiveRing = 64

func (s *liveSet) len() int { return s.inRing + len(s.old) }

func (s *liveSet) slot(seq uint64) *liveRec {
	return &s.ring[(s.head+int(seq-s.base))&(len(s.ring)-1)]
}

// ref returns the record of seq, to read or change in place until the set
// is next changed, or nil if seq is not live.
func (s *liveSet) ref(seq uint64) *liveRec {
	if seq < s.base {
		return s.old[seq]
	}
	if seq-s.base < uint64(s.span) {
		if r := s.slot(seq); r.size > 0 {
			return r
		}
	}
	return nil
}

// put stores r (size > 0) as seq's record, adding seq or replacing what it
// had.
func (s *liveSet) put(seq uint64, r liveRec) {
	if s.span == 0 && seq >= s.base {
		s.base = seq // nothing in the ring: start it here
	}
	if seq < s.base {
		if p := s.old[seq]; p != nil {
			*p = r
			return
		}
		s.keepOld(seq, r)
		return
	}
	if seq-s.base >= uint64(s.span) {
		s.extend(seq)
	}
	p := s.slot(seq)
	if p.size == 0 {
		s.inRing++
	}
	*p = r
}

func (s *liveSet) keepOld(seq uint64, r liveRec) {
	if s.old == nil {
		s.old = make(map[uint64]*liveRec)
	}
	s.old[seq] = &r
}

// extend makes the ring span seq (at or past its end): it grows the ring
// while at least half of it is live, else moves the older half of the
// slots out, their live records to the map.
func (s *liveSet) extend(seq uint64) {
	for seq-s.base >= uint64(len(s.ring)) {
		if s.inRing*2 >= len(s.ring) {
			s.grow()
			continue
		}
		s.evict(max(s.span/2, 1))
		if s.span == 0 {
			s.base = seq
		}
	}
	s.span = int(seq-s.base) + 1
}

// grow doubles the ring (or creates it).
func (s *liveSet) grow() {
	ring := make([]liveRec, max(2*len(s.ring), minLiveRing))
	for i := 0; i < s.span; i++ {
		ring[i] = s.ring[(s.head+i)&(len(s.ring)-1)]
	}
	s.ring, s.head = ring, 0
}

// evict moves the first n slots out of the ring, the live ones to the map.
func (s *liveSet) evict(n int) {
	for ; n > 0 && s.span > 0; n-- {
		if p := &s.ring[s.head]; p.size > 0 {
			s.keepOld(s.base, *p)
			*p = liveRec{}
			s.inRing--
		}
		s.advance()
	}
}

// advance drops the ring's first slot (empty by now).
func (s *liveSet) advance() {
	s.head = (s.head + 1) & (len(s.ring) - 1)
	s.base++
	s.span--
}

// remove forgets seq, if it is live.
func (s *liveSet) remove(seq uint64) {
	if seq < s.base {
		delete(s.old, seq)
		return
	}
	if seq-s.base >= uint64(s.span) {
		return
	}
	p := s.slot(seq)
	if p.size == 0 {
		return
	}
	*p = liveRec{}
	s.inRing--
	// Drop the settled slots at the head, so that the ring spans only
	// what may still be live.
	for s.span > 0 && s.ring[s.head].size == 0 {
		s.advance()
	}
}

// all yields every live record, in no particular order.
func (s *liveSet) all() iter.Seq2[uint64, liveRec] {
	return func(yield func(uint64, liveRec) bool) {
		for seq, r := range s.old {
			if !yield(seq, *r) {
				return
			}
		}
		for i := 0; i < s.span; i++ {
			if r := s.ring[(s.head+i)&(len(s.ring)-1)]; r.size > 0 {
				if !yield(s.base+uint64(i), r) {
					return
				}
			}
		}
	}
}
