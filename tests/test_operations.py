"""The operations adapters expose: my quota, the usage report and its CSV, and admins' controls
scoped to their own server, with readable answers and clear refusals."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest

from bot.errors import BudgetExhausted, InputError, JobsPaused, QuotaExceeded, UserBlocked
from bot.ledger import QuotaPolicy, SqliteLedger
from bot.models import JobState, Requester
from bot.operations import Operations, Where, describe_quota, usage_csv, usage_table
from bot.ports import NewJob, QuotaStatus

ALICE = Requester("discord", "alice", "g1")
BOB = Requester("discord", "bob", "g1")
ERIN = Requester("slack", "erin", "T9")
HERE = Where("discord", "g1")


@pytest.fixture
async def ledger(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite3", QuotaPolicy(jobs_per_window=2, max_in_flight=10))
    await ledger.open()
    yield ledger
    await ledger.close()


@pytest.fixture
def ops(ledger) -> Operations:
    return Operations(ledger)


async def delivered(ledger, who, cost=65_000) -> str:
    job = await ledger.reserve(NewJob(who, 65_000, "k", {}))
    await ledger.commit(job.id, cost)
    await ledger.finish(job.id, JobState.DELIVERED)
    return job.id


async def test_my_quota_in_words(ops, ledger):
    await delivered(ledger, ALICE)
    text = describe_quota(await ops.my_quota(ALICE))
    assert "Jobs left: 1 of 2 per 24 h." in text and "Budget left this month: $19.935" in text
    await delivered(ledger, ALICE)
    text = describe_quota(await ops.my_quota(ALICE))
    assert "Jobs left: 0 of 2" in text
    assert re.search(r"The next one frees in (23 h 59 min|24 h 0 min) \(20\d\d-", text)


def test_quota_words_for_every_state():
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    status = QuotaStatus(
        limit=None,
        used=3,
        next_free_at=None,
        budget_left_micros=1_250_000,
        window_hours=24,
        cooldown_until=now + timedelta(seconds=40),
        in_flight=1,
        max_in_flight=2,
        guild_budget_left_micros=500_000,
        paused=True,
    )
    text = describe_quota(status, now)
    assert "paused" in text and "no limit" in text and "in 40 s" in text
    assert "On the way: 1 of 2 jobs." in text
    assert "$1.25 (this server: $0.50)" in text
    blocked = QuotaStatus(1, 0, None, 0, 24, blocked=True)
    assert "blocked" in describe_quota(blocked, now)


async def test_admin_quota_commands(ops, ledger):
    assert await ops.set_quota("discord:root", HERE, "user", "alice", "5") == "user alice: 5 jobs"
    assert (await ops.my_quota(ALICE)).limit == 5
    assert (
        await ops.set_quota("discord:root", HERE, "role", "r1", "unlimited", 12)
        == "role r1: unlimited jobs per 12 h"
    )
    assert (
        await ops.set_quota("discord:root", HERE, "guild", "ignored", "1") == "this server: 1 jobs"
    )
    assert (await ops.my_quota(BOB)).limit == 1
    assert (await ops.my_quota(Requester("discord", "bob", "g1", roles=("r1",)))).limit is None
    assert "back to the default" in await ops.set_quota("x", HERE, "user", "alice", "default")
    assert (await ops.my_quota(ALICE)).limit == 1  # the server's rule again
    for jobs in ("many", "-3"):
        with pytest.raises(InputError, match="jobs"):
            await ops.set_quota("x", HERE, "user", "alice", jobs)
    with pytest.raises(InputError, match="needs a server"):
        await ops.set_quota("x", Where("discord"), "guild", "", "3")


async def test_admin_budget_block_pause_commands(ops, ledger):
    assert (
        await ops.set_budget("discord:root", HERE, "$0.10") == "this server's monthly budget: $0.10"
    )
    await ledger.reserve(NewJob(ALICE, 65_000, "k", {}))
    with pytest.raises(BudgetExhausted):
        await ledger.reserve(NewJob(BOB, 65_000, "k", {}))
    assert (
        await ops.set_budget("discord:root", HERE, "none") == "this server's monthly budget: none"
    )
    with pytest.raises(InputError, match="USD"):
        await ops.set_budget("discord:root", HERE, "lots")
    assert await ops.block("discord:root", HERE, "bob", "spam") == "blocked bob"
    with pytest.raises(UserBlocked):
        await ledger.admit(BOB)
    assert await ops.unblock("discord:root", HERE, "bob") == "unblocked bob"
    assert await ops.unblock("discord:root", HERE, "bob") == "bob was not blocked"
    assert (
        await ops.pause("discord:root", HERE, "upgrading") == "new jobs are paused on this server"
    )
    with pytest.raises(JobsPaused, match="upgrading"):
        await ledger.admit(BOB)
    await ledger.admit(ERIN)
    assert await ops.resume("discord:root", HERE) == "new jobs are open again"
    assert await ops.set_budget("cli:ops", Where(""), "50") == "the global monthly cap: $50.00"


async def test_an_admin_refunds_only_jobs_of_their_own_server(ops, ledger):
    theirs = await delivered(ledger, ERIN)
    mine = await delivered(ledger, ALICE)
    with pytest.raises(InputError, match="no job"):
        await ops.refund("discord:root", HERE, theirs)
    said = await ops.refund("discord:root", HERE, mine, "wrong object")
    assert "quota slot back" in said and "$0.065 it cost stays spent" in said
    await delivered(ledger, ALICE)
    await delivered(ledger, ALICE)  # the returned slot lets a third job in
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(NewJob(ALICE, 65_000, "k", {}))
    # A job that ended without a charge still holding its reservation gets it released.
    stuck = await ledger.reserve(NewJob(BOB, 65_000, "k", {}))
    await ledger.finish(stuck.id, JobState.FAILED, "stopped")
    assert "$0.065 reservation is released" in await ops.refund("cli:ops", None, stuck.id)
    assert (await ledger.budget()).reserved_micros == 0


async def test_usage_report_rolled_up_and_exported(ops, ledger):
    await delivered(ledger, ALICE)
    await delivered(ledger, BOB, cost=70_000)
    await delivered(ledger, ERIN)
    by_user = await ops.usage()
    assert {r.user_id for r in by_user} == {"alice", "bob", "erin"}
    by_guild = await ops.usage(by="guild")
    assert [(r.guild_id, r.jobs, r.cost_micros) for r in by_guild] == [
        ("g1", 2, 135_000),
        ("T9", 1, 65_000),
    ]
    [month] = await ops.usage(by="month")
    assert (month.jobs, month.delivered, month.cost_micros) == (3, 3, 200_000)
    assert [r.user_id for r in await ops.usage(HERE)] == ["bob", "alice"]
    table = usage_table(by_guild, "guild")
    assert table.splitlines()[0].split() == [
        "month",
        "platform",
        "guild",
        "jobs",
        "delivered",
        "failed",
        "refunded",
        "usd",
    ]
    rows = list(csv.DictReader(io.StringIO(usage_csv(by_user))))
    assert {r["user"]: r["usd"] for r in rows} == {
        "alice": "0.065",
        "bob": "0.070",
        "erin": "0.065",
    }
    with pytest.raises(InputError, match="2026-05"):
        await ops.usage(month="May")


async def test_reasons_are_held_to_what_a_chat_message_can_show(ops, ledger):
    """A reason is shown to every member who asks for a model while jobs are paused: one that
    would not fit a chat message is refused when set, and one stored before the limit is
    shortened where members read it."""
    with pytest.raises(InputError, match="at most 200"):
        await ops.pause("discord:root", HERE, "x" * 201)
    with pytest.raises(InputError, match="at most 200"):
        await ops.block("discord:root", HERE, "bob", "y" * 500)
    await ledger.pause("discord:g1", "discord:root", "z" * 5000)  # from an older release
    with pytest.raises(JobsPaused) as refused:
        await ledger.reserve(NewJob(ALICE, 65_000, "k", {}))
    assert len(refused.value.user_message) < 300


async def test_refund_never_echoes_what_is_not_a_job_id(ops):
    with pytest.raises(InputError) as refused:
        await ops.refund("discord:root", HERE, "<@everyone> " + "x" * 3000)
    assert "not a job id" in refused.value.user_message
    assert "xxx" not in refused.value.user_message and "everyone" not in refused.value.user_message
