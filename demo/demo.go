// Package demo is a simulated trading app for the eventbus-sidecar demo
// (make demo, docker-compose.yml): a market feed publishes candles for ten
// symbols to the data queue, a strategy turns moving-average crossovers into
// signals, an order manager turns signals into orders, and a deliberately
// slow execution venue consumes orders. The slow venue backs the order queue
// up, which stalls the order manager, then the strategy, so the data queue
// fills and drops candles: exactly the waits and drops the telemetry is
// there to show. Each stage publishes with the trace context of the delivery
// it is handling, so an executed order's trace runs from its candle through
// every wait to its execution.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eventbus-sidecar/eventbus-sidecar/bus"
	"go.opentelemetry.io/otel/trace"
)

// Handler processes one delivery. Returning nil acknowledges it; an error
// returns it to the queue (nack).
type Handler func(ctx context.Context, d bus.Delivery) error

// Broker is what the demo needs from the sidecar: the Go client over the
// socket in the real demo, the in-process bus in tests.
type Broker interface {
	// Publish hands ev to queue; the outcome and error follow bus.Publish.
	Publish(ctx context.Context, ev bus.Event, queue string) (bus.Outcome, error)
	// Subscribe consumes queue with at most prefetch events in flight,
	// calling h for each, until ctx ends or the subscription fails.
	Subscribe(ctx context.Context, queue string, prefetch int, h Handler) error
}

// Event types the demo publishes.
const (
	TypeCandle = "CANDLE_UPDATE"
	TypeSignal = "TRADE_SIGNAL"
	TypeOrder  = "ORDER_REQUEST"
)

// DefaultSymbols are the ten instruments the market feed quotes.
var DefaultSymbols = []string{"AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "JPM", "XOM", "BRK.B"}

// Config sets the demo's pace. The zero value of a field takes its default
// (see withDefaults).
type Config struct {
	// Duration bounds the run; the demo stops publishing and consuming
	// when it passes (default 60s).
	Duration time.Duration
	// Symbols quoted by the market feed (default DefaultSymbols).
	Symbols []string
	// CandleInterval is the pause between two candles of one symbol
	// (default 5ms: 2000 candles/s over ten symbols, more than the
	// stalled strategy can take, so data drops).
	CandleInterval time.Duration
	// OrderLatency is how long the slow venue takes per order (default
	// 250ms: 4 orders/s, fewer than the strategy produces, so order fills
	// up and its publishers wait).
	OrderLatency time.Duration
	// Queues names the three queues (default data, signal, order).
	DataQueue, SignalQueue, OrderQueue string
	// Prefetch for the strategy and order manager (default 16); the venue
	// always takes one order at a time.
	Prefetch int
	// FeedPublishers is how many candles of one symbol may be in flight at
	// once (default 25), as with a feed handler that does not wait for one
	// publish before the next. With ten symbols that makes 250 concurrent
	// data publishers: once the stalled strategy drains data slower than 250
	// per second, their waits pass the data queue's 1 s and candles drop.
	FeedPublishers int
	// Seed makes the price walk reproducible (default 1).
	Seed uint64
	// Logger receives progress and the executed orders' trace ids
	// (default: discard).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Duration <= 0 {
		c.Duration = 60 * time.Second
	}
	if len(c.Symbols) == 0 {
		c.Symbols = DefaultSymbols
	}
	if c.CandleInterval <= 0 {
		c.CandleInterval = 5 * time.Millisecond
	}
	if c.OrderLatency <= 0 {
		c.OrderLatency = 250 * time.Millisecond
	}
	if c.DataQueue == "" {
		c.DataQueue = "data"
	}
	if c.SignalQueue == "" {
		c.SignalQueue = "signal"
	}
	if c.OrderQueue == "" {
		c.OrderQueue = "order"
	}
	if c.Prefetch <= 0 {
		c.Prefetch = 16
	}
	if c.FeedPublishers <= 0 {
		c.FeedPublishers = 25
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Candle is the data queue's payload.
type Candle struct {
	Symbol string    `json:"symbol"`
	Open   float64   `json:"open"`
	High   float64   `json:"high"`
	Low    float64   `json:"low"`
	Close  float64   `json:"close"`
	Volume int64     `json:"volume"`
	Time   time.Time `json:"time"`
}

// Signal is the signal queue's payload.
type Signal struct {
	Symbol string  `json:"symbol"`
	Side   string  `json:"side"`
	Price  float64 `json:"price"`
	Fast   float64 `json:"fast_ma"`
	Slow   float64 `json:"slow_ma"`
}

// Order is the order queue's payload.
type Order struct {
	ID       string  `json:"id"`
	Symbol   string  `json:"symbol"`
	Side     string  `json:"side"`
	Quantity int     `json:"quantity"`
	Limit    float64 `json:"limit"`
}

// ExecutedOrder identifies one order the venue executed and the trace that
// follows it, for the demo's "look at this trace" hint.
type ExecutedOrder struct {
	ID      string
	TraceID trace.TraceID
}

// Report counts what happened in one run, per queue and outcome.
type Report struct {
	// Published[queue][outcome] counts publishes that returned.
	Published map[string]map[bus.Outcome]uint64
	// Consumed[queue] counts deliveries handled (acked).
	Consumed map[string]uint64
	// Executed lists the first executed orders (at most 10).
	Executed []ExecutedOrder
}

// counters is the lock-free part of Report while the run is going.
type counters struct {
	mu        sync.Mutex
	published map[string]map[bus.Outcome]uint64
	consumed  map[string]*atomic.Uint64
	executed  []ExecutedOrder
}

func newCounters(queues ...string) *counters {
	c := &counters{published: map[string]map[bus.Outcome]uint64{}, consumed: map[string]*atomic.Uint64{}}
	for _, q := range queues {
		c.published[q] = map[bus.Outcome]uint64{}
		c.consumed[q] = &atomic.Uint64{}
	}
	return c
}

func (c *counters) publish(queue string, o bus.Outcome) {
	c.mu.Lock()
	c.published[queue][o]++
	c.mu.Unlock()
}

func (c *counters) report() Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := Report{Published: map[string]map[bus.Outcome]uint64{}, Consumed: map[string]uint64{}}
	for q, m := range c.published {
		r.Published[q] = map[bus.Outcome]uint64{}
		for o, n := range m {
			r.Published[q][o] = n
		}
	}
	for q, n := range c.consumed {
		r.Consumed[q] = n.Load()
	}
	r.Executed = append([]ExecutedOrder(nil), c.executed...)
	return r
}

// Run plays the trading day on b until cfg.Duration passes or ctx ends, and
// reports what happened. It returns an error only when a consumer's
// subscription fails (the sidecar went away, say); publish outcomes other
// than accepted are part of the demo and only counted.
func Run(ctx context.Context, b Broker, cfg Config) (Report, error) {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	cnt := newCounters(cfg.DataQueue, cfg.SignalQueue, cfg.OrderQueue)
	a := &app{cfg: cfg, broker: b, cnt: cnt, strategies: map[string]*crossover{}}

	var wg sync.WaitGroup
	errs := make(chan error, 3)
	subscribe := func(queue string, prefetch int, h Handler) {
		wg.Go(func() {
			if err := b.Subscribe(ctx, queue, prefetch, h); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("subscribe %s: %w", queue, err)
				cancel()
			}
		})
	}
	subscribe(cfg.DataQueue, cfg.Prefetch, a.strategy)
	subscribe(cfg.SignalQueue, cfg.Prefetch, a.orderManager)
	subscribe(cfg.OrderQueue, 1, a.venue)

	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	for _, sym := range cfg.Symbols {
		start := 50 + rng.Float64()*450
		seed := rng.Uint64()
		wg.Go(func() { a.feed(ctx, sym, start, seed) })
	}
	cfg.Logger.Info("demo: trading", "symbols", len(cfg.Symbols), "duration", cfg.Duration,
		"candle_interval", cfg.CandleInterval, "order_latency", cfg.OrderLatency)

	wg.Wait()
	close(errs)
	var err error
	for e := range errs {
		err = errors.Join(err, e)
	}
	return cnt.report(), err
}

