package protocol

import (
	"encoding/hex"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/trace"
)

// ParseTraceparent parses a W3C Trace Context traceparent header
// ("00-<32 hex trace id>-<16 hex span id>-<2 hex flags>") into a remote span
// context. Future versions (01..fe) are accepted when their first four
// fields have the version-00 shape, as the specification asks. Only the
// sampled flag is kept.
//
// It is written out instead of going through propagation.TraceContext
// because that path allocates a carrier and a map per event.
func ParseTraceparent(s string) (trace.SpanContext, error) {
	const size = 55
	if len(s) < size {
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: want 55 characters (00-<trace id>-<span id>-<flags>), got %d", Quote(s), len(s))
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: want 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>", Quote(s))
	}
	var ver [1]byte
	if err := decodeLowerHex(ver[:], s[0:2]); err != nil || ver[0] == 0xff {
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: invalid version %q", Quote(s), s[0:2])
	}
	if ver[0] == 0 && len(s) != size {
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: version 00 must be exactly 55 characters, got %d", Quote(s), len(s))
	}
	if len(s) > size && s[size] != '-' {
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: unexpected data after the flags", Quote(s))
	}
	var tid trace.TraceID
	var sid trace.SpanID
	var flags [1]byte
	if err := decodeLowerHex(tid[:], s[3:35]); err != nil || !tid.IsValid() {
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: trace id must be 32 lowercase hex digits, not all zero", Quote(s))
	}
	if err := decodeLowerHex(sid[:], s[36:52]); err != nil || !sid.IsValid() {
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: span id must be 16 lowercase hex digits, not all zero", Quote(s))
	}
	if err := decodeLowerHex(flags[:], s[53:55]); err != nil {
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: flags must be 2 lowercase hex digits", Quote(s))
	}
	if ver[0] == 0 && flags[0] > 3 {
		// Version 00 defines the sampled (01) and random (02) bits only; a
		// reserved bit means the sender does not speak version 00, and the
		// OpenTelemetry propagator refuses the header too.
		return trace.SpanContext{}, fmt.Errorf("traceparent %s: version 00 allows flags 00 to 03, got %s", Quote(s), s[53:55])
	}
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    tid,
		SpanID:     sid,
		TraceFlags: trace.TraceFlags(flags[0]) & trace.FlagsSampled,
		Remote:     true,
	}), nil
}

var errNotLowerHex = errors.New("not lowercase hex")

func decodeLowerHex(dst []byte, s string) error {
	if len(s) != 2*len(dst) {
		return errNotLowerHex
	}
	for i := range dst {
		hi, ok1 := lowerHexNibble(s[2*i])
		lo, ok2 := lowerHexNibble(s[2*i+1])
		if !ok1 || !ok2 {
			return errNotLowerHex
		}
		dst[i] = hi<<4 | lo
	}
	return nil
}

func lowerHexNibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// AppendTraceparent appends sc as a version-00 traceparent. sc must be valid.
func AppendTraceparent(dst []byte, sc trace.SpanContext) []byte {
	tid, sid := sc.TraceID(), sc.SpanID()
	dst = append(dst, '0', '0', '-')
	dst = hex.AppendEncode(dst, tid[:])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, sid[:])
	dst = append(dst, '-')
	return hex.AppendEncode(dst, []byte{byte(sc.TraceFlags())})
}
