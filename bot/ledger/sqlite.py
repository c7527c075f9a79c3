"""The embedded store: one SQLite file (WAL) under DATA_DIR.

Transactions run on the store's one thread and begin IMMEDIATE (the write lock), so checks and
writes cannot interleave, between coroutines or between processes sharing the file.

Group commit: transactions that arrive while one is running are run together as savepoints of
one database transaction, and their callers hear back once it has committed. Each still sees
the ones before it and fails alone (rolled back to its savepoint); the batch pays for one
COMMIT, which is most of what a small transaction costs.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import LedgerUnavailable
from .policy import QuotaPolicy
from .queries import queries
from .sql import SqlLedger

log = logging.getLogger(__name__)
T = TypeVar("T")
QUERIES = queries("sqlite")
# A transaction waiting for the store's thread: fn(tx, *args), and who hears back.
Waiting = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
BATCH_MAX = 64  # transactions per COMMIT: bounds how long other processes wait for the lock


class SqliteTx:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def query(self, name: str, /, **params: Any) -> sqlite3.Cursor:
        return self._db.execute(QUERIES[name], params)

    def execute_schema(self, statement: str) -> None:
        self._db.execute(statement)

    def lock(self, key: str) -> None:
        """BEGIN IMMEDIATE already holds the whole database."""


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._waiting: deque[Waiting] = deque()
        self._draining = False
        self._guard = threading.Lock()

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
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._guard:
            self._waiting.append((fn, args, future))
            start = not self._draining
            self._draining = True
        if start:
            self._thread.submit(self._drain, asyncio.get_running_loop())
        return await future

    async def statement(self, name: str, /, **params: Any) -> list[Any]:
        return await self.run(_rows_of, name, params)

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.OperationalError as exc:  # locked past the timeout, disk gone, ...
            raise LedgerUnavailable() from exc

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the store's thread: run what is waiting, a batch per COMMIT, until none is.
        Whatever goes wrong, every caller hears back and the store keeps draining."""
        try:
            while True:
                with self._guard:
                    batch = [
                        self._waiting.popleft() for _ in range(min(BATCH_MAX, len(self._waiting)))
                    ]
                    if not batch:
                        self._draining = False
                        return
                try:
                    outcomes = self._run_batch(batch)
                except Exception as exc:  # outside any one call: the whole batch fails
                    self._roll_back()
                    outcomes = [(False, _unavailable(exc))] * len(batch)
                for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                    loop.call_soon_threadsafe(_settle, future, ok, value)
        except BaseException:
            with self._guard:
                self._draining = False
            raise

    def _roll_back(self) -> None:
        """Leave the connection outside any transaction, so the next batch can begin."""
        db = self._db
        if db is not None and db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("could not roll back a failed batch", exc_info=True)

    def _run_batch(self, batch: list[Waiting]) -> list[tuple[bool, Any]]:
        db = self._db
        if db is None:
            return [(False, LedgerUnavailable())] * len(batch)
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return [(False, _unavailable(exc))] * len(batch)
        outcomes: list[tuple[bool, Any]] = []
        for fn, args, _ in batch:
            db.execute("SAVEPOINT job")
            try:
                outcomes.append((True, fn(SqliteTx(db), *args)))
            except Exception as exc:
                db.execute("ROLLBACK TO job")
                outcomes.append(
                    (False, _unavailable(exc) if isinstance(exc, sqlite3.OperationalError) else exc)
                )
            db.execute("RELEASE job")
        db.execute("COMMIT")
        return outcomes


def _rows_of(tx: SqliteTx, name: str, params: dict[str, Any]) -> list[Any]:
    return tx.query(name, **params).fetchall()


def _unavailable(exc: Exception) -> LedgerUnavailable:
    error = LedgerUnavailable()
    error.__cause__ = exc
    return error


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller stopped waiting (cancelled); the work stands
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def SqliteLedger(
    path: Path,
    policy: QuotaPolicy,
    clock: Callable[[], float] = time.time,
    lease_s: float = 30.0,
    timeout_s: float = 30.0,
) -> SqlLedger:
    return SqlLedger(SqliteDatabase(path), policy, clock, lease_s, timeout_s)
