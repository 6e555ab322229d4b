package telemetry

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// FuzzParseResourceAttributes: any OTEL_RESOURCE_ATTRIBUTES value either
// parses into keys without surrounding space, or fails with
// ErrInvalidConfig; it never panics.
func FuzzParseResourceAttributes(f *testing.F) {
	for _, s := range []string{"", "a=b", "a=b,c=d", "k=%20x", "=v", "novalue", "a=%zz", " a = b ,", "a=b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		m, err := parseResourceAttributes(v)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		for k := range m {
			if k == "" || k != strings.TrimSpace(k) {
				t.Fatalf("key %q from %q", k, v)
			}
		}
	})
}

// FuzzParseEndpoint: an accepted endpoint is a parseable http(s) URL or a
// host:port with a numeric port, and CheckEndpoint (the config loader's
// check) accepts exactly what Setup accepts.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"127.0.0.1:4317", "http://127.0.0.1:4317", "https://c:4317/x", "localhost", "ftp://x:1", ":4317", "[::1]:4317"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, v string, insecure bool) {
		ep, err := parseEndpoint("endpoint", v, insecure)
		if (CheckEndpoint(v) == nil) != (err == nil) {
			t.Fatalf("%q: CheckEndpoint and parseEndpoint disagree (%v)", v, err)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		switch {
		case ep.url != "":
			u, err := url.Parse(ep.url)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				t.Fatalf("accepted %q as URL %q", v, ep.url)
			}
			if ep.insecure != (u.Scheme == "http") {
				t.Fatalf("%q: insecure %v with scheme %s", v, ep.insecure, u.Scheme)
			}
		case ep.hostPort != "":
			if ep.hostPort != v || !strings.Contains(v, ":") {
				t.Fatalf("accepted %q as host:port %q", v, ep.hostPort)
			}
		default:
			t.Fatalf("accepted %q as an empty endpoint", v)
		}
	})
}
