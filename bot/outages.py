"""Starting through an outage: what the bot needs at start (its database, a chat platform)
may be unreachable for a while; the bot keeps trying, saying so each time, until it answers.
Only an answer that will not mend by itself (a refused token, bad settings) stops it. And
keeping within Segmind's rate limit together: calls spaced for every instance at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_WAIT_S = 1.0
LONGEST_WAIT_S = 60.0


async def until_reachable(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    is_outage: Callable[[BaseException], bool],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    first_wait_s: float | None = None,
    longest_wait_s: float | None = None,
    waiting: dict[str, bool] | None = None,
) -> T:
    """`attempt()` until it succeeds; a failure `is_outage` says is passing is logged and
    tried again after a wait that doubles up to `longest_wait_s`; any other goes up.
    `waiting[what]` is False while it is awaited (what /readyz shows during a start)."""
    if waiting is not None:
        waiting[what] = False  # awaited from the first try on, until it answers
    wait = FIRST_WAIT_S if first_wait_s is None else first_wait_s
    longest = LONGEST_WAIT_S if longest_wait_s is None else longest_wait_s
    tries = 1
    while True:
        try:
            answer = await attempt()
            if waiting is not None:
                waiting.pop(what, None)
            return answer
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning(
                "%s cannot be reached (%s; try %d); trying again in %g s",
                what,
                type(exc).__name__,
                tries,
                wait,
            )
        await sleep(wait)
        wait = min(wait * 2, longest)
        tries += 1


class SharedPace:
    """Calls to Segmind spaced evenly for every instance on one ledger: each call takes the
    next free moment from the database and waits for it, so N instances make the calls of
    one, not N times the 429s."""

    def __init__(
        self,
        take_slot: Callable[[float], Awaitable[float]],
        calls_per_minute: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._take_slot = take_slot
        self._spacing = 60.0 / calls_per_minute
        self._clock = clock
        self._sleep = sleep

    async def __call__(self) -> None:
        wait = await self._take_slot(self._spacing) - self._clock()
        if wait > 0:
            await self._sleep(wait)
