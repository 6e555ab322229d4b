package testkit

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

func TestClockFiresDueTimersInOrder(t *testing.T) {
	c := NewClock()
	start := c.Now()
	var fired []string
	at := map[string]time.Duration{}
	arm := func(name string, d time.Duration) bus.Timer {
		return c.AfterFunc(d, func() {
			fired = append(fired, name)
			at[name] = c.Now().Sub(start)
		})
	}
	arm("c", 3*time.Second)
	arm("a", time.Second)
	arm("b1", 2*time.Second)
	arm("b2", 2*time.Second) // same deadline: after b1, armed first
	stopped := arm("stopped", time.Second)
	arm("later", 10*time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop: want true once, then false")
	}
	if n := c.Timers(); n != 5 {
		t.Fatalf("Timers() = %d, want 5", n)
	}

	c.Advance(999 * time.Millisecond)
	if len(fired) != 0 {
		t.Fatalf("fired %v before any deadline", fired)
	}
	c.Advance(2001 * time.Millisecond)
	if want := []string{"a", "b1", "b2", "c"}; !slices.Equal(fired, want) {
		t.Errorf("fired %v, want %v", fired, want)
	}
	for name, want := range map[string]time.Duration{"a": time.Second, "b1": 2 * time.Second, "c": 3 * time.Second} {
		if at[name] != want {
			t.Errorf("timer %s saw Now = start+%v, want start+%v", name, at[name], want)
		}
	}
	if got := c.Now().Sub(start); got != 3*time.Second {
		t.Errorf("after Advance: start+%v, want start+3s", got)
	}
	if n := c.Timers(); n != 1 {
		t.Errorf("Timers() = %d after firing, want 1 (later)", n)
	}
}

// A timer that arms another (a retry, a queue re-arming for the next
// waiter) sees that one fire in the same Advance when it is due by then.
func TestClockTimerArmedWhileFiring(t *testing.T) {
	c := NewClock()
	var fired []time.Time
	var tick func()
	tick = func() {
		fired = append(fired, c.Now())
		c.AfterFunc(time.Second, tick)
	}
	c.AfterFunc(time.Second, tick)
	c.Advance(3500 * time.Millisecond)
	if len(fired) != 3 {
		t.Fatalf("fired %d times in 3.5s of 1s ticks, want 3", len(fired))
	}
	if c.Timers() != 1 {
		t.Errorf("Timers() = %d, want the fourth tick armed", c.Timers())
	}
}

func TestClockSleep(t *testing.T) {
	c := NewClock()
	start := c.Now()
	fired := false
	c.AfterFunc(150*time.Millisecond, func() { fired = true })
	for _, d := range []time.Duration{100 * time.Millisecond, 100 * time.Millisecond} {
		if err := c.Sleep(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	if !fired || c.Now().Sub(start) != 200*time.Millisecond {
		t.Errorf("after two 100ms sleeps: fired %v, now start+%v", fired, c.Now().Sub(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Sleep(ctx, time.Hour); err != context.Canceled {
		t.Errorf("Sleep on a cancelled context = %v, want context.Canceled", err)
	}
	if got, want := c.Sleeps(), []time.Duration{100 * time.Millisecond, 100 * time.Millisecond}; !slices.Equal(got, want) {
		t.Errorf("Sleeps() = %v, want %v", got, want)
	}
}

// TestClockDrivesBusTimeouts uses the clock as the bus does: a publish to a
// full drop queue waits until the clock passes the queue's timeout.
func TestClockDrivesBusTimeouts(t *testing.T) {
	c := NewClock()
	b, err := bus.New([]bus.QueueConfig{{Name: "data", Capacity: 1, Policy: bus.PolicyDrop, Timeout: time.Second}}, bus.WithClock(c))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // the queue holds an event nobody consumes
		_, _ = b.Shutdown(ctx)
	})
	ev := bus.Event{Type: "CANDLE_UPDATE", Payload: []byte(`{}`)}
	if out, err := b.Publish(context.Background(), ev, "data"); out != bus.Accepted || err != nil {
		t.Fatalf("first publish: %v %v", out, err)
	}
	done := make(chan bus.Outcome, 1)
	go func() {
		out, _ := b.Publish(context.Background(), ev, "data")
		done <- out
	}()
	Eventually(t, "the second publish to wait", func() bool { return c.Timers() == 1 })
	c.Advance(999 * time.Millisecond)
	select {
	case out := <-done:
		t.Fatalf("publish returned %v before its timeout", out)
	default:
	}
	c.Advance(time.Millisecond)
	// Advance resolved the wait before it returned; the goroutine only has
	// to hand the outcome over.
	if out := <-done; out != bus.Dropped {
		t.Errorf("outcome %v, want %v", out, bus.Dropped)
	}
}
