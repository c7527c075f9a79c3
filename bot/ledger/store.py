"""The base of the ledger's SQL, which its three parts (jobs.py, admin.py, reports.py) share.

A store (SQLite, PostgreSQL) gives a `Database`: it runs a function in one transaction on a
thread of its own; the SQL is written once, in bot/ledger/sql/, with named parameters.
Everything that decides money or quota happens inside that one transaction, so the rules hold
whatever the concurrency, between coroutines, threads or processes: a user's reservations are
serialised by a lock on the user, and money moves only through conditional UPDATEs of a budget
row (`held + price <= cap`), which the database applies one at a time.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import LedgerTimeout
from ..ports import QuotaRule
from .database import Database, Tx
from .policy import GLOBAL_SCOPE, QuotaPolicy
from .queries import migrations

T = TypeVar("T")


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

    async def _statement(self, name: str, /, **params: Any) -> list[Any]:
        """One named query, atomic by itself, within the ledger's time bound."""
        return await self._bounded(self.database.statement(name, **params))

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
        """Apply the migrations this database has not had yet, in order, in one transaction
        (the lock keeps two instances starting at once from racing)."""
        tx.lock("schema")
        tx.query("create_schema_version")
        current = tx.query("schema_version").fetchone()["version"] or 0
        schema = migrations(self.database.dialect)
        for version, statements in enumerate(schema[current:], start=current + 1):
            for statement in statements:
                tx.execute_schema(statement)
            tx.query("record_schema_version", version=version)

    def _audit(
        self, tx: Tx, job_id: str | None, actor: str, action: str, amount: int = 0, detail: str = ""
    ) -> None:
        tx.query(
            "audit",
            at=self._clock(),
            job_id=job_id,
            actor=actor,
            action=action,
            amount=amount,
            detail=detail,
        )

    async def ping(self) -> bool:
        """The database answers (for /readyz)."""
        try:
            await self._statement("ping")
        except Exception:  # any failure means not ready; /readyz says so
            return False
        return True

    def _cap(self, tx: Tx, scope: str) -> int | None:
        row = tx.query("budget_cap", scope=scope).fetchone()
        if row is not None:
            cap: int | None = row["cap_micros"]
            return cap
        if scope == GLOBAL_SCOPE:
            return self._policy.global_budget_micros
        return self._policy.guild_budget_micros

    def _left(self, tx: Tx, month: str, scope: str, cap: int | None) -> int | None:
        """What a budget has left this month (None: no cap), from its one row."""
        if cap is None:
            return None
        row = tx.query("budget_row", scope=scope, period=month).fetchone()
        return max(0, cap - (row["held_micros"] if row else 0))
