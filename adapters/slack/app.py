"""The Slack bot: its Web API clients, the jobs it runs (`run_job`), Slack's files, and the
words of `/sam3d admin`. Its listeners, in Bolt's own shape, are in listeners.py; every
request is acknowledged at once and jobs report through a SlackReplier.

Slack re-delivers what it thinks was lost (events with X-Slack-Retry-Num, a double click on
Submit, a repeated shortcut): each delivery's key is remembered here (`first_delivery`) and
passed to the ledger, so a delivery starts at most one job and one charge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversions import choice_of
from bot.errors import AdapterFailed, BotError, InputError, ServiceStopping
from bot.models import ImageSource, JobEdits, JobRequest, Requester
from bot.operations import (
    Operations,
    Where,
)
from bot.outages import until_reachable
from bot.ports import JobRecord
from bot.replies import RESTARTING, UNREADABLE
from bot.variations import Plan

if TYPE_CHECKING:
    from bot.app import Core
    from bot.picker import Pick

from .files import SlackFiles
from .picking import run_picked
from .replier import SlackReplier, slack_error
from .translate import (
    ADMIN_HELP,
    PLATFORM,
    JobArgs,
    Place,
    channel_id_in,
    image_files,
    job_modal,
    requester,
    user_id_in,
)

log = logging.getLogger(__name__)

SEEN_MAX = 10_000  # delivery keys remembered (a retry comes within minutes)
ADMIN_CACHE_S = 300.0


class SlackBot:
    def __init__(
        self,
        core: Core,
        client: AsyncWebClient,
        *,
        socket_mode: bool,
        progress_client: AsyncWebClient | None = None,
    ):
        self.core = core
        self.settings = core.settings
        self.client = client
        self.progress_client = progress_client or client
        self.operations = Operations(core.ledger)
        self.files = SlackFiles(
            core.api_session,
            client.token or "",
            self.settings.slack_api_url,
            self.settings.max_image_bytes,
            self.settings.image_fetch_timeout_s,
            foreign_session=core.fetch_session,
        )
        self.bot_user_id: str | None = None
        self.connected = False
        # Set when Slack says the app was uninstalled or its token revoked: the adapter stops
        # the bot with the reason, as a token refused at start does.
        self.revoked = asyncio.Event()
        self.revoked_because = ""
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._making: set[str] = set()  # the same request, while its job runs
        self._admins: dict[tuple[str, str], tuple[bool, float]] = {}
        self._identity: AuthorizeResult | None = None
        self._identity_lock = asyncio.Lock()

        async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            return await self.identity()  # one workspace, one bot: the same for every request

        self.app = AsyncApp(
            client=client,
            authorize=authorize,
            signing_secret=self.settings.slack_signing_secret.get_secret_value() or None,
            request_verification_enabled=not socket_mode,
            logger=logging.getLogger("slack_bolt"),
        )
        from .listeners import register  # they need this class: imported once it exists

        register(self)

    async def start(self) -> None:
        """Check the token, learn the bot's own id, and take over jobs a stopped bot left."""
        try:
            identity = await until_reachable("Slack", self.identity, slack_outage)
        except SlackApiError as exc:
            raise AdapterFailed(
                f"Slack refused SLACK_BOT_TOKEN ({slack_error(exc)}): copy the "
                "Bot User OAuth Token from OAuth & Permissions"
            ) from None
        self.bot_user_id = identity.bot_user_id
        self.connected = True
        log.info("Slack: signed in as %s in %s", identity.bot_user_id, identity.team_id)
        self.core.service.keep_recovering(self.replier_for_record, {PLATFORM})
        if self.core.picker is not None:  # Make it on the web page starts the job here

            async def start_picked(pick: Pick, request: JobRequest) -> None:
                self.background(run_picked(self, pick, request))

            self.core.picker.starts_jobs_for(PLATFORM, start_picked)

    async def identity(self) -> AuthorizeResult:
        """Who the bot is, for Bolt and for us: one auth.test, however many requests arrive
        at once on a cold start (Bolt's own would ask once per request until it knows)."""
        async with self._identity_lock:
            if self._identity is None:
                self._identity = AuthorizeResult.from_auth_test_response(
                    bot_token=self.client.token, auth_test_response=await self.client.auth_test()
                )
        return self._identity

    def lost_access(self, reason: str) -> None:
        log.error("Slack: %s; stopping. Reinstall the app and set its new SLACK_BOT_TOKEN.", reason)
        self.revoked_because = reason
        self.connected = False
        self.revoked.set()

    async def handle_http(self, request: web.Request) -> web.Response:
        """HTTP mode: Slack's requests arrive at /slack/events on the bot's web server."""
        try:
            bolt_request = await to_bolt_request(request)
        except (ValueError, TypeError, AttributeError):
            # Not the JSON or form object Slack sends (bad JSON or UTF-8, a list): Bolt's parser
            # trips on it before any signature check. No request of Slack's: 400, not 500.
            return web.Response(status=400, text="malformed request")
        response = await self.app.async_dispatch(bolt_request)
        return await to_aiohttp_response(response)

    # -- bookkeeping -----------------------------------------------------------------------

    def first_delivery(self, key: str) -> bool:
        """False if this delivery key was seen already (a retry or a double click)."""
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    def background(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        return self.core.runner.start(work, "slack job")

    async def is_admin(self, team_id: str | None, user_id: str) -> bool:
        """Workspace admins and owners, or SLACK_ADMIN_USERS; asked of Slack every few
        minutes at most."""
        if user_id in self.settings.slack_admins:
            return True
        known = self._admins.get((team_id or "", user_id))
        if known and known[1] > time.monotonic():
            return known[0]
        try:
            user = (await self.client.users_info(user=user_id))["user"]
        except SlackApiError as exc:
            log.info("users.info failed: %s", slack_error(exc))
            return False
        admin = bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))
        self._admins[(team_id or "", user_id)] = (admin, time.monotonic() + ADMIN_CACHE_S)
        return admin

    async def requester_of(self, team_id: str | None, user_id: str, name: str = "") -> Requester:
        return requester(user_id, team_id, name, await self.is_admin(team_id, user_id))

    def replier(self, reply_to: dict[str, Any]) -> SlackReplier:
        return SlackReplier(
            self.client,
            reply_to,
            interval_s=self.settings.progress_edit_interval_s,
            links=self.core.links,
            progress_client=self.progress_client,
            note_post=self.core.results.note_post,
        )

    def replier_for_record(self, record: JobRecord) -> SlackReplier | None:
        if "channel_id" not in record.reply_to:
            return None
        return self.replier(dict(record.reply_to))

    async def delete_post(self, where: dict[str, Any]) -> bool:
        """Forget me: one result's messages and files, deleted (True: all gone)."""
        channel = str(where.get("channel"))
        calls: list[Callable[[], Awaitable[Any]]] = [
            *(partial(self.client.files_delete, file=str(f)) for f in where.get("files") or []),
            *(
                partial(self.client.chat_delete, channel=channel, ts=str(ts))
                for ts in where.get("messages") or []
            ),
        ]
        gone = True
        for call in calls:  # each made when its turn comes: one failing leaves none unawaited
            try:
                await call()
            except SlackApiError as exc:
                if slack_error(exc) not in ("file_not_found", "file_deleted", "message_not_found"):
                    log.info("could not delete a forgotten result: %s", slack_error(exc))
                    gone = False
        return gone

    async def file_info(self, file_id: str) -> dict[str, Any]:
        try:
            info = (await self.client.files_info(file=file_id)).get("file")
        except SlackApiError as exc:
            raise InputError(
                "image", f"Slack would not show me that file ({slack_error(exc)})"
            ) from None
        if not isinstance(info, dict):
            raise InputError("image", "Slack answered without the file's details")
        return info

    async def thread_files(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The files of the message that starts a thread."""
        try:
            replies = await self.client.conversations_replies(
                channel=channel, ts=thread_ts, limit=1, inclusive=True
            )
        except SlackApiError as exc:
            if slack_error(exc) == "missing_scope":
                data = exc.response.data if isinstance(exc.response.data, dict) else {}
                needed = str(data.get("needed") or "channels:history")[:60]
                raise InputError(
                    "image",
                    f"I may not read this thread (the app lacks the {needed} scope): mention "
                    "me in the message with the photo, or use ⋯ > Make 3D model on it",
                ) from None
            raise InputError(
                "image", f"Slack would not show me this thread ({slack_error(exc)})"
            ) from None
        messages = replies.get("messages") or []
        return messages[0].get("files") or [] if messages else []

    # -- a job ---------------------------------------------------------------------------------

    async def run_job(
        self,
        who: Requester,
        place: Place,
        args: JobArgs,
        photo: Callable[[], Awaitable[ImageSource]],
        mask: Callable[[], Awaitable[ImageSource]] | None,
        key: str,
        same_as: str | None = None,
    ) -> None:
        """Post the progress message, fetch the photo and run the job; every refusal goes to
        the user alone, and nothing is charged unless Segmind ran. `same_as` names the
        request itself (user, photo, settings): while it runs, asking again starts nothing."""
        replier = self.replier(place.reply_to(who.user_id, who.guild_id))
        if same_as in self._making:
            await replier.tell("That model is already on its way; it will appear here.")
            return
        if same_as is not None:
            self._making.add(same_as)
        try:
            try:
                refusal = await self.operations.refusal_here(
                    Where(PLATFORM, who.guild_id), [place.channel_id]
                )
            except BotError as error:  # the ledger would not answer: say so, start nothing
                await replier.tell(error.user_message)
                return
            if refusal is not None:
                await replier.tell(refusal)
                return
            try:
                private = await self.operations.delivers_privately(
                    Where(PLATFORM, who.guild_id), args.private
                )
            except BotError as error:
                await replier.tell(error.user_message)
                return
            if private:  # the whole conversation in their DM with the bot
                replier = self.replier(
                    {
                        **place.privately(who.user_id).reply_to(who.user_id, who.guild_id),
                        "private": True,
                        "asked_in": place.channel_id,
                    }
                )
            plan = None
            if args.variations > 1:  # their price said before anything starts
                try:
                    plan = await self.core.service.plan_variations(who, args.variations, args.seed)
                except BotError as error:
                    await replier.tell(error.user_message)
                    return
            stage = "getting your photo" if plan is None else f"{plan.describe()} In this thread"
            if not await replier.start(stage):
                return
            try:
                image = await photo()
                mask_image = await mask() if mask else None
            except BotError as error:
                await replier.fail(error, refunded=False)
                return
            except asyncio.CancelledError:  # the bot stops before the job exists
                await asyncio.shield(replier.fail(ServiceStopping(RESTARTING), refunded=False))
                raise
            except Exception:  # never leave the member with "getting your photo" for good
                log.exception("a Slack photo could not be fetched")
                await replier.fail(InputError("image", UNREADABLE), refunded=False)
                return
            request = JobRequest(
                requester=who,
                image=image,
                prompt=args.prompt,
                bbox=args.bbox,
                points=args.points,
                mask=mask_image,
                seed=args.seed,
                reply_to=replier.reply_to,
            )
            if plan is None:
                await self.core.service.run(request, replier, idempotency_key=f"slack:{key}")
                await replier.withdraw_unless_answered()
            else:
                await self.run_variations(who, place, replier, request, plan, key)
        finally:
            self._making.discard(same_as)

    async def run_variations(
        self,
        who: Requester,
        place: Place,
        parent: SlackReplier,
        request: JobRequest,
        plan: Plan,
        key: str,
    ) -> None:
        """The variations in one thread (the parent message's, or the one asked in): each
        its own progress message, which becomes its result."""
        thread = parent.reply_to.get("thread_ts") or parent.reply_to.get("progress_ts")
        here = Place(parent.reply_to["channel_id"], thread, place.response_url)
        private = {k: parent.reply_to[k] for k in ("private", "asked_in") if k in parent.reply_to}
        repliers = [
            self.replier({**here.reply_to(who.user_id, who.guild_id), **private})
            for _ in plan.seeds
        ]
        for number, each in enumerate(repliers, start=1):
            await each.start(f"variation {number}, seed {plan.seeds[number - 1]}")
        results = await self.core.service.run_variations(
            request,
            plan.seeds,
            repliers,
            idempotency_key=f"slack:{key}",
            reply_tos=[each.reply_to for each in repliers],
        )
        for each in repliers:
            await each.withdraw_unless_answered()
        made = sum(result is not None for result in results)
        await parent.retitle(
            f"<@{who.user_id}>'s {len(plan.seeds)} variations: {made} made, in this thread."
        )

    async def send_format(self, user_id: str, place: Place, job_id: str, key: str) -> None:
        conversions = self.core.conversions
        assert conversions is not None
        replier = self.replier(place.reply_to(user_id, None))
        try:
            choice = choice_of(key)
            file, _ = await conversions.file_for(job_id, key)
            await self.client.files_upload_v2(
                channel=place.channel_id,
                thread_ts=place.thread_ts,
                file=str(file.path),
                filename=choice.file_name,
                title=choice.label,
                initial_comment=f"<@{user_id}> your model as {choice.phrase}.",
            )
        except BotError as error:
            await replier.tell(error.user_message)
        except SlackApiError as exc:
            await replier.tell(f"Slack would not take the file ({slack_error(exc)}).")

    def slack_file(
        self, file: dict[str, Any] | None, file_id: str | None = None, field: str = "image"
    ) -> Callable[[], Awaitable[ImageSource]]:
        """A Slack file to fetch when the job starts (looked up first when only its id, or
        a partial object, is known)."""

        async def fetch() -> ImageSource:
            known = file
            if known is None or not (known.get("url_private") or known.get("url_private_download")):
                known = await self.file_info(file_id or (known or {})["id"])
            if known.get("mode") == "hidden_by_limit":
                raise InputError(field, HIDDEN_BY_LIMIT)
            if not image_files([known]) or known.get("file_access") == "check_file_info":
                raise InputError(
                    field, f"{known.get('name') or 'that file'} is not a PNG, JPEG or WebP photo"
                )
            return ImageSource.from_bytes(
                await self.files.download(known, field), known.get("name") or "photo"
            )

        return fetch


def slack_outage(exc: BaseException) -> bool:
    """Slack unreachable or failing on its side (5xx, ratelimited): worth waiting out at
    start. A refused token is not."""
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return True
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        return status >= 500 or status == 429 or slack_error(exc) in SLACK_TROUBLE
    return False


SLACK_TROUBLE = ("ratelimited", "fatal_error", "internal_error", "service_unavailable")

HIDDEN_BY_LIMIT = (
    "Slack hides that photo from apps: it is older than this workspace's plan lets anyone "
    "see. Upload it again and ask me then."
)


def link(url: str) -> Callable[[], Awaitable[ImageSource]]:
    async def fetch() -> ImageSource:
        return ImageSource.from_url(url)

    return fetch


# -- what the listeners (listeners.py) share ----------------------------------------------


async def open_form(
    bot: SlackBot,
    trigger_id: str,
    metadata: dict[str, Any],
    images: list[dict[str, Any]] | None = None,
    edits: JobEdits | None = None,
) -> str | None:
    """Open the form; what to tell the member when Slack would not (None: it opened).
    Through the client that does not wait out rate limits: the trigger lives 3 s."""
    try:
        await bot.progress_client.views_open(
            trigger_id=trigger_id, view=job_modal(metadata, images, edits)
        )
    except SlackApiError as exc:
        error = slack_error(exc)
        log.warning("views.open failed: %s", error)
        return FORM_PROBLEMS.get(error, f"Slack would not open the form ({error}); try again.")
    return None


FORM_PROBLEMS = {
    "expired_trigger_id": "Slack gave me too little time to open the form; try again.",
    "exchanged_trigger_id": "That form was already opened once; try again.",
    "ratelimited": "Slack is busy right now and would not open the form; try again shortly.",
}


async def again(
    bot: SlackBot,
    who: Requester,
    place: Place,
    job_id: str,
    key: str,
    edits: JobEdits | None = None,
) -> None:
    """New seed (no `edits`) or Edit: the job's kept photo again, as a new job under the
    quota."""
    replier = bot.replier(place.reply_to(who.user_id, who.guild_id))
    stage = "starting again with a new seed" if edits is None else "starting again as edited"
    if not await replier.start(stage):
        return
    await bot.core.service.again(
        job_id, who, replier, reply_to=replier.reply_to, idempotency_key=f"slack:{key}", edits=edits
    )
    await replier.withdraw_unless_answered()


async def open_edit_form(bot: SlackBot, trigger_id: str, job_id: str, place: Place) -> str | None:
    """Edit on a result: the form with its settings filled in; what to tell the member when
    it cannot open (None: it opened)."""
    try:
        edits = await bot.core.service.editable(job_id)
    except BotError as error:
        return error.user_message
    metadata = {
        "channel_id": place.channel_id,
        "thread_ts": place.thread_ts,
        "response_url": place.response_url,
        "from_job": job_id,
    }
    return await open_form(bot, trigger_id, metadata, edits=edits)


# -- /sam3d admin ----------------------------------------------------------------------------


async def admin(bot: SlackBot, team_id: str | None, user_id: str, words: list[str]) -> str:
    """`/sam3d admin ...`, for an admin (listeners.py's middleware let only admins in)."""
    if not words or words[0].lower() == "help":
        return ADMIN_HELP
    verb, rest = words[0].lower(), words[1:]
    where, actor = Where(PLATFORM, team_id), f"{PLATFORM}:{user_id}"
    ops = bot.operations
    try:
        if verb == "usage":
            return await ops.usage_report(where, rest[0] if rest else None)
        if verb == "quota":
            return await set_quota(ops, actor, where, rest)
        if verb == "budget":
            return await ops.set_budget(actor, where, rest[0] if rest else None)
        if verb in ("block", "unblock"):
            target = user_id_in(rest[0]) if rest else None
            if target is None:
                raise InputError("user", f"name the user: `{verb} @someone`")
            if verb == "block":
                return await ops.block(actor, where, target, " ".join(rest[1:]))
            return await ops.unblock(actor, where, target)
        if verb == "pause":
            return await ops.pause(actor, where, " ".join(rest))
        if verb == "resume":
            return await ops.resume(actor, where)
        if verb == "refund":
            if not rest:
                raise InputError("job", "give the job id, as shown on the result")
            return await ops.refund(actor, where, rest[0].strip("`"), " ".join(rest[1:]))
        if verb == "channel":
            return await allow_channel(ops, actor, where, rest)
        if verb == "private":
            return await ops.set_private_mode(actor, where, rest[0] if rest else "")
    except BotError as error:
        return error.user_message
    return f"I do not know `{verb}`.\n{ADMIN_HELP}"


async def set_quota(ops: Operations, actor: str, where: Where, words: list[str]) -> str:
    """quota <jobs|unlimited|default> [@user] [hours]"""
    if not words:
        raise InputError(
            "jobs",
            "say how many: `quota 10`, `quota 3 @someone 24`, "
            "`quota unlimited @someone` or `quota default @someone`",
        )
    jobs, target, hours = words[0].lower(), None, None
    for word in words[1:]:
        if user_id_in(word):
            target = user_id_in(word)
            continue
        try:
            hours = float(word.removesuffix("h"))
        except ValueError:
            raise InputError("quota", f"`{word}` is neither a user nor a number of hours") from None
        if not 0.1 <= hours <= 744:
            raise InputError("window", "give between 0.1 and 744 hours")
    kind = "user" if target else "guild"
    said = await ops.set_quota(actor, where, kind, target or "", jobs, hours)
    return said.replace(f"user {target}", f"<@{target}>")


async def allow_channel(ops: Operations, actor: str, where: Where, words: list[str]) -> str:
    channel = channel_id_in(words[0]) if words else None
    switch = words[1].lower() if len(words) > 1 else ""
    if channel is None or switch not in ("on", "off"):
        raise InputError("channel", "say `channel #name on` or `channel #name off`")
    return await ops.channel_answer(actor, where, channel, switch == "on")
