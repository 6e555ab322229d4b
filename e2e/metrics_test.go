//go:build e2e

package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestDropsAndStallInPrometheus overfills data and stalls order (nobody
// consumes), then checks through Prometheus's HTTP API — after the OTLP
// export, the collector's Prometheus exporter and a scrape — that the drop
// counter rose and the order queue sits at capacity.
func TestDropsAndStallInPrometheus(t *testing.T) {
	sc := startSidecar(t, sidecarOptions{})
	inst := sc.instance

	// The series exist at 0 before anything happens, so that increase()
	// sees the first drop.
	testkit.Eventually(t, "zero-valued drop series in Prometheus", func() error {
		s, err := prometheus(fmt.Sprintf(`eventbus_events_dropped_total{instance=%q,queue="data"}`, inst))
		if err != nil {
			return err
		}
		return seen(len(s) == 2, "%v", s) // reason timeout and evicted
	}, testkit.Within(30*time.Second))

	// Overfill data: 4 fit, each further one waits 150 ms and is dropped.
	// Several connections publish in parallel (one connection's publishes
	// to one queue are sequential).
	const conns, perConn = 4, 5
	var wg sync.WaitGroup
	statuses := make(chan string, conns*perConn)
	for range conns {
		c := dial(t, sc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids := make([]int64, perConn)
			for i := range ids {
				ids[i] = c.publish("data", "CANDLE_UPDATE", "")
			}
			for _, id := range ids {
				statuses <- c.reply(id, 20*time.Second).Status
			}
		}()
	}
	wg.Wait()
	close(statuses)
	dropped := 0
	for s := range statuses {
		if s == "dropped" {
			dropped++
		}
	}
	if dropped != conns*perConn-4 {
		t.Fatalf("%d of %d data publishes dropped, want %d", dropped, conns*perConn, conns*perConn-4)
	}

	// Stall order: fill it to capacity with nobody consuming.
	c := dial(t, sc)
	for range 4 {
		if f := c.call(map[string]any{"op": "publish", "queue": "order", "type": "ORDER_PLACED", "payload": 1}); f.Status != "accepted" {
			t.Fatalf("order publish: %+v", f)
		}
	}

	testkit.Eventually(t, "the drops in Prometheus", func() error {
		s, err := prometheus(fmt.Sprintf(`sum(eventbus_events_dropped_total{instance=%q,queue="data"})`, inst))
		if err != nil {
			return err
		}
		return seen(len(s) == 1 && s[0].Value == float64(dropped), "%v", s)
	}, testkit.Within(30*time.Second))
	testkit.Eventually(t, "order at capacity in Prometheus", func() error {
		s, err := prometheus(fmt.Sprintf(
			`eventbus_queue_depth{instance=%q,queue="order"} == on(instance,queue) eventbus_queue_capacity{instance=%q,queue="order"}`, inst, inst))
		if err != nil {
			return err
		}
		return seen(len(s) == 1 && s[0].Value == 4, "%v", s)
	}, testkit.Within(30*time.Second))
	// Histograms keep the bus's microsecond boundaries through the
	// collector (the exporters' defaults start at milliseconds).
	testkit.Eventually(t, "microsecond histogram buckets in Prometheus", func() error {
		s, err := prometheus(fmt.Sprintf(`eventbus_queue_wait_duration_seconds_bucket{instance=%q,queue="data",le="1e-06"}`, inst))
		if err != nil {
			return err
		}
		return seen(len(s) == 1, "%v", s)
	}, testkit.Within(30*time.Second))
	// The rate() an alert would use sees the drops too.
	s, err := prometheus(fmt.Sprintf(`increase(eventbus_events_dropped_total{instance=%q,queue="data",reason="timeout"}[1m])`, inst))
	if err != nil || len(s) != 1 || s[0].Value <= 0 {
		t.Errorf("increase() of the drop counter: %v %v, want > 0", s, err)
	}
	// And the sidecar's own /metrics agrees without a collector in the way.
	if v := sc.adminMetric(t, "eventbus_events_dropped_total", `queue="data"`); v != float64(dropped) {
		t.Errorf("/metrics eventbus_events_dropped_total{queue=data} = %v, want %d", v, dropped)
	}
	if v := sc.adminMetric(t, "eventbus_queue_depth", `queue="order"`); v != 4 {
		t.Errorf("/metrics eventbus_queue_depth{queue=order} = %v, want 4", v)
	}
}
