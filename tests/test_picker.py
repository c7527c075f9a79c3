"""Pick the object before paying (issue 18), in the core and on the web page: checks before
any picking, the cells and clicks turned into the photo's pixels as Segmind receives them,
the preview, and the link that works once, for 15 minutes, for that pick only."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from bot import errors
from bot.downloads import DownloadLinks
from bot.grid import Grid
from bot.images import ImageFetcher, ImageLimits, InputValidator
from bot.models import ImageSource, JobRequest, JobState
from bot.picker import EXPIRED, PICK_LIFETIME_S, USED, Picker, PickGone, PickStore
from bot.web import build_web_app, start_web
from tests.conftest import photo_bytes
from tests.pipeline import ALICE, BOB, Recorder, request
from tests.test_viewer import CHROMIUM, CHROMIUM_ARGS, browser_ready


class Clock:
    now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def service(make_service):
    return make_service()


@pytest.fixture
def picker(service, http, tmp_path, clock):
    validator = InputValidator(ImageFetcher(http, ImageLimits()), ImageLimits())
    return Picker(service, validator, PickStore(tmp_path / "data", clock), clock)


def sent_points(fake_segmind) -> list[list[int]]:
    return json.loads(fake_segmind.counters.payloads[-1]["point_coords"])


def sent_box(fake_segmind) -> list[int]:
    return json.loads(fake_segmind.counters.payloads[-1]["bounding_box"])


async def make_in_chat(picker, service, pick, who=ALICE) -> Recorder:
    """What an adapter's Make it does: take the pick (once) and run its job."""
    taken, photo = await picker.take(pick.id, who)
    reply = Recorder()
    await service.run(taken.request(photo), reply)
    return reply


async def test_cells_chosen_in_a_chat_reach_segmind_as_the_photos_pixels(
    picker, service, fake_segmind, ledger
):
    pick = await picker.begin(request())
    assert (await ledger.budget()).reserved_micros == 0  # nothing held while picking
    grid = Grid.for_size(640, 480)
    for column, row in (("C", "4"), ("F", "6")):
        await picker.change(pick.id, ALICE, lambda p, c=column, r=row: p.point_at(c, r))
        await picker.change(pick.id, ALICE, lambda p: p.add_point())
    await picker.change(pick.id, ALICE, lambda p: p.point_at("B", "2"))
    await picker.change(pick.id, ALICE, lambda p: p.box_corner())
    changed = await picker.change(pick.id, ALICE, lambda p: p.point_at("H", "7"))
    assert "box from B2" in changed.describe()
    changed = await picker.change(pick.id, ALICE, lambda p: p.box_corner())
    assert changed.describe() == "points C4, F6; box B2:H7"
    reply = await make_in_chat(picker, service, changed)
    assert reply.result is not None
    assert sent_points(fake_segmind) == [list(grid.centre("C4")), list(grid.centre("F6"))]
    assert sent_box(fake_segmind) == list(grid.box("B2:H7"))
    assert fake_segmind.counters.payloads[-1]["prompt"] == "ball"  # prompt and points together
    [row] = await ledger.usage()
    assert row.jobs == 1 and row.cost_micros == 65_000


async def test_undo_takes_back_the_last_choice(picker):
    pick = await picker.begin(request())
    await picker.change(pick.id, ALICE, lambda p: p.point_at("A", "1"))
    for _ in range(2):
        await picker.change(pick.id, ALICE, lambda p: p.add_point())
    await picker.change(pick.id, ALICE, lambda p: p.box_corner())
    pick = await picker.change(pick.id, ALICE, lambda p: p.undo())  # the half-made box
    assert pick.corner is None and len(pick.points) == 2
    pick = await picker.change(pick.id, ALICE, lambda p: p.undo())
    assert len(pick.points) == 1


