"""The buttons on a result: New seed, Details, Delete. Their ids carry the action and the job,
so they keep working after a restart (discord.py rebuilds them from the id)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.conversions import CHOICES, choice_of
from bot.errors import BotError
from bot.operations import NOT_YOURS

from .answers import answer_failure, ephemeral
from .translate import chosen_value, requester_of

if TYPE_CHECKING:
    from .app import Sam3dClient

JOB = r"[0-9a-f]{6,32}"
JOB_ID = rf"(?P<job>{JOB})"


def result_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in BUTTONS:
        view.add_item(ResultButton(action, job_id))
    view.add_item(ResultFormats(job_id))
    return view


def variations_view(job_ids: list[str]) -> discord.ui.View:
    """Variations in one message: a row each (New seed, Edit, Details, Formats, numbered as
    their embeds), and Delete for the message under them."""
    view = discord.ui.View(timeout=None)
    for number, job_id in enumerate(job_ids, start=1):
        for action in ("seed", "edit", "details"):
            view.add_item(ResultButton(action, job_id, number))
        view.add_item(FormatsButton(job_id, number))
    delete = ResultButton("delete", job_ids[0])
    delete.item.row = len(job_ids)
    view.add_item(delete)
    return view


async def new_seed(client: Sam3dClient, interaction: discord.Interaction, job_id: str) -> None:
    """Run the job's photo again with another seed, as a new job under the quota."""
    link = interaction.message.jump_url if interaction.message is not None else None
    await client.run_again(interaction, job_id, from_link=link)


async def edit(client: Sam3dClient, interaction: discord.Interaction, job_id: str) -> None:
    """Edit and run again: the form filled in with the job's settings; its photo is used
    again (nothing to upload)."""
    from .app import EditModal

    try:
        edits = await client.core.service.editable(job_id)
    except BotError as error:
        await ephemeral(interaction, error.user_message)
        return
    link = interaction.message.jump_url if interaction.message is not None else None
    await interaction.response.send_modal(EditModal(client, job_id, edits, link))


async def details(client: Sam3dClient, interaction: discord.Interaction, job_id: str) -> None:
    text = await client.operations.job_details(job_id, discord.utils.escape_markdown)
    await ephemeral(interaction, text)


async def delete(client: Sam3dClient, interaction: discord.Interaction, job_id: str) -> None:
    if not await client.operations.may_delete(job_id, requester_of(interaction)):
        await ephemeral(interaction, NOT_YOURS)
        return
    # Through the press's own token: its original response is the message the button is on,
    # whichever way that was posted (the bot's channel route fails for a result that went
    # through a token: 50001 where the bot has no access).
    await interaction.response.defer()
    try:
        await interaction.delete_original_response()
    except discord.NotFound:
        await ephemeral(interaction, "That result is already deleted.")


# action -> (label, emoji, style, what it does)
BUTTONS = {
    "seed": ("New seed", "🎲", discord.ButtonStyle.primary, new_seed),
    "edit": ("Edit", "✏️", discord.ButtonStyle.secondary, edit),
    "details": ("Details", None, discord.ButtonStyle.secondary, details),
    "delete": ("Delete", None, discord.ButtonStyle.danger, delete),
}


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=rf"sam3d:(?P<action>seed|edit|details|delete):{JOB_ID}",
):
    """One button on a result; its id says what it does to which job."""

    def __init__(self, action: str, job_id: str, number: int | None = None):
        label, emoji, style, _ = BUTTONS[action]
        super().__init__(
            discord.ui.Button(
                label=label if number is None else f"{label} {number}",
                emoji=emoji,
                style=style,
                custom_id=f"sam3d:{action}:{job_id}",
                row=None if number is None else number - 1,
            )
        )
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> ResultButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        from .app import Sam3dClient

        client = interaction.client
        assert isinstance(client, Sam3dClient)
        try:
            await BUTTONS[self.action][3](client, interaction, self.job_id)
        except Exception as error:  # a dynamic item has no view of ours to catch it
            await answer_failure(interaction, error)


