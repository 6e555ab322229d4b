package bus_test

import (
	"errors"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// TestOutOfOrderSettlesAgainstModel has two consumers receive, ack, nack
// and close in random orders and checks every step against a model of the
// queue: the waiting seqs (a nack or close puts them back in seq order) and
// what each consumer holds in flight.
func TestOutOfOrderSettlesAgainstModel(t *testing.T) {
	tests := []struct {
		name     string
		prefetch int
		events   int
		nackPct  int // chance in 100 that a settle is a nack
		newest   bool
	}{
		{"prefetch 1, acks only", 1, 40, 0, false},
		{"prefetch 8, random acks", 8, 300, 0, false},
		{"prefetch 8, newest first, nacks", 8, 300, 30, true},
		{"prefetch 64, random acks and nacks", 64, 2000, 20, false},
		{"prefetch 300, bursts and nacks", 300, 1000, 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := newBus(t, oneQueue("q", tt.events, bus.PolicyBlock, 0))
			publishN(t, b, "q", "T", 0, tt.events)
			rng := rand.New(rand.NewPCG(1, uint64(tt.prefetch)))
			var waiting []uint64
			for s := range uint64(tt.events) {
				waiting = append(waiting, s+1)
			}
			type consumer struct {
				c    *bus.Consumer
				held map[uint64]int // seq -> redeliveries
			}
			redeliveries := map[uint64]int{}
			newConsumer := func() *consumer {
				return &consumer{c: subscribe(t, b, "q", tt.prefetch), held: map[uint64]int{}}
			}
			cs := []*consumer{newConsumer(), newConsumer()}
			acked := 0
			for step := 0; acked < tt.events; step++ {
				if step > 100*tt.events {
					t.Fatalf("no progress: %d of %d acked", acked, tt.events)
				}
				k := cs[rng.IntN(len(cs))]
				switch r := rng.IntN(100); {
				case r < 45: // receive up to a burst
					for n := rng.IntN(tt.prefetch) + 1; n > 0 && len(k.held) < tt.prefetch && len(waiting) > 0; n-- {
						d := mustReceive(t, k.c)
						if d.Seq != waiting[0] || d.Redeliveries != redeliveries[d.Seq] {
							t.Fatalf("received seq %d (redeliveries %d), want %d (%d)", d.Seq, d.Redeliveries, waiting[0], redeliveries[waiting[0]])
						}
						waiting = waiting[1:]
						k.held[d.Seq] = d.Redeliveries
					}
				case r < 97: // settle one in flight, any of them
					if len(k.held) == 0 {
						continue
					}
					seqs := slices.Sorted(maps.Keys(k.held))
					seq := seqs[len(seqs)-1]
					if !tt.newest {
						seq = seqs[rng.IntN(len(seqs))]
					}
					delete(k.held, seq)
					if rng.IntN(100) < tt.nackPct {
						if err := k.c.Nack(seq); err != nil {
							t.Fatalf("Nack(%d): %v", seq, err)
						}
						redeliveries[seq]++
						i, _ := slices.BinarySearch(waiting, seq)
						waiting = slices.Insert(waiting, i, seq)
					} else {
						if err := k.c.Ack(seq); err != nil {
							t.Fatalf("Ack(%d): %v", seq, err)
						}
						acked++
					}
					if err := k.c.Ack(seq); !errors.Is(err, bus.ErrUnknownSeq) {
						t.Fatalf("second settle of %d = %v, want ErrUnknownSeq", seq, err)
					}
				default: // close: what it holds goes back in seq order
					k.c.Close()
					for seq := range k.held {
						redeliveries[seq]++
						i, _ := slices.BinarySearch(waiting, seq)
						waiting = slices.Insert(waiting, i, seq)
					}
					*k = *newConsumer()
				}
				inFlight := 0
				for _, k := range cs {
					inFlight += len(k.held)
				}
				if st := b.Stats()["q"]; st.Size != len(waiting) || st.InFlight != inFlight || st.Acked != uint64(acked) {
					t.Fatalf("step %d: size/in flight/acked = %d/%d/%d, model %d/%d/%d",
						step, st.Size, st.InFlight, st.Acked, len(waiting), inFlight, acked)
				}
			}
		})
	}
}
