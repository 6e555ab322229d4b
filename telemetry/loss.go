package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Telemetry-loss metric names (a contract for the alert rules; see
// docs/telemetry.md for their Prometheus names).
const (
	MetricSpansExported   = "eventbus.telemetry.spans.exported"
	MetricSpansDropped    = "eventbus.telemetry.spans.dropped"
	MetricSpansSampledOut = "eventbus.telemetry.spans.sampled_out"
	MetricExportsFailed   = "eventbus.telemetry.exports.failed"
	MetricSpanQueueSize   = "eventbus.telemetry.span_queue.size"
	MetricSpanQueueCap    = "eventbus.telemetry.span_queue.capacity"
)

// Attribute values of the loss metrics.
const (
	ReasonQueueFull    = "queue_full"
	ReasonExportFailed = "export_failed"
	ReasonShutdown     = "shutdown"
	SignalTraces       = "traces"
	SignalMetrics      = "metrics"
)

// lossCounters are plain atomics so that the span path pays one atomic add;
// the metrics read them through observable instruments at collection time.
type lossCounters struct {
	spansExported       atomic.Uint64
	spansQueueFull      atomic.Uint64
	spansExportFailed   atomic.Uint64
	spansShutdown       atomic.Uint64
	spansSampledOut     atomic.Uint64
	spanExportsFailed   atomic.Uint64
	metricExportsFailed atomic.Uint64

	mu      sync.Mutex
	lastErr map[string]string // signal -> last export error while failing
}

func (l *lossCounters) setLastErr(signal string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lastErr == nil {
		l.lastErr = map[string]string{}
	}
	l.lastErr[signal] = err.Error()
}

func (l *lossCounters) clearFailing(signal string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.lastErr, signal)
}

// failing returns the signals whose last export failed, with the error.
func (l *lossCounters) failing() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]string, len(l.lastErr))
	for k, v := range l.lastErr {
		out[k] = v
	}
	return out
}

func (l *lossCounters) snapshot() LossStats {
	return LossStats{
		SpansExported:            l.spansExported.Load(),
		SpansDroppedQueueFull:    l.spansQueueFull.Load(),
		SpansDroppedExportFailed: l.spansExportFailed.Load(),
		SpansDroppedShutdown:     l.spansShutdown.Load(),
		SpansSampledOut:          l.spansSampledOut.Load(),
		SpanExportsFailed:        l.spanExportsFailed.Load(),
		MetricExportsFailed:      l.metricExportsFailed.Load(),
	}
}

// register creates the loss instruments on m. Every series exists from the
// first collection at 0, so increase()-based alerts see the first loss.
func (l *lossCounters) register(m metric.Meter, proc *batchProcessor) error {
	exported, err := m.Int64ObservableCounter(MetricSpansExported,
		metric.WithUnit("{span}"), metric.WithDescription("Spans the collector accepted."))
	if err != nil {
		return fmt.Errorf("telemetry: %s: %w", MetricSpansExported, err)
	}
	dropped, err := m.Int64ObservableCounter(MetricSpansDropped,
		metric.WithUnit("{span}"), metric.WithDescription("Spans lost before reaching the collector, by reason (queue_full, export_failed, shutdown)."))
	if err != nil {
		return fmt.Errorf("telemetry: %s: %w", MetricSpansDropped, err)
	}
	sampledOut, err := m.Int64ObservableCounter(MetricSpansSampledOut,
		metric.WithUnit("{span}"), metric.WithDescription("Spans of accepted sampled-queue publishes left out by the data sample ratio (by design, not loss)."))
	if err != nil {
		return fmt.Errorf("telemetry: %s: %w", MetricSpansSampledOut, err)
	}
	failed, err := m.Int64ObservableCounter(MetricExportsFailed,
		metric.WithUnit("{export}"), metric.WithDescription("OTLP export calls that failed, by signal (traces, metrics)."))
	if err != nil {
		return fmt.Errorf("telemetry: %s: %w", MetricExportsFailed, err)
	}
	qSize, err := m.Int64ObservableGauge(MetricSpanQueueSize,
		metric.WithUnit("{span}"), metric.WithDescription("Spans waiting for export."))
	if err != nil {
		return fmt.Errorf("telemetry: %s: %w", MetricSpanQueueSize, err)
	}
	qCap, err := m.Int64ObservableGauge(MetricSpanQueueCap,
		metric.WithUnit("{span}"), metric.WithDescription("Spans the export queue holds before it drops."))
	if err != nil {
		return fmt.Errorf("telemetry: %s: %w", MetricSpanQueueCap, err)
	}
	reason := func(r string) metric.ObserveOption {
		return metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", r)))
	}
	signal := func(s string) metric.ObserveOption {
		return metric.WithAttributeSet(attribute.NewSet(attribute.String("signal", s)))
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(exported, clampInt64(l.spansExported.Load()))
		o.ObserveInt64(dropped, clampInt64(l.spansQueueFull.Load()), reason(ReasonQueueFull))
		o.ObserveInt64(dropped, clampInt64(l.spansExportFailed.Load()), reason(ReasonExportFailed))
		o.ObserveInt64(dropped, clampInt64(l.spansShutdown.Load()), reason(ReasonShutdown))
		o.ObserveInt64(sampledOut, clampInt64(l.spansSampledOut.Load()))
		o.ObserveInt64(failed, clampInt64(l.spanExportsFailed.Load()), signal(SignalTraces))
		o.ObserveInt64(failed, clampInt64(l.metricExportsFailed.Load()), signal(SignalMetrics))
		if proc != nil {
			o.ObserveInt64(qSize, int64(proc.len()))
			o.ObserveInt64(qCap, int64(proc.capacity()))
		} else {
			o.ObserveInt64(qSize, 0)
			o.ObserveInt64(qCap, 0)
		}
		return nil
	}, exported, dropped, sampledOut, failed, qSize, qCap)
	if err != nil {
		return fmt.Errorf("telemetry: loss metrics callback: %w", err)
	}
	return nil
}

