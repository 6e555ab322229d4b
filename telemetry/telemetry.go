// Package telemetry builds the OpenTelemetry SDK side of the sidecar: the
// tracer and meter providers the bus emits into, OTLP gRPC export to a
// collector, a Prometheus text handler over the same metrics, trace sampling
// by queue, and accounting for telemetry that could not be delivered.
//
// Nothing here touches the OpenTelemetry globals; the caller passes the
// providers to the components that need them.
package telemetry

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of the telemetry package's own metrics.
const ScopeName = "github.com/eventbus-sidecar/eventbus-sidecar/telemetry"

// MaxRetryTime bounds how long one export is retried after a retryable
// error before it counts as failed.
const MaxRetryTime = 2 * time.Second

// Telemetry owns the SDK providers and exporters. Create it with Setup and
// end it with Shutdown.
type Telemetry struct {
	logger   *slog.Logger
	cfg      resolved
	tp       trace.TracerProvider
	sdkTP    *sdktrace.TracerProvider
	mp       metric.MeterProvider
	sdkMP    *sdkmetric.MeterProvider
	metrics  http.Handler
	loss     *lossCounters
	spanProc *batchProcessor
	filter   *ratioFilter // nil when traces are not exported
	limit    *traceLimiter
	metricEx *countingMetricExporter
	reporter *lossReporter
	busHist  *bus.Histograms // nil: the bus records into SDK instruments

	shutdownOnce sync.Once
	shutdownErr  error
}

// exportRetry is how both exporters back off after a retryable error:
// 100 ms to 1 s between tries, for at most MaxRetryTime in all.
func exportRetry() retryConfig {
	return retryConfig{initial: 100 * time.Millisecond, max: time.Second, maxElapsed: MaxRetryTime}
}

// Setup builds the providers from cfg and the OTEL_* environment. It does not
// contact the collector: export failures later are counted and logged, never
// fatal. The returned Telemetry must be shut down.
func Setup(ctx context.Context, cfg Config, logger *slog.Logger) (*Telemetry, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	t := &Telemetry{logger: logger, cfg: r, loss: &lossCounters{}}
	if r.disabled {
		t.tp = tracenoop.NewTracerProvider()
		t.mp = metricnoop.NewMeterProvider()
		t.metrics = &promExposition{logger: logger}
		logger.Info("telemetry disabled")
		return t, nil
	}
	if r.instanceID == "" {
		r.instanceID = newUUID()
		t.cfg.instanceID = r.instanceID
	}
	res, err := buildResource(ctx, r)
	if err != nil {
		return nil, err
	}

	// The stock exporters' retries go on for a minute (bounded only by the
	// export timeout), so one batch would hold the export worker for the
	// whole timeout when the collector is down. Retrying briefly rides out
	// a blip; in an outage the loss is counted within seconds.
	retry := exportRetry()

	// Metrics: a manual reader for the Prometheus text on /metrics, and a
	// periodic OTLP reader when an endpoint is configured, on one provider so
	// both see identical numbers.
	mpOpts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	if !r.exemplars {
		// Offering every measurement to an exemplar reservoir costs the
		// bus's hot path, and neither /metrics (the text format has none)
		// nor the collector's Prometheus exporter passes exemplars on.
		// OTEL_METRICS_EXEMPLAR_FILTER turns them on.
		mpOpts = append(mpOpts, sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
	}
	if r.metricEndpoint.set() {
		exp, err := newMetricExporter(metricExporterConfig{
			exporterConfig: exporterConfig{
				endpoint: r.metricEndpoint, tls: r.metricTLS, headers: r.metricHeaders, gzip: r.metricGzip,
				timeout: r.exportTimeout, retry: retry,
			},
			delta: r.metricDelta, lowMemory: r.metricLowMemory, exponential: r.metricExponential,
		})
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP metric exporter for %s: %w", r.metricEndpoint, err)
		}
		t.metricEx = &countingMetricExporter{Exporter: exp, loss: t.loss}
	}
	// The bus records its per-event histograms itself, a few atomic adds,
	// and the readers get them through producers, unless what a reader
	// wants from a histogram is more than explicit buckets and extremes:
	// exemplars (which only the SDK's instruments carry; whoever turns them
	// on has chosen their cost) or another aggregation set through the OTLP
	// exporter's environment.
	var promProducers []sdkmetric.Producer
	var otlpProducer *histogramProducer
	if !r.exemplars && (t.metricEx == nil || plainHistograms(t.metricEx.Aggregation(sdkmetric.InstrumentKindHistogram))) {
		t.busHist = bus.NewHistograms()
		delta := t.metricEx != nil && t.metricEx.Temporality(sdkmetric.InstrumentKindHistogram) == metricdata.DeltaTemporality
		promProducers = append(promProducers, newHistogramProducer(t.busHist, false, !delta))
		if t.metricEx != nil {
			otlpProducer = newHistogramProducer(t.busHist, delta, true)
		}
	}
	prom := newPromExposition(logger, promProducers...)
	mpOpts = append(mpOpts, sdkmetric.WithReader(prom.reader))
	if t.metricEx != nil {
		readerOpts := []sdkmetric.PeriodicReaderOption{sdkmetric.WithInterval(r.metricInterval), sdkmetric.WithTimeout(r.exportTimeout)}
		if otlpProducer != nil {
			readerOpts = append(readerOpts, sdkmetric.WithProducer(otlpProducer))
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(t.metricEx, readerOpts...)))
	}
	t.sdkMP = sdkmetric.NewMeterProvider(mpOpts...)
	t.mp = t.sdkMP
	t.metrics = prom

	// Traces: every span is recorded, unless the export queue is full or the
	// sampled queues' publishes are over their trace rate (shedProvider); the
	// ratio filter decides at the end of a span whether it is exported (see
	// sampling.go), and the bounded batch processor never blocks the caller.
	if r.traces {
		exp, err := newSpanExporter(exporterConfig{
			endpoint: r.traceEndpoint, tls: r.traceTLS, headers: r.traceHeaders, gzip: r.traceGzip,
			timeout: r.exportTimeout, retry: retry,
		})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("telemetry: OTLP trace exporter for %s: %w", r.traceEndpoint, err), t.sdkMP.Shutdown(ctx))
		}
		t.spanProc = newBatchProcessor(exp, batchOptions{
			queueSize: r.queueSize, batchSize: r.batchSize, delay: r.batchDelay, timeout: r.exportTimeout,
			cpuShare: r.exportCPU, bulkQueues: r.sampledQueues,
		}, t.loss)
		t.filter = newRatioFilter(t.spanProc, r.ratio, r.sampledQueues, t.loss)
		t.sdkTP = sdktrace.NewTracerProvider(
			sdktrace.WithResource(res),
			sdktrace.WithSampler(sdktrace.AlwaysSample()),
			sdktrace.WithSpanProcessor(t.filter),
		)
		t.limit = newTraceLimiter(r.traceRate, nil)
		t.tp = newShedProvider(t.sdkTP, t.spanProc, t.loss, t.limit)
	} else {
		t.tp = tracenoop.NewTracerProvider()
	}

	if err := t.loss.register(t.sdkMP.Meter(ScopeName), t.spanProc); err != nil {
		return nil, errors.Join(err, t.shutdownProviders(ctx))
	}
	t.reporter = startLossReporter(t.loss, r.lossInterval, logger)

	logger.Info("telemetry started",
		"service_name", r.serviceName, "instance_id", r.instanceID,
		"traces", r.traces, "trace_endpoint", r.traceEndpoint.String(),
		"metric_endpoint", r.metricEndpoint.String(), "metric_interval", r.metricInterval,
		"data_sample_ratio", r.ratio, "data_trace_rate", r.traceRate, "sampled_queues", r.sampledQueues, "span_export_cpu", r.exportCPU)
	return t, nil
}

