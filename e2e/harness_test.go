//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// The local stack's endpoints (deploy/stack/README.md): fixed loopback
// ports, which is why these tests run only under `make test-e2e`.
const (
	collectorOTLP = "127.0.0.1:4317"
	jaegerAPI     = "http://127.0.0.1:16686"
	prometheusAPI = "http://127.0.0.1:9090"
)

// sidecarBin is the binary under test, built once by TestMain so that every
// test runs the current code as a real process.
var (
	sidecarBin string
	buildDir   string
)

// repoRoot is the module root, the parent of this file's directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// buildSidecar builds the binary (or takes $EVENTBUS_SIDECAR_BIN).
func buildSidecar() error {
	dir, err := os.MkdirTemp("", "eventbus-e2e-")
	if err != nil {
		return err
	}
	buildDir = dir
	sidecarBin, err = testkit.BuildSidecar(context.Background(), dir)
	return err
}

func removeBuild() {
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
}

// checkStack fails fast, with the fix, when the stack is not running.
func checkStack() error {
	hc := newHTTPClient()
	for _, u := range []string{jaegerAPI + "/api/services", prometheusAPI + "/-/ready"} {
		resp, err := hc.Get(u)
		if err != nil {
			return fmt.Errorf("local stack not reachable at %s (%v): run `make stack-up` first, or `make test-e2e`", u, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("local stack not ready: %s answered %s", u, resp.Status)
		}
	}
	c, err := net.DialTimeout("tcp", collectorOTLP, 3*time.Second)
	if err != nil {
		return fmt.Errorf("collector not listening on %s (%v): run `make stack-up` first", collectorOTLP, err)
	}
	return c.Close()
}

// randomHex returns n random bytes as lowercase hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// seen returns nil when ok holds and otherwise what was seen, for the
// report of a testkit.Eventually that times out.
func seen(ok bool, format string, args ...any) error {
	if ok {
		return nil
	}
	return fmt.Errorf(format, args...)
}

// sidecar is a running eventbus-sidecar process.
type sidecar struct {
	*testkit.Sidecar
	socket   string
	admin    string // http://host:port
	instance string // service.instance.id, the Prometheus instance label
	started  time.Time
}

// sidecarOptions shape a test's sidecar.
type sidecarOptions struct {
	// queues is the YAML queues list; the default is small queues with
	// short timeouts so that waits, drops and timeouts happen fast.
	queues string
	// telemetry is the YAML telemetry section body.
	telemetry string
	// env adds environment variables (OTEL_* and the like).
	env []string
}

const smallQueues = `
  - {name: data, capacity: 4, policy: drop, timeout: 150ms}
  - {name: signal, capacity: 4, policy: fail, timeout: 150ms}
  - {name: order, capacity: 4, policy: block}
  - {name: ticks, capacity: 1, policy: drop_oldest}
`

// startSidecar runs the sidecar binary with a config exporting to the local
// collector and stops it (SIGTERM) at the end of the test.
func startSidecar(t *testing.T, o sidecarOptions) *sidecar {
	t.Helper()
	if o.queues == "" {
		o.queues = smallQueues
	}
	if o.telemetry == "" {
		o.telemetry = "  otlp_endpoint: http://" + collectorOTLP + "\n  metric_interval: 1s\n"
	}
	instance := "e2e-" + t.Name() + "-" + randomHex(4)
	started := time.Now()
	ts := testkit.StartSidecar(t, testkit.SidecarConfig{
		Binary: sidecarBin,
		Config: fmt.Sprintf("log_level: info\ndrain_timeout: 2s\nqueues:%s\ntelemetry:\n%s", o.queues, o.telemetry),
		Env: append([]string{
			"OTEL_RESOURCE_ATTRIBUTES=service.instance.id=" + url.PathEscape(instance),
			"OTEL_BSP_SCHEDULE_DELAY=100",
		}, o.env...),
	})
	return &sidecar{Sidecar: ts, socket: ts.Socket, admin: "http://" + ts.AdminAddr, instance: instance, started: started}
}

// rssBytes is the sidecar's resident memory now.
func (s *sidecar) rssBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.Pid()))
	if err != nil {
		t.Fatalf("reading sidecar memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// adminMetric sums the samples of a metric on the sidecar's own /metrics
// whose labels contain every one of match (e.g. `reason="queue_full"`).
func (s *sidecar) adminMetric(t *testing.T, name string, match ...string) float64 {
	t.Helper()
	code, body, err := httpGet(s.admin + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// newHTTPClient does not keep connections alive, so no transport
// goroutine outlives a request (goleak checks).
func newHTTPClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

func httpGet(u string) (int, string, error) {
	resp, err := newHTTPClient().Get(u)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// frame is one line from the sidecar: a reply or a delivery.
type frame struct {
	ID          *int64          `json:"id"`
	Op          string          `json:"op"`
	Status      string          `json:"status"`
	Error       string          `json:"error"`
	Queue       string          `json:"queue"`
	Seq         uint64          `json:"seq"`
	Type        string          `json:"type"`
	Payload     json.RawMessage `json:"payload"`
	Traceparent string          `json:"traceparent"`
}

// client speaks the NDJSON protocol over one connection. Replies and
// deliveries are read by one goroutine that ends when the client closes.
type client struct {
	t          *testing.T
	conn       net.Conn
	wmu        sync.Mutex
	nextID     int64
	replies    chan frame
	deliveries chan frame
	pending    map[int64]frame
	done       chan struct{}
}

func dial(t *testing.T, s *sidecar) *client {
	t.Helper()
	conn, err := net.Dial("unix", s.socket)
	if err != nil {
		t.Fatalf("connecting to %s: %v", s.socket, err)
	}
	c := &client{t: t, conn: conn, replies: make(chan frame, 65536), deliveries: make(chan frame, 65536),
		pending: map[int64]frame{}, done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	return c
}

func (c *client) read() {
	defer close(c.done)
	defer close(c.replies)
	sc := bufio.NewScanner(c.conn)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() {
		var f frame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			c.t.Errorf("undecodable frame %q: %v", sc.Bytes(), err)
			return
		}
		if f.Op == "deliver" {
			c.deliveries <- f
		} else {
			c.replies <- f
		}
	}
}

func (c *client) close() {
	_ = c.conn.Close()
	<-c.done
}

// send writes one request with a fresh id and returns the id.
func (c *client) send(req map[string]any) int64 {
	c.t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nextID++
	req["id"] = c.nextID
	b, err := json.Marshal(req)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		c.t.Fatalf("writing %s: %v", b, err)
	}
	return c.nextID
}

// publish sends a publish; traceparent may be empty.
func (c *client) publish(queue, typ, traceparent string) int64 {
	req := map[string]any{"op": "publish", "queue": queue, "type": typ, "payload": map[string]any{"n": c.nextID + 1}}
	if traceparent != "" {
		req["traceparent"] = traceparent
	}
	return c.send(req)
}

// reply waits for the reply to id. Not safe for concurrent use.
func (c *client) reply(id int64, within time.Duration) frame {
	c.t.Helper()
	if f, ok := c.pending[id]; ok {
		delete(c.pending, id)
		return f
	}
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case f, ok := <-c.replies:
			if !ok {
				c.t.Fatalf("connection closed before the reply to %d", id)
			}
			if f.ID != nil && *f.ID == id {
				return f
			}
			if f.ID != nil {
				c.pending[*f.ID] = f
			}
		case <-timer.C:
			c.t.Fatalf("no reply to request %d within %v", id, within)
		}
	}
}

// call sends req and waits for its reply.
func (c *client) call(req map[string]any) frame {
	c.t.Helper()
	return c.reply(c.send(req), 10*time.Second)
}

// delivery waits for the next delivery.
func (c *client) delivery(within time.Duration) frame {
	c.t.Helper()
	select {
	case f := <-c.deliveries:
		return f
	case <-time.After(within):
		c.t.Fatalf("no delivery within %v", within)
		return frame{}
	}
}

// prometheus queries Prometheus's HTTP API and returns the samples.
func prometheus(query string) ([]promSample, error) {
	code, body, err := httpGet(prometheusAPI + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("prometheus %d: %s", code, body)
	}
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return nil, fmt.Errorf("decoding %q: %w", body, err)
	}
	out := make([]promSample, 0, len(r.Data.Result))
	for _, res := range r.Data.Result {
		s, _ := res.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("sample value %v: %w", res.Value, err)
		}
		out = append(out, promSample{Labels: res.Metric, Value: v})
	}
	return out, nil
}

