package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestNackReasonSurvivesRestart records nacks with and without reasons,
// abandons, rotations and restarts, and checks that Open gives back the
// reason of the last nack recorded for each event.
func TestNackReasonSurvivesRestart(t *testing.T) {
	type step struct {
		op     string // deliver, nack, ack, reopen, rotate
		reason string
	}
	for _, tc := range []struct {
		name  string
		steps []step
		want  string
	}{
		{"one nack", []step{{op: "deliver"}, {op: "nack", reason: "bad price"}, {op: "reopen"}}, "bad price"},
		{"the last nack wins", []step{{op: "deliver"}, {op: "nack", reason: "first"}, {op: "deliver"}, {op: "nack", reason: "second"}, {op: "reopen"}}, "second"},
		{"a nack without a reason clears it", []step{{op: "deliver"}, {op: "nack", reason: "first"}, {op: "deliver"}, {op: "nack"}, {op: "reopen"}}, ""},
		{"an abandoned delivery keeps the reason before it", []step{{op: "deliver"}, {op: "nack", reason: "halted"}, {op: "deliver"}, {op: "reopen"}}, "halted"},
		{"carried across restarts", []step{{op: "deliver"}, {op: "nack", reason: "halted"}, {op: "reopen"}, {op: "deliver"}, {op: "reopen"}}, "halted"},
		{"carried by rotation", []step{{op: "deliver"}, {op: "nack", reason: "halted"}, {op: "rotate"}, {op: "reopen"}}, "halted"},
		{"set after rotation", []step{{op: "deliver"}, {op: "nack", reason: "first"}, {op: "rotate"}, {op: "deliver"}, {op: "nack", reason: "second"}, {op: "reopen"}}, "second"},
		{"multibyte", []step{{op: "deliver"}, {op: "nack", reason: "prix refusé ✗"}, {op: "reopen"}}, "prix refusé ✗"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := smallSegmentOpts()
			l, _ := openT(t, dir, opts)
			t.Cleanup(func() { l.Close() })
			seq := appendT(t, l, "the event")
			var rec *Recovered
			deliveries := 0
			for i, s := range tc.steps {
				switch s.op {
				case "deliver":
					mustOK(t, i, s.op, l.Deliver(seq))
					deliveries++
				case "nack":
					mustOK(t, i, s.op, l.NackReason(seq, s.reason))
				case "reopen":
					closeT(t, l)
					l, rec = openT(t, dir, opts)
				case "rotate": // acked events fill a segment's worth of dead records
					segOf := func() uint64 {
						l.mu.Lock()
						defer l.mu.Unlock()
						return l.live.ref(seq).seg
					}
					before := segOf()
					for range 40 {
						mustOK(t, i, "ack", l.Ack(appendT(t, l, strings.Repeat("d", 100))))
					}
					waitFor(t, "a rotation", func() bool { return segOf() != before })
				}
			}
			if len(rec.Records) != 1 || rec.Records[0].Seq != seq {
				t.Fatalf("recovered %+v, want seq %d", rec.Records, seq)
			}
			if r := rec.Records[0]; r.Reason != tc.want || r.Deliveries != deliveries || string(r.Data) != "the event" {
				t.Fatalf("recovered reason %q, %d deliveries, data %q; want %q, %d, the event", r.Reason, r.Deliveries, r.Data, tc.want, deliveries)
			}
		})
	}
}

