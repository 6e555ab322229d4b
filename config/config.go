// Package config holds the sidecar's settings: the defaults (Default, which
// takes each from the package that owns it), the YAML file form, the EVENTBUS_* environment variables and the
// command-line flags, merged with the precedence flags > environment > file >
// defaults, and validated before anything starts. On a reload, PlanReload
// tells the settings a running sidecar applies from those that wait for a
// restart.
package config

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/admin"
	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// ErrInvalid marks every validation and parse error, so callers can tell a
// bad configuration (exit with the message) from other failures.
var ErrInvalid = errors.New("invalid config")

// AdminOff is the admin_addr value (besides "") that disables the admin
// HTTP listener.
const AdminOff = "off"

// Log levels and formats accepted by log_level and log_format.
var (
	LogLevels  = []string{"debug", "info", "warn", "error"}
	LogFormats = []string{"text", "json"}
)

// CloseGrace bounds, together, every step of a shutdown that follows the
// drain: closing client connections and the admin listener, and the final
// telemetry flush. A shutdown takes at most DrainTimeout + CloseGrace, which
// an orchestrator's grace period must exceed.
const CloseGrace = 5 * time.Second

// Config is the sidecar's whole configuration after merging all sources.
type Config struct {
	// Socket is the Unix socket path clients connect to.
	Socket string
	// SocketMode is the permission of the socket file; 0660 lets a shared
	// group in without making the socket world-writable.
	SocketMode os.FileMode
	// AdminAddr is the admin HTTP listener (/metrics, /healthz, /readyz,
	// /stats); empty disables it.
	AdminAddr string
	// AdminPprof serves the Go runtime's profiles under /debug/pprof on the
	// admin listener. Off by default: a profile costs CPU while it runs and
	// shows the program's internals to whoever reaches the port.
	AdminPprof bool
	// LogLevel is one of LogLevels.
	LogLevel string
	// LogFormat is one of LogFormats.
	LogFormat string
	// DrainTimeout bounds how long shutdown keeps delivering queued events;
	// the whole shutdown takes at most DrainTimeout + CloseGrace.
	DrainTimeout time.Duration
	// MaxFrameBytes bounds one NDJSON request line; a longer one gets an
	// error reply and its connection is closed.
	MaxFrameBytes int
	// WriteTimeout is how long a client may leave its replies unread (with
	// its output buffer full) before it is cut off.
	WriteTimeout time.Duration
	// MaxOutputBytes bounds the replies and deliveries buffered for one
	// connection; past it the sidecar stops reading that client's requests.
	MaxOutputBytes int
	// MaxConnections bounds the client connections served at once; one
	// more gets a too_many_connections error and is closed, so a client
	// that reconnects in a loop or leaks its pool cannot exhaust the
	// sidecar's file descriptors and memory for the others.
	MaxConnections int
	// MaxBufferedBytes is the budget for the bytes held on behalf of
	// clients: read and output buffers, waiting publishes and accepted
	// events until acked (see transport.Config.MaxBufferedBytes).
	MaxBufferedBytes int64
	// FrameTimeout bounds the time from a frame's first byte to its
	// newline; a connection idle between frames has no deadline.
	FrameTimeout time.Duration
	// AllowedUIDs and AllowedGIDs admit only processes with one of these
	// user ids or group ids (SO_PEERCRED); both empty admit every process
	// the socket file's mode lets connect.
	AllowedUIDs []uint32
	AllowedGIDs []uint32
	// DataDir holds the write-ahead logs of the durable queues; empty keeps
	// every queue in memory only (not crash-safe).
	DataDir string
	// Queues are the bus queues in the order stats and metrics list them.
	Queues []bus.QueueConfig
	// Routes maps an event type to the queue a publish without "queue" goes to.
	Routes map[string]string
	// DefaultQueue receives publishes whose type has no route.
	DefaultQueue string
	// Telemetry configures traces and metrics export.
	Telemetry Telemetry
}

