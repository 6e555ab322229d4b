package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// sampleBuffered records the most the server accounted, sampled until the
// returned stop is called; stop returns the maximum.
func sampleBuffered(srv *Server) (stop func() int64) {
	var peak atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			if v := srv.Buffered(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			default:
				// The sampling interval, not a wait for a condition:
				// the peak is read over the whole run.
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	return func() int64 {
		close(done)
		<-finished
		return peak.Load()
	}
}

// queuedBytes is what the budget counts for accepted events of queue.
func (ts *testServer) queuedBytes(queue string) int64 {
	return ts.srv.budget.queued[queue].bytes.Load()
}

// TestBudgetHoldsUnderFloodAndTrickle: connections that publish without
// reading their replies and connections that trickle one unfinished frame
// cannot make the server hold more than its budget; a well-behaved client
// keeps getting replies meanwhile; and once the bad clients are gone (and
// their accepted events consumed) the server holds nothing.
func TestBudgetHoldsUnderFloodAndTrickle(t *testing.T) {
	const (
		frameLimit = 32 << 10
		budgetSize = 1 << 20
		flooders   = 40
		tricklers  = 40
		payload    = 6 << 10
	)
	ts, reader := meteredServer(t,
		withQueues(
			bus.QueueConfig{Name: "data", Capacity: 64, Policy: bus.PolicyDrop, Timeout: 100 * time.Millisecond},
			bus.QueueConfig{Name: "order", Capacity: 4, Policy: bus.PolicyBlock},
		),
		withConfig(func(c *Config) {
			c.MaxFrameBytes = frameLimit
			c.MaxBufferedBytes = budgetSize
			c.BudgetTimeout = 500 * time.Millisecond
			c.FrameTimeout = 2 * time.Second
			c.WriteTimeout = time.Second
		}))
	stop := sampleBuffered(ts.srv)

	var wg sync.WaitGroup
	quit := make(chan struct{})
	var bad []net.Conn
	dial := func() net.Conn {
		nc, err := net.Dial("unix", ts.path)
		if err != nil {
			t.Fatal(err)
		}
		bad = append(bad, nc)
		return nc
	}
	frame := []byte(fmt.Sprintf(`{"op":"publish","id":1,"type":"CANDLE_UPDATE","payload":"%s"}`+"\n", strings.Repeat("x", payload)))
	for range flooders {
		nc := dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Publishes until the server stops reading (the write blocks)
			// or cuts the client off; never reads a reply.
			for i := 0; i < 2000; i++ {
				nc.SetWriteDeadline(time.Now().Add(testTimeout))
				if _, err := nc.Write(frame); err != nil {
					return
				}
				select {
				case <-quit:
					return
				default:
				}
			}
		}()
	}
	head := []byte(`{"op":"publish","id":2,"type":"CANDLE_UPDATE","payload":"` + strings.Repeat("y", frameLimit-200))
	for range tricklers {
		nc := dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc.SetWriteDeadline(time.Now().Add(testTimeout))
			if _, err := nc.Write(head); err != nil {
				return
			}
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for range 500 {
				select {
				case <-quit:
					return
				case <-tick.C:
				}
				if _, err := nc.Write([]byte("y")); err != nil {
					return
				}
			}
		}()
	}

	// The well-behaved client: every request answered, while the others
	// press on the budget.
	good := dialRaw(t, ts.path)
	testkit.Eventually(t, "the budget under pressure", func() bool { return ts.srv.Buffered() > budgetSize/2 })
	for i := int64(1); i <= 50; i++ {
		good.expectReply(good.roundTrip(`{"op":"ping","id":%d}`, i), i, protocol.StatusOK)
	}
	good.expectReply(good.roundTrip(`{"op":"publish","id":100,"queue":"order","type":"ORDER_PLACED","payload":{"qty":1}}`), 100, protocol.StatusAccepted)

	close(quit)
	for _, nc := range bad {
		nc.Close()
	}
	wg.Wait()
	testkit.Eventually(t, "the bad clients gone", func() bool { return ts.srv.Connections() == 1 })

	// Consume what the flood left queued, so that the budget can empty.
	good.send(`{"op":"subscribe","id":200,"queue":"data","prefetch":1000}`)
	good.send(`{"op":"subscribe","id":201,"queue":"order","prefetch":1000}`)
	// Acks carry ids: their replies come after the ack's bytes left the
	// budget, so the loop ends once the last one is read.
	for subscribed := 0; subscribed < 2 || ts.queuedBytes("data")+ts.queuedBytes("order") > 0; {
		m := good.recv()
		switch {
		case m.Op == protocol.OpDeliver:
			good.send(`{"op":"ack","id":1,"queue":"%s","seq":%d}`, m.Deliver.Queue, m.Deliver.Seq)
		case m.HasID && m.ID == 1 && m.Status == protocol.StatusOK:
		case m.HasID && m.Status == protocol.StatusOK:
			subscribed++
		default:
			t.Fatalf("got status %s code %s id %d, want a delivery or a subscription", m.Status, m.Code, m.ID)
		}
	}
	good.nc.Close()
	testkit.Eventually(t, "every connection closed", ts.gone)
	testkit.Eventually(t, "every byte released", func() bool { return ts.srv.Buffered() == 0 })

	if peak := stop(); peak > budgetSize {
		t.Errorf("the server accounted %d bytes at its peak; the budget is %d", peak, budgetSize)
	}
	closed := closedByReason(t, reader)
	if closed[CloseOverBudget]+closed[CloseSlowConsumer]+closed[CloseFrameTimeout]+closed[CloseClientGone] < flooders+tricklers {
		t.Errorf("closed by reason %v; want every bad client counted", closed)
	}
}

