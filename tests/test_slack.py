"""The Slack adapter, driven the way Slack drives it: signed requests through the real Bolt app
on the bot's aiohttp server (HTTP mode), and envelopes over a WebSocket (Socket Mode), against
a loopback fake of Slack's Web API. The tests look at what reached the fake."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web
from aiohttp.abc import AbstractResolver

from adapters.slack import SlackAdapter
from adapters.slack.translate import parse_job_text
from bot.app import build_core
from bot.errors import AdapterFailed
from bot.settings import load_settings
from bot.web import build_web_app, start_web
from tests.conftest import photo_bytes
from tests.fakes import serve_on_loopback
from tests.fakes.segmind import API_KEY
from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, BOT_USER, SIGNING_SECRET, FakeSlack, stub_of
from tests.helpers import ROOT, bot_env, wait_until_ready
from tests.payloads import slack as payloads
from tests.pipeline import PictureRenderer, StuckRenderer

COMMANDS = itertools.count(1)
PHOTO_HOST = "photos.example"  # resolved to the fake by the test's own resolver


class ToLoopback(AbstractResolver):
    """Every name is the loopback fake (users' photo links, in tests)."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def fake_slack():
    async with FakeSlack() as fake:
        yield fake


@dataclass
class Harness:
    adapter: SlackAdapter
    core: object
    url: str
    session: aiohttp.ClientSession
    fake: FakeSlack

    @property
    def bot(self):
        return self.adapter.bot

    async def post(
        self, body: bytes, content_type: str = "application/x-www-form-urlencoded", **headers: str
    ) -> tuple[int, str, float]:
        signed = payloads.signed_headers(body, content_type=content_type)
        signed.update(headers)
        sent = time.monotonic()
        async with self.session.post(
            self.url + "/slack/events", data=body, headers=signed
        ) as response:
            return response.status, await response.text(), time.monotonic() - sent

    async def command(self, text: str = "", **fields) -> tuple[int, str, float]:
        # Each command has a response_url of its own, as Slack gives it.
        fields.setdefault("response_url", self.fake.response_url(f"cmd{next(COMMANDS)}"))
        return await self.post(payloads.form_body(payloads.slash(text, **fields)))

    async def interact(self, payload: dict) -> tuple[int, str, float]:
        return await self.post(payloads.interactive_body(payload))

    async def event(self, payload: dict, **headers: str) -> tuple[int, str, float]:
        return await self.post(payloads.event_body(payload), "application/json", **headers)

    async def settle(self, until=None, limit_s: float = 20.0) -> None:
        """Until the jobs started have ended (and `until` holds, if given)."""
        deadline = time.monotonic() + limit_s
        await asyncio.sleep(0.2)  # Bolt runs listeners after the acknowledgement
        while time.monotonic() < deadline:
            if not self.core.runner.tasks and (until is None or until()):
                break
            await asyncio.sleep(0.05)
        await asyncio.gather(*self.core.runner.tasks, return_exceptions=True)

    async def jobs(self) -> list:
        rows = await self.core.ledger.usage()
        return rows


@asynccontextmanager
async def running_slack(
    fake,
    fake_segmind,
    tmp_path,
    port,
    *,
    socket_mode=False,
    renderer=None,
    grace_s=10.0,
    **settings,
):
    values = {
        "segmind_api_key": API_KEY,
        "segmind_base_url": fake_segmind.url,
        "segmind_poll_interval_s": 0.05,
        "slack_bot_token": BOT_TOKEN,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": fake.api_url,
        "data_dir": tmp_path / "data",
        "render_enabled": False,
        "progress_edit_interval_s": 0.2,
        "http_port": port,
        **settings,
    }
    if socket_mode:
        values["slack_app_token"] = APP_TOKEN
    config = load_settings(None, **values)
    connector = aiohttp.TCPConnector(resolver=ToLoopback())
    async with (
        aiohttp.ClientSession(connector=connector) as fetch,
        build_core(config, fetch_session=fetch, renderer=renderer) as core,
        aiohttp.ClientSession() as client,
    ):
        adapter = SlackAdapter()
        app = build_web_app(core.links, config.data_dir, picker=core.picker)  # as `run` does
        app.add_routes(adapter.routes(core))
        runner = await start_web(app, "127.0.0.1", port)
        stop = asyncio.Event()
        running = asyncio.create_task(adapter.run(core, stop))
        try:
            for _ in range(200):
                if adapter.ready() or running.done():
                    break
                await asyncio.sleep(0.025)
            assert adapter.ready(), running.exception() if running.done() else "not ready"
            yield Harness(adapter, core, f"http://127.0.0.1:{port}", client, fake)
        finally:
            await core.service.shutdown(grace_s)
            stop.set()
            await running
            await runner.cleanup()


@pytest.fixture
async def slack(fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port):
    async with running_slack(fake_slack, fake_segmind, tmp_path, unused_tcp_port) as harness:
        yield harness


def photo_file(fake: FakeSlack, name="photo.png", data: bytes | None = None) -> dict:
    return fake.add_file(name, photo_bytes() if data is None else data)


def opened_view(fake: FakeSlack) -> dict:
    return fake.find("views.open")[-1].args["view"]


def uploaded(fake: FakeSlack) -> dict[str, dict]:
    """name -> upload, for files that reached a channel."""
    return {u["name"]: u for u in fake.uploads.values() if u.get("channel")}


async def submit_form(slack: Harness, values: dict, view_id: str | None = None):
    view = opened_view(slack.fake)
    return await slack.interact(payloads.view_submission(view, values, view_id=view_id))


def file_value(file: dict) -> dict:
    return {"type": "file_input", "files": [file]}


def text_value(text: str) -> dict:
    return {"type": "plain_text_input", "value": text}


# -- /sam3d and its form ----------------------------------------------------------------------


async def test_sam3d_alone_is_acknowledged_at_once_and_opens_the_form(slack, fake_slack):
    status, body, seconds = await slack.command("")
    assert status == 200 and seconds < 3.0
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    view = opened_view(fake_slack)
    blocks = {b["block_id"]: b for b in view["blocks"]}
    assert view["callback_id"] == "sam3d_job"
    assert blocks["image"]["element"]["type"] == "file_input"
    assert not blocks["image"]["optional"] and blocks["mask"]["optional"]
    assert set(blocks) == {
        "image",
        "mask",
        "prompt",
        "bbox",
        "points",
        "seed",
        "variations",
        "pick",
        "private",
    }
    assert blocks["pick"]["optional"] and blocks["pick"]["element"]["type"] == "checkboxes"
    seed = blocks["seed"]["element"]
    assert (seed["min_value"], seed["max_value"]) == ("0", "1000000")
    assert json.loads(view["private_metadata"])["channel_id"] == payloads.CHANNEL


async def test_the_form_runs_a_job_with_progress_and_uploads_the_model(
    slack, fake_slack, fake_segmind
):
    await slack.command("")
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    status, body, seconds = await submit_form(
        slack,
        {
            "image": file_value(photo_file(fake_slack)),
            "prompt": text_value("a red ball"),
            "seed": {"type": "number_input", "value": "42"},
        },
    )
    assert status == 200 and seconds < 3.0
    await slack.settle(until=lambda: uploaded(fake_slack))
    [progress] = fake_slack.find("chat.postMessage")
    assert progress.args["channel"] == payloads.CHANNEL and "⏳" in progress.args["text"]
    updates = fake_slack.find("chat.update")
    assert any("SAM 3D" in u.args["text"] for u in updates[:-1])
    files = uploaded(fake_slack)
    assert set(files) == {"model.glb", "splat.ply"}
    assert files["model.glb"]["data"] == fake_segmind.glb
    assert files["splat.ply"]["data"] == fake_segmind.ply
    comment = files["model.glb"]["comment"]
    assert f"<@{payloads.ALICE}>" in comment and "*a red ball*" in comment
    assert "Seed 42" in comment and "$0.065" in comment
    assert fake_segmind.counters.payloads[0]["seed"] == 42
    assert len({u.args["ts"] for u in updates}) == 1  # one message, changed as it goes
    done = updates[-1].args
    assert done["text"].startswith("✅")
    button = done["blocks"][1]["elements"][0]
    assert button["action_id"] == "sam3d_new_seed"
    [download] = fake_slack.find("download")
    assert download.args["auth"] == f"Bearer {BOT_TOKEN}"


async def test_a_double_click_on_submit_starts_one_job(slack, fake_slack, fake_segmind):
    await slack.command("")
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    values = {"image": file_value(photo_file(fake_slack))}
    first, second = await asyncio.gather(
        submit_form(slack, values, view_id="V00000DBL"),
        submit_form(slack, values, view_id="V00000DBL"),
    )
    assert first[0] == second[0] == 200
    await slack.settle(until=lambda: uploaded(fake_slack))
    assert fake_segmind.counters.submits == 1
    assert len(fake_slack.find("chat.postMessage")) == 1
    [row] = await slack.jobs()
    assert row.jobs == 1 and row.cost_micros == 65_000


@pytest.mark.parametrize("error", ["expired_trigger_id", "ratelimited"])
async def test_a_form_slack_will_not_open_is_explained(slack, fake_slack, error):
    """Slack refuses views.open once the 3 s trigger is spent, or rate-limits it: the member
    is told, not left with nothing."""
    if error == "ratelimited":
        fake_slack.per_second["views.open"] = 0
    else:
        fake_slack.failures["views.open"] = [error]
    await slack.command("")
    await slack.settle(until=lambda: fake_slack.hooks)
    [(_, said)] = fake_slack.hooks
    assert said["response_type"] == "ephemeral"
    assert "form" in said["text"] and "try again" in said["text"]
    assert len(fake_slack.find("views.open")) == 1  # not retried past the trigger's life


async def test_a_form_without_a_photo_file_is_refused_in_the_form(slack, fake_slack):
    await slack.command("")
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    notes = fake_slack.add_file("notes.pdf", b"%PDF-1.4", "application/pdf")
    status, body, _ = await submit_form(slack, {"image": file_value(notes)})
    assert status == 200
    answer = json.loads(body)
    assert answer["response_action"] == "errors" and "PNG" in answer["errors"]["image"]
    assert not fake_slack.find("chat.postMessage")


async def test_mistakes_in_the_form_are_shown_in_it_before_it_closes(
    slack, fake_slack, fake_segmind
):
    """A box outside the photo, points that are not points, a seed out of range: Slack shows
    each under its field and keeps the form open; nothing is posted, fetched or charged."""
    await slack.command("")
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    photo = photo_file(fake_slack)
    status, body, _ = await submit_form(
        slack,
        {
            "image": file_value(photo),
            "bbox": text_value(f"0,0,{photo['original_w'] + 50},10"),
            "points": text_value("here"),
            "seed": text_value("12345678"),
        },
    )
    assert status == 200
    answer = json.loads(body)
    assert answer["response_action"] == "errors"
    assert set(answer["errors"]) == {"bbox", "points", "seed"}
    assert not fake_slack.find("chat.postMessage") and fake_segmind.counters.submits == 0
    assert not [c for c in fake_slack.calls if c.method == "download"]


async def test_a_photo_over_the_size_limit_is_refused_in_the_form(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, max_image_bytes=1000
    ) as slack:
        await slack.command("")
        await slack.settle(until=lambda: fake_slack.find("views.open"))
        status, body, _ = await submit_form(slack, {"image": file_value(photo_file(fake_slack))})
        answer = json.loads(body)
        assert answer["response_action"] == "errors" and "larger than" in answer["errors"]["image"]
        assert not fake_slack.find("chat.postMessage")


async def test_a_link_with_options_runs_without_the_form(
    slack, fake_slack, fake_segmind, unused_tcp_port_factory
):
    image = await serve_photo(unused_tcp_port_factory())
    try:
        status, _, seconds = await slack.command(
            f"<{image}> wooden chair seed=7 bbox=100,60,540,420"
        )
        assert status == 200 and seconds < 3.0
        await slack.settle(until=lambda: uploaded(fake_slack))
    finally:
        await image.runner.cleanup()
    assert not fake_slack.find("views.open")
    sent = fake_segmind.counters.payloads[0]
    assert sent["seed"] == 7 and sent["prompt"] == "wooden chair"
    assert "Seed 7" in uploaded(fake_slack)["model.glb"]["comment"]


async def test_text_comes_as_slack_escapes_it_and_goes_to_the_model_as_written(
    slack, fake_slack, fake_segmind, unused_tcp_port_factory
):
    """Slack sends &, < and > as entities, in links too, and its own markup for mentions:
    the link is fetched with its real query, the prompt is what the member wrote, with no
    markup in it, and it is shown escaped once."""
    image = await serve_photo(unused_tcp_port_factory(), query={"w": "1", "h": "2"})
    try:
        await slack.command(f"salt &amp; pepper &lt;shaker&gt; <{image}?w=1&amp;h=2> <!here>")
        await slack.settle(until=lambda: uploaded(fake_slack))
    finally:
        await image.runner.cleanup()
    assert fake_segmind.counters.payloads[0]["prompt"] == "salt & pepper <shaker>"
    comment = uploaded(fake_slack)["model.glb"]["comment"]
    assert "salt &amp; pepper &lt;shaker&gt;" in comment and "&amp;amp;" not in comment


class PhotoServer(str):
    runner: web.AppRunner


async def serve_photo(port: int, query: dict[str, str] | None = None) -> PhotoServer:
    """A photo at a link; with `query`, only with exactly that query string (404 else)."""
    app = web.Application()
    data = photo_bytes()

    async def serve(request: web.Request) -> web.Response:
        if query is not None and dict(request.query) != query:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    app.router.add_get("/p.png", serve)
    runner, _ = await serve_on_loopback(app, port)
    url = PhotoServer(f"http://{PHOTO_HOST}:{port}/p.png")
    url.runner = runner
    return url


async def test_text_without_a_link_gets_a_hint_and_help_lists_the_ways_in(slack, fake_slack):
    # An acknowledgement's body is what the user alone sees.
    status, body, _ = await slack.command("just words")
    assert status == 200 and "link to the photo" in body
    status, body, _ = await slack.command("help")
    assert "Make 3D model" in body and "/sam3d quota" in body


def test_command_text_is_read_the_way_people_type_it():
    args = parse_job_text(
        "<https://x.test/a.png|a.png> red  chair seed=5 points=10,20;30,40 bbox=1,2,3,4"
    )
    assert args.url == "https://x.test/a.png" and args.prompt == "red chair"
    assert (args.seed, args.points, args.bbox) == ("5", "10,20;30,40", "1,2,3,4")
    assert parse_job_text("https://x.test/b.jpg").url == "https://x.test/b.jpg"


# -- the message shortcut and mentions --------------------------------------------------------


async def test_the_shortcut_asks_which_settings_then_runs_in_the_message_thread(
    slack, fake_slack, fake_segmind
):
    photo = photo_file(fake_slack)
    partial = {k: photo[k] for k in ("id", "name", "mimetype")}  # as in shortcut payloads
    status, _, seconds = await slack.interact(
        payloads.shortcut(
            [partial], response_url=fake_slack.response_url("sc"), message_ts="1700000000.000100"
        )
    )
    assert status == 200 and seconds < 3.0
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    view = opened_view(fake_slack)
    assert "file_input" not in json.dumps(view["blocks"][0])  # the photo is the message's
    await submit_form(slack, {"prompt": text_value("mug")})
    await slack.settle(until=lambda: uploaded(fake_slack))
    assert fake_slack.find("files.info")[0].args["file"] == photo["id"]
    [progress] = fake_slack.find("chat.postMessage")
    assert progress.args["thread_ts"] == "1700000000.000100"
    assert uploaded(fake_slack)["model.glb"]["thread_ts"] == "1700000000.000100"
    assert fake_segmind.counters.payloads[0]["prompt"] == "mug"


async def test_a_repeated_shortcut_starts_one_job(slack, fake_slack, fake_segmind):
    fake_segmind.behaviour.complete_after_s = 1.0
    photo = photo_file(fake_slack)
    shortcut = payloads.shortcut([photo], response_url=fake_slack.response_url("sc"))
    await slack.interact(shortcut)
    await slack.interact(shortcut)  # the same delivery again: one form
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    await slack.interact(payloads.shortcut([photo]))  # used again on the same message
    await slack.settle(until=lambda: len(fake_slack.find("views.open")) == 2)
    assert len(fake_slack.find("views.open")) == 2
    first, second = (c.args["view"] for c in fake_slack.find("views.open"))
    await slack.interact(payloads.view_submission(first, {}))
    await slack.interact(payloads.view_submission(second, {}))
    await slack.settle(until=lambda: uploaded(fake_slack))
    assert fake_segmind.counters.submits == 1
    assert "already on its way" in fake_slack.ephemerals()[0]


async def test_the_shortcut_on_a_message_without_a_photo_says_so(slack, fake_slack):
    pdf = fake_slack.add_file("notes.pdf", b"%PDF-1.4", "application/pdf")
    await slack.interact(payloads.shortcut([pdf], response_url=fake_slack.response_url("sc")))
    await slack.settle(until=lambda: fake_slack.hooks)
    assert "no PNG, JPEG or WebP photo" in fake_slack.ephemerals()[0]
    assert not fake_slack.find("views.open")


async def test_a_mention_with_a_photo_runs_in_its_thread(slack, fake_slack, fake_segmind):
    event = payloads.mention("red car seed=9", [photo_file(fake_slack)])
    status, _, seconds = await slack.event(event)
    assert status == 200 and seconds < 3.0
    await slack.settle(until=lambda: uploaded(fake_slack))
    ts = event["event"]["ts"]
    assert fake_slack.find("chat.postMessage")[0].args["thread_ts"] == ts
    assert uploaded(fake_slack)["splat.ply"]["thread_ts"] == ts
    sent = fake_segmind.counters.payloads[0]
    assert sent["prompt"] == "red car" and sent["seed"] == 9


async def test_a_mention_in_the_thread_of_a_photo_uses_that_photo(slack, fake_slack, fake_segmind):
    parent_ts = "1700000000.000200"
    fake_slack.messages[(payloads.CHANNEL, parent_ts)] = {
        "ts": parent_ts,
        "user": payloads.BOB,
        "text": "our new chair",
        "files": [photo_file(fake_slack)],
    }
    await slack.event(payloads.mention("chair", thread_ts=parent_ts))
    await slack.settle(until=lambda: uploaded(fake_slack))
    assert uploaded(fake_slack)["model.glb"]["thread_ts"] == parent_ts
    assert fake_segmind.counters.payloads[0]["prompt"] == "chair"


async def test_without_the_history_scope_a_thread_mention_says_what_to_do(slack, fake_slack):
    fake_slack.scopes.discard("channels:history")
    await slack.event(payloads.mention("chair", thread_ts="1700000000.000300"))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    text = fake_slack.find("chat.postEphemeral")[0].args["text"]
    assert "channels:history" in text and "Make 3D model" in text


async def test_in_a_private_channel_the_scope_named_is_the_private_one(slack, fake_slack):
    private = "G0000PRIV"
    fake_slack.conversation_kinds[private] = "groups"
    fake_slack.scopes.discard("groups:history")
    await slack.event(payloads.mention("chair", channel=private, thread_ts="1700000000.000300"))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    text = fake_slack.find("chat.postEphemeral")[0].args["text"]
    assert "groups:history" in text and "channels:history" not in text


async def test_a_photo_sent_to_the_bot_directly_runs_a_job_there(slack, fake_slack, fake_segmind):
    await slack.event(payloads.direct_message("", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    glb = uploaded(fake_slack)["model.glb"]
    assert glb["channel"] == payloads.DM and not glb.get("thread_ts")
    assert fake_segmind.counters.submits == 1


async def test_a_link_sent_to_the_bot_directly_runs_with_its_words(
    slack, fake_slack, fake_segmind, unused_tcp_port_factory
):
    image = await serve_photo(unused_tcp_port_factory())
    try:
        await slack.event(payloads.direct_message(f"<{image}> a green teapot"))
        await slack.settle(until=lambda: uploaded(fake_slack))
    finally:
        await image.runner.cleanup()
    assert fake_segmind.counters.payloads[0]["prompt"] == "a green teapot"


async def test_sam3d_in_the_bots_dm_runs_there(
    slack, fake_slack, fake_segmind, unused_tcp_port_factory
):
    image = await serve_photo(unused_tcp_port_factory())
    try:
        await slack.command(f"<{image}> a kettle", channel=payloads.DM)
        await slack.settle(until=lambda: uploaded(fake_slack))
    finally:
        await image.runner.cleanup()
    assert uploaded(fake_slack)["model.glb"]["channel"] == payloads.DM


async def test_what_is_not_a_persons_message_gets_no_answer(slack, fake_slack, fake_segmind):
    """The bot's own messages, edits, and a workflow's mention without a user: no job, no
    reply, no error."""
    photo = photo_file(fake_slack)
    for event in (
        payloads.direct_message("", [photo], bot_id="B0001"),
        payloads.direct_message("edited", subtype="message_changed"),
    ):
        status, _, _ = await slack.event(event)
        assert status == 200
    workflow = payloads.mention("chair", [photo])
    del workflow["event"]["user"]
    workflow["event"]["bot_id"] = "B0002"
    status, _, _ = await slack.event(workflow)
    assert status == 200
    await slack.settle()
    assert fake_segmind.counters.submits == 0
    assert not fake_slack.find("chat.postMessage") and not fake_slack.find("chat.postEphemeral")


async def test_a_retried_event_starts_one_job(slack, fake_slack, fake_segmind):
    event = payloads.mention("car", [photo_file(fake_slack)], event_id="Ev0RETRIED")
    await slack.event(event)
    status, _, _ = await slack.event(
        event, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )
    assert status == 200
    await slack.settle(until=lambda: uploaded(fake_slack))
    await asyncio.sleep(0.3)
    assert fake_segmind.counters.submits == 1
    assert len(fake_slack.find("chat.postMessage")) == 1


async def test_a_mention_without_a_photo_explains_how(slack, fake_slack):
    await slack.event(payloads.mention("make this 3d"))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    [told] = fake_slack.find("chat.postEphemeral")
    assert told.args["user"] == payloads.ALICE and "photo attached" in told.args["text"]


# -- refusals and failures --------------------------------------------------------------------


async def test_slack_can_verify_the_request_url(slack):
    status, body, _ = await slack.event(
        {"token": "legacy", "challenge": "c-123", "type": "url_verification"}
    )
    assert status == 200 and json.loads(body) == {"challenge": "c-123"}


async def test_requests_with_a_bad_signature_or_an_old_timestamp_are_refused(slack, fake_slack):
    body = payloads.form_body(payloads.slash(""))
    forged = payloads.signed_headers(body, secret="not-the-secret")
    stale = payloads.signed_headers(body, timestamp=int(time.time()) - 6 * 60)
    for headers in (forged, stale):
        async with slack.session.post(
            slack.url + "/slack/events", data=body, headers=headers
        ) as response:
            assert response.status == 401
    await asyncio.sleep(0.3)
    assert not fake_slack.find("views.open")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"payload=not-json", "application/x-www-form-urlencoded"),
        (b"payload=%5B1%2C2%5D", "application/x-www-form-urlencoded"),  # a list, not an object
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b"\xff\xfe", "application/json"),
    ],
)
async def test_a_signed_but_malformed_request_is_a_400_not_a_500(
    slack, fake_slack, body, content_type
):
    status, _, _ = await slack.post(body, content_type)
    assert status == 400
    await asyncio.sleep(0.1)
    assert status == 400 and not fake_slack.find("views.open")


