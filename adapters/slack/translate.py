"""Where Slack's payloads stop: command text, modals, shortcuts and mentions become core
requests; core results become mrkdwn. Nothing here talks to Slack; it only converts."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bot.conversions import CHOICES
from bot.errors import InputError
from bot.images import parse_bbox, parse_points, parse_seed
from bot.models import SEED_MAX, SEED_MIN, JobEdits, JobResult, Progress, Requester
from bot.replies import cost_text
from bot.variations import MAX_VARIATIONS

if TYPE_CHECKING:
    from bot.downloads import DownloadLinks

PLATFORM = "slack"
COMMAND = "/sam3d"
JOB_VIEW = "sam3d_job"  # the modal's callback_id
SHORTCUT = "sam3d_make"  # the message shortcut's callback_id
NEW_SEED = "sam3d_new_seed"  # the buttons on a finished job
EDIT = "sam3d_edit"
DETAILS = "sam3d_details"
DELETE = "sam3d_delete"
FORMATS = "sam3d_formats"  # the model in another format, on demand
CANCEL = "sam3d_cancel"  # on a job's progress
MAX_PROMPT = 200
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
KEYS = ("seed", "bbox", "points", "mask", "variations", "private")

HELP = f"""*Make a 3D model of an object in a photo*
• `{COMMAND}` opens a form: the photo, and if you like a mask, what the object is, a box, \
points and a seed.
• `{COMMAND} <photo link> [what it is] [seed=42] [bbox=x1,y1,x2,y2] [points=x,y;x,y]` \
runs at once; `variations=3` makes 2 to 4 models with different seeds, in one thread; \
`private=yes` sends it to your DM with me instead.
• On a message with a photo: ⋯ More actions > *Make 3D model*.
• Mention me in a message with a photo, or in reply to one: `@sam3d red chair`.
• `{COMMAND} pick <photo link>`, or `pick` first when you mention me: point at the object \
on a grid before paying.
• `{COMMAND} history [page]`: your models, newest first.
• `{COMMAND} forget-me`: remove your photos and models from the bot (it asks first).
• `{COMMAND} quota`: how many jobs you have left.
• `{COMMAND} admin ...`: usage, quotas, budget, blocks and pauses (workspace admins)."""

ADMIN_HELP = f"""*Admin commands* (`{COMMAND} admin ...`)
• `usage [YYYY-MM]`: this workspace's jobs and spend
• `quota <jobs|unlimited|default> [@user] [hours]`: jobs per window, for a user or everyone
• `budget <USD|none>`: this workspace's monthly budget
• `block @user [reason]`, `unblock @user`
• `pause [reason]`, `resume`: stop or open new jobs here
• `refund <job id> [reason]`: give a job back to its user
• `channel #channel on|off`: keep jobs to some channels (none listed: every channel)
• `forget @user`: remove a member's photos and models made here (it asks first)
• `private allowed|default|forbidden`: whether results may go to members' DMs with me"""


# -- text people type ------------------------------------------------------------------------

LINK = re.compile(r"<((?:https?://)[^>|]+)(?:\|[^>]*)?>")
USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|[^>]*)?>")


@dataclass(frozen=True)
class JobArgs:
    """A job as typed after `/sam3d` or a mention: a link, words for the prompt, key=value."""

    url: str | None = None
    prompt: str | None = None
    seed: str | None = None
    bbox: str | None = None
    points: str | None = None
    mask_url: str | None = None
    variations: int = 1  # variations=2..4: that many seeds at once
    private: bool | None = None  # private=yes: to the member's DM with the bot


