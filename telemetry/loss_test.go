package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// recordHandler keeps every log record, for asserting how often we log.
type recordHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r)
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.records {
		out = append(out, r.Message)
	}
	return out
}

func TestLossReporterLogsOncePerIntervalAndOnRecovery(t *testing.T) {
	tests := []struct {
		name string
		lose func(l *lossCounters)
		want []string
	}{
		{"nothing lost: silent", func(*lossCounters) {}, nil},
		{"thousands of spans lost: one line", func(l *lossCounters) {
			for range 5000 {
				l.spansQueueFull.Add(1)
			}
		}, []string{"telemetry lost since last report"}},
		{"export failing: one line, then recovery", func(l *lossCounters) {
			for range 100 {
				l.spanExportsFailed.Add(1)
				l.setLastErr(SignalTraces, errors.New("connection refused"))
			}
		}, []string{"telemetry lost since last report", "telemetry export recovered"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recordHandler{}
			l := &lossCounters{}
			r := startLossReporter(l, time.Hour, slog.New(h))
			t.Cleanup(r.stop)
			tt.lose(l)
			r.report()
			r.report() // nothing new: no second line
			l.clearFailing(SignalTraces)
			l.clearFailing(SignalMetrics)
			r.report()
			got := h.messages()
			if len(got) != len(tt.want) {
				t.Fatalf("logged %q, want %q", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("logged %q, want %q", got, tt.want)
				}
			}
		})
	}
}