@pytest.mark.parametrize(
    ("size", "orientation"),
    [((640, 480), None), ((480, 640), None), ((900, 300), None), ((640, 480), 6), ((640, 480), 8)],
)
async def test_cells_are_the_photos_as_shown_for_every_shape_and_exif_turn(
    picker, service, fake_segmind, size, orientation
):
    """A phone's portrait photo is stored landscape with an EXIF turn: the grid, the preview
    and the points are on the photo as people see it, which is what Segmind is sent."""
    photo = photo_bytes(*size, fmt="JPEG", exif_orientation=orientation)
    pick = await picker.begin(JobRequest(ALICE, ImageSource.from_bytes(photo), seed=3))
    shown = size[::-1] if orientation in (6, 8) else size
    assert (pick.width, pick.height) == shown
    grid = Grid.for_size(*shown)
    last = grid.label(grid.columns - 1, grid.rows - 1)
    await picker.change(pick.id, ALICE, lambda p: p.point_at(last[0], last[1:]))
    pick = await picker.change(pick.id, ALICE, lambda p: p.add_point())
    preview = Image.open(io.BytesIO(await picker.preview(pick)))
    assert preview.width / preview.height == pytest.approx(shown[0] / shown[1], abs=0.01)
    await make_in_chat(picker, service, pick)
    [[x, y]] = sent_points(fake_segmind)
    assert (x, y) == grid.centre(last)
    # The bottom-right cell of the photo as shown, whichever way it was stored.
    assert shown[0] * (1 - 1 / grid.columns) < x < shown[0]
    assert shown[1] * (1 - 1 / grid.rows) < y < shown[1]


async def test_each_change_redraws_the_preview_with_the_point_marked(picker):
    pick = await picker.begin(request())
    before = np.asarray(Image.open(io.BytesIO(await picker.preview(pick))).convert("RGB"))
    await picker.change(pick.id, ALICE, lambda p: p.point_at("B", "2"))
    pick = await picker.change(pick.id, ALICE, lambda p: p.add_point())
    after = np.asarray(Image.open(io.BytesIO(await picker.preview(pick))).convert("RGB"))
    x, y = Grid.for_size(640, 480).centre("B2")
    scale = after.shape[1] / 640
    px, py = round(x * scale), round(y * scale)
    green = after[py - 2 : py + 3, px - 2 : px + 3].astype(int)
    assert (green[..., 1] > green[..., 0] + 60).all()  # the point's green disc
    assert np.abs(before.astype(int) - after.astype(int)).sum(axis=2).max() > 100


async def test_a_member_out_of_quota_or_blocked_is_told_before_picking(
    picker, service, ledger, fake_segmind, tmp_path
):
    for seed in range(3):
        await service.run(request(seed=seed), Recorder())
    with pytest.raises(errors.QuotaExceeded, match="next one frees at"):
        await picker.begin(request(seed=50))
    await ledger.block("discord", "g1", "bob", "admin")
    with pytest.raises(errors.UserBlocked):
        await picker.begin(request(BOB))
    assert not (tmp_path / "data" / "picks").exists() or not any(
        (tmp_path / "data" / "picks").iterdir()
    )
    assert fake_segmind.counters.submits == 3
    assert (await ledger.budget()).reserved_micros == 0  # the checks hold nothing back


async def test_a_bad_photo_is_refused_before_picking(picker):
    with pytest.raises(errors.InputError):
        await picker.begin(JobRequest(ALICE, ImageSource.from_bytes(b"GIF89a not a photo")))


async def test_a_pick_is_made_once_by_its_member_within_15_minutes(
    picker, service, clock, ledger, fake_segmind
):
    pick = await picker.begin(request())
    with pytest.raises(PickGone, match="someone else's"):
        await picker.take(pick.id, BOB)
    await make_in_chat(picker, service, pick)
    with pytest.raises(PickGone) as again:
        await picker.take(pick.id, ALICE)
    assert again.value is USED
    later = await picker.begin(request(seed=8))
    clock.now += PICK_LIFETIME_S
    with pytest.raises(PickGone) as late:
        await picker.change(later.id, ALICE, lambda p: p.point_at("A", "1"))
    assert late.value is EXPIRED
    assert fake_segmind.counters.submits == 1


async def test_cancel_charges_nothing_and_ends_the_pick(picker, ledger, fake_segmind):
    pick = await picker.begin(request())
    await picker.cancel(pick.id, ALICE)
    with pytest.raises(PickGone):
        await picker.take(pick.id, ALICE)
    assert await ledger.usage() == [] and fake_segmind.counters.submits == 0