// app holds the stages' shared state.
type app struct {
	cfg    Config
	broker Broker
	cnt    *counters
	orders atomic.Uint64

	mu         sync.Mutex
	strategies map[string]*crossover
}

// publish sends v as an event of type typ to queue, as a child of parent
// (zero for a new trace), and counts the outcome.
func (a *app) publish(ctx context.Context, queue, typ string, v any, parent trace.SpanContext) (bus.Outcome, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return bus.Failed, fmt.Errorf("encode %s payload: %w", typ, err)
	}
	out, err := a.broker.Publish(ctx, bus.Event{Type: typ, Payload: payload, Parent: parent}, queue)
	a.cnt.publish(queue, out)
	return out, err
}

// feed publishes one symbol's candles: a random walk, one candle per
// CandleInterval, handed to FeedPublishers publishing goroutines, until
// ctx ends. When all of them wait for room the next candle waits too, as a
// real feed handler's bounded output would.
func (a *app) feed(ctx context.Context, symbol string, price float64, seed uint64) {
	candles := make(chan Candle)
	var wg sync.WaitGroup
	for range a.cfg.FeedPublishers {
		wg.Go(func() {
			for c := range candles {
				if _, err := a.publish(ctx, a.cfg.DataQueue, TypeCandle, c, trace.SpanContext{}); err != nil && ctx.Err() == nil {
					a.cfg.Logger.Debug("demo: candle not accepted", "symbol", symbol, "err", err)
				}
			}
		})
	}
	defer wg.Wait()
	defer close(candles)

	rng := rand.New(rand.NewPCG(seed, seed+1))
	tick := time.NewTicker(a.cfg.CandleInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		open := price
		price *= 1 + (rng.Float64()-0.5)*0.004
		c := Candle{
			Symbol: symbol, Open: open, Close: price,
			High: max(open, price) * (1 + rng.Float64()*0.001), Low: min(open, price) * (1 - rng.Float64()*0.001),
			Volume: 100 + rng.Int64N(10_000), Time: time.Now().UTC(),
		}
		select {
		case <-ctx.Done():
			return
		case candles <- c:
		}
	}
}

