"""EventBus: the seed's asyncio EventBus API, backed by the sidecar.

A program written against the in-process EventBus of the seed design switches
to the sidecar by changing its constructor::

    bus = EventBus()                                   # before
    bus = await EventBus.connect("/tmp/eventbus-sidecar.sock")   # after

and awaiting ``get_queue_stats()``. ``publish`` keeps the seed's signature and
error behaviour; ``subscribe``/``run``/``stop`` give the seed's handler model
on top of the sidecar's deliveries.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import inspect
import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator

from .connection import Connection, encode_json, internal_future
from .errors import EventBusError, ProtocolError, PublishError, PublishLostError, ShuttingDownError
from .events import Event, EventType, type_name
from .tracing import current_traceparent, enter_delivery, exit_delivery

DEFAULT_SOCKET = "/tmp/eventbus-sidecar.sock"
"""The sidecar's default socket path (also its ``serve --socket`` default)."""

SOCKET_ENV = "EVENTBUS_SOCKET"
"""Environment variable read when no socket path is given (as the sidecar does)."""

DEFAULT_ROUTES: dict[str, str] = {
    EventType.CANDLE_UPDATE.value: "data",
    EventType.CANDLE_CLOSED.value: "data",
    EventType.SIGNAL_GENERATED.value: "signal",
    EventType.ORDER_PLACED.value: "order",
}
"""The seed's routing (its section 6.2), the sidecar's default route table.

``subscribe(event_type, handler)`` consumes the queue an event type is routed
to; pass ``queue=`` when the sidecar's route table differs.
"""

DEFAULT_QUEUE = "data"
"""Where event types without a route go, as in the sidecar's default config."""

_SEED_QUEUES = ("data", "signal", "order")

Handler = Callable[[Event], Awaitable[None] | None]


class Outcome(str, enum.Enum):
    """What happened to a published event that did not raise."""

    ACCEPTED = "accepted"
    """The event is in the queue."""
    DROPPED = "dropped"
    """The queue stayed full past its timeout and the event was discarded by
    design (the ``data`` queue's policy). Logged at WARNING."""
    DUPLICATE = "duplicate"
    """The sidecar had already accepted a publish with this msg_id within
    its dedupe window and did not enqueue the event again: the first one is
    in the queue. Seen when a publish is retried after a lost connection."""

    @property
    def duplicate(self) -> bool:
        """Whether the sidecar answered that it already had this msg_id."""
        return self is Outcome.DUPLICATE


@dataclass(frozen=True)
class Backoff:
    """How to reconnect after the connection to the sidecar is lost.

    Attempts are spaced ``initial``, ``initial*multiplier``, ... seconds apart,
    at most ``maximum``, each with up to ``jitter`` (a fraction) added at
    random so that many clients do not reconnect in lockstep.
    ``max_attempts`` of None retries until :meth:`EventBus.close`.
    """

    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = None

    def delays(self) -> Generator[float, None, None]:
        """The wait before each retry."""
        delay = self.initial
        attempt = 0
        while self.max_attempts is None or attempt < self.max_attempts:
            attempt += 1
            yield delay * (1 + random.uniform(0, self.jitter))
            delay = min(delay * self.multiplier, self.maximum)


_STOP = object()
_LOST = object()


