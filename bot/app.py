"""The composition root: settings -> sessions -> ledger -> backend -> service.

Front ends (the CLI, the chat adapters) get a ready Core from here; adapters are found
through the `sam3d_bot.adapters` entry point group, so bot/ never imports them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from .conversions import Conversions
from .downloads import DownloadLinks
from .errors import LedgerUnavailable, RenderError
from .history import History
from .images import ImageFetcher, ImageLimits, InputValidator, guarded_session
from .ledger import Ledger, ledger_from_settings
from .models import JobState
from .offline import OfflineBackend
from .outages import SharedPace, until_reachable
from .picker import Picker, PickStore
from .ports import ImageTo3D, Renderer
from .render.renderer import F3dRenderer, RenderOptions
from .results import Pruned, ResultStore
from .runner import JobRunner
from .segmind import SegmindClient
from .service import Service
from .settings import Settings
from .web import build_web_app, start_web

log = logging.getLogger(__name__)
ADAPTER_GROUP = "sam3d_bot.adapters"


@dataclass
class Core:
    settings: Settings
    service: Service
    ledger: Ledger
    backend: ImageTo3D
    results: ResultStore
    api_session: aiohttp.ClientSession
    fetch_session: aiohttp.ClientSession  # for users' image URLs: private addresses refused
    renderer: Renderer | None = None
    links: DownloadLinks | None = None  # signed links to files, when PUBLIC_URL is set
    picker: Picker | None = None  # "Pick the object" before a job
    conversions: Conversions | None = None  # a result's Formats menu
    history: History | None = None  # a member's own models

    @property
    def runner(self) -> JobRunner:
        """The one owner of job tasks: front ends start their jobs here."""
        return self.service.runner


@asynccontextmanager
async def build_core(
    settings: Settings,
    *,
    allow_paths: bool = False,
    fetch_session: aiohttp.ClientSession | None = None,
    renderer: Renderer | None = None,
    wait_for_database: bool = False,
    waiting: dict[str, bool] | None = None,
) -> AsyncIterator[Core]:
    """`fetch_session` and `renderer` stand in for the real ones (tests, benchmarks).
    `wait_for_database`: a shared database that cannot be reached yet is waited for (the bot
    starting before PostgreSQL, or through its restart), not a reason to stop; `waiting`
    says meanwhile what is awaited (for /readyz)."""
    async with AsyncExitStack() as stack:
        await asyncio.to_thread(keep_private, settings.data_dir)
        api_session = await stack.enter_async_context(aiohttp.ClientSession())
        if fetch_session is None:
            fetch_session = await stack.enter_async_context(guarded_session())
        ledger = ledger_from_settings(settings)
        shared = settings.database_url.startswith(("postgresql://", "postgres://"))
        await until_reachable(
            "the database",
            ledger.open,
            lambda exc: wait_for_database and shared and isinstance(exc, LedgerUnavailable),
            waiting=waiting,
        )
        stack.push_async_callback(ledger.close)
        backend: ImageTo3D = (
            OfflineBackend()
            if settings.offline
            else SegmindClient.from_settings(
                api_session, settings, foreign_session=fetch_session, pace=pace_of(settings, ledger)
            )
        )
        limits = ImageLimits.from_settings(settings)
        results = ResultStore(settings.data_dir)
        if renderer is None:
            renderer = await stack.enter_async_context(warm_renderer(settings))
        validator = InputValidator(ImageFetcher(fetch_session, limits), limits, allow_paths)
        service = Service(
            validator=validator,
            backend=backend,
            ledger=ledger,
            results=results,
            renderer=renderer,
            turntable=settings.render_turntable,
            max_concurrent=settings.max_concurrent_jobs,
            price_micros=settings.price_micros,
            runner=JobRunner(),
            free_disk=lambda: shutil.disk_usage(settings.data_dir).free,
            min_free_bytes=settings.min_free_disk_mb * 1_000_000,
        )
        stack.push_async_callback(service.close)
        links = await asyncio.to_thread(DownloadLinks.from_settings, settings)
        picker = Picker(service, validator, PickStore(settings.data_dir))
        yield Core(
            settings,
            service,
            ledger,
            backend,
            results,
            api_session,
            fetch_session,
            renderer,
            links,
            picker,
            Conversions(results),
            History(ledger, settings.data_dir, links),
        )


def keep_private(data_dir: Path) -> None:
    """DATA_DIR holds the ledger, members' photos and models: its own user only may enter it
    (whatever the umask made of the files inside, nobody else can reach them)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)


