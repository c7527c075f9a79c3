"""The Discord adapter, driven the way Discord drives it: interaction payloads dispatched through
discord.py's real CommandTree, against a loopback fake of Discord's REST API and CDN. The tests
look at what reached the fake."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager

import discord
import pytest

from adapters.discord.app import build_client
from bot.app import build_core
from bot.models import JobState, Requester
from bot.ports import NewJob
from bot.settings import load_settings
from tests.conftest import photo_bytes
from tests.fakes.discord import FakeDiscord
from tests.fakes.models3d import made_splat_ply
from tests.fakes.segmind import API_KEY
from tests.payloads import discord as payloads

EPHEMERAL = 64
CANNOT_SEND = discord.Permissions(view_channel=True, embed_links=True, attach_files=True)


FAKES: list[FakeDiscord] = []


@pytest.fixture
async def fake_discord():
    async with FakeDiscord() as fake:
        FAKES.append(fake)
        fake.cdn["photo.png"] = photo_bytes()
        fake.cdn["other.png"] = photo_bytes(colour=(20, 140, 40))
        fake.cdn["notes.png"] = b"<html>not an image</html>"
        yield fake


@asynccontextmanager
async def running_bot(fake_discord, fake_segmind, tmp_path, **settings):
    values = {
        "segmind_api_key": API_KEY,
        "segmind_base_url": fake_segmind.url,
        "segmind_poll_interval_s": 0.05,
        "discord_token": "bot-token",
        "discord_api_url": fake_discord.api_url,
        "data_dir": tmp_path / "data",
        "render_enabled": False,
        "progress_edit_interval_s": 0.2,
        **settings,
    }
    config = load_settings(None, **values)
    async with build_core(config) as core:
        client = build_client(core)
        async with client:
            await client.login("bot-token")
            yield client
            await core.service.shutdown(grace_s=10)


@pytest.fixture
async def bot(fake_discord, fake_segmind, tmp_path, settings_env):
    async with running_bot(fake_discord, fake_segmind, tmp_path) as client:
        yield client


def photo(fake, name="photo.png"):
    return payloads.attachment(name, fake.cdn_url(name), len(fake.cdn[name]))


DISPATCHED: dict[int, list[str]] = {}  # client -> interaction ids sent to it


def dispatch(client, payload) -> float:
    DISPATCHED.setdefault(id(client), []).append(payload["id"])
    FAKES[-1].interaction_sent(payload)  # Discord knows what it sent
    client._connection.parsers["INTERACTION_CREATE"](payload)
    return time.monotonic()


async def settle(client, until=None, limit_s: float = 20.0) -> None:
    """Until every interaction sent was answered and the jobs it started have ended (or
    `until` holds)."""
    fake = FAKES[-1]
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if until is not None:
            if until():
                break
            continue
        answered = {c.path.split("/")[2] for c in fake.callbacks()}
        if set(DISPATCHED.get(id(client), ())) <= answered and not client.core.runner.tasks:
            break
    await asyncio.gather(*client.core.runner.tasks, return_exceptions=True)


def callback_for(fake, payload):
    return next(c for c in fake.callbacks() if c.path.split("/")[2] == payload["id"])


async def test_commands_are_synced_at_start(bot, fake_discord):
    [sync] = fake_discord.find("PUT", "/commands")
    names = {c["name"] for c in sync.json}
    assert names == {
        "sam3d",
        "Make 3D model",
        "sam3d-quota",
        "sam3d-history",
        "sam3d-forget-me",
        "sam3d-admin",
    }
    sam3d = next(c for c in sync.json if c["name"] == "sam3d")
    seed = next(o for o in sam3d["options"] if o["name"] == "seed")
    prompt = next(o for o in sam3d["options"] if o["name"] == "prompt")
    assert (seed["min_value"], seed["max_value"], prompt["max_length"]) == (0, 1_000_000, 200)
    admin = next(c for c in sync.json if c["name"] == "sam3d-admin")
    assert int(admin["default_member_permissions"]) == 32  # Manage Server


async def test_a_job_from_a_server_defers_shows_progress_and_posts_the_model(
    bot, fake_discord, fake_segmind
):
    payload = payloads.sam3d(photo(fake_discord), prompt="a <@&123> ball @everyone", seed=42)
    sent = dispatch(bot, payload)
    await settle(bot)
    deferral = callback_for(fake_discord, payload)
    assert deferral.json["type"] == 5 and deferral.at - sent < 3.0
    assert any("⏳" in (c.json or {}).get("content", "") for c in fake_discord.original_edits())
    [post] = fake_discord.channel_posts()
    assert post.path == f"/channels/{payloads.CHANNEL_ID}/messages"
    names = {name for name, _ in post.files.values()}
    assert names == {"model.glb", "splat.ply"}
    sizes = {name: len(data) for name, data in post.files.values()}
    assert sizes["model.glb"] == len(fake_segmind.glb)
    embed = post.json["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Seed"] == "42" and fields["Cost"] == "$0.065"
    assert post.json["content"] == f"<@{payloads.ALICE_ID}>"
    mentions = post.json["allowed_mentions"]
    assert mentions["parse"] == [] and [str(u) for u in mentions["users"]] == [payloads.ALICE_ID]
    ids = [b["custom_id"] for b in post.json["components"][0]["components"]]
    assert [i.split(":")[1] for i in ids] == ["seed", "edit", "details", "delete"]
    assert "✅ Done" in fake_discord.original_edits()[-1].json["content"]
    assert fake_segmind.counters.payloads[0]["seed"] == 42


async def test_the_command_is_answered_before_a_slow_photo_download(
    bot, fake_discord, fake_segmind
):
    """Discord's CDN taking 3.2 s for the photo: the command was deferred before it, so the
    token lives and the model arrives."""
    fake_discord.cdn_takes_s = 3.2
    payload = payloads.sam3d(photo(fake_discord))
    dispatch(bot, payload)
    await settle(bot)
    deferral = callback_for(fake_discord, payload)
    assert deferral.status == 200 and deferral.json["type"] == 5
    [post] = fake_discord.channel_posts()
    assert post.status == 200 and {n for n, _ in post.files.values()} == {"model.glb", "splat.ply"}


async def test_a_rate_limited_post_is_sent_again_when_discord_says(bot, fake_discord):
    fake_discord.limit_next("POST", f"/channels/{payloads.CHANNEL_ID}/messages", retry_after=0.3)
    dispatch(bot, payloads.sam3d(photo(fake_discord)))
    await settle(bot)
    first, second = fake_discord.channel_posts()
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.3 and second.files


@pytest.mark.parametrize("gone", ["deleted", "archived"])
async def test_a_channel_that_went_away_meanwhile_gets_the_result_through_the_token(
    bot, fake_discord, fake_segmind, gone
):
    """The channel deleted (10003) or the thread archived (50083) while the model was made:
    the result still reaches the member, through the token, charged once."""
    fake_segmind.behaviour.complete_after_s = 0.3
    payload = payloads.sam3d(photo(fake_discord), channel=payloads.thread("800000000000000901"))
    dispatch(bot, payload)
    await until_submitted(fake_segmind)
    setattr(fake_discord.channels["800000000000000901"], gone, True)
    await settle(bot)
    [refused] = fake_discord.channel_posts()
    assert refused.answer["code"] == (10003 if gone == "deleted" else 50083)
    [result] = [c for c in fake_discord.original_edits() if c.files]
    assert result.status == 200 and result.json["embeds"][0]["title"] == "3D model ready"
    [usage] = await bot.core.ledger.usage()
    assert (usage.delivered, usage.cost_micros) == (1, 65_000)


async def until_submitted(fake_segmind) -> None:
    for _ in range(300):
        if fake_segmind.counters.submits:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("Segmind never got the job")


async def test_a_job_that_outlives_its_token_is_still_posted_in_the_channel(
    bot, fake_discord, fake_segmind
):
    fake_segmind.behaviour.complete_after_s = 0.3
    dispatch(bot, payloads.sam3d(photo(fake_discord)))
    await until_submitted(fake_segmind)
    fake_discord.advance(16 * 60)  # Discord's clock: the token's 15 minutes are over
    await settle(bot)
    [post] = fake_discord.channel_posts()
    assert post.status == 200 and post.files
    [usage] = await bot.core.ledger.usage()
    assert usage.delivered == 1


async def test_with_neither_a_token_nor_a_channel_the_model_waits_to_be_asked_again(
    bot, fake_discord, fake_segmind
):
    """The token expired and the bot may not post there: nobody can be told now, nothing
    crashes, and the same request later delivers the kept model without a second charge."""
    fake_segmind.behaviour.complete_after_s = 0.3
    dispatch(bot, payloads.sam3d(photo(fake_discord), app_permissions=CANNOT_SEND))
    await until_submitted(fake_segmind)
    fake_discord.advance(16 * 60)
    await settle(bot)
    refused = [c.answer for c in fake_discord.calls if isinstance(c.answer, dict)]
    assert any(answer.get("code") == 50027 for answer in refused)
    again = payloads.sam3d(photo(fake_discord), app_permissions=CANNOT_SEND)
    dispatch(bot, again)
    await settle(bot)
    assert fake_segmind.counters.submits == 1
    [result] = [c for c in fake_discord.original_edits() if again["token"] in c.path and c.files]
    assert result.status == 200


async def test_a_cached_result_through_the_token_keeps_its_text(bot, fake_discord, fake_segmind):
    """The first follow-up after a deferral replaces the thinking message; a cached result
    (no progress edit before it) must not be overwritten by a 'Done' edit after it."""
    dispatch(bot, payloads.sam3d(photo(fake_discord)))
    await settle(bot)
    again = payloads.sam3d(photo(fake_discord), app_permissions=CANNOT_SEND)
    dispatch(bot, again)
    await settle(bot)
    assert fake_segmind.counters.submits == 1  # the second came from the cache
    answered = [c for c in fake_discord.calls if again["token"] in c.path and c.status == 200]
    final = fake_discord.message(answered[-1].answer["id"]) if answered[-1].answer else None
    assert final is not None and final["embeds"][0]["title"] == "3D model ready"
    assert final["content"] == f"<@{payloads.ALICE_ID}>"  # not "✅ Done."
    assert {a["filename"] for a in final["attachments"]} >= {"model.glb", "splat.ply"}


async def test_a_job_in_a_dm_works_too(bot, fake_discord):
    payload = payloads.sam3d(photo(fake_discord), guild=False)
    dispatch(bot, payload)
    await settle(bot)
    [post] = fake_discord.channel_posts()
    assert {name for name, _ in post.files.values()} == {"model.glb", "splat.ply"}


async def test_the_commands_can_be_installed_by_members_and_used_in_dms(bot, fake_discord):
    [sync] = fake_discord.find("PUT", "/commands")
    by_name = {c["name"]: c for c in sync.json}
    for name in ("sam3d", "Make 3D model", "sam3d-quota"):
        assert sorted(by_name[name]["integration_types"]) == [0, 1]  # server and member
        assert sorted(by_name[name]["contexts"]) == [0, 1, 2]  # servers, its DM, members' DMs
    assert by_name["sam3d-admin"]["contexts"] == [0]


@pytest.mark.parametrize(
    "where",
    [{"guild": True}, {"guild": False, "context": 2}],
    ids=["a server that did not install the bot", "a DM between members"],
)
async def test_a_user_installed_app_answers_through_the_token(bot, fake_discord, where):
    """No channel post Discord would refuse: the result replaces the thinking message, and
    stays within the 5 follow-ups Discord allows a user-installed app."""
    payload = payloads.sam3d(photo(fake_discord), installed_by_user=True, **where)
    dispatch(bot, payload)
    await settle(bot)
    assert fake_discord.channel_posts() == []
    [result] = [c for c in fake_discord.original_edits() if c.files]
    assert result.status == 200 and result.json["embeds"][0]["title"] == "3D model ready"
    assert len([c for c in fake_discord.followups() if payload["token"] in c.path]) <= 5


MiB = 1024 * 1024
BIG_SPLAT = 165_000  # splats: an 11.2 MB PLY, over an unboosted server's 10 MiB per file


async def test_the_bots_own_post_is_held_to_the_servers_upload_limit_not_the_members(
    bot, fake_discord, fake_segmind
):
    """The interaction's attachment_size_limit counts the member's Nitro; the bot's post in
    the channel has the server's limit (10 MiB unboosted): a larger file goes as a link, and
    a splat over it comes thinned to fit as well (the viewer and Spark read it)."""
    fake_segmind.ply = made_splat_ply(BIG_SPLAT)
    dispatch(bot, payloads.sam3d(photo(fake_discord), size_limit=500 * MiB))
    await settle(bot)
    [post] = fake_discord.channel_posts()
    assert post.status == 200
    assert {name for name, _ in post.files.values()} == {"model.glb", "splat-light.ply"}
    light = next(data for name, data in post.files.values() if name == "splat-light.ply")
    assert len(light) <= 10 * MiB
    header = light[: light.index(b"end_header")].decode()
    kept = int(header.split("element vertex ")[1].split()[0])
    # Without the normals SAM 3D adds (always zero) they fit here; bigger ones are thinned.
    assert 150_000 <= kept <= BIG_SPLAT and "property float f_dc_0" in header
    assert "splat.ply (11.2 MB)" in post.json["content"]  # the full one behind its link
    assert fake_segmind.url in post.json["content"]
    assert "valid for about an hour" in post.json["content"]


async def test_through_the_token_files_are_held_to_the_interactions_limit(
    bot, fake_discord, fake_segmind
):
    sizes = {"model.glb": len(fake_segmind.glb), "splat.ply": len(fake_segmind.ply)}
    fits, too_big = sorted(sizes, key=sizes.__getitem__)
    payload = payloads.sam3d(
        photo(fake_discord), app_permissions=CANNOT_SEND, size_limit=sizes[fits] + 1
    )
    dispatch(bot, payload)
    await settle(bot)
    assert fake_discord.channel_posts() == []
    [answer] = [c for c in fake_discord.original_edits() if c.files]
    assert answer.status == 200
    assert {name for name, _ in answer.files.values()} == {fits}
    assert f"{too_big} (" in answer.json["content"]


async def test_errors_are_ephemeral_specific_and_say_nothing_was_charged(bot, fake_discord):
    both_missing = payloads.sam3d(None)
    dispatch(bot, both_missing)
    await settle(bot)
    answer = callback_for(fake_discord, both_missing).json
    assert answer["type"] == 4 and answer["data"]["flags"] & EPHEMERAL
    assert "attachment or as a link" in answer["data"]["content"]

    not_an_image = payloads.sam3d(photo(fake_discord, "notes.png"))
    dispatch(bot, not_an_image)
    await settle(bot)
    [error] = [c for c in fake_discord.followups() if (c.json or {}).get("flags") == EPHEMERAL]
    assert "not a PNG, JPEG or WebP" in error.json["content"] or "image" in error.json["content"]
    assert fake_discord.find("DELETE", "/messages/@original")  # the public progress is gone
    assert fake_discord.channel_posts() == []

    box = payloads.sam3d(photo(fake_discord), bbox="0,0,9000,9000")
    dispatch(bot, box)
    await settle(bot)
    texts = [c.json["content"] for c in fake_discord.followups()]
    assert any("bbox" in t for t in texts)


async def test_quota_refusal_says_when_the_next_job_frees(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    async with running_bot(fake_discord, fake_segmind, tmp_path, quota_jobs=1) as client:
        dispatch(client, payloads.sam3d(photo(fake_discord)))
        await settle(client)
        dispatch(client, payloads.sam3d(photo(fake_discord), seed=9))
        await settle(client)
        [refusal] = [
            c for c in fake_discord.followups() if (c.json or {}).get("flags") == EPHEMERAL
        ]
        assert "all 1 jobs allowed per 24 h" in refusal.json["content"]
        assert "next one frees" in refusal.json["content"]
        quota = payloads.slash("sam3d-quota")
        dispatch(client, quota)
        await settle(client)
        answer = callback_for(fake_discord, quota).json["data"]
        assert answer["flags"] & EPHEMERAL and "Jobs left: 0 of 1" in answer["content"]


async def test_missing_permissions_are_named_before_anything_runs(bot, fake_discord, fake_segmind):
    import discord

    cannot_attach = discord.Permissions(send_messages=True, embed_links=True)
    payload = payloads.sam3d(photo(fake_discord), app_permissions=cannot_attach)
    dispatch(bot, payload)
    await settle(bot)
    answer = callback_for(fake_discord, payload).json["data"]
    assert "Attach Files" in answer["content"] and answer["flags"] & EPHEMERAL
    assert fake_segmind.counters.submits == 0


async def test_a_channel_the_bot_may_not_post_in_gets_the_result_through_the_token(
    bot, fake_discord
):
    """Without Send Messages there, the bot does not try a post Discord must refuse (each 403
    counts against its invalid-request limit): the result replaces the thinking message."""
    payload = payloads.sam3d(photo(fake_discord), app_permissions=CANNOT_SEND)
    dispatch(bot, payload)
    await settle(bot)
    assert fake_discord.channel_posts() == []
    [result] = [c for c in fake_discord.original_edits() if c.files]
    assert result.status == 200
    assert {name for name, _ in result.files.values()} == {"model.glb", "splat.ply"}
    assert result.json["embeds"][0]["title"] == "3D model ready"
    bodies = [c.json for c in fake_discord.calls if isinstance(c.json, dict)]
    assert all("Done" not in (body.get("content") or "") for body in bodies)


async def test_delete_removes_a_result_that_went_through_the_token(bot, fake_discord):
    payload = payloads.sam3d(photo(fake_discord), app_permissions=CANNOT_SEND)
    dispatch(bot, payload)
    await settle(bot)
    [result] = [c for c in fake_discord.original_edits() if c.files]
    job_id = result.json["components"][0]["components"][0]["custom_id"].split(":")[2]
    press = payloads.button(
        f"sam3d:delete:{job_id}", message_id=result.answer["id"], app_permissions=CANNOT_SEND
    )
    dispatch(bot, press)
    await settle(bot)
    assert fake_discord.message(result.answer["id"]) is None
    assert not [c for c in fake_discord.calls if c.status >= 400]


def as_admin(sub: str, options: list | None = None, resolved: dict | None = None) -> dict:
    return payloads.admin(
        sub, options, resolved, user_id=payloads.ADMIN_ID, permissions=payloads.ADMIN_CAN
    )


def told(fake, payload) -> list[str]:
    """Every message an interaction's answer took (the response, then its follow-ups)."""
    token = payload["token"]
    calls = [c for c in fake.calls if token in c.path and c.method == "POST"]
    assert all(c.status == 200 for c in calls), [c.answer for c in calls]
    return [(c.json.get("data") or c.json)["content"] for c in calls]


