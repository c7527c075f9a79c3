"""Async client for Segmind's SAM 3D Objects API (v2 submit + poll, or v1 blocking).

Money rules: only a 200 result is billed, and a submit that may have reached Segmind is
never POSTed again (there is no idempotency key). Polls and downloads retry with backoff;
a 429 waits until `x-rate-limit-reset-at-utc` (bounded, with jitter).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import re
import time
import zipfile
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from pydantic import SecretStr

from . import errors
from .images import MAX_REDIRECTS, bbox_to_api, is_blocked, points_to_api
from .models import FileKind, OutputFile, UpstreamResult, ValidatedInput
from .settings import usd_to_micros

log = logging.getLogger(__name__)

MODEL = "sam-3d-objects"
KNOWN_KINDS = {"model_glb": FileKind.MESH, "gaussian_splat": FileKind.SPLAT}
TERMINAL_OK = "COMPLETED"
TERMINAL_FAILED = "FAILED"
REDIRECTS = (301, 302, 303, 307, 308)
ANSWER_CAP = 1_000_000  # a status or submit answer is a few hundred bytes
# Where a result's files may be named (Segmind's documented keys); links anywhere else in an
# answer are not fetched.
OUTPUT_KEYS = ("model_glb", "gaussian_splat", "output", "outputs", "individual_meshes", "artifacts")
PENDING = {"QUEUED", "PROCESSING", "IN_PROGRESS", "STARTING", "IN_QUEUE"}


@dataclass(frozen=True)
class Credits:
    credits: float
    free_credits: float


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # for polls and downloads
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2**attempt) * (0.5 + rng())


# --- errors ---------------------------------------------------------------------------------


def _message_from(body: bytes, content_type: str) -> str:
    text = body[:4000].decode("utf-8", "replace")
    if "html" in content_type or text.lstrip().lower().startswith(("<!doctype", "<html")):
        return ""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # JSON nested past sense too
        return text.strip()[:200]
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            if isinstance(data.get(key), str):
                return data[key].strip()[:200]
    return ""


ErrorText = tuple[type[errors.UpstreamError], str]

# Segmind's documented statuses: the error each becomes and what the member reads ({detail} is
# Segmind's own message, when it sent one). 406 means two things; its message tells which.
STATUS_ERRORS: dict[int, ErrorText] = {
    400: (errors.UpstreamRejected, "Segmind could not use this request{detail}"),
    401: (
        errors.UpstreamAuthError,
        "Segmind refused the bot's API key; an admin needs to check SEGMIND_API_KEY.",
    ),
    403: (errors.UpstreamAuthError, "Segmind refused this account access to SAM 3D Objects."),
    404: (
        errors.ResultExpired,
        "Segmind no longer knows this request (records expire after about an hour).",
    ),
    405: (
        errors.UpstreamRejected,
        "Segmind refused the call (HTTP 405); SEGMIND_BASE_URL may be wrong.",
    ),
    406: (errors.UpstreamRejected, "Segmind refused the input format{detail}"),
    410: (
        errors.ModelRetired,
        "Segmind has retired this version of SAM 3D Objects; the bot needs an update.",
    ),
    422: (errors.GenerationFailed, "SAM 3D could not make a model from this photo{detail}"),
    429: (errors.RateLimited, "Segmind is rate-limiting the bot right now; try again in a minute."),
}
OUT_OF_CREDITS: ErrorText = (
    errors.InsufficientCredits,
    "The bot's Segmind account is out of credits; an admin needs to top it up.",
)
SERVER_ERROR: ErrorText = (
    errors.UpstreamUnavailable,
    "Segmind had a server error (HTTP {status}); try again later.",
)
OTHER_STATUS: ErrorText = (errors.UpstreamError, "Segmind answered HTTP {status}{detail}")


def error_for_status(status: int, message: str, *, charged: bool = False) -> errors.UpstreamError:
    """Map one of Segmind's documented statuses to a typed error with a user message."""
    if status == 406 and "credit" in message.lower():
        kind, text = OUT_OF_CREDITS
    elif status >= 500:
        kind, text = SERVER_ERROR
    else:
        kind, text = STATUS_ERRORS.get(status, OTHER_STATUS)
    detail = f": {message}" if message else ""
    # Only a server error can follow a billed result (a download failing); the rest never do.
    return kind(
        text.format(detail=detail, status=status),
        status=status,
        charged=charged and status >= 500,
    )


