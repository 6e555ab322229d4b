//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// stackState is deploy/stack's state folder (its lib.sh: STACK_STATE or
// .state/stack), where each component's "<pid> <binary>" is recorded.
func stackState() string {
	if s := os.Getenv("STACK_STATE"); s != "" {
		return s
	}
	return filepath.Join(repoRoot(), ".state", "stack")
}

// collectorPID returns the pid recorded by stack-up for the collector, if
// that process still runs the recorded binary.
func collectorPID() (int, bool) {
	b, err := os.ReadFile(filepath.Join(stackState(), "collector.pid"))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	want, err2 := filepath.EvalSymlinks(f[1])
	if err != nil || err2 != nil || strings.TrimSuffix(exe, " (deleted)") != want {
		return 0, false
	}
	return pid, true
}

// stopCollector stops the stack's collector (the process stack-up started
// and recorded) and waits until it is gone.
func stopCollector(t *testing.T) {
	t.Helper()
	pid, ok := collectorPID()
	if !ok {
		t.Fatalf("no collector recorded in %s: the test needs the stack from `make stack-up`", stackState())
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stopping the collector (pid %d): %v", pid, err)
	}
	testkit.Eventually(t, "the collector to exit", func() error {
		_, alive := collectorPID()
		return seen(!alive, "pid %d still running", pid)
	}, testkit.Within(20*time.Second))
}

// startCollector restarts whatever part of the stack is not running; the
// stack's up.sh leaves running components alone.
func startCollector(t *testing.T) {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot(), "deploy", "stack", "up.sh"))
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restarting the collector with deploy/stack/up.sh: %v\n%s", err, out)
	}
}

// publisher publishes to one queue as fast as the sidecar replies,
// pipelining a window of requests, and counts the replies by status.
type publisher struct {
	accepted, other atomic.Int64
	stop            chan struct{}
	done            chan struct{}
}

func startPublisher(t *testing.T, sc *sidecar, queue string) *publisher {
	t.Helper()
	c := dial(t, sc)
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		const window = 64
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			ids := make([]int64, window)
			for i := range ids {
				ids[i] = c.publish(queue, "CANDLE_UPDATE", "")
			}
			for _, id := range ids {
				if f := c.reply(id, 30*time.Second); f.Status == "accepted" {
					p.accepted.Add(1)
				} else {
					p.other.Add(1)
				}
			}
		}
	}()
	t.Cleanup(p.halt)
	return p
}

func (p *publisher) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// rate measures accepted publishes per second over d.
func (p *publisher) rate(d time.Duration) float64 {
	start := p.accepted.Load()
	time.Sleep(d)
	return float64(p.accepted.Load()-start) / d.Seconds()
}

