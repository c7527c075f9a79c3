"""`sam3d-bot` as a user runs it: a subprocess, real files, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import getpass
import io
import json
import os
import pty
import signal
import sqlite3
import sys

import numpy as np
import pytest
from PIL import Image

from bot import cli
from bot.cli import TerminalReplier
from bot.models import Progress, Stage
from tests.conftest import photo_bytes
from tests.fakes.models3d import made_glb
from tests.fakes.segmind import API_KEY
from tests.helpers import ROOT, bot_env, run_bot

EXAMPLE = ROOT / "examples" / "ornament.jpg"


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "photo.png").write_bytes(photo_bytes())
    return tmp_path


async def test_generate_offline_with_no_keys_at_all(workdir):
    ran = await run_bot("generate", str(EXAMPLE), "--prompt", "ornament", cwd=workdir)
    assert ran.code == 0, ran.err
    model = workdir / "out" / "ornament.glb"
    assert model.read_bytes()[:4] == b"glTF"
    assert "wrote out/ornament.glb" in ran.out
    thumbnail = Image.open(workdir / "out" / "ornament.png").convert("RGB")  # beside the model
    assert thumbnail.size == (512, 512)
    red = np.asarray(thumbnail).astype(int)
    assert (red[..., 0] > red[..., 1] + 60).mean() > 0.05  # the red ornament is in it
    assert "offline preview" in ran.out.lower() and "not SAM 3D" in ran.out
    assert ran.err == ""  # piped: no progress lines, no escape codes
    assert (workdir / "data" / "sam3d.sqlite3").is_file()
    # The ledger and the members' photos are the bot's user's alone.
    assert (workdir / "data").stat().st_mode & 0o777 == 0o700


async def test_generate_through_segmind_writes_glb_and_ply(workdir, fake_segmind):
    ran = await run_bot(
        "generate",
        "photo.png",
        "--bbox",
        "100,50,500,400",
        "--points",
        "320,240",
        "--seed",
        "77",
        "--out",
        "models",
        "--turntable",
        cwd=workdir,
        SEGMIND_API_KEY=API_KEY,
        SEGMIND_BASE_URL=fake_segmind.url,
        SEGMIND_POLL_INTERVAL_S="0.05",
    )
    assert ran.code == 0, ran.err
    assert (workdir / "models" / "photo.glb").read_bytes() == fake_segmind.glb
    assert (workdir / "models" / "photo.ply").read_bytes() == fake_segmind.ply
    assert Image.open(workdir / "models" / "photo.png").size == (512, 512)
    assert Image.open(workdir / "models" / "photo-turntable.webp").n_frames == 24
    assert Image.open(workdir / "models" / "photo-turntable.gif").n_frames == 24
    assert "$0.065" in ran.out
    sent = fake_segmind.counters.payloads[0]
    assert (sent["bounding_box"], sent["point_coords"], sent["seed"]) == (
        "[100, 50, 500, 400]",
        "[[320, 240]]",
        77,
    )
    usage = await run_bot("usage", cwd=workdir)
    assert usage.code == 0 and "0.065" in usage.out and "delivered" in usage.out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("generate", "missing.jpg"), "image: no such file: missing.jpg"),
        (("generate", "photo.png", "--bbox", "1,2,3"), "bbox: needs 4 numbers"),
        (("generate", "photo.png", "--seed", "2000000"), "seed: must be from 0 to 1000000"),
        (("generate",), "the following arguments are required: image"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(workdir, args, words, monkeypatch, settings_env, capsys):
    monkeypatch.chdir(workdir)
    err = io.StringIO()
    code = cli.main(["--env-file", "none.env", *args], io.StringIO(), err)
    shown = err.getvalue() + capsys.readouterr().err  # argparse writes to sys.stderr itself
    assert code == 2
    assert words in shown
    assert "Traceback" not in shown


async def test_upstream_failure_exits_1_with_one_line_and_no_secret(workdir, fake_segmind):
    fake_segmind.behaviour.fail_message = "no object found"
    ran = await run_bot(
        "generate",
        "photo.png",
        cwd=workdir,
        SEGMIND_API_KEY=API_KEY,
        SEGMIND_BASE_URL=fake_segmind.url,
        SEGMIND_POLL_INTERVAL_S="0.05",
        LOG_LEVEL="DEBUG",
    )
    assert ran.code == 1
    assert ran.err.strip().splitlines()[-1] == (
        "sam3d-bot: error: SAM 3D could not make a model from this photo: no object found "
        "(nothing was charged)"
    )
    assert API_KEY not in ran.err + ran.out


async def test_bad_key_and_server_errors_never_show_the_key(workdir, fake_segmind):
    for behaviour in ({"submit_error": (500, {"error": f"boom {API_KEY}"})}, {}):
        for name, value in behaviour.items():
            setattr(fake_segmind.behaviour, name, value)
        ran = await run_bot(
            "generate",
            "photo.png",
            cwd=workdir,
            SEGMIND_API_KEY=API_KEY if behaviour else "sk-wrong-key-999",
            SEGMIND_BASE_URL=fake_segmind.url,
            LOG_LEVEL="DEBUG",
        )
        assert ran.code == 1
        assert API_KEY not in ran.err + ran.out
        assert "sk-wrong-key-999" not in ran.err + ran.out
        assert "Traceback" not in ran.err


async def test_credits(workdir, fake_segmind):
    ran = await run_bot(
        "credits", cwd=workdir, SEGMIND_API_KEY=API_KEY, SEGMIND_BASE_URL=fake_segmind.url
    )
    assert ran.code == 0 and "credits: 9.87" in ran.out
    offline = await run_bot("credits", cwd=workdir)
    assert offline.code == 1 and "no SEGMIND_API_KEY" in offline.err


async def test_run_without_tokens_at_a_terminal_says_how_to_configure(workdir):
    terminal, keyboard = pty.openpty()  # stdin a terminal, as for someone typing the command
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=workdir,
            env=bot_env(),
            stdin=keyboard,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        os.close(terminal)
        os.close(keyboard)
    assert process.returncode == 1
    assert "DISCORD_TOKEN" in err.decode() and "SLACK_BOT_TOKEN" in err.decode()


async def test_invalid_setting_stops_with_one_line(workdir):
    ran = await run_bot("usage", cwd=workdir, SEGMIND_API_VERSION="v3")
    assert ran.code == 2
    assert (
        ran.err.strip() == "sam3d-bot: error: SEGMIND_API_VERSION: Input should be 'v1' or "
        "'v2' (got 'v3')"
    )


async def test_settings_come_from_dotenv(workdir, fake_segmind):
    (workdir / ".env").write_text(
        f"SEGMIND_API_KEY={API_KEY}\nSEGMIND_BASE_URL={fake_segmind.url}\nDATA_DIR=store\n"
    )
    ran = await run_bot("credits", cwd=workdir)
    assert ran.code == 0, ran.err
    ran = await run_bot("usage", cwd=workdir)
    assert (workdir / "store" / "sam3d.sqlite3").is_file()


async def test_python_dash_m_and_console_script_agree(workdir):
    ran = await run_bot("--help", cwd=workdir)
    assert ran.code == 0
    for command in ("generate", "credits", "usage", "run"):
        assert command in ran.out
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'sam3d-bot = "bot.cli:main"' in pyproject


class Terminal(io.StringIO):
    def isatty(self):
        return True


async def test_progress_shows_on_a_terminal_only(tmp_path):
    live, piped = Terminal(), io.StringIO()
    for stream in (live, piped):
        replier = TerminalReplier(tmp_path, "x", stream, io.StringIO())
        await replier.progress(Progress(Stage.QUEUED, 3))
        await replier.progress(Progress(Stage.PROCESSING))
    assert "Queued, position 3" in live.getvalue()
    assert "SAM 3D is building the model" in live.getvalue()
    assert piped.getvalue() == ""


async def test_render_command(workdir):
    (workdir / "ball.glb").write_bytes(made_glb())
    ran = await run_bot(
        "render",
        "ball.glb",
        "-o",
        "ball.png",
        "--turntable",
        "ball.gif",
        "--size",
        "200",
        cwd=workdir,
        RENDER_TURNTABLE_FRAMES="6",
    )
    assert ran.code == 0, ran.err
    assert Image.open(workdir / "ball.png").size == (200, 200)
    assert Image.open(workdir / "ball.gif").n_frames == 6
    assert "wrote ball.png" in ran.out


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("render", "nothing.glb", "-o", "x.png"), 2, "no such file: nothing.glb"),
        (("render", "page.glb", "-o", "x.png"), 1, "page.glb: the file is an HTML page"),
        (("render", "ball.glb", "-o", "x.png", "--turntable", "x.mp4"), 2, "must end in .webp"),
    ],
)
async def test_render_refusals(workdir, args, code, words):
    (workdir / "page.glb").write_text("<!DOCTYPE html><html>Sign in</html>")
    (workdir / "ball.glb").write_bytes(made_glb())
    ran = await run_bot(*args, cwd=workdir)
    assert (ran.code, ran.err.count("\n")) == (code, 1)
    assert words in ran.err


async def test_usage_report_and_admin_commands(workdir, fake_segmind):
    segmind = {
        "SEGMIND_API_KEY": API_KEY,
        "SEGMIND_BASE_URL": fake_segmind.url,
        "SEGMIND_POLL_INTERVAL_S": "0.05",
        "RENDER_ENABLED": "false",
    }
    assert (await run_bot("generate", "photo.png", cwd=workdir, **segmind)).code == 0
    report = await run_bot("usage", "--csv", cwd=workdir)
    lines = report.out.splitlines()
    assert lines[0] == "month,platform,guild,user,jobs,delivered,failed,refunded,usd"
    assert lines[1].endswith(",cli,-," + getpass.getuser() + ",1,1,0,0,0.065")
    monthly = await run_bot("usage", "--by", "month", cwd=workdir)
    assert "global budget" in monthly.out and "$0.065 spent" in monthly.out

    paused = await run_bot("admin", "pause", "--reason", "maintenance", cwd=workdir)
    assert paused.out.strip() == "new jobs are paused"
    refused = await run_bot("generate", "photo.png", cwd=workdir, **segmind)
    assert refused.code == 1 and "paused by the admins (maintenance)" in refused.err
    assert (await run_bot("admin", "resume", cwd=workdir)).out.strip() == "new jobs are open again"
    capped = await run_bot("admin", "set-budget", "0.05", cwd=workdir)
    assert capped.out.strip() == "the global monthly cap: $0.05"
    refused = await run_bot("generate", "photo.png", "--seed", "5", cwd=workdir, **segmind)
    assert refused.code == 1 and "spending cap" in refused.err

    db = sqlite3.connect(workdir / "data" / "sam3d.sqlite3")
    [(job_id,)] = db.execute("SELECT id FROM jobs WHERE state = 'delivered'").fetchall()
    db.close()
    refund = await run_bot("admin", "refund", job_id, "--reason", "test", cwd=workdir)
    assert "quota slot back" in refund.out
    audit = await run_bot("admin", "audit", job_id, cwd=workdir)
    actions = [line.split()[4] for line in audit.out.splitlines()]
    assert actions[:4] == ["reserve", "submitting", "submitted", "commit"]
    assert actions[-1] == "refund_slot"
    assert f"cli:{getpass.getuser()}" in audit.out.splitlines()[-1]
    role = await run_bot(
        "admin",
        "set-quota",
        "--platform",
        "discord",
        "--guild",
        "1",
        "--role",
        "2",
        "5",
        cwd=workdir,
    )
    assert role.out.strip() == "role 2: 5 jobs"
    no_guild = await run_bot(
        "admin", "set-quota", "--platform", "discord", "--role", "2", "5", cwd=workdir
    )
    assert no_guild.code == 2 and "needs --guild" in no_guild.err
    blocked = await run_bot("admin", "block", "--platform", "discord", "42", cwd=workdir)
    assert blocked.out.strip() == "blocked 42 everywhere"
    latest = await run_bot("admin", "audit", "--limit", "2", cwd=workdir)
    assert [line.split()[4] for line in latest.out.splitlines()] == ["set_quota", "block"]


def test_an_unexpected_error_is_one_line_and_shows_its_traceback_only_with_verbose(
    monkeypatch, settings_env
):
    async def broken(settings, args, out):
        raise RuntimeError(f"boom near {API_KEY}")

    monkeypatch.setattr(cli, "usage", broken)
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    err = io.StringIO()
    assert cli.main(["--env-file", "none.env", "usage"], io.StringIO(), err) == 1
    assert err.getvalue() == "sam3d-bot: error: unexpected error (RuntimeError)\n"
    err = io.StringIO()
    assert cli.main(["--env-file", "none.env", "--verbose", "usage"], io.StringIO(), err) == 1
    shown = err.getvalue()
    assert "Traceback" in shown and "RuntimeError: boom near" in shown
    assert API_KEY not in shown  # the traceback is redacted like every other message


def test_the_start_script_works_through_a_symlink(tmp_path):
    """`ln -s /path/to/checkout/sam3d-bot ~/bin/` is how people put it on their PATH."""
    import subprocess

    link = tmp_path / "sam3d-bot"
    link.symlink_to(ROOT / "sam3d-bot")
    ran = subprocess.run(
        [str(link), "--help"],
        cwd=tmp_path,
        env=bot_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "usage: sam3d-bot" in ran.stdout


def test_the_offline_backend_is_not_called_sam_3d_while_it_works():
    from bot.models import Progress, Stage

    assert "SAM 3D" in Progress(Stage.PROCESSING).describe()
    offline = Progress(Stage.PROCESSING, offline=True).describe()
    assert "offline preview" in offline and "not SAM 3D" in offline


async def start_picking(workdir, port: int, **settings: str):
    """`generate --pick` in its own process; returns it and the link it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "generate",
        "photo.png",
        "--pick",
        "--prompt",
        "ball",
        cwd=workdir,
        env=bot_env(HTTP_PORT=str(port), RENDER_ENABLED="false", **settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().strip()
    return process, line


@pytest.mark.slow  # a real process and its web server
async def test_generate_pick_serves_the_web_picker_then_runs_with_the_choice(
    workdir, fake_segmind, unused_tcp_port
):
    import aiohttp

    process, link = await start_picking(
        workdir, unused_tcp_port, SEGMIND_API_KEY=API_KEY, SEGMIND_BASE_URL=fake_segmind.url
    )
    assert link.startswith(f"http://127.0.0.1:{unused_tcp_port}/p/"), link  # a line of its own
    async with aiohttp.ClientSession() as session:
        async with session.get(link) as response:
            assert response.status == 200 and 'id="photo"' in await response.text()
        assert fake_segmind.counters.submits == 0  # nothing before Make it
        async with session.post(link, json={"points": [[320, 240]], "box": [100, 50, 500, 400]}):
            pass
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert "wrote out/photo.glb" in out.decode()
    payload = fake_segmind.counters.payloads[-1]
    assert payload["point_coords"] == "[[320, 240]]" and payload["prompt"] == "ball"
    assert json.loads(payload["bounding_box"]) == [100, 50, 500, 400]


@pytest.mark.slow
async def test_ctrl_c_while_picking_charges_nothing(workdir, fake_segmind, unused_tcp_port):
    process, link = await start_picking(
        workdir, unused_tcp_port, SEGMIND_API_KEY=API_KEY, SEGMIND_BASE_URL=fake_segmind.url
    )
    assert "/p/" in link
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1 and "nothing was charged" in err.decode()
    assert fake_segmind.counters.submits == 0
    db = sqlite3.connect(workdir / "data" / "sam3d.sqlite3")
    try:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)
    finally:
        db.close()
