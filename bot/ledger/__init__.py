"""Quota policy and the stores that keep jobs and money: SQLite embedded by default,
PostgreSQL when several instances share one database (DATABASE_URL=postgresql://...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ports import Ledger
from .policy import QuotaPolicy, month_of
from .sql import SqlLedger
from .sqlite import SqliteLedger

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Ledger", "QuotaPolicy", "SqlLedger", "SqliteLedger", "month_of", "ledger_from_settings"]


def ledger_from_settings(settings: Settings) -> SqlLedger:
    policy = QuotaPolicy.from_settings(settings)
    if settings.database_url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresLedger  # psycopg loads only when it is used

        return PostgresLedger(
            settings.database_url,
            policy,
            lease_s=settings.job_lease_seconds,
            pool_size=settings.database_pool_size,
            timeout_s=settings.ledger_timeout_s,
        )
    return SqliteLedger(
        settings.sqlite_path,
        policy,
        lease_s=settings.job_lease_seconds,
        timeout_s=settings.ledger_timeout_s,
    )
