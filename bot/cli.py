"""`sam3d-bot`: generate | credits | usage | run.

Exit codes: 0 success, 1 failure, 2 usage error. A failure is one line on stderr, never a
traceback, and never shows a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from .errors import BotError, InputError
from .logs import RedactSecrets, secrets_of, setup_logging
from .models import FileKind, ImageSource, JobRequest, JobResult, Progress, Requester
from .settings import Settings, SettingsError, load_settings, micros_to_usd

PROG = "sam3d-bot"
OK, FAILED, USAGE = 0, 1, 2
# Unfinished command-line jobs younger than this may belong to another running command.
STALE_CLI_JOB_S = 600.0


class CliFailure(Exception):
    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Photos to 3D models with SAM 3D.")
    parser.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="make a 3D model from a photo")
    gen.add_argument("image", help="a PNG, JPEG or WebP file, or an http(s) link")
    gen.add_argument("--prompt", help="what the object is, e.g. 'car'")
    gen.add_argument("--bbox", help="box around the object: x1,y1,x2,y2 in pixels")
    gen.add_argument("--points", help="points on the object: x,y;x,y in pixels")
    gen.add_argument("--mask", help="a mask image of the same size (white = object)")
    gen.add_argument("--seed", help="0..1000000 (default 123)")
    gen.add_argument("--artifacts", action="store_true", help="ask for the artifacts ZIP too")
    gen.add_argument("--turntable", action="store_true",
                     help="also write a turntable (NAME-turntable.webp and .gif)")
    gen.add_argument("--out", default="out", help="folder for the model files (default: ./out)")

    ren = sub.add_parser("render", help="draw a picture of a GLB or PLY model")
    ren.add_argument("model", help="a .glb, or a .ply mesh or Gaussian splat")
    ren.add_argument("-o", "--output", required=True, help="the PNG to write")
    ren.add_argument("--turntable", help="also write a turntable: NAME.webp or NAME.gif")
    ren.add_argument("--size", type=int, help="picture size in pixels (default RENDER_SIZE)")

    sub.add_parser("credits", help="show the Segmind account balance")
    usage = sub.add_parser("usage", help="jobs and spend by month and user")
    usage.add_argument("--month", help="YYYY-MM (default: all)")
    sub.add_parser("run", help="start the chat adapters that have tokens")
    return parser


# --- generate -------------------------------------------------------------------------------


class TerminalReplier:
    """Shows progress on a terminal (nothing when piped) and writes results into a folder."""

    def __init__(self, out_dir: Path, stem: str, err: TextIO, out: TextIO):
        self._out_dir, self._stem = out_dir, stem
        self._err, self._out = err, out
        self._live = err.isatty()
        self._started = time.monotonic()
        self.written: list[Path] = []
        self.error: BotError | None = None
        self.refunded = False

    async def progress(self, update: Progress) -> None:
        if self._live:
            elapsed = time.monotonic() - self._started
            self._err.write(f"\r\033[K{update.describe()} ({elapsed:.0f} s)")
            self._err.flush()

    async def deliver(self, result: JobResult) -> None:
        self._clear()
        if result.note:
            print(result.note, file=self._out)
        await self._write(result.files)
        cost = f"${micros_to_usd(result.cost_micros):.3f}" if result.cost_micros else "free"
        print(f"done in {result.seconds:.1f} s, {cost}", file=self._out)

    async def deliver_more(self, result: JobResult, files) -> None:
        await self._write(files)

    async def _write(self, files) -> None:
        """NAME.glb, NAME.ply, NAME.png, NAME-turntable.webp; anything else NAME-FILE."""
        self._out_dir.mkdir(parents=True, exist_ok=True)
        for file in files:
            base = {FileKind.MESH: self._stem, FileKind.SPLAT: self._stem,
                    FileKind.THUMBNAIL: self._stem,
                    FileKind.TURNTABLE: f"{self._stem}-turntable"}.get(file.kind)
            target = self._out_dir / f"{base}{file.path.suffix}"
            if base is None or target in self.written:
                target = self._out_dir / f"{self._stem}-{file.path.name}"
            await asyncio.to_thread(shutil.copyfile, file.path, target)
            self.written.append(target)
            print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)", file=self._out)

    async def fail(self, error: BotError, refunded: bool) -> None:
        self._clear()
        self.error, self.refunded = error, refunded

    def _clear(self) -> None:
        if self._live:
            self._err.write("\r\033[K")
            self._err.flush()


def image_source(text: str) -> ImageSource:
    if text.startswith(("http://", "https://")):
        return ImageSource.from_url(text)
    if text.startswith("data:"):
        return ImageSource.from_text(text)
    return ImageSource.from_path(text)


async def generate(settings: Settings, args, out: TextIO, err: TextIO) -> int:
    from .app import build_core

    source = image_source(args.image)
    stem = Path(source.name).stem if source.kind == "path" else "model"
    request = JobRequest(
        requester=Requester("cli", getpass.getuser(), display_name=getpass.getuser(),
                            is_admin=True),
        image=source,
        prompt=args.prompt,
        bbox=args.bbox,
        points=args.points,
        mask=ImageSource.from_path(args.mask) if args.mask else None,
        seed=args.seed,
        include_artifacts=args.artifacts,
    )
    replier = TerminalReplier(Path(args.out), stem or "model", err, out)
    settings = settings.model_copy(update={"render_turntable": args.turntable})
    async with build_core(settings, allow_paths=True) as core:
        # An earlier command stopped mid-job (Ctrl-C, a crash): Segmind may still have it.
        # Finish it into the result store, so nothing paid for is lost; refund what never left.
        earlier = await core.service.recover(lambda record: None, {"cli"}, STALE_CLI_JOB_S)
        if earlier:
            print(f"finishing {earlier} earlier job(s) first...", file=err)
            await core.service.wait_resumed()
        result = await core.service.run(request, replier)
    if result is None:
        error = replier.error or BotError("the job did not finish")
        note = " (nothing was charged)" if replier.refunded else ""
        code = USAGE if isinstance(error, InputError) else FAILED
        raise CliFailure(f"{error.user_message}{note}", code)
    return OK


# --- the other commands ---------------------------------------------------------------------


async def render(settings: Settings, args, out: TextIO) -> int:
    from .render.renderer import F3dRenderer, RenderOptions

    model, picture = Path(args.model), Path(args.output)
    if not await asyncio.to_thread(model.is_file):
        raise CliFailure(f"no such file: {model}", USAGE)
    turntable = Path(args.turntable) if args.turntable else None
    if turntable is not None and turntable.suffix.lower() not in (".webp", ".gif"):
        raise CliFailure("--turntable must end in .webp or .gif", USAGE)
    options = RenderOptions.from_settings(settings)
    if args.size:
        options = replace(options, size=args.size)
    renderer = F3dRenderer(options)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            await renderer.render_file(model, picture, turntable, Path(workdir))
    finally:
        await renderer.close()
    for path in (picture, turntable):
        if path is not None:
            print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)", file=out)
    return OK



async def credits(settings: Settings, out: TextIO) -> int:
    from .app import build_core

    if settings.offline:
        raise CliFailure("no SEGMIND_API_KEY is set: the bot runs on its free offline backend")
    async with build_core(settings) as core:
        balance = await core.backend.credits()
    print(f"credits: {balance.credits:g}  free credits: {balance.free_credits:g}", file=out)
    return OK


async def usage(settings: Settings, month: str | None, out: TextIO) -> int:
    from .ledger import ledger_from_settings

    ledger = ledger_from_settings(settings)
    await ledger.open()
    try:
        rows = await ledger.usage(month)
        budget = await ledger.budget(month)
    finally:
        await ledger.close()
    print(format_usage(rows, budget), file=out)
    return OK


def format_usage(rows, budget: dict[str, int]) -> str:
    header = ("month", "platform", "guild", "user", "jobs", "delivered", "failed", "refunded",
              "USD")
    table = [header] + [
        (r.month, r.platform, r.guild_id or "-", r.user_id, str(r.jobs), str(r.delivered),
         str(r.failed), str(r.refunded), f"{micros_to_usd(r.cost_micros):.3f}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    if not rows:
        lines.append("(no jobs yet)")
    lines.append(
        f"budget this month: ${micros_to_usd(budget['committed']):.3f} spent, "
        f"${micros_to_usd(budget['reserved']):.3f} reserved, "
        f"cap ${micros_to_usd(budget['cap']):.2f}"
    )
    return "\n".join(lines)


HOW_TO_CONFIGURE = (
    "no chat platform is configured: set DISCORD_TOKEN, or SLACK_BOT_TOKEN and "
    "SLACK_SIGNING_SECRET (plus SLACK_APP_TOKEN for Socket Mode), in the environment or .env. "
    "To try the bot without one: sam3d-bot generate PHOTO"
)


async def run(settings: Settings) -> int:
    from .app import configured_platforms, installed_adapters, run_adapters

    platforms = configured_platforms(settings)
    if not platforms:
        raise CliFailure(HOW_TO_CONFIGURE)
    adapters = [a for a in installed_adapters() if a.enabled(settings)]
    missing = set(platforms) - {a.name for a in adapters}
    if missing:
        raise CliFailure(f"this build has no adapter for {', '.join(sorted(missing))} yet")
    await run_adapters(settings, adapters)
    return OK


# --- entry point ----------------------------------------------------------------------------


def main(argv: list[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    settings = None
    try:
        settings = load_settings(args.env_file)
        setup_logging(settings, err)
        if args.command != "run":
            logging.getLogger().setLevel(logging.WARNING)  # the terminal shows progress itself
        command = {
            "generate": lambda: generate(settings, args, out, err),
            "render": lambda: render(settings, args, out),
            "credits": lambda: credits(settings, out),
            "usage": lambda: usage(settings, args.month, out),
            "run": lambda: run(settings),
        }[args.command]
        return asyncio.run(command())
    except SettingsError as exc:
        return _fail(err, str(exc), USAGE, settings)
    except CliFailure as exc:
        return _fail(err, str(exc), exc.code, settings)
    except BotError as exc:
        return _fail(err, exc.user_message, FAILED, settings)
    except KeyboardInterrupt:
        return _fail(err, "interrupted", FAILED, settings)
    except Exception as exc:  # one line, no traceback; the log has the rest
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        return _fail(err, f"unexpected error ({type(exc).__name__})", FAILED, settings)


def _fail(err: TextIO, message: str, code: int, settings: Settings | None) -> int:
    if settings is not None:
        message = RedactSecrets(secrets_of(settings)).redact(message)
    print(f"{PROG}: error: {message}", file=err)
    return code


if __name__ == "__main__":
    sys.exit(main())
