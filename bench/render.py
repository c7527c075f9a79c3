"""Render times of the real fixtures and of large made models, through the real renderer.

    .venv/bin/python bench/render.py [--size 512] [--frames 24] [--turntable-size 320]

Per model: the first thumbnail in a warm worker ("cold": the file is new to the engine), the
same again ("warm"), the turntable (WebP + GIF) and its sizes, and the worker's peak RSS.
Splats above RENDER_MAX_SPLATS are thinned first; that time is counted in the cold figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trimesh  # noqa: E402

from bot.models import FileKind, OutputFile  # noqa: E402
from bot.render.renderer import F3dRenderer, RenderOptions  # noqa: E402
from tests.fakes.models3d import FIXTURES, made_splat_ply  # noqa: E402

FIXTURE_FILES = [
    "sam3d_objects_0.glb",
    "donut_3dgs_sh0.ply",
    "khronos_Duck.glb",
    "draco_Box_Draco.glb",
    "khronos_TextureTransformTest_packed.glb",
    "sam3d_body_human.ply",
]


def made_models(folder: Path) -> list[Path]:
    sphere = trimesh.creation.uv_sphere(radius=1.0, count=[501, 501])  # 1,004,000 triangles
    glb = folder / "made_1M_triangles.glb"
    data = sphere.export(file_type="glb")
    assert isinstance(data, bytes)
    glb.write_bytes(data)
    paths = [glb]
    for count, name in ((100_000, "made_100k_splats.ply"), (860_000, "made_860k_splats.ply")):
        path = folder / name
        path.write_bytes(made_splat_ply(count))
        paths.append(path)
    return paths


def as_output(path: Path) -> tuple[OutputFile, ...]:
    kind = FileKind.SPLAT if path.suffix == ".ply" and "human" not in path.name else FileKind.MESH
    return (OutputFile(kind, path, path.stat().st_size, ""),)


async def bench(args: argparse.Namespace) -> None:
    options = RenderOptions(
        size=args.size, turntable_frames=args.frames, turntable_size=args.turntable_size
    )
    renderer = F3dRenderer(options)
    started = time.perf_counter()
    await renderer.start()
    print(f"worker start (engine + warm-up): {time.perf_counter() - started:.2f} s")
    print(
        f"{'model':42} {'cold':>6} {'warm':>6} {'turntable':>9} {'webp':>7} {'gif':>7} {'rss':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = [FIXTURES / n for n in FIXTURE_FILES if (FIXTURES / n).is_file()]
        models += made_models(folder)
        for model in models:
            workdir = folder / model.stem
            files = as_output(model)
            t0 = time.perf_counter()
            await renderer.thumbnail(files, workdir)
            t1 = time.perf_counter()
            await renderer.thumbnail(files, workdir)
            t2 = time.perf_counter()
            webp, gif = await renderer.turntable(files, workdir)
            t3 = time.perf_counter()
            print(
                f"{model.name:42} {t1 - t0:5.2f}s {t2 - t1:5.2f}s {t3 - t2:8.2f}s "
                f"{webp.size / 1e3:5.0f}kB {gif.size / 1e3:5.0f}kB "
                f"{renderer.worker_peak_rss_mb:4.0f}MB"
            )
    await renderer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--turntable-size", type=int, default=320)
    asyncio.run(bench(parser.parse_args()))
