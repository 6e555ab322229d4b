//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestDataTraceRateInJaeger floods the real sidecar's data queue with
// publishes, each in a trace of its own, at a trace rate of 5 a second.
// Only the publishes within the rate may reach Jaeger, and those whole (a
// publish span and its deliver span under it); the rest are counted as
// sampled out and still hand their publisher's traceparent to the
// consumer; an order publish in the middle of the flood is traced
// whatever the rate.
func TestDataTraceRateInJaeger(t *testing.T) {
	const rate, n = 5, 200
	sc := startSidecar(t, sidecarOptions{
		queues:    "\n  - {name: data, capacity: 1000, policy: drop, timeout: 1s}\n  - {name: signal, capacity: 4, policy: fail, timeout: 150ms}\n  - {name: order, capacity: 4, policy: block}\n",
		telemetry: fmt.Sprintf("  otlp_endpoint: http://%s\n  metric_interval: 1s\n  data_trace_rate: %d\n", collectorOTLP, rate),
	})
	pub := dial(t, sc)
	traces := make(map[string]bool, n) // trace ID -> found in Jaeger
	reqs := make([]int64, 0, n+1)
	orderTrace := randomHex(16)
	start := time.Now()
	for i := range n {
		id := randomHex(16)
		traces[id] = false
		reqs = append(reqs, pub.publish("data", "CANDLE_UPDATE", fmt.Sprintf("00-%s-%s-01", id, randomHex(8))))
		if i == n/2 {
			reqs = append(reqs, pub.publish("order", "ORDER_PLACED", fmt.Sprintf("00-%s-%s-01", orderTrace, randomHex(8))))
		}
	}
	for _, id := range reqs {
		if f := pub.reply(id, 10*time.Second); f.Status != "accepted" {
			t.Fatalf("publish %d: %+v, want accepted", id, f)
		}
	}
	elapsed := time.Since(start)

	cons := dial(t, sc)
	if f := cons.call(map[string]any{"op": "subscribe", "queue": "data", "prefetch": 256}); f.Status != "ok" {
		t.Fatalf("subscribe: %+v", f)
	}
	for range n {
		d := cons.delivery(10 * time.Second)
		parts := strings.Split(d.Traceparent, "-")
		if _, ours := traces[parts[min(1, len(parts)-1)]]; len(parts) != 4 || !ours {
			t.Errorf("delivery %d: traceparent %q does not continue one of the publishers' traces", d.Seq, d.Traceparent)
		}
		cons.send(map[string]any{"op": "ack", "queue": "data", "seq": d.Seq})
	}

	// One publish span per publish over the rate is counted, never built.
	sampledOut := int(sc.adminMetric(t, "eventbus_telemetry_spans_sampled_out_total"))
	traced := n - sampledOut
	// The burst, then one per 1/rate of the publishing, and one for the
	// moment the window ends in.
	most := rate + int(elapsed.Seconds()*rate) + 1
	if traced < 1 || traced > most {
		t.Fatalf("%d of %d data publishes traced in %v at %d a second, want 1 to %d", traced, n, elapsed.Round(time.Millisecond), rate, most)
	}
	t.Logf("%d of %d data publishes traced in %v", traced, n, elapsed.Round(time.Millisecond))

	testkit.Eventually(t, "the order trace in Jaeger", func() error {
		tr, err := jaeger(orderTrace)
		if err != nil {
			return err
		}
		return seen(len(tr.Spans) > 0 && tr.Spans[0].OperationName == "publish order", "spans %v", tr.Spans)
	}, testkit.Within(30*time.Second))

	// Every traced data publish reaches Jaeger whole, and no other does:
	// once as many traces as were traced are there, any further one would
	// be a publish over the rate that was built after all.
	found := 0
	testkit.Eventually(t, "the traced data publishes in Jaeger", func() error {
		for id, ok := range traces {
			if ok {
				continue
			}
			tr, err := jaeger(id)
			if err != nil {
				continue // not there (yet)
			}
			var publish, deliver *jaegerSpan
			for i, s := range tr.Spans {
				switch s.OperationName {
				case "publish data":
					publish = &tr.Spans[i]
				case "deliver data":
					deliver = &tr.Spans[i]
				}
			}
			if publish == nil || deliver == nil {
				continue // the deliver span may come in a later batch
			}
			if deliver.parent() != publish.SpanID {
				return fmt.Errorf("trace %s: deliver span's parent %q, want the publish span %q", id, deliver.parent(), publish.SpanID)
			}
			traces[id] = true
			found++
		}
		return seen(found >= traced, "%d of %d traced data publishes in Jaeger", found, traced)
	}, testkit.Within(30*time.Second))
	if found != traced {
		t.Fatalf("%d data traces in Jaeger, want the %d traced: a publish over the rate was traced", found, traced)
	}
	// The spans of the traced publishes are all in; a publish over the
	// rate must have left none at all (a deliver span hanging under the
	// publisher's own span would be one).
	for id, ok := range traces {
		if ok {
			continue
		}
		if tr, err := jaeger(id); err == nil {
			names := make([]string, 0, len(tr.Spans))
			for _, s := range tr.Spans {
				names = append(names, s.OperationName)
			}
			t.Errorf("trace %s of a publish over the rate has spans %v, want none", id, names)
		}
	}
}
