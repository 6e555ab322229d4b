package bus_test

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

func TestDropOldestEvictsAndCounts(t *testing.T) {
	b, clk := newBus(t, oneQueue("candles", 3, bus.PolicyDropOldest, 0))
	publishN(t, b, "candles", "CANDLE_UPDATE", 0, 5) // ids 3 and 4 evict 0 and 1
	if clk.Timers() != 0 {
		t.Fatalf("drop_oldest armed %d timers; it must never wait", clk.Timers())
	}
	st := b.Stats()["candles"]
	if st.Size != 3 || st.Drops != 2 || st.DropsByReason[bus.DropEvicted] != 2 || st.DropsByReason[bus.DropTimeout] != 0 {
		t.Fatalf("size/drops/evicted/timeout = %d/%d/%d/%d, want 3/2/2/0", st.Size, st.Drops,
			st.DropsByReason[bus.DropEvicted], st.DropsByReason[bus.DropTimeout])
	}
	if st.Published[bus.Accepted] != 5 {
		t.Errorf("accepted = %d, want 5 (the new event is always accepted)", st.Published[bus.Accepted])
	}
	c := subscribe(t, b, "candles", 3)
	var ids []int
	for i := 0; i < 3; i++ {
		ids = append(ids, payloadID(t, mustReceive(t, c)))
	}
	if !slices.Equal(ids, []int{2, 3, 4}) {
		t.Errorf("kept %v, want the newest [2 3 4]", ids)
	}
}

func TestCancelWithdrawsWaitingPublish(t *testing.T) {
	for _, p := range []bus.Policy{bus.PolicyDrop, bus.PolicyFail, bus.PolicyBlock} {
		t.Run(string(p), func(t *testing.T) {
			b, _ := newBus(t, oneQueue("q", 1, p, time.Hour))
			publishN(t, b, "q", "T", 0, 1)
			ctx, cancel := context.WithCancel(context.Background())
			res := publishAsync(ctx, b, event("T", 1), "q")
			testkit.Eventually(t, "publisher waits", func() bool { return b.Stats()["q"].Waiting == 1 })
			cancel()
			r := await(t, res)
			if r.out != bus.Cancelled || !errors.Is(r.err, context.Canceled) {
				t.Fatalf("Publish = %v, %v; want cancelled", r.out, r.err)
			}
			// Room appears afterwards: the withdrawn event must not sneak in.
			c := subscribe(t, b, "q", 5)
			if d := mustReceive(t, c); payloadID(t, d) != 0 {
				t.Fatalf("got id %d, want 0", payloadID(t, d))
			}
			st := b.Stats()["q"]
			if st.Size != 0 || st.Waiting != 0 || st.Drops != 0 || st.Published[bus.Cancelled] != 1 || st.Published[bus.Accepted] != 1 {
				t.Errorf("stats after cancel = %+v", st)
			}
		})
	}
}

func TestWaitingPublishersServedFIFO(t *testing.T) {
	for _, p := range []bus.Policy{bus.PolicyDrop, bus.PolicyFail, bus.PolicyBlock} {
		t.Run(string(p), func(t *testing.T) {
			const waiters = 5
			b, clk := newBus(t, oneQueue("q", 1, p, time.Hour))
			start := clk.Now()
			publishN(t, b, "q", "T", 0, 1)
			var results []<-chan publishResult
			for i := 1; i <= waiters; i++ {
				results = append(results, publishAsync(context.Background(), b, event("T", i), "q"))
				// Arrival order is what fairness is about: let each one queue up.
				testkit.Eventually(t, "publisher waits", func() bool { return b.Stats()["q"].Waiting == i })
			}
			// A newcomer must queue behind the waiters, even when room appears.
			c := subscribe(t, b, "q", 1)
			var ids []int
			for i := 0; i <= waiters; i++ {
				d := mustReceive(t, c)
				ids = append(ids, payloadID(t, d))
				if d.EnqueuedAt.Before(start) {
					t.Errorf("id %d EnqueuedAt = %v, before the test began", payloadID(t, d), d.EnqueuedAt)
				}
				if err := c.Ack(d.Seq); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(ids, []int{0, 1, 2, 3, 4, 5}) {
				t.Errorf("order = %v, want publishers served in arrival order", ids)
			}
			for _, r := range results {
				if res := await(t, r); res.out != bus.Accepted || res.err != nil {
					t.Errorf("waiting publish = %v, %v", res.out, res.err)
				}
			}
		})
	}
}

func TestNewPublisherDoesNotOvertakeWaiters(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 1, bus.PolicyBlock, 0))
	publishN(t, b, "q", "T", 0, 1)
	first := publishAsync(context.Background(), b, event("T", 1), "q")
	testkit.Eventually(t, "first waits", func() bool { return b.Stats()["q"].Waiting == 1 })
	c := subscribe(t, b, "q", 1)
	d := mustReceive(t, c) // frees the slot: it goes to the waiter, not to a newcomer
	if r := await(t, first); r.out != bus.Accepted {
		t.Fatalf("waiter: %v %v", r.out, r.err)
	}
	second := publishAsync(context.Background(), b, event("T", 2), "q")
	testkit.Eventually(t, "newcomer waits", func() bool { return b.Stats()["q"].Waiting == 1 })
	if err := c.Ack(d.Seq); err != nil {
		t.Fatal(err)
	}
	d = mustReceive(t, c)
	if payloadID(t, d) != 1 {
		t.Fatalf("got id %d, want the waiter's 1", payloadID(t, d))
	}
	_ = c.Ack(d.Seq)
	if r := await(t, second); r.out != bus.Accepted {
		t.Fatalf("newcomer: %v %v", r.out, r.err)
	}
}

