"""The SQLite ledger: quota windows, the budget cap under concurrency, charge-once, refunds."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bot.errors import BudgetExhausted, QuotaExceeded
from bot.ledger import QuotaPolicy, SqliteLedger
from bot.models import JobState, Requester
from bot.ports import NewJob

ALICE = Requester("discord", "alice", "guild1")
BOB = Requester("discord", "bob", "guild1")
ADMIN = Requester("discord", "root", "guild1", is_admin=True)


class Clock:
    def __init__(self, now: float = 1_780_000_000.0):  # 2026-05-28
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def make_ledger(tmp_path, clock):
    opened = []

    async def make(**policy):
        ledger = SqliteLedger(tmp_path / "ledger.sqlite3", QuotaPolicy(**policy), clock)
        await ledger.open()
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        await ledger.close()


def new_job(who=ALICE, price=65_000, key=None) -> NewJob:
    return NewJob(who, price, "cache", {"seed": 1}, {"channel": "c1"}, key)


async def test_reserve_commit_moves_money_once(make_ledger):
    ledger = await make_ledger()
    job = await ledger.reserve(new_job())
    assert job.state is JobState.QUEUED and job.reserved_micros == 65_000
    assert (await ledger.budget())["reserved"] == 65_000
    await ledger.commit(job.id, 61_000)
    await ledger.commit(job.id, 61_000)  # a second settle changes nothing
    assert await ledger.budget() == {"cap": 20_000_000, "reserved": 0, "committed": 61_000}
    assert await ledger.refund(job.id, "late") is False  # billed jobs are not refunded
    actions = [e["action"] for e in await ledger.audit_trail(job.id)]
    assert actions == ["reserve", "commit"]


async def test_refund_returns_money_and_the_quota_slot(make_ledger):
    ledger = await make_ledger(jobs_per_window=1)
    job = await ledger.reserve(new_job())
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(new_job())
    assert await ledger.refund(job.id, "upstream") is True
    assert await ledger.refund(job.id, "again") is False
    assert (await ledger.budget())["reserved"] == 0
    again = await ledger.reserve(new_job())
    assert again.id != job.id
    assert (await ledger.get(job.id)).state is JobState.REFUNDED


async def test_rolling_window_and_next_free_time(make_ledger, clock):
    ledger = await make_ledger(jobs_per_window=2, window_hours=24)
    first = clock.now
    await ledger.reserve(new_job())
    clock.now += 3600
    await ledger.reserve(new_job())
    with pytest.raises(QuotaExceeded) as caught:
        await ledger.reserve(new_job())
    assert caught.value.next_free_at.timestamp() == pytest.approx(first + 24 * 3600)
    assert "2 jobs allowed per 24 h" in caught.value.user_message
    status = await ledger.quota_status(ALICE)
    assert (status.left, status.used) == (0, 2)
    assert (await ledger.quota_status(BOB)).left == 2  # per user
    clock.now = first + 24 * 3600 + 1
    await ledger.reserve(new_job())  # the oldest slot has freed


async def test_failed_jobs_give_the_slot_back_but_stay_charged(make_ledger):
    ledger = await make_ledger(jobs_per_window=1)
    job = await ledger.reserve(new_job())
    await ledger.commit(job.id, 65_000)
    await ledger.finish(job.id, JobState.FAILED, "delivery")
    assert (await ledger.budget())["committed"] == 65_000
    await ledger.reserve(new_job())


async def test_admins_are_exempt_when_the_policy_says_so(make_ledger):
    ledger = await make_ledger(jobs_per_window=0)
    await ledger.reserve(new_job(ADMIN))
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(new_job(ALICE))


async def test_budget_cap_refuses_with_a_clear_message(make_ledger):
    ledger = await make_ledger(global_budget_micros=130_000, jobs_per_window=100)
    await ledger.reserve(new_job())
    await ledger.reserve(new_job())
    with pytest.raises(BudgetExhausted) as caught:
        await ledger.reserve(new_job())
    assert "$0.13" in caught.value.user_message


async def test_budget_is_per_calendar_month(make_ledger, clock):
    ledger = await make_ledger(global_budget_micros=65_000, jobs_per_window=100)
    job = await ledger.reserve(new_job())
    await ledger.commit(job.id, 65_000)
    with pytest.raises(BudgetExhausted):
        await ledger.reserve(new_job())
    clock.now += 40 * 24 * 3600
    await ledger.reserve(new_job())


async def test_1000_concurrent_reservations_never_pass_the_cap(make_ledger):
    ledger = await make_ledger(global_budget_micros=100 * 65_000, jobs_per_window=10**6)
    users = [Requester("slack", f"u{i}") for i in range(1000)]
    outcomes = await asyncio.gather(
        *(ledger.reserve(new_job(u)) for u in users), return_exceptions=True)
    granted = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, BudgetExhausted)]
    assert len(granted) == 100 and len(refused) == 900
    assert (await ledger.budget())["reserved"] == 100 * 65_000


async def test_same_idempotency_key_is_one_job(make_ledger):
    ledger = await make_ledger()
    first = await ledger.reserve(new_job(key="slack:retry:1"))
    second = await ledger.reserve(new_job(key="slack:retry:1"))
    assert second.id == first.id and second.duplicate
    assert (await ledger.budget())["reserved"] == 65_000


async def test_unfinished_jobs_and_resume_data_survive_reopening(make_ledger, tmp_path, clock):
    ledger = await make_ledger()
    job = await ledger.reserve(new_job())
    await ledger.mark_submitted(job.id, "req-1", {"request_id": "req-1"})
    done = await ledger.reserve(new_job())
    await ledger.commit(done.id, 1)
    await ledger.finish(done.id, JobState.DELIVERED)
    await ledger.close()
    reopened = await make_ledger()
    [left] = await reopened.unfinished()
    assert (left.id, left.state, left.request_id) == (job.id, JobState.SUBMITTED, "req-1")
    assert left.resume_ref == {"request_id": "req-1"} and left.reply_to == {"channel": "c1"}


async def test_usage_report(make_ledger):
    ledger = await make_ledger()
    a = await ledger.reserve(new_job(ALICE))
    await ledger.commit(a.id, 65_000)
    await ledger.finish(a.id, JobState.DELIVERED)
    b = await ledger.reserve(new_job(BOB))
    await ledger.refund(b.id, "upstream")
    rows = {r.user_id: r for r in await ledger.usage()}
    alice = rows["alice"]
    assert (alice.jobs, alice.delivered, alice.cost_micros) == (1, 1, 65_000)
    assert (rows["bob"].refunded, rows["bob"].cost_micros) == (1, 0)


async def test_schema_is_migrated_once_and_uses_wal(make_ledger, tmp_path):
    await make_ledger()
    await make_ledger()
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