// TestWaitingPublishesBoundedPerConnection: a connection that pipelines
// 1,500 large publishes into a full block queue is stopped at its byte
// share of waiting publishes: the client is held back, the server does
// not take its frames.
func TestWaitingPublishesBoundedPerConnection(t *testing.T) {
	const (
		frameLimit = 300 << 10
		budgetSize = 16 << 20
		payload    = 256 << 10
		publishes  = 1500
	)
	ts := startServer(t,
		withQueues(bus.QueueConfig{Name: "order", Capacity: 2, Policy: bus.PolicyBlock}),
		withConfig(func(c *Config) {
			c.DefaultQueue = "order"
			c.MaxFrameBytes = frameLimit
			c.MaxBufferedBytes = budgetSize
		}))
	stop := sampleBuffered(ts.srv)
	fill := dialRaw(t, ts.path)
	for i := int64(1); i <= 2; i++ {
		fill.expectReply(fill.roundTrip(`{"op":"publish","id":%d,"type":"ORDER_PLACED"}`, i), i, protocol.StatusAccepted)
	}
	queued := ts.queuedBytes("order")

	nc, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	sent := make(chan int, 1)
	go func() {
		defer wg.Done()
		frame := []byte(fmt.Sprintf(`{"op":"publish","id":7,"type":"ORDER_PLACED","payload":"%s"}`+"\n", strings.Repeat("z", payload)))
		n := 0
		defer func() { sent <- n }()
		for range publishes {
			nc.SetWriteDeadline(time.Now().Add(testTimeout))
			if _, err := nc.Write(frame); err != nil {
				return
			}
			n++
		}
	}()
	var sc *conn
	testkit.Eventually(t, "the publisher's connection", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		for c := range ts.srv.conns {
			if c.waits.len() > 0 {
				sc = c
			}
		}
		return sc != nil
	})
	share := ts.srv.waitShare.Load()
	testkit.Eventually(t, "the reader held at its byte share", func() bool {
		sc.waits.mu.Lock()
		defer sc.waits.mu.Unlock()
		return sc.waits.sleeping && sc.waits.bytes >= share
	})
	sc.waits.mu.Lock()
	waiting, waitingBytes := sc.waits.n, sc.waits.bytes
	sc.waits.mu.Unlock()
	cost := eventCost(payload+2, "ORDER_PLACED", "")
	if waitingBytes > share+cost {
		t.Errorf("%d bytes of publishes wait; the share is %d", waitingBytes, share)
	}
	if waiting >= publishes/10 {
		t.Errorf("%d publishes wait; the byte share should stop the reader long before", waiting)
	}
	if held := ts.srv.budget.connHeld(sc); held > share+cost+2*frameLimit+DefaultMaxOutputBytes {
		t.Errorf("the connection holds %d bytes; share %d", held, share)
	}

	// Going away withdraws every waiting publish and releases its bytes;
	// the queue keeps only the events that got in.
	nc.Close()
	wg.Wait()
	if n := <-sent; n >= publishes {
		t.Errorf("the client wrote all %d publishes; it should have been held back", n)
	}
	testkit.Eventually(t, "the publisher's bytes released", func() bool {
		return ts.srv.Connections() == 1 && ts.srv.Buffered() == queued+ts.srv.budget.connHeld(fill.conn(t, ts))
	})
	if peak := stop(); peak > budgetSize {
		t.Errorf("the server accounted %d bytes at its peak; the budget is %d", peak, budgetSize)
	}
}

