"""The Discord bot: /sam3d, the "Make 3D model" message command, /sam3d-quota, /sam3d-admin and
the buttons on results. Every interaction is deferred or answered at once; the job runs in the
background and reports through a DiscordReplier."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from typing import Any

import discord
from discord import app_commands

from bot.errors import BotError, InputError
from bot.models import SEED_MAX, SEED_MIN, ImageSource, JobRequest
from bot.operations import (
    NOT_YOURS,
    Operations,
    Where,
    describe_quota,
)
from bot.ports import JobRecord

from .replier import DiscordReplier
from .translate import (
    NO_PINGS,
    PLATFORM,
    images_in,
    reply_to_of,
    requester_of,
)

log = logging.getLogger(__name__)

DEFAULT_SIZE_LIMIT = 10 * 1024 * 1024
MAX_PROMPT = 200
JOB_ID = r"(?P<job>[0-9a-f]{6,32})"
# Send Messages, Embed Links, Attach Files, Read Message History, Use Application Commands.
INVITE_PERMISSIONS = discord.Permissions(
    send_messages=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    use_application_commands=True,
)


class Sam3dClient(discord.AutoShardedClient):
    def __init__(self, core, **options: Any):
        super().__init__(intents=discord.Intents(guilds=True), allowed_mentions=NO_PINGS, **options)
        self.core = core
        self.settings = core.settings
        self.operations = Operations(core.ledger)
        self.tree = app_commands.CommandTree(self)
        # Discord sends each interaction's upload limit; discord.py does not keep it.
        self._size_limits: OrderedDict[int, int] = OrderedDict()
        add_commands(self)

    async def setup_hook(self) -> None:
        parse = self._connection.parsers["INTERACTION_CREATE"]

        def parse_keeping_limit(data: dict) -> None:
            self._size_limits[int(data["id"])] = int(
                data.get("attachment_size_limit") or DEFAULT_SIZE_LIMIT
            )
            while len(self._size_limits) > 10_000:
                self._size_limits.popitem(last=False)
            parse(data)

        self._connection.parsers["INTERACTION_CREATE"] = parse_keeping_limit
        self.add_dynamic_items(ResultButton)
        if self.settings.discord_sync_commands:
            await self.sync_commands()
        log.info("invite the bot with: %s", invite_url(self.application_id))
        self.core.service.keep_recovering(self.replier_for_record, {PLATFORM})

    async def sync_commands(self) -> None:
        guild_id = self.settings.discord_dev_guild_id
        if guild_id:
            guild = discord.Object(int(guild_id))
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    def size_limit_of(self, interaction: discord.Interaction) -> int:
        return self._size_limits.get(interaction.id, DEFAULT_SIZE_LIMIT)

    def replier_for(self, interaction: discord.Interaction) -> DiscordReplier:
        return DiscordReplier(
            self,
            reply_to_of(interaction),
            interaction,
            interval_s=self.settings.progress_edit_interval_s,
            size_limit=self.size_limit_of(interaction),
            view_for=result_view,
            links=self.core.links,
        )

    def replier_for_record(self, record: JobRecord) -> DiscordReplier | None:
        """After a restart: the channel, the user, and the token while it still lives."""
        if "channel_id" not in record.reply_to:
            return None
        return DiscordReplier(
            self,
            record.reply_to,
            None,
            interval_s=self.settings.progress_edit_interval_s,
            view_for=result_view,
            links=self.core.links,
        )

    async def start_job(
        self,
        interaction: discord.Interaction,
        image: ImageSource,
        *,
        prompt: str | None = None,
        bbox: str | None = None,
        points: str | None = None,
        mask: ImageSource | None = None,
        seed: int | str | None = None,  # typed in a form: the core checks it
        artifacts: bool = False,
    ) -> None:
        """Defer within Discord's 3 s, then run the job in the background."""
        if not await self.may_post_here(interaction) or not await self.may_start_here(interaction):
            return
        await interaction.response.defer(thinking=True)
        replier = self.replier_for(interaction)
        request = JobRequest(
            requester=requester_of(interaction),
            image=image,
            prompt=prompt,
            bbox=bbox,
            points=points,
            mask=mask,
            seed=seed,
            include_artifacts=artifacts,
            reply_to=replier.reply_to,
        )
        self.background(
            self.core.service.run(request, replier, idempotency_key=f"discord:{interaction.id}")
        )

    def background(self, work) -> asyncio.Task:
        return self.core.runner.start(work, "discord job")

    async def may_start_here(self, interaction: discord.Interaction) -> bool:
        """Admins may keep /sam3d to some channels of their server."""
        where = Where(PLATFORM, str(interaction.guild_id) if interaction.guild_id else None)
        refusal = await self.operations.refusal_here(where, str(interaction.channel_id))
        if refusal is None:
            return True
        await ephemeral(interaction, refusal)
        return False

    async def may_post_here(self, interaction: discord.Interaction) -> bool:
        """The bot needs to post files and embeds where the result goes; say so up front."""
        if interaction.guild_id is None:
            return True
        allowed = interaction.app_permissions
        missing = [
            name
            for name, ok in (
                ("Attach Files", allowed.attach_files),
                ("Embed Links", allowed.embed_links),
            )
            if not ok
        ]
        if missing and not interaction.is_user_integration():
            await ephemeral(
                interaction,
                f"I need the {' and '.join(missing)} permission in "
                "this channel to deliver models; ask an admin.",
            )
            return False
        return True


