package bus_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"go.opentelemetry.io/otel/trace"
)

// asyncResult records the done calls of one PublishAsync.
type asyncResult struct {
	mu    sync.Mutex
	calls int
	out   bus.Outcome
	err   error
	at    time.Time // the fake clock's time when done ran
}

func (r *asyncResult) get() (calls int, out bus.Outcome, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, r.out, r.err
}

// startAsync calls PublishAsync and records what its done callback gets.
func startAsync(ctx context.Context, b *bus.Bus, clk *testkit.Clock, ev bus.Event, queue string) (*bus.Pending, *asyncResult) {
	r := &asyncResult{}
	p := b.PublishAsync(ctx, ev, queue, func(out bus.Outcome, err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.calls++
		r.out, r.err, r.at = out, err, clk.Now()
	})
	return p, r
}

// wantDone checks that done ran exactly once with outcome want.
func wantDone(t *testing.T, what string, r *asyncResult, want bus.Outcome) {
	t.Helper()
	calls, out, err := r.get()
	if calls != 1 || out != want {
		t.Fatalf("%s: done called %d times, last with %v, %v; want once with %v", what, calls, out, err, want)
	}
}

// wantPending checks that done has not run yet.
func wantPending(t *testing.T, what string, p *bus.Pending, r *asyncResult) {
	t.Helper()
	if calls, out, err := r.get(); calls != 0 || p == nil {
		t.Fatalf("%s: handle %v, done called %d times (%v, %v); want still waiting", what, p, calls, out, err)
	}
}

func TestPublishAsyncKeepsCallOrder(t *testing.T) {
	// Each step is a publish of the next id or a receive. After every step
	// the queue must already hold (size + waiting) what the calls so far
	// put in: an async publish takes its place before it returns.
	type step struct {
		receive bool
	}
	pub, recv := step{}, step{receive: true}
	script := []step{pub, pub, pub, pub, recv, pub, pub, recv, recv, pub, recv, pub, pub, recv, recv, recv, recv, recv}
	for _, p := range []bus.Policy{bus.PolicyDrop, bus.PolicyFail, bus.PolicyBlock, bus.PolicyDropOldest} {
		t.Run(string(p), func(t *testing.T) {
			const capacity = 2
			b, clk := newBus(t, oneQueue("q", capacity, p, time.Hour))
			c := subscribe(t, b, "q", 100)
			// model is what the queue must hold, oldest first: waiting
			// policies keep every event, drop_oldest evicts at once.
			var model []int
			var results []*asyncResult
			published := 0
			for i, s := range script {
				if s.receive && len(model) == 0 {
					continue // drop_oldest lost the rest of the script's events
				}
				if s.receive {
					if got := payloadID(t, mustReceive(t, c)); got != model[0] {
						t.Fatalf("step %d: received id %d, want %d (call order)", i, got, model[0])
					}
					model = model[1:]
				} else {
					_, r := startAsync(context.Background(), b, clk, event("T", published), "q")
					results = append(results, r)
					model = append(model, published)
					published++
					if p == bus.PolicyDropOldest && len(model) > capacity {
						model = model[1:]
					}
				}
				if st := b.Stats()["q"]; st.Size+st.Waiting != len(model) {
					t.Fatalf("step %d: size %d + waiting %d, want %d held", i, st.Size, st.Waiting, len(model))
				}
			}
			if len(model) != 0 {
				t.Fatalf("script left %v in the queue", model)
			}
			for i, r := range results {
				wantDone(t, fmt.Sprintf("publish %d", i), r, bus.Accepted)
			}
		})
	}
}

