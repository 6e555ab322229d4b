package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/internal/testkit"
	"github.com/eventbus-sidecar/eventbus-sidecar/protocol"
	"github.com/eventbus-sidecar/eventbus-sidecar/transport"
)

// fast keeps the tests' reconnections short; the waits stay real, but
// nothing waits for them to pass: tests poll for what they expect.
func fast() Backoff { return Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond} }

const (
	msgLost        = "eventbus sidecar connection lost; reconnecting"
	msgReconnected = "eventbus sidecar reconnected"
	msgRefused     = "eventbus sidecar reported an error"
)

type published struct {
	out bus.Outcome
	err error
}

func publishAsync(ctx context.Context, c *Client, ev bus.Event, queue string) <-chan published {
	done := make(chan published, 1)
	go func() {
		out, err := c.Publish(ctx, ev, queue)
		done <- published{out, err}
	}()
	return done
}

func TestBackoffWaits(t *testing.T) {
	const ms = time.Millisecond
	const forever = time.Duration(1<<63 - 1)
	tests := []struct {
		name  string
		b     Backoff
		waits []time.Duration
	}{
		{"defaults", Backoff{}, []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2000 * ms, 2000 * ms}},
		{"capped", Backoff{Initial: 10 * ms, Max: 50 * ms}, []time.Duration{10 * ms, 20 * ms, 40 * ms, 50 * ms, 50 * ms}},
		{"constant", Backoff{Initial: 30 * ms, Max: 30 * ms, Multiplier: 1}, []time.Duration{30 * ms, 30 * ms, 30 * ms}},
		{"multiplier 3", Backoff{Initial: ms, Max: time.Second, Multiplier: 3}, []time.Duration{ms, 3 * ms, 9 * ms, 27 * ms}},
		{"initial above the default max", Backoff{Initial: 5 * time.Second}, []time.Duration{5 * time.Second, 5 * time.Second}},
		{"no overflow", Backoff{Initial: time.Hour, Max: forever, Multiplier: 1e9}, []time.Duration{time.Hour, forever, forever}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.b.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			wait := b.Initial
			for i, want := range tt.waits {
				if wait != want {
					t.Fatalf("wait %d: %v, want %v", i+1, wait, want)
				}
				wait = b.next(wait)
			}
		})
	}
}

func TestBackoffJitter(t *testing.T) {
	b, err := Backoff{Jitter: 0.5}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		r    float64
		want time.Duration
	}{
		{0, 100 * time.Millisecond},
		{0.5, 125 * time.Millisecond},
		{0.999, 149950 * time.Microsecond},
	}
	for _, tt := range tests {
		if got := b.jittered(100*time.Millisecond, tt.r); got != tt.want {
			t.Errorf("jittered(100ms, %v) = %v, want %v", tt.r, got, tt.want)
		}
	}
}

