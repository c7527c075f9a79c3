"""Decoding Draco-compressed GLBs before drawing (f3d 4.0 maps Draco attributes wrongly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import DracoPy
import numpy as np
import numpy.typing as npt
import pygltflib

from ..errors import RenderError

EXTENSION = "KHR_draco_mesh_compression"
FLOAT, UNSIGNED_INT = 5126, 5125
ACCESSOR_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}


def decode_draco_glb(source: Path, target: Path) -> None:
    """Write `target`: `source` with every Draco primitive stored as plain accessors."""
    gltf = pygltflib.GLTF2().load_binary(str(source))
    blob = bytearray(gltf.binary_blob() or b"")
    for mesh in gltf.meshes:
        for primitive in mesh.primitives:
            draco = (primitive.extensions or {}).get(EXTENSION)
            if not draco:
                continue
            view = gltf.bufferViews[draco["bufferView"]]
            start = view.byteOffset or 0
            try:
                decoded = DracoPy.decode(bytes(blob[start : start + view.byteLength]))
            except Exception as exc:  # DracoPy raises its own failure types
                raise RenderError(f"{source.name}: the Draco data is damaged") from exc
            faces = np.asarray(decoded.faces, dtype=np.uint32).reshape(-1)
            primitive.indices = _add_accessor(gltf, blob, faces, 1, UNSIGNED_INT)
            for name, unique_id in draco["attributes"].items():
                attribute = decoded.get_attribute_by_unique_id(unique_id)
                values = np.asarray(attribute["data"])
                if values.dtype.kind in "iu":  # colours and the like: normalise to 0..1
                    values = values / float(np.iinfo(values.dtype).max)
                values = values.astype(np.float32).reshape(len(values), -1)
                with_bounds = name == "POSITION"
                index = _add_accessor(gltf, blob, values, values.shape[1], FLOAT, with_bounds)
                setattr(primitive.attributes, name, index)
            del primitive.extensions[EXTENSION]
    gltf.extensionsUsed = [e for e in gltf.extensionsUsed or [] if e != EXTENSION]
    gltf.extensionsRequired = [e for e in gltf.extensionsRequired or [] if e != EXTENSION]
    gltf.buffers[0].byteLength = len(blob)
    gltf.set_binary_blob(bytes(blob))
    gltf.save_binary(str(target))


def _add_accessor(
    gltf: pygltflib.GLTF2,
    blob: bytearray,
    values: npt.NDArray[Any],
    width: int,
    component: int,
    with_bounds: bool = False,
) -> int:
    blob.extend(b"\0" * (-len(blob) % 4))  # accessors start on 4-byte boundaries
    data = np.ascontiguousarray(values).tobytes()
    gltf.bufferViews.append(
        pygltflib.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data))
    )
    blob.extend(data)
    accessor = pygltflib.Accessor(
        bufferView=len(gltf.bufferViews) - 1,
        componentType=component,
        count=len(values) if width > 1 else values.size,
        type=ACCESSOR_TYPES[width],
    )
    if with_bounds:
        accessor.min = values.min(axis=0).tolist()
        accessor.max = values.max(axis=0).tolist()
    gltf.accessors.append(accessor)
    return len(gltf.accessors) - 1
