package config

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/telemetry"
)

// EnvPrefix starts every environment variable the sidecar reads.
const EnvPrefix = "EVENTBUS_"

// Setting is one scalar option that a command-line flag, an environment
// variable and a YAML key can all set. Queues and routes are structured and
// come from the file only.
type Setting struct {
	// Key is the YAML key, dotted for nested sections ("telemetry.service_name").
	Key string
	// Flag is the command-line flag name without dashes ("service-name").
	Flag string
	// Usage is the flag's help text.
	Usage string
	// Bool marks settings that take true or false, so a flag can stand alone.
	Bool bool
	// List marks settings that take a comma-separated list; in YAML they
	// may also be a list.
	List bool
	// Live marks settings a running sidecar applies when it reloads its
	// configuration; the others take effect at the next start, and
	// PlanReload reports a change to them as needing a restart. A new
	// setting is restart-only unless it says otherwise, so that nothing is
	// claimed to be live before the code that applies it exists.
	Live bool
	set  func(*Config, string) error
	get  func(Config) string
}

// Env is the environment variable for the setting: EVENTBUS_ and the flag
// name in upper case with underscores.
func (s Setting) Env() string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(s.Flag, "-", "_"))
}

// Value renders the setting's current value in c in the form Set accepts.
func (s Setting) Value(c Config) string { return s.get(c) }

// Set parses value into c. Errors wrap ErrInvalid and name the bad value and
// what is allowed, but not the source; callers add that.
func (s Setting) Set(c *Config, value string) error { return s.set(c, value) }

