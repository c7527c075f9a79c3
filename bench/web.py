"""The bot's web server under load: download throughput, viewer pages per second, and how late
the event loop runs while it serves them.

    .venv/bin/python bench/web.py [--clients 100] [--seconds 5]

The server runs in this process (as in the bot) on loopback; the clients run in a second
process, so their work does not count against the server. Downloads fetch the real 4 MB SAM 3D
GLB (or a made one when ../shared/fixtures is absent) through signed links.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from multiprocessing import Queue
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bot.downloads import DownloadLinks  # noqa: E402
from bot.web import build_web_app, start_web  # noqa: E402
from tests.fakes.models3d import FIXTURES, made_glb  # noqa: E402


def load(url: str, clients: int, seconds: float, queue: Queue[tuple[int, int]]) -> None:
    """In the client process: as many requests as `clients` keep going for `seconds`."""

    async def run() -> tuple[int, int]:
        done = received = 0
        deadline = time.monotonic() + seconds

        async def client(session: aiohttp.ClientSession) -> None:
            nonlocal done, received
            while time.monotonic() < deadline:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status} {body[:80]!r}")
                    received += len(body)
                    done += 1

        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(clients)))
        return done, received

    queue.put(asyncio.run(run()))


async def measure(url: str, clients: int, seconds: float) -> dict[str, Any]:
    lags: list[float] = []
    stop = asyncio.Event()

    async def watch_loop() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)

    queue: Queue[tuple[int, int]] = multiprocessing.Queue()
    process = multiprocessing.Process(target=load, args=(url, clients, seconds, queue))
    watcher = asyncio.create_task(watch_loop())
    started = time.perf_counter()
    process.start()
    done, received = await asyncio.to_thread(queue.get)
    elapsed = time.perf_counter() - started
    await asyncio.to_thread(process.join)
    stop.set()
    await watcher
    return {
        "per_s": done / elapsed,
        "mb_s": received / elapsed / 1e6,
        "lag_ms": max(lags) * 1000 if lags else 0.0,
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "jobs" / "abc123"
        job.mkdir(parents=True)
        real = FIXTURES / "sam3d_objects_0.glb"
        glb = real.read_bytes() if real.is_file() else made_glb(5)
        (job / "result.glb").write_bytes(glb)
        (job / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(1000))
        port = 18765
        base = f"http://127.0.0.1:{port}"
        links = DownloadLinks(b"b" * 32, base, 86400)
        runner = await start_web(build_web_app(links, Path(tmp)), "127.0.0.1", port)
        try:
            print(f"{'what':28} {'clients':>7} {'per s':>8} {'MB/s':>8} {'worst lag':>10}")
            for name, url in (
                (f"download GLB ({len(glb) / 1e6:.1f} MB)", links.link("abc123", "result.glb")),
                ("viewer page", links.viewer_link("abc123")),
            ):
                r = await measure(url, args.clients, args.seconds)
                print(
                    f"{name:28} {args.clients:7} {r['per_s']:8.0f} {r['mb_s']:8.0f} "
                    f"{r['lag_ms']:8.1f} ms"
                )
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args()))
