package protocol

import (
	"encoding/json"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// The codec benchmarks compare the hand-written frame codec with
// encoding/json on the hot frames: a publish request in, a deliver frame
// out.
func BenchmarkCodec(b *testing.B) {
	line := []byte(`{"op":"publish","id":123456,"queue":"data","type":"CANDLE_UPDATE","payload":{"symbol":"BTCUSDT","open":101.5,"close":102.25,"volume":12.5},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}`)
	type jsonRequest struct {
		Op          string          `json:"op"`
		ID          int64           `json:"id"`
		Queue       string          `json:"queue"`
		Type        string          `json:"type"`
		Payload     json.RawMessage `json:"payload"`
		Traceparent string          `json:"traceparent"`
	}
	d := Deliver{Queue: "data", Seq: 987654, Type: "CANDLE_UPDATE", Payload: json.RawMessage(`{"symbol":"BTCUSDT","open":101.5,"close":102.25,"volume":12.5}`),
		EnqueuedAt: time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled})
	type jsonDeliver struct {
		Op          string          `json:"op"`
		Queue       string          `json:"queue"`
		Seq         uint64          `json:"seq"`
		Type        string          `json:"type"`
		Payload     json.RawMessage `json:"payload"`
		Traceparent string          `json:"traceparent"`
		EnqueuedAt  string          `json:"enqueued_at"`
		Redelivered bool            `json:"redelivered"`
	}
	b.Run("decode-publish/handwritten", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeRequest(line); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode-publish/handwritten-interned", func(b *testing.B) {
		// As the server decodes: queue and type come from its interner.
		strs := map[string]string{"publish": "publish", "data": "data", "CANDLE_UPDATE": "CANDLE_UPDATE"}
		intern := func(v []byte) string {
			if s, ok := strs[string(v)]; ok {
				return s
			}
			return string(v)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeRequestInterned(line, intern); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode-publish/encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r jsonRequest
			if err := json.Unmarshal(line, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode-deliver/handwritten", func(b *testing.B) {
		b.ReportAllocs()
		var buf, tp []byte
		for b.Loop() {
			tp = AppendTraceparent(tp[:0], sc)
			buf = appendDeliver(buf[:0], &d, tp)
		}
	})
	b.Run("encode-deliver/encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(jsonDeliver{Op: "deliver", Queue: d.Queue, Seq: d.Seq, Type: d.Type, Payload: d.Payload,
				Traceparent: string(AppendTraceparent(nil, sc)), EnqueuedAt: d.EnqueuedAt.Format(EnqueuedAtLayout)}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
