package transport

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// The protocol states the msg_id limit without importing the bus; the two
// must agree, or the sidecar would accept ids the bus refuses.
func TestMsgIDLimitMatchesBus(t *testing.T) {
	if protocol.MaxMsgIDBytes != bus.MaxMsgIDBytes {
		t.Fatalf("protocol.MaxMsgIDBytes = %d, bus.MaxMsgIDBytes = %d", protocol.MaxMsgIDBytes, bus.MaxMsgIDBytes)
	}
}

func TestStorageFailureIsStorageError(t *testing.T) {
	err := fmt.Errorf("queue %q: %w: write: no space left on device", "order", bus.ErrStorage)
	re := busError("publish", err)
	if re.Code != protocol.CodeStorageError || !strings.Contains(re.Msg, "no space left on device") {
		t.Fatalf("busError = %+v, want code %s carrying the cause", re, protocol.CodeStorageError)
	}
	if re := busError("publish", errors.New("other")); re.Code != protocol.CodeInternal {
		t.Fatalf("an unclassified error got code %s, want %s", re.Code, protocol.CodeInternal)
	}
}

// A nack with a reason is a nack: the event comes back. Where the reason
// goes (a dead letter) is the bus's part.
func TestNackWithReasonRedelivers(t *testing.T) {
	ts := startServer(t)
	pub := dialRaw(t, ts.path)
	pub.expectReply(pub.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"ORDER_PLACED","msg_id":"m-1"}`), 1, protocol.StatusAccepted)
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"order"}`), 1, protocol.StatusOK)
	d := con.recv()
	con.send(`{"op":"nack","id":2,"seq":%d,"reason":"%s"}`, d.Deliver.Seq, strings.Repeat("r", 2*protocol.MaxNackReasonBytes))
	// The nack's reply and the redelivery may come in either order.
	var again protocol.Message
	var replied bool
	for range 2 {
		m := con.recv()
		if m.Op == protocol.OpDeliver {
			again = m
			continue
		}
		con.expectReply(m, 2, protocol.StatusOK)
		replied = true
	}
	if !replied {
		t.Fatal("the nack with a reason got no reply")
	}
	if again.Op != protocol.OpDeliver || again.Deliver.Seq != d.Deliver.Seq || again.Deliver.Redeliveries != 1 || again.Deliver.DeadLetter != nil {
		t.Fatalf("after nack with reason got %+v, want a redelivery of seq %d", again, d.Deliver.Seq)
	}
}