class EventBus:
    """A client of the eventbus sidecar with the seed EventBus's API.

    Create it with ``await EventBus.connect(path)`` or ``async with
    EventBus.connect(path) as bus``. One instance is safe to share between
    any number of coroutines of one event loop: their requests are pipelined
    over one connection and matched to replies by id.

    Args:
        socket_path: the sidecar's Unix socket; default ``$EVENTBUS_SOCKET``
            or ``/tmp/eventbus-sidecar.sock``.
        reconnect: ``None``/``False`` (default) to reconnect only when
            :meth:`reconnect` is called; ``True`` or a :class:`Backoff` to
            reconnect in the background. Either way, calls that were waiting
            when the connection was lost fail with ``ConnectionError``; with
            background reconnection, new calls wait for the new connection.
        prefetch: how many deliveries per queue the sidecar may send before
            this client acks (the consumers of :meth:`run`).
        routes: event type -> queue, used by :meth:`subscribe` to find the
            queue an event type arrives on; defaults to the sidecar's
            default route table.
        connect_timeout: seconds to wait for each connection attempt.
        cancel_timeout: seconds a cancelled publish waits for the sidecar to
            confirm the withdrawal before giving up on knowing.
        max_frame_bytes: the sidecar's request line limit; larger events are
            refused here with ``ValueError`` instead of costing the connection.
        retry_publishes: a publish whose connection is lost before its
            reply waits for the new connection and is sent again with the
            same msg_id (the sidecar answers a repeat ``duplicate`` instead
            of enqueuing it twice), instead of failing with
            ``PublishLostError``. Defaults to on with ``reconnect`` (as the
            Go client's WithReconnect does) and needs it.
        logger: where warnings (drops) and errors (timeouts, handler
            failures) go; default ``logging.getLogger("eventbus_sidecar")``.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        reconnect: bool | Backoff | None = None,
        prefetch: int = 32,
        routes: dict[str, str] | None = None,
        connect_timeout: float = 5.0,
        cancel_timeout: float = 5.0,
        max_frame_bytes: int = 1 << 20,
        retry_publishes: bool | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        if retry_publishes is None:
            retry_publishes = bool(reconnect)
        if retry_publishes and not reconnect:
            raise ValueError(
                "retry_publishes=True needs reconnect=True or a Backoff: a publish "
                "is retried on the connection that replaces a lost one"
            )
        self.socket_path = socket_path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
        if reconnect is True:
            reconnect = Backoff()
        self._backoff: Backoff | None = reconnect or None
        self._prefetch = prefetch
        self._routes = dict(DEFAULT_ROUTES if routes is None else routes)
        self._connect_timeout = connect_timeout
        self._cancel_timeout = cancel_timeout
        self._max_frame_bytes = max_frame_bytes
        self._retry_publishes = retry_publishes
        # Publish frames up to their payload, and what a publish is called
        # in errors, per (queue, type).
        self._heads: dict[tuple[str | None, str], tuple[str, str]] = {}
        # msg_ids are this random prefix (64 bits: unique across processes
        # in practice) and a counter: far cheaper than a uuid4 per publish.
        self._msg_prefix = f'"{os.urandom(8).hex()}-'
        self._msg_seq = 0
        self.logger = logger or logging.getLogger("eventbus_sidecar")

        self._conn: Connection | None = None
        self._queue_info: dict[str, dict[str, Any]] = {}
        self._closed = False
        self._loss: ConnectionError | None = None
        self._loss_handled: Connection | None = None
        self._reconnecting: asyncio.Task | None = None
        self._drop_count: dict[str, int] = {}

        # Handler registry: by event type name, and by queue (all events).
        self._type_handlers: dict[str, list[Handler]] = {}
        self._queue_handlers: dict[str, list[Handler]] = {}
        self._consume: dict[str, None] = {}  # queues to consume, in order
        self._running = False
        self._stopping = False
        self._consumers: dict[str, _QueueConsumer] = {}
        self._consumer_tasks: dict[str, asyncio.Task] = {}
        self._run_changed: asyncio.Event | None = None
        self._run_done: asyncio.Event | None = None

    # ------------------------------------------------------------------ setup

    @classmethod
    def connect(cls, socket_path: str | None = None, **options: Any) -> "_Connector":
        """Connect to the sidecar: ``await EventBus.connect(path)``.

        The result can also be used as ``async with EventBus.connect(path) as
        bus:``, which closes the bus on exit. ``options`` are the
        constructor's keyword arguments. Raises ``ConnectionError`` when the
        socket cannot be reached, and ``TooManyConnectionsError`` (a
        ``ConnectionError``) when the sidecar already serves as many
        connections as it may.
        """
        return _Connector(cls(socket_path, **options))

    async def __aenter__(self) -> "EventBus":
        if self._conn is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect (once) and learn the sidecar's queues."""
        if self._closed:
            raise ConnectionError("this EventBus was closed; create a new one")
        await self._dial()

    async def _dial(self) -> None:
        """Open a connection, learn the queues on it and make it current."""
        conn = await Connection.open(
            self.socket_path, timeout=self._connect_timeout, logger=self.logger
        )
        try:
            await self._load_queues(conn)
        except BaseException:
            await conn.close()
            raise
        self._install(conn)

    def _install(self, conn: Connection) -> None:
        self._conn = conn
        self._loss = None
        conn.lost.add_done_callback(lambda f, c=conn: self._on_lost(c, f.result()))

    async def _load_queues(self, conn: Connection) -> dict[str, dict[str, Any]]:
        reply = await conn.request({"op": "stats"}, "stats")
        stats = _expect_ok(reply, "stats").get("stats")
        if not isinstance(stats, dict):
            raise ProtocolError(f"stats reply without a stats object: {reply!r}")
        # The seed's queues first, in the seed's order, then the others in the
        # order the sidecar lists them: the sidecar may list its queues
        # sorted by name, and error messages should read like the seed's.
        ordered = [q for q in _SEED_QUEUES if q in stats]
        ordered += [q for q in stats if q not in _SEED_QUEUES]
        self._queue_info = {q: stats[q] for q in ordered}
        self._heads.clear()
        return self._queue_info

    @property
    def queues(self) -> list[str]:
        """The sidecar's queue names, in the order it reports them."""
        return list(self._queue_info)

    @property
    def connected(self) -> bool:
        """Whether the bus has a live connection right now."""
        return self._conn is not None and not self._conn.is_lost

    async def close(self) -> None:
        """Stop consuming (if :meth:`run` is active) and close the connection.

        Calls still waiting for a reply fail with ``ConnectionError``.
        """
        if self._running:
            await self.stop()
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            try:
                await self._reconnecting
            except (asyncio.CancelledError, ConnectionError):
                pass
            self._reconnecting = None
        if self._conn is not None:
            await self._conn.close()

    # ------------------------------------------------------------- reconnect

    def _on_lost(self, conn: Connection, err: ConnectionError) -> None:
        # Runs from the lost future's callback, or earlier from _connection()
        # when a caller notices the loss first; once per connection.
        if conn is not self._conn or self._loss_handled is conn:
            return
        self._loss_handled = conn
        self._loss = err
        if self._closed:
            return
        self.logger.warning("eventbus: %s", err)
        if self._backoff is not None and self._reconnecting is None:
            self._start_reconnecting(self._backoff)

    async def reconnect(self) -> None:
        """Reconnect now if the connection is gone; no-op while it is alive.

        With a :class:`Backoff` configured, retries according to it (or waits
        for the background reconnection already under way); otherwise tries
        once. Raises ``ConnectionError`` if the sidecar cannot be reached.
        """
        if self._closed:
            raise ConnectionError("this EventBus was closed; create a new one")
        if self.connected:
            return
        if self._conn is not None:
            self._on_lost(self._conn, self._conn.lost.result())
        if self._reconnecting is None:
            if self._backoff is None:
                await self._dial_once()
                return
            self._start_reconnecting(self._backoff)
        assert self._reconnecting is not None
        await asyncio.shield(self._reconnecting)

    def _start_reconnecting(self, backoff: Backoff) -> None:
        task = asyncio.get_running_loop().create_task(
            self._reconnect_loop(backoff), name="eventbus-reconnect"
        )
        # Giving up is reported to the callers waiting for the connection
        # (and kept in self._loss); nobody else needs the task's exception.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._reconnecting = task

    async def _dial_once(self) -> None:
        await self._dial()
        self.logger.info("eventbus: reconnected to %s", self.socket_path)

    async def _reconnect_loop(self, backoff: Backoff) -> None:
        try:
            last: Exception | None = None
            for delay in backoff.delays():
                await asyncio.sleep(delay)
                try:
                    await self._dial_once()
                    return
                except (ConnectionError, EventBusError) as e:
                    last = e
                    self.logger.debug("eventbus: reconnect attempt failed: %s", e)
            self._loss = ConnectionError(
                f"gave up reconnecting to eventbus sidecar at {self.socket_path} "
                f"after {backoff.max_attempts} attempts: {last}"
            )
            raise self._loss
        finally:
            self._reconnecting = None

    async def _connection(self) -> Connection:
        """The live connection, waiting for a reconnection under way."""
        while True:
            if self._closed:
                raise ConnectionError("this EventBus was closed; create a new one")
            conn = self._conn
            if conn is not None and not conn.is_lost:
                return conn
            if conn is None:
                raise ConnectionError(
                    f"not connected to eventbus sidecar at {self.socket_path}: "
                    "use `await EventBus.connect(path)` or `async with`"
                )
            self._on_lost(conn, conn.lost.result())
            if self._reconnecting is None:
                raise ConnectionError(
                    f"{self._loss}; call `await bus.reconnect()` or create the bus "
                    "with reconnect=True"
                )
            await asyncio.shield(self._reconnecting)

    # ---------------------------------------------------------------- publish

    async def publish(
        self,
        event: Event,
        queue_name: str | None = "data",
        *,
        traceparent: str | None = None,
        msg_id: str | None = None,
    ) -> Outcome:
        """Publish an event to a queue, with the seed's behaviour per queue.

        Args:
            event: the event; its ``data`` must be JSON-serialisable.
            queue_name: ``'data'`` (default), ``'signal'``, ``'order'`` or any
                queue the sidecar is configured with. ``None`` lets the
                sidecar route by event type.
            traceparent: a W3C traceparent to send; by default the current
                OpenTelemetry span's, when opentelemetry-api is installed.
            msg_id: the publish's idempotency key (a non-empty string of at
                most 256 UTF-8 bytes). By default the client makes one of its
                own, unique across processes. Within the sidecar's dedupe
                window a repeated msg_id is answered ``duplicate`` and not
                enqueued again, so publishing again with the same msg_id
                after a ``ConnectionError`` is safe.

        Returns:
            ``Outcome.ACCEPTED``; ``Outcome.DROPPED`` when a drop-policy
            queue (``data``) stayed full past its timeout (logged at WARNING,
            not raised); ``Outcome.DUPLICATE`` when the sidecar had already
            accepted this msg_id (``outcome.duplicate`` is then true).

        Raises:
            ValueError: unknown queue (``Invalid queue_name 'x'. Must be one
                of: [...]``, listing the sidecar's queues), empty event type,
                a bad msg_id, or an event too large for one frame.
            asyncio.TimeoutError: a fail-policy queue (``signal``) stayed full
                past its timeout; the event was not enqueued.
            PublishLostError: (a ``ConnectionError``) the connection was
                lost before the reply; the outcome is unknown, and publishing
                again with ``msg_id=err.msg_id`` is safe. With ``reconnect``
                (and ``retry_publishes`` left on) the client does that itself
                once it has reconnected instead.
            ShuttingDownError: the sidecar is shutting down (a ConnectionError).
            PublishError: any other refusal, with the sidecar's message.

        A block-policy queue (``order``) waits as long as it takes. Cancelling
        the awaiting task (``asyncio.wait_for``, ``asyncio.timeout``,
        ``task.cancel()``) withdraws the event with the protocol's ``cancel``
        and waits for the sidecar to confirm, so nothing is enqueued behind
        the caller's back.
        """
        if type(event) is not Event and not isinstance(event, Event):
            raise TypeError(f"publish() takes an Event, got {type(event).__name__}")
        tname = event.event_type
        if type(tname) is not str:
            tname = type_name(tname)  # an EventType member: its plain value
        cached = self._heads.get((queue_name, tname))
        head, what = cached if cached is not None else self._publish_head(queue_name, tname)
        if msg_id is None:
            self._msg_seq += 1
            mid = f'{self._msg_prefix}{self._msg_seq:x}"'
        else:
            mid = _encode_msg_id(msg_id)
        tp = traceparent if traceparent is not None else current_traceparent()
        # The payload is the only part encoded per call; the rest comes from
        # the cached head, and the id is appended by the connection.
        if tp:
            body = f'{head}{encode_json(event.data)},"traceparent":{encode_json(tp)},"msg_id":{mid},"id":'
        else:
            body = f'{head}{encode_json(event.data)},"msg_id":{mid},"id":'
        line = body.encode("utf-8")
        conn = self._conn
        while True:
            if conn is None or conn.lost.done() or self._closed:
                conn = await self._connection()
            req_id, fut = conn.send_body(line, what, self._max_frame_bytes)
            try:
                if conn.write_paused:
                    await conn.drain()
                reply = await fut
                break
            except asyncio.CancelledError:
                await self._withdraw(conn, req_id, fut, tname, _where(queue_name, tname))
                raise
            except ConnectionError as e:
                # The connection is gone and with it the reply; the sidecar
                # may or may not have enqueued the event.
                if isinstance(e, ShuttingDownError):
                    raise
                if not self._retry_publishes:
                    if type(e) is not ConnectionError:
                        raise  # a refusal: nothing was sent
                    raw = msg_id if msg_id is not None else json.loads(mid)
                    raise PublishLostError(
                        f"{e}; publishing again with msg_id={raw!r} cannot place it twice", raw
                    ) from e
                self.logger.info(
                    "eventbus: publishing %s again with msg_id %s after: %s", tname, mid, e
                )
                conn = None
        status = reply.get("status")
        if status == "accepted":
            if reply.get("duplicate") is True:
                return Outcome.DUPLICATE
            return Outcome.ACCEPTED
        return await self._publish_outcome(reply, status, tname, queue_name, conn)

    def _publish_head(self, queue_name: str | None, tname: str) -> tuple[str, str]:
        """Validate a (queue, type) pair and cache the start of its frames
        and what its publishes are called in errors."""
        if not tname:
            raise ValueError("event_type must not be empty")
        if queue_name is not None:
            if not isinstance(queue_name, str):
                raise TypeError(f"queue_name must be a str, got {type(queue_name).__name__}")
            if self._queue_info and queue_name not in self._queue_info:
                raise self._invalid_queue(queue_name)
        head = '{"op":"publish",'
        if queue_name is not None:
            head += f'"queue":{encode_json(queue_name)},'
        head += f'"type":{encode_json(tname)},"payload":'
        if len(self._heads) >= _MAX_HEADS:
            self._heads.clear()
        # Only pairs the sidecar's queue list allows are cached, and the
        # cache is dropped when that list is learnt again.
        what = f"publish of {tname} to {_where(queue_name, tname)}"
        if queue_name is None or self._queue_info:
            self._heads[(queue_name, tname)] = (head, what)
        return head, what

    async def _publish_outcome(
        self, reply: dict, status: Any, tname: str, queue_name: str | None, conn: Connection
    ) -> Outcome:
        """The outcome of a publish the sidecar did not simply accept."""
        where = _where(queue_name, tname)
        if status == "dropped":
            queue = reply.get("queue") or queue_name or self._routes.get(tname, DEFAULT_QUEUE)
            n = self._drop_count.get(queue, 0) + 1
            self._drop_count[queue] = n
            self.logger.warning(
                "Dropped %s from %s queue (full, timeout=%ss). Total drops by this client: %d",
                tname, queue, self._timeout_of(queue), n,
            )
            return Outcome.DROPPED
        if status == "timeout":
            queue = reply.get("queue") or queue_name or self._routes.get(tname, DEFAULT_QUEUE)
            message = (
                f"Failed to publish {tname} to {queue} queue "
                f"(timeout={self._timeout_of(queue)}s). System overload!"
            )
            self.logger.error(message)
            raise asyncio.TimeoutError(message)
        if status == "error":
            reason = str(reply.get("error", ""))
            code = _error_code(reply)
            if code == "shutting_down":
                raise ShuttingDownError(
                    f"eventbus sidecar at {self.socket_path} is shutting down; "
                    f"{tname} was not published to {where}"
                )
            if code == "unknown_queue" and queue_name is not None:
                # The sidecar restarted with other queues: learn them again.
                try:
                    await self._load_queues(conn)
                except (ConnectionError, EventBusError):
                    pass
                raise self._invalid_queue(queue_name)
            if code in ("invalid_event", "frame_too_large"):
                raise ValueError(f"sidecar refused {tname}: {reason}")
            raise PublishError(f"sidecar refused {tname} to {where}: {reason}", reason)
        if status == "cancelled":
            # Only a cancel we sent makes the sidecar say this; seeing it here
            # means the sidecar withdrew the publish on its own.
            raise PublishError(f"sidecar withdrew {tname} to {where}", "cancelled")
        raise ProtocolError(f"unexpected publish reply: {reply!r}")

    async def _withdraw(
        self, conn: Connection, req_id: int, fut: asyncio.Future, tname: str, where: str
    ) -> None:
        """Withdraw a cancelled publish and wait for the sidecar's verdict."""
        what = f"publish of {tname} to {where}"
        if fut.cancelled():
            # The caller's cancellation cancelled the reply future too; wait
            # for the reply on a new one (it may already have come).
            fut = conn.rewait(req_id, what)
        if not fut.done():
            try:
                cancel_id, cancel_fut = conn.send({"op": "cancel", "ref": req_id}, "cancel")
            except ConnectionError:
                return  # the connection is gone, and with it the waiting publish
            cancel_fut.add_done_callback(lambda f, i=cancel_id: conn.forget(i))
            try:
                async with asyncio.timeout(self._cancel_timeout):
                    await asyncio.shield(fut)
            except TimeoutError:
                self.logger.error(
                    "eventbus: publish of %s to %s was cancelled, but the sidecar did not "
                    "confirm the withdrawal within %ss",
                    tname, where, self._cancel_timeout,
                )
                return
            except ConnectionError:
                return
            finally:
                conn.forget(req_id)
        if fut.cancelled() or fut.exception() is not None:
            return
        status = fut.result().get("status")
        if status != "cancelled":
            # The sidecar decided before the cancel reached it.
            self.logger.warning(
                "eventbus: publish of %s to %s was cancelled by the caller, but the "
                "sidecar had already answered %r",
                tname, where, status,
            )

    def _invalid_queue(self, queue_name: str) -> ValueError:
        return ValueError(
            f"Invalid queue_name '{queue_name}'. Must be one of: {list(self._queue_info)}"
        )

    def _timeout_of(self, queue: str) -> Any:
        info = self._queue_info.get(queue) or {}
        t = info.get("timeout_seconds")
        return float(t) if isinstance(t, (int, float)) else "?"

    # ------------------------------------------------------------------ stats

    async def get_queue_stats(self) -> dict[str, dict[str, int]]:
        """Per-queue size, maxsize and drops, the seed's shape::

            {'data': {'size': 42, 'maxsize': 1000, 'drops': 5}, ...}

        ``size`` counts events waiting in the queue; events delivered and not
        yet acked are in :meth:`stats`'s ``in_flight``.
        """
        stats = await self.stats()
        return {
            name: {"size": q["size"], "maxsize": q["maxsize"], "drops": q["drops"]}
            for name, q in stats.items()
        }

    async def stats(self) -> dict[str, dict[str, Any]]:
        """Everything the sidecar reports per queue (see docs/protocol.md)."""
        conn = await self._connection()
        return await self._load_queues(conn)

    async def ping(self) -> None:
        """Round-trip to the sidecar; raises ConnectionError if it is gone."""
        conn = await self._connection()
        _expect_ok(await conn.request({"op": "ping"}, "ping"), "ping")

    # -------------------------------------------------------------- consuming

    def subscribe(
        self,
        target: EventType | str,
        handler: Handler,
        *,
        queue: str | None = None,
    ) -> None:
        """Register a handler, the seed's ``subscribe(event_type, handler)``.

        ``target`` is an event type (an :class:`EventType` or a string that is
        not a queue name): the handler gets the events of that type. Or it is
        a queue name: the handler gets every event of that queue. Handlers may
        be plain functions or coroutine functions taking the :class:`Event`.

        The events of a type are consumed from the queue the sidecar routes
        that type to (:data:`DEFAULT_ROUTES`, else ``data``); pass ``queue=``
        when it is another one. Consuming a queue takes all of its events
        (consumers of one queue compete): events no handler here wants are
        acked and skipped, as the in-process bus did with events nobody
        subscribed to.

        Takes effect at the next :meth:`run`, or at once while running.
        """
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        known_queues = self._queue_info or dict.fromkeys(_SEED_QUEUES)
        if isinstance(target, str) and not isinstance(target, EventType) and target in known_queues:
            if queue is not None and queue != target:
                raise ValueError(f"subscribe({target!r}) names a queue; queue={queue!r} contradicts it")
            self._queue_handlers.setdefault(target, []).append(handler)
            consume = target
        else:
            tname = type_name(target)
            if not tname:
                raise ValueError("event_type must not be empty")
            consume = queue or self._routes.get(tname, DEFAULT_QUEUE)
            self._type_handlers.setdefault(tname, []).append(handler)
        if self._queue_info and consume not in self._queue_info:
            raise self._invalid_queue(consume)
        if consume not in self._consume:
            self._consume[consume] = None
            if self._running and not self._stopping:
                self._start_consumer(consume)

    def handlers_for(self, event: Event) -> list[Handler]:
        """The handlers an event is dispatched to: by type, then by queue."""
        return list(self._handlers(event.type_name, event.queue))

    def _handlers(self, tname: str, queue: str | None) -> tuple[Handler, ...]:
        # A tuple: a handler that subscribes another one does not change the
        # list being called for the current event.
        by_type = self._type_handlers.get(tname)
        by_queue = self._queue_handlers.get(queue) if queue is not None else None
        if by_queue is None:
            return tuple(by_type) if by_type else ()
        return (*by_type, *by_queue) if by_type else tuple(by_queue)

    async def run(self) -> None:
        """Consume the subscribed queues until :meth:`stop`.

        One consumer per queue, each with its own connection and the
        configured prefetch; within a queue events are handled one at a time
        in delivery order. Every handler of an event runs even if another
        raised (the error is logged); the event is acked after its handlers
        ran. On :meth:`stop`, deliveries not yet handled are nacked so the
        sidecar redelivers them to another consumer.

        Raises ``ConnectionError`` if a consumer's connection is lost and
        reconnection is not configured (the other consumers are stopped).
        """
        if self._running:
            raise RuntimeError("EventBus.run() is already running")
        if not self._consume:
            raise RuntimeError("subscribe() a handler before run()")
        if self._closed:
            raise ConnectionError("this EventBus was closed; create a new one")
        self._running = True
        self._stopping = False
        self._run_changed = asyncio.Event()
        self._run_done = asyncio.Event()
        failure: BaseException | None = None
        try:
            for queue in self._consume:
                self._start_consumer(queue)
            while self._consumer_tasks:
                self._run_changed.clear()
                waiter = asyncio.ensure_future(self._run_changed.wait())
                try:
                    await asyncio.wait(
                        [waiter, *self._consumer_tasks.values()],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waiter.cancel()
                for queue, task in list(self._consumer_tasks.items()):
                    if not task.done():
                        continue
                    del self._consumer_tasks[queue]
                    exc = task.exception() if not task.cancelled() else None
                    if exc is not None and failure is None:
                        failure = exc
                        self._request_stop()
        except asyncio.CancelledError:
            # Cancelled from outside: a hard stop. Handlers in progress are
            # cancelled too; closing each consumer's connection returns its
            # unacked deliveries to the head of their queue.
            self._request_stop()
            for task in self._consumer_tasks.values():
                task.cancel()
            if self._consumer_tasks:
                await asyncio.gather(*self._consumer_tasks.values(), return_exceptions=True)
            raise
        finally:
            self._consumer_tasks.clear()
            self._consumers.clear()
            self._running = False
            self._run_done.set()
        if failure is not None:
            raise failure

    def _start_consumer(self, queue: str) -> None:
        consumer = _QueueConsumer(self, queue)
        self._consumers[queue] = consumer
        self._consumer_tasks[queue] = asyncio.get_running_loop().create_task(
            consumer.run(), name=f"eventbus-consume {queue}"
        )
        if self._run_changed is not None:
            self._run_changed.set()

    def _request_stop(self) -> None:
        self._stopping = True
        for consumer in self._consumers.values():
            consumer.request_stop()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop :meth:`run`: finish the events being handled, nack the rest.

        Returns once every consumer has closed its connection (at once when
        called from inside a handler, which cannot wait for itself). With a
        ``timeout``, handlers still running after that many seconds are
        cancelled; their events are not acked, so the sidecar redelivers
        them. Use it when a handler may wait on something the stop itself
        prevents (say, room in a queue that this process consumes).
        """
        if not self._running:
            return
        self._request_stop()
        current = asyncio.current_task()
        if current in self._consumer_tasks.values():
            return
        assert self._run_done is not None
        try:
            async with asyncio.timeout(timeout):
                await self._run_done.wait()
        except TimeoutError:
            self.logger.warning(
                "eventbus: handlers still running %ss after stop(); cancelling them, "
                "their events go back to the sidecar", timeout,
            )
            for task in self._consumer_tasks.values():
                task.cancel()
            await self._run_done.wait()

    async def wait_consuming(self) -> None:
        """Wait until :meth:`run` has subscribed every queue it consumes.

        Useful to publish only once a consumer is known to be there. Raises
        RuntimeError if run() ends first; bound it with asyncio.timeout().
        """
        while True:
            consumers = list(self._consumers.values())
            if consumers and all(c.subscribed.is_set() for c in consumers):
                return
            if self._run_done is not None and self._run_done.is_set():
                raise RuntimeError("EventBus.run() ended before it was consuming")
            await asyncio.sleep(0.005)


class _Connector:
    """What :meth:`EventBus.connect` returns: awaitable and an async context manager."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    def __await__(self) -> Generator[Any, None, EventBus]:
        return self._open().__await__()

    async def _open(self) -> EventBus:
        await self._bus.open()
        return self._bus

    async def __aenter__(self) -> EventBus:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        await self._bus.close()


class _Inbox:
    """Deliveries received and not yet handled, for one consumer connection.

    Bounded at the subscription's prefetch, which the sidecar never exceeds;
    should it be reached all the same, the connection stops reading until
    the handlers have caught up, so memory stays bounded either way.
    """

    def __init__(self, limit: int) -> None:
        self.items: collections.deque = collections.deque()
        self.limit = max(1, limit)
        self.conn: Connection | None = None
        self._paused = False
        self._waiter: asyncio.Future | None = None

    def put(self, item: object) -> None:
        items = self.items
        items.append(item)
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)
        if len(items) >= self.limit and not self._paused and self.conn is not None:
            self._paused = True
            self.conn.pause_reading()

    def take(self) -> object:
        """The next item; call only when :attr:`items` is not empty."""
        item = self.items.popleft()
        if self._paused and len(self.items) <= self.limit // 2 and self.conn is not None:
            self._paused = False
            self.conn.resume_reading()
        return item

    async def wait(self) -> None:
        """Wait until there is an item."""
        while not self.items:
            self._waiter = internal_future(asyncio.get_running_loop())
            await self._waiter


