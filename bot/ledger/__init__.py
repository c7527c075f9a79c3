"""Quota policy and the stores that keep jobs and money (SQLite embedded by default)."""

from __future__ import annotations

from ..ports import Ledger
from ..settings import SettingsError
from .policy import QuotaPolicy, month_of
from .sqlite import SqliteLedger

__all__ = ["Ledger", "QuotaPolicy", "SqliteLedger", "month_of", "ledger_from_settings"]


def ledger_from_settings(settings) -> Ledger:
    policy = QuotaPolicy.from_settings(settings)
    if settings.database_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(
            "DATABASE_URL: PostgreSQL is not supported by this version yet; leave it empty "
            "for the embedded SQLite ledger"
        )
    return SqliteLedger(settings.sqlite_path, policy)
