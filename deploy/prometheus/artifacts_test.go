package prometheus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// runbookBase is where every alert's runbook_url must point; the fragment is
// the GitHub anchor of the alert's section in docs/runbook.md.
const runbookBase = "https://github.com/eventbus-sidecar/eventbus-sidecar/blob/main/docs/runbook.md"

// Files under test, relative to this package's directory.
const (
	alertsFile      = "alerts.yml"
	alertTestsFile  = "alerts_test.yml"
	runbookFile     = "../../docs/runbook.md"
	dashboardFile   = "../grafana/dashboards/eventbus-sidecar.json"
	datasourceFile  = "../grafana/provisioning/datasources/prometheus.yaml"
	dashProviderDir = "../grafana/provisioning/dashboards"
)

// syntheticMetrics are names Prometheus itself produces for every scrape
// target; no sidecar exports them.
var syntheticMetrics = map[string]bool{"up": true}

type ruleFile struct {
	Groups []ruleGroup `yaml:"groups"`
}

type ruleGroup struct {
	Name     string `yaml:"name"`
	Interval string `yaml:"interval"`
	Rules    []rule `yaml:"rules"`
}

type rule struct {
	Alert         string            `yaml:"alert"`
	Record        string            `yaml:"record"`
	Expr          string            `yaml:"expr"`
	For           string            `yaml:"for"`
	KeepFiringFor string            `yaml:"keep_firing_for"`
	Labels        map[string]string `yaml:"labels"`
	Annotations   map[string]string `yaml:"annotations"`
}

type ruleTestFile struct {
	RuleFiles          []string   `yaml:"rule_files"`
	EvaluationInterval string     `yaml:"evaluation_interval"`
	GroupEvalOrder     []string   `yaml:"group_eval_order"`
	Tests              []ruleTest `yaml:"tests"`
}

type ruleTest struct {
	Name        string `yaml:"name"`
	Interval    string `yaml:"interval"`
	InputSeries []struct {
		Series string `yaml:"series"`
		Values string `yaml:"values"`
	} `yaml:"input_series"`
	AlertRuleTests []struct {
		EvalTime  string `yaml:"eval_time"`
		AlertName string `yaml:"alertname"`
		ExpAlerts []struct {
			ExpLabels      map[string]string `yaml:"exp_labels"`
			ExpAnnotations map[string]string `yaml:"exp_annotations"`
		} `yaml:"exp_alerts"`
	} `yaml:"alert_rule_test"`
	PromQLExprTests []any `yaml:"promql_expr_test"`
}

// decodeYAMLStrict decodes path into out, refusing unknown keys so that a
// misspelt field (say "anotations") fails here instead of being ignored.
func decodeYAMLStrict(t *testing.T, path string, out any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
}

func loadAlerts(t *testing.T) []rule {
	t.Helper()
	var f ruleFile
	decodeYAMLStrict(t, alertsFile, &f)
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("%s has no rules", alertsFile)
	}
	return rules
}

// promqlParser parses with the default options, as Prometheus does without
// feature flags, so an expression that needs a flag fails here.
var promqlParser = parser.NewParser(parser.Options{})

