package telemetry

import (
	"context"
	"encoding/base64"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
)

// statusBytes is the encoded google.rpc.Status of s, as a collector puts
// it in grpc-status-details-bin.
func statusBytes(t testing.TB, s *status.Status) []byte {
	t.Helper()
	b, err := proto.Marshal(s.Proto())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRetryInfoOf(t *testing.T) {
	tests := []struct {
		name   string
		status []byte
		delay  time.Duration
		ok     bool
	}{
		{"no details", statusBytes(t, status.New(codes.ResourceExhausted, "x")), 0, false},
		{"retry info", statusBytes(t, mustDetails(t, &errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})), 1500 * time.Millisecond, true},
		{"retry info after another detail", statusBytes(t, mustDetails(t, wrapperspb.String("x"), &errdetails.RetryInfo{RetryDelay: durationpb.New(2 * time.Second)})), 2 * time.Second, true},
		{"retry info without a delay", statusBytes(t, mustDetails(t, &errdetails.RetryInfo{})), 0, true},
		{"another detail only", statusBytes(t, mustDetails(t, &errdetails.ErrorInfo{Reason: "quota"})), 0, false},
		{"a negative delay is none", statusBytes(t, mustDetails(t, &errdetails.RetryInfo{RetryDelay: &durationpb.Duration{Seconds: -3}})), 0, false},
		{"garbage", []byte{0xff, 0xff, 0xff}, 0, false},
		{"empty", nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, ok := retryInfoOf(tt.status)
			if d != tt.delay || ok != tt.ok {
				t.Errorf("retryInfoOf = %v, %v; want %v, %v", d, ok, tt.delay, tt.ok)
			}
		})
	}
}

func mustDetails(t testing.TB, details ...protoadapt.MessageV1) *status.Status {
	t.Helper()
	s := status.New(codes.ResourceExhausted, "slow down")
	for _, d := range details {
		var err error
		if s, err = s.WithDetails(d); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestPartialSuccessOf(t *testing.T) {
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name     string
		resp     []byte
		rejected int64
		message  string
		ok       bool
	}{
		{"empty response", nil, 0, "", true},
		{"full success", enc(&coltracepb.ExportTraceServiceResponse{}), 0, "", true},
		{"partial", enc(&coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{RejectedSpans: 3, ErrorMessage: "too old"}}), 3, "too old", true},
		{"warning only", enc(&coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{ErrorMessage: "fine"}}), 0, "fine", true},
		{"malformed", []byte{0x0a, 0x05, 0x08}, 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rejected, message, ok := partialSuccessOf(tt.resp)
			if rejected != tt.rejected || message != tt.message || ok != tt.ok {
				t.Errorf("partialSuccessOf = %d, %q, %v; want %d, %q, %v", rejected, message, ok, tt.rejected, tt.message, tt.ok)
			}
		})
	}
}

