package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

func smallQueues() []bus.QueueConfig {
	return []bus.QueueConfig{
		{Name: "data", Capacity: 4, Policy: bus.PolicyDrop, Timeout: 20 * time.Millisecond},
		{Name: "signal", Capacity: 2, Policy: bus.PolicyFail, Timeout: 20 * time.Millisecond},
		{Name: "order", Capacity: 1, Policy: bus.PolicyBlock},
	}
}

func TestPublishRoutesAndOutcomes(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	tests := []struct {
		frame string
		queue string
	}{
		{`{"op":"publish","id":1,"type":"CANDLE_UPDATE","payload":{}}`, "data"},
		{`{"op":"publish","id":2,"type":"CANDLE_CLOSED","payload":{}}`, "data"},
		{`{"op":"publish","id":3,"type":"SIGNAL_GENERATED","payload":{}}`, "signal"},
		{`{"op":"publish","id":4,"type":"ORDER_PLACED","payload":{}}`, "order"},
		{`{"op":"publish","id":5,"type":"SOMETHING_ELSE","payload":{}}`, "data"},
		{`{"op":"publish","id":6,"type":"ORDER_PLACED","queue":"signal","payload":{}}`, "signal"},
	}
	want := map[string]int{}
	for i, tt := range tests {
		c.expectReply(c.roundTrip("%s", tt.frame), int64(i+1), protocol.StatusAccepted)
		want[tt.queue]++
	}
	st := ts.bus.Stats()
	for q, n := range want {
		if st[q].Size != n {
			t.Errorf("queue %s size = %d, want %d", q, st[q].Size, n)
		}
	}
}

func TestCustomRoutes(t *testing.T) {
	ts := startServer(t, withQueues(append(bus.DefaultQueues(), bus.QueueConfig{Name: "risk", Capacity: 5, Policy: bus.PolicyBlock})...),
		withConfig(func(c *Config) { c.Routes = map[string]string{"RISK_LIMIT": "risk"}; c.DefaultQueue = "signal" }))
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"type":"RISK_LIMIT"}`), 1, protocol.StatusAccepted)
	c.expectReply(c.roundTrip(`{"op":"publish","id":2,"type":"CANDLE_UPDATE"}`), 2, protocol.StatusAccepted)
	st := ts.bus.Stats()
	if st["risk"].Size != 1 || st["signal"].Size != 1 || st["data"].Size != 0 {
		t.Fatalf("sizes risk=%d signal=%d data=%d, want 1 1 0", st["risk"].Size, st["signal"].Size, st["data"].Size)
	}
}

func TestSetRoutesAppliesToLaterPublishes(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"type":"RISK_LIMIT"}`), 1, protocol.StatusAccepted)
	if err := ts.srv.SetRoutes(map[string]string{"RISK_LIMIT": "order"}, "signal"); err != nil {
		t.Fatal(err)
	}
	c.expectReply(c.roundTrip(`{"op":"publish","id":2,"type":"RISK_LIMIT"}`), 2, protocol.StatusAccepted)
	c.expectReply(c.roundTrip(`{"op":"publish","id":3,"type":"CANDLE_UPDATE"}`), 3, protocol.StatusAccepted)
	st := ts.bus.Stats()
	if st["data"].Size != 1 || st["order"].Size != 1 || st["signal"].Size != 1 {
		t.Fatalf("sizes data=%d order=%d signal=%d, want 1 1 1", st["data"].Size, st["order"].Size, st["signal"].Size)
	}

	// A bad routing changes nothing.
	err := ts.srv.SetRoutes(map[string]string{"RISK_LIMIT": "risk"}, "data")
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), `route RISK_LIMIT -> "risk": unknown queue`) {
		t.Fatalf("SetRoutes error = %v, want ErrInvalidConfig naming the route", err)
	}
	c.expectReply(c.roundTrip(`{"op":"publish","id":4,"type":"RISK_LIMIT"}`), 4, protocol.StatusAccepted)
	if n := ts.bus.Stats()["order"].Size; n != 2 {
		t.Fatalf("order size = %d after a refused SetRoutes, want 2 (the old routes still apply)", n)
	}
}

