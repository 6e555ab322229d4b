package wal

import (
	"bytes"
	"testing"
	"time"
)

const fuzzMaxRecord = 4096

func fuzzSeeds() [][]byte {
	ev := appendEvent(nil, eventBody{seq: 7, at: 1, progress: progress{deliveries: 2, inFlight: true}, msgID: "m-1", data: []byte(`{"a":1}`)})
	ids := appendMsgIDs(nil, []MsgID{{ID: "x", Seq: 3, AcceptedAt: time.Unix(0, 5)}, {ID: "", Seq: 4}}, fuzzMaxRecord)
	torn := bytes.Clone(ev)
	torn[len(torn)-1] ^= 1
	return [][]byte{
		ev,
		appendSettle(nil, settleRec{typ: recAck, seq: 9}),
		appendSettle(nil, settleRec{typ: recDeliver, seq: 1 << 40}),
		appendSettle(nil, settleRec{typ: recNack, seq: 3}),
		appendSettle(nil, settleRec{typ: recNack, seq: 4, reason: "risk check failed"}),
		appendEvent(nil, eventBody{seq: 8, progress: progress{deliveries: 3, reason: "bad price"}, msgID: "m-2", data: []byte(`{}`)}),
		ids,
		torn,
		ev[:5],
		{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0},
		{1, 0, 0, 0, 0, 0, 0, 0, 9},
	}
}

// FuzzDecodeRecord feeds arbitrary bytes to the record decoder and to the
// segment scanner: neither may panic or read past the data, and a record
// that decodes re-encodes to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, body, n, err := DecodeRecord(data, fuzzMaxRecord)
		if err == nil {
			if n < recHeaderSize+1 || n > len(data) || n > recHeaderSize+fuzzMaxRecord {
				t.Fatalf("decoded a record of %d bytes from %d", n, len(data))
			}
			if checkBody(typ, body) == nil {
				if re := reencode(t, typ, body); re != nil && !bytes.Equal(re, data[:n]) {
					t.Fatalf("type %d re-encodes as %x, was %x", typ, re, data[:n])
				}
			}
		}
		// The body parsers see the bytes directly too: random bytes rarely
		// pass the checksum, so the decoder alone would seldom reach them.
		for typ := recEvent; typ <= recMsgIDs; typ++ {
			if checkBody(typ, data) == nil {
				reencode(t, typ, data)
			}
		}
		seg := append(appendHeader(nil, 1), data...)
		st := newState()
		s := scanSegment("fuzz", seg, true, fuzzMaxRecord, st.apply)
		if s.end < headerSize || s.end > int64(len(seg)) {
			t.Fatalf("scan ended at %d of %d", s.end, len(seg))
		}
	})
}

func reencode(t *testing.T, typ byte, body []byte) []byte {
	switch typ {
	case recEvent:
		ev, err := parseEvent(body)
		if err != nil {
			t.Fatal(err)
		}
		return appendEvent(nil, ev)
	case recDeliver, recAck, recNack:
		s, err := parseSettle(typ, body)
		if err != nil {
			t.Fatal(err)
		}
		return appendSettle(nil, s)
	case recMsgIDs:
		var ids []MsgID
		if err := parseMsgIDs(body, func(id MsgID) { ids = append(ids, id) }); err != nil {
			t.Fatal(err)
		}
		if len(ids) == 0 {
			return nil // an empty list is never written
		}
		return appendMsgIDs(nil, ids, 1<<30)
	}
	return nil
}
