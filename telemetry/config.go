package telemetry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Defaults applied when neither Config nor the OTEL_* environment sets a value.
const (
	// DefaultServiceName is the resource's service.name.
	DefaultServiceName = "eventbus-sidecar"
	// DefaultMetricInterval is how often metrics are pushed over OTLP. Shorter
	// than the SDK's 60 s so that a drop alert fires within a scrape or two.
	DefaultMetricInterval = 10 * time.Second
	// DefaultExportTimeout bounds one OTLP export call (spans or metrics).
	DefaultExportTimeout = 10 * time.Second
	// DefaultSpanQueueSize bounds the spans waiting for export; beyond it
	// spans are dropped and counted, never waited for.
	DefaultSpanQueueSize = 2048
	// DefaultSpanBatchSize is the most spans sent in one export call.
	DefaultSpanBatchSize = 512
	// DefaultSpanBatchDelay is the longest a span waits for its batch to fill.
	DefaultSpanBatchDelay = time.Second
	// DefaultSpanExportCPU is the most of one CPU the span export worker
	// spends converting and sending spans; see Config.SpanExportCPU.
	DefaultSpanExportCPU = 0.25
	// DefaultDataTraceRate is the most publishes per second on the sampled
	// queues that begin a trace; see Config.DataTraceRate. Each such trace
	// costs about three spans' worth of export, collector and trace-store
	// CPU, on the order of 25 µs per span with a collector and Jaeger on the
	// same node, so a thousand traces a second keeps that to a few percent
	// of a core while every publish at an ordinary data rate is traced.
	DefaultDataTraceRate = 1000.0
)

// DefaultSampledQueues are the queues whose accepted publishes are sampled at
// DataSampleRatio; every other queue's spans are always exported.
var DefaultSampledQueues = []string{"data"}

// ErrInvalidConfig is wrapped by every configuration error Setup returns.
var ErrInvalidConfig = errors.New("invalid telemetry configuration")

// Config configures Setup. The zero value is usable: metrics on /metrics,
// no OTLP export unless OTEL_EXPORTER_OTLP_ENDPOINT is set. Where a field and
// an OTEL_* variable set the same thing, the field wins when it is set (non-zero,
// non-nil); the variable applies otherwise.
type Config struct {
	// Disabled turns all telemetry off: the providers are no-ops and /metrics
	// is empty. OTEL_SDK_DISABLED=true does the same.
	Disabled bool
	// TracesDisabled keeps metrics but records no spans (the "metrics only"
	// mode). OTEL_TRACES_SAMPLER=always_off or OTEL_TRACES_EXPORTER=none does the same.
	TracesDisabled bool

	// ServiceName is service.name; else OTEL_SERVICE_NAME, else service.name
	// in OTEL_RESOURCE_ATTRIBUTES, else DefaultServiceName.
	ServiceName string
	// ServiceVersion is service.version (the build's version).
	ServiceVersion string
	// InstanceID is service.instance.id; else the one in
	// OTEL_RESOURCE_ATTRIBUTES, else a random UUID per process.
	InstanceID string

	// OTLPEndpoint is the OTLP gRPC endpoint for both signals, as host:port
	// (TLS unless OTLPInsecure) or a URL (http:// is plaintext). Empty: use
	// OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT;
	// if none is set there is no OTLP export at all.
	OTLPEndpoint string
	// OTLPInsecure uses plaintext gRPC for a host:port OTLPEndpoint.
	OTLPInsecure bool
	// ExportTimeout bounds one export call; else OTEL_EXPORTER_OTLP_TIMEOUT
	// (milliseconds), else DefaultExportTimeout.
	ExportTimeout time.Duration

	// DataSampleRatio is the fraction (0..1) of accepted publishes on
	// SampledQueues whose traces are exported, chosen by trace ID so that a
	// trace stays whole. nil: from OTEL_TRACES_SAMPLER(_ARG), else 1.0.
	// Drops, timeouts, errors and all other queues are always exported.
	DataSampleRatio *float64
	// DataTraceRate is the most publishes per second on SampledQueues that
	// are traced (each with its wait and deliver spans); beyond it the rest
	// are not traced at all and count as sampled out, which keeps the cost
	// of tracing flat however fast events come. 0 means DefaultDataTraceRate,
	// +Inf no limit. Drops, and all other queues, are always traced.
	DataTraceRate float64
	// SampledQueues names the queues DataSampleRatio and DataTraceRate
	// apply to; nil means DefaultSampledQueues.
	SampledQueues []string

	// MetricInterval is the OTLP metric push interval; else
	// OTEL_METRIC_EXPORT_INTERVAL (milliseconds), else DefaultMetricInterval.
	MetricInterval time.Duration
	// SpanQueueSize bounds spans awaiting export; else OTEL_BSP_MAX_QUEUE_SIZE,
	// else DefaultSpanQueueSize.
	SpanQueueSize int
	// SpanBatchSize is the most spans per export; else
	// OTEL_BSP_MAX_EXPORT_BATCH_SIZE, else DefaultSpanBatchSize.
	SpanBatchSize int
	// SpanBatchDelay is the longest a span waits for a batch; else
	// OTEL_BSP_SCHEDULE_DELAY (milliseconds), else DefaultSpanBatchDelay.
	SpanBatchDelay time.Duration
	// SpanExportCPU bounds the share of one CPU (0 < x <= 1) the span
	// export worker may use; 0 means DefaultSpanExportCPU, 1 no limit. When
	// spans arrive faster than that budget exports them, the queue fills and
	// the excess is shed and counted instead of taking CPU from the bus.
	SpanExportCPU float64
	// LossLogInterval is how often lost spans and failed exports are
	// summarised in one log line; 0 means MetricInterval.
	LossLogInterval time.Duration

	// LookupEnv reads the environment; nil means os.LookupEnv. Tests inject
	// their own so that they never depend on the process environment.
	LookupEnv func(key string) (string, bool)
}

