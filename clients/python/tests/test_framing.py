"""The client's line parser against byte streams the real sidecar rarely
produces: replies split across reads, several in one read, CRLF endings,
empty lines, unknown ids, and a line that is not JSON.

A raw Unix-socket server in the test writes exactly the bytes each case
needs after the client's stats request.
"""

from __future__ import annotations

import asyncio
import json
import unittest

from eventbus_sidecar import Event, EventBus, EventType, Outcome

from .fake_server import FakeServer

_STATS = {"data": {"size": 0, "maxsize": 5, "drops": 0, "timeout_seconds": 1}}


class RawServer(FakeServer):
    """Answers the first request (stats), then hands every later request
    line to ``script(frame, writer)``, which writes whatever bytes it likes."""

    def __init__(self, script) -> None:
        super().__init__("raw.sock")
        self.script = script

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = json.loads(await reader.readline())
        writer.write(json.dumps({"id": first["id"], "status": "ok", "stats": _STATS}).encode() + b"\n")
        while line := await reader.readline():
            await self.script(json.loads(line), writer)


class TestFraming(unittest.IsolatedAsyncioTestCase):
    async def bus_for(self, script) -> EventBus:
        server = RawServer(script)
        await server.start()
        self.addAsyncCleanup(server.close)
        bus = await EventBus.connect(server.path)
        self.addAsyncCleanup(bus.close)
        return bus

    async def test_replies_split_joined_crlf_and_blank_lines(self):
        held: list[dict] = []

        async def script(frame: dict, writer: asyncio.StreamWriter) -> None:
            held.append(frame)
            if len(held) < 3:
                return
            # Three replies, out of order, in awkward pieces: one split in
            # the middle of a multi-byte character, CRLF, blank lines and a
            # reply to an id nobody waits for.
            a, b, c = (f["id"] for f in held)
            data = (
                f'{{"id":{c},"status":"accepted","note":"ü"}}\r\n\n'
                f'{{"id":999,"status":"accepted"}}\n\r\n'
                f'{{"id":{a},"status":"dropped"}}\n'
                f'{{"id":{b},"status":"accepted","duplicate":true}}\n'
            ).encode()
            cut = data.index("ü".encode()) + 1
            writer.write(data[:cut])
            await writer.drain()
            await asyncio.sleep(0)
            writer.write(data[cut:])
            await writer.drain()

        bus = await self.bus_for(script)
        with self.assertLogs("eventbus_sidecar", "WARNING"):  # the drop is logged
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(bus.publish(Event(EventType.CANDLE_UPDATE, {"i": i})) for i in range(3))), 10
            )
        self.assertEqual(outcomes, [Outcome.DROPPED, Outcome.DUPLICATE, Outcome.ACCEPTED])
        self.assertTrue(bus.connected)

    async def test_a_line_that_is_not_json_ends_the_connection_naming_it(self):
        async def script(frame: dict, writer: asyncio.StreamWriter) -> None:
            writer.write(b'{"id":1,"status":"ok"}\nthis is not json\n')

        bus = await self.bus_for(script)
        with self.assertRaises(ConnectionError) as cm:
            await asyncio.wait_for(bus.publish(Event(EventType.CANDLE_UPDATE, {})), 10)
        self.assertIn("not JSON", str(cm.exception))
        self.assertIn("this is not json", str(cm.exception))
        self.assertFalse(bus.connected)


if __name__ == "__main__":
    unittest.main()
