package transport

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The peer-credential test runs this binary again, as another user,
	// to be the client.
	if path := os.Getenv(peerClientEnv); path != "" {
		os.Exit(runPeerClient(path))
	}
	goleak.VerifyTestMain(m)
}
