//go:build linux

package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
	"golang.org/x/sys/unix"
)

// floor is the least a server of the sidecar's protocol can cost per event
// on this machine: what the ceiling does (answer a publish, forward it to a
// consumer within its prefetch, free the slot on the ack), with the
// sidecar's codec, but on one OS thread around a level-triggered epoll set
// with raw system calls. No goroutine hand-off, no netpoller, no
// scheduler: per event one wake-up per frame, one read, one write per
// connection with output. It is not a Go design anyone would ship (one
// thread, unbounded output buffers); it measures what the kernel and the
// virtual machine charge for the socket traffic alone, so that CPU per
// event figures of the sidecar and the ceiling can be read against it.
//
// It answers as the ceiling does: a publish is answered "accepted" at once;
// when every consumer of its queue is at its prefetch, the event is held
// and the publishing connection is not read until an ack frees a slot
// (backpressure); a publish to a queue without consumers goes nowhere.
type floor struct {
	path string
	lfd  int // listening socket
	ep   int // epoll set
	// efd is an eventfd that stop makes readable; stopMu keeps stop from
	// writing to it while or after serve closes it.
	efd    int
	stopMu sync.Mutex

	conns  map[int]*floorConn
	queues map[string]*floorQueue
	seq    uint64
	buf    []byte
	// dirty holds connections with output to write once the current
	// batch of epoll events is handled; ready holds publishers with a held
	// event that may go on: room was made in their queue, or its
	// consumers left.
	dirty, ready []*floorConn
}

type floorConn struct {
	f       *floor
	fd      int
	in, out []byte
	subs    map[string]*floorSub
	held    *heldEvent // a publish waiting for a prefetch slot; c is not read meanwhile
	events  uint32     // registered with epoll
	dirty   bool
	closed  bool
}

type heldEvent struct {
	queue, typ string
	payload    []byte
}

type floorQueue struct {
	subs    []*floorSub
	next    int          // round robin
	waiting []*floorConn // publishers holding an event, first come first served
}

type floorSub struct {
	conn        *floorConn
	queue       string
	free, limit int
}

// startFloor listens on a new socket at path; serve then serves it on the
// calling goroutine until stop.
func startFloor(path string) (*floor, error) {
	f := &floor{path: path, lfd: -1, ep: -1, efd: -1, conns: make(map[int]*floorConn), queues: make(map[string]*floorQueue), buf: make([]byte, 64<<10)}
	fail := func(op string, err error) (*floor, error) {
		f.closeFDs()
		return nil, fmt.Errorf("floor server: %s %s: %w", op, path, err)
	}
	var err error
	if f.lfd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		return fail("socket", err)
	}
	if err := unix.Bind(f.lfd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(f.lfd, unix.SOMAXCONN); err != nil {
		os.Remove(path)
		return fail("listen", err)
	}
	if f.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		os.Remove(path)
		return fail("epoll_create1", err)
	}
	if f.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		os.Remove(path)
		return fail("eventfd", err)
	}
	for _, fd := range []int{f.lfd, f.efd} {
		if err := unix.EpollCtl(f.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			os.Remove(path)
			return fail("epoll_ctl", err)
		}
	}
	return f, nil
}

// stop makes serve return; safe from any goroutine, before, during or
// after serve.
func (f *floor) stop() {
	f.stopMu.Lock()
	defer f.stopMu.Unlock()
	if f.efd < 0 {
		return // serve has ended and closed it: the number may be another file's now
	}
	var one [8]byte
	one[0] = 1 // the eventfd counter is a host-order uint64; any non-zero wakes
	_, _ = unix.Write(f.efd, one[:])
}

