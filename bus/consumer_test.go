package bus_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

func oneQueue(name string, capacity int, p bus.Policy, timeout time.Duration) []bus.QueueConfig {
	return []bus.QueueConfig{{Name: name, Capacity: capacity, Policy: p, Timeout: timeout}}
}

func TestReceiveDeliversInFIFOOrderWithUniqueSeq(t *testing.T) {
	for _, p := range bus.Policies {
		t.Run(string(p), func(t *testing.T) {
			b, _ := newBus(t, oneQueue("q", 10, p, time.Second))
			publishN(t, b, "q", "T", 0, 10)
			c := subscribe(t, b, "q", 10)
			var seqs []uint64
			for i := 0; i < 10; i++ {
				d := mustReceive(t, c)
				if got := payloadID(t, d); got != i {
					t.Fatalf("delivery %d carries id %d", i, got)
				}
				if d.Queue != "q" || d.Event.Type != "T" || d.Redeliveries != 0 || d.EnqueuedAt.IsZero() {
					t.Errorf("delivery %d = %+v", i, d)
				}
				seqs = append(seqs, d.Seq)
			}
			if !slices.IsSorted(seqs) || len(slices.Compact(slices.Clone(seqs))) != 10 {
				t.Errorf("seqs not unique and increasing: %v", seqs)
			}
			for _, s := range seqs {
				if err := c.Ack(s); err != nil {
					t.Fatalf("Ack(%d): %v", s, err)
				}
			}
			st := b.Stats()["q"]
			if st.Size != 0 || st.InFlight != 0 || st.Delivered != 10 || st.Acked != 10 {
				t.Errorf("stats after acks = %+v", st)
			}
		})
	}
}

func TestReceiveBlocksUntilPublish(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 10, bus.PolicyBlock, 0))
	c := subscribe(t, b, "q", 1)
	got := make(chan bus.Delivery, 1)
	go func() {
		d, err := c.Receive(context.Background())
		if err == nil {
			got <- d
		}
		close(got)
	}()
	publishN(t, b, "q", "T", 7, 1)
	d, ok := <-got
	if !ok || payloadID(t, d) != 7 {
		t.Fatalf("blocked Receive got %+v, %v", d, ok)
	}
}

func TestCompetingConsumersEachEventDeliveredOnce(t *testing.T) {
	const n, consumers = 2000, 4
	b, _ := newBus(t, oneQueue("q", 64, bus.PolicyBlock, 0))
	var mu sync.Mutex
	seen := make(map[int]int)
	perConsumer := make([]int, consumers)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < consumers; i++ {
		c := subscribe(t, b, "q", 4)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := c.Receive(ctx)
				if err != nil {
					return
				}
				mu.Lock()
				seen[payloadID(t, d)]++
				perConsumer[i]++
				mu.Unlock()
				if err := c.Ack(d.Seq); err != nil {
					t.Errorf("Ack: %v", err)
				}
			}
		}()
	}
	publishN(t, b, "q", "T", 0, n)
	testkit.Eventually(t, "all events acked", func() bool { return b.Stats()["q"].Acked == n })
	cancel()
	wg.Wait()
	for i := 0; i < n; i++ {
		if seen[i] != 1 {
			t.Fatalf("event %d delivered %d times", i, seen[i])
		}
	}
	if st := b.Stats()["q"]; st.Delivered != n || st.Redelivered != 0 {
		t.Errorf("delivered/redelivered = %d/%d", st.Delivered, st.Redelivered)
	}
}

func TestPrefetchLimitsInFlight(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 10, bus.PolicyBlock, 0))
	publishN(t, b, "q", "T", 0, 5)
	c := subscribe(t, b, "q", 2)
	d1, d2 := mustReceive(t, c), mustReceive(t, c)
	if st := b.Stats()["q"]; st.InFlight != 2 || st.Size != 3 {
		t.Fatalf("in flight/size = %d/%d, want 2/3", st.InFlight, st.Size)
	}
	// At its limit, Receive must block although events are waiting: with a
	// cancelled ctx it then fails instead of handing one over.
	done, stop := context.WithCancel(context.Background())
	stop()
	if d, err := c.Receive(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Receive at the prefetch limit = %+v, %v; want it to block", d, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan bus.Delivery, 1)
	go func() {
		d, err := c.Receive(ctx)
		if err == nil {
			got <- d
		}
		close(got)
	}()
	// A second consumer must still get events: the first is at its limit.
	other := subscribe(t, b, "q", 1)
	if d := mustReceive(t, other); payloadID(t, d) != 2 {
		t.Fatalf("second consumer got id %d, want 2", payloadID(t, d))
	}
	select {
	case d := <-got:
		t.Fatalf("Receive past the prefetch limit returned %+v", d)
	default:
	}
	if err := c.Ack(d1.Seq); err != nil {
		t.Fatal(err)
	}
	d, ok := <-got
	if !ok || payloadID(t, d) != 3 {
		t.Fatalf("after ack, Receive got %+v, %v; want id 3", d, ok)
	}
	cancel()
	_ = d2
}

