package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestReloadOnSIGHUP runs the real binary: `eventbus-sidecar reload` (a
// SIGHUP found through the socket) applies a changed capacity while every
// queued event stays, names what waits for a restart, and survives a broken
// file with the running configuration kept and the failure counted.
func TestReloadOnSIGHUP(t *testing.T) {
	bin, err := testkit.BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	writeConfig := func(body string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	orderCapacity := func(n int) string {
		return fmt.Sprintf("queues:\n  - name: order\n    capacity: %d\n    policy: block\n", n)
	}
	writeConfig(orderCapacity(2))
	sc := testkit.StartSidecar(t, testkit.SidecarConfig{Binary: bin, Args: []string{"--config", file}})

	publishOrders := func(n int) {
		t.Helper()
		for range n {
			code, out, stderr := cmd(t, "", "publish", "--socket", sc.Socket, "--type", "ORDER_PLACED", "--timeout", "5s")
			if code != 0 || !strings.Contains(out, `"accepted"`) {
				t.Fatalf("publish: exit %d, stdout %q, stderr %q", code, out, stderr)
			}
		}
	}
	order := func() (size, maxsize int) {
		t.Helper()
		st, err := sc.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st["order"].Size, st["order"].MaxSize
	}
	reload := func() {
		t.Helper()
		code, out, stderr := cmd(t, "", "reload", "--socket", sc.Socket)
		if code != 0 || !strings.Contains(out, "sent SIGHUP to pid") {
			t.Fatalf("reload: exit %d, stdout %q, stderr %q", code, out, stderr)
		}
	}
	logLines := func(pattern string) int {
		return len(regexp.MustCompile(pattern).FindAllStringIndex(sc.Logs(), -1))
	}

	publishOrders(2)
	if size, maxsize := order(); size != 2 || maxsize != 2 {
		t.Fatalf("order size %d/%d, want 2/2", size, maxsize)
	}

	writeConfig(orderCapacity(5))
	reload()
	testkit.Eventually(t, "order capacity 5 after the reload", func() error {
		if size, maxsize := order(); size != 2 || maxsize != 5 {
			return fmt.Errorf("order size %d/%d, want 2/5", size, maxsize)
		}
		return nil
	})
	publishOrders(3)

	// A shrink keeps every queued event.
	writeConfig(orderCapacity(3) + "socket_mode: \"0600\"\n")
	reload()
	testkit.Eventually(t, "order capacity 3 after the second reload", func() error {
		if size, maxsize := order(); size != 5 || maxsize != 3 {
			return fmt.Errorf("order size %d/%d, want 5/3", size, maxsize)
		}
		return nil
	})
	// The line comes before the reconfiguration Stats shows, but through
	// a pipe that the test reads on its own time.
	testkit.Eventually(t, "one log line naming socket_mode as waiting for a restart", func() error {
		if n := logLines(`reload: setting not applied until the next start.*field=socket_mode`); n != 1 {
			return fmt.Errorf("%d log lines name socket_mode as waiting for a restart, want 1", n)
		}
		return nil
	})

	// The buffered-bytes budget changes live, and the soft memory limit
	// follows it: 20 MiB + 1024 × 72 KiB + 3 × 11 MiB + 64 MiB.
	if v := adminMetric(t, sc.AdminAddr, "eventbus_buffered_budget_bytes"); v != "1.34217728e+08" {
		t.Fatalf("eventbus_buffered_budget_bytes = %s before the reload, want the default 128 MiB", v)
	}
	writeConfig(orderCapacity(3) + "socket_mode: \"0600\"\nmax_buffered_bytes: 67108864\nlog_level: debug\n")
	reload()
	testkit.Eventually(t, "the budget of 64 MiB after the third reload", func() error {
		if v := adminMetric(t, sc.AdminAddr, "eventbus_buffered_budget_bytes"); v != "6.7108864e+07" {
			return fmt.Errorf("eventbus_buffered_budget_bytes = %s", v)
		}
		return nil
	})
	testkit.Eventually(t, "the soft memory limit at the new bound", func() bool {
		return logLines(`go runtime soft memory limit set.* bound=198180864\b`) == 1
	})

	// A broken file changes nothing and the sidecar stays up.
	writeConfig("queues: [\n")
	reload()
	testkit.Eventually(t, "the refused reload in the log", func() bool {
		return logLines(`reload refused; the running configuration stays`) == 1
	})
	if sc.Exited() {
		t.Fatalf("the sidecar exited after a broken file; output:\n%s", sc.Logs())
	}
	if size, maxsize := order(); size != 5 || maxsize != 3 {
		t.Fatalf("order size %d/%d after a refused reload, want 5/3", size, maxsize)
	}

	for outcome, want := range map[string]string{"success": "3", "failure": "1"} {
		if v := adminMetric(t, sc.AdminAddr, `eventbus_config_reloads_total{[^}]*outcome="`+outcome+`"[^}]*`); v != want {
			t.Errorf("eventbus_config_reloads_total{outcome=%q} = %s, want %s", outcome, v, want)
		}
	}
}

// adminMetric returns the value of the series whose name (and labels, as a
// regular expression after a "{") match series on admin's /metrics; ""
// when there is none.
func adminMetric(t *testing.T, admin, series string) string {
	t.Helper()
	body := adminMetricsText(t, admin)
	name, labels, found := strings.Cut(series, "{")
	pattern := `(?m)^` + regexp.QuoteMeta(name) + `(?:\{[^}]*\})? (\S+)$`
	if found {
		pattern = `(?m)^` + regexp.QuoteMeta(name) + `\{` + labels + `\} (\S+)$`
	}
	m := regexp.MustCompile(pattern).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return m[1]
}
