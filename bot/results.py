"""Where finished jobs' files live, and the index that answers repeated requests for free."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .downloads import FILE_NAME
from .models import FileKind, JobResult, OutputFile, PreparedImage, UpstreamResult, ValidatedInput

# What is left in a job's folder once its files are removed: when, and after how many days.
PRUNED = "PRUNED"
DAY_S = 86_400


@dataclass(frozen=True)
class Pruned:
    """What a pass of the retention rule removed (or, in a dry run, would remove)."""

    jobs: int
    bytes: int


FORMAT_PREFIX = "format-"  # a conversion the Formats menu made, kept beside the job's files


class ResultStore:
    """Files under DATA_DIR/jobs/<job id>/; an index DATA_DIR/cache/<cache key>.json."""

    def __init__(self, data_dir: Path):
        self._data = Path(data_dir)
        self._jobs = self._data / "jobs"
        self._posts_lock = threading.Lock()  # one writer of a posts.json at a time, here
        self._index = self._data / "cache"

    # -- retention -------------------------------------------------------------------------------

    async def prune(
        self, keep_days: float, keep: Collection[str] = (), dry_run: bool = False
    ) -> Pruned:
        """Remove the files of jobs whose folder has not changed for `keep_days` (photos,
        masks, models, pictures) and the cache entries that point at them; a job in `keep`
        (still running, or held for an admin) is left alone. Each pruned folder keeps a note
        saying when and after how long, for the links that reach it later."""
        return await asyncio.to_thread(self._prune, keep_days, set(keep), dry_run, time.time())

    async def pruned_after(self, job_id: str) -> float | None:
        """After how many days this job's files were removed, or None if they were not."""
        return await asyncio.to_thread(pruned_after, self._jobs, job_id)

    async def size(self) -> int:
        """Bytes under the data folder (the jobs' files, the cache, the ledger)."""
        return await asyncio.to_thread(_size_of, self._data)

    def _prune(self, keep_days: float, keep: set[str], dry_run: bool, now: float) -> Pruned:
        cutoff = now - keep_days * DAY_S
        jobs = freed = 0
        gone: set[str] = set()
        for folder in sorted(self._jobs.iterdir()) if self._jobs.is_dir() else ():
            if not folder.is_dir() or folder.name in keep or (folder / PRUNED).exists():
                continue
            files = [p for p in folder.rglob("*") if p.is_file()]
            newest = max((p.stat().st_mtime for p in files), default=folder.stat().st_mtime)
            if newest >= cutoff:
                continue
            jobs += 1
            freed += sum(p.stat().st_size for p in files)
            gone.add(folder.name)
            if not dry_run:
                for child in folder.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
                _write_atomically(folder / PRUNED, json.dumps({"at": now, "days": keep_days}))
        if not dry_run:
            freed += self._drop_cache_entries(gone)
        return Pruned(jobs, freed)

    def _drop_cache_entries(self, jobs: set[str]) -> int:
        """Remove the cache index entries that point at these jobs; the bytes freed."""
        freed = 0
        for entry in sorted(self._index.glob("*.json")) if self._index.is_dir() else ():
            try:
                job_id = json.loads(entry.read_text()).get("job_id")
            except (OSError, ValueError, AttributeError):
                job_id = None
            if job_id in jobs:
                freed += entry.stat().st_size
                entry.unlink(missing_ok=True)
        return freed

    async def forget(self, job_ids: Collection[str]) -> int:
        """ "Forget me": every file of these jobs (photos, masks, models, pictures,
        conversions) and their cache entries, gone without a trace; the bytes freed."""
        return await asyncio.to_thread(self._forget, set(job_ids))

    def _forget(self, job_ids: set[str]) -> int:
        freed = 0
        for job_id in job_ids:
            folder = self._jobs / job_id
            if folder.is_dir() and folder.parent == self._jobs:
                freed += _size_of(folder)
                shutil.rmtree(folder, ignore_errors=True)
        return freed + self._drop_cache_entries(job_ids)

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

    async def note_post(self, job_id: str, where: dict[str, Any]) -> None:
        """Where the bot posted a job's result (a chat's own ids), so forget me can delete
        it; kept with the job's files, for as long as they are."""
        await asyncio.to_thread(self._note_post, job_id, where)

    def _note_post(self, job_id: str, where: dict[str, Any]) -> None:
        folder = self._jobs / job_id
        folder.mkdir(parents=True, exist_ok=True)
        with self._posts_lock:
            posts = self._posts_in(folder)
            _write_atomically(folder / "posts.json", json.dumps([*posts, where]))

    async def posts_of(self, job_ids: Collection[str]) -> list[dict[str, Any]]:
        """Every post noted for these jobs, each once."""
        return await asyncio.to_thread(self._posts_of, set(job_ids))

    def _posts_of(self, job_ids: set[str]) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for job_id in sorted(job_ids):
            for post in self._posts_in(self._jobs / job_id):
                seen.setdefault(json.dumps(post, sort_keys=True), post)
        return list(seen.values())

    @staticmethod
    def _posts_in(folder: Path) -> list[dict[str, Any]]:
        try:
            posts = json.loads((folder / "posts.json").read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [p for p in posts if isinstance(p, dict)] if isinstance(posts, list) else []

    async def has_inputs(self, job_id: str) -> bool:
        """The job's photo is still kept (it can run again)."""
        return await asyncio.to_thread((self._jobs / job_id / "input.img").is_file)

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


def pruned_after(jobs: Path, job_id: str) -> float | None:
    """After how many days a job's files were removed (its folder's note), or None."""
    try:
        note = json.loads((jobs / job_id / PRUNED).read_text())
        return float(note["days"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _size_of(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


def _write_atomically(path: Path, text: str) -> None:
    # A name of its own per writer: instances sharing DATA_DIR never write the same temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
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


def job_files(jobs: Path, job: str) -> dict[str, tuple[Path, int]]:
    """The job's model, splat and picture, by what they are, with their sizes."""
    folder = jobs / job
    if not folder.is_dir():
        return {}
    found: dict[str, tuple[Path, int]] = {}
    for path in sorted(folder.iterdir()):
        if not FILE_NAME.fullmatch(path.name) or not path.is_file():
            continue
        kind = {".glb": "mesh", ".ply": "splat"}.get(path.suffix)
        if path.name == "thumbnail.png":
            kind = "picture"
        # Not a picture's working file, nor a conversion the Formats menu made.
        if kind and kind not in found and not path.name.startswith(("render-", FORMAT_PREFIX)):
            found[kind] = (path, path.stat().st_size)
    return found
