package telemetry

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// histogramProducer exports the bus's own histograms (bus.Histograms) to a
// reader as the SDK's histogram instruments they replace would: the same
// scope, names, units, descriptions, bounds and queue attribute, with
// series and metrics that saw no recording left out, cumulative or delta
// as the reader's exporter asks.
type histogramProducer struct {
	h       *bus.Histograms
	metrics []bus.HistogramMetric
	// delta makes each Produce report what was recorded since the last
	// one, with the extremes of that interval; a delta producer resets
	// the extremes as it reads them.
	delta bool
	// extremes is false on a cumulative producer beside a delta one: the
	// delta producer resets the extremes, so these would be of no interval
	// in particular. The Prometheus reader, the only cumulative one then,
	// does not export them anyway.
	extremes bool
	now      func() time.Time

	mu     sync.Mutex // Produce may be called from several goroutines
	points []bus.HistogramPoint
	attrs  map[string]attribute.Set
	// prev is, for delta, the last Produce's cumulative state of every
	// series, in Snapshot's order, and prevTime when it was taken.
	prev     []bus.HistogramPoint
	prevTime time.Time
}

func newHistogramProducer(h *bus.Histograms, delta, extremes bool) *histogramProducer {
	return &histogramProducer{
		h: h, metrics: bus.HistogramMetrics(), delta: delta, extremes: extremes || delta, now: time.Now,
		attrs: make(map[string]attribute.Set),
	}
}

// Produce implements sdkmetric.Producer.
func (p *histogramProducer) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.h.Start()
	if start.IsZero() {
		return nil, nil // no bus yet: nothing recorded
	}
	now := p.now()
	p.points = p.h.Snapshot(p.points[:0], p.delta)
	temporality := metricdata.CumulativeTemporality
	if p.delta {
		temporality = metricdata.DeltaTemporality
		if !p.prevTime.IsZero() {
			start = p.prevTime
		}
	}
	byKind := make([][]metricdata.HistogramDataPoint[float64], len(p.metrics))
	for i := range p.points {
		pt := &p.points[i]
		counts, count, sum := slices.Clone(pt.Counts), pt.Count, pt.Sum
		if p.delta && i < len(p.prev) {
			old := &p.prev[i]
			for j := range counts {
				counts[j] -= old.Counts[j]
			}
			count -= old.Count
			sum -= old.Sum
		}
		if count == 0 {
			continue
		}
		dp := metricdata.HistogramDataPoint[float64]{
			Attributes:   p.queueAttrs(pt.Queue),
			StartTime:    start,
			Time:         now,
			Count:        count,
			Bounds:       p.metrics[pt.Kind].Bounds,
			BucketCounts: counts,
			Sum:          sum.Seconds(),
		}
		if p.extremes && pt.HasExtremes {
			dp.Min = metricdata.NewExtrema(pt.Min.Seconds())
			dp.Max = metricdata.NewExtrema(pt.Max.Seconds())
		}
		byKind[pt.Kind] = append(byKind[pt.Kind], dp)
	}
	if p.delta {
		p.prev, p.points = p.points, p.prev
		p.prevTime = now
	}
	sm := metricdata.ScopeMetrics{Scope: instrumentation.Scope{Name: bus.ScopeName}}
	for k, dps := range byKind {
		if len(dps) == 0 {
			continue
		}
		m := p.metrics[k]
		// Every point of a metric shares one copy of the bounds, as the
		// SDK's do; the copy keeps a consumer from changing the bus's.
		bounds := slices.Clone(m.Bounds)
		for i := range dps {
			dps[i].Bounds = bounds
		}
		sm.Metrics = append(sm.Metrics, metricdata.Metrics{
			Name: m.Name, Description: m.Description, Unit: m.Unit,
			Data: metricdata.Histogram[float64]{Temporality: temporality, DataPoints: dps},
		})
	}
	if len(sm.Metrics) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{sm}, nil
}

func (p *histogramProducer) queueAttrs(queue string) attribute.Set {
	s, ok := p.attrs[queue]
	if !ok {
		s = attribute.NewSet(attribute.String("queue", queue))
		p.attrs[queue] = s
	}
	return s
}
