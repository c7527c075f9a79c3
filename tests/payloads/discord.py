"""Interaction payloads in the shape Discord sends them (INTERACTION_CREATE): slash commands in
a server and in a DM with resolved attachments, a message command, a modal submit and a button
press. Ids are made up; the fields and types are Discord's."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import discord

from tests.fakes.discord import APP_ID

GUILD_ID = "800000000000000001"
CHANNEL_ID = "800000000000000002"
ALICE_ID = "700000000000000001"
BOB_ID = "700000000000000002"
ADMIN_ID = "700000000000000009"
_sequence = itertools.count(1)


class _Ids:
    """Snowflakes as Discord makes them: the time is in the id (interaction tokens' age is
    read from it)."""

    def __next__(self) -> int:
        now = datetime.now(UTC)
        return discord.utils.time_snowflake(now) + next(_sequence) % 4096


_ids = _Ids()

BOT_CAN = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    use_application_commands=True,
)
MEMBER_CAN = discord.Permissions(
    send_messages=True, attach_files=True, embed_links=True, use_application_commands=True
)
ADMIN_CAN = discord.Permissions(MEMBER_CAN.value | discord.Permissions(manage_guild=True).value)


def _user(user_id: str) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": f"user{user_id[-2:]}",
        "discriminator": "0",
        "global_name": None,
        "avatar": None,
    }


def attachment(name: str, url: str, size: int, content_type: str = "image/png") -> dict[str, Any]:
    return {
        "id": str(next(_ids)),
        "filename": name,
        "size": size,
        "url": url,
        "proxy_url": url,
        "content_type": content_type,
        "width": 640,
        "height": 480,
    }


def base(
    kind: int,
    data: dict[str, Any],
    *,
    user_id: str = ALICE_ID,
    guild: bool = True,
    permissions: discord.Permissions = MEMBER_CAN,
    app_permissions=BOT_CAN,
    roles: tuple[str, ...] = (),
    size_limit: int = 10 * 1024 * 1024,
    message: dict[str, Any] | None = None,
    channel: dict[str, Any] | None = None,
    installed_by_user: bool = False,
    context: int | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(next(_ids)),
        "application_id": APP_ID,
        "type": kind,
        "token": f"token-{next(_ids)}",
        "version": 1,
        "data": data,
        "locale": "en-US",
        "channel_id": CHANNEL_ID,
        "app_permissions": str(app_permissions.value),
        "entitlements": [],
        "attachment_size_limit": size_limit,
    }
    if guild:
        payload.update(
            {
                "guild_id": GUILD_ID,
                "guild_locale": "en-US",
                "context": 0,
                "channel": {
                    "id": CHANNEL_ID,
                    "type": 0,
                    "guild_id": GUILD_ID,
                    "name": "models",
                    "position": 0,
                    "permission_overwrites": [],
                    "nsfw": False,
                    "parent_id": None,
                },
                "member": {
                    "user": _user(user_id),
                    "roles": list(roles),
                    "joined_at": "2026-01-01T00:00:00+00:00",
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                    "permissions": str(permissions.value),
                },
                "authorizing_integration_owners": {"0": GUILD_ID},
            }
        )
    else:
        payload.update(
            {
                "context": 1,
                "user": _user(user_id),
                "channel": {"id": CHANNEL_ID, "type": 1, "recipients": [_user(user_id)]},
                "authorizing_integration_owners": {"0": GUILD_ID},
            }
        )
    if installed_by_user:
        # A user-installed app: the member installed it, the server did not; Discord gives
        # the bot no permissions in a channel it was never let into.
        payload["authorizing_integration_owners"] = {"1": user_id}
        if guild:
            payload["app_permissions"] = "0"
    if context is not None:
        payload["context"] = context
    if message is not None:
        payload["message"] = message
    if channel is not None and guild:
        payload["channel"], payload["channel_id"] = channel, channel["id"]
    return payload


def thread(thread_id: str, parent_id: str = CHANNEL_ID) -> dict[str, Any]:
    """A public thread in `parent_id` (a forum post is one too), as an interaction's channel."""
    return {
        "id": thread_id,
        "type": 11,
        "guild_id": GUILD_ID,
        "parent_id": parent_id,
        "owner_id": ALICE_ID,
        "name": "a thread",
        "member_count": 1,
        "message_count": 0,
        "rate_limit_per_user": 0,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": "2026-11-25T12:00:00+00:00",
            "locked": False,
        },
    }


