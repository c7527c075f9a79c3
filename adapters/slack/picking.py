"""Pick the object on Slack: a modal with the photo and its grid, a multi-select of cells for
points and two selects for the box's corners, and "Make it" (the modal's submit) or Cancel.

The preview (the grid, the points and box marked) is redrawn on each change. With PUBLIC_URL,
Slack fetches it from the bot's signed address. Without one, the bot has no address Slack can
reach, and a file the app uploads without sharing it is invisible to members (Slack answers
"invalid slack file"): each preview is shared where the result will go, replacing the last,
and removed once the pick is made or cancelled. Nothing is charged before Make it."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError

from bot.errors import BotError, InputError
from bot.grid import Grid
from bot.models import ImageSource, JobRequest, Requester
from bot.operations import Where
from bot.picker import Pick

from .replier import quietly, slack_error
from .translate import PLATFORM, JobArgs, Place, shared_at

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .app import SlackBot

log = logging.getLogger(__name__)

PICK_VIEW = "sam3d_pick"  # the picker modal's callback_id
POINTS, BOX_FROM, BOX_TO = "sam3d_pick_points", "sam3d_pick_from", "sam3d_pick_to"
CHANGES = (POINTS, BOX_FROM, BOX_TO)
OPEN_PICKER = "sam3d_open_picker"  # the button for a pick begun from a message
TITLE = {"type": "plain_text", "text": "Pick the object"}


def _text(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def said_view(text: str) -> dict[str, Any]:
    """The modal saying one thing (getting the photo, a refusal, a pick already made)."""
    return {
        "type": "modal",
        "callback_id": PICK_VIEW,
        "title": TITLE,
        "close": _text("Close"),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}],
    }


LOADING = said_view("Getting your photo and checking your quota…")


def _cell(label: str) -> dict[str, Any]:
    return {"text": _text(label), "value": label}


def _cells(grid: Grid) -> list[dict[str, Any]]:
    """Every cell, grouped by row ("Row 3": A3, B3, ...), as Slack's selects list them."""
    return [
        {
            "label": _text(f"Row {row + 1}"),
            "options": [_cell(grid.label(column, row)) for column in range(grid.columns)],
        }
        for row in range(grid.rows)
    ]


def _select(
    action: str, placeholder: str, grid: Grid, chosen: list[str], many: bool
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "multi_static_select" if many else "static_select",
        "action_id": action,
        "placeholder": _text(placeholder),
        "option_groups": _cells(grid),
    }
    if many:
        element["max_selected_items"] = 10
        if chosen:
            element["initial_options"] = [_cell(c) for c in chosen]
    elif chosen:
        element["initial_option"] = _cell(chosen[0])
    return {"type": "actions", "block_id": action, "elements": [element]}


def chosen_cells(pick: Pick) -> tuple[list[str], list[str], list[str]]:
    """What the selects show: the points' cells and the box's two corner cells."""
    grid = pick.grid
    points = [grid.cell_of(x, y) for x, y in pick.points]
    if pick.box is None:
        return points, [pick.corner] if pick.corner else [], []
    x1, y1, x2, y2 = pick.box
    return points, [grid.cell_of(x1, y1)], [grid.cell_of(x2 - 1, y2 - 1)]


def picker_view(
    pick: Pick, image: dict[str, Any] | None, price: str, web: str | None
) -> dict[str, Any]:
    grid = pick.grid
    points, box_from, box_to = chosen_cells(pick)
    last = grid.label(grid.columns - 1, grid.rows - 1)
    blocks: list[dict[str, Any]] = []
    if image is not None:
        blocks.append(
            {
                "type": "image",
                "block_id": "preview",
                "alt_text": f"Your photo with its grid, cells A1 to {last}",
                **image,
            }
        )
    blocks += [
        {
            "type": "section",
            "block_id": "chosen",
            "text": {
                "type": "mrkdwn",
                "text": f"Choose cells *on the object* as points, and two corner cells for a "
                f"box around it (A1 to {last}).\n*Chosen:* {pick.describe()}",
            },
        },
        _select(POINTS, "Points on the object", grid, points, many=True),
        _select(BOX_FROM, "Box: one corner", grid, box_from, many=False),
        _select(BOX_TO, "Box: the other corner", grid, box_to, many=False),
    ]
    if web:
        blocks.append(
            {
                "type": "actions",
                "block_id": "web",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "sam3d_pick_web",
                        "text": _text("Pick on the web"),
                        "url": web,
                    }
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"{price}; Cancel charges nothing. The pick expires "
                    f"<!date^{int(pick.expires_at)}^{{time}}|in 15 minutes>.",
                }
            ],
        }
    )
    return {
        "type": "modal",
        "callback_id": PICK_VIEW,
        "title": TITLE,
        "submit": _text("Make it"),
        "close": _text("Cancel"),
        "notify_on_close": True,
        "private_metadata": json.dumps({"pick": pick.id}),
        "blocks": blocks,
    }


