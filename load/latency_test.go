package load

import (
	"sync"
	"testing"
	"time"
)

func TestLatenciesPercentiles(t *testing.T) {
	l := newLatencies()
	// 1 µs to 10 ms in 1 µs steps, from several goroutines, plus one
	// value past the histogram's range.
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := w + 1; v <= 10000; v += 4 {
				l.record(w, time.Duration(v)*time.Microsecond)
			}
		}()
	}
	wg.Wait()
	l.record(0, 2*time.Hour)
	l.record(1, -time.Second) // a clock step backwards counts as zero
	p := l.percentiles()
	if p.N != 10002 {
		t.Fatalf("n = %d, want 10002", p.N)
	}
	near := func(name string, got, want time.Duration) {
		t.Helper()
		if d := got - want; d < -want/500 || d > want/500 {
			t.Errorf("%s = %v, want %v within 0.2 %%", name, got, want)
		}
	}
	near("p50", p.P50, 5000*time.Microsecond)
	near("p90", p.P90, 9000*time.Microsecond)
	near("p99", p.P99, 9900*time.Microsecond)
	near("p99.9", p.P999, 9990*time.Microsecond)
	near("max", p.Max, time.Hour)
	if empty := newLatencies().percentiles(); empty != (Percentiles{}) {
		t.Errorf("empty histogram: %+v", empty)
	}
}
