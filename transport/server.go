// Package transport serves the bus over a Unix domain socket with the
// newline-delimited JSON protocol described in docs/protocol.md.
//
// A Server runs one read loop and one write loop per connection and one
// delivery pump per subscription. Publishes that wait for room are held by
// the bus (bus.PublishAsync), not by goroutines of the server; all of them
// are answered when the connection closes, and Shutdown waits for every one.
package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
)

// Defaults for Config's zero values.
const (
	// DefaultMaxFrameBytes bounds one request frame (without its newline).
	DefaultMaxFrameBytes = 1 << 20
	// DefaultMaxOutputBytes bounds the output queued for one connection;
	// past it the server stops reading that connection's requests and
	// pauses its deliveries until the client reads.
	DefaultMaxOutputBytes = 1 << 20
	// DefaultWriteTimeout is how long one write to a client may stay stuck
	// before the client is cut off as a slow consumer.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultMaxWaitingPublishes bounds the publishes of one connection
	// that wait for room in full queues at the same time. At the bound the
	// server stops reading that connection until one of them is answered.
	DefaultMaxWaitingPublishes = 4096
	// DefaultMaxConnections bounds the client connections served at once.
	// A trading app needs a handful (a publisher and a consumer per queue,
	// or a small pool), so 1024 leaves two orders of magnitude for pools
	// and CLI calls, yet bounds what a client that reconnects in a loop or
	// leaks its pool can take: an idle connection costs about 70 KiB (its
	// 64 KiB read buffer and two goroutines), so 1024 of them about 75 MiB,
	// and 1024 file descriptors stay well inside the process limit, which
	// the Go runtime raises to the hard limit at start-up. Each connection
	// may also buffer up to MaxOutputBytes for a client that does not read;
	// lower the cap where the memory limit cannot hold that many times.
	DefaultMaxConnections = 1024
	// DefaultMaxBufferedBytes is the budget for the bytes held on behalf
	// of clients (see Config.MaxBufferedBytes): half of the 256 MiB memory
	// limit of the Kubernetes example, leaving the rest for the runtime,
	// goroutine stacks and the garbage collector's headroom.
	DefaultMaxBufferedBytes = 128 << 20
	// DefaultFrameTimeout bounds the time from a frame's first byte to its
	// newline.
	DefaultFrameTimeout = 10 * time.Second
	// DefaultBudgetTimeout is how long a connection that holds more than
	// its share may wait for room in an exhausted budget before it is cut
	// off.
	DefaultBudgetTimeout = 10 * time.Second
	// DefaultQueue receives events whose type has no route.
	DefaultQueue = "data"
)

