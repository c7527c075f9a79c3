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
MiB = 1024 * 1024
CONTENT_MAX = 2000  # a message's content (resources/message.mdx, "up to 2000 characters")
REQUEST_MAX = 25 * MiB  # "The maximum request size when sending a message is 25 MiB"
LINK_LINE_MAX = CONTENT_MAX - 100  # a link line, with room for the mention before it
TOKEN_LIFETIME_S = 15 * 60
TOKEN_MARGIN_S = 30  # stop using a token this long before Discord does
MAX_FILES = 10
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
NO_PINGS = discord.AllowedMentions.none()
DISCORD_MESSAGE_LINK = "https://discord.com/channels/"  # what Message.jump_url makes


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
    """What a restarted bot needs to answer this user: where, and the token while it lives,
    whether the bot may post there itself, and the upload limit of each way of answering."""
    guild = interaction.guild
    return {
        "channel_id": interaction.channel_id,
        "guild_id": interaction.guild_id,
        "user_id": interaction.user.id,
        "application_id": interaction.application_id,
        "token": interaction.token,
        "token_expires_at": interaction.created_at.timestamp() + TOKEN_LIFETIME_S,
        "post_in_channel": bot_may_post(interaction),
        # The bot's own post is held to the server's limit (its Boost tier); what goes through
        # the token, to the interaction's attachment_size_limit (which counts the member's
        # Nitro). reference.mdx, "Uploading Files".
        "channel_upload_limit": (
            guild.filesize_limit
            if guild is not None
            else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        ),
        "token_upload_limit": interaction.filesize_limit,
    }


def bot_may_post(interaction: discord.Interaction) -> bool:
    """Whether the bot itself may post the result where the command was used: a server that
    installed it, with View Channel and Send Messages (in threads: Send Messages in Threads)
    there, or its own DM with the member. Anywhere else (a user-installed app, a channel it
    may not write in) results go through the interaction's token."""
    context = interaction.context
    if interaction.guild_id is None:
        return bool(context.dm_channel) and not interaction.is_user_integration()
    if not interaction.is_guild_integration():
        return False
    allowed = interaction.app_permissions
    channel = interaction.channel
    in_thread = isinstance(channel, discord.Thread) or getattr(channel, "type", None) in (
        discord.ChannelType.public_thread,
        discord.ChannelType.private_thread,
        discord.ChannelType.news_thread,
    )
    send = allowed.send_messages_in_threads if in_thread else allowed.send_messages
    return allowed.view_channel and send


def places_of(interaction: discord.Interaction) -> list[str]:
    """The channel a command came from and what holds it, for the channel rules: a thread's
    channel (a forum or media channel, for a post), and the category of either."""
    places = [str(interaction.channel_id)]
    channel = interaction.channel
    holder = channel
    thread_parent = (
        getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) else None
    )
    if thread_parent:
        places.append(str(thread_parent))
        guild = interaction.guild
        holder = guild.get_channel(thread_parent) if guild is not None else None
    category_id = getattr(holder, "category_id", None)
    if category_id:
        places.append(str(category_id))
    return places


def fit(text: str, limit: int = CONTENT_MAX) -> str:
    """Text within Discord's limit, cut at a line where it can be, with a clear ending."""
    if len(text) <= limit:
        return text
    ending = "\n… (cut: too long for one Discord message)"
    room = limit - len(ending)
    cut = text.rfind("\n", 0, room)
    return text[: cut if cut > room // 2 else room].rstrip() + ending


def pages(text: str, limit: int = CONTENT_MAX) -> list[str]:
    """Long text (a usage table) as messages within the limit, split between lines; a code
    block split over two messages is closed and opened again, so each shows as one."""
    fence = "```"
    room = limit - len(fence) - 1  # space to close a block the page ends inside
    out: list[str] = []
    current, in_block = "", False
    for line in text.splitlines():
        line = fit(line, room - len(fence) - 1)
        if current and len(current) + 1 + len(line) > room:
            out.append(current + ("\n" + fence if in_block else ""))
            current = fence + "\n" + line if in_block else line
        else:
            current = f"{current}\n{line}" if current else line
        if line.startswith(fence):
            in_block = not in_block
    if current or not out:
        out.append(current)
    return out


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
class UploadRoom:
    """What one message may still carry: Discord's 10 files and 25 MiB a request."""

    files: int = MAX_FILES
    bytes: int = REQUEST_MAX

    def take(self, size: int) -> bool:
        if self.files < 1 or size > self.bytes:
            return False
        self.files -= 1
        self.bytes -= size
        return True


@dataclass
class ResultMessage:
    embed: discord.Embed
    files: list[discord.File]
    links: list[str]  # files too large to attach, as lines with their links


def result_message(
    result: JobResult,
    size_limit: int,
    links: DownloadLinks | None = None,
    number: int | None = None,
    room: UploadRoom | None = None,
) -> ResultMessage:
    """The embed, the attachments that fit (within `room`: at most 10 a message) and links
    for the rest. A variation (`number`) is titled and its files named by its number."""
    room = room or UploadRoom()
    params = result.params
    prefix = "" if number is None else f"v{number}-"
    title = "3D model ready" if number is None else f"Variation {number}"
    if number is None and params.get("variation"):  # one of several, posted on its own
        title += f" (variation {params['variation']} of {params.get('variations', '?')})"
    embed = discord.Embed(title=title, colour=0x5865F2)
    if params.get("prompt"):
        embed.description = f"**{discord.utils.escape_markdown(params['prompt'])}**"
    embed.add_field(name="Seed", value=str(params.get("seed", "?")))
    embed.add_field(name="Cost", value=cost_text(result))
    embed.add_field(name="Time", value=f"{result.seconds:.0f} s")
    if params.get("from_job"):  # Edit / New seed: back to the result it came from
        origin = f"job `{params['from_job']}`"
        link = params.get("from_link")
        if isinstance(link, str) and link.startswith(DISCORD_MESSAGE_LINK):
            origin = f"[{origin}]({link})"
        embed.add_field(name="Made from", value=origin, inline=False)
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
    picture = f"{prefix}thumbnail.png"
    if thumbnail is not None and thumbnail.size <= size_limit and room.take(thumbnail.size):
        files.append(discord.File(thumbnail.path, filename=picture))
        embed.set_image(url=f"attachment://{picture}")
    names = {picture, f"{prefix}turntable.gif"}
    for file in result.files:
        if file.kind not in SHARED_KINDS:
            continue
        name = unique_name(prefix + attachment_name(file), names)
        if file.size <= size_limit and room.take(file.size):
            files.append(discord.File(file.path, filename=name))
        else:
            line = link_line(file, name, result.job_id, links)
            if len(line) > LINK_LINE_MAX:  # a presigned link longer than a message
                line = (
                    f"{name} ({file.size / 1e6:.1f} MB): too large to attach, and its link is "
                    "too long for a Discord message (an admin can set PUBLIC_URL for short links)"
                )
            too_big.append(line)
    return ResultMessage(embed, files, too_big)


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or name-2, name-3 ... where a file of the result already has it (Discord keeps
    both, and `attachment://name` would point at one only)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}-{number}{dot}{suffix}"
    taken.add(candidate)
    return candidate


def chosen_value(interaction: discord.Interaction) -> str | None:
    """The option a select's press chose (a button's press has none)."""
    data: dict[str, Any] = dict(interaction.data or {})
    values = data.get("values")
    return str(values[0]) if isinstance(values, list) and values else None