// grafanaVar matches Grafana's $name, ${name} and ${name:format} forms.
var grafanaVar = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)`)

// expandGrafanaVars replaces dashboard variables with values that keep the
// query valid PromQL: interval variables become a duration, everything else
// (label value variables, used inside =~ matchers) a match-all regex.
func expandGrafanaVars(expr string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[2]
		if strings.HasPrefix(name, "__") {
			return "5m"
		}
		return ".*"
	})
}

// selectorUse is one vector selector of an expression.
type selectorUse struct {
	name     string
	matchers []*labels.Matcher // without the __name__ matcher
}

// groupingUse is one aggregation's by (...) labels and the metric names
// selected under it.
type groupingUse struct {
	labels []string
	names  []string
}

// exprUses holds what an expression needs from the metrics it reads.
type exprUses struct {
	selectors []selectorUse
	groupings []groupingUse
}

// analyzeExpr parses expr and returns its selectors and by (...) groupings.
// A selector without a fixed name (only a regex on __name__, or none) is an
// error: its names could not be checked against the sidecar.
func analyzeExpr(expr string) (exprUses, error) {
	node, err := promqlParser.ParseExpr(expr)
	if err != nil {
		return exprUses{}, fmt.Errorf("parse %q: %w", expr, err)
	}
	var uses exprUses
	var selErr error
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			sel := selectorUse{name: n.Name}
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName {
					if m.Type == labels.MatchEqual {
						sel.name = m.Value
					}
					continue
				}
				sel.matchers = append(sel.matchers, m)
			}
			if sel.name == "" {
				selErr = errors.Join(selErr, fmt.Errorf("selector %s in %q has no fixed metric name", n, expr))
				return nil
			}
			uses.selectors = append(uses.selectors, sel)
		case *parser.AggregateExpr:
			if n.Without || len(n.Grouping) == 0 {
				return nil
			}
			inner, err := analyzeExpr(n.Expr.String())
			if err != nil {
				selErr = errors.Join(selErr, err)
				return nil
			}
			g := groupingUse{labels: n.Grouping}
			for _, s := range inner.selectors {
				g.names = append(g.names, s.name)
			}
			uses.groupings = append(uses.groupings, g)
		}
		return nil
	})
	if selErr != nil {
		return exprUses{}, selErr
	}
	return uses, nil
}

// metricNames returns the metric names an expression selects.
func metricNames(expr string) ([]string, error) {
	uses, err := analyzeExpr(expr)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(uses.selectors))
	for i, s := range uses.selectors {
		names[i] = s.name
	}
	return names, nil
}

// labelValuesQuery matches Grafana's label_values(selector, label) and
// label_values(label) variable queries.
var labelValuesQuery = regexp.MustCompile(`^label_values\((?:(.*),\s*)?(\w+)\)$`)

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
			Current    struct {
				Value any `json:"value"`
			} `json:"current"`
		} `json:"list"`
	} `json:"templating"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatalf("read dashboard: %v", err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("decode %s: %v", dashboardFile, err)
	}
	return d
}

// allPanels flattens rows (collapsed rows nest their panels).
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// dashboardQuery is one PromQL query of the dashboard and where it is.
type dashboardQuery struct {
	where string
	expr  string
}

func dashboardQueries(t *testing.T, d dashboard) []dashboardQuery {
	t.Helper()
	var qs []dashboardQuery
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			qs = append(qs, dashboardQuery{where: fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), expr: expandGrafanaVars(tg.Expr)})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			// Older dashboards store the query as a plain string.
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Fatalf("variable %q: query is neither an object nor a string: %s", v.Name, v.Query)
			}
		}
		m := labelValuesQuery.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("variable %q: query %q is not label_values(selector, label)", v.Name, q.Query)
		}
		if m[1] == "" {
			t.Fatalf("variable %q: label_values without a metric selector scans every series; name the metric", v.Name)
		}
		qs = append(qs, dashboardQuery{where: fmt.Sprintf("variable %q", v.Name), expr: expandGrafanaVars(m[1])})
	}
	return qs
}

// allQueries returns every PromQL expression of the rules and the
// dashboard, with where it is.
func allQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	var qs []dashboardQuery
	for _, r := range loadAlerts(t) {
		qs = append(qs, dashboardQuery{where: "alert " + r.Alert, expr: r.Expr})
	}
	for _, q := range dashboardQueries(t, loadDashboard(t)) {
		q.where = "dashboard " + q.where
		qs = append(qs, q)
	}
	return qs
}

// usedMetricNames collects every metric name of the rules and the
// dashboard, with where each is used.
func usedMetricNames(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	for _, q := range allQueries(t) {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Fatalf("%s: %v", q.where, err)
		}
		for _, n := range names {
			used[n] = append(used[n], q.where)
		}
	}
	return used
}

var alertName = regexp.MustCompile(`^EventBus[A-Z][A-Za-z]+$`)

