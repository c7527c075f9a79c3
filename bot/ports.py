"""The small Protocols the core depends on; adapters, backends and stores implement them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from .errors import BotError
from .models import (
    JobResult,
    JobState,
    OutputFile,
    Progress,
    Requester,
    UpstreamResult,
    ValidatedInput,
)

OnSubmitted = Callable[[str, dict[str, Any]], Awaitable[None]]  # request_id, how to resume
OnProcessing = Callable[[], Awaitable[None]]


class ImageTo3D(Protocol):
    """A backend that turns a validated photo into model files in `workdir`."""

    offline: bool

    async def generate(
        self,
        job: ValidatedInput,
        workdir: Path,
        on_submitted: OnSubmitted,
        on_processing: OnProcessing,
    ) -> UpstreamResult: ...

    async def resume(
        self, resume_ref: dict[str, Any], workdir: Path, on_processing: OnProcessing
    ) -> UpstreamResult:
        """Finish a job submitted before a restart (poll, fetch and download)."""
        ...


class Renderer(Protocol):
    """Draws preview pictures of a job's model files; raises RenderError when it cannot."""

    async def thumbnail(
        self, files: tuple[OutputFile, ...], workdir: Path
    ) -> tuple[OutputFile, ...]: ...

    async def turntable(
        self, files: tuple[OutputFile, ...], workdir: Path
    ) -> tuple[OutputFile, ...]: ...


class Replier(Protocol):
    """Where a job reports to: a chat message, a terminal, a test recorder."""

    async def progress(self, update: Progress) -> None: ...

    async def deliver(self, result: JobResult) -> None: ...

    async def deliver_more(self, result: JobResult, files: tuple[OutputFile, ...]) -> None:
        """Files made after delivery (the turntable), to add to what was posted."""
        ...

    async def fail(self, error: BotError, refunded: bool) -> None: ...


@dataclass(frozen=True)
class NewJob:
    requester: Requester
    price_micros: int
    cache_key: str
    params: dict[str, Any]
    reply_to: dict[str, Any] = field(default_factory=dict)
    # Set by adapters from the platform's delivery id, so a retried delivery is one job.
    idempotency_key: str | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    platform: str
    user_id: str
    guild_id: str | None
    state: JobState
    created_at: datetime
    reserved_micros: int
    cost_micros: int
    cache_key: str
    params: dict[str, Any]
    reply_to: dict[str, Any]
    request_id: str | None = None
    resume_ref: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duplicate: bool = False  # reserve() found this job already made under the same key


@dataclass(frozen=True)
class QuotaStatus:
    limit: int | None  # None: exempt
    used: int
    next_free_at: datetime | None
    budget_left_micros: int
    window_hours: float

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


@dataclass(frozen=True)
class UsageRow:
    month: str
    platform: str
    guild_id: str | None
    user_id: str
    jobs: int
    delivered: int
    failed: int
    refunded: int
    cost_micros: int


class Ledger(Protocol):
    """Jobs, quota and money. Each method is atomic; reserve and settle never double-count."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def reserve(self, job: NewJob) -> JobRecord:
        """Check quota and budget and hold the price; raises QuotaExceeded / BudgetExhausted."""
        ...

    async def mark_submitted(self, job_id: str, request_id: str, resume_ref: dict) -> None: ...

    async def set_state(self, job_id: str, state: JobState) -> None: ...

    async def commit(self, job_id: str, cost_micros: int) -> None:
        """Turn the reservation into the real cost; a second call changes nothing."""
        ...

    async def finish(self, job_id: str, state: JobState, error: str | None = None) -> None:
        """End a committed job as delivered or failed."""
        ...

    async def refund(self, job_id: str, reason: str, actor: str = "system") -> bool:
        """Release an uncommitted reservation and the quota slot; False if nothing to refund."""
        ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def unfinished(self) -> list[JobRecord]: ...

    async def quota_status(self, requester: Requester) -> QuotaStatus: ...

    async def usage(self, month: str | None = None) -> list[UsageRow]: ...
