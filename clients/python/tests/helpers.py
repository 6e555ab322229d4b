"""Shared test case: a real sidecar per test and a client connected to it."""

from __future__ import annotations

import asyncio
import sys
import unittest
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventbus_sidecar import EventBus  # noqa: E402

from .sidecar import REPO_ROOT as REPO_ROOT_FOR_EXAMPLES  # noqa: E402,F401
from .sidecar import SHORT_CONFIG, Sidecar, start_sidecar  # noqa: E402,F401


class SidecarTestCase(unittest.IsolatedAsyncioTestCase):
    """Each test gets its own sidecar process (CONFIG: YAML or None)."""

    CONFIG: str | None = SHORT_CONFIG

    def setUp(self) -> None:
        self.sidecar: Sidecar = start_sidecar(self, self.CONFIG)

    async def asyncSetUp(self) -> None:
        # IsolatedAsyncioTestCase runs the loop in debug mode, which logs every
        # callback over 0.1 s; on a shared 2-core machine that is noise.
        asyncio.get_running_loop().slow_callback_duration = 2.0

    async def connect(self, **options: Any) -> EventBus:
        bus = await EventBus.connect(self.sidecar.socket, **options)
        self.addAsyncCleanup(bus.close)
        return bus

    async def eventually(
        self,
        check: Callable[[], Awaitable[bool]] | Callable[[], bool],
        what: str,
        timeout: float = 10.0,
    ) -> None:
        """Poll until check() is true; fail naming `what` after timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if loop.time() > deadline:
                self.fail(f"timed out after {timeout}s waiting for: {what}")
            await asyncio.sleep(0.01)

    async def queue_stat(self, bus: EventBus, queue: str, key: str) -> Any:
        return (await bus.stats())[queue][key]

    def run_bus(self, bus: EventBus) -> asyncio.Task:
        """Start bus.run() in a task that is stopped at cleanup."""
        task = asyncio.create_task(bus.run())

        async def stop() -> None:
            await bus.stop()
            if not task.done():
                task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

        self.addAsyncCleanup(stop)
        return task
