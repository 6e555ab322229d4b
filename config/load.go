package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// FieldError is a bad setting: which field, the value it had, where the
// value came from and what would have been accepted.
type FieldError struct {
	// Field is the YAML key ("log_level", "queues[1].capacity").
	Field string
	// Value is the rejected value as given.
	Value string
	// Source says where the value came from: "default", "flag --log-level",
	// "env EVENTBUS_LOG_LEVEL" or "file path/x.yaml".
	Source string
	// Problem says what is wrong and what is allowed.
	Problem string
}

// Error reads like: invalid config: log_level "loud" (env EVENTBUS_LOG_LEVEL): allowed values: debug, info, warn, error.
func (e *FieldError) Error() string {
	src := ""
	if e.Source != "" {
		src = " (" + e.Source + ")"
	}
	return fmt.Sprintf("%s: %s %q%s: %s", ErrInvalid, e.Field, e.Value, src, e.Problem)
}

// Unwrap makes every FieldError match ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// Sources are the inputs of Load, lowest precedence last in this list:
// Flags, then Env, then File, then Default().
type Sources struct {
	// File is the YAML file path; empty means none.
	File string
	// Env looks up an environment variable (os.LookupEnv); nil means none.
	Env func(string) (string, bool)
	// Flags holds only the flags given on the command line, by flag name
	// without dashes, as their text value.
	Flags map[string]string
}

// Load merges defaults, the file, the environment and the flags, then
// validates the result. Every error wraps ErrInvalid except a file that
// cannot be read.
func Load(src Sources) (Config, error) {
	cfg := Default()
	origin := map[string]string{}
	if src.File != "" {
		data, err := os.ReadFile(src.File)
		if err != nil {
			return Config{}, fmt.Errorf("read config file: %w", err)
		}
		if err := applyFile(&cfg, data, "file "+src.File, origin); err != nil {
			return Config{}, err
		}
	}
	for _, s := range Settings() {
		if src.Env != nil {
			if v, ok := src.Env(s.Env()); ok {
				if err := setFrom(&cfg, s, v, "env "+s.Env(), origin); err != nil {
					return Config{}, err
				}
			}
		}
	}
	for _, s := range Settings() {
		if v, ok := src.Flags[s.Flag]; ok {
			if err := setFrom(&cfg, s, v, "flag --"+s.Flag, origin); err != nil {
				return Config{}, err
			}
		}
	}
	return finish(cfg, origin)
}

// Parse reads a YAML document over the defaults and validates the result;
// name labels the source in errors.
func Parse(data []byte, name string) (Config, error) {
	cfg := Default()
	origin := map[string]string{}
	if err := applyFile(&cfg, data, name, origin); err != nil {
		return Config{}, err
	}
	return finish(cfg, origin)
}

// finish normalises and validates a merged config.
func finish(cfg Config, origin map[string]string) (Config, error) {
	if cfg.AdminAddr == AdminOff {
		cfg.AdminAddr = "" // one spelling for "disabled"
	}
	if err := validate(cfg, origin); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func setFrom(cfg *Config, s Setting, v, source string, origin map[string]string) error {
	if err := s.set(cfg, v); err != nil {
		return &FieldError{Field: s.Key, Value: v, Source: source, Problem: strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": ")}
	}
	origin[s.Key] = source
	return nil
}

// fileConfig is the YAML form. Scalars are kept as nodes so that they go
// through the same parsers as flags and environment variables.
type fileConfig struct {
	Socket         yaml.Node         `yaml:"socket"`
	SocketMode     yaml.Node         `yaml:"socket_mode"`
	DataDir        yaml.Node         `yaml:"data_dir"`
	AdminAddr      yaml.Node         `yaml:"admin_addr"`
	AdminPprof     yaml.Node         `yaml:"admin_pprof"`
	LogLevel       yaml.Node         `yaml:"log_level"`
	LogFormat      yaml.Node         `yaml:"log_format"`
	DrainTimeout   yaml.Node         `yaml:"drain_timeout"`
	MaxFrameBytes  yaml.Node         `yaml:"max_frame_bytes"`
	WriteTimeout   yaml.Node         `yaml:"write_timeout"`
	MaxOutputBytes yaml.Node         `yaml:"max_output_bytes"`
	MaxConnections yaml.Node         `yaml:"max_connections"`
	MaxBuffered    yaml.Node         `yaml:"max_buffered_bytes"`
	FrameTimeout   yaml.Node         `yaml:"frame_timeout"`
	AllowedUIDs    yaml.Node         `yaml:"allowed_uids"`
	AllowedGIDs    yaml.Node         `yaml:"allowed_gids"`
	Queues         []fileQueue       `yaml:"queues"`
	Routes         map[string]string `yaml:"routes"`
	DefaultQueue   yaml.Node         `yaml:"default_queue"`
	Telemetry      *fileTelemetry    `yaml:"telemetry"`
}

