package load

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are kept in HDR histograms of nanoseconds with three
// significant digits (values within 0.1 %), from 1 ns to an hour; a longer
// one is recorded as an hour. A histogram takes constant memory (about
// 270 KB) however many events a run has.
const (
	histMax    = int64(time.Hour)
	histDigits = 3
	// histShards spreads concurrent recorders over several locks.
	histShards = 8
)

// Percentiles summarises a latency distribution.
type Percentiles struct {
	N    int           `json:"n"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
}

func percentilesOf(h *hdrhistogram.Histogram) Percentiles {
	if h.TotalCount() == 0 {
		return Percentiles{}
	}
	at := func(q float64) time.Duration { return time.Duration(h.ValueAtQuantile(q)) }
	return Percentiles{N: int(h.TotalCount()), P50: at(50), P90: at(90), P99: at(99), P999: at(99.9), Max: time.Duration(h.Max())}
}

func newHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, histMax, histDigits)
}

// latencies records durations from many goroutines: each records into the
// shard its index picks, and readers merge the shards.
type latencies struct {
	shards [histShards]struct {
		mu sync.Mutex
		h  *hdrhistogram.Histogram
		_  [48]byte // one cache line per shard
	}
}

func newLatencies() *latencies {
	l := &latencies{}
	for i := range l.shards {
		l.shards[i].h = newHistogram()
	}
	return l
}

// record adds d to the shard of goroutine number who.
func (l *latencies) record(who int, d time.Duration) {
	v := min(max(int64(d), 0), histMax)
	s := &l.shards[who%histShards]
	s.mu.Lock()
	_ = s.h.RecordValue(v) // v is within the histogram's range
	s.mu.Unlock()
}

// merged returns one histogram of everything recorded so far.
func (l *latencies) merged() *hdrhistogram.Histogram {
	h := newHistogram()
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		h.Merge(s.h)
		s.mu.Unlock()
	}
	return h
}

func (l *latencies) percentiles() Percentiles { return percentilesOf(l.merged()) }
