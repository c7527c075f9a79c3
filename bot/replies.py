"""How a job's outcome is worded on every platform: what it cost, why it failed, what a file
is called and where a file too large to attach can be fetched."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import BotError
from .models import FileKind, JobResult, OutputFile
from .settings import micros_to_usd

if TYPE_CHECKING:
    from .downloads import DownloadLinks

# A job asked for while the bot stops, or cut off before it was reserved.
RESTARTING = "The bot is restarting; please send it again in a minute. Nothing was charged."

UNREADABLE = "the photo or its settings could not be read; nothing was charged"
# Segmind keeps a result's files about an hour; shown beside its links.
UPSTREAM_LINK_NOTE = "Segmind's link, valid for about an hour"
# The files users download.
SHARED_KINDS = (FileKind.MESH, FileKind.LIGHT_SPLAT, FileKind.SPLAT, FileKind.ARCHIVE)


def server_noun(platform: str | None) -> str:
    """What a platform calls the place its admins run: a Discord server, a Slack workspace."""
    return "workspace" if platform == "slack" else "server"


def on_this(platform: str | None) -> str:
    """ "on this server", "in this workspace"."""
    noun = server_noun(platform)
    return f"{'in' if noun == 'workspace' else 'on'} this {noun}"


def failure_text(error: BotError, refunded: bool) -> str:
    note = " Nothing was charged." if refunded else ""
    return f"{error.user_message}{note}"


def cost_text(result: JobResult) -> str:
    if result.offline or result.cached or not result.cost_micros:
        return "free"
    return f"${micros_to_usd(result.cost_micros):.3f}"


def attachment_name(file: OutputFile) -> str:
    suffix = file.path.suffix or {FileKind.MESH: ".glb", FileKind.SPLAT: ".ply"}.get(file.kind, "")
    names = {
        FileKind.MESH: "model",
        FileKind.SPLAT: "splat",
        FileKind.LIGHT_SPLAT: "splat-light",
        FileKind.ARCHIVE: "artifacts",
    }
    return names.get(file.kind, file.path.stem) + suffix


def link_line(file: OutputFile, name: str, job_id: str, links: DownloadLinks | None = None) -> str:
    """`links`: the bot's signed download links (used when PUBLIC_URL is set)."""
    size = f"{file.size / 1e6:.1f} MB"
    if links is not None and links.enabled:
        days = links.lifetime_s / 86400
        return f"{name} ({size}): {links.link(job_id, file.path.name)} (valid {days:g} days)"
    if file.source_url:
        return f"{name} ({size}): {file.source_url} ({UPSTREAM_LINK_NOTE})"
    return f"{name} ({size}) is too large to attach here and has no link"


def details_text(
    params: dict[str, Any],
    job_id: str,
    cost_micros: int,
    escape: Callable[[str], str] = str,
    timings: dict[str, float] | None = None,
) -> str:
    """A job's settings and cost, one per line; `escape` makes user text inert on the
    platform."""
    lines = [f"Job `{job_id}`"]
    for key in ("prompt", "seed", "bbox", "points", "mask", "width", "height", "from_job"):
        value = params.get(key)
        if value not in (None, False, ""):
            lines.append(f"{key}: {escape(str(value))}")
    lines.append(f"cost: ${micros_to_usd(cost_micros):.3f}")
    for stage, seconds in (timings or {}).items():
        lines.append(f"{stage}: {seconds:.1f} s")
    return "\n".join(lines)
