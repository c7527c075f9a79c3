"""The model in other formats: STL and 3MF for printing, OBJ (a ZIP with its MTL and texture)
for editing, USDZ for Apple's AR, and a lighter GLB; at a real-world height with the base on
the ground, and decimated to about N triangles if asked.

Each conversion is done by a well-kept library (trimesh for STL, OBJ and GLB, lib3mf, the
3MF Consortium's own, for 3MF with its colours, Pixar's usd-core for USDZ, fast-simplification
for decimating) and runs in a process of its own (`python -m bot.formats`), bounded in time
and memory like the renderer's worker, so a hostile model cannot stall or exhaust the bot."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import locale
import os
import resource
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, RenderError


class ModelFormat(StrEnum):
    STL = "stl"
    THREE_MF = "3mf"
    OBJ = "obj"
    USDZ = "usdz"
    GLB = "glb"

    @property
    def suffix(self) -> str:
        return ".zip" if self is ModelFormat.OBJ else f".{self.value}"

    @property
    def z_up(self) -> bool:
        """Printers' formats stand on Z; glTF and USD are Y-up."""
        return self in (ModelFormat.STL, ModelFormat.THREE_MF)

    @property
    def millimetres(self) -> bool:
        """STL has no unit and slicers read millimetres; 3MF says millimetres; glTF and USD
        (metersPerUnit 1) are metres."""
        return self in (ModelFormat.STL, ModelFormat.THREE_MF)


LABELS = {
    ModelFormat.STL: "STL",
    ModelFormat.THREE_MF: "3MF",
    ModelFormat.OBJ: "OBJ (ZIP)",
    ModelFormat.USDZ: "USDZ",
    ModelFormat.GLB: "GLB",
}
MAX_FACES = 5_000_000  # a model past this is refused before any work (as the renderer does)
MAX_OUTPUT_BYTES = 500_000_000
CONVERT_TIMEOUT_S = 120.0
CONVERT_MEMORY_BYTES = 4 << 30


@dataclass(frozen=True)
class Exported:
    """What a conversion wrote, in words a person reads in one line."""

    path: str
    format: str
    faces: int
    height_mm: float
    size_bytes: int
    watertight: bool
    colours: bool
    texture: bool

    def describe(self) -> str:
        parts = [
            f"{LABELS[ModelFormat(self.format)]}",
            f"{self.faces:,} triangles",
            f"{self.height_mm:.1f} mm tall",
            f"{self.size_bytes / 1e6:.1f} MB",
        ]
        if self.colours or self.texture:
            parts.append("with its colours" if self.colours else "with its texture")
        if self.format == ModelFormat.STL and not self.watertight:
            parts.append("not watertight (most slicers repair that)")
        return ", ".join(parts)


# -- loading and shaping -----------------------------------------------------------------------


def load_mesh(path: Path) -> Any:
    """One triangle mesh from a GLB (its nodes' transforms applied) or a mesh PLY. A
    Gaussian splat is points, not a surface: refused with the reason."""
    import trimesh

    if path.suffix.lower() == ".ply" and _is_splat(path):
        raise InputError("model", "a Gaussian splat has no surface to convert; use the GLB")
    try:
        loaded = trimesh.load(str(path), force="scene", process=False)
    except Exception as exc:  # trimesh raises what its parsers raise
        raise InputError("model", f"not a model I can read ({type(exc).__name__})") from None
    parts = loaded.dump() if isinstance(loaded, trimesh.Scene) else [loaded]
    meshes = [g for g in parts if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not meshes:
        raise InputError("model", "the file has no triangles")
    if sum(len(m.faces) for m in meshes) > MAX_FACES:
        raise InputError("model", f"more than {MAX_FACES:,} triangles")
    if len(meshes) == 1:
        return meshes[0]
    # Several parts: one mesh with the colours each had (textures baked to colours).
    for mesh in meshes:
        if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
            mesh.visual = mesh.visual.to_color()
    return trimesh.util.concatenate(meshes)


def _is_splat(path: Path) -> bool:
    with path.open("rb") as file:
        header = file.read(4096)
    end = header.find(b"end_header")
    return end >= 0 and b"f_dc_0" in header[:end]


def colours_of(mesh: Any) -> np.ndarray | None:
    """Per-vertex RGBA (uint8) where the model has colours of its own, else None."""
    if mesh.visual.kind != "vertex":
        return None
    colours = np.asarray(mesh.visual.vertex_colors, dtype=np.uint8)
    return colours if len(colours) == len(mesh.vertices) else None


def decimate(mesh: Any, faces: int) -> Any:
    """About `faces` triangles by quadric edge collapse (the silhouette kept); each kept
    vertex gets the mean colour of the vertices merged into it. A texture is baked into
    vertex colours first (UVs cannot follow a collapse)."""
    import fast_simplification
    import trimesh

    if faces >= len(mesh.faces):
        return mesh
    if mesh.visual.kind == "texture":
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, visual=mesh.visual.to_color())
    colours = colours_of(mesh)
    points = np.asarray(mesh.vertices, dtype=np.float64)
    triangles = np.asarray(mesh.faces, dtype=np.int64)
    _, _, collapses = fast_simplification.simplify(
        points, triangles, target_count=max(4, faces), return_collapses=True
    )
    kept, kept_faces, mapping = fast_simplification.replay_simplification(
        points, triangles, collapses
    )
    visual = None
    if colours is not None:
        sums = np.zeros((len(kept), 4))
        counts = np.zeros(len(kept))
        known = mapping >= 0
        np.add.at(sums, mapping[known], colours[known].astype(float))
        np.add.at(counts, mapping[known], 1)
        mean = sums / np.maximum(counts, 1)[:, None]
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.round(mean).astype(np.uint8))
    return trimesh.Trimesh(kept, kept_faces, visual=visual, process=False)


