"""The base of the ledger's SQL, which its three parts (jobs.py, admin.py, reports.py) share.

A store (SQLite, PostgreSQL) gives a `Database`: it runs a function in one transaction on a
thread of its own, with SQL written once in `?` style. Everything that decides money or quota
happens inside that one transaction, so the rules hold whatever the concurrency, between
coroutines, threads or processes: a user's reservations are serialised by a lock on the user,
and money moves only through conditional UPDATEs of a budget row
(`reserved + committed + price <= cap`), which the database applies one at a time.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..errors import LedgerTimeout
from ..ports import QuotaRule
from .database import Database, Tx
from .migrations import MIGRATIONS, NO_CAP, SERIAL_KEY, Statement, sql_for
from .policy import GLOBAL_SCOPE, QuotaPolicy

T = TypeVar("T")

__all__ = [
    "MIGRATIONS",
    "NO_CAP",
    "SERIAL_KEY",
    "Database",
    "SqlBase",
    "Statement",
    "Tx",
    "sql_for",
]


class SqlBase:
    """What every part of the ledger shares: the database, the policy, the clock, this
    process's owner name and lease, the time bound on every call, and the audit trail."""

    def __init__(
        self,
        database: Database,
        policy: QuotaPolicy,
        clock: Callable[[], float] = time.time,
        lease_s: float = 30.0,
        timeout_s: float = 30.0,
    ):
        self.database = database
        self.timeout_s = timeout_s  # no ledger call waits longer: a stuck disk is an answer too
        self._policy = policy
        self._clock = clock
        # This process's name on the jobs it runs; it renews their leases while it lives.
        self.owner = secrets.token_hex(6)
        self.lease_s = lease_s
        self._rules_cache: tuple[int, list[QuotaRule]] = (-1, [])  # (version, every rule)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(tx, *args) in one transaction, within the ledger's time bound."""
        return await self._bounded(self.database.run(fn, *args))

    async def _statement(self, sql: str, args: Sequence[Any] = ()) -> list:
        return await self._bounded(self.database.statement(sql, args))

    async def _bounded(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except TimeoutError:
            raise LedgerTimeout() from None

    async def open(self) -> None:
        await self.database.open()
        await self._run(self._migrate)

    async def close(self) -> None:
        await self.database.close()

    def _migrate(self, tx: Tx) -> None:
        tx.lock("schema")
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = tx.execute("SELECT max(version) AS v FROM schema_version").fetchone()["v"] or 0
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                sql = sql_for(statement, self.database.dialect)
                if sql:
                    tx.execute(sql)
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def _audit(self, tx: Tx, job_id, actor, action, amount=0, detail="") -> None:
        tx.execute(
            "INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (self._clock(), job_id, actor, action, amount, detail),
        )

    async def ping(self) -> bool:
        """The database answers (for /readyz)."""
        try:
            await self._statement("SELECT 1")
        except Exception:  # any failure means not ready; /readyz says so
            return False
        return True

    def _cap(self, tx: Tx, scope: str) -> int | None:
        row = tx.execute("SELECT cap_micros FROM budget_caps WHERE scope = ?", (scope,)).fetchone()
        if row is not None:
            return row["cap_micros"]
        if scope == GLOBAL_SCOPE:
            return self._policy.global_budget_micros
        return self._policy.guild_budget_micros

    def _left(self, tx: Tx, month: str, scope: str, cap: int | None) -> int | None:
        """What a budget has left this month (None: no cap), from its one row."""
        if cap is None:
            return None
        row = tx.execute(
            "SELECT held_micros FROM budgets WHERE scope = ? AND period = ?", (scope, month)
        ).fetchone()
        return max(0, cap - (row["held_micros"] if row else 0))
