package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/load"
)

// loadCommand drives a running sidecar with publishers and acking
// consumers and prints throughput and latency percentiles. For --ceiling
// it runs the ceiling server as a child process of this binary.
func loadCommand() *cli.Command {
	return loadCommandWith(load.CeilingProcess(ceilingChild))
}

// ceilingChild is this binary serving the framing ceiling at socket
// (load --ceiling-server), its errors on the load tool's stderr.
func ceilingChild(socket string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe, "load", "--ceiling-server", "--socket", socket)
	cmd.Stderr = os.Stderr
	return cmd
}

// loadCommandWith is loadCommand with the ceiling server started by
// startCeiling (in this process when nil).
func loadCommandWith(startCeiling load.CeilingStarter) *cli.Command {
	return &cli.Command{
		Name:  "load",
		Usage: "publish and consume events against a running sidecar and report events/s and latency",
		Description: "Publishes --events events over --connections connections while --consumers connections consume and ack\n" +
			"them, then prints events/s and latency percentiles (p50, p90, p99, p99.9, max from an HDR histogram):\n" +
			"publish latency (send to the publish reply) and end-to-end latency (send to the consumer's receipt).\n" +
			"\n" +
			"Closed loop (the default): each connection keeps --concurrency publishes in flight, sending the next\n" +
			"when one is answered. Open loop (--rate N): event i is due at i/N seconds and latency is measured\n" +
			"from that intended send time, so a stall shows in the percentiles instead of slowing the load\n" +
			"(--concurrency then bounds the publishes in flight; events that were due but could not be sent\n" +
			"are reported as BEHIND).\n" +
			"\n" +
			"--ceiling first runs the same load against a framing-only server of this binary, run as a child\n" +
			"process on a temporary socket (it answers each publish and forwards it to a consumer, nothing\n" +
			"more: the least any broker on this socket could cost), then against the sidecar, and prints the\n" +
			"sidecar's figures as ratios of the ceiling's. The run is bounded by --events and by --duration\n" +
			"(each run of --ceiling by --duration). A live status line goes to stderr when it is a terminal,\n" +
			"unless --json. Use a queue nobody else uses during the run.",
		Flags: []cli.Flag{
			socketFlag(),
			&cli.IntFlag{Name: "connections", Value: 1, Usage: "publishing connections"},
			&cli.IntFlag{Name: "concurrency", Value: 64, Usage: "publishes in flight per connection (at most, with --rate)"},
			&cli.IntFlag{Name: "events", Value: 100000, Usage: fmt.Sprintf("events to publish (at most %d)", load.MaxEvents)},
			&cli.Float64Flag{Name: "rate", Usage: "open loop: events per second, latency from each event's intended send time (0: closed loop)"},
			&cli.StringFlag{Name: "queue", Value: "data", Usage: "queue to publish to and consume from"},
			&cli.IntFlag{Name: "payload-bytes", Value: 100, Usage: "size of each event's JSON payload (at least 40)"},
			&cli.IntFlag{Name: "consumers", Value: 1, Usage: "consuming connections (0: publish only)"},
			&cli.IntFlag{Name: "prefetch", Value: 256, Usage: "prefetch of each consumer"},
			&cli.DurationFlag{Name: "duration", Value: load.DefaultDuration, Usage: "upper bound on each run"},
			&cli.BoolFlag{Name: "ceiling", Usage: "also measure the socket framing ceiling and print the sidecar's figures as ratios of it"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as one JSON object"},
			&cli.BoolFlag{Name: "ceiling-server", Hidden: true, Usage: "serve the framing ceiling at --socket until SIGTERM (the child process of --ceiling)"},
			&cli.BoolFlag{Name: "floor-server", Hidden: true, Usage: "serve the framing floor (one thread, raw epoll) at --socket until SIGTERM (e2e/cpu_floor.sh)"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if c.Bool("ceiling-server") {
				return load.ServeCeiling(ctx, c.String("socket"))
			}
			if c.Bool("floor-server") {
				return load.ServeFloor(ctx, c.String("socket"))
			}
			consumers := c.Int("consumers")
			if consumers == 0 {
				consumers = -1 // the package's "none"
			}
			cfg := load.Config{
				Socket:       c.String("socket"),
				Connections:  c.Int("connections"),
				Concurrency:  c.Int("concurrency"),
				Events:       c.Int("events"),
				Rate:         c.Float64("rate"),
				Queue:        c.String("queue"),
				PayloadBytes: c.Int("payload-bytes"),
				Consumers:    consumers,
				Prefetch:     c.Int("prefetch"),
				Duration:     c.Duration("duration"),
			}
			if !c.Bool("json") && isTerminal(c.App.ErrWriter) {
				cfg.Progress = c.App.ErrWriter
			}
			var rep load.Report
			var err error
			if c.Bool("ceiling") {
				rep, err = load.Compare(ctx, cfg, startCeiling)
			} else {
				rep.Result, err = load.Run(ctx, cfg)
			}
			if err != nil {
				return fmt.Errorf("load: %w", err)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return rep.WriteText(c.App.Writer)
		},
	}
}

// isTerminal tells whether w is a terminal (a character device), where a
// status line rewritten in place is readable; in a file or a pipe it would
// be noise.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
