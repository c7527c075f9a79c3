"""Rows as the core reads them, and the job states the ledger's rules count."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TypeVar

from ..errors import (
    JobsPaused,
    UserBlocked,
)
from ..models import JobState
from ..ports import JobRecord
from .database import Tx

T = TypeVar("T")

# Jobs in these states hold a quota slot; failed and refunded ones give it back. A held job
# keeps its slot (and its price) until an admin settles it.
COUNTED = ("queued", "submitting", "submitted", "rendering", "delivered", "held")
UNFINISHED = ("queued", "submitting", "submitted", "rendering")


def _fetch_one(tx: Tx, sql: str, args=()):
    return tx.execute(sql, args).fetchone()


def _fetch_all(tx: Tx, sql: str, args=()):
    return tx.execute(sql, args).fetchall()


def _refuse_if_barred(context) -> None:
    if context["paused"] is not None:
        raise JobsPaused(context["paused"])
    if context["blocked"]:
        raise UserBlocked()


def _dt(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _record(row, duplicate: bool = False) -> JobRecord:
    return JobRecord(
        id=row["id"],
        platform=row["platform"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        state=JobState(row["state"]),
        created_at=_at(row["created_at"]),
        reserved_micros=row["reserved_micros"],
        cost_micros=row["cost_micros"],
        cache_key=row["cache_key"],
        params=json.loads(row["params"]),
        reply_to=json.loads(row["reply_to"]),
        request_id=row["request_id"],
        resume_ref=json.loads(row["resume_ref"]),
        error=row["error"],
        duplicate=duplicate,
        committed=bool(row["committed"]),
    )