async def ephemeral(interaction: discord.Interaction, text: str) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)


def invite_url(application_id: int | None) -> str:
    return discord.utils.oauth_url(
        application_id or 0, permissions=INVITE_PERMISSIONS, scopes=("bot", "applications.commands")
    )


async def attachment_image(attachment: discord.Attachment, max_bytes: int) -> ImageSource:
    if attachment.size > max_bytes:
        raise InputError(
            attachment.filename, f"the file is larger than {max_bytes // 1_000_000} MB"
        )
    return ImageSource.from_bytes(await attachment.read(), attachment.filename)


# -- commands ----------------------------------------------------------------------------------


def add_commands(client: Sam3dClient) -> None:
    tree = client.tree

    @tree.command(name="sam3d", description="Make a 3D model of an object in a photo")
    @app_commands.describe(
        image="the photo (PNG, JPEG or WebP)",
        image_url="or a link to the photo",
        prompt="what the object is, e.g. 'red chair'",
        bbox="box around it: x1,y1,x2,y2",
        points="points on it: x,y;x,y",
        mask="a mask image (white = the object)",
        seed="0 to 1000000; the same seed gives the same model",
        artifacts="also send the artifacts archive",
    )
    async def sam3d(
        interaction: discord.Interaction,
        image: discord.Attachment | None = None,
        image_url: str | None = None,
        prompt: app_commands.Range[str, 1, MAX_PROMPT] | None = None,
        bbox: str | None = None,
        points: str | None = None,
        mask: discord.Attachment | None = None,
        seed: app_commands.Range[int, SEED_MIN, SEED_MAX] | None = None,
        artifacts: bool = False,
    ) -> None:
        if (image is None) == (image_url is None):
            await ephemeral(interaction, "Give the photo as an attachment or as a link (one).")
            return
        limit = client.settings.max_image_bytes
        try:
            source = (
                await attachment_image(image, limit)
                if image
                else ImageSource.from_url(image_url or "")
            )
            mask_source = await attachment_image(mask, limit) if mask else None
        except (BotError, discord.HTTPException) as error:
            text = (
                error.user_message
                if isinstance(error, BotError)
                else "I could not download that attachment from Discord; try again."
            )
            await ephemeral(interaction, text)
            return
        await client.start_job(
            interaction,
            source,
            prompt=prompt,
            bbox=bbox,
            points=points,
            mask=mask_source,
            seed=seed,
            artifacts=artifacts,
        )

    @tree.context_menu(name="Make 3D model")
    async def make_3d(interaction: discord.Interaction, message: discord.Message) -> None:
        images = images_in(message)
        if not images:
            await ephemeral(interaction, "That message has no image to make a model from.")
            return
        if len(images) == 1:
            await interaction.response.send_modal(JobModal(client, message, images[0][1]))
            return
        await interaction.response.send_message(
            "Which image?", view=PickImage(client, message, images), ephemeral=True
        )

    @tree.command(name="sam3d-quota", description="Your jobs left and this server's budget")
    async def quota(interaction: discord.Interaction) -> None:
        status = await client.operations.my_quota(requester_of(interaction))
        await ephemeral(interaction, describe_quota(status))

    tree.add_command(AdminCommands(client))


class JobModal(discord.ui.Modal, title="Make a 3D model"):
    prompt: discord.ui.TextInput[JobModal] = discord.ui.TextInput(
        label="What is the object? (optional)", required=False, max_length=MAX_PROMPT
    )
    seed: discord.ui.TextInput[JobModal] = discord.ui.TextInput(
        label="Seed, 0 to 1000000 (optional)", required=False, max_length=7
    )

    def __init__(self, client: Sam3dClient, message: discord.Message, url: str):
        super().__init__()
        self.client, self.message, self.url = client, message, url

    async def on_submit(self, interaction: discord.Interaction) -> None:
        attachment = next((a for a in self.message.attachments if a.url == self.url), None)
        try:
            source = (
                await attachment_image(attachment, self.client.settings.max_image_bytes)
                if attachment
                else ImageSource.from_url(self.url)
            )
        except (BotError, discord.HTTPException) as error:
            text = (
                error.user_message
                if isinstance(error, BotError)
                else "I could not download that image from Discord; try again."
            )
            await ephemeral(interaction, text)
            return
        await self.client.start_job(
            interaction,
            source,
            prompt=self.prompt.value or None,
            seed=self.seed.value.strip() or None,
        )


