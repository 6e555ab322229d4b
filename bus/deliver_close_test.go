package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// gateSampler holds up the start of the first deliver span until released,
// so that a test can act in the window between taking an event off the
// queue and putting it in flight.
type gateSampler struct {
	entered, release chan struct{}
}

func (s *gateSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if p.Name == "deliver data" {
		select {
		case s.entered <- struct{}{}:
			<-s.release
		default:
		}
	}
	return sdktrace.AlwaysSample().ShouldSample(p)
}

func (s *gateSampler) Description() string { return "gateSampler" }

// A consumer closed while its Receive starts the deliver span must not
// lose the event: Receive fails with ErrConsumerClosed, the event goes back
// to the queue as a redelivery and its deliver span ends as abandoned.
func TestCloseWhileDeliverSpanStarts(t *testing.T) {
	smp := &gateSampler{entered: make(chan struct{}), release: make(chan struct{})}
	b, _, rec := traced(t, oneQueue("data", 4, bus.PolicyDrop, time.Second), sdktrace.WithSampler(smp))
	publishN(t, b, "data", "T", 0, 1)
	c, err := b.Subscribe("data", 1)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := c.Receive(context.Background())
		got <- err
	}()
	<-smp.entered
	c.Close()
	close(smp.release)
	if err := <-got; !errors.Is(err, bus.ErrConsumerClosed) {
		t.Fatalf("Receive = %v, want ErrConsumerClosed", err)
	}

	c2 := subscribe(t, b, "data", 1)
	d := mustReceive(t, c2)
	if d.Redeliveries != 1 {
		t.Errorf("Redeliveries = %d, want 1", d.Redeliveries)
	}
	if err := c2.Ack(d.Seq); err != nil {
		t.Fatal(err)
	}
	spans := ended(rec, "deliver data")
	if len(spans) != 2 {
		t.Fatalf("%d deliver spans ended, want 2", len(spans))
	}
	want := []string{"abandoned", "ack"}
	for i, s := range spans {
		var result string
		for _, kv := range s.Attributes() {
			if kv.Key == attribute.Key("eventbus.delivery.result") {
				result = kv.Value.AsString()
			}
		}
		if result != want[i] {
			t.Errorf("deliver span %d result %q, want %q", i, result, want[i])
		}
	}
	if st := b.Stats()["data"]; st.InFlight != 0 || st.Size != 0 {
		t.Errorf("stats after ack: in_flight %d size %d, want 0 0", st.InFlight, st.Size)
	}
}
