"""chDB behind a lock: the one place of the endpoint that runs queries.

chDB runs one query at a time per process (NOTES: two single-thread 0.65 s queries from two threads took
1.21 s), so :class:`Engine` serialises every call with one lock. A request's latency is therefore its wait in
the queue plus its own execution time: a long nightly query delays a dashboard's query by up to its own
duration. Keep batch queries chunked.

Three chDB connections share the data path, each with its own session settings:

* ``rw``: users who may write (``admin``, ``platform_writer``) on POST;
* ``ro2``: the same users on GET requests, ``readonly=2`` (reads and setting changes only, as ClickHouse does
  for GET);
* ``ro1``: the read-only user ``bi_reader``, ``readonly=1``: the engine itself refuses its writes, DDL and any
  setting change (code 164 READONLY), which it cannot undo. Before that, the connection takes the limits of the
  compose server's ``bi_readonly`` profile (:data:`USERS_XML`: ``max_execution_time``, ``max_result_rows``,
  ``result_overflow_mode``, ``max_memory_usage``), so a BI query holds the engine's one lock for at most
  ``max_execution_time`` seconds, as on the ClickHouse server.

Per-request state never leaks: the current database is set with ``USE`` before each query, and each request's
settings (URL parameters, and those a ``SET`` statement changed: without a session, ClickHouse keeps them for
that one request) are reset to ``DEFAULT`` after it, all under the lock. A setting that cannot be reset (after a
request's ``readonly=1`` no setting can change) costs the connection: it is replaced by a fresh one with its
role's settings (:meth:`Engine._restore`). The connection is taken under the lock, so a request queued behind
one that replaced it runs on the new one. Temporary tables last one request too (ClickHouse without a session):
after a statement naming ``TEMPORARY`` the connection's temporary tables are dropped
(:meth:`Engine._drop_temporary`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

# The server's time zone is UTC on both stacks, as the compose ClickHouse image's: chDB takes the process's zone (TZ,
# /etc/localtime) when it loads, so the endpoint sets it first. Until 2026-12-06 it served the machine's zone: under
# TZ=Pacific/Chatham DateTime strings were read 13 h 45 min off and 5 stream-sink tests failed (store metrics empty).
os.environ["TZ"] = "UTC"
time.tzset()

import chdb  # noqa: E402 - after the time zone is set

from core.settings import REPO_ROOT

#: the compose ClickHouse server's users and profiles: the one definition of bi_reader's limits on both stacks
USERS_XML = REPO_ROOT / "ops" / "docker" / "clickhouse" / "users.d" / "platform-users.xml"
#: the profile of ``bi_reader`` in :data:`USERS_XML`
BI_PROFILE = "bi_readonly"

#: input formats whose data carries no types: the target columns' structure is passed to ``file()``
_UNTYPED_INPUT = {"rowbinary", "rowbinarywithnames", "csv", "csvwithnames", "tsv", "tabseparated",
                  "tsvwithnames", "tabseparatedwithnames", "tsvraw", "tabseparatedraw", "jsoneachrow",
                  "jsoncompacteachrow", "jsonstringseachrow", "values", "customseparated", "jsonlines", "ndjson"}
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]*)\)(?:\s*\(version [^)]*\))?\s*$")  # e.g. CANNOT_PARSE_IPV4
#: a statement that changes session settings (SET / SET ROLE ...): outside a session it must not outlive its request
_SET_RE = re.compile(r"\s*SET\b", re.I)
#: a statement that may create temporary tables (CREATE TEMPORARY TABLE ...): they must not outlive the request
_TEMPORARY_RE = re.compile(r"\bTEMPORARY\b", re.I)
_CODE_RE = re.compile(r"Code:\s*(\d+)")
#: a result up to this many bytes stays in memory; a larger one is spooled to a temporary file as it is produced
SPOOL_MEMORY = 8 << 20
#: statements chDB runs as a streaming query (its other statements: "Streaming query is not supported")
_READ_RE = re.compile(r"\s*\(*\s*(?:SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.I)
#: output formats whose chunks from chDB's streaming query join into one document as written (measured on chDB
#: 4.4 against a whole query(), 200,000 rows in 4 chunks: equal bytes); every other format repeats its prefix and
#: suffix in each chunk (JSON, XML, Pretty*, Parquet, Arrow, ORC, Values, ...), so those results are built whole
STREAM_FORMATS = frozenset("""tabseparated tsv tabseparatedraw tsvraw csv jsoneachrow jsonlines ndjson
    jsoncompacteachrow jsonstringseachrow jsoncompactstringseachrow native rowbinary customseparated tskv
    lineasstring""".split())
#: formats whose every streamed chunk starts with the same header: the joined output keeps the first one only
#: (:func:`header_length`)
HEADED_FORMATS = frozenset("""tabseparatedwithnames tsvwithnames tabseparatedwithnamesandtypes tsvwithnamesandtypes
    csvwithnames csvwithnamesandtypes jsoncompacteachrowwithnames jsoncompacteachrowwithnamesandtypes
    rowbinarywithnames rowbinarywithnamesandtypes odbcdriver2""".split())


class ClickHouseError(Exception):
    """A ClickHouse exception: ``code`` (ClickHouse error code), ``name`` (e.g. ``SYNTAX_ERROR``), ``message``
    (``Code: N. DB::Exception: ... (NAME)``)."""

    def __init__(self, code: int, message: str, name: str = ""):
        super().__init__(message)
        self.code, self.message, self.name = code, message, name

    @classmethod
    def from_chdb(cls, exc: BaseException) -> "ClickHouseError":
        """Parse chDB's exception text (``Code: N. DB::Exception: ... (NAME)``)."""
        text = str(exc).strip().removeprefix("Streaming query failed: ")   # chDB's send_query() prefixes that
        m = _CODE_RE.search(text)
        code = int(m.group(1)) if m else 1002  # UNKNOWN_EXCEPTION
        n = _NAME_RE.search(text)
        if not m:
            text = f"Code: {code}. DB::Exception: {text}. (UNKNOWN_EXCEPTION)"
        return cls(code, text, n.group(1) if n else "UNKNOWN_EXCEPTION")


