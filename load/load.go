// Package load drives a running sidecar through the Go client: publishers
// on several connections, closed loop (as fast as replies come) or open
// loop (at a fixed rate, latency measured from each event's intended send
// time), consumers that ack, and a report of throughput and HDR-histogram
// latency percentiles. It is bounded both in events and in time. Compare
// runs the same load against a framing-only server first, the ceiling of
// any broker on this socket, and reports the sidecar as ratios of it.
package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"github.com/eventbus-sidecar/eventbus-sidecar/client"
)

// Limits on Config, so that a typo cannot exhaust the machine.
const (
	MaxEvents       = 10_000_000
	MaxConnections  = 1024
	MaxConcurrency  = 4096
	MaxPayloadBytes = 1 << 20
	MaxRate         = 10_000_000
	// DefaultDuration bounds a run unless Config.Duration says otherwise.
	DefaultDuration = time.Minute
	// minPayloadBytes fits the timestamp object the consumers read.
	minPayloadBytes = 40
)

// Config describes one load run. Zero values take the defaults in
// (*Config).withDefaults.
type Config struct {
	// Socket is the sidecar's Unix socket. Required.
	Socket string
	// Connections is the number of publishing client connections (default 1).
	Connections int
	// Concurrency is the number of goroutines publishing on each connection,
	// i.e. the pipelining depth per connection (default 64).
	Concurrency int
	// Events is the total number of events to publish (default 100000).
	Events int
	// Queue receives the events (default "data").
	Queue string
	// PayloadBytes is the size of each event's JSON payload (default 100,
	// at least 40).
	PayloadBytes int
	// Consumers is the number of consuming connections (default 1; a
	// negative value means none: publish only).
	Consumers int
	// Prefetch is each consumer's prefetch (default 256).
	Prefetch int
	// Duration bounds the whole run (default 60s); a run cut short reports
	// what it measured and says so.
	Duration time.Duration
	// Rate, when positive, makes the run open loop: event i is due at
	// start + i/Rate seconds and its latencies are measured from then,
	// whether or not a publisher was free to send it on time. Zero is
	// closed loop: each publisher sends its next event when the last one
	// is answered (at most Connections x Concurrency in flight).
	Rate float64
	// Label names the run in its status line and report.
	Label string
	// Progress, when set, receives a live status line every
	// ProgressInterval, rewritten in place with a carriage return, and
	// cleared at the end. Meant for a terminal.
	Progress io.Writer `json:"-"`
}

func (c Config) withDefaults() (Config, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Connections, 1)
	def(&c.Concurrency, 64)
	def(&c.Events, 100_000)
	def(&c.PayloadBytes, 100)
	def(&c.Consumers, 1)
	def(&c.Prefetch, 256)
	if c.Queue == "" {
		c.Queue = "data"
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Consumers < 0 {
		c.Consumers = 0
	}
	var errs []error
	check := func(name string, v, lo, hi int) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("%s %d: must be between %d and %d", name, v, lo, hi))
		}
	}
	if c.Socket == "" {
		errs = append(errs, errors.New("socket: required"))
	}
	check("connections", c.Connections, 1, MaxConnections)
	check("concurrency", c.Concurrency, 1, MaxConcurrency)
	check("events", c.Events, 1, MaxEvents)
	check("payload bytes", c.PayloadBytes, minPayloadBytes, MaxPayloadBytes)
	check("consumers", c.Consumers, 0, MaxConnections)
	check("prefetch", c.Prefetch, 1, 65536)
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("duration %v: must be positive", c.Duration))
	}
	if !(c.Rate >= 0 && c.Rate <= MaxRate) {
		errs = append(errs, fmt.Errorf("rate %v: must be between 0 (closed loop) and %d events/s", c.Rate, MaxRate))
	}
	return c, errors.Join(errs...)
}

