"""The bot's web server (aiohttp): health and readiness, Prometheus metrics, and a job's files
under signed, expiring links. The 3D viewer builds on it."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .downloads import FILE_NAME, JOB_ID, DownloadLinks, LinkCheck

MEDIA_TYPES = {
    ".glb": "model/gltf-binary",
    ".ply": "application/octet-stream",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".zip": "application/zip",
}
LINKS = web.AppKey("links", DownloadLinks)
JOBS_DIR = web.AppKey("jobs_dir", Path)
READINESS = web.AppKey("readiness", Callable[[], Awaitable[dict[str, bool]]])
SCRAPE = web.AppKey("scrape", Callable[[], Awaitable[bytes]])
METRICS_TOKEN = web.AppKey("metrics_token", str)
LOOPBACK = ("127.0.0.1", "::1")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_web_app(links: DownloadLinks | None = None, data_dir: Path | None = None, *,
                  readiness: Callable[[], Awaitable[dict[str, bool]]] | None = None,
                  scrape: Callable[[], Awaitable[bytes]] | None = None,
                  metrics_token: str = "") -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_get("/healthz", healthz)
    if readiness is not None:
        app[READINESS] = readiness
        app.router.add_get("/readyz", readyz)
    if scrape is not None:
        app[SCRAPE] = scrape
        app[METRICS_TOKEN] = metrics_token
        app.router.add_get("/metrics", metrics)
    if links is not None and data_dir is not None:
        app[LINKS] = links
        app[JOBS_DIR] = (Path(data_dir) / "jobs").resolve()
        app.router.add_get("/files/{job}/{name}", download)
    return app


async def healthz(request: web.Request) -> web.Response:
    """The process is up and its event loop answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Ready to serve users: the database answers, the renderer runs, the chats are connected.
    Lists each check, so an operator sees which one is not."""
    try:
        checks = await asyncio.wait_for(request.app[READINESS](), 5.0)
    except Exception:  # a check that cannot even run is a failed check
        checks = {"checks": False}
    lines = "".join(f"{name}: {'ok' if ok else 'NOT READY'}\n" for name, ok in checks.items())
    return web.Response(status=200 if all(checks.values()) else 503, text=lines)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics, for loopback or with the bearer token (METRICS_TOKEN)."""
    token = request.app[METRICS_TOKEN]
    given = request.headers.get("Authorization", "")
    allowed = request.remote in LOOPBACK or (
        bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()))
    if not allowed:
        return plain(403, "Metrics are shown to loopback or with the bearer token.")
    body = await request.app[SCRAPE]()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TYPE})


def plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


async def download(request: web.Request) -> web.StreamResponse:
    """A job's file, if the link is ours and current; streamed, with Range support."""
    job, name = request.match_info["job"], request.match_info["name"]
    if not JOB_ID.fullmatch(job) or not FILE_NAME.fullmatch(name):
        return plain(404, "No such file.")
    check = request.app[LINKS].check(request.path, request.query.get("e", ""),
                                     request.query.get("s", ""))
    if check is LinkCheck.FORBIDDEN:
        return plain(403, "This link is not valid.")
    if check is LinkCheck.EXPIRED:
        return plain(410, "This link has expired; ask the bot for the model again.")
    path = await asyncio.to_thread(locate, request.app[JOBS_DIR], job, name)
    if path is None:
        return plain(404, "No such file.")
    media_type = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return web.FileResponse(path, headers={
        "Content-Type": media_type,
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "private, max-age=3600",
        "X-Content-Type-Options": "nosniff",
    })


def locate(jobs: Path, job: str, name: str) -> Path | None:
    """The file, only if it really is inside the jobs folder (links cannot climb out)."""
    path = (jobs / job / name).resolve()
    return path if path.is_relative_to(jobs) and path.is_file() else None


async def start_web(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
