//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
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
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The local stack's endpoints (TEAM.md, deploy/stack).
const (
	collectorOTLP = "127.0.0.1:4317"
	jaegerAPI     = "http://127.0.0.1:16686"
	prometheusAPI = "http://127.0.0.1:9090"
)

var (
	sidecarBin string // built by TestMain
	buildDir   string
)

// repoRoot is the module root, two levels above this file.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// buildSidecar compiles the sidecar under test once, so every test runs
// the current code as a real process.
func buildSidecar() error {
	if bin := os.Getenv("E2E_SIDECAR_BIN"); bin != "" {
		sidecarBin = bin
		return nil
	}
	dir, err := os.MkdirTemp("", "eventbus-e2e-")
	if err != nil {
		return err
	}
	buildDir = dir
	sidecarBin = filepath.Join(dir, "eventbus-sidecar")
	cmd := exec.Command("go", "build", "-o", sidecarBin, ".")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the sidecar: %w\n%s", err, out)
	}
	return nil
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

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// poll runs cond until it reports done or within passes; cond's message
// says what was seen last, for the failure.
func poll(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if msg != "" {
			last = msg
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last seen: %s", within, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sidecar is a running eventbus-sidecar process.
type sidecar struct {
	cmd      *exec.Cmd
	socket   string
	admin    string // http://host:port
	instance string // service.instance.id, the Prometheus instance label
	logPath  string
	started  time.Time
	exited   chan struct{}
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
	// Unix socket paths are limited to 108 bytes: keep it short.
	dir, err := os.MkdirTemp("", "e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s := &sidecar{
		socket:   filepath.Join(dir, "s.sock"),
		instance: "e2e-" + t.Name() + "-" + randomHex(4),
		logPath:  filepath.Join(dir, "sidecar.log"),
		exited:   make(chan struct{}),
	}
	adminAddr := freeAddr(t)
	s.admin = "http://" + adminAddr
	cfg := fmt.Sprintf("socket: %s\nadmin_addr: %s\nlog_level: info\ndrain_timeout: 2s\nqueues:%s\ntelemetry:\n%s",
		s.socket, adminAddr, o.queues, o.telemetry)
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(sidecarBin, "serve", "--config", cfgPath)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") && !strings.HasPrefix(kv, "EVENTBUS_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"OTEL_RESOURCE_ATTRIBUTES=service.instance.id="+url.PathEscape(s.instance),
		"OTEL_BSP_SCHEDULE_DELAY=100")
	s.cmd.Env = append(env, o.env...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	// A test binary killed by its timeout takes its sidecars with it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", sidecarBin, err)
	}
	s.started = time.Now()
	go func() {
		_ = s.cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(s.logPath)
			t.Logf("sidecar log (%s):\n%s", s.instance, tail(string(b), 60))
		}
	})
	poll(t, 20*time.Second, "the sidecar to be ready", func() (bool, string) {
		select {
		case <-s.exited:
			b, _ := os.ReadFile(s.logPath)
			t.Fatalf("sidecar exited during start-up:\n%s", b)
		default:
		}
		code, body, err := httpGet(s.admin + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, body
	})
	return s
}

// stop sends SIGTERM and waits for the drain; SIGKILL after 20 s.
func (s *sidecar) stop(t *testing.T) {
	t.Helper()
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		t.Errorf("sidecar ignored SIGTERM for 20s; killing it")
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// rssBytes is the sidecar's resident memory now.
func (s *sidecar) rssBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
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
