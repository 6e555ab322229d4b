package transport

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// manualQueues are queues of capacity 1 whose timeouts only pass when the
// test advances the clock.
func manualQueues() []bus.QueueConfig {
	return []bus.QueueConfig{
		{Name: "data", Capacity: 1, Policy: bus.PolicyDrop, Timeout: time.Second},
		{Name: "signal", Capacity: 1, Policy: bus.PolicyFail, Timeout: 5 * time.Second},
		{Name: "order", Capacity: 1, Policy: bus.PolicyBlock},
	}
}

// pipeline sends publishes ids from..to (inclusive) to queue in one write,
// each with its id as payload.
func (c *rawClient) pipeline(queue string, from, to int) {
	c.t.Helper()
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, `{"op":"publish","id":%d,"queue":%q,"type":"T","payload":%d}`+"\n", i, queue, i)
	}
	c.send("%s", b.String())
}

// TestPipelinedWaitsTimeOutTogether is the seed's ten wait_for(put, 5) on
// a full signal queue: every pipelined publish waits at once with its own
// timeout from its arrival, so one timeout period answers all of them.
func TestPipelinedWaitsTimeOutTogether(t *testing.T) {
	tests := []struct {
		queue   string
		timeout time.Duration // as in manualQueues
		want    protocol.Status
	}{
		{"signal", 5 * time.Second, protocol.StatusTimeout},
		{"data", time.Second, protocol.StatusDropped},
	}
	for _, tt := range tests {
		t.Run(tt.queue, func(t *testing.T) {
			clk := testkit.NewClock()
			ts := startServer(t, withQueues(manualQueues()...), withBusOptions(bus.WithClock(clk)))
			c := dialRaw(t, ts.path)
			c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":%q,"type":"T"}`, tt.queue), 1, protocol.StatusAccepted)
			const n = 10
			c.pipeline(tt.queue, 2, n+1)
			testkit.Eventually(t, "all publishes waiting at once", func() bool { return ts.bus.Stats()[tt.queue].Waiting == n })
			clk.Advance(tt.timeout)
			got := make([]int64, 0, n)
			for range n {
				m := c.recv()
				if m.Status != tt.want {
					t.Fatalf("got %+v, want status %s", m, tt.want)
				}
				got = append(got, m.ID)
			}
			slices.Sort(got)
			for i, id := range got {
				if id != int64(i+2) {
					t.Fatalf("answered ids %v, want 2..%d once each", got, n+1)
				}
			}
			if st := ts.bus.Stats()[tt.queue]; st.Size != 1 || st.Waiting != 0 {
				t.Fatalf("%s size=%d waiting=%d, want 1 and 0", tt.queue, st.Size, st.Waiting)
			}
		})
	}
}

// TestFullDataQueueDoesNotDelayOrder: candles waiting on a full data queue
// do not hold up an order publish sent after them on the same connection.
func TestFullDataQueueDoesNotDelayOrder(t *testing.T) {
	clk := testkit.NewClock()
	ts := startServer(t, withQueues(manualQueues()...), withBusOptions(bus.WithClock(clk)))
	c := dialRaw(t, ts.path)
	const candles = 500
	c.pipeline("data", 1, candles)
	c.send(`{"op":"publish","id":%d,"queue":"order","type":"ORDER_PLACED"}`, candles+1)
	c.send(`{"op":"ping","id":%d}`, candles+2)
	// Candle 1 fills the queue; every other one waits for its timeout,
	// which the test never lets pass.
	c.expectReply(c.recv(), 1, protocol.StatusAccepted)
	c.expectReply(c.recv(), candles+1, protocol.StatusAccepted)
	c.expectReply(c.recv(), candles+2, protocol.StatusOK)
	if st := ts.bus.Stats()["data"]; st.Waiting != candles-1 {
		t.Fatalf("data waiting=%d, want %d: the candles were not still waiting", st.Waiting, candles-1)
	}
	clk.Advance(time.Second)
	for range candles - 1 {
		if m := c.recv(); m.Status != protocol.StatusDropped {
			t.Fatalf("got %+v, want a candle dropped", m)
		}
	}
}

