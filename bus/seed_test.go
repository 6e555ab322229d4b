package bus_test

// The six behaviours the default queues were specified by. Timeouts are
// driven by the fake clock; e2e_test.go runs the real default timeouts.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

func TestQueuesInitializedWithCorrectSizes(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	stats := b.Stats()
	tests := []struct {
		queue   string
		maxsize int
	}{
		{"data", 1000},
		{"signal", 100},
		{"order", 50},
	}
	if len(stats) != len(tests) {
		t.Fatalf("stats has %d queues, want %d: %v", len(stats), len(tests), stats)
	}
	for _, tt := range tests {
		t.Run(tt.queue, func(t *testing.T) {
			s, ok := stats[tt.queue]
			if !ok {
				t.Fatalf("queue %q missing from stats", tt.queue)
			}
			if s.MaxSize != tt.maxsize || s.Size != 0 || s.Drops != 0 {
				t.Errorf("maxsize/size/drops = %d/%d/%d, want %d/0/0", s.MaxSize, s.Size, s.Drops, tt.maxsize)
			}
		})
	}
}

func TestDataQueueDropsEventsWhenFull(t *testing.T) {
	b, clk := newBus(t, bus.DefaultQueues())
	publishN(t, b, "data", "CANDLE_UPDATE", 0, 1000)
	if got := b.Stats()["data"].Size; got != 1000 {
		t.Fatalf("size = %d, want 1000", got)
	}
	res := publishAsync(context.Background(), b, event("CANDLE_UPDATE", 1000), "data")
	testkit.Eventually(t, "publisher waits on its 1 s timer", func() bool { return clk.Timers() == 1 })
	clk.Advance(999 * time.Millisecond)
	if got := b.Stats()["data"].Waiting; got != 1 {
		t.Fatalf("waiting before timeout = %d, want 1", got)
	}
	clk.Advance(time.Millisecond)
	r := await(t, res)
	if r.out != bus.Dropped || r.err != nil {
		t.Fatalf("overflow publish = %v, %v; want dropped, nil", r.out, r.err)
	}
	s := b.Stats()["data"]
	if s.Drops != 1 || s.Size != 1000 || s.DropsByReason[bus.DropTimeout] != 1 {
		t.Errorf("drops/size/by timeout = %d/%d/%d, want 1/1000/1", s.Drops, s.Size, s.DropsByReason[bus.DropTimeout])
	}
}

func TestSignalQueueRaisesTimeoutWhenFull(t *testing.T) {
	b, clk := newBus(t, bus.DefaultQueues())
	publishN(t, b, "signal", "SIGNAL_GENERATED", 0, 100)
	if got := b.Stats()["signal"].Size; got != 100 {
		t.Fatalf("size = %d, want 100", got)
	}
	res := publishAsync(context.Background(), b, event("SIGNAL_GENERATED", 100), "signal")
	testkit.Eventually(t, "publisher waits on its 5 s timer", func() bool { return clk.Timers() == 1 })
	clk.Advance(4999 * time.Millisecond)
	if got := b.Stats()["signal"].Waiting; got != 1 {
		t.Fatalf("waiting before timeout = %d, want 1", got)
	}
	clk.Advance(time.Millisecond)
	r := await(t, res)
	if r.out != bus.TimedOut || !errors.Is(r.err, bus.ErrTimeout) {
		t.Fatalf("overflow publish = %v, %v; want timeout, ErrTimeout", r.out, r.err)
	}
	s := b.Stats()["signal"]
	if s.Drops != 0 || s.Timeouts != 1 || s.Size != 100 {
		t.Errorf("drops/timeouts/size = %d/%d/%d, want 0/1/100", s.Drops, s.Timeouts, s.Size)
	}
}

func TestOrderQueueBlocksIndefinitelyWhenFull(t *testing.T) {
	b, clk := newBus(t, bus.DefaultQueues())
	publishN(t, b, "order", "ORDER_PLACED", 0, 50)
	if got := b.Stats()["order"].Size; got != 50 {
		t.Fatalf("size = %d, want 50", got)
	}
	// The caller's own deadline (asyncio.wait_for in the Python client) is
	// the only thing that ends the wait; the queue itself never times out.
	ctx, cancel := context.WithCancel(context.Background())
	res := publishAsync(ctx, b, event("ORDER_PLACED", 50), "order")
	testkit.Eventually(t, "publisher waits", func() bool { return b.Stats()["order"].Waiting == 1 })
	clk.Advance(24 * time.Hour)
	if got := b.Stats()["order"].Waiting; got != 1 {
		t.Fatalf("waiting after a day = %d, want 1 (order must block without limit)", got)
	}
	cancel()
	r := await(t, res)
	if r.out != bus.Cancelled || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled publish = %v, %v; want cancelled, context.Canceled", r.out, r.err)
	}
	s := b.Stats()["order"]
	if s.Drops != 0 || s.Size != 50 || s.Waiting != 0 {
		t.Errorf("drops/size/waiting = %d/%d/%d, want 0/50/0", s.Drops, s.Size, s.Waiting)
	}
}

func TestPublishRaisesErrorForInvalidQueue(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	out, err := b.Publish(context.Background(), event("CANDLE_UPDATE", 0), "invalid_queue")
	if out != bus.Failed || !errors.Is(err, bus.ErrUnknownQueue) {
		t.Fatalf("Publish = %v, %v; want error, ErrUnknownQueue", out, err)
	}
	for _, want := range []string{`"invalid_queue"`, "data", "signal", "order"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestGetQueueStatsReflectsCurrentState(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	if got := b.Stats()["data"].Size; got != 0 {
		t.Fatalf("initial data size = %d", got)
	}
	publishN(t, b, "data", "CANDLE_UPDATE", 0, 10)
	if s := b.Stats()["data"]; s.Size != 10 || s.Drops != 0 {
		t.Fatalf("data size/drops = %d/%d, want 10/0", s.Size, s.Drops)
	}
	publishN(t, b, "signal", "SIGNAL_GENERATED", 0, 5)
	publishN(t, b, "order", "ORDER_PLACED", 0, 2)
	final := b.Stats()
	for q, want := range map[string]int{"data": 10, "signal": 5, "order": 2} {
		if got := final[q].Size; got != want {
			t.Errorf("%s size = %d, want %d", q, got, want)
		}
	}
}

func TestUnknownQueueMessageIsBounded(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	long := strings.Repeat("x", 1<<20)
	_, err := b.Publish(context.Background(), event("T", 0), long)
	if !errors.Is(err, bus.ErrUnknownQueue) {
		t.Fatalf("err = %v", err)
	}
	if n := len(err.Error()); n > 200 || !strings.Contains(err.Error(), "xxxx...") || !strings.Contains(err.Error(), "data, signal, order") {
		t.Errorf("message of %d bytes: %.300s", n, err)
	}
	if _, err := b.Subscribe(long, 1); !errors.Is(err, bus.ErrUnknownQueue) || len(err.Error()) > 200 {
		t.Errorf("Subscribe: %.300v", err)
	}
}
