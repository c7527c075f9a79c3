from __future__ import annotations

import aiohttp
import pytest

from bot.downloads import DownloadLinks
from bot.web import build_web_app, start_web


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
    for path in ("/files/abc123/..%2Fsecret.txt", "/files/abc123/.hidden",
                 "/files/..%2F..%2Fetc/passwd"):
        signed = links.link(*path.split("/")[2:4])
        async with session.get(base + signed.removeprefix(base)) as response:
            assert response.status == 404, path
    async with session.get(links.link("abc999", "model.glb")) as response:
        assert response.status == 404 and await response.text() == "No such file.\n"