// TestWaitingPublishesKeepOrder: publishes that wait for room enter their
// queue in the order they were sent.
func TestWaitingPublishesKeepOrder(t *testing.T) {
	ts := startServer(t, withQueues(manualQueues()...), withBusOptions(bus.WithClock(testkit.NewClock())))
	pub := dialRaw(t, ts.path)
	const n = 50
	pub.pipeline("order", 1, n)
	testkit.Eventually(t, "publishes waiting", func() bool { return ts.bus.Stats()["order"].Waiting == n-1 })
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"order","prefetch":1}`), 1, protocol.StatusOK)
	for i := 1; i <= n; i++ {
		d := con.recv()
		if string(d.Deliver.Payload) != fmt.Sprint(i) {
			t.Fatalf("delivery %d has payload %s: send order not kept", i, d.Deliver.Payload)
		}
		con.send(`{"op":"ack","seq":%d}`, d.Deliver.Seq)
	}
	for i := 1; i <= n; i++ {
		if m := pub.recv(); m.ID != int64(i) || m.Status != protocol.StatusAccepted {
			t.Fatalf("reply %d: %+v, want id %d accepted", i, m, i)
		}
	}
}

// TestCloseWithdrawsWaitsOnEveryQueue: a connection that goes away takes
// back all its waiting publishes, on every queue, and nothing is enqueued.
func TestCloseWithdrawsWaitsOnEveryQueue(t *testing.T) {
	ts := startServer(t, withQueues(manualQueues()...), withBusOptions(bus.WithClock(testkit.NewClock())))
	c := dialRaw(t, ts.path)
	for _, q := range []string{"data", "signal", "order"} {
		c.pipeline(q, 1, 5)
	}
	testkit.Eventually(t, "publishes waiting", func() bool {
		st := ts.bus.Stats()
		return st["data"].Waiting == 4 && st["signal"].Waiting == 4 && st["order"].Waiting == 4
	})
	c.nc.Close()
	testkit.Eventually(t, "connection gone", ts.gone)
	for q, st := range ts.bus.Stats() {
		if st.Waiting != 0 || st.Size != 1 || st.Published[bus.Cancelled] != 4 {
			t.Errorf("queue %s: waiting=%d size=%d cancelled=%d, want 0, 1 and 4", q, st.Waiting, st.Size, st.Published[bus.Cancelled])
		}
	}
}

// TestWaitingCapStopsReading: at MaxWaitingPublishes the connection is not
// read until a waiting publish is answered; then it goes on.
func TestWaitingCapStopsReading(t *testing.T) {
	ts := startServer(t, withQueues(manualQueues()...), withBusOptions(bus.WithClock(testkit.NewClock())),
		withConfig(func(c *Config) { c.MaxWaitingPublishes = 3 }))
	c := dialRaw(t, ts.path)
	c.pipeline("order", 1, 4)
	c.send(`{"op":"publish","id":5,"queue":"signal","type":"S"}`)
	c.send(`{"op":"ping","id":6}`)
	c.expectReply(c.recv(), 1, protocol.StatusAccepted)
	sc := ts.onlyConn(t)
	testkit.Eventually(t, "reader held at the cap", sc.readerHeldByWaitCap)
	if st := ts.bus.Stats(); st["order"].Waiting != 3 || st["signal"].Size != 0 {
		t.Fatalf("order waiting=%d signal size=%d, want 3 and 0: read past the cap", st["order"].Waiting, st["signal"].Size)
	}
	// Free one slot by taking event 1 out (unacked, so that exactly one
	// wait ends): publish 2 gets in, which lets the reader go on.
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"order","prefetch":1}`), 1, protocol.StatusOK)
	con.recv()
	c.expectReply(c.recv(), 2, protocol.StatusAccepted)
	c.expectReply(c.recv(), 5, protocol.StatusAccepted)
	c.expectReply(c.recv(), 6, protocol.StatusOK)
}
