package bus_test

import (
	"context"
	"encoding/json"
	"runtime"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// TestEventOverheadCoversQueuedEvents holds bus.EventOverhead, which the
// transport's memory budget charges for every queued event, to what a
// queued event holds besides its payload, type and msg id. The events
// carry a publisher's trace context, as those of a client that propagates
// one do, so that each keeps its span contexts beside its slot: the
// costliest queued event. No msg id: the dedupe window has its own term
// in the memory bound.
func TestEventOverheadCoversQueuedEvents(t *testing.T) {
	const runs = 3
	best := -1.0
	for range runs {
		perEvent := tracedQueueHeapPerEvent(t) - fullQueuePayload
		if best < 0 || perEvent < best {
			best = perEvent
		}
	}
	t.Logf("live heap per queued traced event besides its %d-byte payload: %.0f bytes (EventOverhead %d)", fullQueuePayload, best, bus.EventOverhead)
	if best > bus.EventOverhead {
		t.Errorf("a queued traced event holds %.0f bytes besides its payload; bus.EventOverhead counts %d", best, bus.EventOverhead)
	}
}

// tracedQueueHeapPerEvent fills a new bus's default queues with events
// that carry a trace context and returns the live heap they added per
// event.
func tracedQueueHeapPerEvent(t *testing.T) float64 {
	t.Helper()
	b, err := bus.New(bus.DefaultQueues())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = b.Shutdown(cancelledCtx()) }()
	ctx := context.Background()
	parent := parentSC(t)
	events := 0
	before := liveHeap()
	for _, q := range bus.DefaultQueues() {
		for i := range q.Capacity {
			ev := bus.Event{Type: "CANDLE_UPDATE", Payload: make(json.RawMessage, fullQueuePayload), Parent: parent}
			if out, err := b.Publish(ctx, ev, q.Name); out != bus.Accepted {
				t.Fatalf("publish %d to %s: %v, %v", i, q.Name, out, err)
			}
			events++
		}
	}
	grown := float64(liveHeap() - before)
	runtime.KeepAlive(b)
	return grown / float64(events)
}
