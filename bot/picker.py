"""Pick the object before paying: the photo with its labelled grid, the points and box a
member chooses (cells in a chat, clicks on the web page), a preview of them, and only then
the job, with those points and that box in the photo's own pixels.

A pick lives in DATA_DIR/picks/ID/ (the photo and its state), so any instance sharing the
data folder can carry it on, and it outlives a restart; it expires after 15 minutes and is
made at most once (the state file is renamed when taken, which only one process can do)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .downloads import PICK_ID
from .errors import BotError, InputError
from .grid import Grid, draw_grid
from .images import oriented_size
from .models import ImageSource, JobRequest, Requester

if TYPE_CHECKING:
    from .images import InputValidator
    from .service import Service

log = logging.getLogger(__name__)

PICK_LIFETIME_S = 15 * 60
MAX_POINTS = 10  # more would not say more about one object
PREVIEW_SIDE = 1280  # the chat's preview: labels still read on a phone
PAGE_PHOTO_SIDE = 2048  # the web page's copy: fine enough for a click at full precision
Box = tuple[int, int, int, int]
Point = tuple[int, int]


class PickGone(BotError):
    """The pick expired, was made or cancelled already, or never existed."""

    code = "pick_gone"


EXPIRED = PickGone("This pick has expired (15 minutes); start again with /sam3d.")
USED = PickGone("This pick was already made or cancelled.")


@dataclass
class Pick:
    """One member's pick in progress. Points and the box are in the photo's pixels as it is
    shown (its EXIF orientation applied), as typed boxes and points are."""

    id: str
    requester: Requester
    width: int
    height: int
    created_at: float
    prompt: str | None = None
    seed: int | str | None = None
    name: str = "photo"
    reply_to: dict[str, Any] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    box: Box | None = None
    corner: str | None = None  # the box's first corner cell, until the second is chosen
    column: str | None = None  # the cell being pointed at in a chat (column letter, row number)
    row: str | None = None
    history: list[str] = field(default_factory=list)  # "point" / "box", for Undo
    version: int = 0  # one more with each change: a picture's address names it (caches)

    @property
    def grid(self) -> Grid:
        return Grid.for_size(self.width, self.height)

    @property
    def cursor(self) -> str | None:
        return f"{self.column}{self.row}" if self.column and self.row else None

    @property
    def expires_at(self) -> float:
        return self.created_at + PICK_LIFETIME_S

    def describe(self) -> str:
        """What is chosen, in words, for the picker's message."""
        grid = self.grid
        parts = []
        if self.points:
            cells = ", ".join(grid.cell_of(x, y) for x, y in self.points)
            parts.append(f"points {cells}")
        if self.box:
            x1, y1, x2, y2 = self.box
            parts.append(f"box {grid.cell_of(x1, y1)}:{grid.cell_of(x2 - 1, y2 - 1)}")
        if self.corner:
            parts.append(f"box from {self.corner} (choose the other corner)")
        return "; ".join(parts) if parts else "nothing yet (the model then guesses)"

    # -- choosing cells, as the chat pickers do ----------------------------------------------

    def point_at(self, column: str | None = None, row: str | None = None) -> None:
        """Move the chat's cursor to a column and/or row."""
        if column is not None:
            self.column = column
        if row is not None:
            self.row = row
        if self.cursor is not None:
            self.grid.cell(self.cursor)  # a cell off this grid is refused here

    def add_point(self) -> None:
        cell = self._cursor_cell()
        if len(self.points) >= MAX_POINTS:
            raise InputError("points", f"at most {MAX_POINTS} points")
        self.points.append(self.grid.centre(cell))
        self.history.append("point")

    def box_corner(self) -> None:
        """The first press marks a corner; the second makes the box between the two."""
        cell = self._cursor_cell()
        if self.corner is None:
            self.corner = cell
            return
        self.box = self.grid.box(f"{self.corner}:{cell}")
        self.corner = None
        self.history.append("box")

    def undo(self) -> None:
        if self.corner is not None:
            self.corner = None
        elif self.history:
            last = self.history.pop()
            if last == "point" and self.points:
                self.points.pop()
            elif last == "box":
                self.box = None

    def choose_cells(self, points: list[str], box: tuple[str, str] | None) -> None:
        """Points as cells and a box as two corner cells at once (Slack's multi-selects)."""
        grid = self.grid
        if len(points) > MAX_POINTS:
            raise InputError("points", f"at most {MAX_POINTS} points")
        self.points = [grid.centre(cell) for cell in points]
        self.box = grid.box(f"{box[0]}:{box[1]}") if box else None
        self.history = ["point"] * len(self.points) + (["box"] if self.box else [])

    def choose_pixels(self, points: list[Point], box: Box | None) -> None:
        """Points and a box in the photo's pixels (the web page), each checked to lie on it."""
        if len(points) > MAX_POINTS:
            raise InputError("points", f"at most {MAX_POINTS} points")
        for x, y in points:
            if not (0 <= x < self.width and 0 <= y < self.height):
                raise InputError("points", f"({x}, {y}) is not on the photo")
        if box is not None:
            x1, y1, x2, y2 = box
            if not (0 <= x1 < x2 <= self.width and 0 <= y1 < y2 <= self.height):
                raise InputError("bbox", "the box must lie on the photo and have an area")
        self.points, self.box, self.corner = list(points), box, None

    def _cursor_cell(self) -> str:
        if self.cursor is None:
            raise InputError("cell", "choose a column and a row first")
        return self.cursor

    # -- the job it makes --------------------------------------------------------------------

    def request(self, photo: bytes, reply_to: dict[str, Any] | None = None) -> JobRequest:
        return JobRequest(
            requester=self.requester,
            image=ImageSource.from_bytes(photo, self.name),
            prompt=self.prompt,
            bbox=",".join(map(str, self.box)) if self.box else None,
            points=";".join(f"{x},{y}" for x, y in self.points) or None,
            seed=self.seed,
            reply_to=self.reply_to if reply_to is None else reply_to,
        )

    def to_json(self) -> str:
        state = asdict(self)
        state["requester"]["roles"] = list(self.requester.roles)
        return json.dumps(state)

    @classmethod
    def from_json(cls, text: str) -> Pick:
        state = json.loads(text)
        who = state.pop("requester")
        who["roles"] = tuple(who.get("roles", ()))
        state["points"] = [(int(x), int(y)) for x, y in state.get("points", [])]
        box = state.get("box")
        state["box"] = (int(box[0]), int(box[1]), int(box[2]), int(box[3])) if box else None
        return cls(requester=Requester(**who), **state)


