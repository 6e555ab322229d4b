package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// seedFromGolden adds every golden frame to a fuzz corpus, so the corpus
// covers each frame kind of the protocol.
func seedFromGolden(f *testing.F) {
	f.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.golden"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no golden files to seed from: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			f.Add([]byte(line))
		}
	}
}

// FuzzDecodeRequest checks the hand-written decoder against encoding/json:
// it accepts only valid JSON, rejects invalid JSON, and reads the same
// field values.
func FuzzDecodeRequest(f *testing.F) {
	seedFromGolden(f)
	for _, s := range []string{
		`{"op":"publish","id":7,`, `[1]`, `{"o\u0070":"ping","id":1}`, `{"op":"publish","id":1,"type":"T","payload":[[[[{}]]]]}`,
		`{"op":"publish","id":1,"type":"T","msg_id":"a\u00e9"}`, `{"op":"publish","id":1,"type":"T","msg_id":7}`, `{"op":"nack","seq":1,"reason":null}`,
		`{"op":"ack","seq":-0}`, `{"op":"ping","id":1e2}`, `{"op":"publish","id":1,"type":"\ud800"}`, "{\"op\":\"ping\",\"id\":1}\r",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		got, err := DecodeRequest(line)
		valid := json.Valid(line)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a *RequestError", err)
			}
			isObject := valid && strings.HasPrefix(strings.TrimLeft(string(line), " \t\r\n"), "{")
			if isObject && utf8.Valid(line) && strings.HasPrefix(re.Msg, "malformed JSON") {
				t.Fatalf("valid JSON object %q reported as malformed: %v", line, err)
			}
			return
		}
		if !valid {
			t.Fatalf("accepted invalid JSON %q", line)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses as an object: %v", line, err)
		}
		checkString := func(key string, present bool, got string) {
			raw, ok := m[key]
			if ok && string(raw) == "null" {
				ok = false
			}
			if ok != present {
				t.Fatalf("%q: field %s present=%v, encoding/json says %v", line, key, present, ok)
			}
			if !ok {
				return
			}
			var want string
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatalf("%q: field %s: %v", line, key, err)
			}
			if want != got {
				t.Fatalf("%q: field %s = %q, encoding/json says %q", line, key, got, want)
			}
		}
		checkString("op", true, string(got.Op))
		checkString("queue", got.HasQueue, got.Queue)
		checkString("type", got.HasType, got.Type)
		// traceparent, msg_id and reason: absent, null and "" all mean not given.
		for key, got := range map[string]string{"traceparent": got.Traceparent, "msg_id": got.MsgID, "reason": got.Reason} {
			var want string
			if raw, ok := m[key]; ok && string(raw) != "null" {
				if err := json.Unmarshal(raw, &want); err != nil {
					t.Fatalf("%q: field %s: %v", line, key, err)
				}
			}
			if want != got {
				t.Fatalf("%q: field %s = %q, encoding/json says %q", line, key, got, want)
			}
		}
		if len(got.MsgID) > MaxMsgIDBytes {
			t.Fatalf("%q: accepted a msg_id of %d bytes", line, len(got.MsgID))
		}
		if raw, ok := m["payload"]; ok != (got.Payload != nil) || string(raw) != string(got.Payload) {
			t.Fatalf("%q: payload %q, encoding/json says %q", line, got.Payload, raw)
		}
		if got.HasID {
			var want int64
			if err := json.Unmarshal(m["id"], &want); err != nil || want != got.ID {
				t.Fatalf("%q: id %d, encoding/json says %d (%v)", line, got.ID, want, err)
			}
		}
		if got.HasSeq {
			var want uint64
			if err := json.Unmarshal(m["seq"], &want); err != nil || want != got.Seq {
				t.Fatalf("%q: seq %d, encoding/json says %d (%v)", line, got.Seq, want, err)
			}
		}
	})
}

// FuzzDecodeMessage checks that the client-side decoder never accepts
// invalid JSON and that a decoded delivery re-encodes to a frame that
// decodes to the same delivery.
func FuzzDecodeMessage(f *testing.F) {
	seedFromGolden(f)
	var dec MessageDecoder
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := DecodeMessage(line)
		m2, err2 := dec.Decode(line)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("DecodeMessage error %v, MessageDecoder error %v", err, err2)
		}
		if err == nil {
			assertMessage(t, m2, m)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformedMessage) {
				t.Fatalf("error %v does not wrap ErrMalformedMessage", err)
			}
			return
		}
		if !json.Valid(line) {
			t.Fatalf("accepted invalid JSON %q", line)
		}
		if m.Op != OpDeliver || !utf8.Valid(line) {
			return
		}
		if m.Deliver.Payload == nil {
			m.Deliver.Payload = json.RawMessage("null")
		}
		if _, err := ParseTraceparent(m.Deliver.Traceparent); err != nil {
			m.Deliver.Traceparent = ""
		}
		again := AppendDeliver(nil, &m.Deliver)
		m3, err := DecodeMessage(again[:len(again)-1])
		if err != nil {
			t.Fatalf("re-encoded delivery %q does not decode: %v", again, err)
		}
		assertMessage(t, m3, m)
	})
}

// FuzzParseTraceparent checks the traceparent parser against the
// OpenTelemetry propagator: whatever it accepts, the propagator reads the
// same way.
func FuzzParseTraceparent(f *testing.F) {
	for _, s := range []string{
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
		"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"00-00000000000000000000000000000000-b7ad6b7169203331-01",
		"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
		"",
	} {
		f.Add(s)
	}
	prop := propagation.TraceContext{}
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := ParseTraceparent(s)
		ref := trace.SpanContextFromContext(prop.Extract(context.Background(), propagation.MapCarrier{"traceparent": s}))
		if err != nil {
			return
		}
		if !sc.IsValid() || !sc.IsRemote() {
			t.Fatalf("%q: parsed to invalid span context %v", s, sc)
		}
		if !ref.IsValid() {
			t.Fatalf("%q: accepted, but the OpenTelemetry propagator rejects it", s)
		}
		if sc.TraceID() != ref.TraceID() || sc.SpanID() != ref.SpanID() || sc.IsSampled() != ref.IsSampled() {
			t.Fatalf("%q: parsed %v, propagator says %v", s, sc, ref)
		}
		if s[:2] == "00" {
			if got := string(AppendTraceparent(nil, sc)); got != s[:53]+got[53:] {
				t.Fatalf("%q: re-encoded as %q", s, got)
			}
		}
	})
}