func TestPublishAsyncTimeoutsCountFromEachArrival(t *testing.T) {
	// The default signal queue: every publish waiting on a full queue gets
	// its own 5 s from its arrival, so ten of them all fail at the same
	// instant, not one after the other.
	tests := []struct {
		policy  bus.Policy
		outcome bus.Outcome
		errIs   error
	}{
		{bus.PolicyFail, bus.TimedOut, bus.ErrTimeout},
		{bus.PolicyDrop, bus.Dropped, nil},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			const n = 10
			const timeout = 5 * time.Second
			b, clk, rec := traced(t, oneQueue("signal", 1, tt.policy, timeout))
			publishN(t, b, "signal", "SIGNAL_GENERATED", 0, 1)
			arrived := clk.Now()
			var results []*asyncResult
			for i := 1; i <= n; i++ {
				p, r := startAsync(context.Background(), b, clk, bus.Event{Type: "SIGNAL_GENERATED", Parent: parentSC(t)}, "signal")
				wantPending(t, "queued", p, r)
				results = append(results, r)
			}
			if got := b.Stats()["signal"].Waiting; got != n {
				t.Fatalf("%d publishes waiting, want %d", got, n)
			}
			if got := clk.Timers(); got != 1 {
				t.Fatalf("%d timers armed, want one for the queue's waiters", got)
			}
			clk.Advance(timeout - time.Millisecond)
			for _, r := range results {
				if calls, out, _ := r.get(); calls != 0 {
					t.Fatalf("resolved %v before its timeout", out)
				}
			}
			clk.Advance(time.Millisecond)
			for i, r := range results {
				wantDone(t, "waiting publish", r, tt.outcome)
				_, _, err := r.get()
				if (tt.errIs == nil) != (err == nil) || (tt.errIs != nil && !errors.Is(err, tt.errIs)) {
					t.Errorf("publish %d: err %v, want %v", i, err, tt.errIs)
				}
				if want := arrived.Add(timeout); !r.at.Equal(want) {
					t.Errorf("publish %d resolved at %v, want %v (5 s after its own arrival)", i, r.at, want)
				}
			}
			st := b.Stats()["signal"]
			if st.Waiting != 0 || st.Published[tt.outcome] != n || st.Size != 1 {
				t.Errorf("stats = %+v", st)
			}
			waits := ended(rec, "wait signal")
			if len(waits) != n {
				t.Fatalf("%d wait spans, want %d", len(waits), n)
			}
			pubs := map[trace.SpanID]bool{}
			for _, s := range ended(rec, "publish signal") {
				pubs[s.SpanContext().SpanID()] = true
			}
			for _, w := range waits {
				if d := w.EndTime().Sub(w.StartTime()); d != timeout {
					t.Errorf("wait span covers %v, want exactly the %v waited", d, timeout)
				}
				if !pubs[w.Parent().SpanID()] {
					t.Errorf("wait span parent %v is not a publish span", w.Parent().SpanID())
				}
			}
		})
	}
}

