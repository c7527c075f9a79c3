from __future__ import annotations

import asyncio
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from bot.downloads import DownloadLinks
from bot.errors import UpstreamRejected
from bot.metrics import Metrics
from bot.models import JobResult
from bot.ports import Budget
from bot.web import build_web_app, start_web
from bot.web import metrics as metrics_handler


async def test_healthz_answers(unused_tcp_port):
    runner = await start_web(build_web_app(), "127.0.0.1", unused_tcp_port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{unused_tcp_port}/healthz") as response:
                assert response.status == 200 and await response.text() == "ok\n"
    finally:
        await runner.cleanup()


class Clock:
    def __init__(self):
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def files_server(tmp_path, unused_tcp_port):
    data = tmp_path / "data"
    (data / "jobs" / "abc123").mkdir(parents=True)
    (data / "jobs" / "abc123" / "model.glb").write_bytes(b"glTF" + bytes(range(256)) * 40)
    (tmp_path / "data" / "secret.txt").write_text("not for download")
    clock = Clock()
    base = f"http://127.0.0.1:{unused_tcp_port}"
    links = DownloadLinks(b"k" * 32, base, 7 * 86400, clock)
    runner = await start_web(build_web_app(links, data), "127.0.0.1", unused_tcp_port)
    async with aiohttp.ClientSession() as session:
        yield links, clock, session, base
    await runner.cleanup()


async def test_a_signed_link_downloads_the_file_with_ranges(files_server):
    links, _, session, _ = files_server
    url = links.link("abc123", "model.glb")
    async with session.get(url) as response:
        body = await response.read()
        assert response.status == 200 and body[:4] == b"glTF" and len(body) == 4 + 256 * 40
        assert response.headers["Content-Type"] == "model/gltf-binary"
        assert 'filename="model.glb"' in response.headers["Content-Disposition"]
    async with session.get(url, headers={"Range": "bytes=4-13"}) as response:
        assert response.status == 206 and await response.read() == bytes(range(10))
    async with session.get(url, headers={"Range": "bytes=-0"}) as response:  # no bytes at all
        assert response.status == 416 and await response.read() == b""
        assert response.headers["Content-Range"] == f"bytes */{4 + 256 * 40}"


async def test_tampered_expired_and_climbing_links_are_refused(files_server):
    links, clock, session, base = files_server
    url = links.link("abc123", "model.glb")
    tampered = url.replace("abc123", "abc124")
    async with session.get(tampered) as response:
        assert response.status == 403 and await response.text() == "This link is not valid.\n"
    async with session.get(url[:-2] + "xx") as response:
        assert response.status == 403
    clock.now += 8 * 86400
    async with session.get(url) as response:
        assert response.status == 410 and "expired" in await response.text()
    clock.now -= 8 * 86400
    for path in (
        "/files/abc123/..%2Fsecret.txt",
        "/files/abc123/.hidden",
        "/files/..%2F..%2Fetc/passwd",
    ):
        signed = links.link(*path.split("/")[2:4])
        async with session.get(base + signed.removeprefix(base)) as response:
            assert response.status == 404, path
    async with session.get(links.link("abc999", "model.glb")) as response:
        assert response.status == 404 and await response.text() == "No such file.\n"


async def test_readyz_lists_each_check_and_fails_when_one_does(unused_tcp_port):
    state = {"database": True, "renderer": True, "discord": True}

    async def readiness():
        return dict(state)

    runner = await start_web(build_web_app(readiness=readiness), "127.0.0.1", unused_tcp_port)
    url = f"http://127.0.0.1:{unused_tcp_port}/readyz"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 200 and "discord: ok" in await response.text()
            state["discord"] = False
            async with session.get(url) as response:
                assert response.status == 503
                assert "discord: NOT READY" in await response.text()
    finally:
        await runner.cleanup()


async def test_metrics_speak_prometheus_to_loopback_or_a_bearer_token(unused_tcp_port):
    metrics = Metrics()
    result = JobResult(
        "abc123", {}, (), 65_000, seconds=31.0, timings={"upstream": 28.0, "render": 0.5}
    )
    metrics.delivered("discord", result)
    metrics.failed("slack", UpstreamRejected("no"), refunded=True)

    class Ledger:
        async def budget(self):
            return Budget("global", "2026-11", 20_000_000, 65_000, 130_000, 195_000)

    app = build_web_app(scrape=lambda: metrics.scrape(Ledger(), lambda: 3), metrics_token="s3cret")
    runner = await start_web(app, "127.0.0.1", unused_tcp_port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{unused_tcp_port}/metrics") as response:
                text = await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'sam3d_jobs_total{outcome="delivered",platform="discord"} 1.0' in text
        assert 'sam3d_jobs_total{outcome="refunded",platform="slack"} 1.0' in text
        assert 'sam3d_upstream_errors_total{code="upstream_rejected"} 1.0' in text
        assert "sam3d_upstream_seconds_count 1.0" in text
        assert 'sam3d_budget_usd{state="committed"} 0.13' in text
        assert "sam3d_queue_length 3.0" in text
    finally:
        await runner.cleanup()

    def from_afar(headers):
        transport = mock.Mock()
        transport.get_extra_info.return_value = ("203.0.113.9", 40000)
        return make_mocked_request("GET", "/metrics", headers=headers, app=app, transport=transport)

    handler = metrics_handler
    assert (await handler(from_afar({}))).status == 403
    assert (await handler(from_afar({"Authorization": "Bearer wrong"}))).status == 403
    assert (await handler(from_afar({"Authorization": "Bearer s3cret"}))).status == 200


async def test_the_running_bot_serves_readiness_and_metrics(
    unused_tcp_port, settings_env, tmp_path
):
    from bot.app import run_adapters
    from bot.settings import load_settings

    seen = {}

    class Adapter:
        name = "chat"

        def ready(self) -> bool:
            return True

        def routes(self, core):
            return []

        async def run(self, core, stop):
            base = f"http://127.0.0.1:{unused_tcp_port}"
            async with aiohttp.ClientSession() as session:
                for path in ("/readyz", "/metrics"):
                    async with session.get(base + path) as response:
                        seen[path] = (response.status, await response.text())

    settings = load_settings(
        None, data_dir=tmp_path / "data", http_port=unused_tcp_port, render_enabled=False
    )
    await run_adapters(settings, [Adapter()])
    assert seen["/readyz"] == (200, "database: ok\nchat: ok\n")
    status, text = seen["/metrics"]
    assert status == 200 and 'sam3d_budget_usd{state="cap"} 20.0' in text


async def test_huge_headers_get_a_plain_400(unused_tcp_port):
    runner = await start_web(build_web_app(), "127.0.0.1", unused_tcp_port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].endswith(b" 400 Bad Request") and b"Traceback" not in answer
    finally:
        await runner.cleanup()


async def test_a_client_that_dribbles_its_headers_is_cut_off(unused_tcp_port):
    runner = await start_web(build_web_app(), "127.0.0.1", unused_tcp_port, idle_timeout_s=1)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = asyncio.get_running_loop().time()
        for _ in range(10):  # one header line per 0.5 s, never the end of the request
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            await asyncio.sleep(0.5)
            if reader.at_eof():
                break
        assert reader.at_eof() and asyncio.get_running_loop().time() - started < 3.5
        writer.close()
    finally:
        await runner.cleanup()
