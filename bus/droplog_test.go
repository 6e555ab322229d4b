package bus_test

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// overflowLines returns the drop summaries written to logs so far.
func overflowLines(logs *testkit.SyncBuffer) []string {
	var out []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "queue overflow") {
			out = append(out, l)
		}
	}
	return out
}

func TestLogDropsSummarisesSinceTheLastSummary(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	b, clk := newBus(t, oneQueue("candles", 1, bus.PolicyDropOldest, 0),
		bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))

	publishN(t, b, "candles", "T", 0, 101) // 100 evictions
	if got := overflowLines(logs); len(got) != 0 {
		t.Fatalf("publishing logged drops: %q; only LogDrops and Shutdown may", got)
	}
	clk.Advance(30 * time.Second)
	b.LogDrops()
	got := overflowLines(logs)
	if len(got) != 1 || !strings.Contains(got[0], "dropped_evicted=100 ") || !strings.Contains(got[0], "drops_total=100 ") ||
		!strings.Contains(got[0], "since=30s") || !strings.Contains(got[0], "level=WARN") {
		t.Fatalf("first summary: %q; want one warning with the 100 evictions of the last 30s", got)
	}
	b.LogDrops()
	if got = overflowLines(logs); len(got) != 1 {
		t.Fatalf("LogDrops without new drops wrote %q", got[1:])
	}

	clk.Advance(time.Minute)
	publishN(t, b, "candles", "T", 101, 5)
	clk.Advance(time.Minute)
	b.LogDrops()
	got = overflowLines(logs)
	if len(got) != 2 || !strings.Contains(got[1], "dropped_evicted=5 ") || !strings.Contains(got[1], "drops_total=105 ") ||
		!strings.Contains(got[1], "since=2m0s") {
		t.Fatalf("second summary: %q; want the 5 evictions since the first summary, 2m ago", got)
	}

	publishN(t, b, "candles", "T", 106, 2)
	_, _ = b.Shutdown(cancelledCtx()) // one event is left: only the log matters here
	got = overflowLines(logs)
	if len(got) != 3 || !strings.Contains(got[2], "dropped_evicted=2 ") {
		t.Fatalf("Shutdown must write the drops not yet summarised: %q", got)
	}
	if st := b.Stats()["candles"]; st.Drops != 107 {
		t.Errorf("drops = %d, want 107", st.Drops)
	}
}

// TestReadsDoNotLog: Stats and the metrics callback only read, so that
// when drops are logged does not depend on who looks at the bus how often.
func TestReadsDoNotLog(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	b, clk := newBus(t, oneQueue("candles", 1, bus.PolicyDropOldest, 0),
		bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))), bus.WithMeterProvider(mp))
	publishN(t, b, "candles", "T", 0, 11) // 10 evictions
	for range 3 {
		clk.Advance(time.Hour)
		if st := b.Stats()["candles"]; st.Drops != 10 {
			t.Fatalf("Stats: drops = %d, want 10", st.Drops)
		}
		if _, ok := collect(t, r)["eventbus.events.dropped"]; !ok {
			t.Fatal("the metrics callback did not report eventbus.events.dropped")
		}
	}
	if got := overflowLines(logs); len(got) != 0 {
		t.Fatalf("reading stats and metrics logged: %q", got)
	}
	b.LogDrops() // the drops are still waiting for their summary
	if got := overflowLines(logs); len(got) != 1 || !strings.Contains(got[0], "dropped_evicted=10 ") {
		t.Fatalf("LogDrops after the reads: %q; want the 10 evictions", got)
	}
}

func TestLogDropsSkipsQueuesWithoutDrops(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	b, clk := newBus(t, bus.DefaultQueues(), bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	publishN(t, b, "data", "CANDLE_UPDATE", 0, 1000)
	res := publishAsync(context.Background(), b, event("CANDLE_UPDATE", 1000), "data")
	testkit.Eventually(t, "waiting", func() bool { return clk.Timers() == 1 })
	clk.Advance(time.Second)
	if r := await(t, res); r.out != bus.Dropped {
		t.Fatalf("publish to the full data queue: %v, %v; want dropped", r.out, r.err)
	}
	publishN(t, b, "order", "ORDER_PLACED", 0, 3)
	b.LogDrops()
	got := overflowLines(logs)
	if len(got) != 1 || !strings.Contains(got[0], "queue=data") || !strings.Contains(got[0], "dropped_timeout=1 ") {
		t.Fatalf("summaries: %q; want one, for data only", got)
	}
}

func TestTimeoutsLoggedAsErrors(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	b, clk := newBus(t, oneQueue("signal", 1, bus.PolicyFail, time.Second),
		bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	publishN(t, b, "signal", "T", 0, 1)
	res := publishAsync(context.Background(), b, event("T", 1), "signal")
	testkit.Eventually(t, "waiting", func() bool { return clk.Timers() == 1 })
	clk.Advance(time.Second)
	await(t, res)
	if got := overflowLines(logs); len(got) != 0 {
		t.Fatalf("the timeout was logged as it happened: %q", got)
	}
	b.LogDrops()
	out := logs.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "publish_timeouts=1") || !strings.Contains(out, "queue=signal") {
		t.Errorf("timeout log:\n%s", out)
	}
}

// TestLogDropsConcurrentWithDrops: summaries written while publishers keep
// dropping add up to the drop count, none counted twice or lost.
func TestLogDropsConcurrentWithDrops(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	b, _ := newBus(t, oneQueue("candles", 1, bus.PolicyDropOldest, 0),
		bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2001 {
			if out, err := b.Publish(context.Background(), event("T", i), "candles"); out != bus.Accepted {
				t.Errorf("publish %d: %v, %v", i, out, err)
				return
			}
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
			b.LogDrops()
		}
	}
	b.LogDrops()
	var sum uint64
	for _, l := range overflowLines(logs) {
		_, after, _ := strings.Cut(l, "dropped_evicted=")
		n, err := strconv.ParseUint(strings.Fields(after)[0], 10, 64)
		if err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		sum += n
	}
	if sum != 2000 || b.Stats()["candles"].Drops != 2000 {
		t.Errorf("summaries add up to %d drops, Stats says %d; want 2000 both", sum, b.Stats()["candles"].Drops)
	}
}

func cancelledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
