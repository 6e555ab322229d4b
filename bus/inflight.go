package bus

import (
	"cmp"
	"math/bits"
	"slices"
	"sync"
)

// inflightSet holds a consumer's unsettled deliveries. Fresh events are
// delivered in rising seq order and mostly acked in that order, so they go
// to a ring sorted by seq: a delivery appends at the tail and an in-order
// ack settles the head, both without hashing; an ack out of order finds its
// record by binary search and leaves a tombstone until the head passes it.
// A redelivered event can arrive with a lower seq than the ring's tail; it
// goes to a small map instead, which stays nil while there are none.
//
// The ring's records are its storage: settled slots are reused in place, so
// delivery does not allocate once the ring has grown. It grows when full and
// mostly live, compacts its tombstones in place when full and mostly
// settled, and shrinks when a quarter or less of it is in use, so that a
// consumer that had a burst in flight gives the memory back once it is low
// again. Not safe for concurrent use: the queue's lock guards it.
type inflightSet struct {
	ring []flight // len is 0 or a power of two
	head int      // index of the oldest slot in ring
	n    int      // slots in use from head, tombstones included
	live int      // unsettled slots in ring
	// minCap is the size the ring starts at and shrinks back to: enough for
	// a small prefetch never to resize it.
	minCap int
	side   map[uint64]*flight // out-of-order deliveries; nil when empty
}

// minRingCap bounds the ring's smallest size, in records (each a few
// hundred bytes), for a consumer with a large prefetch.
const minRingCap = 16

// rings keeps the rings that consumers shrank or released, by size (index
// log2 of the length), cleared. A consumer that bursts to a large prefetch,
// drains and bursts again takes its ring back from here instead of
// allocating it anew each time; the collector empties the pools within two
// cycles, so memory held for an idle consumer does go back.
var rings [bits.UintSize]sync.Pool

func getRing(c int) []flight {
	if p, ok := rings[bits.Len(uint(c))-1].Get().(*[]flight); ok {
		return *p
	}
	return make([]flight, c)
}

func putRing(ring []flight) {
	if len(ring) == 0 {
		return
	}
	clear(ring)
	rings[bits.Len(uint(len(ring)))-1].Put(&ring)
}

func newInflightSet(prefetch int) inflightSet {
	c := 1
	for c < min(prefetch, minRingCap) {
		c <<= 1
	}
	return inflightSet{minCap: c}
}

// len is the number of unsettled deliveries.
func (s *inflightSet) len() int { return s.live + len(s.side) }

// at is the i-th slot from the head, i < len(s.ring).
func (s *inflightSet) at(i int) *flight {
	return &s.ring[(s.head+i)&(len(s.ring)-1)]
}

// add records a delivery of *e and returns its record, for the caller to
// complete before the next call on s. e is copied: the record is the only
// copy the set keeps.
func (s *inflightSet) add(e *entry) *flight {
	if s.n > 0 && e.seq <= s.at(s.n-1).e.seq {
		if s.side == nil {
			s.side = make(map[uint64]*flight)
		}
		f := &flight{e: *e}
		s.side[e.seq] = f
		return f
	}
	switch {
	case len(s.ring) == 0:
		s.resize(s.minCap)
	case s.n == len(s.ring) && 2*s.live <= len(s.ring):
		s.compact()
	case s.n == len(s.ring):
		s.resize(2 * len(s.ring))
	}
	f := s.at(s.n)
	f.e = *e // the slot is zero: settled slots are cleared
	s.n++
	s.live++
	return f
}

// remove settles the delivery of seq and returns its record, or reports
// that seq is not in flight.
func (s *inflightSet) remove(seq uint64) (flight, bool) {
	var f flight
	ok := s.take(seq, &f)
	return f, ok
}

// take settles the delivery of seq, copying its record to out unless out
// is nil, or reports that seq is not in flight. A caller that needs
// nothing of the record (an ack without a deliver span) saves the copy of
// a few hundred bytes.
func (s *inflightSet) take(seq uint64, out *flight) bool {
	if s.n > 0 {
		i := 0
		if s.at(0).e.seq != seq {
			i = s.search(seq)
		}
		if i >= 0 {
			s.removeAt(i, out)
			return true
		}
	}
	f, ok := s.side[seq]
	if !ok {
		return false
	}
	delete(s.side, seq)
	if len(s.side) == 0 {
		s.side = nil // a map never shrinks: drop it with its last entry
	}
	if out != nil {
		*out = *f
	}
	return true
}

// search returns the index from the head of seq's unsettled slot, or -1.
func (s *inflightSet) search(seq uint64) int {
	lo, hi := 0, s.n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s.at(m).e.seq < seq {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < s.n && s.at(lo).e.seq == seq && !s.at(lo).settled {
		return lo
	}
	return -1
}

// removeAt settles the slot i from the head, copying its record to out
// unless out is nil.
func (s *inflightSet) removeAt(i int, out *flight) {
	f := s.at(i)
	if out != nil {
		*out = *f
	}
	s.live--
	switch i {
	case 0:
		// The usual in-order ack: the slot leaves the ring at once,
		// cleared once rather than made a tombstone and then cleared.
		*f = flight{}
		s.head = (s.head + 1) & (len(s.ring) - 1)
		s.n--
	case s.n - 1:
		*f = flight{}
		s.n--
	default:
		// The tombstone keeps its seq, for the binary search, and nothing
		// the collector should free.
		*f = flight{e: entry{seq: f.e.seq}, settled: true}
	}
	for s.n > 0 && s.at(0).settled {
		*s.at(0) = flight{}
		s.head = (s.head + 1) & (len(s.ring) - 1)
		s.n--
	}
	for s.n > 0 && s.at(s.n-1).settled {
		*s.at(s.n - 1) = flight{}
		s.n--
	}
	// Shrink once a quarter or less is live, to a ring at most half full:
	// growing back takes as many deliveries as the copy moves records.
	if len(s.ring) > s.minCap && 4*s.live <= len(s.ring) {
		c := len(s.ring)
		for c > s.minCap && 4*s.live <= c {
			c >>= 1
		}
		s.resize(c)
	}
}

// compact moves the live slots together from the head, in order, and
// clears the rest.
func (s *inflightSet) compact() {
	w := 0
	for i := range s.n {
		if f := s.at(i); !f.settled {
			if w != i {
				*s.at(w) = *f
			}
			w++
		}
	}
	for i := w; i < s.n; i++ {
		*s.at(i) = flight{}
	}
	s.n = w
}

// resize moves the live slots to a new ring of c slots (c >= s.live, a
// power of two), dropping the tombstones.
func (s *inflightSet) resize(c int) {
	ring := getRing(c)
	w := 0
	for i := range s.n {
		if f := s.at(i); !f.settled {
			ring[w] = *f
			w++
		}
	}
	putRing(s.ring)
	s.ring, s.head, s.n = ring, 0, w
}

// release returns every unsettled delivery in seq order and empties s,
// giving its memory back.
func (s *inflightSet) release() []flight {
	out := make([]flight, 0, s.len())
	for i := range s.n {
		if f := s.at(i); !f.settled {
			out = append(out, *f)
		}
	}
	for _, f := range s.side {
		out = append(out, *f)
	}
	if len(s.side) > 0 {
		slices.SortFunc(out, func(a, b flight) int { return cmp.Compare(a.e.seq, b.e.seq) })
	}
	putRing(s.ring)
	*s = inflightSet{minCap: s.minCap}
	return out
}
