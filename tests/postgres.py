"""A real PostgreSQL for the tests: TEST_DATABASE_URL when set (CI starts one on loopback),
else a private server started from Debian's packages by scripts/pg-test-server. Each test gets
a schema of its own, named in the URL, so tests never see each other's rows."""

from __future__ import annotations

import os
import secrets
import subprocess
from urllib.parse import quote

import psycopg

from tests.helpers import ROOT

SERVER_SCRIPT = ROOT / "scripts" / "pg-test-server"
NOT_INSTALLED = 3


class PostgresUnavailable(Exception):
    pass


def start_server() -> tuple[str, str | None]:
    """(URL, directory to stop it by, or None for a server someone else runs)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url, None
    ran = subprocess.run([str(SERVER_SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    if ran.returncode == NOT_INSTALLED:
        raise PostgresUnavailable(ran.stderr.strip())
    if ran.returncode != 0:
        raise RuntimeError(f"could not start PostgreSQL: {ran.stderr.strip()}")
    directory, url = ran.stdout.split()
    return url, directory


def stop_server(directory: str | None) -> None:
    if directory:
        subprocess.run([str(SERVER_SCRIPT), "stop", directory], timeout=60, check=False)


def fresh_schema_url(server_url: str) -> str:
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in server_url else "?"
    return f"{server_url}{joiner}options={quote(f'-csearch_path={schema}')}"
