package wal

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// segScan is what reading one segment found.
type segScan struct {
	name    string
	id      uint64
	size    int64
	records int
	// end is where the valid records end.
	end int64
	// damage is nil for a clean segment; torn says it is a torn tail
	// (only ever in the last segment), cut at end.
	damage error
	torn   bool
	// superseded says a newer segment holds the complete state: this one
	// was not read (Open removes it).
	superseded bool
}

func (s segScan) tornBytes() int64 { return s.size - s.end }

// scanSegment reads the records of one segment file, calling fn for each
// valid one, and stops at the first damage.
func scanSegment(name string, data []byte, last bool, maxRecord int, fn func(typ byte, body []byte) error) segScan {
	s := segScan{name: name, size: int64(len(data))}
	if _, err := parseHeader(data); err != nil {
		// A crash while a new segment was being created leaves a short or
		// zero-filled header.
		s.torn = last && (len(data) < headerSize || allZero(data))
		s.damage = err
		return s
	}
	off := headerSize
	s.end = int64(off)
	for off < len(data) {
		rest := data[off:]
		typ, body, n, err := DecodeRecord(rest, maxRecord)
		if err == nil {
			err = checkBody(typ, body)
			if err == nil {
				err = fn(typ, body)
			}
			if err != nil {
				s.damage = fmt.Errorf("at offset %d: %w", off, err)
				return s
			}
			off += n
			s.end = int64(off)
			s.records++
			continue
		}
		// What a crash mid-write leaves: a record running past the end,
		// one whose checksum fails and that ends exactly at the end, or a
		// zero-filled tail.
		tail := errors.Is(err, errShort) || (errors.Is(err, errChecksum) && n == len(rest)) || allZero(rest)
		s.torn = last && tail
		s.damage = fmt.Errorf("at offset %d: %w", off, err)
		return s
	}
	return s
}

func allZero(b []byte) bool {
	return len(bytes.Trim(b, "\x00")) == 0
}

