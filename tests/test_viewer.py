"""The 3D viewer page: its routes and refusals, then a real headless Chromium (Debian's
package, driven by Playwright) that loads a GLB and a splat and must draw them."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from bot.conversions import Conversions
from bot.downloads import DownloadLinks
from bot.models import FileKind, OutputFile, UpstreamResult
from bot.results import ResultStore
from bot.web import STATIC, build_web_app, start_web
from tests.fakes.models3d import made_glb, made_splat_ply
from tests.helpers import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium is not Python: the tests' network guard cannot see it, so it gets its own: every
# name but loopback fails to resolve, and its background services are off.
CHROMIUM_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--no-sandbox",
]


class Clock:
    now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def site(tmp_path, unused_tcp_port):
    job = tmp_path / "data" / "jobs" / "abc123"
    job.mkdir(parents=True)
    (job / "result.glb").write_bytes(made_glb())  # red-orange vertex colours
    (job / "result.ply").write_bytes(made_splat_ply(20_000))
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 40)).save(picture, "PNG")
    (job / "thumbnail.png").write_bytes(picture.getvalue())
    results = ResultStore(tmp_path / "data")
    await results.keep_upstream("abc123", upstream_of(job / "result.glb", job / "result.ply"))
    if SAM3D_GLB.is_file():  # SAM 3D's own: positions only, no colour, no material
        real = tmp_path / "data" / "jobs" / "def456"
        real.mkdir()
        shutil.copy(SAM3D_GLB, real / "model.glb")
        await results.keep_upstream("def456", upstream_of(real / "model.glb"))
    base = f"http://127.0.0.1:{unused_tcp_port}"
    clock = Clock()
    links = DownloadLinks(b"v" * 32, base, 7 * 86400, clock)
    app = build_web_app(links, tmp_path / "data", conversions=Conversions(results))
    runner = await start_web(app, "127.0.0.1", unused_tcp_port)
    async with aiohttp.ClientSession() as session:
        yield links, clock, session, base
    await runner.cleanup()


SAM3D_GLB = ROOT.parent / "shared" / "fixtures" / "sam3d_objects_0.glb"


def upstream_of(*paths: Path) -> UpstreamResult:
    kinds = {".glb": FileKind.MESH, ".ply": FileKind.SPLAT}
    files = tuple(
        OutputFile(kinds[p.suffix], p, p.stat().st_size, "application/octet-stream") for p in paths
    )
    return UpstreamResult(files=files, request_id="r1", cost_micros=65_000)


def vendored() -> bool:
    return (STATIC / "vendor" / "model-viewer" / "model-viewer.min.js").is_file()


async def test_the_page_has_the_model_its_poster_downloads_and_a_preview_card(site):
    links, _, session, _ = site
    async with session.get(links.viewer_link("abc123")) as response:
        page = await response.text()
        assert response.status == 200 and response.content_type == "text/html"
        assert "frame-ancestors" not in page
    assert '<model-viewer id="model" src="http://127.0.0.1' in page
    assert 'poster="http://127.0.0.1' in page and "camera-controls" in page
    assert '<meta property="og:image" content="http://127.0.0.1' in page
    assert page.count('class="button"') == 3 + 1 and "?view=splat" in page  # + View in AR
    # The card's address is the bot's own (PUBLIC_URL), whatever Host the request names.
    async with session.get(links.viewer_link("abc123"), headers={"Host": "evil.test"}) as r:
        forged = await r.text()
    assert f'<meta property="og:url" content="{links.viewer_link("abc123")}">' in forged
    async with session.get(links.viewer_link("abc123") + "?view=splat") as response:
        splat = await response.text()
    assert '<canvas id="splat" data-src="http://127.0.0.1' in splat
    assert '"three": "/static/vendor/three/three.module.js"' in splat


async def test_bad_viewer_links_get_plain_refusals(site):
    links, clock, session, base = site
    good = links.viewer_link("abc123")
    for url, status in (
        (good[:-3] + "abc", 403),
        (base + "/m/abc123", 403),
        (base + "/m/../../etc/passwd", 404),
        (links.viewer_link("fff999"), 404),
    ):
        async with session.get(url) as response:
            assert response.status == status, url
            assert "<html" not in (await response.text()).lower()
    clock.now += 8 * 86400
    async with session.get(good) as response:
        assert response.status == 410


@pytest.mark.skipif(not vendored(), reason="viewer JavaScript not fetched (scripts/setup.sh)")
async def test_the_viewer_javascript_is_served_by_the_bot(site):
    _, _, session, base = site
    for path in (
        "/static/vendor/model-viewer/model-viewer.min.js",
        "/static/vendor/spark/spark.module.min.js",
        "/static/vendor/three/three.module.js",
        "/static/splat-viewer.js",
    ):
        async with session.get(base + path) as response:
            assert response.status == 200, path
            assert "javascript" in response.content_type
    async with session.get(base + "/static/../web.py") as response:
        assert response.status in (403, 404)


def browser_ready() -> str | None:
    if os.environ.get("CI"):
        return None  # CI installs both: fail there rather than skip
    if CHROMIUM is None:
        return "no chromium (Debian package: chromium)"
    if not vendored():
        return "viewer JavaScript not fetched"
    return None


@pytest.mark.slow  # a real browser: seconds each
@pytest.mark.skipif(browser_ready() is not None, reason=str(browser_ready()))
@pytest.mark.parametrize("view", ["mesh", "splat"])
async def test_a_real_browser_draws_the_model(site, view):
    from playwright.async_api import async_playwright

    links, _, _, _ = site
    url = links.viewer_link("abc123") + ("?view=splat" if view == "splat" else "")
    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 800, "height": 700})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            # A selector, not a script: the page's CSP refuses eval, test harness included.
            await page.wait_for_selector(
                "body[data-loaded='true']", state="attached", timeout=60_000
            )
            await page.wait_for_timeout(1500)  # a few frames after loading
            # The page's area, not the element: an element screenshot waits for the element
            # to be "stable", which a turning model on a busy 2-core machine may never be.
            box = await page.locator("#model" if view == "mesh" else "#splat").bounding_box()
            shot = await page.screenshot(clip=box, timeout=60_000)
        finally:
            await browser.close()
    assert errors == []
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    background = np.array([233, 233, 236])
    drawn = np.abs(pixels - background).sum(axis=2) > 40
    assert 0.01 < drawn.mean() < 0.9  # something is drawn, and not a wall of colour
    reddish = (pixels[..., 0] > pixels[..., 2] + 40) & drawn
    assert reddish.mean() > 0.002  # the model's colour, not just a grey poster or void


# -- AR, every format, the clay look, and a bot without the viewer's JavaScript (issue 19) ----


async def test_the_page_offers_ar_and_every_format_made_on_demand(site, tmp_path):
    from pxr import Usd, UsdGeom

    links, _, session, _ = site
    async with session.get(links.viewer_link("abc123")) as response:
        page = await response.text()
    assert 'ar ar-modes="webxr scene-viewer quick-look"' in page
    usdz = f"{links.viewer_link('abc123')}/format/usdz"
    assert f'ios-src="{usdz}"' in page and ">View in AR</button>" in page
    for label in ("STL, for printing", "3MF", "OBJ (ZIP)", "USDZ", "Lighter GLB", "10 cm tall"):
        assert label in page
    async with session.get(usdz) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "model/vnd.usdz+zip"
        data = await response.read()
    (tmp_path / "m.usdz").write_bytes(data)
    stage = Usd.Stage.Open(str(tmp_path / "m.usdz"))
    assert [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    [kept] = (tmp_path / "data" / "jobs" / "abc123").glob("format-usdz.usdz")
    made_at = kept.stat().st_mtime_ns
    async with session.get(f"{links.viewer_link('abc123')}/format/print15") as response:
        assert response.status == 200 and "attachment" in response.headers["Content-Disposition"]
    async with session.get(usdz) as response:
        assert await response.read() == data and kept.stat().st_mtime_ns == made_at
    async with session.get(f"{links.viewer_link('abc123')}/format/exe") as response:
        assert response.status == 404
    forged = f"{links.viewer_link('abc123')[:-2]}xx/format/stl"
    async with session.get(forged) as response:
        assert response.status == 403
    # The viewer never takes a conversion for the job's own model.
    async with session.get(links.viewer_link("abc123")) as response:
        assert 'src="http' in (page := await response.text()) and "format-" not in page


async def test_without_the_viewer_javascript_the_page_shows_the_picture(site, monkeypatch):
    import bot.web

    monkeypatch.setattr(bot.web, "viewer_installed", lambda: False)
    links, _, session, _ = site
    async with session.get(links.viewer_link("abc123")) as response:
        page = await response.text()
    assert '<img id="picture" src="http://127.0.0.1' in page and "<model-viewer" not in page
    assert "not installed" in page and "Model (GLB)" in page  # the files are still there


@pytest.mark.slow  # a real browser: seconds
@pytest.mark.skipif(browser_ready() is not None, reason=str(browser_ready()))
@pytest.mark.skipif(not SAM3D_GLB.is_file(), reason="../shared/fixtures absent")
async def test_sam3ds_colourless_model_is_drawn_in_clay_with_its_size_and_ar(site):
    """Positions only, no material: glTF's default white on the light backdrop was nearly
    invisible; the page gives it the thumbnails' clay, says its size, and View in AR says
    where AR works on a desktop that has none."""
    from playwright.async_api import async_playwright

    links, _, _, _ = site
    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 800, "height": 700})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(links.viewer_link("def456"))
            await page.wait_for_selector(
                "body[data-loaded='true']", state="attached", timeout=60_000
            )
            await page.wait_for_timeout(1500)
            size = await page.locator("#size").text_content()
            downloads = [
                await link.text_content()
                for link in await page.locator("nav a.other").all()
                if await link.is_visible()
            ]
            await page.locator("#ar").click()
            note_shown = await page.locator("#ar-note").is_visible()
            box = await page.locator("#model").bounding_box()
            shot = await page.screenshot(clip=box, timeout=60_000)
        finally:
            await browser.close()
    assert errors == []
    assert size and "Size as made:" in size and "printed 10, 15 or 20 cm tall:" in size
    assert " × 15 × " in size
    assert len(downloads) == 8 and "USDZ, for AR on iPhone and iPad" in downloads
    assert note_shown
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    background = np.array([233, 233, 236])
    drawn = np.abs(pixels - background).sum(axis=2) > 40
    assert drawn.mean() > 0.01
    model = pixels[drawn]
    assert (model[:, 0] - model[:, 2]).mean() > 12  # warm clay, not white or grey
    assert model.sum(axis=1).std() > 20  # shaded: light and dark sides, not a flat cut-out
