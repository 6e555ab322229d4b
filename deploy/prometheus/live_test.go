package prometheus

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// repoRoot is the root module's directory, from this package's directory.
const repoRoot = "../.."

// TestAgainstLiveSidecar builds the sidecar, runs it, lets a real
// Prometheus scrape its admin /metrics with the alert rules loaded, drives
// enough traffic through its socket that every instrument has recorded
// something (a full queue, a wait, a drop, a signal timeout, deliveries,
// acks), then checks the rules and the dashboard against what it exports.
// The sidecar's /metrics names series as the OpenTelemetry specification's
// Prometheus compatibility rules say, as the collector's Prometheus exporter
// does (otlptranslator's UnderscoreEscapingWithSuffixes), so the names
// Prometheus gets through the collector are the same.
func TestAgainstLiveSidecar(t *testing.T) {
	used := usedMetricNames(t)
	if len(used) == 0 {
		t.Fatal("no metric names found in the rules and the dashboard")
	}
	sc := startSidecar(t)
	prom := startPrometheus(t, sc.admin)
	// The counters must be scraped at 0 before the first timeout, as in
	// production, so that increase() sees it.
	prom.waitForSeries(t, `eventbus_events_published_total{job="eventbus-sidecar",queue="signal",outcome="timeout"} == 0`)
	driveTraffic(t, sc.socket)

	t.Run("metric names and labels", func(t *testing.T) {
		checkNames(t, sc, used)
	})
	t.Run("prometheus evaluates every rule and query", func(t *testing.T) {
		prom.checkRulesHealthy(t)
		prom.checkQueriesReturnData(t)
		target := map[string]string{"job": "eventbus-sidecar", "instance": sc.admin}
		with := func(extra ...string) map[string]string {
			m := map[string]string{}
			for k, v := range target {
				m[k] = v
			}
			for i := 0; i+1 < len(extra); i += 2 {
				m[extra[i]] = extra[i+1]
			}
			return m
		}
		// No for: on this alert, and the traffic timed out one signal.
		prom.waitForAlert(t, "EventBusSignalTimeouts", "firing", with("queue", "signal", "severity", "critical"))
		// One of three data publishes dropped (33% > 1%): pending for its 10m.
		prom.waitForAlert(t, "EventBusDataDropsSustained", "pending", with("queue", "data", "severity", "warning"))
		// The OTLP endpoint refuses connections: exports fail.
		prom.waitForAlert(t, "EventBusTelemetryExportFailing", "pending", with("severity", "warning"))
	})
}

// checkNames requires every metric name used by the rules and the
// dashboard in the sidecar's /metrics, then checks their labels.
func checkNames(t *testing.T, sc *sidecar, used map[string][]string) {
	t.Helper()
	var exported series
	testkit.Eventually(t, "every used metric name in /metrics", func() error {
		var err error
		exported, err = sc.scrape()
		if err != nil {
			return err
		}
		var missing, where []string
		for name, uses := range used {
			if exported[name] == nil && !syntheticMetrics[name] {
				missing = append(missing, name)
				where = append(where, fmt.Sprintf("  %s used by %s", name, strings.Join(uses, "; ")))
			}
		}
		if len(missing) == 0 {
			return nil
		}
		sort.Strings(missing)
		sort.Strings(where)
		var have []string
		for name := range exported {
			if strings.HasPrefix(name, "eventbus_") {
				have = append(have, name)
			}
		}
		sort.Strings(have)
		return fmt.Errorf("names not in /metrics: %s\n%s\nthe sidecar exports:\n  %s",
			strings.Join(missing, ", "), strings.Join(where, "\n"), strings.Join(have, "\n  "))
	}, testkit.Within(30*time.Second))
	for name := range syntheticMetrics {
		if exported[name] != nil {
			t.Errorf("%s is listed as produced by Prometheus but the sidecar exports it", name)
		}
	}
	checkLabels(t, exported)
}

// targetLabels are added by Prometheus (or by the collector's exporter from
// the resource) to every series; the sidecar's own /metrics has none.
var targetLabels = map[string]bool{"job": true, "instance": true}

