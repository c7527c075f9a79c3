"""The pipeline end to end against the fake Segmind, seen through a recording Replier."""

from __future__ import annotations

import asyncio
import errno

import pytest

from bot import errors
from bot.ledger import QuotaPolicy, SqliteLedger
from bot.models import FileKind, ImageSource, JobRequest, JobState, Requester, Stage
from bot.offline import OfflineBackend
from bot.ports import NewJob
from bot.variations import Together
from tests.fakes.segmind import API_KEY
from tests.pipeline import ALICE, BOB, PictureRenderer, Recorder, crashed_process, money, request


async def test_a_job_delivers_the_model_and_is_charged_once(make_service, ledger, fake_segmind):
    service = make_service(renderer=PictureRenderer())
    reply = Recorder()
    result = await service.run(request(), reply)
    assert reply.stages() == [Stage.SUBMITTED, Stage.PROCESSING, Stage.RENDERING]
    delivered = {f.kind for f in reply.result.files}
    assert delivered == {FileKind.MESH, FileKind.SPLAT, FileKind.THUMBNAIL}
    assert [f.kind for f in reply.events[-1][1]] == [FileKind.TURNTABLE]  # soon after
    assert {f.kind for f in result.files} == delivered | {FileKind.TURNTABLE}
    assert result.cost_micros == 65_000 and not result.cached
    assert set(result.timings) >= {"validate", "queue", "upstream", "render", "turntable"}
    record = await ledger.get(result.job_id)
    assert record.state is JobState.DELIVERED and record.request_id == "req-00001"
    assert money(await ledger.budget()) == (20_000_000, 0, 65_000)


async def test_real_cost_from_the_api_is_what_is_committed(make_service, ledger, fake_segmind):
    fake_segmind.behaviour.cost = "0.0712"
    result = await make_service().run(request(), Recorder())
    assert result.cost_micros == 71_200
    assert (await ledger.budget()).committed_micros == 71_200


@pytest.mark.parametrize("reported", ["-5", "1e30", "NaN", "Infinity"])
async def test_a_cost_that_cannot_be_true_is_charged_at_the_reserved_price(
    make_service, ledger, fake_segmind, reported
):
    fake_segmind.behaviour.cost = reported
    reply = Recorder()
    result = await make_service().run(request(), reply)
    assert result is not None and reply.result.cost_micros == 65_000  # the model is delivered
    budget = await ledger.budget()
    assert (budget.committed_micros, budget.reserved_micros) == (65_000, 0)


async def test_identical_request_is_served_from_the_store_for_free(
    make_service, ledger, fake_segmind
):
    service = make_service()
    first = await service.run(request(), Recorder())
    again = Recorder()
    second = await service.run(request(), again)
    assert second.cached and second.cost_micros == 0
    assert {f.path for f in second.files} == {f.path for f in first.files}
    assert "delivered again, free" in second.note
    assert fake_segmind.counters.submits == 1
    assert (await ledger.quota_status(ALICE)).used == 1  # no quota used by the cache hit
    other_seed = await service.run(request(seed=8), Recorder())
    assert not other_seed.cached and fake_segmind.counters.submits == 2


async def test_upstream_failure_refunds_money_and_quota(make_service, ledger, fake_segmind):
    fake_segmind.behaviour.fail_message = "no object found"
    reply = Recorder()
    assert await make_service().run(request(), reply) is None
    error, refunded = reply.failure
    assert isinstance(error, errors.GenerationFailed) and refunded
    assert (await ledger.budget()).reserved_micros == 0
    assert (await ledger.quota_status(ALICE)).used == 0
    [row] = await ledger.usage()
    assert row.refunded == 1 and row.cost_micros == 0


async def test_failure_after_billing_is_charged_not_refunded(make_service, ledger, fake_segmind):
    fake_segmind.behaviour.file_status = 404
    reply = Recorder()
    await make_service().run(request(), reply)
    error, refunded = reply.failure
    assert isinstance(error, errors.ResultExpired) and not refunded
    assert money(await ledger.budget()) == (20_000_000, 0, 65_000)
    assert (await ledger.quota_status(ALICE)).used == 0  # the user gets the slot back


async def test_a_failed_delivery_is_reported(make_service, ledger):
    reply = Recorder(fail_delivery=True)
    await make_service().run(request(), reply)
    error, refunded = reply.failure
    assert isinstance(error, errors.DeliveryError) and not refunded
    [row] = await ledger.usage()
    assert row.failed == 1


