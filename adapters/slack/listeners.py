"""Slack's listeners in Bolt's own shape: module-level handlers, the bot found in each request's
context, a delivery that Slack re-sends (X-Slack-Retry-Num, a double click, a repeated
shortcut) dropped by middleware before any handler runs, `/sam3d admin` gated by middleware
for admins only, and one error handler for whatever a listener did not foresee.

Each delivery's key (trigger, view and values, event, action) is also the job's idempotency
key in the ledger, so a delivery starts at most one job and one charge even across restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.errors import BotError, InputError
from bot.models import JobEdits
from bot.operations import NOT_YOURS, describe_quota
from bot.replies import server_noun

from . import picking, privacy
from .app import SlackBot, admin, again, link, open_edit_form, open_form
from .history import HISTORY, history_blocks, history_words
from .replier import quietly, slack_error
from .translate import (
    CANCEL,
    COMMAND,
    DELETE,
    DETAILS,
    EDIT,
    FORMATS,
    HELP,
    JOB_VIEW,
    NEW_SEED,
    PLATFORM,
    SHORTCUT,
    JobArgs,
    Place,
    check_answers,
    escape,
    image_files,
    modal_answers,
    parse_job_text,
    strip_mentions,
    team_of,
    user_id_in,
    variations_in,
    wants_pick,
)

log = logging.getLogger(__name__)

Next = Callable[[], Awaitable[None]]  # Bolt's `next` in a middleware
Middleware = Callable[[dict[str, Any], AsyncBoltContext, Next], Awaitable[BoltResponse | None]]

BOT = "sam3d_bot"  # where the SlackBot is in each request's context
DELIVERY = "sam3d_delivery"  # the delivery's key, set by `once`
ONLY_ADMINS = "Only workspace admins and owners (or the bot's configured admins) can do this."
SOMETHING_WRONG = "Something went wrong inside the bot; nothing was charged. Try again."


def register(bot: SlackBot) -> None:
    app: AsyncApp = bot.app

    async def attach_bot(context: AsyncBoltContext, next: Next) -> None:
        context[BOT] = bot
        await next()

    app.use(attach_bot)
    app.error(on_error)
    app.command(COMMAND, matchers=[asks_admin], middleware=[admins_only])(admin_command)
    app.command(COMMAND, middleware=[once(command_key)])(command)
    app.shortcut(SHORTCUT, middleware=[once(trigger_key("shortcut"))])(shortcut)
    app.view(JOB_VIEW, middleware=[once(view_key)])(submitted)
    app.event("app_mention", middleware=[once(event_key)])(mentioned)
    app.event("message", matchers=[in_dm], middleware=[once(event_key)])(direct_message)
    # Every other message event message.im brings (edits, deletions, the bot's own posts) is
    # acknowledged with nothing to do: an unanswered event is retried by Slack, and events
    # that keep failing get the subscription turned off.
    app.event("message")(nothing_to_do)
    app.event("app_uninstalled")(uninstalled)
    app.event("tokens_revoked")(tokens_revoked)
    app.action(NEW_SEED, middleware=[once(action_key)])(new_seed)
    app.action(EDIT)(edit)
    app.action(DETAILS)(details)
    app.action(DELETE)(delete)
    app.action(FORMATS)(formats)
    app.action(CANCEL)(cancel)
    app.action(re.compile(f"^{HISTORY}_(older|newer)$"))(history_page)
    app.action(re.compile(f"^{privacy.FORGET}_(yes|no)$"))(forget_pressed)
    for change in picking.CHANGES:
        app.action(change)(pick_changed)
    app.action(picking.OPEN_PICKER)(open_picker)
    app.action("sam3d_pick_web")(nothing_to_do_but_ack)  # a link button: the browser opens it
    app.view(picking.PICK_VIEW)(pick_submitted)
    app.view_closed(picking.PICK_VIEW)(pick_closed)


# -- middleware ----------------------------------------------------------------------------


def once(key_of: Callable[[dict[str, Any]], str]) -> Middleware:
    """Run the listener for the first delivery of a key only; a repeat is answered 200 (Slack
    must hear back in 3 s) and dropped. (A listener middleware that stops returns the
    response; without one, Bolt would look for another listener and answer 404.)"""

    async def first_delivery_only(
        body: dict[str, Any], context: AsyncBoltContext, next: Next
    ) -> BoltResponse | None:
        key = key_of(body)
        if not context[BOT].first_delivery(key):
            return BoltResponse(status=200, body="")  # answered; no listener runs
        context[DELIVERY] = key
        await next()
        return None

    return first_delivery_only


def command_key(body: dict[str, Any]) -> str:
    return f"command:{body['trigger_id']}"


def trigger_key(kind: str) -> Callable[[dict[str, Any]], str]:
    return lambda body: f"{kind}:{body['trigger_id']}"


def view_key(body: dict[str, Any]) -> str:
    """The view and what was typed in it: a double click on Submit is one delivery, a form
    sent again after its errors were fixed is another."""
    view = body["view"]
    typed = json.dumps((view.get("state") or {}).get("values") or {}, sort_keys=True)
    return f"view:{view['id']}:{hashlib.sha256(typed.encode()).hexdigest()[:12]}"


def event_key(body: dict[str, Any]) -> str:
    event = body.get("event") or {}
    return f"event:{body.get('event_id') or event.get('client_msg_id') or event.get('ts')}"


def action_key(body: dict[str, Any]) -> str:
    return f"action:{body.get('trigger_id') or body['actions'][0].get('action_ts')}"


async def asks_admin(body: dict[str, Any]) -> bool:
    words = (body.get("text") or "").split()
    return bool(words) and words[0].lower() == "admin"


async def admins_only(
    body: dict[str, Any], context: AsyncBoltContext, next: Next, respond: AsyncRespond
) -> BoltResponse | None:
    bot: SlackBot = context[BOT]
    if not await bot.is_admin(team_of(body), body["user_id"]):
        await respond(ONLY_ADMINS)
        return BoltResponse(status=200, body="")
    await next()
    return None


async def on_error(error: Exception, body: dict[str, Any], context: AsyncBoltContext) -> None:
    """What a listener did not foresee: logged, and the member told where Slack left a way
    to reach them (a response_url)."""
    log.error("a Slack listener failed", exc_info=error)
    text = error.user_message if isinstance(error, BotError) else SOMETHING_WRONG
    url = body.get("response_url") if isinstance(body, dict) else None
    bot = context.get(BOT)
    if url and bot is not None:
        webhook = AsyncWebhookClient(url, session=bot.client.session)
        await webhook.send(text=text, response_type="ephemeral")


# -- listeners -----------------------------------------------------------------------------


async def admin_command(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    await ack()
    text = (body.get("text") or "").strip()
    bot: SlackBot = context[BOT]
    words = text.split()[1:]
    if words and words[0].lower() == "forget":  # a confirmation first, as for forget-me
        member = user_id_in(words[1]) if len(words) > 1 else None
        if member is None:
            await respond("Name the member: `forget @someone`.")
            return
        said, blocks = privacy.confirmation(member, team_of(body))
        await respond(text=said, blocks=blocks, response_type="ephemeral")
        return
    await respond(await admin(bot, team_of(body), body["user_id"], words))


async def command(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    bot: SlackBot = context[BOT]
    text = (body.get("text") or "").strip()
    word = text.split(maxsplit=1)[0].lower() if text else ""
    team, user = team_of(body), body["user_id"]
    if not text or text.lower() == "pick":  # the form ("Point at it on a grid" in it)
        await ack()
        problem = await open_form(
            bot,
            body["trigger_id"],
            {"channel_id": body["channel_id"], "response_url": body.get("response_url")},
        )
        if problem is not None:
            await respond(problem, response_type="ephemeral")
    elif word == "help":
        await ack(HELP)
    elif word == "forget-me":
        await ack()
        said, blocks = privacy.confirmation(user, None)
        await respond(text=said, blocks=blocks, response_type="ephemeral")
    elif word == "history":
        await ack()
        member, page = history_words(text.split()[1:])
        said, blocks = await history_blocks(bot, team, user, member, page)
        await respond(text=said, blocks=blocks or None, response_type="ephemeral")
    elif word == "quota":
        await ack()
        status = await bot.operations.my_quota(await bot.requester_of(team, user))
        await respond(describe_quota(status, noun=server_noun(PLATFORM)))
    else:
        try:
            pick, args = wants_pick(parse_job_text(text))
        except InputError as error:
            await ack(error.user_message)
            return
        if pick and (args.bbox or args.points or args.mask_url):
            await ack("Pick the object, or give a box, points or a mask: one, not both.")
            return
        if pick and args.url is not None:
            await ack()
            who = await bot.requester_of(team, user, body.get("user_name", ""))
            place = Place(body["channel_id"], None, body.get("response_url"))
            view_id = await open_loading(bot, body["trigger_id"], respond)
            if view_id is not None:
                bot.background(
                    picking.begin_in_view(bot, who, place, args, link(args.url), view_id)
                )
            return
        if args.url is None:
            await ack(
                f"Give a link to the photo, or run `{COMMAND}` alone for a form "
                f"where you can upload it. `{COMMAND} help` shows more."
            )
            return
        await ack()
        who = await bot.requester_of(team, user, body.get("user_name", ""))
        place = Place(body["channel_id"], None, body.get("response_url"))
        mask = link(args.mask_url) if args.mask_url else None
        bot.background(bot.run_job(who, place, args, link(args.url), mask, context[DELIVERY]))


async def shortcut(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    await ack()
    message = body.get("message") or {}
    images = image_files(message.get("files") or [])
    if not images:
        await respond(
            "That message has no PNG, JPEG or WebP photo to make a model from.",
            response_type="ephemeral",
        )
        return
    problem = await open_form(
        context[BOT],
        body["trigger_id"],
        {
            "channel_id": body["channel"]["id"],
            "thread_ts": message.get("thread_ts") or message.get("ts"),
            "response_url": body.get("response_url"),
            "files": [f["id"] for f in images],
        },
        images,
    )
    if problem is not None:
        await respond(problem, response_type="ephemeral")


async def submitted(
    ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], context: AsyncBoltContext
) -> None:
    bot: SlackBot = context[BOT]
    answers = modal_answers(view)
    errors = check_answers(answers, bot.settings.max_image_bytes)
    if errors:
        await ack(response_action="errors", errors=errors)
        return
    meta = answers.metadata
    user = body["user"]
    who = await bot.requester_of(team_of(body), user["id"], user.get("name", ""))
    place = Place(meta["channel_id"], meta.get("thread_ts"), meta.get("response_url"))
    if meta.get("from_job"):  # Edit: that job's photo with the settings as typed
        await ack()
        edits = JobEdits(answers.prompt, answers.bbox, answers.points, answers.seed)
        bot.background(again(bot, who, place, str(meta["from_job"]), context[DELIVERY], edits))
        return
    args = JobArgs(
        prompt=answers.prompt,
        seed=answers.seed,
        bbox=answers.bbox,
        points=answers.points,
        variations=variations_in(answers.variations),  # checked above
        private=answers.private or None,
    )
    photo = bot.slack_file(answers.files[0] if answers.files else None, answers.file_id)
    if answers.pick:  # the form becomes the picker, once the photo and the quota allow
        await ack(response_action="update", view=picking.LOADING)
        bot.background(picking.begin_in_view(bot, who, place, args, photo, view["id"]))
        return
    await ack()
    mask = bot.slack_file(answers.mask, field="mask") if answers.mask else None
    # A message's photo asked for twice (the shortcut used again) is one request.
    same = (
        None
        if answers.files or answers.mask
        else ":".join(
            map(str, (who.user_id, place.channel_id, place.thread_ts, answers.file_id, args))
        )
    )
    bot.background(bot.run_job(who, place, args, photo, mask, context[DELIVERY], same))


async def mentioned(body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext) -> None:
    """`@sam3d red chair` with a photo, a link or in a photo's thread: a job in its thread."""
    await photo_message(
        body, event, context[BOT], context[DELIVERY], in_thread=True, hint=MENTION_HINT
    )


