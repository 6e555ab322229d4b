package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/client"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// deadLetterLedger is what the dead-letter crash test's consumers saw.
type deadLetterLedger struct {
	mu       sync.Mutex
	accepted map[string]bool            // answered accepted (or duplicate)
	maybe    map[string]bool            // sent when the sidecar died: outcome unknown
	dead     map[string]map[uint64]bool // order -> its seqs in order_dead
	good     map[string]bool            // good orders delivered from order
	problems []string
	moves    int             // dead letters delivered, redeliveries included
	noReason map[string]bool // poison orders dead-lettered without a reason
}

func isPoison(id string) bool { return strings.HasPrefix(id, "p") }

// sawDeadLetter checks a delivery from order_dead: an order from order
// after its two deliveries. A poison order carries the reason its consumer
// gave, unless no delivery of it was ever nacked: in flight at a kill each
// time, its deliveries ran out in restarts, and it carries none. A good
// order (acked whenever it is received) gets there only that way.
func (l *deadLetterLedger) sawDeadLetter(t *testing.T, d bus.Delivery) {
	id := orderID(t, d)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.moves++
	dl := d.DeadLetter
	reasonOK := dl != nil && (dl.Reason == "" || isPoison(id) && dl.Reason == "poison "+id)
	if dl != nil && isPoison(id) && dl.Reason == "" {
		l.noReason[id] = true
	}
	if dl == nil || dl.Queue != "order" || dl.Deliveries != 2 || !reasonOK {
		l.problems = append(l.problems, fmt.Sprintf("order_dead seq %d holds %s with %+v, want {Queue:order Deliveries:2} with the reason %q (poison orders) or none", d.Seq, id, dl, "poison "+id))
	}
	if l.dead[id] == nil {
		l.dead[id] = map[uint64]bool{}
	}
	l.dead[id][d.Seq] = true
}

func (l *deadLetterLedger) sawOrder(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.good[id] = true
}

func (l *deadLetterLedger) moved() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.moves
}

// consume runs the two consumers on c until ctx ends or the sidecar dies:
// order's nacks every poison order with its reason and acks the rest,
// order_dead's records and acks what arrives.
func (l *deadLetterLedger) consume(ctx context.Context, t *testing.T, c *client.Client) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = c.Subscribe(ctx, "order", 16, func(_ context.Context, d bus.Delivery) error {
			id := orderID(t, d)
			if isPoison(id) {
				return errors.New("poison " + id)
			}
			l.sawOrder(id)
			return nil
		})
	})
	wg.Go(func() {
		_ = c.Subscribe(ctx, "order_dead", 16, func(_ context.Context, d bus.Delivery) error {
			l.sawDeadLetter(t, d)
			return nil
		})
	})
	return &wg
}

// TestCrashKill9DuringDeadLetterMoves publishes orders, every other one a
// poison order that order's consumer nacks until it moves to order_dead
// (max_deliveries 2), and kills the sidecar with SIGKILL at a random point
// while moves are going on, round after round on one data dir. At the end
// every poison order answered accepted is in order_dead under exactly one
// seq (a move done twice would give it a second), with its origin, its
// deliveries and its reason; every good order is delivered.
func TestCrashKill9DuringDeadLetterMoves(t *testing.T) {
	sc := newDurableSidecar(t, `
queues:
  - name: order
    capacity: 200
    max_deliveries: 2
    dead_letter: order_dead
  - name: order_dead
    capacity: 10000
    policy: block
    durable: true
`)
	led := &deadLetterLedger{accepted: map[string]bool{}, maybe: map[string]bool{}, dead: map[string]map[uint64]bool{}, good: map[string]bool{}, noReason: map[string]bool{}}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	deadline := time.Now().Add(12 * time.Second)
	next := 0
	var kills int
	for round := 1; round <= 8 && time.Now().Before(deadline); round++ {
		p := sc.start(t)
		ctx, cancel := context.WithCancel(t.Context())
		cons, err := client.Dial(ctx, sc.socket)
		if err != nil {
			t.Fatal(err)
		}
		consumers := led.consume(ctx, t, cons)
		var pubs sync.WaitGroup
		for range 2 {
			pub, err := client.Dial(ctx, sc.socket)
			if err != nil {
				t.Fatal(err)
			}
			pubs.Go(func() {
				defer pub.Close()
				for ctx.Err() == nil {
					led.mu.Lock()
					next++
					id := fmt.Sprintf("g%d", next)
					if next%2 == 0 {
						id = fmt.Sprintf("p%d", next)
					}
					led.mu.Unlock()
					out, err := pub.Publish(ctx, orderEvent(id), "order")
					led.mu.Lock()
					switch out {
					case bus.Accepted, bus.Duplicate:
						led.accepted[id] = true
					default:
						if !errors.Is(err, client.ErrConnectionLost) && !errors.Is(err, context.Canceled) {
							led.problems = append(led.problems, fmt.Sprintf("publish %s: %v %v", id, out, err))
						}
						led.maybe[id] = true
					}
					led.mu.Unlock()
					if out != bus.Accepted && out != bus.Duplicate {
						return
					}
				}
			})
		}
		// The kill point: a random number of dead letters into the round,
		// with more moves under way behind them.
		target := led.moved() + 1 + rng.IntN(40)
		testkit.Eventually(t, fmt.Sprintf("%d dead letters delivered in round %d", target, round), func() bool {
			return led.moved() >= target
		})
		kill9(t, p)
		kills++
		cancel()
		pubs.Wait()
		consumers.Wait()
		cons.Close()
	}

	// The last start: every accepted order reaches its place and the queues
	// empty out.
	p := sc.start(t)
	c, err := client.Dial(t.Context(), sc.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(t.Context())
	consumers := led.consume(ctx, t, c)
	testkit.Eventually(t, "every accepted order in its place, the queues empty", func() error {
		led.mu.Lock()
		for id := range led.accepted {
			if isPoison(id) && len(led.dead[id]) == 0 {
				led.mu.Unlock()
				return fmt.Errorf("poison order %s was answered accepted and never reached order_dead", id)
			}
			if !isPoison(id) && !led.good[id] && led.dead[id] == nil {
				led.mu.Unlock()
				return fmt.Errorf("order %s was answered accepted and never delivered", id)
			}
		}
		led.mu.Unlock()
		st, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		for _, q := range []string{"order", "order_dead"} {
			if st[q].Size+st[q].InFlight > 0 {
				return fmt.Errorf("%s still holds %d waiting and %d in flight", q, st[q].Size, st[q].InFlight)
			}
		}
		return nil
	})
	cancel()
	consumers.Wait()

	led.mu.Lock()
	defer led.mu.Unlock()
	for _, pr := range led.problems {
		t.Error(pr)
	}
	poison := 0
	for id, seqs := range led.dead {
		if isPoison(id) {
			poison++
		}
		if len(seqs) != 1 {
			t.Errorf("order %s is in order_dead %d times (seqs %v): a move was done twice", id, len(seqs), seqs)
		}
	}
	// Only a poison order never nacked before the kills lacks its reason:
	// if none had one, the reasons are being lost.
	if poison > 0 && len(led.noReason) >= poison {
		t.Errorf("none of the %d poison orders in order_dead carries its nack reason", poison)
	}
	t.Logf("%d kills, %d orders accepted, %d with the outcome unknown, %d poison orders dead-lettered, %d dead-letter deliveries",
		kills, len(led.accepted), len(led.maybe), poison, led.moves)
	if code := p.Stop(); code != 0 {
		t.Errorf("exit %d:\n%s", code, p.Logs())
	}
}