def text_channel(channel_id: str, category_id: str | None = None) -> dict[str, Any]:
    return {
        "id": channel_id,
        "type": 0,
        "guild_id": GUILD_ID,
        "name": "models",
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": category_id,
    }


def slash(
    name: str,
    options: list[dict[str, Any]] | None = None,
    attachments: list[dict[str, Any]] | None = None,
    **kw,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(next(_ids)),
        "name": name,
        "type": 1,
        "options": options or [],
    }
    if attachments:
        data["resolved"] = {"attachments": {a["id"]: a for a in attachments}}
    return base(2, data, **kw)


def sam3d(image: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """/sam3d with an attachment (or image_url=...) and any other options."""
    kw = {
        k: options.pop(k)
        for k in list(options)
        if k
        in (
            "user_id",
            "guild",
            "permissions",
            "app_permissions",
            "roles",
            "size_limit",
            "channel",
            "installed_by_user",
            "context",
        )
    }
    types = {
        "image_url": 3,
        "prompt": 3,
        "bbox": 3,
        "points": 3,
        "seed": 4,
        "artifacts": 5,
        "pick": 5,
        "variations": 4,
        "private": 5,
    }
    opts = [{"name": name, "type": types[name], "value": value} for name, value in options.items()]
    if image is not None:
        opts.insert(0, {"name": "image", "type": 11, "value": image["id"]})
    return slash("sam3d", opts, [image] if image else None, **kw)


def admin(
    sub: str,
    options: list[dict[str, Any]] | None = None,
    resolved: dict[str, Any] | None = None,
    **kw,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(next(_ids)),
        "name": "sam3d-admin",
        "type": 1,
        "options": [{"name": sub, "type": 1, "options": options or []}],
    }
    if resolved:
        data["resolved"] = resolved
    return base(2, data, **kw)


def channel_option(channel_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A channel option and its resolved channel, as Discord sends them."""
    resolved = {
        "channels": {
            channel_id: {
                "id": channel_id,
                "type": 0,
                "name": "models-only",
                "permissions": str(MEMBER_CAN.value),
                "guild_id": GUILD_ID,
            }
        }
    }
    return [{"name": "channel", "type": 7, "value": channel_id}], resolved


def message_json(message_id: str, attachments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": message_id,
        "channel_id": CHANNEL_ID,
        "author": _user(BOB_ID),
        "content": "look at this",
        "timestamp": "2026-11-25T12:00:00+00:00",
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments,
        "embeds": [],
        "pinned": False,
        "type": 0,
        "components": [],
    }


def make_3d(attachments: list[dict[str, Any]], **kw) -> dict[str, Any]:
    message_id = str(next(_ids))
    message = message_json(message_id, attachments)
    data = {
        "id": str(next(_ids)),
        "name": "Make 3D model",
        "type": 3,
        "target_id": message_id,
        "resolved": {"messages": {message_id: message}},
    }
    return base(2, data, **kw)


def modal_submit(
    custom_id: str,
    values: dict[str, str],
    checkboxes: dict[str, bool] | None = None,
    groups: dict[str, list[str]] | None = None,
    **kw,
) -> dict[str, Any]:
    """A form sent: text inputs in their action rows; checkboxes and checkbox groups inside
    their labels, each with its `value` or `values` (components/reference.mdx, "Checkbox
    Interaction Response Structure", "Checkbox Group Interaction Response Structure")."""
    rows: list[dict[str, Any]] = [
        {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]}
        for key, value in values.items()
    ]
    inside = [
        *(
            {"type": 23, "custom_id": key, "value": checked}
            for key, checked in (checkboxes or {}).items()
        ),
        *(
            {"type": 22, "custom_id": key, "values": chosen}
            for key, chosen in (groups or {}).items()
        ),
    ]
    for number, component in enumerate(inside, start=len(rows) + 1):
        rows.append(
            {"type": 18, "id": number * 2, "component": {**component, "id": number * 2 + 1}}
        )
    return base(5, {"custom_id": custom_id, "components": rows}, **kw)


def button(custom_id: str, message_id: str = "500000000000000001", **kw) -> dict[str, Any]:
    message = message_json(message_id, [])
    message["author"] = {**_user("900000000000000001"), "bot": True}
    message["components"] = [
        {
            "type": 1,
            "components": [{"type": 2, "style": 1, "label": "button", "custom_id": custom_id}],
        }
    ]
    return base(3, {"custom_id": custom_id, "component_type": 2}, message=message, **kw)
