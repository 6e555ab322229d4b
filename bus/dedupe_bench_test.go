package bus

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkDedupe measures what a publish with a msg id costs the queue's
// dedupe window: a lookup that misses (expiring what fell out of the
// window) and an add. The ids are made up front, as the decoder makes
// them, so that only the window's own work is measured.
//
//	go test -run '^$' -bench Dedupe -benchmem ./bus
func BenchmarkDedupe(b *testing.B) {
	ids := make([]string, 4*MaxDedupeIDs)
	for i := range ids {
		ids[i] = fmt.Sprintf("0192f3c4-7a1e-7c3b-%04x-%012x", i&0xffff, i)
	}
	start := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, bc := range []struct {
		name   string
		window time.Duration
		step   time.Duration // the clock's advance per publish
		fresh  int           // publishes per new window (0: one window)
	}{
		// A new queue filling its window up to MaxDedupeIDs ids.
		{"fill", time.Hour, time.Microsecond, MaxDedupeIDs},
		// A busy queue at its bound: every add forgets the oldest id.
		{"bounded", time.Hour, time.Microsecond, 0},
		// A window of 1,000 publishes: the ids expire by time.
		{"expiring", time.Millisecond, time.Microsecond, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d := newDedupe(bc.window)
			at := start
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if bc.fresh > 0 && i%bc.fresh == 0 {
					d = newDedupe(bc.window)
				}
				id := ids[i%len(ids)]
				at = at.Add(bc.step)
				if _, ok := d.lookup(id, at); ok {
					b.Fatalf("%s: found in the window", id)
				}
				d.add(id, uint64(i+1), at, nil)
			}
		})
	}
}