func TestNewRejectsBadRoutes(t *testing.T) {
	b, err := bus.New(bus.DefaultQueues())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no bus", Config{}, "Bus is required"},
		{"route to unknown queue", Config{Bus: b, Routes: map[string]string{"X": "risk"}}, `route X -> "risk": unknown queue; valid queues: data, signal, order`},
		{"unknown default queue", Config{Bus: b, DefaultQueue: "nope"}, `default queue "nope" is not a queue of the bus; valid queues: data, signal, order`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New error = %v, want ErrInvalidConfig containing %q", err, tt.want)
			}
		})
	}
}

func TestBadInputGetsErrorAndConnectionSurvives(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	long := strings.Repeat("q", 1000)
	tests := []struct {
		name   string
		frame  string
		id     int64
		hasID  bool
		code   protocol.Code
		substr string
	}{
		{"malformed JSON", `{"op":"publish","id":1,`, 0, false, protocol.CodeBadRequest, "malformed JSON"},
		{"unknown op", `{"op":"teleport","id":2}`, 2, true, protocol.CodeBadRequest, `unknown op "teleport"; valid ops: publish, cancel, subscribe, unsubscribe, ack, nack, stats, ping`},
		{"missing type", `{"op":"publish","id":3,"payload":{}}`, 3, true, protocol.CodeBadRequest, `missing field "type"`},
		{"wrong-typed id", `{"op":"ping","id":"four"}`, 0, false, protocol.CodeBadRequest, `field "id" must be an integer, got string`},
		{"wrong-typed queue", `{"op":"publish","id":5,"type":"T","queue":5}`, 5, true, protocol.CodeBadRequest, `field "queue" must be a string, got number`},
		{"empty type", `{"op":"publish","id":6,"type":""}`, 6, true, protocol.CodeInvalidEvent, `"type" must not be empty`},
		{"unknown queue", `{"op":"publish","id":7,"type":"T","queue":"risk"}`, 7, true, protocol.CodeUnknownQueue, `unknown queue "risk"; valid queues: data, signal, order`},
		{"subscribe unknown queue", `{"op":"subscribe","id":8,"queue":"risk"}`, 8, true, protocol.CodeUnknownQueue, `"risk"`},
		{"ack without subscription", `{"op":"ack","id":9,"seq":1}`, 9, true, protocol.CodeNotSubscribed, "no subscription"},
		{"ack without id", `{"op":"ack","seq":1}`, 0, false, protocol.CodeNotSubscribed, "no subscription"},
		{"unsubscribe without subscription", `{"op":"unsubscribe","id":10,"queue":"data"}`, 10, true, protocol.CodeNotSubscribed, `not subscribed to queue "data"`},
		{"top-level array", `[1]`, 0, false, protocol.CodeBadRequest, "must be a JSON object"},
		{"invalid UTF-8", "{\"op\":\"ping\",\"id\":1,\"x\":\"\xc3\x28\"}", 0, false, protocol.CodeBadRequest, "UTF-8"},
		{"subscribe unknown queue worded as publish", `{"op":"subscribe","id":11,"queue":"risk"}`, 11, true, protocol.CodeUnknownQueue, `unknown queue "risk"; valid queues: data, signal, order`},
		{"long queue name is cut", `{"op":"publish","id":12,"type":"T","queue":"` + long + `"}`, 12, true, protocol.CodeUnknownQueue, `unknown queue "` + long[:128] + `"... (cut to 128 of 1000 bytes); valid queues: data, signal, order`},
		{"long queue name is cut in subscribe", `{"op":"subscribe","id":13,"queue":"` + long + `"}`, 13, true, protocol.CodeUnknownQueue, `unknown queue "` + long[:128] + `"... (cut to 128 of 1000 bytes); valid queues: data, signal, order`},
		{"long queue name is cut in unsubscribe", `{"op":"unsubscribe","id":14,"queue":"` + long + `"}`, 14, true, protocol.CodeNotSubscribed, `not subscribed to queue "` + long[:128] + `"... (cut to 128 of 1000 bytes)`},
		{"byte-order mark", "\xef\xbb\xbf{\"op\":\"ping\",\"id\":15}", 0, false, protocol.CodeBadRequest, "frame starts with a UTF-8 byte-order mark"},
		{"msg_id over the limit", `{"op":"publish","id":16,"type":"T","queue":"data","msg_id":"` + long[:protocol.MaxMsgIDBytes+1] + `"}`, 16, true, protocol.CodeBadRequest, `publish: field "msg_id" is 257 bytes long; at most 256 bytes are allowed`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := c.roundTrip("%s", tt.frame)
			if m.Status != protocol.StatusError || m.Code != tt.code || m.HasID != tt.hasID || m.ID != tt.id || !strings.Contains(m.Error, tt.substr) {
				t.Fatalf("reply %+v, want error code %s id (%d,%v) containing %q", m, tt.code, tt.id, tt.hasID, tt.substr)
			}
			c.expectReply(c.roundTrip(`{"op":"ping","id":99}`), 99, protocol.StatusOK)
		})
	}
	if n := ts.bus.Stats()["data"].Size; n != 0 {
		t.Errorf("data size = %d after refused publishes, want 0", n)
	}
}

