package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// Handler processes one delivery. Returning nil acks it; returning an error
// nacks it, and the sidecar redelivers it (to this or another consumer).
// The error's text goes with the nack as its reason (its first
// protocol.MaxNackReasonBytes bytes), and travels with the event if it is
// dead-lettered after its queue's max_deliveries.
// ctx carries the delivery's trace context, so spans the handler starts
// join the event's trace.
type Handler func(ctx context.Context, d bus.Delivery) error

// subscription is a Subscribe's hold on one connection; a Subscribe under
// WithReconnect makes a new one for each connection.
type subscription struct {
	queue string
	ch    chan bus.Delivery
	done  chan struct{} // closed when the connection's turn of Subscribe ends
	once  sync.Once
	errMu sync.Mutex
	err   error
	lostC chan struct{}
	// cancel ends the handlers' context when the connection is lost, so a
	// handler stuck on a dead connection's delivery can give up.
	cancel context.CancelCauseFunc
}

func (s *subscription) lost(err error) {
	s.once.Do(func() {
		s.errMu.Lock()
		s.err = err
		s.errMu.Unlock()
		close(s.lostC)
		s.cancel(err)
	})
}

func (s *subscription) lostErr() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

// dispatch hands a delivery to its subscription. The sidecar never has
// more than prefetch deliveries of a subscription unacked and the channel
// holds prefetch, so this does not wait on a working handler.
func (c *Client) dispatch(cn *conn, m protocol.Message) {
	c.mu.Lock()
	s := cn.subs[m.Deliver.Queue]
	c.mu.Unlock()
	if s == nil {
		// Sent before an unsubscribe took effect; the sidecar returns it
		// to the queue when the subscription closes.
		return
	}
	d := bus.Delivery{
		Queue:        m.Deliver.Queue,
		Seq:          m.Deliver.Seq,
		EnqueuedAt:   m.Deliver.EnqueuedAt,
		Redeliveries: m.Deliver.Redeliveries,
		Event: bus.Event{
			Type:    m.Deliver.Type,
			Payload: append(json.RawMessage(nil), m.Deliver.Payload...),
		},
	}
	if dl := m.Deliver.DeadLetter; dl != nil {
		d.DeadLetter = &bus.DeadLetter{Queue: dl.Queue, Seq: dl.Seq, Deliveries: dl.Deliveries, Reason: dl.Reason}
	}
	if m.Deliver.Traceparent != "" {
		if sc, err := protocol.ParseTraceparent(m.Deliver.Traceparent); err == nil {
			d.SpanContext = sc
		}
	}
	select {
	case s.ch <- d:
	case <-s.done:
	case <-s.lostC:
	}
}

// Subscribe consumes queue with at most prefetch unacked deliveries,
// calling handler for each delivery in order, one at a time, and acking or
// nacking it by the handler's result. The handler's context ends when ctx
// ends or the connection that delivered the event is lost. It returns when
// ctx ends (after unsubscribing: unacked deliveries go back to the queue)
// with ctx's error, when the client is closed (ErrClosed), when the
// connection is lost without WithReconnect (ErrConnectionLost), or when
// the sidecar refuses the subscription (errors.Is(err, bus.ErrUnknownQueue)
// for a bad queue name).
//
// Under WithReconnect a lost connection does not end Subscribe: once the
// handler in progress has returned (its result is not sent: the sidecar
// redelivers that event and every other one not acked), it waits for the
// new connection and subscribes again with the same queue, prefetch and
// handler. If the new sidecar refuses the subscription, Subscribe returns
// that error.
//
// One client holds at most one subscription per queue.
func (c *Client) Subscribe(ctx context.Context, queue string, prefetch int, handler Handler) error {
	if prefetch < 1 || prefetch > protocol.MaxPrefetch {
		return fmt.Errorf("subscribe to %q: prefetch %d: must be between 1 and %d", queue, prefetch, protocol.MaxPrefetch)
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if c.consumers[queue] {
		c.mu.Unlock()
		return fmt.Errorf("subscribe to %q: this client already subscribes to it; raise prefetch or use another client", queue)
	}
	c.consumers[queue] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.consumers, queue)
		c.mu.Unlock()
	}()
	for resumed := false; ; resumed = true {
		err := c.consume(ctx, queue, prefetch, handler, resumed)
		if c.opts.backoff == nil || ctx.Err() != nil || !errors.Is(err, ErrConnectionLost) {
			return err
		}
	}
}

