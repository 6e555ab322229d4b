package wal

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// modelRec is the in-memory model's view of one unacked event.
type modelRec struct {
	data       string
	msgID      string
	deliveries int
	inFlight   bool
	reason     string
}

// TestModel runs random sequences of append, deliver, ack, nack (with a
// reason or without) and close-reopen against a map, with segments small enough that rotation
// (and its copying forward) happens all the time, and checks after every
// reopen that the log gives back exactly the model's state.
func TestModel(t *testing.T) {
	for seed := range uint64(24) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 42))
			opts := testOpts()
			opts.SegmentSize = 2048
			opts.MaxRecord = 600
			fsys := newFaultFS()
			fsys.noSync = true
			opts.FS = fsys
			if seed%3 == 0 {
				opts.Fsync = FsyncInterval
			}
			dir := t.TempDir()
			l, _ := openT(t, dir, opts)
			live := map[uint64]*modelRec{}
			ids := map[string]uint64{}
			next := uint64(1)
			pick := func() uint64 {
				keys := slices.Sorted(maps.Keys(live))
				return keys[rng.IntN(len(keys))]
			}
			ctx := context.Background()
			for op := range 600 {
				switch r := rng.IntN(100); {
				case r < 35 || len(live) == 0:
					m := &modelRec{data: strings.Repeat(string(rune('a'+op%26)), rng.IntN(300))}
					if rng.IntN(2) == 0 {
						m.msgID = fmt.Sprintf("msg-%d-%d", seed, op)
					}
					a, err := l.Append(ctx, []byte(m.data), m.msgID, fixedNow)
					if err != nil {
						t.Fatalf("op %d append: %v", op, err)
					}
					if a.Seq != next {
						t.Fatalf("op %d: append got seq %d, model says %d", op, a.Seq, next)
					}
					live[a.Seq] = m
					if m.msgID != "" {
						ids[m.msgID] = a.Seq
					}
					next++
				case r < 55:
					s := pick()
					mustOK(t, op, "deliver", l.Deliver(s))
					live[s].deliveries++
					live[s].inFlight = true
				case r < 75:
					s := pick()
					mustOK(t, op, "ack", l.Ack(s))
					delete(live, s)
				case r < 88:
					s := pick()
					reason := ""
					if rng.IntN(3) > 0 {
						reason = fmt.Sprintf("reason %d", op)
					}
					mustOK(t, op, "nack", l.NackReason(s, reason))
					live[s].inFlight = false
					live[s].reason = reason
				case r < 92:
					if err := l.Ack(next + 7); !errors.Is(err, ErrUnknownSeq) {
						t.Fatalf("op %d: ack of unknown seq: %v", op, err)
					}
				default:
					closeT(t, l)
					var rec *Recovered
					l, rec = openT(t, dir, opts)
					compareModel(t, op, rec, live, ids, next)
				}
			}
			closeT(t, l)
			l, rec := openT(t, dir, opts)
			defer closeT(t, l)
			compareModel(t, -1, rec, live, ids, next)
		})
	}
}

func mustOK(t *testing.T, op int, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("op %d %s: %v", op, what, err)
	}
}

func compareModel(t *testing.T, op int, rec *Recovered, live map[uint64]*modelRec, ids map[string]uint64, next uint64) {
	t.Helper()
	if rec.NextSeq != next {
		t.Fatalf("op %d: NextSeq %d, model %d", op, rec.NextSeq, next)
	}
	want := slices.Sorted(maps.Keys(live))
	if got := seqs(rec.Records); !slices.Equal(got, want) {
		t.Fatalf("op %d: recovered seqs %v, model %v", op, got, want)
	}
	for _, r := range rec.Records {
		m := live[r.Seq]
		if string(r.Data) != m.data || r.MsgID != m.msgID || r.Deliveries != m.deliveries || r.InFlight != m.inFlight || r.Reason != m.reason || !r.AcceptedAt.Equal(fixedNow) {
			t.Fatalf("op %d: seq %d recovered as {%d bytes, id %q, deliveries %d, in flight %v, reason %q, at %v}, model {%d bytes, id %q, deliveries %d, in flight %v, reason %q}",
				op, r.Seq, len(r.Data), r.MsgID, r.Deliveries, r.InFlight, r.Reason, r.AcceptedAt, len(m.data), m.msgID, m.deliveries, m.inFlight, m.reason)
		}
	}
	gotIDs := map[string]uint64{}
	for _, id := range rec.MsgIDs {
		gotIDs[id.ID] = id.Seq
	}
	if !maps.Equal(gotIDs, ids) {
		t.Fatalf("op %d: recovered %d msg ids, model %d", op, len(gotIDs), len(ids))
	}
}