// DefaultRoutes returns the routing of the trading app's event types to
// queues; types without a route go to DefaultQueue.
func DefaultRoutes() map[string]string {
	return map[string]string{
		"CANDLE_UPDATE":    "data",
		"CANDLE_CLOSED":    "data",
		"SIGNAL_GENERATED": "signal",
		"ORDER_PLACED":     "order",
	}
}

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Bus is the engine the server publishes to and consumes from. Required.
	Bus *bus.Bus
	// Routes maps an event type to a queue for publishes that name no
	// queue. nil means DefaultRoutes(); an empty non-nil map routes every
	// type to DefaultQueue.
	Routes map[string]string
	// DefaultQueue receives types without a route ("" means "data").
	DefaultQueue string
	// MaxFrameBytes bounds a request frame (0 means DefaultMaxFrameBytes).
	MaxFrameBytes int
	// MaxOutputBytes bounds one connection's queued output (0 means
	// DefaultMaxOutputBytes).
	MaxOutputBytes int
	// WriteTimeout cuts off a client whose socket accepts nothing for this
	// long (0 means DefaultWriteTimeout).
	WriteTimeout time.Duration
	// MaxWaitingPublishes bounds a connection's publishes waiting for room,
	// across all queues (0 means DefaultMaxWaitingPublishes). It is the one
	// point where a full queue can hold up a connection's other requests:
	// at the bound the connection is not read until a wait ends, so keep it
	// well above what a client pipelines into a full queue.
	MaxWaitingPublishes int
	// MaxConnections bounds the client connections served at once (0
	// means DefaultMaxConnections). A connection over it gets one
	// too_many_connections error frame and is closed unread; it is counted
	// in eventbus.connections.rejected and summed into the next
	// LogRejections. A connection counts from its accept until its client
	// closes it or the server starts closing it (the client then reads
	// its end), not until the server has torn it down: a client that has
	// seen its connection end can connect again at once.
	MaxConnections int
	// MaxBufferedBytes is the budget for every byte the server holds on
	// behalf of clients: read buffers (unfinished frames), output buffers,
	// the payloads of publishes waiting for room and of accepted events
	// until they are acked (0 means DefaultMaxBufferedBytes). Publish
	// payloads may take half of it, the waiting publishes of one
	// connection a sixteenth. Past it the server stops reading from the
	// connections that need more (the last eighth is kept for those that
	// hold no more than an idle connection), and cuts off
	// (CloseOverBudget) one that holds more than its fair share (the
	// budget divided among the open connections) while it waits past
	// BudgetTimeout.
	// It must be at least 8 × MaxFrameBytes.
	MaxBufferedBytes int64
	// BudgetTimeout: see MaxBufferedBytes (0 means DefaultBudgetTimeout).
	BudgetTimeout time.Duration
	// FrameTimeout bounds the time from a frame's first byte to its
	// newline (0 means DefaultFrameTimeout); a connection idle between
	// frames has no deadline. Past it the client gets one frame_timeout
	// error frame and is closed (CloseFrameTimeout).
	FrameTimeout time.Duration
	// AllowedUIDs and AllowedGIDs, when either is non-empty, admit only
	// the peers whose user id is in AllowedUIDs or whose group id is in
	// AllowedGIDs (read with SO_PEERCRED); any other gets one
	// permission_denied error frame and is closed. Both empty admit every
	// process the socket file's mode lets connect.
	AllowedUIDs []uint32
	AllowedGIDs []uint32
	// Logger receives connection-level events (nil discards them).
	Logger *slog.Logger
	// MeterProvider records eventbus.connections and the transport's
	// counters (nil means no metrics).
	MeterProvider metric.MeterProvider
}

// MinBufferedBytes is the smallest MaxBufferedBytes that serves frames of
// maxFrameBytes: the longest frame must fit the share of a connection
// that holds a lot, with its payload copy and a delivery of it.
func MinBufferedBytes(maxFrameBytes int) int64 { return 8 * int64(maxFrameBytes) }

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("transport: server closed")

// ErrInvalidConfig wraps every configuration error from New.
var ErrInvalidConfig = errors.New("invalid transport configuration")

// Server serves one bus on any number of listeners.
type Server struct {
	cfg    Config
	bus    *bus.Bus
	queues []string
	log    *slog.Logger
	// routing is read by every connection's read loop and replaced by
	// SetRoutes on a reload.
	routing atomic.Pointer[routing]
	// allowed is read at every accept and replaced by SetAllowedPeers.
	allowed atomic.Pointer[allowList]

	shutting atomic.Bool
	done     chan struct{} // closed by Shutdown
	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	// conns holds every connection until its goroutines have stopped;
	// those that count against MaxConnections are marked counted.
	conns map[*conn]struct{}
	wg    sync.WaitGroup
	// hup finds the counted connections whose clients have closed, for
	// the accept loop at the cap; under mu.
	hup hupWatch

	// connCount is the connections that count against MaxConnections;
	// changed under mu, read without it.
	connCount atomic.Int64
	metrics   serverMetrics

	// Connections over MaxConnections: rejectSlots bounds the ones being
	// turned away at once, rejectFrame is the error frame they get.
	rejectSlots     chan struct{}
	rejectFrame     []byte
	rejected        atomic.Int64
	unloggedRejects atomic.Int64 // since the last LogRejections
	denied          atomic.Int64 // refused by peer credentials
	unloggedDenied  atomic.Int64

	budget    *budget
	waitShare atomic.Int64 // waiting-publish bytes one connection may hold
	// lastReconcile is when the queued bytes were last checked against
	// the bus (unix nanoseconds).
	lastReconcile atomic.Int64
}

