"""A bot process killed (SIGKILL) in the middle of a job, then started again: what Segmind had
is finished and delivered, what it never had is refunded, and nothing is charged twice."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import photo_bytes
from tests.fakes.segmind import API_KEY
from tests.helpers import bot_env, run_bot

pytestmark = pytest.mark.slow  # real processes: seconds each

LEASE_S = "1"


def settings(fake_segmind) -> dict[str, str]:
    return {
        "SEGMIND_API_KEY": API_KEY,
        "SEGMIND_BASE_URL": fake_segmind.url,
        "SEGMIND_POLL_INTERVAL_S": "0.05",
        "JOB_LEASE_SECONDS": LEASE_S,
        "RENDER_ENABLED": "false",
    }


async def start_generate(workdir: Path, image: str, out: str, fake_segmind):
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "generate",
        image,
        "--out",
        out,
        cwd=workdir,
        env=bot_env(**settings(fake_segmind)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def ledger_rows(workdir: Path, sql: str, args=()) -> list[tuple]:
    path = workdir / "data" / "sam3d.sqlite3"
    if not path.exists():  # the command has not made it yet
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # its tables are not made yet
        return []
    finally:
        db.close()


async def wait_for(condition, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert process.returncode == -signal.SIGKILL
    await asyncio.sleep(float(LEASE_S) + 0.3)  # its leases lapse: nobody renews them


def spent_and_held(workdir: Path) -> tuple[int, int]:
    """What the jobs cost, and what the global budget holds (nothing left reserved)."""
    [(spent,)] = ledger_rows(workdir, "SELECT sum(cost_micros) FROM jobs")
    [(held,)] = ledger_rows(workdir, "SELECT held_micros FROM budgets WHERE scope = 'global'")
    return spent, held


def charges(workdir: Path) -> dict[str, int]:
    rows = ledger_rows(
        workdir, "SELECT job_id, count(*) FROM audit WHERE action = 'commit' GROUP BY job_id"
    )
    return dict(rows)


async def test_killed_after_submitting_the_job_is_finished_and_delivered(tmp_path, fake_segmind):
    (tmp_path / "first.png").write_bytes(photo_bytes())
    (tmp_path / "second.png").write_bytes(photo_bytes(colour=(30, 160, 40)))
    fake_segmind.behaviour.complete_after_s = 3600  # Segmind is still working on it
    process = await start_generate(tmp_path, "first.png", "out1", fake_segmind)
    await wait_for(lambda: ledger_rows(tmp_path, "SELECT id FROM jobs WHERE state = 'submitted'"))
    await kill(process)
    [(job_id, request_id)] = ledger_rows(tmp_path, "SELECT id, request_id FROM jobs")

    fake_segmind.behaviour.complete_after_s = 0  # ... and finishes it while the bot is down
    ran = await run_bot(
        "generate", "second.png", "--out", "out2", cwd=tmp_path, **settings(fake_segmind)
    )
    assert ran.code == 0, ran.err
    assert "finishing 1 earlier job(s)" in ran.err
    # The killed command's model lands where that command would have put it.
    assert (tmp_path / "out1" / "first.glb").read_bytes() == fake_segmind.glb
    assert (tmp_path / "out2" / "second.glb").read_bytes() == fake_segmind.glb
    assert fake_segmind.counters.submits == 2  # the first job was not sent again
    states = dict(ledger_rows(tmp_path, "SELECT id, state FROM jobs"))
    assert states[job_id] == "delivered" and list(states.values()) == ["delivered"] * 2
    assert request_id == "req-00001"
    assert set(charges(tmp_path).values()) == {1} and len(charges(tmp_path)) == 2
    assert spent_and_held(tmp_path) == (2 * 65_000, 2 * 65_000)


async def test_killed_while_sending_the_job_is_held_for_an_admin_never_refunded(
    tmp_path, fake_segmind
):
    """SIGKILL while the POST is in flight: Segmind may have the job (and bill it), so the next
    start neither sends it again nor says "nothing was charged"; its price stays held."""
    (tmp_path / "first.png").write_bytes(photo_bytes())
    (tmp_path / "second.png").write_bytes(photo_bytes(colour=(30, 160, 40)))
    fake_segmind.behaviour.submit_delay_s = 30  # the request id never comes back in time
    process = await start_generate(tmp_path, "first.png", "out1", fake_segmind)
    await wait_for(lambda: fake_segmind.counters.submits == 1)
    await kill(process)
    [(job_id, state)] = ledger_rows(tmp_path, "SELECT id, state FROM jobs")
    assert state == "submitting"

    fake_segmind.behaviour.submit_delay_s = 0
    ran = await run_bot(
        "generate", "second.png", "--out", "out2", cwd=tmp_path, **settings(fake_segmind)
    )
    assert ran.code == 0, ran.err
    assert "earlier job for" in ran.err and "not sent again" in ran.err
    assert "nothing was charged" not in ran.err.lower()
    assert not list((tmp_path / "out1").iterdir())  # no model: none was delivered
    states = dict(ledger_rows(tmp_path, "SELECT id, state FROM jobs"))
    assert states.pop(job_id) == "held" and list(states.values()) == ["delivered"]
    assert fake_segmind.counters.submits == 2  # the held job was not sent again
    assert spent_and_held(tmp_path) == (65_000, 2 * 65_000)  # the held price stays counted
    [(refunds,)] = ledger_rows(
        tmp_path, "SELECT count(*) FROM audit WHERE action = 'refund' AND job_id = ?", (job_id,)
    )
    assert refunds == 0

    listed = await run_bot("admin", "held", cwd=tmp_path)  # what an admin settles by hand
    assert listed.code == 0 and listed.out.startswith(job_id) and "$0.065 held" in listed.out
    released = await run_bot("admin", "refund", job_id, cwd=tmp_path)
    assert released.code == 0, released.err
    assert spent_and_held(tmp_path) == (65_000, 65_000)
    assert (await run_bot("admin", "held", cwd=tmp_path)).out.strip() == "no held jobs"


async def test_an_out_folder_that_cannot_be_written_is_refused_before_any_charge(
    tmp_path, fake_segmind
):
    (tmp_path / "photo.png").write_bytes(photo_bytes())
    (tmp_path / "file").write_text("not a folder")
    ran = await run_bot(
        "generate", "photo.png", "--out", "file/out", cwd=tmp_path, **settings(fake_segmind)
    )
    assert ran.code == 2 and "cannot write the model files to file/out" in ran.err
    assert len(ran.err.strip().splitlines()) == 1
    assert fake_segmind.counters.submits == 0
    assert ledger_rows(tmp_path, "SELECT id FROM jobs") == []  # nothing reserved
