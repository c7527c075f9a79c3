"""The job ledger the pipeline uses: admitting and reserving (quota, cooldown, budgets in one
transaction), owning jobs (leases, takeovers) and moving them through their states, each
change conditional on the owner."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from ..errors import (
    BudgetExhausted,
    CoolingDown,
    JobInFlight,
    QuotaExceeded,
)
from ..models import JobState, Requester
from ..ports import (
    JobRecord,
    NewJob,
    QuotaRule,
    QuotaStatus,
)
from .database import Tx
from .migrations import NO_CAP
from .policy import GLOBAL_SCOPE, Limit, guild_scope, month_of
from .rows import COUNTED, UNFINISHED, _dt, _fetch_one, _record, _refuse_if_barred
from .store import SqlBase


class JobStore(SqlBase):
    async def admit(self, requester: Requester) -> None:
        await self._run(self._admit, requester)

    def _admit(self, tx: Tx, who: Requester) -> None:
        _refuse_if_barred(self._context(tx, who, self._clock(), 0.0))

    async def reserve(self, job: NewJob) -> JobRecord:
        return await self._run(self._reserve, job)

    def _reserve(self, tx: Tx, job: NewJob) -> JobRecord:
        who = job.requester
        tx.lock(f"user:{who.key}")
        now = self._clock()
        if job.idempotency_key:
            row = tx.execute(
                "SELECT * FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
            ).fetchone()
            if row is not None:
                return _record(row, duplicate=True)
        limit, context = self._limit_and_context(tx, who, now)
        _refuse_if_barred(context)
        if not self._policy.exempt(who):
            self._check_user_rules(tx, who, now, limit, context)
        period = month_of(now)
        job_id = secrets.token_hex(6)
        row = tx.execute(
            "INSERT INTO jobs (id, idempotency_key, platform, user_id, guild_id, state,"
            " created_at, updated_at, period, reserved_micros, cache_key, params, reply_to,"
            " owner, lease_until, actor)"
            " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (
                job_id,
                job.idempotency_key,
                who.platform,
                who.user_id,
                who.guild_id,
                now,
                now,
                period,
                job.price_micros,
                job.cache_key,
                json.dumps(job.params),
                json.dumps(job.reply_to),
                self.owner,
                now + self.lease_s,
                who.key,
            ),
        ).fetchall()[0]
        # Money last, so the budget rows every instance contends for stay locked only briefly:
        # the server's budget first, then the global one; a refusal rolls all of it back.
        holds = [(GLOBAL_SCOPE, context["global_cap"])]
        guild = guild_scope(who.platform, who.guild_id)
        if guild is not None:
            holds.insert(0, (guild, context["guild_cap"]))
        refused = self._hold(tx, period, holds, job.price_micros)
        if refused is not None:
            raise BudgetExhausted(self._policy.budget_message(refused))
        return _record(row)

    def _limit_and_context(self, tx: Tx, who: Requester, now: float) -> tuple[Limit, dict]:
        """The user's quota and the context to judge it, from cached rules when they are
        current (the context query says which version of the rules is in force)."""
        version, rules = self._rules_cache
        limit = self._policy.limit_for(who, rules)
        context = self._context(tx, who, now, limit.window_s)
        if context["rules_version"] != version:
            rules = self._load_rules(tx)
            fresh = self._policy.limit_for(who, rules)
            if fresh.window_s != limit.window_s:
                context = self._context(tx, who, now, fresh.window_s)
            limit = fresh
        return limit, context

    def _load_rules(self, tx: Tx) -> list[QuotaRule]:
        # The version first: a change made between the two reads is simply loaded again.
        version = tx.execute("SELECT version FROM rules_version WHERE id = 1").fetchone()
        rows = tx.execute("SELECT * FROM quota_rules").fetchall()
        rules = [
            QuotaRule(
                r["platform"], r["guild_id"], r["kind"], r["target"], r["jobs"], r["window_hours"]
            )
            for r in rows
        ]
        self._rules_cache = (version["version"], rules)
        return rules

    def _context(self, tx: Tx, who: Requester, now: float, window_s: float) -> dict:
        """What reserving decides on, in one query: pauses, blocks, the user's jobs in flight,
        in the window and in the cooldown, and the caps that apply."""
        guild = guild_scope(who.platform, who.guild_id) or GLOBAL_SCOPE
        unfinished = ",".join("?" * len(UNFINISHED))
        counted = ",".join("?" * len(COUNTED))
        user = (who.platform, who.user_id)
        row = tx.execute(
            "SELECT"
            " (SELECT reason FROM pauses WHERE scope IN (?, ?) LIMIT 1) AS paused,"
            " (SELECT count(*) FROM blocks WHERE platform = ? AND user_id = ?"
            "  AND guild_id IN (?, '')) AS blocked,"
            f" (SELECT count(*) FROM jobs WHERE platform = ? AND user_id = ?"
            f"  AND state IN ({unfinished})) AS in_flight,"
            f" (SELECT count(*) FROM jobs WHERE platform = ? AND user_id = ?"
            f"  AND state IN ({counted}) AND created_at > ?) AS recent,"
            f" (SELECT max(created_at) FROM jobs WHERE platform = ? AND user_id = ?"
            f"  AND state IN ({counted}) AND created_at > ?) AS latest,"
            " (SELECT count(*) FROM budget_caps WHERE scope = ?) AS guild_cap_set,"
            " (SELECT cap_micros FROM budget_caps WHERE scope = ?) AS guild_cap,"
            " (SELECT cap_micros FROM budget_caps WHERE scope = ?) AS global_cap,"
            " (SELECT version FROM rules_version WHERE id = 1) AS rules_version",
            (
                GLOBAL_SCOPE,
                guild,
                *user,
                who.guild_id or "",
                *user,
                *UNFINISHED,
                *user,
                *COUNTED,
                now - window_s,
                *user,
                *COUNTED,
                now - self._policy.cooldown_s,
                guild,
                guild,
                GLOBAL_SCOPE,
            ),
        ).fetchone()
        context = dict(row)
        if not context["guild_cap_set"]:
            context["guild_cap"] = self._policy.guild_budget_micros
        if context["global_cap"] is None:
            context["global_cap"] = self._policy.global_budget_micros
        return context

    def _check_user_rules(
        self, tx: Tx, who: Requester, now: float, limit: Limit, context: dict
    ) -> None:
        if context["in_flight"] >= self._policy.max_in_flight:
            raise JobInFlight(self._policy.max_in_flight)
        latest = context["latest"]
        if self._policy.cooldown_s and latest is not None:
            raise CoolingDown(latest + self._policy.cooldown_s - now)
        if limit.jobs is not None and context["recent"] >= limit.jobs:
            raise QuotaExceeded(
                limit.jobs,
                limit.window_hours,
                _dt(self._next_free(tx, who, now, limit, context["recent"])),
            )

    def _next_free(
        self, tx: Tx, who: Requester, now: float, limit: Limit, recent: int
    ) -> float | None:
        """When the oldest job that keeps the user at the limit leaves the window."""
        if limit.jobs is None or limit.jobs == 0 or recent < limit.jobs:
            return None
        counted = ",".join("?" * len(COUNTED))
        row = tx.execute(
            f"SELECT created_at FROM jobs WHERE platform = ? AND user_id = ?"
            f" AND state IN ({counted}) AND created_at > ? ORDER BY created_at"
            f" LIMIT 1 OFFSET ?",
            (who.platform, who.user_id, *COUNTED, now - limit.window_s, recent - limit.jobs),
        ).fetchone()
        return None if row is None else row["created_at"] + limit.window_s

    def _hold(
        self, tx: Tx, period: str, holds: list[tuple[str, int | None]], amount: int
    ) -> str | None:
        """Reserve `amount` on every (scope, cap) only where reserved + committed stays within
        the cap: one statement, which the database applies to each budget row one writer at a
        time, in the order given. Returns the scope that refused, if any."""
        for scope, cap in holds:
            if cap is not None and amount > cap:
                return scope
        rows = ", ".join(["(?, ?, ?, ?)"] * len(holds))
        values = [
            v
            for scope, cap in holds
            for v in (scope, period, NO_CAP if cap is None else cap, amount)
        ]
        held = {
            r["scope"]
            for r in tx.execute(
                f"INSERT INTO budgets (scope, period, cap_micros, held_micros) VALUES {rows}"
                " ON CONFLICT (scope, period) DO UPDATE SET cap_micros = excluded.cap_micros,"
                " held_micros = budgets.held_micros + excluded.held_micros"
                " WHERE budgets.held_micros + excluded.held_micros <= excluded.cap_micros"
                " RETURNING scope",
                values,
            ).fetchall()
        }
        # The first that refused, if any (the caller rolls back the others' holds).
        return next((scope for scope, _ in holds if scope not in held), None)

    async def renew(self, job_ids: Sequence[str]) -> set[str]:
        """Keep this process's jobs its own for another lease; returns those it still owns
        (a job missing was taken over by another process, or settled by an admin)."""
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        unfinished = ",".join("?" * len(UNFINISHED))
        rows = await self._statement(
            f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND id IN ({marks})"
            f" AND state IN ({unfinished}) RETURNING id",
            (self._clock() + self.lease_s, self.owner, *job_ids, *UNFINISHED),
        )
        return {r["id"] for r in rows}

    async def release(self, job_ids: Sequence[str]) -> None:
        """Let this process's lease on these jobs lapse now (it is stopping): the next process
        to look takes them over at once instead of a lease later."""
        if job_ids:
            marks = ",".join("?" * len(job_ids))
            await self._statement(
                f"UPDATE jobs SET lease_until = 0 WHERE owner = ? AND id IN ({marks})",
                (self.owner, *job_ids),
            )

    async def claim_orphans(self, platforms: set[str] | None = None) -> list[JobRecord]:
        """Take over unfinished jobs whose process stopped renewing them (crashed, killed,
        restarted). Two instances claiming at once each get different jobs."""
        return await self._run(self._claim_orphans, platforms)

    def _claim_orphans(self, tx: Tx, platforms: set[str] | None) -> list[JobRecord]:
        now = self._clock()
        marks = ",".join("?" * len(UNFINISHED))
        rows = tx.execute(
            f"SELECT id, platform FROM jobs WHERE state IN ({marks})"
            " AND COALESCE(lease_until, 0) < ? ORDER BY created_at",
            (*UNFINISHED, now),
        ).fetchall()
        claimed = []
        for row in rows:
            if platforms is not None and row["platform"] not in platforms:
                continue
            taken = tx.execute(
                "UPDATE jobs SET owner = ?, lease_until = ?, updated_at = ?, actor = 'system'"
                " WHERE id = ? AND COALESCE(lease_until, 0) < ? RETURNING *",
                (self.owner, now + self.lease_s, now, row["id"], now),
            ).fetchall()
            if taken:
                claimed.append(_record(taken[0]))
        return claimed

    def _owned(
        self,
        assignments: str,
        job_id: str,
        args: Sequence[Any],
        states: Sequence[str] = UNFINISHED,
        extra: str = "",
    ) -> tuple[str, tuple]:
        marks = ",".join("?" * len(states))
        return (
            f"UPDATE jobs SET {assignments}, updated_at = ?, actor = 'system'"
            f" WHERE id = ? AND owner = ? AND state IN ({marks}){extra} RETURNING id",
            (*args, self._clock(), job_id, self.owner, *states),
        )

    async def _changed(self, statement: tuple[str, tuple]) -> bool:
        return bool(await self._statement(*statement))

    async def mark_submitting(self, job_id: str) -> bool:
        """Written just before the POST: from here on the job may be billed."""
        return await self._changed(self._owned("state = 'submitting'", job_id, (), ("queued",)))

    async def mark_submitted(self, job_id: str, request_id: str, resume_ref: dict) -> bool:
        return await self._changed(
            self._owned(
                "state = 'submitted', request_id = ?, resume_ref = ?",
                job_id,
                (request_id, json.dumps(resume_ref)),
                ("queued", "submitting"),
            )
        )

    async def set_state(self, job_id: str, state: JobState) -> bool:
        return await self._changed(self._owned("state = ?", job_id, (str(state),)))

    async def commit(self, job_id: str, cost_micros: int) -> bool:
        # The condition is the charge-once rule: a second commit, or a commit racing a refund,
        # finds nothing to change. `reserved_micros` stays on the job as its history.
        return await self._changed(
            self._owned(
                "cost_micros = ?, committed = 1", job_id, (cost_micros,), extra=" AND committed = 0"
            )
        )

    async def finish(self, job_id: str, state: JobState, error: str | None = None) -> bool:
        return await self._changed(self._owned("state = ?, error = ?", job_id, (str(state), error)))

    async def hold(self, job_id: str, reason: str) -> bool:
        """A submit that may have been billed: its price stays held for an admin to settle."""
        return await self._changed(
            self._owned("state = 'held', error = ?", job_id, (reason,), extra=" AND committed = 0")
        )

    async def refund(self, job_id: str, reason: str) -> bool:
        """Release an uncharged job's reservation and quota slot (its budget rows follow by
        trigger). Only the job's owner, only while it is unfinished and uncharged."""
        return await self._changed(
            self._owned(
                "state = 'refunded', error = ?", job_id, (reason,), extra=" AND committed = 0"
            )
        )

    async def note(self, job_id: str, action: str, detail: str) -> None:
        """An audit entry about a job that this process may no longer write to."""
        await self._run(self._audit, job_id, "system", action, 0, detail)

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self._run(_fetch_one, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _record(row) if row else None

    async def quota_status(self, requester: Requester) -> QuotaStatus:
        return await self._run(self._quota_status, requester)

    def _quota_status(self, tx: Tx, who: Requester) -> QuotaStatus:
        now, policy = self._clock(), self._policy
        limit, context = self._limit_and_context(tx, who, now)
        exempt = policy.exempt(who)
        cooldown_until = None
        if policy.cooldown_s and context["latest"] is not None and not exempt:
            cooldown_until = context["latest"] + policy.cooldown_s
        month = month_of(now)
        left = [self._left(tx, month, GLOBAL_SCOPE, context["global_cap"]) or 0]
        guild_left = None
        scope = guild_scope(who.platform, who.guild_id)
        if scope is not None:
            guild_left = self._left(tx, month, scope, context["guild_cap"])
            if guild_left is not None:
                left.append(guild_left)
        return QuotaStatus(
            limit=limit.jobs,
            used=context["recent"],
            next_free_at=_dt(self._next_free(tx, who, now, limit, context["recent"])),
            budget_left_micros=min(left),
            window_hours=limit.window_hours,
            source=limit.source,
            cooldown_until=_dt(cooldown_until),
            in_flight=context["in_flight"],
            max_in_flight=None if exempt else policy.max_in_flight,
            guild_budget_left_micros=guild_left,
            blocked=bool(context["blocked"]),
            paused=context["paused"] is not None,
        )
