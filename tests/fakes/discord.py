"""A loopback fake of Discord's REST API, CDN and gateway, as strict as Discord: login, command
sync, interaction callbacks, webhook follow-ups and edits, channel messages (JSON or multipart
with files), attachment downloads, and a gateway session (HELLO, IDENTIFY, READY, heartbeats,
dispatched interactions) for the real `sam3d-bot run`. It records every call, with the time it
arrived.

What Discord checks, the fake checks, each rule from Discord's documentation
(../shared/specs and the discord-api-docs pages named beside each rule), never from the bot:
every body against the OpenAPI document and the documented limits (discord_rules.py); the
first response to an interaction within 3 s of its id's timestamp, once (10062, 40060); its
token for 15 minutes (50027); the first follow-up after a deferral editing the loading message;
5 follow-ups for a user-installed app (40094); uploads within the limit of the message being
sent (the interaction's attachment_size_limit through its token, the server's Boost tier in a
channel; 413 / 40005); channel routes only where the bot may act (10003, 50001, 50013, 40058,
50083) and messages that exist (10008); 429 with `retry_after` and the X-RateLimit headers when
a test asks for them. Slowmode (20016) is not applied: resources/channel.mdx says bots are
unaffected by rate_limit_per_user. Its CDN can be slow (on its own clock, so tests do not
wait)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from . import serve_on_loopback
from .discord_rules import (
    DEFAULT_UPLOAD_LIMIT,
    GUILD_UPLOAD_LIMITS,
    DiscordError,
    check_message,
    check_upload,
    spec,
)

BOT_ID = "900000000000000001"
APP_ID = "900000000000000002"
API = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
FIRST_RESPONSE_S = 3.0  # receiving-and-responding.mdx: "within 3 seconds of receiving the event"
TOKEN_LIFETIME_S = 15 * 60  # "Interaction tokens are valid for 15 minutes"
USER_APP_FOLLOWUPS = 5  # "limited to 5 followup messages per interaction" (user-installed)
EPHEMERAL = 1 << 6
# Permission bits (developers/topics/permissions.mdx).
VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES = 1 << 10, 1 << 11, 1 << 14, 1 << 15
SEND_IN_THREADS = 1 << 38
DM, GROUP_DM, GUILD_FORUM, THREAD_TYPES = (
    1,
    3,
    15,
    (10, 11, 12),
)  # channel types (resources/channel.mdx)


@dataclass
class Call:
    method: str
    path: str
    at: float
    json: dict[str, Any] | list | None = None
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # field -> (name, bytes)
    status: int = 200  # what the fake answered
    answer: Any = None  # and the JSON it answered with


@dataclass
class Interaction:
    """What Discord knows of an interaction it sent: when (from its id), its limits, and what
    the app did with it."""

    id: str
    token: str
    channel_id: str | None
    created_at: float
    attachment_size_limit: int
    user_install_only: bool
    response_type: int | None = None
    ephemeral: bool = False
    original: str | None = None  # the response's message id
    loading: bool = False  # a deferral's "thinking" message, not yet edited
    followups: int = 0
    component_message: str | None = None  # the message whose component was used


@dataclass
class Channel:
    """A channel as Discord holds it, with what the bot may do there."""

    id: str
    type: int = 0
    guild_id: str | None = None
    parent_id: str | None = None
    bot_permissions: int = VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES
    deleted: bool = False
    archived: bool = False


@dataclass
class Injected:
    """A failure a test asks for on the next `times` matching requests: 429 (with
    `retry_after`) or Discord's side failing (5xx)."""

    method: str
    path_part: str
    status: int
    times: int = 1
    retry_after: float = 0.0

    def matches(self, call: Call) -> bool:
        return self.times > 0 and self.method == call.method and self.path_part in call.path


def _json(value: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py reads JSON only under that header, with no charset.
    return web.Response(
        body=json.dumps(value).encode(), status=status, content_type="application/json"
    )


def user_json(user_id: str, name: str, bot: bool = False) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
    }


