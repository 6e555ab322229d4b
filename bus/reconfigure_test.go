package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// reconfigure calls Reconfigure and fails the test on an error.
func reconfigure(t *testing.T, b *bus.Bus, queues []bus.QueueConfig) {
	t.Helper()
	if err := b.Reconfigure(queues); err != nil {
		t.Fatalf("Reconfigure(%+v): %v", queues, err)
	}
}

// receiveIDs receives n events and returns their payload ids in order.
func receiveIDs(t *testing.T, c *bus.Consumer, n int) []int {
	t.Helper()
	ids := make([]int, n)
	for i := range ids {
		d := mustReceive(t, c)
		ids[i] = payloadID(t, d)
		if err := c.Ack(d.Seq); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	return ids
}

func wantIDs(t *testing.T, what string, got []int, want ...int) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: ids %v, want %v", what, got, want)
	}
}

func TestReconfigureGrowAdmitsWaitersInOrder(t *testing.T) {
	for _, p := range []bus.Policy{bus.PolicyBlock, bus.PolicyFail, bus.PolicyDrop} {
		t.Run(string(p), func(t *testing.T) {
			b, clk := newBus(t, oneQueue("q", 2, p, time.Hour))
			publishN(t, b, "q", "T", 0, 2)
			var pend []*bus.Pending
			var res []*asyncResult
			for id := 2; id < 5; id++ {
				pp, r := startAsync(context.Background(), b, clk, event("T", id), "q")
				wantPending(t, fmt.Sprintf("publish %d", id), pp, r)
				pend, res = append(pend, pp), append(res, r)
			}

			reconfigure(t, b, oneQueue("q", 4, p, time.Hour))
			// Admitted by Reconfigure itself, before it returns.
			wantDone(t, "publish 2", res[0], bus.Accepted)
			wantDone(t, "publish 3", res[1], bus.Accepted)
			wantPending(t, "publish 4", pend[2], res[2])
			if st := b.Stats()["q"]; st.Size != 4 || st.MaxSize != 4 || st.Waiting != 1 {
				t.Fatalf("size/maxsize/waiting = %d/%d/%d, want 4/4/1", st.Size, st.MaxSize, st.Waiting)
			}

			c := subscribe(t, b, "q", 1)
			wantIDs(t, "first delivery", receiveIDs(t, c, 1), 0)
			wantDone(t, "publish 4", res[2], bus.Accepted) // room freed by the delivery
			wantIDs(t, "the rest", receiveIDs(t, c, 4), 1, 2, 3, 4)
		})
	}
}

func TestReconfigureShrinkKeepsEventsUntilDrained(t *testing.T) {
	// Five events in a queue shrunk to two: all five stay, and a new
	// publish gets in only once the depth is below two, or times out by
	// its policy meanwhile.
	tests := []struct {
		policy  bus.Policy
		timeout time.Duration
		expire  bus.Outcome // "": drain the queue instead of letting time pass
	}{
		{bus.PolicyBlock, 0, ""},
		{bus.PolicyFail, time.Second, ""},
		{bus.PolicyDrop, time.Second, ""},
		{bus.PolicyFail, time.Second, bus.TimedOut},
		{bus.PolicyDrop, time.Second, bus.Dropped},
	}
	for _, tt := range tests {
		name := string(tt.policy) + "/drained"
		if tt.expire != "" {
			name = string(tt.policy) + "/" + string(tt.expire)
		}
		t.Run(name, func(t *testing.T) {
			b, clk := newBus(t, oneQueue("q", 5, tt.policy, tt.timeout))
			publishN(t, b, "q", "T", 0, 5)
			reconfigure(t, b, oneQueue("q", 2, tt.policy, tt.timeout))
			if st := b.Stats()["q"]; st.Size != 5 || st.MaxSize != 2 || st.Drops != 0 {
				t.Fatalf("after shrink size/maxsize/drops = %d/%d/%d, want 5/2/0", st.Size, st.MaxSize, st.Drops)
			}

			p, r := startAsync(context.Background(), b, clk, event("T", 5), "q")
			wantPending(t, "publish into the over-full queue", p, r)
			c := subscribe(t, b, "q", 10)
			wantIDs(t, "drain to the new capacity", receiveIDs(t, c, 3), 0, 1, 2)
			wantPending(t, "publish at depth == capacity", p, r)

			if tt.expire != "" {
				clk.Advance(tt.timeout)
				wantDone(t, "publish after its timeout", r, tt.expire)
				wantIDs(t, "kept events", receiveIDs(t, c, 2), 3, 4)
				return
			}
			wantIDs(t, "below the new capacity", receiveIDs(t, c, 1), 3)
			wantDone(t, "publish once below capacity", r, bus.Accepted)
			wantIDs(t, "kept events and the new one", receiveIDs(t, c, 2), 4, 5)
		})
	}
}

