package bus

import (
	"context"
	"encoding/json"
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
		r := newRing()
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

// TestRingHoldsSlotsForItsDepth checks that a ring's buffer follows the
// most events it has held at once, not its queue's capacity: an idle queue,
// or one whose events pass a few at a time, keeps a small buffer however
// many events have gone through it.
func TestRingHoldsSlotsForItsDepth(t *testing.T) {
	tests := []struct {
		name          string
		depth, rounds int
		wantSlots     int
	}{
		{"never used", 0, 0, 0},
		{"one at a time", 1, 5000, minRing},
		{"eight at a time", 8, 1000, 8},
		{"nine at a time", 9, 1000, 16},
		{"a full data queue", 1000, 2, 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRing()
			seq := uint64(0)
			for range tt.rounds {
				for range tt.depth {
					seq++
					r.Push(entry{seq: seq})
				}
				for range tt.depth {
					r.Pop()
				}
			}
			if got := len(r.buf); got != tt.wantSlots {
				t.Errorf("after %d rounds of %d events: %d slots, want %d", tt.rounds, tt.depth, got, tt.wantSlots)
			}
		})
	}
}

// TestIdleQueuesHoldNoSlots checks the same through the bus: a new bus
// holds no ring slots for its queues, and events published and acked one
// at a time keep the ring at its smallest size.
func TestIdleQueuesHoldNoSlots(t *testing.T) {
	b := newInternalBus(t, DefaultQueues())
	slots := func(name string) int {
		q := b.byName[name]
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.store.buf)
	}
	for _, name := range b.Queues() {
		if n := slots(name); n != 0 {
			t.Errorf("queue %s holds %d slots before its first event, want 0", name, n)
		}
	}
	c, err := b.Subscribe("data", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for i := range 2000 { // twice data's capacity
		if out, err := b.Publish(ctx, Event{Type: "CANDLE_UPDATE", Payload: json.RawMessage(`{}`)}, "data"); out != Accepted {
			t.Fatalf("publish %d: %v, %v", i, out, err)
		}
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(d.Seq); err != nil {
			t.Fatal(err)
		}
	}
	if n := slots("data"); n != minRing {
		t.Errorf("data holds %d slots after events passed one at a time, want %d", n, minRing)
	}
}
