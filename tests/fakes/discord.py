"""A loopback fake of Discord's REST API, CDN and gateway, enough for the bot: login, command
sync, interaction callbacks, webhook follow-ups and edits, channel messages (JSON or multipart
with files), attachment downloads, and a gateway session (HELLO, IDENTIFY, READY, heartbeats,
dispatched interactions) for the real `sam3d-bot run`. It records every call, with the time it
arrived."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import serve_on_loopback

BOT_ID = "900000000000000001"
APP_ID = "900000000000000002"
API = "/api/v10"


@dataclass
class Call:
    method: str
    path: str
    at: float
    json: dict[str, Any] | list | None = None
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # field -> (name, bytes)


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


class FakeDiscord:
    def __init__(self):
        self.calls: list[Call] = []
        self.cdn: dict[str, bytes] = {}  # file name -> bytes served under /cdn/
        self.forbidden_channels: set[str] = set()  # posting there answers 403
        self.token = ""  # when set, requests with another bot token get 401
        self._ids = itertools.count(1_000_000_000_000_000_001)
        self._messages: dict[str, dict[str, Any]] = {}
        self._originals: dict[str, str] = {}  # interaction token -> its response's message id
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.sessions: list[web.WebSocketResponse] = []  # gateway connections that identified
        self._sequence = itertools.count(1)

    @property
    def api_url(self) -> str:
        return f"{self.url}{API}"

    def cdn_url(self, name: str) -> str:
        return f"{self.url}/cdn/{name}"

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_route("*", API + "/{tail:.*}", self.api)
        app.router.add_get("/cdn/{name}", self.serve_cdn)
        app.router.add_get("/gateway", self.gateway)
        self._runner, self.url = await serve_on_loopback(app)
        return self

    async def __aexit__(self, *exc) -> None:
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
                        "guilds": [],
                        "session_id": "fake-session",
                        "shard": identity.get("shard", [0, 1]),
                        "resume_gateway_url": self.url.replace("http", "ws") + "/gateway",
                        "application": {"id": APP_ID, "flags": 0},
                        "private_channels": [],
                        "relationships": [],
                    },
                )
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
        data = self.cdn.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        call = Call(request.method, path, time.monotonic())
        await self._read_body(request, call)
        self.calls.append(call)
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
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
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
            return self._webhook(call)
        if path.startswith("/channels/"):
            return self._channel(call)
        return _json({"message": "unknown route", "code": 0}, status=404)

    async def _read_body(self, request: web.Request, call: Call) -> None:
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
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
        channel_id: str,
        body: dict[str, Any] | None,
        files: dict[str, tuple[str, bytes]],
        message_id: str | None = None,
    ) -> dict[str, Any]:
        body = body or {}
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
        message = {
            "id": message_id or str(next(self._ids)),
            "channel_id": channel_id,
            "author": user_json(BOT_ID, "sam3d", bot=True),
            "content": body.get("content", ""),
            "timestamp": "2026-11-25T12:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": body.get("embeds", []),
            "pinned": False,
            "type": 0,
            "flags": body.get("flags", 0),
            "components": body.get("components", []),
        }
        for name, data in files.values():
            self.cdn[name] = data
        self._messages[message["id"]] = message
        return message

    def _callback(self, call: Call) -> web.Response:
        interaction_id, token = call.path.split("/")[2:4]
        kind = (call.json or {}).get("type")
        message = self._message("0", (call.json or {}).get("data"), call.files)
        self._originals[token] = message["id"]
        return _json(
            {
                "interaction": {
                    "id": interaction_id,
                    "type": 2,
                    "response_message_id": message["id"],
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(
                        ((call.json or {}).get("data") or {}).get("flags", 0) & 64
                    ),
                },
                "resource": {"type": kind, "message": message}
                if kind in (4, 5)
                else {"type": kind},
            }
        )

    def _webhook(self, call: Call) -> web.Response:
        if call.method == "DELETE":
            return web.Response(status=204)
        parts = call.path.split("/")
        message_id = parts[-1] if "messages" in parts else None
        if message_id == "@original":
            message_id = self._originals.get(parts[3]) or str(next(self._ids))
        return _json(self._message("0", call.json, call.files, message_id))

    def _channel(self, call: Call) -> web.Response:
        parts = call.path.split("/")
        channel_id = parts[2]
        if call.method == "POST" and channel_id in self.forbidden_channels:
            return _json({"message": "Missing Permissions", "code": 50013}, status=403)
        if call.method == "DELETE":
            return web.Response(status=204)
        message_id = parts[4] if len(parts) > 4 else None
        return _json(self._message(channel_id, call.json, call.files, message_id))
