package transport

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// CgroupMemoryMax is where cgroup v2 exposes the container's memory limit.
const CgroupMemoryMax = "/sys/fs/cgroup/memory.max"

// What the process holds besides MaxBufferedBytes, the terms of
// MemoryBound. Each is measured; docs/performance.md has the runs.
const (
	// BaseMemory is the idle process: the Go runtime, the binary's pages,
	// the bus and telemetry (18.0 MiB of VmRSS measured after start).
	BaseMemory = 20 << 20
	// ConnectionMemory is what one open connection holds outside the
	// budget: its goroutines' stacks (read loop, write loop, a pump per
	// subscription), the connection's and its subscriptions' bookkeeping
	// and its output buffers kept for reuse. TestConnectionMemory measures
	// it with 200 connections to a server in the test process, after a
	// GC, as the growth of the Go runtime's memory (runtime/metrics
	// /memory/classes/total minus heap/released): 18 KiB for a connection
	// idle after a ping, 57 KiB for a consumer (prefetch 16) that
	// published and acked 64 small events, 62 KiB with the race detector.
	// make soak found about 56 KiB a connection beside the budget. What a
	// burst makes a connection grow is given back once its output has
	// been idle for shrinkIdleAfter: a consumer at prefetch 256 holds
	// about 40 KiB after a burst of 512 events.
	ConnectionMemory = 72 << 10
	// QueueMemory is the most a queue's dedupe window holds:
	// bus.MaxDedupeIDs msg ids of about 350 bytes each (measured), reached
	// only at high publish rates with msg ids.
	QueueMemory = bus.MaxDedupeIDs * dedupeIDBytes
	// dedupeIDBytes rounds the measured cost of a remembered msg id up so
	// that QueueMemory is 11 MiB.
	dedupeIDBytes = 352
)

// MemoryLimits are the settings the memory the sidecar may need follows.
type MemoryLimits struct {
	// MaxBufferedBytes is the budget for what the server holds on behalf
	// of clients (Config.MaxBufferedBytes).
	MaxBufferedBytes int64
	// MaxConnections is the connection cap (Config.MaxConnections).
	MaxConnections int
	// Queues is the number of queues of the bus.
	Queues int
}

// MemoryBound is the most resident memory the sidecar needs whatever its
// clients do, by the formula the README states:
//
//	BaseMemory + MaxConnections × ConnectionMemory + Queues × QueueMemory + MaxBufferedBytes
//
// The garbage collector's headroom is not in it: with the soft memory
// limit at the bound (SoftMemoryLimit) the collector works harder instead
// of growing past it.
func MemoryBound(l MemoryLimits) int64 {
	return BaseMemory + int64(l.MaxConnections)*ConnectionMemory + int64(l.Queues)*QueueMemory + l.MaxBufferedBytes
}

// SoftMemoryLimit returns the limit for debug.SetMemoryLimit. Under a
// cgroup memory limit (cgroupFile holds a number of bytes) it is 90% of
// it, so the collector works harder before the kernel kills the process;
// otherwise it is bound, the MemoryBound of the configuration. A cgroup
// file that is absent or says "max" means no cgroup limit; one that cannot
// be read or parsed is an error, and bound is returned with it.
func SoftMemoryLimit(bound int64, cgroupFile string) (int64, error) {
	data, err := os.ReadFile(cgroupFile)
	if errors.Is(err, fs.ErrNotExist) {
		return bound, nil
	}
	if err != nil {
		return bound, fmt.Errorf("read cgroup memory limit: %w", err)
	}
	v := strings.TrimSpace(string(data))
	if v == "max" {
		return bound, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return bound, fmt.Errorf("cgroup memory limit %s: %q is not a number of bytes or \"max\"", cgroupFile, v)
	}
	return n / 10 * 9, nil
}