func TestTimeoutAndAdmissionDoNotLoseOrDuplicate(t *testing.T) {
	// Waiters on a fail queue: the timer fires for all of them while a
	// consumer frees room. Every publish ends either accepted (and then
	// delivered exactly once) or timed out (and never delivered).
	b, clk := newBus(t, oneQueue("q", 2, bus.PolicyFail, time.Second))
	publishN(t, b, "q", "T", 0, 2)
	const waiters = 20
	var results []<-chan publishResult
	for i := 0; i < waiters; i++ {
		results = append(results, publishAsync(context.Background(), b, event("T", 100+i), "q"))
	}
	testkit.Eventually(t, "all wait", func() bool { return b.Stats()["q"].Waiting == waiters })
	c := subscribe(t, b, "q", 100)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); clk.Advance(time.Second) }()
	accepted := map[int]bool{}
	for i, r := range results {
		res := await(t, r)
		switch res.out {
		case bus.Accepted:
			accepted[100+i] = true
		case bus.TimedOut:
		default:
			t.Fatalf("publish %d = %v, %v", i, res.out, res.err)
		}
	}
	wg.Wait()
	want := len(accepted) + 2
	got := map[int]int{}
	for i := 0; i < want; i++ {
		got[payloadID(t, mustReceive(t, c))]++
	}
	for id := range accepted {
		if got[id] != 1 {
			t.Errorf("accepted id %d delivered %d times", id, got[id])
		}
	}
	if st := b.Stats()["q"]; st.Size != 0 || int(st.Published[bus.Accepted]) != want || int(st.Timeouts) != waiters-len(accepted) {
		t.Errorf("stats = %+v (accepted %d)", st, len(accepted))
	}
}

func TestNoLossOnBlockingQueuesUnderLoad(t *testing.T) {
	for _, p := range []bus.Policy{bus.PolicyFail, bus.PolicyBlock} {
		t.Run(string(p), func(t *testing.T) {
			const publishers, each = 4, 500
			b, _ := newBus(t, oneQueue("q", 8, p, time.Hour))
			cons := []*bus.Consumer{subscribe(t, b, "q", 3), subscribe(t, b, "q", 3)}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var mu sync.Mutex
			seen := map[int]int{}
			var wg sync.WaitGroup
			for ci, c := range cons {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := 0; ; n++ {
						d, err := c.Receive(ctx)
						if err != nil {
							return
						}
						// Nack every 7th first delivery: it must come back.
						if d.Redeliveries == 0 && (n+ci)%7 == 0 {
							_ = c.Nack(d.Seq)
							continue
						}
						mu.Lock()
						seen[payloadID(t, d)]++
						mu.Unlock()
						_ = c.Ack(d.Seq)
					}
				}()
			}
			var pw sync.WaitGroup
			for p := 0; p < publishers; p++ {
				pw.Add(1)
				go func() {
					defer pw.Done()
					for i := 0; i < each; i++ {
						if out, err := b.Publish(ctx, event("T", p*each+i), "q"); out != bus.Accepted {
							t.Errorf("publish: %v %v", out, err)
						}
					}
				}()
			}
			pw.Wait()
			testkit.Eventually(t, "all acked", func() bool { return b.Stats()["q"].Acked == publishers*each })
			cancel()
			wg.Wait()
			for i := 0; i < publishers*each; i++ {
				if seen[i] != 1 {
					t.Fatalf("event %d acked %d times", i, seen[i])
				}
			}
			if st := b.Stats()["q"]; st.Drops != 0 || st.Redelivered == 0 {
				t.Errorf("drops/redelivered = %d/%d", st.Drops, st.Redelivered)
			}
		})
	}
}

func TestPublishRejectsInvalidEvent(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	out, err := b.Publish(context.Background(), bus.Event{Payload: []byte(`{}`)}, "data")
	if out != bus.Failed || !errors.Is(err, bus.ErrInvalidEvent) || !strings.Contains(err.Error(), "type") {
		t.Fatalf("Publish = %v, %v; want error naming the empty type", out, err)
	}
	st := b.Stats()["data"]
	if st.Size != 0 || st.Published[bus.Failed] != 1 {
		t.Errorf("size/failed = %d/%d, want 0/1", st.Size, st.Published[bus.Failed])
	}
}

