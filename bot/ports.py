"""The small Protocols the core depends on; adapters, backends and stores implement them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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
OnSending = Callable[[], Awaitable[None]]  # just before the POST that may be billed


class ImageTo3D(Protocol):
    """A backend that turns a validated photo into model files in `workdir`."""

    offline: bool

    async def generate(
        self,
        job: ValidatedInput,
        workdir: Path,
        on_submitted: OnSubmitted,
        on_processing: OnProcessing,
        on_sending: OnSending | None = None,
    ) -> UpstreamResult:
        """`on_sending` runs once before the request that may be billed leaves; if it raises,
        nothing is sent."""
        ...

    async def resume(
        self, resume_ref: dict[str, Any], workdir: Path, on_processing: OnProcessing
    ) -> UpstreamResult:
        """Finish a job submitted before a restart (poll, fetch and download)."""
        ...


class Renderer(Protocol):
    """Draws preview pictures of a job's model files; raises RenderError when it cannot."""

    @property
    def ready(self) -> bool:
        """Able to draw now (for /readyz)."""
        ...

    async def thumbnail(
        self, files: tuple[OutputFile, ...], workdir: Path
    ) -> tuple[OutputFile, ...]: ...

    async def turntable(
        self, files: tuple[OutputFile, ...], workdir: Path
    ) -> tuple[OutputFile, ...]: ...


class Replier(Protocol):
    """Where a job reports to: a chat message, a terminal, a test recorder."""

    async def prepare(self) -> None:
        """Check that a result can be delivered where it goes; raise DeliveryError if not.
        Called before anything is charged."""
        ...

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
    committed: bool = False  # Segmind billed it and the cost is recorded


@dataclass(frozen=True)
class QuotaStatus:
    """What `/sam3d-quota` shows a user."""

    limit: int | None  # None: not limited
    used: int
    next_free_at: datetime | None
    budget_left_micros: int  # the least of the server's and the bot's budget left this month
    window_hours: float
    source: str = "default"  # what set the limit: default, user, role, server, admin
    cooldown_until: datetime | None = None
    in_flight: int = 0
    max_in_flight: int | None = None
    guild_budget_left_micros: int | None = None  # None: the server has no budget of its own
    blocked: bool = False
    paused: bool = False

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


RULE_KINDS = ("user", "role", "guild")
# Whether results may go to members' DMs, per server: members choose, DMs unless a member
# says otherwise, or never.
PRIVATE_MODES = ("allowed", "default", "forbidden")


@dataclass(frozen=True)
class QuotaRule:
    """An admin's override of the job quota. `guild_id` "" means on every server/workspace;
    `target` is the user or role id ("" for a whole guild). `jobs` None means unlimited."""

    platform: str
    guild_id: str
    kind: str
    target: str
    jobs: int | None
    window_hours: float | None = None


@dataclass(frozen=True)
class Budget:
    scope: str  # "global" or "PLATFORM:GUILD"
    month: str
    cap_micros: int | None  # None: no cap
    reserved_micros: int  # held for jobs not settled yet
    committed_micros: int  # spent: what Segmind billed
    held_micros: int = 0  # what the cap is checked against: reserved + committed

    @property
    def left_micros(self) -> int | None:
        if self.cap_micros is None:
            return None
        return max(0, self.cap_micros - self.held_micros)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    amount_micros: int
    job_id: str | None
    detail: str


