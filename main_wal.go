package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// queuesDir is where a data dir keeps one write-ahead log per durable
// queue, each in a directory named after its queue.
const queuesDir = "queues"

func (p *program) walCommand() *cli.Command {
	return &cli.Command{
		Name:  "wal",
		Usage: "check or salvage the write-ahead logs of a data dir",
		Subcommands: []*cli.Command{
			{
				Name:      "check",
				Usage:     "read every queue's log under DIR/queues without changing anything, and report",
				ArgsUsage: "DIR",
				Description: "DIR is the sidecar's --data-dir. Prints one report per queue: its segments with\n" +
					"their size, records and any torn tail or damage (file and offset). Exits 1 if a log is\n" +
					"damaged (the sidecar refuses to start on it; `wal salvage` repairs it). Safe while the\n" +
					"sidecar runs, though a log being written may then show a torn tail.",
				OnUsageError: onUsageError,
				Action:       func(c *cli.Context) error { return p.walRun(c, "check", wal.Check) },
			},
			{
				Name:      "salvage",
				Usage:     "repair every queue's log under DIR/queues so that the sidecar starts",
				ArgsUsage: "DIR",
				Description: "DIR is the sidecar's --data-dir; stop the sidecar first (salvage takes its lock).\n" +
					"Cuts torn tails; moves each damaged segment aside to <name>.damaged and keeps the\n" +
					"records before the damage in its place. Prints what it did per queue: events\n" +
					"after a damage are lost, and the report says how many unacked events remain.",
				OnUsageError: onUsageError,
				Action:       func(c *cli.Context) error { return p.walRun(c, "salvage", wal.Salvage) },
			},
		},
	}
}

// walRun runs check or salvage over every queue log of the data dir named
// by the one argument, printing each report, and fails if any did.
func (p *program) walRun(c *cli.Context, what string, op func(ctx context.Context, dir string, opts wal.Options) (wal.Report, error)) error {
	if c.NArg() != 1 {
		return usageError{fmt.Errorf("wal %s takes one argument, the data dir, got %d", what, c.NArg())}
	}
	dataDir := c.Args().First()
	logs, err := queueLogs(dataDir)
	if err != nil {
		return err
	}
	if len(logs) == 0 {
		fmt.Fprintf(p.stdout, "%s: no queue logs under %s\n", dataDir, filepath.Join(dataDir, queuesDir))
	}
	var errs []error
	for _, dir := range logs {
		rep, err := op(c.Context, dir, wal.Options{})
		if len(rep.Segments) > 0 || rep.Dir != "" {
			fmt.Fprint(p.stdout, rep.String())
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("queue %s: %w", filepath.Base(dir), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wal %s %s: %w", what, dataDir, err)
	}
	return nil
}

// queueLogs lists the queue log directories of a data dir, by name.
func queueLogs(dataDir string) ([]string, error) {
	root := filepath.Join(dataDir, queuesDir)
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dataDir); serr != nil {
			return nil, usageError{fmt.Errorf("data dir %s: %w", dataDir, serr)}
		}
		return nil, usageError{fmt.Errorf("%s has no %s directory: is it a sidecar's --data-dir? (its durable queues' logs are in DIR/%s/<queue>)", dataDir, queuesDir, queuesDir)}
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", root, err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(root, e.Name()))
		}
	}
	slices.Sort(dirs)
	return dirs, nil
}
