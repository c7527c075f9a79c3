"""The ledger's SQL, kept in the .sql files beside this module and read by aiosql: every query
by its name, with named parameters (:name), as the dialect's driver writes them; and the
numbered migrations of the schema under sql/schema/."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import aiosql

SQL_DIR = Path(__file__).with_name("sql")
SCHEMA_DIR = SQL_DIR / "schema"
DRIVERS = {"sqlite": "sqlite3", "postgres": "psycopg"}  # dialect -> aiosql's driver adapter
MIGRATION_FILE = re.compile(r"(?P<version>\d{4})_\w+(?:\.(?P<dialect>sqlite|postgres))?\.sql")
LONE_PERCENT = re.compile(r"%(?!\(\w+\)s)")  # psycopg reads % as a placeholder
QUERY_NAME = re.compile(r"^-- name: (\w+)", re.MULTILINE)


def _load(path: Path, dialect: str) -> dict[str, str]:
    """A file's queries by name, in the order the file has them (a migration's order counts;
    aiosql lists names sorted)."""
    loaded = aiosql.from_path(path, DRIVERS[dialect])
    in_file_order = QUERY_NAME.findall(path.read_text(encoding="utf-8"))
    if not set(in_file_order) <= set(loaded.available_queries):
        raise ValueError(f"{path.name}: every query begins with a line '-- name: ...'")
    return {name: getattr(loaded, name).sql for name in in_file_order}


@cache
def queries(dialect: str) -> dict[str, str]:
    """Every query of the ledger by name, as `dialect` writes it."""
    found: dict[str, str] = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        for name, sql in _load(path, dialect).items():
            if name in found:
                raise ValueError(f"{path.name}: the query {name} is defined twice")
            if dialect == "postgres" and LONE_PERCENT.search(sql):
                raise ValueError(f"{path.name}: {name} has a % that psycopg would read")
            found[name] = sql
    return found


@cache
def migrations(dialect: str) -> list[list[str]]:
    """The schema's migrations in order, each a list of statements: those both dialects share
    (NNNN_name.sql), then those of `dialect` (NNNN_name.<dialect>.sql)."""
    by_version: dict[int, tuple[list[str], list[str]]] = {}
    for path in sorted(SCHEMA_DIR.glob("*.sql")):
        match = MIGRATION_FILE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{path.name}: a migration is named NNNN_name[.dialect].sql")
        shared, own = by_version.setdefault(int(match["version"]), ([], []))
        if match["dialect"] is None:
            shared.extend(_load(path, dialect).values())
        elif match["dialect"] == dialect:
            own.extend(_load(path, dialect).values())
    versions = sorted(by_version)
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... without gaps: {versions}")
    return [shared + own for shared, own in (by_version[v] for v in versions)]
