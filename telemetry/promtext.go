package telemetry

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// promContentType is the Prometheus text format, version 0.0.4, with the
// names already escaped to the classic character set.
const promContentType = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"

// promExposition serves what a metric reader collects in the Prometheus text
// format, named as the OpenTelemetry specification's Prometheus
// compatibility section says (unit suffixes, _total on counters, _ratio on
// unit-1 gauges, otel_scope_* labels, target_info for the resource), which
// is what the OpenTelemetry Go Prometheus exporter produces too, so the
// shipped alert rules and dashboards read the same series. It replaces that
// exporter and the Prometheus client library with a few hundred lines:
// together they were two of the sidecar's fourteen idle megabytes.
type promExposition struct {
	reader *sdkmetric.ManualReader // nil: telemetry is off, the page is empty
	logger *slog.Logger

	mu  sync.Mutex // one scrape at a time reuses the buffers below
	rm  metricdata.ResourceMetrics
	buf []byte
	gz  bytes.Buffer
	zw  *gzip.Writer
}

// newPromExposition returns the exposition and the reader to register with
// the meter provider; producers add metrics that are not the provider's
// own instruments.
func newPromExposition(logger *slog.Logger, producers ...sdkmetric.Producer) *promExposition {
	opts := make([]sdkmetric.ManualReaderOption, 0, len(producers))
	for _, p := range producers {
		opts = append(opts, sdkmetric.WithProducer(p))
	}
	return &promExposition{reader: sdkmetric.NewManualReader(opts...), logger: logger}
}

// ServeHTTP implements http.Handler.
func (e *promExposition) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.buf = e.buf[:0]
	if e.reader != nil {
		err := e.reader.Collect(r.Context(), &e.rm)
		switch {
		case errors.Is(err, sdkmetric.ErrReaderShutdown):
			// Shutting down: an empty page, as when telemetry is off.
		case err != nil:
			e.logger.Error("metrics handler: collect", "error", err)
			http.Error(w, "collecting metrics: "+err.Error(), http.StatusInternalServerError)
			return
		default:
			e.buf = appendPromText(e.buf, &e.rm, e.logger)
		}
		e.rm = metricdata.ResourceMetrics{} // let the collected data go
	}
	w.Header().Set("Content-Type", promContentType)
	body := e.buf
	if acceptsGzip(r.Header.Values("Accept-Encoding")) {
		e.gz.Reset()
		if e.zw == nil {
			e.zw = gzip.NewWriter(&e.gz)
		} else {
			e.zw.Reset(&e.gz)
		}
		_, _ = e.zw.Write(body) // writes to a bytes.Buffer do not fail
		_ = e.zw.Close()
		body = e.gz.Bytes()
		w.Header().Set("Content-Encoding", "gzip")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body) // a scraper that went away is not the sidecar's error
}

// acceptsGzip reports whether an Accept-Encoding header names gzip with a
// weight above zero.
func acceptsGzip(values []string) bool {
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			coding, params, _ := strings.Cut(part, ";")
			if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
				continue
			}
			q, ok := strings.CutPrefix(strings.TrimSpace(params), "q=")
			if !ok {
				return true
			}
			if w, err := strconv.ParseFloat(q, 64); err == nil && w > 0 {
				return true
			}
		}
	}
	return false
}

// promFamily is one metric name on the page: its series from every scope.
type promFamily struct {
	name, help, typ string
	series          []promSeries
}

// promSeries is one sample, or one histogram, with its labels sorted by name.
type promSeries struct {
	labels []promLabel
	value  float64
	hist   *metricdata.HistogramDataPoint[float64] // nil unless the family is a histogram
}

type promLabel struct{ name, value string }

