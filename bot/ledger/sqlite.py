"""The embedded store: one SQLite file (WAL) under DATA_DIR.

Every transaction runs on the store's one thread and begins IMMEDIATE (the write lock), so
checks and writes cannot interleave, between coroutines or between processes sharing the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import LedgerUnavailable
from .policy import QuotaPolicy
from .store import SqlLedger

T = TypeVar("T")


class SqliteTx:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, tuple(args))

    def lock(self, key: str) -> None:
        """BEGIN IMMEDIATE already holds the whole database."""


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    async def open(self) -> None:
        await self._on_thread(self._connect)

    async def close(self) -> None:
        if self._db is not None:
            await self._on_thread(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        self._db = db

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._on_thread(self._transaction, fn, *args)

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.OperationalError as exc:  # locked past the timeout, disk gone, ...
            raise LedgerUnavailable() from exc

    def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        db = self._db
        assert db is not None, "ledger is not open"
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(SqliteTx(db), *args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result


def SqliteLedger(path: Path, policy: QuotaPolicy,
                 clock: Callable[[], float] = time.time, lease_s: float = 60.0) -> SqlLedger:
    return SqlLedger(SqliteDatabase(path), policy, clock, lease_s)
