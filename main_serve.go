package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.opentelemetry.io/otel"

	"github.com/eventbus-sidecar/eventbus-sidecar/admin"
	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/config"
	"github.com/eventbus-sidecar/eventbus-sidecar/telemetry"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// configEnv names the config file when --config is not given. It is read
// through program.env like every other setting, so tests control it.
const configEnv = config.EnvPrefix + "CONFIG"

// sdkErrorLogInterval is how often an OpenTelemetry SDK error is logged at
// Warn; the rest go to Debug (a collector outage makes one per export, and
// the telemetry loss report already summarizes those).
const sdkErrorLogInterval = time.Minute

// configFlags are serve's and config's flags: --config plus one flag per
// config.Setting. They carry no EnvVars on purpose: config.Load reads the
// EVENTBUS_* variables itself so that the file can sit between the two.
func configFlags() []cli.Flag {
	def := config.Default()
	flags := []cli.Flag{
		&cli.StringFlag{
			Name:  "config",
			Usage: "YAML config `FILE` (eventbus-sidecar config prints every key with its value) (env " + configEnv + ")",
		},
	}
	for _, s := range config.Settings() {
		usage := fmt.Sprintf("%s (env %s)", s.Usage, s.Env())
		if s.Bool {
			flags = append(flags, &cli.BoolFlag{Name: s.Flag, Usage: usage})
			continue
		}
		flags = append(flags, &cli.StringFlag{Name: s.Flag, Usage: usage, DefaultText: s.Value(def)})
	}
	return flags
}

// loadConfig merges defaults, file, environment and the flags given.
func (p *program) loadConfig(c *cli.Context) (config.Config, error) {
	// One pass over the flags given, not IsSet per setting: IsSet looks an
	// unset flag up through every flag's names, which urfave/cli derives
	// with a regexp on each call, so asking for each setting in turn is
	// quadratic in the settings.
	given := map[string]bool{}
	for _, name := range c.LocalFlagNames() {
		given[name] = true
	}
	flags := map[string]string{}
	for _, s := range config.Settings() {
		if !given[s.Flag] {
			continue
		}
		if s.Bool {
			flags[s.Flag] = strconv.FormatBool(c.Bool(s.Flag))
		} else {
			flags[s.Flag] = c.String(s.Flag)
		}
	}
	file := c.String("config")
	if v, ok := p.env(configEnv); ok && !given["config"] {
		file = v
	}
	return config.Load(config.Sources{File: file, Env: p.env, Flags: flags})
}

func (p *program) configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "print the effective configuration as YAML (a valid --config file)",
		Description: "Takes the same flags as serve and prints the configuration serve would run with.\n" +
			"Precedence: flags > EVENTBUS_* environment > --config file > defaults.",
		Flags:        configFlags(),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			cfg, err := p.loadConfig(c)
			if err != nil {
				return err
			}
			out, err := cfg.YAML()
			if err != nil {
				return err
			}
			_, err = p.stdout.Write(out)
			return err
		},
	}
}

func (p *program) serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the sidecar",
		Description: "Serves the queues on a Unix socket until SIGTERM or SIGINT, then refuses publishes,\n" +
			"keeps delivering until the queues are empty or --drain-timeout passes, logs what was\n" +
			"left undelivered per queue and exits 0. A second signal exits at once.",
		Flags:        configFlags(),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			cfg, err := p.loadConfig(c)
			if err != nil {
				return err
			}
			return p.serve(c.Context, cfg, func() (config.Config, error) { return p.loadConfig(c) })
		},
	}
}

func onUsageError(_ *cli.Context, err error, _ bool) error { return usageError{err} }

// newLogger builds the slog logger the config asks for; its level is a
// LevelVar so that a reload can change it.
func newLogger(cfg config.Config, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	level.Set(logLevel(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), level
	}
	return slog.New(slog.NewTextHandler(w, opts)), level
}

func logLevel(name string) slog.Level {
	var level slog.Level
	if err := level.UnmarshalText([]byte(name)); err != nil {
		return slog.LevelInfo // config validated it already
	}
	return level
}

