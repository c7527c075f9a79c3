"""HTTP to Segmind: the API key on the API's own origin only (redirects followed by hand),
links elsewhere through the guarded session with no key, retries with backoff for what is safe
to repeat, 429s waited out until `x-rate-limit-reset-at-utc`, and every answer read under a
cap. A submit that may have reached Segmind is never sent again."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from pydantic import SecretStr

from .. import errors
from ..images import MAX_REDIRECTS, REDIRECTS, is_blocked, read_body_under
from .status import parse_reset_at

log = logging.getLogger(__name__)

ANSWER_CAP = 1_000_000  # a status or submit answer is a few hundred bytes
Answer = tuple[int, bytes, Mapping[str, str]]  # status, body, headers


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # for polls and downloads
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2.0**attempt) * (0.5 + rng())


# --- errors ---------------------------------------------------------------------------------


class Transport:
    """Every request the client makes; every session, URL, timing and clock is injected."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: SecretStr,
        base_url: str,
        foreign_session: aiohttp.ClientSession | None = None,
        retry: RetryPolicy = RetryPolicy(),
        rate_limit_max_wait_s: float = 120.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        pace: Callable[[], Awaitable[None]] | None = None,
    ):
        self._session = session
        # Awaited before each call to Segmind's API: waits for this call's turn when every
        # instance shares the account's rate limit (SEGMIND_CALLS_PER_MINUTE).
        self._pace = pace
        # For links in Segmind's answers to other hosts: the guarded session (the composition
        # root's), or this one where no other is given (tests of the client alone).
        self._foreign = foreign_session or session
        self._api_key = api_key
        self.base = base_url.rstrip("/")
        self.retry = retry
        self._rate_wait = rate_limit_max_wait_s
        self.sleep = sleep
        self._rng = rng
        self._clock = clock

    def backoff(self, attempt: int) -> float:
        """How long to wait before try `attempt` again (exponential, with jitter)."""
        return self.retry.delay(attempt, self._rng)

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key.get_secret_value()}

    def own_url(self, url: str | None, fallback_path: str) -> str:
        """Status and response URLs get the API key, so they must point at the API itself."""
        base = urlsplit(self.base)
        if url:
            parts = urlsplit(url)
            if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
                return url
            log.warning("ignoring a status URL on another host: %s", parts.netloc)
        return f"{self.base}{fallback_path}"

    async def post_once(
        self, url: str, payload: dict[str, Any], limit_s: float, cap: int = ANSWER_CAP
    ) -> Answer:
        """POST at most once, except where Segmind certainly did not take it (429, no connect)."""
        waited = 0.0
        connect_failures = 0
        while True:
            if self._pace is not None:
                await self._pace()
            try:
                async with self._session.post(
                    url,
                    json=payload,
                    headers=self.headers(),
                    timeout=aiohttp.ClientTimeout(total=limit_s, sock_connect=15),
                ) as response:
                    if response.status == 429:
                        delay = self.rate_limit_delay(response.headers, waited)
                        await response.read()
                    else:
                        # Past this point Segmind may have the job: a bad answer is uncertain.
                        body = await read_capped(
                            response, cap, charged=False, error=errors.SubmitUncertain
                        )
                        return response.status, body, response.headers
            except aiohttp.ClientConnectorError:
                # The connection never opened, so nothing reached Segmind: safe to try again.
                connect_failures += 1
                if connect_failures >= self.retry.attempts:
                    raise errors.UpstreamUnavailable(
                        "Segmind could not be reached; try again later."
                    ) from None
                delay = self.backoff(connect_failures)
            except (TimeoutError, aiohttp.ClientError):
                # It may have been received: never POST again (it would be billed twice).
                raise errors.SubmitUncertain(
                    "The connection to Segmind broke while sending your job, so the bot cannot "
                    "tell whether SAM 3D got it. It was not sent again (that could charge "
                    "twice); its price stays held until an admin checks the Segmind account."
                ) from None
            waited += delay
            await self.sleep(delay)

    def rate_limit_delay(self, headers: Mapping[str, str], waited: float) -> float:
        reset_in = parse_reset_at(headers.get("x-rate-limit-reset-at-utc"), self._clock())
        delay = 5.0 if reset_in is None else max(0.2, reset_in)
        delay += self._rng()  # jitter, so several instances do not return at the same instant
        if waited + delay > self._rate_wait:
            raise errors.RateLimited(
                f"Segmind is rate-limiting the bot; try again in about {max(1, round(delay))} s.",
                status=429,
            )
        return delay

    def own_origin(self, url: str) -> bool:
        return urlsplit(url)[:2] == urlsplit(self.base)[:2]

    @asynccontextmanager
    async def get(
        self, url: str, limits: aiohttp.ClientTimeout
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET, following redirects by hand: the API key goes only to the API's own origin,
        on every hop, and any other origin is reached through the guarded session (public
        addresses only) with no key at all."""
        for _ in range(MAX_REDIRECTS + 1):
            own = self.own_origin(url)
            session = self._session if own else self._foreign
            headers = self.headers() if own else {}
            if own and self._pace is not None:
                await self._pace()
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

    async def get_with_retries(
        self, url: str, cap: int = ANSWER_CAP, charged: bool = False
    ) -> Answer:
        """GET that retries network failures, 5xx and 429; anything else is the answer, read
        under `cap` bytes."""
        attempt = 0
        waited = 0.0
        while True:
            try:
                async with self.get(url, aiohttp.ClientTimeout(total=60)) as response:
                    body = await read_capped(response, cap, charged)
                    if response.status == 429:
                        delay = self.rate_limit_delay(response.headers, waited)
                        waited += delay
                        await self.sleep(delay)
                        continue
                    if response.status < 500 or attempt + 1 >= self.retry.attempts:
                        return response.status, body, response.headers
            except (TimeoutError, aiohttp.ClientError):
                if attempt + 1 >= self.retry.attempts:
                    raise errors.UpstreamUnavailable(
                        "Segmind stopped answering while the job ran; try again later."
                    ) from None
            await self.sleep(self.backoff(attempt))
            attempt += 1


async def read_capped(
    response: aiohttp.ClientResponse,
    cap: int,
    charged: bool,
    error: type[errors.UpstreamError] = errors.BadUpstreamResult,
) -> bytes:
    """An answer's body under `cap` bytes, or Segmind's error saying it was larger."""
    too_large = f"Segmind sent an answer larger than the bot accepts ({cap // 1_000_000} MB)."
    return await read_body_under(response, cap, error(too_large, charged=charged))
