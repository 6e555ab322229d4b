package config

import (
	"errors"
	"flag"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestDefaultIsTheSeedTable(t *testing.T) {
	c := Default()
	want := []bus.QueueConfig{
		{Name: "data", Capacity: 1000, Policy: bus.PolicyDrop, Timeout: time.Second, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
		{Name: "signal", Capacity: 100, Policy: bus.PolicyFail, Timeout: 5 * time.Second, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
		{Name: "order", Capacity: 50, Policy: bus.PolicyBlock, Timeout: 0, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
	}
	if !reflect.DeepEqual(c.Queues, want) {
		t.Errorf("queues = %+v, want %+v", c.Queues, want)
	}
	routes := map[string]string{"CANDLE_UPDATE": "data", "CANDLE_CLOSED": "data", "SIGNAL_GENERATED": "signal", "ORDER_PLACED": "order"}
	if !reflect.DeepEqual(c.Routes, routes) {
		t.Errorf("routes = %v, want %v", c.Routes, routes)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"socket", c.Socket, "/tmp/eventbus-sidecar.sock"},
		{"socket_mode", c.SocketMode, os.FileMode(0o660)},
		{"admin_addr", c.AdminAddr, "127.0.0.1:9464"},
		{"log_level", c.LogLevel, "info"},
		{"log_format", c.LogFormat, "text"},
		{"drain_timeout", c.DrainTimeout, 10 * time.Second},
		{"max_frame_bytes", c.MaxFrameBytes, 1 << 20},
		{"max_connections", c.MaxConnections, 1024},
		{"default_queue", c.DefaultQueue, "data"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestDefaultsGolden(t *testing.T) {
	got, err := Default().YAML()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "defaults.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./config -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("rendered defaults differ from %s (go test ./config -update rewrites it):\n--- got\n%s\n--- want\n%s", golden, got, want)
	}
}

// TestREADMEDefaults keeps the defaults the README quotes equal to what
// `eventbus-sidecar config` prints (the YAML of Default()); -update
// rewrites the README's copy.
func TestREADMEDefaults(t *testing.T) {
	const begin, end = "<!-- defaults: begin (the output of eventbus-sidecar config) -->\n```yaml\n", "```\n<!-- defaults: end -->"
	path := filepath.Join("..", "README.md")
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	before, rest, ok := strings.Cut(string(readme), begin)
	if !ok {
		t.Fatalf("%s has no %q: the defaults section lost its marker", path, begin)
	}
	quoted, after, ok := strings.Cut(rest, end)
	if !ok {
		t.Fatalf("%s: no %q after the defaults block", path, end)
	}
	got, err := Default().YAML()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(path, []byte(before+begin+string(got)+end+after), 0o644); err != nil {
			t.Fatal(err)
		}
		quoted = string(got)
	}
	if quoted != string(got) {
		t.Errorf("the defaults in %s differ from Default() (go test ./config -update rewrites them):\n--- README\n%s\n--- Default()\n%s", path, quoted, got)
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	ratio := 0.25
	custom := Default()
	custom.Socket = "/run/eb/x.sock"
	custom.SocketMode = 0o600
	custom.AdminAddr = ""
	custom.Queues = append(custom.Queues, bus.QueueConfig{Name: "risk", Capacity: 10, Policy: bus.PolicyDropOldest, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow})
	custom.Queues[0].Capacity = 5000
	custom.Routes["RISK_LIMIT"] = "risk"
	custom.DefaultQueue = "signal"
	custom.MaxConnections = 8
	custom.Telemetry = Telemetry{Disabled: true, TracesDisabled: true, OTLPEndpoint: "127.0.0.1:4317", OTLPInsecure: true, ServiceName: "x", DataSampleRatio: &ratio, DataTraceRate: math.Inf(1), MetricInterval: 2 * time.Second, SpanExportCPU: 1}

	for name, c := range map[string]Config{"defaults": Default(), "custom": custom} {
		t.Run(name, func(t *testing.T) {
			data, err := c.YAML()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(data, "rendered")
			if err != nil {
				t.Fatalf("rendered config does not load: %v\n%s", err, data)
			}
			if !reflect.DeepEqual(back, c) {
				t.Errorf("round trip changed the config:\n got %+v\nwant %+v", back, c)
			}
		})
	}
}

// invalidCase is a configuration Load must refuse: a file, environment and
// flags, and what the error must name.
type invalidCase struct {
	name  string
	yaml  string
	env   map[string]string
	flags map[string]string
	want  []string
}

// checkInvalid runs each case as a subtest: Load fails with an error that
// wraps ErrInvalid and contains every want.
func checkInvalid(t *testing.T, tests []invalidCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(sourcesT(t, tt.env, tt.flags, tt.yaml))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load = %v, want an error wrapping ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// sourcesT is the Sources of a test case: env and flags, and a file with
// content yaml unless it is empty.
func sourcesT(t *testing.T, env, flags map[string]string, yaml string) Sources {
	t.Helper()
	src := Sources{Env: envOf(env), Flags: flags}
	if yaml != "" {
		src.File = writeFile(t, yaml)
	}
	return src
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "eventbus.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func envOf(kv map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := kv[k]
		return v, ok
	}
}

func TestPrecedence(t *testing.T) {
	file := `
socket: /file.sock
log_level: warn
drain_timeout: 3s
admin_addr: 127.0.0.1:1
telemetry:
  service_name: from-file
`
	tests := []struct {
		name  string
		file  string
		env   map[string]string
		flags map[string]string
		check func(t *testing.T, c Config)
	}{
		{
			name: "defaults only",
			check: func(t *testing.T, c Config) {
				if !reflect.DeepEqual(c, Default()) {
					t.Errorf("got %+v, want defaults", c)
				}
			},
		},
		{
			name: "file over defaults",
			file: file,
			check: func(t *testing.T, c Config) {
				want := Default()
				want.Socket, want.LogLevel, want.DrainTimeout, want.AdminAddr = "/file.sock", "warn", 3*time.Second, "127.0.0.1:1"
				want.Telemetry.ServiceName = "from-file"
				if !reflect.DeepEqual(c, want) {
					t.Errorf("got %+v\nwant %+v", c, want)
				}
			},
		},
		{
			name: "env over file",
			file: file,
			env:  map[string]string{"EVENTBUS_SOCKET": "/env.sock", "EVENTBUS_DRAIN_TIMEOUT": "4s", "EVENTBUS_SERVICE_NAME": "from-env", "OTHER": "x"},
			check: func(t *testing.T, c Config) {
				if c.Socket != "/env.sock" || c.DrainTimeout != 4*time.Second || c.Telemetry.ServiceName != "from-env" {
					t.Errorf("env did not win: %+v", c)
				}
				if c.LogLevel != "warn" {
					t.Errorf("log_level = %q, want the file's warn", c.LogLevel)
				}
			},
		},
		{
			name:  "flag over env over file",
			file:  file,
			env:   map[string]string{"EVENTBUS_SOCKET": "/env.sock", "EVENTBUS_LOG_LEVEL": "error"},
			flags: map[string]string{"socket": "/flag.sock", "admin-addr": "off"},
			check: func(t *testing.T, c Config) {
				if c.Socket != "/flag.sock" {
					t.Errorf("socket = %q, want the flag's", c.Socket)
				}
				if c.LogLevel != "error" {
					t.Errorf("log_level = %q, want the env's", c.LogLevel)
				}
				if c.DrainTimeout != 3*time.Second {
					t.Errorf("drain_timeout = %v, want the file's", c.DrainTimeout)
				}
				if c.AdminEnabled() {
					t.Errorf("admin_addr %q: want disabled", c.AdminAddr)
				}
			},
		},
		{
			name: "max_connections from the file",
			file: "max_connections: 50\n",
			check: func(t *testing.T, c Config) {
				if c.MaxConnections != 50 {
					t.Errorf("max_connections = %d, want the file's 50", c.MaxConnections)
				}
			},
		},
		{
			name: "max_connections env over file",
			file: "max_connections: 50\n",
			env:  map[string]string{"EVENTBUS_MAX_CONNECTIONS": "60"},
			check: func(t *testing.T, c Config) {
				if c.MaxConnections != 60 {
					t.Errorf("max_connections = %d, want the env's 60", c.MaxConnections)
				}
			},
		},
		{
			name:  "max_connections flag over env",
			file:  "max_connections: 50\n",
			env:   map[string]string{"EVENTBUS_MAX_CONNECTIONS": "60"},
			flags: map[string]string{"max-connections": "70"},
			check: func(t *testing.T, c Config) {
				if c.MaxConnections != 70 {
					t.Errorf("max_connections = %d, want the flag's 70", c.MaxConnections)
				}
			},
		},
		{
			name: "empty admin addr disables",
			env:  map[string]string{"EVENTBUS_ADMIN_ADDR": ""},
			check: func(t *testing.T, c Config) {
				if c.AdminEnabled() {
					t.Errorf("admin enabled with %q", c.AdminAddr)
				}
			},
		},
		{
			name:  "every setting from a flag",
			flags: map[string]string{"socket": "/s", "socket-mode": "0600", "admin-addr": "127.0.0.1:0", "log-level": "debug", "log-format": "json", "drain-timeout": "1m", "max-frame-bytes": "4096", "write-timeout": "2s", "max-output-bytes": "8192", "max-connections": "16", "default-queue": "order", "telemetry-disabled": "true", "traces-disabled": "true", "otlp-endpoint": "http://127.0.0.1:4317", "otlp-insecure": "true", "service-name": "svc", "data-sample-ratio": "0.5", "metric-interval": "1s", "span-export-cpu": "0.5", "data-trace-rate": "250"},
			check: func(t *testing.T, c Config) {
				half := 0.5
				want := Default()
				want.Socket, want.SocketMode, want.AdminAddr, want.LogLevel, want.LogFormat = "/s", 0o600, "127.0.0.1:0", "debug", "json"
				want.DrainTimeout, want.MaxFrameBytes, want.WriteTimeout, want.MaxOutputBytes, want.DefaultQueue = time.Minute, 4096, 2*time.Second, 8192, "order"
				want.MaxConnections = 16
				want.Telemetry = Telemetry{Disabled: true, TracesDisabled: true, OTLPEndpoint: "http://127.0.0.1:4317", OTLPInsecure: true, ServiceName: "svc", DataSampleRatio: &half, DataTraceRate: 250, MetricInterval: time.Second, SpanExportCPU: 0.5}
				if !reflect.DeepEqual(c, want) {
					t.Errorf("got %+v\nwant %+v", c, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(sourcesT(t, tt.env, tt.flags, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestFileQueues(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []bus.QueueConfig
	}{
		{
			name: "override one field keeps the others",
			yaml: "queues:\n  - name: data\n    capacity: 5000\n",
			want: []bus.QueueConfig{
				{Name: "data", Capacity: 5000, Policy: bus.PolicyDrop, Timeout: time.Second, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
				{Name: "signal", Capacity: 100, Policy: bus.PolicyFail, Timeout: 5 * time.Second, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
				{Name: "order", Capacity: 50, Policy: bus.PolicyBlock, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
			},
		},
		{
			name: "add a queue",
			yaml: "queues:\n  - name: risk\n    capacity: 20\n    policy: fail\n    timeout: 250ms\n",
			want: []bus.QueueConfig{
				{Name: "data", Capacity: 1000, Policy: bus.PolicyDrop, Timeout: time.Second, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
				{Name: "signal", Capacity: 100, Policy: bus.PolicyFail, Timeout: 5 * time.Second, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
				{Name: "order", Capacity: 50, Policy: bus.PolicyBlock, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
				{Name: "risk", Capacity: 20, Policy: bus.PolicyFail, Timeout: 250 * time.Millisecond, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
			},
		},
		{
			name: "switching to drop_oldest clears the old timeout",
			yaml: "queues:\n  - name: data\n    policy: drop_oldest\n",
			want: []bus.QueueConfig{
				{Name: "data", Capacity: 1000, Policy: bus.PolicyDropOldest, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
				{Name: "signal", Capacity: 100, Policy: bus.PolicyFail, Timeout: 5 * time.Second, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
				{Name: "order", Capacity: 50, Policy: bus.PolicyBlock, Durable: true, Fsync: bus.FsyncAlways, DedupeWindow: bus.DefaultDedupeWindow},
			},
		},
		{
			name: "empty file keeps defaults",
			yaml: "",
			want: Default().Queues,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), "test.yaml")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.Queues, tt.want) {
				t.Errorf("queues = %+v\nwant %+v", c.Queues, tt.want)
			}
		})
	}
}

func TestFileRoutes(t *testing.T) {
	c, err := Parse([]byte("queues:\n  - {name: risk, capacity: 5, policy: block}\nroutes:\n  RISK_ALERT: risk\n  CANDLE_UPDATE: signal\ndefault_queue: order\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"RISK_ALERT": "risk", "CANDLE_UPDATE": "signal", "CANDLE_CLOSED": "data", "SIGNAL_GENERATED": "signal", "ORDER_PLACED": "order"}
	if !reflect.DeepEqual(c.Routes, want) {
		t.Errorf("routes = %v, want the file's merged onto the defaults: %v", c.Routes, want)
	}
	if c.DefaultQueue != "order" {
		t.Errorf("default_queue = %q, want the file's order", c.DefaultQueue)
	}
}

// TestInvalid covers every validation and parse error: each must wrap
// ErrInvalid and name the field, the bad value and what is allowed.
func TestInvalid(t *testing.T) {
	tests := []invalidCase{
		{name: "unknown top-level key", yaml: "sockett: /x\n", want: []string{`unknown key "sockett"`, "line 1", "allowed keys: socket, socket_mode"}},
		{name: "unknown queue key", yaml: "queues:\n  - name: data\n    size: 3\n", want: []string{`unknown key "size"`, "line 3", "name, capacity, policy, timeout"}},
		{name: "unknown telemetry key", yaml: "telemetry:\n  endpoint: x\n", want: []string{`unknown key "endpoint"`, "otlp_endpoint"}},
		{name: "not yaml", yaml: "socket: [\n", want: []string{"yaml"}},
		{name: "two documents", yaml: "socket: /a\n---\nsocket: /b\n", want: []string{"more than one YAML document"}},
		{name: "list where a value belongs", yaml: "socket: [a, b]\n", want: []string{"socket", "single value"}},
		{name: "empty socket", flags: map[string]string{"socket": ""}, want: []string{`socket ""`, "flag --socket", "file path"}},
		{name: "socket path too long", flags: map[string]string{"socket": "/" + strings.Repeat("x", 120)}, want: []string{"socket", "at most 107"}},
		{name: "socket mode not octal", flags: map[string]string{"socket-mode": "rw-rw----"}, want: []string{`socket_mode "rw-rw----"`, "flag --socket-mode", "0000 to 0777"}},
		{name: "socket mode too big", yaml: "socket_mode: \"1777\"\n", want: []string{`socket_mode "1777"`, "0777"}},
		{name: "socket mode without owner rw", env: map[string]string{"EVENTBUS_SOCKET_MODE": "0060"}, want: []string{`socket_mode "0060"`, "env EVENTBUS_SOCKET_MODE", "0600"}},
		{name: "admin addr without port", flags: map[string]string{"admin-addr": "localhost"}, want: []string{`admin_addr "localhost"`, "HOST:PORT", `"off"`}},
		{name: "admin port not a number", flags: map[string]string{"admin-addr": "127.0.0.1:http"}, want: []string{"admin_addr", "0 to 65535"}},
		{name: "log level", env: map[string]string{"EVENTBUS_LOG_LEVEL": "loud"}, want: []string{`log_level "loud"`, "env EVENTBUS_LOG_LEVEL", "debug, info, warn, error"}},
		{name: "log format", yaml: "log_format: xml\n", want: []string{`log_format "xml"`, "line 1", "text, json"}},
		{name: "drain timeout not a duration", env: map[string]string{"EVENTBUS_DRAIN_TIMEOUT": "10"}, want: []string{`drain_timeout "10"`, "env EVENTBUS_DRAIN_TIMEOUT", "500ms, 1s"}},
		{name: "drain timeout zero", flags: map[string]string{"drain-timeout": "0s"}, want: []string{`drain_timeout "0s"`, "must be > 0"}},
		{name: "frame bytes not a number", flags: map[string]string{"max-frame-bytes": "1MiB"}, want: []string{`max_frame_bytes "1MiB"`, "whole number"}},
		{name: "frame bytes too small", flags: map[string]string{"max-frame-bytes": "10"}, want: []string{`max_frame_bytes "10"`, "256 to 67108864"}},
		{name: "write timeout", yaml: "write_timeout: -1s\n", want: []string{`write_timeout "-1s"`, "must be > 0"}},
		{name: "output smaller than a frame", flags: map[string]string{"max-output-bytes": "1000"}, want: []string{`max_output_bytes "1000"`, "at least max_frame_bytes (1048576)"}},
		{name: "max connections zero", flags: map[string]string{"max-connections": "0"}, want: []string{`max_connections "0"`, "flag --max-connections", "allowed: 1 to 65536 connections"}},
		{name: "max connections negative", env: map[string]string{"EVENTBUS_MAX_CONNECTIONS": "-5"}, want: []string{`max_connections "-5"`, "env EVENTBUS_MAX_CONNECTIONS", "allowed: 1 to 65536"}},
		{name: "max connections too many", yaml: "max_connections: 100000\n", want: []string{`max_connections "100000"`, "line 1", "allowed: 1 to 65536"}},
		{name: "max connections not a number", env: map[string]string{"EVENTBUS_MAX_CONNECTIONS": "lots"}, want: []string{`max_connections "lots"`, "env EVENTBUS_MAX_CONNECTIONS", "whole number; allowed: 1 to 65536"}},
		{name: "queue without name", yaml: "queues:\n  - capacity: 3\n", want: []string{"queues[#1].name", "missing"}},
		{name: "queue listed twice", yaml: "queues:\n  - {name: data}\n  - {name: data}\n", want: []string{"queues[#2].name", `"data"`, "listed twice"}},
		{name: "queue name characters", yaml: "queues:\n  - {name: 'a b', capacity: 1, policy: block}\n", want: []string{"queues[a b].name", "letters, digits"}},
		{name: "queue capacity zero", yaml: "queues:\n  - {name: data, capacity: 0}\n", want: []string{`queues[data].capacity "0"`, "1 to 1000000"}},
		{name: "queue capacity not a number", yaml: "queues:\n  - {name: data, capacity: lots}\n", want: []string{`queues[data].capacity "lots"`, "whole number"}},
		{name: "queue policy", yaml: "queues:\n  - {name: risk, capacity: 3, policy: never}\n", want: []string{`queues[risk].policy "never"`, "drop, fail, block, drop_oldest"}},
		{name: "new queue without policy", yaml: "queues:\n  - {name: risk, capacity: 3}\n", want: []string{`queues[risk].policy ""`, "line 2", "drop, fail, block, drop_oldest"}},
		{name: "queue timeout not a duration", yaml: "queues:\n  - {name: data, timeout: 1.0}\n", want: []string{`queues[data].timeout "1.0"`, "1s"}},
		{name: "fail queue needs a timeout", yaml: "queues:\n  - {name: risk, capacity: 3, policy: fail}\n", want: []string{`queues[risk].timeout "0s"`, "policy fail needs a timeout"}},
		{name: "block queue with a timeout", yaml: "queues:\n  - {name: order, timeout: 30s}\n", want: []string{`queues[order].timeout "30s"`, "no effect with policy block"}},
		{name: "route to unknown queue", yaml: "routes:\n  RISK: risk\n", want: []string{`routes[RISK] "risk"`, "allowed: data, signal, order"}},
		{name: "route with empty type", yaml: "routes:\n  '': data\n", want: []string{"routes[]", "event type must not be empty"}},
		{name: "default queue unknown", flags: map[string]string{"default-queue": "nope"}, want: []string{`default_queue "nope"`, "flag --default-queue", "allowed: data, signal, order"}},
		{name: "telemetry disabled not a bool", env: map[string]string{"EVENTBUS_TELEMETRY_DISABLED": "maybe"}, want: []string{`telemetry.disabled "maybe"`, "true or false"}},
		{name: "sample ratio above 1", flags: map[string]string{"data-sample-ratio": "1.5"}, want: []string{`telemetry.data_sample_ratio "1.5"`, "0 to 1"}},
		{name: "sample ratio not a number", flags: map[string]string{"data-sample-ratio": "half"}, want: []string{`telemetry.data_sample_ratio "half"`, "not a number"}},
		{name: "trace rate negative", flags: map[string]string{"data-trace-rate": "-5"}, want: []string{`telemetry.data_trace_rate "-5"`, "more than 0", "unlimited"}},
		{name: "trace rate not a number", yaml: "telemetry:\n  data_trace_rate: lots\n", want: []string{`telemetry.data_trace_rate "lots"`, "not a number"}},
		{name: "metric interval tiny", yaml: "telemetry:\n  metric_interval: 1ms\n", want: []string{`telemetry.metric_interval "1ms"`, "at least 100ms"}},
		{name: "span export cpu above 1", flags: map[string]string{"span-export-cpu": "2"}, want: []string{`telemetry.span_export_cpu "2"`, "at most 1"}},
		{name: "span export cpu negative", yaml: "telemetry:\n  span_export_cpu: -0.5\n", want: []string{`telemetry.span_export_cpu "-0.5"`, "more than 0"}},
		{name: "otlp endpoint", flags: map[string]string{"otlp-endpoint": "collector"}, want: []string{`telemetry.otlp_endpoint "collector"`, "HOST:PORT", "http://"}},
		{name: "otlp endpoint port with a sign", flags: map[string]string{"otlp-endpoint": "127.0.0.1:+5"}, want: []string{`telemetry.otlp_endpoint "127.0.0.1:+5"`, "0 to 65535"}},
		{name: "otlp endpoint bad scheme", flags: map[string]string{"otlp-endpoint": "grpc://x:1"}, want: []string{`telemetry.otlp_endpoint "grpc://x:1"`, "http:// or https://"}},
		{name: "several problems at once", flags: map[string]string{"log-level": "x", "log-format": "y"}, want: []string{"log_level", "log_format"}},
	}
	checkInvalid(t, tests)
}

// TestQueueRulesAreTheBus: a queue the config accepts is one bus.New
// accepts, and the other way round, because both ask bus for the rule.
func TestQueueRulesAreTheBus(t *testing.T) {
	for _, name := range []string{"risk", "risk.v2", "a_b-c", "a b", "a/b", "données", "x\ty"} {
		q := bus.QueueConfig{Name: name, Capacity: 5, Policy: bus.PolicyBlock}
		c := Default()
		c.Queues = append(c.Queues, q)
		cfgErr := c.Validate()
		_, busErr := bus.New([]bus.QueueConfig{q})
		if (cfgErr == nil) != (busErr == nil) {
			t.Errorf("queue name %q: config says %v, bus says %v", name, cfgErr, busErr)
		}
	}
}

func TestMissingFile(t *testing.T) {
	_, err := Load(Sources{File: filepath.Join(t.TempDir(), "nope.yaml")})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want fs.ErrNotExist", err)
	}
	if errors.Is(err, ErrInvalid) {
		t.Errorf("a missing file is not an invalid config: %v", err)
	}
}

// TestSettingsTable keeps the flag, environment and file names in step:
// every setting is reachable from the file, and names are unique.
func TestSettingsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Settings() {
		for _, n := range []string{"key " + s.Key, "flag " + s.Flag, "env " + s.Env()} {
			if seen[n] {
				t.Errorf("duplicate %s", n)
			}
			seen[n] = true
		}
		if !strings.HasPrefix(s.Env(), "EVENTBUS_") || strings.Contains(s.Env(), "-") {
			t.Errorf("env name %q", s.Env())
		}
		if s.Usage == "" {
			t.Errorf("setting %s has no usage text", s.Key)
		}
		var f fileConfig
		if _, ok := f.scalars()[s.Key]; !ok && !strings.HasPrefix(s.Key, "telemetry.") {
			t.Errorf("setting %s has no YAML field", s.Key)
		}
		f.Telemetry = &fileTelemetry{}
		if _, ok := f.scalars()[s.Key]; !ok {
			t.Errorf("setting %s has no YAML field", s.Key)
		}
		// The value a setting renders must parse back to the same config.
		c := Default()
		if err := s.Set(&c, s.Value(Default())); err != nil {
			t.Errorf("%s: default value %q does not parse: %v", s.Key, s.Value(Default()), err)
		}
		if !reflect.DeepEqual(c, Default()) {
			t.Errorf("%s: setting its rendered default changed the config", s.Key)
		}
	}
}

func TestCloneIsDeep(t *testing.T) {
	r := 0.5
	a := Default()
	a.Telemetry.DataSampleRatio = &r
	b := a.Clone()
	b.Queues[0].Capacity = 1
	b.Routes["X"] = "order"
	*b.Telemetry.DataSampleRatio = 0.1
	if a.Queues[0].Capacity != 1000 || a.Routes["X"] != "" || *a.Telemetry.DataSampleRatio != 0.5 {
		t.Errorf("Clone shares state with the original: %+v", a)
	}
}
