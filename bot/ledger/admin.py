"""What admins change: quota rules, budget caps, blocks, pauses, channels and refunds, each
written to the audit trail with its actor."""

from __future__ import annotations

from ..errors import InputError
from ..ports import (
    RULE_KINDS,
    QuotaRule,
)
from .database import Tx
from .migrations import NO_CAP
from .policy import GLOBAL_SCOPE, month_of
from .rows import UNFINISHED, _fetch_all
from .store import SqlBase


class AdminStore(SqlBase):
    def _admin_release(self, tx: Tx, job_id: str, reason: str, actor: str) -> bool:
        """An admin releases a settled job's reservation (one never charged)."""
        marks = ",".join("?" * len(UNFINISHED))
        return bool(
            tx.execute(
                "UPDATE jobs SET state = 'refunded', error = ?, updated_at = ?, actor = ?"
                f" WHERE id = ? AND committed = 0 AND state NOT IN ('refunded', {marks})"
                " RETURNING id",
                (reason, self._clock(), actor, job_id, *UNFINISHED),
            ).fetchall()
        )

    async def admin_refund(self, job_id: str, actor: str, reason: str) -> str:
        return await self._run(self._admin_refund, job_id, actor, reason)

    def _admin_refund(self, tx: Tx, job_id: str, actor: str, reason: str) -> str:
        row = tx.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise InputError("job", f"there is no job {job_id}")
        if row["state"] == "refunded":
            raise InputError("job", f"job {job_id} was already refunded")
        if row["state"] in UNFINISHED:
            # Refunding now would let a running job's charge go unrecorded.
            raise InputError("job", f"job {job_id} is still running; refund it when it ends")
        if self._admin_release(tx, job_id, reason, actor):
            return "released"
        # Segmind billed it: the money stays spent, the user gets the quota slot back.
        marks = ",".join("?" * (len(UNFINISHED) + 1))
        changed = tx.execute(
            f"UPDATE jobs SET state = 'refunded', error = ?, updated_at = ?, actor = ?"
            f" WHERE id = ? AND state NOT IN ({marks})",
            (reason, self._clock(), actor, job_id, "refunded", *UNFINISHED),
        ).rowcount
        if not changed:
            raise InputError("job", f"job {job_id} changed meanwhile; look at it again")
        return "slot"

    async def set_quota_rule(self, rule: QuotaRule, actor: str) -> None:
        if rule.kind not in RULE_KINDS:
            raise InputError("kind", f"must be one of {', '.join(RULE_KINDS)}")
        if rule.jobs is not None and rule.jobs < 0:
            raise InputError("jobs", "must be 0 or more (or unlimited)")
        if rule.window_hours is not None and rule.window_hours <= 0:
            raise InputError("window", "must be more than 0 hours")
        await self._run(self._set_quota_rule, rule, actor)

    def _set_quota_rule(self, tx: Tx, rule: QuotaRule, actor: str) -> None:
        tx.execute(
            "INSERT INTO quota_rules (platform, guild_id, kind, target, jobs, window_hours)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (platform, guild_id, kind, target)"
            " DO UPDATE SET jobs = excluded.jobs, window_hours = excluded.window_hours",
            (rule.platform, rule.guild_id, rule.kind, rule.target, rule.jobs, rule.window_hours),
        )
        tx.execute("UPDATE rules_version SET version = version + 1 WHERE id = 1")
        jobs = "unlimited" if rule.jobs is None else str(rule.jobs)
        window = f" per {rule.window_hours:g} h" if rule.window_hours else ""
        self._audit(
            tx,
            None,
            actor,
            "set_quota",
            0,
            f"{rule.platform} guild={rule.guild_id or '*'} {rule.kind}={rule.target}:"
            f" {jobs}{window}",
        )

    async def clear_quota_rule(
        self, platform: str, guild_id: str, kind: str, target: str, actor: str
    ) -> bool:
        return await self._run(self._clear_quota_rule, platform, guild_id, kind, target, actor)

    def _clear_quota_rule(self, tx: Tx, platform, guild_id, kind, target, actor) -> bool:
        cursor = tx.execute(
            "DELETE FROM quota_rules WHERE platform = ? AND guild_id = ? AND kind = ?"
            " AND target = ?",
            (platform, guild_id, kind, target),
        )
        if cursor.rowcount:
            tx.execute("UPDATE rules_version SET version = version + 1 WHERE id = 1")
            self._audit(
                tx,
                None,
                actor,
                "clear_quota",
                0,
                f"{platform} guild={guild_id or '*'} {kind}={target}",
            )
        return bool(cursor.rowcount)

    async def set_budget_cap(self, scope: str, cap_micros: int | None, actor: str) -> None:
        if cap_micros is not None and cap_micros < 0:
            raise InputError("budget", "must be 0 or more dollars")
        if scope == GLOBAL_SCOPE and cap_micros is None:
            raise InputError("budget", "the global cap cannot be removed, only changed")
        await self._run(self._set_budget_cap, scope, cap_micros, actor)

    def _set_budget_cap(self, tx: Tx, scope: str, cap: int | None, actor: str) -> None:
        tx.execute(
            "INSERT INTO budget_caps (scope, cap_micros) VALUES (?, ?)"
            " ON CONFLICT (scope) DO UPDATE SET cap_micros = excluded.cap_micros",
            (scope, cap),
        )
        # This month's row follows at once; lowering a cap never cancels what is reserved.
        tx.execute(
            "UPDATE budgets SET cap_micros = ? WHERE scope = ? AND period = ?",
            (NO_CAP if cap is None else cap, scope, month_of(self._clock())),
        )
        self._audit(
            tx, None, actor, "set_budget", cap or 0, f"{scope}: {'no cap' if cap is None else cap}"
        )

    async def block(
        self, platform: str, guild_id: str, user_id: str, actor: str, reason: str = ""
    ) -> None:
        await self._run(self._block, platform, guild_id, user_id, actor, reason)

    def _block(self, tx: Tx, platform, guild_id, user_id, actor, reason) -> None:
        tx.execute(
            "INSERT INTO blocks (platform, guild_id, user_id, reason) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (platform, guild_id, user_id) DO UPDATE SET reason = ?",
            (platform, guild_id, user_id, reason, reason),
        )
        self._audit(
            tx,
            None,
            actor,
            "block",
            0,
            f"{platform}:{user_id} guild={guild_id or '*'} {reason}".rstrip(),
        )

    async def unblock(self, platform: str, guild_id: str, user_id: str, actor: str) -> bool:
        return await self._run(self._unblock, platform, guild_id, user_id, actor)

    def _unblock(self, tx: Tx, platform, guild_id, user_id, actor) -> bool:
        cursor = tx.execute(
            "DELETE FROM blocks WHERE platform = ? AND guild_id = ? AND user_id = ?",
            (platform, guild_id, user_id),
        )
        if cursor.rowcount:
            self._audit(
                tx, None, actor, "unblock", 0, f"{platform}:{user_id} guild={guild_id or '*'}"
            )
        return bool(cursor.rowcount)

    async def allow_channel(
        self, platform: str, guild_id: str, channel_id: str, allowed: bool, actor: str
    ) -> bool:
        """Add or remove a channel where jobs may start; False if nothing changed."""
        return await self._run(self._allow_channel, platform, guild_id, channel_id, allowed, actor)

    def _allow_channel(self, tx: Tx, platform, guild_id, channel_id, allowed, actor) -> bool:
        if allowed:
            changed = tx.execute(
                "INSERT INTO channel_rules (platform, guild_id, channel_id) VALUES (?, ?, ?)"
                " ON CONFLICT (platform, guild_id, channel_id) DO NOTHING",
                (platform, guild_id, channel_id),
            ).rowcount
        else:
            changed = tx.execute(
                "DELETE FROM channel_rules WHERE platform = ? AND guild_id = ? AND channel_id = ?",
                (platform, guild_id, channel_id),
            ).rowcount
        if changed:
            self._audit(
                tx,
                None,
                actor,
                "allow_channel" if allowed else "disallow_channel",
                0,
                f"{platform} guild={guild_id} channel={channel_id}",
            )
        return bool(changed)

    async def allowed_channels(self, platform: str, guild_id: str) -> list[str]:
        """The channels where jobs may start on a server; empty: all of them."""
        rows = await self._run(
            _fetch_all,
            "SELECT channel_id FROM channel_rules WHERE platform = ?"
            " AND guild_id = ? ORDER BY channel_id",
            (platform, guild_id),
        )
        return [r["channel_id"] for r in rows]

    async def pause(self, scope: str, actor: str, reason: str = "") -> None:
        await self._run(self._pause, scope, actor, reason)

    def _pause(self, tx: Tx, scope: str, actor: str, reason: str) -> None:
        tx.execute(
            "INSERT INTO pauses (scope, reason) VALUES (?, ?)"
            " ON CONFLICT (scope) DO UPDATE SET reason = ?",
            (scope, reason, reason),
        )
        self._audit(tx, None, actor, "pause", 0, f"{scope} {reason}".rstrip())

    async def resume(self, scope: str, actor: str) -> bool:
        return await self._run(self._resume, scope, actor)

    def _resume(self, tx: Tx, scope: str, actor: str) -> bool:
        cursor = tx.execute("DELETE FROM pauses WHERE scope = ?", (scope,))
        if cursor.rowcount:
            self._audit(tx, None, actor, "resume", 0, scope)
        return bool(cursor.rowcount)
