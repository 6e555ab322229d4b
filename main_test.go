package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.uber.org/goleak"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/config"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// noEnv keeps the machine's EVENTBUS_* and OTEL_* variables out of tests.
func noEnv(string) (string, bool) { return "", false }

// envMap serves a fixed environment.
func envMap(kv map[string]string) env {
	return func(k string) (string, bool) {
		v, ok := kv[k]
		return v, ok
	}
}

// socketPath returns a socket path short enough for sun_path.
func socketPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(testkit.ShortTempDir(t), "s.sock")
}

// inProcess is the whole program as a testkit.MainFunc, so that the
// sidecars of these tests run main's own code under the race detector.
func inProcess(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	kv := map[string]string{}
	for _, e := range environ {
		k, v, _ := strings.Cut(e, "=")
		kv[k] = v
	}
	return run(ctx, args, strings.NewReader(""), stdout, stderr, envMap(kv))
}

// startSidecar runs `serve` in-process with args added to a temporary
// socket and a free admin port, and stops it at the end of the test.
func startSidecar(t *testing.T, args ...string) *testkit.Sidecar {
	t.Helper()
	return testkit.StartSidecar(t, testkit.SidecarConfig{Main: inProcess, Args: args})
}

// cmd runs one command line in-process and returns exit code, stdout, stderr.
func cmd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"eventbus-sidecar"}, args...), strings.NewReader(stdin), &out, &errb, noEnv)
	return code, out.String(), errb.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := cmd(t, "", "version")
	if code != 0 || out != "eventbus-sidecar "+version+"\n" {
		t.Errorf("version: code %d, output %q", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, ""},
		{"unknown flag", []string{"serve", "--no-such-flag"}, "no-such-flag"},
		{"invalid log level", []string{"serve", "--log-level", "loud"}, `log_level "loud" (flag --log-level): allowed values: debug, info, warn, error`},
		{"publish argument", []string{"publish", "stray"}, "publish takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := cmd(t, "", tt.args...)
			if code == 0 {
				t.Fatalf("exit 0, want failure; stderr %q", stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.want)
			}
		})
	}
}

func TestInvalidConfigRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{
			name: "unknown key in file",
			args: []string{"serve", "--config", write("unknown.yaml", "queues:\n  - name: data\n    max: 3\n")},
			want: []string{`unknown key "max"`, "line 3", "name, capacity, policy, timeout"},
		},
		{
			name: "bad policy in file",
			args: []string{"serve", "--config", write("policy.yaml", "queues:\n  - {name: risk, capacity: 5, policy: sometimes}\n")},
			want: []string{`queues[risk].policy "sometimes"`, "drop, fail, block, drop_oldest"},
		},
		{
			name: "bad env",
			args: []string{"serve"},
			env:  map[string]string{"EVENTBUS_DRAIN_TIMEOUT": "ten"},
			want: []string{`drain_timeout "ten" (env EVENTBUS_DRAIN_TIMEOUT)`, "500ms, 1s"},
		},
		{
			name: "config file from env",
			args: []string{"serve"},
			env:  map[string]string{"EVENTBUS_CONFIG": write("fmt.yaml", "log_format: xml\n")},
			want: []string{`log_format "xml"`, "text, json"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), append([]string{"eventbus-sidecar"}, tt.args...), strings.NewReader(""), &out, &errb, envMap(tt.env))
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			for _, w := range tt.want {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("stderr %q does not contain %q", errb.String(), w)
				}
			}
		})
	}
}

func TestConfigCommand(t *testing.T) {
	t.Run("defaults match the config golden file", func(t *testing.T) {
		code, out, stderr := cmd(t, "", "config")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		want, err := os.ReadFile(filepath.Join("config", "testdata", "defaults.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if out != string(want) {
			t.Errorf("config output differs from config/testdata/defaults.yaml:\n%s", out)
		}
	})
	t.Run("precedence flags > env > file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(file, []byte("socket: /file.sock\nlog_level: warn\ndrain_timeout: 3s\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		code := run(context.Background(),
			[]string{"eventbus-sidecar", "config", "--config", file, "--socket", "/flag.sock", "--telemetry-disabled"},
			strings.NewReader(""), &out, &errb,
			envMap(map[string]string{"EVENTBUS_SOCKET": "/env.sock", "EVENTBUS_LOG_LEVEL": "error"}))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
		cfg, err := config.Parse(out.Bytes(), "config output")
		if err != nil {
			t.Fatalf("config output does not parse: %v\n%s", err, out.String())
		}
		if cfg.Socket != "/flag.sock" || cfg.LogLevel != "error" || cfg.DrainTimeout != 3*time.Second || !cfg.Telemetry.Disabled {
			t.Errorf("precedence wrong: socket %q (want flag), log_level %q (want env), drain %v (want file), telemetry disabled %v (want flag)",
				cfg.Socket, cfg.LogLevel, cfg.DrainTimeout, cfg.Telemetry.Disabled)
		}
	})
}