async def direct_message(
    body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
) -> None:
    """A photo (or a link) sent to the bot in its Messages tab, with or without words: a job
    right there."""
    await photo_message(body, event, context[BOT], context[DELIVERY], in_thread=False, hint=DM_HINT)


MENTION_HINT = (
    "Mention me in a message with a photo attached (or a link to one, or in the thread of a "
    "photo), for example `@sam3d red chair`."
)
DM_HINT = (
    "Send me a photo (or a link to one), with words for what the object is if you like, "
    "for example `red chair`; `/sam3d help` says more."
)


async def nothing_to_do() -> None:
    return None


async def uninstalled(context: AsyncBoltContext) -> None:
    context[BOT].lost_access("the app was uninstalled from the workspace")


async def tokens_revoked(event: dict[str, Any], context: AsyncBoltContext) -> None:
    revoked = (event.get("tokens") or {}).get("bot") or []
    bot: SlackBot = context[BOT]
    if not revoked or bot.bot_user_id in revoked:
        bot.lost_access("the app's bot token was revoked")


async def in_dm(event: dict[str, Any]) -> bool:
    """A person's own message in a DM with the bot (not its edits, deletions or bots')."""
    return (
        event.get("channel_type") == "im"
        and event.get("subtype") in (None, "file_share")
        and not event.get("bot_id")
        and bool(event.get("user"))
    )


