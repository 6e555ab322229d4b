package bus

import (
	"slices"
	"testing"
	"time"
)

// inflightModel drives an inflightSet and a plain sorted slice side by side
// and checks after every step that they agree and that the set's memory
// stays bounded by what is in flight. The slice keeps each step linear in
// what is in flight, so that the fuzzer's long runs at a prefetch of 1024
// stay fast.
type inflightModel struct {
	t        *testing.T
	s        inflightSet
	model    []uint64 // the seqs in flight, ascending
	prefetch int
	nextSeq  uint64
	returned []uint64 // seqs settled and free to come back as redeliveries
}

func newInflightModel(t *testing.T, prefetch int) *inflightModel {
	t.Helper()
	return &inflightModel{t: t, s: newInflightSet(prefetch), prefetch: prefetch, nextSeq: 1}
}

// inFlight reports whether the model holds seq.
func (m *inflightModel) inFlight(seq uint64) bool {
	_, ok := slices.BinarySearch(m.model, seq)
	return ok
}

// deliver adds a fresh event, or with redeliver the oldest returned one
// (a redelivery, with a seq below the fresh ones), and checks the set.
func (m *inflightModel) deliver(redeliver bool) {
	m.t.Helper()
	m.add(redeliver)
	m.check()
}

// add is deliver without the check. Adds alone only grow the set, so a
// burst of them is checked once at its end: what a check in between would
// catch stays wrong until then.
func (m *inflightModel) add(redeliver bool) {
	m.t.Helper()
	if len(m.model) >= m.prefetch {
		return
	}
	seq := m.nextSeq
	if redeliver && len(m.returned) > 0 {
		slices.Sort(m.returned)
		seq, m.returned = m.returned[0], m.returned[1:]
	} else {
		m.nextSeq++
	}
	f := m.s.add(&entry{seq: seq, rare: &entryRare{reason: "r"}})
	if f.e.seq != seq {
		m.t.Fatalf("add(%d) returned the record of %d", seq, f.e.seq)
	}
	f.deliveredAt = time.Unix(int64(seq), 0) // written through the returned record
	i, _ := slices.BinarySearch(m.model, seq)
	m.model = slices.Insert(m.model, i, seq)
}

// settle removes the k-th lowest seq in flight; with back it may be
// redelivered later (a nack).
func (m *inflightModel) settle(k int, back bool) {
	m.t.Helper()
	if len(m.model) == 0 {
		return
	}
	i := k % len(m.model)
	seq := m.model[i]
	f, ok := m.s.remove(seq)
	if !ok || f.e.seq != seq || f.e.reason() != "r" || f.deliveredAt.Unix() != int64(seq) {
		m.t.Fatalf("remove(%d) = %+v at %v, %v", seq, f.e, f.deliveredAt, ok)
	}
	m.model = slices.Delete(m.model, i, i+1)
	if back {
		m.returned = append(m.returned, seq)
	}
	if _, ok := m.s.remove(seq); ok {
		m.t.Fatalf("remove(%d) twice succeeded", seq)
	}
	m.check()
}

func (m *inflightModel) check() {
	m.t.Helper()
	s := &m.s
	if s.len() != len(m.model) {
		m.t.Fatalf("len = %d, model holds %d", s.len(), len(m.model))
	}
	live, j := 0, 0
	for i := range s.n {
		f := s.at(i)
		if i > 0 && f.e.seq <= s.at(i-1).e.seq {
			m.t.Fatalf("ring not sorted at %d: %d after %d", i, f.e.seq, s.at(i-1).e.seq)
		}
		if !f.settled {
			// Both ascending: the live records are the model's seqs but
			// for those the side map holds, in order.
			for j < len(m.model) && s.side[m.model[j]] != nil {
				j++
			}
			if j == len(m.model) || m.model[j] != f.e.seq {
				m.t.Fatalf("ring holds %d, not in flight", f.e.seq)
			}
			live++
			j++
		}
	}
	if live != s.live {
		m.t.Fatalf("ring counts %d live, holds %d", s.live, live)
	}
	for seq := range s.side {
		if !m.inFlight(seq) {
			m.t.Fatalf("side map holds %d, not in flight", seq)
		}
	}
	if s.side != nil && len(s.side) == 0 {
		m.t.Fatal("empty side map kept")
	}
	// Memory follows what is in flight: the ring is at most four times
	// its live records (and never below its minimum).
	if len(s.ring) > max(s.minCap, 4*max(s.live, 1)) {
		m.t.Fatalf("ring of %d slots for %d live (min %d)", len(s.ring), s.live, s.minCap)
	}
	// A slot outside the used window must hold nothing for the collector.
	for i := s.n; i < len(s.ring); i++ {
		if f := s.at(i); f.e.seq != 0 || f.e.reason() != "" {
			m.t.Fatalf("unused slot %d holds seq %d", i, f.e.seq)
		}
	}
}