func TestBlankLinesAndCRLFAreTolerated(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	c.send("\n\r\n{\"op\":\"ping\",\"id\":1}\r\n")
	c.expectReply(c.recv(), 1, protocol.StatusOK)
	// Whitespace-only lines get no reply either: the next frame is the
	// reply to the ping after them.
	c.send("  \n\t\r\n \t \n{\"op\":\"ping\",\"id\":2}")
	c.expectReply(c.recv(), 2, protocol.StatusOK)
}

func TestSubscribeDeliverAckNack(t *testing.T) {
	ts := startServer(t)
	pub := dialRaw(t, ts.path)
	payload := `{ "price" : 101.25, "tags":["a","\u00e9"], "nested":{"x":null} }`
	before := time.Now()
	pub.expectReply(pub.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"ORDER_PLACED","payload":%s}`, payload), 1, protocol.StatusAccepted)

	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"order","prefetch":4}`), 1, protocol.StatusOK)
	d := con.recv()
	if d.Op != protocol.OpDeliver || d.Deliver.Queue != "order" || d.Deliver.Type != "ORDER_PLACED" || d.Deliver.Redeliveries != 0 {
		t.Fatalf("first delivery %+v", d)
	}
	if string(d.Deliver.Payload) != payload {
		t.Fatalf("payload %q, want byte-for-byte %q", d.Deliver.Payload, payload)
	}
	if at := d.Deliver.EnqueuedAt; at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("enqueued_at %v is not about now", at)
	}
	st := ts.bus.Stats()["order"]
	if st.Size != 0 || st.InFlight != 1 {
		t.Fatalf("stats size=%d in_flight=%d, want 0 and 1", st.Size, st.InFlight)
	}

	con.send(`{"op":"nack","seq":%d}`, d.Deliver.Seq)
	again := con.recv()
	if again.Op != protocol.OpDeliver || again.Deliver.Seq != d.Deliver.Seq || again.Deliver.Redeliveries != 1 {
		t.Fatalf("after nack got %+v, want redelivery of seq %d", again, d.Deliver.Seq)
	}
	con.expectReply(con.roundTrip(`{"op":"ack","id":2,"seq":%d,"queue":"order"}`, d.Deliver.Seq), 2, protocol.StatusOK)
	m := con.roundTrip(`{"op":"ack","id":3,"seq":%d}`, d.Deliver.Seq)
	if m.Status != protocol.StatusError || m.Code != protocol.CodeUnknownSeq || !strings.Contains(m.Error, fmt.Sprint(d.Deliver.Seq)) {
		t.Fatalf("second ack: %+v, want unknown_seq naming the seq", m)
	}
	testkit.Eventually(t, "acked count", func() bool { return ts.bus.Stats()["order"].Acked == 1 })
	if st := ts.bus.Stats()["order"]; st.InFlight != 0 || st.Size != 0 {
		t.Fatalf("after ack size=%d in_flight=%d", st.Size, st.InFlight)
	}
}