async def photo_message(
    body: dict[str, Any],
    event: dict[str, Any],
    bot: SlackBot,
    key: str,
    *,
    in_thread: bool,
    hint: str,
) -> None:
    user = event.get("user")
    if not user or event.get("bot_id"):
        return  # a workflow or another bot: nobody to make a model for
    who = await bot.requester_of(team_of(body) or event.get("team"), user)
    thread = event.get("thread_ts") or (event["ts"] if in_thread else None)
    place = Place(event["channel"], thread)
    replier = bot.replier(place.reply_to(who.user_id, who.guild_id))
    try:
        pick, args = wants_pick(
            parse_job_text(strip_mentions(event.get("text") or "", bot.bot_user_id))
        )
    except InputError as error:
        await replier.tell(error.user_message)
        return
    images = image_files(event.get("files") or [])
    if not images and not args.url and event.get("thread_ts") not in (None, event["ts"]):
        try:  # a reply in a photo's thread: that photo
            images = image_files(await bot.thread_files(event["channel"], event["thread_ts"]))
        except BotError as error:
            await replier.tell(error.user_message)
            return
    photo: Callable[[], Awaitable[Any]]
    if images:
        photo = bot.slack_file(images[0])
    elif args.url:
        photo = link(args.url)
    else:
        await replier.tell(hint)
        return
    if pick:
        bot.background(picking.begin_from_message(bot, who, place, args, photo))
        return
    mask = link(args.mask_url) if args.mask_url else None
    bot.background(bot.run_job(who, place, args, photo, mask, key))