func TestNackReasonBounds(t *testing.T) {
	opts := testOpts()
	opts.MaxRecord = 600
	opts.SegmentSize = 4096
	dir := t.TempDir()
	l, _ := openT(t, dir, opts)
	t.Cleanup(func() { l.Close() })
	if err := l.NackReason(appendT(t, l, "x"), strings.Repeat("r", MaxReasonBytes+1)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a reason over MaxReasonBytes: %v, want ErrInvalid", err)
	}
	// An event that leaves 100 bytes of its record for a reason: the
	// reason is cut there, before a character it would split.
	data := strings.Repeat("d", opts.MaxRecord-(1+eventFixedSize)-reasonLenSize-100)
	big := appendT(t, l, data)
	reason := strings.Repeat("a", 99) + "é" + strings.Repeat("b", 500)
	mustOK(t, 0, "nack", l.NackReason(big, reason))
	closeT(t, l)
	l, rec := openT(t, dir, opts)
	var got string
	for _, r := range rec.Records {
		if r.Seq == big {
			got = r.Reason
		}
	}
	if got != strings.Repeat("a", 99) || !utf8.ValidString(got) {
		t.Fatalf("reason recovered as %d bytes %q, want the 99 bytes before the 2-byte character at the limit", len(got), got)
	}
}

// TestFormat1LogOpens opens a log written by the build before reasons
// (format version 1, testdata/format1): every record means what it meant,
// and the log goes on in version 2.
func TestFormat1LogOpens(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join("testdata", "format1", "0000000000000002.wal")
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint32(raw[8:12]); v != 1 {
		t.Fatalf("%s has format version %d, want 1", src, v)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(src)), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if rep, err := Check(context.Background(), dir, Options{}); err != nil || rep.Live != 3 {
		t.Fatalf("Check of a version-1 log: %v\n%s", err, rep)
	}
	l, rec := openT(t, dir, testOpts())
	t.Cleanup(func() { l.Close() })
	// Written by: append one (msg-one), two, three (msg-three), four;
	// deliver+ack 1; deliver, nack, deliver 2; close; open; append five
	// (msg-five); deliver+nack 3; deliver 4; ack 2; close.
	want := []Record{
		{Seq: 3, Data: []byte("three"), MsgID: "msg-three", Deliveries: 1},
		{Seq: 4, Data: []byte("four"), Deliveries: 1, InFlight: true},
		{Seq: 5, Data: []byte("five"), MsgID: "msg-five"},
	}
	if got := strip(rec.Records); len(got) != len(want) || rec.NextSeq != 6 {
		t.Fatalf("recovered %+v, next seq %d; want %+v, next seq 6", got, rec.NextSeq, want)
	}
	for i, r := range strip(rec.Records) {
		w := want[i]
		if r.Seq != w.Seq || string(r.Data) != string(w.Data) || r.MsgID != w.MsgID || r.Deliveries != w.Deliveries || r.InFlight != w.InFlight || r.Reason != "" {
			t.Fatalf("record %d is %+v, want %+v", i, r, w)
		}
	}
	var ids []string
	for _, id := range rec.MsgIDs {
		ids = append(ids, id.ID)
	}
	if strings.Join(ids, ",") != "msg-one,msg-three,msg-five" {
		t.Fatalf("msg ids %v, want msg-one, msg-three, msg-five", ids)
	}
	segs := segFiles(t, dir)
	if len(segs) != 1 {
		t.Fatalf("segments %v after open, want one", segs)
	}
	now, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint32(now[8:12]); v != formatVersion {
		t.Fatalf("the segment Open started has version %d, want %d", v, formatVersion)
	}
	mustOK(t, 0, "nack", l.NackReason(3, "recorded in version 2"))
	closeT(t, l)
	l, rec = openT(t, dir, testOpts())
	if rec.Records[0].Reason != "recorded in version 2" {
		t.Fatalf("reason %q after reopening", rec.Records[0].Reason)
	}
}

func TestNewerFormatIsRefusedByVersion(t *testing.T) {
	dir := t.TempDir()
	seg := appendHeader(nil, 1)
	binary.LittleEndian.PutUint32(seg[8:12], formatVersion+1)
	binary.LittleEndian.PutUint32(seg[20:24], crc32.Checksum(seg[:20], castagnoli))
	if err := os.WriteFile(segName(dir, 1), seg, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := Open(context.Background(), dir, testOpts())
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "unsupported version 3") {
		t.Fatalf("Open of a version-%d segment: %v, want a refusal naming the version", formatVersion+1, err)
	}
}
