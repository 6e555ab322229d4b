package soak

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

func TestProcStatus(t *testing.T) {
	status := "Name:\teventbus-sidec\nState:\tS (sleeping)\nVmPeak:\t 1300000 kB\nVmRSS:\t   51234 kB\nThreads:\t11\nSigQ:\t0/63448\n"
	rss, threads, err := procStatus(strings.NewReader(status))
	if err != nil || rss != 51234<<10 || threads != 11 {
		t.Fatalf("procStatus = %d, %d, %v; want %d, 11, nil", rss, threads, err, 51234<<10)
	}
	// A zombie has no VmRSS.
	if _, _, err := procStatus(strings.NewReader("Name:\tx\nState:\tZ (zombie)\nThreads:\t1\n")); err == nil {
		t.Fatal("procStatus of a status without VmRSS: no error")
	}
}

func TestReadProc(t *testing.T) {
	rss, threads, fds, err := readProc(os.Getpid())
	if err != nil || rss <= 0 || threads <= 0 || fds <= 0 {
		t.Fatalf("readProc(self) = %d, %d, %d, %v; want positive counts", rss, threads, fds, err)
	}
	// Above the largest pid_max Linux allows, so never a process.
	if _, _, _, err := readProc(1 << 30); !errors.Is(err, errGone) {
		t.Fatalf("readProc(no such pid) error %v, want errGone", err)
	}
}

