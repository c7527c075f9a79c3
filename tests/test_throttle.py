"""Progress edits: never in the job's way, never more often than the platform allows."""

from __future__ import annotations

import asyncio
import time

from bot.models import Progress, Stage
from bot.throttle import ProgressThrottle


class SlowChat:
    """A chat API that takes its time to edit a message."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.shown: list[tuple[float, Stage]] = []

    async def show(self, progress: Progress) -> None:
        await asyncio.sleep(self.delay_s)
        self.shown.append((time.monotonic(), progress.stage))


async def test_a_slow_chat_api_never_holds_up_the_job():
    chat = SlowChat(delay_s=1.0)
    throttle = ProgressThrottle(chat.show, interval_s=0.0)
    started = time.monotonic()
    for stage in (Stage.QUEUED, Stage.SUBMITTED, Stage.PROCESSING):
        await throttle.update(Progress(stage))
        await asyncio.sleep(0.01)  # the job goes on with its work
    assert time.monotonic() - started < 0.2
    await asyncio.sleep(2.2)
    # The first edit was under way; of the two that came meanwhile only the newest is shown.
    assert [stage for _, stage in chat.shown] == [Stage.QUEUED, Stage.PROCESSING]


async def test_edits_are_spaced_by_the_interval_and_the_newest_wins():
    chat = SlowChat(delay_s=0.0)
    throttle = ProgressThrottle(chat.show, interval_s=0.3)
    for stage in (Stage.QUEUED, Stage.SUBMITTED, Stage.PROCESSING, Stage.RENDERING):
        await throttle.update(Progress(stage))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert [stage for _, stage in chat.shown] == [Stage.QUEUED, Stage.RENDERING]
    assert chat.shown[1][0] - chat.shown[0][0] >= 0.29


async def test_nothing_is_shown_after_the_job_ended():
    chat = SlowChat(delay_s=0.2)
    throttle = ProgressThrottle(chat.show, interval_s=0.0)
    await throttle.update(Progress(Stage.PROCESSING))
    await asyncio.sleep(0.05)
    await throttle.close()  # the result's message comes next: no edit may land after it
    await throttle.update(Progress(Stage.RENDERING))
    await asyncio.sleep(0.4)
    assert chat.shown == []
