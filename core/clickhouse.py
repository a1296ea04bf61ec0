"""ClickHouse access through clickhouse-connect, by CLICKHOUSE_URL: an HTTP interface (the native endpoint
over chDB, ``python -m chserver``, or a ClickHouse server) or, for single-process use, the embedded chDB engine.

Clients open lazily, never at import time.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from core.settings import BI_USER, REPO_ROOT, ConfigError, Settings, get_settings

MIGRATIONS_DIR = REPO_ROOT / "clickhouse" / "migrations"
#: first line of a migration file that :func:`migrate` runs once per database (a one-off backfill or mutation,
#: e.g. ``MATERIALIZE INDEX``, which rewrites the table's parts each time it runs)
RUN_ONCE_MARKER = "-- migrate: once"
_clients: dict[tuple[str, str], Client] = {}


def get_client(settings: Settings | None = None, database: str | None = None, *, readonly: bool = False) -> Client:
    """The process's clickhouse-connect client for CLICKHOUSE_URL, database and role: :func:`new_client`, created
    once per process, URL, database and role (the same arguments, errors and behaviour)."""
    s = settings or get_settings()
    db = database or s.clickhouse_database
    key = (s.clickhouse_url, db, readonly)
    if key not in _clients:
        _clients[key] = new_client(s, db, readonly=readonly)
    return _clients[key]


def new_client(settings: Settings | None = None, database: str | None = None, *, readonly: bool = False,
               timeout: float | None = None, create_database: bool = True) -> Client:
    """A new clickhouse-connect client for CLICKHOUSE_URL (for a thread of its own; :func:`get_client` shares one).

    ``http(s)://user:pw@host:port`` talks to a ClickHouse HTTP interface: the native stack's endpoint
    (``python -m chserver``, the one process owning the chDB data) or compose's ClickHouse server.
    ``chdb:///abs/path`` opens the embedded engine in this process (single-process use only: chDB locks
    the path). The database is created when missing (writer clients only). HTTP clients run without a
    session (each request stands alone), so a request cut by an outage never leaves the client unusable.

    Args:
        readonly: connect as ``bi_reader`` (CLICKHOUSE_BI_PASSWORD) instead of the URL's user; the server
            refuses this client's writes and setting changes (readonly=1). HTTP URLs only.
        timeout: seconds (rounded up to whole seconds, at least 1) a request may wait for the socket (sending or receiving) before it fails with
            clickhouse-connect's ``OperationalError`` (``Read timed out``); None: clickhouse-connect's 300 s. HTTP
            URLs only (the streaming sinks pass STREAM_CLICKHOUSE_TIMEOUT_SECONDS, the dashboard
            DASHBOARD_CLICKHOUSE_TIMEOUT_SECONDS).
        create_database: False: a writer client runs no ``CREATE DATABASE IF NOT EXISTS`` (HTTP URLs only; a
            missing database then fails with UNKNOWN_DATABASE, creating nothing: ml.jobs.train's registry read).
    Raises:
        ConfigError: CLICKHOUSE_URL names no password, or ``readonly`` without CLICKHOUSE_BI_PASSWORD.
        clickhouse_connect.driver.exceptions.DatabaseError: the server refused (e.g. code 516, wrong password).
    """
    s = settings or get_settings()
    db = database or s.clickhouse_database
    u = urlparse(s.clickhouse_url)
    if u.scheme == "chdb":
        Path(u.path).mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(dsn=f"chdb://{u.path}")
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        return client
    user, password = unquote(u.username or ""), unquote(u.password or "")
    if readonly:
        s.require("clickhouse_bi_password")
        user = BI_USER
        password = s.clickhouse_bi_password  # from the environment (CLICKHOUSE_BI_PASSWORD)
    if not user or not password:
        raise ConfigError("CLICKHOUSE_URL names no user or password (and CLICKHOUSE_WRITER_PASSWORD is not set): "
                          "run `make setup` to generate local credentials, or set CLICKHOUSE_URL")
    # no HTTP session: nothing here relies on session state (settings travel with each query), and a session
    # id makes clickhouse-connect refuse a client's next query while it thinks the previous one is running:
    # after a request cut by an outage, every later query failed "concurrent queries within the same session"
    server = dict(host=u.hostname, port=u.port or (8443 if u.scheme == "https" else 8123),
                  username=user, password=password, secure=u.scheme == "https", autogenerate_session_id=False)
    if timeout is not None:
        server["send_receive_timeout"] = max(1, math.ceil(timeout))  # whole seconds: clickhouse-connect truncates
    if not readonly and create_database:
        with clickhouse_connect.get_client(**server) as bootstrap:  # the database may not exist yet
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    return clickhouse_connect.get_client(**server, database=db)


def reset_clients() -> None:
    """Close and forget every cached client (after a change of settings, e.g. in tests)."""
    for c in _clients.values():
        try:
            c.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must not fail the caller
            pass
    _clients.clear()


def split_statements(sql: str) -> list[str]:
    """Split a migration file into statements on ``;`` at line ends (comments ``--`` removed)."""
    sql = re.sub(r"--[^\n]*", "", sql)
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", sql) if s.strip()]


def render_migration(text: str, database: str, stream_retention_days: int | None = None,
                     stream_batches_retention_days: int | None = None) -> str:
    """A migration file's SQL with its placeholders filled: ``{db}`` -> ``database``, ``{stream_retention_days}`` ->
    ``stream_retention_days`` (days; default CLICKHOUSE_STREAM_RETENTION_DAYS's default, 30),
    ``{stream_batches_retention_days}`` -> ``stream_batches_retention_days`` (days; default
    CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS's default, 14)."""
    if stream_retention_days is None:
        stream_retention_days = Settings.model_fields["clickhouse_stream_retention_days"].default
    if stream_batches_retention_days is None:
        stream_batches_retention_days = Settings.model_fields["clickhouse_stream_batches_retention_days"].default
    return (text.replace("{db}", database).replace("{stream_retention_days}", str(int(stream_retention_days)))
            .replace("{stream_batches_retention_days}", str(int(stream_batches_retention_days))))


def migrate(settings: Settings | None = None, database: str | None = None) -> list[str]:
    """Apply every ``clickhouse/migrations/*.sql`` file, in file-name order, on every call. ``{db}`` in a file is
    replaced by the database name, ``{stream_retention_days}`` by CLICKHOUSE_STREAM_RETENTION_DAYS and
    ``{stream_batches_retention_days}`` by CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS (:func:`render_migration`);
    statements are split by :func:`split_statements` and run one by one.

    Each call re-runs every statement of every file, which is safe because each one is idempotent (``CREATE ...
    IF NOT EXISTS``, ``CREATE OR REPLACE``, ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``, and backfill ``INSERT ...
    SELECT`` that only add rows not present yet), except a file whose first line is :data:`RUN_ONCE_MARKER`: it
    runs only while ``schema_migrations`` has no row for it (a one-off mutation such as ``MATERIALIZE INDEX``,
    which would rewrite the table's parts on every start). After a file has run, a row (``name`` = file name,
    ``applied_at`` = now) is inserted into ``<db>.schema_migrations`` (created when missing; ReplacingMergeTree
    ordered by name: after merges, or read with FINAL, the latest row per file): when each file last ran. No
    checksum is stored; the table is read only for the run-once files.

    Args:
        settings: default :func:`get_settings`.
        database: default CLICKHOUSE_DATABASE.
    Returns:
        the names of every migration file, in order: the files applied (a run-once file that ran before, not
        run again, is applied too).
    Raises:
        ConfigError: CLICKHOUSE_URL names no user or password (:func:`new_client`).
        clickhouse_connect.driver.exceptions.DatabaseError: a statement fails; what ran before it (earlier files,
            earlier statements of its file) stays applied, and its file is not recorded. Its subclass
            OperationalError: the server cannot be reached.
    """
    s = settings or get_settings()
    db = database or s.clickhouse_database
    client = get_client(s, db)
    client.command(f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
                   "(name String, applied_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY name")
    applied = []
    done: set[str] | None = None
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        text = f.read_text()
        if text.startswith(RUN_ONCE_MARKER):
            if done is None:
                done = {r[0] for r in client.query(f"SELECT DISTINCT name FROM {db}.schema_migrations").result_rows}
            if f.name in done:
                applied.append(f.name)
                continue
        for stmt in split_statements(render_migration(text, db, s.clickhouse_stream_retention_days,
                                                      s.clickhouse_stream_batches_retention_days)):
            client.command(stmt)
        client.command(f"INSERT INTO {db}.schema_migrations (name) VALUES ('{f.name}')")
        applied.append(f.name)
    return applied
