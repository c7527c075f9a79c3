"""The job pipeline: validate, cache, reserve, queue, upstream, render, deliver, settle.

It knows nothing about chat platforms: it reports to a Replier and keeps every job as a
ledger row, so a crash or restart can finish or refund it. The rule that matters most:
until Segmind has billed a result, any failure refunds the reservation and the quota slot.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import (
    BotError,
    DeliveryError,
    DiskFull,
    InputError,
    JobCancelled,
    JobLost,
    ServiceStopping,
    SubmitUncertain,
    UpstreamError,
)
from .images import InputValidator
from .logs import about_job
from .metrics import Metrics
from .models import (
    SEED_MAX,
    SEED_MIN,
    ImageSource,
    JobEdits,
    JobRequest,
    JobResult,
    JobState,
    OutputFile,
    Progress,
    Requester,
    Stage,
    UpstreamResult,
    ValidatedInput,
)
from .ports import (
    ImageTo3D,
    JobLedger,
    JobRecord,
    NewJob,
    OnProcessing,
    QuotaStatus,
    Renderer,
    Replier,
)
from .replies import RESTARTING, UNREADABLE
from .results import ResultStore
from .runner import JobRunner
from .scheduler import FairScheduler
from .variations import Plan, variation_seeds

log = logging.getLogger(__name__)

INTERNAL_ERROR = "Something went wrong inside the bot; the job was stopped."
PHOTO_GONE = (
    "The bot restarted before your job reached SAM 3D, and its photo was not kept; "
    "nothing was charged. Please send it again."
)
HELD_AFTER_STOP = (
    "The bot stopped while sending your job to SAM 3D, so it cannot tell "
    "whether Segmind got it. It was not sent again (that could charge twice); "
    "its price stays held until an admin checks the Segmind account."
)
FILES_LOST = "The model was made, but its files were lost when the bot restarted."
MAX_SANE_COST_MICROS = 1_000_000  # $1: far above any SAM 3D call, far below an overflow
PHOTO_NOT_KEPT = "that job's photo is no longer kept; send the photo again"
KEPT = "It is kept: ask again with the same photo and settings and it is sent free."


class NullReplier:
    """For jobs whose requester cannot be reached (e.g. resumed after a restart from the CLI)."""

    async def prepare(self) -> None:
        pass

    async def progress(self, update: Progress) -> None:
        pass

    async def deliver(self, result: JobResult) -> None:
        pass

    async def deliver_more(self, result: JobResult, files: tuple[OutputFile, ...]) -> None:
        pass

    async def fail(self, error: BotError, refunded: bool) -> None:
        pass


@dataclass
class _Job:
    """One job on its way through the pipeline."""

    record: JobRecord
    replier: Replier
    started: float
    timings: dict[str, float] = field(default_factory=dict)
    sending: bool = False  # the POST that may be billed has started
    submitted: bool = False  # Segmind has it: from here on a restart resumes, not refunds
    committed: bool = False  # Segmind billed it: from here on nothing is refunded
    finished: bool = False  # delivered: what follows (the turntable) is extra
    lost: bool = False  # another process owns it now: write nothing more
    cancelled: bool = False  # the member's Cancel stopped it
    # Until when (monotonic) its lease surely holds: nobody can take a job before its lease
    # lapses, so no round trip is needed to know it is still ours.
    owned_until: float = 0.0
    task: asyncio.Task[Any] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    def lap(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[name] = round(now - since, 3)
        return now


AT_SEGMIND = (
    "It is already at Segmind, which cannot stop a job it has: it is charged, and its files "
    "will still be posted here when they come."
)


class Service:
    def __init__(
        self,
        *,
        validator: InputValidator,
        backend: ImageTo3D,
        ledger: JobLedger,
        results: ResultStore,
        renderer: Renderer | None = None,
        turntable: bool = True,
        max_concurrent: int = 4,
        price_micros: int = 65_000,
        metrics: Metrics | None = None,
        runner: JobRunner | None = None,
        free_disk: Callable[[], int] | None = None,
        min_free_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._validator = validator
        # Below this much free space on DATA_DIR's disk, new jobs are refused before anything
        # is fetched or charged (a made model must have room to be kept).
        self._free_disk = free_disk
        self._min_free = min_free_bytes
        self._clock = clock
        self._disk_told_at = float("-inf")
        self._backend = backend
        self._ledger = ledger
        self._results = results
        self._renderer = renderer
        self._turntable = turntable and renderer is not None
        self._scheduler = FairScheduler(max_concurrent)
        # The offline backend costs nothing, so it reserves nothing.
        self._price = 0 if backend.offline else price_micros
        self.metrics = metrics or Metrics()
        self.runner = runner or JobRunner()
        # Jobs this process runs: their leases are renewed so no other instance takes them.
        self._running: dict[str, _Job] = {}
        self._lease_keeper: asyncio.Task[None] | None = None
        # Front ends whose lapsed jobs this process takes over, every lease period.
        self._watched: list[tuple[Callable[[JobRecord], Replier | None], set[str] | None]] = []
        self._watcher: asyncio.Task[None] | None = None

    @property
    def offline(self) -> bool:
        return self._backend.offline

    @property
    def queue_length(self) -> int:
        return self._scheduler.waiting

    async def quota(self, requester: Requester) -> QuotaStatus:
        return await self._ledger.quota_status(requester)

    @property
    def price_micros(self) -> int:
        """What a job reserves (nothing on the free offline backend)."""
        return self._price

    async def check_admission(self, requester: Requester, count: int = 1) -> None:
        """Raise what would refuse this requester's `count` jobs now, before any work is done
        for them (a picker asks first, so nobody picks for nothing); charges nothing."""
        await self._check_disk()
        await self._ledger.check_reserve(requester, self._price, count)

    async def plan_variations(
        self, requester: Requester, count: int, seed: int | str | None
    ) -> Plan:
        """The seeds of `count` variations and what they cost and leave of the quota, once
        the ledger's own rules say all of them could start now; charges nothing."""
        seeds = variation_seeds(count, seed)
        await self.check_admission(requester, count)
        return Plan(seeds, self._price, await self.quota(requester))

    # -- running a job -----------------------------------------------------------------------

    async def run(
        self, request: JobRequest, replier: Replier, idempotency_key: str | None = None
    ) -> JobResult | None:
        """Run one job to the end, telling `replier` everything; returns the result if any."""
        started = time.monotonic()
        validated = await self._checked(request, [replier])
        if validated is None:
            return None
        cached = await self._results.lookup(validated.cache_key, offline=self.offline)
        if cached is not None:
            await replier.deliver(cached)
            self.metrics.delivered(request.requester.platform, cached)
            return cached
        reserving = time.monotonic()
        try:
            record = await self._ledger.reserve(self._new_job(request, validated, idempotency_key))
        except BotError as error:
            await _tell_failure(replier, error, refunded=False)
            return None
        if record.duplicate:
            log.info("job %s: duplicate delivery ignored", record.id)
            return None
        job = _Job(record, replier, started, owned_until=reserving + self._ledger.lease_s)
        job.lap("validate", started)
        return await self._guarded(job, self._keep_then_run(job, validated))

    async def run_variations(
        self,
        request: JobRequest,
        seeds: Sequence[int],
        repliers: Sequence[Replier],
        idempotency_key: str | None = None,
        ended: Callable[[int], Awaitable[None]] | None = None,
        reply_tos: Sequence[dict[str, Any]] | None = None,
    ) -> list[JobResult | None]:
        """One photo as several jobs, one per seed, each told to its own replier; reserved
        together or not at all (each its own job in the quota and the budgets). `ended(i)`
        follows the last word to replier i, whatever it was; `reply_tos[i]` is where job i
        answers after a restart (else the request's)."""
        started = time.monotonic()
        results: list[JobResult | None] = [None] * len(seeds)

        async def done(index: int) -> None:
            if ended is not None:
                await ended(index)

        try:
            validated = await self._checked(request, repliers)
            if validated is None:
                return results
            variants = [replace(validated, seed=seed) for seed in seeds]
            cached_of: dict[int, JobResult] = {}
            for index, variant in enumerate(variants):
                cached = await self._results.lookup(variant.cache_key, offline=self.offline)
                if cached is not None:
                    cached_of[index] = cached
            to_make = [index for index in range(len(seeds)) if index not in cached_of]

            async def give(index: int, cached: JobResult) -> None:
                try:
                    await repliers[index].deliver(cached)
                    self.metrics.delivered(request.requester.platform, cached)
                    results[index] = cached
                except Exception:  # made before and kept: asking again sends it
                    log.exception("a kept variation could not be posted")
                finally:
                    await done(index)

            async def make(index: int, job: _Job) -> None:
                try:
                    results[index] = await self._guarded(
                        job, self._keep_then_run(job, variants[index])
                    )
                finally:
                    await done(index)

            work = [give(index, cached) for index, cached in cached_of.items()]
            reserving = time.monotonic()
            new_jobs = [
                self._new_job(
                    replace(request, reply_to=reply_tos[index]) if reply_tos else request,
                    variants[index],
                    f"{idempotency_key}:{index}" if idempotency_key else None,
                    variation=(index + 1, len(seeds)),
                )
                for index in to_make
            ]
            records: list[JobRecord] = []
            try:
                records = await self._ledger.reserve_group(new_jobs) if new_jobs else []
            except BotError as error:
                for index in to_make:
                    await _tell_failure(repliers[index], error, refunded=False)
            for index, record in zip(to_make, records, strict=False):  # none if refused
                if record.duplicate:
                    log.info("job %s: duplicate delivery ignored", record.id)
                    await done(index)
                    continue
                job = _Job(
                    record, repliers[index], started, owned_until=reserving + self._ledger.lease_s
                )
                job.lap("validate", started)
                work.append(make(index, job))
            await asyncio.gather(*work)
        finally:
            for index in range(len(seeds)):  # told nothing more: the group must not wait
                await done(index)
        return results

    def _new_job(
        self,
        request: JobRequest,
        validated: ValidatedInput,
        idempotency_key: str | None,
        variation: tuple[int, int] | None = None,
    ) -> NewJob:
        params = validated.describe()
        if request.from_job:  # Edit and New seed: the result links back to where it came from
            params.update(from_job=request.from_job, from_link=request.from_link)
        if variation is not None:  # which of how many: its turn at Segmind, its title
            params.update(variation=variation[0], variations=variation[1])
        return NewJob(
            request.requester,
            self._price,
            validated.cache_key,
            params,
            request.reply_to,
            idempotency_key,
        )

    async def _checked(
        self, request: JobRequest, repliers: Sequence[Replier]
    ) -> ValidatedInput | None:
        """The request admitted and its input checked, before anything is charged; None once
        the (first) replier was told why not."""
        replier = repliers[0]
        if not self.runner.accepting:
            await _tell_failure(replier, ServiceStopping(RESTARTING), refunded=False)
            return None
        try:
            await self._ledger.admit(request.requester)  # blocked or paused: say so at once
            await self._check_disk()
            validated = await self._validator.validate(request)
            for each in repliers:
                await each.prepare()  # where the result goes, before anything is charged
        except BotError as error:
            await _tell_failure(replier, error, refunded=False)
            return None
        except Exception:  # a checker tripped on something it did not foresee: still an answer
            log.exception("a request's input could not be checked")
            await _tell_failure(replier, InputError("image", UNREADABLE), refunded=False)
            return None
        except asyncio.CancelledError:  # stopping before there is a job to carry on
            await asyncio.shield(_tell_failure(replier, ServiceStopping(RESTARTING), False))
            raise
        return validated

    async def _keep_then_run(self, job: _Job, validated: ValidatedInput) -> JobResult:
        # Kept before it queues: a job the bot stops while it waits runs after the restart.
        await self._results.keep_inputs(job.id, validated)
        return await self._upstream_then_deliver(job, validated)

    async def _upstream_then_deliver(self, job: _Job, validated: ValidatedInput) -> JobResult:
        queued_at = time.monotonic()

        async def on_position(position: int) -> None:
            await job.replier.progress(Progress(Stage.QUEUED, position, job_id=job.id))

        async with self._scheduler.slot(_turn_of(job.record), on_position):
            upstream_at = job.lap("queue", queued_at)

            async def on_sending() -> None:
                await self._write(job, self._ledger.mark_submitting(job.id))
                job.sending = True

            async def on_submitted(request_id: str, resume_ref: dict[str, Any]) -> None:
                if not await self._ledger.mark_submitted(job.id, request_id, resume_ref):
                    # Taken over while sending (its new owner holds it): what Segmind
                    # answered goes on record for the admin who settles it.
                    await self._ledger.note(job.id, "late_submit", request_id)
                    job.lost = True
                    raise JobLost(job.id)
                job.submitted = True
                await job.replier.progress(Progress(Stage.SUBMITTED, job_id=job.id))

            workdir = await self._results.workdir(job.id)
            with _disk_full_as(charged=lambda: job.submitted and not self.offline):
                upstream = await self._backend.generate(
                    validated, workdir, on_submitted, self._processing(job), on_sending
                )
        # The slot is for Segmind only: the next job may go upstream while this one renders.
        job.lap("upstream", upstream_at)
        job.timings["download"] = round(upstream.download_s, 3)
        await self._results.keep_upstream(job.id, upstream)
        return await self._settle_and_deliver(job, upstream, workdir)

    async def _check_disk(self) -> None:
        if self._free_disk is None or not self._min_free:
            return
        free = await asyncio.to_thread(self._free_disk)
        if free >= self._min_free:
            return
        if self._clock() - self._disk_told_at > 60:  # once a minute in the log, not per job
            self._disk_told_at = self._clock()
            log.error(
                "DATA_DIR's disk has %.0f MB free, below MIN_FREE_DISK_MB (%.0f): new jobs "
                "are refused. Free space, or lower FILES_KEEP_DAYS and run sam3d-bot prune.",
                free / 1e6,
                self._min_free / 1e6,
            )
        raise DiskFull()

    def _sane_cost(self, job: _Job, reported: int | None) -> int:
        """What Segmind says a job cost, unless it cannot be true (below zero, or more than
        ten times the price): then the reserved price, and a line in the log."""
        if reported is None:
            return self._price
        if 0 <= reported <= max(10 * self._price, MAX_SANE_COST_MICROS):
            return reported
        log.warning(
            "job %s: Segmind reported a cost of %s micro-USD; charging the price reserved instead",
            job.id,
            reported,
        )
        return self._price

    def _processing(self, job: _Job) -> OnProcessing:
        async def on_processing() -> None:
            await job.replier.progress(
                Progress(Stage.PROCESSING, offline=self.offline, job_id=job.id)
            )

        return on_processing

    async def _settle_and_deliver(
        self, job: _Job, upstream: UpstreamResult, workdir: Path
    ) -> JobResult:
        if job.committed:  # settled before a restart: its recorded cost stands
            cost = job.record.cost_micros
        else:
            cost = self._sane_cost(job, upstream.cost_micros)
            await self._write(job, self._ledger.commit(job.id, cost))
            job.committed = True
        files = upstream.files
        if self._renderer is not None:
            render_at = time.monotonic()
            await self._write(job, self._ledger.set_state(job.id, JobState.RENDERING))
            await job.replier.progress(Progress(Stage.RENDERING))
            try:
                files += await self._renderer.thumbnail(files, workdir)
            except BotError as error:  # the model still goes out without its picture
                log.warning("job %s: no thumbnail: %s", job.id, error.user_message)
            except Exception:  # a failed picture never costs the member the model
                log.exception("job %s: no thumbnail", job.id)
            job.lap("render", render_at)
        result = JobResult(
            job_id=job.id,
            params=job.record.params,
            files=files,
            cost_micros=cost,
            offline=upstream.offline,
            seconds=round(time.monotonic() - job.started, 3),
            timings=dict(job.timings),
        )
        await self._still_mine(job)  # a job another process took over is posted by it alone
        try:
            await job.replier.deliver(result)
        except BotError:
            await self._results.remember(job.record.cache_key, result)  # paid for: kept
            raise
        except Exception as exc:
            log.exception("job %s: delivery failed", job.id)
            await self._results.remember(job.record.cache_key, result)
            raise DeliveryError(
                "The model was made but could not be posted here.", charged=True
            ) from exc
        await self._write(job, self._ledger.finish(job.id, JobState.DELIVERED))
        job.finished = True
        if self._turntable:
            result = await self._add_turntable(job, result, workdir)
        await self._results.remember(job.record.cache_key, result)
        return result

    async def _add_turntable(self, job: _Job, result: JobResult, workdir: Path) -> JobResult:
        """Soon after the thumbnail: a turning view. Its failure costs nothing but itself."""
        started = time.monotonic()
        assert self._renderer is not None  # a turntable is asked for only with a renderer
        try:
            more = await self._renderer.turntable(result.files, workdir)
            await job.replier.deliver_more(result, more)
        except BotError as error:
            log.warning("job %s: no turntable: %s", job.id, error.user_message)
            return result
        except Exception:
            log.exception("job %s: the turntable could not be posted", job.id)
            return result
        timings = {**result.timings, "turntable": round(time.monotonic() - started, 3)}
        return replace(result, files=result.files + more, timings=timings)

    # -- owning a job ------------------------------------------------------------------------

    async def _write(self, job: _Job, change: Awaitable[bool]) -> None:
        """A state change the ledger makes only while this process owns the job."""
        if not await change:
            job.lost = True
            raise JobLost(job.id)

    async def _still_mine(self, job: _Job) -> None:
        if time.monotonic() < job.owned_until - self._ledger.lease_s / 3:
            return
        before = time.monotonic()
        if job.id not in await self._ledger.renew([job.id]):
            job.lost = True
            raise JobLost(job.id)
        job.owned_until = before + self._ledger.lease_s

    async def _guarded(self, job: _Job, work: Awaitable[JobResult]) -> JobResult | None:
        """Run `work`; on any failure settle the money honestly and tell the user once."""
        with about_job(job.id):
            return await self._guarded_here(job, work)

    async def _guarded_here(self, job: _Job, work: Awaitable[JobResult]) -> JobResult | None:
        job.task = asyncio.current_task()
        self._hold_lease(job)
        try:
            result = await work
            self.metrics.delivered(job.record.platform, result)
            return result
        except asyncio.CancelledError:
            if job.lost:  # the lease keeper stopped it: its new owner carries on
                if job.task is not None:
                    job.task.uncancel()
                log.warning("job %s: taken over by another process; stopped here", job.id)
                return None
            if job.cancelled:  # the member's Cancel, while it waited: refunded at once
                if job.task is not None:
                    job.task.uncancel()
                await self._settle_failure(job, JobCancelled())
                return None
            await asyncio.shield(self._on_cancel(job))
            raise
        except JobLost:
            log.warning("job %s: taken over by another process; stopped here", job.id)
        except BotError as error:
            await self._settle_failure(job, error)
        except Exception:
            log.exception("job %s failed", job.id)
            await self._settle_failure(job, BotError(INTERNAL_ERROR))
        finally:
            self._running.pop(job.id, None)
        return None

    def _hold_lease(self, job: _Job) -> None:
        self._running[job.id] = job
        if self._lease_keeper is None or self._lease_keeper.done():
            self._lease_keeper = asyncio.create_task(self._keep_leases())

    async def _keep_leases(self) -> None:
        """While this process runs jobs, renew their leases a few times per lease; a job whose
        lease another process took is stopped at once."""
        while self._running:
            await asyncio.sleep(self._ledger.lease_s / 3)
            running = list(self._running)
            before = time.monotonic()
            try:
                owned = await self._ledger.renew(running)
            except Exception:  # the next renewal may succeed; a lapse only risks a takeover
                log.warning("could not renew job leases", exc_info=True)
                continue
            for job_id in owned:
                if job_id in self._running:
                    self._running[job_id].owned_until = before + self._ledger.lease_s
            for job_id in set(running) - owned:
                job = self._running.get(job_id)
                if job is not None and not job.finished and job.task is not None:
                    job.lost = True
                    job.task.cancel()

    async def _settle_failure(self, job: _Job, error: BotError) -> None:
        try:
            await self._on_failure(job, error)
        except JobLost:
            log.warning("job %s: taken over by another process before it failed here", job.id)

    async def _on_failure(self, job: _Job, error: BotError) -> None:
        if error.charged and not job.committed:  # billed upstream, lost afterwards
            await self._write(job, self._ledger.commit(job.id, self._price))
            job.committed = True
        refunded = False
        if job.committed:
            await self._write(job, self._ledger.finish(job.id, JobState.FAILED, error.code))
            if isinstance(error, DeliveryError):
                error = DeliveryError(f"{error.user_message} {KEPT}", charged=True)
        elif _maybe_billed(job, error):
            await self._write(job, self._ledger.hold(job.id, error.code))
            log.warning(
                "job %s: %s; held for an admin (sam3d-bot admin refund %s releases it)",
                job.id,
                error.code,
                job.id,
            )
        else:
            await self._write(job, self._ledger.refund(job.id, error.code))
            refunded = True
        job.finished = True
        log.info("job %s: %s (refunded=%s)", job.id, error.code, refunded)
        self.metrics.failed(job.record.platform, error, refunded)
        await _tell_failure(job.replier, error, refunded)

    async def _on_cancel(self, job: _Job) -> None:
        """Stopping: nothing is refunded or failed. The job's lease lapses at once, and the next
        start (or another instance) carries it on from where it was: queued, sent, rendering."""
        try:
            await self._ledger.release([job.id])
        except Exception:  # its lease then lapses by itself
            log.warning("job %s: could not release its lease", job.id, exc_info=True)

    async def cancel(self, job_id: str, who: Requester) -> str:
        """The progress message's Cancel, by the member who asked or an admin: a job still
        waiting its turn ends now, refunded and its quota slot back; one Segmind has is
        charged (Segmind cannot stop it) and still delivered."""
        record = await self._ledger.get(job_id)
        if record is None:
            return "There is no such job."
        if who.key != f"{record.platform}:{record.user_id}" and not who.is_admin:
            return "Only the member who asked for it, or an admin, can cancel it."
        job = self._running.get(job_id)
        # Not yet sent to Segmind (waiting its turn, or before it): it can still end unbilled.
        if job is not None and not (job.sending or job.submitted or job.committed or job.finished):
            if job.task is None or job.cancelled:
                return "Cancelling it: nothing is charged."
            job.cancelled = True  # before Segmind has it: ended and refunded at once
            job.task.cancel()
            return "Cancelled: nothing was charged, and the job is back in the quota."
        if record.state in (JobState.SUBMITTING, JobState.SUBMITTED, JobState.RENDERING) or (
            job is not None and not job.finished
        ):
            return AT_SEGMIND
        return "That job has already ended."

    async def again(
        self,
        job_id: str,
        requester: Requester,
        replier: Replier,
        seed: int | None = None,
        reply_to: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        edits: JobEdits | None = None,
        from_link: str | None = None,
    ) -> JobResult | None:
        """Run a finished job's photo again as a new job, under the requester's own quota:
        with its settings and another seed ("New seed"), or with `edits` ("Edit")."""
        record = await self._ledger.get(job_id)
        inputs = await self._results.inputs_of(job_id)
        if record is None or inputs is None:
            await _tell_failure(replier, InputError("job", PHOTO_NOT_KEPT), False)
            return None
        image, mask = inputs
        edits = edits or replace(JobEdits.of(record.params), seed=seed)
        if edits.seed in (None, ""):  # New seed, or an Edit that cleared it: any other seed
            edits = replace(edits, seed=random.randint(SEED_MIN, SEED_MAX))
        request = JobRequest(
            requester=requester,
            image=ImageSource.from_bytes(image, "photo"),
            prompt=edits.prompt,
            bbox=edits.bbox,
            points=edits.points,
            mask=ImageSource.from_bytes(mask, "mask") if mask else None,
            seed=edits.seed,
            reply_to=reply_to or record.reply_to,
            from_job=job_id,
            from_link=from_link,
        )
        return await self.run(request, replier, idempotency_key)

    async def editable(self, job_id: str) -> JobEdits:
        """What the Edit form opens with: the job's settings, its photo still kept; else
        InputError saying why it cannot be edited."""
        record = await self._ledger.get(job_id)
        if record is None or not await self._results.has_inputs(job_id):
            raise InputError("job", PHOTO_NOT_KEPT)
        return JobEdits.of(record.params)

    # -- taking over jobs a stopped process left --------------------------------------------

    async def recover(
        self,
        replier_for: Callable[[JobRecord], Replier | None],
        platforms: set[str] | None = None,
    ) -> int:
        """Take over the jobs a stopped process left (their leases lapsed) and carry each on
        from where it was; refund only what cannot be finished, and tell its user. Returns the
        number of jobs carried on.

        Jobs of processes still running (another instance on the same database) keep their
        leases and are left alone; `platforms` limits this to one front end's jobs.
        """
        carried = 0
        claiming = time.monotonic()
        for record in await self._ledger.claim_orphans(platforms):
            if record.id in self._running:  # ours, its lease renewed late: it runs already
                continue
            replier = replier_for(record) or NullReplier()
            job = _Job(
                record,
                replier,
                time.monotonic(),
                submitted=record.request_id is not None,
                committed=record.committed,
                owned_until=claiming + self._ledger.lease_s,
            )
            try:
                work = await self._carry_on(job)
            except JobLost:
                continue
            if work is not None:
                carried += 1
                self._hold_lease(job)  # renewed from now, before the task starts
                self.runner.start(self._guarded(job, work), f"job {record.id}")
        if carried:
            log.info("took over %d job(s) a stopped bot left", carried)
        return carried

    async def _carry_on(self, job: _Job) -> Awaitable[JobResult] | None:
        """What finishes a job taken over, or None when it is settled here and now."""
        record = job.record
        if record.state is JobState.SUBMITTING:
            # Cut off while sending: Segmind may have it, and nothing says under which id.
            await self._write(job, self._ledger.hold(job.id, "submit_interrupted"))
            log.warning("job %s: stopped while being sent; held for an admin", job.id)
            await _tell_failure(job.replier, SubmitUncertain(HELD_AFTER_STOP), refunded=False)
            return None
        if record.state is JobState.QUEUED:
            validated = await self._results.validated_of(job.id)
            if validated is None:
                await self._write(job, self._ledger.refund(job.id, "restart"))
                await _tell_failure(job.replier, ServiceStopping(PHOTO_GONE), refunded=True)
                return None
            return self._continue_queued(job, validated)
        upstream = await self._results.upstream_of(job.id)
        if upstream is not None:  # downloaded before the stop: finished from these files
            return self._finish_from(job, upstream)
        if record.resume_ref and not self._backend.offline:
            return self._resume_upstream(job)
        if job.committed:
            await self._write(job, self._ledger.finish(job.id, JobState.FAILED, "files_lost"))
            await _tell_failure(job.replier, DeliveryError(FILES_LOST, charged=True), False)
            return None
        await self._write(job, self._ledger.hold(job.id, "cannot_resume"))
        await _tell_failure(job.replier, SubmitUncertain(HELD_AFTER_STOP), refunded=False)
        return None

    async def _continue_queued(self, job: _Job, validated: ValidatedInput) -> JobResult:
        await job.replier.progress(Progress(Stage.RESUMED))
        return await self._upstream_then_deliver(job, validated)

    async def _finish_from(self, job: _Job, upstream: UpstreamResult) -> JobResult:
        workdir = await self._results.workdir(job.id)
        await job.replier.progress(Progress(Stage.RESUMED))
        return await self._settle_and_deliver(job, upstream, workdir)

    async def _resume_upstream(self, job: _Job) -> JobResult:
        workdir = await self._results.workdir(job.id)
        await job.replier.progress(Progress(Stage.RESUMED))
        with _disk_full_as(charged=lambda: True):
            upstream = await self._backend.resume(
                job.record.resume_ref, workdir, self._processing(job)
            )
        await self._results.keep_upstream(job.id, upstream)
        return await self._settle_and_deliver(job, upstream, workdir)

    def keep_recovering(
        self, replier_for: Callable[[JobRecord], Replier | None], platforms: set[str] | None = None
    ) -> None:
        """Take over `platforms`' lapsed jobs now and every lease period while running: a
        job whose instance was killed is finished by another one, not at some later start."""
        self._watched.append((replier_for, platforms))
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while self.runner.accepting:
            for replier_for, platforms in list(self._watched):
                try:
                    await self.recover(replier_for, platforms)
                except Exception:  # the ledger may be back by the next round
                    log.warning("could not look for jobs to take over", exc_info=True)
            await asyncio.sleep(self._ledger.lease_s)

    async def wait_resumed(self) -> None:
        await self.runner.idle()

    # -- stopping ----------------------------------------------------------------------------

    async def shutdown(self, grace_s: float) -> None:
        """Take no new jobs; let those in flight finish within `grace_s`; leave the rest to
        be carried on by the next start or another instance."""
        self.runner.accepting = False
        self._scheduler.hold()  # a queued job starting now would only be cut off
        await self._stop(self._watcher)
        await self.runner.shutdown(grace_s)

    async def close(self) -> None:
        self.runner.accepting = False
        await self._stop(self._watcher)
        await self._stop(self._lease_keeper)

    @staticmethod
    async def _stop(task: asyncio.Task[Any] | None) -> None:
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@contextmanager
def _disk_full_as(charged: Callable[[], bool]) -> Iterator[None]:
    """A write that found no room (ENOSPC) is the bot's disk, said so: charged when Segmind
    had the job by then (it made, and billed, the model)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        log.error("DATA_DIR's disk is full: a job's files could not be written")
        raise DiskFull(charged=charged()) from exc


def _turn_of(record: JobRecord) -> str:
    """Whose turn a job takes at Segmind: its member's (one job each at a time, members in
    turn); variations take one each, so they are made side by side as one ask."""
    variation = record.params.get("variation")
    turn = f"{record.platform}:{record.user_id}"
    return f"{turn}#{variation}" if variation else turn


def _maybe_billed(job: _Job, error: BotError) -> bool:
    """A failure while the submit was on its way, where Segmind may have taken it."""
    if not job.sending or job.submitted:
        return False
    return isinstance(error, SubmitUncertain) or not isinstance(error, UpstreamError)


async def _tell_failure(replier: Replier, error: BotError, refunded: bool) -> None:
    try:
        await replier.fail(error, refunded)
    except Exception:
        log.exception("could not tell the user about a failed job")
