package telemetry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// reply is one scripted answer of a scriptedCollector: an error status,
// or success with optional rejected spans (partial_success).
type reply struct {
	err      error
	rejected int64
	message  string
}

// scriptedCollector is a real OTLP gRPC trace service that answers from a
// script (the last reply repeats; none: success) and records what each
// export carried: span names, metadata and compression.
type scriptedCollector struct {
	coltracepb.UnimplementedTraceServiceServer
	addr string

	mu          sync.Mutex
	replies     []reply
	calls       int
	spanNames   []string
	md          []metadata.MD
	compression []string
}

// startScriptedCollector serves on a free loopback port until the test
// ends; opts add server options (TLS).
func startScriptedCollector(t *testing.T, replies []reply, opts ...grpc.ServerOption) *scriptedCollector {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &scriptedCollector{addr: l.Addr().String(), replies: replies}
	srv := grpc.NewServer(append(opts, grpc.StatsHandler(compressionRecorder{c}))...)
	coltracepb.RegisterTraceServiceServer(srv, c)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return c
}

func (c *scriptedCollector) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := reply{}
	if len(c.replies) > 0 {
		i := min(c.calls, len(c.replies)-1)
		r = c.replies[i]
	}
	c.calls++
	md, _ := metadata.FromIncomingContext(ctx)
	c.md = append(c.md, md)
	if r.err != nil {
		return nil, r.err
	}
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spanNames = append(c.spanNames, s.GetName())
			}
		}
	}
	resp := &coltracepb.ExportTraceServiceResponse{}
	if r.rejected > 0 || r.message != "" {
		resp.PartialSuccess = &coltracepb.ExportTracePartialSuccess{RejectedSpans: r.rejected, ErrorMessage: r.message}
	}
	return resp, nil
}

func (c *scriptedCollector) callCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

func (c *scriptedCollector) received() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.spanNames...)
}

// compressionRecorder is a server stats handler that records each
// request's grpc-encoding.
type compressionRecorder struct{ c *scriptedCollector }

func (r compressionRecorder) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}
func (r compressionRecorder) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (r compressionRecorder) HandleConn(context.Context, stats.ConnStats) {}
func (r compressionRecorder) HandleRPC(_ context.Context, s stats.RPCStats) {
	if h, ok := s.(*stats.InHeader); ok {
		r.c.mu.Lock()
		defer r.c.mu.Unlock()
		r.c.compression = append(r.c.compression, h.Compression)
	}
}

// newTestExporter is a plaintext exporter to addr on a fake retry clock,
// shut down at the end of the test.
func newTestExporter(t *testing.T, addr string, timeout time.Duration) (*otlpSpanExporter, *testkit.Clock) {
	t.Helper()
	x, err := newSpanExporter(exporterConfig{
		endpoint: endpoint{hostPort: addr, insecure: true}, timeout: timeout, retry: exportRetry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The exporter compares the clock with its context's real deadline.
	clock := testkit.NewClockAt(time.Now())
	x.retry.now, x.retry.sleep = clock.Now, clock.Sleep
	t.Cleanup(func() { _ = x.Shutdown(context.Background()) })
	return x, clock
}

func exhausted(retryDelay time.Duration) error {
	s := status.New(codes.ResourceExhausted, "slow down")
	if retryDelay > 0 {
		var err error
		if s, err = s.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryDelay)}); err != nil {
			panic(err)
		}
	}
	return s.Err()
}