func TestGRPCTimeout(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "1n"},
		{0, "1n"},
		{time.Microsecond, "1m"},
		{1500 * time.Millisecond, "1500m"},
		{99999999 * time.Millisecond, "99999999m"},
		{100000000 * time.Millisecond, "100000S"},
		{1000 * time.Hour * 1000, "99999999S"},
	}
	for _, tt := range tests {
		if got := grpcTimeout(tt.d); got != tt.want {
			t.Errorf("grpcTimeout(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// h2cServer serves h over plaintext HTTP/2 on a loopback port until the
// test ends, standing in for a collector that answers badly.
func h2cServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String()
}

// TestGRPCCallAnswers checks how a call reads answers that a real gRPC
// server does not give: HTTP errors, a status in the headers alone, no
// status, a body that is not gRPC, a compressed message, details.
func TestGRPCCallAnswers(t *testing.T) {
	details := base64.RawStdEncoding.EncodeToString(statusBytes(t, mustDetails(t, &errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})))
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		wantCode  rpcCode
		wantMsg   string
		wantDelay time.Duration
		wantResp  string
	}{
		{"HTTP 503 is Unavailable", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}, rpcUnavailable, "HTTP status 503", 0, ""},
		{"HTTP 404 is Unimplemented", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusNotFound)
		}, rpcUnimplemented, "HTTP status 404", 0, ""},
		{"a status in the headers only, message percent-encoded, with RetryInfo", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "8")
			w.Header().Set("Grpc-Message", "slow%20down")
			w.Header().Set("Grpc-Status-Details-Bin", details)
			w.WriteHeader(http.StatusOK)
		}, rpcResourceExhausted, "slow down", time.Second, ""},
		{"no grpc-status is Internal", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.WriteHeader(http.StatusOK)
		}, rpcInternal, "no grpc-status", 0, ""},
		{"not gRPC is Unknown", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte("<html>"))
		}, rpcUnknown, "text/html", 0, ""},
		{"a truncated message is Internal", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			_, _ = w.Write([]byte{0, 0, 0, 0, 9, 1, 2})
			w.Header().Set("Grpc-Status", "0")
		}, rpcInternal, "a response message of 9 bytes", 0, ""},
		{"OK with a message in the trailers' status", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			_, _ = w.Write([]byte{0, 0, 0, 0, 2, 'h', 'i'})
			w.Header().Set("Grpc-Status", "0")
		}, rpcOK, "", 0, "hi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := h2cServer(t, tt.handler)
			c, err := newGRPCClient(grpcClientConfig{endpoint: endpoint{hostPort: addr, insecure: true}, userAgent: "test"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.close)
			req := c.newRequest()
			defer req.release()
			*req.buf = append(*req.buf, "request"...)
			if err := req.seal(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := c.call(ctx, "/test.Service/Method", req)
			if got := errorCode(err); got != tt.wantCode {
				t.Fatalf("call = %v (code %v), want code %v", err, got, tt.wantCode)
			}
			if err != nil && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantMsg)
			}
			if d, _ := retryable(err); err != nil && d != tt.wantDelay {
				t.Errorf("retry delay %v, want %v", d, tt.wantDelay)
			}
			if string(resp) != tt.wantResp {
				t.Errorf("response %q, want %q", resp, tt.wantResp)
			}
		})
	}
}

// TestGRPCCallTransportErrors: a call that gets no answer is Unavailable
// (retryable), unless the caller's deadline passed or the client closed.
func TestGRPCCallTransportErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now

	c, err := newGRPCClient(grpcClientConfig{endpoint: endpoint{hostPort: addr, insecure: true}, userAgent: "test"})
	if err != nil {
		t.Fatal(err)
	}
	req := c.newRequest()
	defer req.release()
	if err := req.seal(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.call(context.Background(), "/x/y", req); errorCode(err) != rpcUnavailable {
		t.Errorf("call to a closed port = %v, want Unavailable", err)
	}

	// A server that never answers: the deadline ends the call.
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	arrived := make(chan struct{}, 2)
	addr = h2cServer(t, func(http.ResponseWriter, *http.Request) {
		arrived <- struct{}{}
		<-hang
	})
	c2, err := newGRPCClient(grpcClientConfig{endpoint: endpoint{hostPort: addr, insecure: true}, userAgent: "test"})
	if err != nil {
		t.Fatal(err)
	}
	req2 := c2.newRequest()
	defer req2.release()
	if err := req2.seal(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c2.call(ctx, "/x/y", req2); errorCode(err) != rpcDeadlineExceeded {
		t.Errorf("call past its deadline = %v, want DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c2.call(context.Background(), "/x/y", req2)
		done <- err
	}()
	<-arrived // the call that timed out
	<-arrived // this one: in flight at the server
	c2.close()
	select {
	case err := <-done:
		if errorCode(err) != rpcCanceled {
			t.Errorf("call while the client closes = %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("close did not end the call in flight")
	}
}

// FuzzGRPCResponse feeds the response decoders bytes a collector, or
// something posing as one, might send: none may panic.
func FuzzGRPCResponse(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 2, 'h', 'i'}, "")
	f.Add([]byte{1, 0, 0, 0, 1, 0}, "gzip")
	f.Add(statusBytes(f, mustDetails(f, &errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})), "")
	resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{RejectedSpans: 3, ErrorMessage: "x"}})
	f.Add(resp, "")
	f.Fuzz(func(t *testing.T, data []byte, encoding string) {
		_, _ = responseMessage(data, encoding)
		_, _ = retryInfoOf(data)
		_, _, _ = partialSuccessOf(data)
		h := http.Header{}
		h.Set("Grpc-Status", "8")
		h.Set("Grpc-Message", string(data))
		h.Set("Grpc-Status-Details-Bin", base64.StdEncoding.EncodeToString(data))
		if errorCode(statusError(h)) != rpcResourceExhausted {
			t.Fatal("status code lost")
		}
	})
}
