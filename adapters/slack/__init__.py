"""Slack adapter (slack-bolt, async): found by the core through the `sam3d_bot.adapters` entry
point. Slack's types stop in this package.

Socket Mode when SLACK_APP_TOKEN is set (no public URL needed); otherwise HTTP mode, with
Slack's requests arriving at /slack/events on the bot's own web server, signed with
SLACK_SIGNING_SECRET.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import AdapterFailed
from bot.outages import until_reachable

from .app import SlackBot, slack_outage

if TYPE_CHECKING:
    from bot.app import Core
    from bot.settings import Settings

log = logging.getLogger(__name__)
EVENTS_PATH = "/slack/events"
RATE_LIMIT_RETRIES = 30


class SlackAdapter:
    name = "slack"

    def __init__(self) -> None:
        self.bot: SlackBot | None = None
        self.socket: AsyncSocketModeHandler | None = None

    def enabled(self, settings: Settings) -> bool:
        return bool(settings.slack_bot_token.get_secret_value())

    def ready(self) -> bool:
        if self.bot is None or not self.bot.connected:
            return False
        if self.socket is None:
            return True
        client = self.socket.client  # its is_connected() is a coroutine; the same test here
        return (
            not client.closed
            and not client.stale
            and client.current_session is not None
            and not client.current_session.closed
        )

    def bot_for(self, core: Core) -> SlackBot:
        if self.bot is None:
            settings = core.settings
            if not socket_mode(settings) and not settings.slack_signing_secret.get_secret_value():
                raise AdapterFailed(
                    "Slack: set SLACK_SIGNING_SECRET (HTTP mode, Basic "
                    "Information > Signing Secret) or SLACK_APP_TOKEN (Socket "
                    "Mode)"
                )
            watch = LostAccessWatch()
            self.bot = SlackBot(
                core,
                web_client(core, watch=watch),
                socket_mode=socket_mode(settings),
                progress_client=web_client(core, wait_out_rate_limits=False, watch=watch),
            )
            watch.on_lost = self.bot.lost_access
        return self.bot

    def routes(self, core: Core) -> list[web.RouteDef]:
        if socket_mode(core.settings):
            return []
        return [web.post(EVENTS_PATH, self.bot_for(core).handle_http)]

    async def run(self, core: Core, stop: asyncio.Event) -> None:
        bot = self.bot_for(core)
        await bot.start()
        if socket_mode(core.settings):
            self.socket = AsyncSocketModeHandler(
                bot.app, core.settings.slack_app_token.get_secret_value(), web_client=bot.client
            )
            socket = self.socket
            await until_reachable("Slack's Socket Mode", socket.connect_async, slack_outage)
            log.info("Slack: connected in Socket Mode")
        else:
            log.info("Slack: HTTP mode, Slack's requests go to %s", EVENTS_PATH)
        revoked = asyncio.create_task(bot.revoked.wait())
        stopping = asyncio.create_task(stop.wait())  # set once the core's jobs are done
        try:
            await asyncio.wait({revoked, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            revoked.cancel()
            stopping.cancel()
            if self.socket is not None:
                await self.socket.close_async()
        if bot.revoked.is_set():
            raise AdapterFailed(
                f"Slack: {bot.revoked_because}; reinstall the app and put its new Bot User "
                "OAuth Token in SLACK_BOT_TOKEN"
            )


def socket_mode(settings: Settings) -> bool:
    return bool(settings.slack_app_token.get_secret_value())


LOST_ACCESS = ("invalid_auth", "token_revoked", "account_inactive", "not_authed")


class LostAccessWatch(AsyncRetryHandler):
    """Never a retry: it sees every answer Slack gives the bot's clients, and one saying the
    app's access is gone (the token revoked, the app removed) stops the bot, with the reason,
    instead of each later request failing on its own."""

    def __init__(self) -> None:
        super().__init__(max_retry_count=1 << 30)
        self.on_lost: Callable[[str], None] | None = None

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        body = response.body if response is not None else None
        if isinstance(body, dict) and body.get("error") in LOST_ACCESS and self.on_lost:
            self.on_lost(f"Slack answered {body['error']}: the app's access is gone")
        return False


def web_client(
    core: Core, wait_out_rate_limits: bool = True, watch: LostAccessWatch | None = None
) -> AsyncWebClient:
    """Slack's Web API at SLACK_API_URL, on the bot's own HTTP session. Rate-limited calls are
    retried after the wait Slack asks for (chat.postMessage allows about one message a second
    per channel, so a burst of jobs in one channel waits its turn), except by the client for
    progress edits: a rate-limited edit is dropped, leaving the turn to what must arrive."""
    client = AsyncWebClient(
        token=core.settings.slack_bot_token.get_secret_value(),
        base_url=core.settings.slack_api_url,
        session=core.api_session,
    )
    if watch is not None:
        client.retry_handlers.insert(0, watch)
    if wait_out_rate_limits:
        client.retry_handlers.append(
            AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES)
        )
    return client


adapter = SlackAdapter()
__all__ = ["adapter"]