@asynccontextmanager
async def warm_renderer(settings: Settings) -> AsyncIterator[F3dRenderer | None]:
    """The renderer, its worker warming up in the background while the first job starts."""
    if not settings.render_enabled:
        yield None
        return
    renderer = F3dRenderer(RenderOptions.from_settings(settings))

    async def warm() -> None:
        try:
            await renderer.start()
        except RenderError as error:
            log.warning("previews are unavailable until this is fixed: %s", error.user_message)

    warming = asyncio.create_task(warm())
    try:
        yield renderer
    finally:
        warming.cancel()
        await asyncio.gather(warming, return_exceptions=True)
        await renderer.close()


class Adapter(Protocol):
    """What an entry point in `sam3d_bot.adapters` provides."""

    name: str

    def enabled(self, settings: Settings) -> bool: ...

    def routes(self, core: Core) -> list[web.RouteDef]:
        """What it serves on the bot's web server (Slack's HTTP mode); often nothing."""
        ...

    async def run(self, core: Core, stop: asyncio.Event) -> None: ...

    def ready(self) -> bool:
        """Connected to its platform and answering."""
        ...


def installed_adapters() -> list[Any]:
    return [ep.load() for ep in entry_points(group=ADAPTER_GROUP)]


def configured_platforms(settings: Settings) -> list[str]:
    platforms = []
    if settings.discord_token.get_secret_value():
        platforms.append("discord")
    if settings.slack_bot_token.get_secret_value():
        platforms.append("slack")
    return platforms


def pace_of(settings: Settings, ledger: Ledger) -> SharedPace | None:
    """SEGMIND_CALLS_PER_MINUTE, kept by every instance on the ledger together."""
    if not settings.segmind_calls_per_minute:
        return None
    return SharedPace(ledger.take_upstream_slot, settings.segmind_calls_per_minute)


async def readiness(core: Core, adapters: list[Any]) -> dict[str, bool]:
    """/readyz: each part the bot needs to serve users, and whether it is ready."""
    checks = {"database": await core.ledger.ping()}
    if core.renderer is not None:
        checks["renderer"] = core.renderer.ready
    for adapter in adapters:
        checks[adapter.name] = adapter.ready()
    if not adapters:
        checks["chat platform (DISCORD_TOKEN or SLACK_BOT_TOKEN)"] = False
    return checks


PRUNE_EVERY_S = 3600.0


async def prune_files(
    ledger: Ledger, results: ResultStore, keep_days: float, dry_run: bool = False
) -> Pruned:
    """The retention rule, once: the files of jobs older than FILES_KEEP_DAYS go, except
    those of jobs still running or held for an admin (their money is not settled)."""
    kept = [*await ledger.unfinished(), *await ledger.in_states([JobState.HELD])]
    pruned = await results.prune(keep_days, {job.id for job in kept}, dry_run)
    if pruned.jobs and not dry_run:
        log.info("removed the files of %d job(s), %.1f MB", pruned.jobs, pruned.bytes / 1e6)
    return pruned


