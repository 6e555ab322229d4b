package transport

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// countsByLabel returns the int64 counter name's data points summed by the
// value of label.
func countsByLabel[K ~string](t *testing.T, r *sdkmetric.ManualReader, name, label string) map[K]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[K]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != name || !ok {
				continue
			}
			for _, p := range sum.DataPoints {
				v, _ := p.Attributes.Value(attribute.Key(label))
				out[K(v.AsString())] += p.Value
			}
		}
	}
	return out
}

// closedByReason returns eventbus.connections.closed by its reason label.
func closedByReason(t *testing.T, r *sdkmetric.ManualReader) map[CloseReason]int64 {
	t.Helper()
	return countsByLabel[CloseReason](t, r, "eventbus.connections.closed", "reason")
}

// readerHeldByOutput reports whether c's read loop is parked because the
// client does not read its replies.
func (c *conn) readerHeldByOutput() bool {
	c.omu.Lock()
	defer c.omu.Unlock()
	return c.roomWait > 0 && len(c.obuf)+c.writing >= c.s.cfg.MaxOutputBytes
}

// TestClientGoneWhileNotReadingIsClientClosed: a client that stops reading
// and then goes away makes the server's pending write fail with EPIPE or a
// reset. That is the client closing, not a slow consumer, although the
// read loop, parked by the full output, wakes up to a dead connection: the
// write loop must have recorded why by then.
func TestClientGoneWhileNotReadingIsClientClosed(t *testing.T) {
	const rounds = 5
	ts, reader := meteredServer(t, withConfig(func(c *Config) { c.MaxOutputBytes = 4096 }))
	for range rounds {
		c := dialRaw(t, ts.path)
		sc := ts.onlyConn(t)
		writeErr := make(chan error, 1)
		go func() {
			var b []byte
			for i := 1; i <= 50000; i++ { // about 1.2 MB of replies: more than socket buffers hold
				b = protocol.AppendRequest(b, &protocol.Request{Op: protocol.OpPing, ID: int64(i), HasID: true})
			}
			_, err := c.nc.Write(b)
			writeErr <- err
		}()
		testkit.Eventually(t, "the read loop held by unread output", sc.readerHeldByOutput)
		c.nc.Close()
		<-writeErr // fails once closed; the server stopped reading long before
		testkit.Eventually(t, "the connection forgotten", ts.gone)
	}
	got := closedByReason(t, reader)
	if got[CloseClientGone] != rounds || got[CloseSlowConsumer] != 0 || got[CloseWriteError] != 0 {
		t.Fatalf("connections closed by reason %v, want %d %s and no others", got, rounds, CloseClientGone)
	}
}

// rejectedByReason returns eventbus.connections.rejected by its reason
// label.
func rejectedByReason(t *testing.T, r *sdkmetric.ManualReader) map[RejectReason]int64 {
	t.Helper()
	return countsByLabel[RejectReason](t, r, "eventbus.connections.rejected", "reason")
}