// resolved is Config after the environment and defaults have been applied.
type resolved struct {
	disabled       bool
	traces         bool
	serviceName    string
	serviceVersion string
	instanceID     string
	resourceAttrs  map[string]string
	traceEndpoint  endpoint
	metricEndpoint endpoint
	// traceHeaders, traceGzip and traceTLS are what the span exporter
	// sends besides the spans (OTEL_EXPORTER_OTLP[_TRACES]_HEADERS,
	// _COMPRESSION, _CERTIFICATE, _CLIENT_CERTIFICATE, _CLIENT_KEY), and
	// the metric* fields the same for the metric exporter (_METRICS_). A
	// nil TLS config means the system's roots and no client certificate.
	traceHeaders  map[string]string
	traceGzip     bool
	traceTLS      *tls.Config
	metricHeaders map[string]string
	metricGzip    bool
	metricTLS     *tls.Config
	// metricDelta and metricLowMemory are
	// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE; metricExponential
	// is OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION.
	metricDelta       bool
	metricLowMemory   bool
	metricExponential bool
	exportTimeout     time.Duration
	ratio             float64
	envRatio          float64 // ratio as the OTEL_TRACES_SAMPLER* variables set it
	traceRate         float64
	sampledQueues     []string
	metricInterval    time.Duration
	queueSize         int
	batchSize         int
	batchDelay        time.Duration
	exportCPU         float64
	lossInterval      time.Duration
	// exemplars: OTEL_METRICS_EXEMPLAR_FILTER is set, so the SDK applies it;
	// otherwise exemplars are off.
	exemplars bool
}

// endpoint is where one signal is exported; the zero value means nowhere.
type endpoint struct {
	// url is a full URL (scheme decides TLS); hostPort is a bare address.
	url      string
	hostPort string
	insecure bool
}

func (e endpoint) set() bool { return e.url != "" || e.hostPort != "" }

// String names the endpoint for log lines.
func (e endpoint) String() string {
	if e.url != "" {
		return e.url
	}
	return e.hostPort
}

// Samplers lists the OTEL_TRACES_SAMPLER values Setup understands.
var Samplers = []string{
	"always_on", "always_off", "traceidratio",
	"parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
}

