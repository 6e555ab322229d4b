package bus

import (
	"errors"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestHistogramBucketOnBounds checks that a duration lands where the SDK's
// search over the bounds in seconds puts its Seconds(): a value on a bound
// in that bound's bucket, one nanosecond more in the next.
func TestHistogramBucketOnBounds(t *testing.T) {
	bounds := durationBuckets()
	if len(bounds) != numBounds {
		t.Fatalf("durationBuckets has %d bounds, numBounds is %d", len(bounds), numBounds)
	}
	type tc struct {
		d    time.Duration
		want int
	}
	cases := []tc{
		{-time.Second, 0},
		{0, 0},
		{time.Duration(1<<63 - 1), numBounds},
	}
	for i, s := range bounds {
		d := time.Duration(math.Round(s * 1e9))
		if d.Seconds() != s {
			t.Fatalf("bound %v is not a whole number of nanoseconds", s)
		}
		cases = append(cases, tc{d - 1, i}, tc{d, i}, tc{d + 1, i + 1})
	}
	qh := newQueueHistograms("q")
	for _, c := range cases {
		if got := bucketOf(&qh.bounds, int64(c.d)); got != c.want {
			t.Errorf("bucketOf(%v) = %d, want %d", c.d, got, c.want)
		}
		if want := searchSeconds(bounds, c.d.Seconds()); want != c.want {
			t.Errorf("the SDK's search puts %v in bucket %d, the case says %d", c.d, want, c.want)
		}
	}
}

// searchSeconds is the SDK's bucket search (sort.SearchFloat64s), spelt
// out so that the test does not rest on the code under test.
func searchSeconds(bounds []float64, v float64) int {
	for i, b := range bounds {
		if v <= b {
			return i
		}
	}
	return len(bounds)
}

func TestHistogramRecordAndSnapshot(t *testing.T) {
	tests := []struct {
		name       string
		values     []time.Duration
		wantCounts map[int]uint64
		wantSum    time.Duration
		wantMin    time.Duration
		wantMax    time.Duration
		extremes   bool
	}{
		{name: "nothing recorded"},
		{
			name:       "one on a bound",
			values:     []time.Duration{time.Microsecond},
			wantCounts: map[int]uint64{0: 1},
			wantSum:    time.Microsecond, wantMin: time.Microsecond, wantMax: time.Microsecond, extremes: true,
		},
		{
			name:       "spread, the largest above every bound",
			values:     []time.Duration{3 * time.Microsecond, time.Microsecond + 1, 11 * time.Second, 2 * time.Microsecond},
			wantCounts: map[int]uint64{1: 2, 2: 1, numBounds: 1},
			wantSum:    11*time.Second + 6*time.Microsecond + 1, wantMin: time.Microsecond + 1, wantMax: 11 * time.Second, extremes: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHistograms()
			qh := newQueueHistograms("q")
			if err := h.attach([]*queueHistograms{qh}, time.Unix(1, 0)); err != nil {
				t.Fatal(err)
			}
			for _, v := range tt.values {
				qh.record(HistogramQueued, v)
			}
			pts := h.Snapshot(nil, false)
			if len(pts) != int(numHistograms) {
				t.Fatalf("%d points, want %d", len(pts), numHistograms)
			}
			for _, p := range pts {
				if p.Queue != "q" || len(p.Counts) != numBounds+1 {
					t.Fatalf("point %+v: want queue q and %d counts", p, numBounds+1)
				}
				if p.Kind != HistogramQueued {
					if p.Count != 0 || p.Sum != 0 || p.HasExtremes {
						t.Errorf("kind %d recorded nothing, has %+v", p.Kind, p)
					}
					continue
				}
				var total uint64
				for i, c := range p.Counts {
					total += c
					if c != tt.wantCounts[i] {
						t.Errorf("bucket %d: %d, want %d", i, c, tt.wantCounts[i])
					}
				}
				if p.Count != uint64(len(tt.values)) || p.Count != total {
					t.Errorf("count %d, want %d (buckets sum to %d)", p.Count, len(tt.values), total)
				}
				if p.Sum != tt.wantSum {
					t.Errorf("sum %v, want %v", p.Sum, tt.wantSum)
				}
				if p.HasExtremes != tt.extremes || p.Min != tt.wantMin || p.Max != tt.wantMax {
					t.Errorf("extremes %v %v..%v, want %v %v..%v", p.HasExtremes, p.Min, p.Max, tt.extremes, tt.wantMin, tt.wantMax)
				}
			}
		})
	}
}