async def keep_pruning(core: Core, every_s: float = PRUNE_EVERY_S) -> None:
    """Hourly while the bot runs (and once at start): a full disk is never the bot's doing."""
    while True:
        try:
            await prune_files(core.ledger, core.results, core.settings.files_keep_days)
            if core.picker is not None:
                await core.picker.prune()
            core.service.metrics.data_bytes.set(await core.results.size())
        except Exception:  # a disk error now is tried again next hour; the bot goes on
            log.exception("removing old job files failed")
        await asyncio.sleep(every_s)


async def core_unless_stopped(
    stack: AsyncExitStack, settings: Settings, stop: asyncio.Event
) -> Core | None:
    """The core, once what it needs answers (a shared database may be down for a while).
    Meanwhile /healthz answers and /readyz says what is awaited; a stop meanwhile ends it."""
    waiting: dict[str, bool] = {"starting": False}

    async def starting() -> dict[str, bool]:
        return dict(waiting)

    web_while_starting = await start_web(
        build_web_app(readiness=starting), settings.http_host, settings.http_port
    )
    try:
        core = build_core(settings, wait_for_database=True, waiting=waiting)
        entering = asyncio.create_task(stack.enter_async_context(core))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({entering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not entering.done():  # stopped while waiting: what was opened is closed again
            entering.cancel()
            await asyncio.gather(entering, return_exceptions=True)
            return None
        return entering.result()
    finally:
        await web_while_starting.cleanup()


async def run_adapters(settings: Settings, adapters: list[Any]) -> None:
    """Run until SIGTERM / SIGINT, then stop in bounded time: take no new work, let jobs in
    flight finish within SHUTDOWN_GRACE_S, leave the rest to resume, and only then close the
    platform clients (a job finishing needs them) and the core."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        core = await core_unless_stopped(stack, settings, stop)
        if core is None:
            log.info("stopped before the bot had started")
            return
        app = build_web_app(
            core.links,
            settings.data_dir,
            readiness=lambda: readiness(core, adapters),
            scrape=lambda: core.service.metrics.scrape(
                core.ledger, lambda: core.service.queue_length
            ),
            metrics_token=settings.metrics_token.get_secret_value(),
            picker=core.picker,
            conversions=core.conversions,
        )
        for adapter in adapters:
            app.add_routes(refused_while_stopping(adapter.routes(core), core.runner))
        runner = await start_web(app, settings.http_host, settings.http_port)
        close_clients = asyncio.Event()
        pruning = asyncio.create_task(keep_pruning(core), name="prune")
        running = [
            asyncio.create_task(adapter.run(core, close_clients), name=adapter.name)
            for adapter in adapters
        ]
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({stopping, *running}, return_when=asyncio.FIRST_COMPLETED)
            log.info(
                "stopping: no new jobs; %d in flight get %g s to finish",
                len(core.runner.tasks),
                settings.shutdown_grace_s,
            )
            await core.service.shutdown(settings.shutdown_grace_s)
        finally:
            stopping.cancel()
            pruning.cancel()
            close_clients.set()
            if running:  # none when no chat platform is configured
                ended = await asyncio.wait(running, timeout=CLOSE_CLIENTS_S)
                for task in ended[1]:
                    task.cancel()
            await runner.cleanup()
        for task in running:  # an adapter that stopped the bot says why
            failure = task.exception() if task.done() and not task.cancelled() else None
            if failure is not None:
                raise failure
    log.info("stopped")


CLOSE_CLIENTS_S = 1.5  # for the platform clients to close, within docker stop's 10 s


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refused_while_stopping(routes: list[web.RouteDef], runner: JobRunner) -> list[web.RouteDef]:
    """A platform's requests are answered 503 once the bot is stopping, so the platform
    sends them again later, or to another instance (Slack retries a 5xx)."""

    def guard(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not runner.accepting:
                return web.Response(status=503, text="stopping", headers={"Retry-After": "10"})
            response: web.StreamResponse = await handler(request)
            return response

        return guarded

    return [web.RouteDef(r.method, r.path, guard(r.handler), r.kwargs) for r in routes]
