package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Report is a run against the sidecar, and with Compare the same run
// against the framing ceiling and the sidecar's figures as ratios of it.
// Its JSON is the sidecar's Result with "ceiling" and "vs_ceiling" added.
type Report struct {
	Result
	Ceiling   *Result `json:"ceiling,omitempty"`
	VsCeiling *Ratios `json:"vs_ceiling,omitempty"`
}

// Ratios are the sidecar's figures divided by the ceiling's: throughput
// ratios under 1 and latency ratios over 1 are what the sidecar's queueing
// costs over bare framing on the same machine. A ratio whose ceiling
// figure is zero (not measured) is 0.
type Ratios struct {
	Rate           float64       `json:"events_per_second"`
	PublishRate    float64       `json:"publish_events_per_second"`
	PublishLatency LatencyRatios `json:"publish_latency"`
	EndToEnd       LatencyRatios `json:"end_to_end_latency"`
}

// LatencyRatios are percentile by percentile ratios.
type LatencyRatios struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

func ratio[T ~int64 | ~float64](a, b T) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func latencyRatios(s, c Percentiles) LatencyRatios {
	return LatencyRatios{P50: ratio(s.P50, c.P50), P90: ratio(s.P90, c.P90), P99: ratio(s.P99, c.P99), P999: ratio(s.P999, c.P999), Max: ratio(s.Max, c.Max)}
}

func ratios(sidecar, ceiling Result) *Ratios {
	return &Ratios{
		Rate:           ratio(sidecar.Rate, ceiling.Rate),
		PublishRate:    ratio(sidecar.PublishRate, ceiling.PublishRate),
		PublishLatency: latencyRatios(sidecar.PublishLatency, ceiling.PublishLatency),
		EndToEnd:       latencyRatios(sidecar.EndToEnd, ceiling.EndToEnd),
	}
}

// CeilingStarter starts a ceiling server listening at the socket path and
// returns the function that stops it.
type CeilingStarter func(ctx context.Context, socket string) (stop func() error, err error)

// CeilingInProcess runs the ceiling server in this process. It is the
// simplest way and serves tests, but the server then shares the load
// tool's Go scheduler: the load's own timers and goroutines wait behind
// the server's, which the sidecar, a process of its own, does not do
// (measured: a median send lag of about 0.4 ms in process against
// 0.04 ms out of process at 10000 events/s).
func CeilingInProcess(_ context.Context, socket string) (func() error, error) {
	s, err := startCeiling(socket)
	if err != nil {
		return nil, err
	}
	return func() error { s.close(); return nil }, nil
}

// ceilingStartTimeout bounds the wait for a child ceiling server to serve.
const ceilingStartTimeout = 10 * time.Second

// CeilingProcess runs the ceiling server in the child process that
// cmd(socket) describes (the load tool's own binary, see ServeCeiling),
// so that the ceiling and the sidecar are measured alike: each a process
// of its own beside the load. The server is taken as ready once the
// socket accepts a connection; stop sends it SIGTERM and waits for it.
func CeilingProcess(cmd func(socket string) *exec.Cmd) CeilingStarter {
	return func(ctx context.Context, socket string) (func() error, error) {
		c := cmd(socket)
		dieWithParent(c)
		if err := c.Start(); err != nil {
			return nil, fmt.Errorf("start the ceiling server: %w", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- c.Wait() }()
		stop := func() error {
			_ = c.Process.Signal(syscall.SIGTERM) // it may have exited already; Wait says how
			if err := <-exited; err != nil {
				return fmt.Errorf("ceiling server %s: %w", c.Path, err)
			}
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, ceilingStartTimeout)
		defer cancel()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if nc, err := net.Dial("unix", socket); err == nil {
				nc.Close()
				return stop, nil
			}
			select {
			case err := <-exited:
				return nil, fmt.Errorf("ceiling server %s exited before serving %s: %v", c.Path, socket, err)
			case <-ctx.Done():
				return nil, errors.Join(fmt.Errorf("ceiling server %s: not serving %s: %w", c.Path, socket, ctx.Err()), stop())
			case <-t.C:
			}
		}
	}
}

// ServeCeiling serves the ceiling at socket until ctx ends: the child
// process of CeilingProcess.
func ServeCeiling(ctx context.Context, socket string) error {
	s, err := startCeiling(socket)
	if err != nil {
		return err
	}
	<-ctx.Done()
	s.close()
	return nil
}

// Compare runs cfg first against a ceiling server (see ceiling) that start
// starts on a temporary socket (CeilingInProcess when start is nil), then
// against the sidecar at cfg.Socket, through the same client code, each
// run bounded by cfg.Duration, and reports the sidecar's figures as ratios
// of the ceiling's.
func Compare(ctx context.Context, cfg Config, start CeilingStarter) (Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Report{}, fmt.Errorf("load config: %w", err)
	}
	if start == nil {
		start = CeilingInProcess
	}
	ceil, err := runCeiling(ctx, cfg, start)
	if err != nil {
		return Report{Ceiling: &ceil}, fmt.Errorf("ceiling run: %w", err)
	}
	if cfg.Label == "" {
		cfg.Label = "sidecar"
	}
	res, err := runReal(ctx, cfg)
	rep := Report{Result: res, Ceiling: &ceil}
	if err != nil {
		return rep, err
	}
	rep.VsCeiling = ratios(res, ceil)
	return rep, nil
}

func runCeiling(ctx context.Context, cfg Config, start CeilingStarter) (_ Result, err error) {
	// A short path: sun_path holds at most 107 bytes.
	dir, err := os.MkdirTemp("", "ebceil")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	cfg.Socket, cfg.Label = filepath.Join(dir, "c.sock"), "ceiling"
	stop, err := start(ctx, cfg.Socket)
	if err != nil {
		return Result{}, err
	}
	defer func() { err = errors.Join(err, stop()) }()
	return runReal(ctx, cfg)
}

// WriteText prints the report for people: the sidecar's result, then the
// ceiling's and the ratios when there are.
func (r Report) WriteText(w io.Writer) error {
	err := r.Result.WriteText(w)
	if r.Ceiling == nil || r.VsCeiling == nil {
		return err
	}
	errs := []error{err, r.Ceiling.WriteText(w)}
	p := func(format string, args ...any) {
		_, err := fmt.Fprintf(w, format, args...)
		errs = append(errs, err)
	}
	v := r.VsCeiling
	p("sidecar / ceiling:\n")
	p("  throughput:         %.2f published and acked, %.2f published\n", v.Rate, v.PublishRate)
	pl := func(name string, l LatencyRatios) {
		p("  %-19s p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", name+":", l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	pl("publish latency", v.PublishLatency)
	if r.Config.Consumers > 0 {
		pl("end-to-end latency", v.EndToEnd)
	}
	return errors.Join(errs...)
}
