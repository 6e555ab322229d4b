package wal

import (
	"maps"
	"math/rand/v2"
	"testing"
)

// TestLiveSetModel runs random operations, in the patterns the log makes
// (seqs appended in order, settled mostly in order, some held for long,
// gaps as after a recovery, updates of every live record as at a rotation),
// against a map.
func TestLiveSetModel(t *testing.T) {
	for _, tc := range []struct {
		name string
		// hold is the chance that an appended event stays live for long;
		// gap the chance that the next seq skips ahead.
		hold, gap float64
		start     uint64
	}{
		{name: "in order", start: 1},
		{name: "stragglers", hold: 0.02, start: 1},
		{name: "many stragglers", hold: 0.3, start: 7},
		{name: "gaps", hold: 0.05, gap: 0.05, start: 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := range uint64(8) {
				rng := rand.New(rand.NewPCG(seed, 1))
				var s liveSet
				model := map[uint64]liveRec{}
				next := tc.start
				var recent []uint64 // live, settled soon, oldest first
				check := func(op int) {
					t.Helper()
					if s.len() != len(model) {
						t.Fatalf("seed %d op %d: len %d, model %d", seed, op, s.len(), len(model))
					}
					got := maps.Collect(s.all())
					if !maps.Equal(got, model) {
						t.Fatalf("seed %d op %d: all() differs from the model: %d against %d records", seed, op, len(got), len(model))
					}
				}
				for op := range 20000 {
					switch r := rng.Float64(); {
					case r < 0.45: // append
						if rng.Float64() < tc.gap {
							next += uint64(rng.IntN(5000))
						}
						rec := liveRec{seg: next, off: int64(op), size: int32(1 + rng.IntN(500))}
						s.put(next, rec)
						model[next] = rec
						if rng.Float64() >= tc.hold {
							recent = append(recent, next)
						}
						next++
					case r < 0.85 && len(recent) > 0: // settle one of the oldest
						i := min(rng.IntN(4), len(recent)-1)
						seq := recent[i]
						recent = append(recent[:i], recent[i+1:]...)
						if p := s.ref(seq); p == nil || *p != model[seq] {
							t.Fatalf("seed %d op %d: ref(%d) = %v, want %v", seed, op, seq, p, model[seq])
						}
						s.remove(seq)
						delete(model, seq)
					case r < 0.95: // change a random live record in place
						for seq := range model {
							p := s.ref(seq)
							if p == nil {
								t.Fatalf("seed %d op %d: live seq %d not found", seed, op, seq)
							}
							p.deliveries++
							model[seq] = *p
							break
						}
					case r < 0.96: // rewrite every live record, as a rotation does
						for seq, rec := range model {
							rec.seg++
							s.put(seq, rec)
							model[seq] = rec
						}
					default: // look up seqs that are not live
						for _, seq := range []uint64{0, tc.start - 1, next, next + 1000, next - 1} {
							if _, live := model[seq]; !live && s.ref(seq) != nil {
								t.Fatalf("seed %d op %d: ref(%d) found a record that is not live", seed, op, seq)
							}
							s.remove(seq) // a no-op when not live
							if rec, live := model[seq]; live {
								s.put(seq, rec)
							}
						}
					}
					if op%97 == 0 {
						check(op)
					}
				}
				check(-1)
			}
		})
	}
}

// TestLiveSetStaysSmall holds one event unacked while a million others
// pass through: the ring stays as small as the events live at once.
func TestLiveSetStaysSmall(t *testing.T) {
	var s liveSet
	s.put(1, liveRec{size: 10})
	const window = 100 // events live at once besides the held one
	for seq := uint64(2); seq < 1_000_000; seq++ {
		s.put(seq, liveRec{size: 10})
		if seq >= 2+window {
			s.remove(seq - window)
		}
	}
	if s.ref(1) == nil {
		t.Fatal("the held event was lost")
	}
	if s.len() != window+1 {
		t.Fatalf("len %d, want %d", s.len(), window+1)
	}
	if len(s.ring) > 4*window {
		t.Fatalf("ring of %d slots for %d live events", len(s.ring), window+1)
	}
}

// BenchmarkLiveSet is the live set's work for one event as the log does it
// (added at append, placed at the write, delivered, acked) with 1,300
// events live (a full queue of 1,024 and a consumer's prefetch of 256),
// against a map doing the same, as the log did before.
//
//	go test -run '^$' -bench LiveSet -benchtime 1000000x ./wal
func BenchmarkLiveSet(b *testing.B) {
	const live = 1300
	rec := liveRec{seg: inPending, size: 100}
	b.Run("map", func(b *testing.B) {
		m := make(map[uint64]liveRec)
		for seq := range uint64(live) {
			m[seq] = rec
		}
		b.ReportAllocs()
		for i := uint64(live); b.Loop(); i++ {
			m[i] = rec
			if r, ok := m[i]; ok && r.seg == inPending {
				r.seg = 1
				m[i] = r
			}
			d := i - live/2
			r := m[d]
			r.deliveries++
			m[d] = r
			delete(m, i-live)
		}
	})
	b.Run("ring", func(b *testing.B) {
		var s liveSet
		for seq := range uint64(live) {
			s.put(seq, rec)
		}
		b.ReportAllocs()
		for i := uint64(live); b.Loop(); i++ {
			s.put(i, rec)
			if r := s.ref(i); r != nil && r.seg == inPending {
				r.seg = 1
			}
			s.ref(i-live/2).deliveries++
			a := i - live
			if s.ref(a) != nil {
				s.remove(a)
			}
		}
	})
}
