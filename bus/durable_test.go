package bus_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

func TestRestartGivesBackUnackedEventsInOrder(t *testing.T) {
	dir := t.TempDir()
	clk := testkit.NewClock()
	b, stop := openDurable(t, dir, durableQueues(), clk)
	if !b.Durable("order") || b.Durable("data") || !b.Stats()["order"].Durable || b.Stats()["data"].Durable {
		t.Fatalf("Durable: order %v data %v, want true false", b.Durable("order"), b.Durable("data"))
	}
	for i := 1; i <= 10; i++ {
		if out := publishID(t, b, "order", i, ""); out != bus.Accepted {
			t.Fatalf("publish %d: %v", i, out)
		}
	}
	c := subscribe(t, b, "order", 10)
	got := make([]bus.Delivery, 6)
	for i := range got {
		got[i] = mustReceive(t, c)
	}
	for i, d := range got {
		if d.Seq != uint64(i+1) || payloadID(t, d) != i+1 {
			t.Fatalf("delivery %d: seq %d id %d, want %d", i, d.Seq, payloadID(t, d), i+1)
		}
	}
	for _, seq := range []uint64{1, 2} {
		if err := c.Ack(seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Nack(3); err != nil {
		t.Fatal(err)
	}
	// 3 is waiting again after one delivery, 4 to 6 are in flight and 7
	// to 10 were never delivered.
	stop()

	b, _ = openDurable(t, dir, durableQueues(), clk)
	if st := b.Stats()["order"]; st.Size != 8 || !st.Durable {
		t.Fatalf("after restart: size %d durable %v, want 8 true", st.Size, st.Durable)
	}
	c = subscribe(t, b, "order", 10)
	var ids, redeliveries []int
	for range 8 {
		d := mustReceive(t, c)
		ids = append(ids, payloadID(t, d))
		redeliveries = append(redeliveries, d.Redeliveries)
		if uint64(payloadID(t, d)) != d.Seq {
			t.Fatalf("event %d came back as seq %d: seqs must survive", payloadID(t, d), d.Seq)
		}
		if d.EnqueuedAt.IsZero() || d.Event.Type != "ORDER" {
			t.Fatalf("delivery lost its fields: %+v", d)
		}
	}
	if fmt.Sprint(ids) != "[3 4 5 6 7 8 9 10]" {
		t.Fatalf("after restart got ids %v, want [3 4 5 6 7 8 9 10]: acked ones never back, order kept", ids)
	}
	if fmt.Sprint(redeliveries) != "[1 1 1 1 0 0 0 0]" {
		t.Fatalf("redeliveries %v, want [1 1 1 1 0 0 0 0]: nacked and in-flight events are redelivered", redeliveries)
	}
	publishN(t, b, "order", "ORDER", 11, 1)
	if d := mustReceive(t, c); d.Seq != 11 {
		t.Fatalf("first publish after restart got seq %d, want 11: seqs continue", d.Seq)
	}
}

func TestDedupeWithinWindowAndAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	clk := testkit.NewClock()
	qs := durableQueues()
	qs[0].DedupeWindow = 10 * 60e9 // 10 minutes
	b, stop := openDurable(t, dir, qs, clk)
	for _, q := range []string{"order", "data"} {
		if out := publishID(t, b, q, 1, "m-1"); out != bus.Accepted {
			t.Fatalf("%s: first publish of m-1: %v", q, out)
		}
		if out := publishID(t, b, q, 2, "m-1"); out != bus.Duplicate {
			t.Fatalf("%s: second publish of m-1: %v, want duplicate", q, out)
		}
		if st := b.Stats()[q]; st.Size != 1 || st.Published[bus.Duplicate] != 1 || st.Published[bus.Accepted] != 1 {
			t.Fatalf("%s: size %d published %v, want one event, one duplicate", q, st.Size, st.Published)
		}
	}
	// The memory queue's window is the default: past it the id is new.
	clk.Advance(bus.DefaultDedupeWindow + 1)
	if out := publishID(t, b, "data", 3, "m-1"); out != bus.Accepted {
		t.Fatalf("data: m-1 after its window: %v, want accepted", out)
	}
	stop()

	b, stop = openDurable(t, dir, qs, clk)
	if out := publishID(t, b, "order", 4, "m-1"); out != bus.Duplicate {
		t.Fatalf("order after restart: m-1 %v, want duplicate", out)
	}
	if out := publishID(t, b, "order", 5, "m-2"); out != bus.Accepted {
		t.Fatalf("order after restart: m-2 %v, want accepted", out)
	}
	stop()
	clk.Advance(10 * 60e9)
	b, _ = openDurable(t, dir, qs, clk)
	if out := publishID(t, b, "order", 6, "m-1"); out != bus.Accepted {
		t.Fatalf("order after its window: m-1 %v, want accepted", out)
	}
	if out := publishID(t, b, "order", 7, "m-2"); out != bus.Duplicate {
		t.Fatalf("order: m-2 still in its window: %v, want duplicate", out)
	}
}

func TestMsgIDTooLongFails(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	ev := event("ORDER", 1)
	ev.MsgID = strings.Repeat("x", bus.MaxMsgIDBytes+1)
	out, err := b.Publish(context.Background(), ev, "order")
	if out != bus.Failed || !errors.Is(err, bus.ErrInvalidEvent) || !strings.Contains(err.Error(), "257") || !strings.Contains(err.Error(), "256") {
		t.Fatalf("publish with a 257-byte msg id: %v, %v; want Failed, ErrInvalidEvent naming 257 and 256", out, err)
	}
}

func TestDuplicateOfPublishBeingStoredWaitsForIt(t *testing.T) {
	fsys := &faultFS{}
	b, _ := openDurable(t, t.TempDir(), durableQueues(), testkit.NewClock(), bus.WithWALOptions(wal.Options{FS: fsys}))
	open := fsys.holdSyncs()
	results := make(chan string, 3)
	ev := event("ORDER", 1)
	ev.MsgID = "m-1"
	for i := range 2 {
		b.PublishAsync(context.Background(), ev, "order", func(o bus.Outcome, err error) {
			results <- fmt.Sprintf("%d:%s:%v", i, o, err)
		})
	}
	select {
	case r := <-results:
		t.Fatalf("answered %s before the sync", r)
	default:
	}
	if st := b.Stats()["order"]; st.Size != 0 {
		t.Fatalf("size %d while the append is not synced: consumers must not see it yet", st.Size)
	}
	open()
	got := []string{<-results, <-results}
	if got[0] != "0:accepted:<nil>" || got[1] != "1:duplicate:<nil>" {
		t.Fatalf("got %v, want the first accepted, then the duplicate", got)
	}
	if st := b.Stats()["order"]; st.Size != 1 {
		t.Fatalf("size %d, want 1", st.Size)
	}
}

// TestGroupCommitAcrossPublishers: publishes from several goroutines
// (connections), each with several in flight (pipelined frames), share
// syncs: while one sync runs, every later append joins the next.
func TestGroupCommitAcrossPublishers(t *testing.T) {
	fsys := &faultFS{}
	b, _ := openDurable(t, t.TempDir(), durableQueues(), testkit.NewClock(), bus.WithWALOptions(wal.Options{FS: fsys}))
	open := fsys.holdSyncs()
	before := fsys.syncCount()
	const conns, perConn = 4, 10
	answers := make(chan bus.Outcome, conns*perConn)
	var wg sync.WaitGroup
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perConn {
				b.PublishAsync(context.Background(), event("ORDER", c*100+i), "order", func(o bus.Outcome, _ error) { answers <- o })
			}
		}()
	}
	wg.Wait()
	if len(answers) != 0 {
		t.Fatalf("%d publishes answered before their sync", len(answers))
	}
	open()
	for range conns * perConn {
		if o := <-answers; o != bus.Accepted {
			t.Fatalf("outcome %v", o)
		}
	}
	if n := fsys.syncCount() - before; n > 3 {
		t.Fatalf("%d syncs for %d publishes issued while one sync was held: want them shared (at most 3)", n, conns*perConn)
	}
}

