package telemetry

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// envMap returns a LookupEnv that reads only m, so tests never see the
// process environment.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func ratio(f float64) *float64 { return &f }

func TestResolve(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		env   map[string]string
		check func(t *testing.T, r resolved)
	}{
		{
			name: "zero config without env: metrics only, no export, defaults",
			check: func(t *testing.T, r resolved) {
				if r.disabled || r.traces || r.traceEndpoint.set() || r.metricEndpoint.set() {
					t.Errorf("want enabled, no traces, no endpoints; got %+v", r)
				}
				if r.serviceName != DefaultServiceName || r.ratio != 1 || r.metricInterval != DefaultMetricInterval ||
					r.queueSize != DefaultSpanQueueSize || r.batchSize != DefaultSpanBatchSize ||
					!reflect.DeepEqual(r.sampledQueues, DefaultSampledQueues) || r.lossInterval != DefaultMetricInterval {
					t.Errorf("defaults not applied: %+v", r)
				}
			},
		},
		{
			name: "env endpoint and standard variables apply",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
				"OTEL_SERVICE_NAME":           "from-env",
				"OTEL_TRACES_SAMPLER":         "parentbased_traceidratio",
				"OTEL_TRACES_SAMPLER_ARG":     "0.25",
				"OTEL_METRIC_EXPORT_INTERVAL": "1500",
				"OTEL_BSP_MAX_QUEUE_SIZE":     "64",
				"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment=dev,service.instance.id=i-1,team=a%20b",
			},
			check: func(t *testing.T, r resolved) {
				want := endpoint{url: "http://127.0.0.1:4317", insecure: true}
				if r.traceEndpoint != want || r.metricEndpoint != want {
					t.Errorf("endpoints = %+v %+v, want %+v", r.traceEndpoint, r.metricEndpoint, want)
				}
				if !r.traces || r.serviceName != "from-env" || r.ratio != 0.25 || r.metricInterval != 1500*time.Millisecond ||
					r.queueSize != 64 || r.instanceID != "i-1" || r.resourceAttrs["team"] != "a b" {
					t.Errorf("env not applied: %+v", r)
				}
			},
		},
		{
			name: "explicit fields override env",
			cfg: Config{
				ServiceName: "explicit", OTLPEndpoint: "127.0.0.1:9999", OTLPInsecure: true,
				DataSampleRatio: ratio(0), MetricInterval: time.Second, SpanQueueSize: 10, SpanBatchSize: 50,
			},
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
				"OTEL_SERVICE_NAME":           "from-env",
				"OTEL_TRACES_SAMPLER":         "traceidratio",
				"OTEL_TRACES_SAMPLER_ARG":     "0.5",
				"OTEL_METRIC_EXPORT_INTERVAL": "1500",
			},
			check: func(t *testing.T, r resolved) {
				want := endpoint{hostPort: "127.0.0.1:9999", insecure: true}
				if r.traceEndpoint != want || r.metricEndpoint != want {
					t.Errorf("endpoints = %+v, want %+v", r.traceEndpoint, want)
				}
				if r.serviceName != "explicit" || r.ratio != 0 || r.metricInterval != time.Second || r.queueSize != 10 {
					t.Errorf("explicit fields lost: %+v", r)
				}
				if r.batchSize != 10 {
					t.Errorf("batch size %d larger than queue 10", r.batchSize)
				}
			},
		},
		{
			name: "signal-specific endpoints win over the generic one",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":        "http://127.0.0.1:4317",
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example:4317",
			},
			check: func(t *testing.T, r resolved) {
				if r.traceEndpoint.url != "https://traces.example:4317" || r.traceEndpoint.insecure {
					t.Errorf("trace endpoint = %+v", r.traceEndpoint)
				}
				if r.metricEndpoint.url != "http://127.0.0.1:4317" {
					t.Errorf("metric endpoint = %+v", r.metricEndpoint)
				}
			},
		},
		{
			name: "span export headers and compression: the traces-specific variable wins",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":           "http://127.0.0.1:4317",
				"OTEL_EXPORTER_OTLP_HEADERS":            "generic=1",
				"OTEL_EXPORTER_OTLP_TRACES_HEADERS":     "api-key=a%2Cb%3Dc, tenant = blue ,",
				"OTEL_EXPORTER_OTLP_COMPRESSION":        "none",
				"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "GZIP",
			},
			check: func(t *testing.T, r resolved) {
				if want := map[string]string{"api-key": "a,b=c", "tenant": "blue"}; !reflect.DeepEqual(r.traceHeaders, want) {
					t.Errorf("headers = %v, want %v", r.traceHeaders, want)
				}
				if !r.traceGzip || r.traceTLS != nil {
					t.Errorf("gzip %v, TLS %v: want gzip and no TLS for a plaintext endpoint", r.traceGzip, r.traceTLS)
				}
			},
		},
		{
			name: "generic headers and compression apply when no traces-specific one is set",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317",
				"OTEL_EXPORTER_OTLP_HEADERS":         "generic=1",
				"OTEL_EXPORTER_OTLP_COMPRESSION":     "gzip",
			},
			check: func(t *testing.T, r resolved) {
				if !reflect.DeepEqual(r.traceHeaders, map[string]string{"generic": "1"}) || !r.traceGzip {
					t.Errorf("headers %v, gzip %v: want the generic ones", r.traceHeaders, r.traceGzip)
				}
			},
		},
		{
			name: "no span export: its variables are not read",
			env:  map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "not a header", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent"},
			check: func(t *testing.T, r resolved) {
				if r.traces || r.traceHeaders != nil {
					t.Errorf("want no traces and no headers: %+v", r)
				}
			},
		},
		{
			name: "OTEL_EXPORTER_OTLP_TRACES_INSECURE wins over the generic one for traces only",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":        "127.0.0.1:4317",
				"OTEL_EXPORTER_OTLP_INSECURE":        "false",
				"OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
			},
			check: func(t *testing.T, r resolved) {
				if !r.traceEndpoint.insecure || r.metricEndpoint.insecure {
					t.Errorf("trace endpoint %+v, metric endpoint %+v: want only traces plaintext", r.traceEndpoint, r.metricEndpoint)
				}
			},
		},
		{
			name: "IPv6 host:port",
			cfg:  Config{OTLPEndpoint: "[::1]:4317", OTLPInsecure: true},
			check: func(t *testing.T, r resolved) {
				if r.traceEndpoint != (endpoint{hostPort: "[::1]:4317", insecure: true}) {
					t.Errorf("endpoint = %+v", r.traceEndpoint)
				}
			},
		},
		{
			name: "OTEL_SDK_DISABLED disables",
			env:  map[string]string{"OTEL_SDK_DISABLED": "true"},
			check: func(t *testing.T, r resolved) {
				if !r.disabled {
					t.Error("not disabled")
				}
			},
		},
		{
			name: "always_off sampler keeps metrics, drops traces",
			env:  map[string]string{"OTEL_TRACES_SAMPLER": "always_off", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
			check: func(t *testing.T, r resolved) {
				if r.traces || !r.metricEndpoint.set() {
					t.Errorf("want metrics only: %+v", r)
				}
			},
		},
		{
			name: "TracesDisabled keeps metric export",
			cfg:  Config{TracesDisabled: true, OTLPEndpoint: "http://127.0.0.1:4317"},
			check: func(t *testing.T, r resolved) {
				if r.traces || !r.metricEndpoint.set() {
					t.Errorf("want metrics only: %+v", r)
				}
			},
		},
		{
			name: "OTEL_TRACES_EXPORTER=none turns span export off",
			cfg:  Config{OTLPEndpoint: "http://127.0.0.1:4317"},
			env:  map[string]string{"OTEL_TRACES_EXPORTER": "none"},
			check: func(t *testing.T, r resolved) {
				if r.traces || r.traceEndpoint.set() || !r.metricEndpoint.set() {
					t.Errorf("want metrics only: %+v", r)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.LookupEnv = envMap(tt.env)
			r, err := tt.cfg.resolve()
			if err != nil {
				t.Fatalf("resolve: %v", err)
			}
			tt.check(t, r)
		})
	}
}

func TestResolveErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		env     map[string]string
		mention []string
	}{
		{"bad sampler", Config{}, map[string]string{"OTEL_TRACES_SAMPLER": "sometimes"}, []string{"OTEL_TRACES_SAMPLER", "sometimes", "traceidratio"}},
		{"bad sampler arg", Config{}, map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, []string{"OTEL_TRACES_SAMPLER_ARG", "0 to 1"}},
		{"ratio out of range", Config{DataSampleRatio: ratio(-0.1)}, nil, []string{"-0.1", "0 to 1"}},
		{"bad interval", Config{}, map[string]string{"OTEL_METRIC_EXPORT_INTERVAL": "10s"}, []string{"OTEL_METRIC_EXPORT_INTERVAL", "10s", "milliseconds"}},
		{"negative interval field", Config{MetricInterval: -time.Second}, nil, []string{"metric_export_interval", "-1s"}},
		{"bad disabled", Config{}, map[string]string{"OTEL_SDK_DISABLED": "yes please"}, []string{"OTEL_SDK_DISABLED", "yes please"}},
		{"bad endpoint", Config{OTLPEndpoint: "ftp://x:1"}, nil, []string{"ftp://x:1", "host:port"}},
		{"endpoint without port", Config{OTLPEndpoint: "localhost"}, nil, []string{"localhost", "host:port"}},
		{"bad env endpoint", Config{}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:notaport"}, []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "notaport"}},
		{"bad resource attrs", Config{}, map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, []string{"OTEL_RESOURCE_ATTRIBUTES", "novalue", "key=value"}},
		{"trace rate below 0", Config{DataTraceRate: -3}, nil, []string{"-3", "more than 0 traces per second"}},
		{"trace rate NaN", Config{DataTraceRate: math.NaN()}, nil, []string{"NaN", "more than 0 traces per second"}},
		{"export CPU share above 1", Config{SpanExportCPU: 1.5}, nil, []string{"1.5", "at most 1"}},
		{"bad exporter", Config{}, map[string]string{"OTEL_METRICS_EXPORTER": "zipkin"}, []string{"OTEL_METRICS_EXPORTER", "zipkin", "otlp or none"}},
	}
	tlsEndpoint := func(env map[string]string) map[string]string {
		env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "127.0.0.1:4317"
		return env
	}
	files := writeTLSFiles(t)
	tests = append(tests, []struct {
		name    string
		cfg     Config
		env     map[string]string
		mention []string
	}{
		{"header without =", Config{}, tlsEndpoint(map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "a=1,novalue"}),
			[]string{"OTEL_EXPORTER_OTLP_HEADERS", "novalue", "key=value"}},
		{"header name not a token", Config{}, tlsEndpoint(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "bad key=1"}),
			[]string{"OTEL_EXPORTER_OTLP_TRACES_HEADERS", `"bad key"`, "HTTP header name"}},
		{"header bad percent-encoding", Config{}, tlsEndpoint(map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "a=%zz"}),
			[]string{"OTEL_EXPORTER_OTLP_HEADERS", "a=%zz", "percent-encoding"}},
		{"unknown compression", Config{}, tlsEndpoint(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "zstd"}),
			[]string{"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd", "gzip or none"}},
		{"missing CA file", Config{}, tlsEndpoint(map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}),
			[]string{"OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem", "no such file"}},
		{"CA file without a certificate", Config{}, tlsEndpoint(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": files.clientKey}),
			[]string{"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", files.clientKey, "no PEM certificate"}},
		{"client certificate without key", Config{}, tlsEndpoint(map[string]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": files.clientCert}),
			[]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY", "needs both"}},
		{"client key that does not match", Config{}, tlsEndpoint(map[string]string{
			"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": files.clientCert, "OTEL_EXPORTER_OTLP_CLIENT_KEY": files.serverKey}),
			[]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY", files.serverKey}},
		{"bad traces insecure", Config{}, tlsEndpoint(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_INSECURE": "maybe"}),
			[]string{"OTEL_EXPORTER_OTLP_TRACES_INSECURE", "maybe", "true or false"}},
	}...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.LookupEnv = envMap(tt.env)
			_, err := tt.cfg.resolve()
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v, want ErrInvalidConfig", err)
			}
			for _, m := range tt.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

func TestResolveTraceTLS(t *testing.T) {
	files := writeTLSFiles(t)
	r, err := Config{LookupEnv: envMap(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4317",
		// Only traces: the metric exporter would read the generic files.
		"OTEL_METRICS_EXPORTER": "none",
		// The traces-specific files win: the generic ones are not read.
		"OTEL_EXPORTER_OTLP_CERTIFICATE":               "/nonexistent/ca.pem",
		"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE":        files.serverCert,
		"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE":        "/nonexistent/client.pem",
		"OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": files.clientCert,
		"OTEL_EXPORTER_OTLP_CLIENT_KEY":                files.clientKey,
	})}.resolve()
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	if r.traceTLS == nil || r.traceTLS.RootCAs == nil || len(r.traceTLS.Certificates) != 1 {
		t.Fatalf("TLS config %+v: want the CA and one client certificate", r.traceTLS)
	}

	// The metric exporter reads its own variables, and a file it cannot
	// read stops the start.
	r, err = Config{TracesDisabled: true, LookupEnv: envMap(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":            "127.0.0.1:4317",
		"OTEL_EXPORTER_OTLP_CERTIFICATE":         "/nonexistent/ca.pem",
		"OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE": files.serverCert,
	})}.resolve()
	if err != nil || r.metricTLS == nil || r.metricTLS.RootCAs == nil || r.traceTLS != nil {
		t.Fatalf("metrics only: metric TLS %+v, trace TLS %+v, err %v; want the metrics CA alone", r.metricTLS, r.traceTLS, err)
	}
	_, err = Config{TracesDisabled: true, LookupEnv: envMap(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":    "127.0.0.1:4317",
		"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
	})}.resolve()
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "/nonexistent/ca.pem") {
		t.Fatalf("metrics with an unreadable CA file: %v, want ErrInvalidConfig naming the file", err)
	}

	// A plaintext endpoint does not read the files at all.
	r, err = Config{LookupEnv: envMap(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":    "http://127.0.0.1:4317",
		"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
	})}.resolve()
	if err != nil || r.traceTLS != nil {
		t.Errorf("plaintext endpoint: TLS %+v, err %v; want neither", r.traceTLS, err)
	}
}