// appendPromText appends rm in the text format: families sorted by name,
// series by their label values, as Prometheus's own client writes them.
func appendPromText(b []byte, rm *metricdata.ResourceMetrics, logger *slog.Logger) []byte {
	families := make(map[string]*promFamily)
	// The SDK collects scopes in no fixed order; sorting them makes the
	// first description and type of a name shared by scopes the same on
	// every scrape.
	slices.SortStableFunc(rm.ScopeMetrics, func(a, b metricdata.ScopeMetrics) int {
		return cmp.Or(strings.Compare(a.Scope.Name, b.Scope.Name), strings.Compare(a.Scope.Version, b.Scope.Version),
			strings.Compare(a.Scope.SchemaURL, b.Scope.SchemaURL))
	})
	for i := range rm.ScopeMetrics {
		sm := &rm.ScopeMetrics[i]
		scope := append([]promLabel{
			{"otel_scope_name", sm.Scope.Name},
			{"otel_scope_version", sm.Scope.Version},
			{"otel_scope_schema_url", sm.Scope.SchemaURL},
		}, scopeLabels(sm.Scope.Attributes)...)
		for _, m := range sm.Metrics {
			addPromMetric(families, m, scope, logger)
		}
	}
	if rm.Resource != nil {
		families["target_info"] = &promFamily{
			name: "target_info", help: "Target metadata", typ: "gauge",
			series: []promSeries{{labels: promLabels(rm.Resource.Set(), nil), value: 1}},
		}
	}
	names := make([]string, 0, len(families))
	for name := range families {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b = appendPromFamily(b, families[name])
	}
	return b
}

// addPromMetric adds m's data points to the family its name translates to.
// When scopes share a name, the first scope's type and description stay,
// as in the Prometheus exporter, and a metric of another type is left out.
func addPromMetric(families map[string]*promFamily, m metricdata.Metrics, scope []promLabel, logger *slog.Logger) {
	var typ string
	counter, unitGauge := false, false
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		typ, counter = sumType(d.IsMonotonic), d.IsMonotonic
	case metricdata.Sum[float64]:
		typ, counter = sumType(d.IsMonotonic), d.IsMonotonic
	case metricdata.Gauge[int64], metricdata.Gauge[float64]:
		typ, unitGauge = "gauge", m.Unit == "1"
	case metricdata.Histogram[int64], metricdata.Histogram[float64]:
		typ = "histogram"
	default:
		// Exponential histograms and summaries have no form in this text
		// format; the metric reader here never aggregates into them.
		logger.Warn("metrics handler: metric type not exposed", "metric", m.Name)
		return
	}
	name := promMetricName(m.Name, m.Unit, counter, unitGauge)
	if name == "" {
		logger.Warn("metrics handler: metric name has no valid character", "metric", m.Name)
		return
	}
	f := families[name]
	if f == nil {
		f = &promFamily{name: name, help: m.Description, typ: typ}
		families[name] = f
	} else if f.typ != typ {
		logger.Warn("metrics handler: metric type conflict, dropped", "metric", name, "kept", f.typ, "dropped", typ)
		return
	}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		f.series = appendPoints(f.series, d.DataPoints, scope)
	case metricdata.Sum[float64]:
		f.series = appendPoints(f.series, d.DataPoints, scope)
	case metricdata.Gauge[int64]:
		f.series = appendPoints(f.series, d.DataPoints, scope)
	case metricdata.Gauge[float64]:
		f.series = appendPoints(f.series, d.DataPoints, scope)
	case metricdata.Histogram[int64]:
		for _, dp := range d.DataPoints {
			h := &metricdata.HistogramDataPoint[float64]{
				Bounds: dp.Bounds, BucketCounts: dp.BucketCounts, Count: dp.Count, Sum: float64(dp.Sum),
			}
			f.series = append(f.series, promSeries{labels: promLabels(&dp.Attributes, scope), hist: h})
		}
	case metricdata.Histogram[float64]:
		for i := range d.DataPoints {
			dp := &d.DataPoints[i]
			f.series = append(f.series, promSeries{labels: promLabels(&dp.Attributes, scope), hist: dp})
		}
	}
}

func sumType(monotonic bool) string {
	if monotonic {
		return "counter"
	}
	return "gauge"
}

func appendPoints[N int64 | float64](series []promSeries, points []metricdata.DataPoint[N], scope []promLabel) []promSeries {
	for i := range points {
		series = append(series, promSeries{labels: promLabels(&points[i].Attributes, scope), value: float64(points[i].Value)})
	}
	return series
}

