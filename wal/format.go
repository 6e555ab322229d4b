package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"time"
)

// On-disk format (all integers little-endian; docs/durability.md has the
// byte-by-byte description):
//
//	segment header (24 bytes): magic "EBUSWAL\n" | version u32 | next seq u64 | CRC-32C u32 of the 20 bytes before
//	record:                    length u32 | CRC-32C u32 of type+body | type u8 | body (length-1 bytes)
//
// Version 2 adds a nack's reason: an optional tail of the nack body, and an
// optional field of the event body (flagReason). This build writes version
// 2 and reads 1 and 2: a version-1 segment is a version-2 segment in which
// no reason was ever recorded. A build that reads only version 1 refuses a
// version-2 segment by its header, naming the version, rather than
// mistaking its first reason for damage.
const (
	magic          = "EBUSWAL\n"
	formatVersion  = 2
	oldestVersion  = 1
	headerSize     = 24
	recHeaderSize  = 8
	maxMsgIDLen    = 256
	eventFixedSize = 8 + 8 + 4 + 1 + 2 // seq, accepted at, deliveries, flags, msg id length
	// reasonLenSize is the length field in front of a reason.
	reasonLenSize = 2
)

// MaxReasonBytes bounds the reason a nack records (NackReason): it is kept
// with the event, in its copies at rotation too, so it must stay small next
// to the event itself.
const MaxReasonBytes = 1024

// Record types.
const (
	recEvent   byte = 1 // an accepted event (or its copy carried forward at rotation)
	recDeliver byte = 2 // seq handed to a consumer
	recAck     byte = 3 // seq settled for good
	recNack    byte = 4 // seq returned to the queue, with the consumer's reason (version 2)
	recMsgIDs  byte = 5 // msg ids of the dedupe window carried forward at rotation
)

// Event flags.
const (
	flagInFlight byte = 1 << iota
	flagReason        // version 2: a reason follows the msg id
)

const knownEventFlags = flagInFlight | flagReason

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Decoding errors. errShort and errChecksum at the very end of the last
// segment mean a torn write; anywhere else they mean corruption.
var (
	errShort    = errors.New("record runs past the end of the data")
	errChecksum = errors.New("checksum mismatch")
	errLength   = errors.New("bad record length")
	errType     = errors.New("unknown record type")
	errBody     = errors.New("malformed record body")
)

func appendHeader(b []byte, nextSeq uint64) []byte {
	start := len(b)
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint32(b, formatVersion)
	b = binary.LittleEndian.AppendUint64(b, nextSeq)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// parseHeader checks a segment header and returns the next seq it records.
func parseHeader(b []byte) (uint64, error) {
	if len(b) < headerSize {
		return 0, fmt.Errorf("segment header: %w (%d of %d bytes)", errShort, len(b), headerSize)
	}
	if string(b[:8]) != magic {
		return 0, fmt.Errorf("segment header: bad magic %q, want %q", b[:8], magic)
	}
	if got := crc32.Checksum(b[:20], castagnoli); got != binary.LittleEndian.Uint32(b[20:24]) {
		return 0, fmt.Errorf("segment header: %w", errChecksum)
	}
	if v := binary.LittleEndian.Uint32(b[8:12]); v < oldestVersion || v > formatVersion {
		return 0, fmt.Errorf("segment header: unsupported version %d, this build reads versions %d to %d", v, oldestVersion, formatVersion)
	}
	return binary.LittleEndian.Uint64(b[12:20]), nil
}

// beginRecord reserves a record header in b and returns where it starts.
func beginRecord(b []byte, typ byte) ([]byte, int) {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0, typ)
	return b, start
}

// endRecord fills in the length and checksum of the record begun at start.
func endRecord(b []byte, start int) []byte {
	payload := b[start+recHeaderSize:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}

// eventRecordSize is the size of an event record without a reason.
func eventRecordSize(msgID string, data []byte) int {
	return recHeaderSize + 1 + eventFixedSize + len(msgID) + len(data)
}

// reasonSize is what a reason adds to an event or nack record.
func reasonSize(reason string) int {
	if reason == "" {
		return 0
	}
	return reasonLenSize + len(reason)
}

func appendEvent(b []byte, ev eventBody) []byte {
	b, start := beginRecord(b, recEvent)
	b = binary.LittleEndian.AppendUint64(b, ev.seq)
	b = binary.LittleEndian.AppendUint64(b, uint64(ev.at))
	b = binary.LittleEndian.AppendUint32(b, ev.deliveries)
	var flags byte
	if ev.inFlight {
		flags |= flagInFlight
	}
	if ev.reason != "" {
		flags |= flagReason
	}
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(ev.msgID)))
	b = append(b, ev.msgID...)
	b = appendReason(b, ev.reason)
	b = append(b, ev.data...)
	return endRecord(b, start)
}

func appendReason(b []byte, reason string) []byte {
	if reason == "" {
		return b
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(reason)))
	return append(b, reason...)
}

