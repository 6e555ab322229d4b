package load

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// startSidecar runs a real bus behind a real socket server in this process
// on a temporary socket, and stops both when the test ends. testkit cannot
// hold it: transport's package-internal tests import testkit, so testkit
// must not import transport.
func startSidecar(t *testing.T, queues []bus.QueueConfig) (string, *bus.Bus) {
	t.Helper()
	b, err := bus.New(queues)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := transport.New(transport.Config{Bus: b})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(testkit.ShortTempDir(t), "s.sock")
	l, err := transport.Listen(path, 0)
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
		short, c2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer c2()
		b.Shutdown(short) //nolint:errcheck // leftovers expected in the time-bound test
	})
	return path, b
}

func TestRunPublishesAndAcksEverything(t *testing.T) {
	path, b := startSidecar(t, bus.DefaultQueues())
	tests := []struct {
		name string
		cfg  Config
	}{
		{"one connection one consumer", Config{Events: 2000, PayloadBytes: 64}},
		{"several connections and consumers", Config{Events: 3000, Connections: 3, Concurrency: 8, Consumers: 2, Prefetch: 16, Queue: "signal", PayloadBytes: 512}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Socket = path
			res, err := Run(context.Background(), tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			n := int64(res.Config.Events)
			if res.Accepted != n || res.Acked != n || res.Incomplete || res.FirstError != "" {
				t.Fatalf("result %+v, want %d accepted and acked", res, n)
			}
			if res.PublishLatency.N != int(n) || res.EndToEnd.N != int(n) || res.PublishLatency.P50 > res.PublishLatency.Max || res.Rate <= 0 {
				t.Fatalf("latencies %+v / %+v, rate %v", res.PublishLatency, res.EndToEnd, res.Rate)
			}
			// Closed loop, every latency is from the actual send already.
			if res.SendLag != nil || res.PublishFromSend != nil {
				t.Fatalf("closed loop reports send lag %+v and latency from send %+v", res.SendLag, res.PublishFromSend)
			}
			var out bytes.Buffer
			if err := res.WriteText(&out); err != nil || !strings.Contains(out.String(), "events/s") {
				t.Fatalf("report %q, %v", out.String(), err)
			}
		})
	}
	if st := b.Stats(); st["data"].InFlight != 0 || st["data"].Size != 0 || st["signal"].Size != 0 {
		t.Fatalf("leftovers after the runs: %+v", st)
	}
}

func TestRunPublishOnlyAndTimeBound(t *testing.T) {
	path, _ := startSidecar(t, []bus.QueueConfig{
		{Name: "data", Capacity: 10000, Policy: bus.PolicyBlock},
		{Name: "order", Capacity: 5, Policy: bus.PolicyBlock},
	})
	res, err := Run(context.Background(), Config{Socket: path, Events: 500, Consumers: -1})
	if err != nil || res.Accepted != 500 || res.Acked != 0 || res.EndToEnd.N != 0 {
		t.Fatalf("publish only: %+v %v", res, err)
	}
	// The next run on data gets those 500 first: not its own events.
	res, err = Run(context.Background(), Config{Socket: path, Events: 100})
	if err != nil || res.Accepted != 100 || res.Acked != 100 || res.Foreign != 500 || res.EndToEnd.N != 100 {
		t.Fatalf("a run after the publish-only one: %+v %v, want 100 acked and 500 foreign", res, err)
	}
	var out bytes.Buffer
	if err := res.WriteText(&out); err != nil || !strings.Contains(out.String(), "foreign: 500 deliveries") {
		t.Fatalf("report %q, %v", out.String(), err)
	}
	// Nobody consumes order: the run must stop at its time limit.
	res, err = Run(context.Background(), Config{Socket: path, Events: 100, Queue: "order", Consumers: -1, Duration: 200 * time.Millisecond})
	if err != nil || !res.Incomplete || res.Accepted != 5 || res.Cancelled == 0 || res.Accepted+res.Cancelled >= 100 {
		t.Fatalf("time-bound run: %+v %v, want incomplete with 5 accepted, the waiting ones cancelled, the rest never sent", res, err)
	}
	js, err := json.Marshal(res)
	if err != nil || !strings.Contains(string(js), `"incomplete":true`) {
		t.Fatalf("json %s %v", js, err)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "socket: required"},
		{Config{Socket: "s", Events: MaxEvents + 1}, "events 10000001: must be between 1 and 10000000"},
		{Config{Socket: "s", PayloadBytes: 8}, "payload bytes 8: must be between 40"},
		{Config{Socket: "s", Connections: -1}, "connections -1"},
		{Config{Socket: "s", Duration: -time.Second}, "duration -1s"},
		{Config{Socket: "s", Rate: MaxRate + 1}, "rate 1.0000001e+07: must be between 0 (closed loop) and 10000000 events/s"},
		{Config{Socket: "s", Rate: math.NaN()}, "rate NaN"},
	}
	for _, tt := range tests {
		_, err := Run(context.Background(), tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Run(%+v) error %v, want %q", tt.cfg, err, tt.want)
		}
	}
	if _, err := Run(context.Background(), Config{Socket: filepath.Join(testkit.ShortTempDir(t), "none.sock")}); err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("Run without a sidecar: %v", err)
	}
}

func TestPayloadCarriesTimestamp(t *testing.T) {
	now := time.Now()
	for _, size := range []int{minPayloadBytes, 100, 4096} {
		p := makePayload(nil, now.UnixNano(), size)
		if len(p) != size || !json.Valid(p) {
			t.Fatalf("payload %q: len %d, want valid JSON of %d bytes", p, len(p), size)
		}
		if ts, ok := sentAt(p); !ok || ts != now.UnixNano() {
			t.Fatalf("sentAt(%s) = %d %v", p, ts, ok)
		}
	}
}

