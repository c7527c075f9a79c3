"""Slack under a crowd: how fast the real bot acknowledges signed requests while it works, and
how long the jobs take to reach the channel.

    .venv/bin/python bench/slack.py [--jobs 200] [--channels 4] [--post-limit 10] [--upstream-s 1]

`sam3d-bot run` runs in HTTP mode in its own process; this process is Slack (the loopback fake
Web API, which limits chat.postMessage and chat.update to --post-limit a second per channel,
as Slack does) and Segmind (the fake, finishing each job after --upstream-s with small made
models). All jobs are sent at once as app_mention events from different people, spread over
--channels channels. Previews are off: this measures the bot, not the renderer.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from PIL import Image  # noqa: E402

from tests.fakes.models3d import made_glb, made_splat_ply  # noqa: E402
from tests.fakes.segmind import API_KEY, Behaviour, FakeSegmind  # noqa: E402
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack  # noqa: E402
from tests.helpers import wait_until_ready  # noqa: E402
from tests.payloads import slack as payloads  # noqa: E402


def photo(index: int) -> bytes:
    """A small photo of its own per job, so no job is served from the cache."""
    picture = Image.new("RGB", (320, 240), (230, 228, 220))
    picture.paste((index % 256, (index * 7) % 256, 90), (100, 60, 220, 180))
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slack_bot_env(slack: FakeSlack, segmind: FakeSegmind, data: str, **more: str) -> dict[str, str]:
    """`sam3d-bot run` in Slack's HTTP mode against the fakes, previews off, no other platform
    or database from the caller's environment."""
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "SEGMIND_API_KEY": API_KEY,
        "SEGMIND_BASE_URL": segmind.url,
        "SEGMIND_POLL_INTERVAL_S": "0.2",
        "DATA_DIR": data,
        "RENDER_ENABLED": "false",
        "GLOBAL_BUDGET_USD": "1000",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        **more,
    }
    for name in ("DISCORD_TOKEN", "SLACK_APP_TOKEN", "DATABASE_URL"):
        env.pop(name, None)
    return env


def models_delivered(fake: FakeSlack) -> dict[str, float]:
    """Requesting user -> when their model reached the channel."""
    return {
        u["comment"].split(">")[0].removeprefix("<@"): u["at"]
        for u in fake.uploads.values()
        if u.get("channel") and u["name"] == "model.glb" and "at" in u
    }


async def bench(args: argparse.Namespace) -> None:
    async with (
        FakeSlack() as slack,
        FakeSegmind(Behaviour(complete_after_s=args.upstream_s)) as segmind,
    ):
        segmind.glb, segmind.ply = made_glb(), made_splat_ply()
        slack.per_second = {"chat.postMessage": args.post_limit, "chat.update": args.post_limit}
        completed = slack.m_files_completeUploadExternal

        def stamped(request_args: dict[str, Any]) -> Any:  # when each upload reached Slack
            answer = completed(request_args)
            for item in request_args.get("files", []):
                slack.uploads.get(item["id"], {}).setdefault("at", time.monotonic())
            return answer

        slack.m_files_completeUploadExternal = stamped  # type: ignore[method-assign,assignment]
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            env = slack_bot_env(
                slack, segmind, tmp, HTTP_PORT=str(port), MAX_CONCURRENT_JOBS=str(args.concurrent)
            )
            bot = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "run",
                cwd=tmp,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await measure(args, slack, bot.pid, f"http://127.0.0.1:{port}")
            finally:
                bot.terminate()
                await bot.wait()


async def measure(args: argparse.Namespace, slack: FakeSlack, pid: int, url: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await wait_until_ready(session, url)
        users = [f"U{i:08d}B" for i in range(args.jobs)]
        events = [
            payloads.mention(
                "thing",
                [slack.add_file(f"p{i}.png", photo(i))],
                user=user,
                channel=f"C{i % args.channels:08d}",
            )
            for i, user in enumerate(users)
        ]
        sent: dict[str, float] = {}

        async def send(user: str, event: dict[str, Any]) -> float:
            body = payloads.event_body(event)
            sent[user] = time.monotonic()
            async with session.post(
                url + "/slack/events",
                data=body,
                headers=payloads.signed_headers(body, content_type="application/json"),
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"acknowledgement: HTTP {response.status}")
            return time.monotonic() - sent[user]

        started = time.monotonic()
        acks = await asyncio.gather(*(send(u, e) for u, e in zip(users, events, strict=True)))
        for _ in range(6000):  # at most 10 minutes
            if len(models_delivered(slack)) >= args.jobs:
                break
            await asyncio.sleep(0.1)
        delivered = models_delivered(slack)
        total = time.monotonic() - started
    ends = sorted(delivered[u] - sent[u] for u in users if u in delivered)
    acks.sort()
    print(
        f"{args.jobs} mentions at once over {args.channels} channels, posts limited to "
        f"{args.post_limit}/s per channel, upstream {args.upstream_s:g} s, "
        f"{args.concurrent} jobs upstream at once"
    )
    print(
        f"acknowledged: p50 {1000 * statistics.median(acks):.0f} ms, "
        f"p95 {1000 * acks[int(0.95 * (len(acks) - 1))]:.0f} ms, "
        f"max {1000 * acks[-1]:.0f} ms (Slack's limit: 3000 ms)"
    )
    print(
        f"delivered: {len(delivered)}/{args.jobs} in {total:.1f} s; request to model in "
        f"the channel p50 {statistics.median(ends):.1f} s, "
        f"p95 {ends[int(0.95 * (len(ends) - 1))]:.1f} s"
    )
    print(
        f"rate-limited answers waited out: {slack.rate_limited}; "
        f"ephemeral errors: {len(slack.find('chat.postEphemeral'))}; "
        f"bot peak RSS {peak_rss_mb(pid):.0f} MB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--post-limit", type=int, default=10)
    parser.add_argument("--upstream-s", type=float, default=1.0)
    parser.add_argument("--concurrent", type=int, default=16)
    asyncio.run(bench(parser.parse_args()))
