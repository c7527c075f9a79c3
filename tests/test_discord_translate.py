"""Where Discord's types stop: a result's attachments and texts within Discord's rules."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from adapters.discord.translate import CONTENT_MAX, pages, result_message, unique_name
from bot.models import FileKind, JobResult, OutputFile


def result_with(files: tuple[OutputFile, ...]) -> JobResult:
    return JobResult(
        job_id="abc123def456",
        files=files,
        cost_micros=65_000,
        seconds=30.0,
        params={"seed": 1},
    )


def test_two_files_of_a_result_never_share_a_name(tmp_path: Path):
    made = []
    for index in range(3):
        path = tmp_path / f"{index}" / "extra.bin"
        path.parent.mkdir()
        path.write_bytes(b"x" * 10)
        made.append(OutputFile(FileKind.ARCHIVE if index == 0 else FileKind.MESH, path, 10, ""))
    message = result_message(result_with(tuple(made)), 10_000)
    names = [f.filename for f in message.files]
    assert len(names) == len(set(names))


def test_a_link_longer_than_a_message_is_named_not_cut(tmp_path: Path):
    path = tmp_path / "splat.ply"
    path.write_bytes(b"x" * 100)
    long_url = "http://127.0.0.1:9/presigned/" + "a" * 3000
    big = OutputFile(FileKind.SPLAT, path, 100, "application/octet-stream", source_url=long_url)
    message = result_message(result_with((big,)), size_limit=10)
    [line] = message.links
    assert len(line) < CONTENT_MAX and "too long" in line and long_url not in line


def test_unique_name_numbers_a_taken_name():
    taken = {"model.glb"}
    assert unique_name("model.glb", taken) == "model-2.glb"
    assert unique_name("model.glb", taken) == "model-3.glb"
    assert unique_name("notes", taken) == "notes"


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12_000))
def test_pages_are_within_discords_limit_and_lose_no_line(text: str):
    parts = pages(text)
    assert all(len(part) <= CONTENT_MAX for part in parts)
    kept = "\n".join(parts)
    for line in text.splitlines():
        if len(line) < 1900:
            assert line in kept