// checkLabels checks that the label matchers and by (...) groupings of every
// query name labels the sidecar's series really carry, and that every
// label value matched exactly (queue="order", outcome="timeout") exists:
// every per-queue series exists from start-up, so a missing value is a typo
// or a renamed attribute, and the query would silently match nothing.
func checkLabels(t *testing.T, exported series) {
	t.Helper()
	has := func(name, label string) bool {
		for _, l := range exported[name] {
			if _, ok := l[label]; ok {
				return true
			}
		}
		return false
	}
	hasValue := func(name, label, value string) bool {
		for _, l := range exported[name] {
			if l[label] == value {
				return true
			}
		}
		return false
	}
	for _, q := range allQueries(t) {
		uses, err := analyzeExpr(q.expr)
		if err != nil {
			t.Fatalf("%s: %v", q.where, err)
		}
		for _, sel := range uses.selectors {
			if syntheticMetrics[sel.name] {
				continue
			}
			for _, m := range sel.matchers {
				if targetLabels[m.Name] {
					continue
				}
				if !has(sel.name, m.Name) {
					t.Errorf("%s: %s has no label %q", q.where, sel.name, m.Name)
					continue
				}
				if m.Type == labels.MatchEqual && m.Value != "" && !hasValue(sel.name, m.Name, m.Value) {
					t.Errorf("%s: no %s series has %s=%q", q.where, sel.name, m.Name, m.Value)
				}
			}
		}
		for _, g := range uses.groupings {
			for _, l := range g.labels {
				if targetLabels[l] {
					continue
				}
				if !slices.ContainsFunc(g.names, func(n string) bool { return syntheticMetrics[n] || has(n, l) }) {
					t.Errorf("%s: groups by %q, which none of %v carries", q.where, l, g.names)
				}
			}
		}
	}
}

// sidecar is a running eventbus-sidecar process started by startSidecar.
type sidecar struct {
	socket string
	admin  string // host:port
	client *http.Client
}

// startSidecar builds and runs the sidecar (or $EVENTBUS_SIDECAR_BIN) with
// small data and signal queues (so that a wait, a drop and a timeout take a
// few publishes and 50 ms each) and an OTLP endpoint where nothing listens
// (so exports fail and the telemetry-loss counters move, and no collector
// of a running local stack receives test data).
func startSidecar(t *testing.T) *sidecar {
	t.Helper()
	bin, err := testkit.BuildSidecar(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	deadOTLP := testkit.FreeAddr(t)
	ts := testkit.StartSidecar(t, testkit.SidecarConfig{
		Binary: bin,
		Config: fmt.Sprintf(`drain_timeout: 1s
queues:
  - name: data
    capacity: 2
    policy: drop
    timeout: 50ms
  - name: signal
    capacity: 1
    policy: fail
    timeout: 50ms
telemetry:
  otlp_endpoint: %s
  metric_interval: 200ms
`, deadOTLP),
		Env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + deadOTLP},
	})
	sc := &sidecar{
		socket: ts.Socket,
		admin:  ts.AdminAddr,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}},
	}
	t.Cleanup(sc.client.CloseIdleConnections)
	return sc
}

// series maps each sample name of a scrape to the label sets it has.
type series map[string][]map[string]string

