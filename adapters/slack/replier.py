"""One job's conversation on Slack.

Progress is one message in the channel (in the source message's thread where there is one),
posted before anything else happens (so a bot that is not in the channel says so before any
work or money), then changed with chat.update at most every few seconds. The result is
uploaded with files_upload_v2 beside it, and the progress message becomes the result's header
with a New seed button; the turntable follows in its thread. Errors go to the user alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.errors import BotError, DeliveryError
from bot.models import FileKind, JobResult, OutputFile, Progress
from bot.replies import SHARED_KINDS, attachment_name, failure_text
from bot.throttle import ProgressThrottle

from .translate import (
    COMMAND,
    progress_blocks,
    progress_text,
    result_blocks,
    result_text,
    shared_at,
)

if TYPE_CHECKING:
    from bot.downloads import DownloadLinks

log = logging.getLogger(__name__)

NOT_IN_CHANNEL = (
    "I am not in this channel, so I cannot post the model here. Add me with "
    "`/invite @sam3d` (or the channel's name > Integrations > Add apps) and "
    "try again; nothing was charged."
)
NOT_IN_DM = (
    "I cannot post in a conversation between people. Use a channel I am in, or "
    "my Messages tab; nothing was charged."
)
CHANNEL_ERRORS = {
    "not_in_channel": NOT_IN_CHANNEL,
    "channel_not_found": NOT_IN_CHANNEL,
    "is_archived": "That channel is archived; nothing was charged.",
    "restricted_action": "This workspace does not let me post there; nothing was charged.",
    "messages_tab_disabled": "I cannot message you directly: this app's Messages tab is "
    "turned off. A workspace admin can turn it on (the app's settings: App Home > Messages "
    "Tab), or ask without private; nothing was charged.",
    **dict.fromkeys(
        ("invalid_auth", "token_revoked", "account_inactive", "not_authed"),
        "This app's access to the workspace was revoked (or it was uninstalled); an admin "
        "must reinstall it. Nothing was charged.",
    ),
}
REMOVED = (
    "The model is ready, but I was removed from the channel before I could post it. "
    "Invite me back with `/invite @sam3d`; an admin can refund the job."
)


def refusal_text(error: str, channel: str) -> str:
    """Why a job could not start where it was asked for, from Slack's error code."""
    if error == "channel_not_found" and channel.startswith("D"):
        return NOT_IN_DM
    return CHANNEL_ERRORS.get(error) or (
        f"Slack would not let me post here ({error}); nothing was charged. Try again in a minute."
    )


def slack_error(exc: SlackApiError) -> str:
    """Slack's error code ("not_in_channel"), or the HTTP status when there was no JSON."""
    data = exc.response.data
    if isinstance(data, dict):
        return str(data.get("error") or "unknown_error")
    return f"HTTP {exc.response.status_code}"


