package bus

import (
	"testing"
	"time"
)

// TestNowFollowsTheSystemClock checks the bus's cheap reading of the
// system clock: a time between two time.Now readings around it, on the
// monotonic and on the wall clock, from no anchor, a young one and one
// past anchorAge, which it must replace.
func TestNowFollowsTheSystemClock(t *testing.T) {
	tests := []struct {
		name     string
		anchor   func() *time.Time // nil: none yet
		replaced bool              // the call must take a new anchor
	}{
		{"no anchor yet", func() *time.Time { return nil }, true},
		{"young anchor", func() *time.Time { a := time.Now(); return &a }, false},
		{"anchor past its age", func() *time.Time { a := time.Now().Add(-2 * anchorAge); return &a }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newInternalBus(t, []QueueConfig{{Name: "q", Capacity: 1, Policy: PolicyBlock}})
			if !b.systemClock {
				t.Fatal("the bus does not run on the system clock")
			}
			old := tt.anchor()
			b.anchor.Store(old)
			before := time.Now()
			got := b.now()
			after := time.Now()
			if got.Before(before) || got.After(after) {
				t.Errorf("now() = %v, outside [%v, %v] on the monotonic clock", got, before, after)
			}
			// The wall readings alone (Round(0) drops the monotonic one).
			// time.Now reads the wall and the monotonic clock one after
			// the other, so an anchor's offset between the two is off by
			// the time between its reads: slack for a preempted read.
			const slack = 10 * time.Millisecond
			lo, hi := before.Round(0).Add(-slack), after.Round(0).Add(slack)
			if w := got.Round(0); w.Before(lo) || w.After(hi) {
				t.Errorf("now() = %v, outside [%v, %v] on the wall clock", w, lo, hi)
			}
			if replaced := b.anchor.Load() != old; replaced != tt.replaced {
				t.Errorf("anchor replaced: %v, want %v", replaced, tt.replaced)
			}
		})
	}
}
