"""The ledger contract, run on every store (SQLite and a real PostgreSQL): quota windows and
overrides, cooldown, jobs in flight, budgets under concurrency, charge-once, refunds, admins'
controls and the audit trail."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from bot.errors import (
    BudgetExhausted,
    CoolingDown,
    InputError,
    JobInFlight,
    JobsPaused,
    LedgerTimeout,
    LedgerUnavailable,
    QuotaExceeded,
    UserBlocked,
)
from bot.ledger import QuotaPolicy, SqliteLedger, month_of
from bot.ledger.postgres import PostgresLedger
from bot.ledger.queries import migrations, queries
from bot.ledger.rows import COUNTED, UNFINISHED
from bot.models import JobState, Requester
from bot.ports import NewJob, QuotaRule
from tests.helpers import ROOT, bot_env

ALICE = Requester("discord", "alice", "guild1")
BOB = Requester("discord", "bob", "guild1")
CAROL_ELSEWHERE = Requester("discord", "carol", "guild2")
ADMIN = Requester("discord", "root", "guild1", is_admin=True)
PRICE = 65_000


class Clock:
    def __init__(self, now: float = 1_780_000_000.0):  # 2026-05-28
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """Where make_ledger keeps its data: the same place each time it is called in a test."""
    if request.param == "sqlite":
        return ("sqlite", tmp_path / "ledger.sqlite3")
    return ("postgres", request.getfixturevalue("postgres_url"))


@pytest.fixture
async def make_ledger(store, clock):
    opened = []

    async def make(**policy):
        defaults = {"max_in_flight": 10**6}  # most tests reserve many jobs for one user
        kind, where = store
        made = SqliteLedger if kind == "sqlite" else PostgresLedger
        ledger = made(where, QuotaPolicy(**{**defaults, **policy}), clock)
        await ledger.open()
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        await ledger.close()


def new_job(who=ALICE, price=PRICE, key=None) -> NewJob:
    return NewJob(who, price, "cache", {"seed": 1}, {"channel": "c1"}, key)


async def finished(ledger, who=ALICE, cost=PRICE):
    job = await ledger.reserve(new_job(who))
    await ledger.commit(job.id, cost)
    await ledger.finish(job.id, JobState.DELIVERED)
    return job


def money(budget) -> tuple:
    return budget.cap_micros, budget.reserved_micros, budget.committed_micros


# -- money ---------------------------------------------------------------------------------


async def test_reserve_commit_moves_money_once(make_ledger):
    ledger = await make_ledger()
    job = await ledger.reserve(new_job())
    assert job.state is JobState.QUEUED and job.reserved_micros == PRICE
    assert (await ledger.budget()).reserved_micros == PRICE
    await ledger.commit(job.id, 61_000)  # the real cost the API reported
    await ledger.commit(job.id, 61_000)  # a second commit changes nothing
    assert money(await ledger.budget()) == (20_000_000, 0, 61_000)
    assert (await ledger.get(job.id)).cost_micros == 61_000
    assert not await ledger.refund(job.id, "late")  # charged jobs are not refunded
    actions = [e.action for e in await ledger.audit_trail(job.id)]
    assert actions == ["reserve", "commit"]


async def test_refund_returns_money_and_the_quota_slot(make_ledger):
    ledger = await make_ledger(jobs_per_window=1)
    job = await ledger.reserve(new_job())
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(new_job())
    assert await ledger.refund(job.id, "upstream failed")
    assert not await ledger.refund(job.id, "again")  # once only
    assert (await ledger.budget()).reserved_micros == 0
    await ledger.reserve(new_job())  # the slot is back
    [refund] = [e for e in await ledger.audit_trail(job.id) if e.action == "refund"]
    assert (refund.amount_micros, refund.detail) == (PRICE, "upstream failed")


async def test_budget_cap_refuses_with_a_clear_message(make_ledger):
    ledger = await make_ledger(global_budget_micros=2 * PRICE, jobs_per_window=10)
    await ledger.reserve(new_job())
    await ledger.reserve(new_job(BOB))
    with pytest.raises(BudgetExhausted, match=r"\$0\.13\) is reached"):
        await ledger.reserve(new_job(CAROL_ELSEWHERE))


async def test_a_check_before_picking_refuses_as_reserve_would_and_holds_nothing(make_ledger):
    ledger = await make_ledger(global_budget_micros=2 * PRICE, jobs_per_window=1)
    await ledger.check_reserve(ALICE, PRICE)  # may: nothing is reserved by asking
    assert (await ledger.budget()).reserved_micros == 0 and await ledger.usage() == []
    await ledger.reserve(new_job())
    with pytest.raises(QuotaExceeded):
        await ledger.check_reserve(ALICE, PRICE)
    await ledger.reserve(new_job(BOB))
    with pytest.raises(BudgetExhausted):
        await ledger.check_reserve(CAROL_ELSEWHERE, PRICE)
    assert (await ledger.budget()).reserved_micros == 2 * PRICE
    assert [e.action for e in await ledger.audit_trail()].count("reserve") == 2


async def test_variations_are_reserved_together_or_not_at_all(make_ledger, clock):
    ledger = await make_ledger(
        global_budget_micros=5 * PRICE, jobs_per_window=4, max_in_flight=2, cooldown_s=60
    )
    three = [new_job(key=f"ask:{i}") for i in range(3)]
    await ledger.check_reserve(ALICE, PRICE, 3)  # one request: in flight and cooldown once
    jobs = await ledger.reserve_group(three)
    assert len({j.id for j in jobs}) == 3 and (await ledger.budget()).reserved_micros == 3 * PRICE
    assert [j.duplicate for j in await ledger.reserve_group(three)] == [True] * 3  # a retry
    with pytest.raises(JobInFlight):  # a new ask while three are on the way (at most 2)
        await ledger.reserve_group([new_job()])
    for job in jobs:
        await ledger.commit(job.id, PRICE)
        await ledger.finish(job.id, JobState.DELIVERED)
    clock.now += 61
    with pytest.raises(QuotaExceeded):  # 2 more would pass the quota of 4: neither is held
        await ledger.reserve_group([new_job(), new_job()])
    with pytest.raises(BudgetExhausted):  # Bob's 3 would pass the budget: none is held
        await ledger.reserve_group([new_job(BOB) for _ in range(3)])
    assert money(await ledger.budget()) == (5 * PRICE, 0, 3 * PRICE)
    assert (await ledger.quota_status(ALICE)).used == 3
    assert (await ledger.quota_status(BOB)).used == 0


async def test_budget_is_per_calendar_month(make_ledger, clock):
    ledger = await make_ledger(global_budget_micros=PRICE, jobs_per_window=10)
    await ledger.reserve(new_job())
    with pytest.raises(BudgetExhausted):
        await ledger.reserve(new_job())
    clock.now += 40 * 24 * 3600
    await ledger.reserve(new_job())


async def test_a_servers_monthly_budget_and_the_global_cap_both_hold(make_ledger):
    ledger = await make_ledger(guild_budget_micros=2 * PRICE, jobs_per_window=10)
    await finished(ledger, ALICE, cost=60_000)
    await ledger.reserve(new_job(BOB))
    with pytest.raises(BudgetExhausted, match="server's budget"):
        await ledger.reserve(new_job(ALICE))
    await ledger.reserve(new_job(CAROL_ELSEWHERE))  # another server has its own budget
    await ledger.reserve(new_job(Requester("discord", "dm-user")))  # DMs: global cap only
    slack_member = Requester("slack", "U1", "T1")
    await ledger.reserve(new_job(slack_member))
    await ledger.reserve(new_job(Requester("slack", "U2", "T1")))
    with pytest.raises(BudgetExhausted, match="This workspace's budget"):  # Slack's own word
        await ledger.reserve(new_job(slack_member))
    guild = await ledger.budget(scope="discord:guild1")
    assert money(guild) == (2 * PRICE, PRICE, 60_000) and guild.left_micros == 5_000
    assert money(await ledger.budget()) == (20_000_000, 5 * PRICE, 60_000)


async def test_an_admin_sets_a_servers_budget_and_the_global_cap(make_ledger):
    ledger = await make_ledger(jobs_per_window=10)
    await ledger.reserve(new_job())
    await ledger.set_budget_cap("discord:guild1", PRICE, actor="discord:root")
    with pytest.raises(BudgetExhausted, match="server's budget"):
        await ledger.reserve(new_job())
    await ledger.set_budget_cap("discord:guild1", None, actor="discord:root")  # no cap again
    await ledger.reserve(new_job())
    await ledger.set_budget_cap("global", 2 * PRICE, actor="cli:ops")
    with pytest.raises(BudgetExhausted, match="spending cap"):
        await ledger.reserve(new_job(CAROL_ELSEWHERE))
    with pytest.raises(InputError):
        await ledger.set_budget_cap("global", None, actor="cli:ops")
    with pytest.raises(InputError):
        await ledger.set_budget_cap("discord:guild1", -1, actor="cli:ops")
    assert [e.action for e in await ledger.audit_trail() if e.job_id is None] == [
        "set_budget",
        "set_budget",
        "set_budget",
    ]


async def test_1000_concurrent_reservations_never_pass_the_cap(make_ledger):
    ledger = await make_ledger(global_budget_micros=100 * PRICE)
    users = [Requester("slack", f"u{i}", "T1") for i in range(1000)]
    outcomes = await asyncio.gather(
        *(ledger.reserve(new_job(u)) for u in users), return_exceptions=True
    )
    granted = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, BudgetExhausted)]
    assert len(granted) == 100 and len(refused) == 900
    assert (await ledger.budget()).reserved_micros == 100 * PRICE
    assert (await ledger.budget(scope="slack:T1")).reserved_micros == 100 * PRICE


async def test_1000_concurrent_reservations_by_one_user_never_pass_the_quota(make_ledger):
    ledger = await make_ledger(jobs_per_window=100)
    outcomes = await asyncio.gather(
        *(ledger.reserve(new_job()) for _ in range(1000)), return_exceptions=True
    )
    granted = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(granted) == 100
    assert all(isinstance(o, QuotaExceeded) for o in outcomes if isinstance(o, Exception))
    assert (await ledger.quota_status(ALICE)).used == 100


async def test_same_idempotency_key_is_one_job(make_ledger):
    ledger = await make_ledger()
    first, second = await asyncio.gather(
        ledger.reserve(new_job(key="slack:retry:1")), ledger.reserve(new_job(key="slack:retry:1"))
    )
    assert second.id == first.id and (first.duplicate or second.duplicate)
    assert (await ledger.budget()).reserved_micros == PRICE


# -- the quota -------------------------------------------------------------------------------


async def test_rolling_window_and_next_free_time(make_ledger, clock):
    ledger = await make_ledger(jobs_per_window=2, window_hours=24)
    start = clock.now
    await ledger.reserve(new_job())
    clock.now += 3600
    await ledger.reserve(new_job())
    with pytest.raises(QuotaExceeded) as refused:
        await ledger.reserve(new_job())
    assert refused.value.next_free_at == datetime.fromtimestamp(start + 24 * 3600, UTC)
    assert "2026-05-29" in refused.value.user_message
    status = await ledger.quota_status(ALICE)
    assert (status.limit, status.used, status.left, status.source) == (2, 2, 0, "default")
    assert (await ledger.quota_status(BOB)).left == 2  # per user
    clock.now = start + 24 * 3600 + 1  # the first job left the window
    await ledger.reserve(new_job())


async def test_failed_jobs_give_the_slot_back_but_stay_charged(make_ledger):
    ledger = await make_ledger(jobs_per_window=1)
    job = await ledger.reserve(new_job())
    await ledger.commit(job.id, PRICE)
    await ledger.finish(job.id, JobState.FAILED, "render")
    await ledger.reserve(new_job())
    assert (await ledger.budget()).committed_micros == PRICE


async def test_admins_are_exempt_when_the_policy_says_so(make_ledger):
    ledger = await make_ledger(jobs_per_window=0, cooldown_s=600, max_in_flight=1)
    for _ in range(3):
        await ledger.reserve(new_job(ADMIN))
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(new_job(ALICE))
    strict = await make_ledger(jobs_per_window=0, admins_exempt=False)
    with pytest.raises(QuotaExceeded):
        await strict.reserve(new_job(ADMIN))


async def test_overrides_by_user_role_and_server(make_ledger):
    ledger = await make_ledger(jobs_per_window=1)
    booster = Requester("discord", "bob", "guild1", roles=("r-boost", "r-other"))
    await ledger.set_quota_rule(QuotaRule("discord", "guild1", "guild", "", 2), "discord:root")
    await ledger.set_quota_rule(QuotaRule("discord", "guild1", "role", "r-boost", 4), "x")
    await ledger.set_quota_rule(QuotaRule("discord", "guild1", "role", "r-other", 3), "x")
    await ledger.set_quota_rule(QuotaRule("discord", "", "user", "carol", 5, 1.0), "x")
    await ledger.set_quota_rule(QuotaRule("discord", "guild2", "role", "r-boost", 9), "x")

    async def limit(who):
        status = await ledger.quota_status(who)
        return status.limit, status.window_hours, status.source

    assert await limit(ALICE) == (2, 24.0, "server")
    assert await limit(booster) == (4, 24.0, "role")  # the most generous of the roles
    assert await limit(CAROL_ELSEWHERE) == (5, 1.0, "user")  # everywhere, own window
    assert await limit(Requester("slack", "alice", "guild1")) == (1, 24.0, "default")
    await ledger.set_quota_rule(QuotaRule("discord", "guild1", "user", "bob", None), "x")
    assert await limit(booster) == (None, 24.0, "user")  # unlimited beats everything
    for _ in range(6):
        await ledger.reserve(new_job(booster))
    for _ in range(2):
        await ledger.reserve(new_job(ALICE))
    with pytest.raises(QuotaExceeded, match="all 2 jobs"):
        await ledger.reserve(new_job(ALICE))
    assert await ledger.clear_quota_rule("discord", "guild1", "guild", "", "x")
    assert not await ledger.clear_quota_rule("discord", "guild1", "guild", "", "x")
    assert await limit(ALICE) == (1, 24.0, "default")
    with pytest.raises(InputError):
        await ledger.set_quota_rule(QuotaRule("discord", "guild1", "planet", "x", 1), "x")
    with pytest.raises(InputError):
        await ledger.set_quota_rule(QuotaRule("discord", "guild1", "user", "x", -1), "x")


async def test_cooldown_between_a_users_jobs(make_ledger, clock):
    ledger = await make_ledger(jobs_per_window=10, cooldown_s=60)
    first = await ledger.reserve(new_job())
    clock.now += 15
    with pytest.raises(CoolingDown, match="45 s") as refused:
        await ledger.reserve(new_job())
    assert refused.value.seconds_left == pytest.approx(45)
    assert (await ledger.quota_status(ALICE)).cooldown_until is not None
    await ledger.reserve(new_job(BOB))  # per user
    await ledger.refund(first.id, "upstream")  # a refunded job does not hold anyone back
    await ledger.reserve(new_job())
    clock.now += 61
    await ledger.reserve(new_job())


async def test_jobs_in_flight_per_user(make_ledger):
    ledger = await make_ledger(jobs_per_window=10, max_in_flight=2)
    first = await ledger.reserve(new_job())
    await ledger.reserve(new_job())
    with pytest.raises(JobInFlight, match="2 jobs on the way"):
        await ledger.reserve(new_job())
    assert (await ledger.quota_status(ALICE)).in_flight == 2
    await ledger.commit(first.id, PRICE)
    await ledger.finish(first.id, JobState.DELIVERED)
    await ledger.reserve(new_job())


# -- admins' controls ------------------------------------------------------------------------


async def test_block_and_unblock(make_ledger):
    ledger = await make_ledger()
    await ledger.block("discord", "guild1", "alice", "discord:root", "spam")
    with pytest.raises(UserBlocked):
        await ledger.reserve(new_job(ALICE))
    with pytest.raises(UserBlocked):
        await ledger.admit(ALICE)
    await ledger.admit(Requester("discord", "alice", "guild2"))  # blocked in guild1 only
    await ledger.block("discord", "", "carol", "cli:ops")  # everywhere
    with pytest.raises(UserBlocked):
        await ledger.reserve(new_job(CAROL_ELSEWHERE))
    assert (await ledger.quota_status(ALICE)).blocked
    assert await ledger.unblock("discord", "guild1", "alice", "discord:root")
    assert not await ledger.unblock("discord", "guild1", "alice", "discord:root")
    await ledger.reserve(new_job(ALICE))


async def test_pause_and_resume(make_ledger):
    ledger = await make_ledger()
    await ledger.pause("discord:guild1", "discord:root", "maintenance")
    with pytest.raises(JobsPaused, match="maintenance"):
        await ledger.reserve(new_job(ALICE))
    await ledger.reserve(new_job(CAROL_ELSEWHERE))  # only that server
    await ledger.pause("global", "cli:ops")
    with pytest.raises(JobsPaused):
        await ledger.admit(CAROL_ELSEWHERE)
    assert (await ledger.quota_status(CAROL_ELSEWHERE)).paused
    assert await ledger.resume("global", "cli:ops")
    assert await ledger.resume("discord:guild1", "discord:root")
    assert not await ledger.resume("global", "cli:ops")
    await ledger.reserve(new_job(ALICE))


async def test_an_admin_refunds_a_job(make_ledger):
    ledger = await make_ledger(jobs_per_window=2)
    billed = await finished(ledger)
    running = await ledger.reserve(new_job())
    with pytest.raises(InputError, match="still running"):
        await ledger.admin_refund(running.id, "discord:root", "bad result")
    with pytest.raises(InputError, match="no job"):
        await ledger.admin_refund("nope", "discord:root", "bad result")
    assert await ledger.admin_refund(billed.id, "discord:root", "bad result") == "slot"
    with pytest.raises(InputError, match="already refunded"):
        await ledger.admin_refund(billed.id, "discord:root", "again")
    assert (await ledger.quota_status(ALICE)).used == 1  # the slot is back
    assert (await ledger.budget()).committed_micros == PRICE  # Segmind billed it: spent
    [entry] = [e for e in await ledger.audit_trail(billed.id) if e.action == "refund_slot"]
    assert (entry.actor, entry.detail) == ("discord:root", "bad result")
    [row] = [r for r in await ledger.usage() if r.user_id == "alice"]
    assert (row.jobs, row.refunded, row.cost_micros) == (2, 1, PRICE)


# -- reports and the audit trail -------------------------------------------------------------


async def test_quota_status_tells_a_user_everything(make_ledger, clock):
    ledger = await make_ledger(jobs_per_window=2, guild_budget_micros=3 * PRICE)
    await finished(ledger)
    status = await ledger.quota_status(ALICE)
    assert (status.left, status.next_free_at, status.max_in_flight) == (1, None, 10**6)
    assert status.guild_budget_left_micros == 2 * PRICE
    assert status.budget_left_micros == 2 * PRICE  # the smaller of server and global
    await finished(ledger)
    assert (await ledger.quota_status(ALICE)).next_free_at == datetime.fromtimestamp(
        clock.now + 24 * 3600, UTC
    )


async def test_usage_report_by_month_and_server(make_ledger, clock):
    ledger = await make_ledger(jobs_per_window=10)
    await finished(ledger, ALICE)
    b = await ledger.reserve(new_job(BOB))
    await ledger.refund(b.id, "upstream")
    await finished(ledger, CAROL_ELSEWHERE, cost=70_000)
    clock.now += 40 * 24 * 3600
    await finished(ledger, ALICE)
    rows = await ledger.usage("2026-05")
    by_user = {r.user_id: r for r in rows}
    assert (by_user["alice"].jobs, by_user["alice"].delivered, by_user["alice"].cost_micros) == (
        1,
        1,
        PRICE,
    )
    assert (by_user["bob"].refunded, by_user["bob"].cost_micros) == (1, 0)
    assert [r.user_id for r in await ledger.usage(guild_id="guild2")] == ["carol"]
    assert {r.month for r in await ledger.usage()} == {"2026-05", "2026-07"}


async def test_every_change_is_in_the_append_only_audit_trail(make_ledger, store):
    ledger = await make_ledger()
    job = await ledger.reserve(new_job())
    await ledger.mark_submitted(job.id, "req-1", {"request_id": "req-1"})
    await ledger.set_state(job.id, JobState.RENDERING)
    await ledger.commit(job.id, 61_000)
    await ledger.finish(job.id, JobState.DELIVERED)
    trail = await ledger.audit_trail(job.id)
    assert [(e.action, e.actor, e.amount_micros) for e in trail] == [
        ("reserve", "discord:alice", PRICE),
        ("submitted", "system", 0),
        ("rendering", "system", 0),
        ("commit", "system", 61_000),
        ("delivered", "system", 0),
    ]
    assert all(e.at is not None for e in trail)
    kind, where = store
    if kind == "sqlite":
        db = sqlite3.connect(where)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit SET amount_micros = 0")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit")
        for edit in SNEAKY_EDITS:  # only forget me's alias may change an entry
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(edit)
        db.close()
    else:
        with psycopg.connect(where, autocommit=True) as db:
            with pytest.raises(psycopg.DatabaseError, match="append-only"):
                db.execute("UPDATE audit SET amount_micros = 0")
            with pytest.raises(psycopg.DatabaseError, match="append-only"):
                db.execute("DELETE FROM audit")
            for edit in SNEAKY_EDITS:
                with pytest.raises(psycopg.DatabaseError, match="append-only"):
                    db.execute(edit)


SNEAKY_EDITS = [
    "UPDATE audit SET actor = 'someone else'",
    "UPDATE audit SET actor = 'discord:forgotten-1', amount_micros = 1",
    "UPDATE audit SET detail = 'rewritten'",
]


# -- the store itself ------------------------------------------------------------------------


async def test_unfinished_jobs_and_resume_data_survive_reopening(make_ledger):
    ledger = await make_ledger()
    job = await ledger.reserve(new_job())
    await ledger.mark_submitted(job.id, "req-1", {"request_id": "req-1"})
    await finished(ledger)
    await ledger.close()
    reopened = await make_ledger()
    [left] = await reopened.unfinished()
    assert (left.id, left.state, left.request_id) == (job.id, JobState.SUBMITTED, "req-1")
    assert left.resume_ref == {"request_id": "req-1"} and left.reply_to == {"channel": "c1"}


async def test_schema_is_migrated_once(make_ledger, store):
    await make_ledger()
    await make_ledger()
    kind, where = store
    if kind == "sqlite":
        db = sqlite3.connect(where)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in db.execute("SELECT version FROM schema_version")]
        db.close()
    else:
        with psycopg.connect(where) as db:
            versions = [r[0] for r in db.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, len(migrations(kind)) + 1))


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_the_sql_counts_the_states_the_rules_name(dialect):
    """The SQL files write the lists of job states out; each list that holds a running state
    is the one the quota rules mean (in flight, counted) or those plus refunded."""
    lists = [
        tuple(re.findall(r"'(\w+)'", found))
        for sql in queries(dialect).values()
        for found in re.findall(r"state (?:NOT )?IN \(([^)]*)\)", sql)
    ]
    running = [states for states in lists if "rendering" in states]
    assert len(running) >= 10
    allowed = {UNFINISHED, COUNTED, ("refunded", *UNFINISHED)}
    assert set(running) <= allowed
    assert {UNFINISHED, COUNTED} <= set(running)


async def test_a_first_version_database_is_upgraded_in_place(tmp_path, clock):
    """An SQLite file made by the first release keeps its jobs and gains the new tables."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for statement in migrations("sqlite")[0]:
        db.execute(statement)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute(
        "INSERT INTO jobs (id, platform, user_id, state, created_at, updated_at, period,"
        " cache_key) VALUES ('old1', 'discord', 'alice', 'delivered', ?, ?, '2026-05',"
        " 'k')",
        (clock.now, clock.now),
    )
    db.commit()
    db.close()
    ledger = SqliteLedger(path, QuotaPolicy(jobs_per_window=1), clock)
    await ledger.open()
    try:
        with pytest.raises(QuotaExceeded):  # the old job still counts
            await ledger.reserve(new_job())
        await ledger.block("discord", "", "bob", "cli:ops")
    finally:
        await ledger.close()


