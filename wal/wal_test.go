package wal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRecoverDeliveryState(t *testing.T) {
	dir := t.TempDir()
	l, rec := openT(t, dir, testOpts())
	if len(rec.Records) != 0 || rec.NextSeq != 1 {
		t.Fatalf("fresh log recovered %+v, want nothing and next seq 1", rec)
	}
	s1, s2, s3, s4 := appendT(t, l, "one"), appendT(t, l, "two"), appendT(t, l, "three"), appendT(t, l, "four")
	for _, step := range []struct {
		op  func(uint64) error
		seq uint64
	}{{l.Deliver, s1}, {l.Nack, s1}, {l.Deliver, s1}, {l.Deliver, s2}, {l.Deliver, s3}, {l.Ack, s3}} {
		if err := step.op(step.seq); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, l)

	l, rec = openT(t, dir, testOpts())
	defer closeT(t, l)
	want := []Record{
		{Seq: s1, Data: []byte("one"), Deliveries: 2, InFlight: true},
		{Seq: s2, Data: []byte("two"), Deliveries: 1, InFlight: true},
		{Seq: s4, Data: []byte("four")},
	}
	if got := fmt.Sprint(strip(rec.Records)); got != fmt.Sprint(want) {
		t.Fatalf("recovered\n%v\nwant\n%v", got, want)
	}
	if rec.NextSeq != s4+1 {
		t.Fatalf("NextSeq = %d, want %d", rec.NextSeq, s4+1)
	}
	if err := l.Ack(s3); !errors.Is(err, ErrUnknownSeq) {
		t.Fatalf("Ack of an acked seq: %v, want ErrUnknownSeq", err)
	}
}

// strip zeroes AcceptedAt so records print comparably.
func strip(rs []Record) []Record {
	out := make([]Record, len(rs))
	for i, r := range rs {
		r.AcceptedAt = time.Time{}
		out[i] = r
	}
	return out
}

func TestSeqContinuesAfterEverythingAcked(t *testing.T) {
	dir := t.TempDir()
	opts := smallSegmentOpts()
	l, _ := openT(t, dir, opts)
	var last uint64
	for i := 0; i < 100; i++ { // several rotations delete every event
		last = appendT(t, l, strings.Repeat("x", 100))
		if err := l.Ack(last); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, l)
	l, rec := openT(t, dir, opts)
	defer closeT(t, l)
	if len(rec.Records) != 0 {
		t.Fatalf("acked events came back: %v", rec.Records)
	}
	if rec.NextSeq != last+1 {
		t.Fatalf("NextSeq = %d, want %d", rec.NextSeq, last+1)
	}
	if s := appendT(t, l, "next"); s != last+1 {
		t.Fatalf("next append got seq %d, want %d", s, last+1)
	}
}

