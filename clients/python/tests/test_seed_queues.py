"""The seed design's six queue tests (section 5), run through the client.

Against a real sidecar with its built-in defaults (data 1000/1.0 s drop,
signal 100/5.0 s timeout, order 50/block). The bodies are the seed's, with
only the changes the issue allows: ``bus = EventBus()`` became
``bus = await self.connect()`` (EventBus.connect on the sidecar's socket) and
``bus.get_queue_stats()`` is awaited (so test 1 is ``async`` too). They are
methods of a unittest case, and the two pytest names they use come from the
small stand-in below, so the bodies stay verbatim without pytest installed.
Test 3 takes the real 5 s signal timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import unittest

from eventbus_sidecar import Event, EventType

from .helpers import SidecarTestCase


class pytest:  # noqa: N801 - named for the seed's `pytest.raises` / `pytest.mark`
    """The two pytest features the seed's tests use, for unittest."""

    class mark:  # noqa: N801
        @staticmethod
        def asyncio(test):
            # IsolatedAsyncioTestCase already runs coroutine tests.
            return test

    class _ExcInfo:
        value: BaseException | None = None

    @staticmethod
    @contextlib.contextmanager
    def raises(expected):
        info = pytest._ExcInfo()
        try:
            yield info
        except expected as e:
            info.value = e
        else:
            raise AssertionError(f"DID NOT RAISE {expected.__name__}")


class TestEventBusQueues(SidecarTestCase):
    CONFIG = None  # the sidecar's built-in defaults, as in the seed

    async def test_queues_initialized_with_correct_sizes(self):
        """Verify all three queues created with correct maxsize."""
        bus = await self.connect()

        stats = await bus.get_queue_stats()

        assert 'data' in stats
        assert 'signal' in stats
        assert 'order' in stats

        assert stats['data']['maxsize'] == 1000
        assert stats['signal']['maxsize'] == 100
        assert stats['order']['maxsize'] == 50

        # All queues start empty
        assert stats['data']['size'] == 0
        assert stats['signal']['size'] == 0
        assert stats['order']['size'] == 0

        # No drops initially
        assert stats['data']['drops'] == 0
        assert stats['signal']['drops'] == 0
        assert stats['order']['drops'] == 0

    @pytest.mark.asyncio
    async def test_data_queue_drops_events_when_full(self):
        """Verify data queue drops events after timeout when full."""
        bus = await self.connect()

        # Fill data queue to capacity (1000 events)
        for i in range(1000):
            event = Event(EventType.CANDLE_UPDATE, {'id': i})
            await bus.publish(event, queue_name='data')

        # Verify queue is full
        stats = await bus.get_queue_stats()
        assert stats['data']['size'] == 1000

        # Attempt to publish one more (should drop due to timeout)
        overflow_event = Event(EventType.CANDLE_UPDATE, {'id': 1000})

        # Should not raise exception (drops gracefully)
        await bus.publish(overflow_event, queue_name='data')

        # Verify drop was counted
        stats_after = await bus.get_queue_stats()
        assert stats_after['data']['drops'] == 1

        # Queue still at capacity (event was dropped, not added)
        assert stats_after['data']['size'] == 1000

    @pytest.mark.asyncio
    async def test_signal_queue_raises_timeout_when_full(self):
        """Verify signal queue raises TimeoutError when full (no drops)."""
        bus = await self.connect()

        # Fill signal queue to capacity (100 events)
        for i in range(100):
            event = Event(EventType.SIGNAL_GENERATED, {'id': i})
            await bus.publish(event, queue_name='signal')

        # Verify queue is full
        stats = await bus.get_queue_stats()
        assert stats['signal']['size'] == 100

        # Attempt to publish one more (should raise TimeoutError)
        overflow_event = Event(EventType.SIGNAL_GENERATED, {'id': 100})

        with pytest.raises(asyncio.TimeoutError):
            await bus.publish(overflow_event, queue_name='signal')

        # Verify no drops (signal queue never drops)
        stats_after = await bus.get_queue_stats()
        assert stats_after['signal']['drops'] == 0

    @pytest.mark.asyncio
    async def test_order_queue_blocks_indefinitely_when_full(self):
        """Verify order queue blocks without timeout (never drops)."""
        bus = await self.connect()

        # Fill order queue to capacity (50 events)
        for i in range(50):
            event = Event(EventType.ORDER_PLACED, {'id': i})
            await bus.publish(event, queue_name='order')

        # Verify queue is full
        stats = await bus.get_queue_stats()
        assert stats['order']['size'] == 50

        # Attempt to publish with short timeout to verify blocking behavior
        overflow_event = Event(EventType.ORDER_PLACED, {'id': 50})

        # Use wait_for to simulate timeout (order queue itself has no timeout)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                bus.publish(overflow_event, queue_name='order'),
                timeout=0.5  # Short timeout to verify blocking
            )

        # Verify no drops (order queue NEVER drops)
        stats_after = await bus.get_queue_stats()
        assert stats_after['order']['drops'] == 0

    @pytest.mark.asyncio
    async def test_publish_raises_valueerror_for_invalid_queue(self):
        """Verify publish() validates queue_name parameter."""
        bus = await self.connect()
        event = Event(EventType.CANDLE_UPDATE, {})

        with pytest.raises(ValueError) as exc_info:
            await bus.publish(event, queue_name='invalid_queue')

        assert "Invalid queue_name 'invalid_queue'" in str(exc_info.value)
        assert "data" in str(exc_info.value)
        assert "signal" in str(exc_info.value)
        assert "order" in str(exc_info.value)

    @pytest.mark.asyncio
    async def test_get_queue_stats_reflects_current_state(self):
        """Verify get_queue_stats() returns accurate real-time data."""
        bus = await self.connect()

        # Initial state
        stats = await bus.get_queue_stats()
        assert stats['data']['size'] == 0

        # Publish 10 events to data queue
        for i in range(10):
            event = Event(EventType.CANDLE_UPDATE, {'id': i})
            await bus.publish(event, queue_name='data')

        # Verify stats updated
        stats_after = await bus.get_queue_stats()
        assert stats_after['data']['size'] == 10
        assert stats_after['data']['drops'] == 0

        # Publish 5 to signal, 2 to order
        for i in range(5):
            await bus.publish(
                Event(EventType.SIGNAL_GENERATED, {'id': i}),
                queue_name='signal'
            )
        for i in range(2):
            await bus.publish(
                Event(EventType.ORDER_PLACED, {'id': i}),
                queue_name='order'
            )

        # Verify all queues tracked independently
        final_stats = await bus.get_queue_stats()
        assert final_stats['data']['size'] == 10
        assert final_stats['signal']['size'] == 5
        assert final_stats['order']['size'] == 2


if __name__ == "__main__":
    unittest.main()
