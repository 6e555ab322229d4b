package bus

import (
	"context"
	"encoding/json"
	"testing"
)

// TestDepthFollowsTheStore checks the queue depth that Stats and the depth
// gauge read without the lock against the store's length after every kind
// of change: pushes and deliveries, which do not record the depth
// themselves, and evictions, nacks, admitted waiters and returns, which do.
func TestDepthFollowsTheStore(t *testing.T) {
	ev := Event{Type: "T", Payload: json.RawMessage(`1`)}
	ctx := context.Background()
	tests := []struct {
		name   string
		policy Policy
		// steps run in order on a queue of capacity 2 with one consumer
		// of prefetch 4, c; held collects the seqs delivered to it.
		steps []func(t *testing.T, b *Bus, c *Consumer, held *[]uint64)
	}{
		{"publish, deliver, ack", PolicyBlock, []func(*testing.T, *Bus, *Consumer, *[]uint64){
			publishStep(ev), publishStep(ev), receiveStep, ackStep, receiveStep, ackStep,
		}},
		{"evict the oldest", PolicyDropOldest, []func(*testing.T, *Bus, *Consumer, *[]uint64){
			publishStep(ev), publishStep(ev), publishStep(ev), publishStep(ev), receiveStep, publishStep(ev),
		}},
		{"nack and close return events", PolicyBlock, []func(*testing.T, *Bus, *Consumer, *[]uint64){
			publishStep(ev), publishStep(ev), receiveStep, receiveStep, nackStep, receiveStep, closeStep,
		}},
		{"a waiter admitted by a delivery", PolicyBlock, []func(*testing.T, *Bus, *Consumer, *[]uint64){
			publishStep(ev), publishStep(ev),
			func(t *testing.T, b *Bus, _ *Consumer, _ *[]uint64) {
				t.Helper()
				if p := b.PublishAsync(ctx, ev, "q", func(Outcome, error) {}); p == nil {
					t.Fatal("a publish to a full queue did not wait")
				}
			},
			receiveStep, receiveStep, receiveStep,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newInternalBus(t, []QueueConfig{{Name: "q", Capacity: 2, Policy: tt.policy}})
			c, err := b.Subscribe("q", 4)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			q := b.byName["q"]
			var held []uint64
			for i, step := range tt.steps {
				step(t, b, c, &held)
				q.mu.Lock()
				want := q.store.Len()
				q.mu.Unlock()
				if got := q.depth(); got != int64(want) {
					t.Fatalf("after step %d: depth %d, the store holds %d", i, got, want)
				}
				if got := b.Stats()["q"].Size; got != want {
					t.Fatalf("after step %d: Stats size %d, the store holds %d", i, got, want)
				}
			}
		})
	}
}

func publishStep(ev Event) func(*testing.T, *Bus, *Consumer, *[]uint64) {
	return func(t *testing.T, b *Bus, _ *Consumer, _ *[]uint64) {
		t.Helper()
		publishInternal(t, b, ev)
	}
}

func receiveStep(t *testing.T, _ *Bus, c *Consumer, held *[]uint64) {
	t.Helper()
	d, err := c.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	*held = append(*held, d.Seq)
}

// ackStep acks the oldest delivery c holds.
func ackStep(t *testing.T, _ *Bus, c *Consumer, held *[]uint64) {
	t.Helper()
	if err := c.Ack((*held)[0]); err != nil {
		t.Fatal(err)
	}
	*held = (*held)[1:]
}

// nackStep nacks the newest delivery c holds.
func nackStep(t *testing.T, _ *Bus, c *Consumer, held *[]uint64) {
	t.Helper()
	n := len(*held) - 1
	if err := c.Nack((*held)[n]); err != nil {
		t.Fatal(err)
	}
	*held = (*held)[:n]
}

func closeStep(_ *testing.T, _ *Bus, c *Consumer, held *[]uint64) {
	c.Close()
	*held = nil
}
