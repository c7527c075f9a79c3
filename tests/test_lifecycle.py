"""The real `sam3d-bot run`, stopped and started as an operator (or `docker stop`) does: it
exits within 10 s of SIGTERM with jobs in flight, finishes what it can, leaves the rest to the
next start, which carries it on; two instances on one PostgreSQL take over each other's jobs
when one is killed. Everything is looked at from outside: the fakes and the database."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.conftest import photo_bytes
from tests.fakes.discord import FakeDiscord
from tests.fakes.models3d import made_splat_ply
from tests.fakes.segmind import API_KEY
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.helpers import bot_env, wait_until_ready
from tests.payloads import discord as discord_payloads
from tests.payloads import slack as payloads

pytestmark = pytest.mark.slow  # real processes: seconds each

SIGTERM_LIMIT_S = 10.0  # what `docker stop` allows before it kills


async def start_bot(tmp_path: Path, port: int, ready: bool = True, **settings: str):
    """`sam3d-bot run` in its own process; with `ready`, once its /readyz says so."""
    tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test's folder
    env = bot_env(
        HTTP_PORT=str(port),
        DATA_DIR=str(tmp_path / "data"),
        RENDER_ENABLED="false",
        JOB_LEASE_SECONDS="1",
        PROGRESS_EDIT_INTERVAL_S="0.1",
        SEGMIND_POLL_INTERVAL_S="0.05",
        **{"SEGMIND_API_KEY": API_KEY, **settings},
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    if ready:
        async with aiohttp.ClientSession() as session:
            await wait_until_ready(session, f"http://127.0.0.1:{port}", process)
    return process


async def stop(process, how: int = signal.SIGTERM) -> tuple[float, str]:
    """Send `how`; returns how long the process took to exit, and what it logged."""
    sent = time.monotonic()
    process.send_signal(how)
    _, logged = await asyncio.wait_for(process.communicate(), 30)
    return time.monotonic() - sent, logged.decode()


async def eventually(condition, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def sqlite_rows(tmp_path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{tmp_path / 'data' / 'sam3d.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not made yet
        return []
    finally:
        db.close()


def slack_settings(fake_slack: FakeSlack, fake_segmind, **more: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": fake_slack.api_url,
        "SEGMIND_BASE_URL": fake_segmind.url,
        **more,
    }


async def post_event(port: int, payload: dict) -> int:
    body = payloads.event_body(payload)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/slack/events",
            data=body,
            headers=payloads.signed_headers(body, content_type="application/json"),
        ) as response,
    ):
        return response.status


def models_in(fake_slack: FakeSlack) -> dict[str, str]:
    """thread -> the model uploaded there."""
    return {
        u["thread_ts"]: u["name"]
        for u in fake_slack.uploads.values()
        if u.get("channel") and u["name"] == "model.glb"
    }


async def test_slack_bot_stops_within_10_s_with_jobs_in_flight_and_carries_them_on(
    tmp_path, unused_tcp_port, fake_segmind
):
    async with FakeSlack() as fake_slack:
        settings = slack_settings(
            fake_slack, fake_segmind, MAX_CONCURRENT_JOBS="2", SHUTDOWN_GRACE_S="3"
        )
        photo = fake_slack.add_file("photo.png", photo_bytes())
        behaviour = fake_segmind.behaviour
        behaviour.held_seeds = {1}  # alice's job outlives the grace period
        behaviour.complete_after_s = 1.5  # carol's finishes within it
        bot = await start_bot(tmp_path, unused_tcp_port, **settings)
        jobs = {
            who: payloads.mention(f"vase seed={seed}", [photo], user=who)
            for who, seed in (("UALICE", 1), ("UCAROL", 3), ("UBOB", 2))
        }
        for who in ("UALICE", "UCAROL"):
            assert await post_event(unused_tcp_port, jobs[who]) == 200
        await eventually(lambda: fake_segmind.counters.submits == 2)
        assert await post_event(unused_tcp_port, jobs["UBOB"]) == 200  # queued behind them
        await eventually(lambda: len(sqlite_rows(tmp_path, "SELECT id FROM jobs")) == 3)
        sent = time.monotonic()
        bot.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        late = payloads.mention("lamp seed=4", [photo], user="UDAVE")
        assert await post_event(unused_tcp_port, late) == 503  # Slack sends it again later
        _, logged = await asyncio.wait_for(bot.communicate(), 30)
        took = time.monotonic() - sent
        assert took < SIGTERM_LIMIT_S, logged
        assert bot.returncode == 0, logged.decode()
        threads = {who: p["event"]["ts"] for who, p in jobs.items()}
        assert set(models_in(fake_slack)) == {threads["UCAROL"]}  # finished within the grace
        states = dict(sqlite_rows(tmp_path, "SELECT user_id, state FROM jobs"))
        assert states == {"UALICE": "submitted", "UCAROL": "delivered", "UBOB": "queued"}
        assert sqlite_rows(tmp_path, "SELECT * FROM audit WHERE action = 'refund'") == []

        behaviour.held_seeds = set()
        bot = await start_bot(tmp_path, unused_tcp_port, **settings)
        await eventually(lambda: len(models_in(fake_slack)) == 3)
        _, logged = await stop(bot)
    assert set(models_in(fake_slack)) == set(threads.values())  # each in its own thread
    assert fake_segmind.counters.submits == 3  # alice's job was not sent again
    assert [s for (s,) in sqlite_rows(tmp_path, "SELECT state FROM jobs")] == ["delivered"] * 3
    commits = sqlite_rows(
        tmp_path, "SELECT job_id, count(*) FROM audit WHERE action = 'commit' GROUP BY job_id"
    )
    assert sorted(n for _, n in commits) == [1, 1, 1]
    # Bob's progress message, carried on after the restart, said so.
    updates = [c.args.get("text", "") for c in fake_slack.find("chat.update")]
    assert any("<@UBOB>" in text and "restarted" in text for text in updates)


async def test_two_instances_on_postgres_finish_the_job_of_one_that_was_killed(
    tmp_path, unused_tcp_port_factory, fake_segmind, postgres_url
):
    """SIGKILL the instance running a job: the other delivers it to the same thread within
    about two lease periods, charged once, never sent twice."""
    async with FakeSlack() as fake_slack:
        settings = slack_settings(fake_slack, fake_segmind, DATABASE_URL=postgres_url)
        photo = fake_slack.add_file("photo.png", photo_bytes())
        first_port, second_port = unused_tcp_port_factory(), unused_tcp_port_factory()
        first = await start_bot(tmp_path / "a", first_port, **settings)
        second = await start_bot(tmp_path / "b", second_port, **settings)
        try:
            fake_segmind.behaviour.complete_after_s = 2.0
            job = payloads.mention("vase", [photo])
            assert await post_event(first_port, job) == 200
            await eventually(lambda: fake_segmind.counters.submits == 1)
            await stop(first, signal.SIGKILL)
            killed_at = time.monotonic()
            await eventually(lambda: models_in(fake_slack), limit_s=15)
            took = time.monotonic() - killed_at
        finally:
            for process in (first, second):
                if process.returncode is None:
                    await stop(process)
    assert took < 2 * 1.0 + 2.0  # two lease periods, and Segmind's own two seconds
    assert models_in(fake_slack) == {job["event"]["ts"]: "model.glb"}
    assert fake_segmind.counters.submits == 1
    with psycopg.connect(postgres_url) as db:
        [(state, cost)] = db.execute("SELECT state, cost_micros FROM jobs").fetchall()
        commits = db.execute("SELECT count(*) FROM audit WHERE action = 'commit'").fetchone()[0]
    assert (state, cost, commits) == ("delivered", 65_000, 1)


async def test_a_database_down_at_start_is_awaited_and_a_stop_meanwhile_is_prompt(
    tmp_path, unused_tcp_port_factory
):
    """PostgreSQL not up yet: /healthz answers, /readyz says the database is awaited (503),
    and SIGTERM meanwhile ends the bot within docker stop's 10 s, cleanly."""
    port, nowhere = unused_tcp_port_factory(), unused_tcp_port_factory()
    process = await start_bot(
        tmp_path,
        port,
        ready=False,
        DATABASE_URL=f"postgresql://bot:pw@127.0.0.1:{nowhere}/bot",
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=f"http://127.0.0.1:{nowhere}/api/",
        SEGMIND_BASE_URL=f"http://127.0.0.1:{nowhere}",
    )
    status, said = await first_readiness(port)
    assert status == 503 and "the database: NOT READY" in said
    took, logged = await stop(process)
    assert process.returncode == 0 and took < SIGTERM_LIMIT_S, logged
    assert "the database cannot be reached" in logged or "stopped before" in logged


