package admin

import (
	"strings"
	"testing"
)

func TestPprofOffByDefault(t *testing.T) {
	base, _ := startServer(t, Config{})
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/profile?seconds=1", "/debug/pprof/cmdline"} {
		if code, _, _ := get(t, base+path); code != 404 {
			t.Errorf("GET %s = %d with Pprof off, want 404", path, code)
		}
	}
}

func TestPprofServesWhenOn(t *testing.T) {
	base, _ := startServer(t, Config{Pprof: true})
	tests := []struct {
		path, ctype, body string
	}{
		{"/debug/pprof/", "text/html", "goroutine"},
		{"/debug/pprof/heap?debug=1", "text/plain", "heap profile"},
		{"/debug/pprof/goroutine?debug=1", "text/plain", "goroutine profile"},
		{"/debug/pprof/cmdline", "text/plain", ""},
		{"/debug/pprof/profile?seconds=1", "application/octet-stream", ""},
	}
	for _, tt := range tests {
		code, ctype, body := get(t, base+tt.path)
		if code != 200 || !strings.HasPrefix(ctype, tt.ctype) || !strings.Contains(body, tt.body) {
			t.Errorf("GET %s = %d %q (%d bytes), want 200 %q containing %q", tt.path, code, ctype, len(body), tt.ctype, tt.body)
		}
	}
	// The other routes stay as they were.
	if code, _, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("GET /healthz = %d with Pprof on, want 200", code)
	}
}
