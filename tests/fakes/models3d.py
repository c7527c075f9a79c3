"""Real 3D files from ../shared/fixtures, and small ones made here when those are absent."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import trimesh

FIXTURES = Path(
    os.environ.get("SAM3D_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures")
)
SAM3D_GLB = "sam3d_objects_0.glb"
SPLAT_PLY = "donut_3dgs_sh0.ply"


def fixture(name: str) -> Path | None:
    path = FIXTURES / name
    return path if path.is_file() else None


def made_glb(subdivisions: int = 2) -> bytes:
    """A small coloured sphere as a GLB (vertex colours, so it has colour to look for)."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
    colours = np.tile(np.array([[200, 60, 40, 255]], dtype=np.uint8), (len(mesh.vertices), 1))
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=colours)
    return mesh.export(file_type="glb")


def made_splat_ply(count: int = 2000, seed: int = 0) -> bytes:
    """A Gaussian splat in SAM 3D's 17-property layout: xyz, normals, f_dc, opacity, scale, rot.

    Sizes and opacities follow a real capture's (the donut fixture): the median splat is about
    0.74 / sqrt(count) of the object across, log-normally spread, one axis flatter.
    """
    rng = np.random.default_rng(seed)
    names = [
        "x",
        "y",
        "z",
        "nx",
        "ny",
        "nz",
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
    data = np.zeros((count, len(names)), dtype=np.float32)
    direction = rng.normal(size=(count, 3))
    data[:, 0:3] = direction / np.linalg.norm(direction, axis=1, keepdims=True) * 0.5
    orange = (np.array([0.9, 0.5, 0.15]) - 0.5) / 0.2820948  # colour = 0.5 + C0 * f_dc
    data[:, 6:9] = orange + rng.normal(0, 0.15, size=(count, 3))
    data[:, 9] = rng.normal(0.6, 1.5, size=count)  # logit opacity
    median = 0.74 / np.sqrt(count)
    data[:, 10:13] = np.log(median) + rng.normal(0, 1.0, size=(count, 3))
    data[:, 12] += np.log(0.3)
    rotation = rng.normal(size=(count, 4))
    data[:, 13:17] = rotation / np.linalg.norm(rotation, axis=1, keepdims=True)
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {count}\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    out = io.BytesIO()
    out.write(header.encode())
    out.write(data.tobytes())
    return out.getvalue()


def sam3d_glb_bytes() -> bytes:
    path = fixture(SAM3D_GLB)
    return path.read_bytes() if path else made_glb()


def splat_ply_bytes() -> bytes:
    path = fixture(SPLAT_PLY)
    return path.read_bytes() if path else made_splat_ply()
