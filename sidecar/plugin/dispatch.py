"""Delivers lock events to plugins without ever slowing lock traffic.

Events go into a bounded queue (a full queue drops and counts); one task drains it and calls the
hooks in a worker thread, so a slow synchronous plugin blocks neither the event loop nor locks.
An `async def` hook is awaited on the loop with a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sidecar.engine.events import LockEvent
from sidecar.metrics.stats import EngineStats
from sidecar.plugin.manager import Plugins

log = logging.getLogger("enhanced-locking.plugins")

QUEUE_LIMIT = 10_000
ASYNC_HOOK_TIMEOUT = 5.0


class EventDispatcher:
    def __init__(self, plugins: Plugins, stats: EngineStats) -> None:
        self._plugins = plugins
        self._stats = stats
        self._queue: asyncio.Queue[LockEvent] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def active(self) -> bool:
        return bool(self._plugins.event_hooks)

    def emit(self, event: LockEvent) -> None:
        if not self.active:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._stats.event_dropped()

    async def start(self) -> None:
        if self.active:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plugin-events")
            self._task = asyncio.create_task(self._run(), name="plugin-events")

    async def stop(self, drain_seconds: float = 2.0) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain_seconds)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _on_error(self, plugin: str, exc: BaseException) -> None:
        self._stats.plugin_error(plugin)
        log.error("plugin %s failed handling a lock event: %r", plugin, exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            event = await self._queue.get()
            try:
                pending: list[Any] = await loop.run_in_executor(
                    self._executor, self._plugins.call_event_hooks, event, self._threadsafe_error
                )
                for plugin, coro in pending:
                    try:
                        await asyncio.wait_for(coro, ASYNC_HOOK_TIMEOUT)
                    except Exception as exc:
                        self._on_error(plugin, exc)
            finally:
                self._queue.task_done()

    def _threadsafe_error(self, plugin: str, exc: BaseException) -> None:
        # Counters are thread-safe; the log call is too.
        self._on_error(plugin, exc)
