"""Every benchmark still runs at HEAD: each once, with tiny arguments, under the network guard.
The figures themselves are for the README, not for a pass or a fail."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.helpers import ROOT, bot_env

COLOURED_PLY = ROOT.parent / "shared" / "fixtures" / "sam3d_body_human.ply"

BENCHES = {
    "pipeline": [
        "--jobs",
        "4",
        "--in-flight",
        "4",
        "--upstream-s",
        "0.2",
        "--poll-s",
        "0.05",
        "--small-files",
    ],
    "slack": ["--jobs", "4", "--channels", "2", "--upstream-s", "0.2", "--concurrent", "2"],
    "lifecycle": ["--jobs", "4", "--grace-s", "0.5", "--lease-s", "1"],
    "web": ["--clients", "4", "--seconds", "0.5"],
    "ledger": ["--pairs", "50"],
    "render": ["--size", "64", "--frames", "2", "--turntable-size", "64"],
    "polling": ["--jobs", "20"],
    "formats": ["--runs", "1", "--faces", "2000", "--model", str(COLOURED_PLY)],
}
PRINTS = {
    "pipeline": "overhead per job",
    "slack": "delivered: 4/4",
    "lifecycle": "SIGKILL",
    "web": "viewer page",
    "ledger": "postgres",
    "render": "made_100k_splats.ply",
    "polling": "learnt",
    "formats": "glb --faces 2000",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHES))
async def test_the_benchmark_runs(name, request):
    args = list(BENCHES[name])
    if name == "formats" and not COLOURED_PLY.is_file():
        pytest.skip("../shared/fixtures absent")
    if name == "ledger":
        args += ["--postgres", request.getfixturevalue("postgres_url")]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / f"{name}.py"),
        *args,
        cwd=ROOT,
        env=bot_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    assert PRINTS[name] in out.decode()
