package bus

import (
	"context"
	"encoding/json"
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
