"""/sam3d-admin: quotas, budgets, blocks, pauses, channels and refunds for a server's admins
(Manage Server), checked again here whatever the server's command permissions say."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.operations import REASON_MAX, Where
from bot.ports import PRIVATE_MODES

from .answers import ephemeral
from .privacy import confirmation
from .translate import PLATFORM, requester_of

if TYPE_CHECKING:
    from .app import Sam3dClient


# Discord's client holds typed options to these lengths (the core checks again).
Reason = app_commands.Range[str, 0, REASON_MAX]
JobId = app_commands.Range[str, 1, 32]


class AdminCommands(app_commands.Group):
    def __init__(self, client: Sam3dClient):
        super().__init__(
            name="sam3d-admin",
            description="Quotas, budget and controls of sam3d",
            default_permissions=discord.Permissions(manage_guild=True),
            allowed_contexts=app_commands.AppCommandContext(guild=True),
            allowed_installs=app_commands.AppInstallationType(guild=True),
        )
        self.client = client

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # Discord hides the command from others by default; a server can change that, so the
        # permission is checked again here.
        if requester_of(interaction).is_admin:
            return True
        await ephemeral(interaction, "Only members with Manage Server can use this.")
        return False

    def _where(self, interaction: discord.Interaction) -> Where:
        return Where(PLATFORM, str(interaction.guild_id))

    async def _answer(self, interaction: discord.Interaction, work: Awaitable[str]) -> None:
        # A refusal (BotError) is worded by the command tree's error hook.
        await ephemeral(interaction, await work)

    @app_commands.command(
        name="forget", description="Remove a member's photos and models made in this server"
    )
    @app_commands.describe(member="the member to forget")
    async def forget(self, interaction: discord.Interaction, member: discord.User) -> None:
        await interaction.response.send_message(
            **confirmation(member.id, interaction.guild_id), ephemeral=True
        )

    @app_commands.command(
        name="private", description="Whether results may go to members' DMs in this server"
    )
    @app_commands.describe(mode="allowed (members choose), default (DMs first) or forbidden")
    @app_commands.choices(
        mode=[app_commands.Choice(name=mode, value=mode) for mode in PRIVATE_MODES]
    )
    async def private(self, interaction: discord.Interaction, mode: str) -> None:
        await self._answer(
            interaction,
            self.client.operations.set_private_mode(
                requester_of(interaction).key, self._where(interaction), mode
            ),
        )

    @app_commands.command(name="usage", description="This server's jobs and spend")
    @app_commands.describe(month="YYYY-MM (default: this month)")
    async def usage(self, interaction: discord.Interaction, month: str | None = None) -> None:
        await self._answer(
            interaction, self.client.operations.usage_report(self._where(interaction), month)
        )

    @app_commands.command(
        name="quota", description="Jobs per window for a member or role, or the whole server"
    )
    @app_commands.describe(
        jobs="a number, unlimited, or default",
        member="the member it is for",
        role="or the role it is for (neither: the whole server)",
        window_hours="its window in hours (default: the bot's)",
    )
    async def quota(
        self,
        interaction: discord.Interaction,
        jobs: str,
        member: discord.Member | None = None,
        role: discord.Role | None = None,
        window_hours: app_commands.Range[float, 0.1, 744.0] | None = None,
    ) -> None:
        kind, target = (
            ("user", str(member.id))
            if member
            else ("role", str(role.id))
            if role
            else ("guild", "")
        )
        await self._answer(
            interaction,
            self.client.operations.set_quota(
                requester_of(interaction).key,
                self._where(interaction),
                kind,
                target,
                jobs,
                window_hours,
            ),
        )

    @app_commands.command(name="budget", description="This server's monthly budget in USD")
    @app_commands.describe(usd="e.g. 25, or none")
    async def budget(self, interaction: discord.Interaction, usd: str) -> None:
        await self._answer(
            interaction,
            self.client.operations.set_budget(
                requester_of(interaction).key, self._where(interaction), usd
            ),
        )

    @app_commands.command(name="block", description="Stop a member making models here")
    @app_commands.describe(member="who to block", reason="why (they are not told)")
    async def block(
        self, interaction: discord.Interaction, member: discord.User, reason: Reason = ""
    ) -> None:
        await self._answer(
            interaction,
            self.client.operations.block(
                requester_of(interaction).key, self._where(interaction), str(member.id), reason
            ),
        )

    @app_commands.command(name="unblock", description="Let a member make models again")
    @app_commands.describe(member="who to let back")
    async def unblock(self, interaction: discord.Interaction, member: discord.User) -> None:
        await self._answer(
            interaction,
            self.client.operations.unblock(
                requester_of(interaction).key, self._where(interaction), str(member.id)
            ),
        )

    @app_commands.command(name="pause", description="Stop new jobs on this server")
    @app_commands.describe(reason="shown to members who ask for a model")
    async def pause(self, interaction: discord.Interaction, reason: Reason = "") -> None:
        await self._answer(
            interaction,
            self.client.operations.pause(
                requester_of(interaction).key, self._where(interaction), reason
            ),
        )

    @app_commands.command(name="resume", description="Open new jobs again")
    async def resume(self, interaction: discord.Interaction) -> None:
        await self._answer(
            interaction,
            self.client.operations.resume(requester_of(interaction).key, self._where(interaction)),
        )

    @app_commands.command(
        name="channel",
        description="Allow or stop /sam3d in a channel (none allowed: every channel)",
    )
    @app_commands.describe(
        channel="a channel, forum or category (its threads and channels too)",
        allowed="True to allow it, False to stop it",
    )
    async def channel(
        self,
        interaction: discord.Interaction,
        channel: app_commands.AppCommandChannel,
        allowed: bool,
    ) -> None:
        await self._answer(
            interaction,
            self.client.operations.channel_answer(
                requester_of(interaction).key, self._where(interaction), str(channel.id), allowed
            ),
        )

    @app_commands.command(name="refund", description="Give a finished job back to its member")
    @app_commands.describe(job="the job id (Details shows it)", reason="why, for the audit trail")
    async def refund(
        self, interaction: discord.Interaction, job: JobId, reason: Reason = ""
    ) -> None:
        await self._answer(
            interaction,
            self.client.operations.refund(
                requester_of(interaction).key, self._where(interaction), job, reason
            ),
        )