// Result is what a run measured.
type Result struct {
	Config Config `json:"config"`
	// Sent counts publishes started; each ends in one of the outcomes below.
	Sent int64 `json:"sent"`
	// Publish outcomes.
	Accepted  int64 `json:"accepted"`
	Dropped   int64 `json:"dropped"`
	TimedOut  int64 `json:"timed_out"`
	Failed    int64 `json:"failed"`
	Cancelled int64 `json:"cancelled"`
	// Unsent counts, in an open-loop run, the events that were due before
	// the run ended but never sent because no publisher was free to send
	// them in time: a sign that the target (or the load tool itself) could
	// not keep up with the rate.
	Unsent int64 `json:"unsent"`
	// Acked counts deliveries of this run's events the consumers handled
	// and acked.
	Acked int64 `json:"acked"`
	// Foreign counts deliveries of events that were not this run's: left
	// in the queue by an earlier run cut short, or published by someone
	// else. They are acked and left out of every other figure.
	Foreign int64 `json:"foreign"`
	// PublishElapsed runs from the start of the run to the last reply;
	// Elapsed to the last ack (or the last reply without consumers).
	PublishElapsed time.Duration `json:"publish_elapsed_ns"`
	Elapsed        time.Duration `json:"elapsed_ns"`
	// PublishRate is accepted events per second of the publish phase;
	// Rate is events published and acked per second over the whole run.
	PublishRate float64 `json:"publish_events_per_second"`
	Rate        float64 `json:"events_per_second"`
	// PublishLatency runs from an event's send time to its publish reply;
	// EndToEnd from its send time to its receipt by a consumer. The send
	// time is the intended one in an open-loop run (Config.Rate > 0), so
	// time an event spent waiting for a free publisher counts.
	PublishLatency Percentiles `json:"publish_latency"`
	EndToEnd       Percentiles `json:"end_to_end_latency"`
	// SendLag, in an open-loop run, is how late each event was sent after
	// its intended time: the load tool's own falling behind.
	SendLag *Percentiles `json:"send_lag,omitempty"`
	// PublishFromSend, in an open-loop run, runs from each event's actual
	// send to its publish reply (wrk2's "uncorrected" latency): the
	// sidecar's part of PublishLatency without the tool's send lag. It
	// hides a stall's effect on the events that waited for a publisher,
	// so PublishLatency is the figure to judge the sidecar by.
	PublishFromSend *Percentiles `json:"publish_latency_from_send,omitempty"`
	// Incomplete is set when Duration ended the run early.
	Incomplete bool `json:"incomplete"`
	// FirstError is the first unexpected publish error, if any.
	FirstError string `json:"first_error,omitempty"`
}

// Run executes one load run against the sidecar at cfg.Socket. Events
// should go to a queue nobody else uses during the run: consumers count
// every delivery they ack.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Result{}, fmt.Errorf("load config: %w", err)
	}
	return runReal(ctx, cfg)
}

// runReal is run on the machine's clock.
func runReal(ctx context.Context, cfg Config) (_ Result, err error) {
	clock := newRealClock()
	defer func() { err = errors.Join(err, clock.Close()) }()
	return run(ctx, cfg, clock)
}