// appendSettle writes a deliver, ack or nack record; only a nack carries
// a reason, and only when it has one (so that a nack without a reason is
// the version-1 record byte for byte).
func appendSettle(b []byte, s settleRec) []byte {
	b, start := beginRecord(b, s.typ)
	b = binary.LittleEndian.AppendUint64(b, s.seq)
	if s.typ == recNack {
		b = appendReason(b, s.reason)
	}
	return endRecord(b, start)
}

// appendSnapshotMark writes the record that opens every segment this build
// starts but the first of a log: a msg-ids record with no ids. No build ever wrote one otherwise,
// and every build reads it as nothing, so it marks, within format 2, a
// segment that was written whole under a temporary name, synced and then
// renamed into place: it holds the complete state of the log (the dedupe
// window and every unacked event, with its delivery state), so the
// segments with lower ids are left-overs of a rotation or an Open that
// had not yet removed them, and replay must skip them (see scanDir).
func appendSnapshotMark(b []byte) []byte {
	b, start := beginRecord(b, recMsgIDs)
	b = append(b, 0, 0, 0, 0)
	return endRecord(b, start)
}

// snapshotMark is the record appendSnapshotMark writes.
var snapshotMark = appendSnapshotMark(nil)

// hasSnapshotMark says whether segment data (at least its first
// headerSize+snapshotMarkSize bytes) opens with the snapshot mark.
func hasSnapshotMark(data []byte) bool {
	return len(data) >= headerSize+len(snapshotMark) && bytes.Equal(data[headerSize:headerSize+len(snapshotMark)], snapshotMark)
}

// appendMsgIDs writes ids as recMsgIDs records of at most maxRecord bytes each.
func appendMsgIDs(b []byte, ids []MsgID, maxRecord int) []byte {
	// A full window is about 1.7 MB: grown once, not by doubling, which
	// copied and cleared it over and over at every rotation (6 % of a
	// busy durable sidecar's CPU).
	need := 0
	for _, id := range ids {
		need += 8 + 8 + 2 + len(id.ID)
	}
	records := need/max(maxRecord-recHeaderSize-1-4, 1) + 1
	b = slices.Grow(b, need+records*(recHeaderSize+1+4))
	for len(ids) > 0 {
		b2, start := beginRecord(b, recMsgIDs)
		countAt := len(b2)
		b2 = append(b2, 0, 0, 0, 0)
		n := 0
		for n < len(ids) {
			id := ids[n]
			size := 8 + 8 + 2 + len(id.ID)
			if n > 0 && len(b2)-start+size > maxRecord {
				break
			}
			b2 = binary.LittleEndian.AppendUint64(b2, id.Seq)
			b2 = binary.LittleEndian.AppendUint64(b2, uint64(id.AcceptedAt.UnixNano()))
			b2 = binary.LittleEndian.AppendUint16(b2, uint16(len(id.ID)))
			b2 = append(b2, id.ID...)
			n++
		}
		binary.LittleEndian.PutUint32(b2[countAt:], uint32(n))
		b = endRecord(b2, start)
		ids = ids[n:]
	}
	return b
}

// eventBody is a decoded recEvent. data aliases the decoded buffer until
// copied.
type eventBody struct {
	seq uint64
	at  int64 // unix nanoseconds
	progress
	msgID string
	data  []byte
}

// progress is an unacked event's delivery state: what its deliver, nack
// and ack records change. Recovery replays the records through step and
// the live log applies each one through step as it writes it, so the two
// cannot disagree about what a record means.
type progress struct {
	deliveries uint32
	inFlight   bool
	// reason is the last recorded nack's reason ("" when that nack gave
	// none). An abandoned delivery (the consumer gone, or a crash) records
	// no nack of its own, so the reason before it stays.
	reason string
}

// settleRec is a decoded deliver, ack or nack record.
type settleRec struct {
	typ    byte
	seq    uint64
	reason string // nack only
}

// step applies s to the event's state and reports whether s ends the
// event (an ack): it is then forgotten.
func (p *progress) step(s settleRec) (acked bool) {
	switch s.typ {
	case recDeliver:
		p.deliveries++
		p.inFlight = true
	case recNack:
		p.inFlight = false
		p.reason = s.reason
	case recAck:
		return true
	}
	return false
}

// DecodeRecord reads the record at the start of b. It returns the record
// type, its body (aliasing b) and the record's total size. A length above
// maxRecord is rejected before anything is read past the header, so garbage
// never makes the decoder allocate or read far.
func DecodeRecord(b []byte, maxRecord int) (typ byte, body []byte, n int, err error) {
	if len(b) < recHeaderSize {
		return 0, nil, 0, errShort
	}
	length := binary.LittleEndian.Uint32(b)
	if length == 0 || int64(length) > int64(maxRecord) {
		return 0, nil, 0, fmt.Errorf("%w: %d bytes (valid: 1 to %d)", errLength, length, maxRecord)
	}
	end := recHeaderSize + int(length)
	if len(b) < end {
		return 0, nil, 0, errShort
	}
	payload := b[recHeaderSize:end]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return 0, nil, end, errChecksum
	}
	typ = payload[0]
	if typ < recEvent || typ > recMsgIDs {
		return 0, nil, end, fmt.Errorf("%w %d (valid: %d to %d)", errType, typ, recEvent, recMsgIDs)
	}
	return typ, payload[1:], end, nil
}