// scrape returns every series of one /metrics scrape (histograms as their
// _bucket, _sum and _count series, as PromQL selects them).
func (s *sidecar) scrape() (series, error) {
	resp, err := s.client.Get("http://" + s.admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	return parseSamples(resp.Body)
}

// parseSamples reads the Prometheus text exposition format: comments are
// skipped, each sample line is name, optional {label="value",...}, value.
func parseSamples(r io.Reader) (series, error) {
	out := series{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		if end <= 0 {
			return nil, fmt.Errorf("malformed sample line %q", line)
		}
		name := line[:end]
		lbls := map[string]string{}
		if line[end] == '{' {
			var err error
			if lbls, err = parseLabels(line[end+1:]); err != nil {
				return nil, fmt.Errorf("sample line %q: %w", line, err)
			}
		}
		out[name] = append(out[name], lbls)
	}
	return out, sc.Err()
}

// parseLabels reads label="value" pairs up to the closing brace; values
// may hold the escapes \\, \" and \n.
func parseLabels(s string) (map[string]string, error) {
	lbls := map[string]string{}
	for {
		s = strings.TrimLeft(s, " ,")
		if strings.HasPrefix(s, "}") {
			return lbls, nil
		}
		eq := strings.Index(s, `="`)
		if eq <= 0 {
			return nil, fmt.Errorf("label without =\" in %q", s)
		}
		name := s[:eq]
		s = s[eq+2:]
		var val strings.Builder
		closed := false
		for i := 0; i < len(s); i++ {
			c := s[i]
			if c == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			if c == '"' {
				s = s[i+1:]
				closed = true
				break
			}
			val.WriteByte(c)
		}
		if !closed {
			return nil, fmt.Errorf("unterminated value of label %s", name)
		}
		lbls[name] = val.String()
	}
}

func TestParseSamples(t *testing.T) {
	text := `# HELP x_seconds A histogram.
# TYPE x_seconds histogram
x_seconds_bucket{le="0.1",queue="data"} 1
x_seconds_sum{queue="data"} 0.05
x_seconds_count{queue="data"} 1
plain_gauge 3
odd{msg="a \"quoted\" \\ value, with {braces}",b="2"} 1
`
	got, err := parseSamples(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	want := []string{"odd", "plain_gauge", "x_seconds_bucket", "x_seconds_count", "x_seconds_sum"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("names = %v, want %v", names, want)
	}
	if l := got["x_seconds_bucket"][0]; l["le"] != "0.1" || l["queue"] != "data" {
		t.Errorf("bucket labels = %v", l)
	}
	if l := got["odd"][0]; l["msg"] != `a "quoted" \ value, with {braces}` || l["b"] != "2" {
		t.Errorf("escaped labels = %v", l)
	}
	for _, bad := range []string{"{broken} 1", `x{a="1} 2`, `x{a} 2`} {
		if _, err := parseSamples(strings.NewReader(bad + "\n")); err == nil {
			t.Errorf("parseSamples accepted %q", bad)
		}
	}
}

// frame is the part of a sidecar-to-client frame this test reads.
type frame struct {
	Op     string `json:"op"`
	ID     int64  `json:"id"`
	Status string `json:"status"`
	Error  string `json:"error"`
	Queue  string `json:"queue"`
	Seq    uint64 `json:"seq"`
}

// driveTraffic makes every instrument record: publishes to each queue, a
// third publish to the two-slot data queue that waits and is dropped, a
// second publish to the one-slot signal queue that times out, then a
// consumer that receives and acks the queued data events.
func driveTraffic(t *testing.T, socket string) {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("dial %s: %v", socket, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	in := bufio.NewScanner(conn)
	send := func(v map[string]any) {
		t.Helper()
		line, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(append(line, '\n')); err != nil {
			t.Fatalf("write %s: %v", line, err)
		}
	}
	read := func() frame {
		t.Helper()
		if !in.Scan() {
			t.Fatalf("reading from the sidecar: %v", errors.Join(in.Err(), io.ErrUnexpectedEOF))
		}
		var f frame
		if err := json.Unmarshal(in.Bytes(), &f); err != nil {
			t.Fatalf("decode frame %q: %v", in.Bytes(), err)
		}
		return f
	}

	publishes := []struct {
		queue, typ string
	}{
		{"data", "CANDLE_UPDATE"}, {"data", "CANDLE_UPDATE"}, {"data", "CANDLE_UPDATE"},
		{"signal", "SIGNAL_GENERATED"}, {"signal", "SIGNAL_GENERATED"}, {"order", "ORDER_PLACED"},
	}
	statuses := map[int64]string{}
	for i, p := range publishes {
		send(map[string]any{"op": "publish", "id": i + 1, "queue": p.queue, "type": p.typ, "payload": map[string]int{"n": i}})
	}
	for len(statuses) < len(publishes) {
		f := read()
		if f.Op == "" && f.ID > 0 {
			statuses[f.ID] = f.Status
		}
	}
	if statuses[3] != "dropped" {
		t.Fatalf("third publish to the two-slot data queue: status %q, want dropped (all: %v)", statuses[3], statuses)
	}
	if statuses[5] != "timeout" {
		t.Fatalf("second publish to the one-slot signal queue: status %q, want timeout (all: %v)", statuses[5], statuses)
	}

	const subID = 100
	send(map[string]any{"op": "subscribe", "id": subID, "queue": "data", "prefetch": 10})
	delivered := 0
	for delivered < 2 {
		f := read()
		switch {
		case f.Op == "deliver":
			delivered++
			send(map[string]any{"op": "ack", "queue": f.Queue, "seq": f.Seq})
		case f.ID == subID && f.Status != "ok":
			t.Fatalf("subscribe: %s %s", f.Status, f.Error)
		}
	}
}
