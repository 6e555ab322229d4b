package load

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

func startTestCeiling(t *testing.T) *ceiling {
	t.Helper()
	s, err := startCeiling(filepath.Join(testkit.ShortTempDir(t), "c.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

// rawConn speaks the protocol frame by frame.
type rawConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, path string) *rawConn {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawConn) send(frames ...string) {
	c.t.Helper()
	for _, f := range frames {
		if _, err := c.nc.Write([]byte(f + "\n")); err != nil {
			c.t.Fatal(err)
		}
	}
}

// next reads one frame; the deadline only keeps a broken server from
// hanging the test.
func (c *rawConn) next() protocol.Message {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := c.br.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	m, err := protocol.DecodeMessage(line[:len(line)-1])
	if err != nil {
		c.t.Fatalf("frame %q: %v", line, err)
	}
	return m
}

func (c *rawConn) expectReply(id int64, st protocol.Status) {
	c.t.Helper()
	if m := c.next(); m.Op != "" || m.ID != id || m.Status != st {
		c.t.Fatalf("got %+v, want reply %d %s", m, id, st)
	}
}

func (c *rawConn) expectDeliver(payload string) uint64 {
	c.t.Helper()
	m := c.next()
	if m.Op != protocol.OpDeliver || m.Deliver.Queue != "data" || m.Deliver.Type != "T" || string(m.Deliver.Payload) != payload {
		c.t.Fatalf("got %+v, want a delivery of %s", m, payload)
	}
	return m.Deliver.Seq
}

// framingServers are the servers that answer and forward without a queue,
// for the tests they share: the ceiling, and where it builds, the floor.
func framingServers() map[string]func(t *testing.T) string {
	servers := map[string]func(t *testing.T) string{
		"ceiling": func(t *testing.T) string { return startTestCeiling(t).path },
	}
	addFloor(servers)
	return servers
}

func TestFramingServersAnswerForwardAndHonourPrefetch(t *testing.T) {
	for name, start := range framingServers() {
		t.Run(name, func(t *testing.T) { testAnswersForwardsAndHonoursPrefetch(t, start(t)) })
	}
}

func testAnswersForwardsAndHonoursPrefetch(t *testing.T, path string) {
	pub, con := dialRaw(t, path), dialRaw(t, path)

	pub.send(`{"op":"ping","id":1}`)
	pub.expectReply(1, protocol.StatusOK)
	con.send(`{"op":"subscribe","id":1,"queue":"data","prefetch":2}`)
	con.expectReply(1, protocol.StatusOK)
	pub.send(`{"op":"stats","id":2}`)
	if m := pub.next(); m.ID != 2 || m.Status != protocol.StatusOK || string(m.Stats) != `{"data":{"consumers":1}}` {
		t.Fatalf("stats %+v %s", m, m.Stats)
	}

	// Three publishes, prefetch 2: all three are answered at once, two are
	// delivered, and the third waits for an ack.
	pub.send(`{"op":"publish","id":3,"queue":"data","type":"T","payload":{"n":1}}`,
		`{"op":"publish","id":4,"queue":"data","type":"T","payload":{"n":2}}`,
		`{"op":"publish","id":5,"queue":"data","type":"T","payload": [3, "x"]}`)
	for id := range int64(3) {
		pub.expectReply(3+id, protocol.StatusAccepted)
	}
	seq1 := con.expectDeliver(`{"n":1}`)
	seq2 := con.expectDeliver(`{"n":2}`)
	if seq1 == seq2 {
		t.Fatalf("two deliveries with seq %d", seq1)
	}
	// Had the third been delivered past the prefetch, it would have been
	// written before the ping's reply, since its publish was answered
	// before the ping was sent.
	con.send(`{"op":"ping","id":2}`)
	con.expectReply(2, protocol.StatusOK)
	con.send(`{"op":"ack","queue":"data","seq":1}`)
	con.expectDeliver(`[3, "x"]`)

	// Without "queue", an ack names the connection's only subscription.
	con.send(`{"op":"ack","seq":2,"id":3}`)
	con.expectReply(3, protocol.StatusOK)
	con.send(`{"op":"ack","queue":"order","seq":9,"id":4}`, `{"op":"nonsense","id":5}`, `not json`)
	for _, want := range []struct {
		id   int64
		code protocol.Code
	}{{4, protocol.CodeNotSubscribed}, {5, protocol.CodeBadRequest}, {0, protocol.CodeBadRequest}} {
		if m := con.next(); m.ID != want.id || m.Status != protocol.StatusError || m.Code != want.code {
			t.Fatalf("got %+v, want error %s for %d", m, want.code, want.id)
		}
	}
}

func TestFramingServersReleaseAWaitingPublisherWhenTheConsumerLeaves(t *testing.T) {
	for name, start := range framingServers() {
		t.Run(name, func(t *testing.T) { testReleasesAWaitingPublisherWhenTheConsumerLeaves(t, start(t)) })
	}
}

func testReleasesAWaitingPublisherWhenTheConsumerLeaves(t *testing.T, path string) {
	pub, con := dialRaw(t, path), dialRaw(t, path)
	con.send(`{"op":"subscribe","id":1,"queue":"data","prefetch":1}`)
	con.expectReply(1, protocol.StatusOK)
	pub.send(`{"op":"publish","id":1,"queue":"data","type":"T","payload":1}`,
		`{"op":"publish","id":2,"queue":"data","type":"T","payload":2}`,
		`{"op":"ping","id":3}`)
	pub.expectReply(1, protocol.StatusAccepted)
	pub.expectReply(2, protocol.StatusAccepted)
	con.expectDeliver(`1`)
	// The second publish waits for room, so the ping behind it too, until
	// the only consumer goes: then the event goes nowhere.
	con.nc.Close()
	pub.expectReply(3, protocol.StatusOK)
	pub.send(`{"op":"publish","id":4,"queue":"data","type":"T","payload":4}`, `{"op":"ping","id":5}`)
	pub.expectReply(4, protocol.StatusAccepted)
	pub.expectReply(5, protocol.StatusOK)
}

func TestFramingServersUnderTheLoadTool(t *testing.T) {
	for name, start := range framingServers() {
		t.Run(name, func(t *testing.T) { testUnderTheLoadTool(t, start(t)) })
	}
}

func testUnderTheLoadTool(t *testing.T, path string) {
	for _, cfg := range []Config{
		{Events: 3000, Connections: 2, Concurrency: 16, Consumers: 2, Prefetch: 8, PayloadBytes: 200},
		{Events: 500, Consumers: -1},
		{Events: 300, Rate: 50000, Concurrency: 8},
	} {
		cfg.Socket = path
		res, err := Run(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		want := int64(cfg.Events)
		acked := want
		if cfg.Consumers < 0 {
			acked = 0
		}
		if res.Sent != want || res.Accepted != want || res.Acked != acked || res.Incomplete || res.PublishLatency.N != int(want) || res.EndToEnd.N != int(acked) {
			t.Fatalf("%+v: result %+v", cfg, res)
		}
	}
	// Every consumer has gone.
	c := dialRaw(t, path)
	c.send(`{"op":"stats","id":1}`)
	if m := c.next(); m.ID != 1 || string(m.Stats) != `{"data":{"consumers":0}}` {
		t.Fatalf("stats after the runs: %+v %s", m, m.Stats)
	}
}
