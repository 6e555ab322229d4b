"""One NDJSON connection to the sidecar.

Requests are written as one line each and may be pipelined: every request
gets a fresh id, and a single read task matches replies to waiting futures by
that id, whatever order they come back in. Deliveries (``"op":"deliver"``)
are handed to a callback. When the connection ends, for whatever reason,
every request still waiting fails with a ``ConnectionError`` naming the
request, because the client cannot know what the sidecar did with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from .errors import ProtocolError, TooManyConnectionsError

# Lines the sidecar sends are at most its frame limit plus delivery metadata;
# the reader's limit only has to be comfortably larger.
READ_LIMIT = 16 << 20

# The code of the one frame, without id, that a connection over the
# sidecar's connection limit gets before the sidecar closes it.
_TOO_MANY_CONNECTIONS = "too_many_connections"

_DeliverCallback = Callable[[dict], None]


def encode(frame: dict) -> bytes:
    """One frame as a UTF-8 JSON line.

    NaN and infinities are refused (ValueError) because they are not JSON and
    the sidecar would reject the whole line.
    """
    return (
        json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        + "\n"
    ).encode("utf-8")


def _retrieve(fut: asyncio.Future) -> None:
    # Marks a failed future's exception as retrieved so that requests nobody
    # awaits any more (their caller was cancelled) do not log "exception was
    # never retrieved" when the connection drops.
    if not fut.cancelled():
        fut.exception()


class Connection:
    """A connected socket with a read task. Create it with :meth:`open`."""

    def __init__(
        self,
        path: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_deliver: _DeliverCallback | None,
        logger: logging.Logger,
    ) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._on_deliver = on_deliver
        self._log = logger
        self._next_id = 1
        self._pending: dict[int, tuple[asyncio.Future, str]] = {}
        loop = asyncio.get_running_loop()
        # Resolved (never failed) with the ConnectionError that ended the
        # connection, so that owners can react to the loss.
        self.lost: asyncio.Future[ConnectionError] = loop.create_future()
        self._closing = False
        # The sidecar's message when it turned this connection away.
        self._refusal: str | None = None
        self._read_task = loop.create_task(self._read_loop(), name=f"eventbus-read {path}")

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        timeout: float,
        on_deliver: _DeliverCallback | None = None,
        logger: logging.Logger,
    ) -> "Connection":
        """Connect to the sidecar's socket; ConnectionError if that fails."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=READ_LIMIT)
        except TimeoutError as e:
            raise ConnectionError(
                f"cannot connect to eventbus sidecar at {path}: no answer within {timeout}s"
            ) from e
        except OSError as e:
            raise ConnectionError(
                f"cannot connect to eventbus sidecar at {path}: {e.strerror or e}"
            ) from e
        return cls(path, reader, writer, on_deliver, logger)

    @property
    def is_lost(self) -> bool:
        """True once the connection has ended."""
        return self.lost.done()

    def _check_open(self) -> None:
        if self.lost.done():
            lost = self.lost.result()
            raise type(lost)(str(lost))
        if self._closing:
            raise ConnectionError(f"connection to eventbus sidecar at {self.path} is closed")

    def send(
        self, frame: dict, what: str, max_bytes: int | None = None
    ) -> tuple[int, asyncio.Future]:
        """Assign an id to a request, register its reply future and write it.

        ``what`` names the request in the error raised if the connection is
        lost before the reply ("publish to 'order'"). The line is buffered at
        once, so requests from concurrent coroutines are never interleaved;
        call :meth:`drain` to wait for the socket to take it. A line longer
        than ``max_bytes`` (without its newline) raises ValueError and is not
        sent: the sidecar would answer it by closing the connection.
        """
        self._check_open()
        req_id = self._next_id
        line = encode({**frame, "id": req_id})
        if max_bytes is not None and len(line) - 1 > max_bytes:
            raise ValueError(
                f"{what} is {len(line) - 1} bytes on the wire, over the sidecar's "
                f"frame limit of {max_bytes} bytes"
            )
        self._next_id += 1
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._pending[req_id] = (fut, what)
        self._writer.write(line)
        return req_id, fut

    def send_oneway(self, frame: dict) -> None:
        """Write a frame that gets no reply (ack, nack)."""
        self._check_open()
        self._writer.write(encode(frame))

    def forget(self, req_id: int) -> None:
        """Stop waiting for a reply; a late one is then ignored."""
        self._pending.pop(req_id, None)

    async def drain(self) -> None:
        """Wait until the socket's write buffer is below its high-water mark."""
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            # The read task notices the loss too and fails the pending calls.
            raise ConnectionError(
                f"connection to eventbus sidecar at {self.path} lost: {e}"
            ) from e

    async def request(self, frame: dict, what: str) -> dict:
        """Send a request and wait for its reply."""
        req_id, fut = self.send(frame, what)
        try:
            await self.drain()
            return await fut
        finally:
            self.forget(req_id)

    async def _read_loop(self) -> None:
        reason = "closed by the sidecar"
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    reason = "closed by the sidecar in the middle of a line"
                    break
                self._dispatch(line)
        except asyncio.CancelledError:
            reason = "closed by the client"
            raise
        except (ConnectionError, OSError) as e:
            reason = f"socket error: {e}"
        except ValueError as e:
            # StreamReader.readline raises ValueError for a line over the limit.
            reason = f"line longer than {READ_LIMIT} bytes from the sidecar: {e}"
        except ProtocolError as e:
            reason = str(e)
        finally:
            if self._closing:
                reason = "closed by the client"
            self._fail_all(reason)
            self._writer.close()

    def _dispatch(self, line: bytes) -> None:
        try:
            frame: Any = json.loads(line)
        except ValueError as e:
            raise ProtocolError(f"sidecar sent a line that is not JSON: {line[:200]!r}") from e
        if not isinstance(frame, dict):
            raise ProtocolError(f"sidecar sent a JSON value that is not an object: {line[:200]!r}")
        if frame.get("op") == "deliver":
            if self._on_deliver is None:
                self._log.warning("eventbus: unexpected delivery on a publish connection: %s", line[:200])
                return
            self._on_deliver(frame)
            return
        req_id = frame.get("id")
        entry = self._pending.pop(req_id, None) if isinstance(req_id, int) else None
        if entry is not None:
            fut, _ = entry
            if not fut.done():
                fut.set_result(frame)
            return
        if frame.get("status") == "error" and frame.get("code") == _TOO_MANY_CONNECTIONS:
            # The end of the connection follows; _fail_all reports it.
            self._refusal = str(frame.get("error") or "too many connections")
            return
        if frame.get("status") == "error":
            # Errors about frames without an id (ack, nack) or about a request
            # nobody waits for any more.
            self._log.warning("eventbus sidecar at %s reported: %s", self.path, frame.get("error"))

    def _fail_all(self, reason: str) -> None:
        if self.lost.done():
            return
        error: type[ConnectionError] = ConnectionError
        message = f"connection to eventbus sidecar at {self.path} lost: {reason}"
        outcome = "got no reply, its outcome is unknown"
        if self._refusal is not None:
            # The sidecar closes a refused connection without reading it, so
            # here the outcome is known.
            error = TooManyConnectionsError
            message = f"eventbus sidecar at {self.path} refused the connection: {self._refusal}"
            outcome = "was not processed"
        pending, self._pending = self._pending, {}
        for req_id, (fut, what) in pending.items():
            if not fut.done():
                fut.set_exception(error(f"{message}; {what} (request {req_id}) {outcome}"))
        self.lost.set_result(error(message))

    async def close(self) -> None:
        """Close the socket; waiting requests fail with ConnectionError."""
        self._closing = True
        self._writer.close()
        self._read_task.cancel()
        try:
            await self._read_task
        except asyncio.CancelledError:
            if not self._read_task.cancelled():
                raise
        # A read task cancelled before it ever ran has not failed anything.
        self._fail_all("closed by the client")
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
