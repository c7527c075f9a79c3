"""`sam3d-bot`: generate | render | credits | usage | admin | run.

Exit codes: 0 success, 1 failure, 2 usage error. A failure is one line on stderr, never a
traceback, and never shows a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from PIL import Image, ImageOps

from .errors import BotError, DeliveryError, InputError
from .grid import Grid, draw_grid
from .images import oriented_size
from .logs import RedactSecrets, secrets_of, setup_logging
from .models import (
    FileKind,
    ImageSource,
    JobRequest,
    JobResult,
    JobState,
    OutputFile,
    Progress,
    Requester,
)
from .operations import GROUPINGS, Operations, Where, describe_budget, usage_csv, usage_table
from .ports import JobRecord, Ledger
from .results import ResultStore
from .settings import Settings, SettingsError, check_data_dir, load_settings, micros_to_usd

if TYPE_CHECKING:
    from .app import Core
    from .picker import Pick

PROG = "sam3d-bot"
OK, FAILED, USAGE = 0, 1, 2
CLI_ACTOR = "cli"


class CliFailure(Exception):
    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Photos to 3D models with SAM 3D.")
    parser.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    parser.add_argument(
        "--verbose", action="store_true", help="show the traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="make a 3D model from a photo")
    gen.add_argument("image", help="a PNG, JPEG or WebP file, or an http(s) link")
    gen.add_argument("--prompt", help="what the object is, e.g. 'car'")
    gen.add_argument("--bbox", help="box around the object: x1,y1,x2,y2 in pixels")
    gen.add_argument("--points", help="points on the object: x,y;x,y in pixels")
    gen.add_argument("--cells", help="or points as cells of `sam3d-bot grid`: B3,C4")
    gen.add_argument("--box-cells", help="or the box as two corner cells of the grid: A1:D6")
    gen.add_argument(
        "--pick",
        action="store_true",
        help="pick the object in a browser first: serves the web picker on HTTP_HOST:HTTP_PORT",
    )
    gen.add_argument("--mask", help="a mask image of the same size (white = object)")
    gen.add_argument("--seed", help="0..1000000 (default 123)")
    gen.add_argument("--artifacts", action="store_true", help="ask for the artifacts ZIP too")
    gen.add_argument(
        "--turntable",
        action="store_true",
        help="also write a turntable (NAME-turntable.webp and .gif)",
    )
    gen.add_argument("--out", default="out", help="folder for the model files (default: ./out)")

    grid = sub.add_parser(
        "grid", help="the photo with the labelled grid that --cells and --box-cells name"
    )
    grid.add_argument("image", help="a PNG, JPEG or WebP file")
    grid.add_argument("-o", "--output", required=True, help="the PNG to write")

    exp = sub.add_parser(
        "export", help="the model as STL, 3MF, OBJ, USDZ or a lighter GLB, at a real size"
    )
    exp.add_argument("model", help="a .glb, or a .ply mesh")
    exp.add_argument("--format", required=True, choices=["stl", "3mf", "obj", "usdz", "glb"])
    exp.add_argument(
        "--height-mm", type=float, help="scale it to stand this tall, on the ground plane"
    )
    exp.add_argument("--faces", type=int, help="decimate to about this many triangles")
    exp.add_argument("-o", "--output", required=True, help="the file to write")

    ren = sub.add_parser("render", help="draw a picture of a GLB or PLY model")
    ren.add_argument("model", help="a .glb, or a .ply mesh or Gaussian splat")
    ren.add_argument("-o", "--output", required=True, help="the PNG to write")
    ren.add_argument("--turntable", help="also write a turntable: NAME.webp or NAME.gif")
    ren.add_argument("--size", type=int, help="picture size in pixels (default RENDER_SIZE)")

    sub.add_parser("credits", help="show the Segmind account balance")
    usage = sub.add_parser("usage", help="jobs and spend by month, server and user")
    usage.add_argument("--month", help="YYYY-MM (default: all)")
    usage.add_argument(
        "--by", choices=GROUPINGS, default="user", help="one row per (default: user)"
    )
    usage.add_argument("--platform", help="only this platform (discord, slack, cli)")
    usage.add_argument("--guild", help="only this Discord server / Slack workspace id")
    usage.add_argument("--csv", action="store_true", help="CSV instead of a table")
    add_admin_parser(sub)
    prune = sub.add_parser(
        "prune", help="remove the files of jobs older than FILES_KEEP_DAYS (the bot does it hourly)"
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    sub.add_parser("run", help="start the chat adapters that have tokens")
    return parser


def add_admin_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = sub.add_parser("admin", help="quotas, budgets, blocks, pauses, refunds, audit")
    verbs = admin.add_subparsers(dest="verb", required=True)

    def where(parser: argparse.ArgumentParser, needs_platform: bool = True) -> None:
        parser.add_argument("--platform", required=needs_platform, help="discord or slack (or cli)")
        parser.add_argument("--guild", help="a server / workspace id (default: everywhere)")

    quota = verbs.add_parser("set-quota", help="jobs per window for a user, role or server")
    where(quota)
    target = quota.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="a user id")
    target.add_argument("--role", help="a role id (needs --guild)")
    target.add_argument("--server", action="store_true", help="the whole --guild")
    quota.add_argument("jobs", help="a number, unlimited, or default (removes the override)")
    quota.add_argument(
        "--window-hours", type=float, help="its own window (default: QUOTA_WINDOW_HOURS)"
    )

    budget = verbs.add_parser("set-budget", help="a server's monthly budget, or the global cap")
    where(budget, needs_platform=False)
    budget.add_argument("usd", help="USD per month, or none (a server only)")

    for name, text in (("block", "stop a user making jobs"), ("unblock", "let them again")):
        verb = verbs.add_parser(name, help=text)
        where(verb)
        verb.add_argument("user", help="the user id")
        if name == "block":
            verb.add_argument("--reason", default="")

    for name, text in (("pause", "stop new jobs"), ("resume", "open new jobs again")):
        verb = verbs.add_parser(name, help=text)
        where(verb, needs_platform=False)
        if name == "pause":
            verb.add_argument("--reason", default="")

    refund = verbs.add_parser("refund", help="give a finished job back to its user")
    refund.add_argument("job", help="the job id")
    refund.add_argument("--reason", default="")

    verbs.add_parser("held", help="jobs whose submit was cut off: Segmind may have billed them")

    audit = verbs.add_parser("audit", help="the audit trail of a job, or the latest entries")
    audit.add_argument("job", nargs="?", help="a job id (default: the latest entries)")
    audit.add_argument("--limit", type=int, default=50)


# --- generate -------------------------------------------------------------------------------


class TerminalReplier:
    """Shows progress on a terminal (nothing when piped) and writes results into a folder."""

    def __init__(
        self, out_dir: Path, stem: str, err: TextIO, out: TextIO, announce_failure: bool = False
    ):
        self._out_dir, self._stem = out_dir, stem
        self._err, self._out = err, out
        self._announce_failure = announce_failure  # for earlier jobs: nobody else will say it
        self._live = err.isatty()
        self._started = time.monotonic()
        self.written: list[Path] = []
        self.error: BotError | None = None
        self.refunded = False

    async def prepare(self) -> None:
        """The folder must take the files before the job is paid for."""
        await asyncio.to_thread(self._check_out_dir)

    def _check_out_dir(self) -> None:
        try:
            self._out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self._out_dir, prefix=".sam3d-check-"):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise DeliveryError(
                f"cannot write the model files to {self._out_dir}: {reason} (choose another --out)"
            ) from None

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

    async def deliver_more(self, result: JobResult, files: tuple[OutputFile, ...]) -> None:
        await self._write(files)

    async def _write(self, files: tuple[OutputFile, ...]) -> None:
        """NAME.glb, NAME.ply, NAME.png, NAME-turntable.webp; anything else NAME-FILE."""
        self._out_dir.mkdir(parents=True, exist_ok=True)
        for file in files:
            base = {
                FileKind.MESH: self._stem,
                FileKind.SPLAT: self._stem,
                FileKind.THUMBNAIL: self._stem,
                FileKind.TURNTABLE: f"{self._stem}-turntable",
            }.get(file.kind)
            target = self._out_dir / f"{base}{file.path.suffix}"
            if base is None or target in self.written:
                target = self._out_dir / f"{self._stem}-{file.path.name}"
            await asyncio.to_thread(shutil.copyfile, file.path, target)
            self.written.append(target)
            print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)", file=self._out)

    async def fail(self, error: BotError, refunded: bool) -> None:
        self._clear()
        self.error, self.refunded = error, refunded
        if self._announce_failure:
            print(
                f"an earlier job for {self._out_dir / self._stem}: {error.user_message}",
                file=self._err,
            )

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


def grid_of(path: Path) -> Grid:
    """The grid of a photo file, on the photo as it is shown (its EXIF orientation applied)."""
    try:
        width, height = oriented_size(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CliFailure(f"{path}: not a photo I can read ({exc})", USAGE) from None
    return Grid.for_size(width, height)


async def grid(args: argparse.Namespace, out: TextIO) -> int:
    """`sam3d-bot grid IMAGE -o grid.png`: the photo with its labelled grid."""
    path = Path(args.image)

    def write() -> Grid:
        layout = grid_of(path)
        with Image.open(path) as photo:
            shown = ImageOps.exif_transpose(photo)
            draw_grid(shown, layout).save(args.output, "PNG")
        return layout

    layout = await asyncio.to_thread(write)
    last = layout.label(layout.columns - 1, layout.rows - 1)
    print(f"wrote {args.output}: cells A1 to {last} ({layout.columns} x {layout.rows})", file=out)
    return OK


async def generate(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .app import build_core

    source = image_source(args.image)
    stem = Path(source.name).stem if source.kind == "path" else "model"
    points, bbox = args.points, args.bbox
    if args.pick and (points or bbox or args.cells or args.box_cells or args.mask):
        raise CliFailure("--pick chooses the points and box itself; leave out the others", USAGE)
    if args.cells or args.box_cells:
        if source.kind != "path":
            raise CliFailure("--cells and --box-cells need a photo file (its grid)", USAGE)
        grid = await asyncio.to_thread(grid_of, Path(source.name))
        if args.cells:
            points = ";".join(f"{x},{y}" for x, y in grid.points(args.cells))
        if args.box_cells:
            bbox = ",".join(map(str, grid.box(args.box_cells)))
    request = JobRequest(
        requester=Requester(
            "cli", getpass.getuser(), display_name=getpass.getuser(), is_admin=True
        ),
        image=source,
        prompt=args.prompt,
        bbox=bbox,
        points=points,
        mask=ImageSource.from_path(args.mask) if args.mask else None,
        seed=args.seed,
        include_artifacts=args.artifacts,
        # Where the files go, kept with the job: a later command finishes an interrupted one.
        reply_to={
            "out": os.path.abspath(args.out),  # noqa: ASYNC240 - getcwd, no disk
            "stem": stem or "model",
        },
    )
    replier = TerminalReplier(Path(args.out), stem or "model", err, out)
    settings = settings.model_copy(update={"render_turntable": args.turntable})

    def earlier_replier(record: JobRecord) -> TerminalReplier | None:
        where = record.reply_to
        if "out" not in where:
            return None
        return TerminalReplier(
            Path(where["out"]), where.get("stem", "model"), err, out, announce_failure=True
        )

    async with build_core(settings, allow_paths=True) as core:
        # An earlier command stopped mid-job (Ctrl-C, a crash, a kill): Segmind may still have
        # it. Finish it into its folder, so nothing paid for is lost; refund what never left.
        earlier = await core.service.recover(earlier_replier, {"cli"})
        if earlier:
            print(f"finishing {earlier} earlier job(s) first...", file=err)
            await core.service.wait_resumed()
        if args.pick:
            request = await pick_in_browser(core, request, out, err)
        result = await core.service.run(request, replier)
    if result is None:
        error = replier.error or BotError("the job did not finish")
        note = " (nothing was charged)" if replier.refunded else ""
        code = (
            USAGE if isinstance(error, InputError | DeliveryError) and not error.charged else FAILED
        )
        raise CliFailure(f"{error.user_message}{note}", code)
    return OK


async def pick_in_browser(core: Core, request: JobRequest, out: TextIO, err: TextIO) -> JobRequest:
    """`generate --pick`: the web picker on HTTP_HOST:HTTP_PORT, its link on a line of its
    own, and the request as picked once "Make it" is pressed. Nothing is charged before."""
    from .web import build_web_app, start_web

    settings, picker = core.settings, core.picker
    assert picker is not None and core.links is not None
    pick = await picker.begin(request)
    chosen: asyncio.Future[JobRequest] = asyncio.get_running_loop().create_future()

    async def made(_: Pick, picked: JobRequest) -> None:
        if not chosen.done():
            chosen.set_result(picked)

    picker.starts_jobs_for(request.requester.platform, made)
    app = build_web_app(core.links, settings.data_dir, picker=picker)
    server = await start_web(app, settings.http_host, settings.http_port)
    try:
        base = settings.public_url or f"http://{browsable(settings.http_host)}:{settings.http_port}"
        print(core.links.pick_link(pick.id, pick.expires_at, base), file=out, flush=True)
        print("Open that link to pick the object; Ctrl-C cancels (nothing is charged).", file=err)
        return await asyncio.wait_for(chosen, max(0.0, pick.expires_at - time.time()))
    except TimeoutError:
        raise CliFailure("the pick expired (15 minutes); nothing was charged") from None
    except asyncio.CancelledError:
        print("cancelled while picking: nothing was charged", file=err)
        raise
    finally:
        await server.cleanup()  # waits for the page's answer to be sent


def browsable(host: str) -> str:
    """An address a browser on this machine can open for the host the server listens on."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


