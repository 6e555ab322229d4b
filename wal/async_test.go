package wal

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
)

// asyncResults collects AppendAsync callbacks in the order they ran.
type asyncResults struct {
	mu    sync.Mutex
	seqs  []uint64
	errs  []error
	lasts []bool
	all   chan struct{}
	want  int
}

func newAsyncResults(want int) *asyncResults {
	return &asyncResults{all: make(chan struct{}), want: want}
}

func (r *asyncResults) done(a Appended, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seqs = append(r.seqs, a.Seq)
	r.errs = append(r.errs, err)
	r.lasts = append(r.lasts, a.Last)
	if len(r.seqs) == r.want {
		close(r.all)
	}
}

func (r *asyncResults) wait(t *testing.T) {
	t.Helper()
	waitFor(t, "every AppendAsync callback", func() bool {
		select {
		case <-r.all:
			return true
		default:
			return false
		}
	})
}

func TestAppendAsyncCallsBackInSeqOrderAndRecovers(t *testing.T) {
	dir := t.TempDir()
	fsys := newFaultFS()
	opts := testOpts()
	opts.FS = fsys
	l, _ := openT(t, dir, opts)
	const n = 200
	res := newAsyncResults(n)
	var issued []uint64
	for i := range n {
		seq, err := l.AppendAsync([]byte(fmt.Sprintf("event %d", i)), fmt.Sprintf("m-%d", i), fixedNow, res.done)
		if err != nil {
			t.Fatalf("AppendAsync %d: %v", i, err)
		}
		issued = append(issued, seq)
	}
	res.wait(t)
	if fmt.Sprint(res.seqs) != fmt.Sprint(issued) {
		t.Fatalf("callbacks ran for seqs %v, want the issued order %v", res.seqs, issued)
	}
	for i, err := range res.errs {
		if err != nil {
			t.Fatalf("callback %d: %v", i, err)
		}
	}
	// Group commit: 200 appends issued without waiting share far fewer syncs.
	if syncs := fsys.syncCount(); syncs >= n {
		t.Fatalf("%d syncs for %d pipelined appends: want them shared", syncs, n)
	}
	closeT(t, l)
	l, rec := openT(t, dir, testOpts())
	defer closeT(t, l)
	if got := seqs(rec.Records); fmt.Sprint(got) != fmt.Sprint(issued) {
		t.Fatalf("recovered %v, want %v", got, issued)
	}
	if len(rec.MsgIDs) != n {
		t.Fatalf("recovered %d msg ids, want %d", len(rec.MsgIDs), n)
	}
}

func TestAppendAsyncReportsStorageErrors(t *testing.T) {
	dir := t.TempDir()
	fsys := newFaultFS()
	opts := testOpts()
	opts.FS = fsys
	l, _ := openT(t, dir, opts)
	good := appendT(t, l, "before")
	fsys.set(func(f *faultFS) { f.syncErr = syscall.EIO })
	res := newAsyncResults(1)
	failed, err := l.AppendAsync([]byte("lost"), "m-lost", fixedNow, res.done)
	if err != nil {
		t.Fatal(err)
	}
	res.wait(t)
	if !errors.Is(res.errs[0], ErrStorage) || !errors.Is(res.errs[0], syscall.EIO) || res.seqs[0] != failed {
		t.Fatalf("callback got seq %d, %v; want seq %d with ErrStorage wrapping EIO", res.seqs[0], res.errs[0], failed)
	}
	fsys.set(func(f *faultFS) { f.syncErr = nil })
	res = newAsyncResults(1)
	after, err := l.AppendAsync([]byte("after"), "", fixedNow, res.done)
	if err != nil {
		t.Fatal(err)
	}
	res.wait(t)
	if res.errs[0] != nil {
		t.Fatalf("AppendAsync after the disk recovered: %v", res.errs[0])
	}
	closeT(t, l)
	l, rec := openT(t, dir, testOpts())
	defer closeT(t, l)
	if got := fmt.Sprint(seqs(rec.Records)); got != fmt.Sprint([]uint64{good, after}) {
		t.Fatalf("recovered %s, want [%d %d]", got, good, after)
	}
}

func TestAppendAsyncRefusesAtOnce(t *testing.T) {
	l, _ := openT(t, t.TempDir(), testOpts())
	if _, err := l.AppendAsync([]byte("x"), "", fixedNow, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil callback: %v, want ErrInvalid", err)
	}
	called := false
	if _, err := l.AppendAsync([]byte("x"), string(make([]byte, maxMsgIDLen+1)), fixedNow, func(Appended, error) { called = true }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("long msg id: %v, want ErrInvalid", err)
	}
	closeT(t, l)
	if _, err := l.AppendAsync([]byte("x"), "", fixedNow, func(Appended, error) { called = true }); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
	if called {
		t.Fatal("a callback ran for an append refused at once")
	}
}

