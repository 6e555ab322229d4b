package telemetry

import (
	"context"
	"errors"
	"fmt"
	"sync"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// traceExportMethod is the OTLP/gRPC trace service's one RPC.
const traceExportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// spanExporterUserAgent names this exporter to the collector.
const spanExporterUserAgent = "eventbus-sidecar-otlp-span-exporter"

// errExporterShutdown is returned by an export after Shutdown.
var errExporterShutdown = errors.New("telemetry: OTLP span exporter is shut down")

// otlpSpanExporter is an sdktrace.SpanExporter that sends spans to an OTLP
// gRPC collector. It encodes the request itself (spanEncoder) instead of
// building the generated protobuf structs, which made the stock exporter
// cost more per span than the bus's whole publish and delivery, and
// otherwise behaves as the stock exporter configured by Setup did.
type otlpSpanExporter struct {
	*otlpExporter

	// mu serialises exports: they share the encoder's scratch space. The
	// batch processor never exports concurrently, so it is uncontended.
	mu  sync.Mutex
	enc spanEncoder
}

var _ sdktrace.SpanExporter = (*otlpSpanExporter)(nil)

// newSpanExporter creates the exporter.
func newSpanExporter(cfg exporterConfig) (*otlpSpanExporter, error) {
	x, err := newOTLPExporter(cfg, spanExporterUserAgent)
	if err != nil {
		return nil, err
	}
	return &otlpSpanExporter{otlpExporter: x}, nil
}

// ExportSpans sends spans in one request, retrying as configured. An
// error means the collector did not take the spans (or rejected some of
// them: see partialSuccessError).
func (x *otlpSpanExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if x.stopped.Load() {
		return errExporterShutdown
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	req := x.client.newRequest()
	defer req.release()
	*req.buf = x.enc.encode(*req.buf, spans)
	if req.empty() {
		return nil
	}
	rejected, msg, err := x.send(ctx, traceExportMethod, req)
	if err != nil {
		return fmt.Errorf("telemetry: OTLP span export to %s: %w", x.client.target(), err)
	}
	if rejected > 0 {
		return &partialSuccessError{rejected: rejected, sent: len(spans), message: msg}
	}
	return nil
}

// partialSuccessError is an export the collector took only in part: the
// call succeeded but it rejected some spans (OTLP partial_success).
type partialSuccessError struct {
	rejected int64
	sent     int
	message  string
}

func (e *partialSuccessError) Error() string {
	return fmt.Sprintf("telemetry: the collector rejected %d of %d spans: %q", e.rejected, e.sent, e.message)
}

// requestBuffers recycles request buffers once the HTTP transport and the
// exporter have both let go of them (see grpcRequest).
type requestBuffers struct {
	mu   sync.Mutex
	free []*[]byte
}

// requestBufferSize is a new buffer's capacity; it grows to fit the
// batches and is kept at that size.
const requestBufferSize = 64 << 10

// maxFreeRequestBuffers bounds the idle buffers kept: a request and its
// compressed copy are in use at a time, and the transport may still hold
// the last ones.
const maxFreeRequestBuffers = 4

// Get returns an empty buffer; its length argument is ignored because the
// encoder appends.
func (p *requestBuffers) Get(int) *[]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		*b = (*b)[:0]
		return b
	}
	b := make([]byte, 0, requestBufferSize)
	return &b
}

// Put keeps b for reuse.
func (p *requestBuffers) Put(b *[]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) < maxFreeRequestBuffers {
		p.free = append(p.free, b)
	}
}
