package transport

import (
	"golang.org/x/sys/unix"
)

// hupEvents is how many hung-up sockets one look at the cap reports; the
// set is level-triggered, so any more are reported by the next look.
const hupEvents = 64

// hupWatch finds, among the connections that count against
// MaxConnections, those whose client has hung up. The accept loop asks
// for every connection it would otherwise turn away at the cap, so in a
// flood of connections the answer must not cost a walk over every open
// socket: the counted sockets are kept in an epoll set of their own, which
// reports only the hung-up ones (an empty event mask: epoll always
// reports a hang-up and an error). The set is created the first time the
// cap is reached, so that a server that never reaches it pays nothing per
// connection. The server's mu guards it.
type hupWatch struct {
	epfd    int // valid while active
	active  bool
	stopped bool // after close, or when epoll was not available
	byFD    map[int32]*conn
	events  []unix.EpollEvent
	// unwatched is the counted connections the set could not take; they
	// are polled one by one, as is every counted connection when epoll
	// is not available.
	unwatched map[*conn]struct{}
	pollFDs   []unix.PollFd
	pollConns []*conn
}

// watch adds a newly counted connection, once the set exists.
func (h *hupWatch) watch(c *conn) {
	if !h.active || c.fd < 0 {
		return
	}
	if err := unix.EpollCtl(h.epfd, unix.EPOLL_CTL_ADD, int(c.fd), &unix.EpollEvent{Fd: c.fd}); err != nil {
		h.unwatched[c] = struct{}{}
		return
	}
	h.byFD[c.fd] = c
}

// unwatch removes a connection that no longer counts. Its descriptor is
// still open: a counted connection's socket is closed only after it stops
// counting, or by a forced Shutdown.
func (h *hupWatch) unwatch(c *conn) {
	if !h.active {
		return
	}
	delete(h.unwatched, c)
	if c.fd >= 0 && h.byFD[c.fd] == c {
		delete(h.byFD, c.fd)
		_ = unix.EpollCtl(h.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	}
}

// start creates the set and adds every counted connection of conns.
func (h *hupWatch) start(conns map[*conn]struct{}) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		h.stopped = true
		return
	}
	h.epfd, h.active = epfd, true
	h.byFD = make(map[int32]*conn, len(conns))
	h.unwatched = make(map[*conn]struct{})
	h.events = make([]unix.EpollEvent, hupEvents)
	for c := range conns {
		if c.counted {
			h.watch(c)
		}
	}
}

// close releases the set; nothing is watched after it.
func (h *hupWatch) close() {
	if h.active {
		unix.Close(h.epfd)
	}
	h.active, h.stopped = false, true
	h.byFD, h.unwatched = nil, nil
}

// eachClosed calls f with every counted connection of conns whose client
// has hung up, until f returns false.
func (h *hupWatch) eachClosed(conns map[*conn]struct{}, f func(*conn) bool) {
	if !h.active && !h.stopped {
		h.start(conns)
	}
	if h.active {
		n, err := unix.EpollWait(h.epfd, h.events, 0)
		if err != nil {
			n = 0 // EINTR: the next look at the cap sees them
		}
		for _, ev := range h.events[:n] {
			if c := h.byFD[ev.Fd]; c != nil && c.counted && !f(c) {
				return
			}
		}
	}
	// Without the set, every counted connection is polled; with it, only
	// those it could not take (normally none).
	fds, polled := h.pollFDs[:0], h.pollConns[:0]
	add := func(c *conn) {
		if c.counted && c.fd >= 0 {
			fds = append(fds, unix.PollFd{Fd: c.fd})
			polled = append(polled, c)
		}
	}
	if h.active {
		for c := range h.unwatched {
			add(c)
		}
	} else {
		for c := range conns {
			add(c)
		}
	}
	h.pollFDs, h.pollConns = fds, polled
	defer clear(polled) // the scratch must not keep closed connections alive
	if len(fds) == 0 {
		return
	}
	if n, err := unix.Poll(fds, 0); err != nil || n == 0 {
		return
	}
	for i, pfd := range fds {
		if pfd.Revents&(unix.POLLHUP|unix.POLLERR) != 0 && !f(polled[i]) {
			return
		}
	}
}
