package bus_test

import (
	"encoding/json"
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
	parent := parentSC(t)
	best := -1.0
	for range runs {
		live, _ := fullQueueBytesPerEvent(t, func(int) bus.Event {
			return bus.Event{Type: "CANDLE_UPDATE", Payload: make(json.RawMessage, fullQueuePayload), Parent: parent}
		})
		if perEvent := live - fullQueuePayload; best < 0 || perEvent < best {
			best = perEvent
		}
	}
	t.Logf("live heap per queued traced event besides its %d-byte payload: %.0f bytes (EventOverhead %d)", fullQueuePayload, best, bus.EventOverhead)
	if best > bus.EventOverhead {
		t.Errorf("a queued traced event holds %.0f bytes besides its payload; bus.EventOverhead counts %d", best, bus.EventOverhead)
	}
}