async def test_a_broken_renderer_still_delivers_the_model(make_service):
    reply = Recorder()
    result = await make_service(renderer=PictureRenderer(fail=True)).run(request(), reply)
    assert {f.kind for f in result.files} == {FileKind.MESH, FileKind.SPLAT}


async def test_a_renderer_that_trips_unexpectedly_still_delivers_the_model(make_service, ledger):
    class Tripping(PictureRenderer):
        async def thumbnail(self, files, workdir):
            raise RecursionError("a very deep glTF")

    reply = Recorder()
    result = await make_service(renderer=Tripping()).run(request(), reply)
    assert {f.kind for f in reply.result.files} == {FileKind.MESH, FileKind.SPLAT}
    assert result is not None and (await ledger.get(result.job_id)).state is JobState.DELIVERED


async def test_bad_input_costs_nothing(make_service, ledger, fake_segmind):
    reply = Recorder()
    await make_service().run(request(bbox="0,0,9999,10"), reply)
    error, refunded = reply.failure
    assert isinstance(error, errors.InputError) and error.field == "bbox" and not refunded
    assert fake_segmind.counters.submits == 0
    assert await ledger.usage() == []


async def test_quota_refusal_says_when_and_sends_nothing(make_service, fake_segmind):
    service = make_service()
    for seed in range(3):
        await service.run(request(seed=seed), Recorder())
    reply = Recorder()
    await service.run(request(seed=99), reply)
    error, _ = reply.failure
    assert isinstance(error, errors.QuotaExceeded) and "next one frees at" in error.user_message
    assert fake_segmind.counters.submits == 3


async def test_duplicate_delivery_starts_no_second_job(make_service, fake_segmind):
    service = make_service()
    first, second = await asyncio.gather(
        service.run(request(), Recorder(), idempotency_key="evt-1"),
        service.run(request(), Recorder(), idempotency_key="evt-1"),
    )
    assert [first is None, second is None].count(True) == 1
    assert fake_segmind.counters.submits == 1


async def test_queued_jobs_report_their_position(make_service, fake_segmind):
    fake_segmind.behaviour.polls_before_done = 4
    service = make_service(capacity=1)
    replies = [Recorder() for _ in range(3)]
    users = [ALICE, BOB, Requester("discord", "carol")]
    await asyncio.gather(*(service.run(request(u), r) for u, r in zip(users, replies, strict=True)))
    seen = sorted(
        [e[2] for e in r.events if e[0] == "progress" and e[1] is Stage.QUEUED] for r in replies
    )
    assert seen == [[], [1], [2, 1]]  # whichever came last waited behind two, then one
    assert all(("deliver" in [e[0] for e in r.events]) for r in replies)


async def test_offline_backend_is_free_and_says_so(make_service, ledger):
    reply = Recorder()
    result = await make_service(backend=OfflineBackend()).run(request(), reply)
    assert result.offline and result.cost_micros == 0
    assert "not SAM 3D" in result.note
    assert result.file(FileKind.MESH).path.read_bytes()[:4] == b"glTF"
    assert (await ledger.budget()).committed_micros == 0


# --- stopping and starting again ----------------------------------------------------------------


async def test_a_stop_keeps_a_queued_job_in_its_place_for_the_next_start(
    make_service, ledger, fake_segmind, tmp_path
):
    fake_segmind.behaviour.complete_after_s = 3600
    service = make_service(capacity=1)
    first_reply, waiting_reply = Recorder(), Recorder()
    service.runner.start(service.run(request(ALICE), first_reply))
    while fake_segmind.counters.polls < 2:  # noqa: ASYNC110 (the fake has no event to wait on)
        await asyncio.sleep(0.01)
    service.runner.start(service.run(request(BOB), waiting_reply))
    while len(await ledger.unfinished()) < 2:  # noqa: ASYNC110 (bob reserved and queued)
        await asyncio.sleep(0.01)
    await service.shutdown(grace_s=0.2)
    assert not any(e[0] == "fail" for e in first_reply.events + waiting_reply.events)
    states = sorted(r.state.value for r in await ledger.unfinished())
    assert states == ["queued", "submitted"]  # nothing refunded, nothing failed

    fake_segmind.behaviour.complete_after_s = 0
    restarted = SqliteLedger(tmp_path / "l.sqlite3", QuotaPolicy(jobs_per_window=3))
    await restarted.open()
    try:
        replies = {"alice": Recorder(), "bob": Recorder()}
        fresh = make_service(capacity=1, ledger=restarted)
        assert await fresh.recover(lambda record: replies[record.user_id]) == 2
        await fresh.wait_resumed()
    finally:
        await restarted.close()
    assert Stage.RESUMED in replies["bob"].stages()  # told it goes on
    assert replies["bob"].result.params["prompt"] == "ball"
    assert replies["alice"].result.cost_micros == 65_000
    assert fake_segmind.counters.submits == 2  # alice's job was not sent again
    assert [r.state for r in await ledger.unfinished()] == []
    assert (await ledger.budget()).committed_micros == 2 * 65_000
    assert (await ledger.budget()).reserved_micros == 0


