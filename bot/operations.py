"""What users and admins can ask of the bot, platform-free: the adapters and the command line
expose these and check who may call them; this module checks what they ask for makes sense,
scopes it to the asker's server, and words the answers.

Scopes: a server is a Discord guild or a Slack workspace, named by (platform, guild_id).
Admin actions taken on a server apply to that server only; the command line acts everywhere.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from .errors import InputError
from .ledger.policy import GLOBAL_SCOPE, guild_scope
from .models import Requester
from .ports import PRIVATE_MODES, AdminLedger, Budget, QuotaRule, QuotaStatus, UsageRow
from .replies import details_text, on_this, server_noun
from .settings import micros_to_usd, usd_to_micros

GROUPINGS = ("user", "guild", "month")
NOT_YOURS = "Only the person who asked for it, or an admin, can delete this."
FORGOTTEN = "I no longer know that job."


@dataclass(frozen=True)
class Where:
    """Where an admin acts: one server, or (guild_id None, from the command line) everywhere."""

    platform: str
    guild_id: str | None = None

    @property
    def budget_scope(self) -> str:
        return guild_scope(self.platform, self.guild_id) or GLOBAL_SCOPE

    @property
    def rule_guild(self) -> str:
        return self.guild_id or ""

    @property
    def noun(self) -> str:
        return server_noun(self.platform)


REASON_MAX = 200  # characters: a reason is shown to members, inside a chat message
JOB_ID = re.compile(r"[0-9a-f]{6,32}")


PRIVATE_SAID = {
    "allowed": "members may ask for their results in their DMs (private); others are posted in "
    "the channel",
    "default": "results go to members' DMs unless they ask for the channel (private: no)",
    "forbidden": "results are always posted in the channel; private delivery is off",
}


def checked_reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if len(reason) > REASON_MAX:
        raise InputError("reason", f"at most {REASON_MAX} characters, please")
    return reason


class Operations:
    def __init__(self, ledger: AdminLedger):
        self.ledger = ledger

    # -- for every user ----------------------------------------------------------------------

    async def my_quota(self, requester: Requester) -> QuotaStatus:
        return await self.ledger.quota_status(requester)

    async def job_details(self, job_id: str, escape: Callable[[str], str] = str) -> str:
        """A result's Details: its settings and cost (anyone who sees the result may ask)."""
        record = await self.ledger.get(job_id)
        if record is None:
            return FORGOTTEN
        return details_text(record.params, record.id, record.cost_micros, escape)

    async def may_delete(self, job_id: str, who: Requester) -> bool:
        """A result is deleted by the member who asked for it, or by an admin."""
        record = await self.ledger.get(job_id)
        return record is not None and (record.user_id == who.user_id or who.is_admin)

    # -- for admins --------------------------------------------------------------------------

    async def usage(
        self, where: Where | None = None, month: str | None = None, by: str = "user"
    ) -> list[UsageRow]:
        """The usage report, optionally for one server, rolled up by user, guild or month."""
        if month is not None:
            check_month(month)
        if by not in GROUPINGS:
            raise InputError("by", f"must be one of {', '.join(GROUPINGS)}")
        rows = await self.ledger.usage(
            month, where.platform if where else None, where.guild_id if where else None
        )
        return roll_up(rows, by)

    async def usage_report(self, where: Where, month: str | None = None, top: int = 20) -> str:
        """A server's usage for a chat message: its top users as a table, then its budgets."""
        rows = await self.usage(where, month)
        budgets = await self.budgets(where, month)
        return f"```\n{usage_table(rows[:top])}\n```\n" + "\n".join(
            describe_budget(b) for b in budgets
        )

    async def budgets(self, where: Where | None = None, month: str | None = None) -> list[Budget]:
        scopes = [GLOBAL_SCOPE]
        if where is not None and where.guild_id:
            scopes.insert(0, where.budget_scope)
        return [await self.ledger.budget(month, scope) for scope in scopes]

    async def set_quota(
        self,
        actor: str,
        where: Where,
        kind: str,
        target: str,
        jobs: str | int | None,
        window_hours: float | None = None,
    ) -> str:
        """`jobs` as an admin types it: a number, or "unlimited"; "default" removes the rule."""
        if kind == "guild":
            if not where.guild_id:
                raise InputError("scope", f"a {where.noun} quota needs a {where.noun}")
            target = ""
        elif not target:
            raise InputError(kind, f"name the {kind}")
        if jobs == "default":
            removed = await self.ledger.clear_quota_rule(
                where.platform, where.rule_guild, kind, target, actor
            )
            return (
                f"{describe_rule_target(kind, target, where.noun)}: back to the default quota"
                if removed
                else f"{describe_rule_target(kind, target, where.noun)} had no quota of its own"
            )
        count = parse_jobs(jobs)
        await self.ledger.set_quota_rule(
            QuotaRule(where.platform, where.rule_guild, kind, target, count, window_hours), actor
        )
        shown = "unlimited jobs" if count is None else f"{count} jobs"
        window = f" per {window_hours:g} h" if window_hours else ""
        return f"{describe_rule_target(kind, target, where.noun)}: {shown}{window}"

    async def set_budget(self, actor: str, where: Where, usd: str | Decimal | None) -> str:
        """A server's monthly budget (or, from the command line, the global cap); "none"
        removes a server's own budget."""
        cap = parse_usd(usd)
        await self.ledger.set_budget_cap(where.budget_scope, cap, actor)
        name = f"this {where.noun}'s monthly budget" if where.guild_id else "the global monthly cap"
        return f"{name}: {'none' if cap is None else format_usd(cap)}"

    async def block(self, actor: str, where: Where, user_id: str, reason: str = "") -> str:
        reason = checked_reason(reason)
        if not user_id:
            raise InputError("user", "name the user to block")
        await self.ledger.block(where.platform, where.rule_guild, user_id, actor, reason)
        return f"blocked {user_id}" + ("" if where.guild_id else " everywhere")

    async def unblock(self, actor: str, where: Where, user_id: str) -> str:
        if await self.ledger.unblock(where.platform, where.rule_guild, user_id, actor):
            return f"unblocked {user_id}"
        return f"{user_id} was not blocked"

    async def pause(self, actor: str, where: Where | None, reason: str = "") -> str:
        reason = checked_reason(reason)
        scope = where.budget_scope if where else GLOBAL_SCOPE
        await self.ledger.pause(scope, actor, reason)
        here = f" {on_this(where.platform)}" if where and scope != GLOBAL_SCOPE else ""
        return "new jobs are paused" + here

    async def resume(self, actor: str, where: Where | None) -> str:
        scope = where.budget_scope if where else GLOBAL_SCOPE
        if await self.ledger.resume(scope, actor):
            return "new jobs are open again"
        return "new jobs were not paused"

    async def allow_channel(
        self, actor: str, where: Where, channel_id: str, allowed: bool
    ) -> tuple[bool, list[str]]:
        """Add or remove a channel where jobs may start: (changed, the channels now; none
        means every channel)."""
        if not where.guild_id:
            raise InputError("channel", f"channels belong to a {where.noun}")
        changed = await self.ledger.allow_channel(
            where.platform, where.guild_id, channel_id, allowed, actor
        )
        return changed, await self.ledger.allowed_channels(where.platform, where.guild_id)

    async def channel_answer(self, actor: str, where: Where, channel_id: str, allowed: bool) -> str:
        """`allow_channel`, worded for the admin who asked (both platforms write <#id>)."""
        changed, channels = await self.allow_channel(actor, where, channel_id, allowed)
        listed = ", ".join(f"<#{c}>" for c in channels) if channels else "every channel"
        done = ("allowed" if allowed else "no longer allowed") if changed else "unchanged"
        return f"<#{channel_id}>: {done}. Jobs start in: {listed}."

    async def set_private_mode(self, actor: str, where: Where, mode: str) -> str:
        """Results to members' DMs on this server: allowed (members choose), default, or
        forbidden."""
        mode = mode.strip().lower()
        if not where.guild_id:
            raise InputError("private", f"this is set for a {where.noun}")
        if mode not in PRIVATE_MODES:
            raise InputError("private", f"say {', '.join(PRIVATE_MODES)}")
        await self.ledger.set_private_mode(where.platform, where.guild_id, mode, actor)
        return PRIVATE_SAID[mode]

    async def delivers_privately(self, where: Where, asked: bool | None) -> bool:
        """Whether a job goes to the member's DMs: what they asked (None: nothing), within
        what the server allows; raises InputError where it forbids what they asked."""
        if not where.guild_id:  # a DM already: nowhere more private to send it
            return False
        mode = await self.ledger.private_mode(where.platform, where.guild_id)
        if mode == "forbidden":
            if asked:
                raise InputError(
                    "private",
                    f"{on_this(where.platform)}, results are posted in the channel "
                    "(an admin turned private delivery off)",
                )
            return False
        return asked if asked is not None else mode == "default"

    async def may_start_in(self, where: Where, places: Sequence[str]) -> list[str] | None:
        """None if jobs may start here, else the channels where they may. `places`: the
        channel and what holds it (a thread's channel or forum, a channel's category); an
        allowed one allows everything in it."""
        if not where.guild_id:
            return None
        channels = await self.ledger.allowed_channels(where.platform, where.guild_id)
        return None if not channels or set(places) & set(channels) else channels

    async def refusal_here(self, where: Where, places: Sequence[str]) -> str | None:
        """Why a job may not start here (and where it may), or None."""
        channels = await self.may_start_in(where, places)
        if channels is None:
            return None
        made_in = ", ".join(f"<#{c}>" for c in channels)
        return f"{on_this(where.platform).capitalize()}, 3D models are made in {made_in}."

    async def refund(self, actor: str, where: Where | None, job_id: str, reason: str = "") -> str:
        reason = checked_reason(reason)
        job_id = job_id.strip()
        if not JOB_ID.fullmatch(job_id):
            # Never echoed: it may be anything, of any length.
            raise InputError(
                "job", "that is not a job id (12 letters and digits, as Details shows)"
            )
        job = await self.ledger.get(job_id)
        if job is None or (
            where is not None
            and where.guild_id
            and (job.platform, job.guild_id) != (where.platform, where.guild_id)
        ):
            here = f" {on_this(where.platform)}" if where is not None and where.guild_id else ""
            raise InputError("job", f"there is no job {job_id}{here}")
        outcome = await self.ledger.admin_refund(job.id, actor, reason or "refunded by an admin")
        if outcome == "released":
            return f"job {job.id}: its {format_usd(job.reserved_micros)} reservation is released"
        return (
            f"job {job.id}: the user has the quota slot back; the "
            f"{format_usd(job.cost_micros)} it cost stays spent (Segmind billed it)"
        )


