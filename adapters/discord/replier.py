"""One job's conversation on Discord.

Progress is one message (the interaction's response), edited at most every few seconds while
the 15-minute interaction token lives. The result is posted by the bot itself in the channel,
mentioning the user, so a job of any length can deliver. Where the bot may not post there (a
user-installed app, missing permissions) it uses the token while it lives, and says so
otherwise. Errors go to the user alone (ephemeral) while the token lives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import BotError, DeliveryError
from bot.models import FileKind, JobResult, OutputFile, Progress
from bot.replies import failure_text
from bot.throttle import ProgressThrottle

from .translate import (
    NO_PINGS,
    UploadRoom,
    fit,
    pages,
    result_message,
    token_alive,
)

if TYPE_CHECKING:
    from bot.conversions import Conversions
    from bot.downloads import DownloadLinks

log = logging.getLogger(__name__)
Sent = tuple[discord.Message, list[str]]  # the result's message, and the text pages after it
Numbered = tuple[int | None, JobResult]  # a variation's number (from 1), None for a lone result


@dataclass
class Outgoing:
    embeds: list[discord.Embed]
    files: list[discord.File]
    view: discord.ui.View


DEFAULT_UPLOAD_LIMIT = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
DMS_CLOSED_CODE = 50007  # "Cannot send messages to this user" (topics/opcodes-and-status-codes)
DMS_CLOSED = (
    "I could not send this to your DMs: they are closed to me. To get results there, open "
    "the server's menu > Privacy Settings and turn on Direct Messages (or allow DMs from "
    "apps). Here it is, to you alone:"
)
DMS_CLOSED_LATE = (
    "Your model is ready, but your DMs are closed to me and the command has expired. It is "
    "kept: /sam3d-history shows it, and asking again sends it free."
)


class DiscordReplier:
    def __init__(
        self,
        client: discord.Client,
        reply_to: dict[str, Any],
        interaction: discord.Interaction | None = None,
        *,
        interval_s: float = 3.0,
        view_for: Callable[[str], discord.ui.View] | None = None,
        links: DownloadLinks | None = None,
        conversions: Conversions | None = None,
        cancel_view: Callable[[str, str], discord.ui.View] | None = None,
        group_view_for: Callable[[list[str]], discord.ui.View] | None = None,
        note_post: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
    ):
        self._client = client
        self._reply_to = reply_to
        self._view_for = view_for  # job id -> the result's buttons
        self._links = links  # the bot's signed download links, for files too big to attach
        self._conversions = conversions  # for a thinned splat where the splat is too big
        self._cancel_view = cancel_view  # (job id, label) -> the progress's Cancel
        self._group_view_for = group_view_for  # variations' job ids -> their buttons
        self._note_post = note_post  # (job id, where) for forget me to delete it later
        self._progress = ProgressThrottle(self._edit, interval_s)
        self.result_message: discord.Message | None = None
        self._sent_limit = 0  # the upload limit of the way the result went
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

    async def _edit_original(self, content: str, view: discord.ui.View | None = None) -> None:
        # "@original" is Discord's route for the interaction's first response; discord.py
        # types message ids as int only. No view: the progress's Cancel goes.
        await self._webhook.edit_message(
            "@original",  # type: ignore[call-overload]
            content=content,
            view=view,
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
            view = None
            if update.cancel_label and update.job_id and self._cancel_view is not None:
                view = self._cancel_view(update.job_id, update.cancel_label)
            await self._edit_original(f"⏳ {update.describe()}…", view)
        except discord.HTTPException as exc:  # progress is best effort; the result is not
            log.info("progress edit failed: %s", exc)

    async def _finish_progress(self) -> None:
        await self._progress.close()

    # -- results -------------------------------------------------------------------------------

    async def deliver(self, result: JobResult) -> None:
        await self._deliver([(None, result)], [])

    async def deliver_together(
        self, results: list[tuple[int, JobResult]], notes: list[str]
    ) -> None:
        """Variations in one message: an embed each (numbered from 1), their files within
        Discord's 10, and a row of buttons each; `notes` say what failed."""
        await self._deliver([(index + 1, result) for index, result in results], notes)

    async def _deliver(self, results: list[Numbered], notes: list[str]) -> None:
        await self._finish_progress()
        if self._reply_to.get("private"):
            await self._deliver_privately(results, notes)
            return
        if self._reply_to.get("post_in_channel", True):
            limit = self._reply_to.get("channel_upload_limit", DEFAULT_UPLOAD_LIMIT)
            try:
                message, more = await self._within(limit, partial(self._post, results, notes, None))
            except discord.HTTPException as exc:
                if not (self._token_usable() and posts_elsewhere(exc)):
                    raise DeliveryError(_cannot_post(exc)) from None
                log.info("could not post in the channel (%s); answering through the token", exc)
            else:
                await self._sent(results, message, more, limit, self._channel().send)
                await self._say_progress(f"✅ Done: {message.jump_url}")
                return
        if not self._token_usable():
            raise DeliveryError(
                "The model is ready, but I may not post in that channel and the command has "
                "expired; ask an admin to let me send messages and files there."
            )
        await self._answer_through_token(results, notes)

    async def _answer_through_token(
        self, results: list[Numbered], notes: list[str], ephemeral: bool = False
    ) -> None:
        """The result through the interaction's token (its pages as follow-ups)."""
        limit = self._reply_to.get("token_upload_limit", DEFAULT_UPLOAD_LIMIT)
        try:
            message, more = await self._within(limit, partial(self._through_token, results, notes))
        except discord.HTTPException as exc:
            raise DeliveryError(_cannot_post(exc)) from None
        send = partial(self._webhook.send, wait=True, ephemeral=ephemeral)
        await self._sent(results, message, more, limit, send)

    async def _sent(
        self,
        results: list[Numbered],
        message: discord.Message,
        more: list[str],
        limit: int,
        send_page: Callable[..., Awaitable[discord.Message]],
    ) -> None:
        """The result's message is out: the text pages after it, and where it went noted."""
        self.result_message, self._sent_limit = message, limit
        sent = [message]
        for page in more:
            sent.append(await send_page(page, allowed_mentions=NO_PINGS))
        await self._noted(results, sent)

    async def _noted(self, results: list[Numbered], messages: list[discord.Message]) -> None:
        """Where each job's result went (the same message for variations), unless it was a
        kept result sent again (that post is the asker's, not the job's)."""
        if self._note_post is None:
            return
        for _, result in results:
            if result.cached:
                continue
            for message in messages:
                if message.flags.ephemeral:  # the member's alone, and gone with their client
                    continue
                where = {"channel_id": str(message.channel.id), "message_id": str(message.id)}
                try:
                    await self._note_post(result.job_id, where)
                except OSError:  # forget me cannot delete it then; the result is out
                    log.warning("could not note where job %s was posted", result.job_id)

    async def _deliver_privately(self, results: list[Numbered], notes: list[str]) -> None:
        """To the member's DMs; where those are closed to the bot, to the member alone where
        they asked (through the token), with how to open them; never in the channel."""
        try:
            dm = await self._client.create_dm(self._user)
            message, more = await self._within(
                DEFAULT_UPLOAD_LIMIT, partial(self._post, results, notes, dm)
            )
        except discord.HTTPException as exc:
            if exc.code != DMS_CLOSED_CODE:
                raise DeliveryError(_cannot_post(exc)) from None
            if not self._token_usable():
                raise DeliveryError(DMS_CLOSED_LATE, charged=True) from None
            log.info("the member's DMs are closed to the bot; answering through the token")
            await self._answer_through_token(results, [DMS_CLOSED, *notes], ephemeral=True)
            return
        await self._sent(results, message, more, DEFAULT_UPLOAD_LIMIT, dm.send)
        await self._say_progress(f"✅ Sent to your DMs: {message.jump_url}")

    async def _within(self, limit: int, send: Callable[[int], Awaitable[Sent]]) -> Sent:
        """`send` with the files within the upload limit of the way the result goes; over it
        after all (413), again with the files as links."""
        for size_limit in (limit, 0):
            try:
                return await send(size_limit)
            except discord.HTTPException as exc:
                if exc.status != 413 or size_limit == 0:
                    raise
        raise AssertionError("unreachable")

    async def _result(
        self, results: list[Numbered], notes: list[str], size_limit: int
    ) -> tuple[list[str], Outgoing]:
        """The result's text as messages (link lines that do not fit in the first get their
        own), its embeds, files and buttons. Files are new each time: a request uses them
        up."""
        room = UploadRoom()
        embeds, files, lines = [], [], []
        for number, result in results:
            if self._conversions is not None:  # a splat over the limit: a thinned one that fits
                result = await self._conversions.with_light_splat(result, size_limit)
            made = result_message(result, size_limit, self._links, number, room)
            embeds.append(made.embed)
            files += made.files
            lines += made.links
        if len(results) == 1 and results[0][0] is None:
            view = self._view(results[0][1].job_id)
        elif self._group_view_for is not None:
            view = self._group_view_for([result.job_id for _, result in results])
        else:
            view = discord.utils.MISSING
        text = "\n".join([f"<@{self._reply_to['user_id']}>", *notes, *lines])
        return pages(text), Outgoing(embeds, files, view)

    def _view(self, job_id: str) -> discord.ui.View:
        return self._view_for(job_id) if self._view_for else discord.utils.MISSING

    @property
    def _mentions(self) -> discord.AllowedMentions:
        return discord.AllowedMentions(everyone=False, roles=False, users=[self._user])

    async def _post(
        self,
        results: list[Numbered],
        notes: list[str],
        where: discord.abc.Messageable | None,
        size_limit: int,
    ) -> Sent:
        """The bot's own post in the channel (or `where`: the member's DMs)."""
        (first, *more), out = await self._result(results, notes, size_limit)
        message = await (where or self._channel()).send(
            first,
            embeds=out.embeds,
            files=out.files,
            view=out.view,
            allowed_mentions=self._mentions,
        )
        return message, more

    async def _through_token(
        self, results: list[Numbered], notes: list[str], size_limit: int
    ) -> Sent:
        """The result in place of the "thinking" message (one message, which a follow-up
        would only replace), or as a follow-up where that message is gone."""
        (first, *more), out = await self._result(results, notes, size_limit)
        try:
            edited: discord.Message = await self._webhook.edit_message(
                "@original",  # type: ignore[call-overload]
                content=first,
                embeds=out.embeds,
                attachments=out.files,
                view=out.view,
                allowed_mentions=self._mentions,
            )
        except discord.NotFound:  # the thinking message was dismissed
            (first, *more), out = await self._result(results, notes, size_limit)
            edited = await self._webhook.send(
                first,
                embeds=out.embeds,
                files=out.files,
                view=out.view,
                wait=True,
                allowed_mentions=self._mentions,
            )
        return edited, more

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
                and f.size <= self._sent_limit
            ),
            None,
        )
        if message is None or gif is None or not message.embeds:
            return
        embed = message.embeds[0]
        # The turntable takes the picture's place; the still moves to the corner, so it stays
        # in the embed instead of showing as a loose attachment under it.
        if any(a.filename == "thumbnail.png" for a in message.attachments):
            embed.set_thumbnail(url="attachment://thumbnail.png")
        embed.set_image(url="attachment://turntable.gif")
        await message.edit(
            embed=embed, attachments=[*message.attachments, discord.File(gif.path, "turntable.gif")]
        )

    async def fail(self, error: BotError, refunded: bool) -> None:
        await self.conclude(failure_text(error, refunded))

    async def conclude(self, text: str) -> None:
        """The last word, to the member alone: the progress ends with it."""
        await self._finish_progress()
        await self.tell(text)

    async def say(self, text: str) -> None:
        """The progress message says `text` now (variations' price, before they start)."""
        await self._say_progress(text)

    async def tell(self, text: str) -> None:
        """Something for the member alone: the "thinking" message gives way to an ephemeral
        follow-up while the token lives; after that, a line in the channel that names them."""
        text = fit(text)
        if self._token_usable():
            try:
                await self._webhook.delete_message("@original")  # type: ignore[arg-type]
            except discord.HTTPException:
                pass  # already gone, or never shown
            try:
                await self._webhook.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
                return
            except discord.HTTPException as exc:  # the token died early (50027)
                log.info("could not answer through the token: %s", exc)
        if self._reply_to.get("private"):  # never in the channel: to their DMs, if open
            try:
                dm = await self._client.create_dm(self._user)
                await dm.send(text, allowed_mentions=NO_PINGS)
            except discord.HTTPException as exc:
                log.info("could not tell the member in their DMs either: %s", exc)
            return
        if not self._reply_to.get("post_in_channel", True):
            log.warning("nobody to tell: the token is gone and the bot may not post there")
            return
        await self._channel().send(
            fit(f"<@{self._reply_to['user_id']}> {text}"), allowed_mentions=self._mentions
        )


def posts_elsewhere(error: discord.HTTPException) -> bool:
    """A channel post Discord refused for a reason the interaction's token gets around: no
    access or permission there (50001, 50013), the channel gone (10003), a forum (40058), a
    channel without text (50008), an archived or locked thread (50083, 160005)."""
    return error.code in (50001, 50013, 10003, 40058, 50008, 50083, 160005)


def _cannot_post(error: discord.HTTPException) -> str:
    return (
        "The model is ready, but Discord would not let me post it here "
        f"({error.status}, {error.code or error.text[:80]}); ask again to get it, free."
    )


def resumed_followup(client: discord.Client, reply_to: dict[str, Any]) -> discord.Webhook | None:
    """The webhook of the interaction a job came from, from what was kept with the job."""
    if not (reply_to.get("token") and reply_to.get("application_id")):
        return None
    return discord.Webhook.partial(
        int(reply_to["application_id"]), reply_to["token"], client=client
    )
