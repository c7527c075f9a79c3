"""The Discord bot: /sam3d, the "Make 3D model" message command, /sam3d-quota, /sam3d-admin and
the buttons on results. Every interaction is deferred or answered at once; the job runs in the
background and reports through a DiscordReplier."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands

from bot.errors import BotError, InputError
from bot.models import SEED_MAX, SEED_MIN, ImageSource, JobEdits, JobRequest
from bot.operations import Operations, Where, describe_quota
from bot.ports import JobRecord
from bot.variations import MAX_VARIATIONS, Together

if TYPE_CHECKING:
    from bot.app import Core

from .admin import AdminCommands
from .answers import AnsweringModal, AnsweringView, Sam3dTree, ephemeral
from .buttons import (
    CancelButton,
    FormatsButton,
    ResultButton,
    ResultFormats,
    cancel_view,
    result_view,
    variations_view,
)
from .history import HistoryButton, history_message
from .picking import PickControl, picker_message, start_picked_on_web
from .privacy import ForgetButton, confirmation
from .replier import DiscordReplier
from .translate import (
    NO_PINGS,
    PLATFORM,
    images_in,
    places_of,
    reply_to_of,
    requester_of,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PROMPT = 200
PRIVATE_LOOKUP_S = 1.0
PICK_OR_TYPE = "Pick the object, or type a box, points or a mask: one of the two, not both."
# View Channel, Send Messages (and in threads), Embed Links, Attach Files, Read Message
# History, Use Application Commands.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    use_application_commands=True,
)


class Sam3dClient(discord.AutoShardedClient):
    def __init__(self, core: Core, **options: Any):
        settings = core.settings
        if settings.shard_ids is not None:  # one of several instances: its share of shards
            options.setdefault("shard_ids", settings.shard_ids)
            options.setdefault("shard_count", settings.discord_shard_count)
        elif settings.discord_shard_count is not None:
            options.setdefault("shard_count", settings.discord_shard_count)
        super().__init__(intents=discord.Intents(guilds=True), allowed_mentions=NO_PINGS, **options)
        self.core = core
        self.settings = core.settings
        self.operations = Operations(core.ledger)
        self.tree = Sam3dTree(self)
        add_commands(self)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(
            ResultButton,
            ResultFormats,
            FormatsButton,
            PickControl,
            HistoryButton,
            ForgetButton,
            CancelButton,
        )
        if self.core.picker is not None:  # Make it on the web page starts the job here
            self.core.picker.starts_jobs_for(
                PLATFORM, lambda pick, request: start_picked_on_web(self, pick, request)
            )
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

    def replier_for(
        self, interaction: discord.Interaction, private: bool = False
    ) -> DiscordReplier:
        return self.replier_for_record_data(
            {**reply_to_of(interaction), "private": private}, interaction
        )

    def replier_for_record(self, record: JobRecord) -> DiscordReplier | None:
        """After a restart: the channel, the user, and the token while it still lives."""
        if "channel_id" not in record.reply_to:
            return None
        return self.replier_for_record_data(record.reply_to)

    def replier_for_record_data(
        self, reply_to: dict[str, Any], interaction: discord.Interaction | None = None
    ) -> DiscordReplier:
        return DiscordReplier(
            self,
            reply_to,
            interaction,
            interval_s=self.settings.progress_edit_interval_s,
            view_for=result_view,
            links=self.core.links,
            conversions=self.core.conversions,
            cancel_view=cancel_view,
            group_view_for=variations_view,
            note_post=self.core.results.note_post,
        )

    async def start_job(
        self,
        interaction: discord.Interaction,
        image: Photo,
        *,
        prompt: str | None = None,
        bbox: str | None = None,
        points: str | None = None,
        mask: Photo | None = None,
        seed: int | str | None = None,  # typed in a form: the core checks it
        artifacts: bool = False,
        variations: int = 1,
        private: bool | None = None,
    ) -> None:
        """Acknowledge first (Discord gives 3 s, and a photo from its CDN may take longer),
        then check where jobs may start, fetch the photo and run the job (or `variations`
        of it), in the background. A private job talks to the member alone and delivers to
        their DMs."""
        where = Where(PLATFORM, str(interaction.guild_id) if interaction.guild_id else None)
        to_dm = await self.delivers_privately(interaction, where, private)
        if to_dm is None:
            return
        if not to_dm and not await self.may_post_here(interaction):  # from the payload
            return
        await interaction.response.defer(ephemeral=to_dm, thinking=True)
        replier = self.replier_for(interaction, private=to_dm)
        places = places_of(interaction)
        key = f"discord:{interaction.id}"
        requester = requester_of(interaction)

        async def job() -> None:
            refusal = await self.operations.refusal_here(where, places)
            if refusal is not None:
                await replier.tell(refusal)
                return
            plan = None
            try:
                if variations > 1:  # the price of all of them said before anything starts
                    plan = await self.core.service.plan_variations(requester, variations, seed)
                    await replier.say(f"⏳ {plan.describe()}")
                limit = self.settings.max_image_bytes
                photo = await photo_source(image, limit)
                mask_source = await photo_source(mask, limit) if mask is not None else None
            except BotError as error:
                await replier.fail(error, refunded=False)
                return
            request = JobRequest(
                requester=requester,
                image=photo,
                prompt=prompt,
                bbox=bbox,
                points=points,
                mask=mask_source,
                seed=seed,
                include_artifacts=artifacts,
                reply_to=replier.reply_to,
            )
            if plan is None:
                await self.core.service.run(request, replier, idempotency_key=key)
                return
            together = Together(
                len(plan.seeds),
                post=replier.deliver_together,
                tell=replier.conclude,
                show=replier.progress,
                header=plan.describe(),
            )
            await self.core.service.run_variations(
                request,
                plan.seeds,
                [together.replier(index) for index in range(len(plan.seeds))],
                idempotency_key=key,
                ended=together.ended,
            )

        self.background(job())

    async def start_picking(
        self,
        interaction: discord.Interaction,
        image: Photo,
        *,
        prompt: str | None = None,
        seed: int | str | None = None,
        private: bool | None = None,
    ) -> None:
        """ "Pick the object": the picker to the member alone, once the checks (where jobs
        may start, quota, budget, the photo) say a job could start; nothing is charged. The
        job it makes goes to their DMs when `private` (within the server's setting)."""
        where = Where(PLATFORM, str(interaction.guild_id) if interaction.guild_id else None)
        to_dm = await self.delivers_privately(interaction, where, private)
        if to_dm is None:
            return
        if not to_dm and not await self.may_post_here(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        places = places_of(interaction)
        picker = self.core.picker
        assert picker is not None

        async def begin() -> None:
            try:
                refusal = await self.operations.refusal_here(where, places)
                if refusal is not None:
                    raise BotError(refusal)
                photo = await photo_source(image, self.settings.max_image_bytes)
                pick = await picker.begin(
                    JobRequest(
                        requester=requester_of(interaction),
                        image=photo,
                        prompt=prompt,
                        seed=seed,
                        reply_to={**reply_to_of(interaction), "private": to_dm},
                    )
                )
            except BotError as error:
                await interaction.followup.send(
                    error.user_message, ephemeral=True, allowed_mentions=NO_PINGS
                )
                return
            await interaction.followup.send(**await picker_message(self, pick), ephemeral=True)

        self.background(begin())

    async def run_again(
        self,
        interaction: discord.Interaction,
        job_id: str,
        edits: JobEdits | None = None,
        from_link: str | None = None,
    ) -> None:
        """New seed (no `edits`) or Edit: the job's kept photo again, as a new job under the
        presser's quota, posted here."""
        if not await self.may_post_here(interaction):
            return
        await interaction.response.defer(thinking=True)
        replier = self.replier_for(interaction)
        self.background(
            self.core.service.again(
                job_id,
                requester_of(interaction),
                replier,
                reply_to=replier.reply_to,
                idempotency_key=f"discord:{interaction.id}",
                edits=edits,
                from_link=from_link,
            )
        )

    async def delivers_privately(
        self, interaction: discord.Interaction, where: Where, asked: bool | None
    ) -> bool | None:
        """Whether this job goes to the member's DMs, by what they asked and the server's
        setting (read within a second: the interaction must be answered in 3); None once
        they were told it may not."""
        try:
            return await asyncio.wait_for(
                self.operations.delivers_privately(where, asked), PRIVATE_LOOKUP_S
            )
        except InputError as error:
            await ephemeral(interaction, error.user_message)
            return None
        except (TimeoutError, BotError):  # the ledger is slow: what the member asked
            log.warning("could not read the server's private delivery setting in time")
            return bool(asked)

    async def delete_post(self, where: dict[str, Any]) -> bool:
        """Forget me: one of the bot's posts of a result, deleted (True: it is gone)."""
        try:
            await self.http.delete_message(int(where["channel_id"]), int(where["message_id"]))
        except discord.NotFound:
            return True  # deleted already (its Delete button, a moderator)
        except (discord.HTTPException, KeyError, ValueError):
            return False
        return True

    def background(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        return self.core.runner.start(work, "discord job")

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


def invite_url(application_id: int | None) -> str:
    return discord.utils.oauth_url(
        application_id or 0, permissions=INVITE_PERMISSIONS, scopes=("bot", "applications.commands")
    )


Photo = discord.Attachment | ImageSource  # an attachment is fetched once the command is answered


async def photo_source(photo: Photo, max_bytes: int) -> ImageSource:
    if isinstance(photo, ImageSource):
        return photo
    return await attachment_image(photo, max_bytes)


async def attachment_image(attachment: discord.Attachment, max_bytes: int) -> ImageSource:
    if attachment.size > max_bytes:
        raise InputError(
            attachment.filename, f"the file is larger than {max_bytes // 1_000_000} MB"
        )
    try:
        return ImageSource.from_bytes(await attachment.read(), attachment.filename)
    except discord.HTTPException:
        raise InputError(
            attachment.filename, "I could not download it from Discord; try again"
        ) from None


# -- commands ----------------------------------------------------------------------------------


def everywhere(command: T) -> T:
    """Installed on a server or by a member (a user-installed app), usable in servers, in a DM
    with the bot and in DMs between members; where the bot cannot post, it answers through
    the interaction's token."""
    command = app_commands.allowed_installs(guilds=True, users=True)(command)
    return app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)(command)


def add_commands(client: Sam3dClient) -> None:
    tree = client.tree

    @tree.command(name="sam3d", description="Make a 3D model of an object in a photo")
    @everywhere
    @app_commands.describe(
        image="the photo (PNG, JPEG or WebP)",
        image_url="or a link to the photo",
        prompt="what the object is, e.g. 'red chair'",
        bbox="box around it: x1,y1,x2,y2",
        points="points on it: x,y;x,y",
        mask="a mask image (white = the object)",
        seed="0 to 1000000; the same seed gives the same model",
        artifacts="also send the artifacts archive",
        pick="pick the object on the photo's grid first; nothing is charged until Make it",
        variations="make 2 to 4 models with different seeds, posted together (each one job)",
        private="send the result to your DMs instead of this channel",
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
        pick: bool = False,
        variations: app_commands.Range[int, 1, MAX_VARIATIONS] = 1,
        private: bool | None = None,
    ) -> None:
        if (image is None) == (image_url is None):
            await ephemeral(interaction, "Give the photo as an attachment or as a link (one).")
            return
        photo = image or ImageSource.from_url(image_url or "")
        if pick:
            if variations > 1:
                await ephemeral(interaction, "Pick the object for one model at a time.")
                return
            if bbox or points or mask:
                await ephemeral(interaction, PICK_OR_TYPE)
                return
            await client.start_picking(
                interaction, photo, prompt=prompt, seed=seed, private=private
            )
            return
        await client.start_job(
            interaction,
            photo,
            prompt=prompt,
            bbox=bbox,
            points=points,
            mask=mask,
            seed=seed,
            artifacts=artifacts,
            variations=variations,
            private=private,
        )

    @tree.context_menu(name="Make 3D model")
    @everywhere
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

    @tree.command(name="sam3d-history", description="Your models, newest first")
    @everywhere
    @app_commands.describe(
        page="which page (10 a page)", member="an admin: that member's models in this server"
    )
    async def history(
        interaction: discord.Interaction,
        page: app_commands.Range[int, 1, 100_000] = 1,
        member: discord.User | None = None,
    ) -> None:
        parts = await history_message(
            client, interaction, page - 1, member.id if member is not None else None
        )
        if parts is not None:
            await interaction.response.send_message(**parts, ephemeral=True)

    @tree.command(name="sam3d-forget-me", description="Remove your photos and models")
    @everywhere
    async def forget_me(interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            **confirmation(interaction.user.id, None), ephemeral=True
        )

    @tree.command(name="sam3d-quota", description="Your jobs left and this server's budget")
    @everywhere
    async def quota(interaction: discord.Interaction) -> None:
        status = await client.operations.my_quota(requester_of(interaction))
        await ephemeral(interaction, describe_quota(status))

    tree.add_command(AdminCommands(client))


class SettingsModal(AnsweringModal):
    """A form with a job's settings: what the object is, a box, points and a seed (filled in
    with `defaults`, for Edit)."""

    def __init__(self, defaults: JobEdits | None = None, **options: Any):
        super().__init__(**options)
        defaults = defaults or JobEdits()
        self.prompt: discord.ui.TextInput[SettingsModal] = discord.ui.TextInput(
            label="What is the object? (optional)",
            required=False,
            max_length=MAX_PROMPT,
            default=(defaults.prompt or "")[:MAX_PROMPT] or None,
        )
        self.bbox: discord.ui.TextInput[SettingsModal] = discord.ui.TextInput(
            label="Box around it: x1,y1,x2,y2 (optional)",
            placeholder="in pixels of the photo, e.g. 40,30,600,470",
            required=False,
            max_length=60,
            default=defaults.bbox,
        )
        self.points: discord.ui.TextInput[SettingsModal] = discord.ui.TextInput(
            label="Points on it: x,y;x,y (optional)",
            placeholder="in pixels of the photo, e.g. 320,240;300,200",
            required=False,
            max_length=400,
            default=(defaults.points or "")[:400] or None,
        )
        self.seed: discord.ui.TextInput[SettingsModal] = discord.ui.TextInput(
            label="Seed, 0 to 1000000 (optional)",
            required=False,
            max_length=7,
            default=None if defaults.seed is None else str(defaults.seed),
        )
        for item in (self.prompt, self.bbox, self.points, self.seed):
            self.add_item(item)

    def typed(self) -> JobEdits:
        return JobEdits(
            prompt=self.prompt.value.strip() or None,
            bbox=self.bbox.value.strip() or None,
            points=self.points.value.strip() or None,
            seed=self.seed.value.strip() or None,
        )


class EditModal(SettingsModal, title="Edit and run again"):
    """Edit on a result: its settings to change, its photo used again; a new job."""

    def __init__(self, client: Sam3dClient, job_id: str, edits: JobEdits, link: str | None):
        super().__init__(edits)
        self.client, self.job_id, self.link = client, job_id, link

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.client.run_again(interaction, self.job_id, self.typed(), self.link)


class JobModal(SettingsModal, title="Make a 3D model"):
    def __init__(self, client: Sam3dClient, message: discord.Message, url: str):
        super().__init__()
        self.client, self.message, self.url = client, message, url
        # A form holds 5 parts: the two choices share one (a Label with a CheckboxGroup).
        self.choices = discord.ui.CheckboxGroup[JobModal](
            custom_id="choices",
            required=False,
            min_values=0,
            max_values=2,
            options=[
                discord.CheckboxGroupOption(
                    label="Pick the object on a grid first",
                    value="pick",
                    description="Point at it on the photo; nothing is charged until Make it",
                ),
                discord.CheckboxGroupOption(
                    label="Send it to my DMs",
                    value="private",
                    description="The result, its progress and errors to me alone",
                ),
            ],
        )
        self.add_item(discord.ui.Label(text="Choices (optional)", component=self.choices))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        attachment = next((a for a in self.message.attachments if a.url == self.url), None)
        photo = attachment or ImageSource.from_url(self.url)
        typed = self.typed()
        chosen = set(self.choices.values)
        private = True if "private" in chosen else None  # unticked: the server's default
        if "pick" in chosen:
            if typed.bbox or typed.points:
                await ephemeral(interaction, PICK_OR_TYPE)
                return
            await self.client.start_picking(
                interaction, photo, prompt=typed.prompt, seed=typed.seed, private=private
            )
            return
        await self.client.start_job(
            interaction,
            photo,
            prompt=typed.prompt,
            bbox=typed.bbox,
            points=typed.points,
            seed=typed.seed,
            private=private,
        )


class PickImage(AnsweringView):
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


def build_client(core: Core) -> Sam3dClient:
    """The client, with Discord's API root from the settings (discord.py keeps it globally)."""
    discord.http.Route.BASE = core.settings.discord_api_url
    return Sam3dClient(core)
