#!/usr/bin/env python3
"""A small trading strategy on the eventbus sidecar: candles in, signals out,
orders out, and an order executor consuming them.

    eventbus-sidecar serve --socket /tmp/eventbus-sidecar.sock &
    python3 examples/trading_app.py --socket /tmp/eventbus-sidecar.sock --duration 10

The flow is the design document's, one queue per stage:

    feed      --CANDLE_UPDATE / CANDLE_CLOSED-->  data    (drops when full)
    strategy  --SIGNAL_GENERATED-->               signal  (times out when full)
    risk      --ORDER_PLACED-->                   order   (waits, never drops)
    executor  --ORDER_FILLED / POSITION_UPDATED-> data

The strategy is a moving-average crossover on closed candles of a random-walk
price feed; the executor simulates exchange latency, so a slow exchange
backs up the order queue and, through it, the strategy (the seed's natural
backpressure). `--role` runs one part only, so the parts can also run as
separate processes against one sidecar. The program stops by itself after
`--duration` seconds (or on SIGINT/SIGTERM) and prints what it did.

Standard library plus the eventbus_sidecar package (installed with
`pip install ./clients/python`, or found next to this file in the repository).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import sys
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

try:
    from eventbus_sidecar import Backoff, Event, EventBus, EventType, Outcome
except ImportError:  # running from a checkout without installing the client
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python"))
    from eventbus_sidecar import Backoff, Event, EventBus, EventType, Outcome

log = logging.getLogger("trading_app")

ROLES = ("all", "feed", "strategy", "executor")


@dataclass
class Counters:
    """What the run did, printed at the end."""

    candles: int = 0
    candles_dropped: int = 0
    closed_seen: int = 0
    signals: int = 0
    signal_timeouts: int = 0
    orders: int = 0
    fills: int = 0
    positions: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    handler_events: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class MarketFeed:
    """Random-walk prices: a CANDLE_UPDATE per tick, CANDLE_CLOSED per candle."""

    def __init__(self, bus: EventBus, symbols: list[str], interval: float, ticks_per_candle: int,
                 rng: random.Random, counters: Counters) -> None:
        self.bus = bus
        self.symbols = symbols
        self.interval = interval
        self.ticks_per_candle = ticks_per_candle
        self.rng = rng
        self.counters = counters
        self.price = {s: 100.0 * (i + 1) for i, s in enumerate(symbols)}

    async def run(self) -> None:
        tick = 0
        ohlc: dict[str, list[float]] = {}
        while True:
            tick += 1
            for symbol in self.symbols:
                p = self.price[symbol] = round(self.price[symbol] * (1 + self.rng.gauss(0, 0.004)), 4)
                o = ohlc.setdefault(symbol, [p, p, p, p])
                o[1], o[2], o[3] = max(o[1], p), min(o[2], p), p
                await self._publish(Event(EventType.CANDLE_UPDATE, {"symbol": symbol, "price": p, "tick": tick}))
                if tick % self.ticks_per_candle == 0:
                    candle = dict(zip(("open", "high", "low", "close"), ohlc.pop(symbol)))
                    await self._publish(Event(EventType.CANDLE_CLOSED, {"symbol": symbol, **candle}))
            await asyncio.sleep(self.interval)

    async def _publish(self, event: Event) -> None:
        # The data queue drops when full: the latest candle is what matters,
        # so a drop is counted and the feed goes on.
        outcome = await self.bus.publish(event, queue_name="data")
        self.counters.candles += 1
        if outcome is Outcome.DROPPED:
            self.counters.candles_dropped += 1


class Strategy:
    """Moving-average crossover on closes; signals go to the signal queue."""

    def __init__(self, bus: EventBus, fast: int, slow: int, counters: Counters) -> None:
        self.bus = bus
        self.fast, self.slow = fast, slow
        self.closes: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=slow))
        self.last_side: dict[str, int] = {}
        self.last_price: dict[str, float] = {}
        self.counters = counters

    def on_candle_update(self, event: Event) -> None:
        self.last_price[event.data["symbol"]] = event.data["price"]

    async def on_candle_closed(self, event: Event) -> None:
        self.counters.closed_seen += 1
        symbol, close = event.data["symbol"], event.data["close"]
        closes = self.closes[symbol]
        closes.append(close)
        if len(closes) < self.slow:
            return
        fast = sum(list(closes)[-self.fast:]) / self.fast
        slow = sum(closes) / self.slow
        side = 1 if fast > slow else -1
        previous = self.last_side.get(symbol)
        self.last_side[symbol] = side
        if previous is None or previous == side:
            return
        signal_ = {"symbol": symbol, "side": "BUY" if side > 0 else "SELL", "price": close,
                   "fast_ma": round(fast, 4), "slow_ma": round(slow, 4)}
        try:
            await self.bus.publish(Event(EventType.SIGNAL_GENERATED, signal_), queue_name="signal")
            self.counters.signals += 1
        except asyncio.TimeoutError:
            # Signals are never dropped by the sidecar: a timeout means the
            # system is overloaded. This strategy skips the signal and says so.
            self.counters.signal_timeouts += 1
            log.error("signal for %s not accepted in time; skipped", symbol)


class Risk:
    """Turns signals into orders (fixed size); orders wait for room, never drop."""

    def __init__(self, bus: EventBus, size: float, counters: Counters) -> None:
        self.bus = bus
        self.size = size
        self.counters = counters
        self.next_order = 1

    async def on_signal(self, event: Event) -> None:
        order = {"order_id": f"o-{os.getpid()}-{self.next_order}", "symbol": event.data["symbol"],
                 "side": event.data["side"], "qty": self.size, "limit": event.data["price"]}
        self.next_order += 1
        await self.bus.publish(Event(EventType.ORDER_PLACED, order), queue_name="order")
        self.counters.orders += 1


class Executor:
    """Consumes the order queue: 'sends' each order to a slow exchange."""

    def __init__(self, bus: EventBus, latency: float, rng: random.Random, counters: Counters) -> None:
        self.bus = bus
        self.latency = latency
        self.rng = rng
        self.counters = counters

    async def on_order(self, event: Event) -> None:
        order = event.data
        await asyncio.sleep(self.latency)  # the exchange round trip
        slippage = 1 + self.rng.uniform(-0.0005, 0.0005)
        fill = {**order, "fill_price": round(order["limit"] * slippage, 4), "redelivered": event.redelivered}
        qty = order["qty"] if order["side"] == "BUY" else -order["qty"]
        self.counters.positions[order["symbol"]] += qty
        self.counters.fills += 1
        await self.bus.publish(Event(EventType.ORDER_FILLED, fill), queue_name="data")
        await self.bus.publish(
            Event(EventType.POSITION_UPDATED,
                  {"symbol": order["symbol"], "position": self.counters.positions[order["symbol"]]}),
            queue_name="data",
        )


async def settled_stats(bus: EventBus, within: float = 5.0) -> dict[str, dict[str, int]]:
    """The seed's queue stats once the sidecar has taken back what this
    process's closed consumer held in flight.

    The consumer's acks, nacks and close travel on its own connection, so a
    stats request on another connection can overtake them; waiting for
    in_flight to reach 0 makes every order either filled or back in size.
    """
    async with asyncio.timeout(within):
        while True:
            full = await bus.stats()
            if all(q["in_flight"] == 0 for q in full.values()):
                break
            await asyncio.sleep(0.01)
    return {name: {"size": q["size"], "maxsize": q["maxsize"], "drops": q["drops"]}
            for name, q in full.items()}


async def main(args: argparse.Namespace) -> int:
    counters = Counters()
    rng = random.Random(args.seed)
    options = {"reconnect": Backoff(initial=0.1, maximum=2.0) if args.reconnect else None}
    try:
        publisher = await EventBus.connect(args.socket, **options)
        consumer = await EventBus.connect(args.socket, **options)
    except ConnectionError as e:
        log.error("%s (is `eventbus-sidecar serve --socket %s` running?)", e, args.socket)
        return 1

    feed = MarketFeed(publisher, args.symbols.split(","), args.interval, args.ticks_per_candle, rng, counters)
    strategy = Strategy(publisher, args.fast, args.slow, counters)
    risk = Risk(publisher, args.order_size, counters)
    executor = Executor(publisher, args.exchange_latency, rng, counters)

    def count(event: Event) -> None:
        counters.handler_events[event.type_name] += 1

    # The seed's subscribe(event_type, handler): a type's events are consumed
    # from the queue the sidecar routes it to.
    if args.role in ("all", "strategy"):
        consumer.subscribe(EventType.CANDLE_UPDATE, strategy.on_candle_update)
        consumer.subscribe(EventType.CANDLE_CLOSED, strategy.on_candle_closed)
        consumer.subscribe(EventType.SIGNAL_GENERATED, risk.on_signal)
    if args.role in ("all", "executor"):
        consumer.subscribe(EventType.ORDER_PLACED, executor.on_order)
    if args.role in ("all", "strategy"):
        # Only the strategy consumes the data queue: consumers of one queue
        # compete, so an executor process must not take candles away.
        for t in (EventType.ORDER_FILLED, EventType.POSITION_UPDATED, EventType.CANDLE_UPDATE,
                  EventType.CANDLE_CLOSED):
            consumer.subscribe(t, count, queue="data")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks = []
    if args.role in ("all", "strategy", "executor"):
        tasks.append(asyncio.create_task(consumer.run(), name="consume"))
    if args.role in ("all", "feed"):
        tasks.append(asyncio.create_task(feed.run(), name="feed"))
    stopper = asyncio.create_task(stop.wait())
    failed = False
    try:
        done, _ = await asyncio.wait([stopper, *tasks], timeout=args.duration,
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("%s failed: %s", task.get_name(), task.exception())
                failed = True
    finally:
        stopper.cancel()
        for task in tasks:
            if task.get_name() == "feed":
                task.cancel()
        # Handlers in progress finish; deliveries not yet handled are nacked
        # and stay in the sidecar for the next run.
        await consumer.stop(timeout=5.0)
        await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.close()
        try:
            stats = await settled_stats(publisher)
        except (ConnectionError, TimeoutError) as e:
            stats = {"error": f"final stats: {e!r}"}
        await publisher.close()

    summary = {
        "role": args.role,
        "duration_s": args.duration,
        "candles_published": counters.candles,
        "candles_dropped": counters.candles_dropped,
        "closed_candles_seen": counters.closed_seen,
        "signals": counters.signals,
        "signal_timeouts": counters.signal_timeouts,
        "orders": counters.orders,
        "fills": counters.fills,
        "positions": dict(counters.positions),
        "events_seen_by_type": dict(counters.handler_events),
        "queue_stats": stats,
    }
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--socket", default=os.environ.get("EVENTBUS_SOCKET", "/tmp/eventbus-sidecar.sock"),
                   help="the sidecar's Unix socket ($EVENTBUS_SOCKET)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run before stopping")
    p.add_argument("--role", choices=ROLES, default="all", help="which part to run")
    p.add_argument("--symbols", default="BTC-USD,ETH-USD,SOL-USD")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between price ticks")
    p.add_argument("--ticks-per-candle", type=int, default=4)
    p.add_argument("--fast", type=int, default=2, help="fast moving average, in candles")
    p.add_argument("--slow", type=int, default=5, help="slow moving average, in candles")
    p.add_argument("--order-size", type=float, default=0.1)
    p.add_argument("--exchange-latency", type=float, default=0.05, help="seconds per simulated order")
    p.add_argument("--seed", type=int, default=None, help="random seed for a repeatable feed")
    p.add_argument("--no-reconnect", dest="reconnect", action="store_false",
                   help="fail instead of reconnecting when the sidecar goes away")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.fast >= args.slow:
        p.error(f"--fast ({args.fast}) must be smaller than --slow ({args.slow})")
    if args.duration <= 0:
        p.error(f"--duration must be positive, got {args.duration}")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(level=arguments.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(arguments)))