func TestAppendAsyncCallbackMayAppend(t *testing.T) {
	l, _ := openT(t, t.TempDir(), testOpts())
	defer closeT(t, l)
	res := newAsyncResults(2)
	var second func(Appended, error) = res.done
	_, err := l.AppendAsync([]byte("first"), "", fixedNow, func(a Appended, err error) {
		res.done(a, err)
		if _, err := l.AppendAsync([]byte("second"), "", fixedNow, second); err != nil {
			t.Errorf("AppendAsync from a callback: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	res.wait(t)
	if res.errs[0] != nil || res.errs[1] != nil || res.seqs[1] != res.seqs[0]+1 {
		t.Fatalf("got seqs %v errs %v", res.seqs, res.errs)
	}
}

// TestAppendAsyncMarksTheLastOfAWrite holds the sync of a first append so
// that the next ones share a write, and checks that Appended.Last marks
// the last callback of each write, and only that one, whether the write
// succeeds or fails.
func TestAppendAsyncMarksTheLastOfAWrite(t *testing.T) {
	for _, tc := range []struct {
		name      string
		failWrite bool // the second write fails (disk full)
	}{
		{name: "stored"},
		{name: "write failed", failWrite: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := newFaultFS()
			opts := testOpts()
			opts.FS = fsys
			l, _ := openT(t, t.TempDir(), opts)
			t.Cleanup(func() { l.Close() })
			gate := make(chan struct{})
			fsys.set(func(f *faultFS) { f.gate, f.syncs = gate, 0 })
			const later = 5
			res := newAsyncResults(1 + later)
			if _, err := l.AppendAsync([]byte("first"), "", fixedNow, res.done); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the first append's sync", func() bool { return fsys.syncCount() == 1 })
			if tc.failWrite {
				fsys.set(func(f *faultFS) { f.budget = 0 })
			}
			for i := range later {
				if _, err := l.AppendAsync([]byte(fmt.Sprintf("later %d", i)), "", fixedNow, res.done); err != nil {
					t.Fatal(err)
				}
			}
			close(gate)
			res.wait(t)
			want := []bool{true, false, false, false, false, true}
			if fmt.Sprint(res.lasts) != fmt.Sprint(want) {
				t.Fatalf("Last = %v, want %v (one write of 1, one of %d)", res.lasts, want, later)
			}
			for i, err := range res.errs {
				if failed := i > 0 && tc.failWrite; (err != nil) != failed {
					t.Fatalf("callback %d: err %v, want failed %v", i, err, failed)
				}
			}
		})
	}
}

// TestAppendAsyncCallbacksKeepSeqOrderAcrossGoroutines: the syncer runs a
// write's callbacks itself only when the completer has none left to run.
// A first write's callback is held in the completer (its write completed
// with another append pending); a second write that completes alone
// meanwhile must wait behind it, not run first on the syncer.
func TestAppendAsyncCallbacksKeepSeqOrderAcrossGoroutines(t *testing.T) {
	fsys := newFaultFS()
	opts := testOpts()
	opts.FS = fsys
	l, _ := openT(t, t.TempDir(), opts)
	t.Cleanup(func() { l.Close() })
	firstSync, secondSync := make(chan struct{}), make(chan struct{})
	fsys.set(func(f *faultFS) { f.gate, f.syncs = firstSync, 0 })

	res := newAsyncResults(2)
	hold, held := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release)
	first, err := l.AppendAsync([]byte("first"), "", fixedNow, func(a Appended, err error) {
		close(held)
		<-hold
		res.done(a, err)
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first append's sync", func() bool { return fsys.syncCount() == 1 })
	second, err := l.AppendAsync([]byte("second"), "", fixedNow, res.done)
	if err != nil {
		t.Fatal(err)
	}
	fsys.set(func(f *faultFS) { f.gate = secondSync })
	close(firstSync)
	<-held
	waitFor(t, "the second append's sync", func() bool { return fsys.syncCount() == 2 })
	fsys.set(func(f *faultFS) { f.gate = nil })
	close(secondSync)
	// Nothing is pending now: the second write's callback is either queued
	// behind the held one or (wrongly) run at once.
	waitFor(t, "the second write's completion", func() bool {
		res.mu.Lock()
		defer res.mu.Unlock()
		return l.completing.Load() == 2 || len(res.seqs) > 0
	})
	release()
	res.wait(t)
	if want := []uint64{first, second}; fmt.Sprint(res.seqs) != fmt.Sprint(want) {
		t.Fatalf("callbacks ran for seqs %v, want %v", res.seqs, want)
	}
}
