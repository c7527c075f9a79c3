"""The renderer the pipeline uses: F3dRenderer, one warm worker, one render at a time.

The bot's process only checks and prepares files (bot/render/inspect.py); drawing happens in
a child process (bot/render/worker.py) under a time bound. A crash or hang fails that one
render with a clear message and a fresh worker takes over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RenderError
from ..models import FileKind, OutputFile
from .inspect import ModelInfo, RenderLimits, inspect_model, write_render_splat

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

NEUTRAL_BACKDROP = "#e9e9ec"


@dataclass(frozen=True)
class RenderOptions:
    size: int = 512
    source: str = "auto"  # auto | mesh | splat
    background: str = NEUTRAL_BACKDROP  # a colour, or "transparent"
    turntable_frames: int = 24
    turntable_size: int = 320
    timeout_s: float = 30.0
    turntable_timeout_s: float = 120.0
    start_timeout_s: float = 60.0
    backend: str = "auto"  # auto | egl | osmesa
    worker_max_rss_mb: int = 1500
    limits: RenderLimits = field(default_factory=RenderLimits)

    @classmethod
    def from_settings(cls, settings: Settings) -> RenderOptions:
        return cls(
            size=settings.render_size,
            source=settings.render_source,
            background=settings.render_background,
            turntable_frames=settings.render_turntable_frames,
            turntable_size=settings.render_turntable_size,
            timeout_s=settings.render_timeout_s,
            turntable_timeout_s=settings.render_timeout_s * 4,
            backend=settings.render_backend,
            limits=RenderLimits(
                settings.max_output_bytes, settings.render_max_triangles, settings.render_max_splats
            ),
        )


def choose_source(
    files: tuple[OutputFile, ...], preference: str, limits: RenderLimits
) -> ModelInfo:
    """The file whose picture looks right: the splat carries colour when the mesh has none."""
    problems: list[str] = []
    infos: list[ModelInfo] = []
    for file in files:
        if file.kind not in (FileKind.MESH, FileKind.SPLAT):
            continue
        try:
            infos.append(inspect_model(file.path, limits))
        except RenderError as error:
            problems.append(error.user_message)
    if not infos:
        raise RenderError(problems[0] if problems else "there is no model to draw")
    meshes = [i for i in infos if not i.is_splat]
    splats = [i for i in infos if i.is_splat]
    if preference == "mesh":
        order = meshes + splats
    elif preference == "splat":
        order = splats + meshes
    else:
        coloured = [m for m in meshes if m.has_colour]
        order = coloured + splats + meshes
    return order[0]


class F3dRenderer:
    """The Renderer the pipeline uses; one warm worker, one render at a time."""

    def __init__(self, options: RenderOptions = RenderOptions()):
        self.options = options
        self._worker: _Worker | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    async def start(self) -> None:
        """Start and warm the worker now, so the first job does not wait for it."""
        async with self._lock:
            await self._ensure_worker()

    async def close(self) -> None:
        async with self._lock:
            if self._worker is not None:
                await self._worker.stop()
                self._worker = None

    @property
    def ready(self) -> bool:
        """A worker is running (one starts on demand after a crash)."""
        return self._worker is not None and self._worker.alive()

    @property
    def worker_peak_rss_mb(self) -> float:
        return self._worker.peak_rss_mb() if self._worker else 0.0

    # -- the Renderer protocol -----------------------------------------------------------------

    async def thumbnail(
        self, files: tuple[OutputFile, ...], workdir: Path
    ) -> tuple[OutputFile, ...]:
        out = workdir / "thumbnail.png"
        await self._draw_thumbnail(await self._prepare(files, workdir), out)
        return (_output(FileKind.THUMBNAIL, out, "image/png"),)

    async def turntable(
        self, files: tuple[OutputFile, ...], workdir: Path
    ) -> tuple[OutputFile, ...]:
        webp, gif = workdir / "turntable.webp", workdir / "turntable.gif"
        await self._draw_turntable(await self._prepare(files, workdir), [webp, gif])
        return (
            _output(FileKind.TURNTABLE, webp, "image/webp"),
            _output(FileKind.TURNTABLE, gif, "image/gif"),
        )

    # -- single files (the command line) -------------------------------------------------------

    async def render_file(
        self, model: Path, picture: Path, turntable: Path | None, workdir: Path
    ) -> None:
        """Draw one file (its kind is read from its bytes) into `picture` and `turntable`."""
        files = (OutputFile(FileKind.MESH, model, 0, ""),)  # the size is not needed here
        source = await self._prepare(files, workdir)
        await self._draw_thumbnail(source, picture)
        if turntable is not None:
            await self._draw_turntable(source, [turntable])

    # -- inside --------------------------------------------------------------------------------

    async def _prepare(
        self, files: tuple[OutputFile, ...], workdir: Path
    ) -> tuple[ModelInfo, Path]:
        """Choose the source and write what the renderer reads best (checked, in a thread)."""
        return await asyncio.to_thread(self._prepare_sync, files, workdir)

    def _prepare_sync(self, files: tuple[OutputFile, ...], workdir: Path) -> tuple[ModelInfo, Path]:
        info = choose_source(files, self.options.source, self.options.limits)
        workdir.mkdir(parents=True, exist_ok=True)
        if info.is_splat:
            target = workdir / "render-source.ply"
            if not target.exists():
                write_render_splat(info.path, target, self.options.limits.max_splats)
            return info, target
        if info.draco:
            from .draco import decode_draco_glb

            target = workdir / "render-source.glb"
            if not target.exists():
                decode_draco_glb(info.path, target)
            return info, target
        return info, info.path

    def _request(self, source: tuple[ModelInfo, Path], op: str, **extra: Any) -> dict[str, Any]:
        info, path = source
        if info.is_splat:
            mode = "splat"
        elif not info.has_colour:
            mode = "mesh_plain"
        else:
            mode = "mesh_colours" if info.kind == "ply_mesh" else "mesh"
        return {
            "op": op,
            "path": str(path),
            "mode": mode,
            "up": "+Z" if info.is_splat else "+Y",
            "background": self.options.background,
            **extra,
        }

    async def _draw_thumbnail(self, source: tuple[ModelInfo, Path], out: Path) -> None:
        request = self._request(source, "thumbnail", out=str(out), size=self.options.size)
        await self._ask(request, self.options.timeout_s)

    async def _draw_turntable(self, source: tuple[ModelInfo, Path], outs: list[Path]) -> None:
        request = self._request(
            source,
            "turntable",
            outs=[str(p) for p in outs],
            size=self.options.turntable_size,
            frames=self.options.turntable_frames,
        )
        if request["background"] == "transparent":  # GIF frames need a solid backdrop
            request["background"] = NEUTRAL_BACKDROP
        await self._ask(request, self.options.turntable_timeout_s)

    async def _ask(self, request: dict[str, Any], limit_s: float) -> dict[str, Any]:
        async with self._lock:
            worker = await self._ensure_worker()
            try:
                reply = await worker.ask(request, limit_s)
            except RenderError:
                self.restarts += 1  # the next render starts a fresh worker
                self._worker = None
                await worker.stop()
                raise
            if worker.rss_mb() > self.options.worker_max_rss_mb:
                log.info("render worker grew to %.0f MB; starting a fresh one", worker.rss_mb())
                self._worker = None
                await worker.stop()
        if not reply.get("ok"):
            raise RenderError(f"the preview could not be drawn: {reply.get('error')}")
        return reply

    async def _ensure_worker(self) -> _Worker:
        if self._worker is None or not self._worker.alive():
            worker = _Worker(self.options.backend)
            await worker.start(self.options.start_timeout_s)
            self._worker = worker
        return self._worker


def _output(kind: FileKind, path: Path, media_type: str) -> OutputFile:
    return OutputFile(kind, path, path.stat().st_size, media_type)


class _Worker:
    """The child process (`python -m bot.render.worker`), spoken to in JSON lines."""

    def __init__(self, backend: str):
        self._backend = backend
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, limit_s: float) -> None:
        started = time.monotonic()
        # The worker's stderr is not ours to show: what matters comes back in its replies.
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.render.worker",
            self._backend,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=1 << 20,
        )
        try:
            ready = await self._read(limit_s, "start")
        except BaseException:  # a failed or cancelled start leaves no process behind
            await self.stop()
            raise
        if not ready.get("ok"):
            await self.stop()
            raise RenderError(ready.get("error", "the renderer could not start"))
        log.info("render worker %s ready in %.1f s", self._process.pid, time.monotonic() - started)

    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def ask(self, request: dict[str, Any], limit_s: float) -> dict[str, Any]:
        assert self._process is not None and self._process.stdin is not None, "not started"
        try:
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            await self._process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise RenderError("the renderer crashed while drawing this model") from None
        return await self._read(limit_s, "draw")

    async def _read(self, limit_s: float, doing: str) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None, "not started"
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), limit_s)
        except TimeoutError:
            what = "start" if doing == "start" else "drawing the preview"
            raise RenderError(f"the renderer took longer than {limit_s:g} s ({what})") from None
        if not line:
            raise RenderError(
                "the renderer crashed while drawing this model"
                if doing == "draw"
                else "the renderer crashed while starting"
            )
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise RenderError("the renderer answered something else than a reply")
        return reply

    async def stop(self) -> None:
        if self._process is None:
            return
        if self._process.returncode is None:
            self._process.kill()
        await self._process.wait()

    def _status(self, field_name: str) -> float:
        if self._process is None or self._process.returncode is not None:
            return 0.0
        try:
            for line in Path(f"/proc/{self._process.pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def peak_rss_mb(self) -> float:
        return self._status("VmHWM")