type fileQueue struct {
	Name           yaml.Node `yaml:"name"`
	Capacity       yaml.Node `yaml:"capacity"`
	Policy         yaml.Node `yaml:"policy"`
	Timeout        yaml.Node `yaml:"timeout"`
	fileDurability `yaml:",inline"`
}

type fileTelemetry struct {
	Disabled        yaml.Node `yaml:"disabled"`
	TracesDisabled  yaml.Node `yaml:"traces_disabled"`
	OTLPEndpoint    yaml.Node `yaml:"otlp_endpoint"`
	OTLPInsecure    yaml.Node `yaml:"otlp_insecure"`
	ServiceName     yaml.Node `yaml:"service_name"`
	DataSampleRatio yaml.Node `yaml:"data_sample_ratio"`
	DataTraceRate   yaml.Node `yaml:"data_trace_rate"`
	MetricInterval  yaml.Node `yaml:"metric_interval"`
	SpanExportCPU   yaml.Node `yaml:"span_export_cpu"`
}

// fileKeys lists the keys each YAML mapping accepts, for unknown-key errors.
var fileKeys = map[string]string{
	"fileConfig":    "socket, socket_mode, data_dir, admin_addr, admin_pprof, log_level, log_format, drain_timeout, max_frame_bytes, write_timeout, max_output_bytes, max_connections, max_buffered_bytes, frame_timeout, allowed_uids, allowed_gids, queues, routes, default_queue, telemetry",
	"fileQueue":     "name, capacity, policy, timeout, " + durabilityKeys,
	"fileTelemetry": "disabled, traces_disabled, otlp_endpoint, otlp_insecure, service_name, data_sample_ratio, data_trace_rate, metric_interval, span_export_cpu",
}