class SlackReplier:
    def __init__(
        self,
        client: AsyncWebClient,
        reply_to: dict[str, Any],
        *,
        interval_s: float = 3.0,
        links: DownloadLinks | None = None,
        progress_client: AsyncWebClient | None = None,
        note_post: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
    ):
        self._client = client
        self._progress_client = progress_client or client  # may drop edits under a limit
        self._reply_to = reply_to
        self._links = links  # the bot's signed links, for "View in 3D"
        self._progress = ProgressThrottle(self._show, interval_s)
        self.answered = False  # delivered or told of a failure
        self._uploaded: list[str] = []  # the ids of the files posted for this job
        self._upload_messages: list[str] = []  # and the messages their uploads made
        self._note_post = note_post  # (job id, where) for forget me to delete it later

    @property
    def reply_to(self) -> dict[str, Any]:
        """Where this job answers: kept with the job, so a restarted bot can answer too."""
        return self._reply_to

    @property
    def _channel(self) -> str:
        return str(self._reply_to["channel_id"])

    @property
    def _user(self) -> str:
        return str(self._reply_to["user_id"])

    @property
    def _thread(self) -> str | None:
        return self._reply_to.get("thread_ts")

    @property
    def _progress_ts(self) -> str | None:
        return self._reply_to.get("progress_ts")

    async def start(self, stage: str = "getting your photo") -> bool:
        """Post the progress message; where the bot may not post, tell the user why (nothing
        has started) and answer False."""
        try:
            posted = await self._client.chat_postMessage(
                channel=self._channel, thread_ts=self._thread, text=progress_text(self._user, stage)
            )
        except SlackApiError as exc:
            await self.tell(refusal_text(slack_error(exc), self._channel))
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("Slack could not be reached to start a job: %r", exc)
            await self.tell(UNREACHABLE)
            return False
        self._reply_to["progress_ts"] = posted["ts"]
        # Posted to a member's id, Slack opens the DM and says which conversation it is.
        self._reply_to["channel_id"] = posted.get("channel") or self._channel
        return True

    async def retitle(self, text: str) -> None:
        """The progress message now says `text` (variations: what came of them)."""
        if self._progress_ts:
            await quietly(
                self._client.chat_update(channel=self._channel, ts=self._progress_ts, text=text)
            )

    async def prepare(self) -> None:
        """Where results go was checked when the job was asked for (permissions, the progress
        message)."""

    # -- progress ------------------------------------------------------------------------------

    async def progress(self, update: Progress) -> None:
        if self._progress_ts:
            await self._progress.update(update)

    async def _show(self, update: Progress) -> None:
        ts = self._progress_ts
        if ts is None:  # withdrawn meanwhile
            return
        text = progress_text(self._user, update.describe())
        try:
            await self._progress_client.chat_update(
                channel=self._channel, ts=ts, text=text, blocks=progress_blocks(text, update)
            )
        except SlackApiError as exc:  # progress is best effort; the result is not
            log.info("progress update failed: %s", slack_error(exc))

    # -- results -------------------------------------------------------------------------------

    async def deliver(self, result: JobResult) -> None:
        await self._progress.close()
        text = result_text(result, self._user, self._links)
        try:
            posted = await self._client.files_upload_v2(
                file_uploads=uploads_of(result),
                channel=self._channel,
                thread_ts=self._thread,
                initial_comment=text,
            )
        except SlackApiError as exc:
            error = slack_error(exc)
            if self._reply_to.get("private"):  # the DM refused it: the member alone, a link
                raise DeliveryError(
                    self._waits_behind_a_link(result, error), charged=True
                ) from None
            text = (
                REMOVED
                if error in ("not_in_channel", "channel_not_found")
                else f"The model is ready but Slack refused the upload ({error})."
            )
            raise DeliveryError(text, charged=True) from None
        self.answered = True
        files = posted.get("files") or []
        self._uploaded = [f["id"] for f in files]
        self._upload_messages = await self._messages_sharing(files)
        await self._show_header(result.job_id)
        await self._noted(result)

    def _waits_behind_a_link(self, result: JobResult, error: str) -> str:
        said = f"Your model is ready, but Slack would not let me post it in our DM ({error})."
        if error == "messages_tab_disabled":
            said = (
                "Your model is ready, but this app's Messages tab was turned off, so I cannot "
                "send it to you directly (an admin can turn it on: App Home > Messages Tab)."
            )
        if self._links is not None and self._links.enabled:
            return f"{said} It waits here: <{self._links.viewer_link(result.job_id)}|View in 3D>"
        return f"{said} `{COMMAND} history` shows it."

    async def _messages_sharing(self, files: list[dict[str, Any]]) -> list[str]:
        """Where the upload shows in the channel, for Delete to take it away. Slack may share
        a file a moment after the upload returns; files.info says where it went."""
        found = shared_at(files, self._channel)
        if not found and files:
            try:
                info = await self._client.files_info(file=files[0]["id"])
                found = shared_at([info.get("file") or {}], self._channel)
            except SlackApiError as exc:
                log.info("could not see where the upload went: %s", slack_error(exc))
        return found

    async def _noted(self, result: JobResult) -> None:
        """What was posted of a job's result (messages and files), unless it was a kept one
        sent again (that post is the asker's, not the job's)."""
        if self._note_post is None or result.cached:
            return
        messages = [ts for ts in [self._progress_ts, *self._upload_messages] if ts]
        where = {"channel": self._channel, "messages": messages, "files": list(self._uploaded)}
        try:
            await self._note_post(result.job_id, where)
        except OSError:  # forget me cannot delete it then; the result is out
            log.warning("could not note where job %s was posted", result.job_id)

    async def _show_header(self, job_id: str) -> None:
        """The progress message, now the result's header with its buttons."""
        if self._progress_ts:
            header = f"✅ <@{self._user}>'s 3D model is ready (job `{job_id}`)."
            await quietly(
                self._client.chat_update(
                    channel=self._channel,
                    ts=self._progress_ts,
                    text=header,
                    blocks=result_blocks(header, job_id, self._uploaded, self._upload_messages),
                )
            )

    async def deliver_more(self, result: JobResult, files: tuple[OutputFile, ...]) -> None:
        """The turntable, as a GIF (Slack animates GIFs, not WebP), in the result's thread."""
        gif = next(
            (f for f in files if f.kind is FileKind.TURNTABLE and f.path.suffix == ".gif"), None
        )
        if gif is None:
            return
        posted = await self._client.files_upload_v2(
            file=str(gif.path),
            filename="turntable.gif",
            title="Turntable",
            channel=self._channel,
            thread_ts=self._thread or self._progress_ts,
        )
        self._uploaded += [f["id"] for f in posted.get("files") or []]
        await self._show_header(result.job_id)  # Delete takes the turntable too
        await self._noted(result)

    async def fail(self, error: BotError, refunded: bool) -> None:
        await self._progress.close()
        self.answered = True
        await self.withdraw()
        await self.tell(failure_text(error, refunded))

    async def withdraw_unless_answered(self) -> None:
        """After the job: a delivery of the same request that another one already has was
        neither delivered nor failed here; its progress message goes."""
        if not self.answered:
            await self.withdraw()

    async def withdraw(self) -> None:
        """Take the progress message away (the job will not deliver here)."""
        if self._progress_ts:
            await quietly(self._client.chat_delete(channel=self._channel, ts=self._progress_ts))
            self._reply_to["progress_ts"] = None

    def _may_use_response_url(self) -> bool:
        """Slack takes 5 posts to a response_url within 30 minutes; the count is kept with
        the job, so a restarted bot keeps to it too."""
        first = self._reply_to.setdefault("response_url_since", time.time())
        uses = int(self._reply_to.get("response_url_uses", 0))
        if uses >= RESPONSE_URL_USES or time.time() - first > RESPONSE_URL_LIFETIME_S:
            log.info("the command's response_url is used up; nothing more can be said there")
            return False
        self._reply_to["response_url_uses"] = uses + 1
        return True

    async def tell(self, text: str) -> None:
        """A message for the user alone: ephemeral in the channel, else through the
        command's response_url (which works where the bot is not a member)."""
        # A private job's DM once Slack opened it (a D id), else where they asked.
        places = [(self._channel, self._thread)]
        if self._reply_to.get("private"):
            asked_in = (str(self._reply_to.get("asked_in") or self._channel), None)
            places = [*places, asked_in] if self._channel.startswith("D") else [asked_in]
        for channel, thread in places:
            try:
                await self._client.chat_postEphemeral(
                    channel=channel, user=self._user, thread_ts=thread, text=text
                )
                return
            except SlackApiError as exc:
                log.info("ephemeral message failed: %s", slack_error(exc))
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("Slack could not be reached to tell the user: %r", exc)
        url = self._reply_to.get("response_url")
        if url and self._may_use_response_url():
            webhook = AsyncWebhookClient(url, session=self._client.session)
            try:
                response = await webhook.send(text=text, response_type="ephemeral")
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("could not reach the user through response_url: %r", exc)
                return
            if response.status_code != 200:
                log.warning(
                    "could not reach the user through response_url (%s)", response.status_code
                )


UNREACHABLE = "Slack could not be reached to start your job; nothing was charged. Try again."
RESPONSE_URL_USES, RESPONSE_URL_LIFETIME_S = 5, 30 * 60  # what Slack allows a response_url


async def quietly(call: Awaitable[Any]) -> None:
    """A call whose failure (a message already gone) changes nothing for the user."""
    try:
        await call
    except SlackApiError as exc:
        log.info("%s", slack_error(exc))


def uploads_of(result: JobResult) -> list[dict[str, str]]:
    """The thumbnail first (Slack shows it), then the model files."""
    uploads = []
    thumbnail = result.file(FileKind.THUMBNAIL)
    if thumbnail is not None:
        uploads.append(
            {"file": str(thumbnail.path), "filename": "thumbnail.png", "title": "Preview"}
        )
    for file in result.files:
        if file.kind in SHARED_KINDS:
            name = attachment_name(file)
            uploads.append({"file": str(file.path), "filename": name, "title": name})
    return uploads
