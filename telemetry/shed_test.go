package telemetry

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
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
	// One span is stuck in the blocked export, four fill the queue.
	emitSpans(tel.TracerProvider(), 5)
	eventually(t, 10*time.Second, "a full export queue", func() bool { return tel.Stats().SpanQueueSize == 4 })

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
	eventually(t, 10*time.Second, "room in the export queue", func() bool { return tel.Stats().SpanQueueSize < 4 })
	_, s := tr.Start(ctx, "publish data")
	defer s.End()
	if !s.IsRecording() {
		t.Error("publish data still shed after the queue drained")
	}
}