class _QueueConsumer:
    """Consumes one queue over its own connection, for :meth:`EventBus.run`.

    A connection of its own keeps deliveries from queuing behind publish
    replies, gives each queue its own prefetch window, and makes stopping
    simple: nack what is buffered, close, and the sidecar returns anything
    still in flight to the head of the queue.
    """

    def __init__(self, bus: EventBus, queue: str) -> None:
        self.bus = bus
        self.queue = queue
        self.subscribed = asyncio.Event()
        self._stopping = False
        self._inbox: _Inbox | None = None
        self._log = bus.logger
        # Acks are the same frame but for the seq.
        self._ack_head = f'{{"op":"ack","queue":{encode_json(queue)},"seq":'.encode("utf-8")

    def request_stop(self) -> None:
        self._stopping = True
        if self._inbox is not None:
            self._inbox.put(_STOP)

    async def run(self) -> None:
        delays = iter(self.bus._backoff.delays()) if self.bus._backoff else None
        while not self._stopping:
            try:
                conn = await self._connect()
            except ConnectionError as e:
                if delays is None:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                self._log.debug("eventbus: consumer of %s: %s; retrying", self.queue, e)
                await self._sleep_unless_stopping(delay)
                continue
            if self.bus._backoff:
                delays = iter(self.bus._backoff.delays())
            lost = await self._serve(conn)
            if lost is None:
                return
            if delays is None:
                raise lost
            self._log.warning("eventbus: consumer of %s: %s; reconnecting", self.queue, lost)

    async def _sleep_unless_stopping(self, delay: float) -> None:
        deadline = asyncio.get_running_loop().time() + delay
        while not self._stopping:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    async def _connect(self) -> Connection:
        inbox = _Inbox(self.bus._prefetch)
        conn = await Connection.open(
            self.bus.socket_path,
            timeout=self.bus._connect_timeout,
            on_deliver=inbox.put,
            logger=self._log,
        )
        inbox.conn = conn
        conn.lost.add_done_callback(lambda f: inbox.put(_LOST))
        try:
            reply = await conn.request(
                {"op": "subscribe", "queue": self.queue, "prefetch": self.bus._prefetch},
                f"subscribe to {self.queue!r}",
            )
            if reply.get("status") != "ok":
                reason = str(reply.get("error", reply))
                if _error_code(reply) == "unknown_queue":
                    raise self.bus._invalid_queue(self.queue)
                raise EventBusError(f"sidecar refused subscribe to {self.queue!r}: {reason}")
        except BaseException:
            await conn.close()
            raise
        self._inbox = inbox
        if self._stopping:
            inbox.put(_STOP)
        self.subscribed.set()
        return conn

    async def _serve(self, conn: Connection) -> ConnectionError | None:
        """Handle deliveries until stopped (None) or the connection is lost.

        Sync handlers run without a coroutine or a task per event: only an
        async handler's awaitable is awaited.
        """
        inbox = self._inbox
        assert inbox is not None
        items = inbox.items
        ack_head = self._ack_head
        log = self._log
        try:
            while True:
                if not items:
                    await inbox.wait()
                item = inbox.take()
                if item is _LOST:
                    return conn.lost.result()
                if item is _STOP or self._stopping:
                    self._nack_buffered(conn, item)
                    return None
                prepared = self._prepare(item)  # type: ignore[arg-type]
                if prepared is None:
                    continue
                event, handlers = prepared
                token = enter_delivery(event.traceparent)
                try:
                    for handler in handlers:
                        try:
                            result = handler(event)
                            if result is not None and inspect.isawaitable(result):
                                await result
                        except Exception:
                            # Error isolation: the other handlers still get the event.
                            log.exception(
                                "eventbus: handler %s failed on %s (queue %s, seq %s)",
                                getattr(handler, "__qualname__", repr(handler)),
                                event.type_name, self.queue, event.seq,
                            )
                finally:
                    exit_delivery(token)
                try:
                    conn.send_oneway(b"%b%d}\n" % (ack_head, event.seq))
                except ConnectionError:
                    # The sidecar put the event back when the connection went;
                    # it will be delivered again (at least once).
                    pass
        finally:
            self.subscribed.clear()
            await conn.close()

    def _nack_buffered(self, conn: Connection, first: object) -> None:
        assert self._inbox is not None
        items = [first, *self._inbox.items]
        self._inbox.items.clear()
        seqs = [i["seq"] for i in items if isinstance(i, dict)]
        for seq in seqs:
            try:
                conn.send_oneway({"op": "nack", "queue": self.queue, "seq": seq})
            except ConnectionError:
                return
        if seqs:
            self._log.info(
                "eventbus: consumer of %s stopping, nacked %d unhandled deliveries",
                self.queue, len(seqs),
            )

    def _prepare(self, frame: dict) -> tuple[Event, tuple[Handler, ...]] | None:
        """The event of a delivery and its handlers; None if it has no seq."""
        get = frame.get
        seq = get("seq")
        if type(seq) is not int:
            self._log.error("eventbus: delivery without seq on %s: %r", self.queue, frame)
            return None
        tname = get("type")
        if type(tname) is not str:
            tname = str(tname or "")
        queue = get("queue") or self.queue
        event = Event(
            _TYPES.get(tname, tname),
            get("payload"),
            queue=queue,
            seq=seq,
            redelivered=get("redelivered") is True,
            redeliveries=get("redeliveries") or 0,
            enqueued_at=get("enqueued_at"),
            traceparent=get("traceparent"),
        )
        handlers = self.bus._handlers(tname, queue)
        if not handlers:
            self._log.debug(
                "eventbus: no handler for %s on %s, acking seq %s", tname, self.queue, seq
            )
        return event, handlers