func TestInvalidBackoffFailsDial(t *testing.T) {
	sc := startSidecar(t, "", nil)
	tests := []struct {
		b    Backoff
		want string
	}{
		{Backoff{Initial: -time.Second}, "Initial -1s: must be positive"},
		{Backoff{Initial: time.Second, Max: time.Millisecond}, "Max 1ms: must be at least Initial (1s)"},
		{Backoff{Multiplier: 0.5}, "Multiplier 0.5: must be at least 1"},
		{Backoff{Jitter: 1.5}, "Jitter 1.5: must be between 0 and 1"},
		{Backoff{Jitter: -0.1}, "Jitter -0.1: must be between 0 and 1"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			c, err := Dial(testCtx(t), sc.path, WithReconnect(tt.b))
			if err == nil {
				c.Close()
				t.Fatalf("Dial with %+v succeeded", tt.b)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestReconnectAfterSidecarRestart(t *testing.T) {
	sc := startSidecar(t, "", nil)
	logs := &logRecorder{}
	c := dialWith(t, sc.path, WithReconnect(fast()), WithLogger(slog.New(logs)))
	ctx := testCtx(t)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	sc.stop(t)
	testkit.Eventually(t, "the client noticing the loss", func() bool { return !connected(c) })
	// Made while the sidecar is down: waits for the new connection.
	done := publishAsync(ctx, c, bus.Event{Type: "T", Payload: json.RawMessage(`1`)}, "data")
	again := startSidecar(t, sc.path, nil)
	if r := <-done; r.out != bus.Accepted || r.err != nil {
		t.Fatalf("publish across the restart: %v %v, want Accepted", r.out, r.err)
	}
	if n := again.bus.Stats()["data"].Size; n != 1 {
		t.Fatalf("restarted sidecar holds %d events, want the one published", n)
	}
	// The line comes just after the connection is in use.
	testkit.Eventually(t, "the reconnection logged", func() bool { return len(logs.records(msgReconnected)) > 0 })
	if lost := logs.records(msgLost); len(lost) != 1 || lost[0].Level != slog.LevelWarn {
		t.Fatalf("loss logged as %v, want one WARN", lost)
	}
	rec := logs.records(msgReconnected)
	if len(rec) != 1 || rec[0].Level != slog.LevelInfo || attr(rec[0], "attempts").Int64() < 1 {
		t.Fatalf("reconnection logged as %v, want one INFO with attempts >= 1", rec)
	}
}

func TestSubscriptionResumesAfterSidecarRestart(t *testing.T) {
	sc := startSidecar(t, "", nil)
	c := dialWith(t, sc.path, WithReconnect(fast()))
	ctx := testCtx(t)
	got := make(chan bus.Delivery, 4)
	sctx, stop := context.WithCancel(ctx)
	subErr := make(chan error, 1)
	go func() {
		subErr <- c.Subscribe(sctx, "signal", 4, func(_ context.Context, d bus.Delivery) error {
			got <- d
			return nil
		})
	}()
	// publishAndReceive publishes payload through c and waits for the
	// subscription to handle it and s to see the ack.
	publishAndReceive := func(s *sidecar, payload string) {
		t.Helper()
		testkit.Eventually(t, "subscribed", func() bool { return s.bus.Stats()["signal"].Consumers == 1 })
		if out, err := c.Publish(ctx, bus.Event{Type: "S", Payload: json.RawMessage(payload)}, "signal"); out != bus.Accepted {
			t.Fatal(out, err)
		}
		select {
		case d := <-got:
			if string(d.Event.Payload) != payload || d.Redeliveries != 0 {
				t.Fatalf("delivered %s (redeliveries %d), want %s", d.Event.Payload, d.Redeliveries, payload)
			}
		case err := <-subErr:
			t.Fatalf("Subscribe returned %v", err)
		}
		testkit.Eventually(t, "acked", func() bool { return s.bus.Stats()["signal"].Acked == 1 })
	}
	publishAndReceive(sc, "1")
	sc.stop(t)
	publishAndReceive(startSidecar(t, sc.path, nil), "2")
	stop()
	if err := <-subErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v, want context.Canceled", err)
	}
}

func TestUnackedDeliveryIsRedeliveredAfterDrop(t *testing.T) {
	sc := startSidecar(t, "", nil)
	rl := startRelay(t, sc.path)
	logs := &logRecorder{}
	c := dialWith(t, rl.path, WithReconnect(fast()), WithLogger(slog.New(logs)))
	ctx := testCtx(t)
	if out, err := c.Publish(ctx, bus.Event{Type: "S", Payload: json.RawMessage(`"x"`)}, "signal"); out != bus.Accepted {
		t.Fatal(out, err)
	}
	held, release := make(chan bus.Delivery, 1), make(chan struct{})
	again := make(chan bus.Delivery, 1)
	sctx, stop := context.WithCancel(ctx)
	subErr := make(chan error, 1)
	go func() {
		subErr <- c.Subscribe(sctx, "signal", 4, func(hctx context.Context, d bus.Delivery) error {
			if d.Redeliveries > 0 {
				again <- d
				return nil
			}
			held <- d
			<-hctx.Done()
			if !errors.Is(context.Cause(hctx), ErrConnectionLost) {
				t.Errorf("handler's context ended with %v, want ErrConnectionLost", context.Cause(hctx))
			}
			// Returned (ack) only once there is a new connection, where
			// a wrong ack would go.
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		})
	}()
	var first bus.Delivery
	select {
	case first = <-held:
	case err := <-subErr:
		t.Fatalf("Subscribe returned %v", err)
	}
	rl.cut()
	testkit.Eventually(t, "reconnected", func() bool { return connected(c) })
	close(release)
	var d bus.Delivery
	select {
	case d = <-again:
	case err := <-subErr:
		t.Fatalf("Subscribe returned %v before the redelivery", err)
	}
	if d.Seq != first.Seq || string(d.Event.Payload) != `"x"` || d.Redeliveries < 1 {
		t.Fatalf("redelivery %+v, want seq %d again with Redeliveries > 0", d, first.Seq)
	}
	stop()
	if err := <-subErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v", err)
	}
	testkit.Eventually(t, "the redelivery acked", func() bool { return sc.bus.Stats()["signal"].Acked == 1 })
	if refused := logs.records(msgRefused); len(refused) != 0 {
		t.Fatalf("the sidecar refused %d acks (%v): the old connection's ack went on the new one", len(refused), attr(refused[0], "error"))
	}
}

// TestDialRefusedAtTheConnectionLimit: a sidecar at its connection limit
// accepts a connection, refuses it with one error frame and closes it;
// Dial reports that instead of handing out a dead client.
func TestDialRefusedAtTheConnectionLimit(t *testing.T) {
	sc := startSidecarConfig(t, "", transport.Config{MaxConnections: 1}, nil)
	ctx := testCtx(t)
	var d net.Dialer
	holder, err := d.DialContext(ctx, "unix", sc.path)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	testkit.Eventually(t, "the only slot taken", func() bool { return sc.srv.Connections() == 1 })
	for _, opts := range [][]Option{nil, {WithReconnect(fast())}} {
		c, err := Dial(ctx, sc.path, opts...)
		if !errors.Is(err, ErrTooManyConnections) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("Dial at the limit (%d options) = %v, want ErrTooManyConnections", len(opts), err)
		}
	}
	holder.Close()
	testkit.Eventually(t, "the slot free", func() bool { return sc.srv.Connections() == 0 })
	c := dialWith(t, sc.path)
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping once the slot is free: %v", err)
	}
}

