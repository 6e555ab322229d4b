package bus_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

func TestDropsSummarisedOncePerInterval(t *testing.T) {
	logs := &syncBuffer{}
	b, clk := newBus(t, oneQueue("candles", 1, bus.PolicyDropOldest, 0),
		bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))),
		bus.WithDropLogInterval(time.Minute))
	lines := func() []string {
		var out []string
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "queue overflow") {
				out = append(out, l)
			}
		}
		return out
	}
	publishN(t, b, "candles", "T", 0, 101) // 100 evictions
	got := lines()
	if len(got) != 1 || !strings.Contains(got[0], "dropped_evicted=1 ") {
		t.Fatalf("after 100 drops in one interval: %d lines %q; want one reporting the first drop", len(got), got)
	}
	clk.Advance(time.Minute)
	publishN(t, b, "candles", "T", 101, 1)
	got = lines()
	if len(got) != 2 || !strings.Contains(got[1], "dropped_evicted=100 ") || !strings.Contains(got[1], "drops_total=101") {
		t.Fatalf("next interval: %q; want a second line summing the 99 withheld drops and this one", got)
	}
	publishN(t, b, "candles", "T", 102, 5)
	b.Stats() // within the interval: withheld
	if got = lines(); len(got) != 2 {
		t.Fatalf("Stats logged inside the interval: %q", got)
	}
	clk.Advance(time.Minute)
	b.Stats() // interval over: the withheld drops are reported without a new drop
	got = lines()
	if len(got) != 3 || !strings.Contains(got[2], "dropped_evicted=5 ") {
		t.Fatalf("after the interval, Stats must report the withheld drops: %q", got)
	}
	publishN(t, b, "candles", "T", 107, 2)
	_, _ = b.Shutdown(cancelledCtx()) // one event is left: only the log matters here
	got = lines()
	if len(got) != 4 || !strings.Contains(got[3], "dropped_evicted=2 ") {
		t.Fatalf("drops inside the interval are withheld, Shutdown flushes them: %q", got)
	}
	if st := b.Stats()["candles"]; st.Drops != 108 {
		t.Errorf("drops = %d, want 108", st.Drops)
	}
}

func TestTimeoutsLoggedAsErrors(t *testing.T) {
	logs := &syncBuffer{}
	b, clk := newBus(t, oneQueue("signal", 1, bus.PolicyFail, time.Second),
		bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	publishN(t, b, "signal", "T", 0, 1)
	res := publishAsync(context.Background(), b, event("T", 1), "signal")
	eventually(t, "waiting", func() bool { return clk.Timers() == 1 })
	clk.Advance(time.Second)
	await(t, res)
	out := logs.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "publish_timeouts=1") || !strings.Contains(out, "queue=signal") {
		t.Errorf("timeout log:\n%s", out)
	}
}

func cancelledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
