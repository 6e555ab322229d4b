package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// sendEarly writes a request the way a client does right after connecting,
// before it knows whether the server accepted it. Errors are ignored: a
// rejected connection may be closed already.
func (c *rawClient) sendEarly(line string) {
	c.nc.SetWriteDeadline(time.Now().Add(testTimeout))
	c.nc.Write([]byte(line + "\n")) //nolint:errcheck // see above
}

// expectRejected reads the one frame of a connection over the limit, then
// its end, and closes the connection as a client does.
func (c *rawClient) expectRejected(limit int) {
	c.t.Helper()
	m := c.recv()
	if m.Status != protocol.StatusError || m.Code != protocol.CodeTooManyConnections || m.HasID {
		c.t.Fatalf("got %+v, want an id-less %s error", m, protocol.CodeTooManyConnections)
	}
	if want := fmt.Sprintf("at most %d at once", limit); !strings.Contains(m.Error, want) {
		c.t.Fatalf("error %q does not name the limit (%q)", m.Error, want)
	}
	c.expectEOF()
	c.nc.Close()
}

func meteredServer(t *testing.T, opts ...serverOpt) (*testServer, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	opts = append(opts, withConfig(func(c *Config) { c.MeterProvider = mp }))
	return startServer(t, opts...), reader
}

func TestMaxConnections(t *testing.T) {
	for _, limit := range []int{2, 5} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			ts, reader := meteredServer(t, withQueues(smallQueues()...), withConfig(func(c *Config) { c.MaxConnections = limit }))
			rejected := func() int64 {
				t.Helper()
				v, ok := metricValue(t, reader, "eventbus.connections.rejected")
				if !ok {
					t.Fatal("no eventbus.connections.rejected series")
				}
				return v
			}
			if v := rejected(); v != 0 {
				t.Fatalf("eventbus.connections.rejected = %d at start-up, want a 0 series", v)
			}

			clients := make([]*rawClient, limit)
			for i := range clients {
				clients[i] = dialRaw(t, ts.path)
				clients[i].expectReply(clients[i].roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
			}
			con, pub := clients[0], clients[limit-1]
			con.expectReply(con.roundTrip(`{"op":"subscribe","id":2,"queue":"order","prefetch":1}`), 2, protocol.StatusOK)
			// publishAndConsume checks that p can publish and con consume.
			id := int64(10)
			publishAndConsume := func(p *rawClient) {
				t.Helper()
				id++
				p.expectReply(p.roundTrip(`{"op":"publish","id":%d,"queue":"order","type":"ORDER_PLACED","payload":%d}`, id, id), id, protocol.StatusAccepted)
				d := con.recv()
				if d.Op != protocol.OpDeliver || string(d.Deliver.Payload) != fmt.Sprint(id) {
					t.Fatalf("consumer got %+v, want the delivery of event %d", d, id)
				}
				con.expectReply(con.roundTrip(`{"op":"ack","id":%d,"seq":%d,"queue":"order"}`, id, d.Deliver.Seq), id, protocol.StatusOK)
			}

			over := dialRaw(t, ts.path)
			over.sendEarly(`{"op":"publish","id":1,"queue":"order","type":"ORDER_PLACED","payload":"never"}`)
			over.expectRejected(limit)
			if v := rejected(); v != 1 || ts.srv.Rejected() != 1 {
				t.Fatalf("rejected: metric %d, Rejected() %d; want 1", v, ts.srv.Rejected())
			}
			if n := ts.srv.Connections(); n != limit {
				t.Fatalf("%d connections open, want the %d admitted", n, limit)
			}

			// The admitted clients are unaffected, and the rejected
			// client's publish was never read.
			publishAndConsume(pub)
			for i, c := range clients {
				c.expectReply(c.roundTrip(`{"op":"ping","id":%d}`, 100+i), int64(100+i), protocol.StatusOK)
			}
			if st := ts.bus.Stats()["order"]; st.Published[bus.Accepted] != 1 {
				t.Fatalf("order accepted %d publishes, want only the admitted client's", st.Published[bus.Accepted])
			}

			// One closes: the next connection is admitted and works.
			pub.nc.Close()
			testkit.Eventually(t, "the closed connection to be forgotten", func() bool { return ts.srv.Connections() == limit-1 })
			next := dialRaw(t, ts.path)
			publishAndConsume(next)
			if n := ts.srv.Connections(); n != limit {
				t.Fatalf("%d connections open, want %d", n, limit)
			}

			// Full again: the limit still holds.
			again := dialRaw(t, ts.path)
			again.expectRejected(limit)
			if v := rejected(); v != 2 || ts.srv.Rejected() != 2 {
				t.Fatalf("rejected: metric %d, Rejected() %d; want 2", v, ts.srv.Rejected())
			}
			if v, _ := metricValue(t, reader, "eventbus.connections"); v != int64(limit) {
				t.Fatalf("eventbus.connections = %d, want %d", v, limit)
			}
			if v, _ := metricValue(t, reader, "eventbus.connections.limit"); v != int64(limit) {
				t.Fatalf("eventbus.connections.limit = %d, want %d", v, limit)
			}
		})
	}
}

