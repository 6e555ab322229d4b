package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// grpcClient makes the unary gRPC calls of the OTLP exporters over
// net/http's HTTP/2 (plaintext HTTP/2 with prior knowledge for an http
// endpoint, TLS with ALPN otherwise). A unary call is one POST whose body
// is the request message behind a five-byte prefix, answered by one such
// message and a status in the trailers, so the standard library carries it
// without the gRPC module, which with the generated OTLP types it needs
// made up a fifth of the sidecar's idle memory (docs/performance.md).
type grpcClient struct {
	base   string // scheme://host:port
	client *http.Client
	header http.Header // sent with every call
	gzip   bool
	bufs   requestBuffers

	zmu sync.Mutex
	zw  *gzip.Writer

	// ctx is cancelled by close, which ends a call in flight.
	ctx    context.Context
	cancel context.CancelFunc
}

// grpcPrefixLen is the length of a gRPC message prefix: a compression flag
// and the message length (big-endian uint32).
const grpcPrefixLen = 5

// maxResponseBytes bounds what is read of a collector's response: an
// export's response is a few bytes (an empty message or a partial
// success), so anything near this is not a collector.
const maxResponseBytes = 4 << 20

// grpcClientConfig is what newGRPCClient needs.
type grpcClientConfig struct {
	endpoint endpoint
	// tls verifies the collector (and carries a client certificate) when
	// the endpoint is not plaintext; nil: the system's roots.
	tls *tls.Config
	// headers are sent as gRPC metadata with every call.
	headers   map[string]string
	gzip      bool
	userAgent string
}

