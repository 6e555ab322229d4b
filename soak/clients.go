package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"time"
)

// Mix is how many connections each kind of client holds.
type Mix struct {
	// Publishers and Consumers are the well-behaved clients, spread evenly
	// over the queues: a publisher sends one event per PublishEvery and
	// waits for its reply, a consumer acks every delivery.
	Publishers, Consumers int
	// NonReaders publish to data (half of them also subscribe to it) and
	// never read a byte.
	NonReaders int
	// Tricklers send a publish frame one byte every 200 ms, slower than
	// the frame timeout allows.
	Tricklers int
	// Churners open a connection, ping, close it and open the next.
	Churners int
	// Malformed send frames that are not valid requests, and now and then
	// one longer than the frame limit.
	Malformed int
}

// Total is the number of connections the mix holds.
func (m Mix) Total() int {
	return m.Publishers + m.Consumers + m.NonReaders + m.Tricklers + m.Churners + m.Malformed
}

// MixFor splits n connections as 30% publishers, 30% consumers, 15%
// non-readers, 15% tricklers, 5% churners and 5% malformed (at least one
// of each), the rounding going to the publishers.
func MixFor(n int) (Mix, error) {
	if n < 6 {
		return Mix{}, fmt.Errorf("connections %d: the mix needs at least 6 (one of each kind of client)", n)
	}
	part := func(pct int) int { return max(1, n*pct/100) }
	m := Mix{Consumers: part(30), NonReaders: part(15), Tricklers: part(15), Churners: part(5), Malformed: part(5)}
	m.Publishers = n - (m.Consumers + m.NonReaders + m.Tricklers + m.Churners + m.Malformed)
	if m.Publishers < 1 {
		return Mix{}, fmt.Errorf("connections %d: too few for one publisher", n)
	}
	return m, nil
}

// queues are the sidecar's default queues, one policy each.
var queues = [...]string{"data", "signal", "order"}

// counters are what the clients saw, summed over all of them.
type counters struct {
	replies, deliveries    atomic.Int64 // to well-behaved clients
	repliesByStatus        [4]atomic.Int64
	goodDisconnects        atomic.Int64 // a well-behaved client's connection ended under it
	dialErrors             atomic.Int64
	rejected               atomic.Int64 // too_many_connections
	nonReaderConns         atomic.Int64
	tricklerConns          atomic.Int64
	frameTimeouts          atomic.Int64
	churns                 atomic.Int64
	malformedReplies       atomic.Int64
	oversize, frameTooLong atomic.Int64
	open                   atomic.Int64 // client connections open now
	lastDelivery           [len(queues)]atomic.Int64
}

// statusIndex maps a publish reply's status to repliesByStatus.
func statusIndex(s string) int {
	switch s {
	case "accepted":
		return 0
	case "dropped":
		return 1
	case "timeout":
		return 2
	}
	return 3
}

// frame is the part of a sidecar frame the clients look at.
type frame struct {
	Op     string `json:"op"`
	ID     *int64 `json:"id"`
	Status string `json:"status"`
	Queue  string `json:"queue"`
	Seq    uint64 `json:"seq"`
}

// driver runs the clients against one socket.
type driver struct {
	socket       string
	c            *counters
	publishEvery time.Duration
	start        time.Time // when the clients started, the samples' zero
}

// dial connects and arranges for the connection to close when ctx ends,
// which unblocks whatever the client is waiting on.
func (d *driver) dial(ctx context.Context) (net.Conn, func(), error) {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", d.socket)
	if err != nil {
		d.c.dialErrors.Add(1)
		return nil, nil, err
	}
	d.c.open.Add(1)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return conn, func() {
		stop()
		conn.Close()
		d.c.open.Add(-1)
	}, nil
}

// pause waits d or until ctx ends, and tells whether to go on.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// loop runs one connection's life after another until ctx ends, with a
// short pause between them so that a refused connection does not spin.
func loop(ctx context.Context, life func(context.Context)) {
	for ctx.Err() == nil {
		life(ctx)
		if !pause(ctx, time.Duration(50+rand.IntN(200))*time.Millisecond) {
			return
		}
	}
}