func TestParseMetrics(t *testing.T) {
	const text = `# HELP eventbus_buffered_bytes what is held
# TYPE eventbus_buffered_bytes gauge
eventbus_buffered_budget_bytes{otel_scope_name="t"} 1.34217728e+08
eventbus_buffered_bytes{otel_scope_name="t"} 4096
eventbus_connections{otel_scope_name="t"} 998
eventbus_connections_limit{otel_scope_name="t"} 1024
eventbus_queue_capacity{otel_scope_name="t",queue="data"} 1000
eventbus_queue_capacity{otel_scope_name="t",queue="order"} 50
eventbus_connections_closed_total{otel_scope_name="t",reason="frame_timeout"} 150
eventbus_connections_closed_total{otel_scope_name="t",reason="slow_consumer"} 7
eventbus_publish_total{queue="data"} 12
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if m.budget != 128<<20 || m.buffered != 4096 || m.conns != 998 || m.connLimit != 1024 || m.queues != 2 ||
		m.closed["frame_timeout"] != 150 || m.closed["slow_consumer"] != 7 {
		t.Fatalf("parseMetrics = %+v", m)
	}
	if _, err := parseMetrics(strings.NewReader("eventbus_connections 3\n")); err == nil {
		t.Fatal("metrics without the budget gauges: no error")
	}
}

func TestGrowth(t *testing.T) {
	flat := []float64{1000, 1010, 995, 1003, 990, 1008, 1001, 997, 1012}
	if g := growth("fds", flat, 0.25, 64); !g.OK() {
		t.Errorf("flat series: %+v, want OK", g)
	}
	var leak []float64
	for i := range 30 {
		leak = append(leak, float64(1000+100*i))
	}
	if g := growth("fds", leak, 0.25, 64); g.OK() {
		t.Errorf("series growing 100 a sample: %+v, want not OK", g)
	}
	if g := growth("fds", []float64{1, 1000}, 0.25, 0); !g.OK() {
		t.Errorf("two samples cannot be split into thirds: %+v, want OK", g)
	}
}

func TestMixFor(t *testing.T) {
	m, err := MixFor(1000)
	if err != nil {
		t.Fatal(err)
	}
	want := Mix{Publishers: 300, Consumers: 300, NonReaders: 150, Tricklers: 150, Churners: 50, Malformed: 50}
	if m != want {
		t.Errorf("MixFor(1000) = %+v, want %+v", m, want)
	}
	for _, n := range []int{6, 7, 33, 999} {
		m, err := MixFor(n)
		if err != nil || m.Total() != n {
			t.Errorf("MixFor(%d) = %+v (total %d), %v; want total %d", n, m, m.Total(), err, n)
		}
	}
	if _, err := MixFor(5); err == nil || !strings.Contains(err.Error(), "5") {
		t.Errorf("MixFor(5) error %v, want one naming 5", err)
	}
}

func TestRaiseFDLimit(t *testing.T) {
	got, err := RaiseFDLimit(16)
	if err != nil || got < 16 {
		t.Fatalf("RaiseFDLimit(16) = %d, %v", got, err)
	}
	if _, err := RaiseFDLimit(1 << 62); err == nil {
		t.Fatal("RaiseFDLimit(2^62): no error")
	}
}

func TestOverBound(t *testing.T) {
	l := transport.MemoryLimits{MaxBufferedBytes: 16 << 20, MaxConnections: 1024, Queues: 3}
	s := Sample{At: time.Minute, RSS: transport.MemoryBound(l)}
	if over := overBound(s, l); over != "" {
		t.Errorf("RSS at the bound: %q, want none", over)
	}
	s.RSS++
	want := "over the memory bound 141.0 MiB (20.0 MiB + max_connections 1024 × 72 KiB + queues 3 × 11.0 MiB + max_buffered_bytes 16.0 MiB)"
	if over := overBound(s, l); !strings.Contains(over, want) {
		t.Errorf("RSS past the bound: %q, want the formula %q", over, want)
	}
}

func TestCheckStalls(t *testing.T) {
	now := time.Now()
	c := &counters{}
	for i := range c.lastDelivery {
		c.lastDelivery[i].Store(now.Add(-time.Second).UnixNano())
	}
	busy := make([]atomic.Int64, 3)
	busy[1].Store(now.Add(-2 * time.Second).UnixNano())
	var rep Report
	if got := checkStalls(now, 10*time.Second, busy, c, &rep); got != "" || rep.MaxPublishWait != 2*time.Second {
		t.Fatalf("no stall: %q, longest wait %v; want none, 2s", got, rep.MaxPublishWait)
	}
	busy[2].Store(now.Add(-11 * time.Second).UnixNano())
	c.lastDelivery[2].Store(now.Add(-12 * time.Second).UnixNano())
	got := checkStalls(now, 10*time.Second, busy, c, &rep)
	if !strings.Contains(got, "1 well-behaved publishers") || !strings.Contains(got, "no delivery on order") {
		t.Fatalf("stalls: %q, want one publisher and the order queue", got)
	}
}

// TestRunShort soaks a real sidecar for a few seconds with every kind of
// client and expects it to pass.
func TestRunShort(t *testing.T) {
	bin, err := testkit.BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mix, err := MixFor(40)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep, err := Run(t.Context(), Config{Binary: bin, Mix: mix, Duration: 4 * time.Second, Interval: 500 * time.Millisecond,
		PublishEvery: 100 * time.Millisecond, Out: &out})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	if len(rep.Samples) < 4 || rep.Replies == 0 || rep.Deliveries == 0 || rep.MalformedReplies == 0 || rep.Churns == 0 {
		t.Errorf("report: %d samples, %d replies, %d deliveries, %d malformed replies, %d churns; want some of each\n%s",
			len(rep.Samples), rep.Replies, rep.Deliveries, rep.MalformedReplies, rep.Churns, out.String())
	}
	if !strings.Contains(out.String(), "PASS") || !strings.Contains(out.String(), "| 1 |") {
		t.Errorf("output lacks the verdict or the per-minute table:\n%s", out.String())
	}
}

// killOnSample kills the sidecar once the soak has printed a sample line.
type killOnSample struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	sc     *testkit.Sidecar
	killed bool
}

func (k *killOnSample) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.killed && strings.Contains(string(p), "MiB") {
		k.killed = true
		_ = k.sc.Signal(syscall.SIGKILL)
	}
	return k.buf.Write(p)
}

// TestRunFailsWhenTheSidecarDies takes a running sidecar, kills it after
// the first sample and expects the run to fail saying so.
func TestRunFailsWhenTheSidecarDies(t *testing.T) {
	bin, err := testkit.BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sc := testkit.StartSidecar(t, testkit.SidecarConfig{Binary: bin})
	out := &killOnSample{sc: sc}
	mix, _ := MixFor(12)
	_, err = Run(t.Context(), Config{Pid: sc.Pid(), Socket: sc.Socket, AdminAddr: sc.AdminAddr, Mix: mix,
		Duration: time.Minute, Interval: 200 * time.Millisecond, Out: out})
	sc.Wait()
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("Run error %v, want ErrFailed saying the sidecar is gone\n%s", err, out.buf.String())
	}
}

func TestMinuteOf(t *testing.T) {
	for _, tt := range []struct {
		at   time.Duration
		want int
	}{{5 * time.Second, 1}, {time.Minute, 1}, {time.Minute + 2*time.Millisecond, 1}, {65 * time.Second, 2}, {10 * time.Minute, 10}} {
		if got := minuteOf(tt.at); got != tt.want {
			t.Errorf("minuteOf(%v) = %d, want %d", tt.at, got, tt.want)
		}
	}
}