def unescape(text: str) -> str:
    """Slack sends &, < and > in text as &amp;, &lt; and &gt; (and nothing else escaped)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


MARKUP = re.compile(r"<([^<>]*)>")
TOKEN = re.compile(r"(?:<[^<>]*>|[^\s<])+")  # a word, with Slack's <...> kept whole


def plain(text: str) -> str:
    """Slack's text as its writer saw it: a link by its label (or its address), a user or
    channel by the name Slack gave with it (or nothing), @here and the like gone, entities
    decoded. Nothing of it can mention anyone once escaped again for display."""

    def spoken(match: re.Match[str]) -> str:
        inside = match.group(1)
        target, _, label = inside.partition("|")
        if target.startswith(("@", "#")):  # <@U123|name>, <#C123|general>
            return (target[0] + label) if label and target[0] == "#" else label
        if target.startswith("!"):  # <!here>, <!channel>, <!date^...|fallback>
            return label if target.startswith("!date") else ""
        return label or target  # a link

    return unescape(MARKUP.sub(spoken, text))


def link_in(token: str) -> str | None:
    """The address of a link typed as Slack writes it (<url> or <url|label>) or bare."""
    match = LINK.fullmatch(token)
    address = unescape(match.group(1) if match else token)
    return address if address.lower().startswith(("http://", "https://")) else None


def parse_job_text(text: str) -> JobArgs:
    """`/sam3d` text or a mention, as Slack sends it (escaped, with its markup)."""
    words, options, url = [], {}, None
    for token in TOKEN.findall(text):
        key, sep, value = token.partition("=")
        if sep and key.lower() in KEYS:
            options[key.lower()] = link_in(value) or plain(value)
            continue
        address = link_in(token)
        if url is None and address is not None:
            url = address
            continue
        words.append(plain(token))
    prompt = " ".join(" ".join(words).split()) or None
    if prompt is not None and len(prompt) > MAX_PROMPT:
        raise InputError("prompt", f"keep it to {MAX_PROMPT} characters")
    return JobArgs(
        url,
        prompt,
        options.get("seed"),
        options.get("bbox"),
        options.get("points"),
        options.get("mask"),
        variations_in(options.get("variations")),
        yes_or_no(options.get("private"), "private"),
    )


def yes_or_no(value: str | None, field: str) -> bool | None:
    if value is None:
        return None
    said = value.strip().lower()
    if said in ("yes", "on", "true", "1"):
        return True
    if said in ("no", "off", "false", "0"):
        return False
    raise InputError(field, "say yes or no")


def variations_in(value: str | None) -> int:
    """variations=N as typed: 1 to 4."""
    if value is None:
        return 1
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_VARIATIONS:
        raise InputError("variations", f"give 1 to {MAX_VARIATIONS}")
    return int(value)


def wants_pick(args: JobArgs) -> tuple[bool, JobArgs]:
    """`pick red chair`: pick the object first; the other words are still the prompt."""
    first, _, rest = (args.prompt or "").partition(" ")
    if first.lower() != "pick":
        return False, args
    return True, replace(args, prompt=rest.strip() or None)


def strip_mentions(text: str, bot_user_id: str | None) -> str:
    """A mention's text without the bot's own mention."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text)
    return text.strip()


def user_id_in(token: str) -> str | None:
    """A user named in a command: <@U123|name> as Slack escapes it, or a bare U123."""
    match = USER.fullmatch(token)
    if match:
        return match.group(1)
    return token if re.fullmatch(r"[UW][A-Z0-9]{2,}", token) else None


def channel_id_in(token: str) -> str | None:
    match = CHANNEL.fullmatch(token)
    if match:
        return match.group(1)
    return token if re.fullmatch(r"[CG][A-Z0-9]{2,}", token) else None


def escape(text: str) -> str:
    """User text shown in mrkdwn: no mentions, links or formatting smuggled in."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- who and where ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where a job talks: the channel, the thread of its source message if any, and the
    command's response_url (ephemeral answers where the bot is not a member)."""

    channel_id: str
    thread_ts: str | None = None
    response_url: str | None = None

    def privately(self, user_id: str) -> Place:
        """The member's DM with the bot (Slack opens it from their id), answering what was
        asked here."""
        return Place(user_id, None, self.response_url)

    def reply_to(self, user_id: str, team_id: str | None) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "thread_ts": self.thread_ts,
            "response_url": self.response_url,
            "user_id": user_id,
            "team_id": team_id,
        }


def requester(
    user_id: str, team_id: str | None, name: str = "", is_admin: bool = False
) -> Requester:
    return Requester(
        platform=PLATFORM,
        user_id=user_id,
        guild_id=team_id or None,
        display_name=name,
        is_admin=is_admin,
    )


def team_of(body: dict[str, Any]) -> str | None:
    """The workspace of a payload (slash command, interaction or event)."""
    team = body.get("team")
    if isinstance(team, dict) and team.get("id"):
        return str(team["id"])
    user = body.get("user")
    found = body.get("team_id") or (user.get("team_id") if isinstance(user, dict) else None)
    return str(found) if found else None