// serve runs the event loop on this goroutine's own OS thread until stop,
// then closes every connection and removes the socket.
func (f *floor) serve() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer os.Remove(f.path)
	defer f.closeFDs()
	evs := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(f.ep, evs, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("floor server: epoll_wait: %w", err)
		}
		for _, ev := range evs[:n] {
			switch fd := int(ev.Fd); fd {
			case f.efd:
				return nil
			case f.lfd:
				f.accept()
			default:
				c := f.conns[fd]
				if c == nil {
					continue
				}
				if ev.Events&unix.EPOLLOUT != 0 {
					f.write(c)
				}
				switch {
				case c.closed:
				case ev.Events&unix.EPOLLIN != 0 && c.held == nil:
					f.read(c)
				case ev.Events&(unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0:
					// A connection holding an event is not read, so its end is seen here.
					f.drop(c)
				}
			}
		}
		for len(f.ready) > 0 {
			c := f.ready[0]
			f.ready = f.ready[1:]
			if !c.closed && f.forwardHeld(c) {
				f.process(c)
				f.arm(c)
			}
		}
		for _, c := range f.dirty {
			c.dirty = false
			if !c.closed {
				f.write(c)
			}
		}
		f.dirty = f.dirty[:0]
	}
}

func (f *floor) closeFDs() {
	for _, c := range f.conns {
		unix.Close(c.fd)
	}
	f.stopMu.Lock()
	defer f.stopMu.Unlock()
	for _, fd := range []*int{&f.lfd, &f.ep, &f.efd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

func (f *floor) accept() {
	for {
		fd, _, err := unix.Accept4(f.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or a failed accept the client sees as a refusal
		}
		c := &floorConn{f: f, fd: fd, subs: make(map[string]*floorSub), events: unix.EPOLLIN | unix.EPOLLRDHUP}
		if err := unix.EpollCtl(f.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: c.events, Fd: int32(fd)}); err != nil {
			unix.Close(fd)
			continue
		}
		f.conns[fd] = c
	}
}

// read takes what the socket holds, once: level-triggered epoll reports
// the connection again if more is left.
func (f *floor) read(c *floorConn) {
	n, err := unix.Read(c.fd, f.buf)
	switch {
	case n > 0:
		c.in = append(c.in, f.buf[:n]...)
		f.process(c)
		f.arm(c)
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
	default: // end of stream or a broken connection
		f.drop(c)
	}
}

// process handles every whole frame in c.in, until a publish has to wait.
func (f *floor) process(c *floorConn) {
	off := 0
	for !c.closed && c.held == nil {
		i := bytes.IndexByte(c.in[off:], '\n')
		if i < 0 {
			if len(c.in)-off > maxFrameBytes {
				f.drop(c)
				return
			}
			break
		}
		line := c.in[off : off+i]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		off += i + 1
		if len(line) > 0 {
			handleFrame[*floorSub](c, line)
		}
	}
	c.in = c.in[:copy(c.in, c.in[off:])]
}

// The floor's side of framingConn.

func (c *floorConn) subscription(queue string) *floorSub { return c.subs[queue] }
func (c *floorConn) onlySubscription() (*floorSub, bool) { return onlyOf(c.subs) }
func (c *floorConn) unsubscribe(sub *floorSub)           { c.f.unsubscribe(sub) }

func (c *floorConn) reply(id int64, st protocol.Status) {
	c.f.output(c, protocol.AppendReply(c.out, id, st))
}

func (c *floorConn) fail(r *protocol.Request, code protocol.Code, msg string) {
	c.f.output(c, protocol.AppendErrorReply(c.out, r.ID, r.HasID, code, msg))
}

func (c *floorConn) stats(id int64) {
	c.f.output(c, protocol.AppendStatsReply(c.out, id, c.f.stats()))
}

func (c *floorConn) publish(r *protocol.Request) {
	c.reply(r.ID, protocol.StatusAccepted)
	f := c.f
	q := f.queues[r.Queue]
	if q == nil || len(q.subs) == 0 {
		return // no consumer: the event goes nowhere
	}
	sub := q.pick()
	if sub == nil {
		c.held = &heldEvent{queue: r.Queue, typ: r.Type, payload: bytes.Clone(r.Payload)}
		q.waiting = append(q.waiting, c)
		return
	}
	f.deliver(sub, r.Type, r.Payload)
}

func (c *floorConn) settle(sub *floorSub) {
	if sub.free < sub.limit {
		sub.free++
	}
	c.f.resume(c.f.queues[sub.queue])
}

func (c *floorConn) subscribe(queue string, prefetch int) {
	f := c.f
	q := f.queues[queue]
	if q == nil {
		q = &floorQueue{}
		f.queues[queue] = q
	}
	sub := &floorSub{conn: c, queue: queue, free: prefetch, limit: prefetch}
	c.subs[queue] = sub
	q.subs = append(q.subs, sub)
	f.resume(q)
}

func (f *floor) deliver(sub *floorSub, typ string, payload []byte) {
	sub.free--
	f.seq++
	d := protocol.Deliver{Queue: sub.queue, Seq: f.seq, Type: typ, Payload: payload, EnqueuedAt: time.Now()}
	f.output(sub.conn, protocol.AppendDeliver(sub.conn.out, &d))
}

// forwardHeld delivers the event c holds, if any, and reports whether c
// may be read again; without room it waits in its queue again.
func (f *floor) forwardHeld(c *floorConn) bool {
	h := c.held
	if h == nil {
		return true
	}
	q := f.queues[h.queue]
	if len(q.subs) > 0 {
		sub := q.pick()
		if sub == nil {
			q.waiting = append(q.waiting, c)
			return false
		}
		f.deliver(sub, h.typ, h.payload)
	}
	c.held = nil
	return true
}

// output sets c's output buffer and marks c to be written after the batch.
func (f *floor) output(c *floorConn, out []byte) {
	c.out = out
	if !c.dirty {
		c.dirty = true
		f.dirty = append(f.dirty, c)
	}
}

// pick returns the next consumer with a free prefetch slot, or nil.
func (q *floorQueue) pick() *floorSub {
	for range q.subs {
		q.next = (q.next + 1) % len(q.subs)
		if s := q.subs[q.next]; s.free > 0 {
			return s
		}
	}
	return nil
}

// resume hands q's waiting publishers to the event loop when a slot is
// free or no consumer is left (their events then go nowhere); those that
// find no slot there wait again.
func (f *floor) resume(q *floorQueue) {
	if len(q.waiting) == 0 || (len(q.subs) > 0 && !q.hasRoom()) {
		return
	}
	f.ready = append(f.ready, q.waiting...)
	q.waiting = q.waiting[:0]
}

func (q *floorQueue) hasRoom() bool {
	for _, s := range q.subs {
		if s.free > 0 {
			return true
		}
	}
	return false
}

func (f *floor) unsubscribe(sub *floorSub) {
	delete(sub.conn.subs, sub.queue)
	q := f.queues[sub.queue]
	for i, s := range q.subs {
		if s == sub {
			q.subs = append(q.subs[:i], q.subs[i+1:]...)
			break
		}
	}
	f.resume(q)
}

// write sends c's output; what the socket refuses waits for EPOLLOUT.
func (f *floor) write(c *floorConn) {
	off := 0
	for off < len(c.out) {
		n, err := unix.Write(c.fd, c.out[off:])
		if n > 0 {
			off += n
			continue
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		f.drop(c)
		return
	}
	c.out = c.out[:copy(c.out, c.out[off:])]
	f.arm(c)
}

// arm registers the events c waits for: input unless it holds an event,
// output while some is left.
func (f *floor) arm(c *floorConn) {
	if c.closed {
		return
	}
	var ev uint32 = unix.EPOLLRDHUP
	if c.held == nil {
		ev |= unix.EPOLLIN
	}
	if len(c.out) > 0 {
		ev |= unix.EPOLLOUT
	}
	if ev == c.events {
		return // the common case, input only: no system call
	}
	if err := unix.EpollCtl(f.ep, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: ev, Fd: int32(c.fd)}); err != nil {
		f.drop(c)
		return
	}
	c.events = ev
}

func (f *floor) drop(c *floorConn) {
	if c.closed {
		return
	}
	c.closed = true
	_ = unix.EpollCtl(f.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	unix.Close(c.fd)
	delete(f.conns, c.fd)
	for _, sub := range c.subs {
		f.unsubscribe(sub)
	}
}

// stats answers what the load tool asks: consumers per queue.
func (f *floor) stats() []byte {
	consumers := make(map[string]int, len(f.queues))
	for name, q := range f.queues {
		consumers[name] = len(q.subs)
	}
	return statsJSON(consumers)
}

// ServeFloor serves the floor server (see floor) at socket until ctx ends.
func ServeFloor(ctx context.Context, socket string) error {
	f, err := startFloor(socket)
	if err != nil {
		return err
	}
	defer context.AfterFunc(ctx, f.stop)()
	return f.serve()
}
