package transport

import (
	"context"
	"sync/atomic"
	"testing"
)

// BenchmarkBudgetPerEvent is the budget's share of one event well under
// the budget, as the read, write and pump loops account it: the
// publisher's read loop checks for room for a reply, reserves the event
// and its reply, and moves the event to its queue; its reply is written;
// the consumer's pump reserves the delivery, which is written; the
// consumer's read loop checks for room for the ack, which releases the
// event. RunParallel runs one publisher and consumer pair per goroutine,
// so that the budget is shared as it is between connections.
//
//	go test -run '^$' -bench BudgetPerEvent -benchmem ./transport
func BenchmarkBudgetPerEvent(b *testing.B) {
	var open atomic.Int64
	open.Store(64)
	bud := newBudget(DefaultMaxBufferedBytes, []string{"data"}, &open)
	const (
		cost    = 200
		reply   = 40
		deliver = 300
	)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		pub, cons := &conn{}, &conn{}
		for pb.Next() {
			// The publisher's read loop and write loop.
			if err := bud.admit(ctx, pub, replyAllowance, 0, nil); err != nil {
				b.Error(err)
				return
			}
			if err := bud.reserve(ctx, pub, cost+replyAllowance, cost, 0, nil); err != nil {
				b.Error(err)
				return
			}
			bud.accepted(pub, "data", cost)
			bud.charge(pub, reply-replyAllowance, 0)
			bud.charge(pub, -reply, 0)
			// The consumer's pump, write loop and read loop.
			if err := bud.reserve(ctx, cons, deliver, 0, 0, nil); err != nil {
				b.Error(err)
				return
			}
			bud.charge(cons, 0, 0)
			bud.charge(cons, -deliver, 0)
			if err := bud.admit(ctx, cons, replyAllowance, 0, nil); err != nil {
				b.Error(err)
				return
			}
			bud.acked("data", cost)
		}
	})
	if held := bud.Held(); held != 0 {
		b.Fatalf("the budget holds %d bytes after every event was acked", held)
	}
}
