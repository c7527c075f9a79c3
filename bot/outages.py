"""Starting through an outage: what the bot needs at start (its database, a chat platform)
may be unreachable for a while; the bot keeps trying, saying so each time, until it answers.
Only an answer that will not mend by itself (a refused token, bad settings) stops it."""

from __future__ import annotations

import asyncio
import logging
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
) -> T:
    """`attempt()` until it succeeds; a failure `is_outage` says is passing is logged and
    tried again after a wait that doubles up to `longest_wait_s`; any other goes up."""
    wait = FIRST_WAIT_S if first_wait_s is None else first_wait_s
    longest = LONGEST_WAIT_S if longest_wait_s is None else longest_wait_s
    tries = 1
    while True:
        try:
            return await attempt()
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
