package bus_test

import (
	"context"
	"encoding/json"
	"runtime"
	"strconv"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// fullQueuePayload is the size of each event's payload in
// TestFullQueueBytesPerEvent: 1 KiB, as in the full-queues target.
const fullQueuePayload = 1024

// maxFullQueueOverhead bounds the live heap per queued event besides its
// payload in TestFullQueueBytesPerEvent, from the design: a 96-byte slot
// in 4 KiB blocks (103 bytes per event over the default queues' 29
// blocks), the dedupe window's 48-byte entries and hash slots (1024, 128
// and 64 entries for the queues' 1000, 100 and 50 ids: 85 bytes per event)
// and the id string (24), 212 in all, with 40 bytes of slack for what else
// the process allocates during a run. The race
// detector keeps its shadow memory outside the heap, so the bound holds
// under it too. 256-byte slots, in a doubling ring or in blocks, came to
// about 400.
const maxFullQueueOverhead = 252

// TestFullQueueBytesPerEvent fills the default queues to capacity with
// 1 KiB events, each with a msg id as the clients send, and checks the
// live heap they add per event against what the design holds for one:
// the payload, its slot in a block of the queue's fifo, its id in the
// dedupe window and the id string (see maxFullQueueOverhead). Each run
// uses a new bus; the smallest of a few runs is taken, so that an
// allocation elsewhere in the process during one run does not fail it.
func TestFullQueueBytesPerEvent(t *testing.T) {
	const runs = 3
	best := -1.0
	for range runs {
		perEvent := fullQueueHeapPerEvent(t)
		if best < 0 || perEvent < best {
			best = perEvent
		}
	}
	limit := float64(fullQueuePayload + maxFullQueueOverhead)
	t.Logf("live heap per queued %d-byte event: %.0f bytes (limit %.0f)", fullQueuePayload, best, limit)
	if best > limit {
		t.Errorf("full queues hold %.0f bytes of live heap per %d-byte event, want at most %.0f", best, fullQueuePayload, limit)
	}
}

// fullQueueHeapPerEvent fills a new bus's default queues and returns the
// live heap they added per event.
func fullQueueHeapPerEvent(t *testing.T) float64 {
	t.Helper()
	b, err := bus.New(bus.DefaultQueues())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = b.Shutdown(cancelledCtx()) }()
	ctx := context.Background()
	events := 0
	before := liveHeap()
	for _, q := range bus.DefaultQueues() {
		for i := range q.Capacity {
			ev := bus.Event{
				Type:    "CANDLE_UPDATE",
				Payload: make(json.RawMessage, fullQueuePayload),
				// The length of a client's generated id (a 64-bit hex
				// prefix and a counter).
				MsgID: "8000000000000000-" + strconv.Itoa(i+1),
			}
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

// liveHeap is the heap in use right after a collection. Two collections:
// the first moves what sync.Pools hold to their victim caches, the
// second frees it, so that a pool emptied during the fill does not count
// against it.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