// consume is Subscribe on one connection: it returns when that connection
// is lost, or for good.
func (c *Client) consume(ctx context.Context, queue string, prefetch int, handler Handler, resumed bool) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s := &subscription{queue: queue, ch: make(chan bus.Delivery, prefetch), done: make(chan struct{}), lostC: make(chan struct{}), cancel: cancel}
	defer close(s.done)

	r := protocol.Request{Op: protocol.OpSubscribe, Queue: queue, HasQueue: true, Prefetch: prefetch, HasPrefetch: true}
	cl := callPool.Get().(*call)
	cn, err := c.send(ctx, &r, cl, s)
	if err != nil {
		callPool.Put(cl)
		return fmt.Errorf("subscribe to %q: %w", queue, err)
	}
	defer func() {
		c.mu.Lock()
		if cn.subs[queue] == s {
			delete(cn.subs, queue)
		}
		c.mu.Unlock()
	}()
	var m protocol.Message
	select {
	case res := <-cl.ch:
		callPool.Put(cl)
		m, err = res.msg, res.err
	case <-ctx.Done():
		// The subscribe may have reached the sidecar: undo it.
		c.forget(cn, r.ID)
		c.unsubscribe(cn, queue)
		return fmt.Errorf("subscribe to %q: %w", queue, ctx.Err())
	}
	if err == nil {
		err = replyError(m)
	}
	if err != nil {
		return fmt.Errorf("subscribe to %q: %w", queue, err)
	}
	if resumed {
		c.opts.logger.Info("eventbus subscription resumed", "queue", queue, "prefetch", prefetch)
	}
	for {
		select {
		case d := <-s.ch:
			select {
			case <-s.lostC:
				// Received before the loss but not handled: the sidecar
				// redelivers it, so handling it now would be wasted.
				return fmt.Errorf("subscription to %q: %w", queue, s.lostErr())
			default:
			}
			hctx := sctx
			if d.SpanContext.IsValid() {
				hctx = trace.ContextWithRemoteSpanContext(sctx, d.SpanContext)
			}
			op, reason := protocol.OpAck, ""
			if herr := handler(hctx, d); herr != nil {
				op, reason = protocol.OpNack, protocol.ClipNackReason(herr.Error())
			}
			// Acks of a burst go out in one write: the writer is woken
			// only when no further delivery is waiting. An ack goes on the
			// connection that delivered the event or nowhere: another
			// connection may by now hold the redelivery of the same seq.
			more := len(s.ch) > 0
			if err := c.sendOn(cn, &protocol.Request{Op: op, Seq: d.Seq, HasSeq: true, Queue: queue, HasQueue: true, Reason: reason}, nil, !more); err != nil {
				return fmt.Errorf("subscription to %q: %w", queue, err)
			}
		case <-s.lostC:
			return fmt.Errorf("subscription to %q: %w", queue, s.lostErr())
		case <-ctx.Done():
			c.unsubscribe(cn, queue)
			return ctx.Err()
		}
	}
}

// unsubscribe ends cn's subscription to queue, bounded by the cancel grace
// period, since the caller's context has already ended. A lost connection
// has no subscription left to end.
func (c *Client) unsubscribe(cn *conn, queue string) {
	cl := &call{ch: make(chan result, 1)}
	r := protocol.Request{Op: protocol.OpUnsubscribe, Queue: queue, HasQueue: true}
	if err := c.sendOn(cn, &r, cl, true); err != nil {
		return
	}
	t := time.NewTimer(c.opts.cancelGrace)
	defer t.Stop()
	var err error
	select {
	case res := <-cl.ch:
		err = res.err
		if err == nil {
			err = replyError(res.msg)
		}
	case <-t.C:
		c.forget(cn, r.ID)
		err = fmt.Errorf("no answer within %v", c.opts.cancelGrace)
	}
	var re *Error
	if err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrConnectionLost) && !(errors.As(err, &re) && re.Code == protocol.CodeNotSubscribed) {
		c.opts.logger.Warn("unsubscribe failed", "queue", queue, "err", err, "grace", c.opts.cancelGrace.String())
	}
}
