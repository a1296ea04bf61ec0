"""ClickHouse access through clickhouse-connect: the embedded chDB engine or a server, by CLICKHOUSE_URL.

chDB locks its data path: one process at a time may open it (see NOTES). Components therefore open
the client lazily, inside the process that writes, and never at import time.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from stack.settings import REPO_ROOT, Settings, get_settings

MIGRATIONS_DIR = REPO_ROOT / "clickhouse" / "migrations"
_clients: dict[tuple[str, str], Client] = {}


def get_client(settings: Settings | None = None, database: str | None = None) -> Client:
    """A clickhouse-connect client for CLICKHOUSE_URL, created once per process and URL.

    ``chdb:///abs/path`` opens the embedded engine at that path; ``http(s)://user:pw@host:port``
    connects to a server. The database is created when missing.

    Raises:
        ConfigError (via settings) for an invalid URL; chDB raises when another process holds the path.
    """
    s = settings or get_settings()
    db = database or s.clickhouse_database
    key = (s.clickhouse_url, db)
    if key in _clients:
        return _clients[key]
    u = urlparse(s.clickhouse_url)
    if u.scheme == "chdb":
        Path(u.path).mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(dsn=f"chdb://{u.path}")
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    else:
        server = dict(host=u.hostname, port=u.port or (8443 if u.scheme == "https" else 8123),
                      username=unquote(u.username or "default"), password=unquote(u.password or ""),
                      secure=u.scheme == "https")
        with clickhouse_connect.get_client(**server) as bootstrap:  # the database may not exist yet
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        client = clickhouse_connect.get_client(**server, database=db)
    _clients[key] = client
    return client


def split_statements(sql: str) -> list[str]:
    """Split a migration file into statements on ``;`` at line ends (comments ``--`` removed)."""
    sql = re.sub(r"--[^\n]*", "", sql)
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", sql) if s.strip()]


def migrate(settings: Settings | None = None, database: str | None = None) -> list[str]:
    """Apply ``clickhouse/migrations/NNN_*.sql`` in order; idempotent (every statement uses IF NOT EXISTS
    or CREATE OR REPLACE). ``{db}`` in a file is replaced by the database name.

    Returns the applied file names. A ``schema_migrations`` table records each file and its checksum.
    """
    s = settings or get_settings()
    db = database or s.clickhouse_database
    client = get_client(s, db)
    client.command(f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
                   "(name String, applied_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY name")
    applied = []
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        for stmt in split_statements(f.read_text().replace("{db}", db)):
            client.command(stmt)
        client.command(f"INSERT INTO {db}.schema_migrations (name) VALUES ('{f.name}')")
        applied.append(f.name)
    return applied
