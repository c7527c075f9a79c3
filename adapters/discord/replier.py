"""One job's conversation on Discord.

Progress is one message (the interaction's response), edited at most every few seconds while
the 15-minute interaction token lives. The result is posted by the bot itself in the channel,
mentioning the user, so a job of any length can deliver. Where the bot may not post there (a
user-installed app, missing permissions) it uses the token while it lives, and says so
otherwise. Errors go to the user alone (ephemeral) while the token lives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import BotError, DeliveryError
from bot.models import FileKind, JobResult, OutputFile, Progress
from bot.replies import failure_text
from bot.throttle import ProgressThrottle

from .translate import NO_PINGS, result_message, token_alive

if TYPE_CHECKING:
    from bot.downloads import DownloadLinks

log = logging.getLogger(__name__)


class DiscordReplier:
    def __init__(
        self,
        client: discord.Client,
        reply_to: dict[str, Any],
        interaction: discord.Interaction | None = None,
        *,
        interval_s: float = 3.0,
        size_limit: int = 10 * 1024 * 1024,
        view_for: Callable[[str], discord.ui.View] | None = None,
        links: DownloadLinks | None = None,
    ):
        self._client = client
        self._reply_to = reply_to
        self._size_limit = size_limit
        self._view_for = view_for  # job id -> the result's buttons
        self._links = links  # the bot's signed download links, for files too big to attach
        self._progress = ProgressThrottle(self._edit, interval_s)
        self.result_message: discord.Message | None = None
        # The interaction's webhook: after a restart it is rebuilt from the token kept with
        # the job, so a job carried on still edits its "thinking" message while it lives.
        self._followup = (
            interaction.followup if interaction is not None else resumed_followup(client, reply_to)
        )

    @property
    def reply_to(self) -> dict[str, Any]:
        """Where this job answers: kept with the job, so a restarted bot can answer too."""
        return self._reply_to

    @property
    def _user(self) -> discord.Object:
        return discord.Object(int(self._reply_to["user_id"]))

    def _channel(self) -> discord.PartialMessageable:
        guild_id = self._reply_to.get("guild_id")
        return self._client.get_partial_messageable(
            int(self._reply_to["channel_id"]), guild_id=int(guild_id) if guild_id else None
        )

    def _token_usable(self) -> bool:
        return self._followup is not None and token_alive(self._reply_to)

    @property
    def _webhook(self) -> discord.Webhook:
        assert self._followup is not None, "only while the token is usable"
        return self._followup

    async def _edit_original(self, content: str) -> None:
        # "@original" is Discord's route for the interaction's first response; discord.py
        # types message ids as int only.
        await self._webhook.edit_message(
            "@original",  # type: ignore[call-overload]
            content=content,
            allowed_mentions=NO_PINGS,
        )

    async def prepare(self) -> None:
        """Where results go was checked when the job was asked for (permissions, the progress
        message)."""

    # -- progress ------------------------------------------------------------------------------

    async def progress(self, update: Progress) -> None:
        if self._token_usable():
            await self._progress.update(update)

    async def _edit(self, update: Progress) -> None:
        try:
            await self._edit_original(f"⏳ {update.describe()}…")
        except discord.HTTPException as exc:  # progress is best effort; the result is not
            log.info("progress edit failed: %s", exc)

    async def _finish_progress(self) -> None:
        await self._progress.close()

    # -- results -------------------------------------------------------------------------------

    async def deliver(self, result: JobResult) -> None:
        await self._finish_progress()
        made = result_message(result, self._size_limit, self._links)
        content = f"<@{self._reply_to['user_id']}>"
        if made.links:
            content += "\n" + "\n".join(made.links)
        view = self._view_for(result.job_id) if self._view_for else discord.utils.MISSING
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[self._user])
        try:
            self.result_message = await self._channel().send(
                content, embed=made.embed, files=made.files, view=view, allowed_mentions=mentions
            )
        except discord.Forbidden:
            if not self._token_usable():
                raise DeliveryError(
                    "The model is ready, but I may not post in that channel and the command "
                    "has expired; ask an admin to let me send messages and files there."
                ) from None
            # A user-installed app, or no right to post: answer through the interaction
            # (with new file objects: the refused request used up the first ones).
            made = result_message(result, self._size_limit, self._links)
            self.result_message = await self._webhook.send(
                content,
                embed=made.embed,
                files=made.files,
                view=view,
                wait=True,
                allowed_mentions=mentions,
            )
            await self._say_progress("✅ Done.")
            return
        await self._say_progress(f"✅ Done: {self.result_message.jump_url}")

    async def _say_progress(self, text: str) -> None:
        if self._token_usable():
            try:
                await self._edit_original(text)
            except discord.HTTPException as exc:
                log.info("progress edit failed: %s", exc)

    async def deliver_more(self, result: JobResult, files: tuple[OutputFile, ...]) -> None:
        """The turntable, added to the result message as an animated GIF."""
        message = self.result_message
        gif = next(
            (
                f
                for f in files
                if f.kind is FileKind.TURNTABLE
                and f.path.suffix == ".gif"
                and f.size <= self._size_limit
            ),
            None,
        )
        if message is None or gif is None or not message.embeds:
            return
        embed = message.embeds[0]
        embed.set_image(url="attachment://turntable.gif")
        await message.edit(
            embed=embed, attachments=[*message.attachments, discord.File(gif.path, "turntable.gif")]
        )

    async def fail(self, error: BotError, refunded: bool) -> None:
        await self._finish_progress()
        text = failure_text(error, refunded)
        if self._token_usable():
            try:
                await self._webhook.delete_message("@original")  # type: ignore[arg-type]
            except discord.HTTPException:
                pass  # already gone, or never shown
            await self._webhook.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
            return
        await self._channel().send(
            f"<@{self._reply_to['user_id']}> {text}",
            allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=[self._user]
            ),
        )


def resumed_followup(client: discord.Client, reply_to: dict[str, Any]) -> discord.Webhook | None:
    """The webhook of the interaction a job came from, from what was kept with the job."""
    if not (reply_to.get("token") and reply_to.get("application_id")):
        return None
    return discord.Webhook.partial(
        int(reply_to["application_id"]), reply_to["token"], client=client
    )
