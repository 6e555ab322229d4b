package bus_test

import (
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

func TestSpanNameRoundTrip(t *testing.T) {
	for _, op := range []bus.SpanOp{bus.SpanPublish, bus.SpanWait, bus.SpanDrop, bus.SpanDeliver, bus.SpanDeadLetter} {
		for _, q := range []string{"data", "risk.v2", "a_b-c"} {
			name := bus.SpanName(op, q)
			if gotOp, gotQ := bus.ParseSpanName(name); gotOp != op || gotQ != q {
				t.Errorf("ParseSpanName(%q) = %q, %q; want %q, %q", name, gotOp, gotQ, op, q)
			}
		}
	}
	if op, q := bus.ParseSpanName("publish"); op != bus.SpanPublish || q != "" {
		t.Errorf(`ParseSpanName("publish") = %q, %q; want publish and no queue`, op, q)
	}
	if got := bus.SpanName(bus.SpanDeliver, "order"); got != "deliver order" {
		t.Errorf(`SpanName(deliver, order) = %q, want "deliver order"`, got)
	}
}
