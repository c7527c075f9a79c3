"""Forget me: a member's kept photos, masks, models, pictures and picks removed, and the
ledger's rows of their jobs kept (the money history) under an alias, with what they asked
for cleared and their name out of the audit trail. After a confirmation, by the member or an
admin; refused while a job of theirs is on its way (it would be delivered to no one)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .picker import PickStore
from .ports import AdminLedger
from .results import ResultStore

log = logging.getLogger(__name__)

CONFIRM = (
    "Forget you? This removes the photos, masks, models and pictures of all your jobs that "
    "this bot keeps, the pictures you are picking on, and the bot's posts of your results "
    "where it still can; the bill stays (what each job cost, under a name that is no longer "
    "yours). This cannot be undone."
)
CONFIRM_FOR = (
    "Forget this member? Their kept photos, masks, models and pictures are removed, and the "
    "bot's posts of their results where it still can; the ledger keeps what their jobs cost "
    "under an alias. This cannot be undone."
)
# Deletes one post the bot noted (a chat's own ids); True when it is gone (or was already).
DeletePost = Callable[[dict[str, Any]], Awaitable[bool]]


@dataclass(frozen=True)
class Forgotten:
    jobs: int
    bytes_freed: int
    picks: int
    posts_deleted: int = 0
    posts_left: int = 0  # the bot may no longer delete them (no access, the token expired)

    def describe(self, whose: str = "yours") -> str:
        picks = f", and {self.picks} pick(s)" if self.picks else ""
        posts = ""
        if self.posts_deleted:
            posts = f" {self.posts_deleted} post(s) of the results deleted."
        if self.posts_left:
            posts += (
                f" {self.posts_left} post(s) I can no longer delete: remove them by hand "
                "(or ask the channel's moderators)."
            )
        return (
            f"Done: {self.jobs} job(s) of {whose} forgotten, {self.bytes_freed / 1e6:.1f} MB "
            f"of files removed{picks}.{posts} What they cost stays in the ledger under an alias."
        )


async def forget_member(
    ledger: AdminLedger,
    results: ResultStore,
    picks: PickStore | None,
    platform: str,
    user_id: str,
    actor: str,
    guild_id: str | None = None,
    delete_post: DeletePost | None = None,
) -> Forgotten:
    """`guild_id`: an admin's forget, of the jobs made in their server only. `delete_post`
    takes away each post the bot noted of their results, before their files go."""
    job_ids = await ledger.forget_member(platform, user_id, actor, guild_id)
    deleted = left = 0
    if delete_post is not None:
        for post in await results.posts_of(job_ids):
            try:
                gone = await delete_post(post)
            except Exception:  # one post that will not go does not stop the forgetting
                log.warning("could not delete a post of a forgotten job", exc_info=True)
                gone = False
            deleted, left = (deleted + 1, left) if gone else (deleted, left + 1)
    freed = await results.forget(job_ids)
    removed = 0
    if picks is not None and guild_id is None:
        removed = await asyncio.to_thread(picks.forget, f"{platform}:{user_id}")
    return Forgotten(len(job_ids), freed, removed, deleted, left)
