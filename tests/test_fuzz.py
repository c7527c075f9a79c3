"""What people and Segmind send, generated and mutated: the only outcomes are a result or the
project's own clear error, quickly. A fixed seed and a bounded number of examples here;
`scripts/test tests/test_fuzz.py --hypothesis-profile=long` runs many more."""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import struct
import tempfile
from pathlib import Path

import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from adapters.slack.translate import parse_job_text
from bot.errors import InputError, RenderError
from bot.images import (
    BlockedAddress,
    ImageFetcher,
    ImageLimits,
    guarded_socket_factory,
    prepare_image,
    public_addresses_only,
)
from bot.render.inspect import inspect_model
from bot.variations import variation_seeds
from tests.conftest import photo_bytes
from tests.fakes.models3d import made_glb, made_splat_ply

FAST = settings(
    deadline=2000, suppress_health_check=[HealthCheck.too_slow]
)  # examples: the profile

# -- the address policy ------------------------------------------------------------------------

# Ways to write a digit and a dot that URL libraries fold to ASCII (fullwidth, circled,
# mathematical, ideographic full stop and friends).
DIGITS = {
    str(d): [str(d), chr(0xFF10 + d), chr(0x1D7CE + d)] + ([chr(0x245F + d)] if d else [])
    for d in range(10)
}
DOTS = [".", "。", "．", "｡"]
PRIVATE = [
    "127.0.0.1",
    "127.1.2.3",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
]


@st.composite
def spelled(draw, address: str) -> str:
    out = []
    for char in address:
        if char.isdigit():
            out.append(draw(st.sampled_from(DIGITS[char])))
        else:
            out.append(draw(st.sampled_from(DOTS)))
    return "".join(out)


@FAST
@given(st.sampled_from(PRIVATE).flatmap(spelled))
def test_no_spelling_of_a_private_address_gets_a_socket(host):
    """Whatever the URL library makes of the spelling is what the socket is opened for: if it
    is an address, the guard where the socket connects refuses it."""
    url = f"http://{host}:8080/photo.png"
    fetcher = ImageFetcher(None, ImageLimits())  # type: ignore[arg-type]
    try:
        fetcher._check_url(url, "image_url")
    except InputError:
        return  # refused at once: fine
    try:
        folded = yarl.URL(url).host
    except (ValueError, UnicodeError):
        return  # no library can open it
    try:
        address = ipaddress.ip_address(folded)
    except ValueError:
        return  # a name: resolved, then checked by the same guard
    assert not public_addresses_only(address)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with pytest.raises(BlockedAddress):
        guarded_socket_factory()((family, socket.SOCK_STREAM, 6, "", (str(address), 8080)))


@FAST
@given(st.ip_addresses())
def test_the_policy_refuses_what_is_not_global(address):
    if public_addresses_only(address):
        effective = getattr(address, "ipv4_mapped", None) or address
        assert effective.is_global and not effective.is_multicast
        if effective.version == 6:
            assert effective.sixtofour is None
            assert effective not in ipaddress.ip_network("64:ff9b::/96")


# -- the image checks ----------------------------------------------------------------------------


def seeds() -> list[bytes]:
    jpeg = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(io.BytesIO(photo_bytes(64, 48))).convert("RGB").save(jpeg, "JPEG", exif=exif)
    webp = io.BytesIO()
    Image.open(io.BytesIO(photo_bytes(64, 48))).save(webp, "WEBP")
    return [photo_bytes(64, 48), jpeg.getvalue(), webp.getvalue()]


IMAGES = seeds()


@st.composite
def mutated(draw, originals: list[bytes], head: int = 400) -> bytes:
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, min(head, len(data) - 1)))  # headers, EXIF, chunk lengths
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(1, len(data)))]
    return bytes(data)


@FAST
@given(mutated(IMAGES))
def test_a_mutated_photo_is_a_checked_image_or_a_clear_error(data):
    try:
        image, scale = prepare_image(data, "image", ImageLimits(max_pixels=4_000_000))
    except InputError as error:
        assert error.field == "image" and len(error.user_message) < 200
        return
    assert 0 < scale <= 1 and image.width * image.height <= 4_000_000


