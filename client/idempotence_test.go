package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// fakeSidecar is a socket that answers pings by itself and hands every
// other request to the test, which scripts the answer: what the client
// sends, and what it makes of replies a real bus gives only in rare
// states (a duplicate after a lost reply, a storage failure).
type fakeSidecar struct {
	path string
	l    net.Listener
	reqs chan fakeRequest
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns []*fakeConn
}

type fakeConn struct {
	n  int // 0 for the first connection accepted
	nc net.Conn
	mu sync.Mutex // serialises writes
}

type fakeRequest struct {
	conn *fakeConn
	req  protocol.Request
}

func (c *fakeConn) write(t testing.TB, frame string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.nc.Write([]byte(frame + "\n")); err != nil {
		t.Errorf("fake sidecar write %q: %v", frame, err)
	}
}

func startFake(t testing.TB) *fakeSidecar {
	t.Helper()
	dir, err := os.MkdirTemp("", "ebf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeSidecar{path: filepath.Join(dir, "fake.sock"), reqs: make(chan fakeRequest, 64)}
	if f.l, err = net.Listen("unix", f.path); err != nil {
		t.Fatal(err)
	}
	f.wg.Go(func() { f.accept(t) })
	t.Cleanup(func() {
		f.l.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.nc.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *fakeSidecar) accept(t testing.TB) {
	for {
		nc, err := f.l.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		c := &fakeConn{n: len(f.conns), nc: nc}
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		f.wg.Go(func() { f.serve(t, c) })
	}
}

func (f *fakeSidecar) serve(t testing.TB, c *fakeConn) {
	br := bufio.NewReader(c.nc)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		r, err := protocol.DecodeRequest(line[:len(line)-1])
		if err != nil {
			t.Errorf("the client sent %q: %v", line, err)
			return
		}
		if r.Op == protocol.OpPing {
			c.write(t, fmt.Sprintf(`{"id":%d,"status":"ok"}`, r.ID))
			continue
		}
		f.reqs <- fakeRequest{conn: c, req: r}
	}
}

// next returns the next request other than a ping.
func (f *fakeSidecar) next(t testing.TB, ctx context.Context) fakeRequest {
	t.Helper()
	select {
	case r := <-f.reqs:
		return r
	case <-ctx.Done():
		t.Fatalf("no request from the client: %v", ctx.Err())
		return fakeRequest{}
	}
}

func TestEveryPublishHasItsOwnMsgID(t *testing.T) {
	f := startFake(t)
	ctx := testCtx(t)
	c1, c2 := dial(t, f.path), dial(t, f.path)
	seen := map[string]bool{}
	prefixes := map[*Client]string{}
	for i, c := range []*Client{c1, c1, c1, c2, c2} {
		done := publishAsync(ctx, c, bus.Event{Type: "ORDER_PLACED"}, "order")
		r := f.next(t, ctx)
		id := r.req.MsgID
		if id == "" || len(id) > protocol.MaxMsgIDBytes || seen[id] {
			t.Fatalf("publish %d sent msg_id %q; want a fresh one of at most %d bytes (seen %v)", i, id, protocol.MaxMsgIDBytes, seen)
		}
		seen[id] = true
		prefix := id[:strings.LastIndex(id, "-")+1]
		if p, ok := prefixes[c]; ok && p != prefix {
			t.Fatalf("one client made msg_ids with prefixes %q and %q", p, prefix)
		}
		prefixes[c] = prefix
		r.conn.write(t, fmt.Sprintf(`{"id":%d,"status":"accepted"}`, r.req.ID))
		if p := <-done; p.out != bus.Accepted || p.err != nil {
			t.Fatalf("publish %d: %v %v", i, p.out, p.err)
		}
	}
	if prefixes[c1] == prefixes[c2] {
		t.Fatalf("two clients share the msg_id prefix %q", prefixes[c1])
	}

	// The caller's own msg_id is sent as it is.
	done := publishAsync(ctx, c1, bus.Event{Type: "ORDER_PLACED", MsgID: "order-2024-0001"}, "order")
	r := f.next(t, ctx)
	if r.req.MsgID != "order-2024-0001" {
		t.Fatalf("sent msg_id %q, want the caller's", r.req.MsgID)
	}
	r.conn.write(t, fmt.Sprintf(`{"id":%d,"status":"accepted","duplicate":true}`, r.req.ID))
	if p := <-done; p.out != bus.Duplicate || p.err != nil {
		t.Fatalf("publish answered duplicate: %v %v, want Duplicate and no error", p.out, p.err)
	}

	// One over the limit is refused before it is sent.
	if out, err := c1.Publish(ctx, bus.Event{Type: "T", MsgID: strings.Repeat("m", protocol.MaxMsgIDBytes+1)}, "order"); out != bus.Failed || !errors.Is(err, bus.ErrInvalidEvent) || !strings.Contains(err.Error(), "257 bytes") {
		t.Fatalf("publish with a 257-byte msg_id: %v %v, want Failed wrapping ErrInvalidEvent naming the length", out, err)
	}
	done = publishAsync(ctx, c1, bus.Event{Type: "T", MsgID: "after"}, "order")
	if r := f.next(t, ctx); r.req.MsgID != "after" {
		t.Fatalf("the next request has msg_id %q: the refused publish was sent", r.req.MsgID)
	} else {
		r.conn.write(t, fmt.Sprintf(`{"id":%d,"status":"accepted"}`, r.req.ID))
	}
	<-done
}

// A publish whose connection is lost before its answer is sent again on
// the next connection with the same msg_id, so the sidecar can tell the
// retry from a new order.
func TestPublishRetriedAfterLostConnectionKeepsItsMsgID(t *testing.T) {
	f := startFake(t)
	ctx := testCtx(t)
	c := dialWith(t, f.path, WithReconnect(fast()))
	done := publishAsync(ctx, c, bus.Event{Type: "ORDER_PLACED"}, "order")
	first := f.next(t, ctx)
	first.conn.nc.Close() // the answer is lost with the connection
	again := f.next(t, ctx)
	if again.conn == first.conn || again.req.Op != protocol.OpPublish {
		t.Fatalf("got %+v on connection %d, want the publish again on a new connection", again.req, again.conn.n)
	}
	if again.req.MsgID != first.req.MsgID || again.req.Type != "ORDER_PLACED" || again.req.Queue != "order" {
		t.Fatalf("retry sent msg_id %q (%s to %s), want the first attempt's %q", again.req.MsgID, again.req.Type, again.req.Queue, first.req.MsgID)
	}
	again.conn.write(t, fmt.Sprintf(`{"id":%d,"status":"accepted","duplicate":true}`, again.req.ID))
	if p := <-done; p.out != bus.Duplicate || p.err != nil {
		t.Fatalf("retried publish: %v %v, want Duplicate (the first attempt got in)", p.out, p.err)
	}
}

// Without WithReconnect a publish lost with its connection fails, naming
// the msg_id it was sent with, so that the caller can retry it safely.
func TestLostPublishNamesItsMsgID(t *testing.T) {
	for _, callerID := range []string{"", "order-2024-0002"} {
		t.Run("msg_id="+callerID, func(t *testing.T) {
			f := startFake(t)
			ctx := testCtx(t)
			c := dial(t, f.path)
			done := publishAsync(ctx, c, bus.Event{Type: "ORDER_PLACED", MsgID: callerID}, "order")
			r := f.next(t, ctx)
			r.conn.nc.Close()
			p := <-done
			var lost *PublishLostError
			if p.out != bus.Failed || !errors.As(p.err, &lost) || !errors.Is(p.err, ErrConnectionLost) {
				t.Fatalf("publish lost with its connection: %v %v, want Failed with a *PublishLostError wrapping ErrConnectionLost", p.out, p.err)
			}
			if lost.MsgID != r.req.MsgID || (callerID != "" && lost.MsgID != callerID) {
				t.Fatalf("error names msg_id %q; the publish was sent with %q (caller's %q)", lost.MsgID, r.req.MsgID, callerID)
			}
			if !strings.Contains(p.err.Error(), fmt.Sprintf("%q", r.req.MsgID)) {
				t.Fatalf("error %q does not name the msg_id %q", p.err, r.req.MsgID)
			}
		})
	}
}

func TestStorageErrorUnwrapsToErrStorage(t *testing.T) {
	f := startFake(t)
	ctx := testCtx(t)
	c := dial(t, f.path)
	done := publishAsync(ctx, c, bus.Event{Type: "ORDER_PLACED"}, "order")
	r := f.next(t, ctx)
	r.conn.write(t, fmt.Sprintf(`{"id":%d,"status":"error","code":"storage_error","error":"publish: storage failure: no space left on device"}`, r.req.ID))
	p := <-done
	if p.out != bus.Failed || !errors.Is(p.err, bus.ErrStorage) || !strings.Contains(p.err.Error(), "no space left") {
		t.Fatalf("publish answered storage_error: %v %v, want Failed wrapping bus.ErrStorage", p.out, p.err)
	}
}

// A handler's error is the nack's reason, and a dead letter's origin
// reaches the handler.
func TestNackReasonAndDeadLetter(t *testing.T) {
	f := startFake(t)
	ctx := testCtx(t)
	c := dial(t, f.path)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	got := make(chan bus.Delivery, 1)
	subErr := make(chan error, 1)
	long := strings.Repeat("é", protocol.MaxNackReasonBytes) // twice the limit in bytes
	go func() {
		subErr <- c.Subscribe(sctx, "order_dead", 1, func(_ context.Context, d bus.Delivery) error {
			got <- d
			return errors.New(long)
		})
	}()
	r := f.next(t, ctx)
	if r.req.Op != protocol.OpSubscribe {
		t.Fatalf("first request %+v, want subscribe", r.req)
	}
	r.conn.write(t, fmt.Sprintf(`{"id":%d,"status":"ok"}`, r.req.ID))
	r.conn.write(t, `{"op":"deliver","queue":"order_dead","seq":3,"type":"ORDER_PLACED","payload":{},"enqueued_at":"2024-05-06T07:08:09.120000000Z","redelivered":false,"redeliveries":0,"dead_letter":{"queue":"order","seq":41,"deliveries":5,"reason":"halted"}}`)
	d := <-got
	if dl := d.DeadLetter; dl == nil || *dl != (bus.DeadLetter{Queue: "order", Seq: 41, Deliveries: 5, Reason: "halted"}) {
		t.Fatalf("delivery's dead letter = %+v, want order seq 41 after 5 deliveries, reason halted", d.DeadLetter)
	}
	nack := f.next(t, ctx)
	if nack.req.Op != protocol.OpNack || nack.req.Seq != 3 {
		t.Fatalf("after the handler failed the client sent %+v, want nack of seq 3", nack.req)
	}
	if want := protocol.ClipNackReason(long); nack.req.Reason != want || len(want) != protocol.MaxNackReasonBytes {
		t.Fatalf("nack reason is %d bytes, want the handler's error cut to %d", len(nack.req.Reason), protocol.MaxNackReasonBytes)
	}
	stop()
	unsub := f.next(t, ctx)
	if unsub.req.Op != protocol.OpUnsubscribe {
		t.Fatalf("after ctx ended the client sent %+v, want unsubscribe", unsub.req)
	}
	unsub.conn.write(t, fmt.Sprintf(`{"id":%d,"status":"ok"}`, unsub.req.ID))
	if err := <-subErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v", err)
	}
}
