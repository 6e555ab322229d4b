package main

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDemoAgainstSidecar runs the demo command against a real sidecar
// (in-process serve, real socket, real client) and checks that every stage
// moved events: candles accepted and handled, orders published and
// executed.
func TestDemoAgainstSidecar(t *testing.T) {
	s := startSidecar(t, "--drain-timeout", "200ms", "--telemetry-disabled")
	code, out, errOut := cmd(t, "", "demo", "--socket", s.Socket, "--duration", "3s", "--order-latency", "50ms")
	if code != 0 {
		t.Fatalf("demo exited %d; stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, q := range []string{"data", "signal", "order"} {
		m := regexp.MustCompile(`(?m)^\s+` + q + `\s+accepted=(\d+) .* handled=(\d+)$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no report line for %s in:\n%s", q, out)
		}
		accepted, _ := strconv.Atoi(m[1])
		handled, _ := strconv.Atoi(m[2])
		if accepted == 0 || handled == 0 {
			t.Errorf("%s: accepted=%d handled=%d, want both > 0; report:\n%s", q, accepted, handled, out)
		}
	}
	if !strings.Contains(errOut, "demo: order executed") {
		t.Errorf("no executed order logged; stderr:\n%s", errOut)
	}
}

func TestDemoErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want []string // substrings of stderr
	}{
		{"zero duration", []string{"--duration", "0s"}, exitUsage, []string{"--duration 0s", "> 0"}},
		{"negative latency", []string{"--order-latency", "-1s"}, exitUsage, []string{"--order-latency -1s", "> 0"}},
		{"feed connections", []string{"--feed-connections", "0"}, exitUsage, []string{"--feed-connections 0", "between 1 and 1024"}},
		{"argument", []string{"extra"}, exitUsage, []string{"no arguments", "extra"}},
		{"no sidecar", []string{"--connect-timeout", "300ms"}, exitFailed, []string{"connect to the sidecar at", "within 300ms"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"demo", "--socket", socketPath(t)}, tt.args...)
			code, _, errOut := cmd(t, "", args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tt.code, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q does not name %q", errOut, w)
				}
			}
		})
	}
}
