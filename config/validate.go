package config

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/telemetry"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// Limits the validator enforces. They keep memory bounded and catch typos
// (a capacity of 10000000000 is not a plan).
const (
	// MaxQueueCapacity bounds one queue's capacity in events.
	MaxQueueCapacity = 1_000_000
	// MinFrameBytes is the smallest max_frame_bytes that fits a real publish.
	MinFrameBytes = 256
	// MaxFrameBytesLimit is the largest max_frame_bytes accepted (64 MiB).
	MaxFrameBytesLimit = 64 << 20
	// MaxConnectionsLimit is the largest max_connections accepted: every
	// connection holds a file descriptor and about 70 KiB, so more than
	// 65536 (over 4 GiB idle) is a typo, not a plan.
	MaxConnectionsLimit = 1 << 16
	// MaxBufferedBytesLimit is the largest max_buffered_bytes accepted
	// (64 GiB): more is a typo, not a plan.
	MaxBufferedBytesLimit = 64 << 30
	// maxSocketPath is sun_path's 108 bytes minus the terminating NUL.
	maxSocketPath = 107
)

// Validate checks every field and returns all problems at once, joined;
// each is a *FieldError wrapping ErrInvalid.
func (c Config) Validate() error { return validate(c, nil) }

func validate(c Config, origin map[string]string) error {
	var errs []error
	bad := func(field, value, problem string) {
		src := origin[field]
		if src == "" && origin != nil {
			src = "default"
		}
		errs = append(errs, &FieldError{Field: field, Value: value, Source: src, Problem: problem})
	}

	if c.Socket == "" {
		bad("socket", c.Socket, "must be a file path, e.g. /tmp/eventbus-sidecar.sock")
	} else if len(c.Socket) > maxSocketPath {
		bad("socket", c.Socket, fmt.Sprintf("is %d bytes; a Unix socket path allows at most %d", len(c.Socket), maxSocketPath))
	}
	if c.SocketMode&^0o777 != 0 {
		bad("socket_mode", formatMode(c.SocketMode), "allowed: permission bits 0000 to 0777")
	} else if c.SocketMode&0o600 != 0o600 {
		bad("socket_mode", formatMode(c.SocketMode), "must include owner read and write (0600) or the sidecar's own user cannot connect; e.g. 0660")
	}
	if c.AdminEnabled() {
		if err := checkHostPort(c.AdminAddr); err != nil {
			bad("admin_addr", c.AdminAddr, err.Error()+`; allowed: HOST:PORT (e.g. 127.0.0.1:9464), or "" or "off" to disable`)
		}
	}
	if !slices.Contains(LogLevels, c.LogLevel) {
		bad("log_level", c.LogLevel, "allowed values: "+strings.Join(LogLevels, ", "))
	}
	if !slices.Contains(LogFormats, c.LogFormat) {
		bad("log_format", c.LogFormat, "allowed values: "+strings.Join(LogFormats, ", "))
	}
	if c.DrainTimeout <= 0 {
		bad("drain_timeout", c.DrainTimeout.String(), "must be > 0, e.g. 10s")
	}
	if c.MaxFrameBytes < MinFrameBytes || c.MaxFrameBytes > MaxFrameBytesLimit {
		bad("max_frame_bytes", strconv.Itoa(c.MaxFrameBytes), fmt.Sprintf("allowed: %d to %d", MinFrameBytes, MaxFrameBytesLimit))
	}
	if c.WriteTimeout <= 0 {
		bad("write_timeout", c.WriteTimeout.String(), "must be > 0, e.g. 10s")
	}
	if c.MaxOutputBytes < c.MaxFrameBytes {
		bad("max_output_bytes", strconv.Itoa(c.MaxOutputBytes), fmt.Sprintf("must be at least max_frame_bytes (%d) so one full-size delivery fits", c.MaxFrameBytes))
	}
	if c.MaxConnections < 1 || c.MaxConnections > MaxConnectionsLimit {
		bad("max_connections", strconv.Itoa(c.MaxConnections), fmt.Sprintf("allowed: 1 to %d connections", MaxConnectionsLimit))
	}
	if lo := transport.MinBufferedBytes(c.MaxFrameBytes); c.MaxBufferedBytes < lo || c.MaxBufferedBytes > MaxBufferedBytesLimit {
		bad("max_buffered_bytes", strconv.FormatInt(c.MaxBufferedBytes, 10), fmt.Sprintf("allowed: %d (8 × max_frame_bytes) to %d", lo, int64(MaxBufferedBytesLimit)))
	}
	if c.FrameTimeout <= 0 {
		bad("frame_timeout", c.FrameTimeout.String(), "must be > 0, e.g. 10s")
	}

	names := map[string]bool{}
	if len(c.Queues) == 0 {
		bad("queues", "", "at least one queue is needed")
	}
	for i, q := range c.Queues {
		field := queueField(q.Name)
		if q.Name == "" {
			field = fmt.Sprintf("queues[#%d]", i+1)
		}
		if err := bus.CheckQueueName(q.Name); err != nil {
			bad(field+".name", q.Name, err.Error())
		} else if names[q.Name] {
			bad(field+".name", q.Name, "duplicate queue name")
		}
		names[q.Name] = true
		if q.Capacity < 1 || q.Capacity > MaxQueueCapacity {
			bad(field+".capacity", strconv.Itoa(q.Capacity), fmt.Sprintf("allowed: 1 to %d events", MaxQueueCapacity))
		}
		if err := bus.CheckPolicy(q.Policy); err != nil {
			bad(field+".policy", string(q.Policy), err.Error())
			continue
		}
		switch {
		case q.Policy.UsesTimeout() && q.Timeout <= 0:
			bad(field+".timeout", q.Timeout.String(), fmt.Sprintf("policy %s needs a timeout > 0 (e.g. 1s); use policy block to wait without limit", q.Policy))
		case !q.Policy.UsesTimeout() && q.Timeout != 0:
			bad(field+".timeout", q.Timeout.String(), fmt.Sprintf("has no effect with policy %s (only drop and fail wait with a timeout); remove it", q.Policy))
		}
	}
	validateDurability(c, bad)
	valid := strings.Join(c.QueueNames(), ", ")
	types := make([]string, 0, len(c.Routes))
	for typ := range c.Routes {
		types = append(types, typ)
	}
	slices.Sort(types)
	for _, typ := range types {
		q := c.Routes[typ]
		switch {
		case typ == "":
			bad(routeField(typ), q, "an event type must not be empty")
		case !names[q]:
			bad(routeField(typ), q, "not a configured queue; allowed: "+valid)
		}
	}
	if !names[c.DefaultQueue] {
		bad("default_queue", c.DefaultQueue, "not a configured queue; allowed: "+valid)
	}

	t := c.Telemetry
	if r := t.DataSampleRatio; r != nil && !(*r >= 0 && *r <= 1) {
		bad("telemetry.data_sample_ratio", strconv.FormatFloat(*r, 'g', -1, 64), "allowed: 0 to 1 (1 traces every publish), or empty for OTEL_TRACES_SAMPLER_ARG")
	}
	if r := t.DataTraceRate; !(r >= 0) {
		bad("telemetry.data_trace_rate", strconv.FormatFloat(r, 'g', -1, 64), "allowed: more than 0 traces per second, unlimited, or empty for the default "+strconv.FormatFloat(telemetry.DefaultDataTraceRate, 'g', -1, 64))
	}
	if t.MetricInterval != 0 && t.MetricInterval < 100*time.Millisecond {
		bad("telemetry.metric_interval", t.MetricInterval.String(), "must be at least 100ms (e.g. 10s), or empty for OTEL_METRIC_EXPORT_INTERVAL")
	}
	if c := t.SpanExportCPU; !(c >= 0 && c <= 1) {
		bad("telemetry.span_export_cpu", strconv.FormatFloat(c, 'g', -1, 64), "allowed: more than 0 and at most 1 (1: no limit), or empty for the default "+strconv.FormatFloat(telemetry.DefaultSpanExportCPU, 'g', -1, 64))
	}
	if e := t.OTLPEndpoint; e != "" {
		if err := telemetry.CheckEndpoint(e); err != nil {
			bad("telemetry.otlp_endpoint", e, err.Error()+"; allowed: HOST:PORT (e.g. 127.0.0.1:4317), an http:// or https:// URL, or empty for OTEL_EXPORTER_OTLP_ENDPOINT")
		}
	}
	return errors.Join(errs...)
}

func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("not HOST:PORT")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("port must be a number from 0 to 65535")
	}
	return nil
}
