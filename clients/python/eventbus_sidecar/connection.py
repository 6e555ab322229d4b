"""One NDJSON connection to the sidecar, as an asyncio.Protocol.

Requests are written as one line each and may be pipelined: every request
gets a fresh id, and replies are matched to waiting futures by that id in
``data_received``, whatever order they come back in, without a reader task.
Deliveries (``"op":"deliver"``) are handed to a callback. When the connection
ends, for whatever reason, every request still waiting fails with a
``ConnectionError`` naming the request, because the client cannot know what
the sidecar did with it.

Writes are coalesced: a request made while nothing else is in flight is
written at once (the lowest latency for a caller that awaits each reply);
otherwise frames are buffered and written together once per event-loop
iteration, so many coroutines publishing at once cost one system call per
batch instead of one per frame.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
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

# Frames are compact UTF-8 JSON. NaN and infinities are refused
# (ValueError) because they are not JSON and the sidecar would reject the
# whole line.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _default(o: object) -> Any:
    return _ENCODER.default(o)


def _make_encode() -> Callable[[Any], str]:
    # JSONEncoder.encode builds a new C encoder on every call; one built
    # once and reused costs a third less per payload. Without the circular
    # check (whose state a reused encoder could not reset after an error), a
    # self-referencing value hits the recursion limit instead; it is turned
    # into the ValueError JSONEncoder raises.
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:
        return _ENCODER.encode
    c_encode = make(None, _default, basestring, None, ":", ",", False, False, False)
    join = "".join

    def encode_json(value: Any) -> str:
        try:
            return join(c_encode(value, 0))
        except RecursionError as e:
            raise ValueError(f"cannot encode a self-referencing value as JSON: {e}") from e

    return encode_json


encode_json = _make_encode()
"""A value as compact JSON text, as the sidecar expects it."""

_DECODER = json.JSONDecoder()
_decode = _DECODER.decode

# In asyncio debug mode (which unittest.IsolatedAsyncioTestCase turns on)
# every Future records the stack it was created on, to show it should the
# Future's exception never be retrieved, and every callback handle records
# the stack it was made on: each record walks up to 10 frames and stats the
# source files on them, several times the cost of everything else a publish
# does. The client's per-event futures (replies, a consumer's wait for
# deliveries) never leave it, and their exceptions are always retrieved (by
# the awaiting caller, or by _fail_all and rewait for a caller that went
# away), so that record would never be shown; nor would the stacks of the
# handles that wake their waiters or flush a batch of writes, which are
# always the client's own dispatch and writes. In debug mode the futures
# are therefore pure-Python Futures that do not record it, and those
# handles do not record theirs; outside debug mode the C Future and
# call_soon are the faster ones.


class _NoDebug:
    """A loop stand-in for Handle.__init__ that says debug is off."""

    @staticmethod
    def get_debug() -> bool:
        return False


_NO_DEBUG = _NoDebug()


class _QuietHandle(asyncio.Handle):
    """A Handle that does not record its creation stack."""

    __slots__ = ()

    def __init__(self, callback: Any, args: Any, loop: Any, context: Any) -> None:
        super().__init__(callback, args, _NO_DEBUG, context)  # type: ignore[arg-type]
        self._loop = loop


def _quiet_handles_work() -> bool:
    # Handle is asyncio's own; should a later Python change it in any way
    # this can see, the client falls back to call_soon.
    try:
        handle = _QuietHandle(int, (), _NO_DEBUG, contextvars.copy_context())
        return handle._source_traceback is None and handle._loop is _NO_DEBUG
    except Exception:
        return False


_QUIET_HANDLES = _quiet_handles_work()


def call_soon_quiet(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., object], args: tuple, context: Any = None
) -> None:
    """loop.call_soon(callback, *args) without a creation stack (see above).

    Outside debug mode, on a loop without asyncio's deque of ready handles,
    a closed loop or a Python whose Handle differs, it is call_soon itself.
    """
    ready = getattr(loop, "_ready", None) if _QUIET_HANDLES and loop.get_debug() else None
    if type(ready) is not collections.deque or loop.is_closed():
        loop.call_soon(callback, *args, context=context)
        return
    ready.append(_QuietHandle(callback, args, loop, context))


_PyFuture: Any = getattr(asyncio.futures, "_PyFuture", None)

if _PyFuture is not None:

    class _ReplyFuture(_PyFuture):  # type: ignore[misc, valid-type]
        """asyncio's pure-Python Future, without the creation stack."""

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            # Future.__init__ but for the stack: the rest of the state is
            # class attributes of Future.
            self._loop = loop
            self._callbacks = []

        def _Future__schedule_callbacks(self) -> None:
            # Future's own, but for handles without a creation stack.
            callbacks = self._callbacks
            if not callbacks:
                return
            self._callbacks = []
            for callback, ctx in callbacks:
                call_soon_quiet(self._loop, callback, (self,), ctx)


