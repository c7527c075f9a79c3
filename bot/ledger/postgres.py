"""The shared store: PostgreSQL, for several bot instances on one database.

Transactions run on a small pool of threads, each with a pooled connection (psycopg 3), at
READ COMMITTED; single statements run in autocommit. What makes the rules hold across
instances: a transaction-scoped advisory lock per user around reserving, and budget changes
made only by conditional UPDATEs of one row, which PostgreSQL re-checks after any concurrent
writer commits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import LedgerUnavailable
from .policy import QuotaPolicy
from .queries import queries
from .sql import SqlLedger

T = TypeVar("T")


QUERIES = queries("postgres")


class PostgresTx:
    def __init__(self, connection: psycopg.Connection):
        self._connection = connection

    def query(self, name: str, /, **params: Any) -> psycopg.Cursor:
        return self._connection.execute(QUERIES[name], params)

    def execute_schema(self, statement: str) -> None:
        self._connection.execute(statement)

    def lock(self, key: str) -> None:
        self._connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


class PostgresDatabase:
    dialect = "postgres"

    # Each try to connect: short enough that a stop while the database is down is prompt.
    def __init__(self, url: str, pool_size: int = 4, connect_timeout_s: float = 5.0):
        self.url = url
        self._size = pool_size
        self._timeout = connect_timeout_s
        self._pool: ConnectionPool | None = None
        self._threads = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="ledger")

    async def open(self) -> None:
        def connect() -> ConnectionPool:
            pool = ConnectionPool(
                self.url,
                min_size=1,
                max_size=self._size,
                kwargs={"row_factory": dict_row, "autocommit": True},
                timeout=self._timeout,
                open=False,
            )
            try:
                pool.open(wait=True, timeout=self._timeout)
            except BaseException:
                pool.close()  # not left trying in the background: the caller may try again
                raise
            return pool

        self._pool = await self._on_thread(connect)

    async def close(self) -> None:
        if self._pool is not None:
            await self._on_thread(self._pool.close)
            self._pool = None
        self._threads.shutdown(wait=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._on_thread(self._transaction, fn, *args)

    async def statement(self, name: str, /, **params: Any) -> list[Any]:
        return await self._on_thread(self._statement, name, params)

    def _statement(self, name: str, params: dict[str, Any]) -> list[Any]:
        # Autocommit: one statement is one transaction, with no BEGIN / COMMIT round trips.
        assert self._pool is not None, "ledger is not open"
        with self._pool.connection() as connection:
            cursor = PostgresTx(connection).query(name, **params)
            return cursor.fetchall() if cursor.description else []

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise LedgerUnavailable() from exc

    def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._pool is not None, "ledger is not open"
        with self._pool.connection() as connection, connection.transaction():
            return fn(PostgresTx(connection), *args)


def PostgresLedger(
    url: str,
    policy: QuotaPolicy,
    clock: Callable[[], float] = time.time,
    lease_s: float = 30.0,
    pool_size: int = 4,
    timeout_s: float = 30.0,
) -> SqlLedger:
    return SqlLedger(PostgresDatabase(url, pool_size), policy, clock, lease_s, timeout_s)
