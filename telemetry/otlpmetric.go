package telemetry

import (
	"context"
	"errors"
	"fmt"
	"sync"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// metricExportMethod is the OTLP/gRPC metrics service's one RPC.
const metricExportMethod = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

// metricExporterUserAgent names this exporter to the collector.
const metricExporterUserAgent = "eventbus-sidecar-otlp-metric-exporter"

// metricExporterConfig is what newMetricExporter needs from the resolved
// configuration.
type metricExporterConfig struct {
	exporterConfig
	// delta and lowMemory choose the temporality per instrument kind as
	// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE does; exponential
	// makes histograms base-2 exponential by default.
	delta, lowMemory, exponential bool
}

// otlpMetricExporter is an sdkmetric.Exporter that sends metrics to an
// OTLP gRPC collector, encoded by metricEncoder over grpcClient, with the
// retries, temporality and aggregation choices of the stock exporter as
// Setup configured it.
type otlpMetricExporter struct {
	*otlpExporter
	cfg metricExporterConfig

	// mu serialises exports: they share the encoder's scratch space.
	mu  sync.Mutex
	enc metricEncoder
}

var _ sdkmetric.Exporter = (*otlpMetricExporter)(nil)

// newMetricExporter creates the exporter.
func newMetricExporter(cfg metricExporterConfig) (*otlpMetricExporter, error) {
	x, err := newOTLPExporter(cfg.exporterConfig, metricExporterUserAgent)
	if err != nil {
		return nil, err
	}
	return &otlpMetricExporter{otlpExporter: x, cfg: cfg}, nil
}

// Temporality is the temporality preference's choice for k: cumulative
// for every kind by default; with delta, counters and histograms (also
// observable counters) are delta; with lowmemory only the synchronous
// counters and histograms are.
func (x *otlpMetricExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	switch {
	case x.cfg.delta:
		switch k {
		case sdkmetric.InstrumentKindCounter, sdkmetric.InstrumentKindHistogram, sdkmetric.InstrumentKindObservableCounter:
			return metricdata.DeltaTemporality
		}
	case x.cfg.lowMemory:
		switch k {
		case sdkmetric.InstrumentKindCounter, sdkmetric.InstrumentKindHistogram:
			return metricdata.DeltaTemporality
		}
	}
	return metricdata.CumulativeTemporality
}

// Aggregation is the SDK's default for k, but base-2 exponential for
// histograms when configured so.
func (x *otlpMetricExporter) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	if x.cfg.exponential && k == sdkmetric.InstrumentKindHistogram {
		// The sizes the OpenTelemetry specification gives as defaults.
		return sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: 20}
	}
	return sdkmetric.DefaultAggregationSelector(k)
}

// Export sends rm in one request, retrying as configured.
func (x *otlpMetricExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	if x.stopped.Load() {
		return errMetricExporterShutdown
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	req := x.client.newRequest()
	defer req.release()
	*req.buf = x.enc.encode(*req.buf, rm)
	rejected, msg, err := x.send(ctx, metricExportMethod, req)
	if err != nil {
		return fmt.Errorf("telemetry: OTLP metric export to %s: %w", x.client.target(), err)
	}
	if rejected > 0 {
		return fmt.Errorf("telemetry: the collector rejected %d data points: %q", rejected, msg)
	}
	return nil
}

// ForceFlush has nothing to do: every export is sent when it is made.
func (x *otlpMetricExporter) ForceFlush(ctx context.Context) error { return ctx.Err() }

// errMetricExporterShutdown is returned by an export after Shutdown.
var errMetricExporterShutdown = errors.New("telemetry: OTLP metric exporter is shut down")