// promLabels turns attributes into labels, adds extra, and sorts them by
// name. Attribute keys that translate to one label name share it, their
// values sorted and joined with ";", as the specification says; a key with
// no valid character is left out.
func promLabels(attrs *attribute.Set, extra []promLabel) []promLabel {
	labels := make([]promLabel, 0, attrs.Len()+len(extra))
	iter := attrs.Iter()
	for iter.Next() {
		kv := iter.Attribute()
		labels = append(labels, promLabel{promLabelName(string(kv.Key)), kv.Value.String()})
	}
	labels = mergeLabels(labels)
	labels = append(labels, extra...)
	slices.SortStableFunc(labels, func(a, b promLabel) int { return strings.Compare(a.name, b.name) })
	return labels
}

// scopeLabels are an instrumentation scope's attributes as otel_scope_*
// labels, leaving out those that would shadow the scope's name, version and
// schema URL.
func scopeLabels(attrs attribute.Set) []promLabel {
	var labels []promLabel
	iter := attrs.Iter()
	for iter.Next() {
		kv := iter.Attribute()
		switch name := promLabelName(string(kv.Key)); name {
		case "name", "version", "schema_url":
		default:
			labels = append(labels, promLabel{name, kv.Value.String()})
		}
	}
	labels = mergeLabels(labels)
	for i := range labels {
		labels[i].name = "otel_scope_" + labels[i].name
	}
	return labels
}

// mergeLabels drops labels whose name has no valid character and joins the
// values of labels that share a name, sorted, with ";".
func mergeLabels(labels []promLabel) []promLabel {
	labels = slices.DeleteFunc(labels, func(l promLabel) bool { return strings.Trim(l.name, "_") == "" })
	slices.SortFunc(labels, func(a, b promLabel) int {
		return cmp.Or(strings.Compare(a.name, b.name), strings.Compare(a.value, b.value))
	})
	out := labels[:0]
	for _, l := range labels {
		if n := len(out); n > 0 && out[n-1].name == l.name {
			out[n-1].value += ";" + l.value
			continue
		}
		out = append(out, l)
	}
	return out
}

