package telemetry

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// marshalClient is the stock exporter's work up to the wire: it marshals
// the request the stock gRPC client would send, and sends nothing.
type marshalClient struct{ buf []byte }

func (c *marshalClient) Start(context.Context) error { return nil }
func (c *marshalClient) Stop(context.Context) error  { return nil }
func (c *marshalClient) UploadTraces(_ context.Context, rs []*tracepb.ResourceSpans) error {
	var err error
	c.buf, err = proto.MarshalOptions{}.MarshalAppend(c.buf[:0], &coltracepb.ExportTraceServiceRequest{ResourceSpans: rs})
	return err
}

// BenchmarkSpanEncoding compares, on the same 512 bus-shaped SDK spans,
// the stock exporter's transform to tracepb plus proto.Marshal with the
// hand-written encoder. Compare ns/span within one run:
//
//	go test -run '^$' -bench SpanEncoding -benchmem ./telemetry/
func BenchmarkSpanEncoding(b *testing.B) {
	spans := busSpans(b)
	b.Run("stock-transform-marshal", func(b *testing.B) {
		exp, err := otlptrace.New(context.Background(), &marshalClient{})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if err := exp.ExportSpans(context.Background(), spans); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(spans)), "ns/span")
	})
	b.Run("encoder", func(b *testing.B) {
		var enc spanEncoder
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			buf = enc.encode(buf[:0], spans)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(spans)), "ns/span")
	})
}
