"""Slack payloads shaped as Slack sends them (slash commands, message shortcuts, view
submissions, app_mention events, block actions), and the signing of HTTP requests."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from typing import Any
from urllib.parse import urlencode

from tests.fakes.slack import BOT_USER, SIGNING_SECRET, TEAM

CHANNEL = "C0000CHAN"
ALICE = "U0000ALICE"
BOB = "U0000BOB"
_serial = itertools.count(1)


def _next(prefix: str) -> str:
    return f"{prefix}{next(_serial):08d}"


def slash(
    text: str = "",
    user: str = ALICE,
    channel: str = CHANNEL,
    response_url: str = "",
    trigger_id: str | None = None,
) -> dict[str, str]:
    return {
        "token": "legacy",
        "team_id": TEAM,
        "team_domain": "test",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": user.lower(),
        "command": "/sam3d",
        "text": text,
        "api_app_id": "A0001",
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _next("trigger."),
    }


def _user(user: str) -> dict[str, str]:
    return {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM}


def shortcut(
    files: list[dict[str, Any]],
    user: str = ALICE,
    channel: str = CHANNEL,
    response_url: str = "",
    message_ts: str = "1700000000.000100",
    trigger_id: str | None = None,
) -> dict[str, Any]:
    return {
        "type": "message_action",
        "token": "legacy",
        "action_ts": f"{time.time():.6f}",
        "team": {"id": TEAM, "domain": "test"},
        "user": _user(user),
        "channel": {"id": channel, "name": "general"},
        "is_enterprise_install": False,
        "callback_id": "sam3d_make",
        "trigger_id": trigger_id or _next("trigger."),
        "response_url": response_url,
        "message_ts": message_ts,
        "message": {
            "type": "message",
            "user": BOB,
            "ts": message_ts,
            "text": "look",
            "files": files,
            "upload": False,
        },
    }


def view_submission(
    view: dict[str, Any],
    values: dict[str, dict[str, Any]],
    user: str = ALICE,
    view_id: str | None = None,
) -> dict[str, Any]:
    """The modal `view` (as opened) submitted with `values`: block id -> element value."""
    state = {block: {block: value} for block, value in values.items()}
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "test"},
        "user": _user(user),
        "api_app_id": "A0001",
        "token": "legacy",
        "trigger_id": _next("trigger."),
        "is_enterprise_install": False,
        "view": {
            **view,
            "id": view_id or _next("V"),
            "team_id": TEAM,
            "state": {"values": state},
            "hash": "h1",
        },
    }


DM = "D0000ALICE"  # the bot's DM with Alice (its Messages tab)


def view_action(
    view: dict[str, Any],
    action: str,
    values: dict[str, dict[str, Any]],
    user: str = ALICE,
) -> dict[str, Any]:
    """A change in an open modal (`view` as Slack holds it, with its id and hash): Slack sends
    block_actions with the view's whole state; `values` is block id -> element value (one
    element a block, its action id the block's)."""
    state = {block: {block: value} for block, value in values.items()}
    return {
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "test"},
        "user": _user(user),
        "api_app_id": "A0001",
        "token": "legacy",
        "trigger_id": _next("trigger."),
        "container": {"type": "view", "view_id": view["id"]},
        "view": {**view, "team_id": TEAM, "state": {"values": state}},
        "actions": [
            {
                "type": values.get(action, {}).get("type", "static_select"),
                "action_id": action,
                "block_id": action,
                "action_ts": f"{time.time():.6f}",
                **{k: v for k, v in values.get(action, {}).items() if k != "type"},
            }
        ],
    }


def view_closed(view: dict[str, Any], user: str = ALICE) -> dict[str, Any]:
    return {
        "type": "view_closed",
        "team": {"id": TEAM, "domain": "test"},
        "user": _user(user),
        "api_app_id": "A0001",
        "token": "legacy",
        "view": {**view, "team_id": TEAM},
        "is_cleared": False,
    }


def direct_message(
    text: str,
    files: list[dict[str, Any]] | None = None,
    user: str | None = ALICE,
    **more: Any,
) -> dict[str, Any]:
    """A message in the bot's Messages tab (message.im), as Slack sends it: channel_type im,
    subtype file_share when it carries files."""
    ts = f"{time.time():.6f}"
    event: dict[str, Any] = {
        "type": "message",
        "channel": DM,
        "channel_type": "im",
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "team": TEAM,
        **more,
    }
    if user is not None:
        event["user"] = user
    if files:
        event["files"] = files
        event["subtype"] = "file_share"
    return {
        "token": "legacy",
        "team_id": TEAM,
        "api_app_id": "A0001",
        "event": event,
        "type": "event_callback",
        "event_id": _next("Ev"),
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
    }


def app_event(kind: str, **fields: Any) -> dict[str, Any]:
    """An event about the app itself (app_uninstalled, tokens_revoked), as Slack sends it."""
    return {
        "token": "legacy",
        "team_id": TEAM,
        "api_app_id": "A0001",
        "event": {"type": kind, "event_ts": f"{time.time():.6f}", **fields},
        "type": "event_callback",
        "event_id": _next("Ev"),
        "event_time": int(time.time()),
    }


def mention(
    text: str,
    files: list[dict[str, Any]] | None = None,
    user: str = ALICE,
    channel: str = CHANNEL,
    event_id: str | None = None,
    thread_ts: str | None = None,
) -> dict[str, Any]:
    ts = f"{time.time():.6f}"
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        "team": TEAM,
    }
    if files:
        event["files"] = files
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {
        "token": "legacy",
        "team_id": TEAM,
        "api_app_id": "A0001",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or _next("Ev"),
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
    }


def button(
    value: str,
    user: str = ALICE,
    channel: str = CHANNEL,
    action: str = "sam3d_new_seed",
    response_url: str = "",
) -> dict[str, Any]:
    ts = f"{time.time():.6f}"
    return {
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "test"},
        "user": _user(user),
        "api_app_id": "A0001",
        "token": "legacy",
        "trigger_id": _next("trigger."),
        "channel": {"id": channel, "name": "general"},
        "container": {"type": "message", "message_ts": ts, "channel_id": channel},
        "message": {"type": "message", "ts": ts, "text": "done"},
        "response_url": response_url,
        "actions": [
            {
                "type": "button",
                "action_id": action,
                "block_id": "b",
                "value": value,
                "action_ts": ts,
            }
        ],
    }


# -- HTTP mode: bodies as Slack sends them, signed ---------------------------------------


def form_body(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def interactive_body(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def event_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def signed_headers(
    body: bytes,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    content_type: str = "application/x-www-form-urlencoded",
) -> dict[str, str]:
    """Slack's v0 signature: HMAC-SHA256 of "v0:<timestamp>:<body>" with the signing secret."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(
        secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256
    ).hexdigest()
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": content_type,
    }
