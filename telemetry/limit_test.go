package telemetry

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// fakeNanos is a clock for traceLimiter that moves only when told.
type fakeNanos struct{ ns atomic.Int64 }

func (c *fakeNanos) now() int64              { return c.ns.Load() }
func (c *fakeNanos) advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestTraceLimiter(t *testing.T) {
	type step struct {
		advance time.Duration // before the calls
		calls   int
		allowed int
	}
	tests := []struct {
		name  string
		rate  float64
		steps []step
	}{
		{"a second's worth at once, then none", 10, []step{{0, 15, 10}, {0, 5, 0}}},
		{"then one per interval", 10, []step{{0, 10, 10}, {99 * time.Millisecond, 1, 0}, {time.Millisecond, 3, 1}, {100 * time.Millisecond, 1, 1}}},
		{"a quiet second refills the burst", 10, []step{{0, 10, 10}, {5 * time.Second, 20, 10}}},
		{"a quiet spell refills no more than a second's worth", 4, []step{{time.Hour, 9, 4}}},
		{"below one per second: one per interval", 0.5, []step{{0, 3, 1}, {time.Second, 1, 0}, {time.Second, 2, 1}}},
		{"no limit", math.Inf(1), []step{{0, 10000, 10000}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeNanos{}
			clock.advance(time.Minute) // a clock that does not start at the limiter's zero
			l := newTraceLimiter(tt.rate, clock.now)
			for i, s := range tt.steps {
				clock.advance(s.advance)
				got := 0
				for range s.calls {
					if l.allow() {
						got++
					}
				}
				if got != s.allowed {
					t.Fatalf("step %d (after %v more, %d calls): %d allowed, want %d", i, s.advance, s.calls, got, s.allowed)
				}
			}
		})
	}
}

func TestTraceLimiterSetRate(t *testing.T) {
	clock := &fakeNanos{}
	l := newTraceLimiter(2, clock.now)
	allowed := func(calls int) (n int) {
		for range calls {
			if l.allow() {
				n++
			}
		}
		return n
	}
	if got := allowed(5); got != 2 {
		t.Fatalf("at 2/s: %d of 5 allowed, want 2", got)
	}
	l.setRate(math.Inf(1))
	if got := allowed(5); got != 5 {
		t.Fatalf("with no limit: %d of 5 allowed, want 5", got)
	}
	// Back to a limit after a second: the spell without one left no debt.
	clock.advance(time.Second)
	l.setRate(3)
	if got := allowed(5); got != 3 {
		t.Fatalf("at 3/s: %d of 5 allowed, want 3", got)
	}
}

// TestTraceLimiterReloadWhilePublishing changes the rate while publishes
// ask for traces, as a configuration reload does; the race detector checks
// that the two never share memory unsynchronised, and the count that no
// caller got past the tightest limit in force.
func TestTraceLimiterReloadWhilePublishing(t *testing.T) {
	clock := &fakeNanos{}
	l := newTraceLimiter(100, clock.now)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			<-start
			for range 1000 {
				if l.allow() {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		<-start
		for i := range 100 {
			l.setRate(float64(50 + i%50))
		}
	})
	close(start)
	wg.Wait()
	// On a stopped clock every rate in force was at most 100/s, whose
	// burst is 100 traces.
	if got := allowed.Load(); got > 100 || got < 49 {
		t.Fatalf("%d traces allowed on a stopped clock at rates of 50 to 100/s, want 49 to 100", got)
	}
}

// TestDataTraceRate checks the limit where the bus meets it: beyond the
// rate, publish spans on the sampled queues are not built and count as
// sampled out, while the other spans of a traced publish (wait, deliver),
// drops and the other queues' publishes are never limited; and a reload
// changes the rate.
func TestDataTraceRate(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	// One trace per 1000 s: the first publish is traced, no later one
	// within the test's lifetime.
	tel := setup(t, Config{
		OTLPEndpoint: rcv.addr, OTLPInsecure: true, DataTraceRate: 0.001,
		SpanBatchDelay: time.Millisecond, MetricInterval: time.Hour,
	}, nil)
	tr := tel.TracerProvider().Tracer("test")
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true,
	})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
	tests := []struct {
		name      string
		recording bool
	}{
		{"publish data", true},
		{"publish data", false},
		{"wait data", true},
		{"deliver data", true},
		{"drop data", true},
		{"publish order", true},
		{"publish signal", true},
		{"publish data", false},
	}
	for i, tt := range tests {
		_, s := tr.Start(ctx, tt.name)
		if s.IsRecording() != tt.recording {
			t.Errorf("span %d, %s: recording = %v, want %v", i, tt.name, s.IsRecording(), tt.recording)
		}
		if !tt.recording && !s.SpanContext().Equal(parent) {
			t.Errorf("span %d, %s: an untraced publish carries %v, want the parent's context %v", i, tt.name, s.SpanContext(), parent)
		}
		s.End()
	}
	if got := tel.Stats().SpansSampledOut; got != 2 {
		t.Errorf("%d spans sampled out, want the 2 publishes over the rate", got)
	}
	if got := tel.Stats().SpansDroppedQueueFull; got != 0 {
		t.Errorf("%d spans counted as lost, want 0: a limited publish is sampled out by design", got)
	}

	if err := tel.SetDataTraceRate(-1); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "-1") {
		t.Fatalf("SetDataTraceRate(-1) = %v, want ErrInvalidConfig naming -1", err)
	}
	if _, s := tr.Start(ctx, "publish data"); s.IsRecording() {
		t.Error("a refused rate lifted the limit")
	}
	if err := tel.SetDataTraceRate(math.Inf(1)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		_, s := tr.Start(ctx, "publish data")
		if !s.IsRecording() {
			t.Errorf("publish %d with no limit was not traced", i)
		}
		s.End()
	}
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(rcv.spanNames()); got != 9 {
		t.Errorf("receiver has %d spans, want the 9 traced ones", got)
	}
}
