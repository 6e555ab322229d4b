package transport

import (
	"fmt"
	"strings"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// TestDeliveriesOneAtATimeToAStalledReader publishes events one at a time,
// each answered before the next, so that each is delivered alone and
// written by the pump itself, to a consumer that reads nothing until all
// are published. The socket fills up and takes only part of a delivery;
// the rest must follow through the write loop, and every delivery must
// arrive whole and in order once the consumer reads.
func TestDeliveriesOneAtATimeToAStalledReader(t *testing.T) {
	ts := startServer(t)
	cons := dialRaw(t, ts.path)
	cons.expectReply(cons.roundTrip(`{"op":"subscribe","id":1,"queue":"data","prefetch":500}`), 1, protocol.StatusOK)
	pub := dialRaw(t, ts.path)

	const events = 200 // about 3 MB: more than the socket buffers hold
	filler := strings.Repeat("x", 16<<10)
	for i := range events {
		id := int64(i + 1)
		pub.expectReply(pub.roundTrip(`{"op":"publish","id":%d,"queue":"data","type":"T","payload":{"i":%d,"f":"%s"}}`, id, i, filler), id, protocol.StatusAccepted)
	}
	var prev uint64
	for i := range events {
		m := cons.recv()
		if m.Op != protocol.OpDeliver {
			t.Fatalf("frame %d: got %+v, want a delivery", i, m)
		}
		want := fmt.Sprintf(`{"i":%d,"f":"%s"}`, i, filler)
		if string(m.Deliver.Payload) != want {
			t.Fatalf("delivery %d: payload of %d bytes starting %.20q, want event %d's", i, len(m.Deliver.Payload), m.Deliver.Payload, i)
		}
		if i > 0 && m.Deliver.Seq <= prev {
			t.Fatalf("delivery %d: seq %d after %d", i, m.Deliver.Seq, prev)
		}
		prev = m.Deliver.Seq
		cons.send(`{"op":"ack","queue":"data","seq":%d}`, m.Deliver.Seq)
	}
}
