"""Running the real command in a subprocess, guarded like the tests themselves."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV_DROP = (
    "SEGMIND_API_KEY",
    "DISCORD_TOKEN",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "DATABASE_URL",
    "SEGMIND_BASE_URL",
)


@dataclass
class Ran:
    code: int
    out: str
    err: str


def bot_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV_DROP}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "guard_site"), str(ROOT)])
    env.update(settings)
    return env


async def run_bot(*args: str, cwd: Path, limit_s: float = 60, **settings: str) -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=bot_env(**settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), limit_s)
    assert process.returncode is not None  # communicate() waited for the exit
    return Ran(process.returncode, out.decode(), err.decode())


async def wait_until_ready(session, url: str, process=None, limit_s: float = 30) -> None:
    """Until the bot at `url` answers /readyz with 200; fails early if `process` ended."""
    for _ in range(int(limit_s * 10)):
        try:
            async with session.get(url + "/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if process is not None and process.returncode is not None:
            raise AssertionError(f"the bot stopped ({process.returncode})")
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} was not ready within {limit_s:g} s")
