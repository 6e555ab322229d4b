"""Exceptions the client raises beyond the built-in ones.

The seed's behaviour is kept with built-in exceptions where it had them:
``ValueError`` for an unknown queue, ``asyncio.TimeoutError`` for a publish
that timed out, ``ConnectionError`` for a lost connection. The classes here
are for outcomes the in-process bus never had.
"""

from __future__ import annotations


class EventBusError(Exception):
    """Base class of the errors specific to the sidecar client."""


class PublishError(EventBusError):
    """The sidecar refused a publish for a reason other than a bad queue name.

    ``reason`` is the sidecar's error message, verbatim.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ShuttingDownError(EventBusError, ConnectionError):
    """The sidecar is shutting down and refuses new publishes.

    It is a ``ConnectionError`` because for the caller it means the same
    thing: this sidecar will not take the event, try again after it is back.
    """


class PublishLostError(EventBusError, ConnectionError):
    """The connection broke before the sidecar answered a publish.

    The event may or may not be in the queue. ``msg_id`` is the msg_id the
    publish was sent with (the caller's, or the one the client made), so
    ``publish(event, queue, msg_id=err.msg_id)`` retries it without the
    risk of placing it twice: a sidecar that got the first attempt answers
    ``Outcome.DUPLICATE``. It is a ``ConnectionError``, as the seed's
    client raised for a lost connection.
    """

    def __init__(self, message: str, msg_id: str) -> None:
        super().__init__(message)
        self.msg_id = msg_id


class TooManyConnectionsError(EventBusError, ConnectionError):
    """The sidecar turned the connection away: it serves as many as it may.

    The sidecar closed the connection without reading anything sent on it,
    so no request was processed. It is a ``ConnectionError`` because
    retrying later (with backoff, as ``reconnect=True`` does) is the remedy;
    if it persists, some client holds too many connections to the sidecar.
    """


class ProtocolError(EventBusError):
    """The sidecar sent something this client cannot understand."""
