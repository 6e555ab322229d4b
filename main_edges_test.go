package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestStartNamesQueuesThatAreNotCrashSafe: without a data dir the start
// log warns, naming the durable queues; with one it does not.
func TestStartNamesQueuesThatAreNotCrashSafe(t *testing.T) {
	p := startSidecar(t)
	if log := p.Logs(); !strings.Contains(log, "no data dir") || !strings.Contains(log, "not_crash_safe=signal,order") {
		t.Errorf("start without a data dir does not name the queues that are not crash-safe:\n%s", log)
	}
	p = startSidecar(t, "--data-dir", t.TempDir())
	if log := p.Logs(); strings.Contains(log, "not_crash_safe") || !strings.Contains(log, "data_dir=") {
		t.Errorf("start with a data dir: want no warning and the data dir in the serving line:\n%s", log)
	}
}

func TestConfigPrintsDurability(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"eventbus-sidecar", "config"}, strings.NewReader(""), &out, &errb,
		envMap(map[string]string{"EVENTBUS_DATA_DIR": "/var/lib/eventbus"}))
	if code != exitOK {
		t.Fatalf("config: exit %d: %s", code, errb.String())
	}
	for _, w := range []string{"data_dir: /var/lib/eventbus", "durable: true", "durable: false", "fsync: always", "dedupe_window: 2m0s", "max_deliveries: 0", `dead_letter: ""`} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("config output lacks %q:\n%s", w, out.String())
		}
	}
	if code, _, stderr := cmd(t, "", "config", "--data-dir", "/x", "--config", writeConfig(t, "queues:\n  - {name: order, max_deliveries: 3}\n")); code != exitUsage || !strings.Contains(stderr, "queues[order].dead_letter") {
		t.Errorf("max_deliveries without dead_letter: exit %d %q, want %d naming the field", code, stderr, exitUsage)
	}
}

func TestStatsTableShowsDurability(t *testing.T) {
	p := startSidecar(t)
	code, out, stderr := cmd(t, "", "stats", "--socket", p.Socket)
	if code != exitOK {
		t.Fatalf("stats: exit %d %s", code, stderr)
	}
	header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	for _, col := range []string{"DURABLE", "DUPLICATES", "DEAD_LETTERED"} {
		if !strings.Contains(strings.Join(header, " "), col) {
			t.Errorf("stats table header %v lacks %s", header, col)
		}
	}
	// Without a data dir nothing is durable.
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if f := strings.Fields(line); len(f) < 3 || f[2] != "no" {
			t.Errorf("row %q: DURABLE should be no without a data dir", line)
		}
	}
}
