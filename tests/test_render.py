"""Pictures of every kind of model the API sends, judged by their pixels."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import trimesh
from PIL import Image

from bot.errors import RenderError
from bot.models import FileKind, OutputFile
from bot.render.inspect import RenderLimits, inspect_model, load_splat
from bot.render.renderer import F3dRenderer, RenderOptions, choose_source
from tests.fakes.models3d import fixture, made_glb, made_splat_ply

pytestmark = pytest.mark.filterwarnings("ignore:The test <Function")  # sync tests here too
BACKDROP = np.array([0xE9, 0xE9, 0xEC])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def renderer():
    renderer = F3dRenderer(RenderOptions(size=256, turntable_size=128, turntable_frames=8))
    await renderer.start()
    yield renderer
    await renderer.close()


def need(name: str) -> Path:
    path = fixture(name)
    if path is None:
        pytest.skip(f"../shared/fixtures/{name} is not here")
    return path


def as_files(*paths: Path, kind=FileKind.MESH) -> tuple[OutputFile, ...]:
    return tuple(OutputFile(kind, p, p.stat().st_size, "") for p in paths)


class Picture:
    """What a person would check: is something there, centred, whole, and in colour."""

    def __init__(self, path: Path):
        self.pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        self.mask = np.abs(self.pixels - BACKDROP).sum(axis=2) > 24
        rows, cols = np.nonzero(self.mask)
        self.size = self.mask.shape[0]
        self.box = None
        if len(rows):  # where the object is, as the eye sees it: stray specks aside
            left, right = np.percentile(cols, [0.5, 99.5])
            top, bottom = np.percentile(rows, [0.5, 99.5])
            self.box = (left, top, right, bottom)

    @property
    def interior(self) -> np.ndarray:
        """The object's pixels whose four neighbours are the object too."""
        inner = self.mask.copy()
        for axis in (0, 1):
            for step in (1, -1):
                inner &= np.roll(self.mask, step, axis)
        return inner

    @property
    def coverage(self) -> float:
        return float(self.mask.mean())

    def assert_framed(self) -> None:
        assert self.box is not None, "the picture is blank"
        left, top, right, bottom = self.box
        centre = np.array([(left + right) / 2, (top + bottom) / 2]) / self.size
        assert np.abs(centre - 0.5).max() < 0.08, f"off centre: {centre}"
        longest = max(right - left, bottom - top) / self.size
        assert 0.6 < longest < 0.995, f"the object spans {longest:.2f} of the picture"
        edge = np.concatenate([self.mask[0], self.mask[-1], self.mask[:, 0], self.mask[:, -1]])
        assert edge.mean() < 0.12, "the object is cut by the edge"

    def colour(self) -> np.ndarray:
        return self.pixels[self.mask].mean(axis=0)


async def thumb(renderer, files, tmp_path) -> Picture:
    [out] = await renderer.thumbnail(files, tmp_path)
    assert out.kind is FileKind.THUMBNAIL and out.media_type == "image/png"
    return Picture(out.path)


# --- every input the API can send -----------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_real_sam3d_mesh_positions_only(renderer, tmp_path):
    picture = await thumb(renderer, as_files(need("sam3d_objects_0.glb")), tmp_path)
    picture.assert_framed()
    assert picture.coverage > 0.05
    # Lit with normals: shaded inside its outline (edges aside, which anti-aliasing softens),
    # where a flat silhouette would be one colour.
    low, high = np.percentile(picture.pixels[picture.interior].sum(axis=1), [5, 95])
    assert high - low > 12


@pytest.mark.asyncio(loop_scope="module")
async def test_real_splat_is_drawn_in_its_colours(renderer, tmp_path):
    picture = await thumb(
        renderer, as_files(need("donut_3dgs_sh0.ply"), kind=FileKind.SPLAT), tmp_path
    )
    picture.assert_framed()
    red, green, blue = picture.colour()
    assert red > green + 15 and blue > green  # pink icing


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("khronos_Duck.glb", lambda r, g, b: r > 150 and g > 120 and b < 90),  # yellow
        ("draco_Box_Draco.glb", lambda r, g, b: r > 120 and g < 60 and b < 60),  # red
        (
            "khronos_TextureTransformTest_packed.glb",
            lambda r, g, b: max(r, g, b) - min(r, g, b) > 20,
        ),
        ("sam3d_body_human.ply", lambda r, g, b: b > r + 10),  # light blue vertex colours
    ],
)
@pytest.mark.asyncio(loop_scope="module")
async def test_fixtures_are_framed_and_coloured(renderer, tmp_path, name, check):
    picture = await thumb(renderer, as_files(need(name)), tmp_path)
    picture.assert_framed()
    assert check(*picture.colour()), picture.colour()