async def open_loading(bot: SlackBot, trigger_id: str, respond: AsyncRespond) -> str | None:
    """The picker's modal, "getting your photo" until the checks are done (the trigger
    lives 3 s, the photo may take longer); its view id, or None if Slack would not."""
    try:
        opened = await bot.progress_client.views_open(trigger_id=trigger_id, view=picking.LOADING)
    except SlackApiError as exc:
        await respond(
            f"Slack would not open the picker ({slack_error(exc)}); try again.",
            response_type="ephemeral",
        )
        return None
    return str((opened.get("view") or {}).get("id") or "") or None


async def pick_changed(ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext) -> None:
    await ack()
    bot: SlackBot = context[BOT]
    who = await bot.requester_of(team_of(body), body["user"]["id"])
    await picking.changed(bot, who, body["view"])


async def open_picker(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    await ack()
    bot: SlackBot = context[BOT]
    who = await bot.requester_of(team_of(body), body["user"]["id"])
    problem = await picking.open_picker(bot, who, body["actions"][0]["value"], body["trigger_id"])
    if problem is not None:
        await respond(problem, response_type="ephemeral", replace_original=False)


async def nothing_to_do_but_ack(ack: AsyncAck) -> None:
    await ack()


async def pick_submitted(
    ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], context: AsyncBoltContext
) -> None:
    """Make it: the modal closes and the job runs where the pick began."""
    bot: SlackBot = context[BOT]
    user = body["user"]
    who = await bot.requester_of(team_of(body), user["id"], user.get("name", ""))
    try:
        pick, photo = await picking.take(bot, who, view)
    except BotError as error:
        await ack(response_action="update", view=picking.said_view(error.user_message))
        return
    await ack()
    bot.background(picking.run_picked(bot, pick, pick.request(photo)))


