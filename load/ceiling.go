package load

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// ceiling is the least any broker on the sidecar's socket could cost: a
// Unix-socket server that reads and writes the sidecar's frames with the
// sidecar's own codec and does nothing else. A publish is answered
// "accepted" at once and forwarded as a deliver frame to a consumer of its
// queue (round robin, within the consumer's prefetch); an ack frees the
// prefetch slot. Nothing is queued, stored, counted or traced: when every
// consumer of the queue is at its prefetch, the publishing connection's
// reader waits for an ack (backpressure), and a publish to a queue without
// consumers goes nowhere. A nack is taken as an ack: nothing is redelivered.
//
// Each connection has one reader and one writer goroutine, both owned by
// the server and ended by close.
type ceiling struct {
	l    net.Listener
	path string
	wg   sync.WaitGroup
	seq  atomic.Uint64

	mu     sync.Mutex
	closed bool
	conns  map[*ceilConn]struct{}
	queues map[string]*ceilQueue
}

// ceilQueue is the consumers of one queue, guarded by the server's mu.
type ceilQueue struct {
	subs []*ceilSub
	next int // round robin
	// room is signalled when a prefetch slot frees, a consumer comes or
	// leaves, or the server closes.
	room *sync.Cond
}

type ceilSub struct {
	conn  *ceilConn
	queue string
	free  int // prefetch slots not in flight; guarded by the server's mu
	limit int
}

type ceilConn struct {
	srv  *ceiling
	nc   net.Conn
	gone chan struct{} // closed when the reader has finished
	wake chan struct{}
	subs map[string]*ceilSub // the reader's own

	mu  sync.Mutex
	out []byte
}

// startCeiling listens on a new socket at path and serves it until close.
func startCeiling(path string) (*ceiling, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("ceiling server: %w", err)
	}
	s := &ceiling{l: l, path: path, conns: make(map[*ceilConn]struct{}), queues: make(map[string]*ceilQueue)}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *ceiling) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.l.Accept()
		if err != nil {
			return
		}
		c := &ceilConn{srv: s, nc: nc, gone: make(chan struct{}), wake: make(chan struct{}, 1), subs: make(map[string]*ceilSub)}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(2)
		s.mu.Unlock()
		go c.read()
		go c.write()
	}
}

// close stops the server, ends every connection and waits for its
// goroutines. The listener removes the socket file.
func (s *ceiling) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for c := range s.conns {
		c.nc.Close()
	}
	for _, q := range s.queues {
		q.room.Broadcast()
	}
	s.mu.Unlock()
	s.l.Close()
	s.wg.Wait()
}

// maxFrameBytes bounds a frame as the sidecar's default does.
const maxFrameBytes = 1 << 20

func (c *ceilConn) read() {
	defer c.srv.wg.Done()
	defer close(c.gone)
	defer c.leave()
	br := bufio.NewReaderSize(c.nc, 64<<10)
	var long []byte
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxFrameBytes {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil || len(line) > maxFrameBytes+1 {
			return
		}
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) > 0 {
			c.handle(line)
		}
		if br.Buffered() == 0 {
			c.flush()
		}
	}
}

// leave ends the connection's subscriptions and removes it from the server.
func (c *ceilConn) leave() {
	c.nc.Close()
	s := c.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range c.subs {
		s.unsubscribeLocked(sub)
	}
	delete(s.conns, c)
}

func (c *ceilConn) handle(line []byte) { handleFrame[*ceilSub](c, line) }

// The ceiling's side of framingConn.

func (c *ceilConn) subscription(queue string) *ceilSub { return c.subs[queue] }
func (c *ceilConn) onlySubscription() (*ceilSub, bool) { return onlyOf(c.subs) }
func (c *ceilConn) settle(sub *ceilSub)                { c.srv.settle(sub) }
func (c *ceilConn) subscribe(queue string, prefetch int) {
	c.subs[queue] = c.srv.subscribe(c, queue, prefetch)
}

func (c *ceilConn) publish(r *protocol.Request) {
	c.reply(r.ID, protocol.StatusAccepted)
	c.srv.forward(c, r)
}