func TestHistogramExtremesReset(t *testing.T) {
	h := NewHistograms()
	qh := newQueueHistograms("q")
	if err := h.attach([]*queueHistograms{qh}, time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	qh.record(HistogramPublish, time.Millisecond)
	qh.record(HistogramPublish, time.Second)
	extremes := func(reset bool) HistogramPoint {
		t.Helper()
		return h.Snapshot(nil, reset)[HistogramPublish]
	}
	if p := extremes(true); !p.HasExtremes || p.Min != time.Millisecond || p.Max != time.Second {
		t.Fatalf("first interval: %+v", p)
	}
	if p := extremes(true); p.HasExtremes || p.Count != 2 {
		t.Fatalf("nothing recorded since the reset: %+v, want no extremes and the count kept", p)
	}
	qh.record(HistogramPublish, 5*time.Millisecond)
	if p := extremes(false); !p.HasExtremes || p.Min != 5*time.Millisecond || p.Max != 5*time.Millisecond || p.Count != 3 {
		t.Fatalf("second interval: %+v", p)
	}
}

// TestHistogramConcurrentRecords records from several goroutines while a
// reader takes snapshots: run with -race, and no recording may be lost.
func TestHistogramConcurrentRecords(t *testing.T) {
	h := NewHistograms()
	qh := newQueueHistograms("q")
	if err := h.attach([]*queueHistograms{qh}, time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	const writers, each = 4, 2000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var readerWG sync.WaitGroup
	readerWG.Add(1)
	go func() {
		defer readerWG.Done()
		var pts []HistogramPoint
		for {
			select {
			case <-stop:
				return
			default:
			}
			pts = h.Snapshot(pts[:0], false)
			p := pts[HistogramPublish]
			if p.HasExtremes && (p.Min < 1 || p.Max > writers*each) {
				t.Errorf("extremes %v..%v outside what was recorded", p.Min, p.Max)
				return
			}
		}
	}()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				qh.record(HistogramPublish, time.Duration(w*each+i+1))
			}
		}()
	}
	wg.Wait()
	close(stop)
	readerWG.Wait()
	p := h.Snapshot(nil, false)[HistogramPublish]
	const n = writers * each
	want := make([]uint64, numBounds+1)
	for v := 1; v <= n; v++ {
		want[searchSeconds(durationBuckets(), time.Duration(v).Seconds())]++
	}
	if p.Count != n || !slices.Equal(p.Counts, want) {
		t.Errorf("count %d, buckets %v, want %d and %v", p.Count, p.Counts, n, want)
	}
	if want := time.Duration(n * (n + 1) / 2); p.Sum != want {
		t.Errorf("sum %v, want %v", p.Sum, want)
	}
	if p.Min != 1 || p.Max != n {
		t.Errorf("extremes %v..%v, want 1ns..%v", p.Min, p.Max, time.Duration(n))
	}
}

func TestHistogramsServeOneBus(t *testing.T) {
	h := NewHistograms()
	b, err := New(DefaultQueues(), WithHistograms(h))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = b.Shutdown(t.Context()) })
	if h.Start().IsZero() {
		t.Error("no start time once a bus records into the histograms")
	}
	if _, err := New(DefaultQueues(), WithHistograms(h)); !errors.Is(err, ErrHistogramsInUse) {
		t.Errorf("a second bus on the same histograms: %v, want ErrHistogramsInUse", err)
	}
}