func TestPublishAsyncStaggeredDeadlinesShareOneTimer(t *testing.T) {
	// Waiters that arrive at different times share the queue's one timer
	// but each times out exactly its timeout after its own arrival, also
	// when the waiter the timer was armed for is withdrawn or admitted
	// first; the timer is stopped once nobody waits.
	tests := []struct {
		name   string
		remove func(t *testing.T, b *bus.Bus, head *bus.Pending)
	}{
		{"head withdrawn", func(t *testing.T, _ *bus.Bus, head *bus.Pending) {
			t.Helper()
			if !head.Cancel() {
				t.Fatal("Cancel of the waiting head returned false")
			}
		}},
		{"head admitted", func(t *testing.T, b *bus.Bus, _ *bus.Pending) {
			t.Helper()
			c := subscribe(t, b, "signal", 1)
			d := mustReceive(t, c)
			if err := c.Ack(d.Seq); err != nil {
				t.Fatalf("Ack: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const timeout = 5 * time.Second
			b, clk := newBus(t, oneQueue("signal", 1, bus.PolicyFail, timeout))
			publishN(t, b, "signal", "T", 0, 1)
			var ps []*bus.Pending
			var rs []*asyncResult
			var arrivals []time.Time
			for i := range 3 {
				if i > 0 {
					clk.Advance(time.Second)
				}
				arrivals = append(arrivals, clk.Now())
				p, r := startAsync(context.Background(), b, clk, event("T", 1+i), "signal")
				wantPending(t, "queued", p, r)
				ps, rs = append(ps, p), append(rs, r)
			}
			if got := clk.Timers(); got != 1 {
				t.Fatalf("%d timers armed for 3 waiters, want 1", got)
			}
			tt.remove(t, b, ps[0])
			clk.Advance(arrivals[1].Add(timeout - time.Millisecond).Sub(clk.Now()))
			for i := 1; i < 3; i++ {
				wantPending(t, "before its deadline", ps[i], rs[i])
			}
			clk.Advance(time.Millisecond)
			wantDone(t, "second waiter", rs[1], bus.TimedOut)
			wantPending(t, "third waiter", ps[2], rs[2])
			clk.Advance(time.Second - time.Millisecond)
			wantPending(t, "third waiter", ps[2], rs[2])
			clk.Advance(time.Millisecond)
			wantDone(t, "third waiter", rs[2], bus.TimedOut)
			for i := 1; i < 3; i++ {
				if want := arrivals[i].Add(timeout); !rs[i].at.Equal(want) {
					t.Errorf("waiter %d resolved at %v, want %v", i, rs[i].at, want)
				}
			}
			if calls, _, _ := rs[0].get(); calls != 1 {
				t.Errorf("first waiter: done called %d times, want once", calls)
			}
			if got := clk.Timers(); got != 0 {
				t.Errorf("%d timers armed with nobody waiting, want 0", got)
			}
		})
	}
}

func TestPublishAsyncFullQueueDoesNotDelayOtherQueues(t *testing.T) {
	for _, p := range []bus.Policy{bus.PolicyDrop, bus.PolicyFail, bus.PolicyBlock} {
		t.Run(string(p), func(t *testing.T) {
			b, clk := newBus(t, []bus.QueueConfig{
				{Name: "data", Capacity: 1, Policy: p, Timeout: time.Hour},
				{Name: "order", Capacity: 100, Policy: bus.PolicyBlock},
			})
			publishN(t, b, "data", "CANDLE_UPDATE", 0, 1)
			finished := make(chan []*asyncResult, 1)
			go func() {
				// One connection's pipelined frames: candles to the full
				// queue interleaved with orders.
				var orders []*asyncResult
				for i := 1; i <= 20; i++ {
					_, _ = startAsync(context.Background(), b, clk, event("CANDLE_UPDATE", i), "data")
					p, r := startAsync(context.Background(), b, clk, event("ORDER_PLACED", i), "order")
					if p != nil {
						t.Errorf("order %d: non-nil handle for a publish to a queue with room", i)
					}
					orders = append(orders, r)
				}
				finished <- orders
			}()
			select {
			case orders := <-finished:
				for _, r := range orders {
					wantDone(t, "order publish", r, bus.Accepted)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("publishes to the order queue blocked behind the full data queue")
			}
			if st := b.Stats(); st["data"].Waiting != 20 || st["order"].Size != 20 {
				t.Errorf("data waiting %d, order size %d; want 20, 20", st["data"].Waiting, st["order"].Size)
			}
		})
	}
}

func TestPublishAsyncCancelWithdrawsOnlyThatOne(t *testing.T) {
	tests := []struct {
		name string
		// cancel withdraws publish i (of handle p) and reports whether it did.
		cancel func(p *bus.Pending, cancelCtx context.CancelFunc) bool
		viaCtx bool
	}{
		{"handle", func(p *bus.Pending, _ context.CancelFunc) bool { return p.Cancel() }, false},
		{"context", func(_ *bus.Pending, cancel context.CancelFunc) bool { cancel(); return true }, true},
	}
	for _, tt := range tests {
		for _, policy := range []bus.Policy{bus.PolicyDrop, bus.PolicyFail, bus.PolicyBlock} {
			t.Run(tt.name+"/"+string(policy), func(t *testing.T) {
				const n, victim = 5, 2
				b, clk := newBus(t, oneQueue("q", 1, policy, time.Hour))
				publishN(t, b, "q", "T", 0, 1)
				handles := make([]*bus.Pending, n)
				results := make([]*asyncResult, n)
				cancels := make([]context.CancelFunc, n)
				for i := range n {
					ctx, cancel := context.WithCancel(context.Background())
					t.Cleanup(cancel)
					cancels[i] = cancel
					handles[i], results[i] = startAsync(ctx, b, clk, event("T", 1+i), "q")
					wantPending(t, "queued", handles[i], results[i])
				}
				if !tt.cancel(handles[victim], cancels[victim]) {
					t.Fatal("Cancel of a waiting publish reported false")
				}
				if tt.viaCtx {
					testkit.Eventually(t, "ctx withdraws", func() bool { c, _, _ := results[victim].get(); return c == 1 })
				}
				wantDone(t, "cancelled publish", results[victim], bus.Cancelled)
				if _, _, err := results[victim].get(); !errors.Is(err, context.Canceled) {
					t.Errorf("cancelled publish err = %v, want context.Canceled", err)
				}
				if handles[victim].Cancel() {
					t.Error("second Cancel reported true")
				}
				for i := range n {
					if i != victim {
						wantPending(t, "other publish", handles[i], results[i])
					}
				}
				if st := b.Stats()["q"]; st.Waiting != n-1 || st.Published[bus.Cancelled] != 1 {
					t.Fatalf("waiting %d, cancelled %d; want %d, 1", st.Waiting, st.Published[bus.Cancelled], n-1)
				}
				c := subscribe(t, b, "q", 1)
				var got []int
				for range n {
					d := mustReceive(t, c)
					got = append(got, payloadID(t, d))
					_ = c.Ack(d.Seq)
				}
				if want := []int{0, 1, 2, 4, 5}; !slices.Equal(got, want) {
					t.Errorf("received %v, want %v (only id %d withdrawn)", got, want, 1+victim)
				}
				for i := range n {
					if i != victim {
						wantDone(t, "other publish", results[i], bus.Accepted)
					}
				}
				if clk.Timers() != 0 {
					t.Errorf("%d timers still armed after every publish resolved", clk.Timers())
				}
				var nilHandle *bus.Pending
				if nilHandle.Cancel() {
					t.Error("Cancel on a nil handle reported true")
				}
			})
		}
	}
}

func TestPublishAsyncImmediateOutcomes(t *testing.T) {
	cancelled := cancelledCtx()
	tests := []struct {
		name  string
		queue string
		ev    bus.Event
		ctx   context.Context
		fill  int
		want  bus.Outcome
		errIs error
	}{
		{"room", "order", event("T", 1), context.Background(), 0, bus.Accepted, nil},
		{"room with done ctx", "order", event("T", 1), cancelled, 0, bus.Accepted, nil},
		{"unknown queue", "nope", event("T", 1), context.Background(), 0, bus.Failed, bus.ErrUnknownQueue},
		{"invalid event", "order", bus.Event{}, context.Background(), 0, bus.Failed, bus.ErrInvalidEvent},
		{"full with done ctx", "order", event("T", 1), cancelled, 1, bus.Cancelled, context.Canceled},
		{"drop_oldest evicts", "risk", event("T", 1), context.Background(), 1, bus.Accepted, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk := newBus(t, []bus.QueueConfig{
				{Name: "order", Capacity: 1, Policy: bus.PolicyBlock},
				{Name: "risk", Capacity: 1, Policy: bus.PolicyDropOldest},
			})
			if tt.fill > 0 {
				publishN(t, b, tt.queue, "T", 100, tt.fill)
			}
			p, r := startAsync(tt.ctx, b, clk, tt.ev, tt.queue)
			if p != nil {
				t.Errorf("handle %v for an immediate outcome, want nil", p)
			}
			wantDone(t, "immediate publish", r, tt.want)
			if _, _, err := r.get(); (tt.errIs == nil) != (err == nil) || (tt.errIs != nil && !errors.Is(err, tt.errIs)) {
				t.Errorf("err = %v, want %v", err, tt.errIs)
			}
			if st := b.Stats()["order"]; st.Waiting != 0 {
				t.Errorf("waiting = %d after an immediate outcome", st.Waiting)
			}
		})
	}
}

func TestPublishAsyncShutdownFailsWaiters(t *testing.T) {
	b, clk := newBus(t, oneQueue("q", 1, bus.PolicyFail, time.Hour))
	publishN(t, b, "q", "T", 0, 1)
	var results []*asyncResult
	for i := 1; i <= 3; i++ {
		p, r := startAsync(context.Background(), b, clk, event("T", i), "q")
		wantPending(t, "queued", p, r)
		results = append(results, r)
	}
	if _, err := b.Shutdown(cancelledCtx()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v", err)
	}
	for _, r := range results {
		wantDone(t, "waiter at shutdown", r, bus.Failed)
		if _, _, err := r.get(); !errors.Is(err, bus.ErrShuttingDown) {
			t.Errorf("err = %v, want ErrShuttingDown", err)
		}
	}
	if clk.Timers() != 0 {
		t.Errorf("%d timers armed after Shutdown failed every waiter", clk.Timers())
	}
	p, r := startAsync(context.Background(), b, clk, event("T", 9), "q")
	if p != nil {
		t.Error("handle for a publish refused while shutting down")
	}
	wantDone(t, "publish after shutdown", r, bus.Failed)
}

func TestPublishAsyncDoneOnceUnderRaces(t *testing.T) {
	// Every way a wait can end races with the others: a consumer admits,
	// the timer expires, handles and contexts cancel, Shutdown fails the
	// rest. Each publish must end exactly once, and the counts must agree.
	// Several rounds per run, because any one interleaving is luck.
	for round := range 20 {
		t.Run(fmt.Sprintf("round %d", round), raceRound)
	}
}

func raceRound(t *testing.T) {
	const n = 60
	b, clk := newBus(t, oneQueue("q", 4, bus.PolicyFail, time.Second))
	publishN(t, b, "q", "T", 0, 4)
	handles := make([]*bus.Pending, n)
	cancels := make([]context.CancelFunc, n)
	var calls [n]atomic.Int32
	var outcomes [n]atomic.Value
	for i := range n {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		cancels[i] = cancel
		handles[i] = b.PublishAsync(ctx, event("T", 100+i), "q", func(out bus.Outcome, _ error) {
			outcomes[i].Store(out)
			calls[i].Add(1) // after the store: the checks below poll calls
		})
		if handles[i] == nil {
			t.Fatalf("publish %d resolved at once on a full queue", i)
		}
	}
	c := subscribe(t, b, "q", n+4)
	var received atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	run := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f()
		}()
	}
	run(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for {
			if _, err := c.Receive(ctx); err != nil {
				return // ErrShuttingDown once Shutdown has finished
			}
			received.Add(1)
		}
	})
	run(func() { clk.Advance(time.Second) })
	run(func() {
		for i := n - 1; i >= 0; i -= 3 {
			handles[i].Cancel()
			runtime.Gosched() // let the other resolvers in between
		}
	})
	run(func() {
		for i := n - 2; i >= 0; i -= 3 {
			cancels[i]()
			runtime.Gosched()
		}
	})
	run(func() {
		for range 20 {
			runtime.Gosched() // give the others a head start: Shutdown fails all it finds
		}
		_, _ = b.Shutdown(cancelledCtx())
	})
	close(start)
	wg.Wait()

	for i := range n {
		testkit.Eventually(t, "every done called", func() bool { return calls[i].Load() >= 1 })
	}
	counts := map[bus.Outcome]int{}
	for i := range n {
		if got := calls[i].Load(); got != 1 {
			t.Fatalf("publish %d: done called %d times", i, got)
		}
		counts[outcomes[i].Load().(bus.Outcome)]++
		if handles[i].Cancel() {
			t.Errorf("publish %d: Cancel after resolution reported true", i)
		}
	}
	t.Logf("outcomes: %v", counts)
	st := b.Stats()["q"]
	for _, o := range []bus.Outcome{bus.Cancelled, bus.TimedOut, bus.Failed} {
		if int(st.Published[o]) != counts[o] {
			t.Errorf("stats %s = %d, done saw %d", o, st.Published[o], counts[o])
		}
	}
	if int(st.Published[bus.Accepted]) != counts[bus.Accepted]+4 {
		t.Errorf("stats accepted = %d, done saw %d (+4 before)", st.Published[bus.Accepted], counts[bus.Accepted])
	}
	// Nothing is acked: every accepted event is waiting or in flight.
	if st.Size+st.InFlight != counts[bus.Accepted]+4 || st.InFlight != int(received.Load()) {
		t.Errorf("accepted %d (+4) but queue holds %d, %d in flight, %d received",
			counts[bus.Accepted], st.Size, st.InFlight, received.Load())
	}
	if st.Waiting != 0 || clk.Timers() != 0 {
		t.Errorf("waiting %d, timers %d; want 0, 0", st.Waiting, clk.Timers())
	}
}

