package telemetry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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
	endpoint endpoint
	tls      *tls.Config
	headers  map[string]string
	gzip     bool
	// timeout bounds one export, retries included.
	timeout time.Duration
	retry   retryConfig
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
	client  *grpcClient
	timeout time.Duration
	retry   retrier
	cfg     metricExporterConfig

	// mu serialises exports: they share the encoder's scratch space.
	mu      sync.Mutex
	enc     metricEncoder
	stopped atomic.Bool

	shutdownOnce sync.Once
}

var _ sdkmetric.Exporter = (*otlpMetricExporter)(nil)

func newMetricExporter(cfg metricExporterConfig) (*otlpMetricExporter, error) {
	client, err := newGRPCClient(grpcClientConfig{
		endpoint: cfg.endpoint, tls: cfg.tls, headers: cfg.headers, gzip: cfg.gzip, userAgent: metricExporterUserAgent,
	})
	if err != nil {
		return nil, err
	}
	return &otlpMetricExporter{client: client, timeout: cfg.timeout, retry: newRetrier(cfg.retry), cfg: cfg}, nil
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
	if err := req.seal(); err != nil {
		return err
	}
	if x.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.timeout)
		defer cancel()
	}
	var resp []byte
	err := x.retry.do(ctx, x.stopped.Load, func() error {
		var err error
		resp, err = x.client.call(ctx, metricExportMethod, req)
		return err
	})
	if err != nil {
		return fmt.Errorf("telemetry: OTLP metric export to %s: %w", x.client.target(), err)
	}
	if rejected, msg, _ := partialSuccessOf(resp); rejected > 0 {
		return fmt.Errorf("telemetry: the collector rejected %d data points: %q", rejected, msg)
	}
	return nil
}

// ForceFlush has nothing to do: every export is sent when it is made.
func (x *otlpMetricExporter) ForceFlush(ctx context.Context) error { return ctx.Err() }

// Shutdown ends an export in flight and closes the connection; later
// exports return an error. Safe to call more than once.
func (x *otlpMetricExporter) Shutdown(context.Context) error {
	x.shutdownOnce.Do(func() {
		x.stopped.Store(true)
		x.client.close()
	})
	return nil
}

// errMetricExporterShutdown is returned by an export after Shutdown.
var errMetricExporterShutdown = errors.New("telemetry: OTLP metric exporter is shut down")