// conn returns the server side of this client, the only one left.
func (c *rawClient) conn(t *testing.T, ts *testServer) *conn {
	t.Helper()
	return ts.onlyConn(t)
}

// TestFrameTimeout: a frame not completed in time gets one frame_timeout
// error and its connection is closed; a connection idle between frames
// for longer is fine.
func TestFrameTimeout(t *testing.T) {
	ts, reader := meteredServer(t, withConfig(func(c *Config) { c.FrameTimeout = 200 * time.Millisecond }))
	idle := dialRaw(t, ts.path)
	idle.expectReply(idle.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)

	slow := dialRaw(t, ts.path)
	slow.send(`{"op":"ping","id":2}`)
	slow.expectReply(slow.recv(), 2, protocol.StatusOK)
	if _, err := slow.nc.Write([]byte(`{"op":"pi`)); err != nil {
		t.Fatal(err)
	}
	m := slow.recv()
	if m.HasID || m.Status != protocol.StatusError || m.Code != protocol.CodeFrameTimeout || !strings.Contains(m.Error, "200ms") {
		t.Fatalf("got %+v, want a frame_timeout error without id naming the timeout", m)
	}
	slow.expectEOF()
	testkit.Eventually(t, "the close counted", func() bool { return closedByReason(t, reader)[CloseFrameTimeout] == 1 })

	// idle has been quiet for longer than the frame timeout.
	idle.expectReply(idle.roundTrip(`{"op":"ping","id":3}`), 3, protocol.StatusOK)
}

// TestReadBufferShrinksAfterLongFrame: one long frame grows a connection's
// read buffer; it is given back once the frame is handled.
func TestReadBufferShrinksAfterLongFrame(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	c.expectReply(c.roundTrip(`{"op":"ping","id":1}`), 1, protocol.StatusOK)
	sc := ts.onlyConn(t)
	// Once its replies are written, an idle connection holds its small
	// read buffer and nothing else (a reply's bytes are released by the
	// write loop, maybe after the client has read them).
	idle := func() error {
		if h := ts.srv.budget.connHeld(sc); h != minReadBuffer {
			return fmt.Errorf("held %d, want the small read buffer's %d", h, minReadBuffer)
		}
		return nil
	}
	testkit.Eventually(t, "an idle connection holding its small read buffer", idle)
	c.expectReply(c.roundTrip(`{"op":"publish","id":2,"type":"X","payload":"%s"}`, strings.Repeat("b", 500<<10)), 2, protocol.StatusAccepted)
	c.expectReply(c.roundTrip(`{"op":"ping","id":3}`), 3, protocol.StatusOK)
	testkit.Eventually(t, "the read buffer back to its small size", idle)
}

