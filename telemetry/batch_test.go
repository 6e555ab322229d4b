package telemetry

import (
	"testing"
	"time"
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