func TestSubscriptionRules(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"subscribe","id":1,"queue":"order"}`), 1, protocol.StatusOK)
	m := c.roundTrip(`{"op":"subscribe","id":2,"queue":"order","prefetch":3}`)
	if m.Code != protocol.CodeAlreadySubscribed {
		t.Fatalf("second subscribe: %+v", m)
	}
	c.expectReply(c.roundTrip(`{"op":"subscribe","id":3,"queue":"signal"}`), 3, protocol.StatusOK)
	m = c.roundTrip(`{"op":"ack","id":4,"seq":1}`)
	if m.Code != protocol.CodeBadRequest || !strings.Contains(m.Error, "order, signal") {
		t.Fatalf("ambiguous ack: %+v", m)
	}
	c.expectReply(c.roundTrip(`{"op":"unsubscribe","id":5,"queue":"order"}`), 5, protocol.StatusOK)
	testkit.Eventually(t, "one consumer left", func() bool {
		st := ts.bus.Stats()
		return st["order"].Consumers == 0 && st["signal"].Consumers == 1
	})
}

func TestPublishesToOneQueueKeepOrder(t *testing.T) {
	ts := startServer(t)
	pub := dialRaw(t, ts.path)
	const n = 500
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, `{"op":"publish","id":%d,"queue":"data","type":"T","payload":%d}`+"\n", i, i)
	}
	pub.send("%s", b.String())
	for i := 0; i < n; i++ {
		if m := pub.recv(); m.Status != protocol.StatusAccepted {
			t.Fatalf("reply %+v", m)
		}
	}
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"data","prefetch":64}`), 1, protocol.StatusOK)
	for i := 1; i <= n; i++ {
		d := con.recv()
		if string(d.Deliver.Payload) != fmt.Sprint(i) {
			t.Fatalf("delivery %d has payload %s: order not kept", i, d.Deliver.Payload)
		}
		con.send(`{"op":"ack","seq":%d}`, d.Deliver.Seq)
	}
}

func TestBlockedQueueDoesNotHoldUpOtherQueues(t *testing.T) {
	ts := startServer(t, withQueues(smallQueues()...))
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"O"}`), 1, protocol.StatusAccepted)
	// Order is full now: publish 2 waits without limit.
	c.send(`{"op":"publish","id":2,"queue":"order","type":"O"}`)
	testkit.Eventually(t, "publish 2 waiting", func() bool { return ts.bus.Stats()["order"].Waiting == 1 })
	for i := 3; i <= 6; i++ {
		c.expectReply(c.roundTrip(`{"op":"publish","id":%d,"queue":"data","type":"CANDLE_UPDATE"}`, i), int64(i), protocol.StatusAccepted)
	}
	c.expectReply(c.roundTrip(`{"op":"ping","id":7}`), 7, protocol.StatusOK)
	// Free the order queue: publish 2 completes.
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"order"}`), 1, protocol.StatusOK)
	d := con.recv()
	con.send(`{"op":"ack","seq":%d}`, d.Deliver.Seq)
	c.expectReply(c.recv(), 2, protocol.StatusAccepted)
}

func TestQueuePolicyOutcomes(t *testing.T) {
	ts := startServer(t, withQueues(smallQueues()...))
	c := dialRaw(t, ts.path)
	for i := 1; i <= 4; i++ {
		c.expectReply(c.roundTrip(`{"op":"publish","id":%d,"queue":"data","type":"T"}`, i), int64(i), protocol.StatusAccepted)
	}
	c.expectReply(c.roundTrip(`{"op":"publish","id":5,"queue":"data","type":"T"}`), 5, protocol.StatusDropped)
	for i := 6; i <= 7; i++ {
		c.expectReply(c.roundTrip(`{"op":"publish","id":%d,"queue":"signal","type":"T"}`, i), int64(i), protocol.StatusAccepted)
	}
	c.expectReply(c.roundTrip(`{"op":"publish","id":8,"queue":"signal","type":"T"}`), 8, protocol.StatusTimeout)
}

