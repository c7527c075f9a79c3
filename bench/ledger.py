"""Ledger throughput: reserve + commit pairs per second, their latency, and the overspend.

    .venv/bin/python bench/ledger.py [--pairs 3000] [--postgres URL]

For each store (SQLite in a temporary file; PostgreSQL at URL, or a private server started
from Debian's packages by scripts/pg-test-server) and 1, 10 and 100 concurrent callers: every
caller is another user and runs reserve -> commit until the attempts are used up, against a
global cap that fits 90% of them, so the cap is reached under load. Overspend is what was
reserved + committed beyond the cap at the end; it must be 0. Each row is the median of
--repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.errors import BudgetExhausted  # noqa: E402
from bot.ledger import QuotaPolicy, SqliteLedger, SqlLedger  # noqa: E402
from bot.ledger.postgres import PostgresLedger  # noqa: E402
from bot.models import Requester  # noqa: E402
from bot.ports import NewJob  # noqa: E402
from tests.postgres import fresh_schema_url, start_server, stop_server  # noqa: E402

PRICE = 65_000


async def run(
    make_ledger: Callable[[QuotaPolicy], SqlLedger], callers: int, pairs: int
) -> dict[str, Any]:
    cap = int(pairs * 0.9) * PRICE
    policy = QuotaPolicy(global_budget_micros=cap, jobs_per_window=10**9, max_in_flight=10**9)
    ledger = make_ledger(policy)
    await ledger.open()
    latencies: list[float] = []
    refused = 0
    remaining = pairs

    async def caller(index: int) -> None:
        nonlocal remaining, refused
        who = Requester("discord", f"user{index}", "guild1")
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                job = await ledger.reserve(NewJob(who, PRICE, "k", {}))
            except BudgetExhausted:
                refused += 1
                continue
            await ledger.commit(job.id, PRICE)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = time.perf_counter() - started
    budget = await ledger.budget()
    await ledger.close()
    latencies.sort()
    return {
        "pairs_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "granted": len(latencies),
        "refused": refused,
        "overspend": max(0, budget.reserved_micros + budget.committed_micros - cap),
    }


async def main(args: argparse.Namespace) -> None:
    directory = None
    url = args.postgres
    if url is None:  # TEST_DATABASE_URL, or a private server from Debian's package
        url, directory = await asyncio.to_thread(start_server)
    print(
        f"{'store':10} {'callers':>7} {'pairs/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'granted':>7} {'refused':>7} {'overspend':>9}"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stores = {
                "sqlite": lambda policy: SqliteLedger(
                    Path(tmp) / f"{secrets.token_hex(4)}.sqlite3", policy
                ),
                "postgres": lambda policy: PostgresLedger(
                    fresh_schema_url(url), policy, pool_size=args.pool
                ),
            }
            for name, make in stores.items():
                for callers in (1, 10, 100):
                    runs = [await run(make, callers, args.pairs) for _ in range(args.repeat)]
                    r = sorted(runs, key=lambda run_: run_["pairs_per_s"])[len(runs) // 2]
                    assert all(run_["overspend"] == 0 for run_ in runs), runs
                    print(
                        f"{name:10} {callers:7} {r['pairs_per_s']:8.0f} {r['p50_ms']:7.2f} "
                        f"{r['p99_ms']:7.2f} {r['granted']:7} {r['refused']:7} "
                        f"{r['overspend']:9}"
                    )
    finally:
        if directory:
            await asyncio.to_thread(stop_server, directory)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--pool", type=int, default=4, help="PostgreSQL connections")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per row; the median run is shown (this VM is noisy)",
    )
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: a private server)")
    asyncio.run(main(parser.parse_args()))
