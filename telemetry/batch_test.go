package telemetry

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestPauseAfter(t *testing.T) {
	tests := []struct {
		cpu   time.Duration
		share float64
		want  time.Duration
	}{
		{10 * time.Millisecond, 0.25, 30 * time.Millisecond},
		{10 * time.Millisecond, 0.5, 10 * time.Millisecond},
		{10 * time.Millisecond, 1, 0},
		{10 * time.Millisecond, 0, 0},
		{0, 0.25, 0},
	}
	for _, tt := range tests {
		if got := pauseAfter(tt.cpu, tt.share); got != tt.want {
			t.Errorf("pauseAfter(%v, %v) = %v, want %v", tt.cpu, tt.share, got, tt.want)
		}
	}
}

// A batch the worker takes after Shutdown's deadline (its select can pick
// the queue over the stop) is not sent: it counts as lost to the shutdown.
func TestBatchAfterTheShutdownDeadlineCountsAsShutdown(t *testing.T) {
	rcv := startReceiver(t, "127.0.0.1:0")
	exp, _ := newTestExporter(t, rcv.addr, time.Second)
	loss := &lossCounters{}
	p := newBatchProcessor(exp, batchOptions{queueSize: 8, batchSize: 4, delay: time.Hour, timeout: time.Second, cpuShare: 1}, loss)
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })

	p.cancel() // what Shutdown does when its deadline passes
	stubs := tracetest.SpanStubs{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	p.export(stubs.Snapshots())

	s := loss.snapshot()
	if s.SpansDroppedShutdown != 3 || s.SpansDroppedExportFailed != 0 || s.SpanExportsFailed != 0 || s.SpansExported != 0 {
		t.Errorf("a batch after the deadline: %+v, want 3 spans dropped at shutdown and no export", s)
	}
	if n := len(rcv.spanNames()); n != 0 {
		t.Errorf("the receiver got %d spans after the deadline", n)
	}
}