func TestAlertRulesFollowMixinStyle(t *testing.T) {
	rules := loadAlerts(t)
	seen := map[string]bool{}
	for _, r := range rules {
		t.Run(r.Alert, func(t *testing.T) {
			if r.Record != "" {
				t.Fatalf("recording rule %q in %s: keep recording rules in their own file", r.Record, alertsFile)
			}
			if !alertName.MatchString(r.Alert) {
				t.Errorf("alert name %q: want CamelCase with the EventBus prefix", r.Alert)
			}
			if seen[r.Alert] {
				t.Errorf("alert %q defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
				t.Errorf("severity %q: want warning or critical", sev)
			}
			for _, key := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[key]) == "" {
					t.Errorf("annotation %s missing", key)
				}
			}
			if want := runbookBase + "#" + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("runbook_url = %q, want %q", r.Annotations["runbook_url"], want)
			}
			if _, err := metricNames(r.Expr); err != nil {
				t.Errorf("expr: %v", err)
			}
		})
	}
}

func TestEveryAlertHasFiringAndSilentCases(t *testing.T) {
	var tf ruleTestFile
	decodeYAMLStrict(t, alertTestsFile, &tf)
	if !slices.Equal(tf.RuleFiles, []string{alertsFile}) {
		t.Fatalf("%s tests rule_files %v, want [%s]", alertTestsFile, tf.RuleFiles, alertsFile)
	}
	firing, silent := map[string]int{}, map[string]int{}
	for _, tc := range tf.Tests {
		for _, at := range tc.AlertRuleTests {
			if len(at.ExpAlerts) > 0 {
				firing[at.AlertName]++
				for _, ea := range at.ExpAlerts {
					// A firing case must pin the annotations, so that the
					// templates (and the runbook link) are tested too.
					if ea.ExpAnnotations["runbook_url"] == "" || ea.ExpAnnotations["description"] == "" {
						t.Errorf("test %q: firing case of %s does not pin its annotations", tc.Name, at.AlertName)
					}
				}
			} else {
				silent[at.AlertName]++
			}
		}
	}
	alerts := map[string]bool{}
	for _, r := range loadAlerts(t) {
		alerts[r.Alert] = true
		if firing[r.Alert] == 0 {
			t.Errorf("alert %s has no promtool case that fires", r.Alert)
		}
		if silent[r.Alert] == 0 {
			t.Errorf("alert %s has no promtool case that stays silent", r.Alert)
		}
	}
	for name := range firing {
		if !alerts[name] {
			t.Errorf("%s tests unknown alert %s", alertTestsFile, name)
		}
	}
	for name := range silent {
		if !alerts[name] {
			t.Errorf("%s tests unknown alert %s", alertTestsFile, name)
		}
	}
}

// githubAnchor is the fragment GitHub gives a Markdown heading: lower case,
// punctuation other than '-' and '_' removed, spaces turned into '-'.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

func TestGithubAnchor(t *testing.T) {
	tests := []struct{ heading, want string }{
		{"EventBusDataDropsSustained", "eventbusdatadropssustained"},
		{"Tools used below", "tools-used-below"},
		{"What: to do?", "what-to-do"},
	}
	for _, tc := range tests {
		if got := githubAnchor(tc.heading); got != tc.want {
			t.Errorf("githubAnchor(%q) = %q, want %q", tc.heading, got, tc.want)
		}
	}
}

// runbookSections returns the level-2 sections of the runbook by anchor.
func runbookSections(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(runbookFile)
	if err != nil {
		t.Fatalf("read runbook: %v", err)
	}
	sections := map[string]string{}
	var cur string
	var body strings.Builder
	flush := func() {
		if cur != "" {
			sections[cur] = body.String()
		}
		body.Reset()
	}
	for _, line := range strings.Split(string(data), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			flush()
			cur = githubAnchor(h)
			continue
		}
		body.WriteString(line + "\n")
	}
	flush()
	return sections
}

