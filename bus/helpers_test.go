package bus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// newBus builds a bus on a fake clock and shuts it down at cleanup so that
// no goroutine is left behind.
func newBus(t *testing.T, queues []bus.QueueConfig, opts ...bus.Option) (*bus.Bus, *testkit.Clock) {
	t.Helper()
	clk := testkit.NewClock()
	b, err := bus.New(queues, append([]bus.Option{bus.WithClock(clk)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // do not wait for consumers that tests left behind
		_, _ = b.Shutdown(ctx)
	})
	return b, clk
}

func event(typ string, id int) bus.Event {
	return bus.Event{Type: typ, Payload: json.RawMessage(fmt.Sprintf(`{"id":%d}`, id))}
}

// publishN publishes n events that must all be accepted at once.
func publishN(t *testing.T, b *bus.Bus, queue, typ string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		out, err := b.Publish(context.Background(), event(typ, i), queue)
		if err != nil || out != bus.Accepted {
			t.Fatalf("publish %d to %s: %v, %v", i, queue, out, err)
		}
	}
}

// publishResult is the result of a publish run in the background.
type publishResult struct {
	out bus.Outcome
	err error
}

// publishAsync runs a publish in its own goroutine.
func publishAsync(ctx context.Context, b *bus.Bus, ev bus.Event, queue string) <-chan publishResult {
	ch := make(chan publishResult, 1)
	go func() {
		out, err := b.Publish(ctx, ev, queue)
		ch <- publishResult{out, err}
	}()
	return ch
}

// await waits for a background publish to finish.
func await(t *testing.T, ch <-chan publishResult) publishResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("publish never returned")
		return publishResult{}
	}
}

// mustReceive receives one delivery or fails the test.
func mustReceive(t *testing.T, c *bus.Consumer) bus.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}

// payloadID extracts the id a test put into the payload.
func payloadID(t *testing.T, d bus.Delivery) int {
	t.Helper()
	var p struct{ ID int }
	if err := json.Unmarshal(d.Event.Payload, &p); err != nil {
		t.Fatalf("payload %s: %v", d.Event.Payload, err)
	}
	return p.ID
}

func subscribe(t *testing.T, b *bus.Bus, queue string, prefetch int) *bus.Consumer {
	t.Helper()
	c, err := b.Subscribe(queue, prefetch)
	if err != nil {
		t.Fatalf("Subscribe(%s, %d): %v", queue, prefetch, err)
	}
	t.Cleanup(c.Close)
	return c
}