def parse_reset_at(value: str | None, now: float) -> float | None:
    """`x-rate-limit-reset-at-utc` as seconds from now; epoch (s or ms), ISO 8601 or HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
        when = number / 1000 if number > 1e11 else number
        return when - now
    except ValueError:
        pass
    for parse in (datetime.fromisoformat, parsedate_to_datetime):
        try:
            moment = parse(
                value.replace("Z", "+00:00") if parse is datetime.fromisoformat else value
            )
        except (ValueError, TypeError):
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp() - now
    return None


# --- output files ---------------------------------------------------------------------------


def sniff_output(head: bytes) -> tuple[FileKind, str, str]:
    """Kind, file extension and media type of a model file, from its first bytes."""
    if head.startswith(b"glTF"):
        return FileKind.MESH, ".glb", "model/gltf-binary"
    if head.startswith(b"ply"):
        header = head.split(b"end_header", 1)[0]
        if b"f_dc_0" in header or b"opacity" in header or b"scale_0" in header:
            return FileKind.SPLAT, ".ply", "application/ply"
        return FileKind.MESH, ".ply", "application/ply"
    if head.startswith(b"PK\x03\x04"):
        return FileKind.ARCHIVE, ".zip", "application/zip"
    stripped = head.lstrip()
    if stripped.startswith((b"{", b"[")):
        return FileKind.OTHER, ".json", "application/json"
    return FileKind.OTHER, ".bin", "application/octet-stream"


def classify_file(path: Path) -> tuple[FileKind, str, str]:
    with path.open("rb") as fh:
        return sniff_output(fh.read(4096))


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:60] or "output"


def extract_models(archive: Path, workdir: Path, max_bytes: int) -> list[Path]:
    """Pull GLB and PLY files out of a result ZIP, refusing bombs and odd paths."""
    found: list[Path] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            total = 0
            for info in zf.infolist():
                if info.is_dir() or not info.filename.lower().endswith((".glb", ".ply")):
                    continue
                total += info.file_size
                if total > max_bytes:
                    raise errors.OutputTooLarge(
                        "The result archive is larger than the bot accepts.", charged=True
                    )
                name = Path(info.filename)
                target = workdir / f"{archive.stem}-{_safe_stem(name.stem)}{name.suffix.lower()}"
                with zf.open(info) as src, target.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                found.append(target)
    except zipfile.BadZipFile:
        raise errors.BadUpstreamResult(
            "Segmind returned a damaged archive.", charged=True
        ) from None
    return found


def find_outputs(result: Any) -> list[tuple[str, str]]:
    """(name, url-or-data) of every file under the result's documented output keys, however
    nested below them; known kinds first. Links anywhere else are not the model's."""
    if not isinstance(result, dict):
        return []
    found: list[tuple[str, str]] = []
    for key in OUTPUT_KEYS:
        if key in result:
            found += _files_in(result[key], key, depth=0)
    found.sort(key=lambda item: item[0] not in KNOWN_KINDS)
    return found


def _files_in(value: Any, name: str, depth: int) -> list[tuple[str, str]]:
    if depth > 4:  # no documented answer nests deeper
        return []
    if isinstance(value, dict):
        return [
            f for key, inner in value.items() for f in _files_in(inner, f"{name}{key}", depth + 1)
        ]
    if isinstance(value, list):
        return [
            f for i, inner in enumerate(value) for f in _files_in(inner, f"{name}_{i}", depth + 1)
        ]
    if isinstance(value, str) and _looks_like_file(value):
        return [(name, value)]
    return []


def _looks_like_file(value: str) -> bool:
    if value.startswith(("http://", "https://", "data:")):
        return True
    return len(value) > 256 and re.fullmatch(r"[A-Za-z0-9+/=\s]+", value[:512]) is not None