// telemetryConfig maps the config file's telemetry section onto the
// telemetry package; zero values let OTEL_* and its defaults apply.
func telemetryConfig(t config.Telemetry, lookup env) telemetry.Config {
	return telemetry.Config{
		Disabled:        t.Disabled,
		TracesDisabled:  t.TracesDisabled,
		ServiceName:     t.ServiceName,
		ServiceVersion:  version,
		OTLPEndpoint:    t.OTLPEndpoint,
		OTLPInsecure:    t.OTLPInsecure,
		DataSampleRatio: t.DataSampleRatio,
		DataTraceRate:   t.DataTraceRate,
		MetricInterval:  t.MetricInterval,
		SpanExportCPU:   t.SpanExportCPU,
		LookupEnv:       lookup,
	}
}

// serve runs the sidecar until parent ends, a signal arrives or a server
// fails. Each long-running part is an actor of a run group, its stop next
// to its start; the first to return stops them all. On SIGHUP it calls
// reload for a fresh configuration and applies what can change live.
func (p *program) serve(parent context.Context, cfg config.Config, reload func() (config.Config, error)) error {
	log, level := newLogger(cfg, p.stderr)
	// Signals are caught from the start, so that a SIGTERM during set-up
	// cancels it (telemetry.Setup takes ctx) and then shuts down at once.
	ctx, stopSignals := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()

	tel, err := telemetry.Setup(ctx, telemetryConfig(cfg.Telemetry, p.env), log)
	if err != nil {
		return usageError{fmt.Errorf("telemetry: %w", err)}
	}
	// The SDK reports its own errors through a process-wide handler that by
	// default prints unstructured lines to stderr.
	otel.SetErrorHandler(telemetry.NewErrorHandler(log, sdkErrorLogInterval))
	// Telemetry has no loop of its own to run (the SDK's exporters run
	// inside it) but must be flushed on every way out, set-up failures
	// included, and last, so that the shutdown's own spans and final counts
	// are exported: its stop is a defer rather than a run-group actor.
	// stopBy is when every step after the drain must be done; the signal
	// handler sets it when the shutdown starts.
	var stopBy time.Time
	afterDrain := func() (context.Context, context.CancelFunc) {
		if stopBy.IsZero() {
			return context.WithTimeout(context.WithoutCancel(parent), config.CloseGrace)
		}
		return context.WithDeadline(context.WithoutCancel(parent), stopBy)
	}
	var flushOnce sync.Once
	flushTelemetry := func() {
		flushOnce.Do(func() {
			fctx, cancel := afterDrain()
			defer cancel()
			if ferr := tel.Shutdown(fctx); ferr != nil {
				log.Warn("telemetry flush incomplete", "err", ferr)
			}
		})
	}
	defer flushTelemetry()

	busOpts := []bus.Option{
		bus.WithLogger(log),
		bus.WithTracerProvider(tel.TracerProvider()),
		bus.WithMeterProvider(tel.MeterProvider()),
		bus.WithHistograms(tel.BusHistograms()),
	}
	if cfg.DataDir != "" {
		busOpts = append(busOpts, bus.WithDataDir(cfg.DataDir))
	} else if names := cfg.NotCrashSafe(); len(names) > 0 {
		log.Warn("no data dir: every queue lives in memory, and a crash loses their accepted events; set --data-dir (EVENTBUS_DATA_DIR, data_dir) to keep the durable ones",
			"not_crash_safe", strings.Join(names, ","))
	}
	mem := p.memoryLimit(log)
	mem.apply(cfg)
	defer mem.restore()

	b, err := bus.New(cfg.Queues, busOpts...)
	if err != nil {
		if errors.Is(err, bus.ErrInvalidConfig) {
			return usageError{err}
		}
		// A locked, unreadable or damaged data dir is not a usage error.
		return fmt.Errorf("cannot open the queues: %w", err)
	}
	srv, err := transport.New(transport.Config{
		Bus:              b,
		Routes:           cfg.Routes,
		DefaultQueue:     cfg.DefaultQueue,
		MaxFrameBytes:    cfg.MaxFrameBytes,
		MaxOutputBytes:   cfg.MaxOutputBytes,
		MaxConnections:   cfg.MaxConnections,
		MaxBufferedBytes: cfg.MaxBufferedBytes,
		FrameTimeout:     cfg.FrameTimeout,
		AllowedUIDs:      cfg.AllowedUIDs,
		AllowedGIDs:      cfg.AllowedGIDs,
		WriteTimeout:     cfg.WriteTimeout,
		Logger:           log,
		MeterProvider:    tel.MeterProvider(),
	})
	if err != nil {
		return usageError{err}
	}
	// Listen before anything is announced ready, so that a live socket or a
	// busy admin port fails the start with a clear message.
	ln, err := transport.Listen(cfg.Socket, cfg.SocketMode)
	if err != nil {
		return fmt.Errorf("cannot serve on %s: %w", cfg.Socket, err)
	}
	var ready atomic.Bool
	var adm *admin.Server
	var al net.Listener
	adminAddr := ""
	if cfg.AdminEnabled() {
		if al, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			ln.Close()
			return fmt.Errorf("cannot serve admin on %s: %w", cfg.AdminAddr, err)
		}
		adminAddr = al.Addr().String()
		adm, err = admin.New(admin.Config{
			Addr:    adminAddr,
			Metrics: tel.MetricsHandler(),
			Stats:   func() any { return b.Stats() },
			Ready:   ready.Load,
			Pprof:   cfg.AdminPprof,
			Logger:  log,
		})
		if err != nil {
			al.Close()
			ln.Close()
			return usageError{err}
		}
	}

	// What the interrupts could not close cleanly; they run one after the
	// other in run's goroutine.
	var stopErrs []error
	var g runGroup
	g.add("signal handler",
		func() error {
			<-ctx.Done()
			return nil
		},
		func(cause error) {
			// From here a second SIGTERM/SIGINT takes the default action
			// and ends the process at once.
			stopSignals()
			ready.Store(false)
			stopBy = time.Now().Add(cfg.DrainTimeout + config.CloseGrace)
			if cause != nil {
				log.Error("a server stopped; shutting down", "err", cause)
			} else {
				log.Info("shutdown requested; refusing publishes and draining (a second signal exits at once)", "drain_timeout", cfg.DrainTimeout)
			}
		})
	g.add("socket server",
		func() error { return ignore(srv.Serve(ln), transport.ErrServerClosed) },
		func(error) {
			// Consumers keep receiving over their connections while the bus
			// drains; only then are the connections closed.
			drainCtx, cancelDrain := context.WithTimeout(context.WithoutCancel(parent), cfg.DrainTimeout)
			undelivered, derr := b.Shutdown(drainCtx)
			cancelDrain()
			logUndelivered(log, b.Queues(), undelivered, derr)
			closeCtx, cancelClose := afterDrain()
			defer cancelClose()
			if err := srv.Shutdown(closeCtx); err != nil {
				stopErrs = append(stopErrs, fmt.Errorf("socket server shutdown: %w", err))
			}
		})
	// SIGHUP re-reads the configuration. Caught for the whole run, so that
	// a reload sent during the drain is refused in the log rather than
	// ending the process (SIGHUP's default action).
	reloader, err := newReloader(cfg, reloadTargets{
		log: log, level: level, bus: b, server: srv, telemetry: tel, memory: mem,
	}, tel.MeterProvider().Meter("github.com/eventbus-sidecar/eventbus-sidecar/config"))
	if err != nil {
		ln.Close()
		if al != nil {
			al.Close()
		}
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	stopReloads := make(chan struct{})
	g.add("reload on SIGHUP",
		func() error {
			for {
				select {
				case <-hup:
					if ready.Load() {
						reloader.reload(ctx, reload)
					} else {
						log.Warn("reload refused: shutting down")
					}
				case <-stopReloads:
					return nil
				}
			}
		},
		func(error) { close(stopReloads) })
	// Drop, timeout and rejection summaries are written on a clock of their
	// own, so that log volume does not follow scrape or publish rates.
	stopSummaries := make(chan struct{})
	g.add("log summaries",
		func() error {
			t := time.NewTicker(bus.DefaultDropLogInterval)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					b.LogDrops()
					srv.LogRejections()
				case <-stopSummaries:
					return nil
				}
			}
		},
		func(error) { close(stopSummaries) })
	if adm != nil {
		g.add("admin server",
			func() error { return ignore(adm.Serve(al), http.ErrServerClosed) },
			func(error) {
				closeCtx, cancelClose := afterDrain()
				defer cancelClose()
				if err := adm.Shutdown(closeCtx); err != nil {
					stopErrs = append(stopErrs, err)
				}
			})
	}

	// The listeners are bound, so connections made from here on wait in
	// their backlogs until the actors start serving them.
	ready.Store(true)
	log.Info("eventbus-sidecar serving",
		"version", version, "socket", cfg.Socket, "socket_mode", fmt.Sprintf("%04o", uint32(cfg.SocketMode)),
		"admin_addr", adminAddr, "queues", strings.Join(b.Queues(), ","), "data_dir", cfg.DataDir, "drain_timeout", cfg.DrainTimeout,
		"max_connections", cfg.MaxConnections, "max_buffered_bytes", cfg.MaxBufferedBytes)

	rest, failure := g.run()
	if errs := append(stopErrs, rest...); len(errs) > 0 {
		log.Warn("shutdown incomplete", "err", errors.Join(errs...))
	}
	if failure != nil {
		return failure
	}
	// The flush comes before the last line, so that "stopped" means the
	// shutdown's spans and final counts have left too.
	flushTelemetry()
	log.Info("eventbus-sidecar stopped")
	return nil
}

