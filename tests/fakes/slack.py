"""A loopback fake of Slack for the bot: the Web API methods it calls, private file downloads
that check the bot token (Slack's sign-in page otherwise), file uploads, response_url hooks,
and a Socket Mode WebSocket that sends envelopes and collects their acknowledgements.
It records every call, with the time it arrived."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from PIL import Image
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from . import serve_on_loopback

PRESIGNED_HOST = "files-edge.slack.test"  # a host of its own, resolved to the fake in tests
BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-test-token"
SIGNING_SECRET = "test-signing-secret"
BOT_USER = "UBOT0001"
TEAM = "T0000TEAM"
SIGN_IN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in</body></html>"
JSON_PARAMS = ("view", "files", "blocks", "attachments")


@dataclass
class Call:
    method: str
    at: float
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlackFile:
    id: str
    name: str
    data: bytes
    mimetype: str = "image/png"
    # A free workspace's file past its history limit: Slack shows only {"id", "mode":
    # "hidden_by_limit"} (docs.slack.dev, "File object", mode).
    hidden_by_limit: bool = False


def stub_of(file: dict[str, Any]) -> dict[str, Any]:
    """A file as Slack puts it in events from a Slack Connect channel: its id and a note to
    look it up with files.info (docs.slack.dev, "Working with files", Slack Connect)."""
    return {"id": file["id"], "file_access": "check_file_info"}


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.files: dict[str, SlackFile] = {}  # shared files users have in Slack
        self.uploads: dict[str, dict[str, Any]] = {}  # file id -> name, bytes, title
        self.hooks: list[tuple[str, dict[str, Any]]] = []  # response_url posts
        self.not_member: set[str] = set()  # channels the bot is not in
        self.messages_tab = True  # the app's App Home Messages tab (DMs with the bot)
        self.admins: set[str] = set()
        self.scopes = {
            "app_mentions:read",
            "channels:history",
            "chat:write",
            "commands",
            "files:read",
            "files:write",
            "groups:history",
            "users:read",
        }  # the bot token's
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}  # (channel, ts) -> message
        self.views: dict[str, dict[str, Any]] = {}  # view id -> the view as Slack holds it
        # url_private may answer 302 to a pre-signed link on Slack's file CDN (integrators
        # report it with a valid token: the report, not Slack's docs, which only say
        # to send the token); a pre-signed host refuses a second credential, as S3-style
        # object stores do ("Only one auth mechanism allowed").
        self.redirect_downloads = False
        self.conversation_kinds: dict[str, str] = {}  # channel id -> groups, im, mpim
        # An admin revoked the token or removed the app: every method answers token_revoked
        # (docs.slack.dev, the methods' error tables).
        self.token_revoked = False
        self.unreachable: set[str] = set()
        # method -> how many of its requests the network drops (not a Slack rule)
        self.unreachable_times: dict[str, int] = {}
        self._hook_issued: dict[str, float] = {}  # response_url name -> when it was issued
        # method -> errors to answer with, in turn, as Slack does (ok: false, error: ...),
        # e.g. views.open's expired_trigger_id once its 3 s trigger has passed.
        self.failures: dict[str, list[str]] = {}
        # method -> calls allowed per second per channel, as Slack limits chat.postMessage;
        # past it the answer is 429 with Retry-After, like Slack's.
        self.per_second: dict[str, int] = {}
        self._recent: dict[tuple[str, str], list[float]] = {}
        self.rate_limited = 0
        self.envelopes_acked: dict[str, dict[str, Any]] = {}
        self.socket: web.WebSocketResponse | None = None
        self.socket_open = asyncio.Event()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._ack_waiters: dict[str, asyncio.Future] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def response_url(self, name: str = "cmd") -> str:
        """A command's response_url, issued now: Slack takes up to 5 posts to it within 30
        minutes (docs.slack.dev, "Handling user interaction", response_url)."""
        self._hook_issued.setdefault(name, time.monotonic())
        return f"{self.url}/hooks/{name}"

    def add_file(
        self, name: str, data: bytes, mimetype: str = "image/png", hidden_by_limit: bool = False
    ) -> dict[str, Any]:
        """A file a user shared; returns the file object Slack puts in payloads."""
        file = SlackFile(f"F{next(self._ids):08d}", name, data, mimetype, hidden_by_limit)
        self.files[file.id] = file
        return self.file_object(file)

    def file_object(self, file: SlackFile) -> dict[str, Any]:
        if file.hidden_by_limit:
            return {"id": file.id, "mode": "hidden_by_limit"}
        private = f"{self.url}/files-pri/{TEAM}-{file.id}/{file.name}"
        # Slack gives an image's size in pixels (original_w, original_h) with its file
        # (docs.slack.dev, "File object").
        size = {}
        if file.mimetype.startswith("image/"):
            try:
                with Image.open(io.BytesIO(file.data)) as image:
                    size = {"original_w": image.width, "original_h": image.height}
            except OSError:
                pass
        return {
            **size,
            "id": file.id,
            "name": file.name,
            "title": file.name,
            "mimetype": file.mimetype,
            "filetype": file.name.rsplit(".", 1)[-1],
            "size": len(file.data),
            "url_private": private,
            "url_private_download": private + "?download=1",
        }

    async def __aenter__(self) -> FakeSlack:
        app = web.Application(client_max_size=400 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self.api)
        app.router.add_get("/files-pri/{key}/{name}", self.download)
        app.router.add_get("/presigned/{key}", self.presigned)
        app.router.add_post("/upload/{file}", self.upload)
        app.router.add_post("/hooks/{name}", self.hook)
        app.router.add_get("/socket", self.websocket)
        self._runner, self.url = await serve_on_loopback(app)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what the tests look at ------------------------------------------------------------

    def find(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def ephemerals(self) -> list[str]:
        """Every text the user alone saw: ephemeral messages and response_url answers."""
        said = [
            c.args.get("text", "")
            for c in self.find("chat.postEphemeral")
            if c.args.get("channel") not in self.not_member
        ]
        return said + [body.get("text", "") for _, body in self.hooks]

    # -- the Web API -----------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.method == "POST":
            args.update({key: str(value) for key, value in (await request.post()).items()})
        for key in JSON_PARAMS:
            if isinstance(args.get(key), str) and args[key][:1] in "[{":
                args[key] = json.loads(args[key])
        self.calls.append(Call(method, time.monotonic(), args))
        if self.unreachable_times.get(method, 0) > 0:
            self.unreachable_times[method] -= 1
            self.unreachable.add(method)
        elif method in self.unreachable_times:
            self.unreachable.discard(method)
        if method in self.unreachable:  # the network breaks: the connection just closes
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if method == "apps.connections.open":
            if token != APP_TOKEN:
                return _ok(False, error="invalid_auth")
            return _ok(url=f"{self.url.replace('http', 'ws')}/socket")
        if token != BOT_TOKEN:
            return _ok(False, error="invalid_auth")
        if self.token_revoked:  # an admin revoked the token, or removed the app
            return _ok(False, error="token_revoked")
        failing = self.failures.get(method)
        if failing:
            return _ok(False, error=failing.pop(0))
        if self._over_limit(method, str(args.get("channel") or args.get("channel_id") or "")):
            self.rate_limited += 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"}
            )
        refused = refusal_of(method, args) or self.unseen_file(args)
        if refused is not None:
            return refused
        handler = getattr(self, "m_" + method.replace(".", "_"), None)
        if handler is None:
            return _ok(False, error="unknown_method")
        return handler(args)

    def _over_limit(self, method: str, channel: str) -> bool:
        limit = self.per_second.get(method)
        if limit is None:
            return False
        now = time.monotonic()
        recent = [t for t in self._recent.get((method, channel), []) if now - t < 1.0]
        if len(recent) >= limit:
            self._recent[(method, channel)] = recent
            return True
        self._recent[(method, channel)] = [*recent, now]
        return False

    def m_auth_test(self, args) -> web.Response:
        return _ok(
            user_id=BOT_USER,
            user="sam3d",
            team="Test team",
            team_id=TEAM,
            bot_id="B0001",
            url="https://test.slack.com/",
        )

    def m_views_open(self, args) -> web.Response:
        if not args.get("trigger_id"):
            return _ok(False, error="invalid_trigger_id")
        return _ok(view=self._keep_view(f"V{next(self._ids):08d}", args["view"]))

    def m_views_update(self, args) -> web.Response:
        """views.update (docs.slack.dev/reference/methods/views.update): a view Slack has, by
        view_id, and its hash "to protect against possible race conditions"; the errors
        from the method's table: not_found, hash_conflict."""
        known = self.views.get(str(args.get("view_id") or ""))
        if known is None:
            return _ok(False, error="not_found")
        if args.get("hash") and args["hash"] != known["hash"]:
            return _ok(False, error="hash_conflict")
        return _ok(view=self._keep_view(known["id"], args["view"]))

    def _keep_view(self, view_id: str, view: dict[str, Any]) -> dict[str, Any]:
        kept = {**view, "id": view_id, "hash": f"{time.time():.6f}.{next(self._ids)}"}
        self.views[view_id] = kept
        return kept

    def unseen_file(self, args: dict[str, Any]) -> web.Response | None:
        """An image block's slack_file must be a file the people shown it may see: one
        shared somewhere, not one the app uploaded without a channel. Source: the Slack file
        object's docs ("the user posting these blocks must have access to this file") and
        the answer Slack gives, quoted in slackapi/python-slack-sdk#1658: invalid_blocks,
        "invalid slack file"."""
        blocks = list(args.get("blocks") or []) + list((args.get("view") or {}).get("blocks") or [])
        for block in blocks:
            file_id = ((block or {}).get("slack_file") or {}).get("id")
            if file_id is None:
                continue
            upload = self.uploads.get(file_id)
            shared = file_id in self.files or (
                upload is not None and upload.get("channel") and not upload.get("deleted")
            )
            if not shared:
                error = "invalid_arguments" if "view" in args else "invalid_blocks"
                return _ok(False, error=error, errors=["invalid slack file"])
        return None

    def m_chat_postMessage(self, args) -> web.Response:
        channel = args["channel"]
        if channel in self.not_member:
            return _ok(False, error="not_in_channel")
        if channel[:1] in ("U", "W"):
            # docs.slack.dev/reference/methods/chat.postMessage: `channel` may be a user's id,
            # which posts in the app's DM with them (its Messages tab), the answer naming
            # that conversation; its error table: messages_tab_disabled, "Messages tab for
            # the app is disabled".
            if not self.messages_tab:
                return _ok(False, error="messages_tab_disabled")
            channel = "D" + channel[1:]
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        return _ok(channel=channel, ts=ts, message={"text": args.get("text"), "ts": ts})

    def m_chat_update(self, args) -> web.Response:
        return _ok(channel=args["channel"], ts=args["ts"], text=args.get("text"))

    def m_chat_delete(self, args) -> web.Response:
        self.messages.pop((args["channel"], args["ts"]), None)
        return _ok(channel=args["channel"], ts=args["ts"])

    def m_chat_postEphemeral(self, args) -> web.Response:
        if args["channel"] in self.not_member:
            return _ok(False, error="not_in_channel")
        return _ok(message_ts=f"{int(time.time())}.{next(self._ts):06d}")

    def m_files_getUploadURLExternal(self, args) -> web.Response:
        file_id = f"F{next(self._ids):08d}"
        self.uploads[file_id] = {
            "name": args["filename"],
            "length": int(args["length"]),
            "data": None,
        }
        return _ok(upload_url=f"{self.url}/upload/{file_id}", file_id=file_id)

    def m_files_completeUploadExternal(self, args) -> web.Response:
        if args.get("channel_id") in self.not_member:
            return _ok(False, error="not_in_channel")
        done = []
        channel = args.get("channel_id")
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        if channel:  # the upload's own message in the channel, with the comment
            self.messages[(channel, ts)] = {"ts": ts, "text": args.get("initial_comment")}
        for item in args["files"]:
            upload = self.uploads.get(item["id"])
            if upload is None or upload["data"] is None:
                return _ok(False, error="file_not_found")
            upload.update(
                title=item.get("title"),
                channel=args.get("channel_id"),
                thread_ts=args.get("thread_ts"),
                comment=args.get("initial_comment"),
            )
            # Where the file shows: "shares": {"public": {channel: [{"ts": ...}]}} ("File
            # object"; Slack may fill it a moment after the upload returns).
            shared = {"shares": {"public": {channel: [{"ts": ts}]}}} if channel else {}
            done.append(
                {"id": item["id"], "title": item.get("title"), "name": upload["name"], **shared}
            )
        return _ok(files=done)

    def m_conversations_replies(self, args) -> web.Response:
        # The history scope of the conversation's kind (conversations.replies: channels:,
        # groups:, im: or mpim:history); Slack names the one needed.
        kind = self.conversation_kinds.get(args["channel"], "channels")
        if f"{kind}:history" not in self.scopes:
            return _ok(False, error="missing_scope", needed=f"{kind}:history")
        parent = self.messages.get((args["channel"], args["ts"]))
        if parent is None:
            return _ok(False, error="thread_not_found")
        return _ok(messages=[parent], has_more=False)

    def m_files_delete(self, args) -> web.Response:
        upload = self.uploads.get(args.get("file", ""))
        if upload is None or upload.get("deleted"):
            return _ok(False, error="file_not_found")
        upload["deleted"] = True
        return _ok()

    def m_files_info(self, args) -> web.Response:
        file = self.files.get(args.get("file", ""))
        if file is None:
            return _ok(False, error="file_not_found")
        return _ok(file=self.file_object(file))

    def m_users_info(self, args) -> web.Response:
        user = args["user"]
        admin = user in self.admins
        return _ok(
            user={
                "id": user,
                "name": user.lower(),
                "team_id": TEAM,
                "is_admin": admin,
                "is_owner": False,
                "is_primary_owner": False,
            }
        )

    # -- files, hooks and the socket -------------------------------------------------------

    async def download(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["key"].split("-", 1)[1])
        self.calls.append(
            Call("download", time.monotonic(), {"auth": request.headers.get("Authorization", "")})
        )
        if (
            request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}"
            or "files:read" not in self.scopes
        ):
            # Slack answers a request without the right token with its sign-in page.
            return web.Response(body=SIGN_IN_PAGE, content_type="text/html")
        if file is None:
            return web.Response(status=404)
        if self.redirect_downloads:
            port = urlsplit(self.url).port
            key = request.match_info["key"]
            raise web.HTTPFound(f"http://{PRESIGNED_HOST}:{port}/presigned/{key}?sig=fake-sig")
        return web.Response(body=file.data, content_type=file.mimetype)

    async def presigned(self, request: web.Request) -> web.Response:
        """Slack's file CDN behind a pre-signed link: the signature is the credential, and a
        request that brings a token as well is refused (as pre-signed object stores do)."""
        self.calls.append(
            Call("presigned", time.monotonic(), {"auth": request.headers.get("Authorization", "")})
        )
        if request.headers.get("Authorization") or request.query.get("sig") != "fake-sig":
            return web.Response(status=400, text="Only one auth mechanism allowed")
        file = self.files.get(request.match_info["key"].split("-", 1)[1])
        if file is None:
            return web.Response(status=404)
        return web.Response(body=file.data, content_type=file.mimetype)

    async def upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file"])
        if upload is None:
            return web.Response(status=404)
        upload["data"] = await request.read()
        return web.Response(text=f"OK - {len(upload['data'])}")

    async def hook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        issued = self._hook_issued.setdefault(name, time.monotonic())
        if time.monotonic() - issued > HOOK_LIFETIME_S:
            return web.Response(status=404, text="expired_url")
        if sum(1 for used, _ in self.hooks if used == name) >= HOOK_USES:
            return web.Response(status=404, text="used_url")
        if body.get("blocks"):
            refused = refusal_of("chat.postMessage", body)
            if refused is not None:
                return web.Response(status=400, text="invalid_blocks")
        self.hooks.append((name, body))
        return web.Response(text="ok")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.socket = socket
        await socket.send_json(
            {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0001"}}
        )
        self.socket_open.set()
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            ack = json.loads(message.data)
            envelope = ack.get("envelope_id")
            self.envelopes_acked[envelope] = ack
            waiter = self._ack_waiters.pop(envelope, None)
            if waiter is not None and not waiter.done():
                waiter.set_result((time.monotonic(), ack))
        return socket

    async def send_envelope(
        self, kind: str, payload: dict[str, Any], retry: int = 0
    ) -> tuple[float, dict[str, Any]]:
        """Send one Socket Mode envelope; returns (seconds until acknowledged, the ack)."""
        await asyncio.wait_for(self.socket_open.wait(), 10)
        envelope = str(uuid.uuid4())
        waiter = asyncio.get_running_loop().create_future()
        self._ack_waiters[envelope] = waiter
        sent = time.monotonic()
        assert self.socket is not None  # socket_open is set once it is
        await self.socket.send_json(
            {
                "envelope_id": envelope,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind != "events_api",
                "retry_attempt": retry,
                "retry_reason": "timeout" if retry else "",
            }
        )
        at, ack = await asyncio.wait_for(waiter, 10)
        return at - sent, ack


HOOK_USES, HOOK_LIFETIME_S = 5, 30 * 60  # a response_url: 5 posts within 30 minutes
TEXT_MAX = 40_000  # chat.postMessage: "msg_too_long" past 40,000 characters (docs.slack.dev)


def refusal_of(method: str, args: dict[str, Any]) -> web.Response | None:
    """What Slack refuses before it acts: blocks and views that break Block Kit's rules (as
    slack_sdk.models, built from Slack's own limits, checks them): invalid_blocks and
    invalid_arguments; text over 40,000 characters: msg_too_long."""
    if method.startswith("chat.") and len(str(args.get("text") or "")) > TEXT_MAX:
        return _ok(False, error="msg_too_long")
    if method.startswith("chat.") and args.get("blocks"):
        try:
            for block in args["blocks"]:
                parsed = Block.parse(block)
                if parsed is None:
                    raise SlackObjectFormationError(f"unknown block {block.get('type')}")
                parsed.validate_json()
        except (SlackObjectFormationError, TypeError, AttributeError) as exc:
            return _ok(False, error="invalid_blocks", errors=[str(exc)])
    if method.startswith("views.") and "view" in args:
        try:
            View(**args["view"]).validate_json()
        except (SlackObjectFormationError, TypeError) as exc:
            return _ok(False, error="invalid_arguments", response_metadata={"messages": [str(exc)]})
    return None


def _ok(ok: bool = True, **fields: Any) -> web.Response:
    return web.json_response({"ok": ok, **fields})
