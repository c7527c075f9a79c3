"""The rules a ledger enforces: who may run how many jobs, and how much may be spent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ..models import Requester
from ..settings import micros_to_usd


@dataclass(frozen=True)
class QuotaPolicy:
    jobs_per_window: int = 5
    window_hours: float = 24.0
    admins_exempt: bool = True
    global_budget_micros: int = 20_000_000  # per calendar month (UTC)

    @classmethod
    def from_settings(cls, settings) -> QuotaPolicy:
        return cls(
            settings.quota_jobs,
            settings.quota_window_hours,
            settings.admins_exempt,
            settings.global_budget_micros,
        )

    @property
    def window_s(self) -> float:
        return self.window_hours * 3600

    def limit_for(self, requester: Requester) -> int | None:
        """Jobs allowed per window; None means not limited."""
        if requester.is_admin and self.admins_exempt:
            return None
        return self.jobs_per_window

    def budget_message(self) -> str:
        cap = micros_to_usd(self.global_budget_micros)
        return (
            f"The bot's spending cap for this month (${cap:.2f}) is reached; "
            "new jobs open again on the 1st (UTC)."
        )


def month_of(timestamp: float) -> str:
    """The budget period a moment belongs to: the calendar month in UTC."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m")