async def test_the_same_cells_again_are_served_from_the_cache_for_free(
    picker, service, fake_segmind
):
    for _ in range(2):
        pick = await picker.begin(request())
        await picker.change(pick.id, ALICE, lambda p: p.point_at("E", "5"))
        pick = await picker.change(pick.id, ALICE, lambda p: p.add_point())
        reply = await make_in_chat(picker, service, pick)
        assert reply.result is not None
    assert fake_segmind.counters.submits == 1


async def test_new_seed_keeps_the_picked_points(picker, service, fake_segmind, ledger):
    pick = await picker.begin(request())
    await picker.change(pick.id, ALICE, lambda p: p.point_at("D", "3"))
    pick = await picker.change(pick.id, ALICE, lambda p: p.add_point())
    await make_in_chat(picker, service, pick)
    first = sent_points(fake_segmind)
    [record] = await ledger.in_states([JobState.DELIVERED])
    assert record.params["points"] == [list(p) for p in pick.points]  # in Details
    await service.again(record.id, ALICE, Recorder(), seed=999)
    assert fake_segmind.counters.submits == 2 and sent_points(fake_segmind) == first


async def test_old_picks_are_pruned(picker, clock, tmp_path):
    pick = await picker.begin(request())
    clock.now += PICK_LIFETIME_S + 61
    assert await picker.prune() == 1
    assert not (tmp_path / "data" / "picks" / pick.id).exists()


# -- the web page ------------------------------------------------------------------------------


@pytest.fixture
async def web_picker(picker, service, tmp_path, unused_tcp_port, clock, http):
    """The bot's web server with the picker, and a starter that runs the job as a chat
    adapter would (its reply recorded)."""
    base = f"http://127.0.0.1:{unused_tcp_port}"
    links = DownloadLinks(b"k" * 32, base, 86400, clock)
    started: list[Recorder] = []

    async def start(pick, job_request):
        reply = Recorder()
        started.append(reply)
        await service.run(job_request, reply)

    picker.starts_jobs_for("discord", start)
    app = build_web_app(links, tmp_path / "data", picker=picker)
    runner = await start_web(app, "127.0.0.1", unused_tcp_port)
    yield links, started
    await runner.cleanup()


async def post_choice(http, url, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url, data=data, headers={"Content-Type": content_type}) as response:
        return response.status, await response.json()


async def test_the_web_page_makes_the_job_once_with_its_pixels(
    web_picker, picker, http, fake_segmind
):
    links, started = web_picker
    pick = await picker.begin(request())
    url = links.pick_link(pick.id, pick.expires_at)
    async with http.get(url) as response:
        page = await response.text()
        assert response.status == 200
        csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert 'id="photo"' in page and ">Make it</button>" in page
    async with http.get(url + "/photo") as response:
        assert response.status == 200 and response.content_type == "image/jpeg"
    status, said = await post_choice(
        http, url, {"points": [[100.4, 120], [300, 200]], "box": [400, 300, 50, 40]}
    )
    assert status == 200 and "in the chat" in said["message"]
    assert started[0].result is not None
    assert sent_points(fake_segmind) == [[100, 120], [300, 200]]
    assert sent_box(fake_segmind) == [50, 40, 400, 300]
    status, said = await post_choice(http, url, {"points": [[1, 1]]})
    assert status == 410 and "already made" in said["error"]
    async with http.get(url) as response:
        assert response.status == 410
    assert fake_segmind.counters.submits == 1


