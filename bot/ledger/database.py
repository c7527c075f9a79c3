"""What a store gives the ledger: a Database that runs a function in one transaction on a
thread of its own, and the open transaction (Tx) that function gets. Queries are named: the
SQL is in bot/ledger/sql/, read by bot/ledger/queries.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cursor(Protocol):
    """What a query gives back. Rows are read by column name."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """One open transaction."""

    def query(self, name: str, /, **params: Any) -> Cursor:
        """Run the named query (bot/ledger/sql/*.sql) with its named parameters."""
        ...

    def execute_schema(self, statement: str) -> None:
        """Run one statement of a migration, as it is written."""
        ...

    def lock(self, key: str) -> None:
        """Hold `key` until the transaction ends (serialises one user's reservations)."""
        ...


class Database(Protocol):
    dialect: str  # "sqlite" | "postgres"

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(tx, *args) in one transaction on the database's own thread(s)."""
        ...

    async def statement(self, name: str, /, **params: Any) -> list[Any]:
        """Run one named query, atomic by itself; returns its rows (RETURNING), if any."""
        ...