async def test_a_long_usage_report_comes_in_messages_discord_accepts(bot, fake_discord):
    """Thirty members' usage: Discord refuses a message over 2000 characters (50035); the
    table comes in parts, each a code block of its own."""
    for i in range(30):
        who = Requester("discord", f"70000000000000{i:04d}", payloads.GUILD_ID, f"member{i}")
        job = await bot.core.ledger.reserve(NewJob(who, 65_000, f"key{i}", {"seed": i}))
        await bot.core.ledger.commit(job.id, 65_000)
        await bot.core.ledger.finish(job.id, JobState.DELIVERED)
    report = as_admin("usage")
    dispatch(bot, report)
    await settle(bot)
    parts = told(fake_discord, report)
    assert len(parts) >= 2 and all(len(p) <= 2000 for p in parts)
    assert all(p.count("```") % 2 == 0 for p in parts)
    shown = "".join(parts)
    assert all(f"70000000000000{i:04d}" in shown for i in range(20))  # the top 20


async def test_admin_texts_are_held_to_what_discord_and_members_can_read(bot, fake_discord):
    [sync] = fake_discord.find("PUT", "/commands")
    admin = next(c for c in sync.json if c["name"] == "sam3d-admin")
    options = [o for sub in admin["options"] for o in sub.get("options", [])]
    assert all(o["description"] != "…" for o in options)  # every option says what it is
    reasons = [o for o in options if o["name"] == "reason"]
    assert reasons and all(o["max_length"] == 200 for o in reasons)

    bogus = as_admin("refund", [{"name": "job", "type": 3, "value": "x" * 3000}])
    dispatch(bot, bogus)
    await settle(bot)
    [said] = told(fake_discord, bogus)
    assert "not a job id" in said and "xxxx" not in said

    channels = [f"80000000000000{i:04d}" for i in range(90)]
    for channel in channels:
        options, resolved = payloads.channel_option(channel)
        dispatch(
            bot,
            as_admin(
                "channel", [*options, {"name": "allowed", "type": 5, "value": True}], resolved
            ),
        )
        await settle(bot)
    last = fake_discord.callbacks()[-1]
    assert last.status == 200  # 90 channels listed (2,000+ characters), in parts


