"""The client in asyncio debug mode, which IsolatedAsyncioTestCase turns on.

Debug mode records the creation stack of every Future and callback handle,
which costs more than the rest of a publish; the client must not add records
of its own per request (applications' test suites publish in this mode).
A scripted server in the test answers every publish "accepted".
"""

from __future__ import annotations

import asyncio
import unittest
from asyncio import format_helpers
from unittest import mock

from eventbus_sidecar import Event, EventBus, EventType, Outcome, connection
from eventbus_sidecar.client import _Inbox
from eventbus_sidecar.connection import Connection

from .test_msg_id import ScriptedSidecar


class TestDebugMode(unittest.IsolatedAsyncioTestCase):
    async def test_requests_record_no_creation_stack(self):
        # Neither the reply futures nor the handles made in the client's
        # dispatch (waking their waiters) and writes (flushing a batch) may
        # walk the stack, and stat its source files, per request.
        self.assertTrue(asyncio.get_running_loop().get_debug(), "the test needs debug mode")
        server = ScriptedSidecar(lambda number, frame: {"status": "accepted"})
        await server.start()
        self.addAsyncCleanup(server.close)
        bus = await EventBus.connect(server.path)
        self.addAsyncCleanup(bus.close)

        futures: list[asyncio.Future] = []
        send_body = Connection.send_body

        def recording(conn: Connection, *args, **kwargs):
            req_id, fut = send_body(conn, *args, **kwargs)
            futures.append(fut)
            return req_id, fut

        client_code = {Connection._dispatch.__code__, Connection._write.__code__}
        client_stacks = 0
        extract_stack = format_helpers.extract_stack

        def counting(f=None, limit=None):
            nonlocal client_stacks
            frame = f
            while frame is not None:
                if frame.f_code in client_code:
                    client_stacks += 1
                    break
                frame = frame.f_back
            return extract_stack(f, limit)

        # (name, publishes in flight, quiet handles available): without
        # them (a Python whose Handle differs) every wake-up is call_soon's,
        # which records its stack.
        cases = [
            ("awaited one by one", 1, True),
            ("pipelined", 20, True),
            ("awaited one by one, call_soon fallback", 1, False),
            ("pipelined, call_soon fallback", 20, False),
        ]
        with (
            mock.patch.object(Connection, "send_body", recording),
            mock.patch.object(format_helpers, "extract_stack", counting),
        ):
            for name, concurrent, quiet in cases:
                with self.subTest(name), mock.patch.object(connection, "_QUIET_HANDLES", quiet):
                    futures.clear()
                    client_stacks = 0
                    outcomes = await asyncio.gather(
                        *(bus.publish(Event(EventType.CANDLE_UPDATE, {"i": i})) for i in range(concurrent))
                    )
                    self.assertEqual(outcomes, [Outcome.ACCEPTED] * concurrent)
                    self.assertEqual(len(futures), concurrent)
                    for fut in futures:
                        self.assertIsNone(fut._source_traceback)
                    if quiet:
                        self.assertEqual(client_stacks, 0, "handles that recorded a stack")
                    else:
                        self.assertGreaterEqual(client_stacks, concurrent, "handles that recorded a stack")

    def test_quiet_wake_ups_only_with_the_handle_they_were_written_for(self):
        self.assertTrue(connection._quiet_handles_work())

        def other_shape(self, callback, args, loop, context, extra):
            pass

        def other_attributes(self, callback, args, loop, context=None):
            raise AttributeError("'_NoDebug' object has no attribute 'get_debug_level'")

        for name, init in [("other arguments", other_shape), ("other attributes", other_attributes)]:
            with self.subTest(name), mock.patch.object(asyncio.Handle, "__init__", init):
                self.assertFalse(connection._quiet_handles_work())

    async def test_a_consumer_waiting_for_deliveries_records_no_creation_stack(self):
        self.assertTrue(asyncio.get_running_loop().get_debug(), "the test needs debug mode")
        inbox = _Inbox(4)
        for delivery in ({"seq": 1}, {"seq": 2}):
            with self.subTest(seq=delivery["seq"]):
                waiting = asyncio.ensure_future(inbox.wait())
                await asyncio.sleep(0)
                self.assertIsNotNone(inbox._waiter)
                self.assertIsNone(inbox._waiter._source_traceback)
                inbox.put(delivery)
                await waiting
                self.assertIs(inbox.take(), delivery)


if __name__ == "__main__":
    unittest.main()