@pytest.mark.asyncio(loop_scope="module")
async def test_texture_transform_shows_the_correct_tiles(renderer, tmp_path):
    picture = await thumb(
        renderer, as_files(need("khronos_TextureTransformTest_packed.glb")), tmp_path
    )
    red = (
        (picture.pixels[..., 0] > 170)
        & (picture.pixels[..., 1] < 80)
        & (picture.pixels[..., 2] < 80)
    ).mean()
    assert red < 0.01  # the test model shows red crosses where transforms are ignored


@pytest.mark.asyncio(loop_scope="module")
async def test_made_models_vertex_colours_and_both_splat_layouts(renderer, tmp_path):
    glb = tmp_path / "sphere.glb"
    glb.write_bytes(made_glb())
    sphere = await thumb(renderer, as_files(glb), tmp_path / "a")
    sphere.assert_framed()
    r, g, b = sphere.colour()
    assert r > g + 40 and r > b + 40
    splat = tmp_path / "sam3d.ply"
    splat.write_bytes(made_splat_ply(5000))
    (await thumb(renderer, as_files(splat, kind=FileKind.SPLAT), tmp_path / "b")).assert_framed()
    inria = tmp_path / "inria.ply"
    inria.write_bytes(inria_splat(5000))
    picture = await thumb(renderer, as_files(inria, kind=FileKind.SPLAT), tmp_path / "c")
    picture.assert_framed()
    r, g, b = picture.colour()
    assert r > g + 20 > b + 40  # orange, from f_dc alone (f_rest_* ignored)


def inria_splat(count: int) -> bytes:
    """The INRIA layout: normals, f_dc, 45 f_rest_*, opacity, scale, rot."""
    source = load_splat_bytes(made_splat_ply(count))
    names = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    table = np.zeros((count, len(names)), dtype="<f4")
    for index, name in enumerate(names):
        if name in source.dtype.names:
            table[:, index] = source[name]
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {count}\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    return header.encode() + table.tobytes()


def load_splat_bytes(data: bytes):
    path = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    target = path / f"splat-{time.monotonic_ns()}.ply"
    target.write_bytes(data)
    try:
        return load_splat(target)
    finally:
        target.unlink()


