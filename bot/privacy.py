"""Forget me: a member's kept photos, masks, models, pictures and picks removed, and the
ledger's rows of their jobs kept (the money history) under an alias, with what they asked
for cleared and their name out of the audit trail. After a confirmation, by the member or an
admin; refused while a job of theirs is on its way (it would be delivered to no one)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .picker import PickStore
from .ports import AdminLedger
from .results import ResultStore

CONFIRM = (
    "Forget you? This removes the photos, masks, models and pictures of all your jobs that "
    "this bot keeps, and the pictures you are picking on; the bill stays (what each job cost, "
    "under a name that is no longer yours). Results already posted stay where they are: "
    "delete them with their Delete button. This cannot be undone."
)
CONFIRM_FOR = (
    "Forget this member? Their kept photos, masks, models and pictures are removed; the "
    "ledger keeps what their jobs cost under an alias. This cannot be undone."
)


@dataclass(frozen=True)
class Forgotten:
    jobs: int
    bytes_freed: int
    picks: int

    def describe(self, whose: str = "yours") -> str:
        picks = f", and {self.picks} pick(s)" if self.picks else ""
        return (
            f"Done: {self.jobs} job(s) of {whose} forgotten, {self.bytes_freed / 1e6:.1f} MB "
            f"of files removed{picks}. What they cost stays in the ledger under an alias."
        )


async def forget_member(
    ledger: AdminLedger,
    results: ResultStore,
    picks: PickStore | None,
    platform: str,
    user_id: str,
    actor: str,
    guild_id: str | None = None,
) -> Forgotten:
    """`guild_id`: an admin's forget, of the jobs made in their server only."""
    job_ids = await ledger.forget_member(platform, user_id, actor, guild_id)
    freed = await results.forget(job_ids)
    removed = 0
    if picks is not None and guild_id is None:
        removed = await asyncio.to_thread(picks.forget, f"{platform}:{user_id}")
    return Forgotten(len(job_ids), freed, removed)
