package transport

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

func TestSoftMemoryLimit(t *testing.T) {
	const bound = 253 << 20
	tests := []struct {
		name    string
		content *string // nil: no file
		want    int64
		wantErr string
	}{
		{name: "no cgroup file", want: bound},
		{name: "no cgroup limit", content: ptr("max\n"), want: bound},
		{name: "256 MiB container", content: ptr("268435456\n"), want: 268435456 / 10 * 9},
		{name: "garbage", content: ptr("lots\n"), want: bound, wantErr: `"lots" is not a number of bytes`},
		{name: "zero", content: ptr("0"), want: bound, wantErr: `"0" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "memory.max")
			if tt.content != nil {
				if err := os.WriteFile(path, []byte(*tt.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := SoftMemoryLimit(bound, path)
			if got != tt.want {
				t.Errorf("SoftMemoryLimit = %d, want %d", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestMemoryBound(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name   string
		limits MemoryLimits
		want   int64
	}{
		{"defaults", MemoryLimits{MaxBufferedBytes: DefaultMaxBufferedBytes, MaxConnections: DefaultMaxConnections, Queues: 3}, 253 * mib},
		{"Kubernetes example", MemoryLimits{MaxBufferedBytes: DefaultMaxBufferedBytes, MaxConnections: 256, Queues: 3}, 199 * mib},
		{"small", MemoryLimits{MaxBufferedBytes: 16 * mib, MaxConnections: 1000, Queues: 1}, 20*mib + 1000*72<<10 + 11*mib + 16*mib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MemoryBound(tt.limits); got != tt.want {
				t.Errorf("MemoryBound(%+v) = %d (%.1f MiB), want %d", tt.limits, got, float64(got)/mib, tt.want)
			}
		})
	}
}

// TestREADMEMemoryFormula keeps the README's memory formula and its
// totals equal to MemoryBound's.
func TestREADMEMemoryFormula(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.Join(strings.Fields(string(data)), " ")
	find := func(what, pattern string) []int64 {
		t.Helper()
		m := regexp.MustCompile(pattern).FindStringSubmatch(readme)
		if m == nil {
			t.Fatalf("README has no %s matching %q", what, pattern)
		}
		var ns []int64
		for _, v := range m[1:] {
			n, err := strconv.ParseInt(strings.ReplaceAll(v, ",", ""), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			ns = append(ns, n)
		}
		return ns
	}
	f := find("formula", `resident memory ≤ (\d+) MiB \+ max_connections × (\d+) KiB \+ queues × (\d+) MiB \+ max_buffered_bytes`)
	if f[0]<<20 != BaseMemory || f[1]<<10 != ConnectionMemory || f[2]<<20 != QueueMemory {
		t.Errorf("README: %d MiB + max_connections × %d KiB + queues × %d MiB; MemoryBound: %d MiB + max_connections × %d KiB + queues × %d MiB",
			f[0], f[1], f[2], BaseMemory>>20, ConnectionMemory>>10, QueueMemory>>20)
	}
	d := find("total with the defaults", `With the defaults \(([\d,]+) connections, (\d+) queues, (\d+) MiB\) that is (\d+) MiB`)
	if d[0] != DefaultMaxConnections || d[1] != int64(len(bus.DefaultQueues())) || d[2]<<20 != DefaultMaxBufferedBytes {
		t.Errorf("README's defaults: %d connections, %d queues, %d MiB; the defaults are %d, %d, %d MiB",
			d[0], d[1], d[2], DefaultMaxConnections, len(bus.DefaultQueues()), DefaultMaxBufferedBytes>>20)
	}
	if got := MemoryBound(MemoryLimits{MaxBufferedBytes: d[2] << 20, MaxConnections: int(d[0]), Queues: int(d[1])}); got>>20 != d[3] {
		t.Errorf("README: with the defaults %d MiB; MemoryBound: %d MiB", d[3], got>>20)
	}
	k := find("Kubernetes total", `caps .max_connections. at (\d+) .*? which makes it (\d+) MiB`)
	if got := MemoryBound(MemoryLimits{MaxBufferedBytes: DefaultMaxBufferedBytes, MaxConnections: int(k[0]), Queues: 3}); got>>20 != k[1] {
		t.Errorf("README: the Kubernetes example's %d connections make %d MiB; MemoryBound: %d MiB", k[0], k[1], got>>20)
	}
}
