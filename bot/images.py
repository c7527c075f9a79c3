"""Fetching and checking what users send: the photo, the mask, the box, the points, the seed.

Every refusal is an InputError naming the field and what is allowed. Decoding runs in a
thread, so a large photo never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import re
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from PIL import Image, ImageOps

from .errors import InputError
from .models import (
    SEED_DEFAULT,
    SEED_MAX,
    SEED_MIN,
    ImageSource,
    JobRequest,
    PreparedImage,
    ValidatedInput,
)

if TYPE_CHECKING:
    from aiohttp.connector import AddrInfoType

    from .settings import Settings

# The pixel cap is ours (ImageLimits.max_pixels, checked before decoding); Pillow's own
# warning for big images would only repeat it in the logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ACCEPTED = "PNG, JPEG or WebP"
PROMPT_MAX_CHARS = 300
MAX_POINTS = 16
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
EXIF_ORIENTATION = 0x0112
MIN_SIDE = 16  # pixels: smaller is no photo of an object
MAX_ASPECT = 20  # a panorama is 4:1; this far is a sliver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20_000_000
    max_pixels: int = 50_000_000
    max_side: int = 2048  # longer photos are scaled down: the model does not use more
    fetch_timeout_s: float = 20.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(
            settings.max_image_bytes,
            settings.max_image_pixels,
            settings.max_image_side,
            settings.image_fetch_timeout_s,
        )


# --- where images may come from -------------------------------------------------------------


# IPv6 ranges that carry (or once carried) an IPv4 address or a site's own network, which
# Python counts as global: NAT64, 6to4, IPv4-compatible, site-local. A link into them can reach
# an IPv4 host behind a translator, so none is a public destination.
TRANSITION_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96", "fec0::/10")
)


def public_addresses_only(ip: IPAddress) -> bool:
    """Refuse loopback, private, link-local, reserved and other non-global addresses."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif any(ip in network for network in TRANSITION_NETWORKS):
            return False
    return ip.is_global and not ip.is_multicast


class BlockedAddress(OSError):
    """Raised where the connection is made, so none is opened to the address."""


def is_blocked(error: BaseException) -> bool:
    """Whether a failed connection was refused by the address policy (aiohttp may wrap one
    refusal per address into one OSError)."""
    os_error = getattr(error, "os_error", error)
    return isinstance(os_error, BlockedAddress) or BLOCKED in str(os_error)


BLOCKED = "is not a public address"