func run(ctx context.Context, cfg Config, clock Clock) (Result, error) {
	res := Result{Config: cfg}
	// An event carries its send time as Unix nanoseconds, but counted on
	// the monotonic clock from base: the wall clock can be stepped or
	// slewed while the run goes on (a virtual machine's was, by 13 s and
	// by 5 ms a second), which would add to or take from every latency.
	// This run's events carry times from base on; a delivery with an
	// earlier one, or none, is another run's.
	base := clock.Now()
	unixNano := func(t time.Time) int64 { return base.UnixNano() + int64(t.Sub(base)) }
	since := base.UnixNano()
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	pubs := make([]*client.Client, cfg.Connections)
	cons := make([]*client.Client, cfg.Consumers)
	defer func() {
		for _, c := range slices.Concat(pubs, cons) {
			if c != nil {
				c.Close()
			}
		}
	}()
	var err error
	for i := range pubs {
		if pubs[i], err = client.Dial(ctx, cfg.Socket); err != nil {
			return res, err
		}
	}
	for i := range cons {
		if cons[i], err = client.Dial(ctx, cfg.Socket); err != nil {
			return res, err
		}
	}

	var (
		sent, acked, accepted atomic.Int64
		foreign               atomic.Int64
		publishDone           atomic.Bool
		consumersDone         = make(chan struct{})
		consumerEnded         = make(chan struct{}, len(cons))
		stopOnce              sync.Once
		pubLat, e2eLat        = newLatencies(), newLatencies()
		lag, fromSend         *latencies
	)
	if cfg.Rate > 0 {
		lag, fromSend = newLatencies(), newLatencies()
	}
	consCtx, stopConsumers := context.WithCancel(ctx)
	defer stopConsumers()
	finish := func() {
		if publishDone.Load() && acked.Load() >= accepted.Load() {
			stopOnce.Do(stopConsumers)
		}
	}
	var consWG sync.WaitGroup
	consErrs := make([]error, len(cons))
	for i, c := range cons {
		consWG.Add(1)
		go func() {
			defer consWG.Done()
			defer func() { consumerEnded <- struct{}{} }()
			consErrs[i] = c.Subscribe(consCtx, cfg.Queue, cfg.Prefetch, func(_ context.Context, d bus.Delivery) error {
				at, ok := sentAt(d.Event.Payload)
				if !ok || at < since {
					foreign.Add(1)
					return nil
				}
				e2eLat.record(i, time.Duration(unixNano(clock.Now())-at))
				acked.Add(1)
				finish()
				return nil
			})
		}()
	}
	go func() {
		consWG.Wait()
		close(consumersDone)
	}()
	consumerErr := func() error {
		for _, err := range consErrs {
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("consumer: %w", err)
			}
		}
		return nil
	}
	// Publishing starts once every consumer is subscribed, so that no
	// event waits for a consumer that is still on its way.
	if err := waitSubscribed(ctx, pubs[0], cfg, consumerEnded); err != nil {
		stopConsumers()
		<-consumersDone
		return res, errors.Join(consumerErr(), err)
	}

	var firstErr error
	var errOnce sync.Once
	workers := cfg.Connections * cfg.Concurrency
	counts := make([][5]int64, workers)
	start := clock.Now()
	pace := newPacer(clock, start, cfg.Rate, cfg.Events)
	stopProgress := startProgress(cfg, clock, start, counters{sent: &sent, accepted: &accepted, acked: &acked, pub: pubLat, e2e: e2eLat})
	var pubWG sync.WaitGroup
	for w := range workers {
		c := pubs[w%cfg.Connections]
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			pad := make([]byte, 0, cfg.PayloadBytes)
			for {
				_, at, ok := pace.take(ctx)
				if !ok {
					return
				}
				sent.Add(1)
				var sendTime time.Time
				if lag != nil {
					sendTime = clock.Now()
					lag.record(w, sendTime.Sub(at))
				}
				payload := makePayload(pad[:0], unixNano(at), cfg.PayloadBytes)
				out, err := c.Publish(ctx, bus.Event{Type: "LOAD_TEST", Payload: payload}, cfg.Queue)
				replied := clock.Now()
				pubLat.record(w, replied.Sub(at))
				if fromSend != nil {
					fromSend.record(w, replied.Sub(sendTime))
				}
				switch out {
				case bus.Accepted:
					counts[w][0]++
					accepted.Add(1)
				case bus.Dropped:
					counts[w][1]++
				case bus.TimedOut:
					counts[w][2]++
				case bus.Cancelled:
					counts[w][4]++
				default:
					counts[w][3]++
					errOnce.Do(func() { firstErr = err })
				}
			}
		}()
	}
	pubWG.Wait()
	pubEnd := clock.Now()
	res.PublishElapsed = pubEnd.Sub(start)
	publishDone.Store(true)
	finish()
	if len(cons) == 0 {
		stopConsumers()
	}
	<-consumersDone
	res.Elapsed = clock.Now().Sub(start)
	if len(cons) == 0 {
		res.Elapsed = res.PublishElapsed
	}
	stopProgress()

	for _, c := range counts {
		res.Accepted += c[0]
		res.Dropped += c[1]
		res.TimedOut += c[2]
		res.Failed += c[3]
		res.Cancelled += c[4]
	}
	res.Sent = sent.Load()
	// A run cut short by Duration owed nothing due after its deadline.
	end := pubEnd
	if dl, ok := ctx.Deadline(); ok && dl.Before(end) {
		end = dl
	}
	res.Unsent = pace.behind(res.Sent, end)
	res.Acked = acked.Load()
	res.Foreign = foreign.Load()
	res.Incomplete = ctx.Err() != nil
	res.PublishRate = float64(res.Accepted) / res.PublishElapsed.Seconds()
	done := res.Acked
	if len(cons) == 0 {
		done = res.Accepted
	}
	res.Rate = float64(done) / res.Elapsed.Seconds()
	res.PublishLatency = pubLat.percentiles()
	res.EndToEnd = e2eLat.percentiles()
	if lag != nil {
		p, q := lag.percentiles(), fromSend.percentiles()
		res.SendLag, res.PublishFromSend = &p, &q
	}
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	if err := consumerErr(); err != nil {
		return res, err
	}
	if firstErr != nil && res.Accepted == 0 {
		return res, fmt.Errorf("every publish failed: %w", firstErr)
	}
	return res, nil
}

// subscribePoll is how often the start of a run asks whether the
// consumers are subscribed yet; it takes a few milliseconds at most.
const subscribePoll = 2 * time.Millisecond

