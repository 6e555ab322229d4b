package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/sys/unix"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/config"
	"github.com/eventbus-sidecar/eventbus-sidecar/telemetry"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// reloadTargets are the running parts a reload changes.
type reloadTargets struct {
	log       *slog.Logger
	level     *slog.LevelVar
	bus       *bus.Bus
	server    *transport.Server
	telemetry *telemetry.Telemetry
	memory    *memoryLimit
}

// reloader applies a re-read configuration to a running sidecar. Only
// serve's reload actor calls it, so it needs no lock.
type reloader struct {
	reloadTargets
	running config.Config
	counter *config.ReloadCounter
}

func newReloader(running config.Config, t reloadTargets, meter metric.Meter) (*reloader, error) {
	counter, err := config.NewReloadCounter(meter)
	if err != nil {
		return nil, err
	}
	return &reloader{reloadTargets: t, running: running, counter: counter}, nil
}

// reload loads the configuration again and applies what can change live.
// A configuration that does not load keeps the running one whole; settings
// that need a restart are named in the log, each time, until it happens.
func (r *reloader) reload(ctx context.Context, load func() (config.Config, error)) {
	loaded, err := load()
	if err != nil {
		r.counter.Record(ctx, err)
		r.log.Error("reload refused; the running configuration stays", "err", err)
		return
	}
	plan := config.PlanReload(r.running, loaded)
	for _, c := range plan.Restart {
		r.log.Warn("reload: setting not applied until the next start", "field", c.Field, "running", c.Old, "file", c.New, "why", c.Why)
	}
	if err := r.apply(plan.Next); err != nil {
		r.counter.Record(ctx, err)
		r.log.Error("reload failed to apply; the running configuration stays", "err", err)
		return
	}
	r.running = plan.Next
	r.counter.Record(ctx, nil)
	changes := make([]string, len(plan.Live))
	for i, c := range plan.Live {
		changes[i] = c.String()
	}
	r.log.Info("configuration reloaded", "live_changes", len(plan.Live), "applied", strings.Join(changes, "; "), "waiting_for_restart", len(plan.Restart))
}

// apply changes the queues first: Reconfigure checks every queue before it
// changes any, and the routes and ratio that follow were validated by
// config.Load against the same queues, so a refusal leaves the sidecar as
// it was.
func (r *reloader) apply(next config.Config) error {
	if err := r.bus.Reconfigure(next.Queues); err != nil {
		return fmt.Errorf("queues: %w", err)
	}
	var errs []error
	if err := r.server.SetRoutes(next.Routes, next.DefaultQueue); err != nil {
		errs = append(errs, fmt.Errorf("routes: %w", err))
	}
	if err := r.telemetry.SetDataSampleRatio(next.Telemetry.DataSampleRatio); err != nil {
		errs = append(errs, fmt.Errorf("data sample ratio: %w", err))
	}
	if err := r.telemetry.SetDataTraceRate(next.Telemetry.DataTraceRate); err != nil {
		errs = append(errs, fmt.Errorf("data trace rate: %w", err))
	}
	r.server.SetAllowedPeers(next.AllowedUIDs, next.AllowedGIDs)
	r.level.Set(logLevel(next.LogLevel))
	// PlanReload keeps the budget at 8 frames or more, so this fails
	// only if that promise breaks. The soft memory limit follows the
	// budget.
	if err := r.server.SetMaxBufferedBytes(next.MaxBufferedBytes); err != nil {
		errs = append(errs, fmt.Errorf("max buffered bytes: %w", err))
	} else {
		r.memory.apply(next)
	}
	return errors.Join(errs...)
}

func (p *program) reloadCommand() *cli.Command {
	return &cli.Command{
		Name:  "reload",
		Usage: "make a running sidecar re-read its configuration (sends it SIGHUP)",
		Description: "Finds the sidecar through its socket (the process at the other end of a connection\n" +
			"to it) or takes --pid, and sends SIGHUP. The sidecar logs what it applied, what waits\n" +
			"for a restart, or why it refused the file and kept the running configuration.",
		Flags: []cli.Flag{
			socketFlag(),
			&cli.IntFlag{Name: "pid", Usage: "signal this process instead of finding the sidecar through --socket (a sidecar in another PID namespace)"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			pid := c.Int("pid")
			if pid == 0 {
				var err error
				if pid, err = socketPeerPID(c.String("socket")); err != nil {
					return err
				}
			}
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				return fmt.Errorf("reload: signal pid %d: %w", pid, err)
			}
			fmt.Fprintf(p.stdout, "sent SIGHUP to pid %d; its log says what changed\n", pid)
			return nil
		},
	}
}

// socketPeerPID is the process serving the socket at path, read from the
// kernel's credentials of the connection's other end (SO_PEERCRED).
func socketPeerPID(path string) (int, error) {
	nc, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return 0, fmt.Errorf("reload: %w (is `eventbus-sidecar serve` running? --pid names it directly)", err)
	}
	defer nc.Close()
	raw, err := nc.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("reload: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("reload: %w", err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("reload: reading the peer of %s: %w", path, credErr)
	}
	if cred.Pid <= 0 {
		return 0, fmt.Errorf("reload: the sidecar on %s runs in another PID namespace; pass --pid", path)
	}
	return int(cred.Pid), nil
}
