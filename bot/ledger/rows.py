"""Rows as the core reads them, and the job states the ledger's rules count."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..errors import (
    JobsPaused,
    UserBlocked,
)
from ..models import JobState
from ..ports import JobRecord

T = TypeVar("T")

# Jobs in these states hold a quota slot; failed and refunded ones give it back. A held job
# keeps its slot (and its price) until an admin settles it.
COUNTED = ("queued", "submitting", "submitted", "rendering", "delivered", "held")
UNFINISHED = ("queued", "submitting", "submitted", "rendering")
# The SQL in bot/ledger/sql/ writes these lists out; tests/test_ledger.py holds them equal.

# A budget row always exists, so a server's spend is counted even before it has a cap;
# "no cap" is stored as this many micros.
NO_CAP = 2**62


def _refuse_if_barred(context: Mapping[str, Any]) -> None:
    if context["paused"] is not None:
        raise JobsPaused(context["paused"])
    if context["blocked"]:
        raise UserBlocked()


def _dt(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _record(row: Mapping[str, Any], duplicate: bool = False) -> JobRecord:
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