func TestRunbookHasOneSectionPerAlert(t *testing.T) {
	sections := runbookSections(t)
	alerts := map[string]bool{}
	for _, r := range loadAlerts(t) {
		_, fragment, _ := strings.Cut(r.Annotations["runbook_url"], "#")
		alerts[fragment] = true
		body, ok := sections[fragment]
		if !ok {
			t.Errorf("alert %s: runbook has no section with anchor #%s", r.Alert, fragment)
			continue
		}
		for _, part := range []string{"**Meaning.**", "**Confirm.**", "**Do.**"} {
			if !strings.Contains(body, part) {
				t.Errorf("runbook section %s lacks %s", r.Alert, part)
			}
		}
		// Confirming needs the stats command, a metric, and a Jaeger search
		// or the sidecar's logs where traces cannot help.
		lower := strings.ToLower(body)
		for _, hints := range [][]string{{"stats"}, {"eventbus_", "up{"}, {"jaeger", "logs"}} {
			if !slices.ContainsFunc(hints, func(h string) bool { return strings.Contains(lower, h) }) {
				t.Errorf("runbook section %s mentions none of %q", r.Alert, hints)
			}
		}
	}
	for anchor := range sections {
		if strings.HasPrefix(anchor, "eventbus") && !alerts[anchor] {
			t.Errorf("runbook section #%s has no alert", anchor)
		}
	}
}

func TestDashboardQueriesParse(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Fatalf("dashboard needs a uid and a title (uid %q, title %q)", d.UID, d.Title)
	}
	ids := map[int]string{}
	for _, p := range allPanels(d.Panels) {
		if prev, ok := ids[p.ID]; ok {
			t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W <= 0 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
	}
	for _, q := range dashboardQueries(t, d) {
		if _, err := metricNames(q.expr); err != nil {
			t.Errorf("%s: %v", q.where, err)
		}
	}
}

