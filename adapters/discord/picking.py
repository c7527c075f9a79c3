"""Pick the object on Discord: an ephemeral message to the member with the photo, its grid
and what is chosen, a column and a row select, Add point / Box corner / Undo / Cancel, and
"Make it ($0.065, N left today)"; with PUBLIC_URL, a "Pick on the web" link as well.

Every control's id names its action and the pick, so it keeps working after a restart and
on whichever instance gets the press (the pick lives in the shared data folder)."""

from __future__ import annotations

import io
import re
import string
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import BotError
from bot.models import JobRequest
from bot.picker import Pick

from .answers import answer_failure
from .replier import resumed_followup
from .translate import NO_PINGS, chosen_value, requester_of

if TYPE_CHECKING:
    from .app import Sam3dClient

PICK_ID = r"(?P<pick>[A-Za-z0-9_-]{16})"
HOW = (
    "**Pick the object**: choose a column and a row, then **Add point** on the object (as many "
    "as help), or **Box corner** twice for a box around it."
)


def picker_text(pick: Pick) -> str:
    return (
        f"{HOW}\nChosen: {pick.describe()}.\n"
        f"Nothing is charged until you press Make it. Expires <t:{int(pick.expires_at)}:R>."
    )


def picker_view(pick: Pick, make_label: str, web_link: str | None) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    grid = pick.grid
    view.add_item(
        PickControl.select(
            "column",
            pick.id,
            "Column",
            [string.ascii_uppercase[c] for c in range(grid.columns)],
            pick.column,
        )
    )
    view.add_item(
        PickControl.select("row", pick.id, "Row", [str(r + 1) for r in range(grid.rows)], pick.row)
    )
    for action in ("point", "corner", "undo", "cancel"):
        view.add_item(PickControl.button(action, pick.id))
    view.add_item(PickControl.button("make", pick.id, make_label))
    if web_link:
        view.add_item(discord.ui.Button(label="Pick on the web", url=web_link, row=3))
    return view


async def picker_message(client: Sam3dClient, pick: Pick) -> dict[str, Any]:
    """The message's parts: its text, the preview, the controls."""
    picker = client.core.picker
    assert picker is not None
    preview = await picker.preview(pick)
    links = client.core.links
    web = links.pick_link(pick.id, pick.expires_at) if links and links.enabled else None
    return {
        "content": picker_text(pick),
        "files": [discord.File(io.BytesIO(preview), "pick.jpg")],
        "view": picker_view(pick, await picker.price_label(pick.requester), web),
        "allowed_mentions": NO_PINGS,
    }


# action -> (label, style, row)
BUTTONS = {
    "point": ("Add point", discord.ButtonStyle.primary, 2),
    "corner": ("Box corner", discord.ButtonStyle.secondary, 2),
    "undo": ("Undo", discord.ButtonStyle.secondary, 2),
    "cancel": ("Cancel", discord.ButtonStyle.danger, 2),
    "make": ("Make it", discord.ButtonStyle.success, 3),
}


