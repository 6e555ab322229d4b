package config

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

func TestPlanReloadNothingChanged(t *testing.T) {
	r := PlanReload(Default(), Default())
	if !r.Empty() {
		t.Fatalf("live %v, restart %v; want no changes", r.Live, r.Restart)
	}
	if !reflect.DeepEqual(r.Next, Default()) {
		t.Fatalf("Next = %+v, want the running config", r.Next)
	}
}

func TestPlanReload(t *testing.T) {
	ratio := 0.1
	tests := []struct {
		name          string
		edit          func(c *Config)
		live, restart []Change        // Why is checked to be non-empty for restart, empty for live
		next          func(c *Config) // the running config with the live changes applied
	}{
		{
			name: "log level, sampling ratio and trace rate are live",
			edit: func(c *Config) {
				c.LogLevel = "debug"
				c.Telemetry.DataSampleRatio = &ratio
				c.Telemetry.DataTraceRate = math.Inf(1)
			},
			live: []Change{{Field: "log_level", Old: "info", New: "debug"}, {Field: "telemetry.data_sample_ratio", Old: "", New: "0.1"}, {Field: "telemetry.data_trace_rate", Old: "", New: "unlimited"}},
			next: func(c *Config) {
				c.LogLevel = "debug"
				c.Telemetry.DataSampleRatio = &ratio
				c.Telemetry.DataTraceRate = math.Inf(1)
			},
		},
		{
			name: "listeners and exporters need a restart",
			edit: func(c *Config) {
				c.Socket, c.SocketMode, c.AdminAddr = "/run/eb.sock", 0o600, ""
				c.Telemetry.OTLPEndpoint, c.LogFormat, c.MaxConnections = "collector:4317", "json", 8
			},
			restart: []Change{
				{Field: "socket", Old: "/tmp/eventbus-sidecar.sock", New: "/run/eb.sock"},
				{Field: "socket_mode", Old: "0660", New: "0600"},
				{Field: "admin_addr", Old: "127.0.0.1:9464", New: "off"},
				{Field: "log_format", Old: "text", New: "json"},
				{Field: "max_connections", Old: "1024", New: "8"},
				{Field: "telemetry.otlp_endpoint", Old: "", New: "collector:4317"},
			},
			next: func(c *Config) {},
		},
		{
			name: "the buffered-bytes budget is live",
			edit: func(c *Config) { c.MaxBufferedBytes = 64 << 20 },
			live: []Change{{Field: "max_buffered_bytes", Old: "134217728", New: "67108864"}},
			next: func(c *Config) { c.MaxBufferedBytes = 64 << 20 },
		},
		{
			name: "a budget too small for the running frame limit waits for its restart",
			edit: func(c *Config) { c.MaxFrameBytes, c.MaxBufferedBytes = 64<<10, 4<<20 },
			restart: []Change{
				{Field: "max_frame_bytes", Old: "1048576", New: "65536"},
				{Field: "max_buffered_bytes", Old: "134217728", New: "4194304"},
			},
			next: func(c *Config) {},
		},
		{
			name: "queue capacity, policy and timeout are live",
			edit: func(c *Config) {
				c.Queues[0].Capacity = 2000
				c.Queues[2].Policy, c.Queues[2].Timeout = bus.PolicyFail, 2*time.Second
			},
			live: []Change{
				{Field: "queues[data].capacity", Old: "1000", New: "2000"},
				{Field: "queues[order].policy", Old: "block", New: "fail"},
				{Field: "queues[order].timeout", Old: "0s", New: "2s"},
			},
			next: func(c *Config) {
				c.Queues[0].Capacity = 2000
				c.Queues[2].Policy, c.Queues[2].Timeout = bus.PolicyFail, 2*time.Second
			},
		},
		{
			name: "routes to running queues are live",
			edit: func(c *Config) {
				c.Routes["CANDLE_UPDATE"] = "signal"
				delete(c.Routes, "CANDLE_CLOSED")
				c.Routes["TICK"] = "data"
				c.DefaultQueue = "order"
			},
			live: []Change{
				{Field: "default_queue", Old: "data", New: "order"},
				{Field: "routes[CANDLE_CLOSED]", Old: "data", New: ""},
				{Field: "routes[CANDLE_UPDATE]", Old: "data", New: "signal"},
				{Field: "routes[TICK]", Old: "", New: "data"},
			},
			next: func(c *Config) {
				c.Routes["CANDLE_UPDATE"] = "signal"
				delete(c.Routes, "CANDLE_CLOSED")
				c.Routes["TICK"] = "data"
				c.DefaultQueue = "order"
			},
		},
		{
			name: "a new queue and what names it wait for the restart",
			edit: func(c *Config) {
				c.Queues = append(c.Queues, bus.QueueConfig{Name: "risk", Capacity: 10, Policy: bus.PolicyDropOldest})
				c.Routes["RISK_LIMIT"] = "risk"
				c.DefaultQueue = "risk"
				c.LogLevel = "warn"
			},
			live: []Change{{Field: "log_level", Old: "info", New: "warn"}},
			restart: []Change{
				{Field: "default_queue", Old: "data", New: "risk"},
				{Field: "queues[risk]", Old: "", New: "capacity 10, policy drop_oldest"},
				{Field: "routes[RISK_LIMIT]", Old: "", New: "risk"},
			},
			next: func(c *Config) { c.LogLevel = "warn" },
		},
		{
			name: "a removed queue stays until the restart",
			edit: func(c *Config) {
				c.Queues = c.Queues[:2]
				c.Routes["ORDER_PLACED"] = "signal"
			},
			live:    []Change{{Field: "routes[ORDER_PLACED]", Old: "order", New: "signal"}},
			restart: []Change{{Field: "queues[order]", Old: "capacity 50, policy block", New: ""}},
			next:    func(c *Config) { c.Routes["ORDER_PLACED"] = "signal" },
		},
		{
			name: "queue order needs a restart",
			edit: func(c *Config) {
				c.Queues = []bus.QueueConfig{c.Queues[2], c.Queues[0], c.Queues[1]}
				c.Queues[1].Capacity = 10
			},
			live:    []Change{{Field: "queues[data].capacity", Old: "1000", New: "10"}},
			restart: []Change{{Field: "queues", Old: "data, signal, order", New: "order, data, signal"}},
			next:    func(c *Config) { c.Queues[0].Capacity = 10 },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			running, loaded := Default(), Default().Clone()
			tt.edit(&loaded)
			if err := loaded.Validate(); err != nil {
				t.Fatalf("test config invalid: %v", err)
			}
			r := PlanReload(running, loaded)
			checkChanges(t, "live", r.Live, tt.live, false)
			checkChanges(t, "restart", r.Restart, tt.restart, true)
			want := Default().Clone()
			tt.next(&want)
			if !reflect.DeepEqual(r.Next, want) {
				t.Errorf("Next = %+v\nwant   %+v", r.Next, want)
			}
			if err := r.Next.Validate(); err != nil {
				t.Errorf("Next does not validate: %v", err)
			}
			if !reflect.DeepEqual(running, Default()) {
				t.Errorf("PlanReload modified the running config")
			}
			// Applying the plan and reloading the same file again leaves
			// only what still waits for a restart.
			again := PlanReload(r.Next, loaded)
			checkChanges(t, "live after applying", again.Live, nil, false)
			checkChanges(t, "restart after applying", again.Restart, tt.restart, true)
		})
	}
}