func TestBudgetReserveWaitsAndCutsOffHeavy(t *testing.T) {
	var open atomic.Int64
	open.Store(2) // the fair share is half
	b := newBudget(1<<20, []string{"q"}, &open)
	light, heavy := &conn{}, &conn{}
	if err := b.reserve(context.Background(), heavy, b.room(), 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	// Heavy connections stop short of the headroom; light ones may use it.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.reserve(ctx, heavy, 1, 0, 0, nil); err == nil {
		t.Fatal("a heavy connection reserved past its limit")
	}
	if err := b.reserve(context.Background(), light, 1024, 0, 0, nil); err != nil {
		t.Fatalf("a light connection could not use the headroom: %v", err)
	}
	// A heavy connection waiting past its deadline is cut off.
	if err := b.reserve(context.Background(), heavy, 1, 0, time.Millisecond, nil); err != errOverBudget {
		t.Fatalf("reserve = %v, want errOverBudget", err)
	}
	// A release wakes a waiter.
	got := make(chan error, 1)
	go func() { got <- b.reserve(context.Background(), heavy, 4096, 0, 0, nil) }()
	testkit.Eventually(t, "the waiter parked", func() bool {
		return b.waiters.Load() == 1
	})
	b.charge(heavy, -8192, 0)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// Publish payloads stop at their share.
	if err := b.reserve(ctx, light, 1, b.shares.Load().pubLimit+1, 0, nil); err == nil {
		t.Fatal("a publish reserved past the publish share")
	}
}

func TestBudgetQueuedBytesReconcile(t *testing.T) {
	b := newBudget(1<<20, []string{"q"}, nil)
	c := &conn{}
	for range 4 {
		b.charge(c, 1000, 1000)
		b.accepted(c, "q", 1000)
	}
	if c.held.Load() != 0 || b.Held() != 4000 {
		t.Fatalf("after 4 accepted: conn %d, total %d; want 0 and 4000", c.held.Load(), b.Held())
	}
	b.acked("q", 1000)
	// Two left the bus unseen (evicted): the count follows the bus.
	b.reconcile(map[string]int64{"q": 1})
	if got := b.Held(); got != 1000 {
		t.Fatalf("after reconcile: %d, want 1000", got)
	}
	b.acked("q", 1000)
	b.acked("q", 1000) // nothing left to ack: no underflow
	if got := b.Held(); got != 0 || b.pub.Load() != 0 {
		t.Fatalf("after the last ack: held %d pub %d, want 0", got, b.pub.Load())
	}
}

// outputCaps returns the capacities of c's output buffers and the length
// of the one being written, if any: that one is in neither while its
// write blocks.
func (c *conn) outputCaps() (obuf, spare, writing int) {
	c.omu.Lock()
	defer c.omu.Unlock()
	return cap(c.obuf), cap(c.spare), c.writing
}

// TestOutputBuffersShrinkAfterBurst: the output buffers grown while a
// consumer did not read are dropped once its output has been idle.
func TestOutputBuffersShrinkAfterBurst(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts.path)
	big := strings.Repeat("p", 100<<10)
	for i := int64(1); i <= 8; i++ {
		c.expectReply(c.roundTrip(`{"op":"publish","id":%d,"queue":"data","type":"X","payload":"%s"}`, i, big), i, protocol.StatusAccepted)
	}
	sc := ts.onlyConn(t)
	// Deliveries pile up while the client does not read them.
	c.send(`{"op":"subscribe","id":100,"queue":"data","prefetch":8}`)
	testkit.Eventually(t, "the output buffer grown", func() bool {
		o, s, w := sc.outputCaps()
		return o > shrinkOutputBuffer || s > shrinkOutputBuffer || w > shrinkOutputBuffer
	})
	c.expectReply(c.recv(), 100, protocol.StatusOK)
	// Ack replies may come between the deliveries still on their way.
	for delivered, acked := 0, 0; delivered < 8 || acked < 8; {
		m := c.recv()
		if m.Op == protocol.OpDeliver {
			delivered++
			c.send(`{"op":"ack","id":1,"queue":"data","seq":%d}`, m.Deliver.Seq)
			continue
		}
		c.expectReply(m, 1, protocol.StatusOK)
		acked++
	}
	testkit.Eventually(t, "the output buffers dropped", func() bool {
		o, s, w := sc.outputCaps()
		return o <= shrinkOutputBuffer && s <= shrinkOutputBuffer && w == 0
	})
	testkit.Eventually(t, "only the read buffer held", func() bool { return ts.srv.budget.connHeld(sc) == minReadBuffer })
}