// TestDialRefusedByTheAllowlist: a sidecar whose allowed uids and gids
// leave this process out answers permission_denied; Dial says so, with or
// without WithReconnect, instead of retrying what cannot succeed.
func TestDialRefusedByTheAllowlist(t *testing.T) {
	const other = 4242 // neither this process' uid nor its gid
	if os.Getuid() == other || os.Getgid() == other {
		t.Fatalf("this test needs a process whose uid and gid are not %d", other)
	}
	sc := startSidecarConfig(t, "", transport.Config{AllowedUIDs: []uint32{other}}, nil)
	for _, opts := range [][]Option{nil, {WithReconnect(fast())}} {
		c, err := Dial(testCtx(t), sc.path, opts...)
		if !errors.Is(err, ErrPermissionDenied) || !strings.Contains(err.Error(), fmt.Sprintf("uid %d", os.Getuid())) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("Dial outside the allowlist (%d options) = %v, want ErrPermissionDenied naming uid %d", len(opts), err, os.Getuid())
		}
	}
}

// TestRefusedConnectionIsAFailedAttempt: when the client reconnects to a
// sidecar at its connection limit, which refuses each connection with one
// error frame and closes it, the client must count that as a failed
// attempt and back off, not log a reconnection and a loss each time and
// redial at once.
func TestRefusedConnectionIsAFailedAttempt(t *testing.T) {
	first := startSidecar(t, "", nil)
	full := startSidecarConfig(t, "", transport.Config{MaxConnections: 1}, nil)
	ctx := testCtx(t)
	var d net.Dialer
	holder, err := d.DialContext(ctx, "unix", full.path)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	testkit.Eventually(t, "the only slot taken", func() bool { return full.srv.Connections() == 1 })

	r := startRelay(t, first.path)
	logs := &logRecorder{}
	c := dialWith(t, r.path, WithReconnect(fast()), WithLogger(slog.New(logs)))
	r.retarget(full.path)
	r.cut()
	var refused *Error
	testkit.Eventually(t, "reconnection attempts refused", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return errors.As(c.dialErr, &refused)
	})
	if refused.Code != protocol.CodeTooManyConnections || !errors.Is(refused, ErrTooManyConnections) {
		t.Fatalf("attempt failed with %v (code %s), want %s", refused, refused.Code, protocol.CodeTooManyConnections)
	}
	waiting := publishAsync(ctx, c, bus.Event{Type: "T"}, "data")
	holder.Close()
	if r := <-waiting; r.out != bus.Accepted {
		t.Fatalf("publish once the slot is free: %v %v", r.out, r.err)
	}
	if n := full.bus.Stats()["data"].Published[bus.Accepted]; n != 1 {
		t.Fatalf("the full sidecar has %d publishes, want the one made after the reconnection", n)
	}
	testkit.Eventually(t, "the reconnection logged", func() bool { return len(logs.records(msgReconnected)) > 0 })
	if n := len(logs.records(msgLost)); n != 1 {
		t.Fatalf("loss logged %d times, want once: refused attempts are not losses", n)
	}
	rec := logs.records(msgReconnected)
	if len(rec) != 1 || attr(rec[0], "attempts").Int64() < 2 {
		t.Fatalf("reconnection logged as %v, want once, after the refused attempts", rec)
	}
}

