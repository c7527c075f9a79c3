"""A member's own models: their jobs, newest first, a page at a time, each with its prompt,
date, cost and state, its picture while it is kept, and fresh signed links (the viewer, the
files) where the bot has a PUBLIC_URL. Admins may look at one member's jobs in their server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .downloads import DownloadLinks
from .models import JobState
from .ports import JobRecord, Reports
from .results import job_files
from .settings import micros_to_usd

PAGE_SIZE = 10
STATE_WORDS = {
    JobState.QUEUED: "on its way",
    JobState.SUBMITTING: "on its way",
    JobState.SUBMITTED: "on its way",
    JobState.RENDERING: "on its way",
    JobState.DELIVERED: "delivered",
    JobState.FAILED: "failed (charged: Segmind billed it)",
    JobState.REFUNDED: "refunded",
    JobState.HELD: "held for an admin to settle",
}
NAMES = {"mesh": "GLB", "splat": "splat", "picture": "picture"}


@dataclass(frozen=True)
class HistoryEntry:
    job: JobRecord
    picture: Path | None  # the thumbnail, while the job's files are kept
    kept: bool
    viewer: str | None  # fresh signed links, with PUBLIC_URL
    downloads: tuple[tuple[str, str], ...]  # (what, link)

    @property
    def prompt(self) -> str:
        return str(self.job.params.get("prompt") or "")

    @property
    def cost(self) -> str:
        return "free" if not self.job.cost_micros else f"${micros_to_usd(self.job.cost_micros):.3f}"


@dataclass(frozen=True)
class HistoryPage:
    entries: tuple[HistoryEntry, ...]
    page: int  # from 0
    pages: int
    total: int

    @property
    def has_older(self) -> bool:
        return self.page + 1 < self.pages

    @property
    def has_newer(self) -> bool:
        return self.page > 0


class History:
    def __init__(self, ledger: Reports, data_dir: Path, links: DownloadLinks | None = None):
        self._ledger = ledger
        self._jobs = Path(data_dir) / "jobs"
        self._links = links if links is not None and links.enabled else None

    async def page(
        self, platform: str, user_id: str, page: int = 0, guild_id: str | None = None
    ) -> HistoryPage:
        """Page `page` of the member's jobs (guild_id: only those made in that server)."""
        page = max(0, page)
        jobs, total = await self._ledger.jobs_of(
            platform, user_id, guild_id, PAGE_SIZE, page * PAGE_SIZE
        )
        entries = [await self._entry(job) for job in jobs]
        pages = max(1, -(-total // PAGE_SIZE))
        return HistoryPage(tuple(entries), page, pages, total)

    async def _entry(self, job: JobRecord) -> HistoryEntry:
        files = await asyncio.to_thread(job_files, self._jobs, job.id)
        picture = files.get("picture")
        kept = "mesh" in files or "splat" in files
        links = self._links
        if links is None or not kept:
            return HistoryEntry(job, picture[0] if picture else None, kept, None, ())
        downloads = tuple(
            (NAMES[kind], links.link(job.id, path.name)) for kind, (path, _) in files.items()
        )
        return HistoryEntry(
            job, picture[0] if picture else None, kept, links.viewer_link(job.id), downloads
        )


def entry_text(
    entry: HistoryEntry,
    link: Callable[[str, str], str],
    escape: Callable[[str], str] = str,
) -> str:
    """One job in a line or two, for either platform (`link(text, url)` in its own markup)."""
    job = entry.job
    what = f"*{escape(entry.prompt)}*" if entry.prompt else "(no prompt)"
    state = STATE_WORDS.get(job.state, str(job.state))
    line = f"{what} · {job.created_at:%Y-%m-%d %H:%M} UTC · {entry.cost} · {state} · `{job.id}`"
    if entry.viewer:
        links = [link("View in 3D", entry.viewer), *(link(n, u) for n, u in entry.downloads)]
        line += "\n" + " · ".join(links)
    elif not entry.kept and job.state is JobState.DELIVERED:
        line += "\nIts files are no longer kept."
    return line


def page_heading(page: HistoryPage, whose: str = "Your") -> str:
    if page.total == 0:
        return f"{whose} models: none yet."
    return (
        f"{whose} models, newest first (page {page.page + 1} of {page.pages}, {page.total} in all):"
    )
