"""The job pipeline: validate, cache, reserve, queue, upstream, render, deliver, settle.

It knows nothing about chat platforms: it reports to a Replier and keeps every job as a
ledger row, so a crash or restart can finish or refund it. The rule that matters most:
until Segmind has billed a result, any failure refunds the reservation and the quota slot.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import BotError, DeliveryError, InputError, ServiceStopping
from .images import InputValidator
from .ledger import Ledger
from .metrics import Metrics
from .models import (
    SEED_MAX,
    SEED_MIN,
    ImageSource,
    JobRequest,
    JobResult,
    JobState,
    Progress,
    Requester,
    Stage,
    UpstreamResult,
    ValidatedInput,
)
from .ports import ImageTo3D, JobRecord, NewJob, QuotaStatus, Renderer, Replier
from .results import ResultStore
from .scheduler import FairScheduler

log = logging.getLogger(__name__)

INTERNAL_ERROR = "Something went wrong inside the bot; the job was stopped."


class NullReplier:
    """For jobs whose requester cannot be reached (e.g. resumed after a restart from the CLI)."""

    async def progress(self, update: Progress) -> None:
        pass

    async def deliver(self, result: JobResult) -> None:
        pass

    async def deliver_more(self, result: JobResult, files) -> None:
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
    submitted: bool = False  # Segmind has it: from here on a restart resumes, not refunds
    committed: bool = False  # Segmind billed it: from here on nothing is refunded

    def lap(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[name] = round(now - since, 3)
        return now


class Service:
    def __init__(
        self,
        *,
        validator: InputValidator,
        backend: ImageTo3D,
        ledger: Ledger,
        results: ResultStore,
        renderer: Renderer | None = None,
        turntable: bool = True,
        max_concurrent: int = 4,
        price_micros: int = 65_000,
        metrics: Metrics | None = None,
    ):
        self._validator = validator
        self._backend = backend
        self._ledger = ledger
        self._results = results
        self._renderer = renderer
        self._turntable = turntable and renderer is not None
        self._scheduler = FairScheduler(max_concurrent)
        # The offline backend costs nothing, so it reserves nothing.
        self._price = 0 if backend.offline else price_micros
        self.metrics = metrics or Metrics()
        self._tasks: set[asyncio.Task] = set()
        # Jobs this process runs: their leases are renewed so no other instance takes them.
        self._running: set[str] = set()
        self._lease_keeper: asyncio.Task | None = None

    @property
    def offline(self) -> bool:
        return self._backend.offline

    @property
    def queue_length(self) -> int:
        return self._scheduler.waiting

    async def quota(self, requester: Requester) -> QuotaStatus:
        return await self._ledger.quota_status(requester)

    # -- running a job -----------------------------------------------------------------------

    async def run(
        self, request: JobRequest, replier: Replier, idempotency_key: str | None = None
    ) -> JobResult | None:
        """Run one job to the end, telling `replier` everything; returns the result if any."""
        started = time.monotonic()
        try:
            await self._ledger.admit(request.requester)  # blocked or paused: say so at once
            validated = await self._validator.validate(request)
        except BotError as error:
            await _tell_failure(replier, error, refunded=False)
            return None
        cached = await self._results.lookup(validated.cache_key, offline=self.offline)
        if cached is not None:
            await replier.deliver(cached)
            self.metrics.delivered(request.requester.platform, cached)
            return cached
        try:
            record = await self._ledger.reserve(NewJob(
                request.requester, self._price, validated.cache_key, validated.describe(),
                request.reply_to, idempotency_key,
            ))
        except BotError as error:
            await _tell_failure(replier, error, refunded=False)
            return None
        if record.duplicate:
            log.info("job %s: duplicate delivery ignored", record.id)
            return None
        await self._results.keep_inputs(record.id, validated.image.data,
                                        validated.mask.data if validated.mask else None)
        job = _Job(record, replier, started)
        job.lap("validate", started)
        return await self._guarded(job, self._upstream_then_deliver(job, validated))

    async def _upstream_then_deliver(self, job: _Job, validated: ValidatedInput) -> JobResult:
        queued_at = time.monotonic()

        async def on_position(position: int) -> None:
            await job.replier.progress(Progress(Stage.QUEUED, position))

        async with self._scheduler.slot(job.record.platform + ":" + job.record.user_id,
                                        on_position):
            upstream_at = job.lap("queue", queued_at)

            async def on_submitted(request_id: str, resume_ref: dict) -> None:
                job.submitted = True
                await self._ledger.mark_submitted(job.record.id, request_id, resume_ref)
                await job.replier.progress(Progress(Stage.SUBMITTED))

            workdir = await self._results.workdir(job.record.id)
            upstream = await self._backend.generate(
                validated, workdir, on_submitted, self._processing(job))
        # The slot is for Segmind only: the next job may go upstream while this one renders.
        job.lap("upstream", upstream_at)
        job.timings["download"] = round(upstream.download_s, 3)
        return await self._settle_and_deliver(job, upstream, workdir)

    def _processing(self, job: _Job):
        async def on_processing() -> None:
            await job.replier.progress(Progress(Stage.PROCESSING))
        return on_processing

    async def _settle_and_deliver(
        self, job: _Job, upstream: UpstreamResult, workdir: Path
    ) -> JobResult:
        cost = upstream.cost_micros if upstream.cost_micros is not None else self._price
        await self._ledger.commit(job.record.id, cost)
        job.committed = True
        files = upstream.files
        if self._renderer is not None:
            render_at = time.monotonic()
            await self._ledger.set_state(job.record.id, JobState.RENDERING)
            await job.replier.progress(Progress(Stage.RENDERING))
            try:
                files += await self._renderer.thumbnail(files, workdir)
            except BotError as error:  # the model still goes out without its picture
                log.warning("job %s: no thumbnail: %s", job.record.id, error.user_message)
            job.lap("render", render_at)
        result = JobResult(
            job_id=job.record.id,
            params=job.record.params,
            files=files,
            cost_micros=cost,
            offline=upstream.offline,
            seconds=round(time.monotonic() - job.started, 3),
            timings=dict(job.timings),
        )
        try:
            await job.replier.deliver(result)
        except BotError:
            raise
        except Exception as exc:
            log.exception("job %s: delivery failed", job.record.id)
            raise DeliveryError("The model was made but could not be posted here.",
                                charged=True) from exc
        await self._ledger.finish(job.record.id, JobState.DELIVERED)
        if self._turntable:
            result = await self._add_turntable(job, result, workdir)
        await self._results.remember(job.record.cache_key, result)
        return result

    async def _add_turntable(self, job: _Job, result: JobResult, workdir: Path) -> JobResult:
        """Soon after the thumbnail: a turning view. Its failure costs nothing but itself."""
        started = time.monotonic()
        try:
            more = await self._renderer.turntable(result.files, workdir)
            await job.replier.deliver_more(result, more)
        except BotError as error:
            log.warning("job %s: no turntable: %s", job.record.id, error.user_message)
            return result
        except Exception:
            log.exception("job %s: the turntable could not be posted", job.record.id)
            return result
        timings = {**result.timings, "turntable": round(time.monotonic() - started, 3)}
        return replace(result, files=result.files + more, timings=timings)

    async def _guarded(self, job: _Job, work) -> JobResult | None:
        """Run `work`; on any failure settle the money honestly and tell the user once."""
        self._hold_lease(job.record.id)
        try:
            result = await work
            self.metrics.delivered(job.record.platform, result)
            return result
        except asyncio.CancelledError:
            await asyncio.shield(self._on_cancel(job))
            raise
        except BotError as error:
            await self._on_failure(job, error)
        except Exception:
            log.exception("job %s failed", job.record.id)
            await self._on_failure(job, BotError(INTERNAL_ERROR))
        finally:
            self._running.discard(job.record.id)
        return None

    def _hold_lease(self, job_id: str) -> None:
        self._running.add(job_id)
        if self._lease_keeper is None or self._lease_keeper.done():
            self._lease_keeper = asyncio.create_task(self._keep_leases())

    async def _keep_leases(self) -> None:
        """While this process runs jobs, renew their leases a few times per lease."""
        while self._running:
            await asyncio.sleep(self._ledger.lease_s / 3)
            try:
                await self._ledger.renew(sorted(self._running))
            except Exception:  # the next renewal may succeed; a lapse only risks a takeover
                log.warning("could not renew job leases", exc_info=True)

    async def _on_failure(self, job: _Job, error: BotError) -> None:
        if error.charged and not job.committed:  # billed upstream, lost afterwards
            await self._ledger.commit(job.record.id, self._price)
            job.committed = True
        if job.committed:
            await self._ledger.finish(job.record.id, JobState.FAILED, error.code)
            refunded = False
        else:
            refunded = await self._ledger.refund(job.record.id, error.code)
        log.info("job %s: %s (refunded=%s)", job.record.id, error.code, refunded)
        self.metrics.failed(job.record.platform, error, refunded)
        await _tell_failure(job.replier, error, refunded)

    async def _on_cancel(self, job: _Job) -> None:
        """Shutting down: a job Segmind has is resumed at the next start; any other is refunded."""
        if job.submitted and not job.committed:
            return
        if job.committed:
            await self._ledger.finish(job.record.id, JobState.FAILED, "stopped")
            return
        refunded = await self._ledger.refund(job.record.id, "stopped")
        await _tell_failure(job.replier, ServiceStopping(
            "The bot is restarting and your job had not started; nothing was charged. "
            "Please send it again in a minute."), refunded)

    async def again(self, job_id: str, requester: Requester, replier: Replier,
                    seed: int | None = None, reply_to: dict | None = None,
                    idempotency_key: str | None = None) -> JobResult | None:
        """Run a finished job's photo and settings again with another seed ("New seed"):
        a new job, under the requester's own quota."""
        record = await self._ledger.get(job_id)
        inputs = await self._results.inputs_of(job_id)
        if record is None or inputs is None:
            await _tell_failure(replier, InputError(
                "job", "that job's photo is no longer kept; send the photo again"), False)
            return None
        image, mask = inputs
        params = record.params
        request = JobRequest(
            requester=requester,
            image=ImageSource.from_bytes(image, "photo"),
            prompt=params.get("prompt"),
            bbox=",".join(map(str, params["bbox"])) if params.get("bbox") else None,
            points=";".join(f"{x},{y}" for x, y in params["points"])
            if params.get("points") else None,
            mask=ImageSource.from_bytes(mask, "mask") if mask else None,
            seed=random.randint(SEED_MIN, SEED_MAX) if seed is None else seed,
            reply_to=reply_to or record.reply_to,
        )
        return await self.run(request, replier, idempotency_key)

    # -- after a restart ---------------------------------------------------------------------

    async def recover(
        self,
        replier_for: Callable[[JobRecord], Replier | None],
        platforms: set[str] | None = None,
    ) -> int:
        """Take over the jobs a stopped process left (its leases lapsed): resume those Segmind
        has, refund the rest and tell their users. Returns the number of jobs resumed.

        Jobs of processes still running (another instance on the same database) keep their
        leases and are left alone; `platforms` limits this to one front end's jobs.
        """
        resumed = 0
        for record in await self._ledger.claim_orphans(platforms):
            replier = replier_for(record) or NullReplier()
            if record.resume_ref and not self._backend.offline:
                resumed += 1
                self._hold_lease(record.id)  # renewed from now, before the task starts
                task = asyncio.create_task(self._resume(record, replier))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            refunded = await self._ledger.refund(record.id, "restart")
            await _tell_failure(replier, ServiceStopping(
                "The bot restarted before your job reached SAM 3D; nothing was charged. "
                "Please send it again."), refunded)
        return resumed

    async def _resume(self, record: JobRecord, replier: Replier) -> JobResult | None:
        # A job caught while rendering was billed already: it is settled, never refunded.
        job = _Job(record, replier, time.monotonic(), submitted=True,
                   committed=record.state is JobState.RENDERING)

        async def work() -> JobResult:
            workdir = await self._results.workdir(record.id)
            await replier.progress(Progress(Stage.PROCESSING))
            upstream = await self._backend.resume(record.resume_ref, workdir,
                                                  self._processing(job))
            return await self._settle_and_deliver(job, upstream, workdir)

        return await self._guarded(job, work())

    async def wait_resumed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _tell_failure(replier: Replier, error: BotError, refunded: bool) -> None:
    try:
        await replier.fail(error, refunded)
    except Exception:
        log.exception("could not tell the user about a failed job")
