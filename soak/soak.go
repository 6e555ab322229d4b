// Package soak holds a real sidecar under a long mix of well-behaved and
// hostile clients on its Unix socket and checks that its memory, file
// descriptors and threads stay flat and inside the memory budget while the
// well-behaved clients keep being served.
package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// ErrFailed is returned, wrapped with the reasons, when the sidecar did not
// hold up: over its memory bound, stalled clients, growing fds or threads,
// or it died.
var ErrFailed = errors.New("soak failed")

// Config says what to soak and for how long.
type Config struct {
	// Binary is the sidecar executable that Run starts with `serve` on a
	// temporary socket and data dir. Ignore it by setting Pid.
	Binary string
	// Args are added to serve's flags.
	Args []string
	// Pid, Socket and AdminAddr name a sidecar already running, which Run
	// then takes instead of starting one.
	Pid       int
	Socket    string
	AdminAddr string

	// Mix is the clients; its Total is the connections held.
	Mix Mix
	// Duration is how long the clients run.
	Duration time.Duration
	// Interval is the time between samples.
	Interval time.Duration
	// Stall is how long a well-behaved publisher may wait for its reply,
	// or a queue go without a delivery, before the run fails.
	Stall time.Duration
	// PublishEvery is each well-behaved publisher's period.
	PublishEvery time.Duration
	// Warmup is left out of the growth comparison: connections open and
	// queues fill then.
	Warmup time.Duration
	// Out gets a line per sample and the summary.
	Out io.Writer
}

// Defaults for the Config fields left zero.
const (
	DefaultDuration     = 10 * time.Minute
	DefaultInterval     = 5 * time.Second
	DefaultStall        = 10 * time.Second
	DefaultPublishEvery = time.Second
)

// Growth tolerances: the median of the last third may exceed that of the
// first third by this share plus this much, and no more.
const (
	growthTolerance = 0.25
	fdSlack         = 64
	threadSlack     = 8
	rssSlack        = 16 // MiB
)

// maxMissedMetrics is how many samples in a row /metrics may fail to
// answer before the run fails.
const maxMissedMetrics = 3

// defaultLimits are the sidecar's defaults, the memory bound's terms
// until /metrics reports the real ones.
var defaultLimits = transport.MemoryLimits{
	MaxBufferedBytes: transport.DefaultMaxBufferedBytes,
	MaxConnections:   transport.DefaultMaxConnections,
	Queues:           len(queues),
}

// Report is the outcome of a run.
type Report struct {
	Samples []Sample
	// RSSLimit is the memory bound (transport.MemoryBound) of the
	// sidecar's budget, connection limit and queues; PeakRSS the largest
	// RSS sampled.
	RSSLimit, PeakRSS int64
	Growth            []Growth
	// Failures says why the run failed; empty when it passed.
	Failures []string

	Replies, Deliveries             int64
	Accepted, Dropped, Timeout, Bad int64
	GoodDisconnects                 int64
	NonReaderConns, TricklerConns   int64
	FrameTimeouts, Churns, Rejected int64
	MalformedReplies                int64
	Oversize, FrameTooLarge         int64
	DialErrors                      int64
	// MissedMetrics counts samples whose /metrics did not answer in time.
	MissedMetrics  int
	MaxPublishWait time.Duration
	SidecarExit    string
}

func (c *Config) fill() error {
	if c.Duration <= 0 {
		c.Duration = DefaultDuration
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Stall <= 0 {
		c.Stall = DefaultStall
	}
	if c.PublishEvery <= 0 {
		c.PublishEvery = DefaultPublishEvery
	}
	if c.Warmup <= 0 {
		c.Warmup = min(30*time.Second, c.Duration/10)
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Mix.Total() == 0 {
		m, err := MixFor(1000)
		if err != nil {
			return err
		}
		c.Mix = m
	}
	if c.Mix.Publishers < len(queues) || c.Mix.Consumers < len(queues) {
		return fmt.Errorf("mix has %d publishers and %d consumers: want at least %d of each, one per queue (%s)",
			c.Mix.Publishers, c.Mix.Consumers, len(queues), strings.Join(queues[:], ", "))
	}
	if c.Pid == 0 && c.Binary == "" {
		return errors.New("no sidecar: set Binary to start one, or Pid, Socket and AdminAddr to take a running one")
	}
	if c.Pid != 0 && (c.Socket == "" || c.AdminAddr == "") {
		return fmt.Errorf("pid %d: taking a running sidecar needs its socket (%q) and admin address (%q)", c.Pid, c.Socket, c.AdminAddr)
	}
	return nil
}

// RaiseFDLimit raises the soft RLIMIT_NOFILE to the hard limit (a started
// sidecar inherits it) and fails when even that is below need.
func RaiseFDLimit(need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("setrlimit nofile to %d: %w", lim.Max, err)
		}
	}
	if lim.Cur < need {
		return lim.Cur, fmt.Errorf("open files limit %d (hard limit) is below the %d the soak needs: raise `ulimit -Hn` or use fewer connections", lim.Cur, need)
	}
	return lim.Cur, nil
}