func TestReconfigureShrinkDropOldestEvictsOnePerArrival(t *testing.T) {
	// drop_oldest never waits: in a queue holding more than its new
	// capacity each arrival evicts exactly the oldest event, so the depth
	// stays put instead of one publish throwing away everything above it.
	b, _ := newBus(t, oneQueue("q", 5, bus.PolicyDropOldest, 0))
	publishN(t, b, "q", "T", 0, 5)
	reconfigure(t, b, oneQueue("q", 2, bus.PolicyDropOldest, 0))
	publishN(t, b, "q", "T", 5, 2) // evict 0 and 1
	st := b.Stats()["q"]
	if st.Size != 5 || st.DropsByReason[bus.DropEvicted] != 2 {
		t.Fatalf("size/evicted = %d/%d, want 5/2", st.Size, st.DropsByReason[bus.DropEvicted])
	}
	c := subscribe(t, b, "q", 10)
	wantIDs(t, "held events", receiveIDs(t, c, 5), 2, 3, 4, 5, 6)
	publishN(t, b, "q", "T", 7, 3) // 7, 8 fit; 9 evicts 7
	wantIDs(t, "after draining", receiveIDs(t, c, 2), 8, 9)
	if st := b.Stats()["q"]; st.Size != 0 || st.DropsByReason[bus.DropEvicted] != 3 {
		t.Fatalf("size/evicted = %d/%d, want 0/3", st.Size, st.DropsByReason[bus.DropEvicted])
	}
}

func TestReconfigurePolicyAppliesToWaitingPublishes(t *testing.T) {
	// One publish waits in a full queue of capacity 1 for waited, then the
	// queue is reconfigured. A wait gets the new timeout counted from the
	// reload, but never beyond the deadline it already had; without a
	// timeout it lasts until there is room.
	tests := []struct {
		name       string
		from, to   bus.Policy
		fromT, toT time.Duration
		waited     time.Duration
		remaining  time.Duration // after the reload; 0: no timeout any more
		outcome    bus.Outcome
	}{
		{"block to drop", bus.PolicyBlock, bus.PolicyDrop, 0, time.Second, time.Hour, time.Second, bus.Dropped},
		{"block to fail", bus.PolicyBlock, bus.PolicyFail, 0, 5 * time.Second, time.Hour, 5 * time.Second, bus.TimedOut},
		{"fail to block", bus.PolicyFail, bus.PolicyBlock, 5 * time.Second, 0, 4 * time.Second, 0, bus.Accepted},
		{"drop to drop_oldest", bus.PolicyDrop, bus.PolicyDropOldest, time.Second, 0, 0, 0, bus.Accepted},
		{"drop to fail", bus.PolicyDrop, bus.PolicyFail, time.Second, time.Second, 0, time.Second, bus.TimedOut},
		{"fail to drop", bus.PolicyFail, bus.PolicyDrop, 5 * time.Second, 5 * time.Second, 2 * time.Second, 3 * time.Second, bus.Dropped},
		{"shorter timeout from the reload", bus.PolicyFail, bus.PolicyFail, 10 * time.Second, 2 * time.Second, 5 * time.Second, 2 * time.Second, bus.TimedOut},
		{"shorter timeout, earlier old deadline", bus.PolicyFail, bus.PolicyFail, 10 * time.Second, 8 * time.Second, 5 * time.Second, 5 * time.Second, bus.TimedOut},
		{"longer timeout keeps the old deadline", bus.PolicyDrop, bus.PolicyDrop, time.Second, time.Minute, 0, time.Second, bus.Dropped},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk := newBus(t, oneQueue("q", 1, tt.from, tt.fromT))
			publishN(t, b, "q", "T", 0, 1)
			p, r := startAsync(context.Background(), b, clk, event("T", 1), "q")
			wantPending(t, "publish", p, r)
			clk.Advance(tt.waited)
			wantPending(t, "publish before the reload", p, r)

			reconfigure(t, b, oneQueue("q", 1, tt.to, tt.toT))
			if tt.remaining == 0 {
				clk.Advance(24 * time.Hour)
				wantPending(t, "publish without a timeout", p, r)
				if n := clk.Timers(); n != 0 {
					t.Fatalf("%d timers armed for a policy without a timeout", n)
				}
				c := subscribe(t, b, "q", 1)
				wantIDs(t, "queued event", receiveIDs(t, c, 1), 0)
				wantDone(t, "publish", r, bus.Accepted)
				wantIDs(t, "admitted event", receiveIDs(t, c, 1), 1)
				return
			}
			clk.Advance(tt.remaining - time.Nanosecond)
			wantPending(t, "publish just before its deadline", p, r)
			clk.Advance(time.Nanosecond)
			wantDone(t, "publish at its deadline", r, tt.outcome)
			_, _, err := r.get()
			if tt.outcome == bus.TimedOut && !errors.Is(err, bus.ErrTimeout) {
				t.Fatalf("timed-out publish error %v, want ErrTimeout", err)
			}
			if st := b.Stats()["q"]; st.Size != 1 || st.Waiting != 0 {
				t.Fatalf("size/waiting = %d/%d, want 1/0", st.Size, st.Waiting)
			}
		})
	}
}