type promSample struct {
	Labels map[string]string
	Value  float64
}

// jaegerTrace is Jaeger's /api/traces/<id> JSON (one trace).
type jaegerTrace struct {
	TraceID string       `json:"traceID"`
	Spans   []jaegerSpan `json:"spans"`
}

type jaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Type  string `json:"type"`
		Value any    `json:"value"`
	} `json:"tags"`
	ProcessID string `json:"processID"`
}

// tag returns a span tag's value as a string ("" when absent).
func (s jaegerSpan) tag(key string) string {
	for _, tg := range s.Tags {
		if tg.Key == key {
			return fmt.Sprint(tg.Value)
		}
	}
	return ""
}

func (s jaegerSpan) parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// jaeger fetches a trace from Jaeger's HTTP API.
func jaeger(traceID string) (*jaegerTrace, error) {
	code, body, err := httpGet(jaegerAPI + "/api/traces/" + traceID)
	if err != nil {
		return nil, err
	}
	if code == http.StatusNotFound {
		return nil, errors.New("trace not found (yet)")
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("jaeger %d: %s", code, tail(body, 5))
	}
	var r struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := json.NewDecoder(bytes.NewReader([]byte(body))).Decode(&r); err != nil {
		return nil, fmt.Errorf("decoding jaeger reply: %w", err)
	}
	if len(r.Data) == 0 {
		return nil, errors.New("trace not found (yet)")
	}
	return &r.Data[0], nil
}