// Telemetry holds the telemetry.Config fields the sidecar's settings
// reach; main maps it across. Zero values mean "not set here": the
// telemetry package then applies the standard OTEL_* variables, then its own
// defaults, so the precedence is flags > EVENTBUS_* > file > OTEL_* > defaults.
type Telemetry struct {
	// Disabled turns all telemetry off (OTEL_SDK_DISABLED=true does too).
	Disabled bool
	// TracesDisabled keeps metrics but records no spans ("metrics only").
	TracesDisabled bool
	// OTLPEndpoint is the collector's OTLP gRPC address, host:port or an
	// http(s):// URL. Empty: OTEL_EXPORTER_OTLP_ENDPOINT, else no OTLP export.
	OTLPEndpoint string
	// OTLPInsecure uses plaintext gRPC for a host:port endpoint.
	OTLPInsecure bool
	// ServiceName is service.name; empty: OTEL_SERVICE_NAME, else
	// telemetry.DefaultServiceName.
	ServiceName string
	// DataSampleRatio is the share (0..1) of accepted data-queue publishes
	// whose traces are exported; signal, order, drops and timeouts are always
	// exported. nil: OTEL_TRACES_SAMPLER_ARG, else 1.
	DataSampleRatio *float64
	// DataTraceRate is the most data-queue publishes per second that are
	// traced; beyond it the rest are not traced (metrics still count them).
	// 0: telemetry.DefaultDataTraceRate; +Inf: no limit.
	DataTraceRate float64
	// MetricInterval is the OTLP metric push interval; 0:
	// OTEL_METRIC_EXPORT_INTERVAL, else telemetry.DefaultMetricInterval.
	MetricInterval time.Duration
	// SpanExportCPU bounds the share of one CPU (0 < x <= 1) the span
	// export worker may use, so that tracing sheds spans instead of taking
	// CPU from the bus; 0: telemetry.DefaultSpanExportCPU.
	SpanExportCPU float64
}

// Default returns the built-in configuration. Each setting's default is
// defined by the package that implements it (bus's queues, transport's
// routes and limits, admin's address) and only composed here, so that the
// sidecar and a program that uses those packages directly agree; the
// settings that only the sidecar process has (socket path, logging, drain)
// are defined here.
func Default() Config {
	return Config{
		Socket:           "/tmp/eventbus-sidecar.sock",
		SocketMode:       transport.DefaultSocketMode,
		AdminAddr:        admin.DefaultAddr,
		LogLevel:         "info",
		LogFormat:        "text",
		DrainTimeout:     10 * time.Second,
		MaxFrameBytes:    transport.DefaultMaxFrameBytes,
		WriteTimeout:     transport.DefaultWriteTimeout,
		MaxOutputBytes:   transport.DefaultMaxOutputBytes,
		MaxConnections:   transport.DefaultMaxConnections,
		MaxBufferedBytes: transport.DefaultMaxBufferedBytes,
		FrameTimeout:     transport.DefaultFrameTimeout,
		Queues:           defaultQueues(),
		Routes:           transport.DefaultRoutes(),
		DefaultQueue:     transport.DefaultQueue,
		// Telemetry stays zero: the telemetry package applies its defaults
		// after the OTEL_* variables, which must be able to override them.
	}
}

// Clone returns a deep copy, so merging never mutates a shared value.
func (c Config) Clone() Config {
	out := c
	out.Queues = append([]bus.QueueConfig(nil), c.Queues...)
	out.AllowedUIDs = slices.Clone(c.AllowedUIDs)
	out.AllowedGIDs = slices.Clone(c.AllowedGIDs)
	if c.Telemetry.DataSampleRatio != nil {
		r := *c.Telemetry.DataSampleRatio
		out.Telemetry.DataSampleRatio = &r
	}
	out.Routes = make(map[string]string, len(c.Routes))
	for k, v := range c.Routes {
		out.Routes[k] = v
	}
	return out
}

// AdminEnabled reports whether the admin HTTP listener should run.
func (c Config) AdminEnabled() bool { return c.AdminAddr != "" && c.AdminAddr != AdminOff }

// MemoryBound is the most memory a sidecar with this configuration needs
// whatever its clients do (transport.MemoryBound): the README's formula,
// the soft memory limit serve sets and what make soak holds it to.
func (c Config) MemoryBound() int64 {
	return transport.MemoryBound(transport.MemoryLimits{
		MaxBufferedBytes: c.MaxBufferedBytes,
		MaxConnections:   c.MaxConnections,
		Queues:           len(c.Queues),
	})
}

// QueueNames lists the configured queue names in order.
func (c Config) QueueNames() []string {
	names := make([]string, len(c.Queues))
	for i, q := range c.Queues {
		names[i] = q.Name
	}
	return names
}

// invalidf builds a parse problem; setFrom turns it into a FieldError.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}