def internal_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """A Future for the client's own per-event waits (see above)."""
    if _PyFuture is not None and loop.get_debug():
        return _ReplyFuture(loop)
    return loop.create_future()


def encode(frame: dict) -> bytes:
    """One frame as a UTF-8 JSON line."""
    return (encode_json(frame) + "\n").encode("utf-8")


class Connection(asyncio.Protocol):
    """A connected socket. Create it with :meth:`open`."""

    def __init__(
        self,
        path: str,
        on_deliver: _DeliverCallback | None,
        logger: logging.Logger,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.path = path
        self._on_deliver = on_deliver
        self._log = logger
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._next_id = 1
        self._pending: dict[int, tuple[asyncio.Future, str]] = {}
        # Replies that arrived after their caller was cancelled, kept until
        # the caller (withdrawing a publish) or forget() collects them.
        self._late: dict[int, dict] = {}
        self._partial = b""
        self._out: list[bytes] = []
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        # Resolved (never failed) with the ConnectionError that ended the
        # connection, so that owners can react to the loss.
        self.lost: asyncio.Future[ConnectionError] = loop.create_future()
        self._transport_closed: asyncio.Future[None] = loop.create_future()
        self._closing = False
        self._reason: str | None = None
        # The sidecar's message when it turned this connection away.
        self._refusal: str | None = None

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
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_unix_connection(
                    lambda: cls(path, on_deliver, logger, loop), path
                )
        except TimeoutError as e:
            raise ConnectionError(
                f"cannot connect to eventbus sidecar at {path}: no answer within {timeout}s"
            ) from e
        except OSError as e:
            raise ConnectionError(
                f"cannot connect to eventbus sidecar at {path}: {e.strerror or e}"
            ) from e
        return conn

    # ------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        try:
            if end:
                self._dispatch_all(data[:end] if end < len(data) else data)
            if len(self._partial) > READ_LIMIT:
                raise ProtocolError(f"line longer than {READ_LIMIT} bytes from the sidecar")
        except ProtocolError as e:
            self._abort(str(e))

    def _dispatch_all(self, chunk: bytes) -> None:
        """Dispatch every line of a chunk that ends with a newline."""
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"sidecar sent a line that is not UTF-8: {e}") from e
        lines = text.split("\n")
        lines.pop()
        if len(lines) == 1:
            frames = [self._parse(lines[0])] if lines[0].strip() else []
        else:
            try:
                # One decoder call for the whole chunk instead of one per
                # line; a chunk that does not parse as a list (an empty or
                # broken line) goes line by line to find and report it.
                frames = _decode("[" + ",".join(lines) + "]")
            except ValueError:
                frames = [self._parse(line) for line in lines if line.strip()]
        dispatch = self._dispatch
        for frame in frames:
            dispatch(frame)

    def _parse(self, line: str) -> Any:
        try:
            frame = _decode(line)
        except ValueError as e:
            raise ProtocolError(f"sidecar sent a line that is not JSON: {line[:200]!r}") from e
        return frame

    def eof_received(self) -> bool:
        if self._partial:
            self._reason = "closed by the sidecar in the middle of a line"
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closing:
            reason = "closed by the client"
        elif self._reason is not None:
            reason = self._reason
        elif exc is not None:
            reason = f"socket error: {exc}"
        else:
            reason = "closed by the sidecar"
        self._out.clear()
        self._fail_all(reason)
        self._wake_drainers()
        if not self._transport_closed.done():
            self._transport_closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drainers()

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _abort(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason
        if self._transport is not None:
            self._transport.abort()

    def _dispatch(self, frame: Any) -> None:
        if type(frame) is not dict:
            raise ProtocolError(f"sidecar sent a JSON value that is not an object: {str(frame)[:200]!r}")
        req_id = frame.get("id")
        if req_id is None and frame.get("op") == "deliver":
            if self._on_deliver is None:
                self._log.warning("eventbus: unexpected delivery on a publish connection: %.200r", frame)
                return
            self._on_deliver(frame)
            return
        entry = self._pending.pop(req_id, None) if type(req_id) is int else None
        if entry is not None:
            fut = entry[0]
            if not fut.done():
                fut.set_result(frame)
            elif fut.cancelled():
                self._late[req_id] = frame
            return
        if frame.get("status") == "error" and frame.get("code") == _TOO_MANY_CONNECTIONS:
            # The end of the connection follows; _fail_all reports it.
            self._refusal = str(frame.get("error") or "too many connections")
            return
        if frame.get("status") == "error":
            # Errors about frames without an id (ack, nack) or about a request
            # nobody waits for any more.
            self._log.warning("eventbus sidecar at %s reported: %s", self.path, frame.get("error"))

    # ------------------------------------------------------------- writing

    def _write(self, data: bytes, batch: bool) -> None:
        out = self._out
        if out:
            out.append(data)
        elif batch:
            out.append(data)
            call_soon_quiet(self._loop, self._flush, ())
        else:
            self._transport.write(data)  # type: ignore[union-attr]

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # ------------------------------------------------------------- callers

    @property
    def is_lost(self) -> bool:
        """True once the connection has ended."""
        return self.lost.done()

    @property
    def write_paused(self) -> bool:
        """True while the socket's write buffer is over its high-water mark."""
        return self._write_paused

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
        body = encode_json(frame)
        return self.send_body((body[:-1] + ',"id":').encode("utf-8"), what, max_bytes)

    def send_body(
        self, body: bytes, what: str, max_bytes: int | None = None
    ) -> tuple[int, asyncio.Future]:
        """:meth:`send` for a frame already encoded up to its id.

        ``body`` is a JSON object without its closing brace, ending in
        ``"id":``, so that a request can be sent again on another connection
        with that connection's id without encoding it again.
        """
        if self._closing or self.lost.done():
            self._check_open()
        req_id = self._next_id
        line = b"%b%d}\n" % (body, req_id)
        if max_bytes is not None and len(line) - 1 > max_bytes:
            raise ValueError(
                f"{what} is {len(line) - 1} bytes on the wire, over the sidecar's "
                f"frame limit of {max_bytes} bytes"
            )
        self._next_id = req_id + 1
        fut = internal_future(self._loop)
        pending = self._pending
        pending[req_id] = (fut, what)
        # Alone in flight: write now, a caller awaiting each reply gains a
        # loop iteration. Otherwise join the batch of this iteration.
        self._write(line, len(pending) > 1)
        return req_id, fut

    def send_oneway(self, frame: dict | bytes) -> None:
        """Write a frame that gets no reply (ack, nack): a dict, or an encoded line."""
        self._check_open()
        self._write(frame if type(frame) is bytes else encode(frame), True)  # type: ignore[arg-type]

    def forget(self, req_id: int) -> None:
        """Stop waiting for a reply; a late one is then ignored."""
        self._pending.pop(req_id, None)
        if self._late:
            self._late.pop(req_id, None)

    def rewait(self, req_id: int, what: str) -> asyncio.Future:
        """A new future for the reply to ``req_id``, whose first waiter was
        cancelled; already resolved if the reply came in the meantime."""
        fut = self._loop.create_future()
        late = self._late.pop(req_id, None)
        if late is not None:
            fut.set_result(late)
        elif self.lost.done():
            lost = self.lost.result()
            fut.set_exception(type(lost)(f"{lost}; {what} (request {req_id}) got no reply"))
            fut.exception()
        else:
            self._pending[req_id] = (fut, what)
        return fut

    async def drain(self) -> None:
        """Wait until the socket's write buffer is below its high-water mark."""
        if self._write_paused and not self.lost.done():
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.lost.done():
            raise ConnectionError(f"{self.lost.result()}")

    async def request(self, frame: dict, what: str) -> dict:
        """Send a request and wait for its reply."""
        req_id, fut = self.send(frame, what)
        try:
            if self._write_paused:
                await self.drain()
            return await fut
        finally:
            self.forget(req_id)

    def pause_reading(self) -> None:
        """Stop reading the socket (the owner's buffer is full)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the socket again after :meth:`pause_reading`."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

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
                # Marks the exception retrieved, so that a request nobody
                # awaits any more (its caller was cancelled) logs nothing.
                fut.exception()
        self.lost.set_result(error(message))

    async def close(self) -> None:
        """Close the socket; waiting requests fail with ConnectionError.

        Frames already written (acks, nacks) are sent before the socket
        closes.
        """
        self._closing = True
        self._flush()
        self._fail_all("closed by the client")
        if self._transport is not None:
            self._transport.close()
        try:
            await asyncio.shield(self._transport_closed)
        except (ConnectionError, OSError):
            pass
