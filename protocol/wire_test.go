package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Request
	}{
		{"publish with everything", `{"op":"publish","id":7,"queue":"signal","type":"SIGNAL_GENERATED","payload":{"a":[1,2.5e3,"x"]},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}`,
			Request{Op: OpPublish, ID: 7, HasID: true, Queue: "signal", HasQueue: true, Type: "SIGNAL_GENERATED", HasType: true, Payload: json.RawMessage(`{"a":[1,2.5e3,"x"]}`), Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		{"publish routed by type, no payload", `{"op":"publish","id":1,"type":"CANDLE_UPDATE"}`,
			Request{Op: OpPublish, ID: 1, HasID: true, Type: "CANDLE_UPDATE", HasType: true}},
		{"payload kept byte for byte", `{"op":"publish","id":1,"type":"T","payload": [ 1 , {"k" : "\u00e9"} ] }`,
			Request{Op: OpPublish, ID: 1, HasID: true, Type: "T", HasType: true, Payload: json.RawMessage(`[ 1 , {"k" : "\u00e9"} ]`)}},
		{"payload null is kept", `{"op":"publish","id":1,"type":"T","payload":null}`,
			Request{Op: OpPublish, ID: 1, HasID: true, Type: "T", HasType: true, Payload: json.RawMessage(`null`)}},
		{"whitespace and field order", " { \"id\" : -3 ,\t\"type\":\"T\", \"op\" : \"publish\" } ",
			Request{Op: OpPublish, ID: -3, HasID: true, Type: "T", HasType: true}},
		{"escaped key and value", `{"o\u0070":"publish","id":2,"type":"A\"B\\C\u00e9\ud83d\ude00"}`,
			Request{Op: OpPublish, ID: 2, HasID: true, Type: "A\"B\\Cé😀", HasType: true}},
		{"unknown fields ignored", `{"op":"ping","id":11,"future":{"x":[true,false,null]}}`,
			Request{Op: OpPing, ID: 11, HasID: true}},
		{"null optional field is absent", `{"op":"publish","id":1,"type":"T","queue":null,"traceparent":null}`,
			Request{Op: OpPublish, ID: 1, HasID: true, Type: "T", HasType: true}},
		{"duplicate key: last wins", `{"op":"ping","id":1,"id":2}`,
			Request{Op: OpPing, ID: 2, HasID: true}},
		{"cancel", `{"op":"cancel","id":9,"ref":7}`, Request{Op: OpCancel, ID: 9, HasID: true, Ref: 7, HasRef: true}},
		{"subscribe", `{"op":"subscribe","id":8,"queue":"order","prefetch":32}`,
			Request{Op: OpSubscribe, ID: 8, HasID: true, Queue: "order", HasQueue: true, Prefetch: 32, HasPrefetch: true}},
		{"subscribe without prefetch", `{"op":"subscribe","id":8,"queue":"order"}`,
			Request{Op: OpSubscribe, ID: 8, HasID: true, Queue: "order", HasQueue: true}},
		{"unsubscribe", `{"op":"unsubscribe","id":8,"queue":"order"}`,
			Request{Op: OpUnsubscribe, ID: 8, HasID: true, Queue: "order", HasQueue: true}},
		{"ack without id", `{"op":"ack","seq":41}`, Request{Op: OpAck, Seq: 41, HasSeq: true}},
		{"nack with queue and id", `{"op":"nack","seq":18446744073709551615,"queue":"data","id":3}`,
			Request{Op: OpNack, Seq: 18446744073709551615, HasSeq: true, Queue: "data", HasQueue: true, ID: 3, HasID: true}},
		{"publish with msg_id", `{"op":"publish","id":1,"type":"T","msg_id":"c1-\u00e9"}`,
			Request{Op: OpPublish, ID: 1, HasID: true, Type: "T", HasType: true, MsgID: "c1-é"}},
		{"msg_id of exactly the limit", `{"op":"publish","id":1,"type":"T","msg_id":"` + strings.Repeat("m", MaxMsgIDBytes) + `"}`,
			Request{Op: OpPublish, ID: 1, HasID: true, Type: "T", HasType: true, MsgID: strings.Repeat("m", MaxMsgIDBytes)}},
		{"empty and null msg_id are absent", `{"op":"publish","id":1,"type":"T","msg_id":"","reason":null}`,
			Request{Op: OpPublish, ID: 1, HasID: true, Type: "T", HasType: true}},
		{"nack with reason", `{"op":"nack","seq":4,"reason":"bad \"symbol\""}`,
			Request{Op: OpNack, Seq: 4, HasSeq: true, Reason: `bad "symbol"`}},
		{"stats", `{"op":"stats","id":10}`, Request{Op: OpStats, ID: 10, HasID: true}},
		{"ping", `{"op":"ping","id":0}`, Request{Op: OpPing, ID: 0, HasID: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeRequest([]byte(tt.line))
			if err != nil {
				t.Fatalf("DecodeRequest(%s): %v", tt.line, err)
			}
			assertRequest(t, got, tt.want)
		})
	}
}

func assertRequest(t *testing.T, got, want Request) {
	t.Helper()
	gp, wp := got.Payload, want.Payload
	got.Payload, want.Payload = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("request:\n got  %+v\n want %+v", got, want)
	}
	if string(gp) != string(wp) {
		t.Errorf("payload: got %q, want %q", gp, wp)
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	tests := []struct {
		name   string
		line   string
		code   Code
		hasID  bool
		id     int64
		substr string
	}{
		{"malformed JSON", `{"op":"publish","id":7,`, CodeBadRequest, false, 0, "malformed JSON"},
		{"not JSON at all", `hello`, CodeBadRequest, false, 0, "malformed JSON"},
		{"top-level array", `[1,2]`, CodeBadRequest, false, 0, "must be a JSON object, got array"},
		{"trailing garbage", `{"op":"ping","id":1} x`, CodeBadRequest, false, 0, "after the top-level object"},
		{"two objects on a line", `{"op":"ping","id":1}{"op":"ping","id":2}`, CodeBadRequest, false, 0, "after the top-level object"},
		{"invalid UTF-8", "{\"op\":\"publish\",\"id\":1,\"type\":\"\xff\"}", CodeBadRequest, false, 0, "not valid UTF-8"},
		{"control char in string", "{\"op\":\"ping\",\"id\":1,\"x\":\"a\tb\"}", CodeBadRequest, false, 0, "control character"},
		{"bad escape", `{"op":"ping","id":1,"x":"\q"}`, CodeBadRequest, false, 0, "invalid escape"},
		{"leading zero number", `{"op":"ping","id":01}`, CodeBadRequest, false, 0, "malformed JSON"},
		{"missing op", `{"id":4}`, CodeBadRequest, true, 4, `missing field "op"; valid ops: publish, cancel, subscribe, unsubscribe, ack, nack, stats, ping`},
		{"unknown op", `{"op":"fly","id":4}`, CodeBadRequest, true, 4, `unknown op "fly"; valid ops: publish,`},
		{"op not a string", `{"op":5,"id":4}`, CodeBadRequest, true, 4, `field "op" must be a string, got number`},
		{"publish missing id", `{"op":"publish","type":"T"}`, CodeBadRequest, false, 0, `publish: missing field "id"`},
		{"publish missing type", `{"op":"publish","id":5}`, CodeBadRequest, true, 5, `publish: missing field "type"`},
		{"publish empty type", `{"op":"publish","id":5,"type":""}`, CodeInvalidEvent, true, 5, `"type" must not be empty`},
		{"publish type not a string", `{"op":"publish","id":5,"type":12}`, CodeBadRequest, true, 5, `field "type" must be a string, got number`},
		{"publish queue not a string", `{"op":"publish","id":5,"type":"T","queue":["data"]}`, CodeBadRequest, true, 5, `field "queue" must be a string, got array`},
		{"id not an integer", `{"op":"ping","id":"7"}`, CodeBadRequest, false, 0, `field "id" must be an integer, got string`},
		{"id fractional", `{"op":"ping","id":7.5}`, CodeBadRequest, false, 0, `field "id" must be an integer, got 7.5`},
		{"id too large", `{"op":"ping","id":9223372036854775808}`, CodeBadRequest, false, 0, "out of range"},
		{"msg_id too long", `{"op":"publish","id":5,"type":"T","msg_id":"` + strings.Repeat("m", MaxMsgIDBytes+1) + `"}`, CodeBadRequest, true, 5,
			`publish: field "msg_id" is 257 bytes long; at most 256 bytes are allowed`},
		{"msg_id not a string", `{"op":"publish","id":5,"type":"T","msg_id":42}`, CodeBadRequest, true, 5, `field "msg_id" must be a string, got number`},
		{"reason not a string", `{"op":"nack","id":5,"seq":1,"reason":{}}`, CodeBadRequest, true, 5, `field "reason" must be a string, got object`},
		{"cancel missing ref", `{"op":"cancel","id":9}`, CodeBadRequest, true, 9, `cancel: missing field "ref"`},
		{"subscribe missing queue", `{"op":"subscribe","id":9}`, CodeBadRequest, true, 9, `subscribe: missing field "queue"`},
		{"prefetch zero", `{"op":"subscribe","id":9,"queue":"data","prefetch":0}`, CodeBadRequest, true, 9, `"prefetch" must be between 1 and 65536, got 0`},
		{"prefetch huge", `{"op":"subscribe","id":9,"queue":"data","prefetch":65537}`, CodeBadRequest, true, 9, `between 1 and 65536`},
		{"ack missing seq", `{"op":"ack","id":3}`, CodeBadRequest, true, 3, `ack: missing field "seq"`},
		{"ack negative seq", `{"op":"ack","seq":-1}`, CodeBadRequest, false, 0, `"seq" must be a non-negative integer`},
		{"stats missing id", `{"op":"stats"}`, CodeBadRequest, false, 0, `stats: missing field "id"`},
		{"empty object", `{}`, CodeBadRequest, false, 0, `missing field "op"`},
		{"blank", `   `, CodeBadRequest, false, 0, "empty frame"},
		{"byte-order mark", "\xef\xbb\xbf{\"op\":\"ping\",\"id\":1}", CodeBadRequest, false, 0, "frame starts with a UTF-8 byte-order mark"},
		{"long unknown op is cut", `{"op":"` + strings.Repeat("x", 300) + `","id":4}`, CodeBadRequest, true, 4,
			`unknown op "` + strings.Repeat("x", MaxEchoBytes) + `"... (cut to 128 of 300 bytes); valid ops:`},
		{"long number is cut", `{"op":"ping","id":` + strings.Repeat("1", 200) + `.5}`, CodeBadRequest, false, 0,
			`must be an integer, got ` + strings.Repeat("1", MaxEchoBytes) + `... (cut to 128 of 202 bytes)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeRequest([]byte(tt.line))
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("DecodeRequest(%s) error = %v, want *RequestError", tt.line, err)
			}
			if re.Code != tt.code {
				t.Errorf("code = %q, want %q (msg %q)", re.Code, tt.code, re.Msg)
			}
			if !strings.Contains(re.Msg, tt.substr) {
				t.Errorf("message %q does not contain %q", re.Msg, tt.substr)
			}
			if got.HasID != tt.hasID || got.ID != tt.id {
				t.Errorf("id = (%d, %v), want (%d, %v)", got.ID, got.HasID, tt.id, tt.hasID)
			}
		})
	}
}

func TestAppendRequestRoundTrip(t *testing.T) {
	reqs := []Request{
		{Op: OpPublish, ID: 1, HasID: true, Queue: "q\"1", HasQueue: true, Type: "T\n", HasType: true, Payload: json.RawMessage(`{"x":1}`), Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{Op: OpCancel, ID: 2, HasID: true, Ref: 1, HasRef: true},
		{Op: OpSubscribe, ID: 3, HasID: true, Queue: "order", HasQueue: true, Prefetch: 5, HasPrefetch: true},
		{Op: OpAck, Seq: 99, HasSeq: true, Queue: "order", HasQueue: true},
		{Op: OpNack, Seq: 98, HasSeq: true},
		{Op: OpNack, ID: 7, HasID: true, Seq: 97, HasSeq: true, Reason: "timeout\ncalling risk"},
		{Op: OpPublish, ID: 8, HasID: true, Type: "ORDER_PLACED", HasType: true, MsgID: "a1b2-\"7\""},
		{Op: OpStats, ID: 4, HasID: true},
		{Op: OpPing, ID: 5, HasID: true},
		{Op: OpUnsubscribe, ID: 6, HasID: true, Queue: "order", HasQueue: true},
	}
	for _, r := range reqs {
		t.Run(string(r.Op), func(t *testing.T) {
			line := AppendRequest(nil, &r)
			if line[len(line)-1] != '\n' || !json.Valid(line) {
				t.Fatalf("AppendRequest wrote %q, want one valid JSON line", line)
			}
			got, err := DecodeRequest(line[:len(line)-1])
			if err != nil {
				t.Fatalf("decode %s: %v", line, err)
			}
			assertRequest(t, got, r)
		})
	}
}

func TestAppendStringEscapes(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", `"plain"`},
		{"q\"b\\", `"q\"b\\"`},
		{"\n\r\t\x00\x1f", `"\n\r\t\u0000\u001f"`},
		{"é😀", `"é😀"`},
		{"bad\xffutf8", `"bad\ufffdutf8"`},
	}
	for _, tt := range tests {
		got := string(appendString(nil, tt.in))
		if got != tt.want {
			t.Errorf("appendString(%q) = %s, want %s", tt.in, got, tt.want)
		}
		var back string
		if err := json.Unmarshal([]byte(got), &back); err != nil {
			t.Errorf("appendString(%q) = %s is not valid JSON: %v", tt.in, got, err)
		}
	}
}

func TestDecodeMessage(t *testing.T) {
	at := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	tests := []struct {
		name string
		line string
		want Message
	}{
		{"accepted", `{"id":7,"status":"accepted"}`, Message{ID: 7, HasID: true, Status: StatusAccepted}},
		{"error with code", `{"id":7,"status":"error","code":"unknown_queue","error":"unknown queue \"x\""}`,
			Message{ID: 7, HasID: true, Status: StatusError, Code: CodeUnknownQueue, Error: `unknown queue "x"`}},
		{"error without id", `{"status":"error","code":"bad_request","error":"malformed"}`,
			Message{Status: StatusError, Code: CodeBadRequest, Error: "malformed"}},
		{"deliver", `{"op":"deliver","queue":"order","seq":41,"type":"ORDER_PLACED","payload":{"q":1},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","enqueued_at":"2024-05-06T07:08:09.123456789Z","redelivered":true,"redeliveries":2}`,
			Message{Op: OpDeliver, Deliver: Deliver{Queue: "order", Seq: 41, Type: "ORDER_PLACED", Payload: json.RawMessage(`{"q":1}`), Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", EnqueuedAt: at, Redeliveries: 2}}},
		{"duplicate", `{"id":7,"status":"accepted","duplicate":true}`, Message{ID: 7, HasID: true, Status: StatusAccepted, Duplicate: true}},
		{"storage error", `{"id":7,"status":"error","code":"storage_error","error":"disk full"}`,
			Message{ID: 7, HasID: true, Status: StatusError, Code: CodeStorageError, Error: "disk full"}},
		{"deliver of a dead letter", `{"op":"deliver","queue":"dlq","seq":3,"type":"T","payload":1,"enqueued_at":"2024-05-06T07:08:09.123456789Z","redelivered":false,"redeliveries":0,"dead_letter":{"queue":"order","seq":41,"deliveries":5,"reason":"bad","later":[1]}}`,
			Message{Op: OpDeliver, Deliver: Deliver{Queue: "dlq", Seq: 3, Type: "T", Payload: json.RawMessage(`1`), EnqueuedAt: at, DeadLetter: &DeadLetter{Queue: "order", Seq: 41, Deliveries: 5, Reason: "bad"}}}},
		{"deliver with only the redelivered flag", `{"op":"deliver","queue":"q","seq":1,"type":"T","payload":null,"enqueued_at":"2024-05-06T07:08:09.123456789Z","redelivered":true}`,
			Message{Op: OpDeliver, Deliver: Deliver{Queue: "q", Seq: 1, Type: "T", Payload: json.RawMessage(`null`), EnqueuedAt: at, Redeliveries: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeMessage([]byte(tt.line))
			if err != nil {
				t.Fatal(err)
			}
			assertMessage(t, got, tt.want)
		})
	}
	for _, bad := range []string{`{"status":`, `{"id":1}`, `{"op":"deliver","seq":1}`, `{"op":"explode"}`, `{"id":"x","status":"ok"}`, `{"op":"deliver","queue":"q","seq":1,"enqueued_at":"yesterday"}`,
		`{"id":1,"status":"accepted","duplicate":"yes"}`, `{"op":"deliver","queue":"q","seq":1,"enqueued_at":"2024-05-06T07:08:09Z","dead_letter":[]}`,
		`{"op":"deliver","queue":"q","seq":1,"enqueued_at":"2024-05-06T07:08:09Z","dead_letter":{"seq":-1}}`} {
		if _, err := DecodeMessage([]byte(bad)); !errors.Is(err, ErrMalformedMessage) {
			t.Errorf("DecodeMessage(%s) error = %v, want ErrMalformedMessage", bad, err)
		}
	}
}

func assertMessage(t *testing.T, got, want Message) {
	t.Helper()
	if string(got.Deliver.Payload) != string(want.Deliver.Payload) || string(got.Stats) != string(want.Stats) {
		t.Errorf("raw fields: got payload %q stats %q, want %q %q", got.Deliver.Payload, got.Stats, want.Deliver.Payload, want.Stats)
	}
	if !got.Deliver.EnqueuedAt.Equal(want.Deliver.EnqueuedAt) {
		t.Errorf("enqueued_at = %v, want %v", got.Deliver.EnqueuedAt, want.Deliver.EnqueuedAt)
	}
	got.Deliver.Payload, want.Deliver.Payload, got.Stats, want.Stats = nil, nil, nil, nil
	got.Deliver.EnqueuedAt, want.Deliver.EnqueuedAt = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("message:\n got  %+v\n want %+v", got, want)
	}
}

func TestEnqueuedAtFormatAndParse(t *testing.T) {
	tests := []time.Time{
		time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 0, time.FixedZone("X", -5*3600)),
		time.Date(2028, 2, 29, 0, 0, 0, 1, time.UTC),
		time.Unix(0, 0),
	}
	for _, at := range tests {
		got := string(appendEnqueuedAt(nil, at))
		if want := at.UTC().Format(EnqueuedAtLayout); got != want {
			t.Errorf("appendEnqueuedAt(%v) = %s, want %s", at, got, want)
		}
		back, err := parseEnqueuedAt(got)
		if err != nil || !back.Equal(at) {
			t.Errorf("parseEnqueuedAt(%s) = %v, %v; want %v", got, back, err, at)
		}
	}
	for _, s := range []string{"2024-05-06T07:08:09.5+02:00", "2024-05-06T07:08:09Z"} {
		want, _ := time.Parse(time.RFC3339Nano, s)
		if got, err := parseEnqueuedAt(s); err != nil || !got.Equal(want) {
			t.Errorf("parseEnqueuedAt(%s) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"2024-02-30T07:08:09.000000000Z", "2024-13-06T07:08:09.000000000Z", "yesterday"} {
		if _, err := parseEnqueuedAt(s); err == nil {
			t.Errorf("parseEnqueuedAt(%s) accepted an invalid time", s)
		}
	}
}

func TestClipReason(t *testing.T) {
	max := MaxNackReasonBytes
	tests := []struct {
		name string
		in   string
		want int // length kept
	}{
		{"short kept", "bad symbol", len("bad symbol")},
		{"exactly the limit kept", strings.Repeat("x", max), max},
		{"longer cut to the limit", strings.Repeat("x", max+10), max},
		// "é" is two bytes: the one straddling the limit goes whole.
		{"cut on a rune boundary", strings.Repeat("x", max-1) + "é", max - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ClipNackReason(tt.in)
			if len(got) != tt.want || !strings.HasPrefix(tt.in, got) || !utf8.ValidString(got) {
				t.Fatalf("ClipNackReason kept %d bytes (valid UTF-8 %v), want %d", len(got), utf8.ValidString(got), tt.want)
			}
		})
	}
}