func (c Config) resolve() (resolved, error) {
	lookup := c.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	env := func(k string) string {
		v, _ := lookup(k)
		return strings.TrimSpace(v)
	}
	var r resolved
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}

	if v := env("OTEL_SDK_DISABLED"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad("OTEL_SDK_DISABLED=%q: want true or false", v)
		}
		r.disabled = b
	}
	r.disabled = r.disabled || c.Disabled

	attrs, err := parseResourceAttributes(env("OTEL_RESOURCE_ATTRIBUTES"))
	if err != nil {
		errs = append(errs, err)
	}
	r.resourceAttrs = attrs
	r.serviceName = firstNonEmpty(c.ServiceName, env("OTEL_SERVICE_NAME"), attrs["service.name"], DefaultServiceName)
	r.serviceVersion = firstNonEmpty(c.ServiceVersion, attrs["service.version"])
	r.instanceID = firstNonEmpty(c.InstanceID, attrs["service.instance.id"])

	// Traces: sampler from the environment, overridden by explicit fields.
	r.traces = !c.TracesDisabled
	r.ratio = 1
	switch s := strings.ToLower(env("OTEL_TRACES_SAMPLER")); s {
	case "", "always_on", "parentbased_always_on":
	case "always_off", "parentbased_always_off":
		r.traces = false
	case "traceidratio", "parentbased_traceidratio":
		if arg := env("OTEL_TRACES_SAMPLER_ARG"); arg != "" {
			f, err := strconv.ParseFloat(arg, 64)
			if err != nil || f < 0 || f > 1 {
				bad("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio from 0 to 1", arg)
			} else {
				r.ratio = f
			}
		}
	default:
		bad("OTEL_TRACES_SAMPLER=%q: want one of %s", s, strings.Join(Samplers, ", "))
	}
	r.envRatio = r.ratio
	if c.DataSampleRatio != nil {
		f := *c.DataSampleRatio
		if f < 0 || f > 1 || f != f {
			bad("data sample ratio %v: want a ratio from 0 to 1", f)
		}
		r.ratio = f
	}
	r.traceRate, err = traceRate(c.DataTraceRate)
	if err != nil {
		bad("%v", err)
	}
	r.sampledQueues = c.SampledQueues
	if r.sampledQueues == nil {
		r.sampledQueues = DefaultSampledQueues
	}

	// Endpoints: explicit field, else signal-specific variable, else generic.
	exporterOn := func(v string) bool {
		switch e := strings.ToLower(env(v)); e {
		case "", "otlp":
			return true
		case "none":
			return false
		default:
			bad("%s=%q: want otlp or none", v, e)
			return false
		}
	}
	tracesOTLP := exporterOn("OTEL_TRACES_EXPORTER")
	metricsOTLP := exporterOn("OTEL_METRICS_EXPORTER")
	if c.OTLPEndpoint != "" {
		ep, err := parseEndpoint("OTLP endpoint", c.OTLPEndpoint, c.OTLPInsecure)
		if err != nil {
			errs = append(errs, err)
		}
		r.traceEndpoint, r.metricEndpoint = ep, ep
	} else {
		for _, s := range []struct {
			dst    *endpoint
			signal string
		}{
			{&r.traceEndpoint, "TRACES"},
			{&r.metricEndpoint, "METRICS"},
		} {
			key, v := signalEnv(env, s.signal, "ENDPOINT")
			if v == "" {
				continue
			}
			insecure := c.OTLPInsecure
			if ik, iv := signalEnv(env, s.signal, "INSECURE"); iv != "" {
				b, err := strconv.ParseBool(iv)
				if err != nil {
					bad("%s=%q: want true or false", ik, iv)
				}
				insecure = insecure || b
			}
			ep, err := parseEndpoint(key, v, insecure)
			if err != nil {
				errs = append(errs, err)
			}
			*s.dst = ep
		}
	}
	if !tracesOTLP {
		r.traceEndpoint = endpoint{}
		r.traces = false
	}
	if !metricsOTLP {
		r.metricEndpoint = endpoint{}
	}
	if !r.traceEndpoint.set() {
		// Spans nobody exports are not worth recording.
		r.traces = false
	}
	if r.traces {
		var err error
		r.traceHeaders, r.traceGzip, r.traceTLS, err = resolveExport(env, "TRACES", r.traceEndpoint)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if r.metricEndpoint.set() {
		var err error
		r.metricHeaders, r.metricGzip, r.metricTLS, err = resolveExport(env, "METRICS", r.metricEndpoint)
		if err != nil {
			errs = append(errs, err)
		}
		switch key, v := signalEnv(env, "METRICS", "TEMPORALITY_PREFERENCE"); strings.ToLower(v) {
		case "", "cumulative":
		case "delta":
			r.metricDelta = true
		case "lowmemory":
			r.metricLowMemory = true
		default:
			bad("%s=%q: want cumulative, delta or lowmemory", key, v)
		}
		switch key, v := signalEnv(env, "METRICS", "DEFAULT_HISTOGRAM_AGGREGATION"); strings.ToLower(v) {
		case "", "explicit_bucket_histogram":
		case "base2_exponential_bucket_histogram":
			r.metricExponential = true
		default:
			bad("%s=%q: want explicit_bucket_histogram or base2_exponential_bucket_histogram", key, v)
		}
	}

	durMillis := func(field time.Duration, key string, def time.Duration) time.Duration {
		if field < 0 {
			bad("%s %v: want a positive duration", strings.ToLower(strings.TrimPrefix(key, "OTEL_")), field)
			return def
		}
		if field > 0 {
			return field
		}
		if v := env(key); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				bad("%s=%q: want a positive number of milliseconds", key, v)
				return def
			}
			return time.Duration(n) * time.Millisecond
		}
		return def
	}
	intVal := func(field int, key string, def int) int {
		if field < 0 {
			bad("%s %d: want a positive number", strings.ToLower(strings.TrimPrefix(key, "OTEL_")), field)
			return def
		}
		if field > 0 {
			return field
		}
		if v := env(key); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				bad("%s=%q: want a positive integer", key, v)
				return def
			}
			return n
		}
		return def
	}
	r.exportTimeout = durMillis(c.ExportTimeout, "OTEL_EXPORTER_OTLP_TIMEOUT", DefaultExportTimeout)
	r.metricInterval = durMillis(c.MetricInterval, "OTEL_METRIC_EXPORT_INTERVAL", DefaultMetricInterval)
	r.batchDelay = durMillis(c.SpanBatchDelay, "OTEL_BSP_SCHEDULE_DELAY", DefaultSpanBatchDelay)
	r.queueSize = intVal(c.SpanQueueSize, "OTEL_BSP_MAX_QUEUE_SIZE", DefaultSpanQueueSize)
	r.batchSize = intVal(c.SpanBatchSize, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DefaultSpanBatchSize)
	if r.batchSize > r.queueSize {
		r.batchSize = r.queueSize
	}
	_, r.exemplars = lookup("OTEL_METRICS_EXEMPLAR_FILTER")
	r.exportCPU = c.SpanExportCPU
	if r.exportCPU == 0 {
		r.exportCPU = DefaultSpanExportCPU
	}
	if r.exportCPU < 0 || r.exportCPU > 1 || r.exportCPU != r.exportCPU {
		bad("span export CPU share %v: want more than 0 and at most 1 (1: no limit)", c.SpanExportCPU)
	}
	r.lossInterval = c.LossLogInterval
	if r.lossInterval < 0 {
		bad("loss log interval %v: want a positive duration", r.lossInterval)
	}
	if r.lossInterval <= 0 {
		r.lossInterval = r.metricInterval
	}
	return r, errors.Join(errs...)
}

