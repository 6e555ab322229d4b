package main

import (
	"strings"
	"testing"
)

// The soak refuses a mix too small to hold one client of each kind before
// it starts anything.
func TestSoakTooFewConnections(t *testing.T) {
	code, _, errOut := cmd(t, "", "soak", "--connections", "3")
	if code != 2 || !strings.Contains(errOut, "connections 3") {
		t.Fatalf("soak --connections 3: code %d, stderr %q; want 2 and the bad value named", code, errOut)
	}
}
