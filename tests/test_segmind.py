"""The Segmind client against the loopback fake: every result form and every failure."""

from __future__ import annotations

import itertools
import logging
import time
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from bot import errors
from bot.images import ImageLimits, guarded_session, prepare_image
from bot.models import FileKind, ValidatedInput
from bot.segmind import RetryPolicy, SegmindClient, parse_reset_at
from tests.conftest import photo_bytes
from tests.fakes import serve_on_loopback
from tests.fakes.segmind import API_KEY, HTML_PAGE

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


def job(**overrides) -> ValidatedInput:
    image, _ = prepare_image(photo_bytes(), "image", ImageLimits())
    fields = dict(
        image=image, prompt="ball", bbox=(10, 20, 300, 400), points=((50, 60),), mask=None, seed=42
    )
    fields.update(overrides)
    return ValidatedInput(**fields)


class Events:
    def __init__(self):
        self.submitted: list[tuple[str, dict]] = []
        self.processing = 0

    async def on_submitted(self, request_id, ref):
        self.submitted.append((request_id, ref))

    async def on_processing(self):
        self.processing += 1


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def client(session, fake, **kw) -> SegmindClient:
    options = dict(
        api_key=SecretStr(API_KEY),
        base_url=fake.url,
        poll_interval_s=0.01,
        retry=FAST,
        rate_limit_max_wait_s=5,
    )
    options.update(kw)
    return SegmindClient(session, **options)


async def generate(session, fake, tmp_path, **kw):
    events = Events()
    result = await client(session, fake, **kw).generate(
        job(), tmp_path, events.on_submitted, events.on_processing
    )
    return result, events


# --- results ------------------------------------------------------------------------------------


async def test_v2_submit_poll_and_download_every_file(session, fake_segmind, tmp_path):
    result, events = await generate(session, fake_segmind, tmp_path)
    kinds = {f.kind: f for f in result.files}
    assert kinds[FileKind.MESH].path.read_bytes() == fake_segmind.glb
    assert kinds[FileKind.SPLAT].path.read_bytes() == fake_segmind.ply
    assert kinds[FileKind.MESH].path.suffix == ".glb"
    assert kinds[FileKind.SPLAT].path.suffix == ".ply"
    assert kinds[FileKind.MESH].source_url.endswith("/files/model.glb")
    assert result.cost_micros == 65_000
    assert result.remaining_credits == pytest.approx(9.87)
    assert events.submitted[0][0] == result.request_id
    assert events.processing == 1
    assert fake_segmind.counters.submits == 1


async def test_the_documented_request_body(session, fake_segmind, tmp_path):
    await generate(session, fake_segmind, tmp_path)
    sent = fake_segmind.counters.payloads[0]
    assert sent["bounding_box"] == "[10, 20, 300, 400]"
    assert sent["point_coords"] == "[[50, 60]]"
    assert sent["seed"] == 42 and sent["prompt"] == "ball"
    assert sent["include_artifacts"] is False


async def test_v1_blocking_call_reads_cost_from_headers(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.result_form = "raw_glb"
    fake_segmind.behaviour.cost = "0.071"
    result, events = await generate(session, fake_segmind, tmp_path, version="v1")
    assert fake_segmind.counters.v1_calls == 1 and fake_segmind.counters.submits == 0
    assert result.cost_micros == 71_000
    assert result.remaining_credits == pytest.approx(9.87)
    assert [f.kind for f in result.files] == [FileKind.MESH]
    assert result.files[0].path.read_bytes() == fake_segmind.glb


@pytest.mark.parametrize(
    ("form", "kinds"),
    [
        ("raw_glb", [FileKind.MESH]),
        ("raw_ply", [FileKind.SPLAT]),
        ("base64", [FileKind.MESH]),
        ("nested", [FileKind.MESH, FileKind.MESH]),
        ("zip", [FileKind.ARCHIVE, FileKind.MESH, FileKind.SPLAT]),
    ],
)
async def test_every_result_form_is_sniffed(session, fake_segmind, tmp_path, form, kinds):
    fake_segmind.behaviour.result_form = form
    result, _ = await generate(session, fake_segmind, tmp_path)
    assert sorted(f.kind for f in result.files) == sorted(kinds)
    meshes = [f for f in result.files if f.kind is FileKind.MESH]
    assert all(f.path.read_bytes() == fake_segmind.glb for f in meshes)


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error_type", "words"),
    [
        (400, {"error": "image could not be decoded"}, errors.UpstreamRejected, "decoded"),
        (401, {"error": "Invalid API key"}, errors.UpstreamAuthError, "SEGMIND_API_KEY"),
        (403, {"error": "Forbidden"}, errors.UpstreamAuthError, "refused this account"),
        (404, {"error": "Not found"}, errors.ResultExpired, "no longer"),
        (406, {"error": "Insufficient credits"}, errors.InsufficientCredits, "out of credits"),
        (406, {"error": "Unsupported content type"}, errors.UpstreamRejected, "content type"),
        (410, {"error": "Model retired"}, errors.ModelRetired, "retired"),
        (500, {"error": "Internal error"}, errors.UpstreamUnavailable, "500"),
        (502, {"error": "Bad gateway"}, errors.UpstreamUnavailable, "502"),
        (504, {"error": "Gateway timeout"}, errors.UpstreamUnavailable, "504"),
    ],
)
async def test_submit_errors_are_typed_uncharged_and_never_reposted(
    session, fake_segmind, tmp_path, status, body, error_type, words
):
    fake_segmind.behaviour.submit_error = (status, body)
    with pytest.raises(error_type) as caught:
        await generate(session, fake_segmind, tmp_path)
    assert words in caught.value.user_message
    assert caught.value.status == status
    assert caught.value.charged is False
    assert fake_segmind.counters.submits == 1  # a submit that reached Segmind is not repeated


