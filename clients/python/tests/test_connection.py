"""Connection loss, sidecar shutdown and reconnection, with a real sidecar process."""

from __future__ import annotations

import asyncio
import os
import tempfile
import unittest

from eventbus_sidecar import (
    Backoff,
    Event,
    EventBus,
    EventType,
    Outcome,
    PublishLostError,
    ShuttingDownError,
    TooManyConnectionsError,
)

from .helpers import SHORT_CONFIG, SidecarTestCase

FAST = Backoff(initial=0.02, maximum=0.2, multiplier=2.0)


class TestConnect(unittest.IsolatedAsyncioTestCase):
    async def test_missing_socket_is_a_connection_error_naming_the_path(self):
        folder = tempfile.mkdtemp(prefix="eventbus-py-")
        self.addCleanup(os.rmdir, folder)
        path = os.path.join(folder, "nothing.sock")
        with self.assertRaises(ConnectionError) as cm:
            await EventBus.connect(path)
        self.assertIn(path, str(cm.exception))

    async def test_calls_before_connecting_fail_clearly(self):
        bus = EventBus("/nonexistent/eventbus.sock")
        with self.assertRaises(ConnectionError) as cm:
            await bus.publish(Event(EventType.CANDLE_UPDATE, {}))
        self.assertIn("not connected", str(cm.exception))


class TestConnectionLoss(SidecarTestCase):
    async def _block_an_order(self, bus: EventBus) -> asyncio.Task:
        for i in range(2):
            await bus.publish(Event(EventType.ORDER_PLACED, {"i": i}), queue_name="order")
        task = asyncio.create_task(bus.publish(Event(EventType.ORDER_PLACED, {"i": 2}), queue_name="order"))

        async def waiting() -> bool:
            return (await bus.stats())["order"]["waiting"] == 1

        await self.eventually(waiting, "the third order waits for room")
        return task

    async def test_async_with_connects_and_closes(self):
        async with EventBus.connect(self.sidecar.socket) as bus:
            self.assertTrue(bus.connected)
            await bus.ping()
        self.assertFalse(bus.connected)
        with self.assertRaises(ConnectionError):
            await bus.ping()
        async with EventBus(self.sidecar.socket) as bus2:
            self.assertEqual(await bus2.publish(Event(EventType.CANDLE_UPDATE, {})), Outcome.ACCEPTED)

    async def test_killed_sidecar_fails_pending_calls_with_connection_error(self):
        bus = await self.connect()
        blocked = await self._block_an_order(bus)
        await asyncio.to_thread(self.sidecar.kill)
        with self.assertRaises(ConnectionError) as cm:
            await blocked
        self.assertNotIsInstance(cm.exception, ShuttingDownError)
        self.assertIn("outcome is unknown", str(cm.exception))
        self.assertIn("publish of ORDER_PLACED to order", str(cm.exception))
        # Without reconnect configured, later calls fail at once and say how to recover.
        with self.assertRaises(ConnectionError) as cm:
            await bus.publish(Event(EventType.CANDLE_UPDATE, {}))
        self.assertIn("reconnect", str(cm.exception))

    async def test_sidecar_shutdown_fails_waiting_publish_with_shutting_down(self):
        bus = await self.connect()
        blocked = await self._block_an_order(bus)
        stopping = asyncio.create_task(asyncio.to_thread(self.sidecar.terminate))
        with self.assertRaises(ShuttingDownError):
            async with asyncio.timeout(10):
                await blocked
        self.assertIsInstance(blocked.exception(), ConnectionError)
        self.assertEqual(await stopping, 0)

    async def test_explicit_reconnect(self):
        bus = await self.connect()
        await bus.publish(Event(EventType.CANDLE_UPDATE, {}))
        await asyncio.to_thread(self.sidecar.kill)
        await self.eventually(lambda: not bus.connected, "the client notices the loss")
        with self.assertRaises(ConnectionError):
            await bus.reconnect()  # nobody listening yet
        await asyncio.to_thread(self.sidecar.start)
        await bus.reconnect()
        self.assertTrue(bus.connected)
        self.assertEqual(await bus.publish(Event(EventType.CANDLE_UPDATE, {})), Outcome.ACCEPTED)
        # A fresh sidecar: the event from before the crash is gone with it.
        self.assertEqual((await bus.get_queue_stats())["data"]["size"], 1)

    async def test_background_reconnect_with_backoff(self):
        bus = await self.connect(reconnect=FAST)
        blocked = await self._block_an_order(bus)
        await asyncio.to_thread(self.sidecar.kill)
        # Published while the sidecar is down: waits for the reconnection,
        # and so does the order whose reply the kill took away (it is sent
        # again with its msg_id).
        pending = asyncio.create_task(bus.publish(Event(EventType.SIGNAL_GENERATED, {"x": 1}), queue_name="signal"))
        await asyncio.sleep(0.1)
        self.assertFalse(pending.done())
        self.assertFalse(blocked.done())
        await asyncio.to_thread(self.sidecar.start)
        async with asyncio.timeout(10):
            self.assertEqual(await pending, Outcome.ACCEPTED)
            # The restarted sidecar (no data dir) lost its queues: the
            # retried order is enqueued once, into the empty queue.
            self.assertEqual(await blocked, Outcome.ACCEPTED)
        stats = await bus.get_queue_stats()
        self.assertEqual(stats["signal"]["size"], 1)
        self.assertEqual(stats["order"]["size"], 1)

    async def test_background_reconnect_without_retry_fails_the_lost_publish(self):
        bus = await self.connect(reconnect=FAST, retry_publishes=False)
        blocked = await self._block_an_order(bus)
        await asyncio.to_thread(self.sidecar.kill)
        with self.assertRaises(PublishLostError) as cm:
            async with asyncio.timeout(10):
                await blocked
        self.assertTrue(cm.exception.msg_id)
        await asyncio.to_thread(self.sidecar.start)
        async with asyncio.timeout(10):
            self.assertEqual(
                await bus.publish(
                    Event(EventType.ORDER_PLACED, {"i": 2}), queue_name="order", msg_id=cm.exception.msg_id
                ),
                Outcome.ACCEPTED,
            )

    async def test_background_reconnect_gives_up_after_max_attempts(self):
        bus = await self.connect(reconnect=Backoff(initial=0.01, maximum=0.02, max_attempts=3))
        await asyncio.to_thread(self.sidecar.kill)
        await self.eventually(lambda: not bus.connected, "the client notices the loss")
        with self.assertRaises(ConnectionError) as cm:
            async with asyncio.timeout(10):
                await bus.publish(Event(EventType.CANDLE_UPDATE, {}))
        self.assertIn("gave up reconnecting", str(cm.exception))
        # Explicit reconnect still works once the sidecar is back.
        await asyncio.to_thread(self.sidecar.start)
        await bus.reconnect()
        self.assertEqual(await bus.publish(Event(EventType.CANDLE_UPDATE, {})), Outcome.ACCEPTED)

    async def test_consumer_without_reconnect_ends_run_with_connection_error(self):
        sub = await self.connect()
        sub.subscribe("data", lambda e: None)
        task = asyncio.create_task(sub.run())
        await sub.wait_consuming()
        await asyncio.to_thread(self.sidecar.kill)
        with self.assertRaises(ConnectionError):
            async with asyncio.timeout(10):
                await task

    async def test_consumer_with_reconnect_resubscribes(self):
        sub = await self.connect(reconnect=FAST)
        got: list[int] = []
        sub.subscribe(EventType.ORDER_PLACED, lambda e: got.append(e.data["i"]))
        self.run_bus(sub)
        await sub.wait_consuming()
        pub = await self.connect(reconnect=FAST)
        await pub.publish(Event(EventType.ORDER_PLACED, {"i": 1}), queue_name="order")
        await self.eventually(lambda: got == [1], "first order handled")

        await asyncio.to_thread(self.sidecar.kill)
        await asyncio.to_thread(self.sidecar.start)
        async with asyncio.timeout(10):
            await pub.publish(Event(EventType.ORDER_PLACED, {"i": 2}), queue_name="order")
        await self.eventually(lambda: got == [1, 2], "order published after the restart handled")


