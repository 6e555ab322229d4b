package bus

import (
	"fmt"
	"testing"
	"time"
)

// TestDedupeIsBounded: however long the window, a queue remembers at most
// MaxDedupeIDs msg ids, forgetting the oldest first, and its bookkeeping
// does not grow with the number of publishes.
func TestDedupeIsBounded(t *testing.T) {
	d := newDedupe(time.Hour)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const extra = 3*MaxDedupeIDs + 10
	for i := range MaxDedupeIDs + extra {
		d.add(fmt.Sprint("id-", i), uint64(i+1), at, nil)
	}
	if n := len(d.ids); n != MaxDedupeIDs {
		t.Fatalf("%d ids remembered, want MaxDedupeIDs (%d)", n, MaxDedupeIDs)
	}
	if live := len(d.order) - d.head; live != MaxDedupeIDs {
		t.Fatalf("%d ids in accept order, want %d", live, MaxDedupeIDs)
	}
	if len(d.order) > 2*MaxDedupeIDs+1024 {
		t.Fatalf("accept order holds %d slots for %d ids: it grows with the publishes", len(d.order), MaxDedupeIDs)
	}
	for _, tt := range []struct {
		i    int
		want bool
	}{{0, false}, {extra - 1, false}, {extra, true}, {MaxDedupeIDs + extra - 1, true}} {
		if _, ok := d.lookup(fmt.Sprint("id-", tt.i), at); ok != tt.want {
			t.Errorf("lookup(id-%d) = %v, want %v", tt.i, ok, tt.want)
		}
	}
}
