"""One bot instance's share of a race on a shared ledger, run as its own process:

    python -m tests.ledger_race STORE WHERE CALLERS CAP_MICROS START_AT

fires CALLERS concurrent reservations (each by a different user) at START_AT (a time.time()),
and prints how many were granted. Two of these at once are two bot instances on one database.
"""

from __future__ import annotations

import asyncio
import sys
import time

from bot.errors import BudgetExhausted
from bot.ledger import QuotaPolicy, SqliteLedger
from bot.models import Requester
from bot.ports import NewJob

PRICE = 65_000


async def race(store: str, where: str, callers: int, cap: int, start_at: float) -> int:
    policy = QuotaPolicy(global_budget_micros=cap, jobs_per_window=10**6)
    if store == "postgres":
        from bot.ledger.postgres import PostgresLedger

        ledger = PostgresLedger(where, policy, pool_size=8)
    else:
        ledger = SqliteLedger(where, policy)
    await ledger.open()
    try:
        tag = f"p{time.monotonic_ns()}"
        await asyncio.sleep(max(0.0, start_at - time.time()))
        outcomes = await asyncio.gather(
            *(
                ledger.reserve(NewJob(Requester("discord", f"{tag}-{i}", "g1"), PRICE, "k", {}))
                for i in range(callers)
            ),
            return_exceptions=True,
        )
    finally:
        await ledger.close()
    unexpected = [
        o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, BudgetExhausted)
    ]
    if unexpected:
        raise unexpected[0]
    return sum(not isinstance(o, BaseException) for o in outcomes)


if __name__ == "__main__":
    store, where, callers, cap, start_at = sys.argv[1:6]
    print(asyncio.run(race(store, where, int(callers), int(cap), float(start_at))))