func TestReconfigureRetimedWaitersExpireInFIFOOrder(t *testing.T) {
	// Waiters at 0 s, 4 s and 8 s on a 10 s fail queue, shortened to 3 s at
	// 8 s: the first keeps its 10 s deadline, the others end at 11 s.
	b, clk := newBus(t, oneQueue("q", 1, bus.PolicyFail, 10*time.Second))
	publishN(t, b, "q", "T", 0, 1)
	var res []*asyncResult
	for i := 0; i < 3; i++ {
		if i > 0 {
			clk.Advance(4 * time.Second)
		}
		_, r := startAsync(context.Background(), b, clk, event("T", i+1), "q")
		res = append(res, r)
	}
	reconfigure(t, b, oneQueue("q", 1, bus.PolicyFail, 3*time.Second))
	clk.Advance(2 * time.Second)
	wantDone(t, "first waiter", res[0], bus.TimedOut)
	for i := 1; i < 3; i++ {
		if calls, _, _ := res[i].get(); calls != 0 {
			t.Fatalf("waiter %d resolved at 10 s, want 11 s", i)
		}
	}
	clk.Advance(time.Second)
	wantDone(t, "second waiter", res[1], bus.TimedOut)
	wantDone(t, "third waiter", res[2], bus.TimedOut)
	if n := clk.Timers(); n != 0 {
		t.Fatalf("%d timers left without waiters", n)
	}
}

func TestReconfigureUpdatesStatsAndMetrics(t *testing.T) {
	b, _, r := metered(t, bus.DefaultQueues())
	queues := bus.DefaultQueues()
	queues[0].Capacity = 10
	queues[2].Policy, queues[2].Timeout = bus.PolicyFail, 2*time.Second
	queues[1].Policy = bus.PolicyBlock // its 5 s timeout no longer applies
	reconfigure(t, b, []bus.QueueConfig{queues[2], queues[0], queues[1]})

	st := b.Stats()
	want := map[string]struct {
		max     int
		policy  bus.Policy
		timeout float64
	}{
		"data":   {10, bus.PolicyDrop, 1},
		"signal": {100, bus.PolicyBlock, 0},
		"order":  {50, bus.PolicyFail, 2},
	}
	for name, w := range want {
		got := st[name]
		if got.MaxSize != w.max || got.Policy != w.policy || got.TimeoutSeconds != w.timeout {
			t.Errorf("%s: maxsize/policy/timeout = %d/%s/%v, want %d/%s/%v", name, got.MaxSize, got.Policy, got.TimeoutSeconds, w.max, w.policy, w.timeout)
		}
	}
	if got := b.Queues(); fmt.Sprint(got) != "[data signal order]" {
		t.Errorf("Queues() = %v: the configured order must not change", got)
	}
	capacity := series(t, collect(t, r)["eventbus.queue.capacity"], "")
	if capacity["data"] != 10 || capacity["signal"] != 100 || capacity["order"] != 50 {
		t.Errorf("eventbus.queue.capacity = %v, want data 10, signal 100, order 50", capacity)
	}
}

