package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/client"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// These tests run the real binary on a data dir and kill it with SIGKILL:
// what a durable queue answered accepted must come back after the restart,
// a retried msg_id must stay a duplicate across it, and seqs must never be
// given twice.

// durableSidecar starts and restarts the built binary on one socket and
// one data dir.
type durableSidecar struct {
	bin, socket, dataDir, config string
}

func newDurableSidecar(t *testing.T, config string) *durableSidecar {
	t.Helper()
	bin, err := testkit.BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &durableSidecar{bin: bin, socket: socketPath(t), dataDir: t.TempDir(), config: config}
}

func (d *durableSidecar) start(t *testing.T) *testkit.Sidecar {
	t.Helper()
	return testkit.StartSidecar(t, testkit.SidecarConfig{
		Binary: d.bin, Socket: d.socket, NoAdmin: true, Config: d.config,
		Args: []string{"--data-dir", d.dataDir, "--telemetry-disabled", "--drain-timeout", "2s"},
	})
}

// kill9 ends the sidecar with SIGKILL and waits for it.
func kill9(t *testing.T, p *testkit.Sidecar) {
	t.Helper()
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := p.Wait(); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("sidecar exited %d before the kill, want %d:\n%s", code, 128+int(syscall.SIGKILL), p.Logs())
	}
}

func orderEvent(id string) bus.Event {
	return bus.Event{Type: "ORDER_PLACED", Payload: json.RawMessage(fmt.Sprintf(`{"id":%q}`, id)), MsgID: id}
}

func orderID(t *testing.T, d bus.Delivery) string {
	var p struct{ ID string }
	if err := json.Unmarshal(d.Event.Payload, &p); err != nil || p.ID == "" {
		t.Errorf("delivery %d has payload %s, want an order id", d.Seq, d.Event.Payload)
	}
	return p.ID
}

// ledger is what the crash test's consumers saw: the seq of each order
// and the order of each seq, either of which must never change.
type ledger struct {
	mu      sync.Mutex
	seqOf   map[string]uint64
	idOf    map[uint64]string
	clashes []string
}

func (l *ledger) record(id string, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.seqOf[id]; ok && s != seq {
		l.clashes = append(l.clashes, fmt.Sprintf("order %s enqueued twice: seqs %d and %d", id, s, seq))
	}
	if o, ok := l.idOf[seq]; ok && o != id {
		l.clashes = append(l.clashes, fmt.Sprintf("seq %d reused: orders %s and %s", seq, o, id))
	}
	l.seqOf[id], l.idOf[seq] = seq, id
}

func (l *ledger) has(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.seqOf[id]
	return ok
}

// TestCrashKill9UnderLoad publishes orders with msg_ids from several
// publishers while a consumer acks them, kills the sidecar with SIGKILL
// at a random point, restarts it on the same data dir and socket, and
// retries every publish whose answer the crash took with the same msg_id.
// Every other round runs without a consumer, so that the kill finds
// accepted orders waiting in the queue. At the end every order answered
// accepted (or duplicate) has been
// delivered, none twice under different seqs, and no seq was given to two
// orders.
func TestCrashKill9UnderLoad(t *testing.T) {
	const rounds, publishers = 8, 4
	sc := newDurableSidecar(t, "")
	led := &ledger{seqOf: map[string]uint64{}, idOf: map[uint64]string{}}
	accepted := map[string]bool{}   // answered accepted or duplicate
	duplicates := map[string]bool{} // answered duplicate
	var unknown []string            // sent when the sidecar died: outcome unknown
	var mu sync.Mutex
	next := 0
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	deadline := time.Now().Add(45 * time.Second)

	consume := func(ctx context.Context, c *client.Client) error {
		return c.Subscribe(ctx, "order", 64, func(_ context.Context, d bus.Delivery) error {
			led.record(orderID(t, d), d.Seq)
			return nil
		})
	}
	for round := 1; round <= rounds && time.Now().Before(deadline); round++ {
		p := sc.start(t)
		ctx, cancel := context.WithCancel(t.Context())
		cons, err := client.Dial(ctx, sc.socket)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		// Odd rounds have no consumer, so that the kill finds the queue
		// full of accepted, undelivered orders.
		withConsumer := round%2 == 0
		if withConsumer {
			wg.Go(func() { _ = consume(ctx, cons) })
		}
		st, err := cons.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		room := st["order"].MaxSize - st["order"].Size // what the restart left waiting takes room
		// The kill point: a random number of acceptances into the round,
		// counted from before the publishers start: without a consumer the
		// round can accept only room more, however fast they are.
		mu.Lock()
		target := len(accepted)
		switch {
		case withConsumer:
			target += 1 + rng.IntN(400)
		case room > 0: // without a consumer, publishers block once the queue is full
			target += 1 + rng.IntN(room)
		}
		retries := unknown
		unknown = nil
		mu.Unlock()
		for g := range publishers {
			pub, err := client.Dial(ctx, sc.socket)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				defer pub.Close()
				for i := 0; ctx.Err() == nil; i++ {
					var id string
					mu.Lock()
					if len(retries) > 0 && i%publishers == g {
						id, retries = retries[0], retries[1:]
					} else {
						next++
						id = fmt.Sprintf("o%d", next)
					}
					mu.Unlock()
					out, err := pub.Publish(ctx, orderEvent(id), "order")
					mu.Lock()
					switch out {
					case bus.Accepted:
						accepted[id] = true
					case bus.Duplicate:
						accepted[id], duplicates[id] = true, true
					default:
						if !errors.Is(err, client.ErrConnectionLost) && !errors.Is(err, context.Canceled) {
							t.Errorf("publish %s: %v %v", id, out, err)
						}
						unknown = append(unknown, id)
					}
					mu.Unlock()
					if out != bus.Accepted && out != bus.Duplicate {
						return
					}
				}
			})
		}
		testkit.Eventually(t, fmt.Sprintf("%d orders accepted in round %d", target, round), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(accepted) >= target
		})
		kill9(t, p)
		cancel()
		wg.Wait()
		cons.Close()
	}

	// The last start delivers everything still held, and retries of the
	// unknown publishes land once at most.
	p := sc.start(t)
	c, err := client.Dial(t.Context(), sc.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	subErr := make(chan error, 1)
	go func() { subErr <- consume(ctx, c) }()
	mu.Lock()
	retries := unknown
	mu.Unlock()
	for _, id := range retries {
		out, err := c.Publish(t.Context(), orderEvent(id), "order")
		switch out {
		case bus.Accepted:
			accepted[id] = true
		case bus.Duplicate:
			accepted[id], duplicates[id] = true, true
		default:
			t.Fatalf("retry of %s on a running sidecar: %v %v", id, out, err)
		}
	}
	testkit.Eventually(t, "every accepted order delivered", func() error {
		for id := range accepted {
			if !led.has(id) {
				return fmt.Errorf("order %s was answered accepted and never delivered (%d accepted, %d duplicates)", id, len(accepted), len(duplicates))
			}
		}
		return nil
	})
	cancel()
	<-subErr
	led.mu.Lock()
	defer led.mu.Unlock()
	for _, c := range led.clashes {
		t.Error(c)
	}
	t.Logf("%d orders accepted, %d retries after a kill answered duplicate, %d seqs", len(accepted), len(duplicates), len(led.idOf))
	if code := p.Stop(); code != 0 {
		t.Errorf("exit %d:\n%s", code, p.Logs())
	}
}