// TestCollectorOutage stops the collector while the sidecar publishes at
// full speed: publishing goes on at about the same rate, memory stays
// bounded, the lost spans and failed exports are counted (and logged once
// per interval); once the collector is back, export resumes and the loss
// counters themselves reach Prometheus.
func TestCollectorOutage(t *testing.T) {
	sc := startSidecar(t, sidecarOptions{
		// drop_oldest never waits: every publish is a publish span plus an
		// evicted-drop span, a steady stream of spans to lose.
		queues: `
  - {name: data, capacity: 100, policy: drop_oldest}
  - {name: order, capacity: 1000, policy: block}
`,
	})
	t.Cleanup(func() {
		if _, ok := collectorPID(); !ok {
			startCollector(t) // leave the stack as we found it
		}
	})
	pub := startPublisher(t, sc, "data")
	before := pub.rate(3 * time.Second)
	if before <= 0 {
		t.Fatalf("no publishes accepted with the collector up (%d other replies)", pub.other.Load())
	}
	rssBefore := sc.rssBytes(t)

	stopCollector(t)
	stoppedAt := time.Now()
	during := pub.rate(8 * time.Second)
	rssDuring := sc.rssBytes(t)
	t.Logf("publish rate: %.0f/s with the collector up, %.0f/s while it is down; RSS %d MiB -> %d MiB",
		before, during, rssBefore>>20, rssDuring>>20)
	if during < before/2 {
		t.Errorf("publishing slowed from %.0f/s to %.0f/s while the collector was down", before, during)
	}
	if rssDuring > rssBefore+64<<20 {
		t.Errorf("memory grew from %d MiB to %d MiB while the collector was down", rssBefore>>20, rssDuring>>20)
	}
	if q, c := sc.adminMetric(t, "eventbus_telemetry_span_queue_size"), sc.adminMetric(t, "eventbus_telemetry_span_queue_capacity"); q > c || c == 0 {
		t.Errorf("span queue %v of capacity %v", q, c)
	}
	failed := sc.adminMetric(t, "eventbus_telemetry_exports_failed_total", `signal="traces"`)
	lost := sc.adminMetric(t, "eventbus_telemetry_spans_dropped_total")
	if failed == 0 || lost == 0 {
		t.Errorf("collector down for 8s: exports_failed{traces} = %v, spans_dropped = %v; want both > 0", failed, lost)
	}
	if pub.other.Load() != 0 {
		t.Errorf("%d publishes not accepted", pub.other.Load())
	}

	startCollector(t)
	outage := time.Since(stoppedAt)
	// The failure count only arose while the collector was down, so seeing
	// it in Prometheus proves metric export resumed.
	testkit.Eventually(t, "the loss counters in Prometheus after the restart", func() error {
		s, err := prometheus(fmt.Sprintf(`eventbus_telemetry_exports_failed_total{instance=%q,signal="traces"}`, sc.instance))
		if err != nil {
			return err
		}
		return seen(len(s) == 1 && s[0].Value > 0, "%v", s)
	}, testkit.Within(60*time.Second))
	s, err := prometheus(fmt.Sprintf(`sum(eventbus_telemetry_spans_dropped_total{instance=%q})`, sc.instance))
	if err != nil || len(s) != 1 || s[0].Value <= 0 {
		t.Errorf("spans lost during the outage not in Prometheus: %v %v", s, err)
	}
	// Spans flow again: traced order publishes reach Jaeger. Spans exported
	// while the trace connection is still reconnecting are lost (and
	// counted), so keep publishing until one arrives. The data flood stops
	// first: on this machine's two cores it outruns the collector and
	// Jaeger, whose memory limiter then refuses whole batches, order spans
	// with the rest, for as long as it lasts. That the sidecar's own queue
	// keeps room for order spans under a flood is TestReserveKeepsRoomForOrderSpans.
	pub.halt()
	c := dial(t, sc)
	var ids []string
	testkit.Eventually(t, "a new trace in Jaeger after the restart", func() error {
		id := randomHex(16)
		if f := c.reply(c.publish("order", "ORDER_PLACED", fmt.Sprintf("00-%s-%s-01", id, randomHex(8))), 10*time.Second); f.Status != "accepted" {
			t.Fatalf("order publish after the restart: %+v", f)
		}
		ids = append(ids, id)
		if len(ids) > 10 {
			ids = ids[1:]
		}
		for _, id := range ids {
			if tr, err := jaeger(id); err == nil && len(tr.Spans) > 0 {
				return nil
			}
		}
		return fmt.Errorf("none of the last %d traced orders in Jaeger", len(ids))
	}, testkit.Within(60*time.Second))

	// Loss is logged once per interval (1 s here), never per span: at full
	// speed data spans beyond the export budget are shed all along, so
	// there may be a line every second of the sidecar's life, but no more.
	b := sc.Logs()
	lines := strings.Count(b, "telemetry lost since last report")
	life := time.Since(sc.started)
	if limit := int(life.Seconds()) + 2; lines == 0 || lines > limit {
		t.Errorf("%d loss log lines in %v (outage %v); want between 1 and %d",
			lines, life.Round(time.Second), outage.Round(time.Second), limit)
	}
	if !strings.Contains(b, "telemetry export recovered") {
		t.Error("no \"telemetry export recovered\" log line after the collector returned")
	}
}
