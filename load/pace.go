package load

import (
	"context"
	"sync/atomic"
	"time"
)

// Clock is the time source of a run: the real clock in a run, a fake one
// in tests of the schedule.
type Clock interface {
	Now() time.Time
	// Sleep returns after d, or early with ctx's error when ctx ends.
	Sleep(ctx context.Context, d time.Duration) error
}

// realClock is the machine's clock. A Go timer in a process with nothing
// else to do fires up to a millisecond late (the runtime waits for timers
// in whole milliseconds), which an open-loop run counts as latency. A
// nanosleep system call would be precise, but it holds the goroutine's P:
// with two Ps, replies waited for milliseconds behind two sleepers. So
// Sleep waits where the platform allows on a kernel timer that the
// runtime's network poller watches (sleepTimers), which wakes the poller
// at the due time to the microsecond without holding a P, and on a Go
// timer elsewhere or when no such timer is left.
type realClock struct {
	timers *sleepTimers
}

func newRealClock() *realClock { return &realClock{timers: newSleepTimers()} }

func (*realClock) Now() time.Time { return time.Now() }

func (c *realClock) Sleep(ctx context.Context, d time.Duration) error {
	if done, err := c.timers.sleep(ctx, d); done {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close releases the kernel timers; call it once no Sleep is running.
func (c *realClock) Close() error { return c.timers.close() }

// pacer hands out the events of a run to the publishing workers. Closed
// loop (rate 0): a worker takes the next event as soon as it is free and
// the event's send time is when it was taken. Open loop: event i is due at
// start + i/rate whatever happened before it; a worker that takes it early
// sleeps until then, one that takes it late (every worker was stuck) sends
// it at once. Latency is measured from the due time, so a stall counts
// against every event that should have been sent during it, not only
// against the one that was in flight (no coordinated omission).
type pacer struct {
	clock  Clock
	start  time.Time
	rate   float64 // events per second; 0: closed loop
	events int64
	next   atomic.Int64
	// turn is held by the one publisher that waits for the next event's
	// due time in an open-loop run; the others wait for the turn, not on
	// timers of their own. With a sleeper per publisher (hundreds) one
	// event in a hundred was sent over a millisecond late, with one it is
	// a fraction of that (docs/performance.md, the load tool's pacing).
	turn chan struct{}
	// stopped is when a take first found its context ended (Unix ns), 0
	// before: the run's events due after it were never meant to be sent.
	stopped atomic.Int64
}

func newPacer(clock Clock, start time.Time, rate float64, events int) *pacer {
	return &pacer{clock: clock, start: start, rate: rate, events: int64(events), turn: make(chan struct{}, 1)}
}

// due is event i's intended send time in an open-loop run.
func (p *pacer) due(i int64) time.Time {
	return p.start.Add(time.Duration(float64(i) * float64(time.Second) / p.rate))
}

// take claims the next event and returns its number and its intended send
// time, after waiting for that time in an open-loop run. ok is false when
// every event has been taken or ctx has ended.
func (p *pacer) take(ctx context.Context) (i int64, at time.Time, ok bool) {
	if ctx.Err() != nil {
		p.stop()
		return 0, time.Time{}, false
	}
	if p.rate != 0 {
		select {
		case p.turn <- struct{}{}:
			defer func() { <-p.turn }()
		case <-ctx.Done():
			p.stop()
			return 0, time.Time{}, false
		}
	}
	i = p.next.Add(1) - 1
	if i >= p.events {
		return 0, time.Time{}, false
	}
	now := p.clock.Now()
	if p.rate == 0 {
		return i, now, true
	}
	at = p.due(i)
	if wait := at.Sub(now); wait > 0 {
		if p.clock.Sleep(ctx, wait) != nil {
			p.stop()
			return 0, time.Time{}, false
		}
	}
	return i, at, true
}

func (p *pacer) stop() {
	p.stopped.CompareAndSwap(0, p.clock.Now().UnixNano())
}

// behind counts, in an open-loop run that ended at end and sent sent
// events, the events due before the end (or before the run was stopped,
// if earlier) that were never sent.
func (p *pacer) behind(sent int64, end time.Time) int64 {
	if s := p.stopped.Load(); s != 0 && s < end.UnixNano() {
		end = time.Unix(0, s)
	}
	return max(p.dueBy(end)-sent, 0)
}

// dueBy counts the events of an open-loop run due at or before t: the
// ones a run ending at t should have sent.
func (p *pacer) dueBy(t time.Time) int64 {
	if p.rate == 0 || t.Before(p.start) {
		return 0
	}
	n := min(int64(t.Sub(p.start).Seconds()*p.rate)+1, p.events)
	// The float estimate may be one off either way at an exact due time.
	for n > 0 && p.due(n-1).After(t) {
		n--
	}
	for n < p.events && !p.due(n).After(t) {
		n++
	}
	return n
}
