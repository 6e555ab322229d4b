package testkit

import (
	"errors"
	"testing"
	"time"
)

// DefaultPatience bounds Eventually unless Within says otherwise. It is a
// safety net for a machine under load, not a timing assertion: a condition
// that holds returns at the next poll.
const DefaultPatience = 20 * time.Second

// Condition is what Eventually polls: a func() bool that reports whether
// the wait is over, or a func() error that returns nil when it is over and
// otherwise says what it saw, so that a timeout can report the last state.
type Condition interface {
	func() bool | func() error
}

// WaitOption changes how Eventually waits.
type WaitOption func(*waitConfig)

type waitConfig struct {
	within time.Duration
}

// Within sets how long Eventually polls before it fails the test (default
// DefaultPatience).
func Within(d time.Duration) WaitOption {
	return func(c *waitConfig) {
		if d > 0 {
			c.within = d
		}
	}
}

// Polls start at minPoll, so that conditions that hold almost at once cost
// almost nothing, and back off to maxPoll, so that long waits on an
// external service (a Prometheus query, say) do not hammer it.
const (
	minPoll = time.Millisecond
	maxPoll = 100 * time.Millisecond
)

// Eventually polls cond until it holds and fails the test with
// t.Fatalf, naming what it waited for (and, for a func() error, the last
// error), when it has not held within DefaultPatience or the Within option.
// It never sleeps past the test binary's own -timeout deadline, so that the
// failure names the condition rather than dumping goroutines.
//
// Inside a testing/synctest bubble the polling sleeps advance the bubble's
// fake clock, so a wait there costs no real time.
func Eventually[C Condition](t testing.TB, what string, cond C, opts ...WaitOption) {
	t.Helper()
	cfg := waitConfig{within: DefaultPatience}
	for _, o := range opts {
		o(&cfg)
	}
	check := func() error {
		switch c := any(cond).(type) {
		case func() bool:
			if c() {
				return nil
			}
			return errNotYet
		case func() error:
			return c()
		}
		panic("testkit: unreachable: Condition has two types")
	}
	start := time.Now()
	deadline := start.Add(cfg.within)
	if d, ok := testDeadline(t); ok && d.Before(deadline) {
		deadline = d
	}
	pause := minPoll
	for {
		err := check()
		if err == nil {
			return
		}
		if !time.Now().Before(deadline) {
			if err == errNotYet {
				t.Fatalf("timed out after %v waiting for %s", time.Since(start).Round(time.Millisecond), what)
			}
			t.Fatalf("timed out after %v waiting for %s; last: %v", time.Since(start).Round(time.Millisecond), what, err)
			return
		}
		time.Sleep(min(pause, time.Until(deadline)))
		pause = min(2*pause, maxPoll)
	}
}

// errNotYet stands for a func() bool condition that does not hold: it has
// nothing more to say.
var errNotYet = errors.New("condition does not hold yet")

// deadlineMargin leaves the test binary time to report Eventually's failure
// before its -timeout alarm fires.
const deadlineMargin = time.Second

// testDeadline is t's -timeout deadline less deadlineMargin, when t has one.
func testDeadline(t testing.TB) (time.Time, bool) {
	dt, ok := t.(interface{ Deadline() (time.Time, bool) })
	if !ok {
		return time.Time{}, false
	}
	d, ok := dt.Deadline()
	if !ok {
		return time.Time{}, false
	}
	return d.Add(-deadlineMargin), true
}
