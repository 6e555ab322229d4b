package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/load"
)

// TestLoadCommand runs the load command against a real sidecar on a real
// socket and checks what it prints.
func TestLoadCommand(t *testing.T) {
	// The publish-only run leaves 300 events in data that nobody consumes:
	// the drain gives up on them at once.
	sc := startSidecar(t, "--drain-timeout", "1ms", "--telemetry-disabled")
	sock := sc.Socket

	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, out string)
	}{
		{"text", []string{"--events", "1000", "--connections", "2", "--consumers", "2", "--payload-bytes", "80"}, func(t *testing.T, out string) {
			for _, want := range []string{"accepted 1000, dropped 0", "published and acked: 1000", "events/s", "publish latency:", "end-to-end latency:"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		}},
		{"open loop against the ceiling, text", []string{"--events", "600", "--rate", "20000", "--concurrency", "8", "--queue", "signal", "--ceiling"}, func(t *testing.T, out string) {
			for _, want := range []string{"sidecar:\n", "ceiling:\n", "open loop at 20000 events/s", "sent 600: accepted 600", "published and acked: 600", "send lag:", "sidecar / ceiling:", "  throughput:", "  end-to-end latency: p50"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		}},
		{"closed loop against the ceiling, json", []string{"--events", "500", "--queue", "signal", "--ceiling", "--json"}, func(t *testing.T, out string) {
			var rep load.Report
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out)
			}
			if rep.Accepted != 500 || rep.Acked != 500 || rep.Ceiling == nil || rep.Ceiling.Acked != 500 || rep.VsCeiling == nil || rep.VsCeiling.Rate <= 0 || rep.SendLag != nil {
				t.Errorf("report %s", out)
			}
		}},
		{"json, publish only", []string{"--events", "300", "--consumers", "0", "--queue", "data", "--concurrency", "4", "--json"}, func(t *testing.T, out string) {
			var res load.Result
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out)
			}
			if res.Accepted != 300 || res.Acked != 0 || res.Config.Queue != "data" {
				t.Errorf("result %+v", res)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			// The test binary cannot be the ceiling's child process: the
			// ceiling runs in process here.
			app := &cli.App{Name: "eventbus-sidecar", Writer: &out, ErrWriter: &errOut, Commands: []*cli.Command{loadCommandWith(nil)}}
			args := append([]string{"eventbus-sidecar", "load", "--socket", sock}, tt.args...)
			if err := app.Run(args); err != nil {
				t.Fatal(err)
			}
			tt.check(t, out.String())
			// Not a terminal: no status line.
			if errOut.Len() != 0 {
				t.Errorf("stderr %q", errOut.String())
			}
		})
	}
}

// TestLoadFramingServers runs the ceiling server the way --ceiling runs
// its child process, and the floor server as e2e/cpu_floor.sh does, each
// with a load against it.
func TestLoadFramingServers(t *testing.T) {
	if args := ceilingChild("s.sock").Args; !slices.Equal(args[1:], []string{"load", "--ceiling-server", "--socket", "s.sock"}) {
		t.Fatalf("child process arguments %q", args)
	}
	for _, flag := range []string{"--ceiling-server", "--floor-server"} {
		t.Run(flag, func(t *testing.T) {
			sock := socketPath(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			served := make(chan error, 1)
			go func() {
				app := &cli.App{Name: "eventbus-sidecar", Writer: io.Discard, Commands: []*cli.Command{loadCommand()}}
				served <- app.RunContext(ctx, []string{"eventbus-sidecar", "load", flag, "--socket", sock})
			}()
			testkit.Eventually(t, "the server", func() bool {
				nc, err := net.Dial("unix", sock)
				if err == nil {
					nc.Close()
				}
				return err == nil
			})
			// Not a second cli.App: two at once race on the cli package's help flag.
			res, err := load.Run(context.Background(), load.Config{Socket: sock, Events: 500})
			if err != nil || res.Acked != 500 {
				t.Fatalf("load against %s: %v %+v", flag, err, res)
			}
			cancel()
			if err := <-served; err != nil {
				t.Fatalf("%s: %v", flag, err)
			}
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the socket is left behind: %v", err)
			}
		})
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for name, out := range map[string]io.Writer{"a file": f, "a pipe": w, "a buffer": &bytes.Buffer{}} {
		if isTerminal(out) {
			t.Errorf("%s taken for a terminal", name)
		}
	}
}