// sidecar is the process under test.
type sidecar struct {
	pid          int
	socket       string
	admin        string
	exited       chan struct{} // closed when a started sidecar exits
	exitErr      error         // valid once exited is closed
	cmd          *exec.Cmd
	log, dataDir string
}

// freeAddr returns a loopback address nobody listened on a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startSidecar runs cfg.Binary serve on a socket and data dir in dir, and
// waits until /readyz answers.
func startSidecar(ctx context.Context, cfg Config, dir string) (*sidecar, error) {
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &sidecar{socket: filepath.Join(dir, "s.sock"), admin: admin, exited: make(chan struct{}),
		log: filepath.Join(dir, "sidecar.log"), dataDir: filepath.Join(dir, "data")}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append([]string{"serve", "--socket", s.socket, "--data-dir", s.dataDir, "--admin-addr", admin,
		"--drain-timeout", "5s"}, cfg.Args...)
	s.cmd = exec.Command(cfg.Binary, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Binary, err)
	}
	s.pid = s.cmd.Process.Pid
	go func() {
		s.exitErr = s.cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(ctx, 30*time.Second); err != nil {
		s.stop()
		return nil, fmt.Errorf("sidecar %s: %w\n%s", cfg.Binary, err, s.logTail(20))
	}
	return s, nil
}

