"""What admins, /metrics and the command line read: jobs by state, usage, the audit trail and
the budgets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..ports import (
    AuditEntry,
    Budget,
    JobRecord,
    UsageRow,
)
from .database import Tx
from .policy import GLOBAL_SCOPE, month_of
from .rows import NO_CAP, UNFINISHED, _at, _record
from .store import SqlBase


class ReportStore(SqlBase):
    async def unfinished(self) -> list[JobRecord]:
        return await self.in_states(UNFINISHED)

    async def in_states(self, states: Sequence[str]) -> list[JobRecord]:
        """The jobs in these states, oldest first."""
        rows = await self._run(_in_states, [str(s) for s in states])
        return sorted((_record(r) for r in rows), key=lambda job: (job.created_at, job.id))

    async def jobs_of(
        self,
        platform: str,
        user_id: str,
        guild_id: str | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> tuple[list[JobRecord], int]:
        """A page of a member's jobs, newest first, and how many they have in all."""
        return await self._run(_jobs_of, platform, user_id, guild_id, limit, offset)

    async def usage(
        self, month: str | None = None, platform: str | None = None, guild_id: str | None = None
    ) -> list[UsageRow]:
        rows = await self._statement("usage", period=month, platform=platform, guild_id=guild_id)
        return [
            UsageRow(
                r["period"],
                r["platform"],
                r["guild_id"],
                r["user_id"],
                r["jobs"],
                r["delivered"],
                r["failed"],
                r["refunded"],
                r["cost"],
            )
            for r in rows
        ]

    async def audit_trail(self, job_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        if job_id is not None:
            rows = await self._statement("audit_of_job", job_id=job_id)
        else:
            rows = (await self._statement("latest_audit", limit=limit))[::-1]
        return [
            AuditEntry(
                r["id"],
                _at(r["at"]),
                r["actor"],
                r["action"],
                r["amount_micros"],
                r["job_id"],
                r["detail"],
            )
            for r in rows
        ]

    async def budget(self, month: str | None = None, scope: str = GLOBAL_SCOPE) -> Budget:
        return await self._run(self._budget, month or month_of(self._clock()), scope)

    def _budget(self, tx: Tx, month: str, scope: str) -> Budget:
        row = tx.query("budget_row", scope=scope, period=month).fetchone()
        cap = self._cap(tx, scope) if row is None else row["cap_micros"]
        platform, guild = scope.split(":", 1) if scope != GLOBAL_SCOPE else (None, None)
        sums = tx.query("budget_sums", period=month, platform=platform, guild_id=guild).fetchone()
        return Budget(
            scope,
            month,
            None if cap in (None, NO_CAP) else cap,
            sums["reserved"],
            sums["committed"],
            0 if row is None else row["held_micros"],
        )


def _in_states(tx: Tx, states: list[str]) -> list[Any]:
    return [row for state in states for row in tx.query("jobs_in_state", state=state).fetchall()]


def _jobs_of(
    tx: Tx, platform: str, user_id: str, guild_id: str | None, limit: int, offset: int
) -> tuple[list[JobRecord], int]:
    where = {"platform": platform, "user_id": user_id, "guild_id": guild_id}
    rows = tx.query("jobs_of_user", limit=limit, offset=offset, **where).fetchall()
    total = tx.query("count_jobs_of_user", **where).fetchone()["jobs"]
    return [_record(r) for r in rows], int(total)
