package protocol

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the encoders")

// goldenFrames is one entry per frame kind of the protocol. The files are
// the wire contract: a change here is a protocol change.
func goldenFrames() map[string][]byte {
	at := time.Date(2024, 5, 6, 7, 8, 9, 120000000, time.UTC)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:     trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
		TraceFlags: trace.FlagsSampled,
	})
	tp := string(AppendTraceparent(nil, sc))
	req := func(r Request) []byte { return AppendRequest(nil, &r) }
	return map[string][]byte{
		"request_publish": req(Request{Op: OpPublish, ID: 7, HasID: true, Queue: "signal", HasQueue: true, Type: "SIGNAL_GENERATED", HasType: true,
			Payload: json.RawMessage(`{"symbol":"BTCUSDT","side":"buy","strength":0.82}`), Traceparent: tp}),
		"request_publish_routed": req(Request{Op: OpPublish, ID: 8, HasID: true, Type: "CANDLE_UPDATE", HasType: true, Payload: json.RawMessage(`{"symbol":"ETHUSDT","close":3012.5}`)}),
		"request_cancel":         req(Request{Op: OpCancel, ID: 9, HasID: true, Ref: 7, HasRef: true}),
		"request_subscribe":      req(Request{Op: OpSubscribe, ID: 10, HasID: true, Queue: "order", HasQueue: true, Prefetch: 32, HasPrefetch: true}),
		"request_unsubscribe":    req(Request{Op: OpUnsubscribe, ID: 11, HasID: true, Queue: "order", HasQueue: true}),
		"request_ack":            req(Request{Op: OpAck, Seq: 41, HasSeq: true, Queue: "order", HasQueue: true}),
		"request_nack":           req(Request{Op: OpNack, ID: 12, HasID: true, Seq: 42, HasSeq: true, Queue: "order", HasQueue: true}),
		"request_publish_msg_id": req(Request{Op: OpPublish, ID: 15, HasID: true, Queue: "order", HasQueue: true, Type: "ORDER_PLACED", HasType: true,
			Payload: json.RawMessage(`{"symbol":"BTCUSDT","qty":0.5}`), MsgID: "9f1c2a7e4b3d5a60-42"}),
		"request_nack_reason":        req(Request{Op: OpNack, ID: 16, HasID: true, Seq: 42, HasSeq: true, Queue: "order", HasQueue: true, Reason: "risk check failed: symbol halted"}),
		"reply_duplicate":            AppendDuplicateReply(nil, 15),
		"reply_storage_error":        AppendErrorReply(nil, 15, true, CodeStorageError, `publish: storage failure: queue "order": write /var/lib/eventbus/queues/order/00000001.wal: no space left on device`),
		"request_stats":              req(Request{Op: OpStats, ID: 13, HasID: true}),
		"request_ping":               req(Request{Op: OpPing, ID: 14, HasID: true}),
		"reply_accepted":             AppendReply(nil, 7, StatusAccepted),
		"reply_dropped":              AppendReply(nil, 7, StatusDropped),
		"reply_timeout":              AppendReply(nil, 7, StatusTimeout),
		"reply_cancelled":            AppendReply(nil, 7, StatusCancelled),
		"reply_ok":                   AppendReply(nil, 14, StatusOK),
		"reply_error":                AppendErrorReply(nil, 7, true, CodeUnknownQueue, `unknown queue "risk"; valid queues: data, signal, order`),
		"reply_error_no_id":          AppendErrorReply(nil, 0, false, CodeBadRequest, "malformed JSON at byte 24: unexpected end of JSON"),
		"reply_shutting_down":        AppendErrorReply(nil, 7, true, CodeShuttingDown, "shutting down"),
		"reply_too_many_connections": AppendTooManyConnections(nil, 1024), // the server's default limit,
		"reply_stats": AppendStatsReply(nil, 13, []byte(`{"data":{"size":0,"maxsize":1000,"drops":0,"policy":"drop","timeout_seconds":1,`+
			`"published":{"accepted":0,"cancelled":0,"dropped":0,"duplicate":0,"error":0,"timeout":0},"drops_by_reason":{"evicted":0,"timeout":0},`+
			`"timeouts":0,"delivered":0,"redelivered":0,"acked":0,"waiting":0,"consumers":0,"in_flight":0,"durable":false,"dead_lettered":0}}`)),
		"deliver": AppendDeliver(nil, &Deliver{Queue: "order", Seq: 41, Type: "ORDER_PLACED", Payload: json.RawMessage(`{"symbol":"BTCUSDT","qty":0.5}`),
			Traceparent: tp, EnqueuedAt: at}),
		"deliver_redelivered": AppendDeliver(nil, &Deliver{Queue: "order", Seq: 41, Type: "ORDER_PLACED", Payload: json.RawMessage(`{"symbol":"BTCUSDT","qty":0.5}`),
			Traceparent: tp, EnqueuedAt: at, Redeliveries: 1}),
		"deliver_dead_letter": AppendDeliver(nil, &Deliver{Queue: "order_dead", Seq: 3, Type: "ORDER_PLACED", Payload: json.RawMessage(`{"symbol":"BTCUSDT","qty":0.5}`),
			Traceparent: tp, EnqueuedAt: at, DeadLetter: &DeadLetter{Queue: "order", Seq: 41, Deliveries: 5, Reason: "risk check failed: symbol halted"}}),
		"deliver_no_trace": AppendDeliver(nil, &Deliver{Queue: "data", Seq: 1, Type: "CANDLE_UPDATE", EnqueuedAt: at.In(time.FixedZone("CET", 3600))}),
	}
}

func TestGoldenFrames(t *testing.T) {
	for name, got := range goldenFrames() {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./protocol -run TestGoldenFrames -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Errorf("frame changed:\n got  %s want %s", got, want)
			}
			if !json.Valid(got) || got[len(got)-1] != '\n' {
				t.Errorf("frame %q is not one JSON line", got)
			}
			// Each golden frame decodes with the decoder for its direction.
			line := want[:len(want)-1]
			if filepath.Base(name)[:len("request")] == "request" {
				if _, err := DecodeRequest(line); err != nil {
					t.Errorf("DecodeRequest(%s): %v", line, err)
				}
			} else if _, err := DecodeMessage(line); err != nil {
				t.Errorf("DecodeMessage(%s): %v", line, err)
			}
		})
	}
}