func checkChanges(t *testing.T, what string, got, want []Change, restart bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s changes: got %v, want %v", what, got, want)
		return
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Field != w.Field || g.Old != w.Old || g.New != w.New {
			t.Errorf("%s change %d = %v, want %v", what, i, g, w)
		}
		if (g.Why != "") != restart {
			t.Errorf("%s change %v: why %q", what, g, g.Why)
		}
	}
}

func TestPlanReloadCoversEveryField(t *testing.T) {
	// Every Config field is a Setting, a queue or a route, so that
	// PlanReload compares it; a new field must join one of them.
	leaves := 0
	var count func(t reflect.Type)
	count = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			if f := t.Field(i); f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == t.PkgPath() {
				count(f.Type)
			} else {
				leaves++
			}
		}
	}
	count(reflect.TypeOf(Config{}))
	if want := len(Settings()) + 2; leaves != want {
		t.Fatalf("Config has %d fields, Settings %d plus queues and routes: PlanReload would miss a field", leaves, want-2)
	}
}

func TestPlanReloadFromFiles(t *testing.T) {
	// The running and the reloaded configuration come from the same
	// loader, so a bad file is refused with the same message as at start.
	dir := t.TempDir()
	path := filepath.Join(dir, "eventbus.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src := Sources{File: path, Flags: map[string]string{"log-level": "warn"}}
	write("queues:\n  - name: data\n    capacity: 10\n")
	running, err := Load(src)
	if err != nil {
		t.Fatal(err)
	}

	write("log_level: debug\nsocket: /run/other.sock\nqueues:\n  - name: data\n    capacity: 20\n")
	loaded, err := Load(src)
	if err != nil {
		t.Fatal(err)
	}
	r := PlanReload(running, loaded)
	// The flag still wins over the file's log_level, as at start.
	checkChanges(t, "live", r.Live, []Change{{Field: "queues[data].capacity", Old: "10", New: "20"}}, false)
	checkChanges(t, "restart", r.Restart, []Change{{Field: "socket", Old: "/tmp/eventbus-sidecar.sock", New: "/run/other.sock"}}, true)

	write("queues:\n  - name: data\n    policy: wait\n")
	_, err = Load(src)
	var fe *FieldError
	if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("Load of a bad file = %v, want a FieldError", err)
	}
	for _, s := range []string{"queues[data].policy", `"wait"`, "drop, fail, block, drop_oldest", path} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %s", err, s)
		}
	}
}
