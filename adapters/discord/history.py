"""/sam3d-history: the member's own models, newest first, to them alone: one embed a job
with its picture, prompt, date, cost and state, and the viewer's fresh link where the bot has
a PUBLIC_URL (its page has every file); Older / Newer page through the rest. An admin may
name a member, and sees that member's jobs in this server only."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.history import HistoryPage, entry_text, page_heading

from .answers import answer_failure, ephemeral
from .translate import NO_PINGS, PLATFORM, requester_of

if TYPE_CHECKING:
    from .app import Sam3dClient

NOT_ADMIN = "Only members with Manage Server can look at another member's models."


def markdown_link(text: str, url: str) -> str:
    return f"[{text}]({url})"


async def history_message(
    client: Sam3dClient, interaction: discord.Interaction, page: int, member: int | None
) -> dict[str, Any] | None:
    """The page as a message's parts, or None (after saying why) if it may not be shown."""
    history = client.core.history
    assert history is not None
    who = requester_of(interaction)
    if member is not None and str(member) != who.user_id:
        if not who.is_admin:
            await ephemeral(interaction, NOT_ADMIN)
            return None
        shown = await history.page(PLATFORM, str(member), page, who.guild_id)
        whose = f"<@{member}>'s"
    else:
        shown = await history.page(PLATFORM, who.user_id, page)
        whose = "Your"
    return page_parts(shown, whose, member)


def page_parts(shown: HistoryPage, whose: str, member: int | None) -> dict[str, Any]:
    embeds, files = [], []
    for entry in shown.entries:
        embed = discord.Embed(
            description=entry_text(entry, markdown_link, discord.utils.escape_markdown),
            colour=0x5865F2,
            url=entry.viewer,
        )
        if entry.picture is not None:
            name = f"{entry.job.id}.png"
            files.append(discord.File(entry.picture, filename=name))
            embed.set_thumbnail(url=f"attachment://{name}")
        embeds.append(embed)
    view = discord.ui.View(timeout=None)
    if shown.has_newer:
        view.add_item(HistoryButton(shown.page - 1, member, "Newer"))
    if shown.has_older:
        view.add_item(HistoryButton(shown.page + 1, member, "Older"))
    return {
        "content": page_heading(shown, whose),
        "embeds": embeds,
        "files": files,
        "view": view,
        "allowed_mentions": NO_PINGS,
    }


class HistoryButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"sam3d-history:(?P<page>\d{1,6}):(?P<member>\d{1,20})",
):
    """Older / Newer: the page and whose jobs are in the id (0: the presser's own)."""

    def __init__(self, page: int, member: int | None, label: str = "Older"):
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                custom_id=f"sam3d-history:{page}:{member or 0}",
            )
        )
        self.page, self.member = page, member

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> HistoryButton:
        return cls(int(match["page"]), int(match["member"]) or None)

    async def callback(self, interaction: discord.Interaction) -> None:
        from .app import Sam3dClient

        client = interaction.client
        assert isinstance(client, Sam3dClient)
        try:
            parts = await history_message(client, interaction, self.page, self.member)
            if parts is not None:
                parts["attachments"] = parts.pop("files")  # in place of the page before
                await interaction.response.edit_message(**parts)
        except Exception as error:  # a dynamic item has no view of ours to catch it
            await answer_failure(interaction, error)
