"""/sam3d-forget-me and /sam3d-admin forget: a confirmation to the one asking, then Forget
(the core's forget me) or Keep. The buttons' ids name whom and where (0: everywhere, the
member's own), and are checked again on the press."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.privacy import CONFIRM, CONFIRM_FOR, forget_member

from .answers import answer_failure, ephemeral
from .translate import PLATFORM, requester_of

if TYPE_CHECKING:
    from .app import Sam3dClient


def confirmation(user_id: int, guild_id: int | None) -> dict[str, Any]:
    """The question, and Forget / Keep; `guild_id`: an admin's forget, in that server only."""
    view = discord.ui.View(timeout=None)
    view.add_item(ForgetButton("yes", user_id, guild_id or 0))
    view.add_item(ForgetButton("no", user_id, guild_id or 0))
    text = CONFIRM if guild_id is None else f"<@{user_id}>: {CONFIRM_FOR}"
    return {"content": text, "view": view, "allowed_mentions": discord.AllowedMentions.none()}


class ForgetButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"sam3d-forget:(?P<action>yes|no):(?P<user>\d{1,20}):(?P<guild>\d{1,20})",
):
    def __init__(self, action: str, user_id: int, guild_id: int):
        label, style = (
            ("Forget", discord.ButtonStyle.danger)
            if action == "yes"
            else ("Keep", discord.ButtonStyle.secondary)
        )
        super().__init__(
            discord.ui.Button(
                label=label, style=style, custom_id=f"sam3d-forget:{action}:{user_id}:{guild_id}"
            )
        )
        self.action, self.user_id, self.guild_id = action, user_id, guild_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ForgetButton:
        return cls(match["action"], int(match["user"]), int(match["guild"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        from .app import Sam3dClient

        client = interaction.client
        assert isinstance(client, Sam3dClient)
        try:
            await self.answer(client, interaction)
        except Exception as error:  # a dynamic item has no view of ours to catch it
            await answer_failure(interaction, error)

    async def answer(self, client: Sam3dClient, interaction: discord.Interaction) -> None:
        who = requester_of(interaction)
        own = self.guild_id == 0 and str(self.user_id) == who.user_id
        theirs = self.guild_id != 0 and who.is_admin and str(self.guild_id) == who.guild_id
        if not (own or theirs):
            await ephemeral(interaction, "That is not yours to confirm.")
            return
        if self.action == "no":
            await interaction.response.edit_message(content="Kept: nothing changed.", view=None)
            return
        core = client.core
        done = await forget_member(
            core.ledger,
            core.results,
            core.picker.store if core.picker else None,
            PLATFORM,
            str(self.user_id),
            who.key,
            None if own else str(self.guild_id),
            client.delete_post,
        )
        whose = "yours" if own else f"<@{self.user_id}>'s in this server"
        await interaction.response.edit_message(
            content=done.describe(whose),
            view=None,
            allowed_mentions=discord.AllowedMentions.none(),
        )
