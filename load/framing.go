package load

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// framingConn is one connection of a framing-only server (the ceiling, the
// floor) as handleFrame drives it: the servers differ in how they move
// frames, not in what a frame means. S is the server's subscription type,
// a pointer.
type framingConn[S comparable] interface {
	// subscription returns the connection's subscription to queue (the
	// zero S when none).
	subscription(queue string) S
	// onlySubscription returns its one subscription, if it has exactly one.
	onlySubscription() (S, bool)
	reply(id int64, st protocol.Status)
	fail(r *protocol.Request, code protocol.Code, msg string)
	// publish answers a publish "accepted" and forwards the event.
	publish(r *protocol.Request)
	// settle frees the prefetch slot of an acked or nacked delivery.
	settle(sub S)
	// subscribe adds a subscription; called after its ok is in the output,
	// so that the ok goes out before the first deliver.
	subscribe(queue string, prefetch int)
	unsubscribe(sub S)
	stats(id int64)
}

// handleFrame decodes one frame and acts on it through c.
func handleFrame[S comparable](c framingConn[S], line []byte) {
	r, err := protocol.DecodeRequest(line)
	if err != nil {
		code := protocol.CodeBadRequest
		var re *protocol.RequestError
		if errors.As(err, &re) {
			code = re.Code
		}
		c.fail(&r, code, err.Error())
		return
	}
	var none S
	ok := func() {
		if r.HasID {
			c.reply(r.ID, protocol.StatusOK)
		}
	}
	switch r.Op {
	case protocol.OpPublish:
		c.publish(&r)
	case protocol.OpAck, protocol.OpNack:
		sub := c.subscription(r.Queue)
		if only, one := c.onlySubscription(); !r.HasQueue && one {
			sub = only
		}
		if sub == none {
			c.fail(&r, protocol.CodeNotSubscribed, fmt.Sprintf("%s %d on queue %q: this connection does not subscribe to it", r.Op, r.Seq, r.Queue))
			return
		}
		c.settle(sub)
		ok()
	case protocol.OpSubscribe:
		if c.subscription(r.Queue) != none {
			c.fail(&r, protocol.CodeAlreadySubscribed, fmt.Sprintf("queue %q: already subscribed on this connection", r.Queue))
			return
		}
		prefetch := 1
		if r.HasPrefetch {
			prefetch = r.Prefetch
		}
		ok()
		c.subscribe(r.Queue, prefetch)
	case protocol.OpUnsubscribe:
		sub := c.subscription(r.Queue)
		if sub == none {
			c.fail(&r, protocol.CodeNotSubscribed, fmt.Sprintf("queue %q: this connection does not subscribe to it", r.Queue))
			return
		}
		c.unsubscribe(sub)
		ok()
	case protocol.OpStats:
		c.stats(r.ID)
	case protocol.OpCancel, protocol.OpPing:
		// Nothing ever waits here, so a cancel finds nothing to withdraw.
		ok()
	default:
		c.fail(&r, protocol.CodeBadRequest, fmt.Sprintf("op %q: not served by a framing-only server", r.Op))
	}
}

// onlyOf returns the one value of m, if it has exactly one.
func onlyOf[S any](m map[string]S) (S, bool) {
	var zero S
	if len(m) != 1 {
		return zero, false
	}
	for _, s := range m {
		return s, true
	}
	return zero, false
}

// statsJSON is a framing-only server's stats reply: consumers per queue,
// the one figure the load tool asks for.
func statsJSON(consumers map[string]int) []byte {
	type queueStats struct {
		Consumers int `json:"consumers"`
	}
	st := make(map[string]queueStats, len(consumers))
	for name, n := range consumers {
		st[name] = queueStats{Consumers: n}
	}
	b, _ := json.Marshal(st) // a map of strings to plain structs always encodes
	return b
}
