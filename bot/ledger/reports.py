"""What admins, /metrics and the command line read: jobs by state, usage, the audit trail and
the budgets."""

from __future__ import annotations

from collections.abc import Sequence

from ..ports import (
    AuditEntry,
    Budget,
    JobRecord,
    UsageRow,
)
from .database import Tx
from .migrations import NO_CAP
from .policy import GLOBAL_SCOPE, month_of
from .rows import UNFINISHED, _at, _fetch_all, _record
from .store import SqlBase


class ReportStore(SqlBase):
    async def unfinished(self) -> list[JobRecord]:
        return await self.in_states(UNFINISHED)

    async def in_states(self, states: Sequence[str]) -> list[JobRecord]:
        marks = ",".join("?" * len(states))
        rows = await self._run(
            _fetch_all,
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at",
            tuple(states),
        )
        return [_record(r) for r in rows]

    async def usage(
        self, month: str | None = None, platform: str | None = None, guild_id: str | None = None
    ) -> list[UsageRow]:
        where, args = [], []
        for column, value in (("period", month), ("platform", platform), ("guild_id", guild_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._run(
            _fetch_all,
            "SELECT period, platform, guild_id, user_id, count(*) AS jobs,"
            " CAST(sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS BIGINT) AS delivered,"
            " CAST(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed,"
            " CAST(sum(CASE WHEN state = 'refunded' THEN 1 ELSE 0 END) AS BIGINT) AS refunded,"
            " CAST(sum(cost_micros) AS BIGINT) AS cost"
            f" FROM jobs {clause} GROUP BY period, platform, guild_id, user_id"
            " ORDER BY period DESC, cost DESC, jobs DESC, user_id",
            args,
        )
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
            rows = await self._run(
                _fetch_all, "SELECT * FROM audit WHERE job_id = ? ORDER BY id", (job_id,)
            )
        else:
            rows = await self._run(
                _fetch_all, "SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            )
            rows = rows[::-1]
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
        row = tx.execute(
            "SELECT cap_micros, held_micros FROM budgets WHERE scope = ? AND period = ?",
            (scope, month),
        ).fetchone()
        cap = self._cap(tx, scope) if row is None else row["cap_micros"]
        where, args = "period = ?", [month]
        if scope != GLOBAL_SCOPE:
            platform, guild = scope.split(":", 1)
            where += " AND platform = ? AND guild_id = ?"
            args += [platform, guild]
        sums = tx.execute(
            "SELECT CAST(COALESCE(sum(CASE WHEN committed = 0 AND state <> 'refunded'"
            " THEN reserved_micros ELSE 0 END), 0) AS BIGINT) AS reserved,"
            " CAST(COALESCE(sum(cost_micros), 0) AS BIGINT) AS committed"
            f" FROM jobs WHERE {where}",
            args,
        ).fetchone()
        return Budget(
            scope,
            month,
            None if cap in (None, NO_CAP) else cap,
            sums["reserved"],
            sums["committed"],
            0 if row is None else row["held_micros"],
        )