// crossover tracks a fast and a slow moving average of one symbol's close.
type crossover struct {
	closes []float64
	above  int // +1 fast above slow, -1 below, 0 unknown
}

const (
	fastWindow = 3
	slowWindow = 8
)

// update adds a close and returns "buy" or "sell" when the fast average
// crosses the slow one, "" otherwise.
func (x *crossover) update(close float64) (side string, fast, slow float64) {
	x.closes = append(x.closes, close)
	if len(x.closes) > slowWindow {
		x.closes = x.closes[1:]
	}
	if len(x.closes) < slowWindow {
		return "", 0, 0
	}
	fast, slow = mean(x.closes[slowWindow-fastWindow:]), mean(x.closes)
	now := -1
	if fast > slow {
		now = 1
	}
	prev := x.above
	x.above = now
	switch {
	case prev == -1 && now == 1:
		return "buy", fast, slow
	case prev == 1 && now == -1:
		return "sell", fast, slow
	}
	return "", fast, slow
}

func mean(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// strategy consumes candles and publishes a signal on each crossover, in
// the candle delivery's trace.
func (a *app) strategy(ctx context.Context, d bus.Delivery) error {
	var c Candle
	if err := json.Unmarshal(d.Event.Payload, &c); err != nil {
		// A malformed candle is not worth redelivering: count and ack.
		a.cfg.Logger.Warn("demo: bad candle", "seq", d.Seq, "err", err)
		return nil
	}
	a.mu.Lock()
	x := a.strategies[c.Symbol]
	if x == nil {
		x = &crossover{}
		a.strategies[c.Symbol] = x
	}
	side, fast, slow := x.update(c.Close)
	a.mu.Unlock()
	a.cnt.consumed[a.cfg.DataQueue].Add(1)
	if side == "" {
		return nil
	}
	sig := Signal{Symbol: c.Symbol, Side: side, Price: c.Close, Fast: fast, Slow: slow}
	// A signal that times out (queue full for its whole timeout) is lost by
	// design of the fail policy: the strategy moves on to fresher candles.
	if _, err := a.publish(ctx, a.cfg.SignalQueue, TypeSignal, sig, d.SpanContext); err != nil && ctx.Err() == nil {
		a.cfg.Logger.Debug("demo: signal not accepted", "symbol", c.Symbol, "err", err)
	}
	return nil
}

// orderManager turns each signal into an order, in the signal delivery's
// trace. The order queue blocks when full, so this stage stalls behind the
// slow venue.
func (a *app) orderManager(ctx context.Context, d bus.Delivery) error {
	var s Signal
	if err := json.Unmarshal(d.Event.Payload, &s); err != nil {
		a.cfg.Logger.Warn("demo: bad signal", "seq", d.Seq, "err", err)
		return nil
	}
	a.cnt.consumed[a.cfg.SignalQueue].Add(1)
	o := Order{
		ID:     fmt.Sprintf("ord-%06d", a.orders.Add(1)),
		Symbol: s.Symbol, Side: s.Side, Quantity: 100,
		Limit: s.Price,
	}
	if _, err := a.publish(ctx, a.cfg.OrderQueue, TypeOrder, o, d.SpanContext); err != nil {
		if ctx.Err() != nil {
			// The run is over: hand the signal back rather than lose it.
			return fmt.Errorf("publish order %s: %w", o.ID, err)
		}
		a.cfg.Logger.Warn("demo: order not accepted", "order", o.ID, "err", err)
	}
	return nil
}

// venue executes orders slowly (OrderLatency each) and logs the trace of
// each one so a person can look it up in Jaeger.
func (a *app) venue(ctx context.Context, d bus.Delivery) error {
	var o Order
	if err := json.Unmarshal(d.Event.Payload, &o); err != nil {
		a.cfg.Logger.Warn("demo: bad order", "seq", d.Seq, "err", err)
		return nil
	}
	t := time.NewTimer(a.cfg.OrderLatency)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("execute order %s: %w", o.ID, ctx.Err())
	case <-t.C:
	}
	a.cnt.consumed[a.cfg.OrderQueue].Add(1)
	tid := d.SpanContext.TraceID()
	a.cnt.mu.Lock()
	if len(a.cnt.executed) < 10 {
		a.cnt.executed = append(a.cnt.executed, ExecutedOrder{ID: o.ID, TraceID: tid})
	}
	a.cnt.mu.Unlock()
	attrs := []any{"order", o.ID, "symbol", o.Symbol, "side", o.Side, "queued_for", time.Since(d.EnqueuedAt).Round(time.Millisecond)}
	// Without telemetry in the sidecar there is no trace to point at.
	if tid.IsValid() {
		attrs = append(attrs, "trace_id", tid.String())
	}
	a.cfg.Logger.Info("demo: order executed", attrs...)
	return nil
}
