package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/client"
	"github.com/eventbus-sidecar/eventbus-sidecar/config"
	"github.com/eventbus-sidecar/eventbus-sidecar/demo"
)

// demoCommand runs the simulated trading app of package demo against a
// running sidecar (make demo, the trading service of docker-compose.yml).
func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run a simulated trading app against a running sidecar (candles, signals, orders, a slow venue)",
		Description: "Publishes candles for ten symbols to data, turns moving-average crossovers into signals\n" +
			"and signals into orders, and executes orders slowly, so that order fills up, publishers\n" +
			"wait and data drops. Stops after --duration and prints what happened, with the trace ids\n" +
			"of executed orders to look up in Jaeger.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Usage: "Unix socket of the sidecar", Value: config.Default().Socket, EnvVars: []string{config.EnvPrefix + "SOCKET"}},
			&cli.DurationFlag{Name: "duration", Usage: "how long to trade", Value: 60 * time.Second, EnvVars: []string{config.EnvPrefix + "DEMO_DURATION"}},
			&cli.DurationFlag{Name: "candle-interval", Usage: "pause between two candles of one symbol", Value: 5 * time.Millisecond},
			&cli.DurationFlag{Name: "order-latency", Usage: "time the slow venue takes per order", Value: 250 * time.Millisecond},
			&cli.DurationFlag{Name: "connect-timeout", Usage: "how long to wait for the sidecar's socket to accept", Value: 30 * time.Second},
			&cli.IntFlag{Name: "feed-connections", Usage: "connections the market feed publishes candles over (its concurrency)", Value: defaultFeedConnections},
			&cli.Uint64Flag{Name: "seed", Usage: "seed of the simulated prices", Value: 1},
		},
		Action: runDemo,
	}
}

func runDemo(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{fmt.Errorf("demo takes no arguments, got %q", c.Args().Slice())}
	}
	for _, name := range []string{"duration", "candle-interval", "order-latency", "connect-timeout"} {
		if c.Duration(name) <= 0 {
			return usageError{fmt.Errorf("--%s %s: must be > 0", name, c.Duration(name))}
		}
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := slog.New(slog.NewTextHandler(c.App.ErrWriter, nil))

	if n := c.Int("feed-connections"); n < 1 || n > 1024 {
		return usageError{fmt.Errorf("--feed-connections %d: must be between 1 and 1024", n)}
	}
	b := &socketBroker{path: c.String("socket"), dataQueue: "data", dataConns: c.Int("feed-connections")}
	defer b.close()
	if err := b.connect(ctx, c.Duration("connect-timeout")); err != nil {
		return err
	}
	rep, err := demo.Run(ctx, b, demo.Config{
		Duration:       c.Duration("duration"),
		CandleInterval: c.Duration("candle-interval"),
		OrderLatency:   c.Duration("order-latency"),
		Seed:           c.Uint64("seed"),
		Logger:         logger,
	})
	printReport(c, rep)
	return err
}

func printReport(c *cli.Context, rep demo.Report) {
	w := c.App.Writer
	queues := make([]string, 0, len(rep.Published))
	for q := range rep.Published {
		queues = append(queues, q)
	}
	sort.Strings(queues)
	fmt.Fprintln(w, "demo: publishes by queue and outcome, deliveries handled")
	for _, q := range queues {
		fmt.Fprintf(w, "  %-7s", q)
		for _, o := range bus.Outcomes {
			fmt.Fprintf(w, " %s=%d", o, rep.Published[q][o])
		}
		fmt.Fprintf(w, " handled=%d\n", rep.Consumed[q])
	}
	for _, o := range rep.Executed {
		if o.TraceID.IsValid() {
			fmt.Fprintf(w, "demo: executed %s trace_id=%s\n", o.ID, o.TraceID)
		}
	}
}

// The sidecar publishes each connection's events to one queue in order,
// one at a time (the transport's lanes), so a publisher's concurrency is
// its number of connections. The feed's candles spread over many
// connections, as many feed handlers would: with a few, each waiting
// publish gets the next free slot well within the data queue's 1 s and
// nothing drops; with dozens, waits pass 1 s once the strategy stalls.
const (
	defaultFeedConnections = 64
	otherQueueConnections  = 2
)

// socketBroker is demo.Broker over the sidecar's socket: publishing
// connections per queue and one connection per subscription, so that a
// stage blocked on a full queue (orders behind the slow venue) never holds
// up another stage's frames on a shared connection.
type socketBroker struct {
	path      string
	dataQueue string
	dataConns int // publishing connections for dataQueue

	mu    sync.Mutex
	first *client.Client              // proven by connect, handed to the first queue
	pub   map[string][]*client.Client // by queue, up to lanes(queue)
	next  map[string]int              // round robin over pub[queue]
}

// connect dials the first connection, retrying until the sidecar accepts:
// in docker-compose the app may start before the socket exists.
func (b *socketBroker) connect(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		cl, err := client.Dial(ctx, b.path)
		if errors.Is(err, fs.ErrPermission) {
			// Waiting will not help: this user is not in the socket's group.
			return fmt.Errorf("connect to the sidecar at %s: %w (the socket is mode 0660: run the app in the sidecar's group)", b.path, err)
		}
		if err == nil {
			b.mu.Lock()
			b.first = cl
			b.pub = map[string][]*client.Client{}
			b.next = map[string]int{}
			b.mu.Unlock()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect to the sidecar at %s within %s (is `eventbus-sidecar serve` running?): %w", b.path, limit, errors.Join(err, ctx.Err()))
		case <-tick.C:
		}
	}
}

// Publish implements demo.Broker.
func (b *socketBroker) Publish(ctx context.Context, ev bus.Event, queue string) (bus.Outcome, error) {
	cl, err := b.publisher(ctx, queue)
	if err != nil {
		return bus.Failed, err
	}
	return cl.Publish(ctx, ev, queue)
}

// publisher returns the next of queue's publishing connections, dialing
// them on first use.
func (b *socketBroker) publisher(ctx context.Context, queue string) (*client.Client, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	lanes := b.pub[queue]
	want := otherQueueConnections
	if queue == b.dataQueue {
		want = b.dataConns
	}
	if len(lanes) < want {
		cl := b.first
		b.first = nil
		if cl == nil {
			var err error
			if cl, err = client.Dial(ctx, b.path); err != nil {
				return nil, fmt.Errorf("connect to the sidecar at %s: %w", b.path, err)
			}
		}
		b.pub[queue] = append(lanes, cl)
		return cl, nil
	}
	b.next[queue] = (b.next[queue] + 1) % len(lanes)
	return lanes[b.next[queue]], nil
}

// Subscribe implements demo.Broker on a connection of its own.
func (b *socketBroker) Subscribe(ctx context.Context, queue string, prefetch int, h demo.Handler) error {
	cl, err := client.Dial(ctx, b.path)
	if err != nil {
		return fmt.Errorf("connect to the sidecar at %s: %w", b.path, err)
	}
	defer cl.Close()
	return cl.Subscribe(ctx, queue, prefetch, client.Handler(h))
}

func (b *socketBroker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.first != nil {
		b.first.Close()
	}
	for _, lanes := range b.pub {
		for _, cl := range lanes {
			cl.Close()
		}
	}
	b.pub = nil
}
