package demo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/client"
)

// A trading app's feed handlers each hold a connection of their own, and
// the demo publishes one event at a time per connection, so its publishing
// concurrency is its number of connections. The feed's candles spread over
// many connections, as many feed handlers would: with a few, each waiting
// publish gets the next free slot well within the data queue's 1 s and
// nothing drops; with dozens, waits pass 1 s once the strategy stalls.
const (
	// DefaultFeedConnections is how many connections SocketBroker
	// publishes candles over unless told otherwise.
	DefaultFeedConnections = 64
	otherQueueConnections  = 2
)

// SocketBroker is a Broker over the sidecar's socket: publishing
// connections per queue and one connection per subscription, so that a
// stage blocked on a full queue (orders behind the slow venue) never holds
// up another stage's frames on a shared connection.
type SocketBroker struct {
	path      string
	dataQueue string
	dataConns int // publishing connections for dataQueue

	mu    sync.Mutex
	first *client.Client              // proven by DialSocket, handed to the first queue
	pub   map[string][]*client.Client // by queue, up to the queue's connections
	next  map[string]int              // round robin over pub[queue]
}

// DialSocket connects to the sidecar at path, retrying for up to limit
// while it does not accept yet: in docker-compose the app may start before
// the socket exists. Candles for the data queue go out over
// feedConnections connections (DefaultFeedConnections when <= 0). Close
// the broker when done.
func DialSocket(ctx context.Context, path string, limit time.Duration, feedConnections int) (*SocketBroker, error) {
	if feedConnections <= 0 {
		feedConnections = DefaultFeedConnections
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		cl, err := client.Dial(ctx, path)
		if errors.Is(err, fs.ErrPermission) {
			// Waiting will not help: this user is not in the socket's group.
			return nil, fmt.Errorf("connect to the sidecar at %s: %w (the socket is mode 0660: run the app in the sidecar's group)", path, err)
		}
		if errors.Is(err, client.ErrPermissionDenied) {
			// Nor will it here: the sidecar's allowlist leaves this uid out.
			return nil, fmt.Errorf("connect to the sidecar at %s: %w (add this process' uid or gid to the sidecar's allowed_uids or allowed_gids)", path, err)
		}
		if err == nil {
			return &SocketBroker{
				path: path, dataQueue: "data", dataConns: feedConnections,
				first: cl, pub: map[string][]*client.Client{}, next: map[string]int{},
			}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to the sidecar at %s within %s (is `eventbus-sidecar serve` running?): %w", path, limit, errors.Join(err, ctx.Err()))
		case <-tick.C:
		}
	}
}

// Publish implements Broker.
func (b *SocketBroker) Publish(ctx context.Context, ev bus.Event, queue string) (bus.Outcome, error) {
	cl, err := b.publisher(ctx, queue)
	if err != nil {
		return bus.Failed, err
	}
	return cl.Publish(ctx, ev, queue)
}

// publisher returns the next of queue's publishing connections, dialing
// them on first use.
func (b *SocketBroker) publisher(ctx context.Context, queue string) (*client.Client, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pub == nil {
		return nil, fmt.Errorf("publish to %s: %w", queue, client.ErrClosed)
	}
	lanes := b.pub[queue]
	want := otherQueueConnections
	if queue == b.dataQueue {
		want = b.dataConns
	}
	if len(lanes) < want {
		cl := b.first
		b.first = nil
		if cl == nil {
			var err error
			if cl, err = client.Dial(ctx, b.path); err != nil {
				return nil, fmt.Errorf("connect to the sidecar at %s: %w", b.path, err)
			}
		}
		b.pub[queue] = append(lanes, cl)
		return cl, nil
	}
	b.next[queue] = (b.next[queue] + 1) % len(lanes)
	return lanes[b.next[queue]], nil
}

// Subscribe implements Broker on a connection of its own.
func (b *SocketBroker) Subscribe(ctx context.Context, queue string, prefetch int, h Handler) error {
	cl, err := client.Dial(ctx, b.path)
	if err != nil {
		return fmt.Errorf("connect to the sidecar at %s: %w", b.path, err)
	}
	defer cl.Close()
	return cl.Subscribe(ctx, queue, prefetch, client.Handler(h))
}

// Close closes the publishing connections; subscriptions end with their
// contexts.
func (b *SocketBroker) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.first != nil {
		b.first.Close()
		b.first = nil
	}
	for _, lanes := range b.pub {
		for _, cl := range lanes {
			cl.Close()
		}
	}
	b.pub = nil
}
