"""`/sam3d forget-me` and `/sam3d admin forget @member`: a confirmation to the one asking, then
Forget (the core's forget me) or Keep. The buttons carry whom and where, checked again on
the press: a member's own forget reaches everywhere, an admin's their workspace only."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bot.privacy import CONFIRM, CONFIRM_FOR, forget_member

from .translate import PLATFORM

if TYPE_CHECKING:
    from .app import SlackBot

FORGET = "sam3d_forget"  # sam3d_forget_yes / sam3d_forget_no


def confirmation(user_id: str, team_id: str | None) -> tuple[str, list[dict[str, Any]]]:
    """`team_id`: an admin's forget of a member, in that workspace only."""
    text = CONFIRM if team_id is None else f"<@{user_id}>: {CONFIRM_FOR}"
    value = json.dumps({"user": user_id, "team": team_id})
    return text, [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": f"{FORGET}_yes",
                    "text": {"type": "plain_text", "text": "Forget"},
                    "style": "danger",
                    "value": value,
                },
                {
                    "type": "button",
                    "action_id": f"{FORGET}_no",
                    "text": {"type": "plain_text", "text": "Keep"},
                    "value": value,
                },
            ],
        },
    ]


async def confirmed(
    bot: SlackBot, presser: str, presser_team: str | None, action_id: str, value: str
) -> str:
    """What the press did, in words."""
    try:
        asked = json.loads(value)
        user, team = str(asked["user"]), asked.get("team")
    except (ValueError, KeyError, TypeError):
        return "That is not a forget me I made."
    own = team is None and user == presser
    theirs = team is not None and team == presser_team and await bot.is_admin(team, presser)
    if not (own or theirs):
        return "That is not yours to confirm."
    if action_id.endswith("_no"):
        return "Kept: nothing changed."
    core = bot.core
    done = await forget_member(
        core.ledger,
        core.results,
        core.picker.store if core.picker else None,
        PLATFORM,
        user,
        f"{PLATFORM}:{presser}",
        None if own else team,
        bot.delete_post,
    )
    return done.describe("yours" if own else f"<@{user}>'s in this workspace")
