"""The rules a ledger enforces: who may run how many jobs, how often, and how much may be spent.

Pure functions of the settings and the admins' overrides; the stores apply them inside one
transaction, so the rules hold whatever the concurrency.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..models import Requester
from ..ports import QuotaRule
from ..replies import server_noun
from ..settings import Settings, micros_to_usd, usd_to_micros


@dataclass(frozen=True)
class Limit:
    jobs: int | None  # None: not limited
    window_hours: float
    source: str  # what set it, for the quota command: "default", "user", "role", "server", "admin"

    @property
    def window_s(self) -> float:
        return self.window_hours * 3600


@dataclass(frozen=True)
class QuotaPolicy:
    jobs_per_window: int = 5
    window_hours: float = 24.0
    admins_exempt: bool = True
    global_budget_micros: int = 20_000_000  # per calendar month (UTC)
    guild_budget_micros: int | None = None  # per server/workspace per month; None: no cap
    cooldown_s: float = 0.0
    max_in_flight: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> QuotaPolicy:
        guild = settings.guild_budget_usd
        return cls(
            jobs_per_window=settings.quota_jobs,
            window_hours=settings.quota_window_hours,
            admins_exempt=settings.admins_exempt,
            global_budget_micros=settings.global_budget_micros,
            guild_budget_micros=None if guild is None else usd_to_micros(guild),
            cooldown_s=settings.cooldown_seconds,
            max_in_flight=settings.max_jobs_in_flight_per_user,
        )

    def exempt(self, requester: Requester) -> bool:
        """Admins skip the per-user rules (quota, cooldown, jobs in flight), never budgets."""
        return requester.is_admin and self.admins_exempt

    def limit_for(self, requester: Requester, rules: Iterable[QuotaRule] = ()) -> Limit:
        """The quota that applies: a user's own override here, then everywhere, then the most
        generous of their roles', then their server's, then the default."""
        if self.exempt(requester):
            return Limit(None, self.window_hours, "admin")
        guild = requester.guild_id or ""
        rules = [r for r in rules if r.platform == requester.platform]

        def limit(rule: QuotaRule, source: str) -> Limit:
            return Limit(rule.jobs, rule.window_hours or self.window_hours, source)

        for rule_guild in (guild, ""):
            for rule in rules:
                if (rule.kind, rule.guild_id, rule.target) == (
                    "user",
                    rule_guild,
                    requester.user_id,
                ):
                    return limit(rule, "user")
        roles = [
            r
            for r in rules
            if r.kind == "role" and r.guild_id == guild and r.target in requester.roles
        ]
        if roles:
            best = max(
                roles,
                key=lambda r: (
                    float("inf")
                    if r.jobs is None
                    else r.jobs / (r.window_hours or self.window_hours)
                ),
            )
            return limit(best, "role")
        for rule in rules:
            if rule.kind == "guild" and rule.guild_id == guild and guild:
                return limit(rule, "server")
        return Limit(self.jobs_per_window, self.window_hours, "default")

    def budget_message(self, scope: str) -> str:
        if scope == GLOBAL_SCOPE:
            cap = micros_to_usd(self.global_budget_micros)
            return (
                f"The bot's spending cap for this month (${cap:.2f}) is reached; "
                "new jobs open again on the 1st (UTC)."
            )
        noun = server_noun(scope.split(":", 1)[0])
        return (
            f"This {noun}'s budget for this month is spent; new jobs open again on the 1st "
            "(UTC), or when an admin raises it."
        )


GLOBAL_SCOPE = "global"


def guild_scope(platform: str, guild_id: str | None) -> str | None:
    """The budget a job also counts against, besides the global cap (none in DMs)."""
    return f"{platform}:{guild_id}" if guild_id else None


def month_of(timestamp: float) -> str:
    """The budget period a moment belongs to: the calendar month in UTC."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m")
