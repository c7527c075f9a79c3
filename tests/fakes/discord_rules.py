"""What Discord checks in a request before it acts, taken from Discord's own descriptions, never
from the bot: the OpenAPI document (../shared/specs/discord-openapi.json) for the shape of every
body, and the documented limits that document leaves out (developers/resources/message.mdx:
content "up to 2000 characters", the embeds' 6000 characters in all, at most 10 files, "Cannot
send an empty message"; developers/reference.mdx: each file within the upload limit, "the
maximum request size when sending a message is 25 MiB"), answered with the documented error
codes (developers/topics/opcodes-and-status-codes.mdx)."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.helpers import ROOT

SPEC = ROOT.parent / "shared" / "specs" / "discord-openapi.json"
MiB = 1024 * 1024
CONTENT_MAX = 2000
EMBEDS_TOTAL_MAX = 6000
FILES_MAX = 10
REQUEST_MAX = 25 * MiB
DEFAULT_UPLOAD_LIMIT = 10 * MiB  # per file, for everyone (reference.mdx, "Uploading Files")
# A server's per-file limit by its Boost tier (guild.mdx premium_tier; Discord's support
# article on Server Boosting: 10 MiB, tier 2 50 MiB, tier 3 100 MiB).
GUILD_UPLOAD_LIMITS = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}


class DiscordError(Exception):
    """An answer Discord gives instead of doing what was asked."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return web.Response(
            body=json.dumps(body).encode(), status=self.status, content_type="application/json"
        )


def invalid_form(path: list[str | int], code: str, message: str) -> DiscordError:
    """50035 with Discord's nested `errors` object, e.g. {"content": {"_errors": [...]}}."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path):
        errors = {str(key): errors}
    return DiscordError(400, 50035, "Invalid Form Body", errors)


# -- the OpenAPI document ---------------------------------------------------------------------


class Spec:
    """Request bodies checked against the operation's schema in Discord's OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        document = copy.deepcopy(document)
        # Discord reads a snowflake sent as a JSON integer as well as a string (clients have
        # sent integer ids for years, discord.py among them); the document, which describes
        # what Discord returns, allows strings only.
        document["components"]["schemas"]["SnowflakeType"] = {
            "oneOf": [
                {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"},
                {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
            ]
        }
        # GUILD_MEDIA (16) is a channel type in resources/channel.mdx ("Channel that can only
        # contain threads, similar to GUILD_FORUM channels") that the document's enum lacks.
        document["components"]["schemas"]["ChannelTypes"]["oneOf"].append(
            {"title": "GUILD_MEDIA", "const": 16}
        )
        self._registry = Registry().with_resource(
            "urn:discord", Resource.from_contents(document, default_specification=DRAFT202012)
        )
        self._routes = sorted(
            (
                (_template(path), path, method, operation)
                for path, item in document["paths"].items()
                for method, operation in item.items()
                if method in ("get", "post", "put", "patch", "delete")
            ),
            # "/messages/@original" before "/messages/{message_id}"
            key=lambda route: -route[1].count("/") * 10 + route[1].count("{"),
        )
        self._document = document

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        for pattern, template, verb, operation in self._routes:
            if verb == method.lower() and pattern.fullmatch(path):
                return template, operation
        return None

    def check(self, method: str, path: str, content_type: str, body: Any) -> None:
        """Raise Discord's 50035 for a body its operation's schema does not allow."""
        found = self.operation(method, path)
        if found is None:
            raise DiscordError(404, 0, "404: Not Found")
        template, operation = found
        request = operation.get("requestBody")
        if request is None or body is None:
            return
        kind = "multipart/form-data" if content_type.startswith("multipart/") else content_type
        media = request["content"].get(kind) or request["content"].get("application/json")
        if media is None:
            raise DiscordError(400, 50035, "Invalid Form Body (Content-Type)")
        pointer = _pointer_of(template, method, kind)
        validator = Draft202012Validator(
            {"$ref": f"urn:discord#{pointer}"}, registry=self._registry
        )
        error = best_match(validator.iter_errors(body))
        if error is not None:
            raise invalid_form(list(error.absolute_path), "SCHEMA", error.message[:200])


def _template(path: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^}]+\\\}", r"[^/]+", re.escape(path)))


def _pointer_of(template: str, method: str, kind: str) -> str:
    escaped = template.replace("~", "~0").replace("/", "~1")
    return f"/paths/{escaped}/{method.lower()}/requestBody/content/{kind.replace('/', '~1')}/schema"


@cache
def spec() -> Spec | None:
    """Discord's OpenAPI document, or None where ../shared is absent (the documented limits
    still hold then)."""
    if not SPEC.exists():
        return None
    return Spec(json.loads(SPEC.read_text()))


# -- the documented limits ---------------------------------------------------------------------


def check_message(body: dict[str, Any], files: list[bytes], *, creating: bool) -> None:
    """A message's documented limits (create, edit, follow-up, interaction response)."""
    content = body.get("content")
    if isinstance(content, str) and len(content) > CONTENT_MAX:
        raise invalid_form(
            ["content"], "BASE_TYPE_MAX_LENGTH", f"Must be {CONTENT_MAX} or fewer in length."
        )
    embeds = body.get("embeds") or []
    total = sum(_embed_characters(embed) for embed in embeds if isinstance(embed, dict))
    if total > EMBEDS_TOTAL_MAX:
        raise invalid_form(
            ["embeds"], "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
        )
    if len(files) > FILES_MAX:
        raise invalid_form(
            ["attachments"], "BASE_TYPE_MAX_LENGTH", f"Must be {FILES_MAX} or fewer in length."
        )
    if creating and not (content or embeds or files or body.get("components")):
        raise DiscordError(400, 50006, "Cannot send an empty message")


def check_upload(files: list[bytes], per_file_limit: int) -> None:
    """413 (40005) when a file is over the limit that applies to this message, or the whole
    request is over 25 MiB."""
    if any(len(data) > per_file_limit for data in files) or sum(map(len, files)) > REQUEST_MAX:
        raise DiscordError(413, 40005, "Request entity too large")


def _embed_characters(embed: dict[str, Any]) -> int:
    def text(value: Any) -> int:
        return len(value.strip()) if isinstance(value, str) else 0

    total = text(embed.get("title")) + text(embed.get("description"))
    total += text((embed.get("footer") or {}).get("text"))
    total += text((embed.get("author") or {}).get("name"))
    for field in embed.get("fields") or []:
        total += text(field.get("name")) + text(field.get("value"))
    return total