def standing(mesh: Any, fmt: ModelFormat, height_mm: float | None) -> Any:
    """Scaled uniformly to `height_mm` (or kept at its size, glTF's metres), centred on the
    up axis with its lowest point on the ground, turned Z-up for the printers' formats."""
    mesh = mesh.copy()
    low, high = mesh.bounds
    tall = float(high[1] - low[1])
    if tall <= 0:
        raise InputError("model", "the model has no height")
    metres = (height_mm / 1000.0) if height_mm else tall
    scale = (metres / tall) * (1000.0 if fmt.millimetres else 1.0)
    centre = (low + high) / 2
    mesh.apply_translation([-centre[0], -low[1], -centre[2]])
    mesh.apply_scale(scale)
    if fmt.z_up:  # +Y up becomes +Z up: a quarter turn about X
        mesh.apply_transform(
            np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
        )
    return mesh


# -- writing -----------------------------------------------------------------------------------


def write_stl(mesh: Any, out: Path) -> None:
    out.write_bytes(mesh.export(file_type="stl"))  # trimesh writes binary STL


def write_glb(mesh: Any, out: Path) -> None:
    out.write_bytes(mesh.export(file_type="glb"))


CLAY = (204, 179, 148, 255)  # a colourless model's surface, as its thumbnails draw it


def write_obj(mesh: Any, out: Path) -> None:
    """model.obj, model.mtl and the texture, in one ZIP (an OBJ is never one file); a
    colourless model gets the clay material its thumbnails show."""
    import trimesh
    from trimesh.exchange.obj import export_obj

    if mesh.visual.kind is None:
        mesh = mesh.copy()
        mesh.visual = trimesh.visual.TextureVisuals(
            material=trimesh.visual.material.SimpleMaterial(diffuse=CLAY)
        )

    text, extra = export_obj(
        mesh,
        include_normals=True,
        include_color=True,
        include_texture=True,
        return_texture=True,
        mtl_name="model.mtl",
    )
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.obj", text)
        for name, data in (extra or {}).items():
            archive.writestr(Path(name).name, data)