// TestConnectionDrop drops the connection under a publish waiting for
// room and a subscription, with and without WithReconnect.
func TestConnectionDrop(t *testing.T) {
	tests := []struct {
		name      string
		reconnect bool
	}{
		{"without reconnect the client stays down", false},
		{"with reconnect the client comes back", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := startSidecar(t, "", smallQueues())
			rl := startRelay(t, sc.path)
			var opts []Option
			if tt.reconnect {
				opts = append(opts, WithReconnect(fast()))
			}
			c := dialWith(t, rl.path, opts...)
			ctx := testCtx(t)
			got := make(chan bus.Delivery, 1)
			subErr := make(chan error, 1)
			sctx, stop := context.WithCancel(ctx)
			defer stop()
			go func() {
				subErr <- c.Subscribe(sctx, "data", 1, func(_ context.Context, d bus.Delivery) error {
					got <- d
					return nil
				})
			}()
			testkit.Eventually(t, "subscribed", func() bool { return sc.bus.Stats()["data"].Consumers == 1 })
			if out, err := c.Publish(ctx, bus.Event{Type: "O"}, "order"); out != bus.Accepted {
				t.Fatal(out, err)
			}
			pctx, pcancel := context.WithCancel(ctx)
			defer pcancel()
			inFlight := publishAsync(pctx, c, bus.Event{Type: "O"}, "order")
			testkit.Eventually(t, "publish waiting for room", func() bool { return sc.bus.Stats()["order"].Waiting == 1 })

			rl.cut()

			// The sidecar withdraws the waiting publish with the connection.
			testkit.Eventually(t, "the waiting publish withdrawn", func() bool { return sc.bus.Stats()["order"].Published[bus.Cancelled] == 1 })
			if tt.reconnect {
				// Its outcome is unknown to the client, which sends it again
				// (with the same msg_id) on the new connection, where it
				// waits for room again until its caller gives up.
				testkit.Eventually(t, "the publish sent again and waiting", func() bool { return sc.bus.Stats()["order"].Waiting == 1 })
				pcancel()
				if r := <-inFlight; r.out != bus.Cancelled || !errors.Is(r.err, context.Canceled) {
					t.Fatalf("retried publish withdrawn by its caller: %v %v, want Cancelled", r.out, r.err)
				}
			} else {
				r := <-inFlight
				if r.out != bus.Failed || !errors.Is(r.err, ErrConnectionLost) || !strings.Contains(r.err.Error(), "may or may not") {
					t.Fatalf("publish in flight at the drop: %v %v, want Failed wrapping ErrConnectionLost, outcome unknown", r.out, r.err)
				}
			}
			testkit.Eventually(t, "no publish waiting", func() bool { return sc.bus.Stats()["order"].Waiting == 0 })
			if !tt.reconnect {
				if err := <-subErr; !errors.Is(err, ErrConnectionLost) {
					t.Fatalf("Subscribe returned %v, want ErrConnectionLost", err)
				}
				if err := c.Ping(ctx); !errors.Is(err, ErrConnectionLost) {
					t.Fatalf("ping after the drop: %v, want ErrConnectionLost at once", err)
				}
				if connected(c) {
					t.Fatal("the client reconnected without WithReconnect")
				}
				return
			}
			if err := c.Ping(ctx); err != nil {
				t.Fatalf("ping after the drop: %v", err)
			}
			testkit.Eventually(t, "resubscribed", func() bool { return sc.bus.Stats()["data"].Consumers == 1 })
			if out, err := c.Publish(ctx, bus.Event{Type: "D", Payload: json.RawMessage(`2`)}, "data"); out != bus.Accepted {
				t.Fatal(out, err)
			}
			select {
			case d := <-got:
				if string(d.Event.Payload) != "2" {
					t.Fatalf("delivered %s, want 2", d.Event.Payload)
				}
			case err := <-subErr:
				t.Fatalf("Subscribe returned %v", err)
			}
			stop()
			if err := <-subErr; !errors.Is(err, context.Canceled) {
				t.Fatalf("Subscribe returned %v", err)
			}
			if st := sc.bus.Stats()["order"]; st.Size != 1 {
				t.Fatalf("order holds %d events, want only the first", st.Size)
			}
		})
	}
}

