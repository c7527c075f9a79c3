"""Files do not fill the disk: the files of old jobs are removed (hourly, and by `sam3d-bot
prune`), never those of jobs still running or held, and the links that reach them later say
why (410). The ledger's money history stays."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path

import aiohttp

from bot.cli import main
from bot.downloads import DownloadLinks
from bot.ledger import QuotaPolicy, SqliteLedger
from bot.models import JobState, Requester
from bot.ports import NewJob
from bot.results import DAY_S, PRUNED, ResultStore
from bot.settings import load_settings
from bot.web import build_web_app, start_web


def job_folder(data: Path, job_id: str, age_days: float, size: int = 1000) -> Path:
    folder = data / "jobs" / job_id
    folder.mkdir(parents=True)
    for name in ("input.img", "model.glb", "splat.ply"):
        (folder / name).write_bytes(b"x" * size)
    then = time.time() - age_days * DAY_S
    for path in (*folder.iterdir(), folder):
        os.utime(path, (then, then))
    return folder


def cache_entry(data: Path, key: str, job_id: str) -> Path:
    (data / "cache").mkdir(parents=True, exist_ok=True)
    entry = data / "cache" / f"{key}.json"
    entry.write_text(json.dumps({"job_id": job_id, "params": {}, "files": []}))
    return entry


async def test_old_jobs_files_go_recent_and_kept_ones_stay(tmp_path):
    data = tmp_path / "data"
    old = job_folder(data, "aaa111", age_days=31)
    held = job_folder(data, "bbb222", age_days=40)
    recent = job_folder(data, "ccc333", age_days=2)
    old_entry = cache_entry(data, "k-old", "aaa111")
    recent_entry = cache_entry(data, "k-new", "ccc333")
    store = ResultStore(data)

    dry = await store.prune(30, keep={"bbb222"}, dry_run=True)
    assert (dry.jobs, dry.bytes) == (1, 3000)
    assert (old / "model.glb").exists() and old_entry.exists()  # a dry run removes nothing

    done = await store.prune(30, keep={"bbb222"})
    assert done.jobs == 1 and done.bytes >= 3000
    assert [p.name for p in old.iterdir()] == [PRUNED]
    assert await store.pruned_after("aaa111") == 30
    assert not old_entry.exists() and recent_entry.exists()
    assert len(list(held.iterdir())) == 3 and len(list(recent.iterdir())) == 3
    assert (await store.prune(30, keep={"bbb222"})).jobs == 0  # once is enough


async def test_a_link_to_removed_files_says_so(tmp_path, unused_tcp_port):
    data = tmp_path / "data"
    job_folder(data, "abc123", age_days=45)
    await ResultStore(data).prune(30)
    base = f"http://127.0.0.1:{unused_tcp_port}"
    links = DownloadLinks(b"k" * 32, base, 60 * DAY_S)
    runner = await start_web(build_web_app(links, data), "127.0.0.1", unused_tcp_port)
    try:
        async with aiohttp.ClientSession() as session:
            for url in (links.link("abc123", "model.glb"), links.viewer_link("abc123")):
                async with session.get(url) as response:
                    text = await response.text()
                    assert response.status == 410 and "removed" in text and "30 days" in text
            async with session.get(links.link("fff999", "model.glb")) as response:
                assert response.status == 404  # never there: not "removed"
    finally:
        await runner.cleanup()


async def delivered_and_held(path: Path) -> tuple[str, str]:
    ledger = SqliteLedger(path, QuotaPolicy())
    await ledger.open()
    try:
        who = Requester("cli", "alice")
        done = await ledger.reserve(NewJob(who, 65_000, "k1", {}))
        await ledger.commit(done.id, 65_000)
        await ledger.finish(done.id, JobState.DELIVERED)
        held = await ledger.reserve(NewJob(who, 65_000, "k2", {}))
        await ledger.hold(held.id, "the submit was cut off")
        return done.id, held.id
    finally:
        await ledger.close()


def test_sam3d_bot_prune_keeps_held_jobs_and_the_money_history(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("FILES_KEEP_DAYS", "7")
    done_id, held_id = asyncio.run(delivered_and_held(load_settings(None).sqlite_path))
    job_folder(data, done_id, age_days=8)
    job_folder(data, held_id, age_days=8)

    out, err = io.StringIO(), io.StringIO()
    assert main(["prune", "--dry-run"], out, err) == 0, err.getvalue()
    assert "would remove the files of 1 job(s) older than 7 days" in out.getvalue()
    assert (data / "jobs" / done_id / "model.glb").exists()

    out = io.StringIO()
    assert main(["prune"], out, io.StringIO()) == 0
    assert "removed the files of 1 job(s)" in out.getvalue()
    assert not (data / "jobs" / done_id / "model.glb").exists()
    assert (data / "jobs" / held_id / "model.glb").exists()  # its money is not settled yet

    out = io.StringIO()
    assert main(["usage"], out, io.StringIO()) == 0
    assert "data folder" in out.getvalue() and "$0.065" in out.getvalue()