def shared_at(files: list[dict[str, Any]], channel: str) -> list[str]:
    """The timestamps of the messages that share these files in `channel` (a file object's
    shares: {"public" | "private": {channel: [{"ts": ...}]}})."""
    found = []
    for file in files:
        shares = file.get("shares") if isinstance(file, dict) else None
        for kind in ("public", "private"):
            for share in ((shares or {}).get(kind) or {}).get(channel) or []:
                ts = share.get("ts") if isinstance(share, dict) else None
                if isinstance(ts, str) and ts not in found:
                    found.append(ts)
    return found


def image_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The files of a message or a form that are photos we can use, or may be: a Slack
    Connect stub ("file_access": "check_file_info", looked up with files.info) and a file
    the free plan hides ("mode": "hidden_by_limit", explained when it is tried)."""
    return [
        f
        for f in files or ()
        if isinstance(f, dict)
        and (
            (f.get("mimetype") or "").split(";")[0] in IMAGE_TYPES
            or (f.get("name") or "").lower().endswith(IMAGE_SUFFIXES)
            or f.get("file_access") == "check_file_info"
            or f.get("mode") == "hidden_by_limit"
        )
    ]


# -- the modal -------------------------------------------------------------------------------


def _text_input(
    block_id: str,
    label: str,
    placeholder: str,
    max_length: int | None = None,
    initial: str | None = None,
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": block_id,
        "placeholder": {"type": "plain_text", "text": placeholder},
    }
    if max_length:
        element["max_length"] = max_length
    if initial:
        element["initial_value"] = initial[:max_length] if max_length else initial
    return {
        "type": "input",
        "block_id": block_id,
        "optional": True,
        "label": {"type": "plain_text", "text": label},
        "element": element,
    }


def _file_input(block_id: str, label: str, optional: bool) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": block_id,
        "optional": optional,
        "label": {"type": "plain_text", "text": label},
        "element": {
            "type": "file_input",
            "action_id": block_id,
            "max_files": 1,
            "filetypes": [s.lstrip(".") for s in IMAGE_SUFFIXES],
        },
    }


def job_modal(
    metadata: dict[str, Any],
    images: list[dict[str, Any]] | None = None,
    edits: JobEdits | None = None,
) -> dict[str, Any]:
    """The form: a photo to upload (or, from a message, which of its photos), then the
    optional settings. `metadata` rides along in private_metadata to the submission. With
    `edits` (Edit on a result, `from_job` in `metadata`): the settings filled in, the photo
    that job's."""
    blocks: list[dict[str, Any]] = []
    if edits is not None:
        blocks.append(_section("image", f"Photo: the one of job `{metadata['from_job']}`"))
    elif images is None:
        blocks.append(_file_input("image", "Photo (PNG, JPEG or WebP)", optional=False))
    elif len(images) == 1:
        blocks.append(_section("image", f"Photo: *{escape(images[0]['name'])}*"))
    else:
        blocks.append(
            {
                "type": "input",
                "block_id": "image",
                "label": {"type": "plain_text", "text": "Which photo?"},
                "element": {
                    "type": "static_select",
                    "action_id": "image",
                    "initial_option": _option(images[0]),
                    "options": [_option(f) for f in images[:100]],
                },
            }
        )
    typed = edits or JobEdits()
    seed: dict[str, Any] = {
        "type": "number_input",
        "action_id": "seed",
        "is_decimal_allowed": False,
        "min_value": str(SEED_MIN),
        "max_value": str(SEED_MAX),
    }
    if typed.seed is not None:
        seed["initial_value"] = str(typed.seed)
    blocks += [
        _text_input("prompt", "What is the object?", "e.g. red chair", MAX_PROMPT, typed.prompt),
        _text_input("bbox", "Box around it", "x1,y1,x2,y2 in pixels", initial=typed.bbox),
        _text_input("points", "Points on it", "x,y;x,y in pixels", initial=typed.points),
        {
            "type": "input",
            "block_id": "seed",
            "optional": True,
            "label": {"type": "plain_text", "text": "Seed (the same seed gives the same model)"},
            "element": seed,
        },
    ]
    if edits is None:  # an Edit keeps the job's photo and mask
        blocks += [
            _file_input("mask", "Mask (white = the object)", optional=True),
            VARIATIONS_BLOCK,
            PICK_BLOCK,
            PRIVATE_BLOCK,
        ]
    return {
        "type": "modal",
        "callback_id": JOB_VIEW,
        "title": {
            "type": "plain_text",
            "text": "Make a 3D model" if edits is None else "Edit and run again",
        },
        "submit": {"type": "plain_text", "text": "Make it"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps(metadata),
        "blocks": blocks,
    }


def _section(block_id: str, text: str) -> dict[str, Any]:
    return {"type": "section", "block_id": block_id, "text": {"type": "mrkdwn", "text": text}}


VARIATIONS_BLOCK = {
    "type": "input",
    "block_id": "variations",
    "optional": True,
    "label": {"type": "plain_text", "text": "Variations"},
    "hint": {
        "type": "plain_text",
        "text": "Several models with different seeds, in one thread; each is one job",
    },
    "element": {
        "type": "static_select",
        "action_id": "variations",
        "placeholder": {"type": "plain_text", "text": "One model"},
        "options": [
            {"text": {"type": "plain_text", "text": f"{n} models"}, "value": str(n)}
            for n in range(2, MAX_VARIATIONS + 1)
        ],
    },
}


def _checkbox(block_id: str, label: str, text: str, description: str) -> dict[str, Any]:
    """An optional block of one checkbox, its value the block's id."""
    option = {
        "text": {"type": "plain_text", "text": text},
        "description": {"type": "plain_text", "text": description},
        "value": block_id,
    }
    return {
        "type": "input",
        "block_id": block_id,
        "optional": True,
        "label": {"type": "plain_text", "text": label},
        "element": {"type": "checkboxes", "action_id": block_id, "options": [option]},
    }


PRIVATE_BLOCK = _checkbox(
    "private",
    "Where it goes",
    "Send it to me privately",
    "In my DM with the bot, not in the channel",
)
PICK_BLOCK = _checkbox(
    "pick",
    "Pick the object",
    "Point at it on a grid first",
    "Nothing is charged until you press Make it",
)


def _option(file: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": {"type": "plain_text", "text": (file.get("name") or file["id"])[:75]},
        "value": file["id"],
    }


@dataclass(frozen=True)
class ModalAnswers:
    files: list[dict[str, Any]]  # the uploaded photo (file objects), if uploaded in the form
    file_id: str | None  # or the id of the message's photo that was picked
    mask: dict[str, Any] | None
    prompt: str | None
    bbox: str | None
    points: str | None
    seed: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    pick: bool = False  # "Point at it on a grid first"
    variations: str | None = None
    private: bool = False  # "Send it to me privately"


def modal_answers(view: dict[str, Any]) -> ModalAnswers:
    values = view.get("state", {}).get("values", {})

    def value(block: str) -> Any:
        return next(iter(values.get(block, {}).values()), {})

    metadata = json.loads(view.get("private_metadata") or "{}")
    image = value("image")
    picked = (image.get("selected_option") or {}).get("value")
    message_files = metadata.get("files") or []
    masks = value("mask").get("files") or []
    return ModalAnswers(
        files=image.get("files") or [],
        file_id=picked or (message_files[0] if message_files else None),
        mask=masks[0] if masks else None,
        prompt=(value("prompt").get("value") or "").strip() or None,
        bbox=(value("bbox").get("value") or "").strip() or None,
        points=(value("points").get("value") or "").strip() or None,
        seed=(value("seed").get("value") or "").strip() or None,
        metadata=metadata,
        pick=any(o.get("value") == "pick" for o in value("pick").get("selected_options") or []),
        variations=(value("variations").get("selected_option") or {}).get("value"),
        private=any(
            o.get("value") == "private" for o in value("private").get("selected_options") or []
        ),
    )


def check_answers(answers: ModalAnswers, max_bytes: int) -> dict[str, str]:
    """What is wrong in the form, by block, for Slack to show under the fields while the form
    stays open (response_action: errors): the photo and mask, their size, the box and points
    (against the photo's size where Slack gives it) and the seed."""
    errors = {}
    photo = answers.files[0] if answers.files else None
    if not answers.files and not answers.file_id and not answers.metadata.get("from_job"):
        errors["image"] = "Add a photo."
    elif answers.files and not image_files(answers.files):
        errors["image"] = "That is not a PNG, JPEG or WebP photo."
    elif photo is not None and (photo.get("size") or 0) > max_bytes:
        errors["image"] = f"That photo is larger than {max_bytes / 1_000_000:g} MB."
    if answers.mask is not None and not image_files([answers.mask]):
        errors["mask"] = "The mask must be a PNG, JPEG or WebP image."
    if answers.pick and (answers.bbox or answers.points or answers.mask):
        errors["pick"] = "Pick the object, or type a box, points or a mask: one, not both."
    if answers.pick and answers.variations not in (None, "1"):
        errors["pick"] = "Pick the object for one model at a time."
    width, height = (photo or {}).get("original_w"), (photo or {}).get("original_h")
    if not (isinstance(width, int) and isinstance(height, int)):
        width = height = 1 << 30  # unknown here: the job checks against the photo itself
    checks: dict[str, Callable[[], object]] = {
        "variations": lambda: variations_in(answers.variations),
        "bbox": lambda: parse_bbox(answers.bbox, width, height),
        "points": lambda: parse_points(answers.points, width, height),
        "seed": lambda: parse_seed(answers.seed),
    }
    for block, check in checks.items():
        try:
            check()
        except InputError as error:
            errors[block] = error.user_message.removeprefix(f"{error.field}: ")[:150]
    return errors


# -- results ---------------------------------------------------------------------------------


def progress_text(user_id: str, stage: str) -> str:
    return f"⏳ <@{user_id}>'s 3D model: {stage}…"


def progress_blocks(text: str, update: Progress) -> list[dict[str, Any]]:
    """The progress message, with Cancel while it can be pressed (the core says what)."""
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if update.cancel_label and update.job_id:
        button = {
            "type": "button",
            "action_id": CANCEL,
            "value": update.job_id,
            "text": {"type": "plain_text", "text": update.cancel_label},
        }
        blocks.append({"type": "actions", "elements": [button]})
    return blocks


def result_text(result: JobResult, user_id: str, links: DownloadLinks | None = None) -> str:
    params = result.params
    which = (
        f" (variation {params['variation']} of {params.get('variations', '?')})"
        if params.get("variation")
        else ""
    )
    lines = [
        f"<@{user_id}> your 3D model is ready{which}"
        + (f": *{escape(params['prompt'])}*" if params.get("prompt") else "")
    ]
    lines.append(
        f"Seed {params.get('seed', '?')} · {cost_text(result)} · "
        f"{result.seconds:.0f} s · job `{result.job_id}`"
    )
    if links is not None and links.enabled:
        lines.append(f"<{links.viewer_link(result.job_id)}|View in 3D>")
    if params.get("from_job"):  # Edit / New seed: in the thread of the result it came from
        lines.append(f"Made from job `{escape(str(params['from_job']))}`")
    if result.note:
        lines.append(f"_{result.note}_")
    return "\n".join(lines)


def result_blocks(
    text: str, job_id: str, file_ids: list[str], messages: list[str] | None = None
) -> list[dict[str, Any]]:
    """The result's header: its text and the New seed, Details and Delete buttons. Delete
    carries what it takes away with the header: the files' ids, and the timestamps of the
    messages their upload made (its comment stays when only the files go)."""

    def button(action: str, label: str, value: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": "button",
            "action_id": action,
            "value": value,
            "text": {"type": "plain_text", "text": label},
            **extra,
        }

    confirm = {
        "title": {"type": "plain_text", "text": "Delete this model?"},
        "text": {"type": "plain_text", "text": "Its files and this message go away."},
        "confirm": {"type": "plain_text", "text": "Delete"},
        "deny": {"type": "plain_text", "text": "Keep"},
    }
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "elements": [
                button(NEW_SEED, "🎲 New seed", job_id),
                button(EDIT, "✏️ Edit", job_id),
                button(DETAILS, "Details", job_id),
                button(
                    DELETE,
                    "Delete",
                    json.dumps({"job": job_id, "files": file_ids, "messages": messages or []}),
                    style="danger",
                    confirm=confirm,
                ),
                {
                    "type": "static_select",
                    "action_id": FORMATS,
                    "placeholder": {"type": "plain_text", "text": "Formats…"},
                    "options": [
                        {
                            "text": {"type": "plain_text", "text": choice.label},
                            "value": f"{job_id}:{choice.key}",
                        }
                        for choice in CHOICES
                    ],
                },
            ],
        },
    ]
