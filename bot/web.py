"""The bot's web server (aiohttp): health and readiness, Prometheus metrics, a job's files
under signed, expiring links, and /m/<signed id>, a page that shows the model in 3D
(model-viewer for the GLB, Spark for the splat; the JavaScript is served from here), and
the web picker (bot.pick_page)."""

from __future__ import annotations

import asyncio
import hmac
import html
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .conversions import CHOICES, Conversions, choice_of
from .downloads import FILE_NAME, JOB_ID, DownloadLinks, LinkCheck
from .errors import BotError, InputError
from .pick_page import add_pick_routes
from .picker import Picker
from .render.inspect import inspect_model
from .results import job_files, pruned_after

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
Readiness = Callable[[], Awaitable[dict[str, bool]]]
Scrape = Callable[[], Awaitable[bytes]]
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
SCRAPE: web.AppKey[Scrape] = web.AppKey("scrape")
METRICS_TOKEN = web.AppKey("metrics_token", str)
CONVERSIONS = web.AppKey("conversions", Conversions)
LOOPBACK = ("127.0.0.1", "::1")
STATIC = Path(__file__).parent / "static"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_web_app(
    links: DownloadLinks | None = None,
    data_dir: Path | None = None,
    *,
    readiness: Callable[[], Awaitable[dict[str, bool]]] | None = None,
    scrape: Callable[[], Awaitable[bytes]] | None = None,
    metrics_token: str = "",
    picker: Picker | None = None,
    conversions: Conversions | None = None,
) -> web.Application:
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
        app.router.add_get("/m/{token}", viewer)
        if conversions is not None:
            app[CONVERSIONS] = conversions
            app.router.add_get("/m/{token}/format/{key}", viewer_format)
        app.router.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)
        if picker is not None:
            add_pick_routes(app, picker, links)
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
        bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    )
    if not allowed:
        return plain(403, "Metrics are shown to loopback or with the bearer token.")
    body = await request.app[SCRAPE]()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TYPE})


EMPTY_SUFFIX_RANGE = re.compile(r"bytes=\s*-0+")


async def gone_or_missing(jobs: Path, job: str, missing: str) -> web.Response:
    """410 with the reason for a job whose files the retention rule removed; 404 otherwise."""
    days = await asyncio.to_thread(pruned_after, jobs, job)
    if days is None:
        return plain(404, missing)
    return plain(
        410,
        f"This model's files were removed: this bot keeps them {days:g} days. "
        "Ask the bot for the model again.",
    )


def plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


