"""The bot's own overhead per job, against the fake Segmind in another process.

    .venv/bin/python bench/pipeline.py [--jobs 200] [--in-flight 100] [--upstream-s 10]

Jobs arrive steadily (by default at 90% of what --in-flight slots can serve), each from its
own user with its own seed (no cache hits), and each downloads the real fixture files (a
4 MB GLB and a 2.5 MB splat) when ../shared/fixtures is there. Overhead = end to end minus the
time queued for a slot minus the fake's fixed upstream time: validation, ledger writes, poll
handling, downloads to disk, settling and delivery. Downloads are also shown on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.app import build_core  # noqa: E402
from bot.errors import BotError  # noqa: E402
from bot.models import (  # noqa: E402
    ImageSource,
    JobRequest,
    JobResult,
    OutputFile,
    Progress,
    Requester,
)
from bot.settings import load_settings  # noqa: E402
from tests.conftest import photo_bytes  # noqa: E402
from tests.fakes.segmind import API_KEY  # noqa: E402


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return f"p50 {statistics.median(ordered):.1f} ms, p95 {p95:.1f} ms"


class Quiet:
    async def prepare(self) -> None:
        pass

    async def progress(self, update: Progress) -> None:
        pass

    async def deliver(self, result: JobResult) -> None:
        pass

    async def deliver_more(self, result: JobResult, files: tuple[OutputFile, ...]) -> None:
        pass

    async def fail(self, error: BotError, refunded: bool) -> None:
        raise SystemExit(f"job failed: {error.user_message}")


async def watch_lag(stop: asyncio.Event, worst: list[float]) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        worst[0] = max(worst[0], time.perf_counter() - before - 0.005)


async def bench(args: argparse.Namespace, url: str) -> None:
    with tempfile.TemporaryDirectory() as data:
        settings = load_settings(
            env_file=None,
            segmind_api_key=API_KEY,
            segmind_base_url=url,
            data_dir=Path(data),
            max_concurrent_jobs=args.in_flight,
            segmind_poll_interval_s=args.poll_s,
            global_budget_usd=1000,
            quota_jobs=10,
            render_enabled=False,  # this measures the pipeline; bench/render.py the pictures
        )
        photo = photo_bytes()
        async with build_core(settings) as core:
            stop, worst = asyncio.Event(), [0.0]
            watcher = asyncio.create_task(watch_lag(stop, worst))
            started = time.perf_counter()

            async def one(i: int) -> JobResult:
                await asyncio.sleep(i / rate)  # a steady stream of users, not one burst
                request = JobRequest(
                    Requester("bench", f"user{i}"), ImageSource.from_bytes(photo), seed=i
                )
                result = await core.service.run(request, Quiet())
                if result is None:
                    raise SystemExit(f"job {i} ended without a result")
                return result

            rate = args.rate or 0.9 * args.in_flight / args.upstream_s
            results = await asyncio.gather(*(one(i) for i in range(args.jobs)))
            wall = time.perf_counter() - started
            stop.set()
            await watcher
    rate = args.rate or 0.9 * args.in_flight / args.upstream_s
    overhead = [(r.seconds - r.timings["queue"] - args.upstream_s) * 1000 for r in results]
    downloads = [r.timings["download"] * 1000 for r in results]
    without = [o - d for o, d in zip(overhead, downloads, strict=True)]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"jobs {args.jobs} arriving at {rate:g}/s, up to {args.in_flight} in flight, "
        f"upstream {args.upstream_s:g} s, "
        f"poll every {args.poll_s:g} s, {sum(f.size for f in results[0].files) / 1e6:.1f} MB "
        "downloaded per job"
    )
    print(f"overhead per job (end to end - queue - upstream): {percentiles(overhead)}")
    print(f"  of which downloading the files: {percentiles(downloads)}")
    print(f"  the rest (validate, ledger, poll handling, settle, deliver): {percentiles(without)}")
    print(f"time queued for a slot: {percentiles([r.timings['queue'] * 1000 for r in results])}")
    print(f"event loop worst lag: {worst[0] * 1000:.1f} ms")
    print(f"throughput: {args.jobs / wall:.1f} jobs/s ({wall:.1f} s wall)")
    print(f"peak RSS of the bot process: {rss_mb:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--upstream-s", type=float, default=10.0)
    parser.add_argument(
        "--poll-s",
        type=float,
        default=0.25,
        help="poll interval; one that divides --upstream-s adds no wait",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="jobs arriving per second (default: 90%% of in-flight / upstream-s)",
    )
    parser.add_argument(
        "--small-files",
        action="store_true",
        help="made models of a few kB instead of the real fixtures",
    )
    args = parser.parse_args()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.serve", "--complete-after", str(args.upstream_s)]
        + (["--small"] if args.small_files else []),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None and fake.stdin is not None  # both are pipes
    try:
        asyncio.run(bench(args, fake.stdout.readline().strip()))
    finally:
        fake.stdin.close()
        fake.wait()
