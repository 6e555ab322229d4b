package testkit

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// Clock is a fake bus.Clock: time moves only when the test calls Advance
// (or Sleep), and timers fire only then. Queue timeouts are driven this way
// instead of by sleeping. It is safe for concurrent use.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	seq    uint64 // creation order of timers, to fire equal deadlines in order
	timers []*clockTimer
	sleeps []time.Duration
}

var _ bus.Clock = (*Clock)(nil)

type clockTimer struct {
	c   *Clock
	at  time.Time
	seq uint64
	f   func()
}

// NewClock returns a Clock with no timers at 2026-01-02T03:04:05Z: a fixed
// instant, so that times in test output do not change from run to run.
func NewClock() *Clock {
	return &Clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

// NewClockAt returns a Clock with no timers at start, for code that
// compares the clock with real deadlines (a context's, say).
func NewClockAt(start time.Time) *Clock {
	return &Clock{now: start}
}

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc arms a timer that calls f once Advance moves the clock d or
// more past now. d <= 0 fires at the next Advance (even Advance(0)).
func (c *Clock) AfterFunc(d time.Duration, f func()) bus.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &clockTimer{c: c, at: c.now.Add(max(d, 0)), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

// Stop disarms the timer; it reports whether the timer was armed, as
// time.Timer.Stop does.
func (t *clockTimer) Stop() bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.timers, t)
	if i < 0 {
		return false
	}
	c.timers = slices.Delete(c.timers, i, i+1)
	return true
}

// Advance moves the clock d forward and fires every timer that falls due,
// earliest first (equal deadlines in the order they were armed). Each
// fires in the caller's goroutine with the clock unlocked and Now at its
// deadline, so a timer may read the clock or arm another one, which fires
// in the same Advance if it is due by then. When Advance returns, every
// wait it timed out has been resolved: the test needs no poll to see it.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(max(d, 0))
	for {
		t := c.nextDueLocked(end)
		if t == nil {
			break
		}
		if t.at.After(c.now) {
			c.now = t.at
		}
		c.mu.Unlock()
		t.f()
		c.mu.Lock()
	}
	c.now = end
	c.mu.Unlock()
}

// nextDueLocked removes and returns the earliest timer due by end, or nil.
func (c *Clock) nextDueLocked(end time.Time) *clockTimer {
	best := -1
	for i, t := range c.timers {
		if t.at.After(end) {
			continue
		}
		if best < 0 || t.at.Before(c.timers[best].at) || t.at.Equal(c.timers[best].at) && t.seq < c.timers[best].seq {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	t := c.timers[best]
	c.timers = slices.Delete(c.timers, best, best+1)
	return t
}

// Timers counts the armed timers. A drop or fail queue with publishes
// waiting holds one, so a test can tell that a publish is waiting before it
// advances the clock.
func (c *Clock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Sleep is a sleep function for code that takes one (a retry loop's
// backoff): it records d and advances the clock by d at once, firing due
// timers. It returns ctx's error, without advancing, when ctx has ended.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	c.mu.Unlock()
	c.Advance(d)
	return nil
}

// Sleeps returns the durations passed to Sleep, in order.
func (c *Clock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sleeps)
}