// TestPublishAsyncImmediateDoesNotAllocate pins zero allocations for an
// async publish that is accepted at once, with noop telemetry and a done
// callback the caller made once.
func TestPublishAsyncImmediateDoesNotAllocate(t *testing.T) {
	b, err := bus.New(bus.DefaultQueues())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = b.Shutdown(cancelledCtx()) })
	c := subscribe(t, b, "order", 1)
	ctx := context.Background()
	ev := bus.Event{Type: "ORDER_PLACED", Payload: []byte(`{"id":1}`)}
	var last bus.Outcome
	done := func(out bus.Outcome, _ error) { last = out }
	allocs := testing.AllocsPerRun(1000, func() {
		if p := b.PublishAsync(ctx, ev, "order", done); p != nil || last != bus.Accepted {
			t.Fatal(p, last)
		}
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(d.Seq); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per async publish+receive+ack, want 0", allocs)
	}
}

// BenchmarkPublishAsync measures PublishAsync plus receive and ack in one
// goroutine: "immediate" finds room, "waiting" always waits (queue of 1,
// kept full) and is admitted by the receive, the transport's slow path.
//
//	go test -run '^$' -bench 'PublishAsync' -benchmem ./bus
func BenchmarkPublishAsync(b *testing.B) {
	for _, mode := range []string{"immediate", "waiting"} {
		b.Run(mode, func(b *testing.B) {
			bb, err := bus.New(oneQueue("q", 1, bus.PolicyFail, time.Minute))
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _, _ = bb.Shutdown(cancelledCtx()) }()
			c, err := bb.Subscribe("q", 1)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			ctx := context.Background()
			ev := bus.Event{Type: "CANDLE_UPDATE", Payload: []byte(`{"s":"BTCUSDT","c":1}`)}
			var accepted int
			done := func(out bus.Outcome, _ error) {
				if out == bus.Accepted {
					accepted++
				}
			}
			before := 0
			if mode == "waiting" {
				bb.PublishAsync(ctx, ev, "q", done) // keeps the queue full
				before = 1
			}
			benchRoundTrips(b, bb, c, ev, done)
			if want := b.N + before; accepted != want {
				b.Fatalf("accepted %d, want %d", accepted, want)
			}
		})
	}
}