func TestCloseWhileReconnecting(t *testing.T) {
	sc := startSidecar(t, "", nil)
	ctx := testCtx(t)
	before := goleak.IgnoreCurrent()
	// The first attempt is an hour away: Close must not wait for it.
	c, err := Dial(ctx, sc.path, WithReconnect(Backoff{Initial: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	subErr := make(chan error, 1)
	go func() {
		subErr <- c.Subscribe(ctx, "order", 1, func(context.Context, bus.Delivery) error { return nil })
	}()
	testkit.Eventually(t, "subscribed", func() bool { return sc.bus.Stats()["order"].Consumers == 1 })
	sc.stop(t)
	testkit.Eventually(t, "the client noticing the loss", func() bool { return !connected(c) })

	// A call whose ctx ends while it waits for the connection was not sent.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Ping(cancelled); !errors.Is(err, context.Canceled) || errors.Is(err, ErrConnectionLost) || !strings.Contains(err.Error(), sc.path) {
		t.Fatalf("ping with an ended ctx while reconnecting: %v, want context.Canceled naming %s", err, sc.path)
	}
	pctx, pcancel := context.WithCancel(ctx)
	withdrawn := publishAsync(pctx, c, bus.Event{Type: "O"}, "order")
	pcancel()
	if r := <-withdrawn; r.out != bus.Cancelled || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("publish cancelled while reconnecting: %v %v, want Cancelled", r.out, r.err)
	}

	waiting := publishAsync(ctx, c, bus.Event{Type: "O"}, "order")
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close did not return while the client waited to reconnect")
	}
	if r := <-waiting; r.out != bus.Failed || !errors.Is(r.err, ErrClosed) {
		t.Fatalf("publish waiting for the connection at Close: %v %v, want Failed wrapping ErrClosed", r.out, r.err)
	}
	if err := <-subErr; !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe returned %v, want ErrClosed", err)
	}
	goleak.VerifyNone(t, before)
}