func TestDedupeWindowSurvivesAckAndRotation(t *testing.T) {
	dir := t.TempDir()
	now := fixedNow
	opts := smallSegmentOpts()
	opts.Now = func() time.Time { return now }
	opts.DedupeWindow = time.Minute
	l, _ := openT(t, dir, opts)
	ctx := context.Background()
	old, err := l.Append(ctx, []byte("old"), "id-old", now.Add(-2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := l.Append(ctx, []byte("fresh"), "id-fresh", now)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []uint64{old.Seq, fresh.Seq} {
		if err := l.Ack(s); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 100; i++ { // rotate the ids' own segment away
		if err := l.Ack(appendT(t, l, strings.Repeat("y", 100))); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, l)
	l, rec := openT(t, dir, opts)
	defer closeT(t, l)
	if len(rec.MsgIDs) != 1 || rec.MsgIDs[0].ID != "id-fresh" || rec.MsgIDs[0].Seq != fresh.Seq || !rec.MsgIDs[0].AcceptedAt.Equal(now) {
		t.Fatalf("MsgIDs = %+v, want only id-fresh (seq %d); id-old is outside the window", rec.MsgIDs, fresh.Seq)
	}
}

func TestDiskBoundedWithOldUnackedEvent(t *testing.T) {
	dir := t.TempDir()
	opts := testOpts()
	opts.SegmentSize = 8192
	opts.MaxRecord = 2048
	l, _ := openT(t, dir, opts)
	stuck := appendT(t, l, "stuck")
	if err := l.Deliver(stuck); err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("z", 1000)
	var maxBytes int64
	for i := 0; i < 500; i++ { // ~60 segments' worth
		if err := l.Ack(appendT(t, l, payload)); err != nil {
			t.Fatal(err)
		}
		maxBytes = max(maxBytes, dirBytes(t, dir))
	}
	// One segment of dead records plus the batch that crossed it plus the
	// stuck event.
	if limit := opts.SegmentSize + 2*int64(opts.MaxRecord); maxBytes > limit {
		t.Fatalf("segments reached %d bytes, want at most %d", maxBytes, limit)
	}
	closeT(t, l)
	l, rec := openT(t, dir, opts)
	defer closeT(t, l)
	if len(rec.Records) != 1 || rec.Records[0].Seq != stuck || rec.Records[0].Deliveries != 1 || !rec.Records[0].InFlight {
		t.Fatalf("recovered %+v, want only seq %d, delivered once, in flight", rec.Records, stuck)
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files after open, want 1", n)
	}
}

func TestTornTailIsCut(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tear     func(data []byte) []byte
		lastKept bool
	}{
		{"partial record", func(d []byte) []byte { return d[:len(d)-3] }, false},
		{"bad checksum of the last record", func(d []byte) []byte { d[len(d)-1] ^= 0xff; return d }, false},
		{"partial record header", func(d []byte) []byte { return append(d, 7, 0, 0) }, true},
		{"zero-filled tail", func(d []byte) []byte { return append(d, make([]byte, 100)...) }, true},
		{"torn beyond the length", func(d []byte) []byte { return append(d, 200, 0, 0, 0, 1, 2, 3, 4, 1, 9) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, _ := openT(t, dir, testOpts())
			s1 := appendT(t, l, "kept")
			s2 := appendT(t, l, "last")
			closeT(t, l)
			name := segFiles(t, dir)[0]
			data, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			torn := tc.tear(data)
			if err := os.WriteFile(name, torn, 0o600); err != nil {
				t.Fatal(err)
			}
			rep, err := Check(context.Background(), dir, Options{})
			if err != nil || rep.Damaged() || rep.Segments[0].TornBytes == 0 || !strings.Contains(rep.String(), "torn tail") {
				t.Fatalf("Check of a torn tail: %v\n%s\nwant the torn tail reported, not as damage", err, rep)
			}
			var logs logBuffer
			opts := testOpts()
			opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			l, rec := openT(t, dir, opts)
			defer closeT(t, l)
			want := []uint64{s1}
			if tc.lastKept {
				want = append(want, s2)
			}
			var got []uint64
			for _, r := range rec.Records {
				got = append(got, r.Seq)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("recovered seqs %v, want %v", got, want)
			}
			if rec.TornBytes <= 0 || !strings.Contains(logs.String(), "cut torn tail") || !strings.Contains(logs.String(), fmt.Sprintf("bytes=%d", rec.TornBytes)) {
				t.Fatalf("TornBytes %d, log %q: want the cut logged with its size", rec.TornBytes, logs.String())
			}
			// A torn record's Append never returned, so its seq was never
			// handed out and may be given again.
			if next := want[len(want)-1] + 1; rec.NextSeq != next {
				t.Fatalf("NextSeq = %d, want %d", rec.NextSeq, next)
			}
		})
	}
}

// corruptFirstRecord flips a byte inside the first record after the
// header of the only segment in dir and returns the segment's name.
func corruptFirstRecord(t *testing.T, dir string) string {
	t.Helper()
	name := segFiles(t, dir)[0]
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	data[headerSize+recHeaderSize+3] ^= 0x55
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestCorruptionRefusesOpenCheckAndSalvage(t *testing.T) {
	dir := t.TempDir()
	l, _ := openT(t, dir, testOpts())
	for _, d := range []string{"a", "b", "c"} {
		appendT(t, l, d)
	}
	closeT(t, l)
	name := corruptFirstRecord(t, dir)

	_, _, err := Open(context.Background(), dir, testOpts())
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", headerSize)) {
		t.Fatalf("Open of a damaged log: %v, want ErrCorrupt naming %s and offset %d", err, name, headerSize)
	}

	rep, err := Check(context.Background(), dir, Options{})
	if !errors.Is(err, ErrCorrupt) || !rep.Damaged() || rep.Segments[0].ValidBytes != headerSize {
		t.Fatalf("Check: %v, report %+v; want damage at offset %d", err, rep, headerSize)
	}
	if !strings.Contains(rep.String(), "DAMAGED") {
		t.Fatalf("report does not show the damage:\n%s", rep)
	}

	rep, err = Salvage(context.Background(), dir, Options{})
	if err != nil {
		t.Fatalf("Salvage: %v\n%s", err, rep)
	}
	moved := rep.Segments[0].MovedTo
	if moved == "" {
		t.Fatalf("Salvage moved nothing aside:\n%s", rep)
	}
	if _, err := os.Stat(moved); err != nil {
		t.Fatalf("moved-aside file: %v", err)
	}
	if rep, err := Check(context.Background(), dir, Options{}); err != nil {
		t.Fatalf("Check after Salvage: %v\n%s", err, rep)
	}
	l, rec := openT(t, dir, testOpts())
	defer closeT(t, l)
	if len(rec.Records) != 0 || rec.NextSeq != 1 {
		// The damage is in the first record: nothing precedes it, and
		// the header's next seq is all that is known.
		t.Fatalf("after salvage recovered %+v", rec)
	}
}

func TestSalvageKeepsRecordsBeforeDamage(t *testing.T) {
	dir := t.TempDir()
	l, _ := openT(t, dir, testOpts())
	s1 := appendT(t, l, "a")
	appendT(t, l, "b")
	appendT(t, l, "c")
	closeT(t, l)
	name := segFiles(t, dir)[0]
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	_, _, n, err := DecodeRecord(data[headerSize:], 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	data[headerSize+n+recHeaderSize+2] ^= 1 // inside the second record
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := Salvage(context.Background(), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Live != 1 || rep.Segments[0].ValidBytes != int64(headerSize+n) {
		t.Fatalf("Salvage report %+v, want 1 live event and %d valid bytes", rep, headerSize+n)
	}
	l, rec := openT(t, dir, testOpts())
	defer closeT(t, l)
	if len(rec.Records) != 1 || rec.Records[0].Seq != s1 {
		t.Fatalf("recovered %+v, want seq %d only", rec.Records, s1)
	}
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	l, _ := openT(t, dir, testOpts())
	defer closeT(t, l)
	_, _, err := Open(context.Background(), dir, testOpts())
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second Open: %v, want ErrLocked naming %s", err, dir)
	}
}

func TestDirectoryCreated0700(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "wal")
	l, _ := openT(t, dir, testOpts())
	defer closeT(t, l)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestAppendRejectsBadArguments(t *testing.T) {
	opts := testOpts()
	opts.MaxRecord = 1024
	l, _ := openT(t, t.TempDir(), opts)
	defer closeT(t, l)
	ctx := context.Background()
	if _, err := l.Append(ctx, nil, strings.Repeat("m", 257), fixedNow); !errors.Is(err, ErrInvalid) {
		t.Fatalf("257-byte msg id: %v, want ErrInvalid", err)
	}
	if _, err := l.Append(ctx, make([]byte, 1024), "", fixedNow); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "1024") {
		t.Fatalf("oversized event: %v, want ErrInvalid naming the limit", err)
	}
	if _, err := l.Append(ctx, nil, strings.Repeat("m", 256), fixedNow); err != nil {
		t.Fatalf("256-byte msg id: %v", err)
	}
	if _, _, err := Open(ctx, t.TempDir(), Options{Fsync: "sometimes"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"interval"`) {
		t.Fatalf("bad fsync mode: %v, want ErrInvalid listing the valid ones", err)
	}
}

func TestClosedLogRefuses(t *testing.T) {
	l, _ := openT(t, t.TempDir(), testOpts())
	s := appendT(t, l, "x")
	closeT(t, l)
	if _, err := l.Append(context.Background(), nil, "", fixedNow); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if err := l.Ack(s); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ack after Close: %v", err)
	}
}

func TestGroupCommitSharesOneSync(t *testing.T) {
	fsys := newFaultFS()
	opts := testOpts()
	opts.FS = fsys
	var infos []SyncInfo
	var infoMu sync.Mutex
	opts.OnSync = func(si SyncInfo) { infoMu.Lock(); infos = append(infos, si); infoMu.Unlock() }
	l, _ := openT(t, t.TempDir(), opts)
	defer closeT(t, l)
	gate := make(chan struct{})
	fsys.set(func(f *faultFS) { f.gate = gate })
	before := fsys.syncCount()
	first := make(chan Appended, 1)
	go func() { a, _ := l.Append(context.Background(), []byte("first"), "", fixedNow); first <- a }()
	waitFor(t, "the first sync to start", func() bool { return fsys.syncCount() > before })
	const n = 10
	var wg sync.WaitGroup
	results := make([]Appended, n)
	for i := range n {
		wg.Go(func() {
			a, err := l.Append(context.Background(), []byte("later"), "", fixedNow)
			if err != nil {
				t.Error(err)
			}
			results[i] = a
		})
	}
	waitFor(t, "ten appends to queue", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.pendCount == n })
	fsys.set(func(f *faultFS) { f.gate = nil })
	close(gate)
	wg.Wait()
	<-first
	if got := fsys.syncCount() - before; got != 2 {
		t.Fatalf("%d syncs for 11 appends, want 2 (one for the first, one for the ten behind it)", got)
	}
	for _, a := range results {
		if a.Batch != n {
			t.Fatalf("append reported batch %d, want %d", a.Batch, n)
		}
	}
	infoMu.Lock()
	defer infoMu.Unlock()
	if len(infos) < 2 || infos[len(infos)-1].Records != n {
		t.Fatalf("observer saw %+v, want a last sync of %d records", infos, n)
	}
}

func TestAppendHonoursContextButKeepsRecord(t *testing.T) {
	fsys := newFaultFS()
	opts := testOpts()
	opts.FS = fsys
	dir := t.TempDir()
	l, _ := openT(t, dir, opts)
	gate := make(chan struct{})
	fsys.set(func(f *faultFS) { f.gate = gate })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var a Appended
	before := fsys.syncCount()
	go func() {
		var err error
		a, err = l.Append(ctx, []byte("x"), "", fixedNow)
		done <- err
	}()
	waitFor(t, "the sync to start", func() bool { return fsys.syncCount() > before })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || a.Seq == 0 {
		t.Fatalf("Append with cancelled ctx: seq %d, %v; want the seq and context.Canceled", a.Seq, err)
	}
	fsys.set(func(f *faultFS) { f.gate = nil })
	close(gate)
	closeT(t, l)
	l, rec := openT(t, dir, testOpts())
	defer closeT(t, l)
	if len(rec.Records) != 1 || rec.Records[0].Seq != a.Seq {
		t.Fatalf("recovered %+v, want the written record %d", rec.Records, a.Seq)
	}
}