const (
	// maxRejecting bounds the rejected connections being turned away at
	// once, each for up to rejectWriteTimeout+lingerTimeout, so that a
	// flood of connections cannot pile up file descriptors or goroutines
	// beyond MaxConnections+maxRejecting. Past it a rejected connection is
	// closed at once, without its error frame.
	maxRejecting = 64
	// rejectWriteTimeout bounds the write of the rejection frame. The frame
	// is a few hundred bytes into a fresh socket, which the kernel takes at
	// once; the deadline only guards against the unexpected.
	rejectWriteTimeout = 100 * time.Millisecond
	// maxUncounted bounds the connections that no longer count against
	// MaxConnections but are still being torn down (their client closed,
	// or the server lingers for the client's close). Each goes within
	// lingerTimeout or recheckParked; past the bound a closing connection
	// counts until it is gone, so that a client that makes the server cut
	// it off in a loop cannot pile up descriptors and goroutines.
	maxUncounted = 256
)

// CloseReason says why the server closed a connection; it labels logs and
// the eventbus.connections.closed counter.
type CloseReason string

// Close reasons.
const (
	CloseClientGone    CloseReason = "client_closed"
	CloseFrameTooLarge CloseReason = "frame_too_large"
	CloseSlowConsumer  CloseReason = "slow_consumer"
	CloseReadError     CloseReason = "read_error"
	CloseWriteError    CloseReason = "write_error"
	CloseShutdown      CloseReason = "shutdown"
	// CloseFrameTimeout: a frame was not completed within FrameTimeout.
	CloseFrameTimeout CloseReason = "frame_timeout"
	// CloseOverBudget: the connection held more than its share of
	// MaxBufferedBytes while the budget stayed exhausted past
	// BudgetTimeout.
	CloseOverBudget CloseReason = "over_budget"
)

var closeReasons = []CloseReason{CloseClientGone, CloseFrameTooLarge, CloseSlowConsumer, CloseReadError, CloseWriteError, CloseShutdown, CloseFrameTimeout, CloseOverBudget}

// RejectReason says why a connection was turned away before it was
// served; it labels eventbus.connections.rejected.
type RejectReason string

// Reject reasons.
const (
	RejectTooManyConnections RejectReason = "too_many_connections"
	RejectPermissionDenied   RejectReason = "permission_denied"
)

var rejectReasons = []RejectReason{RejectTooManyConnections, RejectPermissionDenied}

type serverMetrics struct {
	invalidTraceparent metric.Int64Counter
	closed             metric.Int64Counter
	rejected           metric.Int64Counter
	reg                metric.Registration
}

