package telemetry

import (
	"context"
	"net"
	"testing"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
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

// discardCodec is a gRPC server codec that reads nothing from a request
// and answers with an empty message (a valid empty
// ExportTraceServiceResponse).
type discardCodec struct{}

func (discardCodec) Name() string                         { return "proto" }
func (discardCodec) Marshal(any) (mem.BufferSlice, error) { return nil, nil }
func (discardCodec) Unmarshal(mem.BufferSlice, any) error { return nil }

// startDiscardCollector is a gRPC server that takes any unary call and
// throws the request away undecoded, so that a benchmark measures the
// client, not the collector's decoding.
func startDiscardCollector(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(discardCodec{}),
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			if err := stream.RecvMsg(nil); err != nil {
				return err
			}
			return stream.SendMsg(nil)
		}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	b.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return l.Addr().String()
}

// BenchmarkSpanExport sends the same 512 bus-shaped spans over gRPC with
// the stock otlptracegrpc exporter and with otlpSpanExporter, to a server
// that does not decode them:
//
//	go test -run '^$' -bench SpanExport -benchmem ./telemetry/
func BenchmarkSpanExport(b *testing.B) {
	spans := busSpans(b)
	addr := startDiscardCollector(b)
	ctx := context.Background()
	run := func(b *testing.B, exp sdktrace.SpanExporter) {
		b.Helper()
		defer func() { _ = exp.Shutdown(ctx) }()
		if err := exp.ExportSpans(ctx, spans); err != nil { // connect
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if err := exp.ExportSpans(ctx, spans); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(spans)), "ns/span")
	}
	b.Run("stock-otlptracegrpc", func(b *testing.B) {
		exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
		if err != nil {
			b.Fatal(err)
		}
		run(b, exp)
	})
	b.Run("otlpSpanExporter", func(b *testing.B) {
		exp, err := newSpanExporter(exporterConfig{
			endpoint: endpoint{hostPort: addr, insecure: true}, timeout: 10 * time.Second, retry: exportRetry(),
		})
		if err != nil {
			b.Fatal(err)
		}
		run(b, exp)
	})
}
