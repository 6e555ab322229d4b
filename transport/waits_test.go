package transport

import (
	"slices"
	"testing"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
)

// heldAt reports whether a caller is parked in waitBelow or waitEmpty
// with limit or more publishes waiting.
func (w *publishWaits) heldAt(limit int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sleeping && w.n >= limit
}

func (w *publishWaits) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// waitOp is one step of a publishWaits scenario: add or resolve publish n
// with request id. The pending handles are told apart by n.
type waitOp struct {
	add bool
	n   uint64
	id  int64
}

func add(n uint64, id int64) waitOp     { return waitOp{add: true, n: n, id: id} }
func resolve(n uint64, id int64) waitOp { return waitOp{n: n, id: id} }

func TestPublishWaitsBookkeeping(t *testing.T) {
	tests := []struct {
		name string
		ops  []waitOp
		// want lists the publish numbers still waiting, by id.
		want map[int64][]uint64
	}{
		{"nothing", nil, map[int64][]uint64{}},
		{"one waiting", []waitOp{add(1, 7)}, map[int64][]uint64{7: {1}}},
		{"added then resolved", []waitOp{add(1, 7), resolve(1, 7)}, map[int64][]uint64{}},
		{"resolved before it was added", []waitOp{resolve(1, 7), add(1, 7)}, map[int64][]uint64{}},
		{"an early answer skips only its own add", []waitOp{resolve(1, 7), add(1, 7), add(2, 7)}, map[int64][]uint64{7: {2}}},
		{"reused id keeps both", []waitOp{add(1, 7), add(2, 7)}, map[int64][]uint64{7: {1, 2}}},
		{"reused id resolves the right one", []waitOp{add(1, 7), add(2, 7), add(3, 7), resolve(2, 7)}, map[int64][]uint64{7: {1, 3}}},
		{"ids kept apart", []waitOp{add(1, 7), add(2, 8), resolve(1, 7)}, map[int64][]uint64{8: {2}}},
		{"resolve of an unknown publish changes nothing", []waitOp{add(1, 7), resolve(5, 9)}, map[int64][]uint64{7: {1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newPublishWaits()
			handles := map[uint64]*bus.Pending{}
			for _, op := range tt.ops {
				if op.add {
					handles[op.n] = &bus.Pending{}
					w.add(op.n, op.id, 0, handles[op.n])
				} else {
					w.resolve(op.n, op.id)
				}
			}
			total := 0
			var all []*bus.Pending
			for id, ns := range tt.want {
				total += len(ns)
				var want []*bus.Pending
				for _, n := range ns {
					want = append(want, handles[n])
				}
				all = append(all, want...)
				if got := w.withID(id); !slices.Equal(got, want) {
					t.Errorf("withID(%d) = %v, want the handles of publishes %v", id, got, ns)
				}
			}
			if got := w.len(); got != total {
				t.Errorf("%d waiting, want %d", got, total)
			}
			got := w.all()
			if len(got) != len(all) {
				t.Fatalf("all() = %d handles, want %d", len(got), len(all))
			}
			for _, p := range all {
				if !slices.Contains(got, p) {
					t.Errorf("all() misses a waiting publish")
				}
			}
		})
	}
}

func TestPublishWaitsWaitBelowReturnsAtOnce(t *testing.T) {
	tests := []struct {
		name    string
		waiting int
		limit   int
		stopped bool
		want    bool
	}{
		{"under the limit", 2, 3, false, true},
		{"empty", 0, 1, false, true},
		{"stopped under the limit", 0, 3, true, false},
		{"stopped at the limit", 3, 3, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newPublishWaits()
			for i := range tt.waiting {
				w.add(uint64(i+1), int64(i), 0, &bus.Pending{})
			}
			if tt.stopped {
				w.stop()
			}
			if got := w.waitBelow(tt.limit, nil, nil); got != tt.want {
				t.Errorf("waitBelow(%d) with %d waiting = %v, want %v", tt.limit, tt.waiting, got, tt.want)
			}
		})
	}
}

func TestPublishWaitsWaitBelowBlocksUntilResolveOrStop(t *testing.T) {
	for _, end := range []string{"resolve", "stop"} {
		t.Run(end, func(t *testing.T) {
			w := newPublishWaits()
			w.add(1, 1, 0, &bus.Pending{})
			w.add(2, 2, 0, &bus.Pending{})
			got := make(chan bool, 1)
			go func() { got <- w.waitBelow(2, nil, nil) }()
			testkit.Eventually(t, "waitBelow parked", func() bool { return w.heldAt(2) })
			select {
			case v := <-got:
				t.Fatalf("waitBelow returned %v at the limit", v)
			default:
			}
			want := true
			if end == "resolve" {
				w.resolve(1, 1)
			} else {
				w.stop()
				want = false
			}
			if v := <-got; v != want {
				t.Fatalf("waitBelow after %s = %v, want %v", end, v, want)
			}
		})
	}
}

func TestPublishWaitsWaitEmptyOutlastsStop(t *testing.T) {
	w := newPublishWaits()
	w.add(1, 1, 0, &bus.Pending{})
	w.stop()
	done := make(chan struct{})
	go func() {
		w.waitEmpty()
		close(done)
	}()
	testkit.Eventually(t, "waitEmpty parked", func() bool { return w.heldAt(1) })
	select {
	case <-done:
		t.Fatal("waitEmpty returned with a publish still waiting")
	default:
	}
	w.resolve(1, 1)
	<-done
}