async def test_a_missing_files_read_scope_is_explained(slack, fake_slack, fake_segmind):
    fake_slack.scopes.discard("files:read")  # Slack then answers downloads with a sign-in page
    await slack.event(payloads.mention("chair", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    [told] = fake_slack.find("chat.postEphemeral")
    assert "sign-in page" in told.args["text"] and "files:read" in told.args["text"]
    assert fake_segmind.counters.submits == 0
    assert fake_slack.find("chat.delete"), "the progress message is taken away"


async def test_a_photo_slack_redirects_to_its_cdn_is_fetched_without_the_token_there(
    slack, fake_slack, fake_segmind
):
    """url_private answers 302 to a pre-signed CDN link: followed, the token sent to Slack
    only (the pre-signed host refuses a request that brings one)."""
    fake_slack.redirect_downloads = True
    await slack.event(payloads.mention("red car", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    [asked] = [c for c in fake_slack.calls if c.method == "download"]
    [fetched] = [c for c in fake_slack.calls if c.method == "presigned"]
    assert asked.args["auth"] == f"Bearer {BOT_TOKEN}" and fetched.args["auth"] == ""
    assert fake_segmind.counters.submits == 1


async def test_a_photo_from_a_slack_connect_channel_is_looked_up_and_used(
    slack, fake_slack, fake_segmind
):
    """In a Slack Connect channel an event carries only a stub of the file; files.info
    gives the rest."""
    await slack.event(payloads.mention("lamp", [stub_of(photo_file(fake_slack))]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    assert fake_slack.find("files.info") and fake_segmind.counters.submits == 1


async def test_a_photo_the_free_plan_hides_is_explained(slack, fake_slack, fake_segmind):
    hidden = fake_slack.add_file("old.png", photo_bytes(), hidden_by_limit=True)
    await slack.event(payloads.mention("lamp", [hidden]))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    [told] = fake_slack.find("chat.postEphemeral")
    assert "hides that photo" in told.args["text"]
    assert fake_segmind.counters.submits == 0


async def test_a_file_object_the_bot_cannot_read_is_answered_not_left_hanging(
    slack, fake_slack, fake_segmind
):
    odd = {**photo_file(fake_slack), "size": {"bytes": 10}}  # not the integer Slack documents
    await slack.event(payloads.mention("chair", [odd]))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    [told] = fake_slack.find("chat.postEphemeral")
    assert "could not be read" in told.args["text"] and "nothing was charged" in told.args["text"]
    assert fake_slack.find("chat.delete"), "the progress message is taken away"
    assert fake_segmind.counters.submits == 0


async def test_a_bot_not_in_the_channel_says_how_to_invite_it(slack, fake_slack, fake_segmind):
    fake_slack.not_member.add("C0000SECRET")
    await slack.command("")
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    view = opened_view(fake_slack)
    view["private_metadata"] = json.dumps(
        {"channel_id": "C0000SECRET", "response_url": fake_slack.response_url("sc")}
    )
    await slack.interact(
        payloads.view_submission(view, {"image": file_value(photo_file(fake_slack))})
    )
    await slack.settle(until=lambda: fake_slack.hooks)
    assert "/invite @sam3d" in fake_slack.ephemerals()[0]
    assert fake_segmind.counters.submits == 0 and not fake_slack.find("download")
    assert await slack.jobs() == []


async def test_a_box_outside_the_photo_is_explained_to_the_user_alone(
    slack, fake_slack, fake_segmind
):
    await slack.event(payloads.mention("chair bbox=0,0,5000,10", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    [told] = fake_slack.find("chat.postEphemeral")
    assert "bbox" in told.args["text"] and told.args["user"] == payloads.ALICE
    assert fake_segmind.counters.submits == 0


async def test_an_upstream_failure_is_refunded_and_told_privately(slack, fake_slack, fake_segmind):
    fake_segmind.behaviour.fail_message = "no object found"
    await slack.event(payloads.mention("chair", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    [told] = fake_slack.find("chat.postEphemeral")
    assert "Nothing was charged" in told.args["text"]
    assert not uploaded(fake_slack) and fake_slack.find("chat.delete")
    [row] = await slack.jobs()
    assert row.refunded == 1 and row.cost_micros == 0


@pytest.mark.slow
async def test_fifty_people_at_once_in_one_channel_are_all_answered(
    slack, fake_slack, fake_segmind
):
    # Slack lets a bot post about one message a second per channel (bursts allowed): here 10.
    fake_slack.per_second = {"chat.postMessage": 10, "chat.update": 10}
    photos = [
        photo_file(fake_slack, f"p{i}.png", photo_bytes(colour=(i * 5, 40, 30))) for i in range(50)
    ]
    users = [f"U{i:08d}X" for i in range(50)]
    answers = await asyncio.gather(
        *(
            slack.event(payloads.mention("thing", [photo], user=user))
            for photo, user in zip(photos, users, strict=True)
        )
    )
    assert all(status == 200 for status, _, _ in answers)
    assert max(seconds for _, _, seconds in answers) < 3.0
    await slack.settle(
        until=lambda: (
            len(
                [
                    u
                    for u in fake_slack.uploads.values()
                    if u.get("channel") and u["name"] == "model.glb"
                ]
            )
            == 50
        ),
        limit_s=60,
    )
    models = [u for u in fake_slack.uploads.values() if u["name"] == "model.glb"]
    assert len(models) == 50 and fake_segmind.counters.submits == 50
    assert {m["comment"].split(">")[0] for m in models} == {f"<@{u}" for u in users}
    assert fake_slack.rate_limited > 0  # the limit was reached, and waited out
    assert not fake_slack.find("chat.postEphemeral")


@pytest.mark.slow
async def test_a_crowd_under_slacks_one_post_a_second_is_served_in_turn(
    slack, fake_slack, fake_segmind
):
    # Slack's own limit: about one post a second per channel. Posts wait their turn;
    # progress edits that meet the limit are dropped, so they never starve the posts.
    fake_slack.per_second = {"chat.postMessage": 1, "chat.update": 1}
    users = [f"U{i:08d}Y" for i in range(12)]
    for index, user in enumerate(users):
        await slack.event(
            payloads.mention(
                "thing",
                [photo_file(fake_slack, f"q{index}.png", photo_bytes(colour=(index * 9, 90, 30)))],
                user=user,
            )
        )
    await slack.settle(
        until=lambda: (
            len(
                [
                    u
                    for u in fake_slack.uploads.values()
                    if u.get("channel") and u["name"] == "model.glb"
                ]
            )
            == 12
        ),
        limit_s=90,
    )
    assert fake_segmind.counters.submits == 12
    assert not fake_slack.find("chat.postEphemeral")


# -- quota, admin and New seed ----------------------------------------------------------------


async def test_quota_answers_privately(slack, fake_slack):
    status, _, seconds = await slack.command("quota")
    assert status == 200 and seconds < 3.0
    await slack.settle(until=lambda: fake_slack.hooks)
    assert "Jobs left: 5 of 5 per 24 h" in fake_slack.ephemerals()[0]


async def test_admin_commands_are_for_admins_and_change_what_users_may_do(
    slack, fake_slack, fake_segmind
):
    fake_slack.admins.add(payloads.ALICE)
    await slack.command("admin quota 1", user=payloads.BOB)
    await slack.settle(until=lambda: fake_slack.hooks)
    assert "Only workspace admins" in fake_slack.ephemerals()[-1]
    await slack.command(f"admin quota 1 <@{payloads.BOB}|bob> 12")
    await slack.settle(until=lambda: len(fake_slack.hooks) == 2)
    assert fake_slack.ephemerals()[-1] == f"<@{payloads.BOB}>: 1 jobs per 12 h"
    await slack.event(payloads.mention("cup", [photo_file(fake_slack)], user=payloads.BOB))
    await slack.settle(until=lambda: uploaded(fake_slack))
    await slack.event(payloads.mention("mug", [photo_file(fake_slack)], user=payloads.BOB))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    [refused] = fake_slack.find("chat.postEphemeral")
    assert "1 job" in refused.args["text"] and refused.args["user"] == payloads.BOB
    assert fake_segmind.counters.submits == 1
    await slack.command(f"admin block <@{payloads.BOB}|bob> spam")
    await slack.command("admin pause maintenance")
    await slack.command("admin usage")
    await slack.settle(until=lambda: len(fake_slack.hooks) == 5)
    said = fake_slack.ephemerals()
    assert said[-3] == f"blocked {payloads.BOB}"
    assert said[-2] == "new jobs are paused in this workspace"
    assert payloads.BOB in said[-1] and "0.065" in said[-1]
    audit = await slack.core.ledger.audit_trail()
    assert {"slack:" + payloads.ALICE} <= {e.actor for e in audit}


async def test_admins_set_budgets_lift_blocks_and_pauses_refund_and_pick_channels(
    slack, fake_slack, fake_segmind
):
    fake_slack.admins.add(payloads.ALICE)
    await slack.event(payloads.mention("bowl", [photo_file(fake_slack)], user=payloads.BOB))
    await slack.settle(until=lambda: uploaded(fake_slack))
    job_id = fake_slack.find("chat.update")[-1].args["blocks"][1]["elements"][0]["value"]
    commands = [
        "admin budget 12.50",
        f"admin block {payloads.BOB}",
        f"admin unblock <@{payloads.BOB}|bob>",
        "admin pause",
        "admin resume",
        f"admin refund {job_id} wrong photo",
        "admin channel <#C0000ART|art> on",
        "admin quota lots",
    ]
    for count, command in enumerate(commands, 1):
        await slack.command(command)
        await slack.settle(until=lambda count=count: len(fake_slack.hooks) == count)
    assert fake_slack.ephemerals() == [
        "this workspace's monthly budget: $12.50",
        f"blocked {payloads.BOB}",
        f"unblocked {payloads.BOB}",
        "new jobs are paused in this workspace",
        "new jobs are open again",
        f"job {job_id}: the user has the quota slot back; the $0.065 it cost stays spent "
        "(Segmind billed it)",
        "<#C0000ART>: allowed. Jobs start in: <#C0000ART>.",
        "jobs: must be a whole number, unlimited or default",
    ]
    # Jobs now start only in #art: elsewhere the user is told where.
    await slack.event(payloads.mention("cup", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    assert "<#C0000ART>" in fake_slack.find("chat.postEphemeral")[-1].args["text"]
    assert fake_segmind.counters.submits == 1


async def test_a_listener_that_trips_tells_the_member_through_the_error_handler(slack, fake_slack):
    # A Delete button whose value is not the JSON the bot put there (an old or forged one).
    await slack.interact(
        payloads.button(
            "not json", action="sam3d_delete", response_url=fake_slack.response_url("oops")
        )
    )
    await slack.settle(until=lambda: fake_slack.hooks)
    assert fake_slack.ephemerals() == [
        "Something went wrong inside the bot; nothing was charged. Try again."
    ]
    assert not fake_slack.find("chat.delete")


async def test_details_and_delete_on_a_result(slack, fake_slack):
    await slack.event(payloads.mention("jug seed=11", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    header = fake_slack.find("chat.update")[-1].args
    buttons = {b["action_id"]: b for b in header["blocks"][1]["elements"]}
    assert set(buttons) == {
        "sam3d_new_seed",
        "sam3d_edit",
        "sam3d_details",
        "sam3d_delete",
        "sam3d_formats",
    }
    await slack.interact(
        payloads.button(
            buttons["sam3d_details"]["value"],
            action="sam3d_details",
            response_url=fake_slack.response_url("details"),
        )
    )
    await slack.settle(until=lambda: fake_slack.hooks)
    said = fake_slack.ephemerals()[0]
    assert "prompt: jug" in said and "seed: 11" in said and "cost: $0.065" in said
    delete = buttons["sam3d_delete"]
    assert delete["confirm"]["confirm"]["text"] == "Delete"
    await slack.interact(
        payloads.button(
            delete["value"],
            user=payloads.BOB,
            action="sam3d_delete",
            response_url=fake_slack.response_url("delete"),
        )
    )
    await slack.settle(until=lambda: len(fake_slack.hooks) == 2)
    assert "Only the person who asked" in fake_slack.ephemerals()[1]
    assert not fake_slack.find("files.delete")
    shared = [
        key for key, message in fake_slack.messages.items() if "jug" in (message.get("text") or "")
    ]
    assert shared  # the upload's own message, with the result's comment
    await slack.interact(payloads.button(delete["value"], action="sam3d_delete"))
    await slack.settle(until=lambda: len(fake_slack.find("chat.delete")) >= 2)
    assert all(u.get("deleted") for u in uploaded(fake_slack).values())
    assert len(fake_slack.find("files.delete")) == 2  # the model and the splat
    assert not [key for key in shared if key in fake_slack.messages]  # nothing left behind


async def test_new_seed_runs_the_photo_again_as_a_new_job(slack, fake_slack, fake_segmind):
    await slack.event(payloads.mention("lamp seed=3", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    job_id = fake_slack.find("chat.update")[-1].args["blocks"][1]["elements"][0]["value"]
    status, _, seconds = await slack.interact(payloads.button(job_id))
    assert status == 200 and seconds < 3.0
    await slack.settle(
        until=lambda: (
            fake_segmind.counters.submits == 2
            and len([u for u in fake_slack.uploads.values() if u.get("channel")]) == 4
        )
    )
    first, second = fake_segmind.counters.payloads
    assert first["prompt"] == second["prompt"] == "lamp" and second["seed"] != 3
    [row] = await slack.jobs()
    assert row.jobs == 2


async def test_edit_opens_the_form_filled_in_and_runs_the_same_photo_in_the_results_thread(
    slack, fake_slack, fake_segmind
):
    await slack.event(payloads.mention("lamp seed=3 points=20,20", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    job_id = fake_slack.find("chat.update")[-1].args["blocks"][1]["elements"][1]["value"]
    pressed = payloads.button(job_id, user=payloads.BOB, action="sam3d_edit")
    status, _, seconds = await slack.interact(pressed)
    assert status == 200 and seconds < 3.0
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    view = opened_view(fake_slack)
    blocks = {b["block_id"]: b for b in view["blocks"]}
    assert set(blocks) == {"image", "prompt", "bbox", "points", "seed"}  # no new upload
    assert job_id in blocks["image"]["text"]["text"]
    assert blocks["prompt"]["element"]["initial_value"] == "lamp"
    assert blocks["points"]["element"]["initial_value"] == "20,20"
    assert blocks["seed"]["element"]["initial_value"] == "3"
    assert "initial_value" not in blocks["bbox"]["element"]
    await slack.interact(
        payloads.view_submission(
            view,
            {
                "prompt": text_value("desk lamp"),
                "bbox": text_value("5,5,60,60"),
                "points": text_value(""),
                "seed": {"type": "number_input", "value": "3"},
            },
            user=payloads.BOB,
        )
    )
    await slack.settle(until=lambda: fake_segmind.counters.submits == 2)
    first, second = fake_segmind.counters.payloads
    assert second["prompt"] == "desk lamp" and second["bounding_box"] and second["seed"] == 3
    assert "point_coords" not in second or not second["point_coords"]
    assert first["image"] == second["image"]
    result_ts = pressed["message"]["ts"]
    progress = fake_slack.find("chat.postMessage")[-1].args
    assert progress["thread_ts"] == result_ts  # in the thread of the result it came from
    comments = [u["comment"] for u in uploaded(fake_slack).values() if u.get("comment")]
    assert any(f"Made from job `{job_id}`" in c and f"<@{payloads.BOB}>" in c for c in comments)


async def test_variations_say_their_price_first_and_come_in_one_thread(
    slack, fake_slack, fake_segmind
):
    mention = payloads.mention("jug seed=4 variations=3", [photo_file(fake_slack)])
    await slack.event(mention)
    await slack.settle(until=lambda: len(uploaded(fake_slack)) == 6)
    parent, *each = fake_slack.find("chat.postMessage")
    plan = parent.args["text"]
    assert "3 variations (seeds 4, 5, 6)" in plan and "$0.195 in all" in plan
    assert "leave you 2 of 5 jobs" in plan
    thread = mention["event"]["ts"]
    assert parent.args["thread_ts"] == thread and len(each) == 3
    assert all(p.args["thread_ts"] == thread for p in each)
    assert all(u["thread_ts"] == thread for u in fake_slack.uploads.values() if u.get("channel"))
    assert sorted(p["seed"] for p in fake_segmind.counters.payloads) == [4, 5, 6]
    [row] = await slack.jobs()
    assert (row.jobs, row.delivered, row.cost_micros) == (3, 3, 3 * 65_000)
    ends = [u.args["text"] for u in fake_slack.find("chat.update")]
    assert any("3 variations: 3 made" in text for text in ends)


async def test_variations_are_checked_like_any_setting(slack, fake_slack, fake_segmind):
    await slack.event(payloads.mention("jug variations=9", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: fake_slack.ephemerals())
    assert "variations: give 1 to 4" in fake_slack.ephemerals()[0]
    await slack.command("")
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    status, body, _ = await submit_form(
        slack,
        {
            "image": file_value(photo_file(fake_slack)),
            "variations": {"type": "static_select", "selected_option": {"value": "2"}},
            "pick": {"type": "checkboxes", "selected_options": [{"value": "pick"}]},
        },
    )
    assert json.loads(body)["errors"]["pick"] == "Pick the object for one model at a time."
    assert fake_segmind.counters.submits == 0


def posted_in(fake: FakeSlack, channel: str) -> list:
    """The bot's messages and uploads in a conversation."""
    messages = [c for c in fake.find("chat.postMessage") if c.args.get("channel") == channel]
    files = [u for u in fake.uploads.values() if u.get("channel") == channel]
    return messages + files


async def test_a_private_job_runs_in_the_members_dm_and_nothing_shows_in_the_channel(
    slack, fake_slack, fake_segmind
):
    await slack.event(payloads.mention("kettle private=yes", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: len(uploaded(fake_slack)) == 2)
    [progress] = fake_slack.find("chat.postMessage")
    assert progress.args["channel"] == payloads.ALICE  # Slack opens their DM with the bot
    assert {u["channel"] for u in uploaded(fake_slack).values()} == {payloads.DM}
    assert {u.args["channel"] for u in fake_slack.find("chat.update")} == {payloads.DM}
    assert not posted_in(fake_slack, payloads.CHANNEL)
    assert fake_segmind.counters.payloads[0]["prompt"] == "kettle"


async def test_the_forms_private_box_sends_the_job_to_the_members_dm(
    slack, fake_slack, fake_segmind
):
    await slack.command("")
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    await submit_form(
        slack,
        {
            "image": file_value(photo_file(fake_slack)),
            "private": {"type": "checkboxes", "selected_options": [{"value": "private"}]},
        },
    )
    await slack.settle(until=lambda: len(uploaded(fake_slack)) == 2)
    assert {u["channel"] for u in uploaded(fake_slack).values()} == {payloads.DM}
    assert not posted_in(fake_slack, payloads.CHANNEL)


async def test_a_private_result_the_dm_will_not_take_waits_behind_a_link_for_the_member(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, public_url="https://bot.example"
    ) as slack:
        fake_slack.failures["files.completeUploadExternal"] = ["internal_error"]
        await slack.event(payloads.mention("vase private=yes", [photo_file(fake_slack)]))
        await slack.settle(until=lambda: fake_slack.ephemerals())
        [row] = await slack.jobs()
        assert (row.jobs, row.failed, row.refunded) == (1, 1, 0)  # Segmind billed it: kept
    [said] = fake_slack.ephemerals()
    assert "would not let me post it in our DM (internal_error)" in said
    assert "|View in 3D>" in said and "<https://bot.example/m/" in said
    assert not posted_in(fake_slack, payloads.CHANNEL)  # still nothing in the channel


async def test_with_the_messages_tab_off_a_private_job_says_how_and_charges_nothing(
    slack, fake_slack, fake_segmind
):
    fake_slack.messages_tab = False
    await slack.event(payloads.mention("kettle private=yes", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: fake_slack.ephemerals())
    [said] = fake_slack.ephemerals()
    assert "Messages tab" in said and "nothing was charged" in said
    [told] = fake_slack.find("chat.postEphemeral")
    assert told.args["channel"] == payloads.CHANNEL and told.args["user"] == payloads.ALICE
    assert fake_segmind.counters.submits == 0 and not posted_in(fake_slack, payloads.CHANNEL)


async def test_admins_make_private_delivery_the_default_or_forbid_it_on_slack(
    slack, fake_slack, fake_segmind
):
    fake_slack.admins.add(payloads.ALICE)
    await slack.command("admin private default")
    await slack.settle(until=lambda: fake_slack.hooks)
    assert "unless they ask for the channel" in fake_slack.ephemerals()[0]
    await slack.event(payloads.mention("mug", [photo_file(fake_slack)], user=payloads.BOB))
    await slack.settle(until=lambda: len(uploaded(fake_slack)) == 2)
    assert {u["channel"] for u in uploaded(fake_slack).values()} == {"D" + payloads.BOB[1:]}
    await slack.command("admin private forbidden")
    await slack.settle(until=lambda: len(fake_slack.hooks) == 2)
    await slack.event(payloads.mention("mug private=yes seed=3", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: len(fake_slack.ephemerals()) == 3)
    assert any("turned private delivery off" in said for said in fake_slack.ephemerals())
    assert fake_segmind.counters.submits == 1


async def test_edit_of_a_job_whose_photo_is_gone_is_explained(slack, fake_slack):
    await slack.event(payloads.mention("lamp", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    job_id = fake_slack.find("chat.update")[-1].args["blocks"][1]["elements"][1]["value"]
    await slack.core.results.forget([job_id])
    await slack.interact(
        payloads.button(job_id, action="sam3d_edit", response_url=fake_slack.response_url("e"))
    )
    await slack.settle(until=lambda: fake_slack.hooks)
    assert not fake_slack.find("views.open")
    assert "no longer kept" in fake_slack.ephemerals()[0]


async def test_results_carry_the_picture_the_turntable_and_a_view_in_3d_link(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    async with running_slack(
        fake_slack,
        fake_segmind,
        tmp_path,
        unused_tcp_port,
        render_enabled=True,
        render_turntable_frames=4,
        render_turntable_size=96,
        render_size=128,
        public_url="https://bot.example",
    ) as slack:
        event = payloads.mention("ball", [photo_file(fake_slack)])
        await slack.event(event)
        await slack.settle(until=lambda: "turntable.gif" in uploaded(fake_slack), limit_s=90)
    files = uploaded(fake_slack)
    assert files["thumbnail.png"]["data"].startswith(b"\x89PNG")
    assert files["turntable.gif"]["data"].startswith(b"GIF8")
    assert files["turntable.gif"]["thread_ts"] == event["event"]["ts"]
    comment = files["model.glb"]["comment"]
    assert "|View in 3D>" in comment and "<https://bot.example/m/" in comment
    elements = fake_slack.find("chat.update")[-1].args["blocks"][1]["elements"]
    [delete] = [e for e in elements if e["action_id"] == "sam3d_delete"]
    assert len(json.loads(delete["value"])["files"]) == 4  # Delete takes the turntable too


async def test_a_job_running_when_the_bot_stopped_is_finished_after_the_restart(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    fake_segmind.behaviour.complete_after_s = 2.0
    event = payloads.mention("vase", [photo_file(fake_slack)])
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, job_lease_seconds=1
    ) as slack:
        await slack.event(event)
        for _ in range(100):
            if fake_segmind.counters.submits:
                break
            await asyncio.sleep(0.05)
        for job in slack.core.runner.tasks:
            job.cancel()  # the process stops with the job at Segmind
    assert not uploaded(fake_slack)
    await asyncio.sleep(1.2)  # its lease lapses
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, job_lease_seconds=1
    ) as restarted:
        for _ in range(200):
            if uploaded(fake_slack):
                break
            await asyncio.sleep(0.05)
        await restarted.core.service.wait_resumed()
        [row] = await restarted.jobs()
    assert row.delivered == 1 and row.cost_micros == 65_000
    assert fake_segmind.counters.submits == 1
    assert uploaded(fake_slack)["model.glb"]["thread_ts"] == event["event"]["ts"]
    [progress] = fake_slack.find("chat.postMessage")  # the same message, carried on
    assert fake_slack.find("chat.update")[-1].args["text"].startswith("✅")


async def test_a_job_stopped_while_rendering_is_posted_after_the_restart_from_its_files(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    stuck = StuckRenderer()
    event = payloads.mention("vase", [photo_file(fake_slack)])
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, renderer=stuck, grace_s=0.2
    ) as slack:
        await slack.event(event)
        await asyncio.wait_for(stuck.started.wait(), 10)
    assert not uploaded(fake_slack)
    asked = (fake_segmind.counters.polls, fake_segmind.counters.downloads)
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, renderer=PictureRenderer()
    ) as restarted:
        await restarted.settle(until=lambda: "model.glb" in uploaded(fake_slack))
        [row] = await restarted.jobs()
    files = uploaded(fake_slack)
    assert {"thumbnail.png", "model.glb", "splat.ply"} <= set(files)
    assert files["model.glb"]["thread_ts"] == event["event"]["ts"]
    assert (row.delivered, row.cost_micros) == (1, 65_000)
    assert (fake_segmind.counters.polls, fake_segmind.counters.downloads) == asked
    texts = [c.args["text"] for c in fake_slack.find("chat.update")]
    assert any("restarted" in t for t in texts) and texts[-1].startswith("✅")


# -- Socket Mode -----------------------------------------------------------------------------


async def test_socket_mode_acknowledges_envelopes_and_runs_the_same_handlers(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, socket_mode=True
    ) as slack:
        seconds, ack = await fake_slack.send_envelope(
            "slash_commands", payloads.slash("", response_url=fake_slack.response_url())
        )
        assert seconds < 3.0
        await slack.settle(until=lambda: fake_slack.find("views.open"))
        event = payloads.mention("kettle", [photo_file(fake_slack)], event_id="Ev0SOCKET")
        await fake_slack.send_envelope("events_api", event)
        await fake_slack.send_envelope("events_api", event, retry=1)
        await slack.settle(until=lambda: uploaded(fake_slack))
        status, _, _ = await slack.command("")  # no HTTP route in Socket Mode
    assert status == 404
    assert fake_segmind.counters.submits == 1
    assert uploaded(fake_slack)["model.glb"]["thread_ts"] == event["event"]["ts"]


# -- the real command, and the app manifest --------------------------------------------------


async def test_sam3d_bot_run_in_http_mode_answers_a_signed_command_within_3_s(
    fake_slack, tmp_path, unused_tcp_port
):
    env = bot_env(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=fake_slack.api_url,
        HTTP_PORT=str(unused_tcp_port),
        DATA_DIR=str(tmp_path / "data"),
        RENDER_ENABLED="false",
        LOG_LEVEL="DEBUG",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_ready(session, url, process)
            body = payloads.form_body(payloads.slash("", response_url=fake_slack.response_url()))
            sent = time.monotonic()
            async with session.post(
                url + "/slack/events", data=body, headers=payloads.signed_headers(body)
            ) as response:
                assert response.status == 200
            assert time.monotonic() - sent < 3.0
        for _ in range(100):
            if fake_slack.find("views.open"):
                break
            await asyncio.sleep(0.05)
        assert opened_view(fake_slack)["callback_id"] == "sam3d_job"
    finally:
        process.terminate()
        _, logged = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0
    logged = logged.decode()
    assert "views.open" in logged  # Slack's library logs its calls at DEBUG...
    assert BOT_TOKEN not in logged and SIGNING_SECRET not in logged  # ...never the secrets


def test_the_manifest_declares_everything_the_bot_uses():
    manifest = yaml.safe_load((ROOT / "slack-app-manifest.yml").read_text(encoding="utf-8"))
    schema = ROOT.parent / "shared" / "specs" / "slack-manifest.schema.2.0.0.json"
    if schema.exists():  # Slack's own schema of an app manifest
        jsonschema.validate(manifest, json.loads(schema.read_text(encoding="utf-8")))
    features = manifest["features"]
    assert [c["command"] for c in features["slash_commands"]] == ["/sam3d"]
    assert features["slash_commands"][0]["should_escape"] is True
    [shortcut] = features["shortcuts"]
    assert (shortcut["type"], shortcut["callback_id"]) == ("message", "sam3d_make")
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {
        "commands",
        "chat:write",
        "files:read",
        "files:write",
        "users:read",
        "app_mentions:read",
        "channels:history",
        "groups:history",
        "im:history",
    } <= scopes
    assert "im:write" not in scopes  # the bot never opens a conversation itself
    settings = manifest["settings"]
    assert settings["event_subscriptions"]["bot_events"] == [
        "app_mention",
        "message.im",
        "app_uninstalled",
        "tokens_revoked",
    ]
    assert features["app_home"]["messages_tab_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["event_subscriptions"]["request_url"].endswith("/slack/events")
    assert Path(ROOT / "README.md").read_text(encoding="utf-8").count("slack-app-manifest.yml") >= 1


@pytest.mark.parametrize(
    "event",
    [
        payloads.app_event("app_uninstalled"),
        payloads.app_event("tokens_revoked", tokens={"bot": [BOT_USER]}),
    ],
    ids=["uninstalled", "token revoked"],
)
async def test_losing_the_workspace_stops_the_bot_and_says_why(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port, event, caplog
):
    with pytest.raises(AdapterFailed, match="reinstall the app"):
        async with running_slack(fake_slack, fake_segmind, tmp_path, unused_tcp_port) as slack:
            status, _, _ = await slack.event(event)
            assert status == 200
            await slack.settle(until=lambda: not slack.adapter.ready())
            assert not slack.adapter.ready()
    assert any("stopping" in r.message for r in caplog.records if r.levelname == "ERROR")


async def test_an_enterprise_grid_member_runs_a_job_counted_in_their_workspace(
    slack, fake_slack, fake_segmind
):
    """On Enterprise Grid, users are W… ids and payloads carry the enterprise beside the
    workspace."""
    event = payloads.mention("vase", [photo_file(fake_slack)], user="W0000GRID")
    event["enterprise_id"] = "E0000ORG"
    event["event"]["user_team"] = payloads.TEAM
    event["authorizations"][0]["enterprise_id"] = "E0000ORG"
    event["authorizations"][0]["is_enterprise_install"] = False
    await slack.event(event)
    await slack.settle(until=lambda: uploaded(fake_slack))
    [usage] = await slack.core.ledger.usage()
    assert (usage.user_id, usage.guild_id, usage.delivered) == ("W0000GRID", payloads.TEAM, 1)


async def test_the_bot_asks_slack_who_it_is_once_however_many_requests_come(slack, fake_slack):
    await asyncio.gather(*(slack.command("help") for _ in range(20)))
    assert len(fake_slack.find("auth.test")) == 1


async def test_a_network_failure_as_a_job_starts_is_told_not_swallowed(
    slack, fake_slack, fake_segmind
):
    """The connection to Slack breaks as the progress message goes out: the member hears
    why (through the response_url, as the ephemeral message cannot go either), nothing runs."""
    fake_slack.unreachable |= {"chat.postMessage", "chat.postEphemeral"}
    await slack.command("<http://photos.example/p.png> chair")
    await slack.settle(until=lambda: fake_slack.hooks)
    [(_, said)] = fake_slack.hooks
    assert "could not be reached" in said["text"] and "nothing was charged" in said["text"]
    assert fake_segmind.counters.submits == 0


async def test_a_response_url_is_used_no_more_than_slack_allows(slack, fake_slack, caplog):
    """Where the bot may not post, it answers through the command's response_url, which Slack
    takes 5 times in 30 minutes: a sixth message is not sent to be refused."""
    fake_slack.not_member.add("C0000AWAY")
    replier = slack.adapter.bot.replier(
        {
            "channel_id": "C0000AWAY",
            "user_id": payloads.ALICE,
            "response_url": fake_slack.response_url("r"),
        }
    )
    for number in range(7):
        await replier.tell(f"message {number}")
    assert [body["text"] for name, body in fake_slack.hooks if name == "r"] == [
        f"message {n}" for n in range(5)
    ]
    assert not [r for r in caplog.records if "could not reach the user" in r.message]


async def test_a_token_revoked_while_running_stops_the_bot_and_says_why(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port, caplog
):
    with pytest.raises(AdapterFailed, match="token_revoked"):
        async with running_slack(fake_slack, fake_segmind, tmp_path, unused_tcp_port) as slack:
            fake_slack.token_revoked = True
            await slack.event(payloads.mention("chair", [photo_file(fake_slack)]))
            await slack.settle(until=lambda: not slack.adapter.ready())
            assert not slack.adapter.ready()
    assert fake_segmind.counters.submits == 0


def test_the_fake_refuses_blocks_and_views_slack_would():
    """The fake's Block Kit rules are slack_sdk.models' (Slack's limits), not the bot's."""
    from tests.fakes.slack import refusal_of

    long_section = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    answer = refusal_of("chat.postMessage", {"channel": "C1", "blocks": long_section})
    assert answer is not None and b"invalid_blocks" in answer.body
    empty_modal = {"type": "modal", "title": {"type": "plain_text", "text": "t"}, "blocks": []}
    answer = refusal_of("views.open", {"trigger_id": "1", "view": empty_modal})
    assert answer is not None and b"invalid_arguments" in answer.body
    assert refusal_of("chat.postMessage", {"channel": "C1", "text": "x" * 40_001}) is not None
    assert refusal_of("chat.postMessage", {"channel": "C1", "text": "fine"}) is None


# -- Pick the object (issue 18) ----------------------------------------------------------------

PICKED = {"type": "checkboxes", "selected_options": [{"value": "pick"}]}


def cells(*labels: str) -> dict:
    return {
        "type": "multi_static_select",
        "selected_options": [
            {"text": {"type": "plain_text", "text": c}, "value": c} for c in labels
        ],
    }


def cell(label: str) -> dict:
    return {
        "type": "static_select",
        "selected_option": {"text": {"type": "plain_text", "text": label}, "value": label},
    }


def views_shown(fake: FakeSlack) -> list[dict]:
    return [c.args["view"] for c in fake.find("views.update")]


async def form_to_picker(slack: Harness, fake: FakeSlack, **typed) -> dict:
    """/sam3d, the form with a photo and "Point at it on a grid first" ticked, until the
    picker shows in the same modal; the picker as Slack holds it."""
    await slack.command("")
    await slack.settle(until=lambda: fake.find("views.open"))
    [form_id] = fake.views
    values = {"image": file_value(photo_file(fake)), "pick": PICKED, **typed}
    status, body, seconds = await slack.interact(
        payloads.view_submission(fake.views[form_id], values, view_id=form_id)
    )
    assert status == 200 and seconds < 3.0
    answer = json.loads(body)
    assert answer["response_action"] == "update" and "Getting your photo" in json.dumps(answer)
    await slack.settle(until=lambda: fake.find("views.update"))
    return fake.views[form_id]


def blocks_of(view: dict) -> dict[str, dict]:
    return {b.get("block_id", b["type"]): b for b in view["blocks"]}


async def test_the_form_becomes_the_picker_and_make_it_sends_the_cells_pixels(
    slack, fake_slack, fake_segmind
):
    from adapters.slack.picking import BOX_FROM, BOX_TO, POINTS
    from bot.grid import Grid

    picker = await form_to_picker(slack, fake_slack, prompt=text_value("ball"))
    assert picker["callback_id"] == "sam3d_pick" and picker["submit"]["text"] == "Make it"
    blocks = blocks_of(picker)
    # No PUBLIC_URL: the grid is shared where the result will go, and shown from there.
    grid_file = blocks["preview"]["slack_file"]["id"]
    assert fake_slack.uploads[grid_file]["channel"] == payloads.CHANNEL
    groups = blocks[POINTS]["elements"][0]["option_groups"]
    assert len(groups) == 9 and [o["value"] for o in groups[3]["options"]][:2] == ["A4", "B4"]
    assert "$0.065 (5 left today)" in json.dumps(blocks)
    chosen = {POINTS: cells("C4", "F6")}
    await slack.interact(payloads.view_action(picker, POINTS, chosen))
    await slack.settle(until=lambda: len(views_shown(fake_slack)) >= 2)
    picker = fake_slack.views[picker["id"]]
    assert "points C4, F6" in blocks_of(picker)["chosen"]["text"]["text"]
    # The preview was redrawn with the points: shared anew, the one before removed.
    redrawn = blocks_of(picker)["preview"]["slack_file"]["id"]
    assert redrawn != grid_file and fake_slack.uploads[grid_file].get("deleted")
    assert fake_slack.uploads[redrawn]["data"] != fake_slack.uploads[grid_file]["data"]
    for action, value in ((BOX_FROM, cell("B2")), (BOX_TO, cell("H7"))):
        chosen[action] = value
        shown = len(views_shown(fake_slack))
        await slack.interact(payloads.view_action(picker, action, chosen))
        await slack.settle(until=lambda n=shown: len(views_shown(fake_slack)) > n)
        picker = fake_slack.views[picker["id"]]
    assert "points C4, F6; box B2:H7" in blocks_of(picker)["chosen"]["text"]["text"]
    assert fake_segmind.counters.submits == 0  # nothing charged while picking
    status, body, _ = await slack.interact(
        payloads.view_submission(picker, chosen, view_id=picker["id"])
    )
    assert status == 200 and body == ""  # the modal closes
    await slack.settle(until=lambda: uploaded(fake_slack).get("model.glb"))
    grid = Grid.for_size(640, 480)
    sent = fake_segmind.counters.payloads[0]
    assert json.loads(sent["point_coords"]) == [list(grid.centre(c)) for c in ("C4", "F6")]
    assert json.loads(sent["bounding_box"]) == list(grid.box("B2:H7"))
    assert sent["prompt"] == "ball"
    previews = [u for u in fake_slack.uploads.values() if u["name"] == "grid.jpg"]
    assert len(previews) == 4 and all(u.get("deleted") for u in previews)  # none left over
    assert not [m for m in fake_slack.messages.values() if "is picking" in (m["text"] or "")]


async def test_cancel_ends_the_pick_and_charges_nothing(slack, fake_slack, fake_segmind):
    picker = await form_to_picker(slack, fake_slack)
    grid_file = blocks_of(picker)["preview"]["slack_file"]["id"]
    status, _, _ = await slack.interact(payloads.view_closed(picker))
    assert status == 200
    await slack.settle(until=lambda: fake_slack.uploads[grid_file].get("deleted"))
    status, body, _ = await slack.interact(
        payloads.view_submission(picker, {}, view_id=picker["id"])
    )
    assert "already made or cancelled" in body  # a late Make it starts nothing
    await slack.settle()
    assert fake_segmind.counters.submits == 0 and await slack.jobs() == []


async def test_a_member_out_of_quota_is_told_in_the_modal_before_picking(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    from bot.models import Requester
    from bot.ports import NewJob

    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, quota_jobs=1
    ) as slack:
        alice = Requester("slack", payloads.ALICE, payloads.TEAM)
        await slack.core.ledger.reserve(NewJob(alice, 65_000, "k", {}, {}))
        said = await form_to_picker(slack, fake_slack)
    text = json.dumps(said)
    assert "You have used all 1 jobs" in text and "Nothing was charged" in text
    assert "submit" not in said  # nothing to pick on
    assert not [u for u in fake_slack.uploads.values() if u["name"] == "grid.jpg"]


async def test_with_a_public_url_each_change_redraws_the_preview_the_bot_serves(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    from adapters.slack.picking import POINTS

    base = f"http://127.0.0.1:{unused_tcp_port}"
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, public_url=base
    ) as slack:
        picker = await form_to_picker(slack, fake_slack)
        first = blocks_of(picker)["preview"]["image_url"]
        assert first.startswith(base + "/p/") and "slack_file" not in blocks_of(picker)["preview"]
        web = blocks_of(picker)["web"]["elements"][0]
        assert web["url"].startswith(base + "/p/") and web["text"]["text"] == "Pick on the web"
        async with slack.session.get(first) as before:
            assert before.status == 200 and before.content_type == "image/jpeg"
            unmarked = await before.read()
        await slack.interact(payloads.view_action(picker, POINTS, {POINTS: cells("F5")}))
        await slack.settle(until=lambda: len(views_shown(fake_slack)) >= 2)
        second = blocks_of(fake_slack.views[picker["id"]])["preview"]["image_url"]
        assert second != first  # a new address: Slack fetches the new picture
        async with slack.session.get(second) as after:
            assert after.content_type == "image/jpeg" and await after.read() != unmarked
        # Make it on the web page instead: the job reports in the channel as any other.
        async with slack.session.post(web["url"], json={"points": [[10, 20]]}) as made:
            assert made.status == 200
        await slack.settle(until=lambda: uploaded(fake_slack).get("model.glb"))
    assert fake_segmind.counters.payloads[0]["point_coords"] == "[[10, 20]]"
    assert uploaded(fake_slack)["model.glb"]["channel"] == payloads.CHANNEL
    assert not [u for u in fake_slack.uploads.values() if u["name"] == "grid.jpg"]


async def test_sam3d_pick_with_a_link_opens_the_picker(
    slack, fake_slack, fake_segmind, unused_tcp_port_factory
):
    image = await serve_photo(unused_tcp_port_factory())
    try:
        status, body, _ = await slack.command(f"pick <{image}> red ball")
        assert status == 200 and body == ""
        await slack.settle(until=lambda: fake_slack.find("views.update"))
    finally:
        await image.runner.cleanup()
    [opened] = fake_slack.find("views.open")
    assert "Getting your photo" in json.dumps(opened.args["view"])
    [shown] = views_shown(fake_slack)
    assert shown["callback_id"] == "sam3d_pick" and shown["submit"]["text"] == "Make it"
    assert fake_segmind.counters.submits == 0


async def test_a_mention_with_pick_offers_a_button_that_opens_the_picker(
    slack, fake_slack, fake_segmind
):
    from adapters.slack.picking import OPEN_PICKER

    await slack.event(payloads.mention("pick red ball", files=[photo_file(fake_slack)]))
    await slack.settle(until=lambda: fake_slack.find("chat.postEphemeral"))
    [offer] = fake_slack.find("chat.postEphemeral")
    button = offer.args["blocks"][0]["accessory"]
    assert button["action_id"] == OPEN_PICKER
    await slack.interact(payloads.button(button["value"], action=OPEN_PICKER))
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    [opened] = fake_slack.find("views.open")
    assert opened.args["view"]["callback_id"] == "sam3d_pick"
    stolen = payloads.button(button["value"], action=OPEN_PICKER, user="U0000BOB")
    await slack.interact(stolen)
    await slack.settle()
    assert len(fake_slack.find("views.open")) == 1  # someone else's pick stays closed
    assert fake_segmind.counters.submits == 0


# -- Formats (issue 19) --------------------------------------------------------------------------


async def test_formats_on_a_result_upload_the_chosen_file_in_its_thread_and_reuse_it(
    slack, fake_slack, fake_segmind, tmp_path
):
    import zipfile

    await slack.command("")
    await slack.settle(until=lambda: fake_slack.find("views.open"))
    await submit_form(slack, {"image": file_value(photo_file(fake_slack))})
    await slack.settle(until=lambda: uploaded(fake_slack))
    done = fake_slack.find("chat.update")[-1].args
    [menu] = [e for e in done["blocks"][1]["elements"] if e["type"] == "static_select"]
    assert menu["action_id"] == "sam3d_formats" and len(menu["options"]) == 8
    [obj] = [o for o in menu["options"] if o["value"].endswith(":obj")]

    def chose(option):
        payload = payloads.button(option["value"], action="sam3d_formats")
        payload["message"]["ts"] = done["ts"]
        payload["actions"][0] = {
            "type": "static_select",
            "action_id": "sam3d_formats",
            "block_id": "b",
            "selected_option": option,
            "action_ts": payload["actions"][0]["action_ts"],
        }
        return payload

    await slack.interact(chose(obj))
    await slack.settle(until=lambda: "model-obj.zip" in uploaded(fake_slack))
    sent = uploaded(fake_slack)["model-obj.zip"]
    assert sent["thread_ts"] == done["ts"] and f"<@{payloads.ALICE}>" in sent["comment"]
    (tmp_path / "m.zip").write_bytes(sent["data"])
    with zipfile.ZipFile(tmp_path / "m.zip") as archive:
        archive.extractall(tmp_path / "m")
    import trimesh

    reopened = trimesh.load(str(tmp_path / "m" / "model.obj"), force="mesh")
    source = trimesh.load(str(next((tmp_path / "data" / "jobs").glob("*/*.glb"))), force="mesh")
    assert len(reopened.faces) == len(source.faces)  # the job's own model, as OBJ
    [kept] = (tmp_path / "data" / "jobs").glob("*/format-obj.zip")
    made_at = kept.stat().st_mtime_ns
    await slack.interact(chose(obj))
    await slack.settle(
        until=lambda: (
            len([u for u in fake_slack.uploads.values() if u["name"] == "model-obj.zip"]) == 2
        )
    )
    assert kept.stat().st_mtime_ns == made_at  # the second is the same file, not made again
    assert fake_segmind.counters.submits == 1 and len(await slack.jobs()) == 1  # free


# -- History (issue 20) --------------------------------------------------------------------------


async def test_sam3d_history_pages_through_a_members_own_models(slack, fake_slack, fake_segmind):
    from bot.models import Requester
    from bot.ports import NewJob

    await slack.event(payloads.mention("first ball", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    alice = Requester("slack", payloads.ALICE, payloads.TEAM)
    for n in range(11):
        job = await slack.core.ledger.reserve(NewJob(alice, 65_000, f"k{n}", {"prompt": f"p{n}"}))
        await slack.core.ledger.refund(job.id, "upstream failed")
    bob = Requester("slack", "U0000BOB", payloads.TEAM)
    await slack.core.ledger.reserve(NewJob(bob, 65_000, "b", {"prompt": "bob's vase"}))
    url = fake_slack.response_url("history")
    status, _, _ = await slack.command("history", response_url=url)
    assert status == 200
    await slack.settle(until=lambda: fake_slack.hooks)
    [(_, said)] = fake_slack.hooks
    assert said["response_type"] == "ephemeral"
    assert said["text"] == "Your models, newest first (page 1 of 2, 12 in all):"
    sections = [b for b in said["blocks"] if b["type"] == "section"][1:]
    assert len(sections) == 10 and "*p10*" in sections[0]["text"]["text"]
    assert "bob's vase" not in json.dumps(said)
    [older] = said["blocks"][-1]["elements"]
    assert older["text"]["text"] == "Older"
    pressed = payloads.button(older["value"], action=older["action_id"], response_url=url)
    await slack.interact(pressed)
    await slack.settle(until=lambda: len(fake_slack.hooks) == 2)
    _, page_two = fake_slack.hooks[1]
    assert page_two["replace_original"] is True and "page 2 of 2" in page_two["text"]
    [first] = [b for b in page_two["blocks"] if "first ball" in b.get("text", {}).get("text", "")]
    assert "delivered" in first["text"]["text"]
    status, body, _ = await slack.command(
        "history <@U0000BOB>", response_url=fake_slack.response_url("nosy")
    )
    await slack.settle(until=lambda: len(fake_slack.hooks) == 3)
    assert "Only workspace admins" in fake_slack.hooks[2][1]["text"]


# -- Forget me (issue 20) ------------------------------------------------------------------------


async def test_forget_me_after_confirming_removes_the_members_files_and_keeps_the_bill(
    slack, fake_slack, fake_segmind, tmp_path
):
    await slack.event(payloads.mention("mine", [photo_file(fake_slack)]))
    await slack.settle(until=lambda: uploaded(fake_slack))
    [job], _ = await slack.core.ledger.jobs_of("slack", payloads.ALICE)
    folder = tmp_path / "data" / "jobs" / job.id
    assert folder.is_dir()
    committed = (await slack.core.ledger.budget()).committed_micros
    url = fake_slack.response_url("forget")
    await slack.command("forget-me", response_url=url)
    await slack.settle(until=lambda: fake_slack.hooks)
    [(_, question)] = fake_slack.hooks
    assert question["response_type"] == "ephemeral" and "cannot be undone" in question["text"]
    forget = next(e for e in question["blocks"][1]["elements"] if e["text"]["text"] == "Forget")
    stranger = payloads.button(
        forget["value"], action=forget["action_id"], user="U0000BOB", response_url=url
    )
    await slack.interact(stranger)
    await slack.settle(until=lambda: len(fake_slack.hooks) == 2)
    assert "not yours" in fake_slack.hooks[1][1]["text"] and folder.is_dir()
    mine = payloads.button(forget["value"], action=forget["action_id"], response_url=url)
    await slack.interact(mine)
    await slack.settle(until=lambda: len(fake_slack.hooks) == 3)
    done = fake_slack.hooks[2][1]
    assert done["replace_original"] is True and done["text"].startswith("Done: 1 job(s) of yours")
    assert "1 post(s) of the results deleted" in done["text"]
    assert not folder.exists()
    assert all(u.get("deleted") for u in uploaded(fake_slack).values())  # model and splat
    header = fake_slack.find("chat.update")[-1].args["ts"]
    assert header in {c.args["ts"] for c in fake_slack.find("chat.delete")}  # the result's
    assert not [k for k, m in fake_slack.messages.items() if "mine" in (m.get("text") or "")]
    assert await slack.core.ledger.jobs_of("slack", payloads.ALICE) == ([], 0)
    assert (await slack.core.ledger.budget()).committed_micros == committed


# -- Cancel (issue 20) ---------------------------------------------------------------------------


async def until(condition, limit_s: float = 20.0) -> None:
    """Until `condition` holds, without waiting for the jobs (one is held at Segmind)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_cancel_on_a_queued_jobs_progress_refunds_it(
    fake_slack, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    from bot.models import Requester

    fake_segmind.behaviour.held_seeds = {1}
    async with running_slack(
        fake_slack, fake_segmind, tmp_path, unused_tcp_port, max_concurrent_jobs=1
    ) as slack:
        await slack.event(payloads.mention("ball seed=1", [photo_file(fake_slack)]))
        await until(lambda: fake_segmind.counters.submits == 1)
        await slack.event(
            payloads.mention("vase seed=2", [photo_file(fake_slack, "b.png")], user="U0000BOB")
        )

        def cancel_buttons():
            return [
                element
                for update in fake_slack.find("chat.update")
                for block in update.args.get("blocks") or []
                if block["type"] == "actions"
                for element in block["elements"]
                if element["action_id"] == "sam3d_cancel" and "U0000BOB" in update.args["text"]
            ]

        await until(lambda: bool(cancel_buttons()))
        [button, *_] = cancel_buttons()
        assert button["text"]["text"] == "Cancel"
        url = fake_slack.response_url("cancel")
        await slack.interact(
            payloads.button(
                button["value"], action="sam3d_cancel", user="U0000BOB", response_url=url
            )
        )
        await until(lambda: any(name == "cancel" for name, _ in fake_slack.hooks))
        [said] = [body for name, body in fake_slack.hooks if name == "cancel"]
        assert said["text"].startswith("Cancelled") and said["response_type"] == "ephemeral"
        bob = Requester("slack", "U0000BOB", payloads.TEAM)
        assert (await slack.core.ledger.quota_status(bob)).used == 0
        fake_segmind.behaviour.held_seeds = set()
        await slack.settle()
        assert fake_segmind.counters.submits == 1
