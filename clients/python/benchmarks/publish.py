#!/usr/bin/env python3
"""Throughput of the Python client against a real sidecar, with its targets.

    python3 clients/python/benchmarks/publish.py              # starts its own sidecar
    python3 clients/python/benchmarks/publish.py --socket /tmp/eventbus-sidecar.sock

Without --socket it starts bin/eventbus-sidecar (``$EVENTBUS_SIDECAR_BIN``,
built if missing) on a temporary socket with the default queues plus a
``bench`` queue (block policy, room for a million events), so that nothing
but the client and the sidecar is measured. With --socket it uses that
sidecar and --queue (default ``order``), which a consumer in this process
drains during every phase so that the queue never fills.

Phases, on one publishing connection:
  sequential   1,000 publishes, each awaited before the next, inside
               unittest.IsolatedAsyncioTestCase (whose loop runs in asyncio
               debug mode); median of --repeat runs; then, against its own
               sidecar, the same while a consumer in that loop handles and
               acks each event
  pipelined    --tasks coroutines publishing --n events at once
  end-to-end   the same while run() in this process consumes and acks them,
               timed until the last one is handled

Where the time goes: the CPU time this process spends (client_cpu figures;
the rest of the wall time is the sidecar, the kernel and waiting for a
core), and, against its own sidecar, the same 1,000 round trips over a
plain blocking socket before each sequential run (the floor for any Python
client of this sidecar) and the sidecar's CPU time per end-to-end event.

It prints one JSON object: the figures, each target and whether it was met.
The numbers depend on the machine and its load; compare them within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from eventbus_sidecar import Event, EventBus, Outcome  # noqa: E402

SEQUENTIAL_EVENTS = 1000
TARGET_SEQUENTIAL_S = 0.25
TARGET_END_TO_END = 40_000

BENCH_CONFIG = """\
queues:
  - {name: data, capacity: 1000, policy: drop, timeout: 1s}
  - {name: signal, capacity: 100, policy: fail, timeout: 5s}
  - {name: order, capacity: 50, policy: block}
  - {name: bench, capacity: 1000000, policy: block}
telemetry:
  disabled: true
"""

PAYLOAD = {"symbol": "BTC-USD", "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5}


async def start_consumer(path: str, queue: str, counter: list[int]) -> tuple[EventBus, asyncio.Task]:
    consumer = await EventBus.connect(path, prefetch=256)

    def handler(event: Event) -> None:
        counter[0] += 1

    consumer.subscribe(queue, handler)
    task = asyncio.create_task(consumer.run())
    await consumer.wait_consuming()
    return consumer, task


async def stop_consumer(consumer: EventBus, task: asyncio.Task) -> None:
    await consumer.stop()
    await task
    await consumer.close()


async def publish_n(bus: EventBus, queue: str, n: int, tasks: int) -> tuple[int, float]:
    """Publish about n events from `tasks` coroutines; (events, seconds)."""
    per_task = max(1, n // tasks)

    async def worker() -> None:
        for _ in range(per_task):
            outcome = await bus.publish(Event("CANDLE_UPDATE", PAYLOAD), queue_name=queue)
            if outcome is not Outcome.ACCEPTED:
                raise RuntimeError(f"unexpected outcome {outcome}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return per_task * tasks, time.perf_counter() - start


async def wait_count(counter: list[int], n: int) -> None:
    while counter[0] < n:
        await asyncio.sleep(0.001)


def raw_socket_seconds(path: str, queue: str) -> float:
    """Seconds for SEQUENTIAL_EVENTS publish round trips of the benchmark's
    frames over a blocking socket: no event loop, no client."""
    payload = json.dumps(PAYLOAD, separators=(",", ":"))
    prefix = os.urandom(8).hex()
    head = f'{{"op":"publish","queue":{json.dumps(queue)},"type":"CANDLE_UPDATE","payload":{payload}'
    lines = [
        f'{head},"msg_id":"{prefix}-{i}","id":{i}}}\n'.encode() for i in range(SEQUENTIAL_EVENTS)
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        replies = s.makefile("rb")
        start = time.perf_counter()
        for line in lines:
            s.sendall(line)
            reply = replies.readline()
        elapsed = time.perf_counter() - start
        replies.close()
    if b'"accepted"' not in reply:
        raise RuntimeError(f"raw publish not accepted: {reply!r}")
    return elapsed


def sidecar_cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of a process so far (Linux; else None)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sequential_seconds(
    path: str, queue: str, drain: bool, repeat: int
) -> tuple[list[float], list[float], list[float]]:
    """Seconds for 1,000 awaited publishes, once per repeat, measured in a
    unittest.IsolatedAsyncioTestCase as an application's tests would: wall
    times, this process's CPU times, and (without drain, where nothing must
    run on the loop meanwhile) the raw socket's times just before each run."""
    runs: list[float] = []
    cpu: list[float] = []
    raw: list[float] = []

    class Sequential(unittest.IsolatedAsyncioTestCase):
        async def asyncSetUp(self) -> None:
            # Debug mode logs every callback over 0.1 s; on a loaded machine
            # that is noise in the output, not a change in what is measured.
            asyncio.get_running_loop().slow_callback_duration = 10.0

        async def test_sequential(self) -> None:
            bus = await EventBus.connect(path)
            self.addAsyncCleanup(bus.close)
            counter = [0]
            if drain:
                consumer, task = await start_consumer(path, queue, counter)
                self.addAsyncCleanup(stop_consumer, consumer, task)
            for _ in range(100):  # warm-up: connections, caches
                await bus.publish(Event("CANDLE_UPDATE", PAYLOAD), queue_name=queue)
            for _ in range(repeat):
                if drain:
                    await wait_count(counter, 100 + len(runs) * SEQUENTIAL_EVENTS)
                else:
                    raw.append(raw_socket_seconds(path, queue))
                start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(SEQUENTIAL_EVENTS):
                    await bus.publish(Event("CANDLE_UPDATE", PAYLOAD), queue_name=queue)
                runs.append(time.perf_counter() - start)
                cpu.append(time.process_time() - cpu_start)

    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(Sequential).run(result)
    for _, trace in result.errors + result.failures:
        raise RuntimeError(f"sequential phase failed:\n{trace}")
    return runs, cpu, raw


