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
from .policy import GLOBAL_SCOPE, Limit, guild_scope, month_of
from .rows import NO_CAP, _dt, _record, _refuse_if_barred
from .store import SqlBase


class JobStore(SqlBase):
    async def admit(self, requester: Requester) -> None:
        await self._run(self._admit, requester)

    def _admit(self, tx: Tx, who: Requester) -> None:
        _refuse_if_barred(self._context(tx, who, self._clock(), 0.0))

    async def reserve(self, job: NewJob) -> JobRecord:
        return await self._run(self._reserve, job)

    async def reserve_group(self, jobs: Sequence[NewJob]) -> list[JobRecord]:
        """Several jobs of one request (variations) reserved together or not at all: each its
        own job, counted in the quota and held in the budgets; one request for the cooldown
        and the jobs-on-the-way rule."""
        return await self._run(self._reserve_all, list(jobs))

    async def check_reserve(self, requester: Requester, price_micros: int, count: int = 1) -> None:
        """Raise what reserving `count` jobs would refuse now (blocked, paused, quota,
        cooldown, jobs on the way, budgets), reserving nothing: the very same rules, in a
        transaction undone."""
        job = NewJob(requester, price_micros, "", {})
        try:
            await self._run(self._reserve_and_undo, [job] * count)
        except _Undone:
            return

    def _reserve_and_undo(self, tx: Tx, jobs: list[NewJob]) -> None:
        self._reserve_all(tx, jobs)
        raise _Undone  # the transaction rolls back: nothing stays reserved

    def _reserve_all(self, tx: Tx, jobs: list[NewJob]) -> list[JobRecord]:
        return [self._reserve(tx, job, first=index == 0) for index, job in enumerate(jobs)]

    def _reserve(self, tx: Tx, job: NewJob, first: bool = True) -> JobRecord:
        who = job.requester
        tx.lock(f"user:{who.key}")
        now = self._clock()
        if job.idempotency_key:
            row = tx.query("job_by_idempotency_key", key=job.idempotency_key).fetchone()
            if row is not None:
                return _record(row, duplicate=True)
        limit, context = self._limit_and_context(tx, who, now)
        _refuse_if_barred(context)
        if not self._policy.exempt(who):
            self._check_user_rules(tx, who, now, limit, context, first)
        period = month_of(now)
        row = tx.query(
            "insert_job",
            id=secrets.token_hex(6),
            key=job.idempotency_key,
            platform=who.platform,
            user_id=who.user_id,
            guild_id=who.guild_id,
            now=now,
            period=period,
            price=job.price_micros,
            cache_key=job.cache_key,
            params=json.dumps(job.params),
            reply_to=json.dumps(job.reply_to),
            owner=self.owner,
            lease_until=now + self.lease_s,
            actor=who.key,
        ).fetchone()
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

    def _limit_and_context(
        self, tx: Tx, who: Requester, now: float
    ) -> tuple[Limit, dict[str, Any]]:
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
        version = tx.query("rules_version").fetchone()
        rows = tx.query("quota_rules").fetchall()
        rules = [
            QuotaRule(
                r["platform"], r["guild_id"], r["kind"], r["target"], r["jobs"], r["window_hours"]
            )
            for r in rows
        ]
        self._rules_cache = (version["version"], rules)
        return rules

    def _context(self, tx: Tx, who: Requester, now: float, window_s: float) -> dict[str, Any]:
        """What reserving decides on, in one query: pauses, blocks, the user's jobs in flight,
        in the window and in the cooldown, and the caps that apply."""
        row = tx.query(
            "reserve_context",
            global_scope=GLOBAL_SCOPE,
            guild_scope=guild_scope(who.platform, who.guild_id) or GLOBAL_SCOPE,
            platform=who.platform,
            user_id=who.user_id,
            guild_id=who.guild_id or "",
            window_start=now - window_s,
            cooldown_start=now - self._policy.cooldown_s,
        ).fetchone()
        context = dict(row)
        if not context["guild_cap_set"]:
            context["guild_cap"] = self._policy.guild_budget_micros
        if context["global_cap"] is None:
            context["global_cap"] = self._policy.global_budget_micros
        return context

    def _check_user_rules(
        self,
        tx: Tx,
        who: Requester,
        now: float,
        limit: Limit,
        context: dict[str, Any],
        first: bool = True,
    ) -> None:
        # The rest of a group (variations) came in the same request as its first job.
        if first and context["in_flight"] >= self._policy.max_in_flight:
            raise JobInFlight(self._policy.max_in_flight)
        latest = context["latest"]
        if first and self._policy.cooldown_s and latest is not None:
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
        row = tx.query(
            "nth_counted_job",
            platform=who.platform,
            user_id=who.user_id,
            window_start=now - limit.window_s,
            offset=recent - limit.jobs,
        ).fetchone()
        return None if row is None else row["created_at"] + limit.window_s

    def _hold(
        self, tx: Tx, period: str, holds: list[tuple[str, int | None]], amount: int
    ) -> str | None:
        """Reserve `amount` on each (scope, cap), in the order given, only where what the row
        holds stays within its cap: one statement, which the database applies to each budget
        row one writer at a time. Returns the scope that refused, if any."""
        for scope, cap in holds:
            if cap is not None and amount > cap:
                return scope
        caps = [NO_CAP if cap is None else cap for _, cap in holds]
        if len(holds) == 2:
            rows = tx.query(
                "hold_budgets",
                first=holds[0][0],
                first_cap=caps[0],
                second=holds[1][0],
                second_cap=caps[1],
                period=period,
                amount=amount,
            ).fetchall()
        else:
            [(scope, _)] = holds
            rows = tx.query(
                "hold_budget", scope=scope, period=period, cap=caps[0], amount=amount
            ).fetchall()
        held = {row["scope"] for row in rows}
        # The first that refused, if any (the caller rolls back the others' holds).
        return next((scope for scope, _ in holds if scope not in held), None)

    async def renew(self, job_ids: Sequence[str]) -> set[str]:
        """Keep this process's jobs its own for another lease; returns those it still owns
        (a job missing was taken over by another process, or settled by an admin)."""
        if not job_ids:
            return set()
        return await self._run(self._renew, list(job_ids), self._clock() + self.lease_s)

    def _renew(self, tx: Tx, job_ids: list[str], until: float) -> set[str]:
        return {
            job_id
            for job_id in job_ids
            if tx.query("renew_lease", id=job_id, owner=self.owner, lease_until=until).fetchall()
        }

    async def release(self, job_ids: Sequence[str]) -> None:
        """Let this process's lease on these jobs lapse now (it is stopping): the next process
        to look takes them over at once instead of a lease later."""
        if job_ids:
            await self._run(self._release, list(job_ids))

    def _release(self, tx: Tx, job_ids: list[str]) -> None:
        for job_id in job_ids:
            tx.query("release_lease", id=job_id, owner=self.owner)

    async def claim_orphans(self, platforms: set[str] | None = None) -> list[JobRecord]:
        """Take over unfinished jobs whose process stopped renewing them (crashed, killed,
        restarted). Two instances claiming at once each get different jobs."""
        return await self._run(self._claim_orphans, platforms)

    def _claim_orphans(self, tx: Tx, platforms: set[str] | None) -> list[JobRecord]:
        now = self._clock()
        rows = tx.query("orphans", now=now).fetchall()
        claimed = []
        for row in rows:
            if platforms is not None and row["platform"] not in platforms:
                continue
            taken = tx.query(
                "claim_job", id=row["id"], owner=self.owner, lease_until=now + self.lease_s, now=now
            ).fetchone()
            if taken is not None:
                claimed.append(_record(taken))
        return claimed

    async def _owned(self, query: str, job_id: str, **params: Any) -> bool:
        """Change a job this process owns while it is unfinished (the query says how); False:
        it is no longer this process's to change."""
        return bool(
            await self._statement(query, id=job_id, owner=self.owner, now=self._clock(), **params)
        )

    async def mark_submitting(self, job_id: str) -> bool:
        """Written just before the POST: from here on the job may be billed."""
        return await self._owned("mark_submitting", job_id)

    async def mark_submitted(
        self, job_id: str, request_id: str, resume_ref: dict[str, Any]
    ) -> bool:
        return await self._owned(
            "mark_submitted", job_id, request_id=request_id, resume_ref=json.dumps(resume_ref)
        )

    async def set_state(self, job_id: str, state: JobState) -> bool:
        return await self._owned("set_state", job_id, state=str(state))

    async def commit(self, job_id: str, cost_micros: int) -> bool:
        """Charge a job once: a second commit, or a commit racing a refund, changes nothing."""
        return await self._owned("commit_job", job_id, cost=cost_micros)

    async def finish(self, job_id: str, state: JobState, error: str | None = None) -> bool:
        return await self._owned("finish_job", job_id, state=str(state), error=error)

    async def hold(self, job_id: str, reason: str) -> bool:
        """A submit that may have been billed: its price stays held for an admin to settle."""
        return await self._owned("hold_job", job_id, reason=reason)

    async def refund(self, job_id: str, reason: str) -> bool:
        """Release an uncharged job's reservation and quota slot (its budget rows follow by
        trigger). Only the job's owner, only while it is unfinished and uncharged."""
        return await self._owned("refund_job", job_id, reason=reason)

    async def take_upstream_slot(self, spacing_s: float) -> float:
        """When this process's next call to Segmind may go (wall time): the calls of every
        instance on this database are spaced `spacing_s` apart."""
        [row] = await self._statement("take_upstream_slot", now=self._clock(), spacing=spacing_s)
        slot: float = row["slot"]
        return slot

    async def note(self, job_id: str, action: str, detail: str) -> None:
        """An audit entry about a job that this process may no longer write to."""
        await self._run(self._audit, job_id, "system", action, 0, detail)

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._statement("job", id=job_id)
        return _record(rows[0]) if rows else None

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


class _Undone(Exception):
    """Ends a transaction whose only purpose was to see whether it would succeed."""
