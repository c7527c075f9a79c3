"""Reading model files before they are drawn: what they are, whether they are whole, how big.

Checks run in the bot's own process and take milliseconds, so a bad file gets a clear
answer at once instead of reaching the renderer. Preparation writes what the renderer
draws best: Draco decoded, and splats in the plain 14-property layout, thinned to a cap.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RenderError

GLB_MAGIC = b"glTF"
SPLAT_CORE = [
    "x",
    "y",
    "z",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
]
PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


@dataclass(frozen=True)
class RenderLimits:
    max_bytes: int = 300_000_000
    max_triangles: int = 5_000_000
    max_splats: int = 100_000  # larger splats are thinned to this many for the picture


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    kind: str  # "glb", "ply_mesh" or "ply_splat"
    triangles: int
    points: int
    has_colour: bool
    draco: bool = False

    @property
    def is_splat(self) -> bool:
        return self.kind == "ply_splat"


def inspect_model(path: Path, limits: RenderLimits = RenderLimits()) -> ModelInfo:
    """Identify and sanity-check a model file; RenderError says plainly what is wrong."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(64 * 1024)
    except OSError:
        raise RenderError(f"{path.name}: the file cannot be read") from None
    if size == 0:
        raise RenderError(f"{path.name}: the file is empty")
    if size > limits.max_bytes:
        raise RenderError(
            f"{path.name}: {size / 1e6:.0f} MB is more than the renderer takes "
            f"({limits.max_bytes / 1e6:.0f} MB)"
        )
    if head.startswith(GLB_MAGIC):
        try:
            info = _inspect_glb(path)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError):
            # A field of the wrong type ("meshes": 5, indices as strings): not a glTF we draw.
            raise RenderError(f"{path.name}: the GLB's JSON is not a valid glTF document") from None
    elif head.startswith(b"ply"):
        info = _inspect_ply(path, head, size)
    else:
        what = (
            "an HTML page"
            if head.lstrip()[:15].lower().startswith((b"<!doctype", b"<html"))
            else "not a GLB or PLY model"
        )
        raise RenderError(f"{path.name}: the file is {what}")
    if info.triangles > limits.max_triangles:
        raise RenderError(
            f"{path.name}: {info.triangles:,} triangles is more than the renderer "
            f"draws ({limits.max_triangles:,})"
        )
    return info


# --- GLB --------------------------------------------------------------------------------------


def read_glb(path: Path) -> tuple[dict[str, Any], int]:
    """A GLB's JSON and the length of its BIN chunk, every length checked against the file.

    Only the header and the JSON are read: the geometry stays on disk.
    """
    name = path.name
    size = path.stat().st_size
    with path.open("rb") as fh:
        header = fh.read(20)
        if len(header) < 20:
            raise RenderError(f"{name}: the GLB is cut short")
        _, version, length, json_length, json_type = struct.unpack("<4sIIII", header)
        if version != 2:
            raise RenderError(f"{name}: glTF version {version} is not supported (only 2)")
        if length > size:
            raise RenderError(f"{name}: the GLB is cut short ({size:,} of {length:,} bytes)")
        if json_type != 0x4E4F534A or 20 + json_length > length:
            raise RenderError(f"{name}: the GLB's JSON chunk is damaged")
        try:
            document = json.loads(fh.read(json_length))
        except (ValueError, RecursionError):  # bad JSON, or JSON nested past any glTF's depth
            raise RenderError(f"{name}: the GLB's JSON chunk is damaged") from None
        if not isinstance(document, dict):
            raise RenderError(f"{name}: the GLB's JSON is not a glTF document")
        binary_length = 0
        offset = 20 + json_length
        if offset + 8 <= length:
            bin_length, bin_type = struct.unpack("<II", fh.read(8))
            if bin_type != 0x004E4942 or offset + 8 + bin_length > length:
                raise RenderError(f"{name}: the GLB's binary chunk is cut short")
            binary_length = bin_length
    return document, binary_length


def _inspect_glb(path: Path) -> ModelInfo:
    document, binary_length = read_glb(path)
    name = path.name
    buffers = document.get("buffers", [])
    # Buffers and images alike may only be embedded: a URI could name any file on this host.
    for item in [*buffers, *document.get("images", [])]:
        if "uri" in item and not str(item["uri"]).startswith("data:"):
            raise RenderError(f"{name}: the GLB points to outside files")
    for index, buffer in enumerate(buffers):
        if "uri" in buffer:
            continue
        elif buffer.get("byteLength", 0) > binary_length:
            raise RenderError(
                f"{name}: buffer {index} claims {buffer.get('byteLength'):,} bytes "
                f"but the file holds {binary_length:,}"
            )
    for view in document.get("bufferViews", []):
        buffer = buffers[view.get("buffer", 0)] if view.get("buffer", 0) < len(buffers) else None
        end = view.get("byteOffset", 0) + view.get("byteLength", 0)
        if buffer is None or end > buffer.get("byteLength", 0):
            raise RenderError(f"{name}: a buffer view reaches past its buffer")
    accessors = document.get("accessors", [])
    triangles = points = 0
    has_colour = False
    draco = "KHR_draco_mesh_compression" in document.get("extensionsUsed", [])
    for mesh in document.get("meshes", []):
        for primitive in mesh.get("primitives", []):
            attributes = primitive.get("attributes", {})
            count = _count(accessors, attributes.get("POSITION"))
            points += count
            if primitive.get("mode", 4) == 4:
                indexed = _count(accessors, primitive.get("indices"))
                triangles += (indexed or count) // 3
            has_colour = has_colour or "COLOR_0" in attributes
    for material in document.get("materials", []):
        pbr = material.get("pbrMetallicRoughness", {})
        factor = pbr.get("baseColorFactor", [1, 1, 1, 1])
        if "baseColorTexture" in pbr or any(abs(v - 1) > 0.02 for v in factor[:3]):
            has_colour = True
        if "KHR_materials_pbrSpecularGlossiness" in material.get("extensions", {}):
            has_colour = True
    if points == 0:
        raise RenderError(f"{name}: the GLB holds no mesh")
    return ModelInfo(path, "glb", triangles, points, has_colour, draco)


