package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// TestInProcessServeLeavesTheMemoryLimitAlone: the soft memory limit is
// the process's, and a serve inside a test binary does not own it: the
// other tests of the binary keep the limit they had.
func TestInProcessServeLeavesTheMemoryLimitAlone(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	sc := startSidecar(t, "--max-buffered-bytes", "16777216")
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("while an in-process sidecar runs the memory limit is %d, want %d as before", got, before)
	}
	if code := sc.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("after an in-process sidecar the memory limit is %d, want %d as before", got, before)
	}
}

// fakeMemoryLimit stands in for debug.SetMemoryLimit: it records every
// limit set and returns the previous one.
type fakeMemoryLimit struct {
	mu  sync.Mutex
	cur int64
	set []int64
}

func (f *fakeMemoryLimit) SetMemoryLimit(n int64) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	prev := f.cur
	if n >= 0 {
		f.cur = n
		f.set = append(f.set, n)
	}
	return prev
}

func (f *fakeMemoryLimit) calls() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.set...)
}

// TestServeOwningItsProcessSetsAndRestoresTheMemoryLimit: a program that
// owns its process sets the soft memory limit to the configuration's
// memory bound, or to 90% of the container's limit, unless GOMEMLIMIT is
// set; and puts the previous limit back when serve returns.
func TestServeOwningItsProcessSetsAndRestoresTheMemoryLimit(t *testing.T) {
	const prev = 1 << 40
	// 20 MiB + 100 × 72 KiB + 3 × 11 MiB + 16 MiB
	const bound = 20<<20 + 100*transport.ConnectionMemory + 3*transport.QueueMemory + 16<<20
	tests := []struct {
		name   string
		cgroup string // memory.max's content; "" for none
		env    []string
		want   []int64 // the limits set, the last one the restore
		warn   bool    // the start warns that the container's limit is too small
	}{
		{name: "no container limit", want: []int64{bound, prev}},
		{name: "container limit", cgroup: "536870912\n", want: []int64{536870912 / 10 * 9, prev}},
		{name: "container limit below the bound", cgroup: "67108864\n", want: []int64{67108864 / 10 * 9, prev}, warn: true},
		{name: "GOMEMLIMIT set", env: []string{"GOMEMLIMIT=1GiB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cgroup := filepath.Join(t.TempDir(), "memory.max")
			if tt.cgroup != "" {
				if err := os.WriteFile(cgroup, []byte(tt.cgroup), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			fake := &fakeMemoryLimit{cur: prev}
			owner := func(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
				kv := map[string]string{}
				for _, e := range environ {
					k, v, _ := strings.Cut(e, "=")
					kv[k] = v
				}
				p := &program{stdin: strings.NewReader(""), stdout: stdout, stderr: stderr, env: envMap(kv),
					setMemoryLimit: fake.SetMemoryLimit, cgroupMemoryMax: cgroup}
				return p.run(ctx, args)
			}
			sc := testkit.StartSidecar(t, testkit.SidecarConfig{Main: owner, Env: tt.env,
				Args: []string{"--max-connections", "100", "--max-buffered-bytes", "16777216"}})
			if code := sc.Stop(); code != 0 {
				t.Fatalf("exit %d", code)
			}
			if got := fake.calls(); !slices.Equal(got, tt.want) {
				t.Errorf("memory limits set %v, want %v", got, tt.want)
			}
			if warned := strings.Contains(sc.Logs(), "the container's memory limit is below what this configuration may need"); warned != tt.warn {
				t.Errorf("warned of a small container limit: %v, want %v; logs:\n%s", warned, tt.warn, sc.Logs())
			}
		})
	}
}
