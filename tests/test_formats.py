"""The model in other formats (issue 19): each file written is opened again by a reader of its
own (trimesh, lib3mf, Pixar's pxr) and must have the triangles, the colours, the height and
the ground the conversion promised."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bot.errors import InputError, RenderError
from bot.formats import ModelFormat, convert, export_model
from tests.helpers import ROOT, run_bot

FIXTURES = ROOT.parent / "shared" / "fixtures"
SAM3D_GLB = FIXTURES / "sam3d_objects_0.glb"  # 227,278 triangles, positions only
COLOURED_PLY = FIXTURES / "sam3d_body_human.ply"  # 36,874 faces, RGBA per vertex
TEXTURED_GLB = FIXTURES / "khronos_Duck.glb"  # 4,212 triangles, a PNG texture
SPLAT = FIXTURES / "donut_3dgs_sh0.ply"

needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures absent")
pytestmark = [needs_fixtures, pytest.mark.slow]  # real models: seconds in all


def reopened(path: Path):
    import trimesh

    return trimesh.load(str(path), force="mesh", process=False)


def height_and_ground(vertices: np.ndarray, axis: int) -> tuple[float, float]:
    return float(np.ptp(vertices[:, axis])), float(vertices[:, axis].min())


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The real SAM 3D GLB in every format, 150 mm tall (the slow part, once)."""
    folder = tmp_path_factory.mktemp("formats")
    made = {}
    for fmt in ModelFormat:
        out = folder / f"model{fmt.suffix}"
        export_model(SAM3D_GLB, fmt, out, height_mm=150)
        made[fmt.value] = out
    return made


def test_stl_is_binary_z_up_150_mm_on_the_ground(exported):
    data = exported["stl"].read_bytes()
    (count,) = struct.unpack_from("<I", data, 80)  # binary STL: header, count, 50 B each
    assert count == 227_278 and len(data) == 84 + 50 * count
    mesh = reopened(exported["stl"])
    tall, ground = height_and_ground(np.asarray(mesh.vertices), axis=2)
    assert abs(tall - 150) <= 0.5 and abs(ground) < 1e-3


def test_3mf_is_millimetres_z_up(exported):
    mesh = reopened(exported["3mf"])
    assert len(mesh.faces) == 227_278
    tall, ground = height_and_ground(np.asarray(mesh.vertices), axis=2)
    assert abs(tall - 150) <= 0.5 and abs(ground) < 1e-3


def test_obj_is_a_zip_with_its_material_y_up_in_metres(exported, tmp_path):
    with zipfile.ZipFile(exported["obj"]) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path)
    assert {"model.obj", "model.mtl"} <= names
    assert "Kd 0.80" in (tmp_path / "model.mtl").read_text()  # clay, not a white void
    mesh = reopened(tmp_path / "model.obj")
    assert len(mesh.faces) == 227_278
    tall, ground = height_and_ground(np.asarray(mesh.vertices), axis=1)
    assert abs(tall * 1000 - 150) <= 0.5 and abs(ground) < 1e-6


