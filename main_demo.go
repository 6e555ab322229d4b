package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/config"
	"github.com/eventbus-sidecar/eventbus-sidecar/demo"
)

// demoCommand runs the simulated trading app of package demo against a
// running sidecar (make demo, the trading service of docker-compose.yml).
// It only parses flags and prints the report: the app and its socket
// broker live in package demo.
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
			&cli.IntFlag{Name: "feed-connections", Usage: "connections the market feed publishes candles over (its concurrency)", Value: demo.DefaultFeedConnections},
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
	b, err := demo.DialSocket(ctx, c.String("socket"), c.Duration("connect-timeout"), c.Int("feed-connections"))
	if err != nil {
		return err
	}
	defer b.Close()
	rep, err := demo.Run(ctx, b, demo.Config{
		Duration:       c.Duration("duration"),
		CandleInterval: c.Duration("candle-interval"),
		OrderLatency:   c.Duration("order-latency"),
		Seed:           c.Uint64("seed"),
		Logger:         logger,
	})
	if werr := rep.WriteText(c.App.Writer); werr != nil {
		return errors.Join(err, werr)
	}
	return err
}
