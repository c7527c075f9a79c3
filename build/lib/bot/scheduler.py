"""Bounded, fair concurrency: at most N jobs run, one per user, users served in turn."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

OnPosition = Callable[[int], Awaitable[None]]


@dataclass(eq=False)
class _Waiter:
    user: str
    arrival: int
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    moved: asyncio.Event = field(default_factory=asyncio.Event)
    position: int = 0


class FairScheduler:
    """Round-robin between users: a user with ten jobs queued cannot starve one with one."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._running: set[str] = set()  # users with a job in flight (one each)
        self._queues: dict[str, deque[_Waiter]] = {}
        self._last_served: dict[str, int] = {}  # whoever was served longest ago goes next
        self._served = 0
        self._arrivals = 0
        self.holding = False  # stopping: no job starts, those waiting keep their places

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @asynccontextmanager
    async def slot(self, user: str, on_position: OnPosition) -> AsyncIterator[None]:
        self._arrivals += 1
        waiter = _Waiter(user, self._arrivals)
        self._queues.setdefault(user, deque()).append(waiter)
        self._dispatch()
        try:
            reported = None
            while not waiter.granted.done():
                if waiter.position != reported:
                    reported = waiter.position
                    await on_position(reported)
                    continue
                waiter.moved.clear()
                moved = asyncio.ensure_future(waiter.moved.wait())
                try:
                    either: set[asyncio.Future[Any]] = {moved, waiter.granted}
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    moved.cancel()
        except BaseException:
            if waiter.granted.done():
                self._release(user)
            else:
                self._forget(waiter)
            raise
        try:
            yield
        finally:
            self._release(user)

    def _forget(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.user)
        if queue and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._queues[waiter.user]
        self._dispatch()

    def _release(self, user: str) -> None:
        self._running.discard(user)
        self._dispatch()

    def _turn_order(self) -> list[str]:
        return sorted(
            self._queues, key=lambda u: (self._last_served.get(u, -1), self._queues[u][0].arrival)
        )

    def hold(self) -> None:
        """Start nothing more (the bot is stopping; what waits is carried on after it)."""
        self.holding = True

    def _dispatch(self) -> None:
        while len(self._running) < self._capacity and not self.holding:
            user = next((u for u in self._turn_order() if u not in self._running), None)
            if user is None:
                break
            queue = self._queues[user]
            waiter = queue.popleft()
            if not queue:
                del self._queues[user]
            self._served += 1
            self._last_served[user] = self._served
            self._running.add(user)
            waiter.granted.set_result(None)
        self._renumber()

    def _renumber(self) -> None:
        """Positions in the order jobs will start: each round takes one job per user."""
        position = 0
        queues = [list(self._queues[u]) for u in self._turn_order()]
        depth = max((len(q) for q in queues), default=0)
        for round_index in range(depth):
            for queue in queues:
                if round_index < len(queue):
                    position += 1
                    waiter = queue[round_index]
                    if waiter.position != position:
                        waiter.position = position
                        waiter.moved.set()
