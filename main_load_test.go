package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/load"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// TestLoadCommand runs the load command against a real sidecar on a real
// socket and checks what it prints.
func TestLoadCommand(t *testing.T) {
	b, err := bus.New(bus.DefaultQueues())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := transport.New(transport.Config{Bus: b})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ebload")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	l, err := transport.Listen(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-served; !errors.Is(err, transport.ErrServerClosed) {
			t.Error(err)
		}
		b.Shutdown(ctx) //nolint:errcheck // everything was acked
	})

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
			var out bytes.Buffer
			app := &cli.App{Name: "eventbus-sidecar", Writer: &out, Commands: []*cli.Command{loadCommand()}}
			args := append([]string{"eventbus-sidecar", "load", "--socket", sock}, tt.args...)
			if err := app.Run(args); err != nil {
				t.Fatal(err)
			}
			tt.check(t, out.String())
		})
	}
	// The data queue got 300 events nobody consumed; drain them for a
	// clean shutdown.
	cons, err := b.Subscribe("data", 300)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	for range 300 {
		d, err := cons.Receive(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cons.Ack(d.Seq) //nolint:errcheck
	}
}