func TestNackRedeliversAtHeadInOriginalOrder(t *testing.T) {
	tests := []struct {
		name      string
		nackOrder []int // indexes into the first three deliveries
	}{
		{"in order", []int{0, 1, 2}},
		{"reversed", []int{2, 1, 0}},
		{"mixed", []int{1, 2, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := newBus(t, oneQueue("q", 10, bus.PolicyFail, time.Second))
			publishN(t, b, "q", "T", 0, 5)
			c := subscribe(t, b, "q", 3)
			ds := []bus.Delivery{mustReceive(t, c), mustReceive(t, c), mustReceive(t, c)}
			for _, i := range tt.nackOrder {
				if err := c.Nack(ds[i].Seq); err != nil {
					t.Fatalf("Nack: %v", err)
				}
			}
			var ids []int
			for i := 0; i < 5; i++ {
				d := mustReceive(t, c)
				ids = append(ids, payloadID(t, d))
				wantRe := 0
				if i < 3 {
					wantRe = 1
					if d.Seq != ds[i].Seq {
						t.Errorf("redelivery %d has seq %d, want %d (seq kept)", i, d.Seq, ds[i].Seq)
					}
				}
				if d.Redeliveries != wantRe {
					t.Errorf("id %d redeliveries = %d, want %d", ids[i], d.Redeliveries, wantRe)
				}
				if err := c.Ack(d.Seq); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(ids, []int{0, 1, 2, 3, 4}) {
				t.Errorf("delivery order after nack = %v, want [0 1 2 3 4]", ids)
			}
			if st := b.Stats()["q"]; st.Redelivered != 3 || st.Delivered != 8 {
				t.Errorf("redelivered/delivered = %d/%d, want 3/8", st.Redelivered, st.Delivered)
			}
		})
	}
}

func TestConsumerCloseReturnsUnackedToHeadInOrder(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 3, bus.PolicyBlock, 0))
	publishN(t, b, "q", "T", 0, 3)
	c1 := subscribe(t, b, "q", 3)
	d0, d1, d2 := mustReceive(t, c1), mustReceive(t, c1), mustReceive(t, c1)
	if err := c1.Ack(d1.Seq); err != nil {
		t.Fatal(err)
	}
	// Refill to capacity while two are in flight: size bounds waiting events only.
	publishN(t, b, "q", "T", 3, 3)
	c1.Close()
	if _, err := c1.Receive(context.Background()); !errors.Is(err, bus.ErrConsumerClosed) {
		t.Fatalf("Receive after Close: %v, want ErrConsumerClosed", err)
	}
	if err := c1.Ack(d0.Seq); !errors.Is(err, bus.ErrUnknownSeq) {
		t.Fatalf("Ack after Close: %v, want ErrUnknownSeq", err)
	}
	st := b.Stats()["q"]
	if st.Size != 5 || st.InFlight != 0 || st.Consumers != 0 {
		t.Fatalf("after close size/in flight/consumers = %d/%d/%d, want 5/0/0 (over capacity, nothing lost)", st.Size, st.InFlight, st.Consumers)
	}
	c2 := subscribe(t, b, "q", 10)
	var ids []int
	for i := 0; i < 5; i++ {
		d := mustReceive(t, c2)
		ids = append(ids, payloadID(t, d))
		if i == 0 && (d.Seq != d0.Seq || d.Redeliveries != 1) {
			t.Errorf("first redelivery seq/redeliveries = %d/%d, want %d/1", d.Seq, d.Redeliveries, d0.Seq)
		}
		if i == 1 && d.Seq != d2.Seq {
			t.Errorf("second redelivery seq = %d, want %d", d.Seq, d2.Seq)
		}
	}
	if !slices.Equal(ids, []int{0, 2, 3, 4, 5}) {
		t.Errorf("order after close = %v, want [0 2 3 4 5]", ids)
	}
}

func TestCloseUnblocksReceive(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 1, bus.PolicyBlock, 0))
	c, err := b.Subscribe("q", 1)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Receive(context.Background())
		errc <- err
	}()
	c.Close()
	c.Close() // idempotent
	if err := <-errc; !errors.Is(err, bus.ErrConsumerClosed) {
		t.Fatalf("Receive = %v, want ErrConsumerClosed", err)
	}
}

