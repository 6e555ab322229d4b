package telemetry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// traceExportMethod is the OTLP/gRPC trace service's one RPC.
const traceExportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// spanExporterUserAgent names this exporter to the collector; gRPC appends
// its own version.
const spanExporterUserAgent = "eventbus-sidecar-otlp-span-exporter"

// errExporterShutdown is returned by an export after Shutdown.
var errExporterShutdown = errors.New("telemetry: OTLP span exporter is shut down")

// retryConfig bounds the retries of one export: exponential backoff from
// initial to max (randomised by ±50%, multiplied by 1.5 each time, as the
// stock OTLP exporters do), given up when the next wait would pass
// maxElapsed since the first attempt. The zero value never retries.
type retryConfig struct {
	initial, max, maxElapsed time.Duration
}

// spanExporterConfig is what newSpanExporter needs from the resolved
// configuration.
type spanExporterConfig struct {
	endpoint endpoint
	// tls verifies the collector (and carries a client certificate) when
	// the endpoint is not plaintext; nil: the system's roots.
	tls *tls.Config
	// headers are sent as gRPC metadata with every export.
	headers map[string]string
	gzip    bool
	// timeout bounds one export, retries included.
	timeout time.Duration
	retry   retryConfig
	// dialOptions are added to the connection's (reconnect backoff).
	dialOptions []grpc.DialOption
}

// otlpSpanExporter is an sdktrace.SpanExporter that sends spans to an OTLP
// gRPC collector. It encodes the request itself (spanEncoder) instead of
// building the generated protobuf structs, which made the stock exporter
// cost more per span than the bus's whole publish and delivery, and
// otherwise behaves as the stock exporter configured by Setup did.
type otlpSpanExporter struct {
	conn     *grpc.ClientConn
	target   string
	md       metadata.MD
	callOpts []grpc.CallOption
	timeout  time.Duration
	retry    retryConfig
	// now and sleep are the clock retries use; tests replace them.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error

	// mu serialises exports: they share the encoder's scratch space. The
	// batch processor never exports concurrently, so it is uncontended.
	mu      sync.Mutex
	enc     spanEncoder
	bufs    requestBuffers
	stopped atomic.Bool

	shutdownOnce sync.Once
	shutdownErr  error
}

var _ sdktrace.SpanExporter = (*otlpSpanExporter)(nil)

// newSpanExporter creates the exporter and its connection, which dials
// lazily: a collector that is down does not fail the start.
func newSpanExporter(cfg spanExporterConfig) (*otlpSpanExporter, error) {
	target, err := grpcTarget(cfg.endpoint)
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if !cfg.endpoint.insecure {
		creds = credentials.NewTLS(cfg.tls)
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithUserAgent(spanExporterUserAgent)},
		cfg.dialOptions...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: gRPC client for %s: %w", target, err)
	}
	x := &otlpSpanExporter{
		conn:     conn,
		target:   target,
		callOpts: []grpc.CallOption{grpc.ForceCodecV2(requestCodec{})},
		timeout:  cfg.timeout,
		retry:    cfg.retry,
		now:      time.Now,
		sleep:    sleepCtx,
	}
	if len(cfg.headers) > 0 {
		x.md = metadata.New(cfg.headers)
	}
	if cfg.gzip {
		x.callOpts = append(x.callOpts, grpc.UseCompressor(gzip.Name))
	}
	return x, nil
}

// grpcTarget is the address a URL or host:port endpoint dials; a URL's
// path is not part of an OTLP/gRPC target.
func grpcTarget(ep endpoint) (string, error) {
	if ep.url == "" {
		return ep.hostPort, nil
	}
	u, err := url.Parse(ep.url)
	if err != nil {
		return "", fmt.Errorf("%w: OTLP endpoint %q: %v", ErrInvalidConfig, ep.url, err)
	}
	return u.Host, nil
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
	buf := x.bufs.Get(0)
	*buf = x.enc.encode(*buf, spans)
	if len(*buf) == 0 {
		x.bufs.Put(buf)
		return nil
	}
	// gRPC holds a reference to the request until it has written it, which
	// may be after an abandoned export returns; the buffer goes back to
	// x.bufs only when both are done with it.
	req := mem.NewBuffer(buf, &x.bufs)
	defer req.Free()

	if x.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.timeout)
		defer cancel()
	}
	if x.md != nil {
		ctx = metadata.NewOutgoingContext(ctx, x.md)
	}
	resp, err := x.send(ctx, req)
	if err != nil {
		return fmt.Errorf("telemetry: OTLP span export to %s: %w", x.target, err)
	}
	if ps := resp.GetPartialSuccess(); ps.GetRejectedSpans() > 0 {
		return &partialSuccessError{rejected: ps.GetRejectedSpans(), sent: len(spans), message: ps.GetErrorMessage()}
	}
	return nil
}

