// Package admin is the sidecar's operator HTTP listener: Prometheus metrics
// for users without a collector, liveness and readiness for orchestrators,
// and the bus statistics as JSON.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"
)

// DefaultAddr is where the admin listener binds unless told otherwise.
const DefaultAddr = "127.0.0.1:9464"

// Enabled reports whether addr asks for an admin listener: "" and "off"
// (any case) turn it off.
func Enabled(addr string) bool {
	a := strings.TrimSpace(addr)
	return a != "" && !strings.EqualFold(a, "off")
}

// Config configures New.
type Config struct {
	// Addr is the host:port ListenAndServe binds; DefaultAddr when empty.
	Addr string
	// Metrics serves /metrics (telemetry.Telemetry.MetricsHandler); nil
	// answers 404.
	Metrics http.Handler
	// Stats returns what /stats encodes as JSON (bus.Stats, for example);
	// nil answers 404. It is called once per request.
	Stats func() any
	// Ready reports readiness for /readyz; false (draining) answers 503.
	// nil means always ready.
	Ready func() bool
	// Pprof serves the Go runtime's profiles under /debug/pprof/. Off by
	// default: a CPU profile or trace costs CPU while it runs, and the
	// profiles show the program's internals to whoever reaches the port.
	Pprof bool
	// Logger receives server errors; nil discards them.
	Logger *slog.Logger
}

// Server is the admin HTTP server. Use it like net/http.Server: Serve or
// ListenAndServe, then Shutdown.
type Server struct {
	cfg  Config
	srv  *http.Server
	addr chan net.Addr
}

// New validates cfg and builds the server; it does not listen yet.
func New(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if !Enabled(cfg.Addr) {
		return nil, fmt.Errorf("admin: address %q turns the listener off; do not create a server", cfg.Addr)
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("admin: address %q: want host:port such as %s: %w", cfg.Addr, DefaultAddr, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, addr: make(chan net.Addr, 1)}
	writeTimeout := 30 * time.Second
	if cfg.Pprof {
		// net/http/pprof refuses a profile at least as long as the write
		// timeout, and go tool pprof asks for 30 s by default.
		writeTimeout = 2 * time.Minute
	}
	s.srv = &http.Server{
		Addr:              cfg.Addr,
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Handler returns the admin routes, for tests and for embedding.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /stats", s.stats)
	if s.cfg.Metrics != nil {
		mux.Handle("GET /metrics", s.cfg.Metrics)
	}
	if s.cfg.Pprof {
		// Registered on this mux only: importing net/http/pprof also adds
		// the routes to http.DefaultServeMux, which the sidecar never serves.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func (s *Server) index(w http.ResponseWriter, _ *http.Request) {
	writeText(w, http.StatusOK, "eventbus-sidecar admin: /metrics /healthz /readyz /stats\n")
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Ready != nil && !s.cfg.Ready() {
		writeText(w, http.StatusServiceUnavailable, "draining\n")
		return
	}
	writeText(w, http.StatusOK, "ready\n")
}

func (s *Server) stats(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Stats == nil {
		http.NotFound(w, nil)
		return
	}
	body, err := json.MarshalIndent(s.cfg.Stats(), "", "  ")
	if err != nil {
		s.cfg.Logger.Error("admin: encoding /stats", "error", err)
		writeText(w, http.StatusInternalServerError, "cannot encode stats\n")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// ListenAndServe listens on Config.Addr and serves until Shutdown. It
// returns http.ErrServerClosed after Shutdown, like net/http.
func (s *Server) ListenAndServe() error {
	l, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("admin: listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(l)
}

// Serve serves on l until Shutdown; l is closed when Serve returns.
func (s *Server) Serve(l net.Listener) error {
	select {
	case s.addr <- l.Addr():
	default:
	}
	s.cfg.Logger.Info("admin listener started", "addr", l.Addr().String())
	err := s.srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return fmt.Errorf("admin: serve on %s: %w", l.Addr(), err)
}

// Addr waits until the server listens and returns its address (useful with
// port 0), or returns ctx's error.
func (s *Server) Addr(ctx context.Context) (net.Addr, error) {
	select {
	case a := <-s.addr:
		s.addr <- a
		return a, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Shutdown stops accepting connections and waits for requests in progress
// until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}
