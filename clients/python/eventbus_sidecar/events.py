"""Event and EventType: the seed's event model, carried over the socket.

An Event is what a strategy publishes (``Event(EventType.CANDLE_UPDATE,
{...})``) and what a handler receives. Events that came from the sidecar also
carry where they came from (queue, seq, redelivered, enqueued_at,
traceparent); events a program builds itself leave those at their defaults.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class EventType(str, enum.Enum):
    """The event types a trading engine exchanges through the bus.

    The value is the name, and it is what goes on the wire as ``type``; the
    sidecar's default route table maps CANDLE_UPDATE and CANDLE_CLOSED to
    ``data``, SIGNAL_GENERATED to ``signal``, ORDER_PLACED to ``order``.
    Because the enum derives from ``str``, ``EventType.ORDER_PLACED ==
    "ORDER_PLACED"``, so plain strings and members are interchangeable.
    """

    CANDLE_UPDATE = "CANDLE_UPDATE"
    CANDLE_CLOSED = "CANDLE_CLOSED"
    SIGNAL_GENERATED = "SIGNAL_GENERATED"
    ORDER_PLACED = "ORDER_PLACED"
    ORDER_FILLED = "ORDER_FILLED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    POSITION_UPDATED = "POSITION_UPDATED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


def type_name(event_type: EventType | str) -> str:
    """The wire name of an event type given as a member or a plain string."""
    if isinstance(event_type, EventType):
        return event_type.value
    if isinstance(event_type, str):
        return event_type
    raise TypeError(
        f"event_type must be an EventType or a str, got {type(event_type).__name__}"
    )


def parse_type(name: str) -> EventType | str:
    """The EventType member for a wire name, or the name itself if unknown."""
    try:
        return EventType(name)
    except ValueError:
        return name


@dataclass
class Event:
    """One event: a type and a JSON-serialisable payload.

    ``event_type`` is an :class:`EventType` or any non-empty string (types
    the enum does not know are passed through as strings). ``data`` is any
    value ``json.dumps`` accepts; the sidecar passes it through unchanged.

    The keyword-only fields are filled in on events delivered by the sidecar:
    the queue they came from, their sequence number in it, whether this is a
    redelivery and how many deliveries came before, when the sidecar enqueued them (RFC 3339 string) and the
    W3C traceparent of the delivery.
    """

    event_type: EventType | str
    data: Any = field(default_factory=dict)
    queue: str | None = field(default=None, kw_only=True)
    seq: int | None = field(default=None, kw_only=True)
    redelivered: bool = field(default=False, kw_only=True)
    redeliveries: int = field(default=0, kw_only=True)
    enqueued_at: str | None = field(default=None, kw_only=True)
    traceparent: str | None = field(default=None, kw_only=True)

    @property
    def type_name(self) -> str:
        """The event type as the string sent on the wire."""
        return type_name(self.event_type)
