package client

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
)

// BenchmarkClientPublish measures events published and acked through the
// Go client: one publishing client with `workers` goroutines calling
// Publish (so that many publishes are in flight on its one connection) and
// one consuming client draining the queue.
func BenchmarkClientPublish(b *testing.B) {
	for _, workers := range []int{64, 256} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			sc := startSidecar(b, "", nil)
			pub := dial(b, sc.path)
			cons := dial(b, sc.path)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			total := int64(b.N)
			var acked atomic.Int64
			consDone := make(chan error, 1)
			go func() {
				consDone <- cons.Subscribe(ctx, "data", 1024, func(context.Context, bus.Delivery) error {
					if acked.Add(1) == total {
						cancel()
					}
					return nil
				})
			}()
			payload := json.RawMessage(`{"symbol":"BTCUSDT","open":101.5,"close":102.25,"volume":12.5}`)
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= total {
						if out, err := pub.Publish(context.Background(), bus.Event{Type: "CANDLE_UPDATE", Payload: payload}, "data"); out != bus.Accepted {
							b.Errorf("publish: %v %v", out, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			<-consDone
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(total)/elapsed.Seconds(), "events/s")
		})
	}
}
