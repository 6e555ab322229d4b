package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// On-disk format (all integers little-endian; docs/durability.md has the
// byte-by-byte description):
//
//	segment header (24 bytes): magic "EBUSWAL\n" | version u32 | next seq u64 | CRC-32C u32 of the 20 bytes before
//	record:                    length u32 | CRC-32C u32 of type+body | type u8 | body (length-1 bytes)
const (
	magic          = "EBUSWAL\n"
	formatVersion  = 1
	headerSize     = 24
	recHeaderSize  = 8
	maxMsgIDLen    = 256
	eventFixedSize = 8 + 8 + 4 + 1 + 2 // seq, accepted at, deliveries, flags, msg id length
)

// Record types.
const (
	recEvent   byte = 1 // an accepted event (or its copy carried forward at rotation)
	recDeliver byte = 2 // seq handed to a consumer
	recAck     byte = 3 // seq settled for good
	recNack    byte = 4 // seq returned to the queue
	recMsgIDs  byte = 5 // msg ids of the dedupe window carried forward at rotation
)

const flagInFlight byte = 1

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
	if v := binary.LittleEndian.Uint32(b[8:12]); v != formatVersion {
		return 0, fmt.Errorf("segment header: unsupported version %d, this build reads version %d", v, formatVersion)
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

func eventRecordSize(msgID string, data []byte) int {
	return recHeaderSize + 1 + eventFixedSize + len(msgID) + len(data)
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
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(ev.msgID)))
	b = append(b, ev.msgID...)
	b = append(b, ev.data...)
	return endRecord(b, start)
}

func appendSeqRecord(b []byte, typ byte, seq uint64) []byte {
	b, start := beginRecord(b, typ)
	b = binary.LittleEndian.AppendUint64(b, seq)
	return endRecord(b, start)
}

// appendMsgIDs writes ids as recMsgIDs records of at most maxRecord bytes each.
func appendMsgIDs(b []byte, ids []MsgID, maxRecord int) []byte {
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

// eventBody is a decoded recEvent. data and msgID alias the decoded buffer
// only until copied.
type eventBody struct {
	seq        uint64
	at         int64 // unix nanoseconds
	deliveries uint32
	inFlight   bool
	msgID      string
	data       []byte
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
	ev := eventBody{
		seq:        binary.LittleEndian.Uint64(body),
		at:         int64(binary.LittleEndian.Uint64(body[8:])),
		deliveries: binary.LittleEndian.Uint32(body[16:]),
		inFlight:   body[20]&flagInFlight != 0,
	}
	if body[20]&^flagInFlight != 0 {
		return eventBody{}, fmt.Errorf("%w: event flags %#x (valid: %#x)", errBody, body[20], flagInFlight)
	}
	idLen := int(binary.LittleEndian.Uint16(body[21:]))
	rest := body[eventFixedSize:]
	if idLen > maxMsgIDLen || idLen > len(rest) {
		return eventBody{}, fmt.Errorf("%w: msg id of %d bytes (valid: 0 to %d, %d left)", errBody, idLen, maxMsgIDLen, len(rest))
	}
	ev.msgID = string(rest[:idLen])
	ev.data = rest[idLen:]
	return ev, nil
}

func parseSeq(body []byte) (uint64, error) {
	if len(body) != 8 {
		return 0, fmt.Errorf("%w: seq record of %d bytes, want 8", errBody, len(body))
	}
	return binary.LittleEndian.Uint64(body), nil
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
		_, err := parseSeq(body)
		return err
	case recMsgIDs:
		return parseMsgIDs(body, func(MsgID) {})
	}
	return fmt.Errorf("%w %d", errType, typ)
}
