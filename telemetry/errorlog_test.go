package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"
)

func TestErrorHandlerLogsOncePerIntervalAtWarn(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := NewErrorHandler(logger, time.Minute)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h.now = func() time.Time { return now }

	steps := []struct {
		advance  time.Duration
		wantWarn bool
		wantHeld float64
	}{
		{0, true, 0},
		{time.Second, false, 0},
		{time.Second, false, 0},
		{time.Minute, true, 2},
		{59 * time.Second, false, 0},
		{time.Second, true, 1},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		buf.Reset()
		h.Handle(errors.New("export failed"))
		var rec map[string]any
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
			t.Fatalf("step %d: log line %q: %v", i, buf.String(), err)
		}
		wantLevel := "DEBUG"
		if s.wantWarn {
			wantLevel = "WARN"
		}
		if rec["level"] != wantLevel || rec["err"] != "export failed" {
			t.Errorf("step %d: logged %v, want level %s with the error", i, rec, wantLevel)
		}
		if s.wantWarn && rec["held_back"] != s.wantHeld {
			t.Errorf("step %d: held_back = %v, want %v", i, rec["held_back"], s.wantHeld)
		}
	}
	buf.Reset()
	h.Handle(nil)
	if buf.Len() != 0 {
		t.Errorf("nil error logged %q", buf.String())
	}
}