def choice_in(view: dict[str, Any]) -> tuple[list[str], str | None, str | None]:
    """The cells chosen in the modal as Slack sends its state."""
    values = (view.get("state") or {}).get("values") or {}

    def chosen(action: str) -> list[str]:
        element = (values.get(action) or {}).get(action) or {}
        options = element.get("selected_options") or [element.get("selected_option") or {}]
        return [str(o["value"]) for o in options if isinstance(o, dict) and o.get("value")]

    box_from, box_to = chosen(BOX_FROM), chosen(BOX_TO)
    return chosen(POINTS), box_from[0] if box_from else None, box_to[0] if box_to else None


def apply_choice(pick: Pick, points: list[str], box_from: str | None, box_to: str | None) -> None:
    pick.choose_cells(points, (box_from, box_to) if box_from and box_to else None)
    pick.corner = (box_from or box_to) if not (box_from and box_to) else None


def pick_of(view: dict[str, Any]) -> str:
    try:
        return str(json.loads(view.get("private_metadata") or "{}")["pick"])
    except (ValueError, KeyError, TypeError):
        return ""


# -- the flow -----------------------------------------------------------------------------------


async def price_and_picture(bot: SlackBot, pick: Pick) -> dict[str, Any]:
    picker = bot.core.picker
    assert picker is not None
    links = bot.core.links
    image: dict[str, Any] | None = None
    web = None
    if links is not None and links.enabled:
        web = links.pick_link(pick.id, pick.expires_at)
        image = {"image_url": f"{web}/preview.jpg?v={pick.version}"}
    elif pick.reply_to.get("grid_file"):
        image = {"slack_file": {"id": pick.reply_to["grid_file"]}}
    cost, left = await picker.price(pick.requester)
    price = f"Make it costs {cost}" + (f" ({left})" if left else "")
    return picker_view(pick, image, price, web)


async def show(bot: SlackBot, view_id: str, view: dict[str, Any], hash_: str | None = None) -> None:
    try:
        if hash_:
            await bot.client.views_update(view_id=view_id, view=view, hash=hash_)
        else:
            await bot.client.views_update(view_id=view_id, view=view)
    except SlackApiError as exc:  # closed meanwhile, or a newer change won: nothing to show
        log.info("views.update failed: %s", slack_error(exc))


async def begin(
    bot: SlackBot,
    who: Requester,
    place: Place,
    args: JobArgs,
    photo: Callable[[], Awaitable[ImageSource]],
) -> Pick:
    """The checks (where jobs may start, quota, budget, blocks, disk, the photo), then the
    pick; without PUBLIC_URL, the grid shared where the result will go."""
    picker = bot.core.picker
    assert picker is not None
    refusal = await bot.operations.refusal_here(Where(PLATFORM, who.guild_id), [place.channel_id])
    if refusal is not None:
        raise BotError(refusal)
    image = await photo()
    pick = await picker.begin(
        JobRequest(
            requester=who,
            image=image,
            prompt=args.prompt,
            seed=args.seed,
            reply_to={
                "channel_id": place.channel_id,
                "thread_ts": place.thread_ts,
                "response_url": place.response_url,
            },
        )
    )
    return await with_shared_preview(bot, pick)


def _shares_previews(bot: SlackBot) -> bool:
    return bot.core.links is None or not bot.core.links.enabled


async def with_shared_preview(bot: SlackBot, pick: Pick) -> Pick:
    """Without PUBLIC_URL: the preview as it is now, shared where the result will go; the
    one it replaces (file and message) removed after. The pick remembers the new one."""
    if not _shares_previews(bot):
        return pick
    picker = bot.core.picker
    assert picker is not None
    where = pick.reply_to
    channel = where["channel_id"]
    before = (where.get("grid_file"), where.get("grid_ts"))
    try:
        posted = await bot.client.files_upload_v2(
            channel=channel,
            thread_ts=where.get("thread_ts"),
            content=await picker.preview(pick),
            filename="grid.jpg",
            title="The photo's grid",
            initial_comment=f"<@{pick.requester.user_id}> is picking the object on this grid.",
        )
    except SlackApiError as exc:  # not in the channel: the modal names the cells in words
        log.info("could not share the preview: %s", slack_error(exc))
        return pick
    files = posted.get("files") or [posted.get("file") or {}]
    shared = {
        "grid_file": str(files[0].get("id") or "") or None,
        "grid_ts": next(iter(shared_at(files, channel)), None),
    }
    pick = await picker.change(pick.id, pick.requester, lambda p: p.reply_to.update(shared))
    await remove_preview(bot, channel, *before)
    return pick