# --- the client -----------------------------------------------------------------------------


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
    ):
        self._session = session
        # For links in Segmind's answers to other hosts: the guarded session (the composition
        # root's), or this one where no other is given (tests of the client alone).
        self._foreign = foreign_session or session
        self._api_key = api_key
        self._base = base_url.rstrip("/")
        self._version = version
        self._poll_interval = poll_interval_s
        self._job_timeout = job_timeout_s
        self._rate_wait = rate_limit_max_wait_s
        self._max_bytes = max_output_bytes
        self._retry = retry
        self._sleep = sleep
        self._rng = rng

    @classmethod
    def from_settings(
        cls,
        session: aiohttp.ClientSession,
        settings,
        foreign_session: aiohttp.ClientSession | None = None,
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
        )

    # -- public ------------------------------------------------------------------------------

    async def generate(
        self, job: ValidatedInput, workdir: Path, on_submitted, on_processing, on_sending=None
    ):
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
        return await self.resume(ref, workdir, on_processing)

    async def resume(self, resume_ref: dict, workdir: Path, on_processing) -> UpstreamResult:
        request_id = resume_ref["request_id"]
        status_url = self._own_url(
            resume_ref.get("status_url"), f"/v2/requests/{request_id}/status"
        )
        response_url = self._own_url(resume_ref.get("response_url"), f"/v2/requests/{request_id}")
        deadline = time.monotonic() + self._job_timeout
        metrics = await self._poll(status_url, on_processing)
        async with self._fetching_until(deadline):
            status, body, headers = await self._get_with_retries(
                response_url, cap=self._max_bytes, charged=True
            )
            if status != 200:
                raise error_for_status(
                    status, _message_from(body, headers.get("Content-Type", "")), charged=False
                )
            data = await parsed(body)  # once: for the metrics and the files alike
            metrics = _metrics_of(data, headers) or metrics
            fetching = time.monotonic()
            files = await self._materialise(body, data, workdir)
        return UpstreamResult(
            files=files,
            request_id=request_id,
            cost_micros=metrics.get("cost"),
            remaining_credits=metrics.get("remaining_credits"),
            download_s=time.monotonic() - fetching,
        )

    @asynccontextmanager
    async def _fetching_until(self, deadline: float):
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
        status, body, headers = await self._get_with_retries(f"{self._base}/v1/get-user-credits")
        if status != 200:
            raise error_for_status(status, _message_from(body, headers.get("Content-Type", "")))
        try:
            data = json.loads(body)
            return Credits(float(data.get("credits", 0)), float(data.get("free-credits", 0)))
        except (ValueError, TypeError, AttributeError):
            raise errors.BadUpstreamResult("Segmind sent an unreadable balance.") from None

    # -- submitting --------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key.get_secret_value()}

    def _own_url(self, url: str | None, fallback_path: str) -> str:
        """Status and response URLs get the API key, so they must point at the API itself."""
        base = urlsplit(self._base)
        if url:
            parts = urlsplit(url)
            if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
                return url
            log.warning("ignoring a status URL on another host: %s", parts.netloc)
        return f"{self._base}{fallback_path}"

    async def _post_once(self, url: str, payload: dict, limit_s: float, cap: int = ANSWER_CAP):
        """POST at most once, except where Segmind certainly did not take it (429, no connect)."""
        waited = 0.0
        connect_failures = 0
        while True:
            try:
                async with self._session.post(
                    url,
                    json=payload,
                    headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(total=limit_s, sock_connect=15),
                ) as response:
                    if response.status == 429:
                        delay = self._rate_limit_delay(response.headers, waited)
                        await response.read()
                    else:
                        # Past this point Segmind may have the job: a bad answer is uncertain.
                        body = await _read_capped(
                            response, cap, charged=False, error=errors.SubmitUncertain
                        )
                        return response.status, body, response.headers
            except aiohttp.ClientConnectorError:
                # The connection never opened, so nothing reached Segmind: safe to try again.
                connect_failures += 1
                if connect_failures >= self._retry.attempts:
                    raise errors.UpstreamUnavailable(
                        "Segmind could not be reached; try again later."
                    ) from None
                delay = self._retry.delay(connect_failures, self._rng)
            except (TimeoutError, aiohttp.ClientError):
                # It may have been received: never POST again (it would be billed twice).
                raise errors.SubmitUncertain(
                    "The connection to Segmind broke while sending your job, so the bot cannot "
                    "tell whether SAM 3D got it. It was not sent again (that could charge "
                    "twice); its price stays held until an admin checks the Segmind account."
                ) from None
            waited += delay
            await self._sleep(delay)

    def _rate_limit_delay(self, headers, waited: float) -> float:
        reset_in = parse_reset_at(headers.get("x-rate-limit-reset-at-utc"), time.time())
        delay = 5.0 if reset_in is None else max(0.2, reset_in)
        delay += self._rng()  # jitter, so several instances do not return at the same instant
        if waited + delay > self._rate_wait:
            raise errors.RateLimited(
                f"Segmind is rate-limiting the bot; try again in about {max(1, round(delay))} s.",
                status=429,
            )
        return delay

    async def _submit_v2(self, payload: dict) -> dict:
        status, body, headers = await self._post_once(f"{self._base}/v2/{MODEL}", payload, 120)
        if status not in (200, 201, 202):
            raise error_for_status(status, _message_from(body, headers.get("Content-Type", "")))
        try:
            data = json.loads(body)
            if not isinstance(data.get("request_id"), str):
                raise ValueError
        except (ValueError, AttributeError, RecursionError):
            # Accepted, so maybe billed, but with nothing to follow it by.
            raise errors.SubmitUncertain(
                "Segmind accepted the job but sent no request id to follow it by; its price "
                "stays held until an admin checks the Segmind account."
            ) from None
        return data

    async def _run_v1(self, payload, workdir, on_submitted, on_processing) -> UpstreamResult:
        await on_processing()
        sent = time.monotonic()
        status, body, headers = await self._post_once(
            f"{self._base}/v1/{MODEL}", payload, self._job_timeout, cap=self._max_bytes
        )
        if status != 200:
            raise error_for_status(status, _message_from(body, headers.get("Content-Type", "")))
        data = await parsed(body)
        metrics = _metrics_of(data, headers)
        fetching = time.monotonic()
        async with self._fetching_until(sent + self._job_timeout):
            files = await self._materialise(body, data, workdir)
        return UpstreamResult(
            files=files,
            cost_micros=metrics.get("cost"),
            remaining_credits=metrics.get("remaining_credits"),
            download_s=time.monotonic() - fetching,
        )

    # -- polling -----------------------------------------------------------------------------

    async def _poll(self, status_url: str, on_processing) -> dict:
        started = time.monotonic()
        deadline = started + self._job_timeout
        told_processing = False
        polls = 0
        while True:
            polls += 1
            status, body, headers = await self._get_with_retries(status_url)
            ctype = headers.get("Content-Type", "")
            if status != 200:
                raise error_for_status(status, _message_from(body, ctype))
            data = await parsed(body)
            if not isinstance(data, dict):
                raise errors.BadUpstreamResult("Segmind sent an unreadable job status.")
            state = str(data.get("status", "")).upper()
            if state == TERMINAL_OK:
                return _metrics_of(data, headers)
            if state == TERMINAL_FAILED:
                raise error_for_status(422, _message_from(body, ctype))
            if state not in PENDING:
                raise errors.BadUpstreamResult(f"Segmind reported an unknown status {state!r}.")
            if state != "QUEUED" and not told_processing:
                told_processing = True
                await on_processing()
            if time.monotonic() > deadline:
                raise errors.JobTimedOut(
                    f"SAM 3D did not finish within {self._job_timeout / 60:g} minutes."
                )
            # A fixed cadence: slow answers do not push every later poll back.
            next_poll = started + polls * self._poll_interval
            await self._sleep(max(0.0, next_poll - time.monotonic()))

    def _own_origin(self, url: str) -> bool:
        return urlsplit(url)[:2] == urlsplit(self._base)[:2]

    @asynccontextmanager
    async def _get(self, url: str, limits: aiohttp.ClientTimeout):
        """GET, following redirects by hand: the API key goes only to the API's own origin,
        on every hop, and any other origin is reached through the guarded session (public
        addresses only) with no key at all."""
        for _ in range(MAX_REDIRECTS + 1):
            own = self._own_origin(url)
            session = self._session if own else self._foreign
            headers = self._headers() if own else {}
            try:
                async with session.get(
                    url, headers=headers, timeout=limits, allow_redirects=False
                ) as response:
                    location = response.headers.get("Location")
                    if response.status in REDIRECTS and location:
                        url = urljoin(url, location)
                        continue
                    yield response
                    return
            except aiohttp.ClientConnectorError as exc:
                if is_blocked(exc):
                    raise errors.BadUpstreamResult(
                        "Segmind's answer pointed the bot at a private address; refused.",
                        charged=True,
                    ) from None
                raise
        raise errors.BadUpstreamResult("Segmind's links redirect too often.", charged=True)

    async def _get_with_retries(self, url: str, cap: int = ANSWER_CAP, charged: bool = False):
        """GET that retries network failures, 5xx and 429; anything else is the answer, read
        under `cap` bytes."""
        attempt = 0
        waited = 0.0
        while True:
            try:
                async with self._get(url, aiohttp.ClientTimeout(total=60)) as response:
                    body = await _read_capped(response, cap, charged)
                    if response.status == 429:
                        delay = self._rate_limit_delay(response.headers, waited)
                        waited += delay
                        await self._sleep(delay)
                        continue
                    if response.status < 500 or attempt + 1 >= self._retry.attempts:
                        return response.status, body, response.headers
            except (TimeoutError, aiohttp.ClientError):
                if attempt + 1 >= self._retry.attempts:
                    raise errors.UpstreamUnavailable(
                        "Segmind stopped answering while the job ran; try again later."
                    ) from None
            await self._sleep(self._retry.delay(attempt, self._rng))
            attempt += 1

    # -- results and files -------------------------------------------------------------------

    async def _materialise(self, body: bytes, data: Any, workdir: Path) -> tuple[OutputFile, ...]:
        """Turn a result (JSON with links or data, parsed as `data`, or a raw model body) into
        files on disk."""
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        kind, ext, _ = sniff_output(body[:4096])
        if kind is not FileKind.OTHER:
            path = workdir / f"result{ext}"
            if len(body) > self._max_bytes:
                raise errors.OutputTooLarge(
                    "The model is larger than the bot accepts.", charged=True
                )
            await asyncio.to_thread(path.write_bytes, body)
            return await self._describe([(path, None)], workdir)
        if data is None:
            raise errors.BadUpstreamResult(
                "Segmind returned a result the bot cannot read.", charged=True
            )
        outputs = find_outputs(data)
        if not outputs:
            raise errors.BadUpstreamResult(
                "Segmind finished but returned no model file.", charged=True
            )
        budget = _ByteBudget(self._max_bytes)

        async def fetch(name: str, value: str) -> tuple[Path, str | None]:
            path = workdir / f"{_safe_stem(name)}.part"
            if value.startswith(("http://", "https://")):
                return await self._download(value, path, budget), value
            data = await asyncio.to_thread(_decode_inline, value)  # megabytes: off the loop
            budget.take(len(data))
            await asyncio.to_thread(path.write_bytes, data)
            return path, None

        # The models first, side by side (the mesh and the splat together); the artifacts
        # archive after them, with what is left of the size cap: too large, it is left out,
        # never the model with it.
        models = [o for o in outputs if not o[0].startswith("artifacts")]
        extras = [o for o in outputs if o[0].startswith("artifacts")]
        tasks = [asyncio.ensure_future(fetch(name, value)) for name, value in models]
        try:
            written = list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one failed: the others stop too
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for name, value in extras:
            try:
                written.append(await fetch(name, value))
            except errors.OutputTooLarge:
                log.warning("the artifacts archive is over MAX_OUTPUT_BYTES: left out")
        return await self._describe(written, workdir)

    async def _describe(self, written, workdir: Path) -> tuple[OutputFile, ...]:
        files: list[OutputFile] = []
        too_large: errors.OutputTooLarge | None = None
        for path, url in written:
            kind, ext, media = await asyncio.to_thread(classify_file, path)
            final = path.with_suffix(ext)
            path.replace(final)
            files.append(OutputFile(kind, final, final.stat().st_size, media, url))
            if kind is FileKind.ARCHIVE:
                try:
                    members = await asyncio.to_thread(
                        extract_models, final, workdir, self._max_bytes
                    )
                except errors.OutputTooLarge as error:  # fatal only if no other model came
                    log.warning("%s: its models are over MAX_OUTPUT_BYTES; not unpacked", final)
                    too_large, members = error, []
                for member in members:
                    m_kind, _, m_media = await asyncio.to_thread(classify_file, member)
                    files.append(OutputFile(m_kind, member, member.stat().st_size, m_media))
        if not any(f.kind in (FileKind.MESH, FileKind.SPLAT) for f in files):
            if too_large is not None:
                raise too_large
            raise errors.BadUpstreamResult(
                "Segmind finished but none of its files is a 3D model.", charged=True
            )
        return tuple(files)

    async def _download(self, url: str, target: Path, budget: _ByteBudget) -> Path:
        """Stream one output file to disk; retry broken transfers; refuse oversize files."""
        for attempt in range(self._retry.attempts):
            try:
                async with self._get(
                    url, aiohttp.ClientTimeout(total=300, sock_read=60)
                ) as response:
                    if response.status in (403, 404, 410):
                        raise errors.ResultExpired(
                            "Segmind's output file is gone (links expire); the job cannot be "
                            "delivered.",
                            status=response.status,
                            charged=True,
                        )
                    if response.status == 200:
                        await self._stream_to(response, target, budget)
                        return target
            except (TimeoutError, aiohttp.ClientError):
                log.info("download attempt %d failed, retrying", attempt + 1)
            await self._sleep(self._retry.delay(attempt, self._rng))
        raise errors.UpstreamUnavailable(
            "The model could not be downloaded from Segmind.", charged=True
        )

    @staticmethod
    async def _stream_to(response: aiohttp.ClientResponse, target: Path, budget: _ByteBudget):
        """Write as bytes arrive; a retried download gives back what its broken try took."""
        received = 0
        try:
            if response.content_length is not None:
                budget.check(response.content_length)
            # Disk calls can stall for milliseconds (opening, writeback throttling), so they
            # run in a thread, a mebibyte at a time to keep the hops few.
            fh = await asyncio.to_thread(target.open, "wb")
            pending = bytearray()
            try:
                async for chunk in response.content.iter_chunked(1 << 20):
                    budget.take(len(chunk))
                    received += len(chunk)
                    pending += chunk
                    if len(pending) >= 1 << 20:
                        await asyncio.to_thread(fh.write, bytes(pending))
                        pending.clear()
                await asyncio.to_thread(fh.write, bytes(pending))
            finally:
                await asyncio.to_thread(fh.close)
            expected = response.content_length
            if expected is not None and received != expected:
                raise aiohttp.ClientPayloadError(f"got {received} of {expected} bytes")
        except aiohttp.ClientError:
            budget.give_back(received)
            raise


