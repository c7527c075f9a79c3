"""Run the fake Segmind in its own process: `python -m tests.fakes.serve [--complete-after S]`.

Prints its URL on the first line of stdout, then serves until stdin closes or it is killed.
Benchmarks use it so the fake's work is not counted as the bot's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .models3d import made_glb, made_splat_ply
from .segmind import Behaviour, FakeSegmind


async def serve(complete_after_s: float, small: bool) -> None:
    async with FakeSegmind(Behaviour(complete_after_s=complete_after_s)) as fake:
        if small:
            fake.glb, fake.ply = made_glb(), made_splat_ply()
        print(fake.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--complete-after", type=float, default=1.0)
    parser.add_argument("--small", action="store_true", help="serve small made models")
    args = parser.parse_args()
    asyncio.run(serve(args.complete_after, args.small))
