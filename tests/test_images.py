"""What users send: image sources, type sniffing, bombs, EXIF, scaling, box, points, seed, mask."""

from __future__ import annotations

import base64
import io
import ipaddress

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.errors import InputError
from bot.images import (
    GuardedResolver,
    ImageFetcher,
    ImageLimits,
    InputValidator,
    guarded_session,
    parse_bbox,
    parse_points,
    parse_prompt,
    parse_seed,
    prepare_image,
    public_addresses_only,
)
from bot.models import ImageSource, JobRequest, Requester
from tests.conftest import photo_bytes
from tests.fakes import serve_on_loopback

ME = Requester("test", "u1")


def loopback_only(ip) -> bool:
    return ip == ipaddress.ip_address("127.0.0.1")


# --- forgiving forms of box, points, seed -------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["50,75,350,400", "[50, 75, 350, 400]", "50 75 350 400", " (50; 75; 350; 400) "]
)
def test_bbox_forms(text):
    assert parse_bbox(text, 640, 480) == (50, 75, 350, 400)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("50,75,350", "needs 4 numbers, got 3"),
        ("350,75,50,400", "x1 must be less than x2"),
        ("50,75,700,400", "outside the 640x480 image"),
        ("a,b,c,d", "use numbers only"),
        ("1" * 400 + ",2,3,4", "numbers must be pixels of the photo"),  # was OverflowError
    ],
)
def test_bbox_refusals_name_the_field(text, words):
    with pytest.raises(InputError) as caught:
        parse_bbox(text, 640, 480)
    assert caught.value.field == "bbox"
    assert words in caught.value.user_message


@pytest.mark.parametrize(
    "text", ["[[10,20],[30,40]]", "10,20;30,40", "10 20 30 40", "(10, 20), (30, 40)"]
)
def test_points_forms(text):
    assert parse_points(text, 640, 480) == ((10, 20), (30, 40))


def test_points_refusals():
    with pytest.raises(InputError, match="x,y pairs"):
        parse_points("10,20,30", 640, 480)
    with pytest.raises(InputError, match="outside the 640x480"):
        parse_points("10,20;640,10", 640, 480)
    with pytest.raises(InputError, match="pixels of the photo"):
        parse_points("9" * 400 + ",1", 640, 480)


# What people type, and what an attacker types: the only outcomes are a box or points inside
# the photo, or the field's own clear error.
TYPED = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789 ,;.[]()-", max_size=80),
    st.lists(st.integers(-(10**400), 10**400), max_size=10).map(lambda ns: ",".join(map(str, ns))),
)


@settings(deadline=500)
@given(text=TYPED, width=st.integers(1, 4096), height=st.integers(1, 4096))
def test_any_typed_box_or_points_is_a_result_or_a_clear_error(text, width, height):
    for parse in (parse_bbox, parse_points):
        try:
            parsed = parse(text, width, height)
        except InputError as error:
            assert error.field in ("bbox", "points") and len(error.user_message) < 200
            continue
        if parse is parse_bbox and parsed is not None:
            x1, y1, x2, y2 = parsed
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        if parse is parse_points:
            assert all(0 <= x < width and 0 <= y < height for x, y in parsed)


def test_seed_range_and_default():
    assert parse_seed(None) == 123
    assert parse_seed(" 1000000 ") == 1_000_000
    for bad in ("-1", "1000001", "abc", "1.5"):
        with pytest.raises(InputError) as caught:
            parse_seed(bad)
        assert caught.value.field == "seed" and "1000000" in caught.value.user_message


def test_prompt_is_tidied_and_capped():
    assert parse_prompt("  red \n car ") == "red car"
    with pytest.raises(InputError, match="at most 300"):
        parse_prompt("x" * 301)


# --- sniffing and checking bytes ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_types_by_bytes(fmt):
    image, scale = prepare_image(photo_bytes(fmt=fmt), "image", ImageLimits())
    assert image.media_type == f"image/{fmt.lower()}"
    assert (image.width, image.height, scale) == (640, 480, 1.0)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"<!DOCTYPE html><html>login</html>", "HTML page"),
        (b"GIF89a" + b"\0" * 20, "GIF"),
        (b"", "empty"),
        (b"%PDF-1.7", "PDF"),
        (b"\0\0\0\x18ftypheic" + b"\0" * 20, "HEIC"),
    ],
)
def test_other_types_are_refused_with_the_accepted_list(data, words):
    with pytest.raises(InputError) as caught:
        prepare_image(data, "image", ImageLimits())
    assert words in caught.value.user_message
    assert "PNG, JPEG or WebP" in caught.value.user_message