def test_usdz_opens_in_pxr_y_up_in_metres_with_a_material(exported):
    from pxr import Usd, UsdGeom, UsdShade

    stage = Usd.Stage.Open(str(exported["usdz"]))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    [mesh] = [UsdGeom.Mesh(p) for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert len(mesh.GetFaceVertexCountsAttr().Get()) == 227_278
    points = np.asarray(mesh.GetPointsAttr().Get())
    tall, ground = height_and_ground(points, axis=1)
    assert abs(tall * 1000 - 150) <= 0.5 and abs(ground) < 1e-6
    material, _ = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()
    assert material  # a surface, so Quick Look does not draw it untextured white


def test_a_lighter_glb_has_about_the_faces_asked_and_the_same_silhouette(tmp_path):
    out = tmp_path / "light.glb"
    done = export_model(SAM3D_GLB, ModelFormat.GLB, out, faces=50_000)
    light, full = reopened(out), reopened(SAM3D_GLB)
    assert abs(len(light.faces) - 50_000) <= 2_500 and done.faces == len(light.faces)
    assert out.stat().st_size < SAM3D_GLB.stat().st_size / 3
    extents = light.bounding_box.extents / full.bounding_box.extents
    assert np.all(np.abs(extents - 1) < 0.02)  # the outline kept
    # Its surface is where the original's is: sampled points lie on it.
    from scipy.spatial import cKDTree

    low, high = full.bounds  # the export stands it on the ground, centred: so too here
    standing = full.vertices - [(low[0] + high[0]) / 2, low[1], (low[2] + high[2]) / 2]
    distance, _ = cKDTree(standing).query(light.sample(2000, seed=1))
    assert np.percentile(distance, 95) < 0.01 * full.scale


def mean_colour(colours) -> np.ndarray:
    return np.asarray(colours, dtype=float)[:, :3].mean(axis=0)


def test_colours_are_kept_by_3mf_usdz_obj_and_a_decimated_glb(tmp_path):
    from pxr import Usd, UsdGeom

    source = mean_colour(reopened(COLOURED_PLY).visual.vertex_colors)
    export_model(COLOURED_PLY, ModelFormat.THREE_MF, tmp_path / "c.3mf", height_mm=100)
    assert np.abs(three_mf_colours(tmp_path / "c.3mf") - source).max() < 3
    export_model(COLOURED_PLY, ModelFormat.USDZ, tmp_path / "c.usdz", height_mm=100)
    stage = Usd.Stage.Open(str(tmp_path / "c.usdz"))
    [mesh] = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    display = np.asarray(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("displayColor").Get())
    assert np.abs(display.mean(axis=0) * 255 - source).max() < 3
    light = export_model(COLOURED_PLY, ModelFormat.GLB, tmp_path / "c.glb", faces=5_000)
    reloaded = reopened(tmp_path / "c.glb")
    assert light.colours and np.abs(mean_colour(reloaded.visual.vertex_colors) - source).max() < 8


def three_mf_colours(path: Path) -> np.ndarray:
    """The mean colour of a 3MF's colour group, read by the 3MF Consortium's library."""
    import lib3mf

    wrapper = lib3mf.get_wrapper()
    model = wrapper.CreateModel()
    model.QueryReader("3mf").ReadFromFile(str(path))
    groups = model.GetColorGroups()
    assert groups.MoveNext(), "no colour group"
    group = groups.GetCurrentColorGroup()
    colours = []
    for property_id in group.GetAllPropertyIDs():
        colour = group.GetColor(property_id)
        colours.append((colour.Red, colour.Green, colour.Blue))
    return np.asarray(colours, dtype=float).mean(axis=0)


def test_a_textured_model_keeps_its_texture_in_obj_and_usdz_and_colours_in_3mf(tmp_path):
    from pxr import Usd

    export_model(TEXTURED_GLB, ModelFormat.OBJ, tmp_path / "d.zip", height_mm=80)
    with zipfile.ZipFile(tmp_path / "d.zip") as archive:
        names = archive.namelist()
        material = archive.read("model.mtl").decode()
        pictures = [n for n in names if n.endswith((".png", ".jpg", ".jpeg"))]
    assert pictures and f"map_Kd {pictures[0]}" in material
    export_model(TEXTURED_GLB, ModelFormat.USDZ, tmp_path / "d.usdz", height_mm=80)
    with zipfile.ZipFile(tmp_path / "d.usdz") as package:
        assert any(n.endswith("texture.png") for n in package.namelist())
    assert Usd.Stage.Open(str(tmp_path / "d.usdz"))
    done = export_model(TEXTURED_GLB, ModelFormat.THREE_MF, tmp_path / "d.3mf", height_mm=80)
    assert done.colours  # the duck's yellow, sampled from its texture
    red, green, blue = three_mf_colours(tmp_path / "d.3mf")
    assert red > 150 and green > 120 and blue < 100


@pytest.mark.parametrize("fmt", [ModelFormat.STL, ModelFormat.GLB])
def test_a_splat_or_a_broken_file_is_refused_with_the_reason(tmp_path, fmt):
    with pytest.raises(InputError, match="Gaussian splat"):
        export_model(SPLAT, fmt, tmp_path / f"x{fmt.suffix}")
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"glTF" + b"\x02\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(InputError):
        export_model(broken, fmt, tmp_path / f"y{fmt.suffix}")
    assert not (tmp_path / f"y{fmt.suffix}").exists()


async def test_a_conversion_runs_apart_and_is_stopped_past_its_time(tmp_path):
    done = await convert(COLOURED_PLY, ModelFormat.STL, tmp_path / "p.stl", height_mm=120)
    assert done.faces == 36_874 and abs(done.height_mm - 120) < 0.5 and done.watertight
    with pytest.raises(RenderError, match="longer than"):
        await convert(SAM3D_GLB, ModelFormat.USDZ, tmp_path / "slow.usdz", timeout_s=0.05)
    assert not (tmp_path / "slow.usdz").exists()
    with pytest.raises(InputError, match="splat"):
        await convert(SPLAT, ModelFormat.STL, tmp_path / "s.stl")


async def test_the_export_command_says_in_one_line_what_it_wrote(tmp_path):
    ran = await run_bot(
        "export",
        str(COLOURED_PLY),
        "--format",
        "3mf",
        "--height-mm",
        "100",
        "-o",
        "h.3mf",
        cwd=tmp_path,
    )
    assert ran.code == 0, ran.err
    assert ran.out.strip().splitlines() == [
        "wrote h.3mf: 3MF, 36,874 triangles, 100.0 mm tall, "
        f"{(tmp_path / 'h.3mf').stat().st_size / 1e6:.1f} MB, with its colours"
    ]
    ran = await run_bot("export", str(SPLAT), "--format", "stl", "-o", "s.stl", cwd=tmp_path)
    assert ran.code == 2 and "Gaussian splat" in ran.err


async def test_a_splat_over_a_chats_limit_is_thinned_to_fit_beside_the_full_one(tmp_path):
    """Spark and the viewer read the thinned PLY; the most opaque gaussians are kept."""
    import shutil

    from bot.conversions import Conversions
    from bot.models import FileKind, JobResult, OutputFile
    from bot.render.inspect import load_splat
    from bot.results import ResultStore

    job = tmp_path / "data" / "jobs" / "abc123"
    job.mkdir(parents=True)
    shutil.copy(SPLAT, job / "splat.ply")
    full = OutputFile(FileKind.SPLAT, job / "splat.ply", SPLAT.stat().st_size, "x")
    result = JobResult("abc123", {}, (full,), 65_000)
    conversions = Conversions(ResultStore(tmp_path / "data"))
    fitted = await conversions.with_light_splat(result, 1_000_000)
    light = fitted.file(FileKind.LIGHT_SPLAT)
    assert light is not None and light.size <= 1_000_000 and fitted.file(FileKind.SPLAT) == full
    kept, original = load_splat(light.path), load_splat(SPLAT)
    assert 15_000 < len(kept) < len(original)
    opacity = lambda table: (1 / (1 + np.exp(-table["opacity"]))).mean()  # noqa: E731
    assert opacity(kept) > opacity(original)  # the ones that show were kept more often
    again = await conversions.with_light_splat(result, 1_000_000)
    assert again.file(FileKind.LIGHT_SPLAT).path == light.path  # made once, kept
    assert await conversions.with_light_splat(result, 10_000_000) is result  # it fits as is


def test_writing_a_3mf_leaves_the_process_locale_as_it_was(tmp_path):
    """lib3mf sets the locale to "C" for its numbers; left so, every text file the process
    opened afterwards would be read as ASCII (a test reading the README tripped on it)."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    export_model(COLOURED_PLY, ModelFormat.THREE_MF, tmp_path / "l.3mf", height_mm=50)
    assert locale.setlocale(locale.LC_ALL) == before
