"""Progress shown at most once per interval, for platforms that rate-limit message edits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from .models import Progress

log = logging.getLogger(__name__)


class ProgressThrottle:
    """Shows the newest progress with `show`, no more often than every `interval_s`.

    `update` never waits for the platform: the edit runs in the background, so a slow or
    rate-limited chat API delays the progress message, never the job. A state that arrives
    while an edit is due or running replaces the one waiting, if any.
    """

    def __init__(self, show: Callable[[Progress], Awaitable[None]], interval_s: float):
        self._show = show
        self._interval_s = interval_s
        self._last = float("-inf")
        self._pending: Progress | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    async def update(self, progress: Progress) -> None:
        if self.closed:
            return
        self._pending = progress
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._show_pending())

    def _take_pending(self) -> Progress | None:
        progress, self._pending = self._pending, None
        return progress

    async def _show_pending(self) -> None:
        while self._pending is not None and not self.closed:
            wait = self._last + self._interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            progress = self._take_pending()
            if progress is None:  # cleared while this waited
                return
            self._last = time.monotonic()
            try:
                await self._show(progress)
            except Exception:  # progress is best effort; the result is not
                log.info("progress edit failed", exc_info=True)

    async def close(self) -> None:
        """The job ended: nothing more is shown, and no edit is left to land after the
        result's own message."""
        self.closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
