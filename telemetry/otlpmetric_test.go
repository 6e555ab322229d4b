package telemetry

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	collmetric "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

func TestMetricExporterTemporalityAndAggregation(t *testing.T) {
	kinds := []sdkmetric.InstrumentKind{
		sdkmetric.InstrumentKindCounter, sdkmetric.InstrumentKindUpDownCounter, sdkmetric.InstrumentKindHistogram,
		sdkmetric.InstrumentKindGauge, sdkmetric.InstrumentKindObservableCounter,
		sdkmetric.InstrumentKindObservableUpDownCounter, sdkmetric.InstrumentKindObservableGauge,
	}
	const c, d = metricdata.CumulativeTemporality, metricdata.DeltaTemporality
	tests := []struct {
		name string
		cfg  metricExporterConfig
		want []metricdata.Temporality // by kinds
	}{
		{"cumulative", metricExporterConfig{}, []metricdata.Temporality{c, c, c, c, c, c, c}},
		{"delta", metricExporterConfig{delta: true}, []metricdata.Temporality{d, c, d, c, d, c, c}},
		{"lowmemory", metricExporterConfig{lowMemory: true}, []metricdata.Temporality{d, c, d, c, c, c, c}},
	}
	for _, tt := range tests {
		x := &otlpMetricExporter{cfg: tt.cfg}
		for i, k := range kinds {
			if got := x.Temporality(k); got != tt.want[i] {
				t.Errorf("%s: Temporality(%v) = %v, want %v", tt.name, k, got, tt.want[i])
			}
		}
	}
	x := &otlpMetricExporter{cfg: metricExporterConfig{exponential: true}}
	if _, ok := x.Aggregation(sdkmetric.InstrumentKindHistogram).(sdkmetric.AggregationBase2ExponentialHistogram); !ok {
		t.Errorf("histogram aggregation %T, want base-2 exponential", x.Aggregation(sdkmetric.InstrumentKindHistogram))
	}
	if _, ok := x.Aggregation(sdkmetric.InstrumentKindCounter).(sdkmetric.AggregationSum); !ok {
		t.Errorf("counter aggregation %T, want a sum", x.Aggregation(sdkmetric.InstrumentKindCounter))
	}
	x = &otlpMetricExporter{}
	if _, ok := x.Aggregation(sdkmetric.InstrumentKindHistogram).(sdkmetric.AggregationExplicitBucketHistogram); !ok {
		t.Errorf("default histogram aggregation %T, want explicit buckets", x.Aggregation(sdkmetric.InstrumentKindHistogram))
	}
}

// scriptedMetrics is a real OTLP gRPC metrics service that answers from
// a script (the last reply repeats; none: success) and records each
// export's data point count and metadata.
type scriptedMetrics struct {
	collmetric.UnimplementedMetricsServiceServer
	addr string

	mu      sync.Mutex
	replies []reply
	calls   int
	points  []int
	md      []metadata.MD
}

func startScriptedMetrics(t *testing.T, replies []reply) *scriptedMetrics {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedMetrics{addr: l.Addr().String(), replies: replies}
	srv := grpc.NewServer()
	collmetric.RegisterMetricsServiceServer(srv, s)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return s
}

func (s *scriptedMetrics) Export(ctx context.Context, req *collmetric.ExportMetricsServiceRequest) (*collmetric.ExportMetricsServiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	md, _ := metadata.FromIncomingContext(ctx)
	s.md = append(s.md, md)
	var r reply
	if len(s.replies) > 0 {
		r = s.replies[min(s.calls, len(s.replies)-1)]
	}
	s.calls++
	if r.err != nil {
		return nil, r.err
	}
	n := 0
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				n += len(m.GetSum().GetDataPoints()) + len(m.GetGauge().GetDataPoints()) + len(m.GetHistogram().GetDataPoints())
			}
		}
	}
	s.points = append(s.points, n)
	resp := &collmetric.ExportMetricsServiceResponse{}
	if r.rejected > 0 {
		resp.PartialSuccess = &collmetric.ExportMetricsPartialSuccess{RejectedDataPoints: r.rejected, ErrorMessage: r.message}
	}
	return resp, nil
}

