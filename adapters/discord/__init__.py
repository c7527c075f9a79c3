"""Discord adapter (discord.py): found by the core through the `sam3d_bot.adapters` entry point.
Discord's types stop in this package."""

from __future__ import annotations

import asyncio
import logging

import discord

log = logging.getLogger(__name__)


class DiscordAdapter:
    name = "discord"

    def __init__(self):
        self.client: discord.Client | None = None

    def ready(self) -> bool:
        return self.client is not None and self.client.is_ready()

    def enabled(self, settings) -> bool:
        return bool(settings.discord_token.get_secret_value())

    async def run(self, core, stop: asyncio.Event) -> None:
        from .app import Sam3dClient, build_client

        client: Sam3dClient = build_client(core)
        self.client = client
        async with client:
            await client.login(core.settings.discord_token.get_secret_value())
            gateway = asyncio.create_task(client.connect(reconnect=True))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({gateway, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if gateway.done() and gateway.exception():
                log.error("Discord connection ended: %s", gateway.exception())
            await client.close()
            gateway.cancel()
            stopping.cancel()
            await asyncio.gather(*client.jobs, return_exceptions=True)


adapter = DiscordAdapter()
__all__ = ["adapter", "discord"]