func (c *ceilConn) unsubscribe(sub *ceilSub) {
	delete(c.subs, sub.queue)
	c.srv.mu.Lock()
	c.srv.unsubscribeLocked(sub)
	c.srv.mu.Unlock()
}

func (c *ceilConn) stats(id int64) {
	stats := c.srv.stats()
	c.mu.Lock()
	c.out = protocol.AppendStatsReply(c.out, id, stats)
	c.mu.Unlock()
}

// reply, fail and deliver add a frame to the connection's output; the
// writer sends it once woken by flush.
func (c *ceilConn) reply(id int64, st protocol.Status) {
	c.mu.Lock()
	c.out = protocol.AppendReply(c.out, id, st)
	c.mu.Unlock()
}

func (c *ceilConn) fail(r *protocol.Request, code protocol.Code, msg string) {
	c.mu.Lock()
	c.out = protocol.AppendErrorReply(c.out, r.ID, r.HasID, code, msg)
	c.mu.Unlock()
}

func (c *ceilConn) deliver(d *protocol.Deliver) {
	c.mu.Lock()
	c.out = protocol.AppendDeliver(c.out, d)
	c.mu.Unlock()
}

func (c *ceilConn) flush() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *ceilConn) write() {
	defer c.srv.wg.Done()
	var spare []byte
	for {
		select {
		case <-c.wake:
		case <-c.gone:
			return
		}
		c.mu.Lock()
		buf := c.out
		c.out = spare[:0]
		c.mu.Unlock()
		if len(buf) > 0 {
			if _, err := c.nc.Write(buf); err != nil {
				c.nc.Close() // the reader sees it and ends the connection
				return
			}
		}
		spare = buf
	}
}

func (s *ceiling) subscribe(c *ceilConn, queue string, prefetch int) *ceilSub {
	sub := &ceilSub{conn: c, queue: queue, free: prefetch, limit: prefetch}
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[queue]
	if q == nil {
		q = &ceilQueue{room: sync.NewCond(&s.mu)}
		s.queues[queue] = q
	}
	q.subs = append(q.subs, sub)
	q.room.Broadcast()
	return sub
}

func (s *ceiling) unsubscribeLocked(sub *ceilSub) {
	q := s.queues[sub.queue]
	for i, x := range q.subs {
		if x == sub {
			q.subs = append(q.subs[:i], q.subs[i+1:]...)
			break
		}
	}
	q.room.Broadcast()
}

// settle frees the prefetch slot of an acked delivery.
func (s *ceiling) settle(sub *ceilSub) {
	s.mu.Lock()
	if sub.free < sub.limit {
		sub.free++
	}
	room := s.queues[sub.queue].room
	s.mu.Unlock()
	room.Signal()
}

// forward sends a published event to the next consumer of its queue with
// a free prefetch slot, waiting for one when every consumer is full.
func (s *ceiling) forward(from *ceilConn, r *protocol.Request) {
	s.mu.Lock()
	var sub *ceilSub
	for {
		q := s.queues[r.Queue]
		if s.closed || q == nil || len(q.subs) == 0 {
			s.mu.Unlock()
			return
		}
		for range q.subs {
			q.next = (q.next + 1) % len(q.subs)
			if x := q.subs[q.next]; x.free > 0 {
				sub = x
				break
			}
		}
		if sub != nil {
			break
		}
		// The replies already written on this connection go out while it waits.
		from.flush()
		q.room.Wait()
	}
	sub.free--
	s.mu.Unlock()
	d := protocol.Deliver{Queue: r.Queue, Seq: s.seq.Add(1), Type: r.Type, Payload: r.Payload, EnqueuedAt: time.Now()}
	sub.conn.deliver(&d)
	sub.conn.flush()
}

// stats answers the one figure the load tool asks for: consumers per queue.
func (s *ceiling) stats() []byte {
	consumers := make(map[string]int)
	s.mu.Lock()
	for name, q := range s.queues {
		consumers[name] = len(q.subs)
	}
	s.mu.Unlock()
	return statsJSON(consumers)
}
