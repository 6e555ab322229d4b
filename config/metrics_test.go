package config

import (
	"context"
	"errors"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func TestReloadCounter(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	c, err := NewReloadCounter(mp.Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	collect := func() map[string]int64 {
		t.Helper()
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if m.Name != ReloadsMetric {
					continue
				}
				sum, ok := m.Data.(metricdata.Sum[int64])
				if !ok || !sum.IsMonotonic {
					t.Fatalf("%s is %T, want a monotonic counter", m.Name, m.Data)
				}
				for _, p := range sum.DataPoints {
					v, _ := p.Attributes.Value("outcome")
					out[v.AsString()] = p.Value
				}
			}
		}
		return out
	}

	if got := collect(); len(got) != 2 || got[ReloadSuccess] != 0 || got[ReloadFailure] != 0 {
		t.Fatalf("at creation %v, want success and failure at 0", got)
	}
	c.Record(context.Background(), nil)
	c.Record(context.Background(), errors.New("bad file"))
	c.Record(context.Background(), errors.New("bad file"))
	if got := collect(); got[ReloadSuccess] != 1 || got[ReloadFailure] != 2 {
		t.Fatalf("after 1 success and 2 failures: %v", got)
	}
}
