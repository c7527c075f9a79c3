"""A finished result's files: found under Segmind's documented keys, downloaded (or decoded)
to disk under one byte cap for the whole result, unpacked from archives, and named by what
their first bytes say they are."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from .. import errors
from ..models import FileKind, OutputFile
from ..settings import usd_to_micros
from .transport import Transport

log = logging.getLogger(__name__)

KNOWN_KINDS = {"model_glb": FileKind.MESH, "gaussian_splat": FileKind.SPLAT}
# Where a result's files may be named (Segmind's documented keys); links anywhere else in an
# answer are not fetched.
OUTPUT_KEYS = ("model_glb", "gaussian_splat", "output", "outputs", "individual_meshes", "artifacts")


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


class Outputs:
    """Turns a result into files on disk, through the transport, under MAX_OUTPUT_BYTES."""

    def __init__(self, transport: Transport, max_bytes: int):
        self._transport = transport
        self._max_bytes = max_bytes

    async def materialise(self, body: bytes, data: Any, workdir: Path) -> tuple[OutputFile, ...]:
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

    async def _describe(
        self, written: list[tuple[Path, str | None]], workdir: Path
    ) -> tuple[OutputFile, ...]:
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
        for attempt in range(self._transport.retry.attempts):
            try:
                async with self._transport.get(
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
            await self._transport.sleep(self._transport.backoff(attempt))
        raise errors.UpstreamUnavailable(
            "The model could not be downloaded from Segmind.", charged=True
        )

    @staticmethod
    async def _stream_to(
        response: aiohttp.ClientResponse, target: Path, budget: _ByteBudget
    ) -> None:
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


def metrics_of(data: Any, headers: Mapping[str, str]) -> dict[str, Any]:
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
