package bus

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// HistogramKind names one of the bus's duration histograms; it indexes
// HistogramMetrics.
type HistogramKind int

// The bus's duration histograms, each with one series per queue.
const (
	// HistogramPublish is eventbus.publish.duration, one per publish.
	HistogramPublish HistogramKind = iota
	// HistogramWait is eventbus.queue.wait.duration, one per wait for room.
	HistogramWait
	// HistogramQueued is eventbus.event.queued.duration, one per delivery.
	HistogramQueued
	// HistogramSync is eventbus.wal.sync.duration, one per fdatasync.
	HistogramSync
	numHistograms
)

// HistogramMetric describes how one of the bus's histograms is exported:
// the same name, unit, description and bounds whether the bus records it
// into Histograms or into an OpenTelemetry instrument.
type HistogramMetric struct {
	Name        string
	Description string
	Unit        string
	// Bounds are the explicit bucket boundaries in seconds, ascending; a
	// bucket holds the values above the previous bound up to and including
	// its own, and one more bucket the values above the last.
	Bounds []float64
}

// HistogramMetrics returns the descriptions of the bus's histograms,
// indexed by HistogramKind.
func HistogramMetrics() []HistogramMetric {
	return []HistogramMetric{
		HistogramPublish: {Name: "eventbus.publish.duration", Unit: "s", Bounds: durationBuckets(),
			Description: "Time a publish took, including any wait for room."},
		HistogramWait: {Name: "eventbus.queue.wait.duration", Unit: "s", Bounds: durationBuckets(),
			Description: "Time a publisher was blocked waiting for room in a full queue."},
		HistogramQueued: {Name: "eventbus.event.queued.duration", Unit: "s", Bounds: durationBuckets(),
			Description: "Time from enqueue to delivery to a consumer."},
		HistogramSync: {Name: "eventbus.wal.sync.duration", Unit: "s", Bounds: durationBuckets(),
			Description: "Time a durable queue's write-ahead log took for one fdatasync."},
	}
}

// numBounds is len(durationBuckets()).
const numBounds = 22

// boundNanos returns durationBuckets in nanoseconds, which they all are
// whole numbers of: comparing a duration's nanoseconds with them places it
// in the same bucket as comparing its Seconds() with the bounds in seconds.
func boundNanos() (out [numBounds]int64) {
	for i, s := range durationBuckets() {
		out[i] = int64(math.Round(s * 1e9))
	}
	return out
}

// cacheLine separates histograms written by different goroutines (the
// publishers' and the consumers'), and the bounds every recording reads,
// so that no two of them share a line.
const cacheLine = 64

// durationHistogram is an explicit-bucket histogram of durations that
// records with atomics only: a bucket's count, the sum and, only when a
// value is a new extreme, a compare-and-swap of the minimum or maximum.
// It takes nanoseconds so that the sum is an integer add; values are
// converted to seconds only when read.
type durationHistogram struct {
	counts [numBounds + 1]atomic.Uint64
	sum    atomic.Int64
	// min and max are the extremes since the last takeExtremes; minEmpty
	// and maxEmpty mean none.
	min, max atomic.Int64
	_        [cacheLine]byte
}

const (
	minEmpty = math.MaxInt64
	maxEmpty = math.MinInt64
)

func (h *durationHistogram) init() {
	h.min.Store(minEmpty)
	h.max.Store(maxEmpty)
}

