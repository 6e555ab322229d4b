package load

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// ceilingChildEnv makes the test binary a ceiling server child process
// serving the socket it names, for the tests of CeilingProcess.
const ceilingChildEnv = "EVENTBUS_LOAD_TEST_CEILING_CHILD"

func TestMain(m *testing.M) {
	if socket := os.Getenv(ceilingChildEnv); socket != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		err := ServeCeiling(ctx, socket)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}