func TestReservedSlotsKeepCapacity(t *testing.T) {
	fsys := &faultFS{}
	qs := []bus.QueueConfig{{Name: "order", Capacity: 2, Policy: bus.PolicyFail, Timeout: 1e9, Durable: true}}
	clk := testkit.NewClock()
	b, _ := openDurable(t, t.TempDir(), qs, clk, bus.WithWALOptions(wal.Options{FS: fsys}))
	open := fsys.holdSyncs()
	results := make(chan bus.Outcome, 3)
	for i := range 3 {
		b.PublishAsync(context.Background(), event("ORDER", i), "order", func(o bus.Outcome, _ error) { results <- o })
	}
	// Two slots are reserved by appends not yet synced: the third waits.
	testkit.Eventually(t, "the third publish waits for room", func() bool { return b.Stats()["order"].Waiting == 1 })
	open()
	if a, c := <-results, <-results; a != bus.Accepted || c != bus.Accepted {
		t.Fatalf("first two: %v %v", a, c)
	}
	clk.Advance(1e9)
	if o := <-results; o != bus.TimedOut {
		t.Fatalf("third publish into a queue full of stored events: %v, want timeout", o)
	}
}

// TestFailedWriteFreesItsSlots: the publishes of one write that fails are
// all answered Failed and give their reserved slots back at once, so that
// a publisher waiting for room gets in (and is answered too).
func TestFailedWriteFreesItsSlots(t *testing.T) {
	fsys := &faultFS{}
	qs := []bus.QueueConfig{{Name: "order", Capacity: 3, Policy: bus.PolicyBlock, Durable: true}}
	b, _ := openDurable(t, t.TempDir(), qs, testkit.NewClock(), bus.WithWALOptions(wal.Options{FS: fsys}))
	open := fsys.holdSyncs()
	results := make(chan string, 4)
	publish := func(i int) {
		b.PublishAsync(context.Background(), event("ORDER", i), "order", func(o bus.Outcome, err error) {
			results <- fmt.Sprintf("%d:%s:%v", i, o, errors.Is(err, bus.ErrStorage))
		})
	}
	publish(1)
	testkit.Eventually(t, "the first publish's sync", func() bool { return fsys.syncCount() == 1 })
	publish(2) // 2 and 3 share the next write, which fails
	publish(3)
	publish(4) // the queue is full of reserved slots: 4 waits
	testkit.Eventually(t, "the fourth publish waits for room", func() bool { return b.Stats()["order"].Waiting == 1 })
	fsys.setFull(true)
	open()
	got := []string{<-results, <-results, <-results, <-results}
	want := []string{"1:accepted:false", "2:error:true", "3:error:true", "4:error:true"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("answers %v, want %v", got, want)
	}
	if st := b.Stats()["order"]; st.Size != 1 || st.Waiting != 0 {
		t.Fatalf("size %d, waiting %d; want the one stored event and no waiter", st.Size, st.Waiting)
	}
}