func TestMaxConnectionsDefault(t *testing.T) {
	ts := startServer(t)
	if got := ts.srv.cfg.MaxConnections; got != DefaultMaxConnections {
		t.Fatalf("MaxConnections 0 became %d, want DefaultMaxConnections (%d)", got, DefaultMaxConnections)
	}
}

func TestLogRejections(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	ts, reader := meteredServer(t, withConfig(func(c *Config) {
		c.MaxConnections = 1
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}))
	holder := dialRaw(t, ts.path)
	holder.expectReply(holder.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	// The accept loop counts a rejection before it hands the connection
	// on, so once a client has its frame, it is counted.
	reject := func(n int) {
		t.Helper()
		for range n {
			dialRaw(t, ts.path).expectRejected(1)
		}
	}
	lines := func() []string { return logs.Lines("connection limit reached") }
	expect := func(when string, n int, last string) {
		t.Helper()
		got := lines()
		if len(got) != n || (n > 0 && !strings.Contains(got[n-1], last)) {
			t.Fatalf("%s: log lines %q; want %d, the last with %q", when, got, n, last)
		}
	}

	ts.srv.LogRejections()
	expect("no rejections yet", 0, "")
	reject(3)
	// Reads of the server's state must not log.
	metricValue(t, reader, "eventbus.connections.rejected")
	ts.srv.Rejected()
	ts.srv.Connections()
	expect("rejections are only counted", 0, "")
	ts.srv.LogRejections()
	expect("the first summary", 1, "rejected=3 rejected_total=3 max_connections=1 open=1")
	ts.srv.LogRejections()
	expect("nothing since the last summary", 1, "")
	reject(1)
	ts.srv.LogRejections()
	expect("the next summary", 2, "rejected=1 rejected_total=4 ")
	reject(2)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	expect("shutdown reports the rest", 3, "rejected=2 rejected_total=6 ")
}

// TestRejectionFloodDoesNotStallAccepting floods the socket with clients
// that neither read nor close, more than can be turned away at once: every
// one is still accepted, counted and closed, with its error frame or, past
// maxRejecting at once, without, and the admitted client is served.
func TestRejectionFloodDoesNotStallAccepting(t *testing.T) {
	ts := startServer(t, withConfig(func(c *Config) { c.MaxConnections = 1 }))
	holder := dialRaw(t, ts.path)
	holder.expectReply(holder.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)

	const flood = 2*maxRejecting + 10
	ncs := make([]net.Conn, flood)
	for i := range ncs {
		nc, err := net.Dial("unix", ts.path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		ncs[i] = nc
	}
	testkit.Eventually(t, "every flood connection rejected", func() bool { return ts.srv.Rejected() == flood })
	holder.expectReply(holder.roundTrip(`{"op":"ping","id":2}`), 2, protocol.StatusOK)

	framed := 0
	for i, nc := range ncs {
		nc.SetReadDeadline(time.Now().Add(testTimeout))
		br := bufio.NewReader(nc)
		line, err := br.ReadString('\n')
		switch {
		case err == nil:
			m, derr := protocol.DecodeMessage([]byte(strings.TrimSuffix(line, "\n")))
			if derr != nil || m.Code != protocol.CodeTooManyConnections {
				t.Fatalf("flood connection %d got %q, want the rejection frame", i, line)
			}
			framed++
			if _, err := br.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("flood connection %d: want the end after the frame, got %v", i, err)
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("flood connection %d: neither a frame nor closed after %v", i, testTimeout)
		case line != "":
			t.Fatalf("flood connection %d: partial frame %q (%v)", i, line, err)
		}
	}
	// The first maxRejecting find their slots free.
	if framed < maxRejecting {
		t.Fatalf("%d of %d flood connections got the frame, want at least %d", framed, flood, maxRejecting)
	}
	t.Logf("%d of %d flood connections got the frame, the rest were closed at once", framed, flood)

	holder.nc.Close()
	testkit.Eventually(t, "the holder to be forgotten", ts.gone)
	next := dialRaw(t, ts.path)
	next.expectReply(next.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
}

// TestReconnectAtTheCapOnceTheConnectionEnded: at the cap, a client whose
// connection has ended, because it closed it or because it read the end
// the server gave it, connects again at once, whatever the server still
// has to tear down; and the cap still holds for everyone else.
func TestReconnectAtTheCapOnceTheConnectionEnded(t *testing.T) {
	const frameLimit = 1 << 10
	// readCutOff sends a frame over frameLimit and reads the server's
	// error and the end of the connection.
	readCutOff := func(t *testing.T, c *rawClient) {
		t.Helper()
		c.send(`{"op":"ping","id":1,"pad":"%s"}`, strings.Repeat("x", 2*frameLimit))
		if m := c.recv(); m.Code != protocol.CodeFrameTooLarge {
			t.Fatalf("got %+v, want a %s error", m, protocol.CodeFrameTooLarge)
		}
		c.expectEOF()
	}
	tests := []struct {
		name string
		// end ends first, the one admitted connection, as its client
		// sees it.
		end func(t *testing.T, ts *testServer, first *rawClient)
	}{
		{
			name: "the client closed an idle connection",
			end:  func(_ *testing.T, _ *testServer, first *rawClient) { first.nc.Close() },
		},
		{
			name: "the client closed while the server did not read it",
			end: func(t *testing.T, ts *testServer, first *rawClient) {
				// The first publish fills order, the second waits for
				// room, and the read loop waits for that one to end:
				// it would only look at the socket on its next recheck.
				first.expectReply(first.roundTrip(`{"op":"publish","id":1,"queue":"order","type":"ORDER_PLACED"}`), 1, protocol.StatusAccepted)
				first.send(`{"op":"publish","id":2,"queue":"order","type":"ORDER_PLACED"}`)
				c := ts.onlyConn(t)
				testkit.Eventually(t, "the read loop held by the waiting publish", c.readerHeldByWaitCap)
				first.nc.Close()
			},
		},
		{
			name: "the server cut it off and the client read the end, its socket still open",
			end: func(t *testing.T, _ *testServer, first *rawClient) {
				readCutOff(t, first)
			},
		},
		{
			name: "the server cut it off and the client read the end and closed",
			end: func(t *testing.T, _ *testServer, first *rawClient) {
				readCutOff(t, first)
				first.nc.Close()
			},
		},
	}
	for _, tt := range tests {
		for _, epoll := range []bool{true, false} {
			name := tt.name
			if !epoll {
				name += ", epoll not available"
			}
			t.Run(name, func(t *testing.T) {
				ts := startServer(t, withQueues(smallQueues()...), withConfig(func(c *Config) {
					c.MaxConnections = 1
					c.MaxWaitingPublishes = 1
					c.MaxFrameBytes = frameLimit
				}))
				if !epoll {
					// As when creating the set failed: every counted
					// socket is polled instead.
					ts.srv.mu.Lock()
					ts.srv.hup.stopped = true
					ts.srv.mu.Unlock()
				}
				first := dialRaw(t, ts.path)
				first.expectReply(first.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
				tt.end(t, ts, first)

				next := dialRaw(t, ts.path)
				next.expectReply(next.roundTrip(`{"op":"ping","id":2}`), 2, protocol.StatusOK)
				if n := ts.srv.Connections(); n != 1 {
					t.Fatalf("%d connections counted, want the new one only", n)
				}
				dialRaw(t, ts.path).expectRejected(1)
				next.expectReply(next.roundTrip(`{"op":"ping","id":3}`), 3, protocol.StatusOK)
			})
		}
	}
}

// TestReconnectAtTheCapFindsAConnectionAdmittedAtTheCap covers a
// connection admitted after the server first reached the cap: it must be
// found closed as surely as the ones open when the cap was first reached,
// even while its read loop does not look at its socket.
func TestReconnectAtTheCapFindsAConnectionAdmittedAtTheCap(t *testing.T) {
	ts := startServer(t, withQueues(smallQueues()...), withConfig(func(c *Config) {
		c.MaxConnections = 1
		c.MaxWaitingPublishes = 1
	}))
	first := dialRaw(t, ts.path)
	first.expectReply(first.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	dialRaw(t, ts.path).expectRejected(1)
	first.nc.Close()

	next := dialRaw(t, ts.path)
	next.expectReply(next.roundTrip(`{"op":"ping","id":2}`), 2, protocol.StatusOK)
	// As in TestReconnectAtTheCapOnceTheConnectionEnded: order is full and
	// the read loop waits for the second publish, not reading.
	next.expectReply(next.roundTrip(`{"op":"publish","id":3,"queue":"order","type":"ORDER_PLACED"}`), 3, protocol.StatusAccepted)
	next.send(`{"op":"publish","id":4,"queue":"order","type":"ORDER_PLACED"}`)
	c := ts.onlyConn(t)
	testkit.Eventually(t, "the read loop held by the waiting publish", c.readerHeldByWaitCap)
	next.nc.Close()

	last := dialRaw(t, ts.path)
	last.expectReply(last.roundTrip(`{"op":"ping","id":5}`), 5, protocol.StatusOK)
	if n := ts.srv.Connections(); n != 1 {
		t.Fatalf("%d connections counted, want the new one only", n)
	}
}