func clampInt64(v uint64) int64 {
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}

// countingMetricExporter counts failed metric exports. While running it
// returns nil after a failure: the failure is already counted and logged
// once per interval by the loss reporter, and an error would make the SDK
// log it again through the global error handler. During shutdown (final)
// errors are returned so the caller learns the last export failed.
type countingMetricExporter struct {
	sdkmetric.Exporter
	loss  *lossCounters
	final atomic.Bool
}

// Export forwards rm and counts a failure.
func (e *countingMetricExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	err := e.Exporter.Export(ctx, rm)
	if err == nil {
		e.loss.clearFailing(SignalMetrics)
		return nil
	}
	e.loss.metricExportsFailed.Add(1)
	e.loss.setLastErr(SignalMetrics, err)
	if e.final.Load() {
		return err
	}
	return nil
}

// lossReporter logs one summary line per interval in which telemetry was
// lost, and one line when exports recover, never a line per span.
type lossReporter struct {
	loss     *lossCounters
	logger   *slog.Logger
	stopCh   chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	last     LossStats
	reported map[string]bool // signals reported failing
}

func startLossReporter(loss *lossCounters, every time.Duration, logger *slog.Logger) *lossReporter {
	r := &lossReporter{loss: loss, logger: logger, stopCh: make(chan struct{}), done: make(chan struct{}), reported: map[string]bool{}}
	go func() {
		defer close(r.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				r.report()
			case <-r.stopCh:
				return
			}
		}
	}()
	return r
}

func (r *lossReporter) stop() {
	close(r.stopCh)
	<-r.done
}

// report logs what was lost since the previous report.
func (r *lossReporter) report() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.loss.snapshot()
	prev := r.last
	r.last = now
	d := LossStats{
		SpansDroppedQueueFull:    now.SpansDroppedQueueFull - prev.SpansDroppedQueueFull,
		SpansDroppedExportFailed: now.SpansDroppedExportFailed - prev.SpansDroppedExportFailed,
		SpansDroppedShutdown:     now.SpansDroppedShutdown - prev.SpansDroppedShutdown,
		SpanExportsFailed:        now.SpanExportsFailed - prev.SpanExportsFailed,
		MetricExportsFailed:      now.MetricExportsFailed - prev.MetricExportsFailed,
	}
	failing := r.loss.failing()
	if d.SpansDroppedQueueFull+d.SpansDroppedExportFailed+d.SpansDroppedShutdown+d.SpanExportsFailed+d.MetricExportsFailed > 0 {
		args := []any{
			"spans_dropped_queue_full", d.SpansDroppedQueueFull,
			"spans_dropped_export_failed", d.SpansDroppedExportFailed,
			"spans_dropped_shutdown", d.SpansDroppedShutdown,
			"span_exports_failed", d.SpanExportsFailed,
			"metric_exports_failed", d.MetricExportsFailed,
		}
		for _, s := range []string{SignalTraces, SignalMetrics} {
			if e, ok := failing[s]; ok {
				args = append(args, s+"_error", e)
				r.reported[s] = true
			}
		}
		r.logger.Warn("telemetry lost since last report", args...)
	}
	for s := range r.reported {
		if _, still := failing[s]; !still {
			delete(r.reported, s)
			r.logger.Info("telemetry export recovered", "signal", s)
		}
	}
}
