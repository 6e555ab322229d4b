package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel/trace"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// Handler processes one delivery. Returning nil acks it; returning an error
// nacks it, and the sidecar redelivers it (to this or another consumer).
// ctx carries the delivery's trace context, so spans the handler starts
// join the event's trace.
type Handler func(ctx context.Context, d bus.Delivery) error

type subscription struct {
	queue string
	ch    chan bus.Delivery
	done  chan struct{} // closed when Subscribe returns
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
func (c *Client) dispatch(m transport.Message) {
	c.mu.Lock()
	s := c.subs[m.Deliver.Queue]
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
	if m.Deliver.Traceparent != "" {
		if sc, err := transport.ParseTraceparent(m.Deliver.Traceparent); err == nil {
			d.SpanContext = sc
		}
	}
	select {
	case s.ch <- d:
	case <-s.done:
	}
}

// Subscribe consumes queue with at most prefetch unacked deliveries,
// calling handler for each delivery in order, one at a time, and acking or
// nacking it by the handler's result. The handler's context ends when ctx
// ends or the connection is lost. It returns when ctx ends (after
// unsubscribing: unacked deliveries go back to the queue) with ctx's
// error, when the connection is lost (ErrConnectionLost or ErrClosed), or
// when the sidecar refuses the subscription (errors.Is(err,
// bus.ErrUnknownQueue) for a bad queue name).
//
// One client holds at most one subscription per queue.
func (c *Client) Subscribe(ctx context.Context, queue string, prefetch int, handler Handler) error {
	if prefetch < 1 || prefetch > transport.MaxPrefetch {
		return fmt.Errorf("subscribe to %q: prefetch %d: must be between 1 and %d", queue, prefetch, transport.MaxPrefetch)
	}
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s := &subscription{queue: queue, ch: make(chan bus.Delivery, prefetch), done: make(chan struct{}), lostC: make(chan struct{}), cancel: cancel}
	defer close(s.done)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if _, dup := c.subs[queue]; dup {
		c.mu.Unlock()
		return fmt.Errorf("subscribe to %q: this client already subscribes to it; raise prefetch or use another client", queue)
	}
	c.subs[queue] = s
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.subs[queue] == s {
			delete(c.subs, queue)
		}
		c.mu.Unlock()
	}()

	m, err := c.roundTrip(ctx, &transport.Request{Op: transport.OpSubscribe, Queue: queue, HasQueue: true, Prefetch: prefetch, HasPrefetch: true})
	if err != nil {
		if ctx.Err() != nil {
			// The subscribe may have reached the sidecar: undo it.
			c.unsubscribe(queue)
		}
		return fmt.Errorf("subscribe to %q: %w", queue, err)
	}
	if err := replyError(m); err != nil {
		return fmt.Errorf("subscribe to %q: %w", queue, err)
	}
	for {
		select {
		case d := <-s.ch:
			hctx := sctx
			if d.SpanContext.IsValid() {
				hctx = trace.ContextWithRemoteSpanContext(sctx, d.SpanContext)
			}
			op := transport.OpAck
			if herr := handler(hctx, d); herr != nil {
				op = transport.OpNack
			}
			// Acks of a burst go out in one write: the writer is woken
			// only when no further delivery is waiting.
			more := len(s.ch) > 0
			if err := c.queue(&transport.Request{Op: op, Seq: d.Seq, HasSeq: true, Queue: queue, HasQueue: true}, nil, !more); err != nil {
				return fmt.Errorf("subscription to %q: %w", queue, err)
			}
		case <-s.lostC:
			return fmt.Errorf("subscription to %q: %w", queue, s.lostErr())
		case <-ctx.Done():
			c.unsubscribe(queue)
			return ctx.Err()
		}
	}
}

// unsubscribe ends this connection's subscription to queue, bounded by
// the cancel grace period, since the caller's context has already ended.
func (c *Client) unsubscribe(queue string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.cancelGrace)
	defer cancel()
	m, err := c.roundTrip(ctx, &transport.Request{Op: transport.OpUnsubscribe, Queue: queue, HasQueue: true})
	if err == nil {
		err = replyError(m)
	}
	var re *Error
	if err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrConnectionLost) && !(errors.As(err, &re) && re.Code == transport.CodeNotSubscribed) {
		c.opts.logger.Warn("unsubscribe failed", "queue", queue, "err", err, "grace", c.opts.cancelGrace.String())
	}
}