// Settings lists every scalar setting in the order help and docs show them.
func Settings() []Setting {
	return []Setting{
		{
			Key: "socket", Flag: "socket", Usage: "Unix socket path clients connect to",
			set: func(c *Config, v string) error { c.Socket = v; return nil },
			get: func(c Config) string { return c.Socket },
		},
		{
			Key: "socket_mode", Flag: "socket-mode", Usage: "permission bits of the socket file, octal",
			set: func(c *Config, v string) error {
				m, err := parseMode(v)
				c.SocketMode = m
				return err
			},
			get: func(c Config) string { return formatMode(c.SocketMode) },
		},
		{
			Key: "data_dir", Flag: "data-dir", Usage: "directory for the durable queues' write-ahead logs, created 0700 (empty: every queue in memory only, not crash-safe)",
			set: func(c *Config, v string) error { c.DataDir = strings.TrimSpace(v); return nil },
			get: func(c Config) string { return c.DataDir },
		},
		{
			Key: "admin_addr", Flag: "admin-addr", Usage: `admin HTTP listener HOST:PORT for /metrics, /healthz, /readyz, /stats ("" or "off" disables)`,
			set: func(c *Config, v string) error { c.AdminAddr = v; return nil },
			get: func(c Config) string {
				if !c.AdminEnabled() {
					return AdminOff
				}
				return c.AdminAddr
			},
		},
		{
			Key: "admin_pprof", Bool: true, Flag: "admin-pprof", Usage: "serve the Go runtime's profiles under /debug/pprof on the admin listener",
			set: func(c *Config, v string) error { return parseBool(v, &c.AdminPprof) },
			get: func(c Config) string { return strconv.FormatBool(c.AdminPprof) },
		},
		{
			Key: "log_level", Live: true, Flag: "log-level", Usage: "log level: " + strings.Join(LogLevels, ", "),
			set: func(c *Config, v string) error { c.LogLevel = v; return nil },
			get: func(c Config) string { return c.LogLevel },
		},
		{
			Key: "log_format", Flag: "log-format", Usage: "log format: " + strings.Join(LogFormats, ", "),
			set: func(c *Config, v string) error { c.LogFormat = v; return nil },
			get: func(c Config) string { return c.LogFormat },
		},
		{
			Key: "drain_timeout", Flag: "drain-timeout", Usage: "how long shutdown keeps delivering queued events",
			set: func(c *Config, v string) error { return parseDuration(v, &c.DrainTimeout) },
			get: func(c Config) string { return c.DrainTimeout.String() },
		},
		{
			Key: "max_frame_bytes", Flag: "max-frame-bytes", Usage: "longest request line in bytes; longer ones get an error and the connection is closed",
			set: func(c *Config, v string) error { return parseInt(v, &c.MaxFrameBytes) },
			get: func(c Config) string { return strconv.Itoa(c.MaxFrameBytes) },
		},
		{
			Key: "write_timeout", Flag: "write-timeout", Usage: "how long a client may leave its full output buffer unread before it is cut off",
			set: func(c *Config, v string) error { return parseDuration(v, &c.WriteTimeout) },
			get: func(c Config) string { return c.WriteTimeout.String() },
		},
		{
			Key: "max_output_bytes", Flag: "max-output-bytes", Usage: "replies and deliveries buffered per connection before its requests stop being read",
			set: func(c *Config, v string) error { return parseInt(v, &c.MaxOutputBytes) },
			get: func(c Config) string { return strconv.Itoa(c.MaxOutputBytes) },
		},
		{
			Key: "max_connections", Flag: "max-connections", Usage: "client connections served at once; one more gets a too_many_connections error and is closed",
			set: func(c *Config, v string) error {
				if err := parseInt(v, &c.MaxConnections); err != nil {
					return invalidf("not a whole number; allowed: 1 to %d connections", MaxConnectionsLimit)
				}
				return nil
			},
			get: func(c Config) string { return strconv.Itoa(c.MaxConnections) },
		},
		{
			Key: "max_buffered_bytes", Live: true, Flag: "max-buffered-bytes", Usage: "budget in bytes for what the sidecar holds for clients (buffers, waiting publishes, unacked events); past it clients are slowed, then the heaviest cut off",
			set: func(c *Config, v string) error {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return invalidf("not a whole number of bytes (e.g. 134217728 for 128 MiB)")
				}
				c.MaxBufferedBytes = n
				return nil
			},
			get: func(c Config) string { return strconv.FormatInt(c.MaxBufferedBytes, 10) },
		},
		{
			Key: "frame_timeout", Flag: "frame-timeout", Usage: "how long a request line may take from its first byte to its newline; past it the client gets frame_timeout and is closed",
			set: func(c *Config, v string) error { return parseDuration(v, &c.FrameTimeout) },
			get: func(c Config) string { return c.FrameTimeout.String() },
		},
		{
			Key: "allowed_uids", Live: true, Flag: "allowed-uids", List: true, Usage: "comma-separated user ids that may connect (with allowed-gids: either matches; both empty: whoever the socket mode admits)",
			set: func(c *Config, v string) error { return parseIDs(v, &c.AllowedUIDs, "user") },
			get: func(c Config) string { return formatIDs(c.AllowedUIDs) },
		},
		{
			Key: "allowed_gids", Live: true, Flag: "allowed-gids", List: true, Usage: "comma-separated group ids that may connect (with allowed-uids: either matches)",
			set: func(c *Config, v string) error { return parseIDs(v, &c.AllowedGIDs, "group") },
			get: func(c Config) string { return formatIDs(c.AllowedGIDs) },
		},
		{
			Key: "default_queue", Live: true, Flag: "default-queue", Usage: "queue for publishes without a queue whose type has no route",
			set: func(c *Config, v string) error { c.DefaultQueue = v; return nil },
			get: func(c Config) string { return c.DefaultQueue },
		},
		{
			Key: "telemetry.disabled", Bool: true, Flag: "telemetry-disabled", Usage: "turn off traces and metrics (OTEL_SDK_DISABLED=true does too)",
			set: func(c *Config, v string) error { return parseBool(v, &c.Telemetry.Disabled) },
			get: func(c Config) string { return strconv.FormatBool(c.Telemetry.Disabled) },
		},
		{
			Key: "telemetry.traces_disabled", Bool: true, Flag: "traces-disabled", Usage: "keep metrics but record no spans",
			set: func(c *Config, v string) error { return parseBool(v, &c.Telemetry.TracesDisabled) },
			get: func(c Config) string { return strconv.FormatBool(c.Telemetry.TracesDisabled) },
		},
		{
			Key: "telemetry.otlp_endpoint", Flag: "otlp-endpoint", Usage: "OTLP gRPC collector, HOST:PORT or http(s):// URL (empty: OTEL_EXPORTER_OTLP_ENDPOINT, else no export)",
			set: func(c *Config, v string) error { c.Telemetry.OTLPEndpoint = v; return nil },
			get: func(c Config) string { return c.Telemetry.OTLPEndpoint },
		},
		{
			Key: "telemetry.otlp_insecure", Bool: true, Flag: "otlp-insecure", Usage: "plaintext gRPC to a HOST:PORT OTLP endpoint",
			set: func(c *Config, v string) error { return parseBool(v, &c.Telemetry.OTLPInsecure) },
			get: func(c Config) string { return strconv.FormatBool(c.Telemetry.OTLPInsecure) },
		},
		{
			Key: "telemetry.service_name", Flag: "service-name", Usage: "service.name resource attribute (empty: OTEL_SERVICE_NAME, else " + telemetry.DefaultServiceName + ")",
			set: func(c *Config, v string) error { c.Telemetry.ServiceName = v; return nil },
			get: func(c Config) string { return c.Telemetry.ServiceName },
		},
		{
			Key: "telemetry.data_sample_ratio", Live: true, Flag: "data-sample-ratio", Usage: "share 0..1 of data-queue publishes traced; signal, order, drops, timeouts always are (empty: OTEL_TRACES_SAMPLER_ARG, else 1)",
			set: func(c *Config, v string) error {
				if strings.TrimSpace(v) == "" {
					c.Telemetry.DataSampleRatio = nil
					return nil
				}
				var f float64
				if err := parseFloat(v, &f); err != nil {
					return err
				}
				c.Telemetry.DataSampleRatio = &f
				return nil
			},
			get: func(c Config) string {
				if c.Telemetry.DataSampleRatio == nil {
					return ""
				}
				return strconv.FormatFloat(*c.Telemetry.DataSampleRatio, 'g', -1, 64)
			},
		},
		{
			Key: "telemetry.data_trace_rate", Live: true, Flag: "data-trace-rate", Usage: "most data-queue publishes traced per second, each with its wait and deliver spans; the rest are not traced, metrics count them all (empty or 0: " + strconv.FormatFloat(telemetry.DefaultDataTraceRate, 'g', -1, 64) + "; unlimited: every one)",
			set: func(c *Config, v string) error {
				switch strings.TrimSpace(v) {
				case "":
					c.Telemetry.DataTraceRate = 0
					return nil
				case unlimited:
					c.Telemetry.DataTraceRate = math.Inf(1)
					return nil
				}
				return parseFloat(v, &c.Telemetry.DataTraceRate)
			},
			get: func(c Config) string {
				switch r := c.Telemetry.DataTraceRate; {
				case r == 0:
					return ""
				case math.IsInf(r, 1):
					return unlimited
				default:
					return strconv.FormatFloat(r, 'g', -1, 64)
				}
			},
		},
		{
			Key: "telemetry.metric_interval", Flag: "metric-interval", Usage: "OTLP metric push interval (empty: OTEL_METRIC_EXPORT_INTERVAL, else " + telemetry.DefaultMetricInterval.String() + ")",
			set: func(c *Config, v string) error {
				if strings.TrimSpace(v) == "" {
					c.Telemetry.MetricInterval = 0
					return nil
				}
				return parseDuration(v, &c.Telemetry.MetricInterval)
			},
			get: func(c Config) string {
				if c.Telemetry.MetricInterval == 0 {
					return ""
				}
				return c.Telemetry.MetricInterval.String()
			},
		},
		{
			Key: "telemetry.span_export_cpu", Flag: "span-export-cpu", Usage: "share of one CPU, 0 to 1, the span exporter may use before it sheds spans (empty or 0: " + strconv.FormatFloat(telemetry.DefaultSpanExportCPU, 'g', -1, 64) + "; 1: no limit)",
			set: func(c *Config, v string) error {
				if strings.TrimSpace(v) == "" {
					c.Telemetry.SpanExportCPU = 0
					return nil
				}
				return parseFloat(v, &c.Telemetry.SpanExportCPU)
			},
			get: func(c Config) string {
				if c.Telemetry.SpanExportCPU == 0 {
					return ""
				}
				return strconv.FormatFloat(c.Telemetry.SpanExportCPU, 'g', -1, 64)
			},
		},
	}
}

