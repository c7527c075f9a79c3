"""The free offline backend: a textured 2.5D relief of the photo's main object, as a GLB.

Used when no SEGMIND_API_KEY is set, so the bot works (and can be tried) with no account.
It is not SAM 3D: the object is cut out (mask, box, points or a background estimate), given
height from its shape, and wrapped in the photo itself. Every reply says so.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trimesh
from PIL import Image, ImageDraw, ImageFilter

from .models import FileKind, OutputFile, UpstreamResult, ValidatedInput
from .ports import OnProcessing, OnSending, OnSubmitted

Box = tuple[int, int, int, int]  # left, top, right, bottom
Points = tuple[tuple[int, int], ...]
FloatArray = npt.NDArray[np.floating[Any]]
BoolArray = npt.NDArray[np.bool_]
GRID_SIDE = 160  # vertices along the longer side of the object
TEXTURE_SIDE = 1024


class OfflineBackend:
    offline = True

    async def generate(
        self,
        job: ValidatedInput,
        workdir: Path,
        on_submitted: OnSubmitted,
        on_processing: OnProcessing,
        on_sending: OnSending | None = None,
    ) -> UpstreamResult:
        await on_processing()
        path = workdir / "offline.glb"
        await asyncio.to_thread(write_relief_glb, job, path)
        model = OutputFile(FileKind.MESH, path, path.stat().st_size, "model/gltf-binary")
        return UpstreamResult(files=(model,), cost_micros=0, offline=True)

    async def resume(
        self, resume_ref: dict[str, Any], workdir: Path, on_processing: OnProcessing
    ) -> UpstreamResult:
        raise NotImplementedError("offline jobs are never left running upstream")


def write_relief_glb(job: ValidatedInput, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = build_relief(job)
    data = mesh.export(file_type="glb")
    assert isinstance(data, bytes)  # a GLB export is bytes (trimesh's type covers every format)
    path.write_bytes(data)


def build_relief(job: ValidatedInput) -> trimesh.Trimesh:
    photo = Image.open(io.BytesIO(job.image.data))
    photo.load()
    mask_image = Image.open(io.BytesIO(job.mask.data)).convert("L") if job.mask else None
    foreground = cut_out(photo, mask_image, job.bbox, job.points)
    left, top, right, bottom = _bounds(foreground)
    crop_photo = photo.convert("RGB").crop((left, top, right, bottom))
    crop_mask = foreground.crop((left, top, right, bottom))
    return relief_mesh(crop_photo, crop_mask)


# --- cutting the object out ---------------------------------------------------------------------


def _lowest(band: Image.Image) -> float:
    """The lowest value of a one-band image (Pillow types extrema for every mode at once)."""
    low, _ = band.getextrema()
    assert isinstance(low, int | float)
    return low


def cut_out(
    photo: Image.Image, mask: Image.Image | None, bbox: Box | None, points: Points
) -> Image.Image:
    """A 0/255 mask of the main object, at the photo's size."""
    width, height = photo.size
    if mask is not None:
        chosen = mask.point(lambda v: 255 if v > 127 else 0)
        if _share(chosen) > 0.001:
            return chosen
    if photo.mode in ("RGBA", "LA") and _lowest(photo.getchannel("A")) < 128:
        return photo.getchannel("A").point(lambda v: 255 if v > 127 else 0)
    region = bbox or (0, 0, width, height)
    rgb = photo.convert("RGB")
    if points:
        chosen = _grow_from_points(rgb, points, region)
    else:
        chosen = _separate_background(rgb, region)
    share = _share(chosen.crop(region))
    if not 0.02 < share < 0.97:
        chosen = _ellipse(photo.size, region)  # nothing stood out: take the middle of the region
    return chosen


def _share(mask: Image.Image) -> float:
    return float(np.asarray(mask, dtype=np.uint8).mean()) / 255.0


