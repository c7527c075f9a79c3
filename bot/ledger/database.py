"""What a store gives the ledger: a Database that runs a function in one transaction on a
thread of its own, and the open transaction (Tx) that function gets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Tx(Protocol):
    """One open transaction. Rows are read by column name."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any: ...

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

    async def statement(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Run one statement, atomic by itself; returns its rows (RETURNING), if any."""
        ...
