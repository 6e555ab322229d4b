package bus

import (
	"fmt"
	"math/rand/v2"
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
	if n := d.remembered(); n != MaxDedupeIDs {
		t.Fatalf("%d ids remembered, want MaxDedupeIDs (%d)", n, MaxDedupeIDs)
	}
	if live := d.n; live != MaxDedupeIDs {
		t.Fatalf("%d ids in accept order, want %d", live, MaxDedupeIDs)
	}
	// The ids span at most one block more than they fill, and one more
	// may be spare.
	if held, most := d.heldBlocks(), MaxDedupeIDs/dedupeBlockLen+2; held > most {
		t.Fatalf("accept order holds %d blocks for %d ids, want at most %d: it grows with the publishes", held, MaxDedupeIDs, most)
	}
	if n, most := len(d.blocks), 2*(MaxDedupeIDs/dedupeBlockLen+1); n > most {
		t.Fatalf("block list of %d for %d ids, want at most %d", n, MaxDedupeIDs, most)
	}
	if n, most := len(d.slots), slotsPerEntry*MaxDedupeIDs; n > most {
		t.Fatalf("table of %d slots for %d ids, want at most %d", n, MaxDedupeIDs, most)
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

// TestDedupeHoldsBlocksForItsWindow checks that a window whose ids leave
// as fast as they come, by time or past the bound, allocates nothing as
// its ring moves on, and that the ring gives back its blocks once its ids
// have expired, keeping the head's and a spare.
func TestDedupeHoldsBlocksForItsWindow(t *testing.T) {
	const publishes = 1000 // per count of allocations
	ids := make([]string, 4*MaxDedupeIDs)
	for i := range ids {
		ids[i] = fmt.Sprint("id-", i)
	}
	for _, tt := range []struct {
		name   string
		window time.Duration // at one publish a microsecond
		warm   int           // publishes before the count
	}{
		{"expiring by time", time.Millisecond, 10000},
		{"past the bound", time.Hour, MaxDedupeIDs + 1000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDedupe(tt.window)
			at := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
			i := 0
			publish := func() {
				id := ids[i%len(ids)]
				i++
				at = at.Add(time.Microsecond)
				if _, ok := d.lookup(id, at); ok {
					t.Fatalf("%s found in the window", id)
				}
				d.add(id, uint64(i), at, nil)
			}
			for range tt.warm {
				publish()
			}
			// One run of all the publishes: AllocsPerRun rounds the
			// average per run down, and a block is one allocation per
			// dedupeBlockLen publishes.
			allocs := testing.AllocsPerRun(1, func() {
				for range publishes {
					publish()
				}
			})
			if allocs != 0 {
				t.Errorf("%v allocations in %d publishes, want 0", allocs, publishes)
			}
			d.lookup("none", at.Add(tt.window+time.Microsecond))
			if d.n != 0 {
				t.Fatalf("%d ids left after the window", d.n)
			}
			if held := d.heldBlocks(); held > 2 {
				t.Errorf("%d blocks held once every id expired, want at most 2", held)
			}
		})
	}
}

// TestDedupeSlotIsNeverEmpty: a slot of position 0 whose id's hash has a
// high half of 0 is not taken for an empty one.
func TestDedupeSlotIsNeverEmpty(t *testing.T) {
	if s := slotOf(0, 0); s == 0 {
		t.Fatalf("slotOf(0, 0) = %#x, the empty slot", s)
	}
}

// heldBlocks counts the blocks of the ring, the spare included.
func (d *dedupe) heldBlocks() int {
	n := 0
	for _, b := range d.blocks {
		if b != nil {
			n++
		}
	}
	if d.spare != nil {
		n++
	}
	return n
}

// remembered counts the ids the table finds.
func (d *dedupe) remembered() int {
	n := 0
	for _, r := range d.slots {
		if r != 0 {
			n++
		}
	}
	return n
}

// dedupeModel is the dedupe window as its contract states it, in the
// plainest code: a map of the remembered ids and a list of every add in
// accept order, of which the last MaxDedupeIDs count towards the bound.
type dedupeModel struct {
	window time.Duration
	ids    map[string]msgIDRec
	order  []dedupeModelAdd
}

type dedupeModelAdd struct {
	id  string
	seq uint64
	at  time.Time
}

func (m *dedupeModel) dropFirst() {
	a := m.order[0]
	if r, ok := m.ids[a.id]; ok && r.seq == a.seq {
		delete(m.ids, a.id)
	}
	m.order = m.order[1:]
}

func (m *dedupeModel) lookup(id string, now time.Time) (msgIDRec, bool) {
	for len(m.order) > 0 && m.order[0].at.Before(now.Add(-m.window)) {
		m.dropFirst()
	}
	r, ok := m.ids[id]
	return r, ok
}

func (m *dedupeModel) add(id string, seq uint64, at time.Time, commit *Pending) {
	m.ids[id] = msgIDRec{seq: seq, commit: commit}
	m.order = append(m.order, dedupeModelAdd{id, seq, at})
	if len(m.order) > MaxDedupeIDs {
		m.dropFirst()
	}
}

func (m *dedupeModel) stored(id string, seq uint64) {
	if r, ok := m.ids[id]; ok && r.seq == seq {
		r.commit = nil
		m.ids[id] = r
	}
}

func (m *dedupeModel) forget(id string, seq uint64) {
	if r, ok := m.ids[id]; ok && r.seq == seq {
		delete(m.ids, id)
	}
}

// TestDedupeAgainstModel runs random publishes (a lookup, then an add when
// it misses), stores, failed appends and adds of ids already remembered
// against the model, and checks that both answer every lookup alike. The
// id space is small enough for repeats and hash collisions in one table,
// and the runs long enough to pass the bound, expire by time and grow.
// On the system clock (mono) the times carry a monotonic reading, except
// those of recovered ids, which the log has on the wall clock only. Some
// runs start just short of where the ring's positions wrap around.
func TestDedupeAgainstModel(t *testing.T) {
	const nearWrap = 1<<32 - 3*dedupeBlockLen
	for _, tt := range []struct {
		name   string
		window time.Duration
		ids    int // distinct ids drawn from
		ops    int
		step   time.Duration // the clock's largest advance per op
		mono   bool
		start  uint32 // the ring position of the first add
	}{
		{"small window", 50 * time.Millisecond, 500, 20000, time.Millisecond, false, 0},
		{"small window across the wrap", 50 * time.Millisecond, 500, 20000, time.Millisecond, false, nearWrap},
		{"bounded", time.Hour, 4 * MaxDedupeIDs, 3 * MaxDedupeIDs, time.Millisecond, false, 0},
		{"bounded across the wrap", time.Hour, 4 * MaxDedupeIDs, 3 * MaxDedupeIDs, time.Millisecond, false, nearWrap},
		{"repeats past the bound", time.Hour, MaxDedupeIDs + MaxDedupeIDs/2, 3 * MaxDedupeIDs, time.Millisecond, false, 0},
		{"bursts and pauses", 2 * time.Second, 3000, 30000, 100 * time.Millisecond, false, 0},
		{"system clock, small window", 50 * time.Millisecond, 500, 20000, time.Millisecond, true, 0},
		{"system clock, bursts and pauses", 2 * time.Second, 3000, 30000, 100 * time.Millisecond, true, nearWrap},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tt.ops)))
			d := newDedupe(tt.window)
			d.head = tt.start
			m := &dedupeModel{window: tt.window, ids: make(map[string]msgIDRec)}
			now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
			if tt.mono {
				now = time.Now()
			}
			var seq uint64
			type logAppend struct {
				id  string
				seq uint64
			}
			var inFlight []logAppend // adds with a commit, not yet stored or failed
			ids := make([]string, tt.ids)
			for i := range ids {
				ids[i] = fmt.Sprint("msg-", i)
			}
			for op := range tt.ops {
				if rng.IntN(50) == 0 {
					now = now.Add(time.Duration(rng.Int64N(int64(tt.step) * 20)))
				} else {
					now = now.Add(time.Duration(rng.Int64N(int64(tt.step))))
				}
				id := ids[rng.IntN(len(ids))]
				got, gotOK := d.lookup(id, now)
				want, wantOK := m.lookup(id, now)
				if gotOK != wantOK || got != want {
					t.Fatalf("op %d: lookup(%s) = %+v, %v; the model says %+v, %v", op, id, got, gotOK, want, wantOK)
				}
				switch r := rng.IntN(10); {
				case r < 6 && !gotOK, r == 6:
					// A publish, or (r == 6) a recovered id, which may
					// repeat one remembered; a third are still being
					// stored.
					seq++
					var c *Pending
					if rng.IntN(3) == 0 {
						c = &Pending{}
						inFlight = append(inFlight, logAppend{id, seq})
					}
					at := now
					if r == 6 {
						at = now.Round(0)
					}
					d.add(id, seq, at, c)
					m.add(id, seq, at, c)
				case r < 9 && len(inFlight) > 0:
					// The log answers an append, perhaps of an id
					// forgotten meanwhile: stored, or failed.
					k := rng.IntN(len(inFlight))
					a := inFlight[k]
					inFlight[k] = inFlight[len(inFlight)-1]
					inFlight = inFlight[:len(inFlight)-1]
					if r == 7 {
						d.stored(a.id, a.seq)
						m.stored(a.id, a.seq)
					} else {
						d.forget(a.id, a.seq)
						m.forget(a.id, a.seq)
					}
				}
			}
			if got, want := d.remembered(), len(m.ids); got != want {
				t.Fatalf("%d ids remembered; the model remembers %d", got, want)
			}
			for id, want := range m.ids {
				if got, ok := d.lookup(id, now); !ok || got != want {
					t.Fatalf("lookup(%s) = %+v, %v at the end; the model says %+v", id, got, ok, want)
				}
			}
		})
	}
}
