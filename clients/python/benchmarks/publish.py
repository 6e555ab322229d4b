#!/usr/bin/env python3
"""Throughput of the Python client against a running sidecar.

    eventbus-sidecar serve --socket /tmp/bench.sock --admin-addr off &
    python3 clients/python/benchmarks/publish.py --socket /tmp/bench.sock

Measures, on one connection, events per second for:
  sequential   one coroutine, each publish awaited before the next (round trips)
  pipelined    --tasks coroutines publishing at once (replies matched by id)
  end-to-end   pipelined publishing while run() consumes and acks the same queue
A consumer drains the queue during every phase so that it never fills. The
numbers are for comparison within one run on one machine; the ratio between
sequential and pipelined shows what pipelining buys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

try:
    from eventbus_sidecar import Event, EventBus, Outcome
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from eventbus_sidecar import Event, EventBus, Outcome


async def drain_forever(path: str, queue: str, counter: list[int]) -> tuple[EventBus, asyncio.Task]:
    consumer = await EventBus.connect(path, prefetch=256)

    def handler(event: Event) -> None:
        counter[0] += 1

    consumer.subscribe(queue, handler)
    task = asyncio.create_task(consumer.run())
    await consumer.wait_consuming()
    return consumer, task


async def publish_n(bus: EventBus, queue: str, n: int, tasks: int) -> tuple[int, float]:
    """Publish about n events from `tasks` coroutines; (events, events/s)."""
    payload = {"symbol": "BTC-USD", "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5}
    per_task = max(1, n // tasks)

    async def worker() -> None:
        for _ in range(per_task):
            outcome = await bus.publish(Event("CANDLE_UPDATE", payload), queue_name=queue)
            if outcome is not Outcome.ACCEPTED:
                raise RuntimeError(f"unexpected outcome {outcome}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return per_task * tasks, per_task * tasks / (time.perf_counter() - start)


async def main(args: argparse.Namespace) -> None:
    bus = await EventBus.connect(args.socket)
    consumed = [0]
    consumer, run_task = await drain_forever(args.socket, args.queue, consumed)
    results = {}
    n_seq, rate = await publish_n(bus, args.queue, args.n // 4, 1)
    results["sequential_events_per_s"] = round(rate)
    n_pipe, rate = await publish_n(bus, args.queue, args.n, args.tasks)
    results["pipelined_events_per_s"] = round(rate)
    # Everything published so far comes out before the end-to-end clock starts.
    while consumed[0] < n_seq + n_pipe:
        await asyncio.sleep(0.001)
    start = time.perf_counter()
    published, _ = await publish_n(bus, args.queue, args.n, args.tasks)
    while consumed[0] < n_seq + n_pipe + published:
        await asyncio.sleep(0.001)
    results["end_to_end_events_per_s"] = round(published / (time.perf_counter() - start))
    results["tasks"] = args.tasks
    results["events"] = args.n
    await consumer.stop()
    await run_task
    await consumer.close()
    await bus.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", default="/tmp/eventbus-sidecar.sock")
    p.add_argument("--queue", default="order", help="a queue that never drops (block policy)")
    p.add_argument("--n", type=int, default=20000, help="events per pipelined phase")
    p.add_argument("--tasks", type=int, default=64, help="concurrent publishing coroutines")
    asyncio.run(main(p.parse_args()))