async def test_run_as_a_service_without_tokens_stays_up_unready_and_says_why(
    tmp_path, unused_tcp_port_factory
):
    """`docker run -d` with no token: no restart loop; the health check fails, naming what is
    missing, the log says how to set it, and a stop is clean."""
    port = unused_tcp_port_factory()
    process = await start_bot(tmp_path, port, ready=False, SEGMIND_API_KEY="")
    status, said = await first_readiness(port)
    for _ in range(50):  # "starting" until the adapters are set up (slower on a busy machine)
        if not said.startswith("starting"):
            break
        await asyncio.sleep(0.1)
        status, said = await first_readiness(port)
    assert status == 503
    assert "chat platform (DISCORD_TOKEN or SLACK_BOT_TOKEN): NOT READY" in said
    await asyncio.sleep(1.0)
    assert process.returncode is None  # still up: nothing for a restart policy to loop on
    took, logged = await stop(process)
    assert process.returncode == 0 and took < SIGTERM_LIMIT_S, logged
    assert "no chat platform is configured: set DISCORD_TOKEN" in logged
    assert logged.count("no chat platform is configured") == 1


async def first_readiness(port: int) -> tuple[int, str]:
    """The first answer of /readyz once the bot listens (and /healthz says it is up)."""
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(base + "/readyz") as response:
                    said, status = await response.text(), response.status
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("nothing answered while the bot started")
        async with session.get(base + "/healthz") as response:
            assert response.status == 200
    return status, said