async def remove_preview(
    bot: SlackBot, channel: str, file_id: str | None, message_ts: str | None
) -> None:
    if file_id:
        await quietly(bot.client.files_delete(file=file_id))
    if message_ts:  # the upload's own message, with its comment
        await quietly(bot.client.chat_delete(channel=channel, ts=message_ts))


async def begin_in_view(
    bot: SlackBot,
    who: Requester,
    place: Place,
    args: JobArgs,
    photo: Callable[[], Awaitable[ImageSource]],
    view_id: str,
) -> None:
    """With the modal showing LOADING: the picker in it, or why not."""
    try:
        pick = await begin(bot, who, place, args, photo)
    except BotError as error:
        await show(bot, view_id, said_view(f"{error.user_message}\nNothing was charged."))
        return
    await show(bot, view_id, await price_and_picture(bot, pick))


async def begin_from_message(
    bot: SlackBot,
    who: Requester,
    place: Place,
    args: JobArgs,
    photo: Callable[[], Awaitable[ImageSource]],
) -> None:
    """A mention or a DM has no trigger to open a modal with: the member gets a button that
    opens the picker (once the checks passed)."""
    replier = bot.replier(place.reply_to(who.user_id, who.guild_id))
    try:
        pick = await begin(bot, who, place, args, photo)
    except BotError as error:
        await replier.tell(f"{error.user_message} Nothing was charged.")
        return
    try:
        await bot.client.chat_postEphemeral(
            channel=place.channel_id,
            user=who.user_id,
            thread_ts=place.thread_ts,
            text="Your photo is ready to pick the object on.",
            blocks=[
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": "Your photo is ready: point at the object on its grid. "
                        "Nothing is charged until you press Make it.",
                    },
                    "accessory": {
                        "type": "button",
                        "action_id": OPEN_PICKER,
                        "text": _text("Pick the object"),
                        "style": "primary",
                        "value": pick.id,
                    },
                }
            ],
        )
    except SlackApiError as exc:
        log.info("could not offer the picker: %s", slack_error(exc))


async def open_picker(bot: SlackBot, who: Requester, pick_id: str, trigger_id: str) -> str | None:
    """The button's press: the picker opened (None), or what to tell the member."""
    picker = bot.core.picker
    assert picker is not None
    try:
        pick = await picker.load(pick_id, who)
    except BotError as error:
        return error.user_message
    try:
        await bot.progress_client.views_open(
            trigger_id=trigger_id, view=await price_and_picture(bot, pick)
        )
    except SlackApiError as exc:
        return f"Slack would not open the picker ({slack_error(exc)}); try again."
    return None


async def changed(bot: SlackBot, who: Requester, view: dict[str, Any]) -> None:
    """A select changed: the pick follows it, and the modal is redrawn (with PUBLIC_URL, its
    picture too). Slack's hash keeps an older redraw from overwriting a newer one."""
    picker = bot.core.picker
    assert picker is not None
    points, box_from, box_to = choice_in(view)
    try:
        pick = await picker.change(
            pick_of(view), who, lambda p: apply_choice(p, points, box_from, box_to)
        )
    except InputError as error:
        log.info("a pick's change was refused: %s", error.user_message)
        return
    except BotError as error:
        await show(bot, view["id"], said_view(error.user_message))
        return
    pick = await with_shared_preview(bot, pick)
    await show(bot, view["id"], await price_and_picture(bot, pick), view.get("hash"))


async def take(bot: SlackBot, who: Requester, view: dict[str, Any]) -> tuple[Pick, bytes]:
    picker = bot.core.picker
    assert picker is not None
    points, box_from, box_to = choice_in(view)
    return await picker.take(
        pick_of(view), who, chosen=lambda p: apply_choice(p, points, box_from, box_to)
    )


async def run_picked(bot: SlackBot, pick: Pick, request: JobRequest) -> None:
    """The job of a made pick, reporting where the pick began, as any other job there."""
    where = pick.reply_to
    place = Place(where["channel_id"], where.get("thread_ts"), where.get("response_url"))
    args = JobArgs(
        prompt=request.prompt,
        seed=None if request.seed is None else str(request.seed),
        bbox=request.bbox,
        points=request.points,
    )
    image = request.image

    async def photo() -> ImageSource:
        return image

    await forget_grid(bot, pick)
    await bot.run_job(pick.requester, place, args, photo, None, f"pick:{pick.id}")


async def cancelled(bot: SlackBot, who: Requester, view: dict[str, Any]) -> None:
    picker = bot.core.picker
    assert picker is not None
    try:
        pick = await picker.load(pick_of(view), who)
        await picker.cancel(pick.id, who)
    except BotError:  # made, expired or never begun: nothing to end
        return
    await forget_grid(bot, pick)


async def forget_grid(bot: SlackBot, pick: Pick) -> None:
    """The shared preview served its purpose once the pick is made or cancelled."""
    where = pick.reply_to
    await remove_preview(bot, where["channel_id"], where.get("grid_file"), where.get("grid_ts"))
