"""Bounded, fair concurrency with queue positions."""

from __future__ import annotations

import asyncio

from bot.scheduler import FairScheduler


async def run_jobs(scheduler, plan, hold=0.01):
    """plan: list of user names in submission order; returns start order and positions seen."""
    started, positions = [], {}

    async def job(index, user):
        async def on_position(p):
            positions.setdefault(index, []).append(p)

        async with scheduler.slot(user, on_position):
            started.append((index, user))
            await asyncio.sleep(hold)

    await asyncio.gather(*(job(i, u) for i, u in enumerate(plan)))
    return started, positions


async def test_never_more_than_capacity_and_one_per_user():
    scheduler = FairScheduler(2)
    peak, per_user = 0, {}

    async def job(user):
        nonlocal peak

        async def on_position(p):
            pass

        async with scheduler.slot(user, on_position):
            peak = max(peak, scheduler.running)
            per_user[user] = per_user.get(user, 0) + 1
            assert per_user[user] == 1
            await asyncio.sleep(0.005)
            per_user[user] -= 1

    await asyncio.gather(*(job(u) for u in "aaaabbbbcccc"))
    assert peak == 2


async def test_users_take_turns():
    started, _ = await run_jobs(FairScheduler(1), ["a", "a", "a", "a", "b", "c"])
    order = [u for _, u in started]
    assert order[:4] == ["a", "b", "c", "a"]  # one heavy user cannot starve the others


async def test_queue_positions_count_down_to_one():
    started, positions = await run_jobs(FairScheduler(1), ["a", "b", "c", "d"])
    assert positions[3][0] == 3  # three jobs ahead: a runs, b and c wait before it
    assert positions[3][-1] == 1
    assert positions[3] == sorted(positions[3], reverse=True)
    assert 0 not in positions


async def test_a_cancelled_waiter_leaves_the_queue():
    scheduler = FairScheduler(1)
    gate = asyncio.Event()

    async def nothing(p):
        pass

    async def holder():
        async with scheduler.slot("a", nothing):
            await gate.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(run_jobs(scheduler, ["b"]))
    await asyncio.sleep(0.01)
    assert scheduler.waiting == 1
    waiting.cancel()
    await asyncio.sleep(0.01)
    assert scheduler.waiting == 0
    gate.set()
    await first
    assert scheduler.running == 0