def write_3mf(mesh: Any, out: Path) -> None:
    """3MF in millimetres, with one colour per vertex as the 3MF colour group's triangle
    properties (what slicers with colour read)."""
    # lib3mf sets the whole process's locale to "C" (for its decimal points) and leaves it:
    # text files opened after would be read as ASCII. Put it back.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_3mf(mesh, out)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_3mf(mesh: Any, out: Path) -> None:
    import lib3mf

    wrapper = lib3mf.get_wrapper()
    model = wrapper.CreateModel()
    model.SetUnit(lib3mf.ModelUnit.MilliMeter)
    part = model.AddMeshObject()
    part.SetName("model")
    vertices = [lib3mf.Position((float(x), float(y), float(z))) for x, y, z in mesh.vertices]
    triangles = [lib3mf.Triangle((int(a), int(b), int(c))) for a, b, c in mesh.faces]
    part.SetGeometry(vertices, triangles)
    colours = colours_of(mesh)
    if colours is not None:
        group = model.AddColorGroup()
        ids = [
            group.AddColor(wrapper.RGBAToColor(int(r), int(g), int(b), int(a)))
            for r, g, b, a in colours
        ]
        resource_id = group.GetResourceID()
        for index, (a, b, c) in enumerate(mesh.faces):
            properties = lib3mf.TriangleProperties()
            properties.ResourceID = resource_id
            properties.PropertyIDs[0] = ids[a]
            properties.PropertyIDs[1] = ids[b]
            properties.PropertyIDs[2] = ids[c]
            part.SetTriangleProperties(index, properties)
        part.SetObjectLevelProperty(resource_id, ids[int(mesh.faces[0][0])])
    model.AddBuildItem(part, wrapper.GetIdentityTransform())
    model.QueryWriter("3mf").WriteToFile(str(out))


def write_usdz(mesh: Any, out: Path) -> None:
    """A USD stage (Y-up, metres) with the mesh, its normals, its colours as displayColor and
    a UsdPreviewSurface (its texture, if any), packed as USDZ for AR Quick Look."""
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade, UsdUtils, Vt

    with tempfile.TemporaryDirectory() as folder:
        layer = Path(folder) / "model.usdc"
        stage = Usd.Stage.CreateNew(str(layer))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root = UsdGeom.Xform.Define(stage, "/Model")
        stage.SetDefaultPrim(root.GetPrim())
        geometry = UsdGeom.Mesh.Define(stage, "/Model/Mesh")
        points = np.asarray(mesh.vertices, dtype=np.float32)
        geometry.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points))
        geometry.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(mesh.faces)))
        geometry.CreateFaceVertexIndicesAttr(
            Vt.IntArray.FromNumpy(np.asarray(mesh.faces, dtype=np.int32).ravel())
        )
        geometry.CreateNormalsAttr(
            Vt.Vec3fArray.FromNumpy(np.asarray(mesh.vertex_normals, dtype=np.float32))
        )
        geometry.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        geometry.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        low, high = points.min(axis=0), points.max(axis=0)
        geometry.CreateExtentAttr(
            Vt.Vec3fArray([Gf.Vec3f(*map(float, low)), Gf.Vec3f(*map(float, high))])
        )
        material = UsdShade.Material.Define(stage, "/Model/Material")
        shader = UsdShade.Shader.Define(stage, "/Model/Material/Surface")
        shader.CreateIdAttr("UsdPreviewSurface")
        shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(0.8)
        colours = colours_of(mesh)
        texture = _texture_png(mesh)
        if colours is not None:
            primvars = UsdGeom.PrimvarsAPI(geometry)
            display = primvars.CreatePrimvar(
                "displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.vertex
            )
            display.Set(Vt.Vec3fArray.FromNumpy(colours[:, :3].astype(np.float32) / 255.0))
            reader = UsdShade.Shader.Define(stage, "/Model/Material/Colours")
            reader.CreateIdAttr("UsdPrimvarReader_float3")
            reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("displayColor")
            shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(
                reader.ConnectableAPI(), "result"
            )
        elif texture is not None:
            (Path(folder) / "texture.png").write_bytes(texture)
            uv = UsdGeom.PrimvarsAPI(geometry).CreatePrimvar(
                "st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex
            )
            uv.Set(Vt.Vec2fArray.FromNumpy(np.asarray(mesh.visual.uv, dtype=np.float32)))
            reader = UsdShade.Shader.Define(stage, "/Model/Material/UV")
            reader.CreateIdAttr("UsdPrimvarReader_float2")
            reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("st")
            image = UsdShade.Shader.Define(stage, "/Model/Material/Texture")
            image.CreateIdAttr("UsdUVTexture")
            image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set("texture.png")
            image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(
                reader.ConnectableAPI(), "result"
            )
            image.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
            shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(
                image.ConnectableAPI(), "rgb"
            )
        else:  # the clay the thumbnails have
            shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set(
                Gf.Vec3f(*(c / 255 for c in CLAY[:3]))
            )
        material.CreateSurfaceOutput().ConnectToSource(shader.ConnectableAPI(), "surface")
        UsdShade.MaterialBindingAPI.Apply(geometry.GetPrim()).Bind(material)
        stage.GetRootLayer().Save()
        if not UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(out)):
            raise RenderError("the USDZ package could not be written")