// waitSubscribed waits until the sidecar counts cfg.Consumers consumers on
// cfg.Queue, or a consumer gave up (its error says why), or ctx ends.
func waitSubscribed(ctx context.Context, c *client.Client, cfg Config, consumerEnded <-chan struct{}) error {
	if cfg.Consumers == 0 {
		return nil
	}
	t := time.NewTicker(subscribePoll)
	defer t.Stop()
	for {
		st, err := c.Stats(ctx)
		if err != nil {
			return fmt.Errorf("waiting for the consumers to subscribe: %w", err)
		}
		if st[cfg.Queue].Consumers >= cfg.Consumers {
			return nil
		}
		select {
		case <-t.C:
		case <-consumerEnded:
			return errors.New("a consumer ended before the run started")
		case <-ctx.Done():
			return fmt.Errorf("waiting for the consumers to subscribe: %w", ctx.Err())
		}
	}
}

// makePayload writes {"t":<unix ns>,"pad":"xxx…"} of exactly size bytes.
func makePayload(dst []byte, unixNano int64, size int) json.RawMessage {
	dst = append(dst, `{"t":`...)
	dst = strconv.AppendInt(dst, unixNano, 10)
	dst = append(dst, `,"pad":"`...)
	for len(dst) < size-2 {
		dst = append(dst, 'x')
	}
	return append(dst, '"', '}')
}

// sentAt reads back the timestamp makePayload wrote.
func sentAt(p []byte) (int64, bool) {
	const prefix = `{"t":`
	if len(p) < len(prefix) || string(p[:len(prefix)]) != prefix {
		return 0, false
	}
	var v int64
	i := len(prefix)
	for ; i < len(p) && p[i] >= '0' && p[i] <= '9'; i++ {
		v = v*10 + int64(p[i]-'0')
	}
	return v, i > len(prefix)
}

// WriteText prints the result for people.
func (r Result) WriteText(w io.Writer) error {
	c := r.Config
	var errs []error
	p := func(format string, args ...any) {
		_, err := fmt.Fprintf(w, format, args...)
		errs = append(errs, err)
	}
	if c.Label != "" {
		p("%s:\n", c.Label)
	}
	mode := "closed loop, latency from each actual send"
	if c.Rate > 0 {
		mode = fmt.Sprintf("open loop at %.0f events/s, latency from each intended send time", c.Rate)
	}
	p("load: %d events of %d bytes to %q over %d connection(s) x %d in flight, %d consumer(s) with prefetch %d; %s\n",
		c.Events, c.PayloadBytes, c.Queue, c.Connections, c.Concurrency, c.Consumers, c.Prefetch, mode)
	p("publish: sent %d: accepted %d, dropped %d, timeout %d, cancelled %d, failed %d in %v: %.0f events/s\n",
		r.Sent, r.Accepted, r.Dropped, r.TimedOut, r.Cancelled, r.Failed, r.PublishElapsed.Round(time.Millisecond), r.PublishRate)
	if r.Unsent > 0 {
		p("BEHIND: %d events were due before the end but never sent: no publisher was free to send them in time\n", r.Unsent)
	}
	if c.Consumers > 0 {
		p("published and acked: %d in %v: %.0f events/s\n", r.Acked, r.Elapsed.Round(time.Millisecond), r.Rate)
	}
	if r.Foreign > 0 {
		p("foreign: %d deliveries were not this run's events (left by an earlier run or published by someone else): acked, not counted\n", r.Foreign)
	}
	pl := func(name string, q Percentiles) {
		if q.N == 0 {
			return
		}
		p("%-20s p50 %v  p90 %v  p99 %v  p99.9 %v  max %v  (n=%d)\n", name+":",
			q.P50.Round(time.Microsecond), q.P90.Round(time.Microsecond), q.P99.Round(time.Microsecond), q.P999.Round(time.Microsecond), q.Max.Round(time.Microsecond), q.N)
	}
	pl("publish latency", r.PublishLatency)
	pl("end-to-end latency", r.EndToEnd)
	if r.PublishFromSend != nil {
		pl("publish from send", *r.PublishFromSend)
	}
	if r.SendLag != nil {
		pl("send lag", *r.SendLag)
	}
	if r.FirstError != "" {
		p("first publish error: %s\n", r.FirstError)
	}
	if r.Incomplete {
		p("INCOMPLETE: the run hit its %v limit\n", c.Duration)
	}
	return errors.Join(errs...)
}
