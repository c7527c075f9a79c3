"""Conversion times and file sizes for SAM 3D's real GLB (../shared/fixtures), each format
through the bot's own bounded worker (`python -m bot.formats`, as a chat's Formats menu and
`sam3d-bot export` run it): the time includes starting the worker.

    python bench/formats.py [--model PATH] [--height-mm 150] [--faces 50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.formats import ModelFormat, convert

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT.parent / "shared" / "fixtures" / "sam3d_objects_0.glb"


async def measure(model: Path, height_mm: float, faces: int, runs: int) -> None:
    print(f"{model.name}: {model.stat().st_size / 1e6:.1f} MB")  # noqa: ASYNC240 - once
    cases = [(fmt, None) for fmt in ModelFormat] + [(ModelFormat.GLB, faces)]
    with tempfile.TemporaryDirectory() as folder:
        for fmt, decimated in cases:
            seconds = []
            for run in range(runs):
                out = Path(folder) / f"{run}{fmt.suffix}"
                started = time.perf_counter()
                done = await convert(model, fmt, out, height_mm, decimated)
                seconds.append(time.perf_counter() - started)
            name = f"{fmt.value}" + (f" --faces {decimated}" if decimated else "")
            print(
                f"{name:18} {statistics.median(seconds):6.2f} s  "
                f"{done.size_bytes / 1e6:6.2f} MB  {done.faces:>9,} triangles"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--height-mm", type=float, default=150.0)
    parser.add_argument("--faces", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"no model at {args.model} (the shared fixtures); pass --model", file=sys.stderr)
        return 1
    asyncio.run(measure(args.model, args.height_mm, args.faces, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
