"""Photos shared in Slack: downloaded from `url_private` with the bot token.

The token goes only to Slack's own hosts (or the host of SLACK_API_URL, for proxies and
tests), never to a redirect elsewhere. Without the files:read scope Slack answers with its
sign-in page instead of the file: that is recognised and explained.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bot.errors import InputError
from bot.images import read_capped

SIGN_IN_PAGE = (
    "Slack sent me its sign-in page instead of the photo: this app lacks the "
    "files:read scope. An admin should add it (it is in the app manifest) and "
    "reinstall the app."
)


class SlackFiles:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        token: str,
        api_url: str,
        max_bytes: int,
        timeout_s: float,
    ):
        self._session = session
        self._token = token
        self._api_host = urlsplit(api_url).hostname or ""
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s

    def token_may_go_to(self, url: str) -> bool:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host == self._api_host:
            return parts.scheme in ("http", "https")
        return parts.scheme == "https" and (host == "slack.com" or host.endswith(".slack.com"))

    async def download(self, file: dict[str, Any], field: str = "image") -> bytes:
        """The bytes of a Slack file object (as in events, shortcuts and forms)."""
        name = file.get("name") or "the file"
        if (file.get("size") or 0) > self._max_bytes:
            raise InputError(field, f"{name} is larger than {self._max_bytes // 1_000_000} MB")
        url = file.get("url_private_download") or file.get("url_private")
        if not url:
            raise InputError(
                field, f"Slack did not share {name} with me; upload it again in a channel I am in"
            )
        if not self.token_may_go_to(url):
            raise InputError(field, f"{name} is not stored on Slack")
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.get(
                    url, headers={"Authorization": f"Bearer {self._token}"}, allow_redirects=False
                ) as response,
            ):
                if response.status in (301, 302, 303, 307, 308):
                    raise InputError(field, SIGN_IN_PAGE)  # Slack redirects to sign in
                if response.status != 200:
                    raise InputError(
                        field, f"Slack would not give me {name} (HTTP {response.status})"
                    )
                data = await read_capped(response, field, self._max_bytes)
                media_type = response.headers.get("Content-Type", "")
        except TimeoutError:
            raise InputError(
                field, f"downloading {name} from Slack took longer than {self._timeout_s:g} s"
            ) from None
        except aiohttp.ClientError:
            raise InputError(field, f"downloading {name} from Slack failed; try again") from None
        if media_type.startswith("text/html") or looks_like_html(data):
            raise InputError(field, SIGN_IN_PAGE)
        return data


def looks_like_html(data: bytes) -> bool:
    return data[:256].lstrip().lower().startswith((b"<!doctype html", b"<html"))
