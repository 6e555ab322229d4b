package bus_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

func TestShutdownDrainsThenReportsNothingLeft(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	b, _ := newBus(t, bus.DefaultQueues(), bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	publishN(t, b, "order", "ORDER_PLACED", 0, 10)
	c := subscribe(t, b, "order", 2)
	var wg sync.WaitGroup
	wg.Add(1)
	acked := 0
	go func() {
		defer wg.Done()
		for {
			d, err := c.Receive(context.Background())
			if err != nil {
				if !errors.Is(err, bus.ErrShuttingDown) {
					t.Errorf("Receive after drain = %v, want ErrShuttingDown", err)
				}
				return
			}
			acked++
			_ = c.Ack(d.Seq)
		}
	}()
	undelivered, err := b.Shutdown(context.Background())
	if err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	if acked != 10 {
		t.Errorf("consumer acked %d during drain, want 10", acked)
	}
	for q, n := range undelivered {
		if n != 0 {
			t.Errorf("undelivered[%s] = %d, want 0", q, n)
		}
	}
	if len(undelivered) != 3 {
		t.Errorf("undelivered has %d queues, want 3", len(undelivered))
	}
	if !strings.Contains(logs.String(), "queue drained") {
		t.Errorf("no drain log:\n%s", logs)
	}
}

func TestShutdownRefusesPublishesAndFailsWaiters(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	publishN(t, b, "order", "ORDER_PLACED", 0, 50)
	waiting := publishAsync(context.Background(), b, event("ORDER_PLACED", 50), "order")
	testkit.Eventually(t, "publisher waits", func() bool { return b.Stats()["order"].Waiting == 1 })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var undelivered map[string]int
	var serr error
	go func() {
		defer close(done)
		undelivered, serr = b.Shutdown(ctx)
	}()
	r := await(t, waiting)
	if r.out != bus.Failed || !errors.Is(r.err, bus.ErrShuttingDown) {
		t.Fatalf("waiting publish = %v, %v; want error, ErrShuttingDown", r.out, r.err)
	}
	for _, q := range b.Queues() {
		out, err := b.Publish(context.Background(), event("X", 0), q)
		if out != bus.Failed || !errors.Is(err, bus.ErrShuttingDown) || err.Error() != "shutting down" {
			t.Errorf("publish to %s while draining = %v, %v; want error \"shutting down\"", q, out, err)
		}
	}
	// Draining still delivers: take one event and ack it.
	c := subscribe(t, b, "order", 1)
	d := mustReceive(t, c)
	_ = c.Ack(d.Seq)
	cancel() // the drain deadline passes with 49 events left
	<-done
	if !errors.Is(serr, context.Canceled) {
		t.Fatalf("Shutdown err = %v, want context.Canceled", serr)
	}
	if undelivered["order"] != 49 || undelivered["data"] != 0 || undelivered["signal"] != 0 {
		t.Errorf("undelivered = %v, want order 49", undelivered)
	}
	select {
	case <-b.Done():
	default:
		t.Error("Done() not closed after Shutdown returned")
	}
	if c.Queue() != "order" {
		t.Errorf("Queue() = %q", c.Queue())
	}
	if _, err := c.Receive(context.Background()); !errors.Is(err, bus.ErrShuttingDown) {
		t.Errorf("Receive after shutdown = %v, want ErrShuttingDown", err)
	}
	if _, err := b.Subscribe("order", 1); !errors.Is(err, bus.ErrShuttingDown) {
		t.Errorf("Subscribe after shutdown = %v, want ErrShuttingDown", err)
	}
	// A second Shutdown returns the first one's result at once.
	again, err := b.Shutdown(context.Background())
	if !errors.Is(err, context.Canceled) || again["order"] != 49 {
		t.Errorf("second Shutdown = %v, %v", again, err)
	}
	if st := b.Stats()["order"]; st.Published[bus.Failed] != 2 {
		t.Errorf("failed publishes = %d, want 2 (waiter + refused)", st.Published[bus.Failed])
	}
}

func TestShutdownCountsInFlightAsUndelivered(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	b, _ := newBus(t, bus.DefaultQueues(), bus.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	publishN(t, b, "signal", "SIGNAL_GENERATED", 0, 3)
	c := subscribe(t, b, "signal", 1)
	mustReceive(t, c) // in flight, never acked
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	undelivered, err := b.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown err = %v", err)
	}
	if undelivered["signal"] != 3 {
		t.Errorf("undelivered = %v, want signal 3 (2 waiting + 1 in flight)", undelivered)
	}
	out := logs.String()
	for _, want := range []string{"queue left undelivered events", "queue=signal", "undelivered=3", "waiting=2", "in_flight=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestShutdownWaitsForInFlightAck(t *testing.T) {
	b, _ := newBus(t, bus.DefaultQueues())
	publishN(t, b, "order", "ORDER_PLACED", 0, 1)
	c := subscribe(t, b, "order", 1)
	d := mustReceive(t, c)
	done := make(chan map[string]int, 1)
	go func() {
		u, _ := b.Shutdown(context.Background())
		done <- u
	}()
	testkit.Eventually(t, "draining", b.Draining)
	select {
	case <-b.Done():
		t.Fatal("Done() closed while an event is in flight")
	default:
	}
	if _, err := b.Publish(context.Background(), event("X", 1), "data"); !errors.Is(err, bus.ErrShuttingDown) {
		t.Fatalf("publish while draining = %v", err)
	}
	select {
	case u := <-done:
		t.Fatalf("Shutdown returned %v with an event in flight", u)
	default:
	}
	if err := c.Ack(d.Seq); err != nil {
		t.Fatal(err)
	}
	if u := <-done; u["order"] != 0 {
		t.Errorf("undelivered = %v", u)
	}
}