func newGRPCClient(cfg grpcClientConfig) (*grpcClient, error) {
	host := cfg.endpoint.hostPort
	if cfg.endpoint.url != "" {
		u, err := url.Parse(cfg.endpoint.url)
		if err != nil {
			return nil, fmt.Errorf("%w: OTLP endpoint %q: %v", ErrInvalidConfig, cfg.endpoint.url, err)
		}
		host = u.Host // an OTLP/gRPC target has no path
	}
	var protocols http.Protocols
	scheme := "https"
	if cfg.endpoint.insecure {
		scheme = "http"
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP2(true)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.tls != nil {
		tlsConfig = cfg.tls.Clone()
	}
	transport := &http.Transport{
		Protocols:       &protocols,
		TLSClientConfig: tlsConfig,
		DialContext:     (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		// A collector that vanishes without closing the connection is
		// found by a ping instead of by every export timing out on it.
		HTTP2:           &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 10 * time.Second},
		IdleConnTimeout: 5 * time.Minute,
	}
	header := http.Header{}
	for k, v := range cfg.headers {
		header.Set(k, v)
	}
	// Set after the metadata, so that no header can replace them.
	header.Set("Content-Type", "application/grpc+proto")
	header.Set("Te", "trailers")
	header.Set("User-Agent", cfg.userAgent)
	header.Set("Grpc-Accept-Encoding", "gzip")
	if cfg.gzip {
		header.Set("Grpc-Encoding", "gzip")
	}
	c := &grpcClient{
		base:   scheme + "://" + host,
		client: &http.Client{Transport: transport},
		header: header,
		gzip:   cfg.gzip,
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// target names the collector in errors.
func (c *grpcClient) target() string { return c.base }

// newRequest returns a request whose message the caller appends to
// req.buf (after the room left for the prefix), then seals.
func (c *grpcClient) newRequest() *grpcRequest {
	buf := c.bufs.Get(0)
	*buf = append((*buf)[:0], make([]byte, grpcPrefixLen)...)
	r := &grpcRequest{buf: buf, c: c}
	r.refs.Store(1)
	return r
}

// grpcRequest is one message to send, once or several times (retries).
// Its buffer goes back to the client's pool when the caller has released
// it and the HTTP transport has closed every body that read it, which the
// transport may do after a call returns.
type grpcRequest struct {
	buf    *[]byte
	frame  []byte // what is sent: buf, or its compressed copy
	zbuf   *[]byte
	c      *grpcClient
	refs   atomic.Int32
	sealed bool
}

// empty reports whether no message was appended.
func (r *grpcRequest) empty() bool { return len(*r.buf) == grpcPrefixLen }

// seal writes the prefix, compressing the message first when the client
// sends gzip.
func (r *grpcRequest) seal() error {
	r.sealed = true
	b := *r.buf
	if !r.c.gzip {
		b[0] = 0
		binary.BigEndian.PutUint32(b[1:grpcPrefixLen], uint32(len(b)-grpcPrefixLen))
		r.frame = b
		return nil
	}
	r.zbuf = r.c.bufs.Get(0)
	z := bytes.NewBuffer(append((*r.zbuf)[:0], make([]byte, grpcPrefixLen)...))
	r.c.zmu.Lock()
	if r.c.zw == nil {
		r.c.zw = gzip.NewWriter(z)
	} else {
		r.c.zw.Reset(z)
	}
	_, err := r.c.zw.Write(b[grpcPrefixLen:])
	if err == nil {
		err = r.c.zw.Close()
	}
	r.c.zmu.Unlock()
	if err != nil {
		return fmt.Errorf("telemetry: gzip an OTLP request: %w", err)
	}
	*r.zbuf = z.Bytes()
	zb := *r.zbuf
	zb[0] = 1
	binary.BigEndian.PutUint32(zb[1:grpcPrefixLen], uint32(len(zb)-grpcPrefixLen))
	r.frame = zb
	return nil
}

// release drops the caller's hold on the request.
func (r *grpcRequest) release() { r.unref() }

func (r *grpcRequest) unref() {
	if r.refs.Add(-1) != 0 {
		return
	}
	r.c.bufs.Put(r.buf)
	if r.zbuf != nil {
		r.c.bufs.Put(r.zbuf)
	}
}

// requestBody reads a sealed request for one call; Close lets go of it.
type requestBody struct {
	bytes.Reader
	r    *grpcRequest
	once sync.Once
}

func (b *requestBody) Close() error {
	b.once.Do(b.r.unref)
	return nil
}

// call sends the sealed req to method and returns the response message.
// An error is an *rpcError: the collector's status, or Unavailable,
// DeadlineExceeded or Canceled for a call that got no answer.
func (c *grpcClient) call(ctx context.Context, method string, req *grpcRequest) ([]byte, error) {
	if !req.sealed {
		return nil, errors.New("telemetry: gRPC request sent before it was sealed")
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	unhook := context.AfterFunc(c.ctx, stop)
	defer unhook()

	req.refs.Add(1)
	body := &requestBody{r: req}
	body.Reset(req.frame)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+method, body)
	if err != nil {
		_ = body.Close()
		return nil, &rpcError{code: rpcInternal, message: err.Error(), cause: err}
	}
	hreq.ContentLength = int64(len(req.frame))
	hreq.Header = c.header.Clone()
	if deadline, ok := ctx.Deadline(); ok {
		hreq.Header.Set("Grpc-Timeout", grpcTimeout(time.Until(deadline)))
	}
	resp, err := c.client.Do(hreq)
	if err != nil {
		return nil, transportError(ctx, c.ctx, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, transportError(ctx, c.ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &rpcError{code: httpStatusCode(resp.StatusCode), message: fmt.Sprintf("HTTP status %d from the collector", resp.StatusCode)}
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/grpc") {
		return nil, &rpcError{code: rpcUnknown, message: fmt.Sprintf("content type %q from the collector, want application/grpc", ct)}
	}
	// A trailers-only response (an error before any message) carries
	// the status in its headers.
	st := resp.Trailer
	if st.Get("Grpc-Status") == "" {
		st = resp.Header
	}
	if err := statusError(st); err != nil {
		return nil, err
	}
	if len(data) > maxResponseBytes {
		return nil, &rpcError{code: rpcResourceExhausted, message: fmt.Sprintf("response of more than %d bytes from the collector", maxResponseBytes)}
	}
	msg, err := responseMessage(data, resp.Header.Get("Grpc-Encoding"))
	if err != nil {
		return nil, &rpcError{code: rpcInternal, message: err.Error()}
	}
	return msg, nil
}

// close ends a call in flight and the idle connections.
func (c *grpcClient) close() {
	c.cancel()
	c.client.CloseIdleConnections()
}

// responseMessage takes the one message out of a unary response body
// (empty when the response had none).
func responseMessage(data []byte, encoding string) ([]byte, error) {
	if len(data) == 0 {
		return nil, nil
	}
	if len(data) < grpcPrefixLen {
		return nil, fmt.Errorf("a response of %d bytes, shorter than a message prefix", len(data))
	}
	n := binary.BigEndian.Uint32(data[1:grpcPrefixLen])
	if uint64(n) != uint64(len(data)-grpcPrefixLen) {
		return nil, fmt.Errorf("a response message of %d bytes in a body of %d", n, len(data)-grpcPrefixLen)
	}
	msg := data[grpcPrefixLen:]
	switch data[0] {
	case 0:
		return msg, nil
	case 1:
		if !strings.EqualFold(encoding, "gzip") {
			return nil, fmt.Errorf("a compressed response with grpc-encoding %q, want gzip", encoding)
		}
		zr, err := gzip.NewReader(bytes.NewReader(msg))
		if err != nil {
			return nil, fmt.Errorf("a compressed response: %w", err)
		}
		out, err := io.ReadAll(io.LimitReader(zr, maxResponseBytes+1))
		if err != nil {
			return nil, fmt.Errorf("a compressed response: %w", err)
		}
		if len(out) > maxResponseBytes {
			return nil, fmt.Errorf("a response of more than %d bytes uncompressed", maxResponseBytes)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("a response message with compression flag %d", data[0])
	}
}

// grpcTimeout writes d as a grpc-timeout header value (at most 8 digits
// and a unit).
func grpcTimeout(d time.Duration) string {
	if d <= 0 {
		return "1n"
	}
	if ms := d.Milliseconds(); ms < 1e8 {
		return strconv.FormatInt(max(ms, 1), 10) + "m"
	}
	return strconv.FormatInt(min(int64(d/time.Second), 99999999), 10) + "S"
}

// transportError is the status of a call that got no complete answer.
func transportError(ctx, clientCtx context.Context, err error) error {
	switch {
	case clientCtx.Err() != nil:
		return &rpcError{code: rpcCanceled, message: "the exporter is shut down", cause: err}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &rpcError{code: rpcDeadlineExceeded, message: "the export's deadline passed", cause: err}
	case ctx.Err() != nil:
		return &rpcError{code: rpcCanceled, message: "the export was cancelled", cause: err}
	}
	return &rpcError{code: rpcUnavailable, message: err.Error(), cause: err}
}

// rpcCode is a gRPC status code.
type rpcCode uint32

// The gRPC status codes the exporters branch on or name.
const (
	rpcOK                 rpcCode = 0
	rpcCanceled           rpcCode = 1
	rpcUnknown            rpcCode = 2
	rpcInvalidArgument    rpcCode = 3
	rpcDeadlineExceeded   rpcCode = 4
	rpcResourceExhausted  rpcCode = 8
	rpcAborted            rpcCode = 10
	rpcOutOfRange         rpcCode = 11
	rpcUnimplemented      rpcCode = 12
	rpcInternal           rpcCode = 13
	rpcUnavailable        rpcCode = 14
	rpcDataLoss           rpcCode = 15
	rpcUnauthenticated    rpcCode = 16
	rpcPermissionDenied   rpcCode = 7
	rpcFailedPrecondition rpcCode = 9
)

var rpcCodeNames = [...]string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
	"Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}

func (c rpcCode) String() string {
	if int(c) < len(rpcCodeNames) {
		return rpcCodeNames[c]
	}
	return "Code(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// httpStatusCode is the gRPC code of a response that is not HTTP 200, as
// the gRPC HTTP/2 protocol maps them.
func httpStatusCode(status int) rpcCode {
	switch status {
	case http.StatusBadRequest:
		return rpcInternal
	case http.StatusUnauthorized:
		return rpcUnauthenticated
	case http.StatusForbidden:
		return rpcPermissionDenied
	case http.StatusNotFound:
		return rpcUnimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return rpcUnavailable
	}
	return rpcUnknown
}

// rpcError is a call's gRPC status other than OK.
type rpcError struct {
	code    rpcCode
	message string
	// retryDelay is the collector's RetryInfo, when it sent one.
	retryDelay time.Duration
	retryInfo  bool
	cause      error
}

func (e *rpcError) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", e.code, e.message)
}

func (e *rpcError) Unwrap() error { return e.cause }

// errorCode is err's gRPC status code: OK for nil, Unknown for an error
// that carries none.
func errorCode(err error) rpcCode {
	if err == nil {
		return rpcOK
	}
	var re *rpcError
	if errors.As(err, &re) {
		return re.code
	}
	return rpcUnknown
}

// statusError reads a call's status from its trailers (or the headers of
// a trailers-only response): nil for OK.
func statusError(h http.Header) error {
	v := h.Get("Grpc-Status")
	if v == "" {
		return &rpcError{code: rpcInternal, message: "the collector's response has no grpc-status"}
	}
	code, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return &rpcError{code: rpcInternal, message: fmt.Sprintf("grpc-status %q from the collector is not a number", v)}
	}
	if code == 0 {
		return nil
	}
	e := &rpcError{code: rpcCode(code), message: grpcMessage(h.Get("Grpc-Message"))}
	if d := h.Get("Grpc-Status-Details-Bin"); d != "" {
		if raw, err := decodeBinaryHeader(d); err == nil {
			e.retryDelay, e.retryInfo = retryInfoOf(raw)
		}
	}
	return e
}

// grpcMessage undoes the percent-encoding of a grpc-message value; a
// malformed one is kept as it came.
func grpcMessage(v string) string {
	if !strings.Contains(v, "%") {
		return v
	}
	if s, err := url.PathUnescape(v); err == nil {
		return s
	}
	return v
}

// decodeBinaryHeader decodes a -bin metadata value, which senders pad or
// not.
func decodeBinaryHeader(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// retryInfoTypeURL names google.rpc.RetryInfo in a status's details.
const retryInfoTypeURL = "type.googleapis.com/google.rpc.RetryInfo"

// retryInfoOf finds google.rpc.RetryInfo among the details of an encoded
// google.rpc.Status (code 1, message 2, details 3 as google.protobuf.Any
// with type_url 1 and value 2) and returns its retry_delay (field 1, a
// google.protobuf.Duration of seconds 1 and nanos 2). Malformed input is
// no RetryInfo.
func retryInfoOf(status []byte) (time.Duration, bool) {
	for _, detail := range fieldsOf(status, 3) {
		var typeURL string
		var value []byte
		if !eachField(detail, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) bool {
			switch {
			case num == 1 && typ == protowire.BytesType:
				typeURL = string(v)
			case num == 2 && typ == protowire.BytesType:
				value = v
			}
			return true
		}) || typeURL != retryInfoTypeURL {
			continue
		}
		// Repeated occurrences of a message merge, as protobuf decoding
		// has it: the last value of each field wins.
		var secs, nanos int64
		for _, dur := range fieldsOf(value, 1) {
			if !eachField(dur, func(num protowire.Number, typ protowire.Type, _ []byte, n uint64) bool {
				switch {
				case num == 1 && typ == protowire.VarintType:
					secs = int64(n)
				case num == 2 && typ == protowire.VarintType:
					nanos = int64(int32(n))
				}
				return true
			}) {
				return 0, false
			}
		}
		if secs < 0 || secs > int64(time.Hour/time.Second) || nanos < 0 {
			return 0, false
		}
		return time.Duration(secs)*time.Second + time.Duration(nanos), true
	}
	return 0, false
}

// fieldsOf returns the length-delimited values of field num in msg (none
// when msg is malformed).
func fieldsOf(msg []byte, num protowire.Number) [][]byte {
	var out [][]byte
	if !eachField(msg, func(n protowire.Number, typ protowire.Type, v []byte, _ uint64) bool {
		if n == num && typ == protowire.BytesType {
			out = append(out, v)
		}
		return true
	}) {
		return nil
	}
	return out
}

// eachField calls f for every field of msg, with a length-delimited
// field's bytes or a varint's value, until f returns false; false when msg
// is malformed (as proto.Unmarshal would find it) or f found a field so.
func eachField(msg []byte, f func(num protowire.Number, typ protowire.Type, bytes []byte, varint uint64) bool) bool {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 || num > protowire.MaxValidNumber {
			return false
		}
		msg = msg[n:]
		var ok bool
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return false
			}
			ok = f(num, typ, v, 0)
			msg = msg[m:]
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(msg)
			if m < 0 {
				return false
			}
			ok = f(num, typ, nil, v)
			msg = msg[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, msg)
			if m < 0 {
				return false
			}
			ok = true
			msg = msg[m:]
		}
		if !ok {
			return false
		}
	}
	return true
}

// Field numbers of an OTLP export response: partial_success, and in it
// the rejected count (spans or data points) and the error message.
const (
	fieldResponsePartialSuccess protowire.Number = 1
	fieldPartialSuccessRejected protowire.Number = 1
	fieldPartialSuccessMessage  protowire.Number = 2
)

// partialSuccessOf reads an OTLP export response (ExportMetricsServiceResponse,
// or ExportTraceServiceResponse, whose partial_success has the same
// fields) and returns its partial_success: the data points or spans the
// receiver rejected and why. A response without partial_success is a full
// success (0, ""). Fields it does not know are skipped, and repeated
// occurrences merge as protobuf decoding does. ok is false when resp is
// not a valid message, including an error message that is not UTF-8, which
// proto3 forbids in a string field; it never panics, whatever resp holds.
func partialSuccessOf(resp []byte) (rejected int64, message string, ok bool) {
	ok = eachField(resp, func(num protowire.Number, typ protowire.Type, ps []byte, _ uint64) bool {
		if num != fieldResponsePartialSuccess || typ != protowire.BytesType {
			return true
		}
		return eachField(ps, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) bool {
			switch {
			case num == fieldPartialSuccessRejected && typ == protowire.VarintType:
				rejected = int64(n) //nolint:gosec // int64 is sent as two's complement
			case num == fieldPartialSuccessMessage && typ == protowire.BytesType:
				if !utf8.Valid(v) {
					return false
				}
				message = string(v)
			}
			return true
		})
	})
	if !ok {
		return 0, "", false
	}
	return rejected, message, true
}

// otlpExporter is what the span and metric exporters share: the client,
// the export timeout and retries, and shutdown.
type otlpExporter struct {
	client  *grpcClient
	timeout time.Duration
	retry   retrier

	stopped      atomic.Bool
	shutdownOnce sync.Once
}

// exporterConfig is what an OTLP exporter needs from the resolved
// configuration.
type exporterConfig struct {
	endpoint endpoint
	// tls verifies the collector (and carries a client certificate) when
	// the endpoint is not plaintext; nil: the system's roots.
	tls *tls.Config
	// headers are sent as gRPC metadata with every export.
	headers map[string]string
	gzip    bool
	// timeout bounds one export, retries included.
	timeout time.Duration
	retry   retryConfig
}

// newOTLPExporter makes the exporter's client, which names itself to the
// collector as userAgent; it connects lazily, so a collector that is down
// does not fail the start.
func newOTLPExporter(cfg exporterConfig, userAgent string) (*otlpExporter, error) {
	client, err := newGRPCClient(grpcClientConfig{
		endpoint: cfg.endpoint, tls: cfg.tls, headers: cfg.headers, gzip: cfg.gzip, userAgent: userAgent,
	})
	if err != nil {
		return nil, err
	}
	return &otlpExporter{client: client, timeout: cfg.timeout, retry: newRetrier(cfg.retry)}, nil
}

// send seals req and sends it to method, retrying as configured within
// the export timeout, and returns the collector's partial_success: what it
// rejected of the request, and why.
func (x *otlpExporter) send(ctx context.Context, method string, req *grpcRequest) (rejected int64, message string, err error) {
	if err := req.seal(); err != nil {
		return 0, "", err
	}
	if x.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.timeout)
		defer cancel()
	}
	var resp []byte
	err = x.retry.do(ctx, x.stopped.Load, func() error {
		var err error
		resp, err = x.client.call(ctx, method, req)
		return err
	})
	if err != nil {
		return 0, "", err
	}
	rejected, message, _ = partialSuccessOf(resp)
	return rejected, message, nil
}