async def pick_closed(ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext) -> None:
    """Cancel: the pick ends; nothing was charged."""
    await ack()
    bot: SlackBot = context[BOT]
    who = await bot.requester_of(team_of(body), body["user"]["id"])
    await picking.cancelled(bot, who, body["view"])


async def new_seed(ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext) -> None:
    await ack()
    bot: SlackBot = context[BOT]
    user = body["user"]
    who = await bot.requester_of(team_of(body), user["id"], user.get("name", ""))
    message = body.get("message") or {}
    place = Place(body["channel"]["id"], message.get("thread_ts"), body.get("response_url"))
    bot.background(again(bot, who, place, body["actions"][0]["value"], context[DELIVERY]))


async def edit(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    """Edit on a result: the form filled in; the new job comes in the result's thread."""
    await ack()
    problem = await open_edit_form(
        context[BOT], body["trigger_id"], str(body["actions"][0]["value"]), result_thread(body)
    )
    if problem is not None:
        await respond(problem, response_type="ephemeral", replace_original=False)


async def details(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    await ack()
    text = await context[BOT].operations.job_details(body["actions"][0]["value"], escape)
    await respond(text, response_type="ephemeral", replace_original=False)


async def forget_pressed(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    await ack()
    action = body["actions"][0]
    said = await privacy.confirmed(
        context[BOT], body["user"]["id"], team_of(body), action["action_id"], action["value"]
    )
    await respond(text=said, replace_original=True)


async def history_page(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    """Older / Newer: the history message, replaced by the page asked for."""
    await ack()
    try:
        asked = json.loads(body["actions"][0]["value"])
        member, page = asked.get("member"), int(asked["page"])
    except (ValueError, KeyError, TypeError):
        return
    said, blocks = await history_blocks(
        context[BOT], team_of(body), body["user"]["id"], member, page
    )
    await respond(text=said, blocks=blocks or None, replace_original=True)


async def cancel(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    """Cancel on a job's progress: what the core could do, to the presser alone."""
    await ack()
    bot: SlackBot = context[BOT]
    who = await bot.requester_of(team_of(body), body["user"]["id"])
    said = await bot.core.service.cancel(str(body["actions"][0]["value"]), who)
    await respond(said, response_type="ephemeral", replace_original=False)


async def formats(ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext) -> None:
    """A format from a result's menu: converted (free) and uploaded in the result's thread
    for the member who asked."""
    await ack()
    bot: SlackBot = context[BOT]
    job_id, _, key = str(body["actions"][0]["selected_option"]["value"]).partition(":")
    bot.background(bot.send_format(body["user"]["id"], result_thread(body), job_id, key))


def result_thread(body: dict[str, Any]) -> Place:
    """The thread of the result message a button or menu was used on."""
    message = body.get("message") or {}
    return Place(
        body["channel"]["id"],
        message.get("thread_ts") or message.get("ts"),
        body.get("response_url"),
    )


async def delete(
    ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
) -> None:
    await ack()
    bot: SlackBot = context[BOT]
    value = json.loads(body["actions"][0]["value"])
    who = await bot.requester_of(team_of(body), body["user"]["id"])
    if not await bot.operations.may_delete(value["job"], who):
        await respond(NOT_YOURS, response_type="ephemeral", replace_original=False)
        return
    channel = body["channel"]["id"]
    for file_id in value["files"]:
        await quietly(bot.client.files_delete(file=file_id))
    for ts in value.get("messages") or []:  # the upload's own message, with its comment
        await quietly(bot.client.chat_delete(channel=channel, ts=ts))
    await quietly(bot.client.chat_delete(channel=channel, ts=body["message"]["ts"]))