func TestReconfigureRefusesAndChangesNothing(t *testing.T) {
	with := func(f func(qs []bus.QueueConfig) []bus.QueueConfig) []bus.QueueConfig {
		qs := bus.DefaultQueues()
		qs[0].Capacity = 7 // a valid change that must not be applied either
		return f(qs)
	}
	tests := []struct {
		name   string
		queues []bus.QueueConfig
		is     error
		names  []string // in the message
	}{
		{"added queue", with(func(qs []bus.QueueConfig) []bus.QueueConfig {
			return append(qs, bus.QueueConfig{Name: "risk", Capacity: 5, Policy: bus.PolicyDropOldest})
		}), bus.ErrRestartRequired, []string{`"risk"`, "adding a queue needs a restart", "data, signal, order"}},
		{"removed queue", with(func(qs []bus.QueueConfig) []bus.QueueConfig { return qs[:2] }),
			bus.ErrRestartRequired, []string{`"order"`, "removing a queue needs a restart"}},
		{"renamed queue", with(func(qs []bus.QueueConfig) []bus.QueueConfig { qs[2].Name = "orders"; return qs }),
			bus.ErrRestartRequired, []string{`"orders"`, `"order"`}},
		{"durability changed", with(func(qs []bus.QueueConfig) []bus.QueueConfig { qs[2].Durable = true; return qs }),
			bus.ErrRestartRequired, []string{`"order"`, `durable "false" -> "true"`, "only capacity, policy and timeout"}},
		{"dead letter changed", with(func(qs []bus.QueueConfig) []bus.QueueConfig {
			qs[1].MaxDeliveries, qs[1].DeadLetter = 3, "order"
			return qs
		}), bus.ErrRestartRequired, []string{`"signal"`, `max_deliveries "0" -> "3"`, `dead_letter "" -> "order"`}},
		{"bad capacity", with(func(qs []bus.QueueConfig) []bus.QueueConfig { qs[1].Capacity = 0; return qs }),
			bus.ErrInvalidConfig, []string{"queues[1].capacity", "must be > 0"}},
		{"bad policy", with(func(qs []bus.QueueConfig) []bus.QueueConfig { qs[2].Policy = "wait"; return qs }),
			bus.ErrInvalidConfig, []string{`"wait"`, "drop, fail, block, drop_oldest"}},
		{"fail without timeout", with(func(qs []bus.QueueConfig) []bus.QueueConfig { qs[1].Timeout = 0; return qs }),
			bus.ErrInvalidConfig, []string{"queues[1].timeout", "must be > 0 for policy fail"}},
		{"empty", nil, bus.ErrInvalidConfig, []string{"at least one queue"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := newBus(t, bus.DefaultQueues())
			before := b.Stats()
			err := b.Reconfigure(tt.queues)
			if !errors.Is(err, tt.is) {
				t.Fatalf("Reconfigure = %v, want %v", err, tt.is)
			}
			for _, s := range tt.names {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %s", err, s)
				}
			}
			after := b.Stats()
			for name, st := range before {
				a := after[name]
				if a.MaxSize != st.MaxSize || a.Policy != st.Policy || a.TimeoutSeconds != st.TimeoutSeconds {
					t.Errorf("%s changed by a refused reconfigure: %+v -> %+v", name, st, a)
				}
			}
		})
	}
}

func TestReconfigureAfterShutdown(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	if _, err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Reconfigure(bus.DefaultQueues()); !errors.Is(err, bus.ErrShuttingDown) {
		t.Fatalf("Reconfigure after Shutdown = %v, want ErrShuttingDown", err)
	}
}

