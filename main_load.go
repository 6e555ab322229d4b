package main

import (
	"encoding/json"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/load"
)

// loadCommand drives a running sidecar with publishers and acking
// consumers and prints throughput and latency percentiles.
func loadCommand() *cli.Command {
	return &cli.Command{
		Name:  "load",
		Usage: "publish and consume events against a running sidecar and report events/s and latency",
		Description: "Publishes --events events over --connections connections (each with --concurrency publishes in flight)\n" +
			"while --consumers connections consume and ack them, then prints events/s and latency percentiles.\n" +
			"The run is bounded by --events and by --duration. Use a queue nobody else uses during the run.",
		Flags: []cli.Flag{
			socketFlag(),
			&cli.IntFlag{Name: "connections", Value: 1, Usage: "publishing connections"},
			&cli.IntFlag{Name: "concurrency", Value: 64, Usage: "publishes in flight per connection"},
			&cli.IntFlag{Name: "events", Value: 100000, Usage: fmt.Sprintf("events to publish (at most %d)", load.MaxEvents)},
			&cli.StringFlag{Name: "queue", Value: "data", Usage: "queue to publish to and consume from"},
			&cli.IntFlag{Name: "payload-bytes", Value: 100, Usage: "size of each event's JSON payload (at least 40)"},
			&cli.IntFlag{Name: "consumers", Value: 1, Usage: "consuming connections (0: publish only)"},
			&cli.IntFlag{Name: "prefetch", Value: 256, Usage: "prefetch of each consumer"},
			&cli.DurationFlag{Name: "duration", Value: load.DefaultDuration, Usage: "upper bound on the whole run"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			consumers := c.Int("consumers")
			if consumers == 0 {
				consumers = -1 // the package's "none"
			}
			res, err := load.Run(ctx, load.Config{
				Socket:       c.String("socket"),
				Connections:  c.Int("connections"),
				Concurrency:  c.Int("concurrency"),
				Events:       c.Int("events"),
				Queue:        c.String("queue"),
				PayloadBytes: c.Int("payload-bytes"),
				Consumers:    consumers,
				Prefetch:     c.Int("prefetch"),
				Duration:     c.Duration("duration"),
			})
			if err != nil {
				return fmt.Errorf("load: %w", err)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			return res.WriteText(c.App.Writer)
		},
	}
}