// publisher is a well-behaved publisher to queue q. busy holds the time it
// started waiting for the sidecar (to connect or reply), 0 when idle, so
// that the monitor can tell a stalled one.
func (d *driver) publisher(ctx context.Context, q string, busy *atomic.Int64) {
	payload := `{"symbol":"BTCUSDT","price":64000.5,"pad":"` + strings.Repeat("p", 40) + `"}`
	loop(ctx, func(ctx context.Context) {
		busy.Store(time.Now().UnixNano())
		conn, done, err := d.dial(ctx)
		if err != nil {
			return
		}
		defer done()
		defer busy.Store(0)
		r := bufio.NewReader(conn)
		tick := time.NewTicker(d.publishEvery)
		defer tick.Stop()
		if !pause(ctx, rand.N(d.publishEvery)) {
			return
		}
		for id := int64(1); ; id++ {
			busy.Store(time.Now().UnixNano())
			if _, err := fmt.Fprintf(conn, `{"op":"publish","id":%d,"queue":%q,"type":"SOAK","payload":%s}`+"\n", id, q, payload); err != nil {
				d.goodLost(ctx)
				return
			}
			for {
				line, err := r.ReadBytes('\n')
				if err != nil {
					d.goodLost(ctx)
					return
				}
				var f frame
				if json.Unmarshal(line, &f) == nil && f.ID != nil && *f.ID == id {
					d.c.replies.Add(1)
					d.c.repliesByStatus[statusIndex(f.Status)].Add(1)
					break
				}
			}
			busy.Store(0)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
}

// goodLost counts a well-behaved client's connection that ended while the
// run was still on.
func (d *driver) goodLost(ctx context.Context) {
	if ctx.Err() == nil {
		d.c.goodDisconnects.Add(1)
	}
}

// consumer is a well-behaved consumer of queue qi: it acks each delivery.
func (d *driver) consumer(ctx context.Context, qi int) {
	q := queues[qi]
	loop(ctx, func(ctx context.Context) {
		conn, done, err := d.dial(ctx)
		if err != nil {
			return
		}
		defer done()
		if _, err := fmt.Fprintf(conn, `{"op":"subscribe","id":1,"queue":%q,"prefetch":16}`+"\n", q); err != nil {
			d.goodLost(ctx)
			return
		}
		r := bufio.NewReader(conn)
		w := bufio.NewWriter(conn)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				d.goodLost(ctx)
				return
			}
			var f frame
			if json.Unmarshal(line, &f) != nil || f.Op != "deliver" {
				continue
			}
			d.c.deliveries.Add(1)
			d.c.lastDelivery[qi].Store(time.Now().UnixNano())
			fmt.Fprintf(w, `{"op":"ack","queue":%q,"seq":%d}`+"\n", f.Queue, f.Seq)
			// Acks go out in one write per burst of deliveries.
			if r.Buffered() == 0 {
				if err := w.Flush(); err != nil {
					d.goodLost(ctx)
					return
				}
			}
		}
	})
}

// nonReader publishes ten 512-byte events a second to data and never
// reads; with subscribe it also takes up to 256 deliveries it never acks.
// Its writes block once the sidecar stops reading it, until the sidecar
// cuts it off.
func (d *driver) nonReader(ctx context.Context, subscribe bool) {
	ev := `{"op":"publish","id":1,"queue":"data","type":"SOAK_UNREAD","payload":"` + strings.Repeat("u", 512) + `"}` + "\n"
	loop(ctx, func(ctx context.Context) {
		conn, done, err := d.dial(ctx)
		if err != nil {
			return
		}
		defer done()
		d.c.nonReaderConns.Add(1)
		if subscribe {
			if _, err := conn.Write([]byte(`{"op":"subscribe","id":0,"queue":"data","prefetch":256}` + "\n")); err != nil {
				return
			}
		}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := conn.Write([]byte(ev)); err != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
}

// trickler sends a publish one byte every 200 ms: the 80-byte frame would
// take 16 s, past the sidecar's frame timeout, which closes the connection.
func (d *driver) trickler(ctx context.Context) {
	req := []byte(`{"op":"publish","id":1,"queue":"data","type":"SOAK_TRICKLE","payload":"` + strings.Repeat("t", 8) + `"}` + "\n")
	loop(ctx, func(ctx context.Context) {
		conn, done, err := d.dial(ctx)
		if err != nil {
			return
		}
		defer done()
		d.c.tricklerConns.Add(1)
		closed := make(chan struct{})
		go func() {
			// The sidecar's frame_timeout error, then its close.
			defer close(closed)
			r := bufio.NewReader(conn)
			for {
				line, err := r.ReadBytes('\n')
				if err != nil {
					return
				}
				if strings.Contains(string(line), `"frame_timeout"`) {
					d.c.frameTimeouts.Add(1)
				}
			}
		}()
		defer func() { conn.Close(); <-closed }()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i = (i + 1) % len(req) {
			if _, err := conn.Write(req[i : i+1]); err != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-closed:
				return
			case <-tick.C:
			}
		}
	})
}

// churner opens a connection, pings, holds it up to 200 ms and closes it,
// over and over.
func (d *driver) churner(ctx context.Context) {
	loop(ctx, func(ctx context.Context) {
		conn, done, err := d.dial(ctx)
		if err != nil {
			return
		}
		defer done()
		if _, err := conn.Write([]byte(`{"op":"ping","id":1}` + "\n")); err != nil {
			return
		}
		line, err := bufio.NewReader(conn).ReadBytes('\n')
		if err != nil {
			return
		}
		if strings.Contains(string(line), `"too_many_connections"`) {
			d.c.rejected.Add(1)
			return
		}
		d.c.churns.Add(1)
		pause(ctx, rand.N(200*time.Millisecond))
	})
}

// badFrames are requests the sidecar must answer with an error and
// survive: not JSON, not an object, missing fields, an unknown op, a
// byte-order mark, invalid UTF-8.
var badFrames = []string{
	"not json at all",
	`[1,2,3]`,
	`"a string"`,
	`{"op":"publish"}`,
	`{"op":"publish","id":5}`,
	`{"op":"no_such_op","id":6}`,
	`{"op":"ack","id":7}`,
	`{"op":"subscribe","id":8,"queue":"data","prefetch":0}`,
	"\xef\xbb\xbf" + `{"op":"ping","id":9}`,
	`{"op":"ping","id":10,"x":"` + "\xff\xfe" + `"}`,
	`{"op":"publish","id":11,"queue":"nope","type":"X"}`,
	`{"op":`,
}

// oversize is one byte longer than the default 1 MiB frame limit.
const oversize = 1<<20 + 1

// malformed sends a bad frame every 100 ms and reads the error reply; one
// frame in 50 is longer than the frame limit, after which the sidecar
// closes the connection.
func (d *driver) malformed(ctx context.Context) {
	big := []byte(`{"op":"publish","id":1,"type":"BIG","payload":"` + strings.Repeat("x", oversize) + `"}` + "\n")
	loop(ctx, func(ctx context.Context) {
		conn, done, err := d.dial(ctx)
		if err != nil {
			return
		}
		defer done()
		r := bufio.NewReader(conn)
		for ctx.Err() == nil {
			if rand.IntN(50) == 0 {
				d.c.oversize.Add(1)
				conn.Write(big)
				// The sidecar answers frame_too_large and closes; the
				// write may fail first.
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					if strings.Contains(string(line), `"frame_too_large"`) {
						d.c.frameTooLong.Add(1)
					}
				}
			}
			if _, err := conn.Write([]byte(badFrames[rand.IntN(len(badFrames))] + "\n")); err != nil {
				return
			}
			if _, err := r.ReadBytes('\n'); err != nil {
				return
			}
			d.c.malformedReplies.Add(1)
			if !pause(ctx, 100*time.Millisecond) {
				return
			}
		}
	})
}