# -- words and numbers ---------------------------------------------------------------------


def describe_quota(status: QuotaStatus, now: datetime | None = None, noun: str = "server") -> str:
    """The answer to "how much may I still do?", a few short lines."""
    now = now or datetime.now(UTC)
    lines = []
    if status.blocked:
        return "An admin has blocked you from making 3D models with this bot here."
    if status.paused:
        lines.append("New jobs are paused by the admins right now.")
    if status.limit is None:
        lines.append("Jobs: no limit for you.")
    else:
        lines.append(f"Jobs left: {status.left} of {status.limit} per {status.window_hours:g} h.")
        if status.next_free_at is not None:
            lines.append(
                f"The next one frees in {until(status.next_free_at, now)} "
                f"({status.next_free_at:%Y-%m-%d %H:%M} UTC)."
            )
    if status.cooldown_until is not None and status.cooldown_until > now:
        lines.append(f"Cooldown: you can start another job in {until(status.cooldown_until, now)}.")
    if status.max_in_flight is not None and status.in_flight:
        lines.append(f"On the way: {status.in_flight} of {status.max_in_flight} jobs.")
    budget = f"Budget left this month: {format_usd(status.budget_left_micros)}"
    if status.guild_budget_left_micros is not None:
        budget += f" (this {noun}: {format_usd(status.guild_budget_left_micros)})"
    lines.append(budget + ".")
    return "\n".join(lines)


