package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/cputime"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// benchServeEnv, set to a socket path, makes the test binary serve a
// sidecar there instead of running tests, until its stdin closes: the
// round-trip benchmark's sidecar in a process of its own.
const benchServeEnv = "EVENTBUS_CLIENT_BENCH_SERVE"

// roundTripQueues drop their oldest event when full, so that every publish
// is accepted at once however long a benchmark runs.
func roundTripQueues() []bus.QueueConfig {
	return []bus.QueueConfig{{Name: "data", Capacity: 1000, Policy: bus.PolicyDropOldest}}
}

// serveForBenchmark is the child process of startChildSidecar.
func serveForBenchmark(path string) int {
	b, err := bus.New(roundTripQueues())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv, err := transport.New(transport.Config{Bus: b})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l, err := transport.Listen(path, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) //nolint:errcheck // any end of stdin means stop
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	<-served
	return 0
}

// startChildSidecar runs a sidecar with roundTripQueues in a child
// process (this test binary again) and returns its socket path. The child
// stops when the benchmark ends, or when this process dies and its stdin
// closes.
func startChildSidecar(b *testing.B) (path string, pid int) {
	b.Helper()
	path = filepath.Join(b.TempDir(), "bus.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchServeEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("sidecar child: %v", err)
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		b.Fatalf("sidecar child said %q: %v", line, err)
	}
	return path, cmd.Process.Pid
}

// reportCPU starts counting this process's CPU time and, when child is
// not 0, that child's; the function it returns reports both per op.
func reportCPU(b *testing.B, child int) func() {
	b.Helper()
	self0, child0 := cputime.Process(b), childCPU(b, child)
	return func() {
		b.StopTimer()
		n := float64(b.N)
		b.ReportMetric(float64(cputime.Process(b)-self0)/n, "cpu-ns/op")
		if child != 0 {
			b.ReportMetric(float64(childCPU(b, child)-child0)/n, "sidecar-cpu-ns/op")
		}
	}
}

// childCPU is the running child's user and system time from
// /proc/PID/stat, in clock ticks of 10 ms: a benchmark of a second or
// more makes that fine enough.
func childCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	if pid == 0 {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields 14 and 15 (utime, stime), counted after the command name,
	// which ends with the last ')'.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	if len(fields) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, stat)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// BenchmarkRoundTrip is one awaited publish at a time, as an order entry
// sends them: "client" through Client.Publish, "raw" with one write and
// one read of the reply on a bare connection to the same sidecar, and
// "raw-reader" as raw but with the reply read by another goroutine and
// handed over a channel. Their differences are what the client adds to a
// round trip, and how much of it is that hand-off. The sidecar runs in
// this process ("inproc", sharing its scheduler) or in a child process
// ("child", as the load tool and a trading app see it).
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("inproc", func(b *testing.B) {
		benchmarkRoundTrip(b, startSidecar(b, "", roundTripQueues()).path, 0)
	})
	b.Run("child", func(b *testing.B) {
		path, pid := startChildSidecar(b)
		benchmarkRoundTrip(b, path, pid)
	})
}

// benchmarkRoundTrip reports, besides ns/op, the CPU this process spent
// per round trip (cpu-ns/op: the client alone when the sidecar is a
// child, both otherwise) and, with a child's pid, the child's
// (sidecar-cpu-ns/op): on a machine with few cores a client's extra
// thread wake-ups take time from the sidecar.
func benchmarkRoundTrip(b *testing.B, path string, child int) {
	payload := json.RawMessage(`{"symbol":"BTCUSDT","open":101.5,"close":102.25,"volume":12.5}`)

	b.Run("raw", func(b *testing.B) {
		nc, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { nc.Close() })
		br := bufio.NewReader(nc)
		rawPublishLoop(b, nc, child, payload, func() error {
			line, err := br.ReadSlice('\n')
			if err == nil && !bytes.Contains(line, []byte(`"accepted"`)) {
				err = fmt.Errorf("publish reply %q", line)
			}
			return err
		})
	})

	// The raw loop again, but with the replies read by a goroutine of
	// their own and handed to the caller over a channel, as the client
	// does: what that one hand-off costs.
	b.Run("raw-reader", func(b *testing.B) {
		nc, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		replies := make(chan error, 1)
		go func() {
			defer close(replies)
			br := bufio.NewReader(nc)
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if !bytes.Contains(line, []byte(`"accepted"`)) {
					replies <- fmt.Errorf("publish reply %q", line)
					continue
				}
				replies <- nil
			}
		}()
		b.Cleanup(func() {
			nc.Close()
			for range replies {
			}
		})
		rawPublishLoop(b, nc, child, payload, func() error {
			err, ok := <-replies
			if !ok {
				return errors.New("the reader stopped")
			}
			return err
		})
	})

	b.Run("client", func(b *testing.B) {
		c := dial(b, path)
		ctx := context.Background()
		ev := bus.Event{Type: "CANDLE_UPDATE", Payload: payload}
		b.ReportAllocs()
		b.ResetTimer()
		defer reportCPU(b, child)()
		for range b.N {
			if out, err := c.Publish(ctx, ev, "data"); out != bus.Accepted {
				b.Fatalf("publish: %v %v", out, err)
			}
		}
	})
}

// rawPublishLoop is a raw variant's measured loop: b.N publishes over nc,
// one at a time, each awaited through reply.
func rawPublishLoop(b *testing.B, nc net.Conn, child int, payload json.RawMessage, reply func() error) {
	req := protocol.Request{Op: protocol.OpPublish, HasID: true, Queue: "data", HasQueue: true, Type: "CANDLE_UPDATE", HasType: true, Payload: payload}
	prefix := b.Name() + "-"
	var out []byte
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b, child)()
	for i := range b.N {
		req.ID = int64(i + 1)
		req.MsgID = prefix + strconv.Itoa(i)
		out = protocol.AppendRequest(out[:0], &req)
		if _, err := nc.Write(out); err != nil {
			b.Fatal(err)
		}
		if err := reply(); err != nil {
			b.Fatalf("reply: %v", err)
		}
	}
}