async def test_two_instances_on_one_database_never_pass_the_cap(store, make_ledger):
    """Two bot processes, 500 concurrent reservations each, a cap that fits 100."""
    ledger = await make_ledger()  # makes the schema once, as the first instance would
    kind, where = store
    start_at = time.time() + 3.0  # both processes connected and waiting by then
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.ledger_race",
            kind,
            str(where),
            "500",
            str(100 * PRICE),
            str(start_at),
            cwd=ROOT,
            env=bot_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [await asyncio.wait_for(p.communicate(), 120) for p in processes]
    for process, (_, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err.decode()[-2000:]
    granted = [int(out) for out, _ in results]
    assert sum(granted) == 100, granted
    if kind == "postgres":  # truly at once (SQLite's one writer may serve one process first)
        assert all(g > 0 for g in granted), granted
    budget = await ledger.budget(month_of(time.time()))  # the racers run on real time
    assert (budget.reserved_micros, budget.cap_micros) == (100 * PRICE, 100 * PRICE)
    assert len(await ledger.unfinished()) == 100


async def test_budget_rows_always_agree_with_the_jobs(make_ledger):
    """What a budget row holds is exactly what its jobs reserved and cost, however they end."""
    ledger = await make_ledger(jobs_per_window=100)
    for index, who in enumerate([ALICE, BOB, CAROL_ELSEWHERE] * 4):
        job = await ledger.reserve(new_job(who))
        if index % 4 == 0:
            await ledger.refund(job.id, "upstream")
        elif index % 4 == 1:
            await ledger.commit(job.id, 61_000 + index)  # the real cost differs
            await ledger.finish(job.id, JobState.DELIVERED)
        elif index % 4 == 2:
            await ledger.commit(job.id, PRICE)
            await ledger.finish(job.id, JobState.FAILED, "render")
            await ledger.admin_refund(job.id, "discord:root", "bad")
    for scope in ("global", "discord:guild1", "discord:guild2"):
        budget = await ledger.budget(scope=scope)
        assert budget.held_micros == budget.reserved_micros + budget.committed_micros > 0
    assert (await ledger.budget()).reserved_micros == 3 * PRICE  # the 3 left running


async def test_another_instances_quota_change_applies_at_once(make_ledger):
    serving = await make_ledger(jobs_per_window=5)
    admin_side = await make_ledger(jobs_per_window=5)
    await serving.reserve(new_job())  # the serving instance has read (and cached) the rules
    await admin_side.set_quota_rule(QuotaRule("discord", "guild1", "user", "alice", 1), "x")
    with pytest.raises(QuotaExceeded, match="all 1 jobs"):
        await serving.reserve(new_job())
    await admin_side.set_quota_rule(QuotaRule("discord", "guild1", "user", "alice", 2, 0.5), "x")
    await serving.reserve(new_job())  # a new limit and window, seen by the next reservation
    assert (await serving.quota_status(ALICE)).window_hours == 0.5


# -- a ledger that never hangs -----------------------------------------------------------------


class FailingConnection:
    """The store's SQLite connection, with a disk that fails once on the statement named."""

    def __init__(self, connection: sqlite3.Connection, fail_on: str):
        self._connection = connection
        self._fail_on = fail_on

    def execute(self, sql, args=()):
        if self._fail_on and sql.startswith(self._fail_on):
            self._fail_on = ""
            raise sqlite3.OperationalError("disk I/O error")
        return self._connection.execute(sql, args)

    def __getattr__(self, name):
        return getattr(self._connection, name)


@pytest.mark.parametrize("fail_on", ["RELEASE", "COMMIT", "SAVEPOINT", "ROLLBACK TO"])
async def test_a_disk_error_in_a_batch_fails_its_callers_and_the_store_goes_on(
    tmp_path, clock, fail_on
):
    ledger = SqliteLedger(
        tmp_path / "l.sqlite3", QuotaPolicy(max_in_flight=100), clock, timeout_s=5
    )
    await ledger.open()
    try:
        database = ledger.database
        database._db = FailingConnection(database._db, fail_on)
        # Only a call that fails rolls back to its savepoint: one over the budget, here.
        price = 10**12 if fail_on == "ROLLBACK TO" else PRICE
        with pytest.raises(LedgerUnavailable) as caught:
            await ledger.reserve(new_job(price=price))
        assert type(caught.value) is LedgerUnavailable  # not a time-out: an answer at once
        assert await ledger.usage() == []  # the failed batch left nothing behind
        job = await ledger.reserve(new_job())  # and the store works again
        assert (await ledger.get(job.id)).state is JobState.QUEUED
        assert (await ledger.budget()).reserved_micros == PRICE
    finally:
        await ledger.close()


async def test_every_ledger_call_has_a_time_bound(tmp_path, clock):
    ledger = SqliteLedger(tmp_path / "l.sqlite3", QuotaPolicy(), clock, timeout_s=0.2)
    await ledger.open()
    try:
        stuck = threading.Event()
        blocked = asyncio.ensure_future(ledger.database.run(lambda tx: stuck.wait(5)))
        started = time.monotonic()
        with pytest.raises(LedgerTimeout) as caught:
            await ledger.reserve(new_job())
        assert time.monotonic() - started < 1.0
        assert "not reachable" in caught.value.user_message
        stuck.set()
        await blocked
        assert await ledger.ping()
    finally:
        await ledger.close()


async def test_instances_on_one_ledger_take_segmind_slots_in_turn(make_ledger, clock):
    """SEGMIND_CALLS_PER_MINUTE for all instances together: slots come spaced, whichever
    instance asks, and never two at once; time that passed frees the next at once."""
    first, second = await make_ledger(), await make_ledger()
    slots = await asyncio.gather(
        *(ledger.take_upstream_slot(2.0) for ledger in (first, second) * 5)
    )
    ordered = sorted(slots)
    assert ordered[0] == clock.now and ordered == [clock.now + 2.0 * i for i in range(10)]
    clock.now += 100  # a quiet spell: no backlog carried over
    assert await first.take_upstream_slot(2.0) == clock.now


async def test_a_shared_pace_waits_for_its_slot():
    from bot.outages import SharedPace

    now = [1000.0]
    slots = iter([1000.0, 1003.0])
    waited: list[float] = []

    async def take(spacing: float) -> float:
        assert spacing == 6.0  # 10 calls a minute
        return next(slots)

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    pace = SharedPace(take, 10, clock=lambda: now[0], sleep=sleep)
    await pace()
    await pace()
    assert waited == [3.0]  # the first went at once, the second waited for its turn


async def test_a_members_jobs_come_newest_first_a_page_at_a_time(make_ledger, clock):
    ledger = await make_ledger(jobs_per_window=100)
    made = []
    for _ in range(13):
        made.append((await ledger.reserve(new_job())).id)
        clock.now += 60
    await ledger.reserve(new_job(BOB))
    await ledger.reserve(new_job(CAROL_ELSEWHERE))
    first, total = await ledger.jobs_of("discord", ALICE.user_id)
    assert total == 13 and [j.id for j in first] == made[::-1][:10]
    rest, _ = await ledger.jobs_of("discord", ALICE.user_id, offset=10)
    assert [j.id for j in rest] == made[::-1][10:]
    here, count = await ledger.jobs_of("discord", ALICE.user_id, guild_id="elsewhere")
    assert here == [] and count == 0  # an admin of another server sees none of them


async def test_forget_me_keeps_the_money_under_an_alias_and_drops_the_member(make_ledger):
    ledger = await make_ledger()
    done = await finished(ledger)
    refunded = await ledger.reserve(new_job())
    await ledger.refund(refunded.id, "upstream failed")
    await finished(ledger, BOB)
    waiting = await ledger.reserve(new_job())
    await ledger.block("discord", "guild1", ALICE.user_id, "admin", "spam")
    with pytest.raises(InputError, match="still on its way"):
        await ledger.forget_member("discord", ALICE.user_id, "discord:alice")
    await ledger.refund(waiting.id, "cancelled")
    before = money(await ledger.budget())
    forgotten = await ledger.forget_member("discord", ALICE.user_id, "discord:alice")
    assert set(forgotten) == {done.id, refunded.id, waiting.id}
    assert money(await ledger.budget()) == before  # the money history stands
    usage = await ledger.usage()
    assert sum(r.jobs for r in usage) == 4 and sum(r.cost_micros for r in usage) == 2 * PRICE
    assert all(r.user_id != ALICE.user_id for r in usage)
    assert await ledger.jobs_of("discord", ALICE.user_id) == ([], 0)
    record = await ledger.get(done.id)
    assert record.params == {} and record.reply_to == {} and record.cost_micros == PRICE
    trail = await ledger.audit_trail()
    assert not [e for e in trail if "alice" in e.actor or "alice" in e.detail]
    assert "forget" in [e.action for e in trail]
    assert (await ledger.jobs_of("discord", BOB.user_id))[1] == 1  # others untouched


async def test_an_admins_forget_reaches_only_their_servers_jobs(make_ledger):
    ledger = await make_ledger()
    here = await finished(ledger)
    carol_here = Requester("discord", "carol", "guild1")
    theirs = await finished(ledger, carol_here)
    there = await finished(ledger, CAROL_ELSEWHERE)
    forgotten = await ledger.forget_member("discord", "carol", "discord:admin", "guild1")
    assert forgotten == [theirs.id]
    assert (await ledger.get(there.id)).user_id == "carol"
    assert (await ledger.get(here.id)).user_id == ALICE.user_id
    reserved = [e for e in await ledger.audit_trail(there.id) if e.action == "reserve"]
    assert reserved[0].actor == "discord:carol"  # the other server's entries are theirs still