class PickImage(discord.ui.View):
    def __init__(
        self, client: Sam3dClient, message: discord.Message, images: list[tuple[str, str]]
    ):
        super().__init__(timeout=300)
        self.client, self.message = client, message
        select: discord.ui.Select[PickImage] = discord.ui.Select(
            placeholder="Pick the image",
            options=[
                discord.SelectOption(label=label[:100], value=str(index))
                for index, (label, _) in enumerate(images[:25])
            ],
        )
        self.images = images

        async def picked(interaction: discord.Interaction) -> None:
            url = self.images[int(select.values[0])][1]
            await interaction.response.send_modal(JobModal(self.client, self.message, url))

        select.callback = picked  # type: ignore[method-assign]  # discord.py's documented way
        self.add_item(select)


# -- the buttons on a result ------------------------------------------------------------------


def result_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in BUTTONS:
        view.add_item(ResultButton(action, job_id))
    return view


async def new_seed(client: Sam3dClient, interaction: discord.Interaction, job_id: str) -> None:
    """Run the job's photo again with another seed, as a new job under the quota."""
    if not await client.may_post_here(interaction):
        return
    await interaction.response.defer(thinking=True)
    replier = client.replier_for(interaction)
    client.background(
        client.core.service.again(
            job_id,
            requester_of(interaction),
            replier,
            reply_to=replier.reply_to,
            idempotency_key=f"discord:{interaction.id}",
        )
    )


async def details(client: Sam3dClient, interaction: discord.Interaction, job_id: str) -> None:
    text = await client.operations.job_details(job_id, discord.utils.escape_markdown)
    await ephemeral(interaction, text)


async def delete(client: Sam3dClient, interaction: discord.Interaction, job_id: str) -> None:
    if not await client.operations.may_delete(job_id, requester_of(interaction)):
        await ephemeral(interaction, NOT_YOURS)
        return
    await interaction.response.defer(ephemeral=True, thinking=False)
    if interaction.message is not None:
        await interaction.message.delete()


# action -> (label, emoji, style, what it does)
BUTTONS = {
    "seed": ("New seed", "🎲", discord.ButtonStyle.primary, new_seed),
    "details": ("Details", None, discord.ButtonStyle.secondary, details),
    "delete": ("Delete", None, discord.ButtonStyle.danger, delete),
}


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=rf"sam3d:(?P<action>seed|details|delete):{JOB_ID}",
):
    """The buttons on a result. Their ids carry the action and the job, so they keep working
    after a restart (discord.py rebuilds them from the id)."""

    def __init__(self, action: str, job_id: str):
        label, emoji, style, _ = BUTTONS[action]
        super().__init__(
            discord.ui.Button(
                label=label, emoji=emoji, style=style, custom_id=f"sam3d:{action}:{job_id}"
            )
        )
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        assert isinstance(client, Sam3dClient)
        await BUTTONS[self.action][3](client, interaction, self.job_id)


# -- /sam3d-admin ------------------------------------------------------------------------------


class AdminCommands(app_commands.Group):
    def __init__(self, client: Sam3dClient):
        super().__init__(
            name="sam3d-admin",
            description="Quotas, budget and controls of sam3d",
            default_permissions=discord.Permissions(manage_guild=True),
            guild_only=True,
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

    async def _answer(self, interaction: discord.Interaction, work) -> None:
        try:
            text = await work
        except BotError as error:
            text = error.user_message
        await ephemeral(interaction, text)

    @app_commands.command(name="usage", description="This server's jobs and spend")
    @app_commands.describe(month="YYYY-MM (default: this month)")
    async def usage(self, interaction: discord.Interaction, month: str | None = None) -> None:
        await self._answer(
            interaction, self.client.operations.usage_report(self._where(interaction), month)
        )

    @app_commands.command(
        name="quota", description="Jobs per window for a member or role, or the whole server"
    )
    @app_commands.describe(jobs="a number, unlimited, or default", window_hours="its window")
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
    async def block(
        self, interaction: discord.Interaction, member: discord.User, reason: str = ""
    ) -> None:
        await self._answer(
            interaction,
            self.client.operations.block(
                requester_of(interaction).key, self._where(interaction), str(member.id), reason
            ),
        )

    @app_commands.command(name="unblock", description="Let a member make models again")
    async def unblock(self, interaction: discord.Interaction, member: discord.User) -> None:
        await self._answer(
            interaction,
            self.client.operations.unblock(
                requester_of(interaction).key, self._where(interaction), str(member.id)
            ),
        )

    @app_commands.command(name="pause", description="Stop new jobs on this server")
    async def pause(self, interaction: discord.Interaction, reason: str = "") -> None:
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
    async def refund(self, interaction: discord.Interaction, job: str, reason: str = "") -> None:
        await self._answer(
            interaction,
            self.client.operations.refund(
                requester_of(interaction).key, self._where(interaction), job, reason
            ),
        )


def build_client(core) -> Sam3dClient:
    """The client, with Discord's API root from the settings (discord.py keeps it globally)."""
    discord.http.Route.BASE = core.settings.discord_api_url
    return Sam3dClient(core)
