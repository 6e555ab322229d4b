package transport

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// CgroupMemoryMax is where cgroup v2 exposes the container's memory limit.
const CgroupMemoryMax = "/sys/fs/cgroup/memory.max"

// RuntimeOverhead approximates what the process holds besides the buffered
// bytes: the runtime, the idle bus and telemetry (about 20 MiB measured),
// goroutine stacks of up to the default connection cap, and the garbage
// collector's working room.
const RuntimeOverhead = 64 << 20

// SoftMemoryLimit returns the limit for debug.SetMemoryLimit. Under a
// cgroup memory limit (cgroupFile holds a number of bytes) it is 90% of
// it, so the collector works harder before the kernel kills the process;
// otherwise it is maxBufferedBytes plus RuntimeOverhead. A cgroup file that
// is absent or says "max" means no cgroup limit; one that cannot be read
// or parsed is an error, and the budget's limit is returned with it.
func SoftMemoryLimit(maxBufferedBytes int64, cgroupFile string) (int64, error) {
	own := maxBufferedBytes + RuntimeOverhead
	data, err := os.ReadFile(cgroupFile)
	if errors.Is(err, fs.ErrNotExist) {
		return own, nil
	}
	if err != nil {
		return own, fmt.Errorf("read cgroup memory limit: %w", err)
	}
	v := strings.TrimSpace(string(data))
	if v == "max" {
		return own, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return own, fmt.Errorf("cgroup memory limit %s: %q is not a number of bytes or \"max\"", cgroupFile, v)
	}
	return n / 10 * 9, nil
}
