// Package cputime reads the CPU time a process has used, for benchmarks
// that report cpu-ns/op: on a shared machine the wall time per operation
// moves with the neighbours' load, the CPU time much less. It imports
// nothing of the project, so that every package's tests can use it.
package cputime

import (
	"syscall"
	"testing"
	"time"
)

// Process is the user and system CPU time this process has used so far.
func Process(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
