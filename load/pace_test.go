package load

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// latenciesOf drives one publisher through p: each event's work takes
// work(i) on the clock, and its latency runs from its send time as take
// gave it to the end of the work.
func latenciesOf(t *testing.T, clk *testkit.Clock, p *pacer, work func(i int64) time.Duration) []time.Duration {
	t.Helper()
	var lat []time.Duration
	for {
		i, at, ok := p.take(context.Background())
		if !ok {
			return lat
		}
		if i != int64(len(lat)) {
			t.Fatalf("took event %d after %d events", i, len(lat))
		}
		clk.Advance(work(i))
		lat = append(lat, clk.Now().Sub(at))
	}
}

func TestPacerOpenLoopKeepsSchedule(t *testing.T) {
	clk := testkit.NewClock()
	start := clk.Now()
	p := newPacer(clk, start, 1000, 5)
	for want := range int64(5) {
		i, at, ok := p.take(context.Background())
		if !ok || i != want || !at.Equal(start.Add(time.Duration(want)*time.Millisecond)) {
			t.Fatalf("take = %d, %v, %v; want event %d due at +%dms", i, at.Sub(start), ok, want, want)
		}
		if now := clk.Now(); !now.Equal(at) {
			t.Fatalf("event %d handed out at +%v, due at +%v", i, now.Sub(start), at.Sub(start))
		}
	}
	if _, _, ok := p.take(context.Background()); ok {
		t.Fatal("a sixth event of five")
	}
	// The first event was due at once; each later one 1 ms after the last.
	if want := []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond, time.Millisecond}; !slices.Equal(clk.Sleeps(), want) {
		t.Fatalf("slept %v, want %v", clk.Sleeps(), want)
	}
}

// A 10 ms stall at event 2 of a 1000 events/s schedule: the open loop
// charges it to every event that fell due during the stall, as a user of
// the sidecar sending at that rate would have seen it; the closed loop
// sees one slow event and hides the rest.
func TestPacerChargesAStallToEveryEventDueDuringIt(t *testing.T) {
	work := func(i int64) time.Duration {
		if i == 2 {
			return 10 * time.Millisecond
		}
		return 100 * time.Microsecond
	}
	us := func(n int) time.Duration { return time.Duration(n) * time.Microsecond }

	clk := testkit.NewClock()
	open := latenciesOf(t, clk, newPacer(clk, clk.Now(), 1000, 16), work)
	// Event 2 ends at 12 ms; events 3 to 12, due at 3 to 12 ms, are sent
	// back to back from then on, 0.1 ms apart, until the schedule is met
	// again at event 13.
	want := []time.Duration{us(100), us(100), us(10000), us(9100), us(8200), us(7300), us(6400), us(5500), us(4600), us(3700), us(2800), us(1900), us(1000), us(100), us(100), us(100)}
	if !slices.Equal(open, want) {
		t.Fatalf("open-loop latencies\n%v, want\n%v", open, want)
	}

	clk = testkit.NewClock()
	closed := latenciesOf(t, clk, newPacer(clk, clk.Now(), 0, 16), work)
	want = slices.Repeat([]time.Duration{us(100)}, 16)
	want[2] = us(10000)
	if !slices.Equal(closed, want) || len(clk.Sleeps()) != 0 {
		t.Fatalf("closed-loop latencies %v (slept %v), want %v without sleeping", closed, clk.Sleeps(), want)
	}
}

func TestPacerStopsWithItsContext(t *testing.T) {
	clk := testkit.NewClock()
	p := newPacer(clk, clk.Now(), 1000, 100)
	ctx, cancel := context.WithCancel(context.Background())
	if _, _, ok := p.take(ctx); !ok {
		t.Fatal("first event refused")
	}
	// Stopped 10 ms in, with only event 0 sent: events 1 to 10 were due
	// by then and never sent; those due after the stop do not count.
	clk.Advance(10 * time.Millisecond)
	cancel()
	if i, _, ok := p.take(ctx); ok {
		t.Fatalf("event %d handed out after the context ended", i)
	}
	clk.Advance(time.Second)
	if got := p.behind(1, clk.Now()); got != 10 {
		t.Fatalf("behind = %d, want the 10 events due by the stop", got)
	}
}

func TestPacerDueBy(t *testing.T) {
	clk := testkit.NewClock()
	start := clk.Now()
	p := newPacer(clk, start, 1000, 10)
	tests := []struct {
		at   time.Duration
		want int64
	}{
		{-time.Nanosecond, 0},
		{0, 1},
		{2*time.Millisecond - time.Nanosecond, 2},
		{2 * time.Millisecond, 3},
		{time.Hour, 10},
	}
	for _, tt := range tests {
		if got := p.dueBy(start.Add(tt.at)); got != tt.want {
			t.Errorf("dueBy(+%v) = %d, want %d", tt.at, got, tt.want)
		}
	}
	// At 3 events/s the due times are not whole nanoseconds apart.
	p = newPacer(clk, start, 3, 10)
	if got, due := p.dueBy(p.due(1)), p.dueBy(p.due(1).Add(-time.Nanosecond)); got != 2 || due != 1 {
		t.Errorf("at 3/s: dueBy(due(1)) = %d, want 2; a nanosecond earlier %d, want 1", got, due)
	}
	if got := newPacer(clk, start, 0, 10).dueBy(start.Add(time.Hour)); got != 0 {
		t.Errorf("closed loop: dueBy = %d, want 0", got)
	}
}
