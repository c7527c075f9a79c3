"""Answers to the member alone (ephemeral), and the one place an interaction's failure is
worded: the command tree's, the forms' and the buttons' error hooks all come here."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot.errors import BotError

from .translate import NO_PINGS, pages

log = logging.getLogger(__name__)

SOMETHING_WRONG = "Something went wrong inside the bot; nothing was charged. Try again."


async def ephemeral(interaction: discord.Interaction, text: str) -> None:
    """`text` to the member alone, in as many messages as Discord's 2000 characters need (a
    usage table, a long list of channels)."""
    for page in pages(text):
        if interaction.response.is_done():
            await interaction.followup.send(page, ephemeral=True, allowed_mentions=NO_PINGS)
        else:
            await interaction.response.send_message(page, ephemeral=True, allowed_mentions=NO_PINGS)


async def answer_failure(interaction: discord.Interaction, error: Exception) -> None:
    """A BotError's own message, or a short apology (the traceback goes to the log)."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, app_commands.CheckFailure):
        return  # the check answered already
    if isinstance(error, BotError):
        text = error.user_message
    else:
        log.error("interaction failed", exc_info=error)
        text = SOMETHING_WRONG
    try:
        await ephemeral(interaction, text)
    except discord.HTTPException as exc:  # the interaction is gone: nobody to tell
        log.info("could not answer a failed interaction: %s", exc)


class Sam3dTree(app_commands.CommandTree):
    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError, /
    ) -> None:
        await answer_failure(interaction, error)


class AnsweringModal(discord.ui.Modal):
    # discord.py's Modal.on_error takes no item, unlike the view class it derives from.
    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction, error: Exception, /
    ) -> None:
        await answer_failure(interaction, error)


class AnsweringView(discord.ui.View):
    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any], /
    ) -> None:
        await answer_failure(interaction, error)
