package bus

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// TestAbandonedWakeUpIsPassedOn sets up, deterministically, the state a
// receiver is in when its ctx ends just after a publish woke it: it is off
// the idle list with a wake-up token for an event it will not take. The
// event must then go to another sleeping consumer.
func TestAbandonedWakeUpIsPassedOn(t *testing.T) {
	b := newInternalBus(t, []QueueConfig{{Name: "q", Capacity: 4, Policy: PolicyBlock}})
	a, _ := b.Subscribe("q", 1)
	other, _ := b.Subscribe("q", 1)
	t.Cleanup(a.Close)
	t.Cleanup(other.Close)
	q := b.byName["q"]

	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := other.Receive(ctx)
		got <- err
	}()
	// a goes to sleep ahead of other (as Receive would), then other sleeps.
	q.mu.Lock()
	a.waiting, a.idle = true, true
	q.idle = append([]*Consumer{a}, q.idle...)
	q.mu.Unlock()
	// A poll by hand: testkit imports bus, so this package-internal test
	// cannot use testkit.Eventually without an import cycle.
	deadline := time.Now().Add(10 * time.Second)
	for {
		q.mu.Lock()
		n := len(q.idle)
		q.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("other never went to sleep")
		}
		time.Sleep(100 * time.Microsecond)
	}
	// The publish wakes a only: one event, a first in line.
	if out, err := b.Publish(context.Background(), Event{Type: "T", Payload: json.RawMessage(`1`)}, "q"); out != Accepted {
		t.Fatal(out, err)
	}
	q.mu.Lock()
	woken := !a.idle && len(q.idle) == 1 && q.idle[0] == other
	q.mu.Unlock()
	if !woken {
		t.Fatal("the publish did not wake a alone")
	}
	a.abandonWait() // a's ctx ended before it took the event
	if err := <-got; err != nil {
		t.Fatalf("other.Receive = %v; the abandoned wake-up was not passed on", err)
	}
}

// newInternalBus is a bus for this package's own tests, shut down (without
// a drain) when the test ends.
func newInternalBus(t *testing.T, queues []QueueConfig) *Bus {
	t.Helper()
	b, err := New(queues)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, _ = b.Shutdown(ctx)
	})
	return b
}

// TestReceiveWaitingForItsTurn runs two Receive calls on one consumer: the
// first holds the turn, blocked on an empty queue, while the second waits
// for the turn. Each way the wait can end must end it, and the turn must
// pass on.
func TestReceiveWaitingForItsTurn(t *testing.T) {
	ev := Event{Type: "T", Payload: json.RawMessage(`1`)}
	tests := []struct {
		name string
		// end ends the second Receive's wait for the turn.
		end func(t *testing.T, b *Bus, c *Consumer, cancel context.CancelFunc)
		// wantFirst and wantSecond are the errors the two calls return
		// (nil: an event).
		wantFirst, wantSecond error
	}{
		{"turn passed on", func(t *testing.T, b *Bus, _ *Consumer, _ context.CancelFunc) {
			publishInternal(t, b, ev)
			publishInternal(t, b, ev)
		}, nil, nil},
		{"ctx ends", func(t *testing.T, b *Bus, _ *Consumer, cancel context.CancelFunc) {
			cancel()
			// The first call keeps the turn and gets the next event.
			publishInternal(t, b, ev)
		}, nil, context.Canceled},
		{"consumer closed", func(_ *testing.T, _ *Bus, c *Consumer, _ context.CancelFunc) {
			c.Close()
		}, ErrConsumerClosed, ErrConsumerClosed},
		{"bus shut down", func(_ *testing.T, b *Bus, _ *Consumer, _ context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, _ = b.Shutdown(ctx)
		}, ErrShuttingDown, ErrShuttingDown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newInternalBus(t, []QueueConfig{{Name: "q", Capacity: 4, Policy: PolicyBlock}})
			c, err := b.Subscribe("q", 4)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			q := b.byName["q"]
			first, second := make(chan error, 1), make(chan error, 1)
			go func() {
				_, err := c.Receive(context.Background())
				first <- err
			}()
			waitInternal(t, "the first Receive is idle", func() bool {
				q.mu.Lock()
				defer q.mu.Unlock()
				return c.idle
			})
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			go func() {
				_, err := c.Receive(ctx)
				second <- err
			}()
			waitInternal(t, "the second Receive waits for its turn", func() bool {
				q.mu.Lock()
				defer q.mu.Unlock()
				return c.turnWaiters == 1
			})
			tt.end(t, b, c, cancel)
			for _, r := range []struct {
				name string
				got  chan error
				want error
			}{{"first", first, tt.wantFirst}, {"second", second, tt.wantSecond}} {
				select {
				case err := <-r.got:
					if !errors.Is(err, r.want) {
						t.Errorf("%s Receive = %v, want %v", r.name, err, r.want)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("%s Receive never returned", r.name)
				}
			}
			q.mu.Lock()
			defer q.mu.Unlock()
			if c.receiving || c.turnWaiters != 0 {
				t.Errorf("after both calls: receiving %v, %d waiting for the turn", c.receiving, c.turnWaiters)
			}
		})
	}
}

func publishInternal(t *testing.T, b *Bus, ev Event) {
	t.Helper()
	if out, err := b.Publish(context.Background(), ev, "q"); out != Accepted {
		t.Fatal(out, err)
	}
}

// waitInternal polls cond: testkit imports bus, so this package's own
// tests cannot use testkit.Eventually without an import cycle.
func waitInternal(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}