class PickStore:
    """Picks as files under DATA_DIR/picks: each write lands whole (written aside, then
    renamed), and taking a pick is one rename, which only one process can win."""

    def __init__(self, data_dir: Path | str, clock: Callable[[], float] = time.time):
        self.root = Path(data_dir) / "picks"
        self._clock = clock

    def create(self, pick: Pick, photo: bytes, shown: bytes) -> None:
        folder = self.root / pick.id
        folder.mkdir(parents=True, exist_ok=False)
        _write_whole(folder / "photo", photo)
        _write_whole(folder / "shown.jpg", shown)
        _write_whole(folder / "state.json", pick.to_json().encode())

    def load(self, pick_id: str) -> Pick:
        folder = self._folder(pick_id)
        try:
            pick = Pick.from_json((folder / "state.json").read_text())
        except FileNotFoundError:
            raise USED if (folder / "taken.json").exists() else EXPIRED from None
        except (ValueError, TypeError, KeyError):
            raise EXPIRED from None
        if self._clock() >= pick.expires_at:
            raise EXPIRED
        return pick

    def save(self, pick: Pick) -> None:
        folder = self._folder(pick.id)
        if not (folder / "state.json").exists():
            raise USED
        pick.version += 1
        _write_whole(folder / "state.json", pick.to_json().encode())

    def take(self, pick_id: str) -> tuple[Pick, bytes]:
        """The pick and its photo, once: a second taker (another press, the web page, another
        instance) gets USED."""
        self.load(pick_id)  # expired or taken: said as such
        folder = self._folder(pick_id)
        try:
            os.rename(folder / "state.json", folder / "taken.json")
        except FileNotFoundError:
            raise USED from None
        taken = Pick.from_json((folder / "taken.json").read_text())
        return taken, (folder / "photo").read_bytes()

    def photo(self, pick_id: str, name: str = "photo") -> bytes:
        try:
            return (self._folder(pick_id) / name).read_bytes()
        except FileNotFoundError:
            raise EXPIRED from None

    def prune(self) -> int:
        """Remove picks past their time (and a minute more, for a press already on its way)."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            try:
                state = next(
                    (folder / n for n in ("state.json", "taken.json") if (folder / n).exists()),
                    None,
                )
                created = Pick.from_json(state.read_text()).created_at if state else 0.0
            except (OSError, ValueError, TypeError, KeyError):
                created = 0.0
            if self._clock() >= created + PICK_LIFETIME_S + 60:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def forget(self, requester_key: str) -> int:
        """ "Forget me": this member's picks (their photos) removed, made or not."""
        removed = 0
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            for name in ("state.json", "taken.json"):
                try:
                    pick = Pick.from_json((folder / name).read_text())
                except (OSError, ValueError, TypeError, KeyError):
                    continue
                if pick.requester.key == requester_key:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
                break
        return removed

    def _folder(self, pick_id: str) -> Path:
        if not PICK_ID.fullmatch(pick_id):
            raise EXPIRED
        return self.root / pick_id


