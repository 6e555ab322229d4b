package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// Compare runs cfg first against a framing-only server of the load tool's
// own (see ceiling) on a temporary socket, then against the sidecar at
// cfg.Socket, through the same client code, each run bounded by
// cfg.Duration, and reports the sidecar's figures as ratios of the
// ceiling's. The ceiling server runs in this process, so it shares the
// machine with the load as the sidecar does.
func Compare(ctx context.Context, cfg Config) (Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Report{}, fmt.Errorf("load config: %w", err)
	}
	ceil, err := runCeiling(ctx, cfg)
	if err != nil {
		return Report{Ceiling: &ceil}, fmt.Errorf("ceiling run: %w", err)
	}
	if cfg.Label == "" {
		cfg.Label = "sidecar"
	}
	res, err := run(ctx, cfg, realClock{})
	rep := Report{Result: res, Ceiling: &ceil}
	if err != nil {
		return rep, err
	}
	rep.VsCeiling = ratios(res, ceil)
	return rep, nil
}

func runCeiling(ctx context.Context, cfg Config) (Result, error) {
	// A short path: sun_path holds at most 107 bytes.
	dir, err := os.MkdirTemp("", "ebceil")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	srv, err := startCeiling(filepath.Join(dir, "c.sock"))
	if err != nil {
		return Result{}, err
	}
	defer srv.close()
	cfg.Socket, cfg.Label = srv.path, "ceiling"
	return run(ctx, cfg, realClock{})
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
