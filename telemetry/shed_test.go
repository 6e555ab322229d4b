package telemetry

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// TestShedWhileExportQueueFull checks that with the export queue full,
// sampled-queue publish/wait/deliver spans are not built (and are counted),
// while drop spans and other queues' spans still are; and that building
// resumes once the queue has room.
func TestShedWhileExportQueueFull(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	rcv.block()
	tel := setup(t, Config{
		OTLPEndpoint: rcv.addr, OTLPInsecure: true, SpanQueueSize: 4, SpanBatchSize: 1,
		SpanBatchDelay: time.Millisecond, MetricInterval: time.Hour,
	}, nil)
	tr := tel.TracerProvider().Tracer("test")
	// One span is stuck in the blocked export, four fill the queue. The
	// worker must hold the first before the others come, or it could take
	// one of the four later and leave room for a span the test expects shed.
	emitSpans(tel.TracerProvider(), 1)
	testkit.Eventually(t, "the worker to take the first span", func() bool { return tel.Stats().SpanQueueSize == 0 })
	emitSpans(tel.TracerProvider(), 4)
	if got := tel.Stats().SpanQueueSize; got != 4 {
		t.Fatalf("export queue holds %d spans, want 4 (full)", got)
	}

	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true,
	})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
	lostBefore := tel.Stats().SpansDroppedQueueFull
	tests := []struct {
		name      string
		recording bool
	}{
		{"publish data", false},
		{"wait data", false},
		{"deliver data", false},
		{"drop data", true},
		{"publish order", true},
		{"publish signal", true},
	}
	shed := 0
	for _, tt := range tests {
		_, s := tr.Start(ctx, tt.name)
		if s.IsRecording() != tt.recording {
			t.Errorf("%s: recording = %v, want %v", tt.name, s.IsRecording(), tt.recording)
		}
		if !tt.recording {
			shed++
			if !s.SpanContext().Equal(parent) {
				t.Errorf("%s: shed span carries %v, want the parent's context %v", tt.name, s.SpanContext(), parent)
			}
		}
		s.End()
	}
	if got := tel.Stats().SpansDroppedQueueFull - lostBefore; got != uint64(shed)+3 {
		// +3: the drop, order and signal spans found the queue full at End.
		t.Errorf("queue-full losses rose by %d, want %d", got, shed+3)
	}

	rcv.open()
	testkit.Eventually(t, "an empty export queue", func() bool { return tel.Stats().SpanQueueSize == 0 })
	_, s := tr.Start(ctx, "publish data")
	defer s.End()
	if !s.IsRecording() {
		t.Error("publish data still shed after the queue drained")
	}
}

// TestReserveKeepsRoomForOrderSpans floods the export queue with data
// spans while the collector is blocked: they stop at the reserve, and an
// order publish span still gets in.
func TestReserveKeepsRoomForOrderSpans(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	rcv.block()
	tel := setup(t, Config{
		OTLPEndpoint: rcv.addr, OTLPInsecure: true, SpanQueueSize: 8, SpanBatchSize: 1,
		SpanBatchDelay: time.Millisecond, MetricInterval: time.Hour,
	}, nil)
	t.Cleanup(rcv.open) // before Shutdown, which would otherwise wait for the blocked export
	tr := tel.TracerProvider().Tracer("test")
	publish := func(queue string) {
		_, s := tr.Start(context.Background(), "publish "+queue,
			trace.WithAttributes(attribute.String("messaging.destination.name", queue)))
		s.SetAttributes(attribute.String("eventbus.outcome", "accepted"))
		s.End()
	}
	// The first span goes to the worker's blocked export.
	publish("order")
	testkit.Eventually(t, "the worker to take the first span", func() bool { return tel.Stats().SpanQueueSize == 0 })
	for range 100 {
		publish("data")
	}
	if got := tel.Stats().SpanQueueSize; got != 6 {
		t.Fatalf("data spans fill %d of 8 queue slots, want 6 (2 reserved)", got)
	}
	publish("order")
	publish("signal")
	if got := tel.Stats().SpanQueueSize; got != 8 {
		t.Errorf("after order and signal spans the queue holds %d, want 8", got)
	}
	if got := tel.Stats().SpansDroppedQueueFull; got != 94 {
		t.Errorf("%d spans lost to the full queue, want 94 data spans", got)
	}
}