def test_truncated_image_is_refused():
    data = photo_bytes(fmt="PNG")
    with pytest.raises(InputError, match="damaged or truncated"):
        prepare_image(data[: len(data) // 2], "image", ImageLimits())


def test_decompression_bomb_is_refused_before_decoding():
    bomb = io.BytesIO()
    Image.new("L", (12000, 12000)).save(bomb, "PNG")  # tiny file, 144 MP
    assert len(bomb.getvalue()) < 1_000_000
    with pytest.raises(InputError, match="too many pixels"):
        prepare_image(bomb.getvalue(), "image", ImageLimits(max_pixels=50_000_000))


def test_exif_orientation_is_applied_and_metadata_dropped():
    image, _ = prepare_image(
        photo_bytes(640, 480, "JPEG", exif_orientation=6), "image", ImageLimits()
    )
    assert (image.width, image.height) == (480, 640)
    assert not Image.open(io.BytesIO(image.data)).getexif()


def test_large_images_are_scaled_down():
    image, scale = prepare_image(photo_bytes(4000, 3000), "image", ImageLimits(max_side=2048))
    assert max(image.width, image.height) == 2048
    assert scale == pytest.approx(2048 / 4000)


def test_oversize_bytes_refused():
    with pytest.raises(InputError, match="larger than 1 MB"):
        prepare_image(
            b"\x89PNG\r\n\x1a\n" + b"\0" * 1_000_001, "image", ImageLimits(max_bytes=1_000_000)
        )


# --- the whole request --------------------------------------------------------------------------


async def validate(request: JobRequest, fetcher=None, **limits):
    return await InputValidator(fetcher, ImageLimits(**limits), allow_paths=True).validate(request)


async def test_box_and_points_are_scaled_with_the_photo():
    request = JobRequest(
        ME,
        ImageSource.from_bytes(photo_bytes(4096, 2048)),
        bbox="1000,500,3000,1500",
        points="2048,1024",
    )
    done = await validate(request, max_side=2048)
    assert (done.image.width, done.image.height) == (2048, 1024)
    assert done.bbox == (500, 250, 1500, 750)
    assert done.points == ((1024, 512),)


async def test_box_is_checked_against_the_rotated_photo():
    sideways = photo_bytes(640, 480, "JPEG", exif_orientation=6)  # shown as 480x640
    ok = await validate(JobRequest(ME, ImageSource.from_bytes(sideways), bbox="0,0,480,640"))
    assert ok.bbox == (0, 0, 480, 640)
    with pytest.raises(InputError, match="outside the 480x640"):
        await validate(JobRequest(ME, ImageSource.from_bytes(sideways), bbox="0,0,640,480"))


async def test_mask_must_match_the_photo():
    mask = io.BytesIO()
    Image.new("L", (640, 480), 255).save(mask, "PNG")
    done = await validate(
        JobRequest(
            ME, ImageSource.from_bytes(photo_bytes()), mask=ImageSource.from_bytes(mask.getvalue())
        )
    )
    assert done.mask is not None and (done.mask.width, done.mask.height) == (640, 480)
    small = io.BytesIO()
    Image.new("L", (320, 240), 255).save(small, "PNG")
    with pytest.raises(InputError) as caught:
        await validate(
            JobRequest(
                ME,
                ImageSource.from_bytes(photo_bytes()),
                mask=ImageSource.from_bytes(small.getvalue()),
            )
        )
    assert caught.value.field == "mask" and "same size" in caught.value.user_message


async def test_data_uri_and_bare_base64():
    encoded = base64.b64encode(photo_bytes()).decode()
    for text in (f"data:image/png;base64,{encoded}", encoded):
        done = await validate(JobRequest(ME, ImageSource.from_text(text)))
        assert done.image.width == 640
    with pytest.raises(InputError, match="not valid base64"):
        await validate(JobRequest(ME, ImageSource.from_text("not*base64")))


async def test_local_paths_only_where_allowed(tmp_path):
    path = tmp_path / "p.png"
    path.write_bytes(photo_bytes())
    request = JobRequest(ME, ImageSource.from_path(path))
    assert (await validate(request)).image.width == 640
    chat = InputValidator(None, ImageLimits(), allow_paths=False)
    with pytest.raises(InputError, match="command line only"):
        await chat.validate(request)


async def test_same_request_same_cache_key_and_seed_changes_it():
    request = JobRequest(ME, ImageSource.from_bytes(photo_bytes()), prompt="ball", seed=5)
    a, b = await validate(request), await validate(request)
    c = await validate(JobRequest(ME, ImageSource.from_bytes(photo_bytes()), prompt="ball", seed=6))
    assert a.cache_key == b.cache_key != c.cache_key


# --- fetching links -----------------------------------------------------------------------------


@pytest.fixture
async def image_server():
    """Serves a photo, redirects, a slow answer, a huge one and a non-image."""
    app = web.Application()
    photo = photo_bytes()

    async def image(request):
        return web.Response(body=photo, content_type="image/png")

    async def redirect(request):
        raise web.HTTPFound(request.query["to"])

    async def slow(request):
        import asyncio

        await asyncio.sleep(2)
        return web.Response(body=photo)

    async def huge(request):
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 3_000_000)

    async def page(request):
        return web.Response(text="<html>login</html>", content_type="text/html")

    for path, handler in [
        ("/p.png", image),
        ("/go", redirect),
        ("/slow", slow),
        ("/huge", huge),
        ("/page", page),
    ]:
        app.router.add_get(path, handler)
    runner, url = await serve_on_loopback(app)
    yield url
    await runner.cleanup()


@pytest.fixture
async def loopback_fetch_session():
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(loopback_only))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def fetch(session, url, allowed=loopback_only, **limits):
    return await ImageFetcher(session, ImageLimits(**limits), allowed).fetch(url)