async def download(request: web.Request) -> web.StreamResponse:
    """A job's file, if the link is ours and current; streamed, with Range support."""
    job, name = request.match_info["job"], request.match_info["name"]
    if not JOB_ID.fullmatch(job) or not FILE_NAME.fullmatch(name):
        return plain(404, "No such file.")
    check = request.app[LINKS].check(
        request.path, request.query.get("e", ""), request.query.get("s", "")
    )
    if check is LinkCheck.FORBIDDEN:
        return plain(403, "This link is not valid.")
    if check is LinkCheck.EXPIRED:
        return plain(410, "This link has expired; ask the bot for the model again.")
    path = await asyncio.to_thread(locate, request.app[JOBS_DIR], job, name)
    if path is None:
        return await gone_or_missing(request.app[JOBS_DIR], job, "No such file.")
    media_type = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    if EMPTY_SUFFIX_RANGE.fullmatch(request.headers.get("Range", "").strip()):
        # "the last 0 bytes" is no range at all (RFC 9110 14.1.2): unsatisfiable, not the file.
        size = (await asyncio.to_thread(path.stat)).st_size
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    return web.FileResponse(
        path,
        headers={
            "Content-Type": media_type,
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "private, max-age=3600",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def viewer(request: web.Request) -> web.Response:
    """The model in 3D: turnable and zoomable, with the picture as a poster while it loads,
    View in AR, its size, download buttons for every format, and Open Graph tags so the
    link unfurls with the picture."""
    links = request.app[LINKS]
    job = viewer_job(request)
    if isinstance(job, web.Response):
        return job
    files = await asyncio.to_thread(job_files, request.app[JOBS_DIR], job)
    if not files:
        return await gone_or_missing(request.app[JOBS_DIR], job, "This model is no longer kept.")
    view = (
        "splat"
        if request.query.get("view") == "splat" and "splat" in files
        else ("mesh" if "mesh" in files else "splat")
    )
    signed = {kind: links.link(job, path.name) for kind, (path, _) in files.items()}
    # The page's own address as PUBLIC_URL names it, never as the request's Host header does.
    page_url = links.viewer_link(job)
    formats = (
        {c.key: f"{page_url}/format/{c.key}" for c in CHOICES}
        if CONVERSIONS in request.app and "mesh" in files
        else {}
    )
    clay = "mesh" in files and not await asyncio.to_thread(has_colour, files["mesh"][0])
    page = viewer_page(signed, view, page_url, files, formats, clay, viewer_installed())
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'self'; "
            "script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "connect-src 'self' data: blob:; worker-src 'self' blob:",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def viewer_job(request: web.Request) -> str | web.Response:
    """The job of a viewer link that is ours and current, or the refusal to answer."""
    check, job = request.app[LINKS].check_viewer(request.match_info["token"])
    if check is LinkCheck.FORBIDDEN:
        return plain(403, "This link is not valid.")
    if check is LinkCheck.EXPIRED:
        return plain(410, "This link has expired; ask the bot for the model again.")
    return job


def has_colour(model: Path) -> bool:
    """Whether the GLB has colours or a material of its own (SAM 3D's has neither: it is
    drawn in clay, as the thumbnails are, not white on the light backdrop)."""
    try:
        return inspect_model(model).has_colour
    except BotError:
        return True  # leave a model we cannot read as it is


def viewer_installed() -> bool:
    return (STATIC / "vendor" / "model-viewer" / "model-viewer.min.js").is_file()


async def viewer_format(request: web.Request) -> web.StreamResponse:
    """A format from the viewer's downloads (and the USDZ that AR Quick Look opens): made on
    demand, like the Formats menu in the chats, and kept."""
    job = viewer_job(request)
    if isinstance(job, web.Response):
        return job
    try:
        choice = choice_of(request.match_info["key"])
        file, _ = await request.app[CONVERSIONS].file_for(job, choice.key)
    except InputError as error:  # not one of the formats, or the job made no mesh
        return plain(404, error.user_message.removeprefix(f"{error.field}: "))
    except BotError as error:  # the conversion failed or took too long: try again later
        return plain(503, error.user_message)
    # Quick Look opens a USDZ where it is served; the others are downloads.
    disposition = "inline" if choice.format.value == "usdz" else "attachment"
    return web.FileResponse(
        file.path,
        headers={
            "Content-Type": file.media_type,
            "Content-Disposition": f'{disposition}; filename="{choice.file_name}"',
            "Cache-Control": "private, max-age=3600",
            "X-Content-Type-Options": "nosniff",
        },
    )


def viewer_page(
    signed: dict[str, str],
    view: str,
    page_url: str,
    files: dict[str, tuple[Path, int]],
    formats: dict[str, str] | None = None,
    clay: bool = False,
    installed: bool = True,
) -> str:
    esc = html.escape
    formats = formats or {}
    picture = signed.get("picture", "")
    other = "splat" if view == "mesh" else "mesh"
    switch = (
        f'<a class="switch" href="?view={other}">See the '
        f"{'Gaussian splat' if other == 'splat' else 'mesh'}</a>"
        if other in signed and installed
        else ""
    )
    if not installed:
        # No viewer JavaScript (installed without npm): the picture, not an empty box.
        stage = (
            f'<img id="picture" src="{esc(picture)}" alt="A picture of the 3D model">'
            '<p class="note">The 3D view is not installed on this bot (its JavaScript comes '
            "from npm); here is the picture, and the files are below.</p>"
            if picture
            else '<p class="note">The 3D view is not installed on this bot; the files are '
            "below.</p>"
        )
    elif view == "mesh":
        usdz = formats.get("usdz")
        ar = f' ar ar-modes="webxr scene-viewer quick-look" ios-src="{esc(usdz)}"' if usdz else ""
        stage = (
            f'<model-viewer id="model" src="{esc(signed["mesh"])}" '
            f'poster="{esc(picture)}" camera-controls auto-rotate touch-action="pan-y" '
            f'shadow-intensity="1" exposure="1.1"{ar} data-clay="{str(clay).lower()}" '
            'alt="The 3D model"></model-viewer>'
            '<script type="module" src="/static/vendor/model-viewer/model-viewer.min.js">'
            f'</script><script type="module">{MESH_PAGE_SCRIPT}</script>'
        )
    else:
        poster = f' style="background-image:url({esc(picture)})"' if picture else ""
        stage = (
            f'<canvas id="splat" data-src="{esc(signed["splat"])}"{poster}></canvas>'
            '<script type="importmap">{"imports": {'
            '"three": "/static/vendor/three/three.module.js", '
            '"three/addons/": "/static/vendor/three/addons/", '
            '"@sparkjsdev/spark": "/static/vendor/spark/spark.module.min.js"}}</script>'
            '<script type="module" src="/static/splat-viewer.js"></script>'
        )
    names = {"mesh": "Model (GLB)", "splat": "Gaussian splat (PLY)", "picture": "Picture (PNG)"}
    buttons = "".join(
        f'<a class="button" href="{esc(signed[kind])}" download>{label} '
        f"<small>{files[kind][1] / 1e6:.1f} MB</small></a>"
        for kind, label in names.items()
        if kind in signed
    )
    buttons += "".join(
        f'<a class="button other" href="{esc(formats[c.key])}" download>{esc(c.label)}</a>'
        for c in CHOICES
        if c.key in formats
    )
    ar_button = (
        '<button type="button" id="ar" class="button">View in AR</button>'
        if view == "mesh" and installed and "usdz" in formats
        else ""
    )
    size = '<span id="size"></span>' if view == "mesh" and installed else ""
    og_image = f'<meta property="og:image" content="{esc(picture)}">' if picture else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>3D model made with SAM 3D</title>
<meta property="og:type" content="website">
<meta property="og:title" content="3D model made with SAM 3D">
<meta property="og:description" content="Turn it around and zoom in, in your browser.">
<meta property="og:url" content="{esc(str(page_url))}">
{og_image}
<meta name="twitter:card" content="summary_large_image">
<style>
body {{ margin: 0; font: 16px system-ui, sans-serif; background: #f4f4f6; color: #222; }}
main {{ max-width: 960px; margin: 0 auto; padding: 16px; }}
model-viewer, canvas {{ width: 100%; height: min(70vh, 720px); background: #e9e9ec center /
  contain no-repeat; border-radius: 12px; display: block; }}
nav {{ display: flex; flex-wrap: wrap; gap: 8px; margin-top: 12px; align-items: center; }}
.button {{ background: #5865f2; color: white; padding: 8px 14px; border-radius: 8px;
  text-decoration: none; }}
.switch {{ margin-left: auto; }}
.other {{ background: #3c4464; }}
.facts {{ display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 10px 0 0; }}
button.button {{ border: 0; font: inherit; cursor: pointer; }}
#picture {{ width: 100%; border-radius: 12px; display: block; }}
.note {{ color: #555; }}
</style></head>
<body><main>{stage}<p class="facts">{size}{ar_button}<span id="ar-note" hidden>AR needs a
phone or tablet: open this page there to place the model in your room.</span></p>
<nav>{buttons}{switch}</nav></main></body></html>
"""


# Once loaded: marks the page loaded (the tests wait for it), gives a colourless model the
# thumbnails' clay (glTF's default material is white, lost on the light backdrop), says its
# size, and lets "View in AR" start AR where the device has it, or say where it works.
MESH_PAGE_SCRIPT = """const m = document.getElementById("model");
m.addEventListener("load", () => {
  if (m.dataset.clay === "true") {
    for (const material of m.model.materials) {
      const pbr = material.pbrMetallicRoughness;
      pbr.setBaseColorFactor([0.604, 0.448, 0.296, 1]);  // the thumbnails' clay, linear
      pbr.setMetallicFactor(0);
      pbr.setRoughnessFactor(0.85);
    }
  }
  const d = m.getDimensions();
  const cm = (v) => (v * 100).toFixed(v < 0.1 ? 1 : 0);
  // As made, and as each printable STL would stand (its height chosen, the rest to scale).
  const printed = [10, 15, 20].map((tall) => {
    const k = tall / (d.y * 100);
    return `${cm(d.x * k)} × ${tall} × ${cm(d.z * k)} cm`;
  });
  document.getElementById("size").textContent =
    `Size as made: ${cm(d.x)} × ${cm(d.y)} × ${cm(d.z)} cm (width × height × depth); ` +
    `printed 10, 15 or 20 cm tall: ${printed.join(", ")}. `;
  document.body.dataset.loaded = "true";
});
const ar = document.getElementById("ar");
if (ar) ar.addEventListener("click", () => {
  if (m.canActivateAR) m.activateAR();
  else document.getElementById("ar-note").hidden = false;
});"""


def locate(jobs: Path, job: str, name: str) -> Path | None:
    """The file, only if it really is inside the jobs folder (links cannot climb out)."""
    path = (jobs / job / name).resolve()
    return path if path.is_relative_to(jobs) and path.is_file() else None


async def start_web(
    app: web.Application, host: str, port: int, idle_timeout_s: float = 15.0
) -> web.AppRunner:
    # A connection that has not finished a request within idle_timeout_s is closed, also one
    # that dribbles its headers (slowloris); request lines and headers are capped at 8 KB.
    # At a stop, requests still open get a moment, not aiohttp's default minute.
    runner = web.AppRunner(
        app, access_log=None, keepalive_timeout=idle_timeout_s, shutdown_timeout=1.0
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
