"""The web picker: PUBLIC_URL/p/PICK.EXPIRES.SIGNATURE shows the member's photo; clicks on it
are points, a drag is the box, and "Make it" starts the job, which reports in the chat (or
the terminal) as any other. The link is signed, expires with the pick (15 minutes) and
makes at most once. Like the viewer page: everything from the bot itself, a strict CSP."""

from __future__ import annotations

import asyncio
import html
import json
from typing import Any

from aiohttp import web

from .downloads import DownloadLinks, LinkCheck
from .errors import BotError, InputError
from .picker import MAX_POINTS, Box, Picker, Point

PICKER = web.AppKey("picker", Picker)
PICK_LINKS = web.AppKey("pick_links", DownloadLinks)
MAX_BODY = 4096  # ten points and a box are a few hundred bytes

# Nothing inline, nothing from elsewhere: the page's script and style are the bot's files.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def add_pick_routes(app: web.Application, picker: Picker, links: DownloadLinks) -> None:
    app[PICKER] = picker
    app[PICK_LINKS] = links
    app.router.add_get("/p/{token}", pick_page)
    app.router.add_get("/p/{token}/photo", pick_photo)
    app.router.add_get("/p/{token}/preview.jpg", pick_preview)
    app.router.add_post("/p/{token}", make_pick)


def refused(status: int, text: str, as_json: bool = False) -> web.Response:
    if as_json:
        return web.json_response({"error": text}, status=status, headers=PAGE_HEADERS)
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def pick_of(request: web.Request, as_json: bool = False) -> str | web.Response:
    """The pick id of a current link of ours, or the answer to give instead."""
    check, pick_id = request.app[PICK_LINKS].check_pick(request.match_info["token"])
    if check is LinkCheck.FORBIDDEN:
        return refused(403, "This link is not valid.", as_json)
    if check is LinkCheck.EXPIRED:
        return refused(410, "This pick has expired (15 minutes); start again in the chat.", as_json)
    return pick_id


async def pick_page(request: web.Request) -> web.Response:
    pick_id = pick_of(request)
    if isinstance(pick_id, web.Response):
        return pick_id
    try:
        pick = await request.app[PICKER].load(pick_id)
    except BotError as error:
        return refused(410, error.user_message)
    return web.Response(
        text=page(request.match_info["token"], pick.width, pick.height, pick.prompt),
        content_type="text/html",
        headers=PAGE_HEADERS,
    )


async def pick_photo(request: web.Request) -> web.Response:
    pick_id = pick_of(request)
    if isinstance(pick_id, web.Response):
        return pick_id
    picker = request.app[PICKER]
    try:
        await picker.load(pick_id)
        photo = await asyncio.to_thread(picker.store.photo, pick_id, "shown.jpg")
    except BotError as error:
        return refused(410, error.user_message)
    return web.Response(body=photo, content_type="image/jpeg", headers=PAGE_HEADERS)


async def pick_preview(request: web.Request) -> web.Response:
    """The photo with its grid and what is chosen: what a chat shows while picking (Slack's
    servers fetch it for the picker's image, by this signed address)."""
    pick_id = pick_of(request)
    if isinstance(pick_id, web.Response):
        return pick_id
    picker = request.app[PICKER]
    try:
        preview = await picker.preview(await picker.load(pick_id))
    except BotError as error:
        return refused(410, error.user_message)
    return web.Response(body=preview, content_type="image/jpeg", headers=PAGE_HEADERS)


async def make_pick(request: web.Request) -> web.Response:
    """Make it: {"points": [[x, y], ...], "box": [x1, y1, x2, y2] or null}, in the photo's
    pixels. JSON only, so no other site's form can press it (a cross-site JSON post needs
    a CORS preflight the bot never answers)."""
    pick_id = pick_of(request, as_json=True)
    if isinstance(pick_id, web.Response):
        return pick_id
    if request.content_type != "application/json":
        return refused(415, "Send the choice as JSON.", True)
    if (request.content_length or 0) > MAX_BODY:
        return refused(413, "That is far more than a few points and a box.", True)
    try:
        body = json.loads((await request.content.read(MAX_BODY + 1))[:MAX_BODY])
        points, box = chosen(body)
        pick = await request.app[PICKER].make_from_web(pick_id, points, box)
    except (ValueError, UnicodeDecodeError):
        return refused(400, "That is not a choice of points and a box.", True)
    except InputError as error:
        return refused(400, error.user_message, True)
    except BotError as error:
        return refused(410, error.user_message, True)
    where = "here" if pick.requester.platform == "cli" else "in the chat"
    return web.json_response(
        {"message": f"Started: the model will appear {where} in about a minute."},
        headers=PAGE_HEADERS,
    )


def chosen(body: Any) -> tuple[list[Point], Box | None]:
    """Points and box from the page's JSON, shaped as they must be (ranges: the Pick)."""
    if not isinstance(body, dict):
        raise ValueError("not an object")
    points = body.get("points") or []
    box = body.get("box")
    if not isinstance(points, list) or len(points) > MAX_POINTS:
        raise InputError("points", f"at most {MAX_POINTS} points")
    parsed = [_pair(point) for point in points]
    if box is None:
        return parsed, None
    if not isinstance(box, list) or len(box) != 4:
        raise ValueError("not a box")
    x1, y1, x2, y2 = (_number(v) for v in box)
    return parsed, (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _pair(value: Any) -> Point:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("not a point")
    return _number(value[0]), _number(value[1])


def _number(value: Any) -> int:
    """A coordinate: a finite JSON number (not true/false, NaN or 1e308)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a number")
    number = float(value)
    if not abs(number) <= 1_000_000:  # NaN fails this too
        raise ValueError("out of range")
    return round(number)


def page(token: str, width: int, height: int, prompt: str | None) -> str:
    what = f" ({html.escape(prompt)})" if prompt else ""
    photo = html.escape(f"{token}/photo")  # relative to /p/: the link's own photo
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Pick the object</title>
<link rel="stylesheet" href="/static/pick.css">
<script type="module" src="/static/pick.js"></script>
</head><body><main>
<h1>Pick the object{what}</h1>
<p>Click or tap points on the object; drag to draw a box around it. Then press Make it.</p>
<div id="stage">
<img id="photo" src="{photo}" alt="Your photo" width="{width}" height="{height}"
 data-width="{width}" data-height="{height}" draggable="false">
<canvas id="marks" aria-hidden="true"></canvas>
</div>
<nav><button type="button" id="undo">Undo</button>
<button type="button" id="clear">Clear</button>
<button type="button" id="make" class="primary">Make it</button></nav>
<p id="status" role="status" aria-live="polite">No points yet: the model then guesses.</p>
</main></body></html>
"""
