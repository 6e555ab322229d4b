package transport

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// connWork is what each measured connection does before it goes idle.
type connWork struct {
	name string
	// events each connection publishes to data while subscribed to it
	// with prefetch (0 events: it only pings and does not subscribe).
	events, prefetch int
	// testConns is how many connections TestConnectionMemory measures:
	// fewer for a burst, which is slow under the race detector.
	testConns int
}

// The connections ConnectionMemory covers: an idle one, a consumer that
// publishes and acks small events with the prefetch the clients use by
// default, and one with a large prefetch after a burst. All of them
// publish at once into a queue of memQueueCapacity, so in the burst most
// of a connection's 512 publishes wait for room while 256 deliveries are
// in flight: what it grew for that must be given back once it is over.
var connWorks = []connWork{
	{name: "idle after a ping", testConns: 200},
	{name: "consumer, prefetch 16, 64 events", events: 64, prefetch: 16, testConns: 200},
	{name: "consumer, prefetch 256, 256 events", events: 256, prefetch: 256, testConns: 100},
}

// connBurst is a longer burst, which BenchmarkConnectionMemory measures
// too: the test's is enough to fail a connection that keeps what it grew,
// and quicker under the race detector.
var connBurst = connWork{name: "consumer, prefetch 256, 512 events", events: 512, prefetch: 256}

// goMemory is the memory the Go runtime holds from the operating system
// and has not given back: heap (live objects, free and unused spans),
// goroutine stacks, runtime metadata. After settle it is close to what the
// process's RSS holds beyond the binary's pages.
func goMemory() int64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64() - s[1].Value.Uint64())
}

// vmRSS reads this process's resident set size.
func vmRSS(tb testing.TB) int64 {
	tb.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// settle collects garbage, frees the stacks of finished goroutines and
// returns free memory to the operating system.
func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// memQueueCapacity is the measured queue's capacity: publishes beyond it
// wait for room.
const memQueueCapacity = 1024

// connMemory opens n connections to a real server in this process, lets
// them all do w at once and go idle, and returns the growth of the
// process's Go memory and of its RSS per connection, each measured after
// settle. The client ends are plain sockets without goroutines or
// buffers, a few hundred bytes each, so nearly all of it is the server's.
func connMemory(tb testing.TB, n int, w connWork) (goPerConn, rssPerConn float64) {
	tb.Helper()
	ts := runServer(tb, withQueues(bus.QueueConfig{Name: "data", Capacity: memQueueCapacity, Policy: bus.PolicyBlock}),
		withConfig(func(c *Config) { c.MaxConnections = n }))
	defer ts.stop(tb)
	// The queue's storage grows with its depth, not with the connections:
	// fill and drain it once before the baseline.
	runClients(tb, ts, dialN(tb, ts.path, 1), connWork{events: memQueueCapacity, prefetch: 16}, false)
	if w.events > 0 {
		// So does the runtime's metadata for the heap that the
		// connections' events and waiting publishes fill, which it keeps
		// once mapped: the budget bounds that heap, not the connections.
		// Run the work once on other connections before the baseline.
		runClients(tb, ts, dialN(tb, ts.path, n), w, false)
	}
	testkit.Eventually(tb, "the warm-up connections gone", func() bool { return ts.srv.Connections() == 0 })
	settle()
	go0, rss0 := goMemory(), vmRSS(tb)

	conns := dialN(tb, ts.path, n)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	runClients(tb, ts, conns, w, true)
	testkit.Eventually(tb, "every connection served", func() bool { return ts.srv.Connections() == n })
	// The last replies may still be on their way to the sockets, and
	// what a burst made a connection grow goes after shrinkIdleAfter.
	testkit.Eventually(tb, "every connection's output written and its buffers shrunk", ts.outputIdle)
	settle()
	go1, rss1 := goMemory(), vmRSS(tb)
	return float64(go1-go0) / float64(n), float64(rss1-rss0) / float64(n)
}

// outputIdle reports whether every connection has written all its output,
// its write loop is parked, and its output buffers and bookkeeping are no
// larger than an idle connection keeps.
func (ts *testServer) outputIdle() bool {
	ts.srv.mu.Lock()
	defer ts.srv.mu.Unlock()
	for c := range ts.srv.conns {
		c.omu.Lock()
		idle := c.writerIdle && len(c.obuf) == 0 && !c.outputGrown() && !c.bookGrown.Load()
		c.omu.Unlock()
		if !idle {
			return false
		}
	}
	return true
}

func dialN(tb testing.TB, path string, n int) []net.Conn {
	tb.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		nc, err := net.Dial("unix", path)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			tb.Fatal(err)
		}
		conns[i] = nc
	}
	return conns
}