// ignore returns nil for the error a server returns once it has been shut
// down on purpose, and err otherwise.
func ignore(err, closed error) error {
	if errors.Is(err, closed) {
		return nil
	}
	return err
}

// runGroup runs actors, each a function that blocks until its part of the
// sidecar stops (execute) and the function that stops it (interrupt). When
// the first execute returns, every interrupt is called in the order the
// actors were added, and run waits for the remaining executes. This is
// oklog/run's shape; run also returns the other actors' errors, which
// serve logs as an incomplete shutdown.
type runGroup struct {
	actors []actor
}

type actor struct {
	name      string
	execute   func() error
	interrupt func(cause error)
}

// add registers an actor; interrupt gets the error run returns (nil when
// the first actor returned nil, as the signal handler does).
func (g *runGroup) add(name string, execute func() error, interrupt func(cause error)) {
	g.actors = append(g.actors, actor{name, execute, interrupt})
}

// run executes every actor until one returns and returns that one's error
// as "<name> stopped: <err>" (nil if it returned nil), with the errors the
// others returned once interrupted.
func (g *runGroup) run() (rest []error, first error) {
	if len(g.actors) == 0 {
		return nil, nil
	}
	type result struct {
		name string
		err  error
	}
	done := make(chan result, len(g.actors))
	for _, a := range g.actors {
		go func() { done <- result{a.name, a.execute()} }()
	}
	r := <-done
	if r.err != nil {
		first = fmt.Errorf("%s stopped: %w", r.name, r.err)
	}
	for _, a := range g.actors {
		a.interrupt(first)
	}
	for range len(g.actors) - 1 {
		if r := <-done; r.err != nil {
			rest = append(rest, fmt.Errorf("%s: %w", r.name, r.err))
		}
	}
	return rest, first
}

// logUndelivered reports what the drain could not hand out before its
// deadline, per queue in one line (the bus logs each queue's detail too);
// those events are lost when the process exits.
func logUndelivered(log *slog.Logger, queues []string, undelivered map[string]int, err error) {
	total := 0
	perQueue := make([]any, 0, len(queues))
	for _, q := range queues {
		total += undelivered[q]
		perQueue = append(perQueue, slog.Int(q, undelivered[q]))
	}
	if err != nil || total > 0 {
		log.Warn("drain ended with events undelivered", "undelivered_total", total, slog.Group("undelivered", perQueue...), "err", err)
		return
	}
	log.Info("drain complete: every queue empty", "undelivered_total", 0, slog.Group("undelivered", perQueue...))
}
