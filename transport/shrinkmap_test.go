package transport

import (
	"maps"
	"testing"
)

// TestShrinkingMap: the map holds what a plain map holds through puts,
// deletes and shrinks; put tells once when it grows past shrinkMapsAbove,
// and shrink rebuilds it at its size (peak tells) once a quarter or less
// of a peak above that is left.
func TestShrinkingMap(t *testing.T) {
	tests := []struct {
		name      string
		put       int // keys 0..put-1
		deleteTo  int // then deletes keys from 0 until this many are left
		wantPeak  int // after shrink
		wantGrown bool
	}{
		{name: "small map is left alone", put: shrinkMapsAbove, deleteTo: 0, wantPeak: shrinkMapsAbove},
		{name: "above a quarter is left alone", put: 400, deleteTo: 101, wantPeak: 400, wantGrown: true},
		{name: "a quarter is rebuilt", put: 400, deleteTo: 100, wantPeak: 100, wantGrown: true},
		{name: "rebuilt small", put: 400, deleteTo: 50, wantPeak: 50},
		{name: "emptied", put: 400, deleteTo: 0, wantPeak: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s shrinkingMap[int, int]
			want := map[int]int{}
			told := 0
			for k := range tt.put {
				if s.put(k, 10*k) {
					told++
				}
				want[k] = 10 * k
			}
			if wantTold := min(1, tt.put/(shrinkMapsAbove+1)); told != wantTold {
				t.Errorf("put told %d times of growing past %d, want %d", told, shrinkMapsAbove, wantTold)
			}
			for k := 0; len(want) > tt.deleteTo; k++ {
				s.delete(k)
				delete(want, k)
			}
			checkShrinkingMap(t, &s, want)
			if got := s.shrink(); got != tt.wantGrown || s.grown() != tt.wantGrown {
				t.Errorf("shrink with %d of %d left: still grown %v (grown() %v), want %v", tt.deleteTo, tt.put, got, s.grown(), tt.wantGrown)
			}
			if s.peak != tt.wantPeak {
				t.Errorf("peak %d after shrink with %d of %d left, want %d", s.peak, tt.deleteTo, tt.put, tt.wantPeak)
			}
			checkShrinkingMap(t, &s, want)
			// It takes new entries after any of it.
			s.put(-1, 7)
			want[-1] = 7
			checkShrinkingMap(t, &s, want)
		})
	}
}

func checkShrinkingMap(t *testing.T, s *shrinkingMap[int, int], want map[int]int) {
	t.Helper()
	if s.len() != len(want) {
		t.Fatalf("len %d, want %d", s.len(), len(want))
	}
	for k, v := range want {
		if got, ok := s.get(k); !ok || got != v {
			t.Fatalf("get(%d) = %d, %v; want %d", k, got, ok, v)
		}
	}
	if got := maps.Collect(s.all); !maps.Equal(got, want) {
		t.Fatalf("all yields %d entries, want %d", len(got), len(want))
	}
}