async def test_admin_commands_are_checked_again_in_the_handler(bot, fake_discord):
    sneaky = payloads.admin("pause")
    dispatch(bot, sneaky)
    await settle(bot)
    assert "Manage Server" in callback_for(fake_discord, sneaky).json["data"]["content"]

    pause = payloads.admin(
        "pause",
        [{"name": "reason", "type": 3, "value": "upgrade"}],
        user_id=payloads.ADMIN_ID,
        permissions=payloads.ADMIN_CAN,
    )
    dispatch(bot, pause)
    await settle(bot)
    assert (
        callback_for(fake_discord, pause).json["data"]["content"]
        == "new jobs are paused on this server"
    )
    job = payloads.sam3d(photo(fake_discord))
    dispatch(bot, job)
    await settle(bot)
    texts = [c.json["content"] for c in fake_discord.followups()]
    assert any("paused by the admins (upgrade)" in t for t in texts)

    budget = payloads.admin(
        "budget",
        [{"name": "usd", "type": 3, "value": "12.5"}],
        user_id=payloads.ADMIN_ID,
        permissions=payloads.ADMIN_CAN,
    )
    dispatch(bot, budget)
    await settle(bot)
    assert "$12.50" in callback_for(fake_discord, budget).json["data"]["content"]


async def test_the_message_command_asks_for_prompt_box_points_and_seed_then_runs(
    bot, fake_discord, fake_segmind
):
    one = payloads.make_3d([photo(fake_discord)])
    dispatch(bot, one)
    await settle(bot)
    modal = callback_for(fake_discord, one).json
    assert modal["type"] == 9 and modal["data"]["title"] == "Make a 3D model"
    custom_id = modal["data"]["custom_id"]
    rows = modal["data"]["components"]
    fields = [row["components"][0]["custom_id"] for row in rows if row["type"] == 1]
    [choices] = [row["component"] for row in rows if row["type"] == 18]
    assert choices["type"] == 22 and not choices["required"]  # a checkbox group, optional
    assert [o["value"] for o in choices["options"]] == ["pick", "private"]
    answers = ["mug", "10,10,50,50", "30,30", "77"]
    submit = payloads.modal_submit(
        custom_id, dict(zip(fields, answers, strict=True)), groups={choices["custom_id"]: []}
    )
    dispatch(bot, submit)
    await settle(bot)
    assert callback_for(fake_discord, submit).json["type"] == 5
    [post] = fake_discord.channel_posts()
    assert post.files and fake_segmind.counters.payloads[0]["seed"] == 77
    assert fake_segmind.counters.payloads[0]["prompt"] == "mug"
    sent = fake_segmind.counters.payloads[0]
    assert sent["bounding_box"] and sent["point_coords"]  # the box and points typed in the form

    several = payloads.make_3d([photo(fake_discord), photo(fake_discord, "other.png")])
    dispatch(bot, several)
    await settle(bot)
    picker = callback_for(fake_discord, several).json["data"]
    assert picker["flags"] & EPHEMERAL
    options = picker["components"][0]["components"][0]["options"]
    assert [o["label"] for o in options] == ["photo.png", "other.png"]

    nothing = payloads.make_3d([])
    dispatch(bot, nothing)
    await settle(bot)
    assert "no image" in callback_for(fake_discord, nothing).json["data"]["content"]


