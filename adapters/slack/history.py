"""`/sam3d history [@member] [page]`: the member's own models, newest first, to them alone:
each job's prompt, date, cost and state, its picture and fresh links where the bot has a
PUBLIC_URL; Older / Newer page through the rest. A workspace admin may name a member."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bot.history import HistoryPage, entry_text, page_heading

from .translate import PLATFORM, escape, user_id_in

if TYPE_CHECKING:
    from .app import SlackBot

HISTORY = "sam3d_history"  # the Older / Newer buttons
NOT_ADMIN = "Only workspace admins and owners can look at another member's models."


def slack_link(text: str, url: str) -> str:
    return f"<{url}|{text}>"


def history_words(words: list[str]) -> tuple[str | None, int]:
    """`@member` and a page number, in any order, both optional."""
    member, page = None, 1
    for word in words:
        found = user_id_in(word)
        if found:
            member = found
        elif word.isdigit():
            page = max(1, min(int(word), 100_000))
    return member, page


async def history_blocks(
    bot: SlackBot, team: str | None, user: str, member: str | None, page: int
) -> tuple[str, list[dict[str, Any]]]:
    """The page as Slack's text and blocks (the text alone when it may not be shown)."""
    history = bot.core.history
    assert history is not None
    if member is not None and member != user:
        if not await bot.is_admin(team, user):
            return NOT_ADMIN, []
        shown = await history.page(PLATFORM, member, page - 1, team)
        whose = f"<@{member}>'s"
    else:
        shown = await history.page(PLATFORM, user, page - 1)
        whose = "Your"
    return page_heading(shown, whose), blocks_of(bot, shown, whose, member)


def blocks_of(
    bot: SlackBot, shown: HistoryPage, whose: str, member: str | None
) -> list[dict[str, Any]]:
    links = bot.core.links
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": page_heading(shown, whose)}}
    ]
    for entry in shown.entries:
        block: dict[str, Any] = {
            "type": "section",
            "text": {"type": "mrkdwn", "text": entry_text(entry, slack_link, escape)[:3000]},
        }
        if entry.picture is not None and entry.viewer and links is not None:
            # Slack fetches pictures itself: only by the bot's public, signed address.
            block["accessory"] = {
                "type": "image",
                "image_url": links.link(entry.job.id, entry.picture.name),
                "alt_text": "the model's picture",
            }
        blocks.append(block)
    buttons = [
        {
            "type": "button",
            "action_id": f"{HISTORY}_{label.lower()}",
            "text": {"type": "plain_text", "text": label},
            "value": json.dumps({"page": shown.page + 1 + step, "member": member}),
        }
        for label, step, shown_if in (
            ("Newer", -1, shown.has_newer),
            ("Older", 1, shown.has_older),
        )
        if shown_if
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return blocks