func TestDashboardCoversTheIssue(t *testing.T) {
	used := map[string]bool{}
	quantiles := map[string]bool{}
	for _, q := range dashboardQueries(t, loadDashboard(t)) {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			used[n] = true
			if strings.Contains(q.expr, "histogram_quantile(") {
				quantiles[n] = true
			}
		}
	}
	for _, want := range []string{
		"eventbus_queue_depth", "eventbus_queue_capacity", // depth against capacity
		"eventbus_events_dropped_total",   // drops per second by reason
		"eventbus_events_published_total", // publish outcomes
		"eventbus_consumers", "eventbus_connections",
		"eventbus_telemetry_exports_failed_total", "eventbus_telemetry_spans_dropped_total", // telemetry loss
	} {
		if !used[want] {
			t.Errorf("dashboard never queries %s", want)
		}
	}
	for _, want := range []string{
		"eventbus_queue_wait_duration_seconds_bucket",   // wait time percentiles
		"eventbus_event_queued_duration_seconds_bucket", // time-in-queue percentiles
	} {
		if !quantiles[want] {
			t.Errorf("dashboard has no histogram_quantile over %s", want)
		}
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name      string         `yaml:"name"`
			UID       string         `yaml:"uid"`
			Type      string         `yaml:"type"`
			Access    string         `yaml:"access"`
			URL       string         `yaml:"url"`
			IsDefault bool           `yaml:"isDefault"`
			Editable  bool           `yaml:"editable"`
			JSONData  map[string]any `yaml:"jsonData"`
		} `yaml:"datasources"`
	}
	decodeYAMLStrict(t, datasourceFile, &ds)
	if ds.APIVersion != 1 || len(ds.Datasources) != 1 {
		t.Fatalf("datasource provisioning: apiVersion %d with %d data sources, want 1 and 1", ds.APIVersion, len(ds.Datasources))
	}
	src := ds.Datasources[0]
	if src.Type != "prometheus" || src.URL == "" {
		t.Errorf("data source %q: type %q url %q, want a prometheus URL", src.Name, src.Type, src.URL)
	}
	d := loadDashboard(t)
	var found bool
	for _, v := range d.Templating.List {
		if v.Name == "datasource" {
			found = true
			if v.Current.Value != src.UID {
				t.Errorf("dashboard's datasource variable defaults to %v, provisioning has uid %q", v.Current.Value, src.UID)
			}
		} else if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
			t.Errorf("variable %q: datasource %+v, want the ${datasource} variable", v.Name, v.Datasource)
		}
	}
	if !found {
		t.Error("dashboard has no datasource variable")
	}

	entries, err := os.ReadDir(dashProviderDir)
	if err != nil {
		t.Fatal(err)
	}
	var providers int
	for _, e := range entries {
		var p struct {
			APIVersion int `yaml:"apiVersion"`
			Providers  []struct {
				Name                  string `yaml:"name"`
				OrgID                 int    `yaml:"orgId"`
				Folder                string `yaml:"folder"`
				Type                  string `yaml:"type"`
				DisableDeletion       bool   `yaml:"disableDeletion"`
				AllowUIUpdates        bool   `yaml:"allowUiUpdates"`
				UpdateIntervalSeconds int    `yaml:"updateIntervalSeconds"`
				Options               struct {
					Path                      string `yaml:"path"`
					FoldersFromFilesStructure bool   `yaml:"foldersFromFilesStructure"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		decodeYAMLStrict(t, filepath.Join(dashProviderDir, e.Name()), &p)
		for _, pr := range p.Providers {
			providers++
			if pr.Type != "file" || !filepath.IsAbs(pr.Options.Path) {
				t.Errorf("provider %q: type %q path %q, want a file provider with an absolute path", pr.Name, pr.Type, pr.Options.Path)
			}
		}
	}
	if providers == 0 {
		t.Error("no dashboard provider provisioned")
	}
}

// TestMetricNamesRejectsUncheckableSelectors keeps metricNames honest: it
// must find every selector, including ones nested in functions, binary
// operators and subqueries, and refuse selectors it cannot name.
func TestMetricNamesRejectsUncheckableSelectors(t *testing.T) {
	tests := []struct {
		expr    string
		want    []string
		wantErr bool
	}{
		{expr: `sum by (queue) (rate(a_total{queue="x"}[5m])) / on (queue) b`, want: []string{"a_total", "b"}},
		{expr: `histogram_quantile(0.9, sum by (le) (rate(h_seconds_bucket[5m])))`, want: []string{"h_seconds_bucket"}},
		{expr: `max_over_time(g[10m:1m]) and absent(c)`, want: []string{"c", "g"}},
		{expr: `{__name__="named"}`, want: []string{"named"}},
		{expr: `{__name__=~"eventbus_.*"}`, wantErr: true},
		{expr: `sum(`, wantErr: true},
	}
	for _, tc := range tests {
		got, err := metricNames(tc.expr)
		if tc.wantErr {
			if err == nil {
				t.Errorf("metricNames(%q) = %v, want an error", tc.expr, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("metricNames(%q): %v", tc.expr, err)
			continue
		}
		sort.Strings(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %v, want %v", tc.expr, got, tc.want)
		}
	}
	if got := expandGrafanaVars(`rate(x{instance=~"$instance",q=~"${queue:regex}"}[$__rate_interval])`); got != `rate(x{instance=~".*",q=~".*"}[5m])` {
		t.Errorf("expandGrafanaVars = %s", got)
	}
}

func TestAnalyzeExprFindsMatchersAndGroupings(t *testing.T) {
	uses, err := analyzeExpr(`sum by (queue, reason) (rate(d_total{queue="data", reason=~"t.*"}[5m])) / on (queue) group_left max by (queue) (c)`)
	if err != nil {
		t.Fatal(err)
	}
	var sels []string
	for _, s := range uses.selectors {
		var ms []string
		for _, m := range s.matchers {
			ms = append(ms, m.String())
		}
		sels = append(sels, s.name+"{"+strings.Join(ms, ",")+"}")
	}
	sort.Strings(sels)
	if want := []string{`c{}`, `d_total{queue="data",reason=~"t.*"}`}; !slices.Equal(sels, want) {
		t.Errorf("selectors = %v, want %v", sels, want)
	}
	var groups []string
	for _, g := range uses.groupings {
		groups = append(groups, strings.Join(g.labels, ",")+" over "+strings.Join(g.names, ","))
	}
	sort.Strings(groups)
	if want := []string{"queue over c", "queue,reason over d_total"}; !slices.Equal(groups, want) {
		t.Errorf("groupings = %v, want %v", groups, want)
	}
}