func TestCancelWithdrawsWaitingPublish(t *testing.T) {
	ts := startServer(t, withQueues(smallQueues()...))
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"O","payload":1}`), 1, protocol.StatusAccepted)
	c.send(`{"op":"publish","id":2,"queue":"order","type":"O","payload":2}`)
	c.send(`{"op":"publish","id":3,"queue":"order","type":"O","payload":3}`)
	c.send(`{"op":"publish","id":4,"queue":"order","type":"O","payload":4}`)
	testkit.Eventually(t, "publishes 2-4 waiting", func() bool { return ts.bus.Stats()["order"].Waiting == 3 })
	// Withdraw the middle one only: its reply comes before the cancel's.
	c.expectReply(c.roundTrip(`{"op":"cancel","id":5,"ref":3}`), 3, protocol.StatusCancelled)
	c.expectReply(c.recv(), 5, protocol.StatusOK)
	if st := ts.bus.Stats()["order"]; st.Size != 1 || st.Waiting != 2 {
		t.Fatalf("order size=%d waiting=%d, want 1 and 2", st.Size, st.Waiting)
	}
	// A cancel of an answered or unknown publish is a no-op.
	c.expectReply(c.roundTrip(`{"op":"cancel","id":6,"ref":1}`), 6, protocol.StatusOK)
	c.expectReply(c.roundTrip(`{"op":"cancel","id":7,"ref":99}`), 7, protocol.StatusOK)
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"order","prefetch":8}`), 1, protocol.StatusOK)
	for _, want := range []string{"1", "2", "4"} {
		if d := con.recv(); string(d.Deliver.Payload) != want {
			t.Fatalf("delivered payload %s, want %s: the cancel withdrew the wrong publish", d.Deliver.Payload, want)
		}
	}
	c.expectReply(c.recv(), 2, protocol.StatusAccepted)
	c.expectReply(c.recv(), 4, protocol.StatusAccepted)
}

func TestClosedConnectionWithdrawsWaitingPublishes(t *testing.T) {
	ts := startServer(t, withQueues(smallQueues()...))
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"O","payload":1}`), 1, protocol.StatusAccepted)
	c.send(`{"op":"publish","id":2,"queue":"order","type":"O","payload":2}`)
	testkit.Eventually(t, "publish 2 waiting", func() bool { return ts.bus.Stats()["order"].Waiting == 1 })
	c.nc.Close()
	testkit.Eventually(t, "waiting publish withdrawn", func() bool { return ts.bus.Stats()["order"].Waiting == 0 })
	testkit.Eventually(t, "connection gone", ts.gone)
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"order","prefetch":8}`), 1, protocol.StatusOK)
	if d := con.recv(); string(d.Deliver.Payload) != "1" {
		t.Fatalf("delivered %s, want 1", d.Deliver.Payload)
	}
	if st := ts.bus.Stats()["order"]; st.Size != 0 {
		t.Fatalf("order size %d: the withdrawn publish was enqueued", st.Size)
	}
}

func TestConsumerGoneEventsRedelivered(t *testing.T) {
	ts := startServer(t)
	pub := dialRaw(t, ts.path)
	for i := 1; i <= 3; i++ {
		pub.expectReply(pub.roundTrip(`{"op":"publish","id":%d,"queue":"signal","type":"S","payload":%d}`, i, i), int64(i), protocol.StatusAccepted)
	}
	first := dialRaw(t, ts.path)
	first.expectReply(first.roundTrip(`{"op":"subscribe","id":1,"queue":"signal","prefetch":3}`), 1, protocol.StatusOK)
	for range 3 {
		first.recv()
	}
	first.nc.Close() // dies without acking
	second := dialRaw(t, ts.path)
	second.expectReply(second.roundTrip(`{"op":"subscribe","id":1,"queue":"signal","prefetch":3}`), 1, protocol.StatusOK)
	for i := 1; i <= 3; i++ {
		d := second.recv()
		if string(d.Deliver.Payload) != fmt.Sprint(i) || d.Deliver.Redeliveries != 1 {
			t.Fatalf("redelivery %d: %+v", i, d.Deliver)
		}
	}
}

