package bus

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

func testSpanContext(b byte) trace.SpanContext {
	var tid trace.TraceID
	var sid trace.SpanID
	for i := range tid {
		tid[i] = b + byte(i)
	}
	for i := range sid {
		sid[i] = b + 100 + byte(i)
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true})
}

// testEntry is an entry of ev as a publish with pubSC (traced or not)
// stores it, with dl when it is a dead letter.
func testEntry(t testing.TB, ev Event, pubSC trace.SpanContext, traced bool, dl *DeadLetter) entry {
	t.Helper()
	var e entry
	e.setEvent(&ev, &pubSC, traced)
	if dl != nil {
		e.setRare(func(r *entryRare) { r.dl = dl })
	}
	return e
}

func TestRecordRoundTrip(t *testing.T) {
	at := time.Unix(1700000000, 123).UTC()
	for _, e := range []entry{
		testEntry(t, Event{Type: "ORDER_NEW", Payload: json.RawMessage(`{"qty":1}`), MsgID: "m-1"}, trace.SpanContext{}, false, nil),
		testEntry(t, Event{Type: "T", Parent: testSpanContext(1)}, testSpanContext(2), true, nil),
		testEntry(t, Event{Type: "ORDER_NEW", Payload: json.RawMessage(`[]`), MsgID: "m-9", Parent: testSpanContext(3)},
			testSpanContext(4), true, &DeadLetter{Queue: "order", Seq: 1 << 40, Deliveries: 5, Reason: "bad price"}),
	} {
		data := encodeRecord(nil, &e)
		// The log keeps the msg id of a publish itself; a dead letter's
		// travels in the data.
		logID := e.msgID
		if e.dl() != nil {
			logID = ""
		}
		got, err := decodeRecord(data, 7, logID, at, 3)
		if err != nil {
			t.Fatalf("decode %+v: %v", e, err)
		}
		want := e
		want.seq, want.enqueuedAt = 7, at
		want.setRare(func(r *entryRare) { r.redeliveries = 3 })
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
		}
		for n := range len(data) - len(e.payload) {
			if _, err := decodeRecord(data[:n], 7, logID, at, 0); err == nil {
				t.Fatalf("decoding %d of %d bytes succeeded", n, len(data))
			}
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	e := testEntry(f, Event{Type: "X", Payload: json.RawMessage(`{}`), MsgID: "m"}, testSpanContext(1), false,
		&DeadLetter{Queue: "q", Seq: 3, Deliveries: 2, Reason: "r"})
	f.Add(encodeRecord(nil, &e))
	f.Add([]byte{recordVersion, 0xff, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeRecord(data, 1, "", time.Time{}, 0)
		if err != nil {
			return
		}
		// What decodes encodes back to the same bytes, so nothing in a
		// record is silently dropped.
		again, err := decodeRecord(encodeRecord(nil, &got), 1, "", time.Time{}, 0)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("re-encoding %+v: %+v, %v", got, again, err)
		}
	})
}