# --- the other commands ---------------------------------------------------------------------


async def export(args: argparse.Namespace, out: TextIO) -> int:
    """`sam3d-bot export MODEL --format F [--height-mm N] [--faces N] -o OUT`."""
    from .formats import ModelFormat, convert

    model, output = Path(args.model), Path(args.output)
    if not await asyncio.to_thread(model.is_file):
        raise CliFailure(f"no such file: {model}", USAGE)
    if args.height_mm is not None and not 0.1 <= args.height_mm <= 100_000:
        raise CliFailure("--height-mm: give between 0.1 and 100000", USAGE)
    if args.faces is not None and not 4 <= args.faces <= 5_000_000:
        raise CliFailure("--faces: give between 4 and 5000000", USAGE)
    source, target = await asyncio.to_thread(lambda: (model.resolve(), output.resolve()))
    try:
        done = await convert(source, ModelFormat(args.format), target, args.height_mm, args.faces)
    except InputError as error:
        raise CliFailure(f"{model}: {error.user_message.removeprefix('model: ')}", USAGE) from None
    print(f"wrote {output}: {done.describe()}", file=out)
    return OK


async def render(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
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
    import aiohttp

    from .segmind import SegmindClient

    if settings.offline:
        raise CliFailure("no SEGMIND_API_KEY is set: the bot runs on its free offline backend")
    async with aiohttp.ClientSession() as session:
        balance = await SegmindClient.from_settings(session, settings).credits()
    print(f"credits: {balance.credits:g}  free credits: {balance.free_credits:g}", file=out)
    return OK


@asynccontextmanager
async def opened_ledger(settings: Settings) -> AsyncIterator[Ledger]:
    from .ledger import ledger_from_settings

    ledger = ledger_from_settings(settings)
    await ledger.open()
    try:
        yield ledger
    finally:
        await ledger.close()


async def usage(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    where = Where(args.platform, args.guild) if args.platform else None
    if args.guild and not args.platform:
        raise CliFailure("--guild needs --platform", USAGE)
    async with opened_ledger(settings) as ledger:
        operations = Operations(ledger)
        rows = await operations.usage(where, args.month, args.by)
        budgets = await operations.budgets(where, args.month)
    if args.csv:
        out.write(usage_csv(rows, args.by))
        return OK
    print(usage_table(rows, args.by), file=out)
    for budget in budgets:
        print(describe_budget(budget), file=out)
    size = await ResultStore(settings.data_dir).size()
    print(f"data folder ({settings.data_dir}): {size / 1e6:.1f} MB", file=out)
    return OK


async def prune(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from .app import prune_files  # the app's modules load only for the commands that use them

    results = ResultStore(settings.data_dir)
    async with opened_ledger(settings) as ledger:
        pruned = await prune_files(ledger, results, settings.files_keep_days, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} the files of {pruned.jobs} job(s) older than {settings.files_keep_days:g} days: "
        f"{pruned.bytes / 1e6:.1f} MB; the data folder holds {await results.size() / 1e6:.1f} MB",
        file=out,
    )
    return OK


async def admin(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    actor = f"{CLI_ACTOR}:{getpass.getuser()}"
    where = Where(getattr(args, "platform", None) or "", getattr(args, "guild", None))
    async with opened_ledger(settings) as ledger:
        operations = Operations(ledger)
        if args.verb == "set-quota":
            if args.role and not args.guild:
                raise CliFailure("a role quota needs --guild", USAGE)
            if args.server and not args.guild:
                raise CliFailure("--server needs --guild", USAGE)
            kind = "user" if args.user else "role" if args.role else "guild"
            said = await operations.set_quota(
                actor, where, kind, args.user or args.role or "", args.jobs, args.window_hours
            )
        elif args.verb == "set-budget":
            if args.guild and not args.platform:
                raise CliFailure("--guild needs --platform", USAGE)
            said = await operations.set_budget(actor, where, args.usd)
        elif args.verb == "block":
            said = await operations.block(actor, where, args.user, args.reason)
        elif args.verb == "unblock":
            said = await operations.unblock(actor, where, args.user)
        elif args.verb in ("pause", "resume"):
            scoped = where if args.guild else None
            if args.guild and not args.platform:
                raise CliFailure("--guild needs --platform", USAGE)
            said = await (
                operations.pause(actor, scoped, args.reason)
                if args.verb == "pause"
                else operations.resume(actor, scoped)
            )
        elif args.verb == "refund":
            said = await operations.refund(actor, None, args.job, args.reason)
        elif args.verb == "held":
            said = held_report(await ledger.in_states([JobState.HELD]))
        else:
            entries = await ledger.audit_trail(args.job, args.limit)
            said = (
                "\n".join(
                    f"{e.at:%Y-%m-%d %H:%M:%S}  {e.job_id or '-':12}  {e.actor:20}  {e.action:10}"
                    f"  {micros_to_usd(e.amount_micros):>9.6f}  {e.detail}".rstrip()
                    for e in entries
                )
                or "(no entries)"
            )
    print(said, file=out)
    return OK


def held_report(jobs: list[JobRecord]) -> str:
    """Held jobs, with what settles each: Segmind's account shows whether it was billed."""
    if not jobs:
        return "no held jobs"
    lines = [
        f"{j.id}  {j.created_at:%Y-%m-%d %H:%M} UTC  {j.platform}:{j.user_id}"
        f"  ${micros_to_usd(j.reserved_micros):.3f} held  ({j.error})"
        for j in jobs
    ]
    lines.append(
        "Each was cut off while being sent to Segmind. If Segmind's usage page shows "
        "no charge for it, `sam3d-bot admin refund JOB` releases its price and the "
        "member's quota slot; otherwise leave it held."
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
        if sys.stdin.isatty():  # someone at a terminal: the answer now
            raise CliFailure(HOW_TO_CONFIGURE)
        # A service (`docker run -d`, systemd): exiting would only restart it over and over.
        # It stays up, /readyz says what is missing (docker ps: unhealthy), the log says how.
        logging.getLogger(__name__).error("%s; waiting until restarted with one", HOW_TO_CONFIGURE)
        await run_adapters(settings, [])
        return OK
    adapters = [a for a in installed_adapters() if a.enabled(settings)]
    missing = set(platforms) - {a.name for a in adapters}
    if missing:
        raise CliFailure(f"this build has no adapter for {', '.join(sorted(missing))} yet")
    await run_adapters(settings, adapters)
    return OK


# --- entry point ----------------------------------------------------------------------------


def main(
    argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
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
        if args.command not in ("render", "grid", "export"):  # the others use DATA_DIR
            check_data_dir(settings.data_dir)
        if args.command != "run":
            logging.getLogger().setLevel(logging.WARNING)  # the terminal shows progress itself
        command: Callable[[], Coroutine[Any, Any, int]] = {
            "generate": lambda: generate(settings, args, out, err),
            "render": lambda: render(settings, args, out),
            "grid": lambda: grid(args, out),
            "export": lambda: export(args, out),
            "credits": lambda: credits(settings, out),
            "usage": lambda: usage(settings, args, out),
            "prune": lambda: prune(settings, args, out),
            "admin": lambda: admin(settings, args, out),
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
    except Exception as exc:  # one line, no traceback (unless asked for); the log has the rest
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        if args.verbose:
            trace = "".join(traceback.format_exception(exc))
            if settings is not None:
                trace = RedactSecrets(secrets_of(settings)).redact(trace)
            err.write(trace)
        return _fail(err, f"unexpected error ({type(exc).__name__})", FAILED, settings)


def _fail(err: TextIO, message: str, code: int, settings: Settings | None) -> int:
    if settings is not None:
        message = RedactSecrets(secrets_of(settings)).redact(message)
    print(f"{PROG}: error: {message}", file=err)
    return code


if __name__ == "__main__":
    sys.exit(main())
