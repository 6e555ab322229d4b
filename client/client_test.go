package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

func TestPublishOutcomesMatchTheBus(t *testing.T) {
	sc := startSidecar(t, "", smallQueues())
	c := dial(t, sc.path)
	ctx := testCtx(t)
	ev := bus.Event{Type: "T", Payload: json.RawMessage(`{"x":1}`)}
	for range 4 {
		if out, err := c.Publish(ctx, ev, "data"); out != bus.Accepted || err != nil {
			t.Fatalf("fill data: %v %v", out, err)
		}
	}
	for range 2 {
		if out, err := c.Publish(ctx, ev, "signal"); out != bus.Accepted || err != nil {
			t.Fatalf("fill signal: %v %v", out, err)
		}
	}
	tests := []struct {
		name    string
		ev      bus.Event
		queue   string
		outcome bus.Outcome
		is      error
		substr  string
	}{
		{"data drops when full", ev, "data", bus.Dropped, nil, ""},
		{"signal times out when full", ev, "signal", bus.TimedOut, bus.ErrTimeout, ""},
		{"unknown queue", ev, "risk", bus.Failed, bus.ErrUnknownQueue, `unknown queue "risk"; valid queues: data, signal, order`},
		{"empty type", bus.Event{Payload: json.RawMessage(`1`)}, "order", bus.Failed, bus.ErrInvalidEvent, "type"},
		{"routed by type", bus.Event{Type: "ORDER_PLACED"}, "", bus.Accepted, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := c.Publish(ctx, tt.ev, tt.queue)
			if out != tt.outcome {
				t.Fatalf("outcome %v (err %v), want %v", out, err, tt.outcome)
			}
			if tt.is == nil && err != nil || tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("error %v, want errors.Is %v", err, tt.is)
			}
			if tt.substr != "" && !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("error %q does not contain %q", err, tt.substr)
			}
		})
	}
	if n := sc.bus.Stats()["order"].Size; n != 1 {
		t.Fatalf("order size %d, want the routed ORDER_PLACED event", n)
	}
}