def _write_whole(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- pictures ----------------------------------------------------------------------------------


def shown_photo(photo: bytes, longest: int = PAGE_PHOTO_SIDE) -> Image.Image:
    """The photo as people see it (EXIF orientation applied), at most `longest` pixels."""
    with Image.open(io.BytesIO(photo)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return image


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return out.getvalue()


POINT = (46, 204, 113)
BOX = (255, 196, 0)
CURSOR = (0, 200, 255)


def draw_pick(shown: Image.Image, pick: Pick, longest: int = PREVIEW_SIDE) -> Image.Image:
    """The preview: the photo with its grid, the cell being pointed at, the points (numbered)
    and the box, drawn at the size a chat shows."""
    picture = shown.copy()
    picture.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    full = pick.grid
    scale_x, scale_y = picture.width / full.width, picture.height / full.height
    # The same cells at the preview's size (not a grid of its own: rounding could differ).
    picture = draw_grid(picture, Grid(picture.width, picture.height, full.columns, full.rows))
    pen = ImageDraw.Draw(picture)
    thick = max(2, picture.width // 300)

    def on_preview(x1: int, y1: int, x2: int, y2: int) -> tuple[int, int, int, int]:
        return (round(x1 * scale_x), round(y1 * scale_y), round(x2 * scale_x), round(y2 * scale_y))

    for cell, colour in ((pick.cursor, CURSOR), (pick.corner, BOX)):
        if cell is not None:
            pen.rectangle(on_preview(*full.bounds(cell)), outline=colour, width=thick * 2)
    if pick.box is not None:
        pen.rectangle(on_preview(*pick.box), outline=BOX, width=thick * 2)
    radius = max(6, picture.width // 90)
    font = ImageFont.load_default(radius * 2)
    for number, (x, y) in enumerate(pick.points, start=1):
        cx, cy = round(x * scale_x), round(y * scale_y)
        pen.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius),
            fill=POINT,
            outline=(255, 255, 255),
            width=thick,
        )
        pen.text((cx + radius + 2, cy - radius), str(number), fill=(255, 255, 255), font=font)
    return picture


# -- the flow ----------------------------------------------------------------------------------

# Starts a made pick's job where its platform reports (the chat; the terminal for the CLI).
Starter = Callable[[Pick, JobRequest], Awaitable[None]]


class Picker:
    """The steps every front end shares: begin (checks first, then the grid), change,
    preview, and make or cancel."""

    def __init__(
        self,
        service: Service,
        validator: InputValidator,
        store: PickStore,
        clock: Callable[[], float] = time.time,
    ):
        self._service = service
        self._validator = validator
        self.store = store
        self._clock = clock
        self._starters: dict[str, Starter] = {}

    def starts_jobs_for(self, platform: str, starter: Starter) -> None:
        self._starters[platform] = starter

    async def begin(self, request: JobRequest) -> Pick:
        """Check that this member may start a job now (quota, budget, blocks, disk), and that
        the photo and settings are good, before anyone picks anything."""
        await self._service.check_admission(request.requester)
        field_name = "image_url" if request.image.kind == "url" else "image"
        photo = await self._validator.load_bytes(request.image, field_name)
        whole = replace(request, image=ImageSource.from_bytes(photo, request.image.name))
        await self._validator.validate(replace(whole, bbox=None, points=None))
        width, height = await asyncio.to_thread(oriented_size, photo)
        pick = Pick(
            id=secrets.token_urlsafe(12),
            requester=request.requester,
            width=width,
            height=height,
            created_at=self._clock(),
            prompt=request.prompt,
            seed=request.seed,
            name=request.image.name or "photo",
            reply_to=request.reply_to,
        )
        shown = await asyncio.to_thread(lambda: jpeg(shown_photo(photo)))
        await asyncio.to_thread(self.store.create, pick, photo, shown)
        return pick

    async def load(self, pick_id: str, requester: Requester | None = None) -> Pick:
        pick = await asyncio.to_thread(self.store.load, pick_id)
        if requester is not None and requester.key != pick.requester.key:
            raise PickGone("This pick is someone else's; start your own with /sam3d.")
        return pick

    async def change(self, pick_id: str, requester: Requester, how: Callable[[Pick], None]) -> Pick:
        pick = await self.load(pick_id, requester)
        how(pick)
        await asyncio.to_thread(self.store.save, pick)
        return pick

    async def preview(self, pick: Pick) -> bytes:
        """The photo with the grid and what is chosen, as a JPEG for the chat."""

        def draw() -> bytes:
            shown = Image.open(io.BytesIO(self.store.photo(pick.id, "shown.jpg")))
            return jpeg(draw_pick(shown, pick))

        return await asyncio.to_thread(draw)

    async def price(self, requester: Requester) -> tuple[str, str | None]:
        """What a job costs ("$0.065", or "free" offline) and what the quota leaves."""
        price = self._service.price_micros
        cost = "free" if price == 0 else f"${price / 1_000_000:.3f}"
        status = await self._service.quota(requester)
        if status.left is None:
            return cost, None
        when = "today" if status.window_hours == 24 else f"in {status.window_hours:g} h"
        return cost, f"{status.left} left {when}"

    async def price_label(self, requester: Requester) -> str:
        """ "Make it ($0.065, 4 left today)": what pressing it costs and leaves."""
        cost, left = await self.price(requester)
        return f"Make it ({cost}, {left})" if left else f"Make it ({cost})"

    async def take(
        self,
        pick_id: str,
        requester: Requester | None = None,
        chosen: Callable[[Pick], None] | None = None,
    ) -> tuple[Pick, bytes]:
        """The pick, made now (once); `chosen` sets what the web page sent."""
        pick = await self.load(pick_id, requester)
        if chosen is not None:
            chosen(pick)  # checked before taking: a bad click leaves the pick to try again
        taken, photo = await asyncio.to_thread(self.store.take, pick_id)
        if chosen is not None:
            chosen(taken)
        return taken, photo

    async def make_from_web(self, pick_id: str, points: list[Point], box: Box | None) -> Pick:
        """The web page's Make it: the job starts where the pick began (the chat)."""
        pick = await self.load(pick_id)
        starter = self._starters.get(pick.requester.platform)
        if starter is None:
            raise PickGone("This bot cannot start that pick here; start again in the chat.")
        taken, photo = await self.take(pick_id, chosen=lambda p: p.choose_pixels(points, box))
        await starter(taken, taken.request(photo))
        return taken

    async def cancel(self, pick_id: str, requester: Requester) -> None:
        await self.load(pick_id, requester)
        await asyncio.to_thread(self.store.take, pick_id)

    async def prune(self) -> int:
        return await asyncio.to_thread(self.store.prune)