func (s *scriptedMetrics) snapshot() (calls int, points []int, md []metadata.MD) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, append([]int(nil), s.points...), append([]metadata.MD(nil), s.md...)
}

// testMetrics is an export of one counter with two data points.
func testMetrics() *metricdata.ResourceMetrics {
	now := time.Now()
	return &metricdata.ResourceMetrics{
		Resource: resource.Empty(),
		ScopeMetrics: []metricdata.ScopeMetrics{{Metrics: []metricdata.Metrics{{
			Name: "eventbus.events.published", Unit: "{event}",
			Data: metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: []metricdata.DataPoint[int64]{
				{StartTime: now, Time: now, Value: 3}, {StartTime: now, Time: now, Value: 4},
			}},
		}}}},
	}
}

func TestMetricExporterExports(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "collector restarting")
	tests := []struct {
		name      string
		replies   []reply
		gzip      bool
		wantCode  codes.Code // of the error; OK: none
		wantCalls int
		wantErr   string
	}{
		{name: "success, with metadata and gzip", gzip: true, wantCalls: 1},
		{name: "UNAVAILABLE is retried", replies: []reply{{err: unavailable}, {}}, wantCalls: 2},
		{name: "INVALID_ARGUMENT is not", replies: []reply{{err: status.Error(codes.InvalidArgument, "bad")}}, wantCode: codes.InvalidArgument, wantCalls: 1},
		{name: "a partial success is an error", replies: []reply{{rejected: 1, message: "stale point"}}, wantCode: codes.Unknown, wantCalls: 1, wantErr: `rejected 1 data points: "stale point"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			col := startScriptedMetrics(t, tt.replies)
			x, err := newMetricExporter(metricExporterConfig{exporterConfig: exporterConfig{
				endpoint: endpoint{hostPort: col.addr, insecure: true}, headers: map[string]string{"api-key": "k"},
				gzip: tt.gzip, timeout: 10 * time.Second, retry: exportRetry(),
			}})
			if err != nil {
				t.Fatal(err)
			}
			clock := testkit.NewClockAt(time.Now())
			x.retry.now, x.retry.sleep = clock.Now, clock.Sleep
			t.Cleanup(func() { _ = x.Shutdown(context.Background()) })

			err = x.Export(context.Background(), testMetrics())
			if tt.wantCode == codes.OK && err != nil || tt.wantCode != codes.OK && (err == nil || codes.Code(errorCode(err)) != tt.wantCode) {
				t.Fatalf("Export = %v (code %v), want code %v", err, errorCode(err), tt.wantCode)
			}
			if tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
			calls, points, md := col.snapshot()
			if calls != tt.wantCalls {
				t.Errorf("collector saw %d calls, want %d", calls, tt.wantCalls)
			}
			if tt.wantCode == codes.OK && (len(points) == 0 || points[len(points)-1] != 2) {
				t.Errorf("data points received %v, want 2 in the last export", points)
			}
			if len(md) == 0 || len(md[0].Get("api-key")) != 1 || md[0].Get("api-key")[0] != "k" {
				t.Errorf("metadata %v, want api-key k", md)
			}
			if ua := md[0].Get("user-agent"); len(ua) != 1 || ua[0] != metricExporterUserAgent {
				t.Errorf("user-agent %q, want %s", ua, metricExporterUserAgent)
			}
		})
	}
}

func TestMetricExporterShutdown(t *testing.T) {
	col := startScriptedMetrics(t, nil)
	x, err := newMetricExporter(metricExporterConfig{exporterConfig: exporterConfig{endpoint: endpoint{hostPort: col.addr, insecure: true}, timeout: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Export(context.Background(), testMetrics()); err != nil {
		t.Fatal(err)
	}
	if err := x.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := x.Export(context.Background(), testMetrics()); !errors.Is(err, errMetricExporterShutdown) {
		t.Errorf("Export after Shutdown = %v, want errMetricExporterShutdown", err)
	}
	if err := x.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown = %v", err)
	}
	if calls, _, _ := col.snapshot(); calls != 1 {
		t.Errorf("collector saw %d exports, want 1", calls)
	}
}