// runClients runs w on every connection at once, as the clients of a busy
// sidecar do, so that the server's goroutines grow their stacks as they
// would there, and returns once every event is acked; with keep the
// connections stay open and idle, otherwise they are closed.
func runClients(tb testing.TB, ts *testServer, conns []net.Conn, w connWork, keep bool) {
	tb.Helper()
	before := ts.bus.Stats()["data"].Published[bus.Accepted]
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(conns))
	for _, nc := range conns {
		wg.Go(func() {
			if err := sendWork(nc, w); err != nil {
				errs <- err
			}
		})
		wg.Go(func() {
			if err := ackAll(nc); err != nil {
				errs <- err
			}
		})
	}
	want := before + uint64(len(conns)*w.events)
	testkit.Eventually(tb, "every event published and acked", func() error {
		st := ts.bus.Stats()["data"]
		if got := st.Published[bus.Accepted]; got != want || st.Size+st.InFlight > 0 {
			return fmt.Errorf("data accepted %d of %d events, holds %d, %d in flight", got, want, st.Size, st.InFlight)
		}
		return nil
	})
	// The consumers share the queue, so each acked whatever it got; with
	// every event acked every reply is in too, and they stop reading.
	for _, nc := range conns {
		nc.SetReadDeadline(time.Unix(1, 0))
		if !keep {
			nc.Close()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

// sendWork writes w's requests: a ping, or a subscription and the
// publishes.
func sendWork(nc net.Conn, w connWork) error {
	var req bytes.Buffer
	if w.events == 0 {
		req.WriteString(`{"op":"ping","id":1}` + "\n")
	} else {
		fmt.Fprintf(&req, `{"op":"subscribe","id":0,"queue":"data","prefetch":%d}`+"\n", w.prefetch)
		payload := `{"symbol":"BTCUSDT","price":64000.5,"pad":"` + strings.Repeat("p", 100) + `"}`
		for i := 1; i <= w.events; i++ {
			fmt.Fprintf(&req, `{"op":"publish","id":%d,"queue":"data","type":"CANDLE_UPDATE","payload":%s}`+"\n", i, payload)
		}
	}
	_, err := nc.Write(req.Bytes())
	return err
}

// ackAll reads the connection's frames and acks every delivery until its
// read deadline is made to pass (or it is closed); it returns an error only
// for a failure before that.
func ackAll(nc net.Conn) error {
	br := bufio.NewReaderSize(nc, 4<<10)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		if !bytes.Contains(line, []byte(`"op":"deliver"`)) {
			continue
		}
		i := bytes.Index(line, []byte(`"seq":`))
		if i < 0 {
			return fmt.Errorf("delivery without a seq: %q", line)
		}
		seq := line[i+len(`"seq":`):]
		seq = seq[:bytes.IndexAny(seq, ",}")]
		if _, err := fmt.Fprintf(nc, `{"op":"ack","queue":"data","seq":%s}`+"\n", seq); err != nil {
			return err
		}
	}
}

// TestConnectionMemory holds ConnectionMemory to what connections cost:
// it fails when a connection comes to hold more than the memory bound
// counts for it.
func TestConnectionMemory(t *testing.T) {
	for _, w := range connWorks {
		t.Run(w.name, func(t *testing.T) {
			goBytes, rssBytes := connMemory(t, w.testConns, w)
			t.Logf("%.1f KiB of Go memory and %.1f KiB of RSS per connection", goBytes/1024, rssBytes/1024)
			if goBytes > ConnectionMemory {
				t.Errorf("a connection holds %.1f KiB of Go memory, more than ConnectionMemory (%d KiB)", goBytes/1024, ConnectionMemory>>10)
			}
		})
	}
}

// BenchmarkConnectionMemory reports the memory per connection (go-B/conn:
// Go memory in use, rss-B/conn: VmRSS) of 500 connections, each doing one
// of connWorks or connBurst and then idle, measured after a GC.
func BenchmarkConnectionMemory(b *testing.B) {
	const n = 500
	for _, w := range append(slices.Clip(connWorks), connBurst) {
		b.Run(w.name, func(b *testing.B) {
			b.ReportAllocs()
			var goSum, rssSum float64
			for b.Loop() {
				goBytes, rssBytes := connMemory(b, n, w)
				goSum += goBytes
				rssSum += rssBytes
			}
			b.ReportMetric(goSum/float64(b.N), "go-B/conn")
			b.ReportMetric(rssSum/float64(b.N), "rss-B/conn")
		})
	}
}

// TestBookkeepingShrinksAfterBurst: a subscription's bookkeeping of
// in-flight deliveries that grew past shrinkMapsAbove is rebuilt small
// once they are acked and the connection is idle, also when every
// delivery went out on its own, written by the pump, and the acks have no
// reply: nothing else then wakes the write loop that shrinks it.
func TestBookkeepingShrinksAfterBurst(t *testing.T) {
	const n = 2 * shrinkMapsAbove
	ts := startServer(t)
	con := dialRaw(t, ts.path)
	con.expectReply(con.roundTrip(`{"op":"subscribe","id":1,"queue":"data","prefetch":%d}`, n), 1, protocol.StatusOK)
	sc := ts.onlyConn(t)
	pub := dialRaw(t, ts.path)
	seqs := make([]uint64, 0, n)
	for i := int64(1); i <= n; i++ {
		pub.expectReply(pub.roundTrip(`{"op":"publish","id":%d,"queue":"data","type":"X","payload":{}}`, i), i, protocol.StatusAccepted)
		m := con.recv()
		if m.Op != protocol.OpDeliver {
			t.Fatalf("got %+v, want a delivery", m)
		}
		seqs = append(seqs, m.Deliver.Seq)
	}
	sc.omu.Lock()
	sub := sc.live[0]
	sc.omu.Unlock()
	peak := func() int {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return sub.costs.peak
	}
	if got := peak(); got != n {
		t.Fatalf("the subscription's bookkeeping peaked at %d deliveries, want %d", got, n)
	}
	for _, seq := range seqs {
		con.send(`{"op":"ack","queue":"data","seq":%d}`, seq)
	}
	testkit.Eventually(t, "the bookkeeping shrunk", func() bool { return peak() == 0 && !sc.bookGrown.Load() })
}
