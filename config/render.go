package config

import (
	"bytes"
	"fmt"

	"go.yaml.in/yaml/v3"
)

type renderConfig struct {
	Socket         string            `yaml:"socket"`
	SocketMode     string            `yaml:"socket_mode"`
	DataDir        string            `yaml:"data_dir"`
	AdminAddr      string            `yaml:"admin_addr"`
	AdminPprof     bool              `yaml:"admin_pprof"`
	LogLevel       string            `yaml:"log_level"`
	LogFormat      string            `yaml:"log_format"`
	DrainTimeout   string            `yaml:"drain_timeout"`
	MaxFrameBytes  int               `yaml:"max_frame_bytes"`
	WriteTimeout   string            `yaml:"write_timeout"`
	MaxOutputBytes int               `yaml:"max_output_bytes"`
	MaxConnections int               `yaml:"max_connections"`
	MaxBuffered    int64             `yaml:"max_buffered_bytes"`
	FrameTimeout   string            `yaml:"frame_timeout"`
	AllowedUIDs    []uint32          `yaml:"allowed_uids"`
	AllowedGIDs    []uint32          `yaml:"allowed_gids"`
	Queues         []renderQueue     `yaml:"queues"`
	Routes         map[string]string `yaml:"routes"`
	DefaultQueue   string            `yaml:"default_queue"`
	Telemetry      renderTelemetry   `yaml:"telemetry"`
}

type renderQueue struct {
	Name             string `yaml:"name"`
	Capacity         int    `yaml:"capacity"`
	Policy           string `yaml:"policy"`
	Timeout          string `yaml:"timeout,omitempty"`
	renderDurability `yaml:",inline"`
}

type renderTelemetry struct {
	Disabled        bool     `yaml:"disabled"`
	TracesDisabled  bool     `yaml:"traces_disabled"`
	OTLPEndpoint    string   `yaml:"otlp_endpoint"`
	OTLPInsecure    bool     `yaml:"otlp_insecure"`
	ServiceName     string   `yaml:"service_name"`
	DataSampleRatio *float64 `yaml:"data_sample_ratio"`
	DataTraceRate   string   `yaml:"data_trace_rate"`
	MetricInterval  string   `yaml:"metric_interval"`
	SpanExportCPU   float64  `yaml:"span_export_cpu"`
}

// settingValue renders one setting's value in c by its key.
func settingValue(key string, c Config) string {
	for _, s := range Settings() {
		if s.Key == key {
			return s.Value(c)
		}
	}
	return ""
}

// YAML renders c in the file form Load reads back unchanged, so the output
// of `eventbus-sidecar config` is a valid starting point for a config file.
func (c Config) YAML() ([]byte, error) {
	r := renderConfig{
		Socket:         c.Socket,
		SocketMode:     formatMode(c.SocketMode),
		DataDir:        c.DataDir,
		AdminAddr:      c.AdminAddr,
		AdminPprof:     c.AdminPprof,
		LogLevel:       c.LogLevel,
		LogFormat:      c.LogFormat,
		DrainTimeout:   c.DrainTimeout.String(),
		MaxFrameBytes:  c.MaxFrameBytes,
		WriteTimeout:   c.WriteTimeout.String(),
		MaxOutputBytes: c.MaxOutputBytes,
		MaxConnections: c.MaxConnections,
		MaxBuffered:    c.MaxBufferedBytes,
		FrameTimeout:   c.FrameTimeout.String(),
		AllowedUIDs:    orEmpty(c.AllowedUIDs),
		AllowedGIDs:    orEmpty(c.AllowedGIDs),
		Routes:         c.Routes,
		DefaultQueue:   c.DefaultQueue,
		Telemetry: renderTelemetry{
			Disabled:        c.Telemetry.Disabled,
			TracesDisabled:  c.Telemetry.TracesDisabled,
			OTLPEndpoint:    c.Telemetry.OTLPEndpoint,
			OTLPInsecure:    c.Telemetry.OTLPInsecure,
			ServiceName:     c.Telemetry.ServiceName,
			DataSampleRatio: c.Telemetry.DataSampleRatio,
			DataTraceRate:   settingValue("telemetry.data_trace_rate", c),
			MetricInterval:  settingValue("telemetry.metric_interval", c),
			SpanExportCPU:   c.Telemetry.SpanExportCPU,
		},
	}
	if !c.AdminEnabled() {
		r.AdminAddr = AdminOff
	}
	for _, q := range c.Queues {
		rq := renderQueue{Name: q.Name, Capacity: q.Capacity, Policy: string(q.Policy), renderDurability: durabilityOf(q)}
		if q.Policy.UsesTimeout() || q.Timeout != 0 {
			rq.Timeout = q.Timeout.String()
		}
		r.Queues = append(r.Queues, rq)
	}
	var buf bytes.Buffer
	buf.WriteString("# eventbus-sidecar configuration. Precedence: flags > EVENTBUS_* environment > this file > defaults.\n")
	buf.WriteString("# Queues merge by name onto the defaults (data, signal, order); new names add queues.\n")
	buf.WriteString("# Empty telemetry values fall back to the OTEL_* environment, then the built-in defaults.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	return buf.Bytes(), nil
}

// orEmpty renders a nil list as [] rather than null, so the file shows
// the key's form.
func orEmpty(ids []uint32) []uint32 {
	if ids == nil {
		return []uint32{}
	}
	return ids
}