// TestBudgetConcurrentReservesStayWithinLimit: connections that reserve,
// queue, ack and release at once ask together for more than a small budget
// has, yet never make it count past its limits; every parked reservation
// is woken by the releases, and the budget is empty at the end.
func TestBudgetConcurrentReservesStayWithinLimit(t *testing.T) {
	// A connection holds one reservation at a time and none while it
	// waits, so that the waits always end; conns*maxN is well over the
	// limit that applies, so that they happen.
	for _, tt := range []struct {
		name  string
		conns int
		maxN  int64
		pub   bool // the reservations are publish payloads, queued and acked
	}{
		{"light frames", 48, 2000, false},
		{"heavy frames", 12, 8000, false},
		{"publishes", 32, 2000, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var open atomic.Int64
			open.Store(int64(tt.conns))
			b := newBudget(64<<10, []string{"q"}, &open)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			t.Cleanup(cancel)
			var wg sync.WaitGroup
			for i := range tt.conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := &conn{}
					for j := range 1000 {
						n := tt.maxN - int64(i*131+j*37)%256
						pub := int64(0)
						if tt.pub {
							pub = n
						}
						if err := b.reserve(ctx, c, n, pub, 0, nil); err != nil {
							t.Errorf("reserve %d: %v", n, err)
							return
						}
						if h := b.Held(); h > b.shares.Load().limit-b.shares.Load().slack {
							t.Errorf("held %d past the limit %d", h, b.shares.Load().limit-b.shares.Load().slack)
						}
						if p := b.pub.Load(); p > b.shares.Load().pubLimit {
							t.Errorf("publish payloads %d past their limit %d", p, b.shares.Load().pubLimit)
						}
						if tt.pub {
							b.accepted(c, "q", n)
						}
						// Let the others in while this one holds its
						// reservation, so that they overlap.
						runtime.Gosched()
						if tt.pub {
							b.acked("q", n)
						} else {
							b.charge(c, -n, 0)
						}
					}
				}()
			}
			wg.Wait()
			if h, p := b.Held(), b.pub.Load(); h != 0 || p != 0 {
				t.Errorf("after every release: held %d, publish payloads %d; want 0", h, p)
			}
			if w := b.waiters.Load(); w != 0 {
				t.Errorf("%d reservations still counted as waiting", w)
			}
		})
	}
}