async def test_sam3d_bot_run_makes_a_model_through_discords_gateway(
    tmp_path, unused_tcp_port, fake_segmind
):
    """The whole run path: `sam3d-bot run` logs in, opens the gateway (HELLO, IDENTIFY,
    READY, GUILD_CREATE), gets /sam3d as INTERACTION_CREATE and answers through the strict
    REST fake. The server is at Boost tier 2 (50 MiB a file), which the bot learns from
    GUILD_CREATE: an 11.2 MB splat goes as an attachment, not as a link."""
    async with FakeDiscord() as fake_discord:
        fake_discord.token = "bot-token"
        fake_discord.add_guild(discord_payloads.GUILD_ID, premium_tier=2)
        fake_discord.cdn["photo.png"] = photo_bytes()
        fake_segmind.ply = made_splat_ply(165_000)
        bot = await start_bot(
            tmp_path,
            unused_tcp_port,
            DISCORD_TOKEN="bot-token",
            DISCORD_API_URL=fake_discord.api_url,
            SEGMIND_BASE_URL=fake_segmind.url,
        )
        try:
            image = discord_payloads.attachment(
                "photo.png", fake_discord.cdn_url("photo.png"), len(fake_discord.cdn["photo.png"])
            )
            payload = discord_payloads.sam3d(image)
            await fake_discord.send_interaction(payload)
            await eventually(lambda: fake_discord.channel_posts())
        finally:
            await stop(bot)
        [deferral] = [c for c in fake_discord.callbacks() if payload["id"] in c.path]
        assert deferral.status == 200 and deferral.json["type"] == 5
        [post] = fake_discord.channel_posts()
        assert post.status == 200
        assert {name for name, _ in post.files.values()} == {"model.glb", "splat.ply"}