func TestConcurrentPublishersOnOneClient(t *testing.T) {
	sc := startSidecar(t, "", []bus.QueueConfig{{Name: "data", Capacity: 10000, Policy: bus.PolicyBlock}})
	c := dial(t, sc.path)
	ctx := testCtx(t)
	const workers, each = 8, 250
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ev := bus.Event{Type: "T", Payload: json.RawMessage(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))}
				if out, err := c.Publish(ctx, ev, "data"); out != bus.Accepted || err != nil {
					errs <- fmt.Errorf("worker %d publish %d: %v %v", w, i, out, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every event arrives once, and each worker's events keep their order.
	cons := dial(t, sc.path)
	sctx, stop := context.WithCancel(ctx)
	next := make([]int, workers)
	got := 0
	err := cons.Subscribe(sctx, "data", 64, func(_ context.Context, d bus.Delivery) error {
		var p struct{ W, I int }
		if err := json.Unmarshal(d.Event.Payload, &p); err != nil {
			t.Errorf("payload %s: %v", d.Event.Payload, err)
		}
		if p.I != next[p.W] {
			t.Errorf("worker %d: got event %d, want %d", p.W, p.I, next[p.W])
		}
		next[p.W]++
		if got++; got == workers*each {
			stop()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v", err)
	}
	testkit.Eventually(t, "all acked", func() bool { return sc.bus.Stats()["data"].Acked == workers*each })
}

func TestCancelledPublishIsWithdrawn(t *testing.T) {
	sc := startSidecar(t, "", smallQueues())
	c := dial(t, sc.path)
	ctx := testCtx(t)
	if out, err := c.Publish(ctx, bus.Event{Type: "O"}, "order"); out != bus.Accepted {
		t.Fatal(out, err)
	}
	pctx, cancel := context.WithCancel(ctx)
	type res struct {
		out bus.Outcome
		err error
	}
	done := make(chan res, 1)
	go func() {
		out, err := c.Publish(pctx, bus.Event{Type: "O"}, "order")
		done <- res{out, err}
	}()
	testkit.Eventually(t, "publish waiting", func() bool { return sc.bus.Stats()["order"].Waiting == 1 })
	cancel()
	r := <-done
	if r.out != bus.Cancelled || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("got %v %v, want Cancelled wrapping context.Canceled", r.out, r.err)
	}
	st := sc.bus.Stats()["order"]
	if st.Size != 1 || st.Waiting != 0 {
		t.Fatalf("order size %d waiting %d: the cancelled event got in", st.Size, st.Waiting)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("client unusable after a cancelled publish: %v", err)
	}
}

func TestSubscribeAckNackAndTraceContext(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	sc := startSidecar(t, "", nil, bus.WithTracerProvider(tp))
	c := dial(t, sc.path)
	ctx := testCtx(t)
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6}, TraceFlags: trace.FlagsSampled})
	pctx := trace.ContextWithSpanContext(ctx, parent)
	if out, err := c.Publish(pctx, bus.Event{Type: "ORDER_PLACED", Payload: json.RawMessage(`{"qty":1}`)}, "order"); out != bus.Accepted {
		t.Fatal(out, err)
	}
	sctx, stop := context.WithCancel(ctx)
	var seen []bus.Delivery
	err := c.Subscribe(sctx, "order", 4, func(hctx context.Context, d bus.Delivery) error {
		seen = append(seen, d)
		if hsc := trace.SpanContextFromContext(hctx); hsc.TraceID() != parent.TraceID() {
			t.Errorf("handler trace id %s, want the publisher's %s", hsc.TraceID(), parent.TraceID())
		}
		if len(seen) == 1 {
			return errors.New("try again") // nack
		}
		stop()
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe: %v", err)
	}
	if len(seen) != 2 || seen[0].Seq != seen[1].Seq || seen[0].Redeliveries != 0 || seen[1].Redeliveries != 1 {
		t.Fatalf("deliveries %+v, want one event delivered, nacked, redelivered", seen)
	}
	if string(seen[1].Event.Payload) != `{"qty":1}` || seen[1].Event.Type != "ORDER_PLACED" || seen[1].Queue != "order" {
		t.Fatalf("delivery %+v", seen[1])
	}
	if seen[1].SpanContext.TraceID() != parent.TraceID() || seen[1].SpanContext.SpanID() == parent.SpanID() {
		t.Fatalf("delivery span context %v, want the deliver span in the publisher's trace", seen[1].SpanContext)
	}
	testkit.Eventually(t, "acked", func() bool { return sc.bus.Stats()["order"].Acked == 1 })
}

