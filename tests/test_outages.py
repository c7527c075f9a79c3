"""Starting through an outage: what the bot needs at start is tried again, with waits that
double, until it answers; what will not mend (a refused token) stops it at once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot import outages
from bot.app import build_core
from bot.outages import until_reachable
from bot.settings import load_settings


class Flaky:
    def __init__(self, failures: list[Exception]):
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "answered"


async def test_an_outage_is_waited_out_with_doubling_waits_each_try_logged(caplog):
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    flaky = Flaky([ConnectionError("refused")] * 7)
    with caplog.at_level(logging.WARNING):
        answer = await until_reachable(
            "Slack", flaky, lambda exc: isinstance(exc, ConnectionError), sleep=sleep
        )
    assert answer == "answered" and flaky.calls == 8
    assert waits == [1, 2, 4, 8, 16, 32, 60]
    tries = [r.message for r in caplog.records if "cannot be reached" in r.message]
    assert len(tries) == 7 and "Slack" in tries[0] and "try 1" in tries[0]


async def test_what_will_not_mend_goes_up_at_once():
    flaky = Flaky([PermissionError("token refused")])
    with pytest.raises(PermissionError):
        await until_reachable("Slack", flaky, lambda exc: isinstance(exc, ConnectionError))
    assert flaky.calls == 1


async def test_slack_unreachable_at_start_is_waited_for(
    fake_segmind, tmp_path, settings_env, unused_tcp_port, monkeypatch
):
    """auth.test's connections dropped three times: the bot keeps trying and connects."""
    from tests.fakes.slack import FakeSlack
    from tests.test_slack import running_slack

    monkeypatch.setattr(outages, "FIRST_WAIT_S", 0.01)
    async with FakeSlack() as fake_slack:
        fake_slack.unreachable_times["auth.test"] = 3
        async with running_slack(fake_slack, fake_segmind, tmp_path, unused_tcp_port) as slack:
            assert slack.adapter.ready()
        assert len(fake_slack.find("auth.test")) >= 4


async def test_discord_unreachable_at_start_is_waited_for(
    fake_segmind, tmp_path, settings_env, monkeypatch, unused_tcp_port
):
    """Nothing answers at Discord's address when the bot starts (the network not up yet):
    it keeps trying, and logs in once Discord is there."""
    from adapters.discord import DiscordAdapter
    from tests.fakes.discord import FakeDiscord

    monkeypatch.setattr(outages, "FIRST_WAIT_S", 0.05)
    settings = load_settings(
        None,
        discord_token="bot-token",
        discord_api_url=f"http://127.0.0.1:{unused_tcp_port}/api/v10",
        data_dir=tmp_path / "data",
        render_enabled=False,
        segmind_base_url=fake_segmind.url,
    )
    adapter = DiscordAdapter()
    stop = asyncio.Event()
    async with build_core(settings) as core:
        running = asyncio.create_task(adapter.run(core, stop))
        await asyncio.sleep(0.3)  # a few tries meet nothing
        assert not running.done()
        async with FakeDiscord(port=unused_tcp_port) as fake:
            fake.token = "bot-token"
            for _ in range(200):
                if adapter.ready() or running.done():
                    break
                await asyncio.sleep(0.025)
            assert adapter.ready(), running.exception() if running.done() else "not ready"
            stop.set()
            await running