func TestStorageFailureFailsPublishAndRecovers(t *testing.T) {
	dir := t.TempDir()
	fsys := &faultFS{}
	clk := testkit.NewClock()
	b, stop := openDurable(t, dir, durableQueues(), clk, bus.WithWALOptions(wal.Options{FS: fsys}))
	publishN(t, b, "order", "ORDER", 1, 1)
	fsys.setFull(true)
	ev := event("ORDER", 2)
	ev.MsgID = "m-2"
	out, err := b.Publish(context.Background(), ev, "order")
	if out != bus.Failed || !errors.Is(err, bus.ErrStorage) || !errors.Is(err, wal.ErrStorage) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("publish on a full disk: %v, %v; want Failed wrapping bus.ErrStorage, wal.ErrStorage and ENOSPC", out, err)
	}
	// PublishAsync reports the same through done.
	res := make(chan error, 1)
	b.PublishAsync(context.Background(), event("ORDER", 3), "order", func(o bus.Outcome, err error) { res <- err })
	if err := <-res; !errors.Is(err, bus.ErrStorage) {
		t.Fatalf("PublishAsync on a full disk: %v", err)
	}
	if st := b.Stats()["order"]; st.Size != 1 || st.Published[bus.Failed] != 2 {
		t.Fatalf("size %d published %v, want 1 event and 2 failures", st.Size, st.Published)
	}
	fsys.setFull(false)
	// The failed msg id was not accepted: the retry is stored.
	if out := publishID(t, b, "order", 2, "m-2"); out != bus.Accepted {
		t.Fatalf("retry after the disk recovered: %v", out)
	}
	stop()
	b, _ = openDurable(t, dir, durableQueues(), clk)
	c := subscribe(t, b, "order", 10)
	if a, z := payloadID(t, mustReceive(t, c)), payloadID(t, mustReceive(t, c)); a != 1 || z != 2 {
		t.Fatalf("after restart got %d, %d; want 1, 2 (failed publishes never come back)", a, z)
	}
	if st := b.Stats()["order"]; st.Size != 0 {
		t.Fatalf("%d more events came back", st.Size)
	}
}

