//go:build linux

package telemetry

import (
	"runtime"
	"testing"
	"time"
)

func TestThreadCPUTimeAdvances(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, ok := threadCPUTime()
	if !ok {
		t.Fatal("thread CPU clock unavailable on this platform")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		x := 0
		for i := range 1_000_000 {
			x += i
		}
		_ = x
		if now, _ := threadCPUTime(); now > start {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("thread CPU time did not advance while spinning")
		}
	}
}