class JobReads(Protocol):
    """Reading one job or one member's standing (the pipeline and the reports alike)."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def quota_status(self, requester: Requester) -> QuotaStatus: ...


class JobLedger(JobReads, Protocol):
    """What the pipeline needs: reserving, moving a job through its states, settling it, and
    owning it. Each method is atomic; reserve and settle never double-count.

    Every state change is made only while this process owns the job and the job is
    unfinished; each answers False when it changed nothing (the job was lost or settled)."""

    lease_s: float  # how long a job stays its process's without a renewal

    async def admit(self, requester: Requester) -> None:
        """Raise UserBlocked / JobsPaused before any work is done for this requester."""
        ...

    async def check_reserve(self, requester: Requester, price_micros: int, count: int = 1) -> None:
        """Raise what reserving `count` jobs would refuse for this requester now, reserving
        nothing."""
        ...

    async def reserve(self, job: NewJob) -> JobRecord:
        """Check quota and budget and hold the price; raises QuotaExceeded / BudgetExhausted."""
        ...

    async def reserve_group(self, jobs: Sequence[NewJob]) -> list[JobRecord]:
        """The jobs of one request (variations), all reserved or none; one request for the
        cooldown and the jobs-on-the-way rule."""
        ...

    async def mark_submitting(self, job_id: str) -> bool:
        """Just before the POST that may be billed."""
        ...

    async def mark_submitted(
        self, job_id: str, request_id: str, resume_ref: dict[str, Any]
    ) -> bool: ...

    async def set_state(self, job_id: str, state: JobState) -> bool: ...

    async def commit(self, job_id: str, cost_micros: int) -> bool:
        """Turn the reservation into the real cost; a second call changes nothing."""
        ...

    async def finish(self, job_id: str, state: JobState, error: str | None = None) -> bool:
        """End a job as delivered or failed."""
        ...

    async def hold(self, job_id: str, reason: str) -> bool:
        """A submit that may have been billed: keep its price held for an admin."""
        ...

    async def refund(self, job_id: str, reason: str) -> bool:
        """Release an uncommitted reservation and the quota slot; False if nothing to refund."""
        ...

    async def note(self, job_id: str, action: str, detail: str) -> None:
        """An audit entry about a job (also one this process no longer owns)."""
        ...

    async def take_upstream_slot(self, spacing_s: float) -> float:
        """When the next call to Segmind may go (wall time), calls of every instance on this
        ledger spaced `spacing_s` apart."""
        ...

    async def renew(self, job_ids: Sequence[str]) -> set[str]:
        """Extend this process's leases on the jobs it runs; returns the ones it still owns."""
        ...

    async def release(self, job_ids: Sequence[str]) -> None:
        """Let this process's leases on these jobs lapse now (it is stopping)."""
        ...

    async def claim_orphans(self, platforms: set[str] | None = None) -> list[JobRecord]:
        """Take over unfinished jobs whose leases lapsed (their process stopped)."""
        ...


class Reports(JobReads, Protocol):
    """What admins, /metrics and the command line read."""

    async def unfinished(self) -> list[JobRecord]: ...

    async def in_states(self, states: Sequence[str]) -> list[JobRecord]:
        """Jobs in these states, oldest first (e.g. "held", for an admin to settle)."""
        ...

    async def jobs_of(
        self,
        platform: str,
        user_id: str,
        guild_id: str | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> tuple[list[JobRecord], int]:
        """A page of a member's jobs, newest first, and how many they have in all."""
        ...

    async def usage(
        self, month: str | None = None, platform: str | None = None, guild_id: str | None = None
    ) -> list[UsageRow]: ...

    async def budget(self, month: str | None = None, scope: str = "global") -> Budget: ...

    async def audit_trail(
        self, job_id: str | None = None, limit: int = 100
    ) -> list[AuditEntry]: ...


class AdminControls(Protocol):
    """What admins change; every change is written to the audit trail with its actor."""

    async def forget_member(
        self, platform: str, user_id: str, actor: str, guild_id: str | None = None
    ) -> list[str]:
        """The member's jobs (in `guild_id` only, if given) kept for the money under an
        alias, what they asked cleared, their name out of the audit trail; the jobs' ids.
        Refused while one is on its way."""
        ...

    async def set_quota_rule(self, rule: QuotaRule, actor: str) -> None: ...

    async def clear_quota_rule(
        self, platform: str, guild_id: str, kind: str, target: str, actor: str
    ) -> bool: ...

    async def set_budget_cap(self, scope: str, cap_micros: int | None, actor: str) -> None: ...

    async def block(
        self, platform: str, guild_id: str, user_id: str, actor: str, reason: str = ""
    ) -> None: ...

    async def unblock(self, platform: str, guild_id: str, user_id: str, actor: str) -> bool: ...

    async def allow_channel(
        self, platform: str, guild_id: str, channel_id: str, allowed: bool, actor: str
    ) -> bool: ...

    async def allowed_channels(self, platform: str, guild_id: str) -> list[str]: ...

    async def pause(self, scope: str, actor: str, reason: str = "") -> None: ...

    async def set_private_mode(self, platform: str, guild_id: str, mode: str, actor: str) -> None:
        """One of PRIVATE_MODES for a server."""
        ...

    async def private_mode(self, platform: str, guild_id: str) -> str: ...

    async def resume(self, scope: str, actor: str) -> bool: ...

    async def admin_refund(self, job_id: str, actor: str, reason: str) -> str:
        """An admin gives a finished job back: "released" (its reservation), "slot" (only the
        quota slot: Segmind billed it), or raises InputError saying why not."""
        ...


class AdminLedger(Reports, AdminControls, Protocol):
    """What the admin operations of both adapters and the command line use."""


class Ledger(JobLedger, Reports, AdminControls, Protocol):
    """The whole store (SQLite or PostgreSQL), as the composition root opens it."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """The database answers."""
        ...