func (f *fileConfig) scalars() map[string]*yaml.Node {
	m := map[string]*yaml.Node{
		"socket":             &f.Socket,
		"socket_mode":        &f.SocketMode,
		"data_dir":           &f.DataDir,
		"admin_addr":         &f.AdminAddr,
		"admin_pprof":        &f.AdminPprof,
		"log_level":          &f.LogLevel,
		"log_format":         &f.LogFormat,
		"drain_timeout":      &f.DrainTimeout,
		"max_frame_bytes":    &f.MaxFrameBytes,
		"write_timeout":      &f.WriteTimeout,
		"max_output_bytes":   &f.MaxOutputBytes,
		"max_connections":    &f.MaxConnections,
		"max_buffered_bytes": &f.MaxBuffered,
		"frame_timeout":      &f.FrameTimeout,
		"allowed_uids":       &f.AllowedUIDs,
		"allowed_gids":       &f.AllowedGIDs,
		"default_queue":      &f.DefaultQueue,
	}
	if t := f.Telemetry; t != nil {
		m["telemetry.disabled"] = &t.Disabled
		m["telemetry.traces_disabled"] = &t.TracesDisabled
		m["telemetry.otlp_endpoint"] = &t.OTLPEndpoint
		m["telemetry.otlp_insecure"] = &t.OTLPInsecure
		m["telemetry.service_name"] = &t.ServiceName
		m["telemetry.data_sample_ratio"] = &t.DataSampleRatio
		m["telemetry.data_trace_rate"] = &t.DataTraceRate
		m["telemetry.metric_interval"] = &t.MetricInterval
		m["telemetry.span_export_cpu"] = &t.SpanExportCPU
	}
	return m
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type config\.(\w+)`)

func applyFile(cfg *Config, data []byte, source string, origin map[string]string) error {
	var f fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file keeps the defaults
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs := make([]string, len(te.Errors))
			for i, m := range te.Errors {
				msgs[i] = unknownField.ReplaceAllStringFunc(m, func(s string) string {
					sub := unknownField.FindStringSubmatch(s)
					return fmt.Sprintf("unknown key %q (allowed keys: %s)", sub[1], fileKeys[sub[2]])
				})
			}
			return fmt.Errorf("%w: %s: %s", ErrInvalid, source, strings.Join(msgs, "; "))
		}
		return fmt.Errorf("%w: %s: %w", ErrInvalid, source, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: more than one YAML document; put everything in one", ErrInvalid, source)
	}

	scalars := f.scalars()
	for _, s := range Settings() {
		n := scalars[s.Key]
		if n == nil || n.Kind == 0 {
			continue
		}
		var v string
		var err error
		if s.List && n.Kind == yaml.SequenceNode {
			v, err = list(n, s.Key, source)
		} else {
			v, err = scalar(n, s.Key, source)
		}
		if err != nil {
			return err
		}
		if err := setFrom(cfg, s, v, fmt.Sprintf("%s line %d", source, n.Line), origin); err != nil {
			return err
		}
	}
	if err := mergeQueues(cfg, f.Queues, source, origin); err != nil {
		return err
	}
	for typ, q := range f.Routes {
		cfg.Routes[typ] = q
		origin[routeField(typ)] = source
	}
	return nil
}

// scalar returns a node's text, refusing lists and mappings.
func scalar(n *yaml.Node, key, source string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", &FieldError{Field: key, Value: "<" + kindName(n.Kind) + ">", Source: fmt.Sprintf("%s line %d", source, n.Line), Problem: "must be a single value, not a list or mapping"}
	}
	if n.Tag == "!!null" {
		return "", nil
	}
	return n.Value, nil
}

// list returns a YAML list of scalars as the comma-separated text the
// list settings parse.
func list(n *yaml.Node, key, source string) (string, error) {
	items := make([]string, len(n.Content))
	for i, item := range n.Content {
		v, err := scalar(item, key, source)
		if err != nil {
			return "", err
		}
		items[i] = v
	}
	return strings.Join(items, ","), nil
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	default:
		return "node"
	}
}

// mergeQueues overlays the file's queues on the defaults by name: a listed
// default queue changes only the fields given, a new name adds a queue at
// the end. The default queues cannot be removed, since clients rely on them.
func mergeQueues(cfg *Config, queues []fileQueue, source string, origin map[string]string) error {
	seen := map[string]bool{}
	for i, fq := range queues {
		field := fmt.Sprintf("queues[#%d]", i+1)
		if fq.Name.Kind == 0 {
			return &FieldError{Field: field + ".name", Source: source, Problem: "missing; every queue needs a name"}
		}
		name, err := scalar(&fq.Name, field+".name", source)
		if err != nil {
			return err
		}
		if seen[name] {
			return &FieldError{Field: field + ".name", Value: name, Source: fmt.Sprintf("%s line %d", source, fq.Name.Line), Problem: "listed twice; give each queue once"}
		}
		seen[name] = true
		key := queueField(name)
		at := fmt.Sprintf("%s line %d", source, fq.Name.Line)
		idx := slices.IndexFunc(cfg.Queues, func(q bus.QueueConfig) bool { return q.Name == name })
		if idx < 0 {
			cfg.Queues = append(cfg.Queues, newQueue(name))
			idx = len(cfg.Queues) - 1
			// Fields the file leaves out of a new queue are its fault, not a default's.
			for _, f := range []string{".capacity", ".policy", ".timeout"} {
				origin[key+f] = at
			}
		}
		q := &cfg.Queues[idx]
		origin[key+".name"] = at
		if n := &fq.Capacity; n.Kind != 0 {
			v, err := scalar(n, key+".capacity", source)
			if err != nil {
				return err
			}
			if err := parseInt(v, &q.Capacity); err != nil {
				return &FieldError{Field: key + ".capacity", Value: v, Source: fmt.Sprintf("%s line %d", source, n.Line), Problem: "not a whole number; give the queue's capacity in events"}
			}
			origin[key+".capacity"] = fmt.Sprintf("%s line %d", source, n.Line)
		}
		if n := &fq.Policy; n.Kind != 0 {
			v, err := scalar(n, key+".policy", source)
			if err != nil {
				return err
			}
			q.Policy = bus.Policy(v)
			origin[key+".policy"] = fmt.Sprintf("%s line %d", source, n.Line)
			if fq.Timeout.Kind == 0 && !q.Policy.UsesTimeout() {
				q.Timeout = 0 // the old policy's timeout would not apply any more
			}
		}
		if n := &fq.Timeout; n.Kind != 0 {
			v, err := scalar(n, key+".timeout", source)
			if err != nil {
				return err
			}
			if err := parseDuration(v, &q.Timeout); err != nil {
				return &FieldError{Field: key + ".timeout", Value: v, Source: fmt.Sprintf("%s line %d", source, n.Line), Problem: "not a duration (use a number with a unit: 500ms, 1s, 2m)"}
			}
			origin[key+".timeout"] = fmt.Sprintf("%s line %d", source, n.Line)
		}
		if err := fq.fileDurability.merge(q, key, source, origin); err != nil {
			return err
		}
	}
	return nil
}

// routeField names a route by its event type.
func routeField(typ string) string { return "routes[" + typ + "]" }

// queueField names a queue's settings by the queue's name, which reads
// better in errors than a position in the merged list.
func queueField(name string) string { return "queues[" + name + "]" }