func TestReconfigureConcurrentWithPublishes(t *testing.T) {
	// Publishers, a consumer and a reconfigurer cycling through every
	// policy and several capacities, with time passing: every publish
	// ends exactly once, and each accepted event is delivered exactly once
	// unless drop_oldest evicted it. Run with -race.
	const publishers, perPublisher = 4, 200
	b, clk := newBus(t, oneQueue("q", 4, bus.PolicyBlock, 0))
	c, err := b.Subscribe("q", 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	received := map[int]int{}
	var consumer sync.WaitGroup
	consumer.Add(1)
	go func() {
		defer consumer.Done()
		for {
			d, err := c.Receive(ctx)
			if err != nil {
				return
			}
			var body struct{ ID int }
			if err := json.Unmarshal(d.Event.Payload, &body); err != nil {
				t.Errorf("payload %s: %v", d.Event.Payload, err)
				return
			}
			id := body.ID
			mu.Lock()
			received[id]++
			mu.Unlock()
			if err := c.Ack(d.Seq); err != nil {
				t.Errorf("Ack: %v", err)
				return
			}
		}
	}()

	var outcomes [publishers * perPublisher]bus.Outcome
	var pubs sync.WaitGroup
	for p := 0; p < publishers; p++ {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := 0; i < perPublisher; i++ {
				id := p*perPublisher + i
				out, err := b.Publish(context.Background(), event("T", id), "q")
				if out == bus.Failed || out == bus.Cancelled {
					t.Errorf("publish %d: %v, %v", id, out, err)
				}
				outcomes[id] = out
			}
		}()
	}

	var stop atomic.Bool
	var reconf sync.WaitGroup
	reconf.Add(1)
	go func() {
		defer reconf.Done()
		policies := []bus.Policy{bus.PolicyFail, bus.PolicyBlock, bus.PolicyDrop, bus.PolicyDropOldest}
		for i := 0; !stop.Load(); i++ {
			p := policies[i%len(policies)]
			timeout := time.Duration(0)
			if p.UsesTimeout() {
				timeout = time.Duration(1+i%3) * time.Second
			}
			if err := b.Reconfigure(oneQueue("q", 1+i%7, p, timeout)); err != nil {
				t.Errorf("Reconfigure: %v", err)
				return
			}
			clk.Advance(time.Second)
		}
		// Leave a queue that admits every remaining waiter as it drains.
		if err := b.Reconfigure(oneQueue("q", 4, bus.PolicyBlock, 0)); err != nil {
			t.Errorf("Reconfigure: %v", err)
		}
	}()
	pubsDone := make(chan struct{})
	go func() { pubs.Wait(); close(pubsDone) }()
	// The publishers may all be waiting on a block queue when the
	// reconfigurer stops; it always ends on one that drains.
	testkit.Eventually(t, "a quarter of the publishes done", func() bool {
		n := uint64(0)
		for _, v := range b.Stats()["q"].Published {
			n += v
		}
		return n > publishers*perPublisher/4
	})
	stop.Store(true)
	reconf.Wait()
	<-pubsDone

	st := b.Stats()["q"]
	accepted := 0
	for _, out := range outcomes {
		if out == bus.Accepted {
			accepted++
		}
	}
	if uint64(accepted) != st.Published[bus.Accepted] {
		t.Fatalf("%d publishes returned accepted, Stats counts %d", accepted, st.Published[bus.Accepted])
	}
	t.Logf("outcomes %v, drops %v", st.Published, st.DropsByReason)
	evicted := int(st.DropsByReason[bus.DropEvicted])
	testkit.Eventually(t, "every kept event delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(received) == accepted-evicted
	})
	cancel()
	consumer.Wait()
	for id, n := range received {
		if n != 1 || outcomes[id] != bus.Accepted {
			t.Errorf("event %d delivered %d times, publish outcome %v", id, n, outcomes[id])
		}
	}
	if st := b.Stats()["q"]; st.Size != 0 || st.Waiting != 0 || st.InFlight != 0 {
		t.Errorf("size/waiting/in flight = %d/%d/%d, want 0/0/0", st.Size, st.Waiting, st.InFlight)
	}
}

func TestReconfigureLogsWhatChanged(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	b, _ := newBus(t, bus.DefaultQueues(), bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	publishN(t, b, "signal", "T", 0, 5)
	queues := bus.DefaultQueues()
	queues[1].Capacity = 2
	reconfigure(t, b, queues)
	reconfigure(t, b, queues) // nothing changes: nothing logged

	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !strings.Contains(l, "level=DEBUG") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("logged %d lines, want 2 (signal reconfigured, signal over capacity):\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{"queue reconfigured", "queue=signal", "capacity=2 ", "old_capacity=100 ", "depth=5 "} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("%q lacks %s", lines[0], want)
		}
	}
	for _, want := range []string{"level=WARN", "new publishes wait for room", "depth=5 ", "capacity=2 "} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("%q lacks %s", lines[1], want)
		}
	}
}
