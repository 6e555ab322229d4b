package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// startServer serves cfg on a free loopback port until the test ends and
// returns its base URL.
func startServer(t *testing.T, cfg Config) (string, *Server) {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := s.Addr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + addr.String(), s
}

func get(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

func TestEndpoints(t *testing.T) {
	var draining atomic.Bool
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "eventbus_queue_depth{queue=\"order\"} 50\n")
	})
	base, _ := startServer(t, Config{
		Metrics: metrics,
		Stats:   func() any { return map[string]any{"order": map[string]int{"size": 50, "maxsize": 50}} },
		Ready:   func() bool { return !draining.Load() },
	})

	tests := []struct {
		name, path string
		before     func()
		code       int
		ctype      string
		body       string
	}{
		{"healthz", "/healthz", nil, 200, "text/plain", "ok"},
		{"ready", "/readyz", nil, 200, "text/plain", "ready"},
		{"metrics", "/metrics", nil, 200, "", `eventbus_queue_depth{queue="order"} 50`},
		{"stats", "/stats", nil, 200, "application/json", `"maxsize": 50`},
		{"unknown path", "/nope", nil, 404, "", ""},
		{"draining is not ready", "/readyz", func() { draining.Store(true) }, 503, "text/plain", "draining"},
		{"draining is still healthy", "/healthz", nil, 200, "text/plain", "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			code, ctype, body := get(t, base+tt.path)
			if code != tt.code || !strings.HasPrefix(ctype, tt.ctype) || !strings.Contains(body, tt.body) {
				t.Errorf("GET %s = %d %q %q, want %d %q containing %q", tt.path, code, ctype, body, tt.code, tt.ctype, tt.body)
			}
		})
	}
	t.Run("stats is valid JSON", func(t *testing.T) {
		_, _, body := get(t, base+"/stats")
		var v map[string]map[string]int
		if err := json.Unmarshal([]byte(body), &v); err != nil || v["order"]["size"] != 50 {
			t.Errorf("stats body %q: %v", body, err)
		}
	})
	t.Run("POST refused", func(t *testing.T) {
		resp, err := http.Post(base+"/healthz", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /healthz = %d, want 405", resp.StatusCode)
		}
	})
}

func TestOptionalHandlersAbsent(t *testing.T) {
	base, _ := startServer(t, Config{})
	for path, want := range map[string]int{"/metrics": 404, "/stats": 404, "/readyz": 200, "/healthz": 200} {
		if code, _, _ := get(t, base+path); code != want {
			t.Errorf("GET %s = %d, want %d", path, code, want)
		}
	}
}

func TestStatsEncodingFailure(t *testing.T) {
	base, _ := startServer(t, Config{Stats: func() any { return map[string]any{"bad": make(chan int)} }})
	if code, _, body := get(t, base+"/stats"); code != 500 || !strings.Contains(body, "cannot encode") {
		t.Errorf("GET /stats = %d %q, want 500", code, body)
	}
}

func TestNewValidatesAddr(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr string
	}{
		{"off", "turns the listener off"},
		{"OFF", "turns the listener off"},
		{"127.0.0.1", "want host:port"},
		{"", ""},
		{"127.0.0.1:9464", ""},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			_, err := New(Config{Addr: tt.addr})
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("New(%q) = %v, want error containing %q", tt.addr, err, tt.wantErr)
			}
		})
	}
}

func TestEnabled(t *testing.T) {
	for addr, want := range map[string]bool{"": false, "off": false, " Off ": false, "127.0.0.1:9464": true} {
		if got := Enabled(addr); got != want {
			t.Errorf("Enabled(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestListenAndServeReportsBusyPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := New(Config{Addr: l.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	err = s.ListenAndServe()
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("ListenAndServe on a busy port = %v, want an error naming %s", err, l.Addr())
	}
}
