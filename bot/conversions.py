"""The Formats menu on a result: what it offers, and each conversion of a job's model done
once, on demand, kept beside the job's files (so a second request is instant, and the
retention rule removes it with them). Free: no quota, no credit; bounded in time by the
worker and in number by a semaphore, so a crowd asking at once cannot starve the bot's CPU."""

from __future__ import annotations

import asyncio
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import BotError, InputError
from .formats import ModelFormat, convert
from .models import FileKind, JobResult, OutputFile
from .render.inspect import write_render_splat
from .results import FORMAT_PREFIX, ResultStore

MEDIA_TYPES = {
    ModelFormat.STL: "model/stl",
    ModelFormat.THREE_MF: "model/3mf",
    ModelFormat.OBJ: "application/zip",
    ModelFormat.USDZ: "model/vnd.usdz+zip",
    ModelFormat.GLB: "model/gltf-binary",
}
LIGHT_FACES = 50_000  # a real GLB has ~230k triangles; this opens quickly on any phone
SPLAT_BYTES_EACH = 56  # a thinned splat keeps the 14 float32 properties viewers read
FEWEST_SPLATS = 5_000  # fewer would not be the object any more


@dataclass(frozen=True)
class Choice:
    key: str
    label: str
    format: ModelFormat
    height_mm: float | None = None
    faces: int | None = None

    @property
    def phrase(self) -> str:
        """The label inside a sentence: "your model as stl, for printing"."""
        return self.label[0].lower() + self.label[1:]

    @property
    def file_name(self) -> str:
        """What the member's file is called."""
        return f"model-{self.key}{self.format.suffix}"

    @property
    def kept_as(self) -> str:
        """Its name beside the job's files (never taken for the job's own model)."""
        return f"{FORMAT_PREFIX}{self.key}{self.format.suffix}"


CHOICES = (
    Choice("stl", "STL, for printing", ModelFormat.STL),
    Choice("3mf", "3MF, for printing in colour", ModelFormat.THREE_MF),
    Choice("obj", "OBJ (ZIP), for editing", ModelFormat.OBJ),
    Choice("usdz", "USDZ, for AR on iPhone and iPad", ModelFormat.USDZ),
    Choice("light", f"Lighter GLB ({LIGHT_FACES:,} triangles)", ModelFormat.GLB, faces=LIGHT_FACES),
    Choice("print10", "Printable STL, 10 cm tall", ModelFormat.STL, height_mm=100),
    Choice("print15", "Printable STL, 15 cm tall", ModelFormat.STL, height_mm=150),
    Choice("print20", "Printable STL, 20 cm tall", ModelFormat.STL, height_mm=200),
)
BY_KEY = {choice.key: choice for choice in CHOICES}
GONE = "This model's files are no longer kept, so it cannot be converted; make it again."


def choice_of(key: str) -> Choice:
    found = BY_KEY.get(key)
    if found is None:
        raise InputError("format", "that is not one of the formats offered")
    return found


class Conversions:
    def __init__(self, results: ResultStore, at_once: int = 1):
        self._results = results
        self._slots = asyncio.Semaphore(at_once)
        self._making: dict[Path, asyncio.Lock] = {}

    async def file_for(self, job_id: str, key: str) -> tuple[OutputFile, bool]:
        """The job's model in the chosen form, and whether it was made just now (False: from
        what an earlier request made)."""
        choice = choice_of(key)
        upstream = await self._results.upstream_of(job_id)
        if upstream is None:
            raise InputError("model", GONE)
        mesh = next((f for f in upstream.files if f.kind is FileKind.MESH), None)
        if mesh is None:
            raise InputError("model", "this job made no mesh to convert, only a splat")
        target = mesh.path.parent / choice.kept_as
        lock = self._making.setdefault(target, asyncio.Lock())
        try:
            async with lock:  # the same conversion asked twice at once is made once
                made = False
                if not await asyncio.to_thread(target.is_file):
                    async with self._slots:
                        await convert(
                            mesh.path, choice.format, target, choice.height_mm, choice.faces
                        )
                    made = True
        finally:
            if not lock.locked():  # a later ask finds the file made
                self._making.pop(target, None)
        size = (await asyncio.to_thread(target.stat)).st_size
        return OutputFile(FileKind.OTHER, target, size, MEDIA_TYPES[choice.format]), made

    async def zipped(self, file: OutputFile, name: str) -> OutputFile:
        """The file in a ZIP (kept beside it): a binary STL shrinks to about half, which is
        what lets a real model's STL through a chat's 10 MiB upload limit."""
        target = file.path.with_name(file.path.name + ".zip")

        def pack() -> None:
            if target.is_file():
                return
            partial = target.with_name(f".{target.name}.part")
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.write(file.path, name)
            os.replace(partial, target)

        await asyncio.to_thread(pack)
        size = (await asyncio.to_thread(target.stat)).st_size
        return OutputFile(FileKind.OTHER, target, size, "application/zip")

    async def with_light_splat(self, result: JobResult, max_bytes: int) -> JobResult:
        """The result with its splat thinned to fit `max_bytes` beside it (the most opaque
        and largest gaussians kept, as for the pictures), where the splat itself does not
        fit: a chat attaches the light one and links the full one. Kept, so made once."""
        splat = result.file(FileKind.SPLAT)
        count = (max_bytes - 4096) // SPLAT_BYTES_EACH
        if splat is None or splat.size <= max_bytes or count < FEWEST_SPLATS:
            return result
        if result.file(FileKind.LIGHT_SPLAT) is not None:
            return result
        target = splat.path.with_name(f"{FORMAT_PREFIX}splat-{count}.ply")

        def thin() -> None:
            if target.is_file():
                return
            partial = target.with_name(f".{target.name}.part")
            write_render_splat(splat.path, partial, count)
            os.replace(partial, target)

        try:
            async with self._slots:
                await asyncio.to_thread(thin)
        except (BotError, OSError, ValueError):  # an odd splat: the full one's link will do
            return result
        size = (await asyncio.to_thread(target.stat)).st_size
        light = OutputFile(FileKind.LIGHT_SPLAT, target, size, "application/octet-stream")
        return replace(result, files=(*result.files, light))
