"""asyncio client for the eventbus-sidecar, with the seed EventBus's API.

    from eventbus_sidecar import Event, EventBus, EventType

    async with EventBus.connect("/tmp/eventbus-sidecar.sock") as bus:
        await bus.publish(Event(EventType.CANDLE_UPDATE, {"close": 101.5}))
        stats = await bus.get_queue_stats()

Standard library only; OpenTelemetry trace context is sent when
opentelemetry-api happens to be installed.
"""

import logging

from .client import (
    DEFAULT_QUEUE,
    DEFAULT_ROUTES,
    DEFAULT_SOCKET,
    SOCKET_ENV,
    Backoff,
    EventBus,
    Handler,
    Outcome,
)
from .errors import (
    EventBusError,
    ProtocolError,
    PublishError,
    PublishLostError,
    ShuttingDownError,
    TooManyConnectionsError,
)
from .events import Event, EventType

__all__ = [
    "Backoff",
    "DEFAULT_QUEUE",
    "DEFAULT_ROUTES",
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "Event",
    "EventBus",
    "EventBusError",
    "EventType",
    "Handler",
    "Outcome",
    "ProtocolError",
    "PublishError",
    "PublishLostError",
    "ShuttingDownError",
    "TooManyConnectionsError",
]

# A library leaves logging configuration to the application.
logging.getLogger("eventbus_sidecar").addHandler(logging.NullHandler())

__version__ = "0.1.0"
