package demo

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// busBroker runs the demo against the real in-process bus: the same queue
// engine the sidecar serves over its socket.
type busBroker struct{ b *bus.Bus }

func (bb busBroker) Publish(ctx context.Context, ev bus.Event, queue string) (bus.Outcome, error) {
	return bb.b.Publish(ctx, ev, queue)
}

func (bb busBroker) Subscribe(ctx context.Context, queue string, prefetch int, h Handler) error {
	c, err := bb.b.Subscribe(queue, prefetch)
	if err != nil {
		return err
	}
	defer c.Close()
	// Stop on the context, not only on Receive's error: with events ready,
	// Receive may hand one over even after ctx ended, and a handler that
	// nacks on a dead context would spin.
	for ctx.Err() == nil {
		d, err := c.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if herr := h(ctx, d); herr != nil {
			err = c.Nack(d.Seq)
		} else {
			err = c.Ack(d.Seq)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// newBus starts a bus with small queues (so a short run backs up) and
// records its spans with the real SDK.
func newBus(t *testing.T, queues []bus.QueueConfig) (*bus.Bus, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	b, err := bus.New(queues, bus.WithTracerProvider(tp))
	if err != nil {
		t.Fatalf("bus.New: %v", err)
	}
	t.Cleanup(func() {
		// Queues still hold events no one will consume: do not wait for a drain.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, _ = b.Shutdown(ctx)
	})
	return b, rec
}

func smallQueues() []bus.QueueConfig {
	return []bus.QueueConfig{
		{Name: "data", Capacity: 20, Policy: bus.PolicyDrop, Timeout: 20 * time.Millisecond},
		{Name: "signal", Capacity: 5, Policy: bus.PolicyFail, Timeout: 100 * time.Millisecond},
		{Name: "order", Capacity: 2, Policy: bus.PolicyBlock},
	}
}

// TestRunBacksUpAndTracesOrders checks the point of the demo: the slow venue
// makes order publishers wait and the data queue drop, and every executed
// order's trace starts at the candle that caused it.
//
// It runs in a synctest bubble: the bus's timeouts, the feed's ticker and
// the venue's latency then run on the bubble's clock, which moves only
// when every goroutine waits, so whether the queues back up depends on the
// demo's logic and not on how busy the machine is.
func TestRunBacksUpAndTracesOrders(t *testing.T) {
	synctest.Test(t, testRunBacksUpAndTracesOrders)
}

func testRunBacksUpAndTracesOrders(t *testing.T) {
	b, rec := newBus(t, smallQueues())
	rep, err := Run(t.Context(), busBroker{b}, Config{
		Duration:       2 * time.Second,
		CandleInterval: 2 * time.Millisecond,
		OrderLatency:   50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := rep.Published["data"][bus.Accepted]; got == 0 {
		t.Errorf("accepted candles = 0; report %+v", rep)
	}
	if got := rep.Published["data"][bus.Dropped]; got == 0 {
		t.Errorf("dropped candles = 0, want drops behind the slow venue; report %+v", rep)
	}
	if rep.Consumed["order"] == 0 || len(rep.Executed) == 0 {
		t.Fatalf("no order executed; report %+v", rep)
	}

	spans := rec.Ended()
	names := map[string]int{}
	byTrace := map[string]map[string]bool{}
	for _, s := range spans {
		names[s.Name()]++
		tid := s.SpanContext().TraceID().String()
		if byTrace[tid] == nil {
			byTrace[tid] = map[string]bool{}
		}
		byTrace[tid][s.Name()] = true
	}
	if names["wait order"] == 0 {
		t.Errorf("no 'wait order' span: order publishers never waited; spans by name %v", names)
	}
	for _, o := range rep.Executed {
		tr := byTrace[o.TraceID.String()]
		for _, want := range []string{"publish data", "deliver data", "publish signal", "deliver signal", "publish order", "deliver order"} {
			if !tr[want] {
				t.Errorf("trace %s of %s has no %q span; it has %v", o.TraceID, o.ID, want, tr)
			}
		}
	}
}

// TestRunStopsWhenContextEnds: the caller's context bounds the run as well
// as Duration does, and nothing is left running (goleak).
func TestRunStopsWhenContextEnds(t *testing.T) {
	b, _ := newBus(t, smallQueues())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, busBroker{b}, Config{Duration: time.Hour, CandleInterval: time.Millisecond})
		done <- err
	}()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

// TestRunReportsSubscriptionFailure: a queue the sidecar does not have is an
// error naming it, not a silent demo.
func TestRunReportsSubscriptionFailure(t *testing.T) {
	b, _ := newBus(t, smallQueues())
	_, err := Run(t.Context(), busBroker{b}, Config{Duration: time.Minute, OrderQueue: "orders"})
	if !errors.Is(err, bus.ErrUnknownQueue) {
		t.Fatalf("Run with queue orders = %v, want ErrUnknownQueue", err)
	}
}

func TestCrossover(t *testing.T) {
	rising := []float64{10, 10, 10, 10, 10, 9, 9, 9, 12}
	tests := []struct {
		name   string
		closes []float64
		want   []string // side after each close, "" for none
	}{
		{"warm-up emits nothing", []float64{1, 2, 3, 4, 5, 6, 7}, []string{"", "", "", "", "", "", ""}},
		{"below then above buys", rising, []string{"", "", "", "", "", "", "", "", "buy"}},
		{"above then below sells", append(append([]float64{}, rising...), 1), []string{"", "", "", "", "", "", "", "", "buy", "sell"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var x crossover
			for i, c := range tt.closes {
				side, _, _ := x.update(c)
				if side != tt.want[i] {
					t.Fatalf("close %d (%v): side %q, want %q", i, c, side, tt.want[i])
				}
			}
		})
	}
}

func TestReportWriteText(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	rep := Report{
		Published: map[string]map[bus.Outcome]uint64{
			"order": {bus.Accepted: 2},
			"data":  {bus.Accepted: 5, bus.Dropped: 1},
		},
		Consumed: map[string]uint64{"data": 4, "order": 1},
		Executed: []ExecutedOrder{{ID: "ord-000001", TraceID: tid}, {ID: "ord-000002"}},
	}
	var out strings.Builder
	if err := rep.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("report has %d lines, want a header, two queues and one traced order:\n%s", len(lines), out.String())
	}
	if !strings.HasPrefix(lines[1], "  data ") || !strings.Contains(lines[1], "accepted=5") || !strings.Contains(lines[1], "dropped=1") || !strings.HasSuffix(lines[1], "handled=4") {
		t.Errorf("data line %q", lines[1])
	}
	if !strings.HasPrefix(lines[2], "  order ") {
		t.Errorf("queues not sorted: second line %q", lines[2])
	}
	if lines[3] != "demo: executed ord-000001 trace_id=4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace line %q", lines[3])
	}
}

// TestDialSocketGivesUp: without a sidecar, DialSocket retries until its
// limit and then names the socket, the limit and the likely fix.
func TestDialSocketGivesUp(t *testing.T) {
	path := filepath.Join(testkit.ShortTempDir(t), "none.sock")
	_, err := DialSocket(t.Context(), path, 50*time.Millisecond, 0)
	for _, want := range []string{path, "within 50ms", "is `eventbus-sidecar serve` running?"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("DialSocket without a sidecar = %v, want an error naming %q", err, want)
		}
	}
}
