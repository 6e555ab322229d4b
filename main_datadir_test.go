package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// runToExit runs the binary with args and returns its exit code and
// output; a process still running after patience is a failure (a sidecar
// that should have refused to start did not).
func runToExit(t *testing.T, bin string, patience time.Duration, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	c := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v still running after %v; output:\n%s", args, patience, out.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String()
}

// lastSegment is the highest-numbered segment of a queue's log: the only
// place a torn tail can be.
func lastSegment(t *testing.T, dataDir, queue string) string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dataDir, "queues", queue, "*.wal"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segments of %s under %s: %v", queue, dataDir, err)
	}
	slices.Sort(segs)
	return segs[len(segs)-1]
}

// largestSegment is the segment holding the most records.
func largestSegment(t *testing.T, dataDir, queue string) string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dataDir, "queues", queue, "*.wal"))
	if err != nil {
		t.Fatal(err)
	}
	var best string
	var size int64 = -1
	for _, s := range segs {
		if st, err := os.Stat(s); err == nil && st.Size() > size {
			best, size = s, st.Size()
		}
	}
	return best
}

// TestDataDirFaultsWithTheBinary runs the real binary on one data dir
// through what a node does to it: the directory is private, a second
// sidecar cannot share it, a torn tail is cut with a log line saying how
// much, damage anywhere else refuses the start naming the file and offset
// until `wal salvage` repairs it, and no accepted order is lost on the way.
func TestDataDirFaultsWithTheBinary(t *testing.T) {
	bin, err := testkit.BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(testkit.ShortTempDir(t), "data")
	socket := filepath.Join(testkit.ShortTempDir(t), "s.sock")
	args := []string{"--data-dir", dataDir, "--telemetry-disabled", "--drain-timeout", "100ms"}
	start := func(t *testing.T) *testkit.Sidecar {
		t.Helper()
		return testkit.StartSidecar(t, testkit.SidecarConfig{Binary: bin, Socket: socket, NoAdmin: true, Args: args})
	}
	orders := func(t *testing.T, sc *testkit.Sidecar) int {
		t.Helper()
		st, err := statsOf(t, sc.Socket)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	sc := start(t)
	for i := range 3 {
		code, out, stderr := cmd(t, "", "publish", "--socket", sc.Socket, "--type", "ORDER_PLACED", "--payload", fmt.Sprintf(`{"n":%d}`, i))
		if code != 0 || !strings.Contains(out, `"accepted"`) {
			t.Fatalf("publish: exit %d %q %q", code, out, stderr)
		}
	}
	st, err := os.Stat(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o700 {
		t.Errorf("data dir mode %04o, want 0700", perm)
	}

	// A second sidecar on the same data dir refuses to start.
	code, out := runToExit(t, bin, 20*time.Second, "serve", "--socket", filepath.Join(testkit.ShortTempDir(t), "b.sock"),
		"--admin-addr", "off", "--telemetry-disabled", "--data-dir", dataDir)
	if code == 0 || !strings.Contains(out, dataDir) || !strings.Contains(out, "in use") {
		t.Fatalf("second sidecar on %s: exit %d, want a refusal naming the dir as in use; output:\n%s", dataDir, code, out)
	}
	if n := orders(t, sc); n != 3 {
		t.Fatalf("order size %d after the refused second start, want 3", n)
	}
	sc.Stop()

	// A torn tail: a record header that promises more than follows, as a
	// write cut by a crash leaves it.
	seg := lastSegment(t, dataDir, "order")
	torn := []byte{0x00, 0x00, 0x01, 0x00, 0x7f, 0x13, 0x22}
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(torn); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sc = start(t)
	// Logged before the socket opened, but read from a pipe meanwhile.
	testkit.Eventually(t, "a log line saying the torn tail was cut", func() error {
		if !regexp.MustCompile(`cut torn tail.*bytes=` + fmt.Sprint(len(torn))).MatchString(sc.Logs()) {
			return fmt.Errorf("no log line says %d bytes of torn tail were cut:\n%s", len(torn), sc.Logs())
		}
		return nil
	})
	if n := orders(t, sc); n != 3 {
		t.Fatalf("order size %d after cutting a torn tail, want 3", n)
	}
	sc.Stop()

	// Damage before the end refuses the start, naming file and offset.
	seg = largestSegment(t, dataDir, "order")
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out = runToExit(t, bin, 20*time.Second, append([]string{"serve", "--socket", socket, "--admin-addr", "off"}, args...)...)
	if code == 0 || !strings.Contains(out, seg) || !regexp.MustCompile(`at offset \d+`).MatchString(out) || !strings.Contains(out, "wal salvage") {
		t.Fatalf("start on a damaged log: exit %d, want a refusal naming %s, the offset and the salvage command; output:\n%s", code, seg, out)
	}
	if code, out, stderr := cmd(t, "", "wal", "salvage", dataDir); code != exitOK {
		t.Fatalf("wal salvage: exit %d\n%s%s", code, out, stderr)
	}
	sc = start(t)
	if n := orders(t, sc); n >= 3 {
		t.Fatalf("order size %d after salvaging a damaged first segment, want the records before the damage only", n)
	}
}

// TestDiskFullWithTheBinary fills the file system under the data dir: a
// publish to a durable queue is answered storage_error (never accepted),
// the failure is counted, the sidecar stays up, and once the disk has room
// again publishes are accepted and every accepted order is delivered.
func TestDiskFullWithTheBinary(t *testing.T) {
	bin, err := testkit.BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mnt := testkit.ShortTempDir(t)
	// A small file system of its own: the test needs root, as CI has.
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=512k"); err != nil {
		t.Fatalf("mounting a 512 KiB tmpfs on %s (needs root): %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	sc := testkit.StartSidecar(t, testkit.SidecarConfig{Binary: bin, Args: []string{
		"--data-dir", filepath.Join(mnt, "data"), "--drain-timeout", "100ms",
	}})

	payload := fmt.Sprintf(`{"blob":%q}`, strings.Repeat("x", 60<<10))
	accepted, refused := 0, 0
	for i := 0; i < 40 && refused == 0; i++ {
		code, out, stderr := cmd(t, "", "publish", "--socket", sc.Socket, "--type", "ORDER_PLACED", "--payload", payload)
		switch {
		case code == 0 && strings.Contains(out, `"accepted"`):
			accepted++
		case strings.Contains(out+stderr, "storage_error"):
			refused++
		default:
			t.Fatalf("publish %d: exit %d, stdout %q, stderr %q; want accepted or storage_error", i, code, out, stderr)
		}
	}
	if refused == 0 || accepted == 0 {
		t.Fatalf("%d accepted and %d refused on a 512 KiB disk; want some of each", accepted, refused)
	}
	if sc.Exited() {
		t.Fatalf("the sidecar exited on a full disk:\n%s", sc.Logs())
	}
	if v := metricValue(t, sc.AdminAddr, `eventbus_storage_errors_total{`, `queue="order"`); v < 1 {
		t.Errorf("eventbus_storage_errors_total{queue=\"order\"} = %v, want >= 1", v)
	}

	// The disk grows back: publishes are accepted again.
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_REMOUNT, "size=4m"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "a publish accepted once the disk has room", func() error {
		code, out, stderr := cmd(t, "", "publish", "--socket", sc.Socket, "--type", "ORDER_PLACED", "--payload", payload)
		if code != 0 || !strings.Contains(out, `"accepted"`) {
			return fmt.Errorf("exit %d, stdout %q, stderr %q", code, out, stderr)
		}
		accepted++
		return nil
	})
	code, out, stderr := cmd(t, "", "consume", "--socket", sc.Socket, "--queue", "order", "--count", fmt.Sprint(accepted), "--timeout", "10s")
	if code != 0 || strings.Count(out, `"op":"deliver"`) != accepted {
		t.Fatalf("consume %d orders: exit %d, %d delivered; stderr %q", accepted, code, strings.Count(out, `"op":"deliver"`), stderr)
	}
}

// statsOf is the order queue's size, read over the socket.
func statsOf(t *testing.T, socket string) (int, error) {
	t.Helper()
	code, out, stderr := cmd(t, "", "stats", "--socket", socket, "--json")
	if code != 0 {
		return 0, fmt.Errorf("stats: exit %d: %s", code, stderr)
	}
	m := regexp.MustCompile(`"order":\s*\{[^}]*?"size":\s*(\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no order size in %s", out)
	}
	var n int
	fmt.Sscan(m[1], &n)
	return n, nil
}

// metricValue is the value of the first series on the admin /metrics
// whose line starts with prefix and contains label.
func metricValue(t *testing.T, adminAddr, prefix, label string) float64 {
	t.Helper()
	for _, line := range strings.Split(adminMetricsText(t, adminAddr), "\n") {
		if strings.HasPrefix(line, prefix) && strings.Contains(line, label) {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// adminMetricsText is the body of the admin listener's /metrics.
func adminMetricsText(t *testing.T, adminAddr string) string {
	t.Helper()
	res, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}
