"""What admins change: quota rules, budget caps, blocks, pauses, channels and refunds, each
written to the audit trail with its actor."""

from __future__ import annotations

import secrets

from ..errors import InputError
from ..ports import (
    PRIVATE_MODES,
    RULE_KINDS,
    QuotaRule,
)
from .database import Tx
from .policy import GLOBAL_SCOPE, month_of
from .rows import NO_CAP, UNFINISHED
from .store import SqlBase


class AdminStore(SqlBase):
    def _admin_release(self, tx: Tx, job_id: str, reason: str, actor: str) -> bool:
        """An admin releases a settled job's reservation (one never charged)."""
        return bool(
            tx.query(
                "admin_release", id=job_id, actor=actor, now=self._clock(), reason=reason
            ).fetchall()
        )

    async def admin_refund(self, job_id: str, actor: str, reason: str) -> str:
        return await self._run(self._admin_refund, job_id, actor, reason)

    def _admin_refund(self, tx: Tx, job_id: str, actor: str, reason: str) -> str:
        row = tx.query("job", id=job_id).fetchone()
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
        changed = tx.query(
            "admin_release_slot", id=job_id, actor=actor, now=self._clock(), reason=reason
        ).fetchall()
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
        tx.query(
            "set_quota_rule",
            platform=rule.platform,
            guild_id=rule.guild_id,
            kind=rule.kind,
            target=rule.target,
            jobs=rule.jobs,
            window_hours=rule.window_hours,
        )
        tx.query("bump_rules_version")
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

    def _clear_quota_rule(
        self, tx: Tx, platform: str, guild_id: str, kind: str, target: str, actor: str
    ) -> bool:
        cursor = tx.query(
            "clear_quota_rule", platform=platform, guild_id=guild_id, kind=kind, target=target
        )
        if cursor.rowcount:
            tx.query("bump_rules_version")
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
        tx.query("set_budget_cap", scope=scope, cap=cap)
        # This month's row follows at once; lowering a cap never cancels what is reserved.
        tx.query(
            "set_month_cap",
            scope=scope,
            period=month_of(self._clock()),
            cap=NO_CAP if cap is None else cap,
        )
        self._audit(
            tx, None, actor, "set_budget", cap or 0, f"{scope}: {'no cap' if cap is None else cap}"
        )

    async def forget_member(
        self, platform: str, user_id: str, actor: str, guild_id: str | None = None
    ) -> list[str]:
        """ "Forget me": the member's jobs stay, for the money, under an alias, with what they
        asked for cleared; their name leaves the audit trail. `guild_id`: only the jobs made
        in that server (an admin's forget). Returns the jobs' ids (their files are the
        caller's to remove). Refused while a job of theirs is on its way."""
        return await self._run(self._forget_member, platform, user_id, actor, guild_id)

    def _forget_member(
        self, tx: Tx, platform: str, user_id: str, actor: str, guild_id: str | None
    ) -> list[str]:
        tx.lock(f"user:{platform}:{user_id}")
        rows = tx.query(
            "states_of_user", platform=platform, user_id=user_id, guild_id=guild_id
        ).fetchall()
        if any(row["state"] in UNFINISHED for row in rows):
            raise InputError("jobs", "a model of theirs is still on its way; try when it is done")
        alias = f"forgotten-{secrets.token_hex(4)}"
        named, as_alias = f"{platform}:{user_id}", f"{platform}:{alias}"
        for row in rows:
            tx.query("forget_job", id=row["id"], platform=platform, alias=alias)
            tx.query("forget_audit_of_job", job_id=row["id"], actor=named, alias=as_alias)
        # Entries of no job (blocks, rules): theirs to forget only when it is everywhere.
        tx.query("forget_audit", actor=named, alias=as_alias, everywhere=int(guild_id is None))
        done_by = as_alias if actor == named else actor
        self._audit(tx, None, done_by, "forget", 0, f"{len(rows)} job(s) of {as_alias}")
        return [row["id"] for row in rows]

    async def block(
        self, platform: str, guild_id: str, user_id: str, actor: str, reason: str = ""
    ) -> None:
        await self._run(self._block, platform, guild_id, user_id, actor, reason)

    def _block(
        self, tx: Tx, platform: str, guild_id: str, user_id: str, actor: str, reason: str
    ) -> None:
        tx.query("block", platform=platform, guild_id=guild_id, user_id=user_id, reason=reason)
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

    def _unblock(self, tx: Tx, platform: str, guild_id: str, user_id: str, actor: str) -> bool:
        cursor = tx.query("unblock", platform=platform, guild_id=guild_id, user_id=user_id)
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

    def _allow_channel(
        self, tx: Tx, platform: str, guild_id: str, channel_id: str, allowed: bool, actor: str
    ) -> bool:
        changed = tx.query(
            "allow_channel" if allowed else "disallow_channel",
            platform=platform,
            guild_id=guild_id,
            channel_id=channel_id,
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
        rows = await self._statement("allowed_channels", platform=platform, guild_id=guild_id)
        return [r["channel_id"] for r in rows]

    async def set_private_mode(self, platform: str, guild_id: str, mode: str, actor: str) -> None:
        """Whether results may go to members' DMs on a server: PRIVATE_MODES."""
        if mode not in PRIVATE_MODES:
            raise ValueError(f"private delivery is one of {', '.join(PRIVATE_MODES)}")
        await self._run(self._set_private_mode, platform, guild_id, mode, actor)

    def _set_private_mode(
        self, tx: Tx, platform: str, guild_id: str, mode: str, actor: str
    ) -> None:
        if mode == "allowed":
            tx.query("clear_private_mode", platform=platform, guild_id=guild_id)
        else:
            tx.query("set_private_mode", platform=platform, guild_id=guild_id, mode=mode)
        self._audit(tx, None, actor, "private_mode", 0, f"{platform} guild={guild_id} {mode}")

    async def private_mode(self, platform: str, guild_id: str) -> str:
        rows = await self._statement("private_mode", platform=platform, guild_id=guild_id)
        return str(rows[0]["mode"]) if rows else "allowed"

    async def pause(self, scope: str, actor: str, reason: str = "") -> None:
        await self._run(self._pause, scope, actor, reason)

    def _pause(self, tx: Tx, scope: str, actor: str, reason: str) -> None:
        tx.query("pause", scope=scope, reason=reason)
        self._audit(tx, None, actor, "pause", 0, f"{scope} {reason}".rstrip())

    async def resume(self, scope: str, actor: str) -> bool:
        return await self._run(self._resume, scope, actor)

    def _resume(self, tx: Tx, scope: str, actor: str) -> bool:
        cursor = tx.query("resume", scope=scope)
        if cursor.rowcount:
            self._audit(tx, None, actor, "resume", 0, scope)
        return bool(cursor.rowcount)