def _count(accessors: list[Any], index: Any) -> int:
    if index is None or not 0 <= index < len(accessors):
        return 0
    return int(accessors[index].get("count", 0))


# --- PLY --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlyHeader:
    format: str
    header_bytes: int
    elements: list[tuple[str, int, list[tuple[str, str]]]]  # name, count, [(prop, type)]

    def element(self, name: str) -> tuple[str, int, list[tuple[str, str]]] | None:
        return next((e for e in self.elements if e[0] == name), None)


def read_ply_header(head: bytes, name: str) -> PlyHeader:
    end = head.find(b"end_header")
    if end < 0:
        raise RenderError(f"{name}: the PLY header is damaged or cut short")
    header_bytes = head.index(b"\n", end) + 1 if b"\n" in head[end:] else len(head)
    lines = head[:end].decode("ascii", "replace").splitlines()
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "format" and len(words) > 1:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            elements[-1][2].append((words[-1], " ".join(words[1:-1])))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise RenderError(f"{name}: the PLY header names no known format")
    return PlyHeader(fmt, header_bytes, elements)


def _inspect_ply(path: Path, head: bytes, size: int) -> ModelInfo:
    header = read_ply_header(head, path.name)
    vertex = header.element("vertex")
    if vertex is None or vertex[1] == 0:
        raise RenderError(f"{path.name}: the PLY has no vertices")
    props = [p for p, _ in vertex[2]]
    face = header.element("face")
    if header.format != "ascii":
        stride = sum(
            np.dtype(PLY_TYPES.get(t, "f4")).itemsize
            for _, t in vertex[2]
            if not t.startswith("list")
        )
        if header.header_bytes + vertex[1] * stride > size:
            raise RenderError(f"{path.name}: the PLY is cut short")
    if {"f_dc_0", "opacity", "scale_0"} <= set(props):
        return ModelInfo(path, "ply_splat", 0, vertex[1], True)
    triangles = face[1] if face else 0
    if triangles == 0:
        raise RenderError(f"{path.name}: the PLY is a point cloud with no faces or splats")
    colour = {"red", "green", "blue"} <= set(props) or {"r", "g", "b"} <= set(props)
    return ModelInfo(path, "ply_mesh", triangles, vertex[1], colour)


def load_splat(path: Path) -> np.ndarray:
    """The vertex table of a binary splat PLY as a structured array."""
    with path.open("rb") as fh:
        head = fh.read(64 * 1024)
        header = read_ply_header(head, path.name)
        if header.format == "ascii":
            raise RenderError(f"{path.name}: text PLY splats are not supported")
        order = "<" if header.format == "binary_little_endian" else ">"
        vertex = header.element("vertex")
        if vertex is None:
            raise RenderError(f"{path.name}: the PLY has no vertices")
        _, count, props = vertex
        dtype = np.dtype([(p, order + PLY_TYPES.get(t, "f4")) for p, t in props])
        fh.seek(header.header_bytes)
        data = np.fromfile(fh, dtype=dtype, count=count)
    if len(data) < count:
        raise RenderError(f"{path.name}: the PLY is cut short")
    return data


def write_render_splat(source: Path, target: Path, max_splats: int, seed: int = 0) -> int:
    """Rewrite a splat in the 14 core properties, keeping at most `max_splats` of them.

    Thinning keeps the splats that matter most (opaque and large) more often, and grows the
    kept ones a little so the picture keeps its coverage. Returns the number written.
    """
    data = load_splat(source)
    missing = [p for p in SPLAT_CORE if p not in (data.dtype.names or ())]
    if missing:
        raise RenderError(f"{source.name}: the splat lacks {', '.join(missing)}")
    table = np.stack([data[p].astype(np.float32) for p in SPLAT_CORE], axis=1)
    table = table[np.isfinite(table).all(axis=1)]
    if len(table) > max_splats:
        opacity = 1 / (1 + np.exp(-table[:, 6]))
        weight = opacity * np.exp(table[:, 7:10].sum(axis=1) / 3)
        weight = weight / weight.sum() if weight.sum() > 0 else None
        rng = np.random.default_rng(seed)
        keep = rng.choice(len(table), size=max_splats, replace=False, p=weight)
        grow = np.log((len(table) / max_splats) ** (1 / 3))
        table = table[np.sort(keep)]
        table[:, 7:10] += grow
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(table)}\n"
        + "".join(f"property float {p}\n" for p in SPLAT_CORE)
        + "end_header\n"
    )
    with target.open("wb") as fh:
        fh.write(header.encode())
        fh.write(np.ascontiguousarray(table, dtype="<f4").tobytes())
    return len(table)