async def test_buttons_work_on_a_freshly_started_bot(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    async with running_bot(fake_discord, fake_segmind, tmp_path) as first:
        dispatch(first, payloads.sam3d(photo(fake_discord), prompt="ball"))
        await settle(first)
    [post] = fake_discord.channel_posts()
    job_id = post.json["components"][0]["components"][0]["custom_id"].split(":")[2]

    async with running_bot(fake_discord, fake_segmind, tmp_path) as restarted:
        details = payloads.button(f"sam3d:details:{job_id}")
        dispatch(restarted, details)
        await settle(restarted)
        answer = callback_for(fake_discord, details).json["data"]
        assert answer["flags"] & EPHEMERAL and "prompt: ball" in answer["content"]

        stranger = payloads.button(f"sam3d:delete:{job_id}", user_id=payloads.BOB_ID)
        dispatch(restarted, stranger)
        await settle(restarted)
        assert "Only the person" in callback_for(fake_discord, stranger).json["data"]["content"]
        posted = post.answer["id"]
        owner = payloads.button(f"sam3d:delete:{job_id}", message_id=posted)
        dispatch(restarted, owner)
        await settle(restarted)
        assert fake_discord.message(posted) is None  # gone from the channel
        twice = payloads.button(f"sam3d:delete:{job_id}", message_id=posted)
        dispatch(restarted, twice)
        await settle(restarted)
        [said] = [c for c in fake_discord.followups() if twice["token"] in c.path]
        assert said.json["flags"] & EPHEMERAL and "already deleted" in said.json["content"]

        again = payloads.button(f"sam3d:seed:{job_id}")
        dispatch(restarted, again)
        await settle(restarted, until=lambda: len(fake_discord.channel_posts()) == 2)
        assert callback_for(fake_discord, again).json["type"] == 5
        assert len(fake_discord.channel_posts()) == 2
        assert fake_segmind.counters.payloads[-1]["prompt"] == "ball"


@pytest.mark.slow
async def test_fifty_commands_at_once_are_all_deferred_in_time(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    fake_segmind.behaviour.complete_after_s = 1.0
    # Pictures are drawn (small, no turntables) in the worker process while interactions
    # keep arriving: the event loop must answer each within Discord's 3 s regardless.
    async with running_bot(
        fake_discord,
        fake_segmind,
        tmp_path,
        render_enabled=True,
        render_size=128,
        render_turntable=False,
        max_concurrent_jobs=8,
    ) as client:
        sent = {}
        for index in range(50):
            payload = payloads.sam3d(
                photo(fake_discord), seed=index, user_id=str(700_000_000_000_100_000 + index)
            )
            sent[payload["id"]] = dispatch(client, payload)
        await settle(client, until=lambda: len(fake_discord.channel_posts()) == 50, limit_s=120)
        late = [c for c in fake_discord.callbacks() if c.at - sent[c.path.split("/")[2]] >= 3.0]
        assert len(fake_discord.callbacks()) == 50 and late == []
        assert len(fake_discord.channel_posts()) == 50


async def allow_channel(bot, fake_discord, channel_id: str) -> str:
    options, resolved = payloads.channel_option(channel_id)
    allow = payloads.admin(
        "channel",
        [*options, {"name": "allowed", "type": 5, "value": True}],
        resolved,
        user_id=payloads.ADMIN_ID,
        permissions=payloads.ADMIN_CAN,
    )
    dispatch(bot, allow)
    await settle(bot)
    return callback_for(fake_discord, allow).json["data"]["content"]


def told_alone(fake, payload) -> str:
    """What the member alone was told after the command was deferred: the thinking message
    gives way to an ephemeral follow-up."""
    token = payload["token"]
    assert any(c.method == "DELETE" and token in c.path for c in fake.calls)
    [told] = [c for c in fake.followups() if token in c.path]
    assert told.json["flags"] & EPHEMERAL and told.status == 200
    return told.json["content"]


async def test_admins_keep_jobs_to_some_channels(bot, fake_discord, fake_segmind):
    elsewhere = "800000000000000555"
    said = await allow_channel(bot, fake_discord, elsewhere)
    assert said == f"<#{elsewhere}>: allowed. Jobs start in: <#{elsewhere}>."
    here = payloads.sam3d(photo(fake_discord))
    dispatch(bot, here)
    await settle(bot)
    assert callback_for(fake_discord, here).json["type"] == 5  # answered first, always
    assert f"<#{elsewhere}>" in told_alone(fake_discord, here)
    assert fake_segmind.counters.submits == 0


async def test_an_allowed_channel_allows_its_threads_and_a_category_its_channels(
    bot, fake_discord, fake_segmind
):
    category, other = "800000000000000700", "800000000000000701"
    await allow_channel(bot, fake_discord, payloads.CHANNEL_ID)
    await allow_channel(bot, fake_discord, category)
    in_thread = payloads.sam3d(photo(fake_discord), channel=payloads.thread("800000000000000702"))
    in_category = payloads.sam3d(
        photo(fake_discord), channel=payloads.text_channel(other, category), seed=7
    )
    for payload in (in_thread, in_category):
        dispatch(bot, payload)
        await settle(bot)
    assert fake_segmind.counters.submits == 2
    posts = {c.path.split("/")[2] for c in fake_discord.channel_posts()}
    assert posts == {"800000000000000702", other}


async def test_an_upstream_failure_is_told_with_the_refund(bot, fake_discord, fake_segmind):
    fake_segmind.behaviour.fail_message = "no object found"
    dispatch(bot, payloads.sam3d(photo(fake_discord)))
    await settle(bot)
    [error] = [c for c in fake_discord.followups() if (c.json or {}).get("flags") == EPHEMERAL]
    assert "Nothing was charged." in error.json["content"]
    assert fake_discord.channel_posts() == []


async def test_the_turntable_joins_the_result_when_it_is_ready(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    async with running_bot(
        fake_discord,
        fake_segmind,
        tmp_path,
        render_enabled=True,
        render_size=128,
        render_turntable_size=96,
        render_turntable_frames=4,
    ) as client:
        dispatch(client, payloads.sam3d(photo(fake_discord)))
        await settle(client, until=lambda: fake_discord.find("PATCH", "/channels/"), limit_s=60)
        [post] = fake_discord.channel_posts()
        assert "thumbnail.png" in {name for name, _ in post.files.values()}
        assert post.json["embeds"][0]["image"]["url"] == "attachment://thumbnail.png"
        [edit] = fake_discord.find("PATCH", "/channels/")
        assert {name for name, _ in edit.files.values()} == {"turntable.gif"}
        assert edit.json["embeds"][0]["image"]["url"] == "attachment://turntable.gif"
        kept = {a.get("filename") for a in edit.json["attachments"]}
        assert {"model.glb", "splat.ply", "thumbnail.png"} <= kept
        # The still moves to the embed's corner instead of hanging loose under it.
        assert edit.json["embeds"][0]["thumbnail"]["url"] == "attachment://thumbnail.png"
        shown = fake_discord.message(post.answer["id"])
        assert shown is not None
        assert {"thumbnail.png", "turntable.gif"} <= {a["filename"] for a in shown["attachments"]}


async def test_an_instance_runs_its_share_of_the_shards(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    async with running_bot(
        fake_discord, fake_segmind, tmp_path, discord_shard_count=4, discord_shard_ids="1,3"
    ) as client:
        assert (client.shard_count, client.shard_ids) == (4, [1, 3])


async def test_commands_go_to_one_development_server_when_set(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    async with running_bot(
        fake_discord, fake_segmind, tmp_path, discord_dev_guild_id=payloads.GUILD_ID
    ):
        [sync] = fake_discord.find("PUT", "/commands")
        assert sync.path == f"/applications/900000000000000002/guilds/{payloads.GUILD_ID}/commands"


async def test_with_a_public_url_big_files_link_to_the_bots_own_signed_download(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    async with running_bot(
        fake_discord, fake_segmind, tmp_path, public_url="https://models.example.org"
    ) as client:
        fake_segmind.ply = made_splat_ply(BIG_SPLAT)
        dispatch(client, payloads.sam3d(photo(fake_discord)))
        await settle(client)
        [post] = fake_discord.channel_posts()
        content = post.json["content"]
        assert "https://models.example.org/files/" in content and "valid 7 days" in content
        link = next(w for w in content.split() if w.startswith("https://models.example.org"))
        path, query = link.removeprefix("https://models.example.org").split("?")
        expires, signature = (part.split("=")[1] for part in query.split("&"))
        assert client.core.links.check(path, expires, signature).value == "ok"
        embed = post.json["embeds"][0]
        assert embed["url"].startswith("https://models.example.org/m/")
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert fields["View in 3D"] == f"[Open in the browser]({embed['url']})"


async def test_run_stops_with_one_clear_line_when_discord_refuses_the_token(
    fake_discord, tmp_path, unused_tcp_port
):
    from tests.helpers import run_bot

    fake_discord.token = "the-right-token"
    ran = await run_bot(
        "run",
        cwd=tmp_path,
        DISCORD_TOKEN="a-wrong-token",
        DISCORD_API_URL=fake_discord.api_url,
        HTTP_PORT=str(unused_tcp_port),
        RENDER_ENABLED="false",
    )
    assert ran.code == 1
    assert ran.err.strip().splitlines()[-1] == (
        "sam3d-bot: error: Discord refused the token: check DISCORD_TOKEN (Developer Portal > "
        "your application > Bot > Reset Token)"
    )
    assert "a-wrong-token" not in ran.err + ran.out


# -- Pick the object (issue 18) ----------------------------------------------------------------


def press(fake, message_id: str, custom_id: str, values=None, **kw):
    """A member's press on a control of a message the bot sent, as Discord sends it."""
    data = {"custom_id": custom_id, "component_type": 2 if values is None else 3}
    if values is not None:
        data["values"] = values
    return payloads.base(3, data, message=fake.message(message_id), **kw)


def controls(message) -> dict[str, dict]:
    """The picker's controls by what they do (their ids say it: sam3d-pick:ACTION:PICK)."""
    found = {}
    for row in message["components"]:
        for item in row["components"]:
            key = item["custom_id"].split(":")[1] if "custom_id" in item else "web"
            found[key] = item
    return found


async def open_picker(bot, fake, **options):
    command = payloads.sam3d(photo(fake), pick=True, **options)
    dispatch(bot, command)
    await settle(bot)
    deferral = callback_for(fake, command).json
    assert deferral["type"] == 5 and deferral["data"]["flags"] & EPHEMERAL  # the member alone
    [shown] = [c for c in fake.followups() if c.files]
    return command, shown.answer["id"]


async def use(bot, fake, message_id, action, value=None, **kw):
    """Press a control of the picker message; returns Discord's record of the answer."""
    custom_id = controls(fake.message(message_id))[action]["custom_id"]
    pressed = press(fake, message_id, custom_id, [value] if value else None, **kw)
    dispatch(bot, pressed)
    await settle(bot)
    return callback_for(fake, pressed)


async def test_picking_on_discord_marks_points_and_a_box_then_make_it_sends_their_pixels(
    bot, fake_discord, fake_segmind
):
    from bot.grid import Grid

    _, picker = await open_picker(bot, fake_discord, prompt="ball")
    message = fake_discord.message(picker)
    assert (
        message["attachments"][0]["filename"] == "pick.jpg"
        and "Pick the object" in (message["content"])
    )
    found = controls(message)
    assert [o["label"] for o in found["column"]["options"]][:3] == ["A", "B", "C"]
    assert len(found["row"]["options"]) == 9  # a 640 x 480 photo: 12 x 9 cells
    assert found["make"]["label"] == "Make it ($0.065, 5 left today)"
    previews = []
    for action, value in [("column", "C"), ("row", "4"), ("point", None)]:
        answer = await use(bot, fake_discord, picker, action, value)
        assert answer.json["type"] == 7  # the same message, redrawn
        previews.append(answer.files)
    assert "points C4" in fake_discord.message(picker)["content"]
    for action, value in [("column", "B"), ("row", "2"), ("corner", None)]:
        await use(bot, fake_discord, picker, action, value)
    for action, value in [("column", "H"), ("row", "7"), ("corner", None)]:
        await use(bot, fake_discord, picker, action, value)
    assert "points C4; box B2:H7" in fake_discord.message(picker)["content"]
    [[*_, first], [*_, second]] = [list(p.values()) for p in previews[1:3]]
    assert first[1] != second[1]  # each change redrew the preview: here the point appeared
    assert fake_segmind.counters.submits == 0  # nothing charged while picking
    made = await use(bot, fake_discord, picker, "make")
    assert made.json["type"] == 5 and not (made.json.get("data") or {}).get("flags")
    await settle(bot)
    grid = Grid.for_size(640, 480)
    sent = fake_segmind.counters.payloads[0]
    assert sent["point_coords"] == str([list(grid.centre("C4"))])
    assert sent["bounding_box"] == str(list(grid.box("B2:H7")))
    assert sent["prompt"] == "ball"
    [post] = fake_discord.channel_posts()
    assert post.files  # the result, in the channel as any other
    closed = fake_discord.message(picker)
    assert closed["components"] == [] and "Making it with points C4" in closed["content"]
    again = await use_stale(bot, fake_discord, picker, message)
    assert "already made" in again


async def use_stale(bot, fake, message_id, old_message) -> str:
    """A press on a control of the picker as it was before (a client not yet refreshed)."""
    custom_id = controls(old_message)["make"]["custom_id"]
    data = {"custom_id": custom_id, "component_type": 2}
    pressed = payloads.base(3, data, message={**fake.message(message_id), **old_message})
    dispatch(bot, pressed)
    await settle(bot)
    return callback_for(fake, pressed).json["data"]["content"]


async def test_cancel_ends_the_pick_and_charges_nothing(bot, fake_discord, fake_segmind):
    _, picker = await open_picker(bot, fake_discord)
    await use(bot, fake_discord, picker, "column", "A")
    answer = await use(bot, fake_discord, picker, "cancel")
    assert answer.json["type"] == 7
    assert fake_discord.message(picker)["content"] == "Cancelled: nothing was charged."
    assert fake_discord.message(picker)["components"] == []
    assert fake_segmind.counters.submits == 0 and await bot.core.ledger.usage() == []


async def test_a_member_out_of_quota_is_told_before_picking(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    async with running_bot(fake_discord, fake_segmind, tmp_path, quota_jobs=1) as bot:
        alice = Requester("discord", payloads.ALICE_ID, payloads.GUILD_ID)
        await bot.core.ledger.reserve(NewJob(alice, 65_000, "k", {}, {}))
        command = payloads.sam3d(photo(fake_discord), pick=True)
        dispatch(bot, command)
        await settle(bot)
        [told] = fake_discord.followups()
        assert "You have used all 1 jobs" in told.json["content"]
        assert not told.files and not told.json.get("components")  # no picker to pick on
        assert not any((tmp_path / "data" / "picks").glob("*"))


async def test_only_the_member_who_opened_a_picker_may_use_it(bot, fake_discord, fake_segmind):
    _, picker = await open_picker(bot, fake_discord)
    answer = await use(bot, fake_discord, picker, "column", "A", user_id=payloads.BOB_ID)
    assert answer.json["data"]["flags"] & EPHEMERAL
    assert "someone else's" in answer.json["data"]["content"]
    assert fake_discord.message(picker)["content"].count("nothing yet") == 1  # unchanged


async def test_picking_with_typed_points_is_refused_as_one_or_the_other(bot, fake_discord):
    command = payloads.sam3d(photo(fake_discord), pick=True, points="10,10")
    dispatch(bot, command)
    await settle(bot)
    answer = callback_for(fake_discord, command).json
    assert answer["data"]["flags"] & EPHEMERAL and "one of the two" in answer["data"]["content"]


async def test_with_a_public_url_the_picker_offers_the_web_page_and_it_reports_here(
    fake_discord, fake_segmind, tmp_path, settings_env, unused_tcp_port
):
    import aiohttp

    from bot.web import build_web_app, start_web

    base = f"http://127.0.0.1:{unused_tcp_port}"
    async with running_bot(fake_discord, fake_segmind, tmp_path, public_url=base) as bot:
        core = bot.core
        web = await start_web(
            build_web_app(core.links, core.settings.data_dir, picker=core.picker),
            "127.0.0.1",
            unused_tcp_port,
        )
        try:
            _, picker = await open_picker(bot, fake_discord)
            link = controls(fake_discord.message(picker))["web"]
            assert link["style"] == 5 and link["url"].startswith(base + "/p/")
            async with (
                aiohttp.ClientSession() as session,
                session.post(link["url"], json={"points": [[320, 240]], "box": None}) as answer,
            ):
                assert answer.status == 200
            await settle(bot, until=lambda: bool(fake_discord.channel_posts()))
        finally:
            await web.cleanup()
    assert fake_segmind.counters.payloads[0]["point_coords"] == "[[320, 240]]"
    [post] = fake_discord.channel_posts()
    assert post.files and f"<@{payloads.ALICE_ID}>" in post.json["content"]
    # The picker message lost its controls and now points at the result.
    picker_now = fake_discord.message(picker)
    assert picker_now["components"] == [] and picker_now["content"].startswith("✅ Done")


async def send_the_form_choosing(bot, fake, choice: str) -> dict:
    """Apps > Make 3D model on a photo, the form sent with nothing typed and `choice` ticked;
    the submission, once it ran."""
    one = payloads.make_3d([photo(fake)])
    dispatch(bot, one)
    await settle(bot)
    modal = callback_for(fake, one).json["data"]
    rows = modal["components"]
    fields = [row["components"][0]["custom_id"] for row in rows if row["type"] == 1]
    [choices] = [row["component"]["custom_id"] for row in rows if row["type"] == 18]
    submit = payloads.modal_submit(
        modal["custom_id"], dict.fromkeys(fields, ""), groups={choices: [choice]}
    )
    dispatch(bot, submit)
    await settle(bot)
    return submit


async def test_the_message_command_form_can_pick_the_object_instead(
    bot, fake_discord, fake_segmind
):
    submit = await send_the_form_choosing(bot, fake_discord, "pick")
    assert callback_for(fake_discord, submit).json["data"]["flags"] & EPHEMERAL
    [shown] = [c for c in fake_discord.followups() if c.files]
    assert "Pick the object" in shown.json["content"] and fake_segmind.counters.submits == 0


# -- Formats (issue 19) --------------------------------------------------------------------------


async def test_formats_on_a_result_send_the_member_an_stl_and_a_second_ask_is_the_same_file(
    bot, fake_discord, fake_segmind, tmp_path
):
    import io
    import zipfile
    import zlib

    import numpy as np
    import trimesh

    job = payloads.sam3d(photo(fake_discord))
    dispatch(bot, job)
    await settle(bot)
    [post] = fake_discord.channel_posts()
    [menu] = [
        item for row in post.json["components"] for item in row["components"] if item["type"] == 3
    ]
    assert [o["value"] for o in menu["options"]] == [
        "stl",
        "3mf",
        "obj",
        "usdz",
        "light",
        "print10",
        "print15",
        "print20",
    ]
    message_id = post.answer["id"]
    asked = press(fake_discord, message_id, menu["custom_id"], ["print10"])
    dispatch(bot, asked)
    await settle(bot, until=lambda: any(c.files for c in fake_discord.followups()))
    await settle(bot)
    assert callback_for(fake_discord, asked).json["data"]["flags"] & EPHEMERAL  # theirs alone
    [sent] = [c for c in fake_discord.followups() if c.files]
    [(name, data)] = sent.files.values()
    [kept] = (tmp_path / "data" / "jobs").glob("*/format-print10.stl")
    stl_size = kept.stat().st_size
    if stl_size <= 10 * MiB:  # the test's own model; SAM 3D's real one makes 11 MB
        assert name == "model-print10.stl"
        (tmp_path / name).write_bytes(data)
    else:
        assert name == "model-print10.stl.zip" and len(data) <= 10 * MiB
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extract("model-print10.stl", tmp_path)
    mesh = trimesh.load(str(tmp_path / "model-print10.stl"), force="mesh")
    assert abs(float(np.ptp(mesh.vertices[:, 2])) - 100) < 0.5  # 10 cm tall, on Z
    assert fake_segmind.counters.submits == 1  # free: no job, no charge
    made_at = kept.stat().st_mtime_ns

    # Asked again, where only the ZIP fits: the same conversion, not made again, zipped.
    packed = len(zlib.compress(kept.read_bytes(), 6))
    limit = (packed + stl_size) // 2
    again = press(
        fake_discord,
        message_id,
        menu["custom_id"],
        ["print10"],
        user_id=payloads.BOB_ID,
        size_limit=limit,
    )
    dispatch(bot, again)
    await settle(bot, until=lambda: len([c for c in fake_discord.followups() if c.files]) == 2)
    await settle(bot)
    second = [c for c in fake_discord.followups() if c.files][1]
    [(zipped_name, zipped)] = second.files.values()
    assert zipped_name == "model-print10.stl.zip" and len(zipped) <= limit
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert archive.read("model-print10.stl") == kept.read_bytes()
    assert kept.stat().st_mtime_ns == made_at
    usage = await bot.core.ledger.usage()
    assert [row.jobs for row in usage] == [1]


# -- History (issue 20) --------------------------------------------------------------------------


def history_command(page: int | None = None, member: str | None = None, **kw):
    options = []
    if page is not None:
        options.append({"name": "page", "type": 4, "value": page})
    if member is not None:
        options.append({"name": "member", "type": 6, "value": member})
    payload = payloads.slash("sam3d-history", options, **kw)
    if member is not None:
        payload["data"]["resolved"] = {"users": {member: payloads._user(member)}}
    return payload


async def test_history_pages_through_a_members_own_models_newest_first(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    async with running_bot(
        fake_discord, fake_segmind, tmp_path, quota_jobs=50, public_url="https://bot.example.org"
    ) as bot:
        dispatch(bot, payloads.sam3d(photo(fake_discord), prompt="first ball"))
        await settle(bot)
        [made] = await bot.core.ledger.in_states([JobState.DELIVERED])
        picture = photo_bytes(32, 32)
        (tmp_path / "data" / "jobs" / made.id / "thumbnail.png").write_bytes(picture)
        alice = Requester("discord", payloads.ALICE_ID, payloads.GUILD_ID)
        for n in range(12):  # later jobs, refunded (nothing kept)
            job = await bot.core.ledger.reserve(NewJob(alice, 65_000, f"k{n}", {"prompt": f"p{n}"}))
            await bot.core.ledger.refund(job.id, "upstream failed")
        bob = Requester("discord", payloads.BOB_ID, payloads.GUILD_ID)
        await bot.core.ledger.reserve(NewJob(bob, 65_000, "b", {"prompt": "bob's vase"}))

        asked = history_command()
        dispatch(bot, asked)
        await settle(bot)
        answer = callback_for(fake_discord, asked)
        data = answer.json["data"]
        assert answer.json["type"] == 4 and data["flags"] & EPHEMERAL
        assert data["content"] == "Your models, newest first (page 1 of 2, 13 in all):"
        assert len(data["embeds"]) == 10 and "bob's vase" not in json.dumps(data)
        assert "*p11*" in data["embeds"][0]["description"]
        assert "refunded" in data["embeds"][0]["description"]
        [older] = [c for row in data["components"] for c in row["components"]]
        assert older["label"] == "Older"

        message_id = answer.answer["resource"]["message"]["id"]
        pressed = press(fake_discord, message_id, older["custom_id"])
        dispatch(bot, pressed)
        await settle(bot)
        page_two = callback_for(fake_discord, pressed)
        assert page_two.json["type"] == 7
        shown = page_two.json["data"]
        assert shown["content"].startswith("Your models, newest first (page 2 of 2")
        assert len(shown["embeds"]) == 3
        oldest = shown["embeds"][-1]
        assert "*first ball*" in oldest["description"] and "delivered" in oldest["description"]
        assert oldest["url"].startswith("https://bot.example.org/m/")  # a fresh link
        assert oldest["thumbnail"]["url"] == f"attachment://{made.id}.png"
        assert [data for name, data in page_two.files.values()] == [picture]
        [newer] = [c for row in shown["components"] for c in row["components"]]
        assert newer["label"] == "Newer"


async def test_only_admins_look_at_another_members_models_and_only_in_their_server(
    bot, fake_discord
):
    bob = Requester("discord", payloads.BOB_ID, payloads.GUILD_ID)
    await bot.core.ledger.reserve(NewJob(bob, 65_000, "b", {"prompt": "vase"}))
    elsewhere = Requester("discord", payloads.BOB_ID, "800000000000000999")
    await bot.core.ledger.reserve(NewJob(elsewhere, 65_000, "c", {"prompt": "other server"}))
    nosy = history_command(member=payloads.BOB_ID)
    dispatch(bot, nosy)
    await settle(bot)
    assert (
        "Only members with Manage Server"
        in callback_for(fake_discord, nosy).json["data"]["content"]
    )
    admin = history_command(
        member=payloads.BOB_ID, user_id=payloads.ADMIN_ID, permissions=payloads.ADMIN_CAN
    )
    dispatch(bot, admin)
    await settle(bot)
    data = callback_for(fake_discord, admin).json["data"]
    assert (
        data["content"].startswith(f"<@{payloads.BOB_ID}>'s models")
        and "1 in all" in (data["content"])
    )
    assert "*vase*" in data["embeds"][0]["description"] and "other server" not in json.dumps(data)
    assert data["allowed_mentions"]["parse"] == []  # naming Bob pings nobody


# -- Forget me (issue 20) ------------------------------------------------------------------------


async def test_forget_me_after_confirming_leaves_no_file_of_the_member_and_the_bill_whole(
    bot, fake_discord, fake_segmind, tmp_path
):
    dispatch(bot, payloads.sam3d(photo(fake_discord), prompt="mine"))
    await settle(bot)
    dispatch(bot, payloads.sam3d(photo(fake_discord, "other.png"), user_id=payloads.BOB_ID))
    await settle(bot)
    alices_post, bobs_post = (c.answer["id"] for c in fake_discord.channel_posts())
    _, picker = await open_picker(bot, fake_discord)  # a pick in progress: Alice's photo
    jobs = tmp_path / "data" / "jobs"
    [alice_job] = (await bot.core.ledger.jobs_of("discord", payloads.ALICE_ID))[0]
    [bob_job] = (await bot.core.ledger.jobs_of("discord", payloads.BOB_ID))[0]
    assert (jobs / alice_job.id).is_dir() and any((tmp_path / "data" / "picks").iterdir())
    budget_before = (await bot.core.ledger.budget()).committed_micros

    asked = payloads.slash("sam3d-forget-me")
    dispatch(bot, asked)
    await settle(bot)
    question = callback_for(fake_discord, asked).json["data"]
    assert question["flags"] & EPHEMERAL and "cannot be undone" in question["content"]
    buttons = {b["label"]: b for row in question["components"] for b in row["components"]}
    message_id = callback_for(fake_discord, asked).answer["resource"]["message"]["id"]
    stranger = press(
        fake_discord, message_id, buttons["Forget"]["custom_id"], user_id=payloads.BOB_ID
    )
    dispatch(bot, stranger)
    await settle(bot)
    assert "not yours" in callback_for(fake_discord, stranger).json["data"]["content"]
    assert (jobs / alice_job.id).is_dir()

    confirmed = press(fake_discord, message_id, buttons["Forget"]["custom_id"])
    dispatch(bot, confirmed)
    await settle(bot)
    said = callback_for(fake_discord, confirmed).json
    assert said["type"] == 7 and said["data"]["content"].startswith("Done: 1 job(s) of yours")
    assert "1 post(s) of the results deleted" in said["data"]["content"]
    assert fake_discord.message(alices_post) is None  # the bot's post of her model
    assert fake_discord.message(bobs_post) is not None
    assert not (jobs / alice_job.id).exists()
    assert not any((tmp_path / "data" / "picks").iterdir())  # the pick's photo too
    assert (jobs / bob_job.id).is_dir()  # nobody else's
    assert await bot.core.ledger.jobs_of("discord", payloads.ALICE_ID) == ([], 0)
    assert (await bot.core.ledger.budget()).committed_micros == budget_before
    assert sum(r.jobs for r in await bot.core.ledger.usage()) == 2
    for path in (tmp_path / "data").rglob("*.json"):
        assert payloads.ALICE_ID not in path.read_text(encoding="utf-8"), path
    assert fake_discord.message(picker) is not None  # an ephemeral: hers alone, it goes by itself


async def test_an_admin_forgets_a_member_in_their_server_after_confirming(
    bot, fake_discord, tmp_path
):
    dispatch(bot, payloads.sam3d(photo(fake_discord), user_id=payloads.BOB_ID))
    await settle(bot)
    [bob_job] = (await bot.core.ledger.jobs_of("discord", payloads.BOB_ID))[0]
    kept = tmp_path / "data" / "jobs" / bob_job.id
    as_admin = {"user_id": payloads.ADMIN_ID, "permissions": payloads.ADMIN_CAN}

    async def confirm(label: str) -> dict:
        asked = payloads.admin(
            "forget",
            [{"name": "member", "type": 6, "value": payloads.BOB_ID}],
            resolved={"users": {payloads.BOB_ID: payloads._user(payloads.BOB_ID)}},
            **as_admin,
        )
        dispatch(bot, asked)
        await settle(bot)
        answer = callback_for(fake_discord, asked)
        assert "Forget this member?" in answer.json["data"]["content"]
        rows = answer.json["data"]["components"]
        [button] = [b for row in rows for b in row["components"] if b["label"] == label]
        message_id = answer.answer["resource"]["message"]["id"]
        pressed = press(fake_discord, message_id, button["custom_id"], **as_admin)
        dispatch(bot, pressed)
        await settle(bot)
        return callback_for(fake_discord, pressed).json["data"]

    assert (await confirm("Keep"))["content"] == "Kept: nothing changed."
    assert kept.is_dir()
    assert "in this server forgotten" in (await confirm("Forget"))["content"]
    assert not kept.exists()


# -- Cancel (issue 20) ---------------------------------------------------------------------------


async def until(condition, limit_s: float = 20.0) -> None:
    """Until `condition` holds, without waiting for the jobs (one is held at Segmind)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_cancel_on_a_queued_jobs_progress_refunds_it_at_once(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    fake_segmind.behaviour.held_seeds = {1}
    async with running_bot(fake_discord, fake_segmind, tmp_path, max_concurrent_jobs=1) as bot:
        dispatch(bot, payloads.sam3d(photo(fake_discord), seed=1))
        await until(lambda: fake_segmind.counters.submits == 1)
        queued = payloads.sam3d(photo(fake_discord), seed=2, user_id=payloads.BOB_ID)
        dispatch(bot, queued)

        def cancel_buttons():
            return [
                item
                for edit in fake_discord.original_edits()
                if queued["token"] in edit.path
                for row in (edit.json or {}).get("components") or []
                for item in row["components"]
                if item.get("custom_id", "").startswith("sam3d:cancel:")
            ]

        await until(lambda: bool(cancel_buttons()))
        [button, *_] = cancel_buttons()
        assert button["label"] == "Cancel"
        message_id = callback_for(fake_discord, queued).answer["resource"]["message"]["id"]
        pressed = press(fake_discord, message_id, button["custom_id"], user_id=payloads.BOB_ID)
        dispatch(bot, pressed)
        await until(
            lambda: any(
                "Nothing was charged" in (c.json or {}).get("content", "")
                for c in [*fake_discord.followups(), *fake_discord.original_edits()]
                if queued["token"] in c.path
            )
        )
        said = callback_for(fake_discord, pressed).json["data"]
        assert said["flags"] & EPHEMERAL and said["content"].startswith("Cancelled")
        bob = Requester("discord", payloads.BOB_ID, payloads.GUILD_ID)
        assert (await bot.core.ledger.quota_status(bob)).used == 0
        fake_segmind.behaviour.held_seeds = set()
        await settle(bot)
        assert fake_segmind.counters.submits == 1  # the cancelled job never went upstream
        [row] = [r for r in await bot.core.ledger.usage() if r.user_id == payloads.BOB_ID]
        assert row.refunded == 1


def modal_fields(modal: dict) -> dict[str, dict]:
    """A form's text inputs by custom id (in their action rows)."""
    return {
        row["components"][0]["custom_id"]: row["components"][0]
        for row in modal["data"]["components"]
        if row["type"] == 1
    }


async def test_edit_opens_the_form_filled_in_and_runs_the_same_photo_with_the_change(
    bot, fake_discord, fake_segmind
):
    dispatch(bot, payloads.sam3d(photo(fake_discord), prompt="mug", bbox="10,10,50,50", seed=7))
    await settle(bot)
    [first] = fake_discord.channel_posts()
    job_id = first.json["components"][0]["components"][1]["custom_id"].split(":")[2]
    posted = first.answer["id"]
    pressed = press(fake_discord, posted, f"sam3d:edit:{job_id}", user_id=payloads.BOB_ID)
    dispatch(bot, pressed)
    await settle(bot)
    modal = callback_for(fake_discord, pressed).json
    assert modal["type"] == 9 and modal["data"]["title"] == "Edit and run again"
    fields = modal_fields(modal)
    shown = [f.get("value") for f in fields.values()]
    assert shown == ["mug", "10,10,50,50", None, "7"]  # the job's settings, ready to change
    typed = dict(zip(fields, ["red mug", "10,10,50,50", "30,30", "7"], strict=True))
    dispatch(bot, payloads.modal_submit(modal["data"]["custom_id"], typed, user_id=payloads.BOB_ID))
    await settle(bot)
    first_sent, again = fake_segmind.counters.payloads
    assert again["prompt"] == "red mug" and again["point_coords"] and again["seed"] == 7
    assert again["image"] == first_sent["image"]  # the same photo, not uploaded again
    second = fake_discord.channel_posts()[-1]
    assert second.json["content"] == f"<@{payloads.BOB_ID}>"  # a new job, the presser's
    made_from = {f["name"]: f["value"] for f in second.json["embeds"][0]["fields"]}["Made from"]
    assert job_id in made_from and posted in made_from  # links back to the result it came from
    bob = Requester("discord", payloads.BOB_ID, payloads.GUILD_ID)
    assert (await bot.core.ledger.quota_status(bob)).used == 1  # under the presser's quota


async def test_edit_of_a_job_whose_photo_is_gone_says_so_without_a_form(bot, fake_discord):
    dispatch(bot, payloads.sam3d(photo(fake_discord)))
    await settle(bot)
    [post] = fake_discord.channel_posts()
    job_id = post.json["components"][0]["components"][1]["custom_id"].split(":")[2]
    await bot.core.results.forget([job_id])
    pressed = press(fake_discord, post.answer["id"], f"sam3d:edit:{job_id}")
    dispatch(bot, pressed)
    await settle(bot)
    answer = callback_for(fake_discord, pressed).json
    assert answer["type"] == 4 and answer["data"]["flags"] & EPHEMERAL
    assert "no longer kept" in answer["data"]["content"]


async def test_variations_say_their_price_first_charge_exactly_n_and_come_in_one_message(
    bot, fake_discord, fake_segmind
):
    command = payloads.sam3d(photo(fake_discord), prompt="vase", seed=10, variations=3)
    dispatch(bot, command)
    await settle(bot)
    said = [(c.json or {}).get("content") or "" for c in fake_discord.original_edits()]
    plan = next(text for text in said if "3 variations" in text)
    assert "seeds 10, 11, 12" in plan and "$0.195 in all" in plan
    assert "leave you 2 of 5 jobs" in plan
    first_plan = said.index(plan)
    assert not any("SAM 3D" in text for text in said[:first_plan])  # said before it started
    assert sorted(p["seed"] for p in fake_segmind.counters.payloads) == [10, 11, 12]
    [post] = fake_discord.channel_posts()  # one message for all three
    titles = [embed["title"] for embed in post.json["embeds"]]
    assert titles == ["Variation 1", "Variation 2", "Variation 3"]
    seeds = [{f["name"]: f["value"] for f in e["fields"]}["Seed"] for e in post.json["embeds"]]
    assert seeds == ["10", "11", "12"]
    names = sorted(name for name, _ in post.files.values())
    assert len(names) <= 10 and {"v1-model.glb", "v2-model.glb", "v3-model.glb"} <= set(names)
    rows = post.json["components"]
    assert len(rows) == 4  # a row a variation, and Delete
    labels = [b["label"] for b in rows[1]["components"]]
    assert labels == ["New seed 2", "Edit 2", "Details 2", "Formats 2…"]
    [row] = await bot.core.ledger.usage()
    assert (row.jobs, row.delivered, row.cost_micros) == (3, 3, 3 * 65_000)
    alice = Requester("discord", payloads.ALICE_ID, payloads.GUILD_ID)
    assert (await bot.core.ledger.quota_status(alice)).used == 3

    formats = press(fake_discord, post.answer["id"], rows[2]["components"][3]["custom_id"])
    dispatch(bot, formats)
    await settle(bot)
    menu = callback_for(fake_discord, formats).json["data"]
    assert menu["flags"] & EPHEMERAL
    [select] = menu["components"][0]["components"]
    assert select["custom_id"].endswith(rows[2]["components"][0]["custom_id"].split(":")[2])


async def test_variations_beyond_the_quota_are_refused_before_any_starts(
    bot, fake_discord, fake_segmind
):
    dispatch(bot, payloads.sam3d(photo(fake_discord), seed=1, variations=3))
    await settle(bot)
    dispatch(bot, payloads.sam3d(photo(fake_discord), seed=20, variations=3))
    await settle(bot)
    assert fake_segmind.counters.submits == 3  # the second ask started nothing
    refused = [c.json["content"] for c in fake_discord.followups() if c.json.get("flags")]
    assert any("5 jobs" in text for text in refused)
    [row] = await bot.core.ledger.usage()
    assert row.jobs == 3


async def test_a_variation_that_ends_without_a_model_is_named_beside_the_others(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    fake_segmind.behaviour.held_seeds = {5, 6}
    async with running_bot(fake_discord, fake_segmind, tmp_path, max_concurrent_jobs=1) as bot:
        command = payloads.sam3d(photo(fake_discord), seed=5, variations=2)
        dispatch(bot, command)
        await until(lambda: fake_segmind.counters.submits == 1)
        [sent] = [p["seed"] for p in fake_segmind.counters.payloads]  # the other one waits
        jobs, _ = await bot.core.ledger.jobs_of("discord", payloads.ALICE_ID)
        waiting = next(j for j in jobs if j.params["seed"] != sent)

        def cancel_for_both():
            return [
                item
                for edit in fake_discord.original_edits()
                if command["token"] in edit.path
                for row in (edit.json or {}).get("components") or []
                for item in row["components"]
                if item.get("custom_id", "").count(",") == 1  # one Cancel for the two
            ]

        await until(lambda: bool(cancel_for_both()))
        message_id = callback_for(fake_discord, command).answer["resource"]["message"]["id"]
        button = cancel_for_both()[-1]
        assert button["label"] == "Cancel"
        pressed = press(fake_discord, message_id, button["custom_id"])
        dispatch(bot, pressed)
        await until(
            lambda: any(c.path.split("/")[2] == pressed["id"] for c in fake_discord.callbacks())
        )
        said = callback_for(fake_discord, pressed).json["data"]["content"]
        assert f"Job `{waiting.id}`: Cancelled" in said and "already at Segmind" in said
        fake_segmind.behaviour.held_seeds = set()
        await until(lambda: bool(fake_discord.channel_posts()))
        await settle(bot)
        [row] = await bot.core.ledger.usage()
        assert (row.jobs, row.delivered, row.refunded, row.cost_micros) == (2, 1, 1, 65_000)
    [post] = fake_discord.channel_posts()
    made, cancelled = (1, 2) if sent == 5 else (2, 1)
    assert [e["title"] for e in post.json["embeds"]] == [f"Variation {made}"]
    assert f"Variation {cancelled}: Cancelled" in post.json["content"]
    assert "Nothing was charged" in post.json["content"]


def in_channel(fake) -> list:
    """The bot's posts in the channel the commands come from."""
    return [c for c in fake.channel_posts() if f"/channels/{payloads.CHANNEL_ID}/" in c.path]


async def test_a_private_job_talks_to_the_member_alone_and_delivers_to_their_dms(
    bot, fake_discord, fake_segmind
):
    command = payloads.sam3d(photo(fake_discord), prompt="cup", private=True)
    dispatch(bot, command)
    await settle(bot)
    deferral = callback_for(fake_discord, command).json
    assert deferral["type"] == 5 and deferral["data"]["flags"] & EPHEMERAL  # progress: alone
    [dm] = fake_discord.dm_posts(payloads.ALICE_ID)
    assert {name for name, _ in dm.files.values()} == {"model.glb", "splat.ply"}
    assert not in_channel(fake_discord)  # nothing in the channel
    done = fake_discord.original_edits()[-1].json["content"]
    assert done.startswith("✅ Sent to your DMs") and dm.answer["id"] in done


async def test_with_dms_closed_the_result_comes_to_the_member_alone_with_how_to_open_them(
    bot, fake_discord, fake_segmind
):
    fake_discord.dms_closed.add(payloads.ALICE_ID)
    command = payloads.sam3d(photo(fake_discord), private=True)
    dispatch(bot, command)
    await settle(bot)
    posted = [c for c in fake_discord.channel_posts() if c.status == 200]
    assert not posted  # neither the DM nor the channel took a post
    [refused] = [c for c in fake_discord.find("POST", "/channels/") if c.status == 403]
    assert refused.answer["code"] == 50007
    result = fake_discord.original_edits()[-1]
    assert result.files and "closed to me" in result.json["content"]
    original = fake_discord.message(
        callback_for(fake_discord, command).answer["interaction"]["response_message_id"]
    )
    assert original["flags"] & EPHEMERAL  # the member alone sees it
    [row] = await bot.core.ledger.usage()
    assert row.delivered == 1


async def test_the_message_command_form_sends_the_model_to_the_members_dms(
    bot, fake_discord, fake_segmind
):
    submit = await send_the_form_choosing(bot, fake_discord, "private")
    assert callback_for(fake_discord, submit).json["data"]["flags"] & EPHEMERAL
    assert fake_discord.dm_posts(payloads.ALICE_ID) and not in_channel(fake_discord)


async def test_a_private_pick_makes_its_job_in_the_members_dms(bot, fake_discord, fake_segmind):
    _, picker = await open_picker(bot, fake_discord, private=True)
    for action, value in [("column", "C"), ("row", "4"), ("point", None)]:
        await use(bot, fake_discord, picker, action, value)
    made = await use(bot, fake_discord, picker, "make")
    assert made.json["type"] == 5 and made.json["data"]["flags"] & EPHEMERAL
    await settle(bot)
    assert fake_segmind.counters.payloads[0]["point_coords"]
    assert fake_discord.dm_posts(payloads.ALICE_ID) and not in_channel(fake_discord)


async def test_admins_make_private_delivery_the_default_or_forbid_it(
    bot, fake_discord, fake_segmind
):
    mode = {"name": "mode", "type": 3}
    dispatch(bot, as_admin("private", [{**mode, "value": "default"}]))
    dispatch(bot, payloads.sam3d(photo(fake_discord)))
    await settle(bot)
    assert fake_discord.dm_posts(payloads.ALICE_ID) and not in_channel(fake_discord)
    dispatch(bot, payloads.sam3d(photo(fake_discord), seed=9, private=False))  # their choice
    await settle(bot)
    assert len(in_channel(fake_discord)) == 1

    dispatch(bot, as_admin("private", [{**mode, "value": "forbidden"}]))
    await settle(bot)
    asked = payloads.sam3d(photo(fake_discord), seed=10, private=True)
    dispatch(bot, asked)
    await settle(bot)
    refusal = callback_for(fake_discord, asked).json
    assert refusal["type"] == 4 and refusal["data"]["flags"] & EPHEMERAL
    assert "private delivery off" in refusal["data"]["content"]
    assert fake_segmind.counters.submits == 2
    audit = [e.action for e in await bot.core.ledger.audit_trail()]
    assert audit.count("private_mode") == 2


async def test_variations_cut_off_by_a_restart_are_each_finished_after_it_and_billed_once(
    fake_discord, fake_segmind, tmp_path, settings_env
):
    fake_segmind.behaviour.held_seeds = {30, 31}
    async with running_bot(fake_discord, fake_segmind, tmp_path) as first:
        dispatch(first, payloads.sam3d(photo(fake_discord), seed=30, variations=2))
        await until(lambda: fake_segmind.counters.submits == 2)  # side by side, as one ask
        await first.core.service.shutdown(grace_s=0.1)  # stopped while Segmind has both
    fake_segmind.behaviour.held_seeds = set()

    def posted():
        return [c for c in in_channel(fake_discord) if c.status == 200]

    async with running_bot(fake_discord, fake_segmind, tmp_path) as second:
        await until(lambda: len(posted()) == 2)
        await settle(second)
        [row] = await second.core.ledger.usage()
        assert (row.jobs, row.delivered, row.refunded, row.cost_micros) == (2, 2, 0, 130_000)
    assert fake_segmind.counters.submits == 2  # resumed, never sent again
    seeds = sorted(
        {f["name"]: f["value"] for f in c.json["embeds"][0]["fields"]}["Seed"] for c in posted()
    )
    assert seeds == ["30", "31"]
    titles = sorted(c.json["embeds"][0]["title"] for c in posted())
    assert titles == [f"3D model ready (variation {n} of 2)" for n in (1, 2)]
