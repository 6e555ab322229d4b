"""msg_id: every publish carries one, and a retried publish carries the same.

The retry tests need a connection that breaks right after the sidecar has
read a publish, and must see the bytes the client sends again; a small
asyncio Unix-socket server in the test plays the sidecar's part of the
protocol for that (stats, publish). The rest runs against the real sidecar,
which accepts msg_id whether or not it deduplicates yet.
"""

from __future__ import annotations

import asyncio
import json
import unittest

from eventbus_sidecar import Backoff, Event, EventBus, EventType, Outcome, PublishLostError

from .fake_server import FakeServer
from .helpers import SidecarTestCase

FAST = Backoff(initial=0.01, maximum=0.05, multiplier=2.0)

_QUEUE_STATS = {"size": 0, "maxsize": 50, "drops": 0, "policy": "block", "timeout_seconds": 0}


class ScriptedSidecar(FakeServer):
    """A Unix-socket server that answers stats and handles each connection's
    publishes with ``on_publish(connection_number, frame)``: a reply dict to
    send, or None to close the connection without replying."""

    def __init__(self, on_publish) -> None:
        super().__init__("scripted.sock")
        self.on_publish = on_publish
        self.publishes: list[tuple[int, dict]] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        while line := await reader.readline():
            frame = json.loads(line)
            if frame["op"] == "stats":
                reply = {"id": frame["id"], "status": "ok", "stats": {"data": _QUEUE_STATS, "order": _QUEUE_STATS}}
            elif frame["op"] == "publish":
                self.publishes.append((number, frame))
                reply = self.on_publish(number, frame)
                if reply is None:
                    break
                reply = {"id": frame["id"], **reply}
            else:
                reply = {"id": frame.get("id"), "status": "ok"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()


def drop_first_connection(answer: dict):
    """Close the first connection after reading its publish; answer later ones."""

    def on_publish(number: int, frame: dict) -> dict | None:
        return None if number == 1 else answer

    return on_publish


class TestRetriedPublish(unittest.IsolatedAsyncioTestCase):
    async def scripted(self, on_publish) -> ScriptedSidecar:
        server = ScriptedSidecar(on_publish)
        await server.start()
        self.addAsyncCleanup(server.close)
        return server

    async def test_retry_after_a_dropped_connection_carries_the_same_msg_id(self):
        server = await self.scripted(drop_first_connection({"status": "accepted", "duplicate": True}))
        bus = await EventBus.connect(server.path, reconnect=FAST, retry_publishes=True)
        self.addAsyncCleanup(bus.close)
        async with asyncio.timeout(10):
            outcome = await bus.publish(Event(EventType.ORDER_PLACED, {"qty": 1}), queue_name="order")
        self.assertIs(outcome, Outcome.DUPLICATE)
        self.assertTrue(outcome.duplicate)
        self.assertEqual([n for n, _ in server.publishes], [1, 2])
        first, retry = server.publishes[0][1], server.publishes[1][1]
        self.assertTrue(first["msg_id"])
        self.assertEqual(retry["msg_id"], first["msg_id"])
        # The same event, with the new connection's own id.
        self.assertEqual({k: v for k, v in retry.items() if k != "id"}, {k: v for k, v in first.items() if k != "id"})

    async def test_retry_of_a_publish_that_never_got_in_is_accepted(self):
        server = await self.scripted(drop_first_connection({"status": "accepted"}))
        bus = await EventBus.connect(server.path, reconnect=FAST, retry_publishes=True)
        self.addAsyncCleanup(bus.close)
        async with asyncio.timeout(10):
            outcome = await bus.publish(
                Event(EventType.ORDER_PLACED, {"qty": 1}), queue_name="order", msg_id="order-42"
            )
        self.assertIs(outcome, Outcome.ACCEPTED)
        self.assertFalse(outcome.duplicate)
        self.assertEqual([f["msg_id"] for _, f in server.publishes], ["order-42", "order-42"])

    async def test_reconnect_alone_retries_with_the_same_msg_id(self):
        server = await self.scripted(drop_first_connection({"status": "accepted", "duplicate": True}))
        bus = await EventBus.connect(server.path, reconnect=FAST)
        self.addAsyncCleanup(bus.close)
        async with asyncio.timeout(10):
            outcome = await bus.publish(Event(EventType.ORDER_PLACED, {"qty": 1}), queue_name="order")
        self.assertIs(outcome, Outcome.DUPLICATE)
        self.assertEqual(len({f["msg_id"] for _, f in server.publishes}), 1, server.publishes)
        self.assertEqual(len(server.publishes), 2)

    async def test_without_retry_publishes_a_lost_publish_names_its_msg_id(self):
        for caller_id in (None, "order-7"):
            with self.subTest(msg_id=caller_id):
                server = await self.scripted(drop_first_connection({"status": "accepted", "duplicate": True}))
                bus = await EventBus.connect(server.path, reconnect=FAST, retry_publishes=False)
                self.addAsyncCleanup(bus.close)
                event = Event(EventType.ORDER_PLACED, {"qty": 1})
                with self.assertRaises(PublishLostError) as cm:
                    async with asyncio.timeout(10):
                        await bus.publish(event, queue_name="order", msg_id=caller_id)
                lost = cm.exception
                self.assertIsInstance(lost, ConnectionError)
                self.assertIn("outcome is unknown", str(lost))
                self.assertEqual(len(server.publishes), 1)
                sent = server.publishes[0][1]["msg_id"]
                self.assertEqual(lost.msg_id, sent)
                if caller_id is not None:
                    self.assertEqual(sent, caller_id)
                self.assertIn(repr(sent), str(lost))
                # The caller's own retry with that msg_id is answered as a duplicate.
                async with asyncio.timeout(10):
                    outcome = await bus.publish(event, queue_name="order", msg_id=lost.msg_id)
                self.assertIs(outcome, Outcome.DUPLICATE)
                self.assertEqual(server.publishes[1][1]["msg_id"], sent)

    async def test_every_publish_gets_its_own_msg_id(self):
        server = await self.scripted(lambda n, f: {"status": "accepted"})
        a = await EventBus.connect(server.path)
        self.addAsyncCleanup(a.close)
        b = await EventBus.connect(server.path)
        self.addAsyncCleanup(b.close)
        for bus in (a, b, a, b):
            await bus.publish(Event(EventType.CANDLE_UPDATE, {}))
        await asyncio.gather(*(a.publish(Event(EventType.CANDLE_UPDATE, {})) for _ in range(20)))
        ids = [f["msg_id"] for _, f in server.publishes]
        self.assertEqual(len(ids), 24)
        self.assertEqual(len(set(ids)), 24, ids)
        for msg_id in ids:
            self.assertIsInstance(msg_id, str)
            self.assertLessEqual(len(msg_id.encode()), 256)

    async def test_retry_publishes_needs_reconnect(self):
        with self.assertRaises(ValueError) as cm:
            EventBus("/nonexistent.sock", retry_publishes=True)
        self.assertIn("reconnect", str(cm.exception))


class TestMsgIdWithSidecar(SidecarTestCase):
    async def test_caller_msg_id_is_accepted(self):
        bus = await self.connect()
        outcome = await bus.publish(Event(EventType.CANDLE_UPDATE, {}), msg_id="candle-ü-1")
        self.assertIn(outcome, (Outcome.ACCEPTED, Outcome.DUPLICATE))

    async def test_bad_msg_ids_are_refused_before_sending(self):
        bus = await self.connect()
        for bad, error in (("", ValueError), ("x" * 257, ValueError), ("é" * 129, ValueError), (42, TypeError)):
            with self.subTest(msg_id=bad):
                with self.assertRaises(error) as cm:
                    await bus.publish(Event(EventType.CANDLE_UPDATE, {}), msg_id=bad)  # type: ignore[arg-type]
                self.assertIn("msg_id", str(cm.exception))
        self.assertEqual(await bus.publish(Event(EventType.CANDLE_UPDATE, {}), msg_id="x" * 256), Outcome.ACCEPTED)
        self.assertEqual((await bus.get_queue_stats())["data"]["size"], 1)


if __name__ == "__main__":
    unittest.main()
