"""Discord adapter (discord.py): found by the core through the `sam3d_bot.adapters` entry point.
Discord's types stop in this package."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
import discord

from bot.errors import AdapterFailed
from bot.outages import until_reachable

if TYPE_CHECKING:
    from aiohttp import web

    from bot.app import Core
    from bot.settings import Settings

log = logging.getLogger(__name__)


class DiscordAdapter:
    name = "discord"

    def __init__(self) -> None:
        self.client: discord.Client | None = None

    def ready(self) -> bool:
        return self.client is not None and self.client.is_ready()

    def enabled(self, settings: Settings) -> bool:
        return bool(settings.discord_token.get_secret_value())

    def routes(self, core: Core) -> list[web.RouteDef]:
        return []  # Discord reaches the bot through its gateway, not the web server

    async def run(self, core: Core, stop: asyncio.Event) -> None:
        """Connect and serve until `stop`, which the core sets once jobs are done with."""
        from .app import Sam3dClient, build_client

        client: Sam3dClient = build_client(core)
        self.client = client
        async with client:
            token = core.settings.discord_token.get_secret_value()
            try:
                await until_reachable("Discord", lambda: client.login(token), discord_outage)
            except discord.LoginFailure:
                raise AdapterFailed(
                    "Discord refused the token: check DISCORD_TOKEN (Developer "
                    "Portal > your application > Bot > Reset Token)"
                ) from None
            gateway = asyncio.create_task(client.connect(reconnect=True))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({gateway, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            # `stop` comes once the core let its jobs finish or leave: closing the client
            # closes discord.py's REST session, which a job still delivering would need.
            await client.close()
            if gateway.done() and not gateway.cancelled() and gateway.exception():
                # discord.py retries what can be retried; what reaches here (a bad token,
                # intents refused) will not mend by itself: stop the bot with its reason.
                raise AdapterFailed(f"Discord: {gateway.exception()}") from gateway.exception()
            gateway.cancel()


def discord_outage(exc: BaseException) -> bool:
    """Discord unreachable or failing on its side: worth waiting out at start. A refused
    token (LoginFailure) is not."""
    if isinstance(exc, discord.DiscordServerError):
        return True
    if isinstance(exc, discord.HTTPException):
        return False
    return isinstance(exc, aiohttp.ClientError | TimeoutError | OSError)


adapter = DiscordAdapter()
__all__ = ["adapter", "discord"]