class TestConnectionLimit(SidecarTestCase):
    CONFIG = SHORT_CONFIG + "max_connections: 1\n"

    async def admitted_connection(self, what: str) -> EventBus:
        """Connect once the sidecar has a free slot: a connection that just
        closed (such as the start-up probe's) holds its slot until the
        sidecar has seen it close."""
        admitted: list[EventBus] = []

        async def connects() -> bool:
            try:
                admitted.append(await EventBus.connect(self.sidecar.socket))
            except TooManyConnectionsError:
                return False
            return True

        await self.eventually(connects, what)
        self.addAsyncCleanup(admitted[0].close)
        return admitted[0]

    async def test_connection_over_the_limit_raises_too_many_connections(self):
        first = await self.admitted_connection("the first connection admitted")
        with self.assertRaises(TooManyConnectionsError) as cm:
            await EventBus.connect(self.sidecar.socket)
        err = cm.exception
        self.assertIsInstance(err, ConnectionError)
        self.assertIn(f"eventbus sidecar at {self.sidecar.socket} refused the connection", str(err))
        self.assertIn("too many connections", str(err))
        self.assertIn("at most 1 at once", str(err))
        self.assertIn("was not processed", str(err))
        # The admitted client is unaffected.
        self.assertEqual(await first.publish(Event(EventType.CANDLE_UPDATE, {})), Outcome.ACCEPTED)

        # Once the sidecar has closed the first connection, the next is admitted.
        await first.close()
        second = await self.admitted_connection("a connection admitted after the first one closed")
        self.assertEqual(await second.publish(Event(EventType.CANDLE_UPDATE, {})), Outcome.ACCEPTED)


if __name__ == "__main__":
    unittest.main()