func TestReceiveHonoursContext(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 1, bus.PolicyBlock, 0))
	c := subscribe(t, b, "q", 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Receive(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Receive = %v, want context.Canceled", err)
	}
	// The cancelled receiver must not swallow the next event.
	publishN(t, b, "q", "T", 1, 1)
	if d := mustReceive(t, c); payloadID(t, d) != 1 {
		t.Fatalf("got id %d", payloadID(t, d))
	}
}

func TestAckNackUnknownSeq(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 4, bus.PolicyBlock, 0))
	publishN(t, b, "q", "T", 0, 1)
	c := subscribe(t, b, "q", 1)
	other := subscribe(t, b, "q", 1)
	d := mustReceive(t, c)
	tests := []struct {
		name string
		op   func() error
	}{
		{"ack never delivered", func() error { return c.Ack(999) }},
		{"nack never delivered", func() error { return c.Nack(999) }},
		{"ack on another consumer", func() error { return other.Ack(d.Seq) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, bus.ErrUnknownSeq) {
				t.Fatalf("err = %v, want ErrUnknownSeq", err)
			}
		})
	}
	if err := c.Ack(d.Seq); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(d.Seq); !errors.Is(err, bus.ErrUnknownSeq) {
		t.Fatalf("double ack = %v, want ErrUnknownSeq", err)
	}
}

func TestSubscribeValidation(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	tests := []struct {
		queue    string
		prefetch int
		want     error
	}{
		{"nope", 1, bus.ErrUnknownQueue},
		{"data", 0, bus.ErrInvalidConfig},
		{"data", -3, bus.ErrInvalidConfig},
	}
	for _, tt := range tests {
		if _, err := b.Subscribe(tt.queue, tt.prefetch); !errors.Is(err, tt.want) {
			t.Errorf("Subscribe(%q, %d) = %v, want %v", tt.queue, tt.prefetch, err, tt.want)
		}
	}
	if st := b.Stats()["data"]; st.Consumers != 0 {
		t.Errorf("consumers = %d after failed subscribes", st.Consumers)
	}
}

func TestConcurrentReceiveOnOneConsumer(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 10, bus.PolicyBlock, 0))
	c := subscribe(t, b, "q", 10)
	const receivers = 4
	got := make(chan int, receivers)
	for i := 0; i < receivers; i++ {
		go func() {
			d, err := c.Receive(context.Background())
			if err != nil {
				got <- -1
				return
			}
			got <- payloadID(t, d)
		}()
	}
	// Each publish happens after the receivers queued up: every one of them
	// must be woken in turn, none may sleep through its event.
	seen := map[int]bool{}
	for i := 0; i < receivers; i++ {
		publishN(t, b, "q", "T", i, 1)
		select {
		case id := <-got:
			seen[id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d published but no receiver returned", i)
		}
	}
	if len(seen) != receivers || seen[-1] {
		t.Errorf("received %v", seen)
	}
}

// TestStatsInFlightFollowsEveryEnd checks Stats' in-flight count through
// each way a delivery ends: an ack, a nack that requeues it, a nack that
// moves it to the dead-letter queue, and Close giving it back.
func TestStatsInFlightFollowsEveryEnd(t *testing.T) {
	b, _ := newBus(t, []bus.QueueConfig{
		{Name: "q", Capacity: 10, Policy: bus.PolicyBlock, MaxDeliveries: 2, DeadLetter: "dlq"},
		{Name: "dlq", Capacity: 10, Policy: bus.PolicyBlock},
	})
	c, err := b.Subscribe("q", 10)
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, "q", "T", 0, 3)
	ds := []bus.Delivery{mustReceive(t, c), mustReceive(t, c), mustReceive(t, c)}
	steps := []struct {
		name           string
		do             func() error
		inFlight, size int
	}{
		{"three delivered", func() error { return nil }, 3, 0},
		{"one acked", func() error { return c.Ack(ds[0].Seq) }, 2, 0},
		{"one nacked back to the queue", func() error { return c.Nack(ds[1].Seq) }, 1, 1},
		{"redelivered", func() error { ds[1] = mustReceive(t, c); return nil }, 2, 0},
		{"nacked past MaxDeliveries, to the dead-letter queue", func() error { return c.Nack(ds[1].Seq) }, 1, 0},
		{"the consumer closed", func() error { c.Close(); return nil }, 0, 1},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if st := b.Stats()["q"]; st.InFlight != s.inFlight || st.Size != s.size {
			t.Fatalf("%s: in flight/size = %d/%d, want %d/%d", s.name, st.InFlight, st.Size, s.inFlight, s.size)
		}
	}
	if st := b.Stats()["dlq"]; st.Size != 1 {
		t.Errorf("dead-letter queue holds %d, want 1", st.Size)
	}
}
