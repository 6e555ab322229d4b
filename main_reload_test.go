package main

import (
	"fmt"
	"io"
	"net/http"
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
	if n := logLines(`reload: setting not applied until the next start.*field=socket_mode`); n != 1 {
		t.Errorf("%d log lines name socket_mode as waiting for a restart, want 1", n)
	}

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

	res, err := http.Get("http://" + sc.AdminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for outcome, want := range map[string]string{"success": "2", "failure": "1"} {
		re := regexp.MustCompile(`(?m)^eventbus_config_reloads_total\{[^}]*outcome="` + outcome + `"[^}]*\} (\S+)$`)
		m := re.FindStringSubmatch(string(body))
		if m == nil || m[1] != want {
			t.Errorf("eventbus_config_reloads_total{outcome=%q} = %v, want %s", outcome, m, want)
		}
	}
}
