package wal

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashWriterEnv); dir != "" {
		// Re-executed by TestCrashKill9 as the writer it kills.
		runCrashWriter(dir)
		return
	}
	goleak.VerifyTestMain(m)
}