async def test_fetches_an_image_link(image_server, loopback_fetch_session):
    data = await fetch(loopback_fetch_session, f"{image_server}/p.png")
    assert data == photo_bytes()


async def test_default_policy_refuses_loopback_and_private(image_server, loopback_fetch_session):
    for url in (
        f"{image_server}/p.png",
        "http://10.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/x",
    ):
        with pytest.raises(InputError, match="private or local"):
            await fetch(loopback_fetch_session, url, allowed=public_addresses_only)


async def test_names_resolving_to_local_addresses_are_refused(image_server):
    port = image_server.rsplit(":", 1)[1]
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(public_addresses_only))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(InputError, match="private or local"):
            await fetch(session, f"http://localhost:{port}/p.png", allowed=public_addresses_only)


async def test_redirects_are_checked_at_every_hop(image_server, loopback_fetch_session):
    with pytest.raises(InputError, match="private or local"):
        await fetch(loopback_fetch_session, f"{image_server}/go?to=http://127.0.0.2:9/x.png")
    with pytest.raises(InputError, match="only http:// and https://"):
        await fetch(loopback_fetch_session, f"{image_server}/go?to=file:///etc/passwd")
    ok = await fetch(loopback_fetch_session, f"{image_server}/go?to={image_server}/p.png")
    assert ok == photo_bytes()


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "javascript:1"])
async def test_other_schemes_are_refused(loopback_fetch_session, url):
    with pytest.raises(InputError, match="only http:// and https://"):
        await fetch(loopback_fetch_session, url)


async def test_byte_and_time_caps(image_server, loopback_fetch_session):
    with pytest.raises(InputError, match="larger than 1 MB"):
        await fetch(loopback_fetch_session, f"{image_server}/huge", max_bytes=1_000_000)
    with pytest.raises(InputError, match="longer than 0.3 s"):
        await fetch(loopback_fetch_session, f"{image_server}/slow", fetch_timeout_s=0.3)


async def test_a_web_page_instead_of_an_image(image_server, loopback_fetch_session):
    validator = InputValidator(
        ImageFetcher(loopback_fetch_session, ImageLimits(), loopback_only), ImageLimits()
    )
    with pytest.raises(InputError) as caught:
        await validator.validate(JobRequest(ME, ImageSource.from_url(f"{image_server}/page")))
    assert caught.value.field == "image_url" and "HTML page" in caught.value.user_message


def test_giant_dimensions_are_refused_as_too_many_pixels():
    giant = io.BytesIO()
    Image.new("1", (20000, 20000)).save(giant, "PNG")  # 400 MP: Pillow itself refuses to open
    with pytest.raises(InputError, match="too many pixels"):
        prepare_image(giant.getvalue(), "image", ImageLimits(max_pixels=10**12))


def test_a_sliver_of_a_picture_is_refused_before_it_is_decoded():
    sliver = io.BytesIO()
    Image.new("L", (49_000_000, 1)).save(sliver, "PNG")  # 47 kB; scaling it took gigabytes
    assert len(sliver.getvalue()) < 100_000
    with pytest.raises(InputError, match="49000000x1 picture is not a photo"):
        prepare_image(sliver.getvalue(), "image", ImageLimits())


@pytest.mark.parametrize(
    "host", ["127。0。0。1", "１２７.０.０.１", "①②⑦.0.0.1", "127．0．0．1", "127.0.0.1"]
)
async def test_every_spelling_of_a_local_address_is_refused_where_it_connects(image_server, host):
    """Unicode dots and digits become 127.0.0.1 inside the URL library, and a literal is
    connected to without asking any resolver: the guard is where the socket connects."""
    url = f"http://{host}:{image_server.rsplit(':', 1)[1]}/p.png"
    async with aiohttp.ClientSession() as unguarded:  # the spelling really reaches loopback
        async with unguarded.get(url) as response:
            assert response.status == 200
    async with guarded_session() as session:
        with pytest.raises(InputError, match="private or local"):
            await fetch(session, url, allowed=public_addresses_only)


@pytest.mark.parametrize(
    "address", ["64:ff9b::7f00:1", "64:ff9b:1::a00:1", "2002:7f00:1::1", "::7f00:1", "fec0::1"]
)
def test_ipv6_transition_ranges_are_not_public(address):
    assert not public_addresses_only(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://" + "a" * 300 + ".test/p.png", "http://" + "é" * 300 + ".test/"]
)
async def test_links_no_url_library_can_read_are_refused_clearly(url):
    async with guarded_session() as session:
        with pytest.raises(InputError, match="not a valid link"):
            await fetch(session, url, allowed=public_addresses_only)