// promLabelName maps an attribute key to a label name: runs of characters
// outside [a-zA-Z0-9] become one underscore, a leading digit gets "key_",
// and a key wrapped in double underscores keeps them.
func promLabelName(key string) string {
	if key == "" {
		return ""
	}
	inner, reserved := key, false
	if len(key) >= 4 && strings.HasPrefix(key, "__") && strings.HasSuffix(key, "__") {
		inner, reserved = key[2:len(key)-2], true
	}
	var sb strings.Builder
	sb.Grow(len(key) + 4)
	underscore := false
	for _, r := range inner {
		if isAlnum(r) {
			sb.WriteRune(r)
			underscore = false
		} else if !underscore {
			sb.WriteByte('_')
			underscore = true
		}
	}
	name := sb.String()
	if reserved {
		name = "__" + name + "__"
	}
	if name != "" && unicode.IsDigit(rune(name[0])) {
		name = "key_" + name
	}
	return name
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

func isMetricChar(r rune) bool { return isAlnum(r) || r == ':' }

// promUnits are the specification's names for UCUM units in metric names.
var promUnits = map[string]string{
	"d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
	"By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes", "TiBy": "tibibytes",
	"KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
	"m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams",
	"Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}

// promPerUnits name the denominator of a rate unit ("By/s": "bytes_per_second").
var promPerUnits = map[string]string{"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}

// promMetricName translates an instrument's name and unit to a Prometheus
// metric name: the name's runs of characters outside [a-zA-Z0-9:] become
// one underscore, the unit is appended unless the name already has it (an
// annotation such as "{event}" is not a unit), counters end in _total and
// gauges of unit 1 in _ratio. It returns "" for a name with nothing left.
func promMetricName(name, unit string, counter, unitGauge bool) string {
	tokens := strings.FieldsFunc(name, func(r rune) bool { return !isMetricChar(r) })
	main, per := unitSuffixes(unit)
	main, per = cleanUnit(main), cleanUnit(per)
	if slices.Contains(tokens, main) {
		main = ""
	}
	if per == "per_" {
		per = ""
	} else {
		per = strings.TrimSuffix(per, "_")
		if slices.Contains(tokens, per) {
			per = ""
		}
	}
	if per != "" {
		main = strings.TrimSuffix(main, "_")
	}
	for _, s := range []string{main, per} {
		if s != "" {
			tokens = append(tokens, s)
		}
	}
	if counter {
		tokens = append(slices.DeleteFunc(tokens, func(t string) bool { return t == "total" }), "total")
	}
	if unitGauge {
		tokens = append(slices.DeleteFunc(tokens, func(t string) bool { return t == "ratio" }), "ratio")
	}
	out := strings.Join(tokens, "_")
	if out != "" && unicode.IsDigit(rune(out[0])) {
		out = "_" + out
	}
	if strings.Trim(out, "_") == "" {
		return ""
	}
	return out
}

// unitSuffixes splits a unit at "/" and names both parts; the second comes
// back as "per_<name>".
func unitSuffixes(unit string) (main, per string) {
	m, p, hasPer := strings.Cut(unit, "/")
	if m = strings.TrimSpace(m); m != "" && !strings.ContainsAny(m, "{}") {
		main = m
		if name, ok := promUnits[m]; ok {
			main = name
		}
	}
	if p = strings.TrimSpace(p); hasPer && p != "" && !strings.ContainsAny(p, "{}") {
		per = p
		if name, ok := promPerUnits[p]; ok {
			per = name
		}
		if per != "" {
			per = "per_" + per
		}
	}
	return main, per
}

// cleanUnit makes a unit name fit a metric name: invalid characters become
// underscores, runs of them one, and a leading one goes.
func cleanUnit(unit string) string {
	var sb strings.Builder
	underscore := false
	for _, r := range unit {
		if !isMetricChar(r) {
			r = '_'
		}
		if r == '_' && underscore {
			continue
		}
		underscore = r == '_'
		sb.WriteRune(r)
	}
	return strings.TrimPrefix(sb.String(), "_")
}

func appendPromFamily(b []byte, f *promFamily) []byte {
	if len(f.series) == 0 {
		return b
	}
	slices.SortStableFunc(f.series, func(x, y promSeries) int {
		if c := cmp.Compare(len(x.labels), len(y.labels)); c != 0 {
			return c
		}
		for i := range x.labels {
			if c := strings.Compare(x.labels[i].value, y.labels[i].value); c != 0 {
				return c
			}
		}
		return 0
	})
	b = append(b, "# HELP "...)
	b = append(b, f.name...)
	b = append(b, ' ')
	b = appendEscaped(b, f.help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, f.name...)
	b = append(b, ' ')
	b = append(b, f.typ...)
	b = append(b, '\n')
	for i := range f.series {
		s := &f.series[i]
		if s.hist == nil {
			b = appendSample(b, f.name, "", s.labels, "", 0, s.value)
			continue
		}
		var n uint64
		for j, bound := range s.hist.Bounds {
			if j < len(s.hist.BucketCounts) {
				n += s.hist.BucketCounts[j]
			}
			b = appendSample(b, f.name, "_bucket", s.labels, "le", bound, float64(n))
		}
		b = appendSample(b, f.name, "_bucket", s.labels, "le", math.Inf(+1), float64(s.hist.Count))
		b = appendSample(b, f.name, "_sum", s.labels, "", 0, s.hist.Sum)
		b = appendSample(b, f.name, "_count", s.labels, "", 0, float64(s.hist.Count))
	}
	return b
}

// appendSample writes one line; extra, when not empty, is a last label
// whose value is the number extraValue (a histogram bucket's "le").
func appendSample(b []byte, name, suffix string, labels []promLabel, extra string, extraValue, value float64) []byte {
	b = append(b, name...)
	b = append(b, suffix...)
	if len(labels) > 0 || extra != "" {
		b = append(b, '{')
		for i, l := range labels {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, l.name...)
			b = append(b, `="`...)
			b = appendEscaped(b, l.value, true)
			b = append(b, '"')
		}
		if extra != "" {
			if len(labels) > 0 {
				b = append(b, ',')
			}
			b = append(b, extra...)
			b = append(b, `="`...)
			b = appendPromFloat(b, extraValue)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = appendPromFloat(b, value)
	return append(b, '\n')
}

// appendEscaped escapes a backslash and a newline, and in a label value a
// double quote too.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

func appendPromFloat(b []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, "NaN"...)
	case math.IsInf(f, +1):
		return append(b, "+Inf"...)
	case math.IsInf(f, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, 64)
}