// bucketOf returns the index of the first of bounds at or above ns, or
// numBounds for a duration above them all.
func bucketOf(bounds *[numBounds]int64, ns int64) int {
	lo, hi := 0, numBounds
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if bounds[m] < ns {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

func (h *durationHistogram) record(bounds *[numBounds]int64, d time.Duration) {
	ns := int64(d)
	h.counts[bucketOf(bounds, ns)].Add(1)
	h.sum.Add(ns)
	for {
		cur := h.min.Load()
		if ns >= cur || h.min.CompareAndSwap(cur, ns) {
			break
		}
	}
	for {
		cur := h.max.Load()
		if ns <= cur || h.max.CompareAndSwap(cur, ns) {
			break
		}
	}
}

// takeExtremes returns the extremes recorded since the last call that
// reset them (ok false when none), and resets them when reset is set.
func (h *durationHistogram) takeExtremes(reset bool) (lo, hi time.Duration, ok bool) {
	var mn, mx int64
	if reset {
		mn, mx = h.min.Swap(minEmpty), h.max.Swap(maxEmpty)
	} else {
		mn, mx = h.min.Load(), h.max.Load()
	}
	// A record between the two reads may have set one and not yet the
	// other: report neither rather than a sentinel.
	if mn == minEmpty || mx == maxEmpty {
		return 0, 0, false
	}
	return time.Duration(mn), time.Duration(mx), true
}

// queueHistograms are one queue's histograms.
type queueHistograms struct {
	_      [cacheLine]byte
	queue  string
	bounds [numBounds]int64 // boundNanos, read only
	_      [cacheLine]byte
	h      [numHistograms]durationHistogram
}

func newQueueHistograms(queue string) *queueHistograms {
	qh := &queueHistograms{queue: queue, bounds: boundNanos()}
	for i := range qh.h {
		qh.h[i].init()
	}
	return qh
}

// record records d into the queue's histogram of kind k.
func (qh *queueHistograms) record(k HistogramKind, d time.Duration) {
	qh.h[k].record(&qh.bounds, d)
}

// ErrHistogramsInUse is returned by New when its Histograms already serve
// another bus.
var ErrHistogramsInUse = errors.New("bus: histograms already serve another bus")

// Histograms holds the bus's duration histograms (HistogramMetrics) when
// it records them itself rather than into OpenTelemetry instruments, so
// that an event costs a few atomic adds instead of the SDK's attribute
// lookup per recording. Whoever exports the metrics reads them with
// Snapshot. Create it with NewHistograms and pass it to one bus with
// WithHistograms.
type Histograms struct {
	mu     sync.Mutex // guards queues and start while a bus attaches
	queues []*queueHistograms
	start  time.Time
}

// NewHistograms returns an empty set of histograms for WithHistograms.
func NewHistograms() *Histograms { return &Histograms{} }

// attach gives h the bus's queues; it fails when h has queues already.
func (h *Histograms) attach(queues []*queueHistograms, start time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.queues != nil {
		return ErrHistogramsInUse
	}
	h.queues, h.start = queues, start
	return nil
}

// detach undoes attach, for a bus whose construction failed after it.
func (h *Histograms) detach() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.queues, h.start = nil, time.Time{}
}

// Start is when the bus attached and began recording (zero before).
func (h *Histograms) Start() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.start
}

// HistogramPoint is the state of one histogram series: every recording
// since the bus started, and the extremes since the last Snapshot that
// reset them (or since the start).
type HistogramPoint struct {
	Kind  HistogramKind
	Queue string
	// Counts has one count per bucket of HistogramMetric.Bounds, plus the
	// bucket above the last bound.
	Counts []uint64
	// Count is the sum of Counts.
	Count uint64
	Sum   time.Duration
	// Min and Max are set when HasExtremes is.
	Min, Max    time.Duration
	HasExtremes bool
}

// Snapshot appends the state of every series, per queue in the bus's
// order, then by kind, to dst (reusing its Counts slices) and returns it.
// With resetExtremes the extremes start again after being read, as an
// exporter of deltas needs. Recordings that run concurrently may show in
// one field and not yet in another; Count always equals the sum of Counts.
func (h *Histograms) Snapshot(dst []HistogramPoint, resetExtremes bool) []HistogramPoint {
	h.mu.Lock()
	queues := h.queues
	h.mu.Unlock()
	for _, qh := range queues {
		for k := range qh.h {
			dh := &qh.h[k]
			var p HistogramPoint
			if len(dst) < cap(dst) {
				p = dst[:len(dst)+1][len(dst)]
			}
			// Extremes first: a recording sets them last, so one whose
			// extremes are read here has already been counted below.
			p.Min, p.Max, p.HasExtremes = dh.takeExtremes(resetExtremes)
			p.Kind, p.Queue = HistogramKind(k), qh.queue
			p.Counts = p.Counts[:0]
			p.Count = 0
			for i := range dh.counts {
				c := dh.counts[i].Load()
				p.Counts = append(p.Counts, c)
				p.Count += c
			}
			p.Sum = time.Duration(dh.sum.Load())
			dst = append(dst, p)
		}
	}
	return dst
}