async def test_restart_resumes_submitted_jobs_and_refunds_the_rest(
    make_service, ledger, fake_segmind, tmp_path
):
    # A job submitted before the "crash": its row says submitted, with the request id.
    service = make_service()
    await service.run(request(BOB, seed=1), Recorder())  # proves the fake works; req-00001
    fake_segmind.jobs["req-00099"] = {"created": 0, "polls": 0}
    async with crashed_process(tmp_path) as crashed:
        submitted = await crashed.reserve(
            NewJob(ALICE, 65_000, "k1", {"seed": 5}, {"channel": "a"})
        )
        await crashed.mark_submitted(submitted.id, "req-00099", {"request_id": "req-00099"})
        never_sent = await crashed.reserve(NewJob(BOB, 65_000, "k2", {}, {"channel": "b"}))

    replies: dict[str, Recorder] = {}

    def replier_for(record):
        return replies.setdefault(record.reply_to["channel"], Recorder())

    fresh = make_service()
    assert await fresh.recover(replier_for) == 1
    await fresh.wait_resumed()
    assert replies["a"].result.job_id == submitted.id
    error, refunded = replies["b"].failure
    assert isinstance(error, errors.ServiceStopping) and refunded
    assert (await ledger.get(submitted.id)).state is JobState.DELIVERED
    assert (await ledger.get(never_sent.id)).state is JobState.REFUNDED
    assert fake_segmind.counters.submits == 1  # nothing was sent twice
    assert (await ledger.budget()).committed_micros == 2 * 65_000
    assert await fresh.recover(replier_for) == 0  # a second start finds nothing to do


async def test_recovery_leaves_other_platforms_and_live_processes_jobs_alone(
    make_service, ledger, tmp_path
):
    running_here = await ledger.reserve(NewJob(Requester("cli", "me"), 65_000, "k5", {}, {}))
    async with crashed_process(tmp_path) as crashed:
        other = await crashed.reserve(NewJob(BOB, 65_000, "k3", {}, {"channel": "x"}))
        mine = await crashed.reserve(NewJob(Requester("cli", "you"), 65_000, "k4", {}, {}))
    service = make_service()
    await service.recover(lambda record: None, {"cli"})
    assert (await ledger.get(mine.id)).state is JobState.REFUNDED
    assert (await ledger.get(other.id)).state is JobState.QUEUED  # not this front end's
    # Its process still renews it (here: its lease has not lapsed): maybe running.
    assert (await ledger.get(running_here.id)).state is JobState.QUEUED


async def test_a_running_process_keeps_its_jobs_from_being_taken_over(
    make_service, fake_segmind, tmp_path
):
    path = tmp_path / "shared.sqlite3"
    first = SqliteLedger(path, QuotaPolicy(), lease_s=0.3)
    second = SqliteLedger(path, QuotaPolicy(), lease_s=0.3)
    await first.open()
    await second.open()
    try:
        fake_segmind.behaviour.complete_after_s = 1.5  # outlives several leases
        running = asyncio.create_task(make_service(ledger=first).run(request(), Recorder()))
        await asyncio.sleep(1.0)
        assert await make_service(ledger=second).recover(lambda record: None) == 0
        result = await running
        assert result is not None and fake_segmind.counters.submits == 1
    finally:
        await first.close()
        await second.close()


async def test_blocked_or_paused_users_are_told_before_any_work(make_service, ledger, fake_segmind):
    service = make_service()
    not_an_image = JobRequest(ALICE, ImageSource.from_bytes(b"<html>"), reply_to={})
    await ledger.block("discord", "", ALICE.user_id, "discord:root")
    reply = Recorder()
    assert await service.run(not_an_image, reply) is None
    error, refunded = reply.failure
    assert isinstance(error, errors.UserBlocked) and not refunded  # not "not an image"
    await ledger.pause("global", "cli:ops", "upgrading")
    reply = Recorder()
    await service.run(request(BOB), reply)
    assert "paused by the admins (upgrading)" in reply.failure[0].user_message
    assert fake_segmind.counters.submits == 0 and await ledger.usage() == []