async def test_a_tampered_expired_or_foreign_link_is_refused(
    web_picker, picker, http, clock, fake_segmind
):
    links, _ = web_picker
    pick = await picker.begin(request())
    url = links.pick_link(pick.id, pick.expires_at)
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    async with http.get(tampered) as response:
        assert response.status == 403
    other = await picker.begin(request(BOB))  # someone else's id under this pick's signature
    forged = url.replace(pick.id, other.id)
    status, _ = await post_choice(http, forged, {"points": [[5, 5]]})
    assert status == 403
    later = links.pick_link(pick.id, pick.expires_at + 3600)  # a longer life, signed by us,
    clock.now = pick.expires_at + 1  # still ends with the pick
    async with http.get(later) as response:
        assert response.status == 410
    async with http.get(url) as response:
        assert response.status == 410 and "expired" in await response.text()
    assert fake_segmind.counters.submits == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        ({"points": [[1e309, 2]]}, "application/json"),
        ({"points": [[True, 2]]}, "application/json"),
        ({"points": [[700, 10]]}, "application/json"),  # off the 640-wide photo
        ({"box": [10, 10, 10, 50]}, "application/json"),  # no area
        ({"points": [[1, 1]] * 11}, "application/json"),
        ([1, 2], "application/json"),
        (b"points=1,2", "application/x-www-form-urlencoded"),  # another site's form
    ],
)
async def test_hostile_choices_are_refused_and_the_pick_stays(
    web_picker, picker, http, fake_segmind, body, content_type
):
    links, _ = web_picker
    pick = await picker.begin(request())
    url = links.pick_link(pick.id, pick.expires_at)
    status, said = await post_choice(http, url, body, content_type)
    assert status in (400, 415) and said["error"]
    status, _ = await post_choice(http, url, {"points": [[10, 10]]})
    assert status == 200  # the bad one used nothing up
    assert fake_segmind.counters.submits == 1


async def test_a_page_of_an_expired_pick_is_gone(web_picker, picker, http, clock):
    links, _ = web_picker
    pick = await picker.begin(request())
    clock.now += PICK_LIFETIME_S
    async with http.get(links.pick_link(pick.id, clock.now + 60)) as response:
        assert response.status == 410


@pytest.mark.slow  # a real browser: seconds
@pytest.mark.skipif(browser_ready() is not None, reason=str(browser_ready()))
@pytest.mark.parametrize("touch", [False, True])
async def test_a_real_browser_clicks_two_points_drags_a_box_and_makes_it(
    web_picker, picker, fake_segmind, touch
):
    from playwright.async_api import async_playwright

    links, started = web_picker
    pick = await picker.begin(request())  # 640 x 480
    url = links.pick_link(pick.id, pick.expires_at)
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            size = {"width": 390, "height": 844} if touch else {"width": 1000, "height": 800}
            page = await browser.new_page(viewport=size, has_touch=touch, is_mobile=touch)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(url)
            photo = page.locator("#photo")
            await photo.wait_for()
            box = await photo.bounding_box()
            assert box is not None
            scale = box["width"] / 640  # the photo as the page shows it

            def at(x, y):
                return box["x"] + x * scale, box["y"] + y * scale

            if touch:  # a tap is a point: pointer events from touch, as on a phone
                for x, y in ((100, 120), (300, 200)):
                    await page.touchscreen.tap(*at(x, y))
            else:
                for x, y in ((100, 120), (300, 200)):
                    await page.mouse.click(*at(x, y))
            await page.mouse.move(*at(50, 40))
            await page.mouse.down()
            await page.mouse.move(*at(200, 150), steps=5)
            await page.mouse.move(*at(400, 300), steps=5)
            await page.mouse.up()
            await page.get_by_role("button", name="Make it").click()
            await page.wait_for_selector("body[data-made='true']", state="attached")
            said = await page.locator("#status").text_content()
        finally:
            await browser.close()
    assert problems == []
    assert "in the chat" in (said or "")
    tolerance = 1 / scale + 1  # one screen pixel, in the photo's pixels
    points = sent_points(fake_segmind)
    assert len(points) == 2
    for (x, y), (ex, ey) in zip(points, ((100, 120), (300, 200)), strict=True):
        assert abs(x - ex) <= tolerance and abs(y - ey) <= tolerance
    x1, y1, x2, y2 = sent_box(fake_segmind)
    for got, expected in zip((x1, y1, x2, y2), (50, 40, 401, 301), strict=True):
        assert abs(got - expected) <= tolerance
    assert len(started) == 1 and started[0].result is not None


async def test_a_damaged_pick_is_gone_not_a_crash(picker, tmp_path):
    pick = await picker.begin(request())
    (tmp_path / "data" / "picks" / pick.id / "state.json").write_text("{half")
    with pytest.raises(PickGone):
        await picker.load(pick.id)
