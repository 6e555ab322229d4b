//go:build !linux

package telemetry

import "time"

// threadCPUTime is unavailable here; the export worker then budgets by
// the wall time of its exports instead.
func threadCPUTime() (time.Duration, bool) { return 0, false }