async def test_policy_refusals_reach_the_user_with_nothing_reserved(
    make_service, ledger, fake_segmind
):
    await ledger.set_budget_cap("discord:g1", 0, "discord:root")
    reply = Recorder()
    await make_service().run(request(Requester("discord", "dana", "g1")), reply)
    error, refunded = reply.failure
    assert isinstance(error, errors.BudgetExhausted) and "server's budget" in error.user_message
    assert fake_segmind.counters.submits == 0
    assert (await ledger.budget()).reserved_micros == 0


async def test_a_job_runs_again_with_another_seed_under_the_quota(
    make_service, ledger, fake_segmind
):
    service = make_service()
    first = await service.run(request(bbox="100,50,500,400"), Recorder())
    reply = Recorder()
    again = await service.again(first.job_id, ALICE, reply, seed=99)
    assert again is not None and again.job_id != first.job_id
    sent = fake_segmind.counters.payloads[-1]
    assert (sent["seed"], sent["bounding_box"]) == (99, "[100, 50, 500, 400]")
    assert (await ledger.quota_status(ALICE)).used == 2  # a new job, on the quota
    missing = Recorder()
    assert await service.again("nope", ALICE, missing) is None
    assert "no longer kept" in missing.failure[0].user_message


async def test_the_pipeline_counts_jobs_for_the_metrics(make_service, fake_segmind):
    service = make_service()
    await service.run(request(), Recorder())
    await service.run(request(), Recorder())  # the same again: from the store
    fake_segmind.behaviour.fail_message = "no object found"
    await service.run(request(seed=8), Recorder())
    sample = service.metrics.registry.get_sample_value
    assert sample("sam3d_jobs_total", {"platform": "discord", "outcome": "delivered"}) == 1
    assert sample("sam3d_jobs_total", {"platform": "discord", "outcome": "cached"}) == 1
    assert sample("sam3d_jobs_total", {"platform": "discord", "outcome": "refunded"}) == 1
    assert sample("sam3d_upstream_errors_total", {"code": "generation_failed"}) == 1
    assert sample("sam3d_upstream_seconds_count", {}) == 1


async def test_an_input_a_checker_trips_on_is_answered_not_dropped(make_service, ledger):
    class Tripping:
        async def validate(self, request):
            raise TypeError("corrupt EXIF")  # what Pillow raised on one such JPEG

    service = make_service(validator=Tripping())
    reply = Recorder()
    assert await service.run(request(), reply) is None
    error, refunded = reply.failure
    assert isinstance(error, errors.InputError) and "could not be read" in error.user_message
    assert await ledger.usage() == []


async def test_a_nearly_full_disk_refuses_new_jobs_before_anything_is_charged(
    make_service, ledger, fake_segmind, caplog
):
    service = make_service(free_disk=lambda: 100_000_000, min_free_bytes=500_000_000)
    reply = Recorder()
    assert await service.run(request(), reply) is None
    error, refunded = reply.failure
    assert isinstance(error, errors.DiskFull) and "nothing was charged" in error.user_message
    assert fake_segmind.counters.submits == 0 and await ledger.usage() == []
    assert any("MIN_FREE_DISK_MB" in r.message for r in caplog.records if r.levelname == "ERROR")


class DiskFillsWhileDownloading:
    """Segmind made (and billed) the model; writing it finds the disk full."""

    offline = False

    async def generate(self, job, workdir, on_submitted, on_processing, on_sending=None):
        if on_sending is not None:
            await on_sending()
        await on_submitted("req-full", {"request_id": "req-full"})
        raise OSError(errno.ENOSPC, "No space left on device")

    async def resume(self, resume_ref, workdir, on_processing):
        raise AssertionError("not resumed in this test")


async def test_a_model_the_disk_has_no_room_for_is_settled_honestly(make_service, ledger):
    """Billed upstream, lost to a full disk: the cost is recorded once and the job ends
    failed (never left half, never held), and the member is told why."""
    service = make_service(backend=DiskFillsWhileDownloading())
    reply = Recorder()
    assert await service.run(request(), reply) is None
    error, refunded = reply.failure
    assert isinstance(error, errors.DiskFull) and error.charged and not refunded
    [usage] = await ledger.usage()
    assert (usage.failed, usage.cost_micros) == (1, 65_000)
    assert await ledger.unfinished() == []


class LeakyRecorder(Recorder):
    """A chat client whose error repeats the key it was given, as some libraries' do."""

    async def deliver(self, result):
        raise ConnectionResetError(f"closed by peer (token={API_KEY})")


