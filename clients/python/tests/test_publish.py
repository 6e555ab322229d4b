"""publish(): outcomes, errors, cancellation and pipelining, against a real sidecar.

These run the sidecar with SHORT_CONFIG (data 5/100 ms drop, signal 3/200 ms
fail, order 2/block) so that queues fill and time out quickly.
"""

from __future__ import annotations

import asyncio
import unittest

from eventbus_sidecar import Event, EventBus, EventType, Outcome, tracing

from .helpers import SHORT_CONFIG, SidecarTestCase


async def fill(bus: EventBus, queue: str, n: int, event_type=EventType.ORDER_PLACED) -> None:
    for i in range(n):
        assert await bus.publish(Event(event_type, {"fill": i}), queue_name=queue) == Outcome.ACCEPTED


async def drain(bus_path: str, queue: str, expect: int, timeout: float = 10.0) -> list[Event]:
    """Consume exactly `expect` events of a queue with a second client."""
    got: list[Event] = []
    done = asyncio.Event()
    async with EventBus.connect(bus_path) as consumer:
        def handler(event: Event) -> None:
            got.append(event)
            if len(got) >= expect:
                done.set()

        consumer.subscribe(queue, handler)
        task = asyncio.create_task(consumer.run())
        try:
            async with asyncio.timeout(timeout):
                await done.wait()
        finally:
            await consumer.stop()
            await task
    return got


class TestPublishOutcomes(SidecarTestCase):
    async def test_queue_name_defaults_to_data(self):
        bus = await self.connect()
        self.assertEqual(await bus.publish(Event(EventType.ORDER_PLACED, {"x": 1})), Outcome.ACCEPTED)
        stats = await bus.get_queue_stats()
        self.assertEqual((stats["data"]["size"], stats["order"]["size"]), (1, 0))

    async def test_queue_none_routes_by_type(self):
        bus = await self.connect()
        cases = [
            (EventType.CANDLE_UPDATE, "data"),
            (EventType.CANDLE_CLOSED, "data"),
            (EventType.SIGNAL_GENERATED, "signal"),
            (EventType.ORDER_PLACED, "order"),
            ("SOMETHING_ELSE", "data"),
        ]
        for event_type, queue in cases:
            with self.subTest(event_type=event_type):
                before = await self.queue_stat(bus, queue, "size")
                await bus.publish(Event(event_type, {}), queue_name=None)
                self.assertEqual(await self.queue_stat(bus, queue, "size"), before + 1)

    async def test_plain_string_type_is_accepted_and_delivered_as_is(self):
        bus = await self.connect()
        await bus.publish(Event("NEWS_HEADLINE", {"text": "rates unchanged"}), queue_name="signal")
        await bus.publish(Event("ORDER_FILLED", {"id": 7}), queue_name="signal")
        got = await drain(self.sidecar.socket, "signal", 2)
        self.assertEqual([e.event_type for e in got], ["NEWS_HEADLINE", EventType.ORDER_FILLED])
        self.assertIsInstance(got[1].event_type, EventType)
        self.assertEqual(got[0].data, {"text": "rates unchanged"})

    async def test_payload_round_trips_unchanged(self):
        bus = await self.connect()
        payloads = [
            {"symbol": "BTC-USD", "ohlc": [1.5, 2.25, 1.0, 2.0], "nested": {"a": [None, True, False]}},
            [1, 2, 3],
            "just a string with ünïcødé and \n newline",
            12345678901234567,
            None,
        ]
        for p in payloads:
            await bus.publish(Event(EventType.CANDLE_UPDATE, p), queue_name="order")
            got = await drain(self.sidecar.socket, "order", 1)
            self.assertEqual(got[0].data, p)

    async def test_data_drop_returns_outcome_and_logs_warning(self):
        bus = await self.connect()
        await fill(bus, "data", 5, EventType.CANDLE_UPDATE)
        with self.assertLogs("eventbus_sidecar", "WARNING") as logs:
            outcome = await bus.publish(Event(EventType.CANDLE_UPDATE, {"id": 5}), queue_name="data")
        self.assertEqual(outcome, Outcome.DROPPED)
        self.assertIn("Dropped CANDLE_UPDATE from data queue", "\n".join(logs.output))
        stats = await bus.get_queue_stats()
        self.assertEqual((stats["data"]["size"], stats["data"]["drops"]), (5, 1))

    async def test_signal_timeout_raises_and_never_drops(self):
        bus = await self.connect()
        await fill(bus, "signal", 3, EventType.SIGNAL_GENERATED)
        with self.assertLogs("eventbus_sidecar", "ERROR") as logs:
            with self.assertRaises(asyncio.TimeoutError) as cm:
                await bus.publish(Event(EventType.SIGNAL_GENERATED, {"id": 3}), queue_name="signal")
        self.assertIn("signal queue", str(cm.exception))
        self.assertIn("Failed to publish SIGNAL_GENERATED", "\n".join(logs.output))
        stats = await bus.stats()
        self.assertEqual(stats["signal"]["size"], 3)
        self.assertEqual(stats["signal"]["drops"], 0)
        self.assertEqual(stats["signal"]["timeouts"], 1)

    async def test_order_waits_until_a_consumer_makes_room(self):
        bus = await self.connect()
        await fill(bus, "order", 2)
        blocked = asyncio.create_task(bus.publish(Event(EventType.ORDER_PLACED, {"id": 2}), queue_name="order"))
        await self.eventually(lambda: self._waiting(bus, "order", 1), "the order publish waits for room")
        # Longer than every other queue's timeout: still waiting, never dropped.
        await asyncio.sleep(0.3)
        self.assertFalse(blocked.done())
        got = await drain(self.sidecar.socket, "order", 3)
        self.assertEqual(await blocked, Outcome.ACCEPTED)
        self.assertEqual([e.data for e in got], [{"fill": 0}, {"fill": 1}, {"id": 2}])
        self.assertEqual(await self.queue_stat(bus, "order", "drops"), 0)

    async def _waiting(self, bus: EventBus, queue: str, n: int) -> bool:
        return await self.queue_stat(bus, queue, "waiting") == n