func buildResource(ctx context.Context, r resolved) (*resource.Resource, error) {
	attrs := make([]attribute.KeyValue, 0, len(r.resourceAttrs)+3)
	for k, v := range r.resourceAttrs {
		attrs = append(attrs, attribute.String(k, v))
	}
	attrs = append(attrs,
		semconv.ServiceName(r.serviceName),
		semconv.ServiceInstanceID(r.instanceID))
	if r.serviceVersion != "" {
		attrs = append(attrs, semconv.ServiceVersion(r.serviceVersion))
	}
	// Later attributes win, so the resolved service.* override the raw
	// OTEL_RESOURCE_ATTRIBUTES copies added first.
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attrs...))
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return res, nil
}

// TracerProvider is what the bus and transport create spans with. It is a
// no-op when telemetry or tracing is off or no trace endpoint is configured.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tp }

// MeterProvider is what the bus and transport create instruments with.
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.mp }

// BusHistograms is what the bus records its duration histograms into
// (bus.WithHistograms), for the metric readers to export as if they were
// the meter provider's instruments. It is nil when the bus must record
// them into the meter provider: telemetry disabled, exemplars on, or an
// OTLP histogram aggregation other than explicit buckets.
func (t *Telemetry) BusHistograms() *bus.Histograms { return t.busHist }

// plainHistograms reports whether agg, a reader's aggregation for
// histograms, is explicit buckets with extremes, which the bus's own
// histograms reproduce (the instruments' bounds replace the reader's).
func plainHistograms(agg sdkmetric.Aggregation) bool {
	switch a := agg.(type) {
	case sdkmetric.AggregationDefault:
		return true
	case sdkmetric.AggregationExplicitBucketHistogram:
		return !a.NoMinMax
	}
	return false
}

