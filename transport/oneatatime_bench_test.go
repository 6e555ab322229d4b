package transport

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/internal/cputime"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// BenchmarkSocketOneAtATime is the socket at a low rate, where each event
// arrives alone: one event in flight, published, answered, delivered to a
// consumer on another connection and acked before the next is sent. Its
// cost is the goroutine wake-ups and system calls per event rather than
// parsing, so ns/op is the round trip and cpu-ns/op the process CPU
// (server and the two raw clients) per event.
func BenchmarkSocketOneAtATime(b *testing.B) {
	ts := startServer(b)
	pub, err := net.Dial("unix", ts.path)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	cons, err := net.Dial("unix", ts.path)
	if err != nil {
		b.Fatal(err)
	}
	defer cons.Close()
	pr := bufio.NewReader(pub)
	cr := bufio.NewReader(cons)
	sub := protocol.AppendRequest(nil, &protocol.Request{Op: protocol.OpSubscribe, ID: 1, HasID: true, Queue: "data", HasQueue: true, Prefetch: 16, HasPrefetch: true})
	if _, err := cons.Write(sub); err != nil {
		b.Fatal(err)
	}
	if line, err := cr.ReadSlice('\n'); err != nil || !bytes.Contains(line, []byte(`"ok"`)) {
		b.Fatalf("subscribe reply %q: %v", line, err)
	}
	req := protocol.Request{Op: protocol.OpPublish, HasID: true, Queue: "data", HasQueue: true, Type: "CANDLE_UPDATE", HasType: true,
		Payload: []byte(`{"symbol":"BTCUSDT","open":101.5,"close":102.25,"volume":12.5}`)}
	ack := protocol.Request{Op: protocol.OpAck, HasSeq: true, Queue: "data", HasQueue: true}
	var out []byte

	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cputime.Process(b)
	start := time.Now()
	for i := range b.N {
		req.ID = int64(i + 2)
		out = protocol.AppendRequest(out[:0], &req)
		if _, err := pub.Write(out); err != nil {
			b.Fatal(err)
		}
		line, err := pr.ReadSlice('\n')
		if err != nil || !bytes.Contains(line, []byte(`"accepted"`)) {
			b.Fatalf("publish reply %q: %v", line, err)
		}
		line, err = cr.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		m, err := protocol.DecodeMessage(line[:len(line)-1])
		if err != nil || m.Op != protocol.OpDeliver {
			b.Fatalf("consumer got %q: %v", line, err)
		}
		ack.Seq = m.Deliver.Seq
		out = protocol.AppendRequest(out[:0], &ack)
		if _, err := cons.Write(out); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	cpu := cputime.Process(b) - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N), "rtt-ns/op")
}