// TestBudgetSetLimit: growing the budget resumes a waiting connection;
// shrinking it under what is held holds every connection back but cuts
// none off until the holdings are under the smaller budget, from when the
// usual deadline runs again.
func TestBudgetSetLimit(t *testing.T) {
	const limit = 1 << 20
	result := func(t *testing.T, got <-chan error) error {
		t.Helper()
		select {
		case err := <-got:
			return err
		case <-time.After(testTimeout):
			t.Fatalf("reserve still waiting after %v", testTimeout)
			return nil
		}
	}
	parked := func(b *budget) func() bool {
		return func() bool { return b.waiters.Load() == 1 }
	}
	tests := []struct {
		name string
		run  func(t *testing.T, b *budget, holder, waiter *conn)
	}{
		{
			name: "growing resumes a waiter",
			run: func(t *testing.T, b *budget, holder, waiter *conn) {
				b.charge(holder, b.room(), 0)
				got := make(chan error, 1)
				go func() { got <- b.reserve(context.Background(), waiter, 64<<10, 0, time.Hour, nil) }()
				testkit.Eventually(t, "the waiter parked", parked(b))
				b.setLimit(2 * limit)
				if err := result(t, got); err != nil {
					t.Fatalf("reserve after growing = %v, want nil", err)
				}
			},
		},
		{
			name: "shrinking holds back without cutting off",
			run: func(t *testing.T, b *budget, holder, waiter *conn) {
				// Both were fine under the old budget: within their share.
				b.charge(holder, limit/4, 0)
				b.charge(waiter, limit/8, 0)
				b.setLimit(limit / 4)
				// Even a light connection waits now.
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				if err := b.reserve(ctx, &conn{}, 1, 0, 0, nil); err == nil {
					t.Fatal("a connection reserved while more is held than the shrunk budget")
				}
				// The waiter holds more than its share of the smaller
				// budget, and its deadline passes, twice: it waits on.
				got := make(chan error, 1)
				go func() { got <- b.reserve(context.Background(), waiter, 1, 0, time.Millisecond, nil) }()
				testkit.Eventually(t, "the cut-off deadline passed twice", func() bool {
					b.mu.Lock()
					defer b.mu.Unlock()
					return b.graced >= 2
				})
				select {
				case err := <-got:
					t.Fatalf("reserve = %v while shrunk, want it to wait", err)
				default:
				}
				b.charge(holder, -limit/4, 0)
				if err := result(t, got); err != nil {
					t.Fatalf("reserve once under the shrunk budget = %v, want nil", err)
				}
			},
		},
		{
			name: "under the shrunk budget the deadline runs again",
			run: func(t *testing.T, b *budget, holder, waiter *conn) {
				b.charge(waiter, limit/4, 0)
				b.setLimit(limit / 4)
				b.charge(waiter, -limit/8, 0)
				// Filled up again after the shrink, by the waiter: it is cut
				// off once its deadline has passed.
				b.charge(holder, b.room()-b.Held(), 0)
				if err := b.reserve(context.Background(), waiter, 1, 0, time.Millisecond, nil); !errors.Is(err, errOverBudget) {
					t.Fatalf("reserve = %v, want errOverBudget", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var open atomic.Int64
			open.Store(2)
			b := newBudget(limit, []string{"q"}, &open)
			tt.run(t, b, &conn{}, &conn{})
		})
	}
}

func TestSetMaxBufferedBytes(t *testing.T) {
	ts, reader := meteredServer(t, withConfig(func(c *Config) {
		c.MaxFrameBytes = 64 << 10
		c.MaxBufferedBytes = 1 << 20
	}))
	budgetGauge := func() int64 {
		t.Helper()
		v, _ := metricValue(t, reader, "eventbus.buffered.budget")
		return v
	}
	tests := []struct {
		name    string
		set     int64
		wantErr bool
		want    int64 // the budget in force after
	}{
		{name: "below 8 frames", set: 8<<16 - 1, wantErr: true, want: 1 << 20},
		{name: "grown", set: 4 << 20, want: 4 << 20},
		{name: "shrunk to 8 frames", set: 8 << 16, want: 8 << 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ts.srv.SetMaxBufferedBytes(tt.set)
			if tt.wantErr != errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("SetMaxBufferedBytes(%d) = %v, want an ErrInvalidConfig: %v", tt.set, err, tt.wantErr)
			}
			if got := ts.srv.MaxBufferedBytes(); got != tt.want {
				t.Errorf("MaxBufferedBytes() = %d, want %d", got, tt.want)
			}
			if got := budgetGauge(); got != tt.want {
				t.Errorf("eventbus.buffered.budget = %d, want %d", got, tt.want)
			}
			if got, want := ts.srv.waitShare.Load(), max(tt.want/connWaitDiv, 2*64<<10); got != want {
				t.Errorf("a connection's share for waiting publishes is %d, want %d", got, want)
			}
			c := dialRaw(t, ts.path)
			c.expectReply(c.roundTrip(`{"op":"publish","id":1,"queue":"data","type":"T","payload":1}`), 1, protocol.StatusAccepted)
		})
	}
}