# EventType members by wire name, without the enum's slower lookup.
_TYPES: dict[str, EventType] = {t.value: t for t in EventType}


# Cached publish heads per bus; more (queue, type) pairs than this means
# types made up per event, and the cache starts over.
_MAX_HEADS = 1024

MAX_MSG_ID_BYTES = 256
"""The longest msg_id the sidecar takes, in UTF-8 bytes."""


def _encode_msg_id(msg_id: object) -> str:
    """A caller's msg_id as a JSON string, after checking it."""
    if not isinstance(msg_id, str):
        raise TypeError(f"msg_id must be a str, got {type(msg_id).__name__}")
    n = len(msg_id.encode("utf-8"))
    if n == 0 or n > MAX_MSG_ID_BYTES:
        raise ValueError(
            f"msg_id must be 1 to {MAX_MSG_ID_BYTES} bytes in UTF-8, got {n}: {msg_id[:40]!r}"
        )
    return encode_json(msg_id)


def _where(queue_name: str | None, tname: str) -> str:
    return queue_name if queue_name is not None else f"(routed by type {tname})"


# Error codes of docs/protocol.md, inferred from the message for a sidecar
# that sends none.
_MESSAGE_CODES = (
    ("shutting down", "shutting_down"),
    ("unknown queue", "unknown_queue"),
    ("invalid event", "invalid_event"),
)


def _error_code(reply: dict) -> str:
    code = reply.get("code")
    if isinstance(code, str) and code:
        return code
    reason = str(reply.get("error", ""))
    for text, inferred in _MESSAGE_CODES:
        if text in reason:
            return inferred
    return ""


def _expect_ok(reply: dict, what: str) -> dict:
    if reply.get("status") != "ok":
        reason = reply.get("error", reply)
        if _error_code(reply) == "shutting_down":
            raise ShuttingDownError(f"{what}: eventbus sidecar is shutting down")
        raise EventBusError(f"{what} failed: {reason}")
    return reply