func TestDeadLetterAfterMaxDeliveries(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(fmt.Sprintf("durable=%v", durable), func(t *testing.T) {
			dir := t.TempDir()
			clk := testkit.NewClock()
			qs := durableQueues()
			for i := range qs {
				qs[i].Durable = durable
			}
			b, stop := openDurable(t, dir, qs, clk)
			if out := publishID(t, b, "order", 7, "m-7"); out != bus.Accepted {
				t.Fatal(out)
			}
			c := subscribe(t, b, "order", 1)
			d := mustReceive(t, c)
			if err := c.NackReason(d.Seq, "bad price"); err != nil {
				t.Fatal(err)
			}
			d = mustReceive(t, c)
			if d.Redeliveries != 1 {
				t.Fatalf("second delivery: redeliveries %d", d.Redeliveries)
			}
			if err := c.NackReason(d.Seq, "still bad"); err != nil {
				t.Fatal(err)
			}
			// A durable dlq answers the move once its log has it.
			testkit.Eventually(t, "the dead letter is in dlq", func() bool {
				st := b.Stats()
				return st["dlq"].Size == 1 && st["order"].DeadLettered == 1
			})
			if st := b.Stats()["order"]; st.Size != 0 || st.InFlight != 0 {
				t.Fatalf("order: %+v, want nothing left", st)
			}
			want := bus.DeadLetter{Queue: "order", Seq: 1, Deliveries: 2, Reason: "still bad"}
			check := func(d bus.Delivery) {
				t.Helper()
				if d.DeadLetter == nil || *d.DeadLetter != want {
					t.Fatalf("dead letter info %+v, want %+v", d.DeadLetter, want)
				}
				if d.Queue != "dlq" || d.Event.Type != "ORDER" || payloadID(t, d) != 7 || d.Event.MsgID != "m-7" {
					t.Fatalf("dead letter %+v lost its event", d)
				}
			}
			dc := subscribe(t, b, "dlq", 1)
			check(mustReceive(t, dc))
			stop()
			if !durable {
				return
			}
			b, _ = openDurable(t, dir, qs, clk)
			if st := b.Stats()["order"]; st.Size != 0 {
				t.Fatalf("the dead-lettered event came back to order: size %d", st.Size)
			}
			dc = subscribe(t, b, "dlq", 1)
			d = mustReceive(t, dc)
			check(d)
			if d.Redeliveries != 1 {
				t.Fatalf("the dead letter in flight at the restart: redeliveries %d, want 1", d.Redeliveries)
			}
		})
	}
}

func TestLongNackReasonIsCut(t *testing.T) {
	b, _ := openDurable(t, t.TempDir(), durableQueues(), testkit.NewClock())
	publishN(t, b, "order", "ORDER", 1, 1)
	c := subscribe(t, b, "order", 1)
	long := strings.Repeat("é", bus.MaxReasonBytes) // 2 bytes a rune
	for range 2 {
		if err := c.NackReason(mustReceive(t, c).Seq, long); err != nil {
			t.Fatal(err)
		}
	}
	d := mustReceive(t, subscribe(t, b, "dlq", 1))
	if r := d.DeadLetter.Reason; len(r) != bus.MaxReasonBytes || !strings.HasPrefix(long, r) {
		t.Fatalf("reason of %d bytes, want the first %d bytes of it", len(r), bus.MaxReasonBytes)
	}
}