class _ByteBudget:
    """The size cap shared by all files of one result, however they arrive."""

    def __init__(self, limit: int):
        self.left = limit

    def check(self, size: int) -> None:
        if size > self.left:
            raise errors.OutputTooLarge("The model is larger than the bot accepts.", charged=True)

    def take(self, size: int) -> None:
        self.check(size)
        self.left -= size

    def give_back(self, size: int) -> None:
        self.left += size


async def _read_capped(
    response: aiohttp.ClientResponse,
    cap: int,
    charged: bool,
    error: type[errors.UpstreamError] = errors.BadUpstreamResult,
) -> bytes:
    """An answer's body, refused as soon as it passes `cap` bytes (declared or received)."""
    too_large = f"Segmind sent an answer larger than the bot accepts ({cap // 1_000_000} MB)."
    if response.content_length is not None and response.content_length > cap:
        raise error(too_large, charged=charged)
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > cap:
            raise error(too_large, charged=charged)
    return bytes(body)


def _decode_inline(value: str) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(re.sub(r"\s+", "", value), validate=True)
    except (binascii.Error, ValueError):
        raise errors.BadUpstreamResult(
            "Segmind returned unreadable file data.", charged=True
        ) from None


async def parsed(body: bytes) -> Any:
    """An answer's JSON, parsed once (in a thread when it is large), or None when it is no
    JSON (a raw model, an HTML page, JSON nested past sense)."""
    if body[:64].lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        if len(body) > 1_000_000:
            return await asyncio.to_thread(json.loads, body)
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _metrics_of(data: Any, headers) -> dict[str, Any]:
    """Cost (as micro-USD) and remaining credits from v2 `metrics` or v1 headers."""
    found: dict[str, Any] = {}
    metrics = data.get("metrics") if isinstance(data, dict) else None
    cost = metrics.get("cost") if isinstance(metrics, dict) else None
    remaining = metrics.get("remaining_credits") if isinstance(metrics, dict) else None
    cost = cost if cost is not None else headers.get("x-cost")
    remaining = remaining if remaining is not None else headers.get("x-remaining-credits")
    try:
        if cost is not None:
            found["cost"] = usd_to_micros(cost)
        if remaining is not None:
            found["remaining_credits"] = float(remaining)
    except (ValueError, ArithmeticError):
        log.warning("unreadable cost metrics from Segmind")
    return found


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