class PickControl(
    discord.ui.DynamicItem[discord.ui.Item[discord.ui.View]],
    template=rf"sam3d-pick:(?P<action>column|row|point|corner|undo|cancel|make):{PICK_ID}",
):
    """One control of a picker message; its id says what it does to which pick."""

    def __init__(self, item: discord.ui.Item[discord.ui.View], action: str, pick_id: str):
        super().__init__(item)
        self.action, self.pick_id = action, pick_id

    @classmethod
    def select(
        cls, action: str, pick_id: str, placeholder: str, values: list[str], chosen: str | None
    ) -> PickControl:
        select: discord.ui.Select[discord.ui.View] = discord.ui.Select(
            custom_id=f"sam3d-pick:{action}:{pick_id}",
            placeholder=placeholder,
            options=[discord.SelectOption(label=v, value=v, default=v == chosen) for v in values],
            row=0 if action == "column" else 1,
        )
        return cls(select, action, pick_id)

    @classmethod
    def button(cls, action: str, pick_id: str, label: str | None = None) -> PickControl:
        text, style, row = BUTTONS[action]
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
            label=label or text, style=style, custom_id=f"sam3d-pick:{action}:{pick_id}", row=row
        )
        return cls(button, action, pick_id)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> PickControl:
        return cls(item, match["action"], match["pick"])

    async def callback(self, interaction: discord.Interaction) -> None:
        from .app import Sam3dClient

        client = interaction.client
        assert isinstance(client, Sam3dClient)
        try:
            if self.action == "make":
                await make_it(client, interaction, self.pick_id)
            elif self.action == "cancel":
                await cancel(client, interaction, self.pick_id)
            else:
                await change(client, interaction, self.pick_id, self.action)
        except BotError as error:
            await answer_failure(interaction, error)
        except Exception as error:  # a dynamic item has no view of ours to catch it
            await answer_failure(interaction, error)


async def change(
    client: Sam3dClient, interaction: discord.Interaction, pick_id: str, action: str
) -> None:
    """A select or a button that changes the pick: the message is redrawn in place."""
    picker = client.core.picker
    assert picker is not None
    value = chosen_value(interaction)
    steps = {
        "column": lambda p: p.point_at(column=value),
        "row": lambda p: p.point_at(row=value),
        "point": Pick.add_point,
        "corner": Pick.box_corner,
        "undo": Pick.undo,
    }
    pick = await picker.change(pick_id, requester_of(interaction), steps[action])
    message = await picker_message(client, pick)
    message["attachments"] = message.pop("files")  # in place of the last preview
    await interaction.response.edit_message(**message)


async def cancel(client: Sam3dClient, interaction: discord.Interaction, pick_id: str) -> None:
    picker = client.core.picker
    assert picker is not None
    await picker.cancel(pick_id, requester_of(interaction))
    await interaction.response.edit_message(
        content="Cancelled: nothing was charged.", attachments=[], view=None
    )


async def make_it(client: Sam3dClient, interaction: discord.Interaction, pick_id: str) -> None:
    """The job, from this press: its progress and result where a /sam3d's would be (a new
    message in the channel), the picker message saying so."""
    picker = client.core.picker
    assert picker is not None
    if not await client.may_post_here(interaction):
        return
    pick, photo = await picker.take(pick_id, requester_of(interaction))
    private = bool(pick.reply_to.get("private"))  # to their DMs: the progress to them alone
    await interaction.response.defer(ephemeral=private, thinking=True)
    replier = client.replier_for(interaction, private=private)
    await close_picker(client, pick, f"Making it with {pick.describe()}.")
    client.background(
        client.core.service.run(
            pick.request(photo, replier.reply_to), replier, idempotency_key=f"pick:{pick.id}"
        )
    )


async def close_picker(client: Sam3dClient, pick: Pick, text: str) -> None:
    """The picker message, through the token of the command that opened it, without its
    controls (a press on them now would only be told the pick is made)."""
    webhook = resumed_followup(client, pick.reply_to)
    if webhook is None:
        return
    try:
        await webhook.edit_message(
            "@original",  # type: ignore[call-overload]
            content=text,
            attachments=[],
            view=None,
            allowed_mentions=NO_PINGS,
        )
    except discord.HTTPException:  # dismissed or expired: the job goes on regardless
        pass


async def start_picked_on_web(client: Sam3dClient, pick: Pick, request: JobRequest) -> None:
    """Make it pressed on the web page: the job reports where the picker message is (its
    progress there, the result in the channel), as one started in the chat."""
    replier = client.replier_for_record_data(pick.reply_to)
    await close_picker(client, pick, f"Making it with {pick.describe()} (picked on the web).")
    client.background(client.core.service.run(request, replier, idempotency_key=f"pick:{pick.id}"))
