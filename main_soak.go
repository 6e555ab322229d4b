package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/soak"
)

// soakCommand holds a sidecar (this binary's serve, unless --pid names a
// running one) under a long mix of well-behaved and hostile clients and
// fails when its memory, fds or threads grow or the good clients stall.
func soakCommand() *cli.Command {
	return &cli.Command{
		Name:  "soak",
		Usage: "hold a sidecar under 1,000 well-behaved and hostile connections and check that it stays flat",
		Description: "Starts this binary's serve on a temporary socket and data dir (or takes the sidecar --pid, --socket,\n" +
			"--admin-addr), opens --connections connections: 30% publishers (one event a second each, spread over\n" +
			"data, signal and order), 30% acking consumers, 15% non-readers, 15% tricklers (a byte every 200 ms),\n" +
			"5% churners (open, ping, close) and 5% senders of malformed and oversize frames, and holds them for\n" +
			"--duration. Every --interval it prints the sidecar's RSS, open fds, threads, buffered bytes, connections\n" +
			"and the good clients' replies+deliveries per second; then a per-minute table and the verdict.\n" +
			"\n" +
			"It exits non-zero when RSS passes the memory bound (README, Memory: 20 MiB + max_connections × 72 KiB\n" +
			"+ queues × 11 MiB + max_buffered_bytes, read from /metrics), a good publisher waits over --stall for a\n" +
			"reply or a queue goes --stall without a delivery, a connection is refused too_many_connections although\n" +
			"the clients fit under max_connections, the median RSS, fds or threads of the last third of the run\n" +
			"exceed the first third's by more than 25% (plus a small slack), or the sidecar dies. It raises the open\n" +
			"files limit to the hard limit first.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "connections", Value: 1000, Usage: "client connections to hold (the sidecar serves 1024 by default)"},
			&cli.DurationFlag{Name: "duration", Value: soak.DefaultDuration, Usage: "how long the clients run"},
			&cli.DurationFlag{Name: "interval", Value: soak.DefaultInterval, Usage: "time between samples"},
			&cli.DurationFlag{Name: "stall", Value: soak.DefaultStall, Usage: "longest a good publisher may wait for a reply, or a queue go without a delivery"},
			&cli.StringFlag{Name: "sidecar", Usage: "sidecar binary to start (default: this one)"},
			&cli.StringSliceFlag{Name: "serve-arg", Usage: "extra flag for the started sidecar's serve, e.g. --serve-arg=--max-buffered-bytes=67108864"},
			&cli.IntFlag{Name: "pid", Usage: "take the running sidecar with this pid instead of starting one (needs --socket and --admin-addr)"},
			&cli.StringFlag{Name: "socket", Usage: "with --pid: its Unix socket"},
			&cli.StringFlag{Name: "admin-addr", Usage: "with --pid: its admin listener HOST:PORT (serving /metrics)"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			mix, err := soak.MixFor(c.Int("connections"))
			if err != nil {
				return usageError{err}
			}
			// The driver holds a descriptor per connection, the sidecar as
			// many again plus its own.
			if _, err := soak.RaiseFDLimit(uint64(mix.Total()) + 256); err != nil {
				return fmt.Errorf("soak: %w", err)
			}
			bin := c.String("sidecar")
			if bin == "" && c.Int("pid") == 0 {
				if bin, err = os.Executable(); err != nil {
					return fmt.Errorf("soak: find this binary to run as the sidecar: %w", err)
				}
			}
			_, err = soak.Run(ctx, soak.Config{
				Binary:    bin,
				Args:      c.StringSlice("serve-arg"),
				Pid:       c.Int("pid"),
				Socket:    c.String("socket"),
				AdminAddr: c.String("admin-addr"),
				Mix:       mix,
				Duration:  c.Duration("duration"),
				Interval:  c.Duration("interval"),
				Stall:     c.Duration("stall"),
				Out:       c.App.Writer,
			})
			if err != nil {
				return fmt.Errorf("soak: %w", err)
			}
			return nil
		},
	}
}
