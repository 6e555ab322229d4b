package telemetry

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	collmetric "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	colltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// receiver is a real OTLP gRPC server (the collector's trace and metrics
// services) that keeps what it receives. While gated, exports block until
// the gate opens or the client gives up, like a blackholed collector.
type receiver struct {
	colltrace.UnimplementedTraceServiceServer

	addr string
	srv  *grpc.Server
	done chan struct{}

	mu      sync.Mutex
	spans   []*tracepb.ResourceSpans
	metrics []*metricpb.ResourceMetrics
	gate    chan struct{} // nil: open
	// heldSpanExports counts trace exports waiting at the closed gate now.
	heldSpanExports int
}

// startReceiver listens on addr ("127.0.0.1:0" for a free port) and stops
// at the end of the test.
func startReceiver(t *testing.T, addr string) *receiver {
	t.Helper()
	return startReceiverTB(t, addr)
}

func startReceiverTB(t testing.TB, addr string) *receiver {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("receiver listen on %s: %v", addr, err)
	}
	r := &receiver{addr: l.Addr().String(), srv: grpc.NewServer(), done: make(chan struct{})}
	colltrace.RegisterTraceServiceServer(r.srv, r)
	collmetric.RegisterMetricsServiceServer(r.srv, metricsService{r: r})
	go func() {
		defer close(r.done)
		_ = r.srv.Serve(l)
	}()
	t.Cleanup(r.stop)
	return r
}

// stop ends the server, failing exports in progress.
func (r *receiver) stop() {
	r.open()
	r.srv.Stop()
	<-r.done
}

// block makes exports hang until open is called.
func (r *receiver) block() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gate == nil {
		r.gate = make(chan struct{})
	}
}

func (r *receiver) open() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gate != nil {
		close(r.gate)
		r.gate = nil
	}
}

// wait holds an export while the gate is closed, counting it in held
// (when not nil) meanwhile.
func (r *receiver) wait(ctx context.Context, held *int) error {
	r.mu.Lock()
	g := r.gate
	if g != nil && held != nil {
		*held++
	}
	r.mu.Unlock()
	if g == nil {
		return nil
	}
	if held != nil {
		defer func() {
			r.mu.Lock()
			*held--
			r.mu.Unlock()
		}()
	}
	select {
	case <-g:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *receiver) Export(ctx context.Context, req *colltrace.ExportTraceServiceRequest) (*colltrace.ExportTraceServiceResponse, error) {
	if err := r.wait(ctx, &r.heldSpanExports); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans = append(r.spans, req.GetResourceSpans()...)
	return &colltrace.ExportTraceServiceResponse{}, nil
}

// metricsService adapts the receiver to the metrics service, whose Export
// method has a different signature.
type metricsService struct {
	collmetric.UnimplementedMetricsServiceServer
	r *receiver
}

func (m metricsService) Export(ctx context.Context, req *collmetric.ExportMetricsServiceRequest) (*collmetric.ExportMetricsServiceResponse, error) {
	if err := m.r.wait(ctx, nil); err != nil {
		return nil, err
	}
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	m.r.metrics = append(m.r.metrics, req.GetResourceMetrics()...)
	return &collmetric.ExportMetricsServiceResponse{}, nil
}

// spanExportsHeld counts the trace exports the closed gate holds now: an
// exporter that made one is stuck in it until the gate opens or it gives up.
func (r *receiver) spanExportsHeld() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.heldSpanExports
}

// spanNames lists every span received so far.
func (r *receiver) spanNames() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rs := range r.spans {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				out = append(out, s.GetName())
			}
		}
	}
	return out
}

func (r *receiver) resourceSpans() []*tracepb.ResourceSpans {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.ResourceSpans(nil), r.spans...)
}

// metricNames lists every metric name received so far.
func (r *receiver) metricNames() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]bool{}
	for _, rm := range r.metrics {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				out[m.GetName()] = true
			}
		}
	}
	return out
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// histogramCounts describes each explicit-bucket data point of the metric
// name received, in order, as its temporality and count.
func (r *receiver) histogramCounts(name string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rm := range r.metrics {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				h := m.GetHistogram()
				if m.GetName() != name || h == nil {
					continue
				}
				temporality := "cumulative"
				if h.GetAggregationTemporality() == metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA {
					temporality = "delta"
				}
				for _, dp := range h.GetDataPoints() {
					out = append(out, fmt.Sprintf("%s %d", temporality, dp.GetCount()))
				}
			}
		}
	}
	return out
}