// Shutdown ends an export in flight and closes the connection; later
// exports return an error. Safe to call more than once.
func (x *otlpExporter) Shutdown(context.Context) error {
	x.shutdownOnce.Do(func() {
		x.stopped.Store(true)
		x.client.close()
	})
	return nil
}

// retryConfig bounds the retries of one export: exponential backoff from
// initial to max (randomised by ±50%, multiplied by 1.5 each time, as the
// stock OTLP exporters do), given up when the next wait would pass
// maxElapsed since the first attempt. The zero value never retries.
type retryConfig struct {
	initial, max, maxElapsed time.Duration
}

// retrier runs an export's attempts on a clock tests can replace.
type retrier struct {
	cfg   retryConfig
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

func newRetrier(cfg retryConfig) retrier { return retrier{cfg: cfg, now: time.Now, sleep: sleepCtx} }

// do calls attempt and retries it while the error is one the OTLP
// specification calls retryable, with backoff, for at most
// cfg.maxElapsed, and never past ctx's deadline or once stopped says so.
func (r retrier) do(ctx context.Context, stopped func() bool, attempt func() error) error {
	start := r.now()
	backoff := r.cfg.initial
	for {
		err := attempt()
		if err == nil {
			return nil
		}
		throttle, ok := retryable(err)
		if !ok || stopped() {
			return err
		}
		delay := max(throttle, jitter(backoff))
		backoff = min(backoff*3/2, r.cfg.max)
		if elapsed := r.now().Sub(start); elapsed+delay > r.cfg.maxElapsed {
			return fmt.Errorf("no retry after %v (retries end after %v): %w", elapsed.Round(time.Millisecond), r.cfg.maxElapsed, err)
		}
		if deadline, ok := ctx.Deadline(); ok && deadline.Sub(r.now()) < delay {
			return fmt.Errorf("no retry: the export's deadline is within the %v wait: %w", delay.Round(time.Millisecond), err)
		}
		if werr := r.sleep(ctx, delay); werr != nil {
			return fmt.Errorf("%w: %w", werr, err)
		}
	}
}

// jitter spreads d over [d/2, 3d/2] so that exporters failing together do
// not retry together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d+1) //nolint:gosec // timing jitter, not a secret
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// retryable says whether an export error may be retried and the delay
// the collector asked for, as the OTLP specification has it: transient
// codes always, RESOURCE_EXHAUSTED only when the status carries RetryInfo.
func retryable(err error) (time.Duration, bool) {
	var re *rpcError
	if !errors.As(err, &re) {
		return 0, false
	}
	switch re.code {
	case rpcCanceled, rpcDeadlineExceeded, rpcAborted, rpcOutOfRange, rpcUnavailable, rpcDataLoss:
		return re.retryDelay, true
	case rpcResourceExhausted:
		return re.retryDelay, re.retryInfo
	default:
		return 0, false
	}
}