func TestSpanExporterRetries(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "collector restarting")
	tests := []struct {
		name    string
		replies []reply
		timeout time.Duration
		// wantCode is the status code of the error ExportSpans returns;
		// codes.OK: no error.
		wantCode  codes.Code
		wantCalls int
		// checkSleeps checks the waits between attempts.
		checkSleeps func(t *testing.T, sleeps []time.Duration)
	}{
		{
			name:    "UNAVAILABLE then OK is retried after a backoff around the initial interval",
			replies: []reply{{err: unavailable}, {}}, wantCode: codes.OK, wantCalls: 2,
			checkSleeps: func(t *testing.T, sleeps []time.Duration) {
				if len(sleeps) != 1 || sleeps[0] < exportRetry().initial/2 || sleeps[0] > exportRetry().initial*3/2 {
					t.Errorf("waits %v, want one of initial %v ±50%%", sleeps, exportRetry().initial)
				}
			},
		},
		{
			name:    "RESOURCE_EXHAUSTED without RetryInfo is not retried",
			replies: []reply{{err: exhausted(0)}, {}}, wantCode: codes.ResourceExhausted, wantCalls: 1,
		},
		{
			name:    "RESOURCE_EXHAUSTED with RetryInfo waits as long as asked",
			replies: []reply{{err: exhausted(1500 * time.Millisecond)}, {}}, wantCode: codes.OK, wantCalls: 2,
			checkSleeps: func(t *testing.T, sleeps []time.Duration) {
				if len(sleeps) != 1 || sleeps[0] != 1500*time.Millisecond {
					t.Errorf("waits %v, want the 1.5s the collector asked for", sleeps)
				}
			},
		},
		{
			name:    "a RetryInfo delay past the export's deadline is not waited for",
			replies: []reply{{err: exhausted(1500 * time.Millisecond)}, {}}, timeout: 500 * time.Millisecond,
			wantCode: codes.ResourceExhausted, wantCalls: 1,
		},
		{
			name:    "INVALID_ARGUMENT is not retried",
			replies: []reply{{err: status.Error(codes.InvalidArgument, "bad spans")}, {}}, wantCode: codes.InvalidArgument, wantCalls: 1,
		},
		{
			name:    "retries of a collector that stays down end within the retry time",
			replies: []reply{{err: unavailable}}, wantCode: codes.Unavailable,
			checkSleeps: func(t *testing.T, sleeps []time.Duration) {
				var total time.Duration
				for i, d := range sleeps {
					total += d
					if d > exportRetry().max*3/2 {
						t.Errorf("wait %d is %v, more than the max interval %v +50%%", i, d, exportRetry().max)
					}
				}
				if len(sleeps) < 2 || total > exportRetry().maxElapsed {
					t.Errorf("waits %v (total %v), want several within %v", sleeps, total, exportRetry().maxElapsed)
				}
			},
		},
		{
			name:     "DATA_LOSS, ABORTED, OUT_OF_RANGE and DEADLINE_EXCEEDED are retried",
			wantCode: codes.OK, wantCalls: 5,
			replies: []reply{{err: status.Error(codes.DataLoss, "")}, {err: status.Error(codes.Aborted, "")},
				{err: status.Error(codes.OutOfRange, "")}, {err: status.Error(codes.DeadlineExceeded, "")}, {}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			col := startScriptedCollector(t, tt.replies)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			x, clock := newTestExporter(t, col.addr, timeout)
			err := x.ExportSpans(context.Background(), busSpans(t)[:4])
			if got := codes.Code(errorCode(err)); err != nil && got != tt.wantCode || err == nil && tt.wantCode != codes.OK {
				t.Fatalf("ExportSpans = %v, want code %v", err, tt.wantCode)
			}
			if tt.wantCalls > 0 && col.callCount() != tt.wantCalls {
				t.Errorf("collector saw %d calls, want %d", col.callCount(), tt.wantCalls)
			}
			if tt.checkSleeps != nil {
				tt.checkSleeps(t, clock.Sleeps())
			} else if tt.wantCalls == 1 && len(clock.Sleeps()) > 0 {
				t.Errorf("waited %v although nothing was retried", clock.Sleeps())
			}
			if len(clock.Sleeps()) != col.callCount()-1 {
				t.Errorf("%d waits for %d calls", len(clock.Sleeps()), col.callCount())
			}
		})
	}
}

func TestSpanExporterShutdown(t *testing.T) {
	col := startScriptedCollector(t, nil)
	x, _ := newTestExporter(t, col.addr, time.Second)
	if err := x.ExportSpans(context.Background(), busSpans(t)[:2]); err != nil {
		t.Fatalf("ExportSpans: %v", err)
	}
	if err := x.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := x.ExportSpans(context.Background(), busSpans(t)[:2]); !errors.Is(err, errExporterShutdown) {
		t.Errorf("ExportSpans after Shutdown = %v, want errExporterShutdown", err)
	}
	if err := x.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown = %v", err)
	}
	if n := col.callCount(); n != 1 {
		t.Errorf("collector saw %d exports, want 1", n)
	}
}

// TestSpanExporterReusesRequestBuffer: the transport lets go of each request, so
// the exporter sends every batch from the same buffer instead of
// allocating a new one.
func TestSpanExporterReusesRequestBuffer(t *testing.T) {
	col := startScriptedCollector(t, nil)
	x, _ := newTestExporter(t, col.addr, 10*time.Second)
	spans := busSpans(t)
	for range 5 {
		if err := x.ExportSpans(context.Background(), spans); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, "the transport to release the request buffer", func() bool {
			x.client.bufs.mu.Lock()
			defer x.client.bufs.mu.Unlock()
			return len(x.client.bufs.free) == 1
		})
	}
	if got := len(col.received()); got != 5*len(spans) {
		t.Errorf("collector got %d spans, want %d", got, 5*len(spans))
	}
}

// setupWithCollector runs Setup exporting spans (and no metrics) to c,
// over plaintext, with env.
func setupWithCollector(t *testing.T, c *scriptedCollector, env map[string]string) *Telemetry {
	t.Helper()
	env = withoutMetricExport(env)
	return setup(t, Config{
		OTLPEndpoint: c.addr, OTLPInsecure: true, MetricInterval: time.Hour, SpanBatchDelay: 10 * time.Millisecond,
		ExportTimeout: 5 * time.Second,
	}, env)
}

