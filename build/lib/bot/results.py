"""Where finished jobs' files live, and the index that answers repeated requests for free."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from .models import FileKind, JobResult, OutputFile, PreparedImage, UpstreamResult, ValidatedInput


class ResultStore:
    """Files under DATA_DIR/jobs/<job id>/; an index DATA_DIR/cache/<cache key>.json."""

    def __init__(self, data_dir: Path):
        self._jobs = Path(data_dir) / "jobs"
        self._index = Path(data_dir) / "cache"

    # Disk metadata calls can take milliseconds: the public methods run them off the event loop.

    async def workdir(self, job_id: str) -> Path:
        path = self._jobs / job_id
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        return path

    async def keep_inputs(self, job_id: str, validated: ValidatedInput) -> None:
        """The checked photo (and mask) and settings a job runs on: so it can run again with
        another seed, and so a job queued when the bot stopped runs after the restart."""
        await asyncio.to_thread(self._keep_inputs, job_id, validated)

    async def inputs_of(self, job_id: str) -> tuple[bytes, bytes | None] | None:
        return await asyncio.to_thread(self._inputs_of, job_id)

    async def validated_of(self, job_id: str) -> ValidatedInput | None:
        """The job's checked input exactly as it was queued, if it is still kept."""
        return await asyncio.to_thread(self._validated_of, job_id)

    def _keep_inputs(self, job_id: str, validated: ValidatedInput) -> None:
        folder = self._jobs / job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "input.img").write_bytes(validated.image.data)
        if validated.mask is not None:
            (folder / "mask.img").write_bytes(validated.mask.data)
        settings = {
            "image": _image_entry(validated.image),
            "mask": _image_entry(validated.mask) if validated.mask else None,
            "prompt": validated.prompt,
            "bbox": validated.bbox,
            "points": validated.points,
            "seed": validated.seed,
            "include_artifacts": validated.include_artifacts,
        }
        _write_atomically(folder / "input.json", json.dumps(settings))

    def _validated_of(self, job_id: str) -> ValidatedInput | None:
        folder = self._jobs / job_id
        try:
            settings = json.loads((folder / "input.json").read_text())
            image = _prepared(folder / "input.img", settings["image"])
            mask = _prepared(folder / "mask.img", settings["mask"]) if settings["mask"] else None
            return ValidatedInput(
                image=image,
                prompt=settings["prompt"],
                bbox=tuple(settings["bbox"]) if settings["bbox"] else None,
                points=tuple(tuple(p) for p in settings["points"]),
                mask=mask,
                seed=settings["seed"],
                include_artifacts=settings["include_artifacts"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def keep_upstream(self, job_id: str, upstream: UpstreamResult) -> None:
        """What Segmind delivered, on disk: a job stopped after this point is finished from
        these files, without asking Segmind again."""
        await asyncio.to_thread(self._keep_upstream, job_id, upstream)

    async def upstream_of(self, job_id: str) -> UpstreamResult | None:
        return await asyncio.to_thread(self._upstream_of, job_id)

    def _keep_upstream(self, job_id: str, upstream: UpstreamResult) -> None:
        entry = {
            "files": [_file_entry(f) for f in upstream.files],
            "request_id": upstream.request_id,
            "cost_micros": upstream.cost_micros,
            "offline": upstream.offline,
        }
        _write_atomically(self._jobs / job_id / "upstream.json", json.dumps(entry))

    def _upstream_of(self, job_id: str) -> UpstreamResult | None:
        try:
            entry = json.loads((self._jobs / job_id / "upstream.json").read_text())
            files = tuple(_file_of(f) for f in entry["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _all_on_disk(files):
            return None
        return UpstreamResult(
            files=files,
            request_id=entry["request_id"],
            cost_micros=entry["cost_micros"],
            offline=entry["offline"],
        )

    def _inputs_of(self, job_id: str) -> tuple[bytes, bytes | None] | None:
        folder = self._jobs / job_id
        try:
            image = (folder / "input.img").read_bytes()
        except FileNotFoundError:
            return None
        mask = folder / "mask.img"
        return image, (mask.read_bytes() if mask.exists() else None)

    async def remember(self, cache_key: str, result: JobResult) -> None:
        await asyncio.to_thread(self._remember, cache_key, result)

    async def lookup(self, cache_key: str, *, offline: bool) -> JobResult | None:
        """A delivered result for the same request, if all its files are still on disk."""
        return await asyncio.to_thread(self._lookup, cache_key, offline)

    def _remember(self, cache_key: str, result: JobResult) -> None:
        self._index.mkdir(parents=True, exist_ok=True)
        entry = {
            "job_id": result.job_id,
            "params": result.params,
            "offline": result.offline,
            # Segmind's own links expire within the hour: a later delivery never shows them.
            "files": [{**_file_entry(f), "source_url": None} for f in result.files],
        }
        _write_atomically(self._index / f"{cache_key}.json", json.dumps(entry))

    def _lookup(self, cache_key: str, offline: bool) -> JobResult | None:
        try:
            entry = json.loads((self._index / f"{cache_key}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if entry.get("offline", False) != offline:
            return None  # an offline preview never stands in for a real SAM 3D model
        files = tuple(_file_of(f) for f in entry["files"])
        if not _all_on_disk(files):
            return None
        result = JobResult(entry["job_id"], entry["params"], files, 0, offline=entry["offline"])
        return replace(result, cached=True)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers never see half a file


def _file_entry(file: OutputFile) -> dict[str, Any]:
    return {
        "kind": file.kind.value,
        "path": str(file.path),
        "size": file.size,
        "media_type": file.media_type,
        "source_url": file.source_url,
    }


def _file_of(entry: dict[str, Any]) -> OutputFile:
    return OutputFile(
        FileKind(entry["kind"]),
        Path(entry["path"]),
        entry["size"],
        entry["media_type"],
        entry.get("source_url"),
    )


def _all_on_disk(files: tuple[OutputFile, ...]) -> bool:
    return all(f.path.is_file() and f.path.stat().st_size == f.size for f in files)


def _image_entry(image: PreparedImage) -> dict[str, Any]:
    return {"media_type": image.media_type, "width": image.width, "height": image.height}


def _prepared(path: Path, entry: dict[str, Any]) -> PreparedImage:
    return PreparedImage(path.read_bytes(), entry["media_type"], entry["width"], entry["height"])