async def test_discord_bot_delivers_what_finishes_within_the_grace_and_resumes_the_rest(
    tmp_path, unused_tcp_port, fake_segmind
):
    """discord.py closes its REST session with the client: the client closes only after the
    jobs finished or were left to resume, so a job Segmind finishes during the stop is posted,
    and one that outlives it is finished after the restart, charged once."""
    async with FakeDiscord() as fake_discord:
        fake_discord.token = "bot-token"
        fake_discord.cdn["photo.png"] = photo_bytes()
        settings = {
            "DISCORD_TOKEN": "bot-token",
            "DISCORD_API_URL": fake_discord.api_url,
            "SEGMIND_BASE_URL": fake_segmind.url,
            "SHUTDOWN_GRACE_S": "3",
        }
        behaviour = fake_segmind.behaviour
        behaviour.held_seeds = {1}  # alice's job outlives the grace period
        behaviour.complete_after_s = 1.5  # bob's finishes within it
        bot = await start_bot(tmp_path, unused_tcp_port, **settings)
        image = discord_payloads.attachment(
            "photo.png", fake_discord.cdn_url("photo.png"), len(fake_discord.cdn["photo.png"])
        )
        asked = {
            who: discord_payloads.sam3d(image, seed=seed, user_id=who)
            for who, seed in ((discord_payloads.ALICE_ID, 1), (discord_payloads.BOB_ID, 2))
        }
        for payload in asked.values():
            await fake_discord.send_interaction(payload)
        await eventually(lambda: fake_segmind.counters.submits == 2)
        sent = time.monotonic()
        bot.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        late = discord_payloads.sam3d(image, seed=4, user_id=discord_payloads.ADMIN_ID)
        await fake_discord.send_interaction(late)  # while it stops: told, not started
        _, logged = await asyncio.wait_for(bot.communicate(), 30)
        assert time.monotonic() - sent < SIGTERM_LIMIT_S and bot.returncode == 0, logged
        [told] = [c for c in fake_discord.followups() if late["token"] in c.path]
        assert "restarting" in told.json["content"] and told.json["flags"] & 64
        [post] = fake_discord.channel_posts()  # bob's, posted during the stop
        assert post.json["content"] == f"<@{discord_payloads.BOB_ID}>"
        assert {name for name, _ in post.files.values()} == {"model.glb", "splat.ply"}
        states = sorted(s for (s,) in sqlite_rows(tmp_path, "SELECT state FROM jobs"))
        assert states == ["delivered", "submitted"]

        behaviour.held_seeds = set()
        bot = await start_bot(tmp_path, unused_tcp_port, **settings)
        await eventually(lambda: len(fake_discord.channel_posts()) == 2)
        _, logged = await stop(bot)
    # Alice's "thinking" message, edited through her interaction's token after the restart.
    alice_token = asked[discord_payloads.ALICE_ID]["token"]
    edits = [
        c.json.get("content", "") for c in fake_discord.original_edits() if alice_token in c.path
    ]
    assert any("restarted" in text for text in edits) and "✅ Done" in edits[-1]
    alice_post = fake_discord.channel_posts()[-1]
    assert alice_post.json["content"] == f"<@{discord_payloads.ALICE_ID}>"
    assert {name for name, _ in alice_post.files.values()} == {"model.glb", "splat.ply"}
    assert fake_segmind.counters.submits == 2
    assert [s for (s,) in sqlite_rows(tmp_path, "SELECT state FROM jobs")] == ["delivered"] * 2
    commits = sqlite_rows(tmp_path, "SELECT count(*) FROM audit WHERE action = 'commit'")
    assert commits == [(2,)]
