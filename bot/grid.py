"""The labelled grid that lets people point at an object without pixel coordinates: letters
name the columns (A, B, ...), numbers the rows (1, 2, ...), as many as fit the photo's shape.
The same grid everywhere (the chat pickers, the web, the command line), so a cell names the
same pixels wherever it is typed or clicked."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from .errors import InputError

CELLS_ALONG_LONGER_SIDE = 12  # fine enough to point at a mug on a desk
FEWEST_CELLS = 4
CELL = re.compile(r"([A-Za-z])\s*(\d{1,2})")


@dataclass(frozen=True)
class Grid:
    width: int  # the photo as it is shown (its EXIF orientation applied), in pixels
    height: int
    columns: int
    rows: int

    @classmethod
    def for_size(cls, width: int, height: int) -> Grid:
        if width < 1 or height < 1:
            raise InputError("image", "the photo has no pixels")
        longer = max(width, height)
        along = CELLS_ALONG_LONGER_SIDE
        across = max(FEWEST_CELLS, min(along, round(along * min(width, height) / longer)))
        columns, rows = (along, across) if width >= height else (across, along)
        # Never more cells than pixels: a cell of a tiny photo is at least one pixel.
        return cls(width, height, min(columns, width), min(rows, height))

    def label(self, column: int, row: int) -> str:
        return f"{string.ascii_uppercase[column]}{row + 1}"

    def cell(self, label: str) -> tuple[int, int]:
        """(column, row) of a label such as "C4"; a clear error for one not on this grid."""
        match = CELL.fullmatch(label.strip())
        last = self.label(self.columns - 1, self.rows - 1)
        if match is None:
            shown = label.strip()[:20]
            raise InputError("cells", f"{shown!r} is not a cell like C4 (A1 to {last})")
        column = string.ascii_uppercase.index(match[1].upper())
        row = int(match[2]) - 1
        if not (0 <= column < self.columns and 0 <= row < self.rows):
            raise InputError(
                "cells", f"{match[0].upper()} is not on this photo's grid (A1 to {last})"
            )
        return column, row

    def bounds(self, label: str) -> tuple[int, int, int, int]:
        """The cell's pixels: x1, y1, x2, y2 (x2 and y2 just past it)."""
        column, row = self.cell(label)
        return (
            column * self.width // self.columns,
            row * self.height // self.rows,
            (column + 1) * self.width // self.columns,
            (row + 1) * self.height // self.rows,
        )

    def centre(self, label: str) -> tuple[int, int]:
        x1, y1, x2, y2 = self.bounds(label)
        return (x1 + x2 - 1) // 2, (y1 + y2 - 1) // 2

    def cell_of(self, x: int, y: int) -> str:
        """The label of the cell holding pixel (x, y)."""
        return self.label(_index(x, self.width, self.columns), _index(y, self.height, self.rows))

    def points(self, text: str) -> tuple[tuple[int, int], ...]:
        """ "B3, C4": the centres of those cells, as points on the object."""
        labels = [part for part in re.split(r"[\s,;]+", text.strip()) if part]
        if not labels:
            raise InputError("cells", "name at least one cell, like C4")
        return tuple(self.centre(label) for label in labels)

    def box(self, text: str) -> tuple[int, int, int, int]:
        """ "A1:D6": the box covering both cells and all between, in either order."""
        corners = [part for part in re.split(r"[\s:\-]+", text.strip()) if part]
        if len(corners) != 2:
            raise InputError("box cells", "two corner cells, like A1:D6")
        (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = (self.bounds(c) for c in corners)
        return min(ax1, bx1), min(ay1, by1), max(ax2, bx2), max(ay2, by2)


def _index(at: int, length: int, parts: int) -> int:
    """Which of `parts` equal spans of `length` (split as bounds() splits them) holds `at`."""
    index = min(parts - 1, at * parts // length)
    while index > 0 and index * length // parts > at:
        index -= 1
    while index < parts - 1 and (index + 1) * length // parts <= at:
        index += 1
    return index


def draw_grid(photo: Image.Image, grid: Grid) -> Image.Image:
    """The photo with the grid over it: thin lines, and each cell's label in its corner on a
    dark patch so it reads on any photo."""
    picture = photo.convert("RGB")
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(overlay)
    size = max(10, min(grid.width // grid.columns, grid.height // grid.rows) // 4)
    font = ImageFont.load_default(size)
    for column in range(grid.columns + 1):
        x = min(grid.width - 1, column * grid.width // grid.columns)
        pen.line([(x, 0), (x, grid.height)], fill=(255, 255, 255, 170), width=1)
    for row in range(grid.rows + 1):
        y = min(grid.height - 1, row * grid.height // grid.rows)
        pen.line([(0, y), (grid.width, y)], fill=(255, 255, 255, 170), width=1)
    for column in range(grid.columns):
        for row in range(grid.rows):
            label = grid.label(column, row)
            x1, y1, _, _ = grid.bounds(label)
            left, top, right, bottom = pen.textbbox((x1 + 3, y1 + 2), label, font=font)
            pen.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(0, 0, 0, 150))
            pen.text((x1 + 3, y1 + 2), label, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(picture.convert("RGBA"), overlay).convert("RGB")
