package bus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// fakeClock is a manual clock: timers fire only when Advance passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	clock *fakeClock
	at    time.Time
	f     func()
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) bus.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{clock: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.timers {
		if x == t {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			return true
		}
	}
	return false
}

// Advance moves time on and runs the function of every timer that is due,
// earliest first, in the caller's goroutine once the clock is unlocked:
// when Advance returns, every wait it timed out has been resolved.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			due = append(due, t)
			continue
		}
		kept = append(kept, t)
	}
	clear(c.timers[len(kept):])
	c.timers = kept
	c.mu.Unlock()
	slices.SortStableFunc(due, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	for _, t := range due {
		t.f()
	}
}

// Timers counts armed timers: a drop or fail queue with waiting publishers
// holds one (for all of them), so tests know a publish is waiting before
// they advance time.
func (c *fakeClock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// eventually polls cond until it holds, failing the test after a generous
// deadline. It replaces sleeps; it asserts nothing about timing.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition never held: %s", what)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// newBus builds a bus on a fake clock and shuts it down at cleanup so that
// no goroutine is left behind.
func newBus(t *testing.T, queues []bus.QueueConfig, opts ...bus.Option) (*bus.Bus, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	b, err := bus.New(queues, append([]bus.Option{bus.WithClock(clk)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // do not wait for consumers that tests left behind
		_, _ = b.Shutdown(ctx)
	})
	return b, clk
}

func event(typ string, id int) bus.Event {
	return bus.Event{Type: typ, Payload: json.RawMessage(fmt.Sprintf(`{"id":%d}`, id))}
}

// publishN publishes n events that must all be accepted at once.
func publishN(t *testing.T, b *bus.Bus, queue, typ string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		out, err := b.Publish(context.Background(), event(typ, i), queue)
		if err != nil || out != bus.Accepted {
			t.Fatalf("publish %d to %s: %v, %v", i, queue, out, err)
		}
	}
}

// publishResult is the result of a publish run in the background.
type publishResult struct {
	out bus.Outcome
	err error
}

// publishAsync runs a publish in its own goroutine.
func publishAsync(ctx context.Context, b *bus.Bus, ev bus.Event, queue string) <-chan publishResult {
	ch := make(chan publishResult, 1)
	go func() {
		out, err := b.Publish(ctx, ev, queue)
		ch <- publishResult{out, err}
	}()
	return ch
}

// await waits for a background publish to finish.
func await(t *testing.T, ch <-chan publishResult) publishResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("publish never returned")
		return publishResult{}
	}
}

// mustReceive receives one delivery or fails the test.
func mustReceive(t *testing.T, c *bus.Consumer) bus.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}

// payloadID extracts the id a test put into the payload.
func payloadID(t *testing.T, d bus.Delivery) int {
	t.Helper()
	var p struct{ ID int }
	if err := json.Unmarshal(d.Event.Payload, &p); err != nil {
		t.Fatalf("payload %s: %v", d.Event.Payload, err)
	}
	return p.ID
}

func subscribe(t *testing.T, b *bus.Bus, queue string, prefetch int) *bus.Consumer {
	t.Helper()
	c, err := b.Subscribe(queue, prefetch)
	if err != nil {
		t.Fatalf("Subscribe(%s, %d): %v", queue, prefetch, err)
	}
	t.Cleanup(c.Close)
	return c
}