# -- the model checks ----------------------------------------------------------------------------

GLB = made_glb(1)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
GLTF_KEYS = [
    "meshes",
    "accessors",
    "bufferViews",
    "buffers",
    "images",
    "materials",
    "extensionsUsed",
    "asset",
    "nodes",
]


def glb_with(document) -> bytes:
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    json_length = struct.unpack_from("<I", GLB, 12)[0]
    rest = GLB[20 + json_length :]
    body = struct.pack("<II", len(text), 0x4E4F534A) + text + rest
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def original_document() -> dict:
    json_length = struct.unpack_from("<I", GLB, 12)[0]
    return json.loads(GLB[20 : 20 + json_length])


@FAST
@given(st.dictionaries(st.sampled_from(GLTF_KEYS), JSON_VALUES, max_size=4))
def test_a_glb_with_mutated_json_is_inspected_or_refused_clearly(changes):
    check_model(glb_with({**original_document(), **changes}), ".glb")


PLY = made_splat_ply(50)


@FAST
@given(mutated([PLY], head=PLY.index(b"end_header") + 10))
def test_a_ply_with_a_mutated_header_is_inspected_or_refused_clearly(data):
    check_model(data, ".ply")


def check_model(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(data)
        try:
            inspect_model(path)
        except RenderError as error:
            assert error.user_message.startswith("model") and len(error.user_message) < 300


# -- the web picker's choice: JSON from a browser, or from anyone with the link ------------

CHOICE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=30,
)


@FAST
@given(
    st.one_of(
        CHOICE_VALUES,
        st.fixed_dictionaries({"points": CHOICE_VALUES, "box": CHOICE_VALUES}),
        st.fixed_dictionaries(
            {
                "points": st.lists(st.lists(CHOICE_VALUES, max_size=3), max_size=12),
                "box": st.lists(st.floats() | st.integers(-5000, 5000), max_size=5),
            }
        ),
    )
)
def test_any_choice_sent_to_the_picker_is_points_on_the_photo_or_a_clear_refusal(body):
    """Whatever JSON arrives, the outcome is points and a box inside the photo (as the job
    gets them) or ValueError / InputError, which the page answers 400: never a crash."""
    from bot.errors import InputError
    from bot.models import Requester
    from bot.pick_page import chosen
    from bot.picker import Pick

    pick = Pick("p" * 16, Requester("discord", "u"), 640, 480, 0.0)
    try:
        points, box = chosen(body)
        pick.choose_pixels(points, box)
    except (ValueError, InputError):
        return
    assert len(pick.points) <= 10
    assert all(0 <= x < 640 and 0 <= y < 480 for x, y in pick.points)
    if pick.box is not None:
        x1, y1, x2, y2 = pick.box
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    request = pick.request(b"photo")
    assert request.points is None or request.points.count(";") == len(pick.points) - 1


SLACK_WORDS = st.sampled_from(["variations=", "private=", "seed=", "pick", "<@U1>", "&lt;", " "])


@given(st.lists(st.one_of(SLACK_WORDS, st.text(max_size=12)), max_size=12).map("".join))
def test_slack_command_text_is_read_or_refused_with_a_reason(text):
    """Whatever a member types after /sam3d: settings within their ranges, or an InputError
    naming what is wrong; never anything else."""
    try:
        args = parse_job_text(text)
    except InputError as error:
        assert error.user_message
        return
    assert 1 <= args.variations <= 4 and args.private in (None, True, False)


@given(count=st.integers(-3, 8), seed=st.one_of(st.none(), st.integers(-5, 2_000_000), st.text()))
def test_variation_seeds_are_as_many_as_asked_and_all_different(count, seed):
    try:
        seeds = variation_seeds(count, seed)
    except InputError:
        return
    assert len(seeds) == count and len(set(seeds)) == count
    assert all(0 <= s <= 1_000_000 for s in seeds)