async def test_html_error_page_gives_a_clear_message(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.html_error_status = 405
    with pytest.raises(errors.UpstreamRejected) as caught:
        await generate(session, fake_segmind, tmp_path)
    assert "SEGMIND_BASE_URL" in caught.value.user_message
    assert "<html" not in caught.value.user_message.lower()


async def test_wrong_key_is_reported_without_the_key(session, fake_segmind, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    events = Events()
    bad = client(session, fake_segmind, api_key=SecretStr("sk-wrong-123456"))
    with pytest.raises(errors.UpstreamAuthError) as caught:
        await bad.generate(job(), tmp_path, events.on_submitted, events.on_processing)
    assert "sk-wrong-123456" not in caught.value.user_message
    assert "sk-wrong-123456" not in caplog.text
    assert fake_segmind.counters.bad_keys == 1


async def test_rate_limit_waits_for_the_reset_then_succeeds(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.rate_limited = 2
    waits: list[float] = []

    async def sleep(seconds):
        waits.append(seconds)

    result, _ = await generate(session, fake_segmind, tmp_path, sleep=sleep)
    assert result.files
    assert fake_segmind.counters.rate_limited == 2
    assert fake_segmind.counters.submits == 3  # 429 means not accepted: retrying is safe
    assert 0.2 <= waits[0] <= 0.3 + 1.0 + 0.05  # until the reset, plus at most 1 s of jitter


async def test_rate_limit_beyond_the_bound_gives_up_cleanly(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.rate_limited = 100
    fake_segmind.behaviour.reset_in_s = 60

    async def sleep(seconds):
        pass

    with pytest.raises(errors.RateLimited) as caught:
        await generate(session, fake_segmind, tmp_path, sleep=sleep, rate_limit_max_wait_s=30)
    assert caught.value.charged is False
    assert "try again" in caught.value.user_message


async def test_failed_job_is_422_uncharged(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.fail_message = "no object found in image"
    with pytest.raises(errors.GenerationFailed) as caught:
        await generate(session, fake_segmind, tmp_path)
    assert "no object found" in caught.value.user_message
    assert caught.value.charged is False


async def test_slow_queue_reports_processing_once_and_finishes(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.polls_before_done = 6
    result, events = await generate(session, fake_segmind, tmp_path)
    assert result.files and events.processing == 1
    assert fake_segmind.counters.polls == 7


async def test_queue_longer_than_the_job_timeout(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.polls_before_done = 10_000
    with pytest.raises(errors.JobTimedOut):
        await generate(session, fake_segmind, tmp_path, job_timeout_s=0.2)


async def test_expired_request(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.expired = True
    with pytest.raises(errors.ResultExpired):
        await generate(session, fake_segmind, tmp_path)


async def test_status_502s_are_retried(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.status_errors = 2
    result, _ = await generate(session, fake_segmind, tmp_path)
    assert result.files


async def test_truncated_download_is_retried_and_complete(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.truncate_downloads = 2
    result, _ = await generate(session, fake_segmind, tmp_path)
    mesh = next(f for f in result.files if f.kind is FileKind.MESH)
    assert mesh.path.read_bytes() == fake_segmind.glb
    assert fake_segmind.counters.downloads == 4  # two cut short, then both files whole


async def test_expired_output_link_is_a_charged_failure(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.file_status = 403
    with pytest.raises(errors.ResultExpired) as caught:
        await generate(session, fake_segmind, tmp_path)
    assert caught.value.charged is True  # the 200 result was billed even if files are gone


async def test_output_over_the_size_cap_is_refused(session, fake_segmind, tmp_path):
    with pytest.raises(errors.OutputTooLarge):
        await generate(session, fake_segmind, tmp_path, max_output_bytes=1000)


async def test_unreachable_api_is_retried_then_reported(session, tmp_path, unused_tcp_port):
    class Nowhere:
        url = f"http://127.0.0.1:{unused_tcp_port}"

    with pytest.raises(errors.UpstreamUnavailable) as caught:
        await generate(session, Nowhere, tmp_path)
    assert caught.value.charged is False


async def test_resume_after_restart_uses_only_the_request_id(session, fake_segmind, tmp_path):
    events = Events()
    fake_segmind.behaviour.polls_before_done = 1000
    with pytest.raises(errors.JobTimedOut):  # stands in for a bot that stopped mid-job
        await client(session, fake_segmind, job_timeout_s=0.05).generate(
            job(), tmp_path, events.on_submitted, events.on_processing
        )
    fake_segmind.behaviour.polls_before_done = 0
    request_id, _ = events.submitted[0]
    result = await client(session, fake_segmind).resume(
        {"request_id": request_id}, tmp_path / "again", events.on_processing
    )
    assert result.request_id == request_id
    assert any(f.kind is FileKind.MESH for f in result.files)
    assert fake_segmind.counters.submits == 1


async def test_status_url_on_another_host_never_gets_the_key(session, fake_segmind, tmp_path):
    ref = {"request_id": "req-00001", "status_url": "http://127.0.0.2:1/steal"}
    fake_segmind.jobs["req-00001"] = {"created": 0, "polls": 5}
    result = await client(session, fake_segmind).resume(ref, tmp_path, Events().on_processing)
    assert result.files  # it used the API's own status path instead


async def test_account_balance(session, fake_segmind):
    balance = await client(session, fake_segmind).credits()
    assert balance.credits == pytest.approx(9.87)
    assert balance.free_credits == pytest.approx(1.5)


def test_reset_header_forms():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_reset_at("2026-01-01T12:00:30Z", now) == pytest.approx(30)
    assert parse_reset_at("2026-01-01T12:00:30.500Z", now) == pytest.approx(30.5)
    assert parse_reset_at(str(now + 10), now) == pytest.approx(10)
    assert parse_reset_at(str((now + 10) * 1000), now) == pytest.approx(10)
    assert parse_reset_at("Thu, 01 Jan 2026 12:01:00 GMT", now) == pytest.approx(60)
    assert parse_reset_at("soon", now) is None


def test_html_page_is_not_an_error_message():
    from bot.segmind.status import message_from as _message_from

    assert _message_from(HTML_PAGE, "text/html") == ""


@pytest.fixture
async def elsewhere():
    """Another origin on loopback that records what reaches it (an attacker's server)."""
    seen: list[dict] = []

    async def record(request):
        seen.append({"path": request.path, "headers": dict(request.headers)})
        return web.json_response({"status": "COMPLETED"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner, url = await serve_on_loopback(app)
    yield url, seen
    await runner.cleanup()


async def test_the_api_key_never_follows_a_redirect_to_another_origin(
    session, fake_segmind, tmp_path, elsewhere
):
    url, seen = elsewhere
    fake_segmind.behaviour.status_redirect = f"{url}/steal"
    with pytest.raises(errors.UpstreamError):
        await generate(session, fake_segmind, tmp_path)
    assert seen and all(s["path"] == "/steal" for s in seen)  # it went there...
    assert not any("x-api-key" in {k.lower() for k in s["headers"]} for s in seen)  # keyless


async def test_links_outside_the_documented_keys_are_never_fetched(
    session, fake_segmind, tmp_path, elsewhere
):
    url, seen = elsewhere
    fake_segmind.behaviour.result_extra = {"extras": {"report": f"{url}/internal/admin"}}
    result, _ = await generate(session, fake_segmind, tmp_path)
    assert seen == []
    assert {f.path.name for f in result.files} == {"model_glb.glb", "gaussian_splat.ply"}


async def test_a_model_link_to_a_private_address_is_refused_where_it_connects(
    session, fake_segmind, tmp_path, elsewhere
):
    url, seen = elsewhere
    fake_segmind.behaviour.file_base = url  # another origin, on a local address
    async with guarded_session() as guarded:
        with pytest.raises(errors.BadUpstreamResult, match="private address") as caught:
            await client(session, fake_segmind, foreign_session=guarded).generate(
                job(), tmp_path, Events().on_submitted, Events().on_processing
            )
    assert caught.value.charged  # Segmind billed the result it answered with
    assert seen == []


async def test_a_runaway_status_answer_is_refused_at_its_cap(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.status_padding = 3_000_000  # 3 MB of "status"
    with pytest.raises(errors.BadUpstreamResult, match="larger than the bot accepts") as caught:
        await generate(session, fake_segmind, tmp_path)
    assert not caught.value.charged  # it never completed: nothing billed


async def test_the_whole_job_downloads_included_keeps_to_the_job_timeout(
    session, fake_segmind, tmp_path
):
    fake_segmind.behaviour.file_dribble_s = 0.05  # a byte every 50 ms: hours for a model
    started = time.monotonic()
    with pytest.raises(errors.JobTimedOut) as caught:
        await generate(session, fake_segmind, tmp_path, job_timeout_s=1.0)
    assert time.monotonic() - started < 3.0
    assert caught.value.charged  # the model was made and billed; only fetching it failed


async def test_an_artifacts_archive_over_the_cap_is_left_out_not_the_model(
    session, fake_segmind, tmp_path
):
    fake_segmind.behaviour.result_extra = {"artifacts": f"{fake_segmind.url}/files/artifacts.zip"}
    cap = len(fake_segmind.glb) + len(fake_segmind.ply) + 1000  # the models fit, not the ZIP
    result, _ = await generate(session, fake_segmind, tmp_path, max_output_bytes=cap)
    kinds = sorted(f.kind.value for f in result.files)
    assert kinds == ["mesh", "splat"]  # delivered, without the archive


@pytest.mark.parametrize(
    "answer", [b"[" * 100_000 + b"]" * 100_000, b"[1, 2, 3]", b'{"model_glb": 5}', b"null"]
)
async def test_a_result_that_is_no_result_is_the_upstreams_clear_error(
    session, fake_segmind, tmp_path, answer
):
    fake_segmind.behaviour.raw_result = answer  # nested past sense, a list, a number, null
    with pytest.raises(errors.BadUpstreamResult) as caught:
        await generate(session, fake_segmind, tmp_path)
    assert caught.value.charged  # Segmind answered its result: it billed the job


async def test_v1_keeps_its_downloads_to_the_job_timeout_too(session, fake_segmind, tmp_path):
    fake_segmind.behaviour.file_dribble_s = 0.05
    started = time.monotonic()
    with pytest.raises(errors.JobTimedOut) as caught:
        await generate(session, fake_segmind, tmp_path, version="v1", job_timeout_s=1.0)
    assert time.monotonic() - started < 3.0 and caught.value.charged


async def test_the_rate_limit_wait_is_read_against_the_injected_clock(
    session, fake_segmind, tmp_path
):
    fake_segmind.behaviour.rate_limited = 1
    fake_segmind.behaviour.reset_in_s = 30  # longer than the client may wait (5 s)...
    with pytest.raises(errors.RateLimited):
        await generate(session, fake_segmind, tmp_path)
    fake_segmind.behaviour.rate_limited = 1  # ...unless its clock says that moment has passed
    result, _ = await generate(session, fake_segmind, tmp_path, clock=lambda: time.time() + 60)
    assert result.files


async def test_polls_learn_how_long_jobs_take_and_ask_less(session, fake_segmind, tmp_path):
    """At a fixed 20 ms a 0.4 s job takes about 20 status calls; after three jobs the client
    asks once at once, then near 0.4 s, then briefly: a handful, and the model no later."""
    fake_segmind.behaviour.complete_after_s = 0.4
    segmind = client(session, fake_segmind, poll_interval_s=0.02)
    polls = []
    for index in range(5):
        before = fake_segmind.counters.polls
        events = Events()
        started = time.monotonic()
        await segmind.generate(
            job(seed=index), tmp_path / str(index), events.on_submitted, events.on_processing
        )
        polls.append((fake_segmind.counters.polls - before, time.monotonic() - started))
    fixed_calls = polls[0][0]
    assert fixed_calls >= 15
    for calls, took in polls[3:]:
        assert calls <= 8 and took < 0.4 + 0.25


def test_the_schedule_waits_for_the_quickest_tenth_of_recent_jobs():
    from bot.segmind.polling import PollSchedule

    schedule = PollSchedule(2.0)
    assert list(itertools.islice(schedule.offsets(), 4)) == [0, 2, 4, 6]  # nothing learnt yet
    for seconds in (30, 28, 35, 26, 40):
        schedule.learn(seconds)
    offsets = list(itertools.islice(schedule.offsets(), 6))
    # At once; every 8 s until the quickest tenth (26 s) less a step; then every 1.5 s.
    assert offsets == [0, 8, 16, 24.5, 26, 27.5]


async def test_every_call_to_segmind_waits_for_its_turn_first(session, fake_segmind, tmp_path):
    """With SEGMIND_CALLS_PER_MINUTE the shared pace is asked before each call: the submit,
    every status poll and the result."""
    asked = []

    async def pace() -> None:
        asked.append(fake_segmind.counters.submits + fake_segmind.counters.polls)

    await generate(session, fake_segmind, tmp_path, pace=pace)
    calls = 1 + fake_segmind.counters.polls + fake_segmind.counters.results
    assert len(asked) >= calls and asked[0] == 0  # the first turn came before the submit
