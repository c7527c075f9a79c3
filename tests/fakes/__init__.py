"""Loopback fake servers that speak the real protocols, for tests and benchmarks."""

from aiohttp import web


async def serve_on_loopback(
    app: web.Application, port: int = 0, **runner_options
) -> tuple[web.AppRunner, str]:
    """Start `app` on 127.0.0.1 (a free port unless given); returns its runner and base URL."""
    # A fake stops at once: a handler still waiting (a slow submit the test set up) is cut
    # off, not waited for for aiohttp's default minute.
    runner_options.setdefault("shutdown_timeout", 0.1)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{bound}"