func TestStatsFields(t *testing.T) {
	b, clk := newBus(t, []bus.QueueConfig{
		{Name: "data", Capacity: 2, Policy: bus.PolicyDrop, Timeout: time.Second},
		{Name: "signal", Capacity: 1, Policy: bus.PolicyFail, Timeout: 5 * time.Second},
		{Name: "order", Capacity: 1, Policy: bus.PolicyBlock},
		{Name: "risk", Capacity: 1, Policy: bus.PolicyDropOldest},
	})
	if got := b.Queues(); !slices.Equal(got, []string{"data", "signal", "order", "risk"}) {
		t.Fatalf("Queues() = %v", got)
	}
	publishN(t, b, "data", "T", 0, 2)
	publishN(t, b, "signal", "T", 0, 1)
	publishN(t, b, "order", "T", 0, 1)
	publishN(t, b, "risk", "T", 0, 2)
	drop := publishAsync(context.Background(), b, event("T", 9), "data")
	fail := publishAsync(context.Background(), b, event("T", 9), "signal")
	testkit.Eventually(t, "two timers", func() bool { return clk.Timers() == 2 })
	clk.Advance(5 * time.Second)
	await(t, drop)
	await(t, fail)
	ctx, cancel := context.WithCancel(context.Background())
	blocked := publishAsync(ctx, b, event("T", 9), "order")
	testkit.Eventually(t, "order waiter", func() bool { return b.Stats()["order"].Waiting == 1 })
	c := subscribe(t, b, "data", 4)
	d := mustReceive(t, c)
	_ = c.Nack(d.Seq)
	d = mustReceive(t, c)
	_ = c.Ack(d.Seq)
	_ = mustReceive(t, c)

	st := b.Stats()
	want := map[string]bus.QueueStats{
		"data": {Size: 0, MaxSize: 2, Drops: 1, Policy: bus.PolicyDrop, TimeoutSeconds: 1,
			Published:     map[bus.Outcome]uint64{bus.Accepted: 2, bus.Dropped: 1, bus.TimedOut: 0, bus.Cancelled: 0, bus.Failed: 0, bus.Duplicate: 0},
			DropsByReason: map[bus.DropReason]uint64{bus.DropTimeout: 1, bus.DropEvicted: 0},
			Delivered:     3, Redelivered: 1, Acked: 1, Consumers: 1, InFlight: 1},
		"signal": {Size: 1, MaxSize: 1, Policy: bus.PolicyFail, TimeoutSeconds: 5, Timeouts: 1,
			Published:     map[bus.Outcome]uint64{bus.Accepted: 1, bus.Dropped: 0, bus.TimedOut: 1, bus.Cancelled: 0, bus.Failed: 0, bus.Duplicate: 0},
			DropsByReason: map[bus.DropReason]uint64{bus.DropTimeout: 0, bus.DropEvicted: 0}},
		"order": {Size: 1, MaxSize: 1, Policy: bus.PolicyBlock, Waiting: 1,
			Published:     map[bus.Outcome]uint64{bus.Accepted: 1, bus.Dropped: 0, bus.TimedOut: 0, bus.Cancelled: 0, bus.Failed: 0, bus.Duplicate: 0},
			DropsByReason: map[bus.DropReason]uint64{bus.DropTimeout: 0, bus.DropEvicted: 0}},
		"risk": {Size: 1, MaxSize: 1, Drops: 1, Policy: bus.PolicyDropOldest,
			Published:     map[bus.Outcome]uint64{bus.Accepted: 2, bus.Dropped: 0, bus.TimedOut: 0, bus.Cancelled: 0, bus.Failed: 0, bus.Duplicate: 0},
			DropsByReason: map[bus.DropReason]uint64{bus.DropTimeout: 0, bus.DropEvicted: 1}},
	}
	for name, w := range want {
		got := st[name]
		if !reflect.DeepEqual(got, w) {
			t.Errorf("%s stats\n got %+v\nwant %+v", name, got, w)
		}
	}
	cancel()
	await(t, blocked)
}

func TestCancelCauseIsWrapped(t *testing.T) {
	cause := errors.New("connection closed")
	b, _ := newBus(t, oneQueue("q", 1, bus.PolicyBlock, 0))
	publishN(t, b, "q", "T", 0, 1)
	ctx, cancel := context.WithCancelCause(context.Background())
	res := publishAsync(ctx, b, event("T", 1), "q")
	testkit.Eventually(t, "waiting", func() bool { return b.Stats()["q"].Waiting == 1 })
	cancel(cause)
	r := await(t, res)
	if r.out != bus.Cancelled || !errors.Is(r.err, context.Canceled) || !errors.Is(r.err, cause) {
		t.Fatalf("Publish = %v, %v; want cancelled wrapping context.Canceled and the cause", r.out, r.err)
	}
	c := subscribe(t, b, "q", 1)
	_ = mustReceive(t, c)
	if _, err := c.Receive(ctx); !errors.Is(err, context.Canceled) || !errors.Is(err, cause) {
		t.Fatalf("Receive = %v; want context.Canceled and the cause", err)
	}
}