@pytest.mark.asyncio(loop_scope="module")
async def test_z_up_splat_is_right_side_up(renderer, tmp_path):
    """A splat cone pointing up +Z (SAM 3D's convention) must point up in the picture."""
    count = 6000
    rng = np.random.default_rng(1)
    height = rng.uniform(0, 1, count)
    angle = rng.uniform(0, 2 * np.pi, count)
    radius = (1 - height) * 0.4
    data = np.frombuffer(made_splat_ply(count)[-count * 17 * 4 :], dtype="<f4").reshape(count, 17)
    data = data.copy()
    data[:, 0], data[:, 1], data[:, 2] = radius * np.cos(angle), radius * np.sin(angle), height
    header = made_splat_ply(count)[: -count * 17 * 4]
    path = tmp_path / "cone.ply"
    path.write_bytes(header + data.tobytes())
    picture = await thumb(renderer, as_files(path, kind=FileKind.SPLAT), tmp_path)
    rows = np.nonzero(picture.mask)[0]
    top, bottom = rows.min(), rows.max()
    width_near_top = picture.mask[top + (bottom - top) // 8].sum()
    width_near_bottom = picture.mask[bottom - (bottom - top) // 8].sum()
    assert width_near_top < width_near_bottom  # the tip is at the top


@pytest.mark.asyncio(loop_scope="module")
async def test_mesh_ply_without_colour(renderer, tmp_path):
    path = tmp_path / "box.ply"
    path.write_bytes(trimesh.creation.box().export(file_type="ply"))
    (await thumb(renderer, as_files(path), tmp_path)).assert_framed()


# --- the right source -----------------------------------------------------------------------


def test_auto_prefers_the_splat_when_the_mesh_has_no_colour(tmp_path):
    plain = tmp_path / "plain.glb"
    plain.write_bytes(trimesh.creation.box().export(file_type="glb"))
    coloured = tmp_path / "coloured.glb"
    coloured.write_bytes(made_glb())
    splat = tmp_path / "s.ply"
    splat.write_bytes(made_splat_ply(100))
    limits = RenderLimits()
    with_plain = as_files(plain) + as_files(splat, kind=FileKind.SPLAT)
    assert choose_source(with_plain, "auto", limits).path == splat
    assert choose_source(with_plain, "mesh", limits).path == plain
    with_colour = as_files(coloured) + as_files(splat, kind=FileKind.SPLAT)
    assert choose_source(with_colour, "auto", limits).path == coloured
    assert choose_source(with_colour, "splat", limits).path == splat


# --- outputs --------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_turntable_frames_turn(renderer, tmp_path):
    glb = tmp_path / "plank.glb"  # not round, so turning shows
    glb.write_bytes(trimesh.creation.box(extents=[1.0, 0.4, 0.15]).export(file_type="glb"))
    webp, gif = await renderer.turntable(as_files(glb), tmp_path)
    assert (webp.media_type, gif.media_type) == ("image/webp", "image/gif")
    for out in (webp, gif):
        animation = Image.open(out.path)
        assert animation.n_frames == 8 and animation.size == (128, 128)
        frames = []
        for index in (0, 2):
            animation.seek(index)
            frames.append(np.asarray(animation.convert("RGB")).astype(int))
        assert np.abs(frames[0] - frames[1]).mean() > 3  # it turns
        assert np.abs(frames[0] - BACKDROP).sum(axis=2).max() > 60  # and is not blank


@pytest.mark.asyncio(loop_scope="module")
async def test_transparent_thumbnail(tmp_path):
    renderer = F3dRenderer(RenderOptions(size=128, background="transparent"))
    glb = tmp_path / "s.glb"
    glb.write_bytes(made_glb())
    try:
        [out] = await renderer.thumbnail(as_files(glb), tmp_path)
    finally:
        await renderer.close()
    alpha = np.asarray(Image.open(out.path))[..., 3]
    assert alpha[0, 0] == 0 and alpha[64, 64] == 255


@pytest.mark.asyncio(loop_scope="module")
async def test_large_splats_are_thinned_for_the_picture(tmp_path):
    splat = tmp_path / "big.ply"
    splat.write_bytes(made_splat_ply(40_000))
    renderer = F3dRenderer(RenderOptions(size=128, limits=RenderLimits(max_splats=10_000)))
    try:
        [out] = await renderer.thumbnail(as_files(splat, kind=FileKind.SPLAT), tmp_path)
    finally:
        await renderer.close()
    assert inspect_model(tmp_path / "render-source.ply").points == 10_000
    Picture(out.path).assert_framed()


# --- bad files and a bad worker -------------------------------------------------------------


def bad_files(folder: Path) -> dict[str, Path]:
    glb = made_glb()
    cases = {
        "html.glb": b"<!DOCTYPE html><html><body>Sign in</body></html>",
        "empty.glb": b"",
        "truncated.glb": glb[: len(glb) // 2],
        "novertices.ply": b"ply\nformat binary_little_endian 1.0\nelement vertex 0\n"
        b"property float x\nend_header\n",
        "lying.glb": lying_glb(glb),
        "meshes5.glb": lying_glb(glb, lambda d: {**d, "meshes": 5}),
        "listroot.glb": lying_glb(glb, lambda d: [d]),
        "stringindices.glb": lying_glb(
            glb, lambda d: {**d, "meshes": [{"primitives": [{"attributes": {"POSITION": "0"}}]}]}
        ),
        "localimage.glb": lying_glb(glb, lambda d: {**d, "images": [{"uri": "/etc/passwd"}]}),
        "parentimage.glb": lying_glb(glb, lambda d: {**d, "images": [{"uri": "../input.img"}]}),
    }
    paths = {}
    for name, data in cases.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def lying_glb(glb: bytes, change=None) -> bytes:
    """A GLB whose JSON says what `change` makes it say (by default: a buffer that claims far
    more bytes than the file carries)."""
    import json
    import struct

    json_length = struct.unpack_from("<I", glb, 12)[0]
    document = json.loads(glb[20 : 20 + json_length])
    if change is None:
        document["buffers"][0]["byteLength"] = 10**9
    else:
        document = change(document)
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    rest = glb[20 + json_length :]
    body = struct.pack("<II", len(text), 0x4E4F534A) + text + rest
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("html.glb", "HTML page"),
        ("empty.glb", "empty"),
        ("truncated.glb", "cut short"),
        ("novertices.ply", "no vertices"),
        ("lying.glb", "claims 1,000,000,000 bytes"),
        ("meshes5.glb", "not a valid glTF document"),
        ("listroot.glb", "not a glTF document"),
        ("stringindices.glb", "not a valid glTF document"),
        ("localimage.glb", "points to outside files"),
        ("parentimage.glb", "points to outside files"),
    ],
)
@pytest.mark.asyncio(loop_scope="module")
async def test_bad_files_get_a_clear_error_at_once(renderer, tmp_path, name, words):
    path = bad_files(tmp_path)[name]
    started = time.monotonic()
    with pytest.raises(RenderError) as caught:
        await renderer.thumbnail(as_files(path), tmp_path)
    assert time.monotonic() - started < 2
    assert words in caught.value.user_message


@pytest.mark.asyncio(loop_scope="module")
async def test_a_crashed_worker_is_replaced(tmp_path):
    renderer = F3dRenderer(RenderOptions(size=128))
    glb = tmp_path / "s.glb"
    glb.write_bytes(made_glb())
    try:
        await renderer.start()
        renderer._worker._process.kill()  # as a graphics driver crash would
        with pytest.raises(RenderError, match="crashed"):
            await renderer.thumbnail(as_files(glb), tmp_path)
        [out] = await renderer.thumbnail(as_files(glb), tmp_path)
        Picture(out.path).assert_framed()
        assert renderer.restarts == 1
    finally:
        await renderer.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_hung_render_times_out_and_the_next_one_works(tmp_path):
    renderer = F3dRenderer(RenderOptions(size=128, timeout_s=0.05))
    glb = tmp_path / "s.glb"
    glb.write_bytes(made_glb(subdivisions=6))
    try:
        await renderer.start()
        with pytest.raises(RenderError, match="longer than 0.05 s"):
            await renderer.thumbnail(as_files(glb), tmp_path)
        renderer.options = RenderOptions(size=128)
        [out] = await renderer.thumbnail(as_files(glb), tmp_path)
        Picture(out.path).assert_framed()
    finally:
        await renderer.close()


def test_size_bounds(tmp_path):
    glb = tmp_path / "s.glb"
    glb.write_bytes(made_glb(subdivisions=3))  # 1,280 triangles
    with pytest.raises(RenderError, match="triangles is more than"):
        inspect_model(glb, RenderLimits(max_triangles=1000))
    with pytest.raises(RenderError, match="more than the renderer takes"):
        inspect_model(glb, RenderLimits(max_bytes=1000))


async def test_the_own_egl_surface_draws_what_f3ds_window_draws(tmp_path):
    """auto reads each picture from an EGL surface of its own (one render); egl goes through
    f3d's render_to_image. The same model must come out the same."""
    model = as_files(need("sam3d_objects_0.glb"))
    pictures = {}
    for backend in ("auto", "egl"):
        renderer = F3dRenderer(RenderOptions(size=256, backend=backend))
        try:
            pictures[backend] = await thumb(renderer, model, tmp_path / backend)
        finally:
            await renderer.close()
    own, f3ds = pictures["auto"], pictures["egl"]
    own.assert_framed()
    assert np.abs(np.array(own.box) - np.array(f3ds.box)).max() <= 3
    assert abs(own.coverage - f3ds.coverage) < 0.01
    assert np.abs(own.colour() - f3ds.colour()).max() < 12


async def test_without_a_surface_of_its_own_the_renderer_uses_f3ds_window(monkeypatch, tmp_path):
    monkeypatch.setenv("PYOPENGL_PLATFORM", "osmesa")  # PyOpenGL then offers no EGL
    renderer = F3dRenderer(RenderOptions(size=128))
    try:
        picture = await thumb(renderer, as_files(need("khronos_Duck.glb")), tmp_path)
    finally:
        await renderer.close()
    picture.assert_framed()
    assert picture.coverage > 0.1