func TestAdminEndpoints(t *testing.T) {
	s := startSidecar(t)
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + s.AdminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d", code)
	}
	code, body := get("/stats")
	var st bus.Stats
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
		t.Fatalf("/stats = %d %v: %s", code, err, body)
	}
	if st["order"].MaxSize != 50 || st["signal"].MaxSize != 100 || st["data"].MaxSize != 1000 {
		t.Errorf("/stats capacities: %+v", st)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "eventbus_queue_capacity") {
		t.Errorf("/metrics = %d, without eventbus_queue_capacity:\n%.2000s", code, body)
	}
}

// Example of what the README promises for `make run`: serve with embedded
// defaults needs no file and no other service.
func TestServeWithEmbeddedDefaults(t *testing.T) {
	s := startSidecar(t)
	if code := s.Stop(); code != 0 {
		t.Fatalf("exit %d:\n%s", code, s.Logs())
	}
	log := s.Logs()
	for _, w := range []string{"eventbus-sidecar serving", "queues=data,signal,order", "drain complete"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
}

func TestLogFormatAndLevel(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, log string)
	}{
		{"json", []string{"--log-format", "json"}, func(t *testing.T, log string) {
			for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Errorf("log line is not JSON: %q: %v", line, err)
				}
			}
		}},
		{"warn hides info", []string{"--log-level", "warn"}, func(t *testing.T, log string) {
			if strings.Contains(log, "level=INFO") {
				t.Errorf("info lines at level warn:\n%s", log)
			}
		}},
		{"debug", []string{"--log-level", "debug"}, func(t *testing.T, log string) {
			if !strings.Contains(log, "level=INFO") {
				t.Errorf("no info lines at level debug:\n%s", log)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSidecar(t, tt.args...)
			if code := s.Stop(); code != 0 {
				t.Fatalf("exit %d", code)
			}
			tt.check(t, s.Logs())
		})
	}
}

// TestSDKErrorsAreStructuredLogLines: serve routes the errors the
// OpenTelemetry SDK reports through its process-wide handler (by default
// unstructured lines on stderr) into the sidecar's own log.
func TestSDKErrorsAreStructuredLogLines(t *testing.T) {
	s := startSidecar(t, "--log-format", "json")
	otel.Handle(errors.New("sdk trouble"))
	if code := s.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(s.Logs()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("log line is not JSON: %q: %v", line, err)
		}
		if rec["msg"] == "opentelemetry sdk error" {
			found = true
			if rec["level"] != "WARN" || rec["err"] != "sdk trouble" {
				t.Errorf("SDK error record %v, want level WARN with the error", rec)
			}
		}
	}
	if !found {
		t.Errorf("no SDK error record in the log:\n%s", s.Logs())
	}
}

// TestRunGroup: the first actor to return stops the others, interrupts run
// in the order the actors were added, and the others' errors come back.
func TestRunGroup(t *testing.T) {
	var order []string
	var g runGroup
	failed := errors.New("listener gone")
	stop := make(chan struct{})
	g.add("waiter",
		func() error { <-stop; return errors.New("late") },
		func(cause error) { order = append(order, "waiter: "+cause.Error()); close(stop) })
	g.add("failer",
		func() error { return failed },
		func(cause error) { order = append(order, "failer") })
	rest, first := g.run()
	if !errors.Is(first, failed) || first.Error() != "failer stopped: listener gone" {
		t.Errorf("first = %v, want failer stopped: listener gone", first)
	}
	if len(rest) != 1 || rest[0].Error() != "waiter: late" {
		t.Errorf("rest = %v, want [waiter: late]", rest)
	}
	if want := []string{"waiter: failer stopped: listener gone", "failer"}; strings.Join(order, "|") != strings.Join(want, "|") {
		t.Errorf("interrupts ran %q, want %q", order, want)
	}

	var quiet runGroup
	quiet.add("signal", func() error { return nil }, func(cause error) {
		if cause != nil {
			t.Errorf("cause %v, want nil after a nil return", cause)
		}
	})
	if rest, first := quiet.run(); first != nil || rest != nil {
		t.Errorf("run = %v, %v, want nothing", first, rest)
	}
}