func TestDeadLetterOnAbandonPastCapacity(t *testing.T) {
	clk := testkit.NewClock()
	qs := durableQueues()
	b, _ := openDurable(t, t.TempDir(), qs, clk)
	// Fill dlq to its capacity of 4 with ordinary events.
	publishN(t, b, "dlq", "FILL", 1, 4)
	publishN(t, b, "order", "ORDER", 1, 1)
	for i := range 2 {
		c, err := b.Subscribe("order", 1)
		if err != nil {
			t.Fatal(err)
		}
		mustReceive(t, c)
		if i == 0 {
			if err := c.NackReason(1, "first"); err != nil {
				t.Fatal(err)
			}
		}
		c.Close() // the second delivery is abandoned: the last one
	}
	testkit.Eventually(t, "the dead letter joins the full dlq", func() bool {
		st := b.Stats()
		return st["dlq"].Size == 5 && st["order"].DeadLettered == 1
	})
	if st := b.Stats()["order"]; st.DeadLettered != 1 || st.Size != 0 {
		t.Fatalf("order: %+v", st)
	}
	dc := subscribe(t, b, "dlq", 10)
	for range 4 {
		mustReceive(t, dc)
	}
	d := mustReceive(t, dc)
	if d.DeadLetter == nil || d.DeadLetter.Reason != "first" || d.DeadLetter.Deliveries != 2 {
		t.Fatalf("dead letter %+v, want the last nack's reason and 2 deliveries", d.DeadLetter)
	}
}

func TestEvictedDurableEventNeverComesBack(t *testing.T) {
	dir := t.TempDir()
	clk := testkit.NewClock()
	qs := []bus.QueueConfig{{Name: "q", Capacity: 2, Policy: bus.PolicyDropOldest, Durable: true}}
	b, stop := openDurable(t, dir, qs, clk)
	publishN(t, b, "q", "E", 1, 3)
	stop()
	b, _ = openDurable(t, dir, qs, clk)
	c := subscribe(t, b, "q", 2)
	if a, z := payloadID(t, mustReceive(t, c)), payloadID(t, mustReceive(t, c)); a != 2 || z != 3 {
		t.Fatalf("after restart got %d, %d; want 2, 3: the evicted event stays gone", a, z)
	}
}

func TestFsyncIntervalKeepsEventsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	clk := testkit.NewClock()
	qs := []bus.QueueConfig{{Name: "signal", Capacity: 8, Policy: bus.PolicyFail, Timeout: 1e9,
		Durable: true, Fsync: bus.FsyncInterval, FsyncInterval: 5e6}}
	b, stop := openDurable(t, dir, qs, clk)
	publishN(t, b, "signal", "SIG", 1, 3)
	stop()
	b, _ = openDurable(t, dir, qs, clk)
	c := subscribe(t, b, "signal", 3)
	for want := 1; want <= 3; want++ {
		if got := payloadID(t, mustReceive(t, c)); got != want {
			t.Fatalf("after restart got %d, want %d", got, want)
		}
	}
}

func TestWithoutDataDirDurableIsIgnored(t *testing.T) {
	b, _ := newBus(t, durableQueues())
	for _, q := range b.Queues() {
		if b.Durable(q) || b.Stats()[q].Durable {
			t.Fatalf("queue %s reports durable without a data dir", q)
		}
	}
	publishN(t, b, "order", "ORDER", 1, 1)
	c := subscribe(t, b, "order", 1)
	if d := mustReceive(t, c); d.Seq != 1 {
		t.Fatalf("seq %d", d.Seq)
	}
}

func TestSecondBusOnDataDirFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	openDurable(t, dir, durableQueues(), testkit.NewClock())
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v, %v; want mode 0700", fi, err)
	}
	_, err := bus.New(durableQueues(), bus.WithDataDir(dir))
	if !errors.Is(err, wal.ErrLocked) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second New on %s: %v; want ErrLocked naming the dir", dir, err)
	}
}

