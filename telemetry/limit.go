package telemetry

import (
	"math"
	"sync/atomic"
	"time"
)

// traceLimiter caps how many traces per second begin on the sampled queues.
// It decides when a publish span would start, before anything is built, so
// that a burst beyond the cap costs the bus one clock read and one atomic
// operation per publish rather than a span that the export worker, the
// collector and the trace store would each pay for again. Up to one second's
// worth may start at once after a quiet spell; beyond that they are spaced
// evenly at the rate (the generic cell rate algorithm: one atomic word, no
// lock, no timer).
type traceLimiter struct {
	// params is nil when there is no limit. A configuration reload swaps
	// it while publishes read it.
	params atomic.Pointer[limitParams]
	// tat is the theoretical arrival time of the next trace, in nanoseconds
	// of now.
	tat atomic.Int64
	// now reads a monotonic clock in nanoseconds; tests inject their own.
	now func() int64
}

type limitParams struct {
	// interval is the spacing of traces at the rate, in nanoseconds;
	// tolerance is how far ahead of now tat may run: the burst.
	interval, tolerance int64
}

func newTraceLimiter(rate float64, now func() int64) *traceLimiter {
	if now == nil {
		start := time.Now()
		now = func() int64 { return int64(time.Since(start)) }
	}
	l := &traceLimiter{now: now}
	l.setRate(rate)
	return l
}

// setRate applies rate (traces per second, > 0; +Inf: no limit) from now on.
func (l *traceLimiter) setRate(rate float64) {
	if math.IsInf(rate, 1) {
		l.params.Store(nil)
		return
	}
	// Rounded down, so that rounding never costs a trace of the burst.
	interval := max(1, int64(float64(time.Second)/rate))
	l.params.Store(&limitParams{interval: interval, tolerance: max(0, int64(time.Second)-interval)})
}

// allow reports whether one more trace may begin now, and if so counts it.
func (l *traceLimiter) allow() bool {
	p := l.params.Load()
	if p == nil {
		return true
	}
	now := l.now()
	for {
		tat := l.tat.Load()
		next := max(tat, now)
		if next-now > p.tolerance {
			return false
		}
		if l.tat.CompareAndSwap(tat, next+p.interval) {
			return true
		}
	}
}