// unlimited is the value of a rate setting that has no limit.
const unlimited = "unlimited"

func parseDuration(v string, dst *time.Duration) error {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return invalidf("not a duration (use a number with a unit: 500ms, 1s, 2m)")
	}
	*dst = d
	return nil
}

func parseInt(v string, dst *int) error {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return invalidf("not a whole number")
	}
	*dst = n
	return nil
}

func parseFloat(v string, dst *float64) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return invalidf("not a number")
	}
	*dst = f
	return nil
}

func parseBool(v string, dst *bool) error {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return invalidf("not a boolean (use true or false)")
	}
	*dst = b
	return nil
}

// parseIDs reads a comma-separated list of user or group ids; an empty
// value is an empty list.
func parseIDs(v string, dst *[]uint32, kind string) error {
	var ids []uint32
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil || n == math.MaxUint32 {
			return invalidf("%q is not a %s id; allowed: numbers 0 to %d, comma-separated (e.g. 1000,1001)", f, kind, uint32(math.MaxUint32-1))
		}
		if !slices.Contains(ids, uint32(n)) {
			ids = append(ids, uint32(n))
		}
	}
	*dst = ids
	return nil
}

func formatIDs(ids []uint32) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(parts, ",")
}

// parseMode reads octal permission bits such as 0660 or 660.
func parseMode(v string) (os.FileMode, error) {
	s := strings.TrimPrefix(strings.TrimSpace(v), "0o")
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 {
		return 0, invalidf("not octal permission bits from 0000 to 0777 (e.g. 0660)")
	}
	return os.FileMode(n), nil
}

func formatMode(m os.FileMode) string { return fmt.Sprintf("%04o", uint32(m.Perm())) }
