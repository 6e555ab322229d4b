package bus_test

import (
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

func TestDeliveryMore(t *testing.T) {
	b, _ := newBus(t, oneQueue("q", 10, bus.PolicyFail, time.Second))
	publishN(t, b, "q", "T", 0, 3)
	c := subscribe(t, b, "q", 2)
	steps := []struct {
		what string
		more bool
		ack  bool
	}{
		{"first of three, prefetch 2", true, false},
		{"second: prefetch now full", false, true},
		{"third after an ack: queue empty", false, false},
	}
	for _, s := range steps {
		d := mustReceive(t, c)
		if d.More != s.more {
			t.Errorf("%s: More = %v, want %v", s.what, d.More, s.more)
		}
		if s.ack {
			if err := c.Ack(d.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
}
