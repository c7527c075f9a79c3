"""Stopping, restarting and dying with jobs in flight: how long `sam3d-bot run` takes to exit
after SIGTERM, what it finished meanwhile, how fast the next start carries the rest on, and how
fast a second instance finishes the jobs of one killed with SIGKILL.

    .venv/bin/python bench/lifecycle.py [--jobs 40] [--grace-s 8] [--lease-s 2]

The bot runs in Slack's HTTP mode in its own process(es), on one SQLite file; this process is
Slack and Segmind (the loopback fakes). For the stop, half the jobs finish 1 s after they are
sent and half never finish before the stop; 16 go upstream at once, the rest queue.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.slack import free_port, photo, slack_bot_env  # noqa: E402
from tests.fakes.models3d import made_glb, made_splat_ply  # noqa: E402
from tests.fakes.segmind import FakeSegmind  # noqa: E402
from tests.fakes.slack import FakeSlack  # noqa: E402
from tests.helpers import wait_until_ready  # noqa: E402
from tests.payloads import slack as payloads  # noqa: E402


def delivered(slack: FakeSlack) -> int:
    return sum(1 for u in slack.uploads.values() if u.get("channel") and u["name"] == "model.glb")


def states(data: Path) -> dict[str, int]:
    db = sqlite3.connect(data / "sam3d.sqlite3")
    try:
        return dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
    finally:
        db.close()


def commits(data: Path) -> int:
    db = sqlite3.connect(data / "sam3d.sqlite3")
    try:
        (count,) = db.execute("SELECT count(*) FROM audit WHERE action = 'commit'").fetchone()
        return int(count)
    finally:
        db.close()


async def until(condition: Callable[[], bool], limit_s: float = 300.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit_s:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


class Bots:
    def __init__(self, args: argparse.Namespace, slack: FakeSlack, segmind: FakeSegmind, data: str):
        self.env = slack_bot_env(
            slack,
            segmind,
            data,
            MAX_CONCURRENT_JOBS="16",
            MAX_JOBS_IN_FLIGHT_PER_USER="100",
            JOB_LEASE_SECONDS=str(args.lease_s),
            SHUTDOWN_GRACE_S=str(args.grace_s),
        )
        self.cwd = data

    async def start(self) -> tuple[asyncio.subprocess.Process, str]:
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=self.cwd,
            env={**self.env, "HTTP_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            await wait_until_ready(session, url, process)
        return process, url


async def send_jobs(url: str, slack: FakeSlack, first: int, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(first, first + count):
            event = payloads.mention(
                f"thing seed={i}", [slack.add_file(f"p{i}.png", photo(i))], user=f"U{i:08d}B"
            )
            body = payloads.event_body(event)
            async with session.post(
                url + "/slack/events",
                data=body,
                headers=payloads.signed_headers(body, content_type="application/json"),
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"acknowledgement: HTTP {response.status}")


async def bench(args: argparse.Namespace) -> None:
    async with FakeSlack() as slack, FakeSegmind() as segmind:
        segmind.glb, segmind.ply = made_glb(), made_splat_ply()
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            bots = Bots(args, slack, segmind, tmp)
            jobs = args.jobs

            # -- SIGTERM with jobs at Segmind and in the queue ------------------------------
            segmind.behaviour.complete_after_s = 1.0
            segmind.behaviour.held_seeds = set(range(0, jobs, 2))  # half outlive the stop
            bot, url = await bots.start()
            await send_jobs(url, slack, 0, jobs)
            await until(lambda: sum(states(data).values()) == jobs)
            sent = time.monotonic()
            bot.send_signal(signal.SIGTERM)
            await bot.wait()
            exit_s = time.monotonic() - sent
            print(
                f"SIGTERM with {jobs} jobs (16 upstream, the rest queued), grace "
                f"{args.grace_s:g} s: exited in {exit_s:.2f} s (code {bot.returncode}); "
                f"delivered meanwhile {delivered(slack)}; left {states(data)}"
            )

            # -- the next start carries the rest on --------------------------------------------
            segmind.behaviour.held_seeds = set()
            started = time.monotonic()
            bot, url = await bots.start()
            ready_s = time.monotonic() - started
            carried_s = await until(lambda: delivered(slack) == jobs)
            print(
                f"restart: ready in {ready_s:.2f} s, all {jobs} delivered "
                f"{carried_s:.2f} s later; submits {segmind.counters.submits} for {jobs} "
                f"jobs, commits {commits(data)}"
            )

            # -- SIGKILL one of two instances: the other takes over ------------------------------
            other, _ = await bots.start()
            before = segmind.counters.submits
            segmind.behaviour.complete_after_s = 3.0
            await send_jobs(url, slack, jobs, 10)
            await until(lambda: segmind.counters.submits == before + 10)
            bot.send_signal(signal.SIGKILL)
            await bot.wait()
            taken_s = await until(lambda: delivered(slack) == jobs + 10)
            print(
                f"SIGKILL of the instance running 10 jobs at Segmind (3 s each), lease "
                f"{args.lease_s:g} s: the other delivered all 10 {taken_s:.2f} s after the "
                f"kill ({taken_s / args.lease_s:.1f} lease periods); submits "
                f"{segmind.counters.submits - before} for 10, commits {commits(data)} for "
                f"{jobs + 10}"
            )
            other.terminate()
            await other.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--grace-s", type=float, default=8.0)
    parser.add_argument("--lease-s", type=float, default=2.0)
    asyncio.run(bench(parser.parse_args()))