func TestSetupSendsHeadersAsMetadataAndGzip(t *testing.T) {
	col := startScriptedCollector(t, nil)
	tel := setupWithCollector(t, col, map[string]string{
		"OTEL_EXPORTER_OTLP_HEADERS":            "x-generic=not-sent",
		"OTEL_EXPORTER_OTLP_TRACES_HEADERS":     "X-Api-Key=s3cr%20et%2C1, tenant = blue ",
		"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
	})
	emitSpans(tel.TracerProvider(), 3)
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "3 spans at the collector", func() bool { return len(col.received()) == 3 })

	col.mu.Lock()
	defer col.mu.Unlock()
	md := col.md[0]
	for k, want := range map[string]string{"x-api-key": "s3cr et,1", "tenant": "blue"} {
		if got := md.Get(k); len(got) != 1 || got[0] != want {
			t.Errorf("metadata %s = %q, want %q", k, got, want)
		}
	}
	if got := md.Get("x-generic"); len(got) != 0 {
		t.Errorf("generic headers sent although the traces-specific ones are set: %q", got)
	}
	if ua := md.Get("user-agent"); len(ua) != 1 || ua[0] != spanExporterUserAgent {
		t.Errorf("user-agent = %q, want it to name %s", ua, spanExporterUserAgent)
	}
	if len(col.compression) == 0 || col.compression[0] != "gzip" {
		t.Errorf("request compression %q, want gzip", col.compression)
	}
}

func TestSetupSendsUncompressedByDefault(t *testing.T) {
	col := startScriptedCollector(t, nil)
	tel := setupWithCollector(t, col, nil)
	emitSpans(tel.TracerProvider(), 1)
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the span at the collector", func() bool { return len(col.received()) == 1 })
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.compression) == 0 || col.compression[0] != "" {
		t.Errorf("request compression %q, want none", col.compression)
	}
}

func TestSetupCountsRejectedSpansOfAPartialSuccessAsLoss(t *testing.T) {
	col := startScriptedCollector(t, []reply{{rejected: 2, message: "2 spans too old"}})
	// The 5 spans must go in one export, the one the collector answers
	// with the rejection: only ForceFlush exports, never a batch timer
	// that a busy machine lets fire between two of the spans.
	tel := setup(t, Config{
		OTLPEndpoint: col.addr, OTLPInsecure: true, MetricInterval: time.Hour, SpanBatchDelay: time.Hour,
		ExportTimeout: 5 * time.Second,
	}, withoutMetricExport(nil))
	emitSpans(tel.TracerProvider(), 5)
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the rejected export counted", func() bool { return tel.Stats().SpanExportsFailed > 0 })
	s := tel.Stats()
	if s.SpansExported != 3 || s.SpansDroppedExportFailed != 2 || s.SpanExportsFailed != 1 {
		t.Errorf("stats = %+v, want 3 of 5 spans exported, the 2 rejected lost, one failed export", s)
	}
	if e := tel.loss.failing()[SignalTraces]; !strings.Contains(e, "rejected 2 of 5 spans") || !strings.Contains(e, "too old") {
		t.Errorf("last trace export error %q, want it to say 2 of 5 were rejected and why", e)
	}
}

// withoutMetricExport adds OTEL_METRICS_EXPORTER=none to env: these tests
// are about spans, and the scripted collector has no metrics service.
func withoutMetricExport(env map[string]string) map[string]string {
	out := map[string]string{"OTEL_METRICS_EXPORTER": "none"}
	for k, v := range env {
		out[k] = v
	}
	return out
}

// tlsFiles are a self-signed server certificate (its own CA) and a client
// certificate, as PEM files.
type tlsFiles struct {
	dir                   string
	serverCert, serverKey string
	clientCert, clientKey string
}

func writeTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	f := tlsFiles{dir: dir}
	f.serverCert, f.serverKey = writeCert(t, dir, "server", x509.ExtKeyUsageServerAuth)
	f.clientCert, f.clientKey = writeCert(t, dir, "client", x509.ExtKeyUsageClientAuth)
	return f
}

// writeCert writes a self-signed certificate for 127.0.0.1 that can also
// sign (so that it is its own CA) and its key.
func writeCert(t *testing.T, dir, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	for file, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

func TestSetupExportsOverMutualTLS(t *testing.T) {
	files := writeTLSFiles(t)
	serverCert, err := tls.LoadX509KeyPair(files.serverCert, files.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	clientCA, err := os.ReadFile(files.clientCert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(clientCA)
	col := startScriptedCollector(t, nil, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool,
		MinVersion: tls.VersionTLS12,
	})))
	tel := setup(t, Config{OTLPEndpoint: col.addr, MetricInterval: time.Hour, SpanBatchDelay: 10 * time.Millisecond}, withoutMetricExport(map[string]string{
		"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE":        files.serverCert,
		"OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": files.clientCert,
		"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY":         files.clientKey,
	}))
	emitSpans(tel.TracerProvider(), 2)
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "2 spans over TLS", func() bool { return len(col.received()) == 2 })
}
