"""The core's value types: what a job asks for, how it progresses and what it returns."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

SEED_MIN, SEED_MAX, SEED_DEFAULT = 0, 1_000_000, 123


@dataclass(frozen=True)
class Requester:
    """Who asked, in platform-neutral terms. `guild_id` is a Discord guild or a Slack team."""

    platform: str
    user_id: str
    guild_id: str | None = None
    display_name: str = ""
    roles: tuple[str, ...] = ()
    is_admin: bool = False

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.user_id}"


@dataclass(frozen=True)
class ImageSource:
    """Where an image comes from, before it is fetched and checked."""

    kind: Literal["bytes", "url", "text", "path"]
    value: bytes | str
    name: str = ""

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "") -> ImageSource:
        return cls("bytes", data, name)

    @classmethod
    def from_url(cls, url: str) -> ImageSource:
        return cls("url", url.strip(), url.strip())

    @classmethod
    def from_text(cls, text: str) -> ImageSource:
        """A data URI or bare base64, as pasted by a user or sent by a client."""
        return cls("text", text.strip(), "pasted image")

    @classmethod
    def from_path(cls, path: str | Path) -> ImageSource:
        return cls("path", str(path), Path(path).name)


@dataclass(frozen=True)
class JobRequest:
    """A raw request, as a user typed it; validation turns it into a ValidatedInput."""

    requester: Requester
    image: ImageSource
    prompt: str | None = None
    bbox: str | None = None
    points: str | None = None
    mask: ImageSource | None = None
    seed: int | str | None = None
    include_artifacts: bool = False
    # Opaque routing data (channel, thread, ...) an adapter needs to reply after a restart.
    reply_to: dict[str, Any] = field(default_factory=dict)
    # The job this one was made from (Edit, New seed), and where its result was posted: the
    # new result links back to it.
    from_job: str | None = None
    from_link: str | None = None


@dataclass(frozen=True)
class JobEdits:
    """A finished job's settings as a member edits them (Edit and run again): text as typed,
    checked again like a new request; None leaves a setting out."""

    prompt: str | None = None
    bbox: str | None = None
    points: str | None = None
    seed: int | str | None = None

    @classmethod
    def of(cls, params: dict[str, Any]) -> JobEdits:
        """The settings a job ran with, written the way a member types them."""
        bbox, points = params.get("bbox"), params.get("points")
        return cls(
            prompt=params.get("prompt") or None,
            bbox=",".join(map(str, bbox)) if bbox else None,
            points=";".join(f"{x},{y}" for x, y in points) if points else None,
            seed=params.get("seed"),
        )


@dataclass(frozen=True)
class PreparedImage:
    """An image that passed every check, re-encoded only if it had to change."""

    data: bytes
    media_type: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class ValidatedInput:
    image: PreparedImage
    prompt: str | None
    bbox: tuple[int, int, int, int] | None
    points: tuple[tuple[int, int], ...]
    mask: PreparedImage | None
    seed: int
    include_artifacts: bool = False

    @property
    def cache_key(self) -> str:
        """Same image bytes, parameters and seed give the same key (and the same model)."""
        parts = {
            "image": self.image.sha256,
            "mask": self.mask.sha256 if self.mask else None,
            "prompt": self.prompt,
            "bbox": self.bbox,
            "points": self.points,
            "seed": self.seed,
            "artifacts": self.include_artifacts,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def describe(self) -> dict[str, Any]:
        """Parameters as people read them (for replies, details and the job row)."""
        return {
            "prompt": self.prompt,
            "bbox": list(self.bbox) if self.bbox else None,
            "points": [list(p) for p in self.points] or None,
            "mask": self.mask is not None,
            "seed": self.seed,
            "width": self.image.width,
            "height": self.image.height,
        }


class Stage(StrEnum):
    RESUMED = "resumed"  # taken up again after a restart (or by another instance)
    QUEUED = "queued"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    RENDERING = "rendering"


@dataclass(frozen=True)
class Progress:
    stage: Stage
    position: int | None = None  # 1 = next to start, while queued
    offline: bool = False  # the free offline backend, not SAM 3D
    job_id: str | None = None  # for the progress message's Cancel
    lines: tuple[str, ...] = ()  # several jobs' stages in one message (variations)

    @property
    def cancel_label(self) -> str | None:
        """The progress message's Cancel while it can be pressed: queued, nothing is charged;
        at Segmind, which cannot stop a job, it is charged and still delivered (said up
        front)."""
        if self.job_id is None:
            return None
        if self.stage is Stage.QUEUED:
            return "Cancel"
        if self.stage in (Stage.SUBMITTED, Stage.PROCESSING):
            return "Cancel (still charged)"
        return None

    def describe(self) -> str:
        if self.lines:
            return "\n".join(self.lines)
        if self.stage is Stage.QUEUED:
            return f"Queued, position {self.position}" if self.position else "Queued"
        if self.offline and self.stage is Stage.PROCESSING:
            return "Making an offline preview (not SAM 3D: no SEGMIND_API_KEY is set)"
        return {
            Stage.RESUMED: "The bot restarted; your job continues",
            Stage.SUBMITTED: "Sent to SAM 3D, waiting for a GPU",
            Stage.PROCESSING: "SAM 3D is building the model",
            Stage.RENDERING: "Rendering a preview",
        }[self.stage]


class FileKind(StrEnum):
    MESH = "mesh"  # GLB
    SPLAT = "splat"  # Gaussian-splat PLY
    LIGHT_SPLAT = "light_splat"  # the splat thinned to fit a chat's upload limit
    ARCHIVE = "archive"  # ZIP of artifacts
    THUMBNAIL = "thumbnail"
    TURNTABLE = "turntable"
    OTHER = "other"


@dataclass(frozen=True)
class OutputFile:
    kind: FileKind
    path: Path
    size: int
    media_type: str
    source_url: str | None = None  # the API's own link, valid for a while


@dataclass(frozen=True)
class UpstreamResult:
    """What a backend produced; files are already on local disk."""

    files: tuple[OutputFile, ...]
    request_id: str | None = None
    cost_micros: int | None = None  # the real cost, when the API reported it
    remaining_credits: float | None = None
    offline: bool = False
    download_s: float = 0.0  # of the upstream time, how long fetching the files took


class JobState(StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"  # the POST to Segmind is (or was) in flight: maybe billed
    SUBMITTED = "submitted"
    RENDERING = "rendering"
    DELIVERED = "delivered"
    FAILED = "failed"  # ended without a delivery although Segmind billed it
    REFUNDED = "refunded"  # ended without a billed result; reservation and quota returned
    # A submit cut off in flight: Segmind may have billed it, and no request id says which.
    # Its price stays held and its quota slot used until an admin settles or refunds it.
    HELD = "held"


@dataclass(frozen=True)
class JobResult:
    job_id: str
    params: dict[str, Any]
    files: tuple[OutputFile, ...]
    cost_micros: int
    cached: bool = False
    offline: bool = False
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    def file(self, kind: FileKind) -> OutputFile | None:
        return next((f for f in self.files if f.kind is kind), None)

    @property
    def note(self) -> str:
        notes = []
        if self.offline:
            notes.append(
                "Offline preview made on this machine, not SAM 3D (no Segmind API key is set)."
            )
        if self.cached:
            notes.append("Made before from the same photo and settings: delivered again, free.")
        return " ".join(notes)
