package prometheus

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// promServer is a real Prometheus (Debian's prometheus package, installed
// with promtool by install.sh) scraping one sidecar with alerts.yml loaded.
type promServer struct {
	base   string
	client *http.Client
}

// startPrometheus runs Prometheus on a free loopback port, scraping the
// sidecar's admin address every second as job "eventbus-sidecar" (the job
// the rules' up and absent selectors expect) and evaluating the rules every
// second.
func startPrometheus(t *testing.T, target string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not found (deploy/prometheus/install.sh installs it with promtool): %v", err)
	}
	rules, err := filepath.Abs(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: eventbus-sidecar
    static_configs:
      - targets: ['%s']
`, rules, target)
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &promServer{
		base:   "http://" + testkit.FreeAddr(t),
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}},
	}
	t.Cleanup(p.client.CloseIdleConnections)
	cmd := exec.Command(bin,
		"--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+strings.TrimPrefix(p.base, "http://"),
		"--log.level=warn",
	)
	proc := startProcess(t, "prometheus", cmd)
	testkit.Eventually(t, "prometheus to be ready", func() error {
		if err := proc.earlyExit(); err != nil {
			return err
		}
		resp, err := p.client.Get(p.base + "/-/ready")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %s", resp.Status)
		}
		return nil
	}, testkit.Within(30*time.Second))
	return p
}

// apiGet calls a Prometheus HTTP API endpoint and decodes its data field.
func (p *promServer) apiGet(path string, params url.Values, data any) error {
	resp, err := p.client.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s %v: %s", path, params, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}

// query runs an instant query and returns the number of result series.
func (p *promServer) query(expr string) (int, error) {
	var data struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	}
	if err := p.apiGet("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return 0, err
	}
	return len(data.Result), nil
}

// waitForSeries waits until expr returns at least one series.
func (p *promServer) waitForSeries(t *testing.T, expr string) {
	t.Helper()
	testkit.Eventually(t, "prometheus to return "+expr, func() error {
		n, err := p.query(expr)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%s returned nothing", expr)
		}
		return nil
	}, testkit.Within(30*time.Second))
}

// checkRulesHealthy waits until every rule of alerts.yml is loaded and has
// been evaluated against the live series, and fails on any evaluation
// error (say a many-to-many match that promtool's synthetic series do not
// show).
func (p *promServer) checkRulesHealthy(t *testing.T) {
	t.Helper()
	want := map[string]bool{}
	for _, r := range loadAlerts(t) {
		want[r.Alert] = true
	}
	testkit.Eventually(t, "prometheus to evaluate every rule", func() error {
		var data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := p.apiGet("/api/v1/rules", url.Values{}, &data); err != nil {
			return err
		}
		seen := map[string]bool{}
		var pending []string
		for _, g := range data.Groups {
			for _, r := range g.Rules {
				seen[r.Name] = true
				switch r.Health {
				case "ok":
				case "err":
					t.Errorf("rule %s fails to evaluate on live data: %s", r.Name, r.LastError)
				default:
					pending = append(pending, r.Name+" ("+r.Health+")")
				}
			}
		}
		for name := range want {
			if !seen[name] {
				pending = append(pending, name+" (not loaded)")
			}
		}
		if len(pending) > 0 {
			return fmt.Errorf("rules not evaluated yet: %s", strings.Join(pending, ", "))
		}
		return nil
	}, testkit.Within(30*time.Second))
}

// checkQueriesReturnData runs every dashboard query (variables expanded as
// "all") and requires data: every panel must show something for a sidecar
// that has had traffic. Rate windows need two scrapes, hence the polling.
func (p *promServer) checkQueriesReturnData(t *testing.T) {
	t.Helper()
	for _, q := range dashboardQueries(t, loadDashboard(t)) {
		// A subtest each, so that one query without data does not hide
		// the others.
		t.Run(q.where, func(t *testing.T) {
			testkit.Eventually(t, "data for the dashboard query "+q.expr, func() error {
				n, err := p.query(q.expr)
				if err != nil {
					return err
				}
				if n == 0 {
					return fmt.Errorf("%s: %s returned no series", q.where, q.expr)
				}
				return nil
			}, testkit.Within(30*time.Second))
		})
	}
}

// waitForAlert waits until the named alert is in state (pending or firing)
// with the given labels.
func (p *promServer) waitForAlert(t *testing.T, name, state string, labels map[string]string) {
	t.Helper()
	// A subtest, so that one alert that never comes does not hide the
	// others.
	t.Run(name+" "+state, func(t *testing.T) {
		p.awaitAlert(t, name, state, labels)
	})
}

// awaitAlert is waitForAlert's wait, failing only its own subtest.
func (p *promServer) awaitAlert(t *testing.T, name, state string, labels map[string]string) {
	// Generous: a failed OTLP export is only counted once the exporter's own
	// timeout (about 10s) has passed.
	testkit.Eventually(t, "alert "+name+" to be "+state, func() error {
		var data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := p.apiGet("/api/v1/alerts", url.Values{}, &data); err != nil {
			return err
		}
		var seen []string
		for _, a := range data.Alerts {
			seen = append(seen, fmt.Sprintf("%s %v", a.State, a.Labels))
			if a.Labels["alertname"] != name || a.State != state {
				continue
			}
			match := true
			for k, v := range labels {
				if a.Labels[k] != v {
					match = false
				}
			}
			if match {
				return nil
			}
		}
		return fmt.Errorf("alert %s %v not %s; alerts: %v", name, labels, state, seen)
	}, testkit.Within(60*time.Second))
}
