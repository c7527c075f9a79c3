"""The offline backend makes a real, textured relief of the photo's object."""

from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh
from PIL import Image

from bot.images import ImageLimits, prepare_image
from bot.models import ValidatedInput
from bot.offline import OfflineBackend, cut_out
from tests.conftest import photo_bytes


def validated(data: bytes, **kw) -> ValidatedInput:
    image, _ = prepare_image(data, "image", ImageLimits())
    fields = dict(image=image, prompt=None, bbox=None, points=(), mask=None, seed=123)
    fields.update(kw)
    return ValidatedInput(**fields)


async def nothing(*args):
    pass


async def make(tmp_path, job):
    result = await OfflineBackend().generate(job, tmp_path, nothing, nothing)
    [model] = result.files
    return trimesh.load(model.path, file_type="glb", force="mesh"), result


async def test_glb_is_valid_textured_and_sized_like_the_object(tmp_path):
    mesh, result = await make(tmp_path, validated(photo_bytes(640, 480)))
    assert result.offline and result.cost_micros == 0
    assert len(mesh.faces) > 1000
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    texture = mesh.visual.material.baseColorTexture
    colours = np.asarray(texture.convert("RGB")).reshape(-1, 3)
    assert (colours[:, 0] > 150).mean() > 0.3  # the red disc is the texture
    width, height, depth = mesh.extents
    assert width == pytest.approx(height, rel=0.15)  # a disc comes out round
    assert 0.05 < depth < width  # a relief, not a flat card


def test_background_estimate_finds_the_disc():
    photo = Image.open(io.BytesIO(photo_bytes(640, 480)))
    mask = np.asarray(cut_out(photo, None, None, ())) > 0
    assert mask[240, 320] and not mask[10, 10]
    expected = np.pi * (480 * 0.3) ** 2 / (640 * 480)
    assert mask.mean() == pytest.approx(expected, rel=0.1)


def test_box_points_and_mask_choose_the_region():
    data = photo_bytes(640, 480)
    photo = Image.open(io.BytesIO(data))
    boxed = np.asarray(cut_out(photo, None, (300, 200, 640, 480), ())) > 0
    assert not boxed[:, :300].any() and boxed[240, 400]
    pointed = np.asarray(cut_out(photo, None, None, ((320, 240),))) > 0
    assert pointed[240, 320] and not pointed[10, 10]
    given = Image.new("L", (640, 480), 0)
    given.paste(255, (0, 0, 100, 100))
    masked = np.asarray(cut_out(photo, given, None, ())) > 0
    assert masked[50, 50] and not masked[240, 320]


def test_plain_photo_falls_back_to_the_middle():
    flat = io.BytesIO()
    Image.new("RGB", (300, 200), (128, 128, 128)).save(flat, "PNG")
    mask = np.asarray(cut_out(Image.open(flat), None, None, ())) > 0
    assert mask[100, 150] and not mask[0, 0]
