"""The labelled grid: a cell names the same pixels wherever it is typed, drawn or clicked, and
the command line's --cells / --box-cells are those pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bot.errors import InputError
from bot.grid import CELLS_ALONG_LONGER_SIDE, Grid, draw_grid
from tests.conftest import photo_bytes
from tests.fakes.segmind import API_KEY
from tests.helpers import run_bot

sizes = st.integers(min_value=1, max_value=9000)


@given(sizes, sizes, st.data())
def test_every_pixel_is_in_the_cell_named_for_it(width, height, data):
    grid = Grid.for_size(width, height)
    assert grid.columns <= width and grid.rows <= height  # no cell without pixels
    if min(width, height) >= CELLS_ALONG_LONGER_SIDE:
        assert max(grid.columns, grid.rows) == CELLS_ALONG_LONGER_SIDE
        assert not (grid.columns > grid.rows and width < height)  # the grid has the photo's shape
        assert not (grid.rows > grid.columns and height < width)
    x = data.draw(st.integers(0, width - 1))
    y = data.draw(st.integers(0, height - 1))
    label = grid.cell_of(x, y)
    x1, y1, x2, y2 = grid.bounds(label)
    assert x1 <= x < x2 and y1 <= y < y2
    cx, cy = grid.centre(label)
    assert x1 <= cx < x2 and y1 <= cy < y2
    assert grid.cell(label.lower()) == grid.cell(label)


def test_cells_become_points_and_corner_cells_a_box():
    grid = Grid.for_size(640, 480)  # 12 x 9 cells, each 53 or 54 by 53 or 54 pixels
    assert (grid.columns, grid.rows) == (12, 9)
    assert grid.points("A1, L9") == ((26, 26), (612, 452))
    assert grid.box("D6:A1") == grid.box("a1 : d6") == (0, 0, 213, 320)
    for wrong in ("Z9", "M1", "A10", "hello", ""):
        with pytest.raises(InputError):
            grid.points(wrong)
    with pytest.raises(InputError, match="two corner cells"):
        grid.box("A1")


def test_the_grid_is_drawn_over_the_photo_at_its_size():
    photo = Image.open(io.BytesIO(photo_bytes())).convert("RGB")
    grid = Grid.for_size(*photo.size)
    drawn = draw_grid(photo, grid)
    assert drawn.size == photo.size
    changed = np.any(np.asarray(drawn) != np.asarray(photo), axis=2)
    assert changed.mean() > 0.02  # lines and labels are on it


async def test_sam3d_bot_grid_and_generate_with_cells(tmp_path, fake_segmind):
    (tmp_path / "photo.png").write_bytes(photo_bytes())
    drawn = await run_bot("grid", "photo.png", "-o", "grid.png", cwd=tmp_path)
    assert drawn.code == 0, drawn.err
    with Image.open(tmp_path / "grid.png") as picture, Image.open(tmp_path / "photo.png") as photo:
        assert picture.size == photo.size
        grid = Grid.for_size(*photo.size)
    assert f"A1 to {grid.label(grid.columns - 1, grid.rows - 1)}" in drawn.out
    ran = await run_bot(
        "generate",
        "photo.png",
        "--cells",
        "F4,G5",
        "--box-cells",
        "E3:H6",
        cwd=tmp_path,
        SEGMIND_API_KEY=API_KEY,
        SEGMIND_BASE_URL=fake_segmind.url,
        SEGMIND_POLL_INTERVAL_S="0.05",
    )
    assert ran.code == 0, ran.err
    sent = fake_segmind.counters.payloads[0]
    (fx, fy), (gx, gy) = grid.points("F4,G5")
    assert sent["point_coords"] == f"[[{fx}, {fy}], [{gx}, {gy}]]"
    assert sent["bounding_box"] == "[{}, {}, {}, {}]".format(*grid.box("E3:H6"))