def _texture_png(mesh: Any) -> bytes | None:
    if mesh.visual.kind != "texture" or getattr(mesh.visual, "uv", None) is None:
        return None
    image = getattr(mesh.visual.material, "baseColorTexture", None) or getattr(
        mesh.visual.material, "image", None
    )
    if image is None:
        return None
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


WRITERS = {
    ModelFormat.STL: write_stl,
    ModelFormat.THREE_MF: write_3mf,
    ModelFormat.OBJ: write_obj,
    ModelFormat.USDZ: write_usdz,
    ModelFormat.GLB: write_glb,
}


def export_model(
    source: Path,
    fmt: ModelFormat,
    out: Path,
    height_mm: float | None = None,
    faces: int | None = None,
) -> Exported:
    """Convert in this process (the command line's `export`, and the worker's body)."""
    mesh = load_mesh(source)
    if faces:
        mesh = decimate(mesh, faces)
    if fmt is ModelFormat.THREE_MF and mesh.visual.kind == "texture":
        mesh.visual = mesh.visual.to_color()  # 3MF's colours: the texture sampled per vertex
    mesh = standing(mesh, fmt, height_mm)
    partial = out.with_name(f".{out.name}.part")
    WRITERS[fmt](mesh, partial)
    os.replace(partial, out)  # whole or not at all: a cached conversion is never half
    low, high = mesh.bounds
    up = 2 if fmt.z_up else 1
    tall = float(high[up] - low[up]) * (1.0 if fmt.millimetres else 1000.0)
    return Exported(
        path=str(out),
        format=fmt.value,
        faces=len(mesh.faces),
        height_mm=tall,
        size_bytes=out.stat().st_size,
        watertight=bool(mesh.is_watertight),
        # What the written file carries (STL has no colour at all).
        colours=fmt is not ModelFormat.STL and colours_of(mesh) is not None,
        texture=fmt is not ModelFormat.STL and _texture_png(mesh) is not None,
    )


# -- bounded, in a process of its own ----------------------------------------------------------


async def convert(
    source: Path,
    fmt: ModelFormat,
    out: Path,
    height_mm: float | None = None,
    faces: int | None = None,
    timeout_s: float = CONVERT_TIMEOUT_S,
) -> Exported:
    """export_model in a worker process, killed past `timeout_s`; its answer is one JSON
    line, and an output over MAX_OUTPUT_BYTES is refused."""
    args = [sys.executable, "-m", "bot.formats", str(source), fmt.value, str(out)]
    if height_mm:
        args += ["--height-mm", str(height_mm)]
    if faces:
        args += ["--faces", str(faces)]
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        said, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RenderError(f"the conversion took longer than {timeout_s:g} s") from None
    except asyncio.CancelledError:
        process.kill()
        raise
    try:
        answer = json.loads(said.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RenderError("the conversion stopped without an answer") from None
    if "error" in answer:
        raise InputError("model", str(answer["error"])[:200])
    exported = Exported(**answer)
    if exported.size_bytes > MAX_OUTPUT_BYTES:
        await asyncio.to_thread(out.unlink, missing_ok=True)
        raise RenderError("the converted model would be too large")
    return exported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.formats")
    parser.add_argument("source")
    parser.add_argument("format", choices=[f.value for f in ModelFormat])
    parser.add_argument("out")
    parser.add_argument("--height-mm", type=float)
    parser.add_argument("--faces", type=int)
    args = parser.parse_args(argv)
    # A hostile model must not take the machine's memory (the bot's own process is apart).
    resource.setrlimit(resource.RLIMIT_AS, (CONVERT_MEMORY_BYTES, CONVERT_MEMORY_BYTES))
    try:
        done = export_model(
            Path(args.source), ModelFormat(args.format), Path(args.out), args.height_mm, args.faces
        )
    except InputError as error:
        print(json.dumps({"error": error.user_message.removeprefix("model: ")}))
        return 1
    except MemoryError:
        print(json.dumps({"error": "the model needs more memory than a conversion may use"}))
        return 1
    print(json.dumps(asdict(done)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