// New validates cfg and returns a server. Routes and the default queue must
// name queues of cfg.Bus.
func New(cfg Config) (*Server, error) {
	if cfg.Bus == nil {
		return nil, fmt.Errorf("%w: Bus is required", ErrInvalidConfig)
	}
	queues := cfg.Bus.Queues()
	if cfg.Routes == nil {
		// The default routes apply to the queues that exist: a bus without
		// "signal" sends SIGNAL_GENERATED to the default queue.
		cfg.Routes = DefaultRoutes()
		for t, q := range cfg.Routes {
			if !slices.Contains(queues, q) {
				delete(cfg.Routes, t)
			}
		}
	}
	if cfg.DefaultQueue == "" {
		cfg.DefaultQueue = DefaultQueue
	}
	if cfg.MaxFrameBytes <= 0 {
		cfg.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if cfg.MaxOutputBytes <= 0 {
		cfg.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.MaxWaitingPublishes <= 0 {
		cfg.MaxWaitingPublishes = DefaultMaxWaitingPublishes
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxBufferedBytes <= 0 {
		cfg.MaxBufferedBytes = DefaultMaxBufferedBytes
	}
	if cfg.BudgetTimeout <= 0 {
		cfg.BudgetTimeout = DefaultBudgetTimeout
	}
	if cfg.FrameTimeout <= 0 {
		cfg.FrameTimeout = DefaultFrameTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = metricnoop.NewMeterProvider()
	}
	s := &Server{
		cfg:    cfg,
		bus:    cfg.Bus,
		queues: queues,
		log:    cfg.Logger,
		done:   make(chan struct{}),
		lns:    make(map[net.Listener]struct{}),
		conns:  make(map[*conn]struct{}),

		rejectSlots: make(chan struct{}, maxRejecting),
		rejectFrame: protocol.AppendTooManyConnections(nil, cfg.MaxConnections),
	}
	if err := s.checkBufferedBytes(cfg.MaxBufferedBytes); err != nil {
		return nil, err
	}
	s.budget = newBudget(cfg.MaxBufferedBytes, queues, &s.connCount)
	s.waitShare.Store(s.connWaitShare(cfg.MaxBufferedBytes))
	if err := s.SetRoutes(cfg.Routes, cfg.DefaultQueue); err != nil {
		return nil, err
	}
	s.SetAllowedPeers(cfg.AllowedUIDs, cfg.AllowedGIDs)
	if err := s.initMetrics(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) initMetrics() error {
	m := s.cfg.MeterProvider.Meter("github.com/eventbus-sidecar/eventbus-sidecar/transport")
	conns, err1 := m.Int64ObservableGauge("eventbus.connections",
		metric.WithDescription("Client connections open on the sidecar's socket."),
		metric.WithUnit("{connection}"))
	inv, err2 := m.Int64Counter("eventbus.traceparent.invalid",
		metric.WithDescription("Publishes whose traceparent was invalid and ignored (the event was still accepted)."),
		metric.WithUnit("{event}"))
	closed, err3 := m.Int64Counter("eventbus.connections.closed",
		metric.WithDescription("Client connections closed, by reason."),
		metric.WithUnit("{connection}"))
	rejected, err4 := m.Int64Counter("eventbus.connections.rejected",
		metric.WithDescription("Client connections turned away before they were served, by reason: the connection limit (max connections) was reached, or the peer's uid and gid are not allowed."),
		metric.WithUnit("{connection}"))
	buffered, err5 := m.Int64ObservableGauge("eventbus.buffered",
		metric.WithDescription("Bytes the sidecar holds on behalf of clients: read and output buffers, waiting publishes, accepted events not yet acked."),
		metric.WithUnit("By"))
	budgetGauge, err6 := m.Int64ObservableGauge("eventbus.buffered.budget",
		metric.WithDescription("The budget for eventbus.buffered (max buffered bytes)."),
		metric.WithUnit("By"))
	connLimit, err7 := m.Int64ObservableGauge("eventbus.connections.limit",
		metric.WithDescription("The most client connections served at once (max connections); one more is rejected."),
		metric.WithUnit("{connection}"))
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil {
		return fmt.Errorf("transport metrics: %w", err)
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(conns, s.connCount.Load())
		o.ObserveInt64(connLimit, int64(s.cfg.MaxConnections))
		s.reconcileQueued()
		o.ObserveInt64(buffered, s.budget.Held())
		o.ObserveInt64(budgetGauge, s.budget.Limit())
		return nil
	}, conns, connLimit, buffered, budgetGauge)
	if err != nil {
		return fmt.Errorf("transport metrics: %w", err)
	}
	// Create every series at 0 so that increase() sees the first event.
	ctx := context.Background()
	inv.Add(ctx, 0)
	for _, r := range rejectReasons {
		rejected.Add(ctx, 0, metric.WithAttributes(attribute.String("reason", string(r))))
	}
	for _, r := range closeReasons {
		closed.Add(ctx, 0, metric.WithAttributes(attribute.String("reason", string(r))))
	}
	s.metrics = serverMetrics{invalidTraceparent: inv, closed: closed, rejected: rejected, reg: reg}
	return nil
}

// Serve accepts connections on l until Shutdown, then returns
// ErrServerClosed. l is closed when Serve returns.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.shutting.Load() {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.lns[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, l)
		s.mu.Unlock()
		l.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.shutting.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAccept(err) {
				// Out of file descriptors and the like: wait and retry, as
				// net/http does, rather than spinning or giving up.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "retry_in", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-s.done:
					t.Stop()
					return ErrServerClosed
				}
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		peer, perr := readPeerCred(nc)
		s.mu.Lock()
		if s.shutting.Load() {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		if !s.admits(peer) {
			slot := s.takeRejectSlot()
			s.mu.Unlock()
			s.deny(nc, slot, peer, perr)
			continue
		}
		// Under mu, like the registration below, so that several
		// listeners cannot overshoot the cap together.
		if s.connCount.Load() >= int64(s.cfg.MaxConnections) {
			s.uncountClosedLocked()
		}
		if s.connCount.Load() >= int64(s.cfg.MaxConnections) {
			slot := s.takeRejectSlot()
			s.mu.Unlock()
			s.reject(nc, slot)
			continue
		}
		c := newConn(s, nc, peer)
		c.counted = true
		s.conns[c] = struct{}{}
		s.connCount.Add(1)
		s.hup.watch(c)
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// isTemporaryAccept reports whether an accept failed for want of a
// resource that a closing connection may free, so that trying again later
// can succeed.
func isTemporaryAccept(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// takeRejectSlot reserves one of the maxRejecting turn-away goroutines, if
// one is free, and counts it in wg. Called with mu held and the server not
// shutting down, so that the Add cannot race with Shutdown's Wait.
func (s *Server) takeRejectSlot() bool {
	select {
	case s.rejectSlots <- struct{}{}:
		s.wg.Add(1)
		return true
	default:
		return false
	}
}

// reject turns away a connection over MaxConnections. The accept loop only
// counts it and hands it on: the error frame is written by a goroutine of
// its own, so a rejected client can never stall accepting. Without a slot,
// in a flood, the connection is closed at once.
func (s *Server) reject(nc net.Conn, slot bool) {
	s.rejected.Add(1)
	s.unloggedRejects.Add(1)
	s.metrics.rejected.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", string(RejectTooManyConnections))))
	if !slot {
		nc.Close()
		return
	}
	go s.turnAway(nc, s.rejectFrame)
}

// deny turns away a peer whose credentials are not allowed, the same way.
func (s *Server) deny(nc net.Conn, slot bool, peer peerCred, err error) {
	s.denied.Add(1)
	s.unloggedDenied.Add(1)
	s.metrics.rejected.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", string(RejectPermissionDenied))))
	s.log.Debug("connection refused: peer not allowed", peerAttrs(peer, err)...)
	if !slot {
		nc.Close()
		return
	}
	go s.turnAway(nc, s.deniedFrame(peer, err))
}

// turnAway writes the rejection frame and closes the connection without
// reading its requests. The linger keeps the close from resetting the
// socket over requests the client sent before it was accepted, which
// would make it lose the frame.
func (s *Server) turnAway(nc net.Conn, frame []byte) {
	defer s.wg.Done()
	defer func() { <-s.rejectSlots }()
	defer nc.Close() // before the slot is released: fds stay bounded
	nc.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
	if _, err := nc.Write(frame); err != nil {
		return
	}
	lingerDiscard(nc)
}

// LogRejections writes one summary of the connections turned away since
// the last call, and nothing when there were none. Rejections are not
// logged one by one, since a client reconnecting in a tight loop would
// flood the log; the owner of the server calls this on a ticker, and
// Shutdown once more for the rest.
func (s *Server) LogRejections() {
	if n := s.unloggedDenied.Swap(0); n > 0 {
		a := s.allowed.Load()
		s.log.Warn("refused connections from processes whose uid and gid are not allowed", "refused", n,
			"refused_total", s.denied.Load(), "allowed_uids", a.uids, "allowed_gids", a.gids)
	}
	n := s.unloggedRejects.Swap(0)
	if n == 0 {
		return
	}
	s.log.Warn("connection limit reached: rejecting new connections", "rejected", n,
		"rejected_total", s.rejected.Load(), "max_connections", s.cfg.MaxConnections,
		"open", s.connCount.Load())
}

// uncount stops counting c against MaxConnections: from here on its
// client may see the connection end. Past maxUncounted connections being
// torn down, c counts until forget.
func (s *Server) uncount(c *conn) {
	s.mu.Lock()
	s.uncountLocked(c)
	s.mu.Unlock()
}

func (s *Server) uncountLocked(c *conn) bool {
	if !c.counted || int64(len(s.conns))-s.connCount.Load() >= maxUncounted {
		return false
	}
	c.counted = false
	s.connCount.Add(-1)
	s.hup.unwatch(c)
	return true
}

// uncountClosedLocked stops counting the connections whose client has
// closed its end (or shut both directions), which their read loops may not
// have seen yet: one still parked, or busy with the requests the client
// sent before it closed. Those are still served to the end; they only
// leave room for a new connection. A client that only shut its write side
// still reads its replies and keeps counting. Called with mu held, at the
// cap only.
func (s *Server) uncountClosedLocked() {
	s.hup.eachClosed(s.conns, s.uncountLocked)
}

func (s *Server) forget(c *conn, reason CloseReason) {
	s.mu.Lock()
	delete(s.conns, c)
	if c.counted {
		c.counted = false
		s.connCount.Add(-1)
		s.hup.unwatch(c)
	}
	s.mu.Unlock()
	s.metrics.closed.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", string(reason))))
	s.wg.Done()
}

func (s *Server) checkBufferedBytes(n int64) error {
	if minBudget := MinBufferedBytes(s.cfg.MaxFrameBytes); n < minBudget {
		return fmt.Errorf("%w: max buffered bytes %d is less than 8 × max frame bytes (%d); allowed: at least %d", ErrInvalidConfig, n, s.cfg.MaxFrameBytes, minBudget)
	}
	return nil
}

// connWaitShare is what the waiting publishes of one connection may hold
// under a budget of n: a sixteenth, and at least two full frames.
func (s *Server) connWaitShare(n int64) int64 {
	return max(n/connWaitDiv, 2*int64(s.cfg.MaxFrameBytes))
}

// SetMaxBufferedBytes changes the budget (Config.MaxBufferedBytes) of a
// running server. Growing it resumes the connections that wait for room.
// Shrinking it below what is held takes nothing away and cuts no client
// off for it: every connection that needs more waits (backpressure) until
// the holdings are under the new budget, and the BudgetTimeout cut-off
// counts from then. n must be at least MinBufferedBytes(MaxFrameBytes);
// otherwise nothing changes.
func (s *Server) SetMaxBufferedBytes(n int64) error {
	if err := s.checkBufferedBytes(n); err != nil {
		return err
	}
	s.waitShare.Store(s.connWaitShare(n))
	s.budget.setLimit(n)
	return nil
}

// MaxBufferedBytes reports the budget in force.
func (s *Server) MaxBufferedBytes() int64 { return s.budget.Limit() }

// Buffered reports the bytes the server holds on behalf of clients now,
// as counted against MaxBufferedBytes.
func (s *Server) Buffered() int64 { return s.budget.Held() }

// Denied reports how many connections were refused since start because
// their peer's uid and gid are not allowed.
func (s *Server) Denied() int64 { return s.denied.Load() }

// reconcileQueued corrects the bytes counted for accepted events against
// what the bus still holds, at most every reconcileEvery: the bus's stats
// are a snapshot of every queue.
func (s *Server) reconcileQueued() {
	now := time.Now().UnixNano()
	last := s.lastReconcile.Load()
	if now-last < int64(reconcileEvery) || !s.lastReconcile.CompareAndSwap(last, now) {
		return
	}
	held := make(map[string]int64, len(s.queues))
	for name, q := range s.bus.Stats() {
		held[name] = int64(q.Size + q.InFlight)
	}
	s.budget.reconcile(held)
}

const reconcileEvery = 100 * time.Millisecond

// Connections reports the number of client connections open, as counted
// against MaxConnections.
func (s *Server) Connections() int { return int(s.connCount.Load()) }

// Rejected reports how many connections were turned away since start
// because MaxConnections were open.
func (s *Server) Rejected() int64 { return s.rejected.Load() }

// Shutdown stops accepting, answers further publishes with "shutting
// down", withdraws waiting publishes (they too are answered "shutting
// down"), flushes each connection's queued replies and closes it. It
// returns when every connection goroutine has stopped, or with ctx's error
// after force-closing what remains once ctx ends.
//
// To drain the bus first, call bus.Shutdown before Shutdown: the bus then
// refuses publishes while the connections stay up for consumers to finish.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.shutting.Swap(true) {
		close(s.done)
	}
	var errs []error
	for l := range s.lns {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.kill(CloseShutdown, false)
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.kill(CloseShutdown, true)
		}
		s.mu.Unlock()
		<-done
		errs = append(errs, fmt.Errorf("transport shutdown: %w", ctx.Err()))
	}
	// Every connection is gone, and the accept loops saw shutting under
	// mu before they could watch another.
	s.mu.Lock()
	s.hup.close()
	s.mu.Unlock()
	// Rejections since the owner's last LogRejections are reported before
	// exit.
	s.LogRejections()
	if s.metrics.reg != nil {
		errs = append(errs, s.metrics.reg.Unregister())
	}
	return errors.Join(errs...)
}

// routing is the routes and default queue in force; SetRoutes swaps the
// whole value so that a publish never sees half of a reload.
type routing struct {
	routes       map[string]string
	defaultQueue string
}

// SetRoutes replaces the routing of publishes that name no queue, for
// publishes read from now on. Every route and the default queue must name
// a queue of the bus; otherwise nothing changes.
func (s *Server) SetRoutes(routes map[string]string, defaultQueue string) error {
	var errs []error
	if !slices.Contains(s.queues, defaultQueue) {
		errs = append(errs, fmt.Errorf("%w: default queue %q is not a queue of the bus; valid queues: %s", ErrInvalidConfig, defaultQueue, strings.Join(s.queues, ", ")))
	}
	types := make([]string, 0, len(routes))
	for t := range routes {
		types = append(types, t)
	}
	slices.Sort(types)
	for _, t := range types {
		if q := routes[t]; !slices.Contains(s.queues, q) {
			errs = append(errs, fmt.Errorf("%w: route %s -> %q: unknown queue; valid queues: %s", ErrInvalidConfig, t, q, strings.Join(s.queues, ", ")))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.routing.Store(&routing{routes: maps.Clone(routes), defaultQueue: defaultQueue})
	return nil
}

// route resolves a publish's queue: the named one, or the type's route.
func (s *Server) route(r *protocol.Request) (string, error) {
	if !r.HasQueue {
		rt := s.routing.Load()
		if q, ok := rt.routes[r.Type]; ok {
			return q, nil
		}
		return rt.defaultQueue, nil
	}
	for _, q := range s.queues {
		if q == r.Queue {
			return q, nil
		}
	}
	return "", s.unknownQueue(r.Queue)
}

func (s *Server) unknownQueue(name string) error {
	return &protocol.RequestError{Code: protocol.CodeUnknownQueue, Msg: fmt.Sprintf("unknown queue %s; valid queues: %s", protocol.Quote(name), strings.Join(s.queues, ", "))}
}