class ResultFormats(
    discord.ui.DynamicItem[discord.ui.Select[discord.ui.View]],
    template=rf"sam3d:formats:{JOB_ID}",
):
    """ "Formats…" on a result: the model as STL, 3MF, OBJ, USDZ, a lighter GLB or a printable
    size, converted on demand (free) and sent to the member alone."""

    def __init__(self, job_id: str):
        super().__init__(
            discord.ui.Select(
                custom_id=f"sam3d:formats:{job_id}",
                placeholder="Formats: STL, 3MF, OBJ, USDZ, a lighter GLB…",
                options=[discord.SelectOption(label=c.label, value=c.key) for c in CHOICES],
                row=1,
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> ResultFormats:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        from .app import Sam3dClient

        client = interaction.client
        assert isinstance(client, Sam3dClient)
        try:
            await send_format(client, interaction, self.job_id, chosen_value(interaction) or "")
        except Exception as error:  # a dynamic item has no view of ours to catch it
            await answer_failure(interaction, error)


class FormatsButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=rf"sam3d:formatsof:{JOB_ID}",
):
    """A variation's "Formats…": its menu of formats, to the member alone (a message of
    several models has no room for a menu each)."""

    def __init__(self, job_id: str, number: int | None = None):
        super().__init__(
            discord.ui.Button(
                label="Formats…" if number is None else f"Formats {number}…",
                style=discord.ButtonStyle.secondary,
                custom_id=f"sam3d:formatsof:{job_id}",
                row=None if number is None else number - 1,
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> FormatsButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(ResultFormats(self.job_id))
        try:
            await interaction.response.send_message(
                f"Job `{self.job_id}` in another format:", view=view, ephemeral=True
            )
        except Exception as error:  # a dynamic item has no view of ours to catch it
            await answer_failure(interaction, error)


async def send_format(
    client: Sam3dClient, interaction: discord.Interaction, job_id: str, key: str
) -> None:
    """Converted (or from the cache) and sent to the member alone: attached when within the
    interaction's upload limit, else as the bot's signed link, else said why not."""
    conversions = client.core.conversions
    assert conversions is not None
    choice = choice_of(key)
    await interaction.response.defer(ephemeral=True, thinking=True)
    file, _ = await conversions.file_for(job_id, key)
    text = f"Your model as {choice.phrase}."
    if file.size <= interaction.filesize_limit:
        await interaction.followup.send(
            text, file=discord.File(file.path, choice.file_name), ephemeral=True
        )
        return
    packed = await conversions.zipped(file, choice.file_name)
    if packed.size <= interaction.filesize_limit:
        await interaction.followup.send(
            f"{text} (In a ZIP: it fits Discord's upload limit that way.)",
            file=discord.File(packed.path, f"{choice.file_name}.zip"),
            ephemeral=True,
        )
        return
    links = client.core.links
    if links is not None and links.enabled:
        link = links.link(job_id, choice.kept_as)
        await interaction.followup.send(f"{text} It is too large to attach: {link}", ephemeral=True)
        return
    await interaction.followup.send(
        f"That file is {file.size / 1e6:.0f} MB, over what Discord lets me attach here, and this "
        "bot has no web address for downloads (PUBLIC_URL). Try the lighter GLB.",
        ephemeral=True,
    )


def cancel_view(job_id: str, label: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id, label))
    return view


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=rf"sam3d:cancel:(?P<job>{JOB}(?:,{JOB}){{0,3}})",
):
    """Cancel on a job's progress (or on variations', for each of them): the core says what
    it can do at each one's stage."""

    def __init__(self, job_id: str, label: str = "Cancel"):
        super().__init__(
            discord.ui.Button(
                label=label, style=discord.ButtonStyle.secondary, custom_id=f"sam3d:cancel:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> CancelButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        from .app import Sam3dClient

        client = interaction.client
        assert isinstance(client, Sam3dClient)
        try:
            jobs = self.job_id.split(",")
            who = requester_of(interaction)
            said = [await client.core.service.cancel(job, who) for job in jobs]
            if len(said) > 1:
                said = [f"Job `{job}`: {text}" for job, text in zip(jobs, said, strict=True)]
            await ephemeral(interaction, "\n".join(said))
        except Exception as error:  # a dynamic item has no view of ours to catch it
            await answer_failure(interaction, error)
