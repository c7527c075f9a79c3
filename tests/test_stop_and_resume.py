"""Jobs with one owner: a stop at each stage leaves a job to be carried on, never refunded while
it can still be delivered; a process that lost a job writes nothing more; a running instance
takes over the jobs of one that died; a billed result is never paid for twice."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest

from bot import errors
from bot.ledger import QuotaPolicy, SqliteLedger
from bot.ledger.postgres import PostgresLedger
from bot.models import JobState, Stage
from bot.ports import NewJob
from bot.runner import JobRunner
from tests.pipeline import ALICE, PictureRenderer, Recorder, StuckRenderer, request


async def until(condition, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def actions(trail) -> list[str]:
    return [e.action for e in trail]


@pytest.fixture
async def other_ledger(tmp_path):
    """Another bot process on the same SQLite file (its own owner name)."""
    opened = []

    async def make(lease_s: float = 30.0):
        other = SqliteLedger(
            tmp_path / "l.sqlite3", QuotaPolicy(jobs_per_window=3), lease_s=lease_s
        )
        await other.open()
        opened.append(other)
        return other

    yield make
    for other in opened:
        await other.close()


# -- a stop at each stage ----------------------------------------------------------------------


async def test_a_job_stopped_while_rendering_is_drawn_and_delivered_from_its_kept_files(
    make_service, ledger, fake_segmind, other_ledger
):
    stuck = StuckRenderer()
    service = make_service(renderer=stuck)
    first = Recorder()
    service.runner.start(service.run(request(), first))
    await asyncio.wait_for(stuck.started.wait(), 10)
    await service.shutdown(grace_s=0.1)
    [job] = await ledger.unfinished()
    assert job.state is JobState.RENDERING and job.committed
    assert not any(e[0] == "fail" for e in first.events)
    fetched = (
        fake_segmind.counters.polls,
        fake_segmind.counters.results,
        fake_segmind.counters.downloads,
    )

    reply = Recorder()
    fresh = make_service(renderer=PictureRenderer(), ledger=await other_ledger())
    assert await fresh.recover(lambda record: reply) == 1
    await fresh.wait_resumed()
    assert reply.stages()[0] is Stage.RESUMED
    kinds = {f.kind.value for f in reply.result.files}
    assert {"mesh", "splat", "thumbnail"} <= kinds
    assert reply.result.cost_micros == 65_000
    # Drawn from the files downloaded before the stop: Segmind was not asked again.
    assert (
        fake_segmind.counters.polls,
        fake_segmind.counters.results,
        fake_segmind.counters.downloads,
    ) == fetched
    assert (await ledger.get(job.id)).state is JobState.DELIVERED
    assert actions(await ledger.audit_trail(job.id)).count("commit") == 1
    assert (await ledger.budget()).committed_micros == 65_000


async def test_a_job_stopped_while_being_sent_is_held_for_an_admin_never_refunded(
    make_service, ledger, fake_segmind, other_ledger
):
    fake_segmind.behaviour.submit_delay_s = 30  # the stop comes while the POST is in flight
    service = make_service()
    service.runner.start(service.run(request(), Recorder()))
    await until(lambda: _submits(fake_segmind, 1))
    await service.shutdown(grace_s=0.1)
    [job] = await ledger.unfinished()
    assert job.state is JobState.SUBMITTING

    reply = Recorder()
    fresh = make_service(ledger=await other_ledger())
    assert await fresh.recover(lambda record: reply) == 0
    error, refunded = reply.failure
    assert isinstance(error, errors.SubmitUncertain) and not refunded
    assert "not sent again" in error.user_message and "admin" in error.user_message
    assert (await ledger.get(job.id)).state is JobState.HELD
    assert (await ledger.budget()).reserved_micros == 65_000  # still held, in the budget
    assert "refund" not in actions(await ledger.audit_trail(job.id))
    assert fake_segmind.counters.submits == 1
    assert (await ledger.quota_status(ALICE)).used == 1  # its slot too, until an admin looks
    assert await ledger.admin_refund(job.id, "cli:ops", "Segmind did not bill it") == "released"
    assert (await ledger.budget()).reserved_micros == 0


async def test_a_connection_that_breaks_after_the_submit_went_out_is_held(
    make_service, ledger, fake_segmind
):
    fake_segmind.behaviour.drop_after_submit = True  # Segmind took it; the answer is lost
    reply = Recorder()
    assert await make_service().run(request(), reply) is None
    error, refunded = reply.failure
    assert isinstance(error, errors.SubmitUncertain) and not refunded
    [row] = await ledger.usage()
    assert (row.refunded, row.cost_micros) == (0, 0)
    assert (await ledger.budget()).reserved_micros == 65_000
    assert fake_segmind.counters.submits == 1  # and never sent twice


async def _submits(fake, n):
    return fake.counters.submits >= n


# -- only the owner writes ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def two_processes(request, tmp_path):
    """Two bot processes on one database: the first with a short lease."""
    if request.param == "sqlite":
        path = tmp_path / "shared.sqlite3"
        made = [SqliteLedger(path, QuotaPolicy(), lease_s=0.3), SqliteLedger(path, QuotaPolicy())]
    else:
        url = request.getfixturevalue("postgres_url")
        made = [PostgresLedger(url, QuotaPolicy(), lease_s=0.3), PostgresLedger(url, QuotaPolicy())]
    for each in made:
        await each.open()
    yield made
    for each in made:
        await each.close()


async def test_a_process_that_lost_its_job_stops_and_writes_nothing_more(
    two_processes, make_service, fake_segmind
):
    """Stopped during its submit (Ctrl-Z: it renews nothing), its job taken over by another
    process; woken up, it finds the job gone at its next write and stops there."""
    stalled, other = two_processes

    async def renew_nothing(job_ids):  # a stopped process renews nothing, and cannot tell
        return set(job_ids)

    stalled.renew = renew_nothing
    fake_segmind.behaviour.submit_delay_s = 1.2
    reply = Recorder()
    running = asyncio.create_task(make_service(ledger=stalled).run(request(), reply))
    await until(lambda: _submits(fake_segmind, 1))
    await asyncio.sleep(0.4)  # its lease lapses
    told = Recorder()
    assert await make_service(ledger=other).recover(lambda record: told) == 0
    assert isinstance(told.failure[0], errors.SubmitUncertain)
    assert await asyncio.wait_for(running, 10) is None
    assert reply.events == []  # the first process neither delivered nor told anything
    [job] = await other.usage()
    trail = await other.audit_trail()
    assert actions(trail) == ["reserve", "submitting", "claimed", "held", "late_submit"]
    assert trail[-1].detail == "req-00001"  # what Segmind answered, for the admin
    assert job.cost_micros == 0 and (await other.budget()).reserved_micros == 65_000


async def test_a_lease_taken_over_while_a_job_runs_stops_it_at_once(
    make_service, ledger, fake_segmind, tmp_path
):
    fake_segmind.behaviour.complete_after_s = 3600
    short = SqliteLedger(tmp_path / "l.sqlite3", QuotaPolicy(), lease_s=0.3)
    await short.open()
    try:
        service = make_service(ledger=short)
        reply = Recorder()
        running = asyncio.create_task(service.run(request(), reply))
        await until(lambda: _polls(fake_segmind, 2))
        # Another process takes it over (an admin's tool, a clock jump): from the database.
        with sqlite3.connect(tmp_path / "l.sqlite3") as rival:
            rival.execute("UPDATE jobs SET owner = 'rival'")
        rival.close()
        assert await asyncio.wait_for(running, 5) is None
    finally:
        await short.close()
    assert reply.events[-1][0] == "progress"  # no delivery, no failure told from here
    [job] = await ledger.unfinished()
    assert job.state is JobState.SUBMITTED  # left for its new owner


async def _polls(fake, n):
    return fake.counters.polls >= n


# -- a running instance takes over ------------------------------------------------------------


async def test_a_running_instance_takes_over_the_jobs_of_one_that_died(
    make_service, ledger, fake_segmind, other_ledger
):
    watcher = await other_ledger(lease_s=0.3)
    replies = []

    def replier_for(record):
        replies.append(Recorder())
        return replies[-1]

    fresh = make_service(ledger=watcher)
    fresh.keep_recovering(replier_for)
    await asyncio.sleep(0.1)  # its first look finds nothing
    dying = await other_ledger(lease_s=0.3)
    fake_segmind.jobs["req-00042"] = {"created": 0, "polls": 0}
    job = await dying.reserve(NewJob(ALICE, 65_000, "k1", {"seed": 5}, {"channel": "a"}))
    await dying.mark_submitting(job.id)
    await dying.mark_submitted(job.id, "req-00042", {"request_id": "req-00042"})
    died_at = time.monotonic()  # it renews nothing from here
    await until(lambda: _state_is(ledger, job.id, JobState.DELIVERED))
    assert time.monotonic() - died_at < 2 * 0.3 + 0.8  # about two lease periods
    assert replies[0].result.job_id == job.id
    assert fake_segmind.counters.submits == 0  # resumed, never sent again
    await fresh.close()


async def _state_is(ledger, job_id, state):
    return (await ledger.get(job_id)).state is state


# -- never paid twice --------------------------------------------------------------------------


async def test_a_billed_result_that_could_not_be_posted_is_sent_free_when_asked_again(
    make_service, ledger, fake_segmind
):
    service = make_service()
    broken = Recorder(fail_delivery=True)
    assert await service.run(request(), broken) is None
    error, refunded = broken.failure
    assert isinstance(error, errors.DeliveryError) and not refunded
    assert "ask again" in error.user_message
    again = Recorder()
    result = await service.run(request(), again)
    assert result.cached and again.result.cost_micros == 0
    assert fake_segmind.counters.submits == 1
    assert (await ledger.budget()).committed_micros == 65_000


# -- the runner --------------------------------------------------------------------------------


async def test_the_runner_lets_work_finish_within_the_grace_and_cancels_the_rest(caplog):
    runner = JobRunner()
    finished, cancelled = [], []

    async def work(seconds, name):
        try:
            await asyncio.sleep(seconds)
            finished.append(name)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def broken():
        raise RuntimeError("boom")

    runner.start(work(0.05, "quick"))
    runner.start(work(60, "slow"))
    with caplog.at_level(logging.ERROR, logger="bot.runner"):
        runner.start(broken(), "broken job")
        started = time.monotonic()
        await runner.shutdown(grace_s=0.3)
    assert time.monotonic() - started < 1.0
    assert finished == ["quick"] and cancelled == ["slow"]
    assert "broken job ended with an error" in caplog.text and "boom" in caplog.text
    assert not runner.tasks and not runner.accepting


async def test_a_stopping_bot_takes_no_new_job_and_charges_nothing(make_service, ledger):
    service = make_service()
    await service.shutdown(grace_s=0)
    reply = Recorder()
    assert await service.run(request(), reply) is None
    error, _ = reply.failure
    assert isinstance(error, errors.ServiceStopping) and "restarting" in error.user_message
    assert await ledger.usage() == []


async def test_a_stop_before_the_job_exists_tells_the_user_to_send_it_again(make_service, ledger):
    class SlowToPrepare(Recorder):
        async def prepare(self):
            await asyncio.Event().wait()  # e.g. a slow disk for --out

    service = make_service()
    reply = SlowToPrepare()
    service.runner.start(service.run(request(), reply))
    await asyncio.sleep(0.3)  # validated; checking where the result goes
    await service.shutdown(grace_s=0.1)
    error, refunded = reply.failure
    assert isinstance(error, errors.ServiceStopping) and "send it again" in error.user_message
    assert "Nothing was charged" in error.user_message and not refunded
    assert await ledger.usage() == []