def snowflake_time(snowflake: str) -> float:
    """When a snowflake was made (reference.mdx, "Snowflakes": ms since Discord's epoch)."""
    return ((int(snowflake) >> 22) + DISCORD_EPOCH_MS) / 1000


class FakeDiscord:
    def __init__(self, clock: Callable[[], float] = time.time, port: int = 0) -> None:
        self._port = port  # 0: a free one
        self.clock = clock  # wall time, as interaction ids carry it
        self.calls: list[Call] = []
        self.cdn: dict[str, bytes] = {}  # file name -> bytes served under /cdn/
        self.cdn_takes_s = 0.0  # how long each CDN download takes, as Discord's clock sees it
        self.token = ""  # when set, requests with another bot token get 401
        self.interactions: dict[str, Interaction] = {}  # by token
        self.channels: dict[str, Channel] = {}
        self.guild_tiers: dict[str, int] = {}  # guild id -> premium (Boost) tier
        self.guilds: dict[str, dict[str, Any]] = {}  # the servers the bot is in (GUILD_CREATE)
        self.injected: list[Injected] = []
        self.dm_channels: dict[str, str] = {}  # member -> the bot's DM channel with them
        self.dms_closed: set[str] = set()  # members who do not take DMs from the bot
        self._ids = itertools.count(1_000_000_000_000_000_001)
        self._messages: dict[str, dict[str, Any]] = {}
        self._via: dict[str, str] = {}  # message id -> "channel" or "token:<its token>"
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.sessions: list[web.WebSocketResponse] = []  # gateway connections that identified
        self._sequence = itertools.count(1)

    def advance(self, seconds: float) -> None:
        """Age every interaction sent so far by `seconds`, as if that much time had passed
        for it (a token's 15 minutes, a slow download), without the test waiting."""
        for interaction in self.interactions.values():
            interaction.created_at -= seconds

    @property
    def api_url(self) -> str:
        return f"{self.url}{API}"

    def cdn_url(self, name: str) -> str:
        return f"{self.url}/cdn/{name}"

    def interaction_sent(self, payload: dict[str, Any]) -> None:
        """Discord sends this interaction now: it knows its token, its channel and what the
        bot may do there (the payload's app_permissions)."""
        owners = payload.get("authorizing_integration_owners") or {}
        self.interactions[payload["token"]] = Interaction(
            id=payload["id"],
            token=payload["token"],
            channel_id=payload.get("channel_id"),
            created_at=snowflake_time(payload["id"]),
            attachment_size_limit=payload.get("attachment_size_limit", DEFAULT_UPLOAD_LIMIT),
            user_install_only=set(owners) == {"1"},
            component_message=(payload.get("message") or {}).get("id")
            if payload.get("type") == 3
            else None,
        )
        channel = payload.get("channel") or {}
        channel_id = payload.get("channel_id")
        if channel_id and channel_id not in self.channels:
            bot_can = int(payload.get("app_permissions") or 0)
            if channel.get("type") in (DM, GROUP_DM):
                # The bot posts in its own DM with a member (context BOT_DM); a DM between
                # members (PRIVATE_CHANNEL, a user-installed app) is not the bot's to post in.
                own = payload.get("context") == 1
                bot_can = VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES if own else 0
            self.channels[channel_id] = Channel(
                channel_id,
                type=channel.get("type", 0),
                guild_id=payload.get("guild_id"),
                parent_id=channel.get("parent_id"),
                bot_permissions=bot_can,
            )

    def add_guild(self, guild_id: str, premium_tier: int = 0) -> None:
        """A server the bot is in, at a Boost tier (which sets its upload limit)."""
        self.guild_tiers[guild_id] = premium_tier
        self.guilds[guild_id] = {
            "id": guild_id,
            "name": "a server",
            "icon": None,
            "owner_id": "700000000000000009",
            "roles": [
                {
                    "id": guild_id,  # @everyone has the server's id
                    "name": "@everyone",
                    "permissions": "0",
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "premium_tier": premium_tier,
            "premium_subscription_count": {0: 0, 1: 2, 2: 7, 3: 14}[premium_tier],
            "channels": [],
            "threads": [],
            "members": [],
            "voice_states": [],
            "presences": [],
            "member_count": 2,
            "large": False,
            "unavailable": False,
            "joined_at": "2026-01-01T00:00:00+00:00",
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "system_channel_flags": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
        }

    def fail_next(self, method: str, path_part: str, status: int = 502, times: int = 1) -> None:
        """Answer the next `times` matching requests with a server error (Discord's side
        failing, as in an outage)."""
        self.injected.append(Injected(method, path_part, status, times))

    def limit_next(self, method: str, path_part: str, retry_after: float, times: int = 1) -> None:
        """Answer the next `times` matching requests 429, as a rate-limited route does."""
        self.injected.append(Injected(method, path_part, 429, times, retry_after))

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_route("*", API + "/{tail:.*}", self.api)
        app.router.add_get("/cdn/{name}", self.serve_cdn)
        app.router.add_get("/gateway", self.gateway)
        self._runner, self.url = await serve_on_loopback(app, self._port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in self.sessions:
            await session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the gateway (https://discord.com/developers/docs/events/gateway) ----------------------

    async def gateway(self, request: web.Request) -> web.WebSocketResponse:
        """One shard's session, as Discord's gateway documentation describes it: HELLO (op 10,
        with the heartbeat interval), then READY (op 0) once the client sends IDENTIFY (op 2)
        with the bot's token and its intents; a wrong token closes with 4004 (authentication
        failed), missing intents with 4013 (invalid intents); heartbeats (op 1) get their ACK
        (op 11). JSON text frames: Discord compresses only when asked, and what the bot does
        with an event is the same."""
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_json(
            {"op": 10, "d": {"heartbeat_interval": 41_250}, "s": None, "t": None}
        )
        async for message in socket:
            if message.type is not web.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if frame.get("op") == 1:  # heartbeat
                await socket.send_json({"op": 11})
            elif frame.get("op") == 2:  # identify
                identity = frame.get("d") or {}
                if (self.token and identity.get("token") != self.token) or not isinstance(
                    identity.get("intents"), int
                ):
                    await socket.close(code=4004 if self.token else 4013)
                    break
                self.sessions.append(socket)
                await self._dispatch(
                    socket,
                    "READY",
                    {
                        "v": 10,
                        "user": user_json(BOT_ID, "sam3d", bot=True),
                        "guilds": [{"id": g, "unavailable": True} for g in self.guilds],
                        "session_id": "fake-session",
                        "shard": identity.get("shard", [0, 1]),
                        "resume_gateway_url": self.url.replace("http", "ws") + "/gateway",
                        "application": {"id": APP_ID, "flags": 0},
                        "private_channels": [],
                        "relationships": [],
                    },
                )
                # With the GUILDS intent, each server the bot is in follows as GUILD_CREATE
                # (events/gateway-events.mdx, "Guild Create").
                for guild in self.guilds.values():
                    await self._dispatch(socket, "GUILD_CREATE", guild)
        if socket in self.sessions:
            self.sessions.remove(socket)
        return socket

    async def _dispatch(self, socket: web.WebSocketResponse, event: str, data: dict) -> None:
        await socket.send_json({"op": 0, "t": event, "s": next(self._sequence), "d": data})

    async def send_interaction(self, payload: dict[str, Any]) -> None:
        """Dispatch INTERACTION_CREATE to the connected bot, as Discord does when a member
        uses a command."""
        for _ in range(200):
            if self.sessions:
                break
            await asyncio.sleep(0.05)
        assert self.sessions, "no bot is connected to the gateway"
        self.interaction_sent(payload)
        await self._dispatch(self.sessions[-1], "INTERACTION_CREATE", payload)

    # -- what the tests look at ------------------------------------------------------------------

    def find(self, method: str, path_part: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and path_part in c.path]

    def callbacks(self) -> list[Call]:
        return self.find("POST", "/callback")

    def channel_posts(self) -> list[Call]:
        return [c for c in self.find("POST", "/channels/") if c.path.endswith("/messages")]

    def followups(self) -> list[Call]:
        return [c for c in self.find("POST", "/webhooks/")]

    def original_edits(self) -> list[Call]:
        return self.find("PATCH", "/messages/@original")

    # -- the API --------------------------------------------------------------------------------

    async def serve_cdn(self, request: web.Request) -> web.Response:
        # A slow download ages the interactions waiting on it, without the test waiting.
        self.advance(self.cdn_takes_s)
        data = self.cdn.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        call = Call(request.method, path, time.monotonic())
        try:
            await self._read_body(request, call)
        except (ValueError, UnicodeDecodeError):
            call.status = 400
            self.calls.append(call)
            return DiscordError(400, 50109, "The request body contains invalid JSON.").response()
        self.calls.append(call)
        try:
            response = self._answer(request, call)
        except DiscordError as error:
            response = error.response()
        call.status = response.status
        if response.content_type == "application/json" and isinstance(response.body, bytes):
            call.answer = json.loads(response.body)
        return response

    def _answer(self, request: web.Request, call: Call) -> web.Response:
        path = call.path
        # Interaction callbacks and webhook-token routes are authorised by the token in their
        # path: Discord's OpenAPI description gives them `security: [{}, {BotToken: []}]` (no
        # credentials, or the bot's), and discord.py sends none there. Every other route the
        # fake serves is `BotToken` only (../shared/specs/discord-openapi.json).
        by_path = path.startswith(("/interactions/", "/webhooks/"))
        if (
            self.token
            and not by_path
            and request.headers.get("Authorization") != f"Bot {self.token}"
        ):
            raise DiscordError(401, 0, "401: Unauthorized")
        injected = next((i for i in self.injected if i.matches(call)), None)
        if injected is not None:
            injected.times -= 1
            return self._injected_answer(injected)
        rules = spec()
        if rules is not None:
            rules.check(call.method, path, request.content_type, call.json)
        route = (request.method, path)
        if route == ("GET", "/gateway/bot"):  # OpenAPI get_bot_gateway (BotToken, checked above)
            return _json(
                {
                    "url": self.url.replace("http", "ws", 1) + "/gateway",
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": 999,
                        "reset_after": 14_400_000,
                        "max_concurrency": 1,
                    },
                }
            )
        if route == ("GET", "/users/@me"):
            return _json(user_json(BOT_ID, "sam3d", bot=True))
        if route == ("GET", "/oauth2/applications/@me"):
            return _json(
                {
                    "id": APP_ID,
                    "name": "sam3d",
                    "description": "",
                    "icon": None,
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "verify_key": "0" * 64,
                    "owner": user_json("900000000000000003", "owner"),
                    "flags": 0,
                    "rpc_origins": [],
                    "team": None,
                    "summary": "",
                }
            )
        if route == ("POST", "/users/@me/channels"):  # OpenAPI create_dm
            return self._open_dm(call)
        if request.method == "PUT" and path.endswith("/commands"):
            commands = call.json or []
            return _json(
                [
                    {
                        "description": "",
                        "options": [],
                        **c,
                        "id": str(next(self._ids)),
                        "application_id": APP_ID,
                        "version": "1",
                        "default_member_permissions": c.get("default_member_permissions"),
                    }
                    for c in commands
                ]
            )
        if path.endswith("/callback"):
            return self._callback(call)
        if path.startswith("/webhooks/"):
            return self._webhook(call, request.query.get("wait") in ("true", "1"))
        if path.startswith("/channels/"):
            return self._channel(call)
        raise DiscordError(404, 0, "404: Not Found")

    def _injected_answer(self, injected: Injected) -> web.Response:
        """A 429 as rate-limits.mdx describes it (`retry_after` in the body, Retry-After and
        the X-RateLimit-* headers), or a server error. Both carry `Via: 1.1 google`, as
        Discord's API answers do through its Google front end: not in the docs, but
        discord.py's http.py reads a 429 without it as a Cloudflare ban (rate-limits.mdx,
        "Invalid Request Limit aka Cloudflare bans") and stops."""
        if injected.status != 429:
            response = web.Response(status=injected.status, text="upstream trouble")
            response.headers["Via"] = "1.1 google"
            return response
        after = injected.retry_after
        body = {"message": "You are being rate limited.", "retry_after": after, "global": False}
        response = _json(body, 429)
        response.headers.update(
            {
                "Via": "1.1 google",
                "Retry-After": str(max(1, round(after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{self.clock() + after:.3f}",
                "X-RateLimit-Reset-After": f"{after:.3f}",
                "X-RateLimit-Bucket": "fake-bucket",
                "X-RateLimit-Scope": "user",
            }
        )
        return response

    async def _read_body(self, request: web.Request, call: Call) -> None:
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                data = await part.read()
                if part.name == "payload_json":
                    call.json = json.loads(data)
                else:
                    call.files[part.name or ""] = (part.filename or "", bytes(data))
        elif request.can_read_body:
            text = await request.text()
            call.json = json.loads(text) if text else None

    def _message(
        self,
        channel_id: str | None,
        body: dict[str, Any] | None,
        files: dict[str, tuple[str, bytes]],
        message_id: str | None = None,
        via: str = "channel",
    ) -> dict[str, Any]:
        """Make or replace a message (an edit keeps what it does not name)."""
        body = body or {}
        old = self._messages.get(message_id or "", {})
        attachments = [
            {
                "id": str(next(self._ids)),
                "filename": name,
                "size": len(data),
                "url": self.cdn_url(name),
                "proxy_url": self.cdn_url(name),
            }
            for name, data in files.values()
        ]
        if not old:
            kept = []
        elif "attachments" in body:  # an edit lists the attachments it keeps, by id
            kept = [a for a in old["attachments"] if _kept(a, body)]
        else:
            kept = old["attachments"]
        message = {
            "id": message_id or str(next(self._ids)),
            "channel_id": channel_id or old.get("channel_id") or "0",
            "author": user_json(BOT_ID, "sam3d", bot=True),
            "content": body.get("content", old.get("content", "")),
            "timestamp": "2026-11-25T12:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": kept + attachments,
            "embeds": body.get("embeds", old.get("embeds", [])),
            "pinned": False,
            "type": 0,
            "flags": body.get("flags", old.get("flags", 0)) or 0,
            "components": body.get("components", old.get("components", [])),
        }
        for name, data in files.values():
            self.cdn[name] = data
        self._via.setdefault(message["id"], via)
        self._messages[message["id"]] = message
        return message

    # -- interactions (interactions/receiving-and-responding.mdx) --------------------------------

    def _interaction(self, token: str) -> Interaction:
        interaction = self.interactions.get(token)
        if interaction is None or interaction.response_type is None:
            # A token is the app's to use once it answered the interaction in time.
            raise DiscordError(404, 10015, "Unknown Webhook")
        if self.clock() - interaction.created_at > TOKEN_LIFETIME_S:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return interaction

    def _callback(self, call: Call) -> web.Response:
        interaction_id, token = call.path.split("/")[2:4]
        interaction = self.interactions.get(token)
        if interaction is None or interaction.id != interaction_id:
            raise DiscordError(404, 10062, "Unknown interaction")
        if interaction.response_type is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if self.clock() - interaction.created_at > FIRST_RESPONSE_S:
            raise DiscordError(404, 10062, "Unknown interaction")
        body = call.json or {}
        kind = body.get("type")
        data = body.get("data") or {}
        files = [blob for _, blob in call.files.values()]
        if kind == 4:
            check_message(data, files, creating=True)
        if kind in (4, 7):
            check_upload(files, interaction.attachment_size_limit)
        interaction.response_type = kind
        interaction.ephemeral = bool((data.get("flags") or 0) & EPHEMERAL)
        message = None
        if kind in (6, 7):
            # A component's interaction: its original response is the message the component
            # is on (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE).
            # receiving-and-responding.mdx: types 6 and 7 are "only valid for component-based
            # interactions" (the code Discord gives is not documented; 50035 is its form error).
            if interaction.component_message is None:
                raise DiscordError(400, 50035, "Invalid Form Body")
            interaction.original = interaction.component_message
        if kind == 7 and interaction.component_message in self._messages:
            # receiving-and-responding.mdx, UPDATE_MESSAGE: "for components, edit the message
            # the component was attached to".
            check_message(data, files, creating=False)
            message = self._message(None, data, call.files, interaction.component_message)
        if kind in (4, 5):
            shown = {"content": "", **data} if kind == 5 else data
            message = self._message(interaction.channel_id, shown, call.files, via=f"token:{token}")
            interaction.original = message["id"]
            interaction.loading = kind == 5
        return _json(
            {
                "interaction": {
                    "id": interaction_id,
                    "type": 2,
                    "response_message_id": interaction.original,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": interaction.ephemeral,
                },
                "resource": {"type": kind, "message": message}
                if message is not None
                else {"type": kind},
            }
        )

    def _webhook(self, call: Call, wait: bool) -> web.Response:
        parts = call.path.split("/")  # "", "webhooks", app, token, ["messages", id]
        if len(parts) < 4 or parts[2] != APP_ID:
            raise DiscordError(404, 10015, "Unknown Webhook")
        interaction = self._interaction(parts[3])
        files = [blob for _, blob in call.files.values()]
        body = call.json if isinstance(call.json, dict) else {}
        if len(parts) == 4:  # a follow-up
            if call.method != "POST":
                raise DiscordError(405, 0, "405: Method Not Allowed")
            check_message(body, files, creating=True)
            check_upload(files, interaction.attachment_size_limit)
            if interaction.loading:
                # "this endpoint will function as Edit Original Interaction Response ... the
                # loading message will be edited instead. The ephemeral flag will be ignored"
                interaction.loading = False
                edit = {k: v for k, v in body.items() if k != "flags"}
                return _json(self._message(None, edit, call.files, interaction.original))
            if interaction.user_install_only and interaction.followups >= USER_APP_FOLLOWUPS:
                raise DiscordError(
                    400, 40094, "This interaction has hit the maximum number of follow up messages"
                )
            interaction.followups += 1
            message = self._message(
                interaction.channel_id, body, call.files, via=f"token:{interaction.token}"
            )
            return _json(message) if wait else web.Response(status=204)
        message_id = parts[5] if len(parts) > 5 else ""
        if message_id == "@original":
            message_id = interaction.original or ""
        known = self._messages.get(message_id)
        ours = known is not None and (
            self._via.get(message_id) == f"token:{interaction.token}"
            or message_id == interaction.component_message
        )
        if known is None or not ours:
            raise DiscordError(404, 10008, "Unknown Message")
        if call.method == "DELETE":
            del self._messages[message_id]
            if message_id == interaction.original:
                interaction.loading = False
            return web.Response(status=204)
        if call.method == "GET":
            return _json(known)
        check_message(body, files, creating=False)
        check_upload(files, interaction.attachment_size_limit)
        if message_id == interaction.original:
            interaction.loading = False
        return _json(self._message(None, body, call.files, message_id))

    # -- DMs (resources/user.mdx, "Create DM") ---------------------------------------------------

    def _open_dm(self, call: Call) -> web.Response:
        """The bot's DM channel with a member: made once, the same one after. Opening it
        always works; a member whose DMs are closed to the bot refuses what is sent there."""
        recipient = str((call.json or {}).get("recipient_id") or "")
        channel_id = self.dm_channels.get(recipient)
        if channel_id is None:
            channel_id = self.dm_channels[recipient] = str(next(self._ids))
            self.channels[channel_id] = Channel(channel_id, type=DM)
        return _json(
            {
                "id": channel_id,
                "type": DM,
                "last_message_id": None,
                "flags": 0,
                "recipients": [user_json(recipient, f"user{recipient[-2:]}")],
            }
        )

    # -- channels (resources/message.mdx, "Create Message" and its limitations) ------------------

    def _channel(self, call: Call) -> web.Response:
        parts = call.path.split("/")  # "", "channels", id, "messages", [message id]
        channel = self.channels.get(parts[2])
        if channel is None or channel.deleted:
            raise DiscordError(404, 10003, "Unknown Channel")
        allowed = channel.bot_permissions
        if not allowed & VIEW_CHANNEL:
            raise DiscordError(403, 50001, "Missing Access")
        if len(parts) < 4 or parts[3] != "messages":
            raise DiscordError(404, 0, "404: Not Found")
        files = [blob for _, blob in call.files.values()]
        body = dict(call.json) if isinstance(call.json, dict) else {}
        if len(parts) == 4:
            if call.method != "POST":
                raise DiscordError(405, 0, "405: Method Not Allowed")
            if channel.type == GUILD_FORUM:
                raise DiscordError(400, 40058, "Cannot send a message in a forum channel")
            if channel.archived:
                raise DiscordError(400, 50083, "Thread is archived")
            if channel.type == DM and self._dm_closed(channel.id):
                # opcodes-and-status-codes.mdx: 50007 "Cannot send messages to this user" (a
                # member who turned off DMs from the server's members or from apps).
                raise DiscordError(403, 50007, "Cannot send messages to this user")
            send = SEND_IN_THREADS if channel.type in THREAD_TYPES else SEND_MESSAGES
            if not allowed & send or (files and not allowed & ATTACH_FILES):
                raise DiscordError(403, 50013, "Missing Permissions")
            if not allowed & EMBED_LINKS:
                # permissions.mdx: EMBED_LINKS is what lets a message's links embed; without it
                # the message is sent and its embeds are not shown (not an error).
                body.pop("embeds", None)
            check_message(body, files, creating=True)
            check_upload(files, self.upload_limit(channel))
            return _json(self._message(channel.id, body, call.files))
        known = self._messages.get(parts[4])
        if known is None or known["channel_id"] != channel.id:
            raise DiscordError(404, 10008, "Unknown Message")
        if call.method == "DELETE":
            del self._messages[parts[4]]
            return web.Response(status=204)
        if call.method == "PATCH":
            if channel.archived:
                raise DiscordError(400, 50083, "Thread is archived")
            check_message(body, files, creating=False)
            check_upload(files, self.upload_limit(channel))
            return _json(self._message(channel.id, body, call.files, parts[4]))
        return _json(known)

    def _dm_closed(self, channel_id: str) -> bool:
        return any(self.dm_channels.get(user) == channel_id for user in self.dms_closed)

    def dm_posts(self, user_id: str) -> list[Call]:
        """What the bot posted in its DM with a member."""
        channel_id = self.dm_channels.get(user_id)
        return [
            c for c in self.channel_posts() if channel_id and f"/channels/{channel_id}/" in c.path
        ]

    def upload_limit(self, channel: Channel) -> int:
        """The per-file limit of a message the bot posts in a channel: its server's Boost tier
        (the member's Nitro does not count for the bot's own posts)."""
        if channel.guild_id is None:
            return DEFAULT_UPLOAD_LIMIT
        return GUILD_UPLOAD_LIMITS[self.guild_tiers.get(channel.guild_id, 0)]

    def message(self, message_id: str) -> dict[str, Any] | None:
        """A message as Discord holds it now (None: deleted or never made)."""
        return self._messages.get(message_id)


def _kept(attachment: dict[str, Any], body: dict[str, Any]) -> bool:
    """An edit's `attachments` lists the existing attachments to keep, by id."""
    return any(str(a.get("id")) == attachment["id"] for a in body.get("attachments") or [])