// waitReady polls /readyz until it answers 200, the process exits or
// patience runs out.
func (s *sidecar) waitReady(ctx context.Context, patience time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.admin+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("exited during start-up: %v", s.exitErr)
		case <-ctx.Done():
			return fmt.Errorf("not ready at http://%s/readyz after %v: %w", s.admin, patience, ctx.Err())
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM, waits for the drain, kills the process if it takes
// too long, and returns how it exited.
func (s *sidecar) stop() string {
	if s.cmd == nil {
		return "not started by the soak"
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return "killed: no exit 30 s after SIGTERM"
	}
	if s.exitErr != nil {
		return "after SIGTERM: " + s.exitErr.Error()
	}
	return "0 after SIGTERM"
}

// logTail returns the last n lines of a started sidecar's output.
func (s *sidecar) logTail(n int) string {
	data, err := os.ReadFile(s.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Run soaks the sidecar for cfg.Duration and returns the report; the error
// wraps ErrFailed when a check failed.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.fill(); err != nil {
		return Report{}, err
	}
	var rep Report
	var sc *sidecar
	if cfg.Pid != 0 {
		sc = &sidecar{pid: cfg.Pid, socket: cfg.Socket, admin: cfg.AdminAddr}
	} else {
		dir, err := os.MkdirTemp("", "soak-")
		if err != nil {
			return rep, err
		}
		defer os.RemoveAll(dir)
		sc, err = startSidecar(ctx, cfg, dir)
		if err != nil {
			return rep, err
		}
	}

	c := &counters{}
	d := &driver{socket: sc.socket, c: c, publishEvery: cfg.PublishEvery, start: time.Now()}
	for i := range c.lastDelivery {
		c.lastDelivery[i].Store(d.start.UnixNano())
	}
	busy := make([]atomic.Int64, cfg.Mix.Publishers)

	runCtx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	m := cfg.Mix
	// The well-behaved clients connect first, so that the hostile ones'
	// churn cannot keep them out.
	for i := range m.Consumers {
		wg.Go(func() { d.consumer(runCtx, i%len(queues)) })
	}
	for i := range m.Publishers {
		wg.Go(func() { d.publisher(runCtx, queues[i%len(queues)], &busy[i]) })
	}
	for i := range m.NonReaders {
		wg.Go(func() { d.nonReader(runCtx, i%2 == 0) })
	}
	for range m.Tricklers {
		wg.Go(func() { d.trickler(runCtx) })
	}
	for range m.Churners {
		wg.Go(func() { d.churner(runCtx) })
	}
	for range m.Malformed {
		wg.Go(func() { d.malformed(runCtx) })
	}

	fmt.Fprintf(cfg.Out, "soak: %d connections (%d publishers, %d consumers, %d non-readers, %d tricklers, %d churners, %d malformed) for %v, sidecar pid %d, socket %s\n",
		m.Total(), m.Publishers, m.Consumers, m.NonReaders, m.Tricklers, m.Churners, m.Malformed, cfg.Duration, sc.pid, sc.socket)
	fmt.Fprintf(cfg.Out, "%8s %10s %6s %8s %11s %6s %8s %s\n", "time", "rss", "fds", "threads", "buffered", "conns", "good/s", "closed by sidecar")

	fail := func(format string, args ...any) { rep.Failures = append(rep.Failures, fmt.Sprintf(format, args...)) }
	hc := &http.Client{Timeout: min(cfg.Interval, 5*time.Second)}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(cfg.Interval)
	end := time.NewTimer(cfg.Duration)
	var lastGood int64
	lastAt := d.start
	missed, overs := 0, 0
	// Until /metrics first answers, the bound is taken at its default.
	limits := defaultLimits
	var died bool
sampling:
	for {
		select {
		case <-ctx.Done():
			fail("interrupted: %v", ctx.Err())
			break sampling
		case <-sc.exited:
			fail("sidecar exited during the run: %v\n%s", sc.exitErr, sc.logTail(20))
			died = true
			break sampling
		case <-end.C:
			break sampling
		case now := <-tick.C:
			s, err := sample(ctx, hc, sc, now.Sub(d.start))
			if errors.Is(err, errGone) {
				fail("sidecar pid %d is gone: %v", sc.pid, err)
				died = true
				break sampling
			}
			if err != nil {
				// One slow /metrics on a busy machine is noise; an admin
				// listener that stops answering is a failure.
				rep.MissedMetrics++
				missed++
				fmt.Fprintf(cfg.Out, "%8s metrics: %v\n", s.At.Round(time.Second), err)
				if missed == maxMissedMetrics {
					fail("at %v /metrics failed %d times in a row, last: %v", s.At.Round(time.Second), missed, err)
				}
				s.Buffered, s.Budget, s.ConnLimit = -1, -1, -1
			} else {
				missed = 0
			}
			good := c.replies.Load() + c.deliveries.Load()
			s.GoodPerSec = float64(good-lastGood) / now.Sub(lastAt).Seconds()
			lastGood, lastAt = good, now
			rep.Samples = append(rep.Samples, s)
			if s.Budget >= 0 {
				limits = transport.MemoryLimits{MaxBufferedBytes: s.Budget, MaxConnections: int(s.ConnLimit), Queues: s.Queues}
				writeSample(cfg.Out, s)
			}
			rep.RSSLimit = transport.MemoryBound(limits)
			if over := overBound(s, limits); over != "" {
				// Once is enough to fail; the count and peak go in the
				// summary.
				if overs == 0 {
					fail("%s", over)
				}
				overs++
			}
			rep.PeakRSS = max(rep.PeakRSS, s.RSS)
			if stalled := checkStalls(now, cfg.Stall, busy, c, &rep); stalled != "" {
				fail("at %v %s", s.At.Round(time.Second), stalled)
			}
		}
	}
	tick.Stop()
	end.Stop()
	if overs > 1 {
		fail("RSS was over the bound in %d of %d samples, peak %s", overs, len(rep.Samples), mib(rep.PeakRSS))
	}
	stopClients()
	wg.Wait()
	if !died {
		rep.SidecarExit = sc.stop()
		if sc.cmd != nil && sc.exitErr != nil {
			fail("sidecar did not exit cleanly: %s\n%s", rep.SidecarExit, sc.logTail(20))
		}
	}

	var rss, fds, threads []float64
	for _, s := range rep.Samples {
		if s.At < cfg.Warmup {
			continue
		}
		rss = append(rss, float64(s.RSS)/(1<<20))
		fds = append(fds, float64(s.FDs))
		threads = append(threads, float64(s.Threads))
	}
	rep.Growth = []Growth{
		growth("rss MiB", rss, growthTolerance, rssSlack),
		growth("fds", fds, growthTolerance, fdSlack),
		growth("threads", threads, growthTolerance, threadSlack),
	}
	for _, g := range rep.Growth {
		if !g.OK() {
			fail("%s grew: median of the last third %.0f > %.0f × %.2f + slack = %.0f (first third %.0f)",
				g.Name, g.Last, g.First, 1+growthTolerance, g.Limit, g.First)
		}
	}

	rep.Replies, rep.Deliveries = c.replies.Load(), c.deliveries.Load()
	rep.Accepted, rep.Dropped = c.repliesByStatus[0].Load(), c.repliesByStatus[1].Load()
	rep.Timeout, rep.Bad = c.repliesByStatus[2].Load(), c.repliesByStatus[3].Load()
	rep.GoodDisconnects = c.goodDisconnects.Load()
	rep.NonReaderConns, rep.TricklerConns = c.nonReaderConns.Load(), c.tricklerConns.Load()
	rep.FrameTimeouts, rep.Churns, rep.Rejected = c.frameTimeouts.Load(), c.churns.Load(), c.rejected.Load()
	rep.MalformedReplies = c.malformedReplies.Load()
	rep.Oversize, rep.FrameTooLarge = c.oversize.Load(), c.frameTooLong.Load()
	rep.DialErrors = c.dialErrors.Load()
	if rep.Rejected > 0 && m.Total() <= limits.MaxConnections {
		// Every client holds one connection at a time and closes it before
		// the next, and a connection stops counting once its client has
		// closed it or seen it end: the driver never reaches the cap.
		fail("%d connections were refused too_many_connections although the %d clients hold at most %d of the %d the sidecar serves",
			rep.Rejected, m.Total(), m.Total(), limits.MaxConnections)
	}
	if rep.Replies == 0 || rep.Deliveries == 0 {
		fail("well-behaved clients got %d replies and %d deliveries: want some of each", rep.Replies, rep.Deliveries)
	}
	rep.WriteSummary(cfg.Out)
	if len(rep.Failures) > 0 {
		return rep, fmt.Errorf("%w: %s", ErrFailed, strings.Join(rep.Failures, "; "))
	}
	return rep, nil
}

// overBound says how s's RSS passes the memory bound the README states
// (transport.MemoryBound); "" when it does not.
func overBound(s Sample, l transport.MemoryLimits) string {
	limit := transport.MemoryBound(l)
	if s.RSS <= limit {
		return ""
	}
	return fmt.Sprintf("at %v RSS %s is over the memory bound %s (%s + max_connections %d × %s + queues %d × %s + max_buffered_bytes %s)",
		s.At.Round(time.Second), mib(s.RSS), mib(limit), mib(transport.BaseMemory), l.MaxConnections, kib(transport.ConnectionMemory),
		l.Queues, mib(transport.QueueMemory), mib(l.MaxBufferedBytes))
}

// checkStalls returns what stalled: a well-behaved publisher waiting for
// its reply (or to connect) longer than stall, or a queue without a
// delivery for longer than stall. It records the longest publisher wait.
func checkStalls(now time.Time, stall time.Duration, busy []atomic.Int64, c *counters, rep *Report) string {
	var worst time.Duration
	waiting := 0
	for i := range busy {
		since := busy[i].Load()
		if since == 0 {
			continue
		}
		w := now.Sub(time.Unix(0, since))
		worst = max(worst, w)
		if w > stall {
			waiting++
		}
	}
	rep.MaxPublishWait = max(rep.MaxPublishWait, worst)
	var out []string
	if waiting > 0 {
		out = append(out, fmt.Sprintf("%d well-behaved publishers waited over %v for a reply (longest %v)", waiting, stall, worst.Round(time.Millisecond)))
	}
	for i, q := range queues {
		if w := now.Sub(time.Unix(0, c.lastDelivery[i].Load())); w > stall {
			out = append(out, fmt.Sprintf("no delivery on %s for %v (stall limit %v)", q, w.Round(time.Millisecond), stall))
		}
	}
	return strings.Join(out, "; ")
}

// sample looks at the sidecar once.
func sample(ctx context.Context, hc *http.Client, sc *sidecar, at time.Duration) (Sample, error) {
	s := Sample{At: at}
	var err error
	s.RSS, s.Threads, s.FDs, err = readProc(sc.pid)
	if err != nil {
		return s, err
	}
	m, err := fetchMetrics(ctx, hc, sc.admin)
	if err != nil {
		return s, err
	}
	s.Buffered, s.Budget, s.Conns, s.Closed = m.buffered, m.budget, m.conns, m.closed
	s.ConnLimit, s.Queues = m.connLimit, m.queues
	return s, nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func kib(n int64) string { return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10)) }

