"""The client: submit a job (v2, then poll) or run it (v1, blocking), resume one submitted before
a restart, and read the account's credits. Money rules: only a 200 result is billed, and a
submit that may have reached Segmind is never POSTed again (there is no idempotency key)."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import SecretStr

from .. import errors
from ..images import bbox_to_api, points_to_api
from ..models import UpstreamResult, ValidatedInput
from ..ports import OnProcessing, OnSending, OnSubmitted
from .outputs import Outputs, metrics_of, parsed
from .polling import PollSchedule
from .status import error_for_status, message_from
from .transport import RetryPolicy, Transport

if TYPE_CHECKING:
    from ..settings import Settings

MODEL = "sam-3d-objects"
TERMINAL_OK = "COMPLETED"
TERMINAL_FAILED = "FAILED"
PENDING = {"QUEUED", "PROCESSING", "IN_PROGRESS", "STARTING", "IN_QUEUE"}


@dataclass(frozen=True)
class Credits:
    credits: float
    free_credits: float


class SegmindClient:
    """Talks to Segmind; every session, URL and timing is injected."""

    offline = False

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: SecretStr,
        foreign_session: aiohttp.ClientSession | None = None,
        base_url: str = "https://api.segmind.com",
        version: str = "v2",
        poll_interval_s: float = 2.0,
        job_timeout_s: float = 900.0,
        rate_limit_max_wait_s: float = 120.0,
        max_output_bytes: int = 300_000_000,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        pace: Callable[[], Awaitable[None]] | None = None,
    ):
        self._transport = Transport(
            session,
            api_key=api_key,
            base_url=base_url,
            foreign_session=foreign_session,
            retry=retry,
            rate_limit_max_wait_s=rate_limit_max_wait_s,
            sleep=sleep,
            rng=rng,
            clock=clock,
            pace=pace,
        )
        self._outputs = Outputs(self._transport, max_output_bytes)
        self._version = version
        self._schedule = PollSchedule(poll_interval_s)
        self._job_timeout = job_timeout_s
        self._max_bytes = max_output_bytes
        self._sleep = sleep

    @classmethod
    def from_settings(
        cls,
        session: aiohttp.ClientSession,
        settings: Settings,
        foreign_session: aiohttp.ClientSession | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> SegmindClient:
        return cls(
            session,
            api_key=settings.segmind_api_key,
            foreign_session=foreign_session,
            base_url=settings.segmind_base_url,
            version=settings.segmind_api_version,
            poll_interval_s=settings.segmind_poll_interval_s,
            job_timeout_s=settings.segmind_job_timeout_s,
            rate_limit_max_wait_s=settings.segmind_rate_limit_max_wait_s,
            max_output_bytes=settings.max_output_bytes,
            pace=pace,
        )

    async def generate(
        self,
        job: ValidatedInput,
        workdir: Path,
        on_submitted: OnSubmitted,
        on_processing: OnProcessing,
        on_sending: OnSending | None = None,
    ) -> UpstreamResult:
        payload = build_payload(job)
        if on_sending is not None:
            await on_sending()
        if self._version == "v1":
            return await self._run_v1(payload, workdir, on_submitted, on_processing)
        submitted = await self._submit_v2(payload)
        ref = {
            "request_id": submitted["request_id"],
            "status_url": submitted.get("status_url"),
            "response_url": submitted.get("response_url"),
        }
        await on_submitted(ref["request_id"], ref)
        return await self._follow(ref, workdir, on_processing, fresh=True)

    async def resume(
        self, resume_ref: dict[str, Any], workdir: Path, on_processing: OnProcessing
    ) -> UpstreamResult:
        return await self._follow(resume_ref, workdir, on_processing, fresh=False)

    async def _follow(
        self,
        resume_ref: dict[str, Any],
        workdir: Path,
        on_processing: OnProcessing,
        fresh: bool,
    ) -> UpstreamResult:
        """Poll a submitted job to its end and fetch what it made. `fresh`: polled from its
        submit, so how long it took teaches the poll schedule."""
        request_id = resume_ref["request_id"]
        status_url = self._transport.own_url(
            resume_ref.get("status_url"), f"/v2/requests/{request_id}/status"
        )
        response_url = self._transport.own_url(
            resume_ref.get("response_url"), f"/v2/requests/{request_id}"
        )
        deadline = time.monotonic() + self._job_timeout
        metrics = await self._poll(status_url, on_processing, learn=fresh)
        async with self._fetching_until(deadline):
            status, body, headers = await self._transport.get_with_retries(
                response_url, cap=self._max_bytes, charged=True
            )
            if status != 200:
                raise error_for_status(
                    status, message_from(body, headers.get("Content-Type", "")), charged=False
                )
            data = await parsed(body)  # once: for the metrics and the files alike
            metrics = metrics_of(data, headers) or metrics
            fetching = time.monotonic()
            files = await self._outputs.materialise(body, data, workdir)
        return UpstreamResult(
            files=files,
            request_id=request_id,
            cost_micros=metrics.get("cost"),
            remaining_credits=metrics.get("remaining_credits"),
            download_s=time.monotonic() - fetching,
        )

    @asynccontextmanager
    async def _fetching_until(self, deadline: float) -> AsyncIterator[None]:
        """Fetching a made model within what is left of the job's SEGMIND_JOB_TIMEOUT_S;
        running out is a charged failure (Segmind billed the model)."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                yield
        except TimeoutError:
            raise errors.JobTimedOut(
                f"SAM 3D made the model, but it could not be fetched within "
                f"{self._job_timeout / 60:g} minutes.",
                charged=True,
            ) from None

    async def credits(self) -> Credits:
        status, body, headers = await self._transport.get_with_retries(
            f"{self._transport.base}/v1/get-user-credits"
        )
        if status != 200:
            raise error_for_status(status, message_from(body, headers.get("Content-Type", "")))
        data = await parsed(body)
        try:
            return Credits(float(data.get("credits", 0)), float(data.get("free-credits", 0)))
        except (ValueError, TypeError, AttributeError):
            raise errors.BadUpstreamResult("Segmind sent an unreadable balance.") from None

    async def _submit_v2(self, payload: dict[str, Any]) -> dict[str, Any]:
        status, body, headers = await self._transport.post_once(
            f"{self._transport.base}/v2/{MODEL}", payload, 120
        )
        if status not in (200, 201, 202):
            raise error_for_status(status, message_from(body, headers.get("Content-Type", "")))
        data = await parsed(body)
        if not isinstance(data, dict) or not isinstance(data.get("request_id"), str):
            # Accepted, so maybe billed, but with nothing to follow it by.
            raise errors.SubmitUncertain(
                "Segmind accepted the job but sent no request id to follow it by; its price "
                "stays held until an admin checks the Segmind account."
            )
        return data

    async def _run_v1(
        self,
        payload: dict[str, Any],
        workdir: Path,
        on_submitted: OnSubmitted,
        on_processing: OnProcessing,
    ) -> UpstreamResult:
        await on_processing()
        sent = time.monotonic()
        status, body, headers = await self._transport.post_once(
            f"{self._transport.base}/v1/{MODEL}", payload, self._job_timeout, cap=self._max_bytes
        )
        if status != 200:
            raise error_for_status(status, message_from(body, headers.get("Content-Type", "")))
        data = await parsed(body)
        metrics = metrics_of(data, headers)
        fetching = time.monotonic()
        async with self._fetching_until(sent + self._job_timeout):
            files = await self._outputs.materialise(body, data, workdir)
        return UpstreamResult(
            files=files,
            cost_micros=metrics.get("cost"),
            remaining_credits=metrics.get("remaining_credits"),
            download_s=time.monotonic() - fetching,
        )

    async def _poll(
        self, status_url: str, on_processing: OnProcessing, learn: bool = False
    ) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + self._job_timeout
        told_processing = False
        for offset in self._schedule.offsets():
            # Offsets from the start: slow answers do not push every later poll back.
            await self._sleep(max(0.0, started + offset - time.monotonic()))
            status, body, headers = await self._transport.get_with_retries(status_url)
            ctype = headers.get("Content-Type", "")
            if status != 200:
                raise error_for_status(status, message_from(body, ctype))
            data = await parsed(body)
            if not isinstance(data, dict):
                raise errors.BadUpstreamResult("Segmind sent an unreadable job status.")
            state = str(data.get("status", "")).upper()
            if state == TERMINAL_OK:
                if learn:
                    self._schedule.learn(time.monotonic() - started)
                return metrics_of(data, headers)
            if state == TERMINAL_FAILED:
                raise error_for_status(422, message_from(body, ctype))
            if state not in PENDING:
                raise errors.BadUpstreamResult(f"Segmind reported an unknown status {state!r}.")
            if state != "QUEUED" and not told_processing:
                told_processing = True
                await on_processing()
            if time.monotonic() > deadline:
                raise errors.JobTimedOut(
                    f"SAM 3D did not finish within {self._job_timeout / 60:g} minutes."
                )
        raise AssertionError("the schedule never ends")


def build_payload(job: ValidatedInput) -> dict[str, Any]:
    """The documented request body: base64 images, box and points as strings."""
    payload: dict[str, Any] = {
        "image": base64.b64encode(job.image.data).decode(),
        "seed": job.seed,
        "include_artifacts": job.include_artifacts,
    }
    if job.prompt:
        payload["prompt"] = job.prompt
    if job.bbox:
        payload["bounding_box"] = bbox_to_api(job.bbox)
    if job.points:
        payload["point_coords"] = points_to_api(job.points)
    if job.mask:
        payload["mask"] = base64.b64encode(job.mask.data).decode()
    return payload
