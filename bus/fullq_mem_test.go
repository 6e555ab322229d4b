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

// fullQueueOverhead is what the design holds per queued event besides its
// payload in TestFullQueueBytesPerEvent: a 96-byte slot in 4 KiB blocks
// (103 bytes per event over the default queues' 29 blocks), the dedupe
// window's 48-byte entries in blocks of 64 and its hash slots (16, 2 and
// 1 blocks and 4096, 512 and 256 slots for the queues' 1000, 100 and 50
// ids: 85 bytes per event) and the id string (24).
const fullQueueOverhead = 212

// maxFullQueueOverhead bounds the live heap per queued event besides its
// payload in TestFullQueueBytesPerEvent: fullQueueOverhead with 40 bytes
// of slack for what else the process allocates during a run. The race
// detector keeps its shadow memory outside the heap, so the bound holds
// under it too. 256-byte slots, in a doubling ring or in blocks, came to
// about 400.
const maxFullQueueOverhead = fullQueueOverhead + 40

// maxFullQueueAllocated bounds the bytes allocated per queued event
// besides its payload while TestFullQueueBytesPerEvent fills the queues:
// fullQueueOverhead, the tables that the dedupe windows' hash tables
// outgrow as they double (256 to 2048 slots of 8 bytes for data's ids,
// 256 for signal's: 29 bytes per event) and 16 bytes of slack. Everything
// else grows in blocks and leaves nothing behind: rings that doubled left
// 43 bytes an event for the dedupe windows' entries and 271 for the
// queues' slots.
const maxFullQueueAllocated = fullQueueOverhead + 29 + 16

// TestFullQueueBytesPerEvent fills the default queues to capacity with
// 1 KiB events, each with a msg id as the clients send, and checks the
// live heap they add per event against what the design holds for one:
// the payload, its slot in a block of the queue's fifo, its id in the
// dedupe window and the id string (see maxFullQueueOverhead); and the
// bytes allocated during the fill per event, which are that and the
// garbage the fill leaves (see maxFullQueueAllocated): garbage stays
// resident until a collection, as much a part of a full sidecar's memory
// as what is live. Each run uses a new bus; the smallest of a few runs is
// taken, so that an allocation elsewhere in the process during one run
// does not fail it.
func TestFullQueueBytesPerEvent(t *testing.T) {
	const runs = 3
	live, allocated := -1.0, -1.0
	for range runs {
		l, a := fullQueueBytesPerEvent(t, func(n int) bus.Event {
			return bus.Event{Type: "CANDLE_UPDATE", Payload: make(json.RawMessage, fullQueuePayload), MsgID: clientMsgID(n)}
		})
		if live < 0 || l < live {
			live = l
		}
		if allocated < 0 || a < allocated {
			allocated = a
		}
	}
	for _, c := range []struct {
		what  string
		got   float64
		limit int
	}{
		{"live heap", live, maxFullQueueOverhead},
		{"allocated during the fill", allocated, maxFullQueueAllocated},
	} {
		limit := float64(fullQueuePayload + c.limit)
		t.Logf("%s per queued %d-byte event: %.0f bytes (limit %.0f)", c.what, fullQueuePayload, c.got, limit)
		if c.got > limit {
			t.Errorf("%s per queued %d-byte event: %.0f bytes, want at most %.0f", c.what, fullQueuePayload, c.got, limit)
		}
	}
}

// fullQueueBytesPerEvent fills a new bus's default queues with the events
// event makes (n counts from 1 in each queue) and returns the live heap
// they added and the bytes allocated during the fill, per event.
func fullQueueBytesPerEvent(t *testing.T, event func(n int) bus.Event) (live, allocated float64) {
	t.Helper()
	b, err := bus.New(bus.DefaultQueues())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = b.Shutdown(cancelledCtx()) }()
	ctx := context.Background()
	events := 0
	before := liveHeap()
	allocBefore := totalAlloc()
	for _, q := range bus.DefaultQueues() {
		for i := range q.Capacity {
			if out, err := b.Publish(ctx, event(i+1), q.Name); out != bus.Accepted {
				t.Fatalf("publish %d to %s: %v, %v", i, q.Name, out, err)
			}
			events++
		}
	}
	allocated = float64(totalAlloc() - allocBefore)
	grown := float64(liveHeap() - before)
	runtime.KeepAlive(b)
	return grown / float64(events), allocated / float64(events)
}

// clientMsgID is a msg id of the length a client generates (a 64-bit hex
// prefix and a counter), made in one allocation of its own size, so that
// the fill allocates the same with and without the race detector.
func clientMsgID(n int) string {
	var buf [32]byte
	return string(strconv.AppendInt(append(buf[:0], "8000000000000000-"...), int64(n), 10))
}

// totalAlloc is the bytes allocated so far in the process.
func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
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
