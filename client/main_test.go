package client

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(benchServeEnv); path != "" {
		os.Exit(serveForBenchmark(path))
	}
	goleak.VerifyTestMain(m)
}
