"""Where finished jobs' files live, and the index that answers repeated requests for free."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

from .models import FileKind, JobResult, OutputFile


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

    async def keep_inputs(self, job_id: str, image: bytes, mask: bytes | None) -> None:
        """The checked photo (and mask) a job ran on, so it can run again with another seed."""
        await asyncio.to_thread(self._keep_inputs, job_id, image, mask)

    async def inputs_of(self, job_id: str) -> tuple[bytes, bytes | None] | None:
        return await asyncio.to_thread(self._inputs_of, job_id)

    def _keep_inputs(self, job_id: str, image: bytes, mask: bytes | None) -> None:
        folder = self._jobs / job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "input.img").write_bytes(image)
        if mask is not None:
            (folder / "mask.img").write_bytes(mask)

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
            "files": [
                {"kind": f.kind.value, "path": str(f.path), "size": f.size,
                 "media_type": f.media_type}
                for f in result.files
            ],
        }
        tmp = self._index / f"{cache_key}.tmp"
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, self._index / f"{cache_key}.json")  # readers never see half a file

    def _lookup(self, cache_key: str, offline: bool) -> JobResult | None:
        try:
            entry = json.loads((self._index / f"{cache_key}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if entry.get("offline", False) != offline:
            return None  # an offline preview never stands in for a real SAM 3D model
        files = tuple(
            OutputFile(FileKind(f["kind"]), Path(f["path"]), f["size"], f["media_type"])
            for f in entry["files"]
        )
        if not all(f.path.is_file() and f.path.stat().st_size == f.size for f in files):
            return None
        result = JobResult(entry["job_id"], entry["params"], files, 0, offline=entry["offline"])
        return replace(result, cached=True)
