package config

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ReloadsMetric counts configuration reloads, with attribute outcome
// ReloadSuccess or ReloadFailure. A reload succeeds when the file loaded and
// validated, whether or not some of its changes wait for a restart; it
// fails when the file was unreadable or invalid and the running
// configuration was kept.
const ReloadsMetric = "eventbus.config.reloads"

// Outcomes of a reload, the values of ReloadsMetric's outcome attribute.
const (
	ReloadSuccess = "success"
	ReloadFailure = "failure"
)

// ReloadCounter is the ReloadsMetric instrument.
type ReloadCounter struct {
	counter          metric.Int64Counter
	success, failure metric.AddOption
}

// NewReloadCounter creates ReloadsMetric on m. Both series start at zero,
// so that an alert on failures has a series to watch before the first one.
func NewReloadCounter(m metric.Meter) (*ReloadCounter, error) {
	c, err := m.Int64Counter(ReloadsMetric, metric.WithUnit("{reload}"),
		metric.WithDescription("Configuration reloads by outcome (success, failure: the file was refused and the running configuration kept)."))
	if err != nil {
		return nil, fmt.Errorf("config: creating %s: %w", ReloadsMetric, err)
	}
	key := attribute.Key("outcome")
	r := &ReloadCounter{
		counter: c,
		success: metric.WithAttributeSet(attribute.NewSet(key.String(ReloadSuccess))),
		failure: metric.WithAttributeSet(attribute.NewSet(key.String(ReloadFailure))),
	}
	c.Add(context.Background(), 0, r.success)
	c.Add(context.Background(), 0, r.failure)
	return r, nil
}

// Record counts one reload: a failure when err (from Load) is not nil.
func (r *ReloadCounter) Record(ctx context.Context, err error) {
	if err != nil {
		r.counter.Add(ctx, 1, r.failure)
		return
	}
	r.counter.Add(ctx, 1, r.success)
}