// SetDataSampleRatio changes, while the sidecar runs, the share (0 to 1)
// of accepted publishes on the sampled queues whose traces are exported,
// as Config.DataSampleRatio does at Setup; nil goes back to the ratio the
// OTEL_TRACES_SAMPLER* variables gave at Setup, else 1. Spans that end
// from now on get the new ratio; a trace whose spans end on both sides of
// the change may be cut, once. It does nothing when traces are not
// exported. A ratio outside 0..1 is refused with an error wrapping
// ErrInvalidConfig, and the current one kept.
func (t *Telemetry) SetDataSampleRatio(ratio *float64) error {
	r := t.cfg.envRatio
	if ratio != nil {
		r = *ratio
		if !(r >= 0 && r <= 1) {
			return fmt.Errorf("%w: data sample ratio %v: want a ratio from 0 to 1", ErrInvalidConfig, r)
		}
	}
	if t.filter != nil {
		t.filter.setRatio(r)
	}
	return nil
}

// SetDataTraceRate changes, while the sidecar runs, the most publishes per
// second on the sampled queues that are traced, as Config.DataTraceRate
// does at Setup (0: DefaultDataTraceRate, +Inf: no limit). Publishes from
// now on get the new rate. It does nothing when traces are not exported. A
// rate below 0 is refused with an error wrapping ErrInvalidConfig, and the
// current one kept.
func (t *Telemetry) SetDataTraceRate(rate float64) error {
	r, err := traceRate(rate)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if t.limit != nil {
		t.limit.setRate(r)
	}
	return nil
}

// MetricsHandler serves the provider's metrics in Prometheus text format
// (for the admin listener's /metrics). It works with or without a collector.
func (t *Telemetry) MetricsHandler() http.Handler { return t.metrics }

// LossStats is a snapshot of telemetry that could not be delivered.
type LossStats struct {
	// SpansExported counts spans the collector acknowledged.
	SpansExported uint64 `json:"spans_exported"`
	// SpansDroppedQueueFull counts spans dropped because the export queue
	// was full (collector slow or down).
	SpansDroppedQueueFull uint64 `json:"spans_dropped_queue_full"`
	// SpansDroppedExportFailed counts spans in batches the collector did not take.
	SpansDroppedExportFailed uint64 `json:"spans_dropped_export_failed"`
	// SpansDroppedShutdown counts spans still queued when shutdown's deadline ended.
	SpansDroppedShutdown uint64 `json:"spans_dropped_shutdown"`
	// SpansSampledOut counts spans not exported by design (DataSampleRatio).
	SpansSampledOut uint64 `json:"spans_sampled_out"`
	// SpanExportsFailed and MetricExportsFailed count failed export calls.
	SpanExportsFailed   uint64 `json:"span_exports_failed"`
	MetricExportsFailed uint64 `json:"metric_exports_failed"`
	// SpanQueueSize and SpanQueueCapacity describe the export queue now.
	SpanQueueSize     int `json:"span_queue_size"`
	SpanQueueCapacity int `json:"span_queue_capacity"`
}

// Stats returns the loss counters, for the admin /stats endpoint.
func (t *Telemetry) Stats() LossStats {
	s := t.loss.snapshot()
	if t.spanProc != nil {
		s.SpanQueueSize = t.spanProc.len()
		s.SpanQueueCapacity = t.spanProc.capacity()
	}
	return s
}

// ForceFlush exports every span and metric recorded so far, within ctx.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	var errs []error
	if t.sdkTP != nil {
		errs = append(errs, t.sdkTP.ForceFlush(ctx))
	}
	if t.sdkMP != nil {
		errs = append(errs, t.sdkMP.ForceFlush(ctx))
	}
	return errors.Join(errs...)
}

// Shutdown flushes what is pending and stops the exporters, giving up when
// ctx ends (spans still queued then are counted as lost). Call it after the
// bus has drained so that the last spans and metrics are included. Safe to
// call more than once; later calls return the first result.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	t.shutdownOnce.Do(func() {
		if t.reporter != nil {
			t.reporter.stop()
		}
		t.shutdownErr = t.shutdownProviders(ctx)
		if t.reporter != nil {
			t.reporter.report() // one last summary of anything lost on the way out
		}
	})
	return t.shutdownErr
}

func (t *Telemetry) shutdownProviders(ctx context.Context) error {
	var errs []error
	if t.metricEx != nil {
		t.metricEx.final.Store(true)
	}
	// Traces first: the span loss counters then reach the final metric export.
	if t.sdkTP != nil {
		if err := t.sdkTP.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("telemetry: trace provider shutdown: %w", err))
		}
	}
	if t.sdkMP != nil {
		if err := t.sdkMP.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("telemetry: meter provider shutdown: %w", err))
		}
	}
	return errors.Join(errs...)
}

// newUUID returns a random (version 4) UUID for service.instance.id.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
