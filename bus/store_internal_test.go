package bus

import (
	"slices"
	"testing"
)

// FuzzRingMatchesModel drives the ring with random pushes, pops and
// requeues and compares it with a sorted slice: the queue must always hold
// its events in seq order, whatever comes back and whenever it grows.
func FuzzRingMatchesModel(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 2, 1, 2, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newRing(2)
		var model []uint64 // waiting seqs
		var out []uint64   // popped, not yet requeued
		next := uint64(0)
		for _, op := range ops {
			switch op % 3 {
			case 0:
				next++
				r.Push(entry{seq: next})
				model = append(model, next)
			case 1:
				if r.Len() == 0 {
					continue
				}
				e := r.Pop()
				if e.seq != model[0] {
					t.Fatalf("Pop = %d, want %d", e.seq, model[0])
				}
				model = model[1:]
				out = append(out, e.seq)
			case 2:
				if len(out) == 0 {
					continue
				}
				i := int(op/3) % len(out)
				seq := out[i]
				out = slices.Delete(out, i, i+1)
				r.Requeue(entry{seq: seq})
				model = append(model, seq)
				slices.Sort(model)
			}
			if r.Len() != len(model) {
				t.Fatalf("Len = %d, want %d", r.Len(), len(model))
			}
		}
		for _, want := range model {
			if got := r.Pop().seq; got != want {
				t.Fatalf("drain: %d, want %d", got, want)
			}
		}
	})
}