func TestConsumerDyingMidBatchGetsEventsRedelivered(t *testing.T) {
	sc := startSidecar(t, "", nil)
	pub := dial(t, sc.path)
	ctx := testCtx(t)
	const n = 5
	for i := range n {
		if out, err := pub.Publish(ctx, bus.Event{Type: "S", Payload: json.RawMessage(fmt.Sprint(i))}, "signal"); out != bus.Accepted {
			t.Fatal(out, err)
		}
	}
	dying, err := Dial(ctx, sc.path)
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{})
	subErr := make(chan error, 1)
	go func() {
		var once sync.Once
		subErr <- dying.Subscribe(ctx, "signal", n, func(hctx context.Context, _ bus.Delivery) error {
			once.Do(func() { close(handled) })
			<-hctx.Done() // stuck in the middle of the batch until the connection goes
			return hctx.Err()
		})
	}()
	<-handled
	testkit.Eventually(t, "whole batch in flight", func() bool { return sc.bus.Stats()["signal"].InFlight == n })
	dying.Close()
	if err := <-subErr; !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe on a closed client returned %v, want ErrClosed", err)
	}
	survivor := dial(t, sc.path)
	sctx, stop := context.WithCancel(ctx)
	var got []string
	err = survivor.Subscribe(sctx, "signal", n, func(_ context.Context, d bus.Delivery) error {
		if d.Redeliveries < 1 {
			t.Errorf("event %s not marked redelivered", d.Event.Payload)
		}
		if got = append(got, string(d.Event.Payload)); len(got) == n {
			stop()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "0,1,2,3,4" {
		t.Fatalf("redelivered %v, want 0..4 in order", got)
	}
}

func TestServerRestart(t *testing.T) {
	sc := startSidecar(t, "", nil)
	c := dial(t, sc.path)
	ctx := testCtx(t)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	sc.stop(t)
	_, err := c.Publish(ctx, bus.Event{Type: "T"}, "data")
	if !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("publish after the sidecar stopped: %v, want ErrConnectionLost", err)
	}
	if _, err := Dial(ctx, sc.path); err == nil || !strings.Contains(err.Error(), sc.path) {
		t.Fatalf("dial with no sidecar: %v, want an error naming the socket", err)
	}
	again := startSidecar(t, sc.path, nil)
	c2 := dial(t, again.path)
	if out, err := c2.Publish(ctx, bus.Event{Type: "T"}, "data"); out != bus.Accepted || err != nil {
		t.Fatalf("publish after redial: %v %v", out, err)
	}
}

func TestStatsPingAndClose(t *testing.T) {
	sc := startSidecar(t, "", nil)
	c := dial(t, sc.path)
	ctx := testCtx(t)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	c.Publish(ctx, bus.Event{Type: "T"}, "data") //nolint:errcheck
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st["data"].Size != 1 || st["data"].MaxSize != 1000 || st["signal"].MaxSize != 100 || st["order"].MaxSize != 50 {
		t.Fatalf("stats %+v", st)
	}
	// A publish waiting on a full queue fails with ErrClosed when the
	// client closes.
	small := startSidecar(t, "", smallQueues())
	c2 := dial(t, small.path)
	c2.Publish(ctx, bus.Event{Type: "O"}, "order") //nolint:errcheck
	errc := make(chan error, 1)
	go func() {
		_, err := c2.Publish(ctx, bus.Event{Type: "O"}, "order")
		errc <- err
	}()
	testkit.Eventually(t, "publish waiting", func() bool { return small.bus.Stats()["order"].Waiting == 1 })
	c2.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting publish after Close: %v, want ErrClosed", err)
	}
	if err := c2.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("ping after Close: %v", err)
	}
	testkit.Eventually(t, "withdrawn on close", func() bool { return small.bus.Stats()["order"].Waiting == 0 })
	if err := c.Subscribe(ctx, "nope", 1, nil); !errors.Is(err, bus.ErrUnknownQueue) {
		t.Fatalf("subscribe to unknown queue: %v", err)
	}
}

func TestPublishDuringDrainIsShuttingDown(t *testing.T) {
	sc := startSidecar(t, "", nil)
	c := dial(t, sc.path)
	ctx := testCtx(t)
	if out, err := c.Publish(ctx, bus.Event{Type: "O"}, "order"); out != bus.Accepted {
		t.Fatal(out, err)
	}
	drained := make(chan error, 1)
	go func() {
		_, err := sc.bus.Shutdown(ctx)
		drained <- err
	}()
	testkit.Eventually(t, "bus refusing publishes", func() bool {
		out, err := c.Publish(ctx, bus.Event{Type: "O"}, "order")
		if out == bus.Accepted {
			return false // the drain had not begun yet
		}
		if out != bus.Failed || !errors.Is(err, bus.ErrShuttingDown) || err.Error() != "shutting down" {
			t.Fatalf("publish while draining: %v %v, want Failed wrapping bus.ErrShuttingDown", out, err)
		}
		return true
	})
	// The consumer still drains the queue.
	sctx, stop := context.WithCancel(ctx)
	err := c.Subscribe(sctx, "order", 1, func(context.Context, bus.Delivery) error {
		if sc.bus.Stats()["order"].Size == 0 {
			stop()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
}
