"""Photos shared in Slack: downloaded from `url_private` with the bot token.

Slack may answer `url_private` with a redirect to a pre-signed link on its file CDN; the
redirects are followed (a few hops), and the token goes only to Slack's own hosts (or the host
of SLACK_API_URL, for proxies and tests), never to a pre-signed or any other host, which is
reached without it through the guarded session (public addresses only). Without the
files:read scope Slack answers with its sign-in page instead of the file: that is recognised
and explained.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from bot.errors import InputError
from bot.images import MAX_REDIRECTS, REDIRECTS, read_capped

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
        foreign_session: aiohttp.ClientSession | None = None,
    ):
        self._session = session
        self._foreign = foreign_session or session
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
            async with asyncio.timeout(self._timeout_s):
                data, media_type = await self._fetch(url, name, field)
        except TimeoutError:
            raise InputError(
                field, f"downloading {name} from Slack took longer than {self._timeout_s:g} s"
            ) from None
        except aiohttp.ClientError:
            raise InputError(field, f"downloading {name} from Slack failed; try again") from None
        if media_type.startswith("text/html") or looks_like_html(data):
            raise InputError(field, SIGN_IN_PAGE)
        return data

    async def _fetch(self, url: str, name: str, field: str) -> tuple[bytes, str]:
        """Follow Slack's redirects by hand, the token only to Slack's hosts."""
        for _ in range(MAX_REDIRECTS + 1):
            own = self.token_may_go_to(url)
            session = self._session if own else self._foreign
            headers = {"Authorization": f"Bearer {self._token}"} if own else {}
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECTS and location:
                    url = urljoin(url, location)
                    if urlsplit(url).scheme not in ("http", "https"):
                        break
                    continue
                if response.status != 200:
                    raise InputError(
                        field, f"Slack would not give me {name} (HTTP {response.status})"
                    )
                data = await read_capped(response, field, self._max_bytes)
                return data, response.headers.get("Content-Type", "")
        raise InputError(field, f"Slack sent me round in circles for {name}; try again")


def looks_like_html(data: bytes) -> bool:
    return data[:256].lstrip().lower().startswith((b"<!doctype html", b"<html"))