async def test_json_logs_are_one_object_a_line_naming_the_job_and_no_secret(
    make_service, ledger, settings_env
):
    import io
    import json
    import logging

    from bot.logs import setup_logging
    from bot.settings import load_settings

    settings_env.setenv("LOG_FORMAT", "JSON")
    settings_env.setenv("SEGMIND_API_KEY", API_KEY)
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging(load_settings(env_file=None), stream)
    try:
        await make_service().run(request(), LeakyRecorder())
        logging.getLogger("bot.test").info("after the job")
    finally:
        root.handlers[:], root.level = kept
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [job] = await ledger.usage()
    [failed] = [line for line in lines if line["message"].endswith("delivery failed")]
    [job_id] = {line["job_id"] for line in lines if line["job_id"]}
    assert failed["job_id"] == job_id and failed["level"] == "ERROR" and failed["time"]
    assert "ConnectionResetError" in failed["exc_info"]
    assert API_KEY not in stream.getvalue() and "[redacted]" in failed["exc_info"]
    assert lines[-1]["message"] == "after the job" and lines[-1]["job_id"] is None
    assert job.failed == 1


class ProgressRecorder(Recorder):
    """A Recorder that keeps the whole Progress (its job id and Cancel label) too."""

    def __init__(self):
        super().__init__()
        self.updates = []

    async def progress(self, update):
        self.updates.append(update)
        await super().progress(update)


async def test_cancel_while_queued_refunds_at_once_and_at_segmind_keeps_the_charge(
    make_service, ledger, fake_segmind
):
    """Cancel on a job that waits its turn: refunded and its slot back, at once; on one
    Segmind has: it is charged and still delivered, as its Cancel said up front."""
    fake_segmind.behaviour.held_seeds = {1}
    service = make_service(capacity=1)
    first, second = ProgressRecorder(), ProgressRecorder()
    running = asyncio.create_task(service.run(request(seed=1), first))
    for _ in range(200):
        if any(u.stage is Stage.SUBMITTED for u in first.updates):
            break
        await asyncio.sleep(0.01)
    waiting = asyncio.create_task(service.run(request(BOB, seed=2), second))
    for _ in range(200):
        if second.updates:
            break
        await asyncio.sleep(0.01)
    [queued] = [u for u in second.updates if u.stage is Stage.QUEUED]
    assert queued.cancel_label == "Cancel" and queued.job_id
    at_segmind = next(u for u in first.updates if u.stage is Stage.SUBMITTED)
    assert at_segmind.cancel_label == "Cancel (still charged)"

    assert "Only the member" in await service.cancel(queued.job_id, ALICE)
    said = await service.cancel(queued.job_id, BOB)
    assert said.startswith("Cancelled: nothing was charged")
    await asyncio.wait_for(waiting, 5)
    error, refunded = second.failure
    assert isinstance(error, errors.JobCancelled) and refunded
    assert (await ledger.quota_status(BOB)).used == 0
    assert fake_segmind.counters.submits == 1  # it never went upstream
    assert await service.cancel(queued.job_id, BOB) == "That job has already ended."

    assert "cannot stop a job it has" in await service.cancel(at_segmind.job_id, ALICE)
    fake_segmind.behaviour.held_seeds = set()
    await asyncio.wait_for(running, 10)
    assert first.result is not None  # charged and delivered
    assert (await ledger.budget()).committed_micros == 65_000


async def test_variations_whose_shared_post_fails_are_each_charged_once_and_kept(
    make_service, ledger, fake_segmind
):
    """Posted together: a post that fails after Segmind made them all leaves every job
    charged once, failed (not delivered), its result kept to be sent free; the member hears
    it, and nothing is refunded that Segmind billed."""
    told: list[str] = []

    async def post(results, notes):
        assert [index for index, _ in results] == [0, 1, 2]
        raise RuntimeError("the chat refused the message")

    async def show(update):
        pass

    async def tell(text):
        told.append(text)

    service = make_service()
    together = Together(3, post=post, tell=tell, show=show)
    results = await service.run_variations(
        request(),
        (1, 2, 3),
        [together.replier(i) for i in range(3)],
        idempotency_key="ask",
        ended=together.ended,
    )
    assert results == [None, None, None]
    assert fake_segmind.counters.submits == 3
    assert money(await ledger.budget()) == (20_000_000, 0, 3 * 65_000)
    [row] = await ledger.usage()
    assert (row.jobs, row.delivered, row.failed, row.refunded) == (3, 0, 3, 0)
    assert len(told) == 3 and all("It is kept" in text for text in told)
    again = Recorder()
    await service.run(request(seed=2), again)  # asked again: sent from the store, free
    assert again.result.cached and money(await ledger.budget())[2] == 3 * 65_000