class TestPublishErrors(SidecarTestCase):
    CONFIG = SHORT_CONFIG.replace(
        "  - {name: order, capacity: 2, policy: block}\n",
        "  - {name: order, capacity: 2, policy: block}\n"
        "  - {name: risk, capacity: 4, policy: drop_oldest}\n",
    )

    async def test_invalid_queue_lists_the_sidecars_queues(self):
        bus = await self.connect()
        with self.assertRaises(ValueError) as cm:
            await bus.publish(Event(EventType.CANDLE_UPDATE, {}), queue_name="x")
        self.assertEqual(
            str(cm.exception), "Invalid queue_name 'x'. Must be one of: ['data', 'signal', 'order', 'risk']"
        )
        self.assertEqual(bus.queues, ["data", "signal", "order", "risk"])

    async def test_user_queue_with_drop_oldest(self):
        bus = await self.connect()
        for i in range(6):
            self.assertEqual(await bus.publish(Event("RISK", {"i": i}), queue_name="risk"), Outcome.ACCEPTED)
        stats = await bus.get_queue_stats()
        self.assertEqual(stats["risk"], {"size": 4, "maxsize": 4, "drops": 2})
        got = await drain(self.sidecar.socket, "risk", 4)
        self.assertEqual([e.data["i"] for e in got], [2, 3, 4, 5])

    async def test_empty_type_and_bad_payload_fail_before_sending(self):
        bus = await self.connect()
        with self.assertRaises(ValueError):
            await bus.publish(Event("", {}))
        with self.assertRaises(TypeError):
            await bus.publish(Event(EventType.CANDLE_UPDATE, {"when": object()}))
        with self.assertRaises(ValueError):
            await bus.publish(Event(EventType.CANDLE_UPDATE, {"price": float("nan")}))
        with self.assertRaises(TypeError):
            await bus.publish({"event_type": "CANDLE_UPDATE"})  # type: ignore[arg-type]
        # The connection is still fine.
        self.assertEqual(await bus.publish(Event(EventType.CANDLE_UPDATE, {})), Outcome.ACCEPTED)

    async def test_oversize_event_is_refused_without_losing_the_connection(self):
        bus = await self.connect()
        with self.assertRaises(ValueError) as cm:
            await bus.publish(Event(EventType.CANDLE_UPDATE, {"blob": "x" * (1 << 20)}))
        self.assertIn("frame limit", str(cm.exception))
        self.assertEqual(await bus.publish(Event(EventType.CANDLE_UPDATE, {})), Outcome.ACCEPTED)

    async def test_stats_keep_the_seed_shape_and_full_stats_have_more(self):
        bus = await self.connect()
        short = await bus.get_queue_stats()
        self.assertEqual(list(short), ["data", "signal", "order", "risk"])
        for q in short.values():
            self.assertEqual(set(q), {"size", "maxsize", "drops"})
        full = await bus.stats()
        for key in ("policy", "published", "delivered", "acked", "waiting", "consumers", "in_flight"):
            self.assertIn(key, full["order"])
        self.assertEqual(full["order"]["policy"], "block")


