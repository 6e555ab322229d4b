package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Sample is what one look at the sidecar saw.
type Sample struct {
	// At is the time since the clients started.
	At time.Duration
	// RSS is the resident set size in bytes (VmRSS).
	RSS int64
	// FDs counts the open file descriptors.
	FDs int
	// Threads counts the OS threads: /metrics exports no Go runtime
	// metrics, so a goroutine leak shows here only once it pins threads
	// (and in RSS through its stacks).
	Threads int
	// Buffered and Budget are eventbus_buffered_bytes and
	// eventbus_buffered_budget_bytes.
	Buffered, Budget int64
	// ConnLimit is eventbus_connections_limit (max_connections), Queues
	// the queues of eventbus_queue_capacity.
	ConnLimit int64
	Queues    int
	// Conns is the eventbus_connections gauge.
	Conns int64
	// Closed sums eventbus_connections_closed_total by reason.
	Closed map[string]int64
	// GoodPerSec is the replies and deliveries the well-behaved clients got
	// per second since the previous sample.
	GoodPerSec float64
}

// procStatus reads VmRSS (in bytes) and Threads from a /proc/<pid>/status
// file.
func procStatus(r io.Reader) (rss int64, threads int, err error) {
	var haveRSS, haveThreads bool
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		switch {
		case key == "VmRSS" && len(fields) == 2 && fields[1] == "kB":
			kb, perr := strconv.ParseInt(fields[0], 10, 64)
			if perr != nil {
				return 0, 0, fmt.Errorf("VmRSS %q: %w", val, perr)
			}
			rss, haveRSS = kb<<10, true
		case key == "Threads" && len(fields) == 1:
			n, perr := strconv.Atoi(fields[0])
			if perr != nil {
				return 0, 0, fmt.Errorf("threads %q: %w", val, perr)
			}
			threads, haveThreads = n, true
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if !haveRSS || !haveThreads {
		return 0, 0, fmt.Errorf("status has VmRSS: %v, Threads: %v; want both (a process that exited has no VmRSS)", haveRSS, haveThreads)
	}
	return rss, threads, nil
}

// errGone says the process is no longer there to be sampled.
var errGone = errors.New("process is gone")

// readProc samples pid's RSS, threads and open file descriptors.
func readProc(pid int) (rss int64, threads, fds int, err error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	f, err := os.Open(filepath.Join(dir, "status"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, 0, fmt.Errorf("pid %d: %w", pid, errGone)
	}
	if err != nil {
		return 0, 0, 0, err
	}
	rss, threads, err = procStatus(f)
	f.Close()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("pid %d: %w: %w", pid, errGone, err)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("pid %d fds: %w", pid, err)
	}
	return rss, threads, len(ents), nil
}

// metrics is what the driver reads from the admin /metrics.
type metrics struct {
	buffered, budget, conns, connLimit int64
	queues                             int
	closed                             map[string]int64
}

// parseMetrics picks the gauges and counters the soak reports from
// Prometheus text exposition.
func parseMetrics(r io.Reader) (metrics, error) {
	m := metrics{closed: map[string]int64{}, budget: -1, buffered: -1, connLimit: -1}
	queues := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		series, val := line[:sp], line[sp+1:]
		name, labels, _ := strings.Cut(series, "{")
		var dst *int64
		switch name {
		case "eventbus_buffered_bytes":
			dst = &m.buffered
		case "eventbus_buffered_budget_bytes":
			dst = &m.budget
		case "eventbus_connections":
			dst = &m.conns
		case "eventbus_connections_limit":
			dst = &m.connLimit
		case "eventbus_queue_capacity":
			queues[labelValue(labels, "queue")] = true
			continue
		case "eventbus_connections_closed_total":
		default:
			continue
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return m, fmt.Errorf("metric line %q: %w", line, err)
		}
		if dst != nil {
			*dst = int64(f)
			continue
		}
		m.closed[labelValue(labels, "reason")] += int64(f)
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	m.queues = len(queues)
	if m.budget < 0 || m.buffered < 0 || m.connLimit < 0 || m.queues == 0 {
		return m, errors.New("metrics lack eventbus_buffered_bytes, eventbus_buffered_budget_bytes, eventbus_connections_limit or eventbus_queue_capacity (is telemetry disabled?)")
	}
	return m, nil
}

// labelValue returns the value of label key in `a="x",key="y"}`.
func labelValue(labels, key string) string {
	i := strings.Index(labels, key+`="`)
	if i < 0 {
		return ""
	}
	rest := labels[i+len(key)+2:]
	end := strings.IndexByte(rest, '"')
	if end < 0 {
		return ""
	}
	return rest[:end]
}

// fetchMetrics GETs http://addr/metrics.
func fetchMetrics(ctx context.Context, hc *http.Client, addr string) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return metrics{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return metrics{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return metrics{}, fmt.Errorf("GET /metrics: status %d", resp.StatusCode)
	}
	return parseMetrics(resp.Body)
}

// Growth compares the median of the last third of a series with the median
// of its first third: a leak climbs steadily, so the later median exceeds
// the earlier one by more than noise does. It reports whether last stays
// within first × (1 + tol) + slack.
type Growth struct {
	Name        string
	First, Last float64
	Limit       float64
}

// OK tells whether the last third stayed inside the limit.
func (g Growth) OK() bool { return g.Last <= g.Limit }

// growth computes the Growth of values with a relative tolerance tol and an
// absolute slack; fewer than 3 values cannot be split and pass.
func growth(name string, values []float64, tol, slack float64) Growth {
	g := Growth{Name: name}
	n := len(values) / 3
	if n == 0 {
		return g
	}
	g.First = median(values[:n])
	g.Last = median(values[len(values)-n:])
	g.Limit = g.First*(1+tol) + slack
	return g
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
