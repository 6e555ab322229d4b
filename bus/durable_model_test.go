package bus_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestDurableQueueMatchesModel drives a durable queue with random
// publishes (some repeating a msg id), receives, acks, nacks, consumer
// closes and restarts, and checks every delivery and every restart
// against a simple model: the unacked events in seq order, each with its
// delivery count, and the msg ids accepted so far.
func TestDurableQueueMatchesModel(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			dir := t.TempDir()
			clk := testkit.NewClock()
			qs := []bus.QueueConfig{{Name: "q", Capacity: 1000, Policy: bus.PolicyBlock, Durable: true}}
			b, stop := openDurable(t, dir, qs, clk)
			c := subscribe(t, b, "q", 1000)

			type ev struct {
				id         int
				deliveries int
			}
			events := map[uint64]*ev{} // unacked, by seq
			var waiting, inFlight []uint64
			ids := map[string]bool{}
			nextSeq, nextID := uint64(1), 1

			for op := range 400 {
				switch r := rng.IntN(100); {
				case r < 35: // publish, one in four repeating a msg id
					msgID := fmt.Sprintf("m-%d", nextID)
					if nextID > 1 && rng.IntN(4) == 0 {
						msgID = fmt.Sprintf("m-%d", 1+rng.IntN(nextID-1))
					}
					got := publishID(t, b, "q", nextID, msgID)
					want := bus.Accepted
					if ids[msgID] {
						want = bus.Duplicate
					}
					if got != want {
						t.Fatalf("op %d: publish %s: %v, want %v", op, msgID, got, want)
					}
					if want == bus.Accepted {
						ids[msgID] = true
						events[nextSeq] = &ev{id: nextID}
						waiting = append(waiting, nextSeq)
						nextSeq++
					}
					nextID++
				case r < 60: // receive
					if len(waiting) == 0 {
						continue
					}
					d := mustReceive(t, c)
					seq := waiting[0]
					waiting = waiting[1:]
					e := events[seq]
					if d.Seq != seq || payloadID(t, d) != e.id || d.Redeliveries != e.deliveries {
						t.Fatalf("op %d: got seq %d id %d redeliveries %d, want seq %d id %d redeliveries %d",
							op, d.Seq, payloadID(t, d), d.Redeliveries, seq, e.id, e.deliveries)
					}
					e.deliveries++
					inFlight = append(inFlight, seq)
				case r < 75: // ack
					if len(inFlight) == 0 {
						continue
					}
					i := rng.IntN(len(inFlight))
					seq := inFlight[i]
					inFlight = slices.Delete(inFlight, i, i+1)
					if err := c.Ack(seq); err != nil {
						t.Fatalf("op %d: ack %d: %v", op, seq, err)
					}
					delete(events, seq)
				case r < 88: // nack
					if len(inFlight) == 0 {
						continue
					}
					i := rng.IntN(len(inFlight))
					seq := inFlight[i]
					inFlight = slices.Delete(inFlight, i, i+1)
					if err := c.Nack(seq); err != nil {
						t.Fatalf("op %d: nack %d: %v", op, seq, err)
					}
					waiting = append(waiting, seq)
					slices.Sort(waiting)
				case r < 93: // the consumer goes away
					c.Close()
					waiting = append(waiting, inFlight...)
					slices.Sort(waiting)
					inFlight = nil
					c = subscribe(t, b, "q", 1000)
				default: // restart
					stop()
					waiting = append(waiting, inFlight...)
					slices.Sort(waiting)
					inFlight = nil
					b, stop = openDurable(t, dir, qs, clk)
					if st := b.Stats()["q"]; st.Size != len(waiting) {
						t.Fatalf("op %d: after restart %d events, want %d", op, st.Size, len(waiting))
					}
					c = subscribe(t, b, "q", 1000)
				}
			}
		})
	}
}
