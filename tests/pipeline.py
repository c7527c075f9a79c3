"""What the pipeline's tests share: a recording Replier, a renderer that draws small pictures,
and a Service on a fresh SQLite ledger against the fake Segmind (fixtures, loaded by
conftest)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from bot import errors
from bot.images import ImageFetcher, ImageLimits, InputValidator
from bot.ledger import QuotaPolicy, SqliteLedger
from bot.models import FileKind, ImageSource, JobRequest, OutputFile, Requester
from bot.results import ResultStore
from bot.segmind import RetryPolicy, SegmindClient
from bot.service import Service
from tests.conftest import photo_bytes
from tests.fakes.segmind import API_KEY

ALICE = Requester("discord", "alice", "g1")
BOB = Requester("discord", "bob", "g1")


class Recorder:
    """A Replier that keeps everything it was told."""

    def __init__(self, fail_delivery: bool = False):
        self.events: list[tuple] = []
        self.fail_delivery = fail_delivery

    async def prepare(self):
        pass

    async def progress(self, update):
        self.events.append(("progress", update.stage, update.position))

    async def deliver(self, result):
        if self.fail_delivery:
            raise ConnectionResetError("chat platform went away")
        self.events.append(("deliver", result))

    async def deliver_more(self, result, files):
        self.events.append(("more", files))

    async def fail(self, error, refunded):
        self.events.append(("fail", error, refunded))

    @property
    def result(self):
        return next(e[1] for e in self.events if e[0] == "deliver")

    @property
    def failure(self):
        return next((e[1], e[2]) for e in self.events if e[0] == "fail")

    def stages(self):
        return [e[1] for e in self.events if e[0] == "progress"]


class PictureRenderer:
    """Writes a small PNG for each picture asked for, or fails as told."""

    ready = True

    def __init__(self, fail=False):
        self.fail = fail

    async def thumbnail(self, files, workdir: Path):
        return self._picture(workdir / "thumb.png", FileKind.THUMBNAIL)

    async def turntable(self, files, workdir: Path):
        return self._picture(workdir / "turn.webp", FileKind.TURNTABLE)

    def _picture(self, path, kind):
        if self.fail:
            raise errors.RenderError("the model could not be drawn")
        path.write_bytes(photo_bytes(64, 64))
        return (OutputFile(kind, path, path.stat().st_size, "image/png"),)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def money(budget) -> tuple:
    return budget.cap_micros, budget.reserved_micros, budget.committed_micros


@asynccontextmanager
async def crashed_process(tmp_path):
    """The ledger of a bot process that stops: its job leases lapse at once."""
    dead = SqliteLedger(tmp_path / "l.sqlite3", QuotaPolicy(jobs_per_window=3), lease_s=0.01)
    await dead.open()
    yield dead
    await dead.close()
    await asyncio.sleep(0.05)


@pytest.fixture
async def ledger(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite3", QuotaPolicy(jobs_per_window=3))
    await ledger.open()
    yield ledger
    await ledger.close()


@pytest.fixture
def make_service(http, ledger, fake_segmind, tmp_path):
    default_ledger = ledger

    def make(backend=None, renderer=None, capacity=4, ledger=None, validator=None, **more):
        backend = backend or SegmindClient(
            http,
            api_key=SecretStr(API_KEY),
            base_url=fake_segmind.url,
            poll_interval_s=0.01,
            retry=RetryPolicy(attempts=3, base_delay_s=0.01),
        )
        return Service(
            validator=validator or InputValidator(ImageFetcher(http, ImageLimits()), ImageLimits()),
            backend=backend,
            ledger=ledger or default_ledger,
            results=ResultStore(tmp_path / "data"),
            renderer=renderer,
            max_concurrent=capacity,
            price_micros=65_000,
            **more,
        )

    return make


def request(who=ALICE, seed=7, **kw) -> JobRequest:
    return JobRequest(
        who,
        ImageSource.from_bytes(photo_bytes()),
        prompt="ball",
        seed=seed,
        reply_to={"channel": "c1"},
        **kw,
    )


class StuckRenderer(PictureRenderer):
    """Draws nothing until cancelled: a stop catches its job while rendering."""

    def __init__(self):
        super().__init__()
        self.started = asyncio.Event()

    async def thumbnail(self, files, workdir: Path):
        self.started.set()
        await asyncio.Event().wait()
