package client

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// The Backoff defaults, the same as the Python client's.
const (
	defaultBackoffInitial    = 50 * time.Millisecond
	defaultBackoffMax        = 2 * time.Second
	defaultBackoffMultiplier = 2.0
	defaultBackoffJitter     = 0.2
)

// Backoff spaces the attempts to reconnect after the connection is lost.
// The first attempt comes Initial after the loss; each wait after a failed
// attempt is Multiplier times the one before, at most Max; and every wait
// is lengthened by a random fraction of up to Jitter, so that the clients
// of a restarted sidecar do not all redial at the same instant. Zero
// fields take the defaults in their comments.
type Backoff struct {
	// Initial is the wait before the first attempt (default 50ms).
	Initial time.Duration
	// Max caps the wait between attempts, before jitter (default 2s, or
	// Initial if that is longer).
	Max time.Duration
	// Multiplier grows the wait after each failed attempt (default 2; at
	// least 1).
	Multiplier float64
	// Jitter is the largest fraction added to a wait at random (default
	// 0.2, so up to 20% longer; between 0 and 1). Zero takes the default:
	// reconnecting in lockstep is what it is there to prevent.
	Jitter float64
}

// WithReconnect makes the client replace a lost connection by itself
// (default: off, and a lost connection leaves the client unusable). It
// redials in the background, spaced by b, until it succeeds or Close is
// called. Meanwhile:
//
//   - calls that were waiting for an answer on the lost connection fail with
//     an error wrapping ErrConnectionLost: their outcome is unknown;
//   - new calls wait for the new connection, or until their ctx ends;
//   - each running Subscribe subscribes again on the new connection with the
//     same queue, prefetch and handler. Deliveries it had not acked are not
//     acked afterwards: the sidecar returns them to the queue when it sees
//     the old connection close, and delivers them again with Redeliveries
//     above zero, so a handler may see an event twice.
//
// An attempt succeeds once the sidecar has answered a ping on the new
// connection, so that a connection refused at the sidecar's connection
// limit counts as a failed attempt. The loss is logged at WARN and the
// reconnection at INFO, with the number of attempts it took; single
// attempts are not logged.
func WithReconnect(b Backoff) Option {
	return optionFunc(func(o *options) { o.backoff = &b })
}

// withDefaults fills b's zero fields and checks the others.
func (b Backoff) withDefaults() (Backoff, error) {
	if b.Initial == 0 {
		b.Initial = defaultBackoffInitial
	}
	if b.Max == 0 {
		b.Max = max(defaultBackoffMax, b.Initial)
	}
	if b.Multiplier == 0 {
		b.Multiplier = defaultBackoffMultiplier
	}
	if b.Jitter == 0 {
		b.Jitter = defaultBackoffJitter
	}
	switch {
	case b.Initial < 0:
		return b, fmt.Errorf("reconnect backoff: Initial %v: must be positive (0 means %v)", b.Initial, defaultBackoffInitial)
	case b.Max < b.Initial:
		return b, fmt.Errorf("reconnect backoff: Max %v: must be at least Initial (%v)", b.Max, b.Initial)
	case b.Multiplier < 1:
		return b, fmt.Errorf("reconnect backoff: Multiplier %v: must be at least 1 (0 means %v)", b.Multiplier, defaultBackoffMultiplier)
	case b.Jitter < 0 || b.Jitter > 1:
		return b, fmt.Errorf("reconnect backoff: Jitter %v: must be between 0 and 1 (0 means %v)", b.Jitter, defaultBackoffJitter)
	}
	return b, nil
}

// next is the wait after wait, before jitter.
func (b Backoff) next(wait time.Duration) time.Duration {
	if f := float64(wait) * b.Multiplier; f < float64(b.Max) {
		return time.Duration(f)
	}
	return b.Max

}

// jittered lengthens wait by the fraction r (in [0, 1)) of the jitter.
func (b Backoff) jittered(wait time.Duration, r float64) time.Duration {
	return wait + time.Duration(float64(wait)*b.Jitter*r)
}

// reconnect redials until a connection is installed or the client is
// closed. since is when the connection was lost, and lost why.
func (c *Client) reconnect(since time.Time, lost error) {
	// Logged here rather than in lose, so that it always precedes the
	// reconnection's line.
	c.opts.logger.Warn("eventbus sidecar connection lost; reconnecting", "socket", c.path, "err", lost)
	b := *c.opts.backoff
	var d net.Dialer
	wait := b.Initial
	for attempt := 1; ; attempt++ {
		t := time.NewTimer(b.jittered(wait, rand.Float64()))
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		nc, err := d.DialContext(c.ctx, "unix", c.path)
		var br *bufio.Reader
		if err == nil {
			if br, err = c.greet(nc); err != nil {
				nc.Close()
			}
		}
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			// Kept for the error of a call that gives up waiting, not logged:
			// a sidecar that takes a while to come back is not news.
			c.mu.Lock()
			c.dialErr = err
			c.mu.Unlock()
			wait = b.next(wait)
			continue
		}
		if c.install(nc, br) {
			c.opts.logger.Info("eventbus sidecar reconnected", "socket", c.path, "attempts", attempt, "down", time.Since(since).Round(time.Millisecond).String())
		}
		return
	}
}

// greet pings the sidecar on a new connection before the client trusts
// it. A sidecar at its connection limit accepts a connection, sends it one
// too_many_connections error and closes it: that is a failed attempt, to
// be retried after a longer wait, not a reconnection followed by a loss
// and a retry at once. Close interrupts it by closing nc.
func (c *Client) greet(nc net.Conn) (*bufio.Reader, error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.greeting = nc
	c.nextID++
	ping := protocol.Request{Op: protocol.OpPing, ID: c.nextID, HasID: true}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.greeting = nil
		c.mu.Unlock()
	}()
	if _, err := nc.Write(protocol.AppendRequest(nil, &ping)); err != nil {
		return nil, fmt.Errorf("ping %s: %w", c.path, err)
	}
	br := bufio.NewReaderSize(nc, readBufferSize)
	line, err := br.ReadSlice('\n')
	if errors.Is(err, io.EOF) {
		err = errors.New("the sidecar closed the connection")
	}
	if err != nil {
		return nil, fmt.Errorf("ping %s: %w", c.path, err)
	}
	var dec protocol.MessageDecoder
	m, err := dec.Decode(line[:len(line)-1])
	switch {
	case err != nil:
		return nil, fmt.Errorf("ping %s: %w", c.path, err)
	case m.Status == protocol.StatusError:
		return nil, replyError(m)
	case !m.HasID || m.ID != ping.ID:
		return nil, fmt.Errorf("ping %s: unexpected first frame %q", c.path, line)
	}
	return br, nil
}
