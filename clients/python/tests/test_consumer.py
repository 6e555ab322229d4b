"""subscribe()/run()/stop(): the seed's handler model over real deliveries."""

from __future__ import annotations

import asyncio
import unittest

from eventbus_sidecar import Event, EventType, tracing

from .helpers import SidecarTestCase


class TestHandlers(SidecarTestCase):
    CONFIG = None  # room for the events these tests queue

    async def test_handlers_get_events_in_order_and_each_is_acked(self):
        pub = await self.connect()
        sub = await self.connect()
        got: list[int] = []
        sub.subscribe(EventType.ORDER_PLACED, lambda e: got.append(e.data["i"]))
        self.run_bus(sub)
        await sub.wait_consuming()
        for i in range(20):
            await pub.publish(Event(EventType.ORDER_PLACED, {"i": i}), queue_name="order")
        await self.eventually(lambda: len(got) == 20, "20 orders handled")
        self.assertEqual(got, list(range(20)))

        async def all_acked() -> bool:
            s = (await pub.stats())["order"]
            return s["acked"] == 20 and s["in_flight"] == 0 and s["size"] == 0

        await self.eventually(all_acked, "20 acks counted by the sidecar")

    async def test_async_and_sync_handlers_and_routing_by_type(self):
        pub = await self.connect()
        sub = await self.connect()
        seen: list[tuple[str, str]] = []

        async def on_signal(event: Event) -> None:
            await asyncio.sleep(0)
            seen.append(("signal-handler", event.type_name))

        def on_candle(event: Event) -> None:
            seen.append(("candle-handler", event.type_name))

        sub.subscribe(EventType.SIGNAL_GENERATED, on_signal)
        sub.subscribe(EventType.CANDLE_CLOSED, on_candle)
        self.run_bus(sub)
        await sub.wait_consuming()
        await pub.publish(Event(EventType.CANDLE_CLOSED, {}), queue_name=None)
        await pub.publish(Event(EventType.SIGNAL_GENERATED, {}), queue_name=None)
        await self.eventually(lambda: len(seen) == 2, "both events handled")
        self.assertCountEqual(
            seen, [("candle-handler", "CANDLE_CLOSED"), ("signal-handler", "SIGNAL_GENERATED")]
        )

    async def test_queue_subscription_gets_every_type_and_metadata(self):
        pub = await self.connect()
        sub = await self.connect()
        got: list[Event] = []
        sub.subscribe("data", got.append)
        self.run_bus(sub)
        await sub.wait_consuming()
        await pub.publish(Event(EventType.CANDLE_UPDATE, {"c": 1}))
        await pub.publish(Event("NEWS", {"n": 2}))
        await self.eventually(lambda: len(got) == 2, "two data events")
        self.assertEqual([e.event_type for e in got], [EventType.CANDLE_UPDATE, "NEWS"])
        for e in got:
            self.assertEqual(e.queue, "data")
            self.assertIsInstance(e.seq, int)
            self.assertFalse(e.redelivered)
            self.assertRegex(e.enqueued_at, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
        self.assertNotEqual(got[0].seq, got[1].seq)

    async def test_a_failing_handler_does_not_stop_the_others(self):
        pub = await self.connect()
        sub = await self.connect()
        second: list[int] = []
        calls = {"first": 0}

        def first(event: Event) -> None:
            calls["first"] += 1
            raise RuntimeError(f"strategy bug on {event.data['i']}")

        async def third(event: Event) -> None:
            raise KeyError("also broken")

        sub.subscribe(EventType.SIGNAL_GENERATED, first)
        sub.subscribe(EventType.SIGNAL_GENERATED, lambda e: second.append(e.data["i"]))
        sub.subscribe(EventType.SIGNAL_GENERATED, third)
        self.run_bus(sub)
        await sub.wait_consuming()
        with self.assertLogs("eventbus_sidecar", "ERROR") as logs:
            for i in range(5):
                await pub.publish(Event(EventType.SIGNAL_GENERATED, {"i": i}), queue_name="signal")
            await self.eventually(lambda: len(second) == 5, "the healthy handler got all 5")
        self.assertEqual(second, list(range(5)))
        self.assertEqual(calls["first"], 5)
        self.assertIn("strategy bug on 0", "\n".join(logs.output))

        async def acked_once() -> bool:
            s = (await pub.stats())["signal"]
            return s["acked"] == 5 and s["in_flight"] == 0

        # Acked after the handlers ran, failing ones included: no redelivery loop.
        await self.eventually(acked_once, "5 acks")
        self.assertEqual((await pub.stats())["signal"]["redelivered"], 0)

    async def test_stop_from_inside_a_handler(self):
        pub = await self.connect()
        sub = await self.connect()
        got: list[int] = []

        async def handler(event: Event) -> None:
            got.append(event.data["i"])
            await sub.stop()

        sub.subscribe(EventType.ORDER_PLACED, handler)
        task = self.run_bus(sub)
        await sub.wait_consuming()
        await pub.publish(Event(EventType.ORDER_PLACED, {"i": 0}), queue_name="order")
        async with asyncio.timeout(10):
            await task
        self.assertEqual(got, [0])

    async def test_publishes_from_a_handler_continue_the_delivery_trace(self):
        pub = await self.connect()
        sub = await self.connect()
        orders: list[Event] = []

        async def on_signal(event: Event) -> None:
            # No traceparent given: the delivery's is the parent.
            await sub.publish(Event(EventType.ORDER_PLACED, {"from": event.seq}), queue_name="order")

        sub.subscribe(EventType.SIGNAL_GENERATED, on_signal)
        sub.subscribe(EventType.ORDER_PLACED, orders.append)
        self.run_bus(sub)
        await sub.wait_consuming()
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        await pub.publish(
            Event(EventType.SIGNAL_GENERATED, {}), queue_name="signal",
            traceparent=f"00-{trace_id}-00f067aa0ba902b7-01",
        )
        await pub.publish(Event(EventType.SIGNAL_GENERATED, {}), queue_name="signal")
        await self.eventually(lambda: len(orders) == 2, "two orders from two signals")
        self.assertEqual(orders[0].traceparent.split("-")[1], trace_id)
        # Outside a handler nothing leaks: the second signal had no trace,
        # so neither has its order (unless the sidecar traces on its own).
        if orders[1].traceparent is not None:
            self.assertNotEqual(orders[1].traceparent.split("-")[1], trace_id)
        self.assertIsNone(tracing.current_traceparent() if not tracing.otel_available() else None)

    async def test_run_requires_a_subscription(self):
        sub = await self.connect()
        with self.assertRaises(RuntimeError):
            await sub.run()


class TestRedelivery(SidecarTestCase):
    CONFIG = None

    async def test_stop_nacks_unhandled_deliveries_and_another_consumer_gets_them(self):
        pub = await self.connect()
        first = await self.connect(prefetch=10)
        release = asyncio.Event()
        handled_by_first: list[int] = []

        async def slow(event: Event) -> None:
            handled_by_first.append(event.data["i"])
            await release.wait()

        first.subscribe(EventType.ORDER_PLACED, slow)
        run_first = self.run_bus(first)
        await first.wait_consuming()
        for i in range(5):
            await pub.publish(Event(EventType.ORDER_PLACED, {"i": i}), queue_name="order")

        async def all_in_flight() -> bool:
            return (await pub.stats())["order"]["in_flight"] == 5

        await self.eventually(all_in_flight, "5 orders in flight to the first consumer")
        stopping = asyncio.create_task(first.stop())
        await asyncio.sleep(0)
        release.set()
        async with asyncio.timeout(10):
            await stopping
            await run_first
        self.assertEqual(handled_by_first, [0])

        second_got: list[Event] = []
        second = await self.connect()
        second.subscribe(EventType.ORDER_PLACED, second_got.append)
        self.run_bus(second)
        await self.eventually(lambda: len(second_got) == 4, "4 redeliveries to the second consumer")
        self.assertEqual([e.data["i"] for e in second_got], [1, 2, 3, 4])
        self.assertTrue(all(e.redelivered and e.redeliveries >= 1 for e in second_got))

        async def settled() -> bool:
            s = (await pub.stats())["order"]
            return s["acked"] == 5 and s["size"] == 0 and s["in_flight"] == 0

        await self.eventually(settled, "all 5 acked exactly once")

    async def test_consumer_that_dies_mid_batch_gets_its_events_redelivered(self):
        pub = await self.connect()
        for i in range(3):
            await pub.publish(Event(EventType.SIGNAL_GENERATED, {"i": i}), queue_name="signal")
        # A consumer that subscribes, takes deliveries and vanishes without acking.
        reader, writer = await asyncio.open_unix_connection(self.sidecar.socket)
        writer.write(b'{"op":"subscribe","id":1,"queue":"signal","prefetch":10}\n')
        await writer.drain()
        lines = [await reader.readline() for _ in range(4)]  # ok + 3 deliveries
        self.assertIn(b'"status":"ok"', lines[0])
        writer.close()
        await writer.wait_closed()

        got: list[Event] = []
        sub = await self.connect()
        sub.subscribe("signal", got.append)
        self.run_bus(sub)
        await self.eventually(lambda: len(got) == 3, "3 redeliveries")
        self.assertEqual([e.data["i"] for e in got], [0, 1, 2])
        self.assertTrue(all(e.redelivered for e in got))

    async def test_competing_consumers_share_a_queue(self):
        pub = await self.connect()
        a, b = await self.connect(prefetch=1), await self.connect(prefetch=1)
        got_a: list[int] = []
        got_b: list[int] = []

        async def slow_a(e: Event) -> None:
            got_a.append(e.data["i"])
            await asyncio.sleep(0.01)

        async def slow_b(e: Event) -> None:
            got_b.append(e.data["i"])
            await asyncio.sleep(0.01)

        a.subscribe("order", slow_a)
        b.subscribe("order", slow_b)
        self.run_bus(a)
        self.run_bus(b)
        await a.wait_consuming()
        await b.wait_consuming()
        for i in range(20):
            await pub.publish(Event(EventType.ORDER_PLACED, {"i": i}), queue_name="order")
        await self.eventually(lambda: len(got_a) + len(got_b) == 20, "20 events handled")
        self.assertEqual(sorted(got_a + got_b), list(range(20)))
        self.assertTrue(got_a and got_b, "both consumers got work")


if __name__ == "__main__":
    unittest.main()