func TestStatsAndPing(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"ping","id":11}`), 11, protocol.StatusOK)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":"data","type":"T"}`), 1, protocol.StatusAccepted)
	c.expectReply(c.roundTrip(`{"op":"publish","id":2,"queue":"data","type":"T"}`), 2, protocol.StatusAccepted)
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"data","prefetch":1}`), 1, protocol.StatusOK)
	con.recv()
	testkit.Eventually(t, "one in flight", func() bool { return ts.bus.Stats()["data"].InFlight == 1 })
	m := c.roundTrip(`{"op":"stats","id":10}`)
	c.expectReply(m, 10, protocol.StatusOK)
	var st bus.Stats
	if err := json.Unmarshal(m.Stats, &st); err != nil {
		t.Fatalf("stats %s: %v", m.Stats, err)
	}
	if d := st["data"]; d.Size != 1 || d.InFlight != 1 || d.MaxSize != 1000 || st["order"].MaxSize != 50 || st["signal"].MaxSize != 100 {
		t.Fatalf("stats %s: want data size 1 (waiting only) and in_flight 1, maxsizes 1000/100/50", m.Stats)
	}
}

func TestOversizeFrameClosesOnlyThatConnection(t *testing.T) {
	ts := startServer(t, withConfig(func(c *Config) { c.MaxFrameBytes = 256 }))
	other := dialRaw(t, ts.path)
	tests := []struct {
		name  string
		frame string
	}{
		{"just over", `{"op":"publish","id":1,"type":"T","payload":"` + strings.Repeat("x", 256) + `"}`},
		{"far over, longer than the read buffer", `{"op":"publish","id":1,"type":"T","payload":"` + strings.Repeat("y", 200<<10) + `"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, ts.path)
			go c.nc.Write([]byte(tt.frame + "\n")) //nolint:errcheck // the server may close before reading it all
			m := c.recv()
			if m.Status != protocol.StatusError || m.Code != protocol.CodeFrameTooLarge || !strings.Contains(m.Error, "256 bytes") {
				t.Fatalf("reply %+v, want frame_too_large naming the limit", m)
			}
			c.expectEOF()
			other.expectReply(other.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
		})
	}
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"type":"T","payload":"%s"}`, strings.Repeat("z", 200)), 1, protocol.StatusAccepted)
}

func TestClientDisconnectMidFrame(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	c.nc.Write([]byte(`{"op":"publish","id":2,"type":"T","payl`)) //nolint:errcheck
	c.nc.Close()
	testkit.Eventually(t, "connection dropped", ts.gone)
	if n := ts.bus.Stats()["data"].Size; n != 0 {
		t.Fatalf("a half frame was published (data size %d)", n)
	}
	d := dialRaw(t, ts.path)
	d.expectReply(d.roundTrip(`{"op":"ping","id":3}`), 3, protocol.StatusOK)
}