// signalEnv reads OTEL_EXPORTER_OTLP_<signal>_<name>, else the generic
// OTEL_EXPORTER_OTLP_<name>, and returns the variable it used.
func signalEnv(env func(string) string, signal, name string) (key, value string) {
	key = "OTEL_EXPORTER_OTLP_" + signal + "_" + name
	if v := env(key); v != "" {
		return key, v
	}
	key = "OTEL_EXPORTER_OTLP_" + name
	return key, env(key)
}

// resolveExport reads an exporter's headers, compression and TLS files
// for signal (TRACES or METRICS). The stock exporters read these
// variables themselves and skip a bad value with a log line; here a bad
// value stops the start.
func resolveExport(env func(string) string, signal string, ep endpoint) (headers map[string]string, gzip bool, tlsConfig *tls.Config, err error) {
	var errs []error
	if key, v := signalEnv(env, signal, "HEADERS"); v != "" {
		h, err := parseHeaders(key, v)
		if err != nil {
			errs = append(errs, err)
		}
		headers = h
	}
	switch key, v := signalEnv(env, signal, "COMPRESSION"); strings.ToLower(v) {
	case "", "none":
	case "gzip":
		gzip = true
	default:
		errs = append(errs, fmt.Errorf("%w: %s=%q: want gzip or none", ErrInvalidConfig, key, v))
	}
	if !ep.insecure {
		t, err := loadTLS(env, signal)
		if err != nil {
			errs = append(errs, err)
		}
		tlsConfig = t
	}
	return headers, gzip, tlsConfig, errors.Join(errs...)
}