func parseEvent(body []byte) (eventBody, error) {
	if len(body) < eventFixedSize {
		return eventBody{}, fmt.Errorf("%w: event of %d bytes, at least %d", errBody, len(body), eventFixedSize)
	}
	flags := body[20]
	ev := eventBody{
		seq:      binary.LittleEndian.Uint64(body),
		at:       int64(binary.LittleEndian.Uint64(body[8:])),
		progress: progress{deliveries: binary.LittleEndian.Uint32(body[16:]), inFlight: flags&flagInFlight != 0},
	}
	if flags&^knownEventFlags != 0 {
		return eventBody{}, fmt.Errorf("%w: event flags %#x (valid: %#x)", errBody, flags, knownEventFlags)
	}
	idLen := int(binary.LittleEndian.Uint16(body[21:]))
	rest := body[eventFixedSize:]
	if idLen > maxMsgIDLen || idLen > len(rest) {
		return eventBody{}, fmt.Errorf("%w: msg id of %d bytes (valid: 0 to %d, %d left)", errBody, idLen, maxMsgIDLen, len(rest))
	}
	ev.msgID = string(rest[:idLen])
	rest = rest[idLen:]
	if flags&flagReason != 0 {
		reason, n, err := parseReason(rest)
		if err != nil {
			return eventBody{}, fmt.Errorf("event: %w", err)
		}
		ev.reason, rest = reason, rest[n:]
	}
	ev.data = rest
	return ev, nil
}

// parseReason reads a reason (length u16, 1 to MaxReasonBytes, then the
// bytes) at the start of b and returns it (copied) and its encoded size.
func parseReason(b []byte) (string, int, error) {
	if len(b) < reasonLenSize {
		return "", 0, fmt.Errorf("%w: reason length cut short", errBody)
	}
	n := int(binary.LittleEndian.Uint16(b))
	if n == 0 || n > MaxReasonBytes || n > len(b)-reasonLenSize {
		return "", 0, fmt.Errorf("%w: reason of %d bytes (valid: 1 to %d, %d left)", errBody, n, MaxReasonBytes, len(b)-reasonLenSize)
	}
	return string(b[reasonLenSize : reasonLenSize+n]), reasonLenSize + n, nil
}

// parseSettle reads a deliver, ack or nack body: the seq, and for a nack
// an optional reason.
func parseSettle(typ byte, body []byte) (settleRec, error) {
	if len(body) < 8 || (len(body) != 8 && typ != recNack) {
		return settleRec{}, fmt.Errorf("%w: record type %d of %d bytes, want 8", errBody, typ, len(body))
	}
	s := settleRec{typ: typ, seq: binary.LittleEndian.Uint64(body)}
	if len(body) > 8 {
		reason, n, err := parseReason(body[8:])
		if err != nil {
			return settleRec{}, fmt.Errorf("nack: %w", err)
		}
		if 8+n != len(body) {
			return settleRec{}, fmt.Errorf("%w: nack of %d bytes, its reason ends at %d", errBody, len(body), 8+n)
		}
		s.reason = reason
	}
	return s, nil
}

// parseMsgIDs calls fn for every id in a recMsgIDs body.
func parseMsgIDs(body []byte, fn func(MsgID)) error {
	if len(body) < 4 {
		return fmt.Errorf("%w: msg id record of %d bytes", errBody, len(body))
	}
	count := binary.LittleEndian.Uint32(body)
	rest := body[4:]
	for i := uint32(0); i < count; i++ {
		if len(rest) < 18 {
			return fmt.Errorf("%w: msg id %d of %d cut short", errBody, i, count)
		}
		seq := binary.LittleEndian.Uint64(rest)
		at := int64(binary.LittleEndian.Uint64(rest[8:]))
		n := int(binary.LittleEndian.Uint16(rest[16:]))
		rest = rest[18:]
		if n > maxMsgIDLen || n > len(rest) {
			return fmt.Errorf("%w: msg id %d of %d bytes (valid: 0 to %d, %d left)", errBody, i, n, maxMsgIDLen, len(rest))
		}
		fn(MsgID{ID: string(rest[:n]), Seq: seq, AcceptedAt: time.Unix(0, at)})
		rest = rest[n:]
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d bytes after %d msg ids", errBody, len(rest), count)
	}
	return nil
}

// checkBody validates a record body for its type.
func checkBody(typ byte, body []byte) error {
	switch typ {
	case recEvent:
		_, err := parseEvent(body)
		return err
	case recDeliver, recAck, recNack:
		_, err := parseSettle(typ, body)
		return err
	case recMsgIDs:
		return parseMsgIDs(body, func(MsgID) {})
	}
	return fmt.Errorf("%w %d", errType, typ)
}