@dataclass
class Result:
    """A query's output and counters: ``body`` (a binary file positioned at the start: in memory up to
    :data:`SPOOL_MEMORY` bytes, on disk beyond) holding ``size`` bytes; rows/bytes read from storage and written,
    ``result_rows`` (rows of the result, 0 for a statement without one), elapsed seconds. :meth:`close` it."""

    body: BinaryIO
    size: int = 0
    rows_read: int = 0
    bytes_read: int = 0
    rows_written: int = 0
    bytes_written: int = 0
    elapsed_s: float = 0.0
    result_rows: int = 0

    @property
    def data(self) -> bytes:
        """The whole output (reads the body into memory: for small results and tests)."""
        self.body.seek(0)
        out = self.body.read()
        self.body.seek(0)
        return out

    def blocks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The output in blocks of at most ``size`` bytes, from the start."""
        self.body.seek(0)
        while block := self.body.read(size):
            yield block

    def close(self) -> None:
        """Free the body (its temporary file, if it was spooled to disk)."""
        self.body.close()


def quote_string(value: str) -> str:
    """A ClickHouse single-quoted string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    """A ClickHouse back-quoted identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def profile_settings(users_xml: str | Path = USERS_XML, profile: str = BI_PROFILE) -> dict[str, str]:
    """The settings of a settings profile in a ClickHouse users file (``<clickhouse><profiles><name><setting>value``),
    ``readonly`` excluded: ``{setting: value as text}``.

    Raises:
        FileNotFoundError: no such file. ValueError: the file is not XML or has no such profile.
    """
    try:
        root = ET.parse(users_xml).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{users_xml}: not XML: {exc}") from None
    node = root.find(f"profiles/{profile}")
    if node is None:
        raise ValueError(f"{users_xml}: no settings profile {profile!r}")
    return {child.tag: (child.text or "").strip() for child in node if child.tag != "readonly"}


class Engine:
    """The chDB data path of this process, behind one lock.

    Args:
        path: chDB data folder (created).
        bi_settings: settings of the ``ro1`` connection (bi_reader) applied before ``readonly=1`` locks them;
            default :func:`profile_settings` of :data:`BI_PROFILE` in :data:`USERS_XML`.
    Raises:
        ClickHouseError: chDB cannot open the path (e.g. another process holds it) or refuses a setting.
        FileNotFoundError, ValueError: ``bi_settings`` not given and :data:`USERS_XML` missing or without the
            profile.
    """

    def __init__(self, path: str | Path, bi_settings: dict[str, str] | None = None):
        bi_settings = profile_settings() if bi_settings is None else bi_settings
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.tmp = Path(tempfile.mkdtemp(prefix="chserver-"))
        self.bi_settings = dict(bi_settings)
        try:
            self.rw, self.ro2, self.ro1 = self._open("rw"), self._open("ro2"), self._open("ro1")
            self.rw.query("CREATE DATABASE IF NOT EXISTS default")
        except Exception as exc:  # noqa: BLE001 - chDB raises its own types
            raise ClickHouseError.from_chdb(exc) from None
        self.version = self.rw.query("SELECT version()", "TSV").bytes().decode().strip()
        self.timezone = self.rw.query("SELECT timezone()", "TSV").bytes().decode().strip()
        if self.timezone != "UTC":   # chDB loaded in this process before this module set TZ
            self.close()
            raise RuntimeError(f"chDB runs in time zone {self.timezone!r}, the endpoint serves UTC: import "
                               "chserver.engine before anything else loads chdb, or run with TZ=UTC")

    def close(self) -> None:
        """Close the connections (chDB flushes its data) and remove temporary files."""
        for conn in (self.ro1, self.ro2, self.rw):
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing at shutdown must not raise
                pass
        for f in self.tmp.glob("*"):
            f.unlink(missing_ok=True)
        self.tmp.rmdir()

    # ------------------------------------------------------------------------------------------------
    def _conn(self, role: str):
        return {"rw": self.rw, "ro2": self.ro2, "ro1": self.ro1}[role]

    def _open(self, role: str):
        """A new chDB connection to the data path with ``role``'s session settings (``ro2``: readonly=2; ``ro1``:
        the BI profile, then readonly=1, which locks them)."""
        conn = chdb.connect(str(self.path))
        if role == "ro2":
            conn.query("SET readonly = 2")
        elif role == "ro1":
            for k, v in self.bi_settings.items():
                conn.query(f"SET {k} = {quote_string(v)}")
            conn.query("SET readonly = 1")
        return conn

    def _changed_settings(self, conn) -> dict[str, str]:
        return dict(line.split("\t", 1) for line in conn.query(
            "SELECT name, value FROM system.settings WHERE changed", "TSV").bytes().decode().splitlines()
            if "\t" in line)

    def _restore(self, role: str, conn, keys: list[str]) -> None:
        """Undo a request's settings on ``role``'s shared connection; when one cannot be undone (a request's
        ``readonly=1`` forbids changing settings, ``readonly`` included) the connection is replaced by a fresh one
        with the role's own settings, so no request's settings outlive it."""
        try:
            for k in keys:
                conn.query(f"SET {k} = DEFAULT")
            return
        except Exception:  # noqa: BLE001 - chDB raises its own types: the way out is a new connection
            pass
        fresh = self._open(role)
        setattr(self, role, fresh)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the old handle is dropped either way
            pass

    def _drop_temporary(self, role: str) -> None:
        """Drop the temporary tables on ``role``'s shared connection: without a session, ClickHouse keeps a
        request's temporary tables for that request only. When they cannot be dropped the connection is replaced
        (its temporary tables go with it)."""
        conn = self._conn(role)
        try:
            names = conn.query("SELECT name FROM system.tables WHERE is_temporary", "TSV").bytes().decode().split("\n")
            for name in filter(None, names):
                conn.query(f"DROP TEMPORARY TABLE IF EXISTS {quote_ident(name)}")
            return
        except Exception:  # noqa: BLE001 - chDB raises its own types: the way out is a new connection
            pass
        setattr(self, role, self._open(role))
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the old handle is dropped either way
            pass

    def execute(self, sql: str, fmt: str, *, role: str = "rw", database: str | None = None,
                settings: dict[str, str] | None = None, params: dict[str, str] | None = None,
                insert_data: bytes | None = None, insert_format: str | None = None) -> Result:
        """Run one statement and return its output in ``fmt``.

        Args:
            sql: the statement (for an INSERT with data: ``INSERT INTO t [(cols)] [SETTINGS ...]`` without FORMAT).
            fmt: output format name (a FORMAT clause in ``sql`` wins, as in ClickHouse).
            role: ``rw``, ``ro2`` (GET: readonly=2) or ``ro1`` (bi_reader: readonly=1).
            database: current database for the statement.
            settings: query settings (applied with SET for this statement only).
            params: query parameters ``{name: value as text}`` for ``{name:Type}`` placeholders.
            insert_data, insert_format: the body of an INSERT and its format.
        Raises:
            ClickHouseError: the engine's error, unchanged (code and message).
        """
        with self.lock:
            conn = self._conn(role)   # under the lock: a request before this one may have replaced it (_restore)
            applied: list[str] = []
            data_file: str | None = None
            try:
                conn.query(f"USE {quote_ident(database or 'default')}")  # never the previous request's
                for k, v in (settings or {}).items():
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                        raise ClickHouseError(115, f"Code: 115. DB::Exception: Unknown setting '{k}'. (UNKNOWN_SETTING)",
                                              "UNKNOWN_SETTING")
                    conn.query(f"SET {k} = {quote_string(v)}")
                    applied.append(k)
                if insert_data is not None:
                    sql, data_file = self._insert_from_file(conn, sql, insert_data, insert_format or "TabSeparated",
                                                            database)
                before = self._changed_settings(conn) if _SET_RE.match(sql) else None
                t0 = time.perf_counter()
                if insert_data is None and before is None and streamable(sql, fmt):
                    streamed = self._stream(conn, sql, fmt, params)
                    if streamed is not None:
                        streamed.elapsed_s = time.perf_counter() - t0
                        return streamed
                try:
                    res = conn.query(sql, fmt, params=params or None) if params else conn.query(sql, fmt)
                finally:
                    if before is not None:  # ClickHouse over HTTP without a session: a SET lasts one request
                        after = self._changed_settings(conn)
                        applied += [k for k, v in after.items() if before.get(k) != v and k not in applied]
                elapsed = time.perf_counter() - t0
                data = res.bytes() or b""
                # chDB's rows_read/bytes_read count the result; storage_* what the query read
                return Result(body=io.BytesIO(data), size=len(data), rows_read=_int(res, "storage_rows_read"),
                              bytes_read=_int(res, "storage_bytes_read"), rows_written=_int(res, "rows_written"),
                              bytes_written=_int(res, "bytes_written"), elapsed_s=elapsed,
                              result_rows=_int(res, "rows_read"))
            except ClickHouseError:
                raise
            except Exception as exc:  # noqa: BLE001 - chDB's errors become ClickHouse errors
                raise ClickHouseError.from_chdb(exc) from None
            finally:
                if data_file:
                    Path(data_file).unlink(missing_ok=True)
                if applied:
                    self._restore(role, conn, applied)
                if _TEMPORARY_RE.search(sql):
                    self._drop_temporary(role)

    def _stream(self, conn, sql: str, fmt: str, params: dict[str, str] | None) -> Result | None:
        """Run a read as chDB's streaming query, writing each chunk to a spool (memory up to :data:`SPOOL_MEMORY`,
        then a temporary file), so a large result never sits whole in memory. The engine's lock is held until the
        last chunk is spooled; the client reads the spool afterwards. A header format keeps its first chunk's
        header only. Returns None, having cancelled the query, when the chunks cannot be joined (a header that
        :func:`header_length` cannot read or that changes) or chDB does not stream the statement: the caller then
        runs it whole, which a read allows.

        Raises:
            ClickHouseError: the engine's error, also one raised after some chunks (nothing is answered but it).
        """
        f = fmt.lower()
        try:
            stream = conn.send_query(sql, fmt, params=params or None)
        except Exception as exc:  # noqa: BLE001 - chDB raises its own types
            if "Streaming query is not supported" in str(exc):
                return None
            raise ClickHouseError.from_chdb(exc) from None
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, dir=self.tmp)
        res = Result(body=spool)
        header: bytes | None = None
        try:
            for chunk in stream:
                data = chunk.bytes() or b""
                res.result_rows += _int(chunk, "rows_read")
                res.rows_read += _int(chunk, "storage_rows_read")
                res.bytes_read += _int(chunk, "storage_bytes_read")
                if f in HEADED_FORMATS and data:
                    if header is None:
                        n = header_length(f, data)
                        if n is None:
                            raise _Unjoinable
                        header = data[:n]
                    elif data.startswith(header):
                        data = data[len(header):]
                    else:
                        raise _Unjoinable
                spool.write(data)
                res.size += len(data)
            if f in HEADED_FORMATS and header is None:  # no rows, so no chunk carried the header
                header = self._empty_header(conn, sql, fmt, params)
                if header is None:                    # a statement EXPLAIN cannot describe: run it whole
                    raise _Unjoinable
                spool.write(header)
                res.size += len(header)
        except _Unjoinable:
            stream.cancel()
            spool.close()
            return None
        except BaseException as exc:
            with contextlib.suppress(Exception):
                stream.cancel()
            spool.close()
            if isinstance(exc, Exception) and not isinstance(exc, ClickHouseError):
                raise ClickHouseError.from_chdb(exc) from None
            raise
        spool.seek(0)
        return res

    def _empty_header(self, conn, sql: str, fmt: str, params: dict[str, str] | None) -> bytes | None:
        """The output of an empty result of ``sql`` in the header format ``fmt`` (its header alone), without running
        the query again: the result's columns from ``EXPLAIN PLAN json = 1, header = 1`` (analysis only, nothing
        read), then ``SELECT * FROM null(columns)`` in ``fmt``. Until 2026-12-06 an empty header-format result ran
        its query a second time (a 1 s query answered in 2 s). Returns None when EXPLAIN cannot describe the
        statement (not a SELECT / WITH, or it fails): the caller then runs it whole."""
        from chserver.sqlscan import code_of, output_format   # sqlscan imports this module

        if not re.match(r"\s*\(*\s*(?:SELECT|WITH)\b", code_of(sql), re.I):
            return None
        text = sql
        if output_format(sql):   # EXPLAIN's own output format would be that one: drop the last FORMAT clause
            clauses = list(re.finditer(r"\bFORMAT\s+[A-Za-z_][A-Za-z0-9_]*", sql, re.I))
            text = sql[:clauses[-1].start()] + " " + sql[clauses[-1].end():]
        text = text.rstrip().rstrip(";")
        try:
            plan = json.loads(conn.query(f"EXPLAIN PLAN json = 1, header = 1 {text}", "TSVRaw",
                                         params=params or None).bytes())
            columns = ", ".join(f"{quote_ident(c['Name'])} {c['Type']}" for c in plan[0]["Plan"]["Header"])
            return conn.query(f"SELECT * FROM null({quote_string(columns)})", fmt).bytes() or None
        except Exception:  # noqa: BLE001 - chDB raises its own types; None: the caller runs the statement whole
            return None

    def _insert_from_file(self, conn, sql: str, data: bytes, fmt: str, database: str | None) -> tuple[str, str]:
        """``INSERT INTO t [(cols)] [SETTINGS ...]`` + data -> (``INSERT ... SELECT * FROM file(tmp, fmt, structure)``,
        the temporary file holding the data, which the caller removes)."""
        m = re.match(r"\s*INSERT\s+INTO\s+(?:TABLE\s+)?((?:`[^`]+`|[\w.]+)(?:\.(?:`[^`]+`|\w+))?)\s*(\(([^)]*)\))?\s*(.*)$",
                     sql, re.I | re.S)
        if not m:
            raise ClickHouseError(62, "Code: 62. DB::Exception: Syntax error: expected INSERT INTO <table> [(columns)] "
                                      "FORMAT <format> followed by data. (SYNTAX_ERROR)", "SYNTAX_ERROR")
        table, cols_sql, rest = m.group(1), m.group(3), m.group(4).strip()
        if rest and not re.match(r"SETTINGS\b", rest, re.I):
            raise ClickHouseError(62, f"Code: 62. DB::Exception: Syntax error: unexpected '{rest[:60]}' before the "
                                      "data of an INSERT. (SYNTAX_ERROR)", "SYNTAX_ERROR")
        parts = [p.strip("` ") for p in re.split(r"\.(?=(?:[^`]*`[^`]*`)*[^`]*$)", table)]
        db, tbl = (parts[0], parts[1]) if len(parts) == 2 else (database or "default", parts[0])
        structure = ""
        if fmt.lower() in _UNTYPED_INPUT or fmt.lower().startswith("rowbinary"):
            every = [json.loads(line) for line in conn.query(
                f"SELECT name, type, default_kind, default_expression FROM system.columns WHERE database = "
                f"{quote_string(db)} AND table = {quote_string(tbl)} ORDER BY position", "JSONCompactEachRow"
            ).bytes().decode().splitlines() if line.strip()]
            # MATERIALIZED, ALIAS and EPHEMERAL columns take no input: never in the structure
            rows = [r for r in every if r[2] not in ("MATERIALIZED", "ALIAS", "EPHEMERAL")]
            types = {name: typ for name, typ, _, _ in rows}
            if not types:
                raise ClickHouseError(60, f"Code: 60. DB::Exception: Table {db}.{tbl} does not exist. (UNKNOWN_TABLE)",
                                      "UNKNOWN_TABLE")
            wanted = [c.strip().strip("`") for c in cols_sql.split(",")] if cols_sql else list(types)
            missing = [c for c in wanted if c not in types]
            if missing:
                raise ClickHouseError(16, f"Code: 16. DB::Exception: No such column {missing[0]} in table {db}.{tbl}. "
                                          "(NO_SUCH_COLUMN_IN_TABLE)", "NO_SUCH_COLUMN_IN_TABLE")
            # a field the data omits (JSONEachRow, CSVWithNames, ...) or leaves empty (CSV) takes the column's
            # DEFAULT, as a server's INSERT ... FORMAT does (input_format_defaults_for_omitted_fields): the
            # structure carries the DEFAULT expressions. The structure is the INSERT's columns only: a field the
            # data gives for another column is skipped (input_format_skip_unknown_fields, as on a server), and a
            # DEFAULT naming another column takes that column's own DEFAULT / MATERIALIZED / ALIAS expression in
            # its place (:func:`inline_defaults`). Until 2026-12-06 a names-fields format read every column, so
            # {"b": "zz"} for an unlisted b fed a listed d DEFAULT concat(b, '!'): 'zz!' where a server stores 'bee!'.
            defaults = {name: expr for name, _, kind, expr in rows if kind == "DEFAULT" and expr}
            outside = {r[0]: (r[1], r[3]) for r in every if r[0] not in wanted}
            parts_sql = []
            for c in wanted:
                expr = inline_defaults(defaults[c], outside) if c in defaults else None
                parts_sql.append(f"{quote_ident(c)} {types[c]}" + (f" DEFAULT {expr}" if expr else ""))
            structure = ", " + quote_string(", ".join(parts_sql))
        fd, path = tempfile.mkstemp(dir=self.tmp, suffix="." + fmt.lower())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        cols = f" ({cols_sql})" if cols_sql else ""
        settings = f" {rest}" if rest else ""
        return (f"INSERT INTO {quote_ident(db)}.{quote_ident(tbl)}{cols}{settings} "
                f"SELECT * FROM file({quote_string(path)}, {quote_string(fmt)}{structure})"), path


class _Unjoinable(Exception):
    """A streamed result whose chunks cannot be joined into one document."""


def streamable(sql: str, fmt: str) -> bool:
    """Whether a statement's result in ``fmt`` can be streamed (:meth:`Engine._stream`): a read (``SELECT``,
    ``WITH``, ``SHOW``, ``DESCRIBE``, ``EXPLAIN``, ``EXISTS``, after comments) in one of :data:`STREAM_FORMATS`
    or :data:`HEADED_FORMATS`."""
    from chserver.sqlscan import code_of   # sqlscan imports this module

    f = fmt.lower()
    return (f in STREAM_FORMATS or f in HEADED_FORMATS) and bool(_READ_RE.match(code_of(sql)))


def _leb128(data: bytes, i: int) -> tuple[int, int] | None:
    """An unsigned LEB128 varint at ``data[i:]``: (value, next index), or None when ``data`` ends first."""
    value = shift = 0
    while i < len(data):
        b = data[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i
    return None


def _csv_record_end(data: bytes, i: int) -> int | None:
    """The index after the newline ending the CSV record starting at ``data[i]`` (quotes may hold newlines)."""
    quoted = False
    for j in range(i, len(data)):
        c = data[j]
        if c == 0x22:
            quoted = not quoted
        elif c == 0x0A and not quoted:
            return j + 1
    return None


def header_length(fmt: str, data: bytes) -> int | None:
    """The length in bytes of the header at the start of ``data``, output in the header format ``fmt`` (one of
    :data:`HEADED_FORMATS`, lower case), or None when ``data`` ends inside it. Layouts (ClickHouse's formats
    documentation, https://clickhouse.com/docs/interfaces/formats): ``...WithNames`` one line or CSV record of
    names, ``...WithNamesAndTypes`` two; ``RowBinaryWithNames[AndTypes]`` a LEB128 column count then that many
    LEB128-length-prefixed names (and types); ``ODBCDriver2`` an Int32 number of header rows, each an Int32
    count of Int32-length-prefixed strings (``name`` + names, ``type`` + types)."""
    lines = 2 if fmt.endswith("andtypes") else 1
    if fmt.startswith("rowbinary"):
        got = _leb128(data, 0)
        if got is None:
            return None
        n, i = got
        for _ in range(n * lines):
            got = _leb128(data, i)
            if got is None or got[1] + got[0] > len(data):
                return None
            i = got[1] + got[0]
        return i
    if fmt == "odbcdriver2":
        def int32(at: int) -> int | None:
            return int.from_bytes(data[at:at + 4], "little", signed=True) if at + 4 <= len(data) else None
        rows, i = int32(0), 4
        if rows is None or rows < 0:
            return None
        for _ in range(rows):
            count = int32(i)
            if count is None or count < 0:
                return None
            i += 4
            for _ in range(count):
                size = int32(i)
                if size is None or size < 0 or i + 4 + size > len(data):
                    return None
                i += 4 + size
        return i
    i = 0
    for _ in range(lines):
        if fmt.startswith("csv"):
            end = _csv_record_end(data, i)
        else:
            end = data.find(b"\n", i) + 1 or None
        if end is None:
            return None
        i = end
    return i


#: a DEFAULT expression's tokens: a string literal (kept), a quoted or bare identifier (a bare one not after a
#: ``.`` and not before ``(``: not a tuple element, a qualified name's tail or a function)
_EXPR_TOKEN = re.compile(r"(?P<str>'(?:[^'\\]|\\.)*')|`(?P<bq>(?:[^`\\]|\\.)*)`|\"(?P<dq>(?:[^\"\\]|\\.)*)\""
                         r"|(?<![\w.])(?P<bare>[A-Za-z_]\w*)\b(?!\s*\()")


def inline_defaults(expr: str, outside: dict[str, tuple[str, str]], depth: int = 0) -> str | None:
    """A DEFAULT expression with every column of ``outside`` it names replaced by that column's own expression,
    ``CAST((expr), 'Type')``, or ``defaultValueOfTypeName('Type')`` when it has none: what a server computes for
    a column an INSERT does not list (its DEFAULT, MATERIALIZED or ALIAS expression; EPHEMERAL's default).

    Args:
        expr: the expression as ``system.columns.default_expression`` gives it.
        outside: {column name: (type, expression or '')} of the columns the INSERT does not read.
    Returns:
        the expression, or None when it nests more than 32 deep (left out: the type's zero).
    """
    if depth > 32:
        return None
    failed = False

    def sub(m: re.Match) -> str:
        nonlocal failed
        if m.group("str") is not None:
            return m.group(0)
        name = next(g for g in (m.group("bq"), m.group("dq"), m.group("bare")) if g is not None)
        if name not in outside:
            return m.group(0)
        typ, inner = outside[name]
        if not inner:
            return f"defaultValueOfTypeName({quote_string(typ)})"
        got = inline_defaults(inner, outside, depth + 1)
        if got is None:
            failed = True
            return m.group(0)
        return f"CAST(({got}), {quote_string(typ)})"

    out = _EXPR_TOKEN.sub(sub, expr)
    return None if failed else out


def _int(res, attr: str) -> int:
    try:
        v = getattr(res, attr)
        return int(v() if callable(v) else v)
    except Exception:  # noqa: BLE001 - counters are best effort
        return 0
