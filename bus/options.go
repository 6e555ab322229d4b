package bus

import (
	"log/slog"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Clock is the bus's source of time. Tests inject a fake one so that queue
// timeouts can be driven without sleeping.
type Clock interface {
	// Now returns the current time; it stamps EnqueuedAt and measures durations.
	Now() time.Time
	// AfterFunc calls f once d has passed, in its own goroutine, like
	// time.AfterFunc: publishes waiting for room time out this way,
	// one timer per queue, without a goroutine of their own.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is the subset of *time.Timer the bus needs.
type Timer interface {
	// Stop prevents the timer from firing; it reports whether it was stopped
	// before firing.
	Stop() bool
}

// SystemClock returns the wall clock, the default.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// DefaultDropLogInterval is how often the bus's owner should call
// Bus.LogDrops: soon enough that an overload shows in the log within
// seconds, seldom enough that a lasting one costs one line per queue per
// interval.
const DefaultDropLogInterval = 10 * time.Second

// Option configures a Bus. It is sealed: only this package creates options.
type Option interface {
	apply(*options)
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	clock          Clock
	logger         *slog.Logger
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	dataDir        string
	walOptions     wal.Options
	histograms     *Histograms
}

func defaultOptions() options {
	return options{
		clock:          SystemClock(),
		logger:         slog.New(slog.DiscardHandler),
		tracerProvider: tracenoop.NewTracerProvider(),
		meterProvider:  metricnoop.NewMeterProvider(),
	}
}

// WithClock sets the clock (default SystemClock). A nil clock is ignored.
func WithClock(c Clock) Option {
	return optionFunc(func(o *options) {
		if c != nil {
			o.clock = c
		}
	})
}

// WithLogger sets the logger (default: discard). A nil logger is ignored.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) {
		if l != nil {
			o.logger = l
		}
	})
}

// WithTracerProvider sets where the bus's spans go (default: noop). A nil
// provider is ignored.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(o *options) {
		if tp != nil {
			o.tracerProvider = tp
		}
	})
}

// WithMeterProvider sets where the bus's metrics go (default: noop). A nil
// provider is ignored.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) {
		if mp != nil {
			o.meterProvider = mp
		}
	})
}

// WithHistograms makes the bus record its duration histograms
// (HistogramMetrics) into h, for its owner to export (Histograms.Snapshot),
// instead of into instruments of the meter provider; the meter provider
// still gets the gauges and counters. A nil h is ignored. h serves one bus.
func WithHistograms(h *Histograms) Option {
	return optionFunc(func(o *options) {
		if h != nil {
			o.histograms = h
		}
	})
}