def guarded_socket_factory(
    allowed: AddressPolicy = public_addresses_only,
) -> Callable[[AddrInfoType], socket.socket]:
    """Every socket the session opens is checked here, just before it connects: names
    resolved by any resolver, IP literals (which aiohttp connects to without resolving) and
    every redirect's hop alike."""

    def open_socket(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, address = addr_info
        host = address[0]
        if not allowed(ipaddress.ip_address(host.split("%", 1)[0])):
            raise BlockedAddress(f"{host} {BLOCKED}")
        return socket.socket(family=family, type=kind, proto=proto)

    return open_socket


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, but refuses a name if any of its addresses is not allowed."""

    def __init__(
        self, allowed: AddressPolicy = public_addresses_only, inner: AbstractResolver | None = None
    ):
        self._allowed = allowed
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not self._allowed(ipaddress.ip_address(result["host"])):
                raise BlockedAddress(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(allowed: AddressPolicy = public_addresses_only) -> aiohttp.ClientSession:
    """The session for every URL a user or an upstream answer names (the composition root
    owns it): each address is checked where the socket connects."""
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allowed),
        socket_factory=guarded_socket_factory(allowed),
        limit=32,
    )
    return aiohttp.ClientSession(connector=connector, headers={"User-Agent": "sam3d-bot"})


class ImageFetcher:
    """Downloads user-supplied image URLs under a byte cap and a time bound."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        limits: ImageLimits,
        allowed: AddressPolicy = public_addresses_only,
    ):
        self._session = session
        self._limits = limits
        self._allowed = allowed

    async def fetch(self, url: str, field: str = "image_url") -> bytes:
        try:
            async with asyncio.timeout(self._limits.fetch_timeout_s):
                return await self._follow(url, field)
        except TimeoutError:
            raise InputError(
                field, f"the download took longer than {self._limits.fetch_timeout_s:g} s"
            ) from None

    async def _follow(self, url: str, field: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            self._check_url(url, field)
            try:
                async with self._session.get(url, allow_redirects=False) as response:
                    if response.status in REDIRECTS:
                        location = response.headers.get("Location", "")
                        url = urljoin(url, location)
                        continue
                    if response.status != 200:
                        raise InputError(field, f"the server answered HTTP {response.status}")
                    return await read_capped(response, field, self._limits.max_bytes)
            except aiohttp.ClientConnectorError as exc:
                if is_blocked(exc):
                    raise InputError(
                        field, "links to private or local addresses are refused"
                    ) from None
                raise InputError(field, "the server could not be reached") from None
            except aiohttp.ClientError:
                raise InputError(field, "the download failed") from None
            except (ValueError, UnicodeError):  # a host name no URL library can spell
                raise InputError(field, "that is not a valid link") from None
        raise InputError(field, f"more than {MAX_REDIRECTS} redirects")

    def _check_url(self, url: str, field: str) -> None:
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:  # "http://[::1", a port that is no number
            raise InputError(field, "that is not a valid link") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise InputError(field, "only http:// and https:// links are accepted")
        try:
            literal = ipaddress.ip_address(hostname)
        except ValueError:
            if not valid_host_name(hostname):
                raise InputError(field, "that is not a valid link") from None
            return  # a name: every address it resolves to is checked where it connects
        if not self._allowed(literal):
            raise InputError(field, "links to private or local addresses are refused")


def valid_host_name(name: str) -> bool:
    """A name DNS could hold: labels of 1-63 bytes once IDNA-encoded, 253 in all."""
    try:
        encoded = name.rstrip(".").encode("idna")
    except UnicodeError:
        return False
    labels = encoded.split(b".")
    return len(encoded) <= 253 and all(0 < len(label) <= 63 for label in labels)


async def read_capped(response: aiohttp.ClientResponse, field: str, cap: int) -> bytes:
    """A file someone gave, refused as soon as it passes `cap` bytes."""
    too_large = InputError(field, f"the file is larger than {cap // 1_000_000} MB")
    return await read_body_under(response, cap, too_large)


async def read_body_under(
    response: aiohttp.ClientResponse, cap: int, too_large: Exception
) -> bytes:
    """The body, refused with `too_large` as soon as it passes `cap` bytes (declared or
    received), so no answer grows past the cap in memory."""
    if response.content_length is not None and response.content_length > cap:
        raise too_large
    buffer = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        buffer += chunk
        if len(buffer) > cap:
            raise too_large
    return bytes(buffer)


# --- bytes to a checked image ---------------------------------------------------------------


def sniff_image_type(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def describe_non_image(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if not data:
        return "the file is empty"
    if head.startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "it is a GIF"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "it is a HEIC/AVIF photo"
    if data.startswith(b"%PDF"):
        return "it is a PDF"
    return "it is not an image"


def decode_text_image(text: str, field: str, max_bytes: int) -> bytes:
    """A data URI (`data:image/png;base64,...`) or bare base64."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise InputError(field, "a data URI must be base64-encoded")
    if len(text) > max_bytes * 4 // 3 + 8:
        raise InputError(field, f"the image is larger than {max_bytes // 1_000_000} MB")
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "not valid base64 image data") from None


def prepare_image(data: bytes, field: str, limits: ImageLimits) -> tuple[PreparedImage, float]:
    """Check and normalise one image. Returns it with the scale applied (1.0 = unchanged)."""
    if len(data) > limits.max_bytes:
        raise InputError(field, f"the image is larger than {limits.max_bytes // 1_000_000} MB")
    media_type = sniff_image_type(data)
    if media_type is None:
        raise InputError(field, f"{describe_non_image(data)}; send a {ACCEPTED} image")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > limits.max_pixels:
            raise InputError(
                field,
                f"{width}x{height} is too many pixels "
                f"(at most {limits.max_pixels // 1_000_000} MP)",
            )
        if min(width, height) < MIN_SIDE or max(width, height) > MAX_ASPECT * min(width, height):
            # A sliver (49,000,000 x 1 pixels fits in 47 kB) is no photo, and scaling it
            # would take gigabytes.
            raise InputError(field, f"a {width}x{height} picture is not a photo of an object")
        image.load()
        needs_turn = image.getexif().get(EXIF_ORIENTATION, 1) != 1
        oriented = ImageOps.exif_transpose(image) if needs_turn else image
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(
            field, f"too many pixels (at most {limits.max_pixels // 1_000_000} MP)"
        ) from None
    except (OSError, ValueError, SyntaxError, TypeError, MemoryError):
        # TypeError: Pillow on some corrupt EXIF blocks.
        raise InputError(field, "the image is damaged or truncated") from None

    scale = min(1.0, limits.max_side / max(oriented.size))
    has_metadata = bool(image.info.get("exif")) or bool(image.getexif())
    if scale == 1.0 and oriented is image and not has_metadata:
        return PreparedImage(data, media_type, width, height), 1.0
    if scale < 1.0:
        size = (max(1, round(oriented.width * scale)), max(1, round(oriented.height * scale)))
        oriented = oriented.resize(size, Image.Resampling.LANCZOS)
    return _encode(oriented, media_type), scale


def _encode(image: Image.Image, media_type: str) -> PreparedImage:
    """Re-encode without metadata (no EXIF location goes upstream)."""
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.convert("RGB").save(out, "JPEG", quality=93)
    else:
        if image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA")
        image.save(out, "PNG", optimize=False)
        media_type = "image/png"
    return PreparedImage(out.getvalue(), media_type, image.width, image.height)


def oriented_size(data: bytes) -> tuple[int, int]:
    """The size a viewer shows (after EXIF rotation), which is what users measure boxes in."""
    with Image.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        w, h = image.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def prepare_mask(data: bytes, size: tuple[int, int], limits: ImageLimits) -> PreparedImage:
    """The mask must match the photo's size; it is scaled with it and sent as a grey PNG."""
    mask, _ = prepare_image(data, "mask", ImageLimits(limits.max_bytes, limits.max_pixels, 10**9))
    if (mask.width, mask.height) != size:
        raise InputError(
            "mask",
            f"is {mask.width}x{mask.height} but the image is {size[0]}x{size[1]}; "
            "it must be the same size",
        )
    return mask


def scale_mask(mask: PreparedImage, target: tuple[int, int]) -> PreparedImage:
    with Image.open(io.BytesIO(mask.data)) as image:
        grey = image.convert("L")
        if grey.size != target:
            grey = grey.resize(target, Image.Resampling.NEAREST)
        out = io.BytesIO()
        grey.save(out, "PNG")
    return PreparedImage(out.getvalue(), "image/png", target[0], target[1])


# --- typed parameters -----------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ALLOWED_CHARS = re.compile(r"^[\d\s.,;\[\]()\-]*$")


MAX_COORDINATE = 1_000_000  # pixels: any real photo is far smaller


def _numbers(text: str, field: str, example: str) -> list[float]:
    if not _ALLOWED_CHARS.match(text):
        raise InputError(field, f"use numbers only, for example {example}")
    values = [float(n) for n in _NUMBER.findall(text)]
    if any(not abs(v) <= MAX_COORDINATE for v in values):  # also inf, from 400 digits
        raise InputError(field, f"numbers must be pixels of the photo, for example {example}")
    return values


def parse_bbox(text: str | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """`50,75,350,400`, `[50, 75, 350, 400]` or `50 75 350 400`: x1, y1, x2, y2 in pixels."""
    if text is None or not text.strip():
        return None
    example = "50,75,350,400 (x1,y1,x2,y2 in pixels)"
    values = _numbers(text, "bbox", example)
    if len(values) != 4:
        raise InputError("bbox", f"needs 4 numbers, got {len(values)}; for example {example}")
    x1, y1, x2, y2 = (round(v) for v in values)
    if not (x1 < x2 and y1 < y2):
        raise InputError("bbox", "x1 must be less than x2 and y1 less than y2")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise InputError("bbox", f"({x1},{y1},{x2},{y2}) is outside the {width}x{height} image")
    return x1, y1, x2, y2


def parse_points(text: str | None, width: int, height: int) -> tuple[tuple[int, int], ...]:
    """`[[10,20],[30,40]]`, `10,20;30,40` or `10 20 30 40`: x, y pairs in pixels."""
    if text is None or not text.strip():
        return ()
    example = "10,20;30,40 (x,y pairs in pixels)"
    values = _numbers(text, "points", example)
    if not values or len(values) % 2:
        raise InputError("points", f"needs x,y pairs; for example {example}")
    if len(values) // 2 > MAX_POINTS:
        raise InputError("points", f"at most {MAX_POINTS} points")
    points = tuple((round(x), round(y)) for x, y in zip(values[::2], values[1::2], strict=True))
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError("points", f"({x},{y}) is outside the {width}x{height} image")
    return points


def parse_seed(value: int | str | None) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return SEED_DEFAULT
    try:
        seed = int(str(value).strip())
    except ValueError:
        raise InputError("seed", f"must be a whole number from {SEED_MIN} to {SEED_MAX}") from None
    if not SEED_MIN <= seed <= SEED_MAX:
        raise InputError("seed", f"must be from {SEED_MIN} to {SEED_MAX}, got {seed}")
    return seed


def parse_prompt(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    text = " ".join(text.split())
    if len(text) > PROMPT_MAX_CHARS:
        raise InputError("prompt", f"at most {PROMPT_MAX_CHARS} characters, got {len(text)}")
    return text


def bbox_to_api(bbox: tuple[int, int, int, int]) -> str:
    return "[" + ", ".join(str(v) for v in bbox) + "]"


def points_to_api(points: tuple[tuple[int, int], ...]) -> str:
    return "[" + ", ".join(f"[{x}, {y}]" for x, y in points) + "]"


# --- the whole request ----------------------------------------------------------------------


class InputValidator:
    """Turns a JobRequest into a ValidatedInput, fetching what it must; charges nothing."""

    def __init__(
        self, fetcher: ImageFetcher | None, limits: ImageLimits, allow_paths: bool = False
    ):
        self._fetcher = fetcher
        self._limits = limits
        self._allow_paths = allow_paths  # local files: the command line only

    async def load_bytes(self, source: ImageSource, field: str) -> bytes:
        if source.kind == "bytes":
            assert isinstance(source.value, bytes)
            return source.value
        if source.kind == "text":
            return decode_text_image(str(source.value), field, self._limits.max_bytes)
        if source.kind == "url":
            if self._fetcher is None:
                raise InputError(field, "links are not accepted here")
            return await self._fetcher.fetch(str(source.value), field)
        if source.kind == "path" and self._allow_paths:
            return await asyncio.to_thread(self._read_path, Path(str(source.value)), field)
        raise InputError(field, "local files are accepted on the command line only")

    def _read_path(self, path: Path, field: str) -> bytes:
        try:
            if path.stat().st_size > self._limits.max_bytes:
                raise InputError(
                    field, f"the file is larger than {self._limits.max_bytes // 1_000_000} MB"
                )
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise InputError(field, f"no such file: {path}") from None
        except PermissionError:
            raise InputError(field, f"cannot read {path}") from None

    async def validate(self, request: JobRequest) -> ValidatedInput:
        prompt = parse_prompt(request.prompt)
        seed = parse_seed(request.seed)
        image_field = "image_url" if request.image.kind == "url" else "image"
        raw = await self.load_bytes(request.image, image_field)
        mask_raw = await self.load_bytes(request.mask, "mask") if request.mask else None
        return await asyncio.to_thread(
            self._check, raw, mask_raw, image_field, request, prompt, seed
        )

    def _check(
        self,
        raw: bytes,
        mask_raw: bytes | None,
        image_field: str,
        request: JobRequest,
        prompt: str | None,
        seed: int,
    ) -> ValidatedInput:
        image, scale = prepare_image(raw, image_field, self._limits)
        # Users measure boxes and points on the photo as shown, before any scaling.
        shown = (image.width, image.height) if scale == 1.0 else oriented_size(raw)
        bbox = parse_bbox(request.bbox, *shown)
        points = parse_points(request.points, *shown)
        mask = None
        if mask_raw is not None:
            mask = scale_mask(
                prepare_mask(mask_raw, shown, self._limits), (image.width, image.height)
            )
        if scale != 1.0:
            if bbox:
                x1, y1, x2, y2 = (
                    min(round(v * scale), lim)
                    for v, lim in zip(bbox, (image.width, image.height) * 2, strict=True)
                )
                bbox = (x1, y1, x2, y2)
            points = tuple(
                (min(round(x * scale), image.width - 1), min(round(y * scale), image.height - 1))
                for x, y in points
            )
        return ValidatedInput(image, prompt, bbox, points, mask, seed, request.include_artifacts)