def until(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((moment - now).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


def describe_rule_target(kind: str, target: str, noun: str = "server") -> str:
    return {"user": f"user {target}", "role": f"role {target}", "guild": f"this {noun}"}[kind]


def format_usd(micros: int) -> str:
    return (
        f"${micros_to_usd(micros):.2f}" if micros % 10_000 == 0 else f"${micros_to_usd(micros):.3f}"
    )


def parse_jobs(text: str | int | None) -> int | None:
    if text is None or str(text).strip().lower() in ("unlimited", "none", "inf"):
        return None
    try:
        jobs = int(str(text).strip())
    except ValueError:
        raise InputError("jobs", "must be a whole number, unlimited or default") from None
    if jobs < 0:
        raise InputError("jobs", "must be 0 or more")
    return jobs


def parse_usd(text: str | Decimal | None) -> int | None:
    if text is None or str(text).strip().lower() in ("none", "off", ""):
        return None
    try:
        amount = Decimal(str(text).strip().lstrip("$"))
    except InvalidOperation:
        raise InputError("budget", "must be an amount in USD, like 25 or 12.50, or none") from None
    if not amount.is_finite() or amount < 0:
        raise InputError("budget", "must be 0 or more dollars")
    return usd_to_micros(amount)


def check_month(month: str) -> None:
    try:
        datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise InputError("month", "must look like 2026-05") from None


def roll_up(rows: list[UsageRow], by: str) -> list[UsageRow]:
    """Sum the per-user rows by month, by (month, server) or keep them per user."""
    if by == "user":
        return rows
    totals: dict[tuple[str, str, str | None], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for row in rows:
        key = (row.month, "", None) if by == "month" else (row.month, row.platform, row.guild_id)
        for index, value in enumerate(
            (row.jobs, row.delivered, row.failed, row.refunded, row.cost_micros)
        ):
            totals[key][index] += value
    out = [UsageRow(m, p, g, "", *values) for (m, p, g), values in totals.items()]
    return sorted(out, key=lambda r: (r.month, r.cost_micros, r.jobs), reverse=True)


USAGE_COLUMNS = {
    "user": ("month", "platform", "guild", "user"),
    "guild": ("month", "platform", "guild"),
    "month": ("month",),
}
COUNT_COLUMNS = ("jobs", "delivered", "failed", "refunded", "usd")


def usage_cells(row: UsageRow, by: str) -> list[str]:
    keys = {
        "month": row.month,
        "platform": row.platform,
        "guild": row.guild_id or "-",
        "user": row.user_id,
    }
    return [keys[c] for c in USAGE_COLUMNS[by]] + [
        str(row.jobs),
        str(row.delivered),
        str(row.failed),
        str(row.refunded),
        f"{micros_to_usd(row.cost_micros):.3f}",
    ]


def usage_table(rows: list[UsageRow], by: str = "user") -> str:
    header = [*USAGE_COLUMNS[by], *COUNT_COLUMNS]
    table = [header] + [usage_cells(r, by) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    if not rows:
        lines.append("(no jobs yet)")
    return "\n".join(lines)


def usage_csv(rows: list[UsageRow], by: str = "user") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*USAGE_COLUMNS[by], *COUNT_COLUMNS])
    for row in rows:
        writer.writerow(usage_cells(row, by))
    return out.getvalue()


def describe_budget(budget: Budget) -> str:
    platform = budget.scope.split(":", 1)[0]
    name = "global" if budget.scope == GLOBAL_SCOPE else f"{server_noun(platform)} {budget.scope}"
    cap = "no cap" if budget.cap_micros is None else f"cap {format_usd(budget.cap_micros)}"
    return (
        f"{name} budget {budget.month}: {format_usd(budget.committed_micros)} spent, "
        f"{format_usd(budget.reserved_micros)} reserved, {cap}"
    )
