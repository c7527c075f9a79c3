"""Progress shown at most once per interval, for platforms that rate-limit message edits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .models import Progress


class ProgressThrottle:
    """Calls `show` with the newest progress, no more often than every `interval_s`: a state
    that arrives too soon is shown when the interval is up, if nothing newer came first."""

    def __init__(self, show: Callable[[Progress], Awaitable[None]], interval_s: float):
        self._show = show
        self._interval_s = interval_s
        self._last = 0.0
        self._pending: Progress | None = None
        self._flush: asyncio.Task | None = None
        self.closed = False

    async def update(self, progress: Progress) -> None:
        if self.closed:
            return
        wait = self._last + self._interval_s - time.monotonic()
        if wait > 0:
            self._pending = progress
            if self._flush is None or self._flush.done():
                self._flush = asyncio.create_task(self._show_later(wait))
            return
        await self._show_now(progress)

    async def _show_later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        if self._pending is not None and not self.closed:
            progress, self._pending = self._pending, None
            await self._show_now(progress)

    async def _show_now(self, progress: Progress) -> None:
        self._last = time.monotonic()
        await self._show(progress)

    def close(self) -> None:
        """The job ended: nothing more is shown."""
        self.closed = True
        if self._flush is not None:
            self._flush.cancel()