func TestCorruptLogFailsNew(t *testing.T) {
	dir := t.TempDir()
	clk := testkit.NewClock()
	b, stop := openDurable(t, dir, durableQueues(), clk)
	publishN(t, b, "order", "ORDER", 1, 3)
	stop()
	segs, err := filepath.Glob(filepath.Join(dir, "queues", "order", "*.wal"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	raw, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff // damage in the middle, not a torn tail
	if err := os.WriteFile(segs[0], raw, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = bus.New(durableQueues(), bus.WithDataDir(dir))
	if !errors.Is(err, wal.ErrCorrupt) || !strings.Contains(err.Error(), segs[0]) {
		t.Fatalf("New on a damaged log: %v; want ErrCorrupt naming %s", err, segs[0])
	}
	// The failed New released everything: a good one can start.
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	openDurable(t, dir, durableQueues(), clk)
}

// TestDurableConcurrentAtLeastOnceInOrder runs publishers, consumers that
// ack, nack and go away at random, and a restart, on a durable queue:
// every accepted event is delivered, and each publisher's events come in
// its own order.
func TestDurableConcurrentAtLeastOnceInOrder(t *testing.T) {
	dir := t.TempDir()
	clk := testkit.NewClock()
	qs := []bus.QueueConfig{{Name: "order", Capacity: 32, Policy: bus.PolicyBlock, Durable: true}}
	b, stop := openDurable(t, dir, qs, clk)
	const publishers, perPublisher, consumers = 4, 150, 3
	var mu sync.Mutex
	seen := make(map[int]uint64) // publisher*1000+i -> seq
	var firstSeqs [consumers][]uint64
	ctx, cancel := context.WithCancel(context.Background())
	var cwg sync.WaitGroup
	for ci := range consumers {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			c, err := b.Subscribe("order", 4)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for n := 0; ; n++ {
				d, err := c.Receive(ctx)
				if err != nil {
					return
				}
				id := payloadIDNoT(d)
				if d.Redeliveries == 0 {
					firstSeqs[ci] = append(firstSeqs[ci], d.Seq)
				}
				if n%7 == 3 && d.Redeliveries == 0 {
					if err := c.Nack(d.Seq); err != nil {
						t.Error(err)
					}
					continue
				}
				mu.Lock()
				seen[id] = d.Seq
				mu.Unlock()
				if err := c.Ack(d.Seq); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	var pwg sync.WaitGroup
	for p := range publishers {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for i := range perPublisher {
				if out, err := b.Publish(context.Background(), event("ORDER", p*1000+i), "order"); out != bus.Accepted {
					t.Errorf("publish: %v, %v", out, err)
					return
				}
			}
		}()
	}
	pwg.Wait()
	testkit.Eventually(t, "every event acked", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == publishers*perPublisher
	})
	cancel()
	cwg.Wait()
	for p := range publishers {
		for i := 1; i < perPublisher; i++ {
			if seen[p*1000+i] <= seen[p*1000+i-1] {
				t.Fatalf("publisher %d: event %d got seq %d after event %d's %d", p, i, seen[p*1000+i], i-1, seen[p*1000+i-1])
			}
		}
	}
	for ci, s := range firstSeqs {
		for i := 1; i < len(s); i++ {
			if s[i] <= s[i-1] {
				t.Fatalf("consumer %d got first deliveries out of queue order: %v", ci, s)
			}
		}
	}
	stop()
	b, _ = openDurable(t, dir, qs, clk)
	if st := b.Stats()["order"]; st.Size != 0 {
		t.Fatalf("%d acked events came back after the restart", st.Size)
	}
}

func payloadIDNoT(d bus.Delivery) int {
	var id int
	fmt.Sscanf(string(d.Event.Payload), `{"id":%d}`, &id)
	return id
}

// TestSnapshotOfRunningBusKeepsAccepted opens a copy of a running bus's
// logs, taken without shutting it down: what a kill -9 would leave on
// disk. Every accepted, unacked event is in it, in order.
func TestSnapshotOfRunningBusKeepsAccepted(t *testing.T) {
	dir := t.TempDir()
	clk := testkit.NewClock()
	qs := durableQueues()
	b, _ := openDurable(t, dir, qs, clk)
	publishN(t, b, "order", "ORDER", 1, 20)
	c := subscribe(t, b, "order", 5)
	for range 5 {
		if err := c.Ack(mustReceive(t, c).Seq); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		mustReceive(t, c) // in flight at the "crash"
	}
	// Deliveries and acks are written without waiting for them, in log
	// order: once a later publish is answered, they are on disk too.
	publishN(t, b, "order", "ORDER", 21, 1)
	snap := t.TempDir()
	for _, q := range []string{"order", "dlq"} {
		segs, err := filepath.Glob(filepath.Join(dir, "queues", q, "*.wal"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(snap, "queues", q), 0o700); err != nil {
			t.Fatal(err)
		}
		for _, s := range segs {
			raw, err := os.ReadFile(s)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(snap, "queues", q, filepath.Base(s)), raw, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	b2, _ := openDurable(t, snap, qs, clk)
	c2 := subscribe(t, b2, "order", 20)
	var ids []int
	for b2.Stats()["order"].Size > 0 {
		d := mustReceive(t, c2)
		ids = append(ids, payloadID(t, d))
		if payloadID(t, d) >= 6 && payloadID(t, d) <= 8 && d.Redeliveries != 1 {
			t.Fatalf("event %d was in flight: redeliveries %d, want 1", payloadID(t, d), d.Redeliveries)
		}
	}
	if fmt.Sprint(ids) != fmt.Sprint([]int{6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21}) {
		t.Fatalf("recovered %v, want 6..21 in order", ids)
	}
}

func TestDuplicateOfWaitingPublishIsNotEnqueued(t *testing.T) {
	b, _ := newBus(t, []bus.QueueConfig{{Name: "q", Capacity: 1, Policy: bus.PolicyBlock}})
	publishN(t, b, "q", "E", 1, 1)
	ev := event("E", 2)
	ev.MsgID = "m-2"
	first := publishAsync(context.Background(), b, ev, "q")
	testkit.Eventually(t, "the first waits", func() bool { return b.Stats()["q"].Waiting == 1 })
	second := publishAsync(context.Background(), b, ev, "q")
	testkit.Eventually(t, "both wait", func() bool { return b.Stats()["q"].Waiting == 2 })
	c := subscribe(t, b, "q", 2)
	mustReceive(t, c)
	if r := await(t, first); r.out != bus.Accepted {
		t.Fatalf("first: %v %v", r.out, r.err)
	}
	mustReceive(t, c)
	if r := await(t, second); r.out != bus.Duplicate {
		t.Fatalf("second publish of m-2: %v %v, want duplicate", r.out, r.err)
	}
	if st := b.Stats()["q"]; st.Size != 0 {
		t.Fatalf("size %d: the duplicate was enqueued", st.Size)
	}
}

func TestShutdownAnswersPublishesBeingStored(t *testing.T) {
	dir := t.TempDir()
	fsys := &faultFS{}
	clk := testkit.NewClock()
	b, stop := openDurable(t, dir, durableQueues(), clk, bus.WithWALOptions(wal.Options{FS: fsys}))
	open := fsys.holdSyncs()
	answers := make(chan bus.Outcome, 3)
	for i := range 3 {
		b.PublishAsync(context.Background(), event("ORDER", i+1), "order", func(o bus.Outcome, _ error) { answers <- o })
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		stop()
	}()
	testkit.Eventually(t, "Shutdown refuses publishes", b.Draining)
	open()
	<-stopped
	for range 3 {
		if o := <-answers; o != bus.Accepted {
			t.Fatalf("publish being stored at Shutdown: %v, want accepted", o)
		}
	}
	b, _ = openDurable(t, dir, durableQueues(), clk)
	if st := b.Stats()["order"]; st.Size != 3 {
		t.Fatalf("after restart: %d events, want the 3 accepted at Shutdown", st.Size)
	}
}
