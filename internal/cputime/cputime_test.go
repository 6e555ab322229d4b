package cputime

import "testing"

// TestProcessAdvances: CPU spent between two reads shows in the second.
func TestProcessAdvances(t *testing.T) {
	before := Process(t)
	x := uint64(1)
	for i := range 50_000_000 {
		x = x*6364136223846793005 + uint64(i)
	}
	after := Process(t)
	if after <= before {
		t.Fatalf("CPU time went from %v to %v over a busy loop (%d)", before, after, x)
	}
}