// TestDoneWhen is the acceptance, on the real binary: orders
// published, the sidecar killed with SIGKILL and started again, every
// order consumed; a retried msg_id answered duplicate before and after the
// restart; a poison order dead-lettered with its origin and reason.
func TestDoneWhen(t *testing.T) {
	sc := newDurableSidecar(t, `
queues:
  - name: order
    max_deliveries: 3
    dead_letter: order_dead
  - name: order_dead
    capacity: 100
    policy: block
    durable: true
`)
	p := sc.start(t)
	ctx := t.Context()
	c, err := client.Dial(ctx, sc.socket)
	if err != nil {
		t.Fatal(err)
	}
	const orders = 20
	for i := range orders {
		if out, err := c.Publish(ctx, orderEvent(fmt.Sprintf("ord-%d", i)), "order"); out != bus.Accepted {
			t.Fatalf("publish ord-%d: %v %v", i, out, err)
		}
	}
	if out, err := c.Publish(ctx, orderEvent("ord-0"), "order"); out != bus.Duplicate || err != nil {
		t.Fatalf("retry of ord-0 before the restart: %v %v, want Duplicate", out, err)
	}
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st["order"].Durable || st["data"].Durable {
		t.Fatalf("durable: order %v, data %v; want order durable with a data dir, data not", st["order"].Durable, st["data"].Durable)
	}
	c.Close()

	kill9(t, p)
	p = sc.start(t)
	c, err = client.Dial(ctx, sc.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if out, err := c.Publish(ctx, orderEvent("ord-1"), "order"); out != bus.Duplicate || err != nil {
		t.Fatalf("retry of ord-1 after the restart: %v %v, want Duplicate", out, err)
	}

	// Every order is back, in order, once.
	got := make(chan string, orders)
	cctx, stop := context.WithCancel(ctx)
	subErr := make(chan error, 1)
	go func() {
		subErr <- c.Subscribe(cctx, "order", 8, func(_ context.Context, d bus.Delivery) error {
			got <- orderID(t, d)
			return nil
		})
	}()
	for i := range orders {
		select {
		case id := <-got:
			if want := fmt.Sprintf("ord-%d", i); id != want {
				t.Fatalf("delivery %d after the restart is %s, want %s", i, id, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d orders came back after kill -9", i, orders)
		}
	}
	stop()
	<-subErr

	// A poison order: every delivery is nacked until it moves to order_dead.
	if out, err := c.Publish(ctx, orderEvent("poison"), "order"); out != bus.Accepted {
		t.Fatalf("publish poison: %v %v", out, err)
	}
	pctx, stopPoison := context.WithCancel(ctx)
	go func() {
		subErr <- c.Subscribe(pctx, "order", 1, func(context.Context, bus.Delivery) error {
			return errors.New("risk check failed: symbol halted")
		})
	}()
	dead := make(chan bus.Delivery, 1)
	dctx, stopDead := context.WithCancel(ctx)
	deadErr := make(chan error, 1)
	go func() {
		deadErr <- c.Subscribe(dctx, "order_dead", 1, func(_ context.Context, d bus.Delivery) error {
			dead <- d
			return nil
		})
	}()
	select {
	case d := <-dead:
		dl := d.DeadLetter
		if orderID(t, d) != "poison" || dl == nil || dl.Queue != "order" || dl.Deliveries != 3 || dl.Reason != "risk check failed: symbol halted" {
			t.Fatalf("dead letter %s %+v, want the poison order from order after 3 deliveries with the handler's reason", d.Event.Payload, dl)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the poison order never reached order_dead")
	}
	stopPoison()
	stopDead()
	<-subErr
	<-deadErr
	st, err = c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st["order"].DeadLettered != 1 {
		t.Errorf("order dead_lettered = %d, want 1", st["order"].DeadLettered)
	}
	if code := p.Stop(); code != 0 {
		t.Errorf("exit %d:\n%s", code, p.Logs())
	}
}