def _separate_background(rgb: Image.Image, region: Box) -> Image.Image:
    """Background = what is connected to the region's border and coloured like it."""
    x1, y1, x2, y2 = region
    crop = rgb.crop(region)
    pixels = np.asarray(crop, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(pixels - background, axis=2)
    # The median spread reads the backdrop's own noise, even where the object touches the border.
    spread = float(np.percentile(np.linalg.norm(border - background, axis=1), 50))
    threshold = max(24.0, spread * 3)
    differs = (distance > threshold) & ~_shadow_of(pixels, background)
    differs = Image.fromarray(np.where(differs, 255, 0).astype(np.uint8))
    differs = differs.filter(ImageFilter.MedianFilter(5))
    # Flood the background in from the border; what it cannot reach is the object.
    flood = differs.copy()
    w, h = flood.size
    for x, y in _border_seeds(w, h):
        if flood.getpixel((x, y)) == 0:
            ImageDraw.floodfill(flood, (x, y), 128)
    inside = flood.point(lambda v: 0 if v == 128 else 255)
    full = Image.new("L", rgb.size, 0)
    full.paste(inside, (x1, y1))
    return full


def _shadow_of(pixels: FloatArray, background: FloatArray) -> BoolArray:
    """Pixels that are the background's colour, only darker: a cast shadow, not the object."""
    chroma = pixels / (pixels.sum(axis=2, keepdims=True) + 1e-3)
    bg_chroma = background / (background.sum() + 1e-3)
    ratio = pixels.sum(axis=2) / (background.sum() + 1e-3)
    shadow: BoolArray = (
        (np.linalg.norm(chroma - bg_chroma, axis=2) < 0.025) & (ratio > 0.3) & (ratio < 1.0)
    )
    return shadow


def _border_seeds(w: int, h: int, step: int = 16) -> Iterator[tuple[int, int]]:
    for x in range(0, w, step):
        yield x, 0
        yield x, h - 1
    for y in range(0, h, step):
        yield 0, y
        yield w - 1, y


def _grow_from_points(rgb: Image.Image, points: Points, region: Box) -> Image.Image:
    """The areas of similar colour around each point the user marked."""
    x1, y1, x2, y2 = region
    work = rgb.copy()
    marker = (1, 254, 3)
    for x, y in points:
        if x1 <= x < x2 and y1 <= y < y2:
            ImageDraw.floodfill(work, (x, y), marker, thresh=48)
    arr = np.asarray(work)
    chosen = np.all(arr == marker, axis=2)
    box = np.zeros_like(chosen)
    box[y1:y2, x1:x2] = True
    mask = Image.fromarray(np.where(chosen & box, 255, 0).astype(np.uint8))
    return mask.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3))


def _ellipse(size: tuple[int, int], region: Box) -> Image.Image:
    mask = Image.new("L", size, 0)
    x1, y1, x2, y2 = region
    inset_x, inset_y = (x2 - x1) * 0.1, (y2 - y1) * 0.1
    ImageDraw.Draw(mask).ellipse((x1 + inset_x, y1 + inset_y, x2 - inset_x, y2 - inset_y), 255)
    return mask


def _bounds(mask: Image.Image) -> tuple[int, int, int, int]:
    box = mask.getbbox() or (0, 0, *mask.size)
    margin = max(2, round(max(box[2] - box[0], box[3] - box[1]) * 0.02))
    return (
        max(0, box[0] - margin),
        max(0, box[1] - margin),
        min(mask.width, box[2] + margin),
        min(mask.height, box[3] + margin),
    )


# --- the relief ---------------------------------------------------------------------------------


def relief_mesh(photo: Image.Image, mask: Image.Image) -> trimesh.Trimesh:
    """Front and back surfaces over the object's outline, the photo as the front's texture."""
    scale = GRID_SIDE / max(photo.size)
    gw, gh = max(2, round(photo.width * scale)), max(2, round(photo.height * scale))
    inside = np.asarray(mask.resize((gw, gh), Image.Resampling.BILINEAR)) > 127
    height = _dome(inside)

    jj, ii = np.mgrid[0:gh, 0:gw]
    size = max(gw, gh) - 1
    x = (ii - (gw - 1) / 2) / size
    y = ((gh - 1) / 2 - jj) / size
    front = np.stack([x, y, height * 0.22], axis=-1).reshape(-1, 3)
    back = np.stack([x, y, -height * 0.12], axis=-1).reshape(-1, 3)
    uv = np.stack([ii / (gw - 1), 1.0 - jj / (gh - 1)], axis=-1).reshape(-1, 2)

    index = np.arange(gw * gh).reshape(gh, gw)
    quad = inside[:-1, :-1] & inside[:-1, 1:] & inside[1:, :-1] & inside[1:, 1:]
    a, b = index[:-1, :-1][quad], index[:-1, 1:][quad]
    c, d = index[1:, :-1][quad], index[1:, 1:][quad]
    front_faces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    back_faces = front_faces[:, ::-1] + gw * gh
    if len(front_faces) == 0:
        raise ValueError("the object is too small to model")

    texture = photo.copy()
    texture.thumbnail((TEXTURE_SIDE, TEXTURE_SIDE))
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.85
    )
    mesh = trimesh.Trimesh(
        vertices=np.concatenate([front, back]),
        faces=np.concatenate([front_faces, back_faces]),
        visual=trimesh.visual.TextureVisuals(uv=np.concatenate([uv, uv]), material=material),
        process=False,
    )
    mesh.remove_unreferenced_vertices()
    return mesh


def _dome(inside: BoolArray) -> FloatArray:
    """Height from the outline: 0 on the rim, rising smoothly inwards (a blurred distance)."""
    mask = Image.fromarray(np.where(inside, 255, 0).astype(np.uint8))
    radius = max(1.0, max(inside.shape) / 10)
    blurred = np.asarray(mask.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255
    rim = inside & ~_eroded(inside)
    height: FloatArray = np.sqrt(np.clip(blurred - 0.5, 0, None) * 2) * inside
    height[rim] = 0.0
    return height


def _eroded(inside: BoolArray) -> BoolArray:
    out = inside.copy()
    out[1:, :] &= inside[:-1, :]
    out[:-1, :] &= inside[1:, :]
    out[:, 1:] &= inside[:, :-1]
    out[:, :-1] &= inside[:, 1:]
    return out