func TestRunOpenLoop(t *testing.T) {
	path, _ := startSidecar(t, bus.DefaultQueues())
	var progress testkit.SyncBuffer
	cfg := Config{Socket: path, Events: 2000, Rate: 20000, Concurrency: 16, Label: "sidecar", Progress: &progress}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 2000 || res.Accepted != 2000 || res.Acked != 2000 || res.Unsent != 0 || res.Incomplete {
		t.Fatalf("result %+v, want 2000 sent, accepted and acked", res)
	}
	if res.SendLag == nil || res.SendLag.N != 2000 || res.PublishLatency.N != 2000 || res.EndToEnd.N != 2000 {
		t.Fatalf("latencies %+v / %+v / send lag %+v", res.PublishLatency, res.EndToEnd, res.SendLag)
	}
	// Each event's latency from its actual send is a part of the one from
	// its intended send time.
	if fs := res.PublishFromSend; fs == nil || fs.N != 2000 || fs.Max > res.PublishLatency.Max || fs.P50 > res.PublishLatency.P50 {
		t.Fatalf("publish latency from send %+v, want 2000 events within %+v", fs, res.PublishLatency)
	}
	// The last event is due 1999/20000 s after the start: the schedule,
	// not the sidecar's speed, sets the pace.
	if due := 99950 * time.Microsecond; res.PublishElapsed < due {
		t.Fatalf("published in %v, before the last event was due (%v)", res.PublishElapsed, due)
	}
	var out bytes.Buffer
	if err := res.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sidecar:\n", "open loop at 20000 events/s", "sent 2000: accepted 2000", "send lag:", "publish from send:", "end-to-end latency:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	// However many status lines the run wrote, each rewrote the line in
	// place and the last thing written cleared it.
	p := progress.String()
	if !strings.HasSuffix(p, clearLine) {
		t.Fatalf("progress output %q does not end by clearing the line", p)
	}
	for _, l := range strings.Split(strings.TrimSuffix(p, clearLine), clearLine)[1:] {
		if !strings.HasPrefix(l, "sidecar ") || strings.Contains(l, "\n") {
			t.Errorf("status line %q", l)
		}
	}
}

func TestCompareWithTheCeiling(t *testing.T) {
	path, _ := startSidecar(t, bus.DefaultQueues())
	rep, err := Compare(context.Background(), Config{Socket: path, Events: 2000, Connections: 2, Concurrency: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Result{&rep.Result, rep.Ceiling} {
		if r == nil || r.Accepted != 2000 || r.Acked != 2000 || r.EndToEnd.N != 2000 || r.Incomplete {
			t.Fatalf("result %+v", r)
		}
	}
	if rep.Config.Label != "sidecar" || rep.Config.Socket != path || rep.Ceiling.Config.Label != "ceiling" || rep.Ceiling.Config.Socket == path {
		t.Fatalf("configs %+v / %+v", rep.Config, rep.Ceiling.Config)
	}
	v := rep.VsCeiling
	if v == nil || v.Rate != rep.Rate/rep.Ceiling.Rate || v.PublishLatency.P99 != float64(rep.PublishLatency.P99)/float64(rep.Ceiling.PublishLatency.P99) || v.EndToEnd.P50 <= 0 {
		t.Fatalf("ratios %+v", v)
	}
	if _, err := os.Stat(rep.Ceiling.Config.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the ceiling's socket is left behind: %v", err)
	}

	js, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var flat Result
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(js, &flat); err != nil || flat.Accepted != 2000 {
		t.Fatalf("the report's JSON is not the sidecar's result at the top: %v %s", err, js)
	}
	if err := json.Unmarshal(js, &fields); err != nil || fields["ceiling"] == nil || fields["vs_ceiling"] == nil {
		t.Fatalf("json %s: %v", js, err)
	}
	var out bytes.Buffer
	if err := rep.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sidecar:\n", "ceiling:\n", "sidecar / ceiling:", "end-to-end latency: p50"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}

	if _, err := Compare(context.Background(), Config{Socket: filepath.Join(testkit.ShortTempDir(t), "none.sock"), Events: 100}, nil); err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("Compare without a sidecar: %v", err)
	}
	if _, err := Compare(context.Background(), Config{Socket: path, Rate: -1}, nil); err == nil || !strings.Contains(err.Error(), "rate -1: must be between 0") {
		t.Errorf("Compare with a negative rate: %v", err)
	}
}

func TestCompareWithACeilingProcess(t *testing.T) {
	path, _ := startSidecar(t, bus.DefaultQueues())
	child := func(socket string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), ceilingChildEnv+"="+socket)
		cmd.Stderr = os.Stderr
		return cmd
	}
	rep, err := Compare(context.Background(), Config{Socket: path, Events: 1000, Rate: 20000}, CeilingProcess(child))
	if err != nil {
		t.Fatal(err)
	}
	if c := rep.Ceiling; c.Acked != 1000 || c.SendLag == nil || rep.Acked != 1000 || rep.VsCeiling == nil {
		t.Fatalf("report %+v, ceiling %+v", rep, c)
	}

	// A child that never serves.
	exits := func(string) *exec.Cmd { return exec.Command(os.Args[0], "-test.run=^$") }
	if _, err := Compare(context.Background(), Config{Socket: path, Events: 10}, CeilingProcess(exits)); err == nil || !strings.Contains(err.Error(), "exited before serving") {
		t.Fatalf("Compare with a child that exits: %v", err)
	}
}