// TestSlowReaderIsPausedThenServed checks flow control: a client that
// writes far more requests than the output bound before reading gets every
// reply, in order, once it reads.
func TestSlowReaderIsPausedThenServed(t *testing.T) {
	ts := startServer(t, withConfig(func(c *Config) { c.MaxOutputBytes = 4096 }))
	c := dialRaw(t, ts.path)
	const n = 50000 // about 1.2 MB of replies: more than socket buffers hold
	errc := make(chan error, 1)
	go func() {
		var b []byte
		for i := 1; i <= n; i++ {
			b = protocol.AppendRequest(b, &protocol.Request{Op: protocol.OpPing, ID: int64(i), HasID: true})
		}
		_, err := c.nc.Write(b)
		errc <- err
	}()
	// Nobody reads yet: the server must stop reading this client, and
	// others are still served.
	other := dialRaw(t, ts.path)
	other.expectReply(other.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	for i := 1; i <= n; i++ {
		c.expectReply(c.recv(), int64(i), protocol.StatusOK)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestStuckReaderIsCutOff(t *testing.T) {
	ts := startServer(t, withConfig(func(c *Config) {
		c.MaxOutputBytes = 4096
		c.WriteTimeout = 200 * time.Millisecond
	}))
	c := dialRaw(t, ts.path)
	done := make(chan struct{})
	go func() {
		defer close(done)
		line := protocol.AppendRequest(nil, &protocol.Request{Op: protocol.OpPing, ID: 1, HasID: true})
		for {
			c.nc.SetWriteDeadline(time.Now().Add(testTimeout))
			if _, err := c.nc.Write(line); err != nil {
				return // cut off
			}
		}
	}()
	other := dialRaw(t, ts.path)
	other.expectReply(other.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("a client that never reads was not cut off")
	}
	testkit.Eventually(t, "stuck connection closed", func() bool { return ts.srv.Connections() == 1 })
	other.expectReply(other.roundTrip(`{"op":"ping","id":2}`), 2, protocol.StatusOK)
}

func TestShutdownDrainsConsumersAndRefusesPublishes(t *testing.T) {
	ts := startServer(t, withQueues(smallQueues()...))
	pub := dialRaw(t, ts.path)
	con := dialRaw(t, ts.path)
	pub.expectReply(pub.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"O","payload":1}`), 1, protocol.StatusAccepted)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"order","prefetch":1}`), 1, protocol.StatusOK)
	d := con.recv() // in flight: the queue has room again
	pub.expectReply(pub.roundTrip(`{"op":"publish","id":2,"queue":"order","type":"O","payload":2}`), 2, protocol.StatusAccepted)
	pub.send(`{"op":"publish","id":3,"queue":"order","type":"O","payload":3}`)
	testkit.Eventually(t, "publish 3 waiting", func() bool { return ts.bus.Stats()["order"].Waiting == 1 })

	// The bus drains first, as the serve command does.
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_, err := ts.bus.Shutdown(ctx)
		drained <- err
	}()
	m := pub.recv()
	if m.ID != 3 || m.Status != protocol.StatusError || m.Error != "shutting down" || m.Code != protocol.CodeShuttingDown {
		t.Fatalf("waiting publish got %+v, want error \"shutting down\"", m)
	}
	m = pub.roundTrip(`{"op":"publish","id":4,"queue":"data","type":"T"}`)
	if m.ID != 4 || m.Status != protocol.StatusError || m.Error != "shutting down" {
		t.Fatalf("new publish got %+v, want error \"shutting down\"", m)
	}
	// The consumer keeps receiving during the drain.
	con.send(`{"op":"ack","seq":%d}`, d.Deliver.Seq)
	d = con.recv()
	if string(d.Deliver.Payload) != "2" {
		t.Fatalf("during drain got %+v, want event 2", d)
	}
	con.send(`{"op":"ack","seq":%d}`, d.Deliver.Seq)
	if err := <-drained; err != nil {
		t.Fatalf("bus drain: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	con.expectEOF()
	pub.expectEOF()
	if ts.srv.Connections() != 0 {
		t.Fatalf("%d connections left after shutdown", ts.srv.Connections())
	}
}

func TestServerShutdownAnswersWaitingPublishes(t *testing.T) {
	ts := startServer(t, withQueues(smallQueues()...))
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"O"}`), 1, protocol.StatusAccepted)
	c.send(`{"op":"publish","id":2,"queue":"order","type":"O"}`)
	testkit.Eventually(t, "publish 2 waiting", func() bool { return ts.bus.Stats()["order"].Waiting == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	m := c.recv()
	if m.ID != 2 || m.Error != "shutting down" {
		t.Fatalf("got %+v, want publish 2 answered \"shutting down\"", m)
	}
	c.expectEOF()
	if st := ts.bus.Stats()["order"]; st.Size != 1 {
		t.Fatalf("order size %d, want 1", st.Size)
	}
}

// TestShutdownWithReaderHeldByWaitCap covers a read loop held by
// MaxWaitingPublishes: shutdown must still finish and answer every publish
// it read.
func TestShutdownWithReaderHeldByWaitCap(t *testing.T) {
	ts := startServer(t, withQueues(smallQueues()...), withConfig(func(c *Config) { c.MaxWaitingPublishes = 2 }))
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"O"}`), 1, protocol.StatusAccepted)
	for i := 2; i <= 6; i++ {
		c.send(`{"op":"publish","id":%d,"queue":"order","type":"O"}`, i)
	}
	testkit.Eventually(t, "reader held at the cap", ts.onlyConn(t).readerHeldByWaitCap)
	// 2 and 3 wait in the bus, 4 to 6 are not read: the server must not
	// reset the connection over them before the client has the replies.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Publish 6 may have been read before the connection was told to
	// stop, so read until the server closes.
	got := map[int64]string{}
	c.nc.SetReadDeadline(time.Now().Add(testTimeout))
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			break
		}
		m, err := protocol.DecodeMessage([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil {
			t.Fatal(err)
		}
		got[m.ID] = m.Error
	}
	for id := int64(2); id <= 3; id++ {
		if got[id] != "shutting down" {
			t.Fatalf("replies %v: publish %d not answered \"shutting down\"", got, id)
		}
	}
	for id := int64(4); id <= 6; id++ {
		if e, ok := got[id]; ok && e != "shutting down" {
			t.Fatalf("publish %d answered %q", id, e)
		}
	}
}