// listSegments returns the segment ids in dir, oldest first.
func listSegments(fsys FS, dir string) ([]uint64, error) {
	names, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: list %s: %w", dir, err)
	}
	var ids []uint64
	for _, n := range names {
		base, ok := strings.CutSuffix(n, ".wal")
		if !ok || len(base) != 16 {
			continue
		}
		id, err := strconv.ParseUint(base, 10, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// state is the log's content replayed from its segments.
type state struct {
	live    map[uint64]eventBody
	ids     map[string]MsgID
	nextSeq uint64
	segIDs  []uint64
	maxID   uint64
	segs    []segScan
	// torn is the last segment's torn tail, if any.
	torn *segScan
}

func newState() *state {
	return &state{live: make(map[uint64]eventBody), ids: make(map[string]MsgID), nextSeq: 1}
}

func (st *state) apply(typ byte, body []byte) error {
	switch typ {
	case recEvent:
		ev, err := parseEvent(body)
		if err != nil {
			return err
		}
		ev.data = bytes.Clone(ev.data)
		// A later record of the same seq is its copy carried forward at
		// rotation, with the delivery state of that moment.
		st.live[ev.seq] = ev
		if ev.msgID != "" {
			st.addID(MsgID{ID: ev.msgID, Seq: ev.seq, AcceptedAt: time.Unix(0, ev.at)})
		}
		st.nextSeq = max(st.nextSeq, ev.seq+1)
	case recDeliver, recAck, recNack:
		s, err := parseSettle(typ, body)
		if err != nil {
			return err
		}
		ev, ok := st.live[s.seq]
		if !ok {
			return nil // settles an event acked and dropped earlier
		}
		if ev.step(s) {
			delete(st.live, s.seq)
		} else {
			st.live[s.seq] = ev
		}
	case recMsgIDs:
		return parseMsgIDs(body, st.addID)
	}
	return nil
}

func (st *state) addID(id MsgID) {
	if old, ok := st.ids[id.ID]; !ok || old.Seq <= id.Seq {
		st.ids[id.ID] = id
	}
}

func (st *state) sortedLive() []uint64 {
	seqs := make([]uint64, 0, len(st.live))
	for s := range st.live {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	return seqs
}

func (st *state) sortedIDs() []MsgID {
	ids := make([]MsgID, 0, len(st.ids))
	for _, id := range st.ids {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b MsgID) int {
		return cmp.Or(a.AcceptedAt.Compare(b.AcceptedAt), cmp.Compare(a.Seq, b.Seq))
	})
	return ids
}

// scanDir replays every segment in dir. With strict, damage other than a
// torn tail is an ErrCorrupt error; without, it is only recorded in segs
// (for Check and Salvage), and replay stops at the first damage.
func scanDir(ctx context.Context, fsys FS, dir string, maxRecord int, strict bool) (*state, error) {
	ids, err := listSegments(fsys, dir)
	if err != nil {
		return nil, err
	}
	st := newState()
	st.segIDs = ids
	if len(ids) > 0 {
		st.maxID = ids[len(ids)-1]
	}
	first, err := firstToReplay(fsys, dir, ids)
	if err != nil {
		return nil, err
	}
	for _, id := range ids[:first] {
		st.segs = append(st.segs, segScan{name: segName(dir, id), id: id, superseded: true})
	}
	damaged := false
	for i, id := range ids[first:] {
		i += first
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("wal: recovering %s: %w", dir, err)
		}
		name := segName(dir, id)
		data, err := fsys.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("wal: read %s: %w", name, err)
		}
		apply := st.apply
		if damaged {
			apply = func(byte, []byte) error { return nil }
		}
		s := scanSegment(name, data, i == len(ids)-1, maxRecord, apply)
		s.id = id
		if !damaged {
			if hdrSeq, err := parseHeader(data); err == nil {
				st.nextSeq = max(st.nextSeq, hdrSeq)
			}
		}
		st.segs = append(st.segs, s)
		if s.damage == nil {
			continue
		}
		if s.torn {
			st.torn = &st.segs[len(st.segs)-1]
			continue
		}
		if strict {
			return nil, fmt.Errorf("%w: %s: %w (records before it are intact; `eventbus-sidecar wal check` reports the damage, `eventbus-sidecar wal salvage` keeps what precedes it and moves the file aside)", ErrCorrupt, name, s.damage)
		}
		damaged = true
	}
	return st, nil
}

// firstToReplay returns the index in ids of the newest segment that opens
// with the snapshot mark (0 if none does): it holds the whole state of the
// log when it was started, so the segments before it are left over from a
// rotation (or an Open) whose removal failed or was cut short by a crash,
// and replaying them would bring back events whose acks were absorbed into
// the snapshot, not copied. Only the segments after the first are peeked
// at, so a log at rest (one segment) costs nothing more.
func firstToReplay(fsys FS, dir string, ids []uint64) (int, error) {
	for i := len(ids) - 1; i > 0; i-- {
		name := segName(dir, ids[i])
		f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
		if err != nil {
			return 0, fmt.Errorf("wal: open %s: %w", name, err)
		}
		head := make([]byte, headerSize+len(snapshotMark))
		n, err := f.ReadAt(head, 0)
		f.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("wal: read %s: %w", name, err)
		}
		if _, herr := parseHeader(head[:n]); herr == nil && hasSnapshotMark(head[:n]) {
			return i, nil
		}
	}
	return 0, nil
}

// cutTail removes a torn tail: the whole file when its header is torn.
func cutTail(fsys FS, s *segScan) error {
	if s.end < headerSize {
		if err := fsys.Remove(s.name); err != nil {
			return fmt.Errorf("wal: remove torn segment %s: %w", s.name, err)
		}
		return fsys.SyncDir(filepath.Dir(s.name))
	}
	f, err := fsys.OpenFile(s.name, osWriteFlags, 0o600)
	if err != nil {
		return fmt.Errorf("wal: open %s to cut its torn tail: %w", s.name, err)
	}
	err = f.Truncate(s.end)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("wal: cut torn tail of %s at offset %d: %w", s.name, s.end, err)
	}
	return nil
}
