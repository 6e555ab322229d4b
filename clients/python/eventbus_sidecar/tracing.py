"""W3C trace context without a hard dependency on OpenTelemetry.

When the ``opentelemetry-api`` distribution is importable, the span that is
current when ``publish`` is called is sent as the event's ``traceparent``, so
the sidecar's spans join the application's trace. When it is not installed
nothing of that kind is sent and nothing else changes.

Either way, while a handler of :meth:`EventBus.run` handles a delivery, the
delivery's traceparent is the fallback parent: what the handler publishes
(and the tasks it starts) continues the trace of the event it handles, so a
candle -> signal -> order chain is one trace in the sidecar's telemetry.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Iterator

try:  # pragma: no cover - which branch runs depends on the environment
    from opentelemetry import trace as _otel_trace
except ImportError:  # opentelemetry-api is optional
    _otel_trace = None

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def otel_available() -> bool:
    """Whether opentelemetry-api was importable when this module loaded."""
    return _otel_trace is not None


_delivery_traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eventbus_delivery_traceparent", default=None
)


def current_traceparent() -> str | None:
    """The traceparent to send with a publish made now, or None.

    The current OpenTelemetry span's when opentelemetry-api is installed and
    a valid span is current; else the traceparent of the delivery being
    handled (see :func:`handling`); else None.
    """
    if _otel_trace is not None:
        ctx = _otel_trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))
    return _delivery_traceparent.get()


def enter_delivery(traceparent: str | None) -> contextvars.Token:
    """Make a delivery's traceparent the fallback parent for its handlers.

    Returns the token to pass to :func:`exit_delivery` afterwards.
    """
    if traceparent is not None and parse_traceparent(traceparent) is None:
        traceparent = None
    return _delivery_traceparent.set(traceparent)


def exit_delivery(token: contextvars.Token) -> None:
    """Undo :func:`enter_delivery`."""
    _delivery_traceparent.reset(token)


@contextlib.contextmanager
def handling(traceparent: str | None) -> Iterator[None]:
    """:func:`enter_delivery` and :func:`exit_delivery` as a context manager."""
    token = enter_delivery(traceparent)
    try:
        yield
    finally:
        exit_delivery(token)


def format_traceparent(trace_id: int, span_id: int, flags: int = 1) -> str:
    """A version-00 W3C traceparent from integer ids."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """(trace_id, span_id, flags) of a version-00 traceparent, None if invalid."""
    m = _TRACEPARENT.match(value or "")
    if not m:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(m.group(3), 16)
