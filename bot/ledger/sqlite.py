"""The embedded ledger: one SQLite file (WAL) under DATA_DIR.

Every operation is one transaction run on the ledger's own thread (BEGIN IMMEDIATE), so
checks and writes cannot interleave, between coroutines or between processes sharing the file.
Money moves only through single conditional UPDATEs on the budget row.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BudgetExhausted, QuotaExceeded
from ..models import JobState, Requester
from ..ports import JobRecord, NewJob, QuotaStatus, UsageRow
from .policy import QuotaPolicy, month_of

T = TypeVar("T")

GLOBAL = "global"
# Jobs in these states hold a quota slot; failed and refunded ones give it back.
COUNTED = ("queued", "submitted", "rendering", "delivered")
UNFINISHED = ("queued", "submitted", "rendering")

MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        idempotency_key TEXT UNIQUE,
        platform TEXT NOT NULL,
        user_id TEXT NOT NULL,
        guild_id TEXT,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        period TEXT NOT NULL,
        reserved_micros INTEGER NOT NULL DEFAULT 0,
        cost_micros INTEGER NOT NULL DEFAULT 0,
        committed INTEGER NOT NULL DEFAULT 0,
        cache_key TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        reply_to TEXT NOT NULL DEFAULT '{}',
        request_id TEXT,
        resume_ref TEXT NOT NULL DEFAULT '{}',
        error TEXT
    );
    CREATE INDEX jobs_user_time ON jobs (platform, user_id, created_at);
    CREATE INDEX jobs_state ON jobs (state);
    CREATE TABLE budgets (
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        cap_micros INTEGER NOT NULL,
        reserved_micros INTEGER NOT NULL DEFAULT 0,
        committed_micros INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, period)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        job_id TEXT,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        amount_micros INTEGER NOT NULL DEFAULT 0,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
]


class SqliteLedger:
    def __init__(self, path: Path, policy: QuotaPolicy, clock: Callable[[], float] = time.time):
        self._path = Path(path)
        self._policy = policy
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    # -- plumbing ----------------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(self._connect)

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        self._db = db
        self._transaction(self._migrate)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    async def _call(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _tx(self, fn: Callable[..., T], *args) -> T:
        return await self._call(self._transaction, fn, *args)

    def _transaction(self, fn: Callable[..., T], *args) -> T:
        db = self._db
        assert db is not None, "ledger is not open"
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db, *args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _audit(self, db, job_id, actor, action, amount=0, detail="") -> None:
        db.execute(
            "INSERT INTO audit (at, job_id, actor, action, amount_micros, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (self._clock(), job_id, actor, action, amount, detail),
        )

    # -- reserving ---------------------------------------------------------------------------

    async def reserve(self, job: NewJob) -> JobRecord:
        return await self._tx(self._reserve, job)

    def _reserve(self, db: sqlite3.Connection, job: NewJob) -> JobRecord:
        now = self._clock()
        if job.idempotency_key:
            row = db.execute(
                "SELECT * FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
            ).fetchone()
            if row is not None:
                return _record(row, duplicate=True)
        who = job.requester
        limit = self._policy.limit_for(who)
        if limit is not None:
            times = self._counted_times(db, who, now)
            if len(times) >= limit:
                next_free = times[len(times) - limit] + self._policy.window_s if limit else None
                raise QuotaExceeded(limit, self._policy.window_hours, _dt(next_free))
        period = month_of(now)
        if not self._hold(db, period, job.price_micros):
            raise BudgetExhausted(self._policy.budget_message())
        job_id = secrets.token_hex(6)
        db.execute(
            "INSERT INTO jobs (id, idempotency_key, platform, user_id, guild_id, state,"
            " created_at, updated_at, period, reserved_micros, cache_key, params, reply_to)"
            " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
            (job_id, job.idempotency_key, who.platform, who.user_id, who.guild_id, now, now,
             period, job.price_micros, job.cache_key, json.dumps(job.params),
             json.dumps(job.reply_to)),
        )
        self._audit(db, job_id, who.key, "reserve", job.price_micros)
        return _record(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def _counted_times(self, db, who: Requester, now: float) -> list[float]:
        marks = ",".join("?" * len(COUNTED))
        rows = db.execute(
            f"SELECT created_at FROM jobs WHERE platform = ? AND user_id = ? AND created_at > ?"
            f" AND state IN ({marks}) ORDER BY created_at",
            (who.platform, who.user_id, now - self._policy.window_s, *COUNTED),
        ).fetchall()
        return [r[0] for r in rows]

    def _hold(self, db, period: str, amount: int) -> bool:
        """Reserve `amount` only if reserved + committed stays within the cap (one UPDATE)."""
        db.execute(
            "INSERT INTO budgets (scope, period, cap_micros) VALUES (?, ?, ?)"
            " ON CONFLICT (scope, period) DO UPDATE SET cap_micros = excluded.cap_micros",
            (GLOBAL, period, self._policy.global_budget_micros),
        )
        cursor = db.execute(
            "UPDATE budgets SET reserved_micros = reserved_micros + ?"
            " WHERE scope = ? AND period = ?"
            " AND reserved_micros + committed_micros + ? <= cap_micros",
            (amount, GLOBAL, period, amount),
        )
        return cursor.rowcount == 1

    # -- moving through states ---------------------------------------------------------------

    async def mark_submitted(self, job_id: str, request_id: str, resume_ref: dict) -> None:
        await self._tx(self._mark_submitted, job_id, request_id, resume_ref)

    def _mark_submitted(self, db, job_id, request_id, resume_ref) -> None:
        db.execute(
            "UPDATE jobs SET state = 'submitted', request_id = ?, resume_ref = ?, updated_at = ?"
            " WHERE id = ?",
            (request_id, json.dumps(resume_ref), self._clock(), job_id),
        )
        self._audit(db, job_id, "system", "submitted", detail=request_id)

    async def set_state(self, job_id: str, state: JobState) -> None:
        await self._tx(self._set_state, job_id, state)

    def _set_state(self, db, job_id, state) -> None:
        db.execute("UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?",
                   (str(state), self._clock(), job_id))

    async def commit(self, job_id: str, cost_micros: int) -> None:
        await self._tx(self._commit, job_id, cost_micros)

    def _commit(self, db, job_id: str, cost: int) -> None:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row["committed"] or row["state"] == "refunded":
            return  # charged once only
        db.execute(
            "UPDATE budgets SET reserved_micros = reserved_micros - ?,"
            " committed_micros = committed_micros + ? WHERE scope = ? AND period = ?",
            (row["reserved_micros"], cost, GLOBAL, row["period"]),
        )
        db.execute(
            "UPDATE jobs SET reserved_micros = 0, cost_micros = ?, committed = 1, updated_at = ?"
            " WHERE id = ?",
            (cost, self._clock(), job_id),
        )
        self._audit(db, job_id, "system", "commit", cost,
                    f"reserved {row['reserved_micros']}")

    async def finish(self, job_id: str, state: JobState, error: str | None = None) -> None:
        await self._tx(self._finish, job_id, state, error)

    def _finish(self, db, job_id, state, error) -> None:
        db.execute("UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                   (str(state), error, self._clock(), job_id))
        self._audit(db, job_id, "system", str(state), detail=error or "")

    async def refund(self, job_id: str, reason: str, actor: str = "system") -> bool:
        return await self._tx(self._refund, job_id, reason, actor)

    def _refund(self, db, job_id: str, reason: str, actor: str) -> bool:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row["committed"] or row["state"] == "refunded":
            return False
        db.execute(
            "UPDATE budgets SET reserved_micros = reserved_micros - ?"
            " WHERE scope = ? AND period = ?",
            (row["reserved_micros"], GLOBAL, row["period"]),
        )
        db.execute(
            "UPDATE jobs SET state = 'refunded', reserved_micros = 0, error = ?, updated_at = ?"
            " WHERE id = ?",
            (reason, self._clock(), job_id),
        )
        self._audit(db, job_id, actor, "refund", row["reserved_micros"], reason)
        return True

    # -- reading -----------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self._call(self._fetch_one, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _record(row) if row else None

    async def unfinished(self) -> list[JobRecord]:
        marks = ",".join("?" * len(UNFINISHED))
        rows = await self._call(
            self._fetch_all,
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at", UNFINISHED,
        )
        return [_record(r) for r in rows]

    async def quota_status(self, requester: Requester) -> QuotaStatus:
        return await self._tx(self._quota_status, requester)

    def _quota_status(self, db, who: Requester) -> QuotaStatus:
        now = self._clock()
        limit = self._policy.limit_for(who)
        times = self._counted_times(db, who, now)
        next_free = None
        if limit is not None and times and len(times) >= limit:
            next_free = times[len(times) - limit] + self._policy.window_s if limit else None
        budget = db.execute(
            "SELECT cap_micros - reserved_micros - committed_micros FROM budgets"
            " WHERE scope = ? AND period = ?",
            (GLOBAL, month_of(now)),
        ).fetchone()
        left = budget[0] if budget else self._policy.global_budget_micros
        return QuotaStatus(limit, len(times), _dt(next_free), max(0, left),
                           self._policy.window_hours)

    async def usage(self, month: str | None = None) -> list[UsageRow]:
        where, args = ("WHERE period = ?", (month,)) if month else ("", ())
        rows = await self._call(
            self._fetch_all,
            "SELECT period, platform, guild_id, user_id, count(*) AS jobs,"
            " sum(state = 'delivered') AS delivered, sum(state = 'failed') AS failed,"
            " sum(state = 'refunded') AS refunded, sum(cost_micros) AS cost"
            f" FROM jobs {where} GROUP BY period, platform, guild_id, user_id"
            " ORDER BY period DESC, cost DESC, jobs DESC",
            args,
        )
        return [UsageRow(r["period"], r["platform"], r["guild_id"], r["user_id"], r["jobs"],
                         r["delivered"], r["failed"], r["refunded"], r["cost"]) for r in rows]

    async def audit_trail(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self._call(
            self._fetch_all, "SELECT * FROM audit WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(r) for r in rows]

    async def budget(self, month: str | None = None) -> dict[str, int]:
        row = await self._call(
            self._fetch_one,
            "SELECT cap_micros, reserved_micros, committed_micros FROM budgets"
            " WHERE scope = ? AND period = ?",
            (GLOBAL, month or month_of(self._clock())),
        )
        if row is None:
            return {"cap": self._policy.global_budget_micros, "reserved": 0, "committed": 0}
        return {"cap": row[0], "reserved": row[1], "committed": row[2]}

    def _fetch_one(self, sql: str, args=()):
        assert self._db is not None, "ledger is not open"
        return self._db.execute(sql, args).fetchone()

    def _fetch_all(self, sql: str, args=()):
        assert self._db is not None, "ledger is not open"
        return self._db.execute(sql, args).fetchall()


def _dt(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


def _record(row: sqlite3.Row, duplicate: bool = False) -> JobRecord:
    return JobRecord(
        id=row["id"],
        platform=row["platform"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        state=JobState(row["state"]),
        created_at=_dt(row["created_at"]),
        reserved_micros=row["reserved_micros"],
        cost_micros=row["cost_micros"],
        cache_key=row["cache_key"],
        params=json.loads(row["params"]),
        reply_to=json.loads(row["reply_to"]),
        request_id=row["request_id"],
        resume_ref=json.loads(row["resume_ref"]),
        error=row["error"],
        duplicate=duplicate,
    )
