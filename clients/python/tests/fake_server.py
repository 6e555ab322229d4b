"""A Unix-socket server for tests that must control the exact bytes the
client receives (what the real sidecar rarely or never sends)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile


class FakeServer:
    """Serves each connection with ``handle(reader, writer)`` on a socket
    in a fresh temporary directory; a connection error ends the handler,
    and close() closes every connection and removes the directory."""

    def __init__(self, name: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="eventbus-py-", dir="/tmp")
        self.path = os.path.join(self.dir, name)
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
