"""Variations: one photo made with several seeds at once (1 to 4). The price of all of them and
what they leave of the quota are said before anything starts; each is its own job (reserved
together or not at all); on a chat that posts them together, `Together` holds each result
until all have theirs, then one post carries them all."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .errors import BotError, InputError
from .images import parse_seed
from .models import SEED_MAX, SEED_MIN, JobResult, OutputFile, Progress, Stage
from .ports import QuotaStatus
from .replies import failure_text
from .settings import micros_to_usd

MAX_VARIATIONS = 4
CANCELLABLE = (Stage.QUEUED, Stage.SUBMITTED, Stage.PROCESSING)


def variation_seeds(count: int, seed: int | str | None) -> tuple[int, ...]:
    """A typed seed and the ones after it (so the same ask makes the same models), else
    `count` different random seeds."""
    if not 1 <= count <= MAX_VARIATIONS:
        raise InputError("variations", f"ask for 1 to {MAX_VARIATIONS}")
    if seed is not None and str(seed).strip():
        first = parse_seed(seed)
        span = SEED_MAX - SEED_MIN + 1
        return tuple(SEED_MIN + (first - SEED_MIN + step) % span for step in range(count))
    return tuple(random.sample(range(SEED_MIN, SEED_MAX + 1), count))


@dataclass(frozen=True)
class Plan:
    """What a member is told before their variations start."""

    seeds: tuple[int, ...]
    price_micros: int  # each
    status: QuotaStatus

    @property
    def total_micros(self) -> int:
        return self.price_micros * len(self.seeds)

    def describe(self) -> str:
        count = len(self.seeds)
        seeds = ", ".join(map(str, self.seeds))
        cost = f"${micros_to_usd(self.total_micros):.3f} in all" if self.price_micros else "free"
        left = self.status.left
        after = (
            ""
            if left is None
            else f"; they leave you {max(0, left - count)} of {self.status.limit} jobs"
        )
        return f"{count} variations (seeds {seeds}): {cost}{after}."


@dataclass
class _Outcome:
    result: JobResult | None = None
    error: BotError | None = None
    refunded: bool = False
    ended: bool = False


Post = Callable[[list[tuple[int, JobResult]], list[str]], Awaitable[None]]


@dataclass
class Together:
    """The variations of one ask, posted in one message: `post(results, notes)` once every
    job has its result, failed or ended; `tell` for what the member alone should hear;
    `show` for the shared progress line."""

    count: int
    post: Post
    tell: Callable[[str], Awaitable[None]]
    show: Callable[[Progress], Awaitable[None]]
    header: str = ""  # the first line of the shared progress (the plan)
    _outcomes: list[_Outcome] = field(init=False)
    _stages: list[str] = field(init=False)
    _at: dict[int, tuple[str, Stage]] = field(default_factory=dict, init=False)  # job, stage
    _posting: bool = field(default=False, init=False)
    _posted: asyncio.Future[None] | None = field(default=None, init=False)
    _told: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._outcomes = [_Outcome() for _ in range(self.count)]
        self._stages = ["Waiting its turn"] * self.count

    def replier(self, index: int) -> VariationReplier:
        return VariationReplier(self, index)

    async def ended(self, index: int) -> None:
        self._outcomes[index].ended = True
        await self._post_if_settled()

    def _future(self) -> asyncio.Future[None]:
        if self._posted is None:
            self._posted = asyncio.get_running_loop().create_future()
        return self._posted

    async def _post_if_settled(self) -> None:
        """Whoever brings the last outcome posts them all; the held results wait for it."""
        settled = all(
            o.result is not None or o.error is not None or o.ended for o in self._outcomes
        )
        if self._posting or not settled:
            return
        self._posting = True
        posted = self._future()
        results = [(i, o.result) for i, o in enumerate(self._outcomes) if o.result is not None]
        notes = [
            f"Variation {i + 1}: {failure_text(o.error, o.refunded)}"
            for i, o in enumerate(self._outcomes)
            if o.error is not None
        ]
        try:
            if results:
                await self.post(results, notes)
            else:
                await self._tell_failures()
        except Exception as exc:  # each held result hears it, and fails as its own job
            posted.set_exception(exc)
            posted.exception()  # read here too: a group with no held result still ends quietly
            return
        posted.set_result(None)

    async def _tell_failures(self) -> None:
        """Nothing was made: one line when every variation failed for the same reason."""
        said = [failure_text(o.error, o.refunded) for o in self._outcomes if o.error is not None]
        for text in dict.fromkeys(said):  # each reason once
            await self._tell_once(text)

    async def _tell_once(self, text: str) -> None:
        if text not in self._told:
            self._told.add(text)
            await self.tell(text)

    async def _delivered(self, index: int, result: JobResult) -> None:
        self._at.pop(index, None)  # nothing left to cancel
        self._outcomes[index].result = result
        await self._post_if_settled()
        await asyncio.shield(self._future())

    async def _failed(self, index: int, error: BotError, refunded: bool) -> None:
        if self._posting:  # after the post (it failed): said on its own
            await self._tell_once(f"Variation {index + 1}: {failure_text(error, refunded)}")
            return
        outcome = self._outcomes[index]
        outcome.error, outcome.refunded = error, refunded
        await self._post_if_settled()

    async def _progress(self, index: int, update: Progress) -> None:
        self._stages[index] = update.describe()
        if update.job_id:
            self._at[index] = (update.job_id, update.stage)
        elif index in self._at:
            self._at[index] = (self._at[index][0], update.stage)
        lines = [f"Variation {i + 1}: {stage}" for i, stage in enumerate(self._stages)]
        # One Cancel for those that can still be: the waiting ones end, refunded.
        open_ = [job for job, stage in self._at.values() if stage in CANCELLABLE]
        waiting = any(stage is Stage.QUEUED for _, stage in self._at.values())
        await self.show(
            Progress(
                Stage.QUEUED if waiting else update.stage,
                lines=tuple(filter(None, [self.header, *lines])),
                job_id=",".join(open_) or None,
            )
        )


@dataclass
class VariationReplier:
    """One variation's replier: its progress is a line of the shared message, its result
    waits for the others."""

    group: Together
    index: int

    async def prepare(self) -> None:
        pass  # the group's place was checked when it was asked for

    async def progress(self, update: Progress) -> None:
        await self.group._progress(self.index, update)

    async def deliver(self, result: JobResult) -> None:
        # A failed post is raised to each held job, which the pipeline settles as its own.
        await self.group._delivered(self.index, result)

    async def deliver_more(self, result: JobResult, files: tuple[OutputFile, ...]) -> None:
        pass  # no turntable in a message of several models

    async def fail(self, error: BotError, refunded: bool) -> None:
        await self.group._failed(self.index, error, refunded)