// finish settles nothing more: release must return what is in flight, in
// seq order, and leave an empty set.
func (m *inflightModel) finish() {
	m.t.Helper()
	var got []uint64
	for _, f := range m.s.release() {
		got = append(got, f.e.seq)
	}
	if !slices.Equal(got, m.model) {
		m.t.Fatalf("release = %v, want %v", got, m.model)
	}
	if m.s.len() != 0 || m.s.ring != nil || m.s.side != nil {
		m.t.Fatalf("after release: %d in flight, ring %d, side %v", m.s.len(), len(m.s.ring), m.s.side)
	}
}

// run interprets ops two bytes at a time: an operation and its argument.
func (m *inflightModel) run(ops []byte) {
	m.t.Helper()
	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i], int(ops[i+1])
		switch op % 6 {
		case 0, 1: // the common case: deliver fresh, ack the oldest
			m.deliver(false)
			m.settle(0, false)
			m.deliver(false)
		case 2: // a redelivery, if any nacked
			m.deliver(true)
		case 3: // an ack in any order
			m.settle(arg, false)
		case 4: // a nack in any order
			m.settle(arg, true)
		case 5: // a burst up to the prefetch
			for range arg {
				m.add(arg%2 == 0)
			}
			m.check()
		}
	}
}

func TestInflightSetAgainstModel(t *testing.T) {
	burst := func(n int) []byte { return []byte{5, byte(n)} }
	repeat := func(n int, ops ...byte) []byte {
		var out []byte
		for range n {
			out = append(out, ops...)
		}
		return out
	}
	tests := []struct {
		name     string
		prefetch int
		ops      []byte
	}{
		{"in order, prefetch 1", 1, repeat(50, 0, 0)},
		{"in order, prefetch 16", 16, repeat(100, 0, 0)},
		{"burst, acked in order", 256, append(burst(255), repeat(255, 3, 0)...)},
		{"burst, acked newest first", 256, append(burst(255), repeat(255, 3, 255)...)},
		{"burst, acked from the middle", 256, append(burst(255), repeat(255, 3, 100)...)},
		{"a stuck head while others cycle", 64, append([]byte{5, 2}, repeat(300, 3, 1, 5, 1)...)},
		{"nacks redelivered below the tail", 32, append(burst(31), repeat(40, 4, 7, 2, 0, 5, 3, 3, 0)...)},
		{"burst then idle, twice", 1024, append(append(append(burst(255), repeat(255, 3, 0)...), burst(201)...), repeat(201, 3, 17)...)},
		{"mixed", 8, []byte{0, 0, 5, 9, 4, 3, 4, 1, 2, 0, 3, 5, 2, 0, 5, 8, 4, 0, 4, 0, 4, 0, 2, 0, 3, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newInflightModel(t, tt.prefetch)
			m.run(tt.ops)
			// Once nothing is in flight the ring is back at its smallest.
			for len(m.model) > 0 {
				m.settle(0, false)
			}
			if len(m.s.ring) > m.s.minCap {
				t.Errorf("idle ring keeps %d slots, want %d", len(m.s.ring), m.s.minCap)
			}
			m.finish()
		})
	}
}

func FuzzInflightSet(f *testing.F) {
	f.Add(uint16(16), []byte{0, 0, 5, 9, 4, 3, 4, 1, 2, 0, 3, 5})
	f.Add(uint16(1), []byte{0, 0, 4, 0, 2, 0, 3, 0})
	f.Add(uint16(300), []byte{5, 255, 4, 17, 4, 3, 2, 0, 2, 0, 3, 200, 5, 40})
	f.Fuzz(func(t *testing.T, prefetch uint16, ops []byte) {
		m := newInflightModel(t, int(prefetch%1024)+1)
		m.run(ops)
		m.finish()
	})
}
