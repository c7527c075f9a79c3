from __future__ import annotations

import aiohttp

from bot.web import build_web_app, start_web


async def test_healthz_answers(unused_tcp_port):
    runner = await start_web(build_web_app(), "127.0.0.1", unused_tcp_port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{unused_tcp_port}/healthz") as response:
                assert response.status == 200 and await response.text() == "ok\n"
    finally:
        await runner.cleanup()
