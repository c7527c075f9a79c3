"""The one owner of every job task: it starts them, logs what they raise, and stops them in
bounded time.

At a stop, work that can finish within the grace period finishes; the rest is cancelled, which
a job takes as "leave me to be resumed" (see Service), never as a failure. Modelled on
procrastinate's worker shutdown: stop taking work, wait a bounded time, then cancel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clock = clock
        self.accepting = True

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        return frozenset(self._tasks)

    def start(self, work: Awaitable[Any], name: str = "job") -> asyncio.Task[Any]:
        """Run `work` in the background, owned here until it ends."""
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("%s ended with an error", task.get_name(), exc_info=error)

    async def idle(self, limit_s: float | None = None) -> bool:
        """Wait until no task runs (tasks started meanwhile included); False if time ran out."""
        deadline = None if limit_s is None else self._clock() + limit_s
        while self._tasks:
            left = None if deadline is None else deadline - self._clock()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
        return True

    async def shutdown(self, grace_s: float, cancel_wait_s: float = 1.0) -> None:
        """Take no new work; let running tasks finish within `grace_s`; cancel the rest and
        give them `cancel_wait_s` to leave their jobs ready to resume."""
        self.accepting = False
        if await self.idle(grace_s):
            return
        left = list(self._tasks)
        log.info("stopping: %d job(s) still running are left to resume", len(left))
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=cancel_wait_s)