// loadTLS builds an exporter's TLS settings from the certificate
// variables of signal; nil when none is set.
func loadTLS(env func(string) string, signal string) (*tls.Config, error) {
	caKey, caFile := signalEnv(env, signal, "CERTIFICATE")
	certKey, certFile := signalEnv(env, signal, "CLIENT_CERTIFICATE")
	keyKey, keyFile := signalEnv(env, signal, "CLIENT_KEY")
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %s=%q: %v", ErrInvalidConfig, caKey, caFile, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: %s=%q: no PEM certificate in the file", ErrInvalidConfig, caKey, caFile)
		}
	}
	switch {
	case certFile == "" && keyFile == "":
	case certFile == "" || keyFile == "":
		return nil, fmt.Errorf("%w: %s=%q and %s=%q: a client certificate needs both files",
			ErrInvalidConfig, certKey, certFile, keyKey, keyFile)
	default:
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %s=%q and %s=%q: %v", ErrInvalidConfig, certKey, certFile, keyKey, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// parseHeaders parses an OTEL_EXPORTER_OTLP_*HEADERS value (as
// parseKeyValueList); keys must be HTTP header names.
func parseHeaders(key, v string) (map[string]string, error) {
	h, err := parseKeyValueList(key, v)
	if err != nil {
		return nil, err
	}
	for k := range h {
		if !isToken(k) {
			return nil, fmt.Errorf("%w: %s key %q: not an HTTP header name (letters, digits and !#$%%&'*+-.^_`|~)",
				ErrInvalidConfig, key, k)
		}
	}
	return h, nil
}

// isToken reports whether s is an HTTP token (RFC 9110), what a header
// name may be.
func isToken(s string) bool {
	for _, c := range []byte(s) {
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return s != ""
}

// CheckEndpoint reports whether v is an OTLP endpoint Setup accepts:
// HOST:PORT with a port from 0 to 65535, or an http:// or https:// URL with
// a host. The error says only what is wrong, so that a caller (the config
// loader) can name the field, the value and where it came from its own way.
func CheckEndpoint(v string) error {
	_, err := splitEndpoint(v, false)
	return err
}

// parseEndpoint is splitEndpoint with an error that names the setting
// (what) and the value.
func parseEndpoint(what, v string, insecure bool) (endpoint, error) {
	ep, err := splitEndpoint(v, insecure)
	if err != nil {
		return endpoint{}, fmt.Errorf("%w: %s %q: %v; want host:port or an http:// or https:// URL", ErrInvalidConfig, what, v, err)
	}
	return ep, nil
}

// splitEndpoint accepts host:port or an http(s) URL, and says which it got.
func splitEndpoint(v string, insecure bool) (endpoint, error) {
	if strings.Contains(v, "://") {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return endpoint{}, errors.New("not an http:// or https:// URL with a host")
		}
		if insecure && u.Scheme == "https" {
			u.Scheme = "http"
		}
		return endpoint{url: u.String(), insecure: u.Scheme == "http"}, nil
	}
	_, port, err := net.SplitHostPort(v)
	if err != nil || port == "" {
		return endpoint{}, errors.New("not HOST:PORT")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return endpoint{}, errors.New("port must be a number from 0 to 65535")
	}
	return endpoint{hostPort: v, insecure: insecure}, nil
}

// parseResourceAttributes parses OTEL_RESOURCE_ATTRIBUTES.
func parseResourceAttributes(v string) (map[string]string, error) {
	return parseKeyValueList("OTEL_RESOURCE_ATTRIBUTES", v)
}

// parseKeyValueList parses the value of the variable key as the OTel
// specification writes OTEL_RESOURCE_ATTRIBUTES and the OTLP exporters'
// headers: key=value pairs, comma separated, values percent-encoded.
func parseKeyValueList(key, v string) (map[string]string, error) {
	out := map[string]string{}
	if v == "" {
		return out, nil
	}
	for _, kv := range strings.Split(v, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, val, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: %s entry %q: want key=value", ErrInvalidConfig, key, kv)
		}
		dec, err := url.PathUnescape(strings.TrimSpace(val))
		if err != nil {
			return nil, fmt.Errorf("%w: %s entry %q: bad percent-encoding: %v", ErrInvalidConfig, key, kv, err)
		}
		out[k] = dec
	}
	return out, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// traceRate is the DataTraceRate that applies for rate: the default for 0.
func traceRate(rate float64) (float64, error) {
	switch {
	case rate == 0:
		return DefaultDataTraceRate, nil
	case rate > 0: // NaN fails this too
		return rate, nil
	}
	return 0, fmt.Errorf("data trace rate %v: want more than 0 traces per second (+Inf: no limit), or 0 for the default %v", rate, DefaultDataTraceRate)
}