async def pipelined(
    path: str, queue: str, drain: bool, n: int, tasks: int, sidecar_pid: int | None = None
) -> dict[str, float]:
    bus = await EventBus.connect(path)
    counter = [0]
    consumer = task = None
    if drain:
        consumer, task = await start_consumer(path, queue, counter)
    try:
        await publish_n(bus, queue, tasks * 10, tasks)  # warm-up
        published, seconds = await publish_n(bus, queue, n, tasks)
        pipelined_rate = published / seconds
        if consumer is None:
            consumer, task = await start_consumer(path, queue, counter)
        # Everything published so far comes out before the end-to-end clock
        # starts: one stats reply, so that no event is counted twice.
        while True:
            q = (await bus.stats())[queue]
            if q["size"] == 0 and q["in_flight"] == 0:
                break
            await asyncio.sleep(0.01)
        done = counter[0]
        sidecar_start = sidecar_cpu_seconds(sidecar_pid) if sidecar_pid is not None else None
        start, cpu_start = time.perf_counter(), time.process_time()
        published, _ = await publish_n(bus, queue, n, tasks)
        await wait_count(counter, done + published)
        end_to_end = published / (time.perf_counter() - start)
        client_cpu = (time.process_time() - cpu_start) / published
        sidecar_end = sidecar_cpu_seconds(sidecar_pid) if sidecar_pid is not None else None
    finally:
        if consumer is not None and task is not None:
            await stop_consumer(consumer, task)
        await bus.close()
    rates = {"pipelined": pipelined_rate, "end_to_end": end_to_end, "client_cpu": client_cpu}
    if sidecar_start is not None and sidecar_end is not None:
        rates["sidecar_cpu"] = (sidecar_end - sidecar_start) / published
    return rates


def run(args: argparse.Namespace) -> dict:
    sidecar = None
    path, queue, drain = args.socket, args.queue, True
    pid = None
    if path is None:
        from tests.sidecar import Sidecar  # the tests' runner of the real binary

        # Debug logging, which the tests want, would cost the sidecar time per event.
        sidecar = Sidecar(BENCH_CONFIG, "--log-level", "info")
        sidecar.start()
        path, queue, drain = sidecar.socket, "bench", False
        assert sidecar.proc is not None
        pid = sidecar.proc.pid
    try:
        runs, cpu, raw = sequential_seconds(path, queue, drain, args.repeat)
        # The same with a consumer handling and acking every event in the
        # same loop, as an application's test of a publish-and-handle path
        # would (with --socket the first phase already has one).
        consumed = None if drain else sequential_seconds(path, queue, True, args.repeat)
        rates = asyncio.run(pipelined(path, queue, drain, args.n, args.tasks, pid))
    finally:
        if sidecar is not None:
            sidecar.cleanup()
    seq = statistics.median(runs)
    where = {
        "sequential_client_cpu_s": round(statistics.median(cpu), 4),
        "end_to_end_client_cpu_us_per_event": round(rates["client_cpu"] * 1e6, 2),
    }
    if raw:
        where["sequential_raw_socket_s"] = round(statistics.median(raw), 4)
    if "sidecar_cpu" in rates:
        where["end_to_end_sidecar_cpu_us_per_event"] = round(rates["sidecar_cpu"] * 1e6, 2)
    figures = {
        "sequential_1000_awaited_s": round(seq, 4),
        "sequential_runs_s": [round(r, 4) for r in runs],
        "sequential_events_per_s": round(SEQUENTIAL_EVENTS / seq),
    }
    if consumed is not None:
        figures["sequential_with_consumer_1000_awaited_s"] = round(statistics.median(consumed[0]), 4)
        where["sequential_with_consumer_client_cpu_s"] = round(statistics.median(consumed[1]), 4)
    return {
        **figures,
        "pipelined_publish_events_per_s": round(rates["pipelined"]),
        "end_to_end_events_per_s": round(rates["end_to_end"]),
        "where_the_time_goes": where,
        "tasks": args.tasks,
        "events": args.n,
        "queue": queue,
        "targets": {
            f"sequential: 1000 awaited publishes in at most {TARGET_SEQUENTIAL_S} s (median)":
                "met" if seq <= TARGET_SEQUENTIAL_S else "not met",
            f"end-to-end: at least {TARGET_END_TO_END} events/s published and consumed":
                "met" if rates["end_to_end"] >= TARGET_END_TO_END else "not met",
        },
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", help="a running sidecar's socket (default: start one)")
    p.add_argument("--queue", default="order", help="with --socket: a queue that never drops")
    p.add_argument("--n", type=int, default=50000, help="events per pipelined phase")
    p.add_argument("--tasks", type=int, default=64, help="concurrent publishing coroutines")
    p.add_argument("--repeat", type=int, default=5, help="runs of the sequential phase")
    print(json.dumps(run(p.parse_args()), indent=2))