// send makes the export call and retries it while the error is one the
// OTLP specification calls retryable, with backoff, for at most
// retry.maxElapsed, and never past ctx's deadline.
func (x *otlpSpanExporter) send(ctx context.Context, req mem.Buffer) (*coltracepb.ExportTraceServiceResponse, error) {
	start := x.now()
	backoff := x.retry.initial
	for {
		resp := &coltracepb.ExportTraceServiceResponse{}
		err := x.conn.Invoke(ctx, traceExportMethod, req, resp, x.callOpts...)
		if err == nil {
			return resp, nil
		}
		throttle, ok := retryable(err)
		if !ok || x.stopped.Load() {
			return nil, err
		}
		delay := max(throttle, jitter(backoff))
		backoff = min(backoff*3/2, x.retry.max)
		if elapsed := x.now().Sub(start); elapsed+delay > x.retry.maxElapsed {
			return nil, fmt.Errorf("no retry after %v (retries end after %v): %w", elapsed.Round(time.Millisecond), x.retry.maxElapsed, err)
		}
		if deadline, ok := ctx.Deadline(); ok && deadline.Sub(x.now()) < delay {
			return nil, fmt.Errorf("no retry: the export's deadline is within the %v wait: %w", delay.Round(time.Millisecond), err)
		}
		if werr := x.sleep(ctx, delay); werr != nil {
			return nil, fmt.Errorf("%w: %w", werr, err)
		}
	}
}

// retryable says whether an export error may be retried and the delay
// the collector asked for, as the OTLP specification has it: transient
// codes always, RESOURCE_EXHAUSTED only when the status carries RetryInfo.
func retryable(err error) (time.Duration, bool) {
	s := status.Convert(err)
	switch s.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Aborted, codes.OutOfRange, codes.Unavailable, codes.DataLoss:
		d, _ := retryInfo(s)
		return d, true
	case codes.ResourceExhausted:
		return retryInfo(s)
	default:
		return 0, false
	}
}

func retryInfo(s *status.Status) (time.Duration, bool) {
	for _, d := range s.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// jitter spreads d over [d/2, 3d/2] so that exporters failing together do
// not retry together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d+1) //nolint:gosec // timing jitter, not a secret
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Shutdown closes the connection; an export in flight fails and later
// exports return an error. Safe to call more than once.
func (x *otlpSpanExporter) Shutdown(context.Context) error {
	x.shutdownOnce.Do(func() {
		x.stopped.Store(true)
		if err := x.conn.Close(); err != nil {
			x.shutdownErr = fmt.Errorf("telemetry: close the OTLP span exporter's connection to %s: %w", x.target, err)
		}
	})
	return x.shutdownErr
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

// requestCodec hands gRPC the encoder's bytes as they are, and reads the
// collector's response with the generated protobuf type.
type requestCodec struct{}

// Name is "proto" because gRPC sends it as the content-subtype, by which
// the collector picks its codec: the bytes are protobuf.
func (requestCodec) Name() string { return "proto" }

func (requestCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(mem.Buffer)
	if !ok {
		return nil, fmt.Errorf("telemetry: OTLP request codec cannot marshal a %T", v)
	}
	b.Ref() // gRPC frees the buffers it is given
	return mem.BufferSlice{b}, nil
}

func (requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("telemetry: OTLP request codec cannot unmarshal into a %T", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// requestBuffers recycles request buffers once gRPC and the exporter have
// both let go of them (it is the mem.BufferPool of their mem.Buffer).
type requestBuffers struct {
	mu   sync.Mutex
	free []*[]byte
}

// requestBufferSize is a new buffer's capacity; it grows to fit the
// batches and is kept at that size. It must be above gRPC's pooling
// threshold (1 KiB) for gRPC to hand the buffer back.
const requestBufferSize = 64 << 10

// maxFreeRequestBuffers bounds the idle buffers kept: one is in use at a
// time, another may still be held by gRPC.
const maxFreeRequestBuffers = 2

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
