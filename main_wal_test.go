package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/wal"
)

// writeQueueLog makes a queue's log as the bus keeps it under a data dir,
// with events records, and returns its segment files.
func writeQueueLog(t *testing.T, dataDir, queue string, events int) []string {
	t.Helper()
	dir := filepath.Join(dataDir, "queues", queue)
	l, _, err := wal.Open(context.Background(), dir, wal.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range events {
		if _, err := l.Append(context.Background(), []byte(strings.Repeat("x", 100+i)), "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segments in %s: %v", dir, err)
	}
	return segs
}

func TestWalCheckAndSalvage(t *testing.T) {
	dataDir := t.TempDir()
	writeQueueLog(t, dataDir, "signal", 2)
	segs := writeQueueLog(t, dataDir, "order", 5)

	code, out, stderr := cmd(t, "", "wal", "check", dataDir)
	if code != exitOK || !strings.Contains(out, filepath.Join(dataDir, "queues", "order")) || !strings.Contains(out, filepath.Join(dataDir, "queues", "signal")) || strings.Contains(out, "DAMAGED") {
		t.Fatalf("check of a healthy data dir: exit %d, want 0 and a report per queue:\n%s%s", code, out, stderr)
	}

	// A flipped byte inside the first of five records is damage, not a
	// torn tail: valid records follow it.
	var seg string
	for _, s := range segs {
		if st, err := os.Stat(s); err == nil && st.Size() > 600 {
			seg = s
		}
	}
	if seg == "" {
		t.Fatalf("no segment holds the five records: %v", segs)
	}
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/4] ^= 0xff
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = cmd(t, "", "wal", "check", dataDir)
	if code != exitFailed || !strings.Contains(out, "DAMAGED") || !strings.Contains(stderr, "queue order") {
		t.Fatalf("check of a damaged log: exit %d, want %d, the damage in the report and the queue in the error:\n%s%s", code, exitFailed, out, stderr)
	}

	code, out, stderr = cmd(t, "", "wal", "salvage", dataDir)
	if code != exitOK || !strings.Contains(out, "moved aside") {
		t.Fatalf("salvage: exit %d, want 0 and the damaged segment moved aside:\n%s%s", code, out, stderr)
	}
	if code, out, stderr = cmd(t, "", "wal", "check", dataDir); code != exitOK {
		t.Fatalf("check after salvage: exit %d:\n%s%s", code, out, stderr)
	}
}

func TestWalUsage(t *testing.T) {
	empty := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no dir", []string{"wal", "check"}, "takes one argument, the data dir"},
		{"two dirs", []string{"wal", "salvage", empty, empty}, "got 2"},
		{"not a data dir", []string{"wal", "check", empty}, "has no queues directory"},
		{"missing dir", []string{"wal", "check", filepath.Join(empty, "nope")}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := cmd(t, "", tt.args...)
			if code != exitUsage || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, %q; want %d and %q", code, stderr, exitUsage, tt.want)
			}
		})
	}
	if err := os.Mkdir(filepath.Join(empty, "queues"), 0o700); err != nil {
		t.Fatal(err)
	}
	if code, out, stderr := cmd(t, "", "wal", "check", empty); code != exitOK || !strings.Contains(out, "no queue logs") {
		t.Fatalf("check of an empty data dir: exit %d %q %q", code, out, stderr)
	}
}
