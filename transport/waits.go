package transport

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// publishWaits is a connection's bookkeeping of the publishes that wait for
// room in the bus. The read loop adds each publish the bus left waiting;
// the bus's done callbacks, on whatever goroutine decides the publish,
// remove it. The read loop also parks here while too many are waiting,
// which is the connection's flow control for publishes into full queues.
type publishWaits struct {
	mu      sync.Mutex
	changed *sync.Cond // signalled when a wait ends or stop is called
	// byID holds the waiting publishes by request id: a client that reuses
	// an id has several, told apart by their publish number.
	byID  shrinkingMap[int64, []waitRef]
	n     int   // publishes in byID
	bytes int64 // their budget costs
	// early is the number of a publish answered before add could store
	// it. Only the publish the read loop is handing to the bus can be in
	// that window, so one number is enough.
	early    uint64
	sleeping bool // a waitBelow or waitEmpty is parked on changed
	stopped  bool
}

// waitRef is a publish waiting for room: n tells apart publishes that
// share an id.
type waitRef struct {
	n    uint64
	cost int64
	p    *bus.Pending
}

func newPublishWaits() *publishWaits {
	w := &publishWaits{}
	w.changed = sync.NewCond(&w.mu)
	return w
}

// add records publish n (request id), whose event costs cost bytes, as
// waiting, unless resolve has already answered it. It reports whether
// the bookkeeping just grew large enough to be worth a shrink.
func (w *publishWaits) add(n uint64, id int64, cost int64, p *bus.Pending) (grown bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.early == n {
		return false
	}
	refs, _ := w.byID.get(id)
	grown = w.byID.put(id, append(refs, waitRef{n: n, cost: cost, p: p}))
	w.n++
	w.bytes += cost
	return grown
}

// shrink gives back the room of a burst of waits that is over, and
// reports whether the bookkeeping is still large (see shrinkingMap).
func (w *publishWaits) shrink() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.byID.shrink()
}

// resolve removes publish n (request id) once the bus has answered it. A
// publish not recorded yet is remembered so that its add is skipped. It
// never blocks on anything but the lock, since the bus calls it from its
// own critical paths.
func (w *publishWaits) resolve(n uint64, id int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	refs, _ := w.byID.get(id)
	i := slices.IndexFunc(refs, func(r waitRef) bool { return r.n == n })
	if i < 0 {
		w.early = n
		return
	}
	w.bytes -= refs[i].cost
	if len(refs) == 1 {
		w.byID.delete(id)
	} else {
		w.byID.put(id, slices.Delete(refs, i, i+1))
	}
	w.n--
	if w.sleeping {
		w.changed.Broadcast()
	}
}

// withID returns the waiting publishes with request id. The caller cancels
// them without the lock held, since Cancel calls resolve.
func (w *publishWaits) withID(id int64) []*bus.Pending {
	w.mu.Lock()
	defer w.mu.Unlock()
	refs, _ := w.byID.get(id)
	ps := make([]*bus.Pending, 0, len(refs))
	for _, r := range refs {
		ps = append(ps, r.p)
	}
	return ps
}

// all returns every waiting publish; see withID.
func (w *publishWaits) all() []*bus.Pending {
	w.mu.Lock()
	defer w.mu.Unlock()
	ps := make([]*bus.Pending, 0, w.n)
	for _, refs := range w.byID.all {
		for _, r := range refs {
			ps = append(ps, r.p)
		}
	}
	return ps
}

// waitBelow blocks while limit or more publishes are waiting, or while
// their events cost maxBytes or more (nil: no byte limit; it may change
// meanwhile, and is read again whenever the waiter wakes). It returns
// false, at once or when woken, after stop, or when gone (if not nil),
// asked every recheckParked while parked, reports the client gone: a
// parked reader would not see it otherwise.
func (w *publishWaits) waitBelow(limit int, maxBytes *atomic.Int64, gone func() bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	over := func() bool { return maxBytes != nil && w.bytes >= maxBytes.Load() }
	for (w.n >= limit || over()) && !w.stopped {
		var t *time.Timer
		if gone != nil {
			t = time.AfterFunc(recheckParked, func() {
				w.mu.Lock()
				w.changed.Broadcast()
				w.mu.Unlock()
			})
		}
		w.sleeping = true
		w.changed.Wait()
		w.sleeping = false
		if t != nil {
			t.Stop()
			if gone() {
				return false
			}
		}
	}
	return !w.stopped
}

// waitEmpty blocks until no publish is waiting. Unlike waitBelow it does
// not end at stop: the connection waits for every answer before it closes
// its output.
func (w *publishWaits) waitEmpty() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.n > 0 {
		w.sleeping = true
		w.changed.Wait()
		w.sleeping = false
	}
}

// stop releases waitBelow for good: the connection is going away.
func (w *publishWaits) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.changed.Broadcast()
}