class TestCancellation(SidecarTestCase):
    async def _assert_withdrawn(self, bus: EventBus) -> None:
        stats = await bus.stats()
        self.assertEqual(stats["order"]["size"], 2)
        self.assertEqual(stats["order"]["waiting"], 0)
        self.assertEqual(stats["order"]["published"].get("cancelled"), 1)
        # Only the two queued events ever come out: the withdrawn one was
        # not enqueued behind the caller's back.
        got = await drain(self.sidecar.socket, "order", 2)
        self.assertEqual([e.data for e in got], [{"fill": 0}, {"fill": 1}])
        stats = await bus.stats()
        self.assertEqual((stats["order"]["size"], stats["order"]["published"]["accepted"]), (0, 2))

    async def test_wait_for_timeout_withdraws_the_publish(self):
        bus = await self.connect()
        await fill(bus, "order", 2)
        with self.assertRaises(asyncio.TimeoutError):
            await asyncio.wait_for(bus.publish(Event(EventType.ORDER_PLACED, {"id": 2}), queue_name="order"), 0.2)
        await self._assert_withdrawn(bus)

    async def test_timeout_context_withdraws_the_publish(self):
        bus = await self.connect()
        await fill(bus, "order", 2)
        with self.assertRaises(TimeoutError):
            async with asyncio.timeout(0.2):
                await bus.publish(Event(EventType.ORDER_PLACED, {"id": 2}), queue_name="order")
        await self._assert_withdrawn(bus)

    async def test_task_cancel_withdraws_the_publish(self):
        bus = await self.connect()
        await fill(bus, "order", 2)
        task = asyncio.create_task(bus.publish(Event(EventType.ORDER_PLACED, {"id": 2}), queue_name="order"))
        await self.eventually(lambda: self._waiting(bus), "the publish waits for room")
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        await self._assert_withdrawn(bus)

    async def _waiting(self, bus: EventBus) -> bool:
        return await self.queue_stat(bus, "order", "waiting") == 1


class TestPipelining(SidecarTestCase):
    CONFIG = None  # data holds 1000

    async def test_many_coroutines_share_one_connection(self):
        bus = await self.connect()
        publishers, each = 20, 50

        async def publisher(p: int) -> list[Outcome]:
            return [
                await bus.publish(Event(EventType.CANDLE_UPDATE, {"p": p, "i": i}), queue_name="data")
                for i in range(each)
            ]

        results = await asyncio.gather(*(publisher(p) for p in range(publishers)))
        self.assertEqual({o for r in results for o in r}, {Outcome.ACCEPTED})
        stats = await bus.get_queue_stats()
        self.assertEqual(stats["data"], {"size": publishers * each, "maxsize": 1000, "drops": 0})
        # Per publisher, its events are in the queue in the order it sent them.
        got = await drain(self.sidecar.socket, "data", publishers * each)
        by_publisher: dict[int, list[int]] = {}
        for e in got:
            by_publisher.setdefault(e.data["p"], []).append(e.data["i"])
        self.assertEqual(by_publisher, {p: list(range(each)) for p in range(publishers)})

    async def test_a_blocked_order_does_not_hold_up_other_queues(self):
        bus = await self.connect()
        for i in range(50):
            await bus.publish(Event(EventType.ORDER_PLACED, {"i": i}), queue_name="order")
        blocked = asyncio.create_task(bus.publish(Event(EventType.ORDER_PLACED, {"i": 50}), queue_name="order"))
        # Replies to these come back while the order publish, sent earlier on
        # the same connection, is still waiting: they are matched by id.
        outcomes = await asyncio.gather(
            *(bus.publish(Event(EventType.CANDLE_UPDATE, {"i": i})) for i in range(100)),
            *(bus.publish(Event(EventType.SIGNAL_GENERATED, {"i": i}), queue_name="signal") for i in range(20)),
        )
        self.assertEqual(set(outcomes), {Outcome.ACCEPTED})
        self.assertFalse(blocked.done())
        blocked.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await blocked
        self.assertEqual(await self.queue_stat(bus, "order", "size"), 50)


class TestTraceContext(SidecarTestCase):
    async def test_explicit_traceparent_reaches_the_consumer(self):
        bus = await self.connect()
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        await bus.publish(Event(EventType.ORDER_PLACED, {}), queue_name="order", traceparent=tp)
        got = await drain(self.sidecar.socket, "order", 1)
        self.assertIsNotNone(got[0].traceparent)
        parsed = tracing.parse_traceparent(got[0].traceparent)
        self.assertIsNotNone(parsed, got[0].traceparent)
        self.assertEqual(parsed[0], 0x4BF92F3577B34DA6A3CE929D0E0E4736)

    async def test_current_span_is_sent_when_opentelemetry_is_installed(self):
        bus = await self.connect()
        if tracing.otel_available():
            from opentelemetry import trace
            from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

            ctx = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=False, trace_flags=TraceFlags(1))
            with trace.use_span(NonRecordingSpan(ctx)):
                self.assertEqual(tracing.current_traceparent(), tracing.format_traceparent(0xABC, 0xDEF, 1))
                await bus.publish(Event(EventType.ORDER_PLACED, {}), queue_name="order")
            got = await drain(self.sidecar.socket, "order", 1)
            self.assertEqual(tracing.parse_traceparent(got[0].traceparent)[0], 0xABC)
        else:
            # Without opentelemetry-api nothing is sent and nothing breaks.
            self.assertIsNone(tracing.current_traceparent())
            self.assertEqual(await bus.publish(Event(EventType.ORDER_PLACED, {}), queue_name="order"), Outcome.ACCEPTED)
            got = await drain(self.sidecar.socket, "order", 1)
            self.assertEqual(got[0].event_type, EventType.ORDER_PLACED)


if __name__ == "__main__":
    unittest.main()
