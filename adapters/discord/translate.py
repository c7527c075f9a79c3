"""Where Discord's types stop: interactions become core requests, core results become
messages. Nothing here talks to Discord; it only converts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot.models import FileKind, JobResult, Requester
from bot.replies import SHARED_KINDS, attachment_name, cost_text, link_line

if TYPE_CHECKING:
    from bot.downloads import DownloadLinks

PLATFORM = "discord"
TOKEN_LIFETIME_S = 15 * 60
TOKEN_MARGIN_S = 30  # stop using a token this long before Discord does
MAX_FILES = 10
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
NO_PINGS = discord.AllowedMentions.none()


def requester_of(interaction: discord.Interaction) -> Requester:
    user = interaction.user
    roles = tuple(str(role.id) for role in getattr(user, "roles", ()) if not role.is_default())
    permissions = interaction.permissions
    return Requester(
        platform=PLATFORM,
        user_id=str(user.id),
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        display_name=user.display_name,
        roles=roles,
        is_admin=bool(interaction.guild_id)
        and (permissions.manage_guild or permissions.administrator),
    )


def reply_to_of(interaction: discord.Interaction) -> dict[str, Any]:
    """What a restarted bot needs to answer this user: where, and the token while it lives."""
    return {
        "channel_id": interaction.channel_id,
        "guild_id": interaction.guild_id,
        "user_id": interaction.user.id,
        "application_id": interaction.application_id,
        "token": interaction.token,
        "token_expires_at": interaction.created_at.timestamp() + TOKEN_LIFETIME_S,
    }


def token_alive(reply_to: dict[str, Any], now: float | None = None) -> bool:
    expires = reply_to.get("token_expires_at", 0)
    if not isinstance(expires, int | float):
        return False
    return (now or time.time()) < expires - TOKEN_MARGIN_S


def images_in(message: discord.Message) -> list[tuple[str, str]]:
    """(label, url) of every image a message carries: attachments first, then embeds."""
    found = []
    for attachment in message.attachments:
        if (attachment.content_type or "").split(";")[
            0
        ] in IMAGE_TYPES or attachment.filename.lower().endswith(
            (".png", ".jpg", ".jpeg", ".webp")
        ):
            found.append((attachment.filename, attachment.url))
    for embed in message.embeds:
        for part in (embed.image, embed.thumbnail):
            if part and part.url:
                found.append((part.url.rsplit("/", 1)[-1][:80] or "embedded image", part.url))
    return found


@dataclass
class ResultMessage:
    embed: discord.Embed
    files: list[discord.File]
    links: list[str]  # files too large to attach, as lines with their links


def result_message(
    result: JobResult, size_limit: int, links: DownloadLinks | None = None
) -> ResultMessage:
    """The embed, the attachments that fit (at most 10) and links for the rest."""
    params = result.params
    embed = discord.Embed(title="3D model ready", colour=0x5865F2)
    if params.get("prompt"):
        embed.description = f"**{discord.utils.escape_markdown(params['prompt'])}**"
    embed.add_field(name="Seed", value=str(params.get("seed", "?")))
    embed.add_field(name="Cost", value=cost_text(result))
    embed.add_field(name="Time", value=f"{result.seconds:.0f} s")
    if links is not None and links.enabled:
        embed.url = links.viewer_link(result.job_id)
        embed.add_field(
            name="View in 3D", value=f"[Open in the browser]({embed.url})", inline=False
        )
    if result.note:
        embed.set_footer(text=result.note)
    files: list[discord.File] = []
    too_big: list[str] = []
    thumbnail = result.file(FileKind.THUMBNAIL)
    if thumbnail is not None and thumbnail.size <= size_limit:
        files.append(discord.File(thumbnail.path, filename="thumbnail.png"))
        embed.set_image(url="attachment://thumbnail.png")
    for file in result.files:
        if file.kind not in SHARED_KINDS:
            continue
        name = attachment_name(file)
        if file.size <= size_limit and len(files) < MAX_FILES:
            files.append(discord.File(file.path, filename=name))
        else:
            too_big.append(link_line(file, name, result.job_id, links))
    return ResultMessage(embed, files, too_big)
