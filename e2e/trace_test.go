//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestTraceInJaeger publishes with a known traceparent so that a blocked
// order publish (wait, then deliver), a dropped data publish (wait, drop)
// and a timed-out signal publish all land in one trace, and checks that
// Jaeger's HTTP API returns that trace with the spans docs/telemetry.md
// lists, parented and attributed as it says. The order is nacked once, so there
// are two deliver spans; a drop_oldest queue adds an evicted-drop span.
func TestTraceInJaeger(t *testing.T) {
	sc := startSidecar(t, sidecarOptions{})
	traceID, parentID := randomHex(16), randomHex(8)
	tp := fmt.Sprintf("00-%s-%s-01", traceID, parentID)

	filler := dial(t, sc)
	// Fill every queue (capacity 4, nobody consuming).
	for _, q := range []string{"order", "data", "signal"} {
		for range 4 {
			if f := filler.call(map[string]any{"op": "publish", "queue": q, "type": "FILL", "payload": 1}); f.Status != "accepted" {
				t.Fatalf("filling %s: %+v", q, f)
			}
		}
	}

	// data full: waits 150 ms, then is dropped (designed behaviour).
	pub := dial(t, sc)
	if f := pub.reply(pub.publish("data", "CANDLE_UPDATE", tp), 10*time.Second); f.Status != "dropped" {
		t.Fatalf("data publish on a full queue: %+v, want dropped", f)
	}
	// signal full: waits 150 ms, then fails with timeout.
	if f := pub.reply(pub.publish("signal", "SIGNAL_GENERATED", tp), 10*time.Second); f.Status != "timeout" {
		t.Fatalf("signal publish on a full queue: %+v, want timeout", f)
	}
	// order full: blocks until a consumer makes room.
	orderID := pub.publish("order", "ORDER_PLACED", tp)
	testkit.Eventually(t, "the order publisher to wait", func() error {
		v := sc.adminMetric(t, "eventbus_publishers_waiting", `queue="order"`)
		return seen(v == 1, "eventbus_publishers_waiting{queue=order} = %v", v)
	}, testkit.Within(10*time.Second))
	cons := dial(t, sc)
	if f := cons.call(map[string]any{"op": "subscribe", "queue": "order", "prefetch": 1}); f.Status != "ok" {
		t.Fatalf("subscribe: %+v", f)
	}
	// Ack the four fillers; nack our event once, then ack its redelivery.
	var ours, firstTry frame
	for ours.Type == "" {
		d := cons.delivery(10 * time.Second)
		switch {
		case d.Type != "ORDER_PLACED":
			cons.send(map[string]any{"op": "ack", "queue": "order", "seq": d.Seq})
		case firstTry.Type == "":
			firstTry = d
			cons.send(map[string]any{"op": "nack", "queue": "order", "seq": d.Seq})
		default:
			ours = d
			cons.send(map[string]any{"op": "ack", "queue": "order", "seq": d.Seq})
		}
	}
	if f := pub.reply(orderID, 10*time.Second); f.Status != "accepted" {
		t.Fatalf("blocked order publish: %+v, want accepted", f)
	}

	// drop_oldest: our tick is evicted by the next one; its drop span
	// belongs under our (earlier) publish span.
	if f := pub.reply(pub.publish("ticks", "TICK", tp), 10*time.Second); f.Status != "accepted" {
		t.Fatalf("tick publish: %+v", f)
	}
	if f := filler.call(map[string]any{"op": "publish", "queue": "ticks", "type": "TICK", "payload": 2}); f.Status != "accepted" {
		t.Fatalf("evicting tick publish: %+v", f)
	}
	// The deliver frame's traceparent continues our trace.
	parts := strings.Split(ours.Traceparent, "-")
	if len(parts) != 4 || parts[1] != traceID {
		t.Fatalf("deliver traceparent %q does not carry trace %s", ours.Traceparent, traceID)
	}
	deliverSpanID := parts[2]

	want := []string{"publish order", "wait order", "deliver order", "publish data", "wait data", "drop data",
		"publish signal", "wait signal", "publish ticks", "drop ticks"}
	var tr *jaegerTrace
	testkit.Eventually(t, "the trace in Jaeger", func() error {
		var err error
		tr, err = jaeger(traceID)
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, s := range tr.Spans {
			have[s.OperationName] = true
		}
		for _, w := range want {
			if !have[w] {
				return fmt.Errorf("have %v, missing %q", have, w)
			}
		}
		return nil
	}, testkit.Within(30*time.Second))

	// Two deliveries of our order (nack, then ack): deliver spans by try.
	byName := map[string]jaegerSpan{}
	var delivers []jaegerSpan
	for _, s := range tr.Spans {
		if s.OperationName == "deliver order" {
			delivers = append(delivers, s)
			continue
		}
		if _, dup := byName[s.OperationName]; dup {
			t.Errorf("two %q spans in the trace", s.OperationName)
		}
		byName[s.OperationName] = s
	}
	testkit.Eventually(t, "both deliver spans in Jaeger", func() error {
		if len(delivers) == 2 {
			return nil
		}
		tr, err := jaeger(traceID)
		if err != nil {
			return err
		}
		delivers = delivers[:0]
		for _, s := range tr.Spans {
			if s.OperationName == "deliver order" {
				delivers = append(delivers, s)
			}
		}
		return seen(len(delivers) == 2, "%d deliver spans", len(delivers))
	}, testkit.Within(30*time.Second))
	for _, d := range delivers {
		switch d.tag("eventbus.redelivery.count") {
		case "0":
			byName["deliver order"] = d
			if got := d.tag("eventbus.delivery.result"); got != "nack" {
				t.Errorf("first deliver span: eventbus.delivery.result = %q, want nack", got)
			}
		case "1":
			byName["redeliver order"] = d
			if got := d.tag("eventbus.delivery.result"); got != "ack" {
				t.Errorf("second deliver span: eventbus.delivery.result = %q, want ack", got)
			}
		default:
			t.Errorf("deliver span with eventbus.redelivery.count %q", d.tag("eventbus.redelivery.count"))
		}
	}
	type check struct {
		span, parent string // parent: span name, or "remote" for the traceparent's span
		tags         map[string]string
		absent       []string
	}
	checks := []check{
		{"publish order", "remote", map[string]string{
			"span.kind": "producer", "messaging.system": "eventbus", "messaging.destination.name": "order",
			"messaging.operation.type": "send", "messaging.operation.name": "publish",
			"eventbus.event.type": "ORDER_PLACED", "eventbus.outcome": "accepted", "eventbus.queue.depth": "4",
		}, []string{"error"}},
		{"wait order", "publish order", map[string]string{"messaging.destination.name": "order", "eventbus.outcome": "accepted"}, nil},
		{"deliver order", "publish order", map[string]string{
			"span.kind": "consumer", "messaging.system": "eventbus", "messaging.destination.name": "order",
			"eventbus.redelivery.count": "0",
		}, nil},
		{"publish data", "remote", map[string]string{
			"span.kind": "producer", "messaging.destination.name": "data", "eventbus.event.type": "CANDLE_UPDATE",
			"eventbus.outcome": "dropped",
		}, []string{"error", "otel.status_code"}},
		{"wait data", "publish data", map[string]string{"messaging.destination.name": "data", "eventbus.outcome": "dropped"}, nil},
		{"drop data", "publish data", map[string]string{"eventbus.drop.reason": "timeout"}, []string{"error", "otel.status_code"}},
		{"publish signal", "remote", map[string]string{
			"span.kind": "producer", "messaging.destination.name": "signal", "eventbus.outcome": "timeout",
			"otel.status_code": "ERROR", "error": "true",
		}, nil},
		{"wait signal", "publish signal", nil, nil},
		{"redeliver order", "publish order", map[string]string{"span.kind": "consumer", "eventbus.redelivery.count": "1"}, nil},
		{"publish ticks", "remote", map[string]string{"eventbus.outcome": "accepted", "messaging.destination.name": "ticks"}, nil},
		{"drop ticks", "publish ticks", map[string]string{"eventbus.drop.reason": "evicted"}, []string{"error", "otel.status_code"}},
	}
	for _, c := range checks {
		s := byName[c.span]
		wantParent := parentID
		if c.parent != "remote" {
			wantParent = byName[c.parent].SpanID
		}
		if got := s.parent(); got != wantParent {
			t.Errorf("%s: parent span %q, want %q (%s)", c.span, got, wantParent, c.parent)
		}
		for k, v := range c.tags {
			if got := s.tag(k); got != v {
				t.Errorf("%s: tag %s = %q, want %q", c.span, k, got, v)
			}
		}
		for _, k := range c.absent {
			if got := s.tag(k); got != "" {
				t.Errorf("%s: tag %s = %q, want none (not an error)", c.span, k, got)
			}
		}
	}
	if got := byName["publish order"].tag("messaging.message.id"); got == "" {
		t.Error("publish order: no messaging.message.id")
	}
	if got := byName["deliver order"].tag("eventbus.time_in_queue_seconds"); got == "" {
		t.Error("deliver order: no eventbus.time_in_queue_seconds")
	}
	if got := byName["redeliver order"].SpanID; got != deliverSpanID {
		t.Errorf("deliver frame traceparent names span %s, Jaeger's deliver span is %s", deliverSpanID, got)
	}
	if firstTry.Traceparent == ours.Traceparent {
		t.Errorf("both deliveries carry traceparent %s; each delivery has its own deliver span", ours.Traceparent)
	}
}
