package bus_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestEndToEndRealDefaultTimeouts runs the default queues with the real clock
// and the default timeouts: data drops after 1.0 s, signal fails after
// 5.0 s, order is still waiting after both and is accepted once a consumer
// makes room. It takes about 5 s; every other test drives a fake clock.
// Elapsed times are only checked from below (a timer never fires early).
func TestEndToEndRealDefaultTimeouts(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues(), bus.WithClock(bus.SystemClock()))
	for _, q := range bus.DefaultQueues() {
		publishN(t, b, q.Name, "T", 0, q.Capacity)
	}
	type result struct {
		out     bus.Outcome
		err     error
		elapsed time.Duration
	}
	results := map[string]*result{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	orderCtx, cancelOrder := context.WithCancel(context.Background())
	defer cancelOrder()
	for _, q := range []string{"data", "signal", "order"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			if q == "order" {
				ctx = orderCtx
			}
			start := time.Now()
			out, err := b.Publish(ctx, event("T", -1), q)
			mu.Lock()
			results[q] = &result{out, err, time.Since(start)}
			mu.Unlock()
		}()
	}
	testkit.Eventually(t, "signal timed out", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return results["signal"] != nil
	})
	mu.Lock()
	data, signal, order := results["data"], results["signal"], results["order"]
	mu.Unlock()
	if data == nil || data.out != bus.Dropped || data.err != nil || data.elapsed < time.Second {
		t.Errorf("data overflow = %+v; want dropped after >= 1 s", data)
	}
	if signal.out != bus.TimedOut || !errors.Is(signal.err, bus.ErrTimeout) || signal.elapsed < 5*time.Second {
		t.Errorf("signal overflow = %+v; want timeout after >= 5 s", signal)
	}
	if order != nil {
		t.Fatalf("order publish returned %+v; it must wait without limit", order)
	}
	c := subscribe(t, b, "order", 1)
	_ = c.Ack(mustReceive(t, c).Seq)
	wg.Wait()
	if order := results["order"]; order.out != bus.Accepted {
		t.Errorf("order publish after room = %+v, want accepted", order)
	}
	st := b.Stats()
	if st["data"].Drops != 1 || st["signal"].Drops != 0 || st["signal"].Timeouts != 1 || st["order"].Drops != 0 {
		t.Errorf("stats = %+v", st)
	}
}