// closeReasons are the close reasons a sample line shows, in its order.
var closeReasons = []string{"slow_consumer", "frame_timeout", "frame_too_large", "over_budget", "write_error", "read_error"}

func writeSample(w io.Writer, s Sample) {
	var closed []string
	for _, r := range closeReasons {
		if n := s.Closed[r]; n > 0 {
			closed = append(closed, fmt.Sprintf("%s=%d", r, n))
		}
	}
	fmt.Fprintf(w, "%8s %10s %6d %8d %11s %6d %8.0f %s\n", s.At.Round(time.Second), mib(s.RSS), s.FDs, s.Threads,
		mib(s.Buffered), s.Conns, s.GoodPerSec, strings.Join(closed, " "))
}

// minuteOf is the minute of the run a sample closes or falls in: 1 for
// (0, 1m], 2 for (1m, 2m] and so on.
// Samples are taken a little after each tick, so at is rounded to the
// second first.
func minuteOf(at time.Duration) int {
	return int((at.Round(time.Second) + time.Minute - 1) / time.Minute)
}

// WriteSummary prints a row per minute (the maxima of its samples, the mean
// good-client rate), the growth checks and the verdict.
func (r Report) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "\nper minute (max of the samples; good/s the mean):\n")
	fmt.Fprintf(w, "| minute | RSS | fds | threads | buffered | good/s |\n|---|---|---|---|---|---|\n")
	for i := 0; i < len(r.Samples); {
		minute := minuteOf(r.Samples[i].At)
		var rss, buf int64
		var fds, threads, n int
		var good float64
		for ; i < len(r.Samples) && minuteOf(r.Samples[i].At) == minute; i++ {
			s := r.Samples[i]
			rss, buf = max(rss, s.RSS), max(buf, s.Buffered)
			fds, threads = max(fds, s.FDs), max(threads, s.Threads)
			good += s.GoodPerSec
			n++
		}
		fmt.Fprintf(w, "| %d | %s | %d | %d | %s | %.0f |\n", minute, mib(rss), fds, threads, mib(buf), good/float64(n))
	}
	fmt.Fprintf(w, "\nRSS peak %s, memory bound (transport.MemoryBound) %s\n", mib(r.PeakRSS), mib(r.RSSLimit))
	for _, g := range r.Growth {
		verdict := "flat"
		if !g.OK() {
			verdict = "GREW"
		}
		fmt.Fprintf(w, "%-8s: first third median %.0f, last third %.0f, limit %.0f: %s\n", g.Name, g.First, g.Last, g.Limit, verdict)
	}
	fmt.Fprintf(w, "well-behaved: %d publish replies (accepted %d, dropped %d, timeout %d, other %d), %d deliveries, longest publish wait seen at a sample %v, %d connections lost\n",
		r.Replies, r.Accepted, r.Dropped, r.Timeout, r.Bad, r.Deliveries, r.MaxPublishWait.Round(time.Millisecond), r.GoodDisconnects)
	fmt.Fprintf(w, "hostile: %d non-reader connections, %d trickler connections (%d frame_timeout), %d churn cycles, %d malformed replies, %d oversize frames (%d frame_too_large), %d too_many_connections, %d dial errors\n",
		r.NonReaderConns, r.TricklerConns, r.FrameTimeouts, r.Churns, r.MalformedReplies, r.Oversize, r.FrameTooLarge, r.Rejected, r.DialErrors)
	fmt.Fprintf(w, "samples: %d, /metrics missed %d; sidecar exit: %s\n", len(r.Samples), r.MissedMetrics, r.SidecarExit)
	if len(r.Failures) == 0 {
		fmt.Fprintln(w, "PASS")
		return
	}
	for _, f := range r.Failures {
		fmt.Fprintln(w, "FAIL:", f)
	}
}
