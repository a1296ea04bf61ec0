"""The ClickHouse HTTP endpoint over chDB (``python -m chserver``) against what a ClickHouse server answers.

A real server process on a free port with a fresh chDB path; clients are clickhouse-connect and plain HTTP
(httpx). Expected answers are ClickHouse's documented behaviour (status codes from
src/Server/HTTP/exceptionCodeToHTTPStatus.cpp, error codes 516/164/62/60/115, ``Ok.`` on /ping), not this
implementation's own output.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.integration

ROWS = [(1, "alpha", 1.5), (2, "beta, \"quoted\"", -2.25), (3, "gamma\ttab", 0.0)]
#: the machine's time zone the endpoint process gets (UTC+13:45 in December; the test suite itself runs in UTC)
MACHINE_TZ = "Pacific/Chatham"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """(base URL, {user: password}) of a fresh endpoint process; stopped (port freed) at the end."""
    state = tmp_path_factory.mktemp("chserver")
    port = free_port()
    users = {"admin": secrets.token_urlsafe(12), "platform_writer": secrets.token_urlsafe(12),
             "bi_reader": secrets.token_urlsafe(12)}
    env = {**os.environ, "CLICKHOUSE_CHDB_PATH": str(state / "chdb"), "CLICKHOUSE_HTTP_PORT": str(port),
           "CLICKHOUSE_HTTP_HOST": "127.0.0.1", "RETAIL_STATE_DIR": str(state),
           "CLICKHOUSE_ADMIN_PASSWORD": users["admin"], "CLICKHOUSE_WRITER_PASSWORD": users["platform_writer"],
           "CLICKHOUSE_BI_PASSWORD": users["bi_reader"], "CLICKHOUSE_MAX_BODY_MB": "8",
           "TZ": MACHINE_TZ}   # a machine not in UTC: the endpoint must serve UTC all the same
    log = open(state / "chserver.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "chserver"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(base + "/ping", timeout=1).text == "Ok.\n":
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("endpoint did not answer /ping: " + (state / "chserver.log").read_text())
        w = httpx.post(base, auth=("platform_writer", users["platform_writer"]),
                       content="CREATE DATABASE IF NOT EXISTS t")
        assert w.status_code == 200, w.text
        yield base, users, port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # it must stop on SIGTERM: kill it (no process left), then fail
            proc.kill()
            proc.wait()
            pytest.fail("the endpoint did not stop within 30 s of SIGTERM (killed)")
        finally:
            log.close()
        import socket

        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, "port still bound after the endpoint stopped"


def _w(users):
    return ("platform_writer", users["platform_writer"])


def _post(base, auth, sql, data: bytes | None = None, **params):
    if data is None:
        return httpx.post(base, auth=auth, params=params, content=sql.encode(), timeout=60)
    return httpx.post(base, auth=auth, params={"query": sql, **params}, content=data, timeout=60)


def _table(base, users, name, engine="MergeTree ORDER BY id"):
    r = _post(base, _w(users), f"CREATE OR REPLACE TABLE t.{name} (id UInt32, name String, v Float64) ENGINE = {engine}")
    assert r.status_code == 200, r.text


def _rows(base, users, name):
    r = _post(base, _w(users), f"SELECT id, name, v FROM t.{name} ORDER BY id FORMAT JSONCompact")
    assert r.status_code == 200, r.text
    return [tuple(x) for x in r.json()["data"]]


# ------------------------------------------------------------------------------------------ basics --
def test_ping_root_and_version(endpoint):
    base, users, _ = endpoint
    assert httpx.get(base + "/ping").text == "Ok.\n"
    assert httpx.get(base + "/").text == "Ok.\n"
    r = httpx.get(base, params={"query": "SELECT 1 + 1"}, auth=_w(users))
    assert (r.status_code, r.text) == (200, "2\n")
    assert r.headers["X-ClickHouse-Format"] == "TabSeparated"
    assert r.headers["X-ClickHouse-Timezone"] in ("UTC", "Etc/UTC")
    summary = json.loads(r.headers["X-ClickHouse-Summary"])
    assert set(summary) >= {"read_rows", "read_bytes", "written_rows", "written_bytes", "elapsed_ns"}
    assert all(isinstance(v, str) for v in summary.values())


def test_the_endpoint_serves_utc_on_a_machine_in_another_time_zone(endpoint):
    """The endpoint runs under TZ=Pacific/Chatham (:data:`MACHINE_TZ`) and serves UTC, as the compose ClickHouse
    server: timezone(), the X-ClickHouse-Timezone header, and a DateTime written as a string and read back as Unix
    seconds (computed here with datetime in UTC). It served the machine's zone before (Pacific/Chatham; the string
    read 13 h 45 min off)."""
    from datetime import datetime, timezone

    base, users, _ = endpoint
    r = _post(base, _w(users), "SELECT timezone(), serverTimezone() FORMAT TSV")
    assert r.status_code == 200 and r.text.split() == ["UTC", "UTC"], r.text
    assert r.headers["X-ClickHouse-Timezone"] == "UTC"
    assert _post(base, _w(users), "CREATE OR REPLACE TABLE t.tz (d DateTime) ENGINE = MergeTree ORDER BY d").status_code == 200
    assert _post(base, _w(users), "INSERT INTO t.tz VALUES ('2026-12-06 23:30:00')").status_code == 200
    r = _post(base, _w(users), "SELECT toUnixTimestamp(d), toString(toDate(d)) FROM t.tz FORMAT TSV")
    want = int(datetime(2026, 12, 6, 23, 30, tzinfo=timezone.utc).timestamp())
    assert r.text.split() == [str(want), "2026-12-06"], r.text


def test_query_id_database_default_format_and_params(endpoint):
    base, users, _ = endpoint
    r = httpx.get(base, auth=_w(users), params={"query": "SELECT currentDatabase() AS db, {n:UInt8} * 2 AS x, {s:String} AS s",
                                                "database": "t", "default_format": "JSONEachRow", "query_id": "q-42",
                                                "param_n": "21", "param_s": "it's"})
    assert r.status_code == 200, r.text
    assert r.headers["X-ClickHouse-Query-Id"] == "q-42"
    assert r.headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert json.loads(r.text) == {"db": "t", "x": 42, "s": "it's"}
    # the query in the URL and the body together (POST): ClickHouse concatenates them
    r = httpx.post(base, auth=_w(users), params={"query": "SELECT 40 +"}, content=b"2")
    assert r.text == "42\n"
    # the database of one request does not leak into the next
    r = httpx.get(base, auth=_w(users), params={"query": "SELECT currentDatabase()"})
    assert (r.status_code, r.text) == (200, "default\n")


def test_auth_ways_and_failures(endpoint):
    base, users, _ = endpoint
    q = {"query": "SELECT 7"}
    assert httpx.get(base, params=q, headers={"X-ClickHouse-User": "admin", "X-ClickHouse-Key": users["admin"]}).text == "7\n"
    assert httpx.get(base, params={**q, "user": "bi_reader", "password": users["bi_reader"]}).text == "7\n"
    for kw in ({}, {"auth": ("platform_writer", secrets.token_urlsafe(12))}, {"auth": ("default", "")}, {"auth": ("nobody", "x")}):
        r = httpx.get(base, params=q, **kw)
        assert r.status_code == 403 and r.headers["X-ClickHouse-Exception-Code"] == "516", (kw, r.text)
        assert r.text.startswith("Code: 516. DB::Exception:") and "AUTHENTICATION_FAILED" in r.text


def test_errors_as_a_server_returns_them(endpoint):
    base, users, _ = endpoint
    cases = [("SELEC 1", 62, 400), ("SELECT * FROM t.no_such_table", 60, 404), ("SELECT 1", 115, 404)]
    for sql, code, status in cases:
        params = {"no_such_setting_xyz": "1"} if code == 115 else {}
        r = _post(base, _w(users), sql, **params)
        assert (r.status_code, r.headers["X-ClickHouse-Exception-Code"]) == (status, str(code)), r.text
        assert r.text.startswith(f"Code: {code}. DB::Exception:") and "Traceback" not in r.text
        assert httpx.get(base + "/ping").text == "Ok.\n"  # still serving
    # a GET request is read-only (ClickHouse: readonly=2 for GET)
    r = httpx.get(base, auth=_w(users), params={"query": "CREATE TABLE t.g (a UInt8) ENGINE = Memory"})
    assert r.headers["X-ClickHouse-Exception-Code"] == "164"
    # bad bodies: corrupt gzip, unknown encoding, too large, not UTF-8
    r = httpx.post(base, auth=_w(users), content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "Code: 271" in r.text
    r = httpx.post(base, auth=_w(users), content=b"SELECT 1", headers={"Content-Encoding": "snappy-x"})
    assert "Code: 55" in r.text
    r = httpx.post(base, auth=_w(users), content=b"\xff\xfe SELECT")
    assert r.status_code == 400 and "Code: 62" in r.text
    r = httpx.post(base, auth=_w(users), params={"query": "INSERT INTO t.big FORMAT CSV"}, content=b"x" * (9 << 20))
    assert r.status_code == 413 and "Code: 202" in r.text


def test_a_requests_settings_never_outlive_it(endpoint):
    """Writers share one connection: a request's readonly=1 (which forbids undoing any setting) and a SET
    statement (ClickHouse without a session: one request) must not reach the next request."""
    base, users, _ = endpoint
    w = _w(users)
    _table(base, users, "st")
    r = _post(base, w, "INSERT INTO t.st VALUES (1, 'a', 1.5)", readonly="1")
    assert r.headers.get("X-ClickHouse-Exception-Code") == "164", r.text  # that request is read-only
    assert _post(base, w, "SELECT 1", readonly="1").text == "1\n"
    r = _post(base, w, "INSERT INTO t.st VALUES (2, 'wrong format of file', 2.5)")  # "format": no FORMAT clause
    assert r.status_code == 200, r.text
    assert _rows(base, users, "st") == [(2, "wrong format of file", 2.5)]
    assert _post(base, w, "SET max_result_rows = 1, result_overflow_mode = 'break'").status_code == 200
    r = _post(base, w, "SELECT number FROM numbers(3)")
    assert (r.status_code, r.text) == (200, "0\n1\n2\n"), r.text
    # the database and format headers (they win over the URL parameters, as on a server)
    r = httpx.post(base, auth=w, params={"database": "default", "default_format": "TSV"},
                   headers={"X-ClickHouse-Database": "t", "X-ClickHouse-Format": "JSONEachRow"},
                   content=b"SELECT currentDatabase() AS db")
    assert (json.loads(r.text), r.headers["X-ClickHouse-Format"]) == ({"db": "t"}, "JSONEachRow")
    # an error name with digits keeps its status (400, not 500)
    r = _post(base, w, "SELECT toIPv4('abc')")
    assert r.status_code == 400 and r.text.rstrip().endswith(")") and "CANNOT_PARSE_IPV4" in r.text, r.text


def test_url_parameters_that_are_not_utf8_are_refused(endpoint):
    """A percent-encoded byte that is not UTF-8 (``%FF``) in the query, a parameter's value, the database or a
    parameter's name: 400, code 36 BAD_ARGUMENTS, nothing run (it became U+FFFD: ``SELECT '%FF'`` answered
    ``EF BF BD``, an INSERT's parameter would have been stored changed). UTF-8 (``%C3%A9``) still decodes."""
    base, users, _ = endpoint
    w = _w(users)
    _table(base, users, "utf8")
    for url in ("/?query=SELECT%20%27%FF%27", "/?query=SELECT%20%7Bx%3AString%7D&param_x=%FF%FE",
                "/?query=SELECT%201&database=%FF", "/?query=SELECT%201&param_%FF=1"):
        r = httpx.get(base + url, auth=w)
        assert (r.status_code, r.headers.get("X-ClickHouse-Exception-Code")) == (400, "36"), (url, r.text)
        assert r.text.startswith("Code: 36. DB::Exception: ") and "(BAD_ARGUMENTS)" in r.text, r.text
    sql = "INSERT INTO t.utf8 SELECT 1, {x:String}, 0"
    r = httpx.post(base + "/?param_x=a%FFb", auth=w, content=sql.encode())
    assert (r.status_code, r.headers.get("X-ClickHouse-Exception-Code")) == (400, "36"), r.text
    assert _rows(base, users, "utf8") == []                         # nothing written
    r = httpx.post(base + "/?param_x=%C3%A9t%C3%A9", auth=w, content=sql.encode())
    assert r.status_code == 200, r.text
    assert _rows(base, users, "utf8") == [(1, "\u00e9t\u00e9", 0.0)]
    r = httpx.get(base + "/?query=SELECT%20hex(%27%C3%A9%27)", auth=w)
    assert (r.status_code, r.text) == (200, "C3A9\n")


def test_omitted_fields_take_the_columns_defaults(endpoint):
    """INSERT ... FORMAT JSONEachRow / CSVWithNames without some fields: those columns take their DEFAULT
    expressions (a server's input_format_defaults_for_omitted_fields), not the type's zero."""
    base, users, _ = endpoint
    r = _post(base, _w(users), "CREATE OR REPLACE TABLE t.dflt (a UInt8, b String, c UInt8 DEFAULT 7, "
                               "d String DEFAULT concat(b, '!')) ENGINE = MergeTree ORDER BY a")
    assert r.status_code == 200, r.text
    r = _post(base, _w(users), "INSERT INTO t.dflt FORMAT JSONEachRow", b'{"a": 1, "b": "y"}\n{"a": 2, "b": "z", "c": 3}\n')
    assert r.status_code == 200, r.text
    r = _post(base, _w(users), "INSERT INTO t.dflt FORMAT CSVWithNames", b'a,b,d\n3,w,own\n')
    assert r.status_code == 200, r.text
    r = _post(base, _w(users), "SELECT a, b, c, d FROM t.dflt ORDER BY a FORMAT JSONCompact")
    assert [tuple(x) for x in r.json()["data"]] == [(1, "y", 7, "y!"), (2, "z", 3, "z!"), (3, "w", 7, "own")]

    # with a column list too: a listed field the data omits takes its DEFAULT, even one naming an unlisted column
    # (d from b's own DEFAULT); an unlisted column takes the table's DEFAULT; an empty CSV field its column's
    r = _post(base, _w(users), "CREATE OR REPLACE TABLE t.dflt2 (a UInt8, b String DEFAULT 'bee', c UInt8 DEFAULT 7, "
                               "d String DEFAULT concat(b, '!')) ENGINE = MergeTree ORDER BY a")
    assert r.status_code == 200, r.text
    for sql, body in (("INSERT INTO t.dflt2 (a, d) FORMAT JSONEachRow", b'{"a": 1}\n{"a": 2, "d": "own"}\n'),
                      ("INSERT INTO t.dflt2 (`a`, c, d) FORMAT CSVWithNames", b'a,c\n3,4\n'),
                      ("INSERT INTO t.dflt2 (a, c) FORMAT CSV", b'4,\n5,9\n')):
        r = _post(base, _w(users), sql, body)
        assert r.status_code == 200, (sql, r.text)
    r = _post(base, _w(users), "SELECT a, b, c, d FROM t.dflt2 ORDER BY a FORMAT JSONCompact")
    assert [tuple(x) for x in r.json()["data"]] == [(1, "bee", 7, "bee!"), (2, "bee", 7, "own"), (3, "bee", 4, "bee!"),
                                                    (4, "bee", 7, "bee!"), (5, "bee", 9, "bee!")]
    # a DEFAULT naming a MATERIALIZED column: the insert still works (that DEFAULT is left out: the type's zero)
    r = _post(base, _w(users), "CREATE OR REPLACE TABLE t.dflt3 (a UInt8, m UInt8 MATERIALIZED a * 2, "
                               "d UInt8 DEFAULT m + 1, e String DEFAULT 'x') ENGINE = MergeTree ORDER BY a")
    assert r.status_code == 200, r.text
    r = _post(base, _w(users), "INSERT INTO t.dflt3 (a, e) FORMAT JSONEachRow", b'{"a": 1}\n')
    assert r.status_code == 200, r.text
    r = _post(base, _w(users), "SELECT a, m, e FROM t.dflt3 FORMAT JSONCompact")
    assert [tuple(x) for x in r.json()["data"]] == [(1, 2, "x")]


_UNLISTED_DDL = ("CREATE OR REPLACE TABLE {t} (a UInt8, b String DEFAULT 'bee', d String DEFAULT concat(b, '!'), "
                 "m UInt8 MATERIALIZED a * 2, e UInt8 DEFAULT m + 1, f UInt8 DEFAULT e * 10, g UInt8) "
                 "ENGINE = MergeTree ORDER BY a")
_UNLISTED_INSERTS = [
    ("INSERT INTO {t} (a, d) FORMAT JSONEachRow", b'{"a": 1, "b": "zz"}\n{"a": 2, "b": "yy", "d": "own"}\n'),
    ("INSERT INTO {t} (a, d, f) FORMAT JSONEachRow", b'{"a": 3, "b": "xx", "e": 9, "g": 5, "m": 50}\n'),
    ("INSERT INTO {t} (a, d) FORMAT CSVWithNames", b'"a","b"\n4,"ww"\n'),
    ("INSERT INTO {t} (a, d, g) FORMAT TSVWithNames", b'a\tb\tg\n5\tvv\t6\n'),
    ("INSERT INTO {t} (a, f) FORMAT CSV", b'6,\n'),
]


def _server_rows(ddl: str, inserts: list[tuple[str, bytes]]) -> list[list]:
    """The rows ClickHouse itself stores: the same statements through clickhouse-local's own INSERT ... FORMAT
    parser (chDB in a process of its own, data inline after FORMAT)."""
    script = textwrap.dedent(f"""
        import chdb, json, sys
        c = chdb.connect(":memory:")
        c.query({ddl.format(t="default.x")!r})
        for sql, body in {[(s.format(t="default.x"), b) for s, b in inserts]!r}:
            c.query(sql + " " + body.decode())
        sys.stdout.write(c.query("SELECT a, b, d, m, e, f, g FROM default.x ORDER BY a", "JSONCompact").bytes().decode())
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["data"]


def test_insert_with_a_column_list_skips_fields_of_other_columns(endpoint):
    """INSERT INTO t (listed columns) FORMAT <a format naming its fields>: a field for a column outside the list is
    skipped (input_format_skip_unknown_fields), and a listed column's DEFAULT naming an unlisted column takes that
    column's own DEFAULT / MATERIALIZED expression: the rows equal what clickhouse-local's own INSERT stores (the
    endpoint stored d = 'zz!' from {"b": "zz"} where ClickHouse stores 'bee!')."""
    base, users, _ = endpoint
    r = _post(base, _w(users), _UNLISTED_DDL.format(t="t.unlisted"))
    assert r.status_code == 200, r.text
    for sql, body in _UNLISTED_INSERTS:
        r = _post(base, _w(users), sql.format(t="t.unlisted"), body)
        assert r.status_code == 200, (sql, r.text)
    r = _post(base, _w(users), "SELECT a, b, d, m, e, f, g FROM t.unlisted ORDER BY a FORMAT JSONCompact")
    got = r.json()["data"]
    assert got == _server_rows(_UNLISTED_DDL, _UNLISTED_INSERTS)
    assert got[0][:3] == [1, "bee", "bee!"]     # ClickHouse's documented behaviour, spelled out for one row


def test_bi_reader_is_readonly_1(endpoint):
    base, users, _ = endpoint
    _table(base, users, "ro")
    bi = ("bi_reader", users["bi_reader"])
    for sql in ("INSERT INTO t.ro VALUES (1, 'x', 1)", "CREATE TABLE t.ro2 (a UInt8) ENGINE = Memory",
                "DROP TABLE t.ro", "ALTER TABLE t.ro DELETE WHERE 1", "SET readonly = 0", "SET max_threads = 1"):
        r = _post(base, bi, sql)
        assert r.headers.get("X-ClickHouse-Exception-Code") == "164", (sql, r.status_code, r.text)
    r = _post(base, bi, "SELECT 1", max_threads="1")  # a setting in the URL is a setting change too
    assert r.headers.get("X-ClickHouse-Exception-Code") == "164", r.text
    r = _post(base, bi, "SELECT count() FROM t.ro")
    assert (r.status_code, r.text) == (200, "0\n")
    # the writer's connection is unaffected
    assert _post(base, _w(users), "INSERT INTO t.ro VALUES (1, 'x', 1)").status_code == 200


def test_bi_reader_has_the_compose_servers_profile_limits(endpoint):
    """bi_reader runs with the limits of the compose server's bi_readonly profile (users.d XML, read here with a
    regex, not the endpoint's parser), cannot lift them, and hits them: a result over max_result_rows fails with
    TOO_MANY_ROWS_OR_BYTES, a query past max_execution_time fails with TIMEOUT_EXCEEDED; the lock is free after.
    The writer has none of them."""
    import re

    xml = (REPO / "ops/docker/clickhouse/users.d/platform-users.xml").read_text()
    block = re.search(r"<bi_readonly>(.*?)</bi_readonly>", xml, re.S).group(1)
    profile = dict(re.findall(r"<(\w+)>([^<]*)</\1>", block))
    assert {"max_execution_time", "max_result_rows", "max_memory_usage"} <= set(profile), profile
    base, users, _ = endpoint
    bi = ("bi_reader", users["bi_reader"])
    names = sorted(profile)
    sql = "SELECT " + ", ".join(f"toString(getSetting('{n}'))" for n in names) + " FORMAT JSONCompact"
    got = _post(base, bi, sql).json()["data"][0]
    assert dict(zip(names, got)) == profile
    writer = _post(base, _w(users), sql).json()["data"][0]
    assert dict(zip(names, writer))["max_execution_time"] in ("0", "0.")
    r = _post(base, bi, "SELECT 1", max_execution_time="0")
    assert r.headers.get("X-ClickHouse-Exception-Code") == "164", r.text
    rows = int(profile["max_result_rows"])
    r = _post(base, bi, f"SELECT number FROM system.numbers LIMIT {rows + 1} FORMAT Null")
    assert r.headers.get("X-ClickHouse-Exception-Code") == "396" and "TOO_MANY_ROWS_OR_BYTES" in r.text, r.text
    assert _post(base, bi, f"SELECT count() FROM (SELECT number FROM system.numbers LIMIT {rows + 1})").text == \
        f"{rows + 1}\n"                                  # the limit is on the result, not on what is read


def test_a_bi_query_past_max_execution_time_releases_the_engine(tmp_path):
    """In its own process (one chDB per process): an Engine whose bi_reader connection has max_execution_time = 1
    stops an endless BI query with TIMEOUT_EXCEEDED (159), and the next query of any role runs."""
    code = textwrap.dedent("""
        import json, sys, time
        from chserver.engine import ClickHouseError, Engine
        eng = Engine(sys.argv[1], bi_settings={"max_execution_time": "1"})
        t0 = time.perf_counter()
        try:
            eng.execute("SELECT count() FROM system.numbers", "TSV", role="ro1")
            err = None
        except ClickHouseError as exc:
            err = [exc.code, exc.name]
        took = time.perf_counter() - t0
        after = eng.execute("SELECT 41 + 1", "TSV", role="rw").data.decode().strip()
        eng.close()
        print(json.dumps({"err": err, "took": took, "after": after}))
    """)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "chdb")], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["err"] == [159, "TIMEOUT_EXCEEDED"] and out["after"] == "42", out


def test_profile_settings_read_and_fail_clearly(tmp_path):
    from chserver.engine import profile_settings

    f = tmp_path / "users.xml"
    f.write_text("<clickhouse><profiles><p><readonly>1</readonly><max_execution_time>7</max_execution_time>"
                 "</p></profiles></clickhouse>")
    assert profile_settings(f, "p") == {"max_execution_time": "7"}
    with pytest.raises(ValueError, match="no settings profile 'q'"):
        profile_settings(f, "q")
    f.write_text("<clickhouse><profiles>")
    with pytest.raises(ValueError, match="not XML"):
        profile_settings(f, "p")


# ------------------------------------------------------------------------------------- input formats --
def _encode(fmt: str) -> bytes:
    df = pd.DataFrame(ROWS, columns=["id", "name", "v"]).astype({"id": "uint32"})
    if fmt in ("CSV", "CSVWithNames"):
        return df.to_csv(index=False, header=fmt == "CSVWithNames").encode()
    if fmt in ("TabSeparated", "TabSeparatedWithNames"):
        lines = ["id\tname\tv"] if fmt.endswith("Names") else []
        lines += [f"{i}\t{n.replace(chr(9), chr(92) + 't')}\t{v}" for i, n, v in ROWS]  # TSV escapes a tab as \t
        return ("\n".join(lines) + "\n").encode()
    if fmt == "JSONEachRow":
        return df.to_json(orient="records", lines=True).encode()
    if fmt == "Values":
        return ", ".join(f"({i}, '{n.replace(chr(39), chr(92) + chr(39))}', {v})" for i, n, v in ROWS).encode()
    if fmt == "Parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
        return buf.getvalue()
    if fmt in ("Arrow", "ArrowStream"):
        t = pa.Table.from_pandas(df, preserve_index=False)
        buf = io.BytesIO()
        writer = (pa.ipc.new_file if fmt == "Arrow" else pa.ipc.new_stream)(buf, t.schema)
        writer.write_table(t)
        writer.close()
        return buf.getvalue()
    raise ValueError(fmt)


def _rowbinary() -> bytes:
    import struct

    out = b""
    for i, n, v in ROWS:
        b = n.encode()
        out += struct.pack("<I", i) + bytes([len(b)]) + b + struct.pack("<d", v)
    return out


@pytest.mark.parametrize("fmt", ["CSV", "CSVWithNames", "TabSeparated", "TabSeparatedWithNames", "JSONEachRow",
                                 "Values", "Parquet", "Arrow", "ArrowStream", "RowBinary", "Native",
                                 "RowBinaryWithNamesAndTypes"])
def test_insert_each_input_format_round_trips(endpoint, fmt):
    base, users, _ = endpoint
    name = f"in_{fmt.lower()}"
    _table(base, users, name)
    if fmt in ("Native", "RowBinaryWithNamesAndTypes"):  # produced by the engine itself, as a server would
        data = _post(base, _w(users), "SELECT * FROM values('id UInt32, name String, v Float64', "
                     + ", ".join(f"({i}, '{n.replace(chr(39), chr(92) + chr(39))}', {v})" for i, n, v in ROWS)
                     + f") FORMAT {fmt}").content
    elif fmt == "RowBinary":
        data = _rowbinary()
    else:
        data = _encode(fmt)
    r = _post(base, _w(users), f"INSERT INTO t.{name} (id, name, v) FORMAT {fmt}", data)
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["X-ClickHouse-Summary"])["written_rows"] == str(len(ROWS))
    assert _rows(base, users, name) == [tuple(x) for x in ROWS]


def test_insert_with_format_in_the_body(endpoint):
    base, users, _ = endpoint
    _table(base, users, "body")
    r = httpx.post(base, auth=_w(users), content=b"INSERT INTO t.body FORMAT CSV\n" + _encode("CSV"))
    assert r.status_code == 200, r.text
    assert _rows(base, users, "body") == [tuple(x) for x in ROWS]


@pytest.mark.parametrize("fmt", ["RowBinaryWithNamesAndTypes", "ODBCDriver2", "Native", "Arrow", "JSONCompact"])
def test_output_formats_odbc_and_binary(endpoint, fmt):
    base, users, _ = endpoint
    r = httpx.get(base, auth=_w(users), params={"query": "SELECT 1::UInt8 AS a, 'x' AS b", "default_format": fmt})
    assert r.status_code == 200 and r.headers["X-ClickHouse-Format"] == fmt
    if fmt == "RowBinaryWithNamesAndTypes":  # LEB128 column count, names, types, then the row
        assert r.content == b"\x02\x01a\x01b\x05UInt8\x06String\x01\x01x"
    elif fmt == "ODBCDriver2":  # Int32 count, then (name, type) per column as Int32-length strings, then rows
        assert r.content[:4] == (2).to_bytes(4, "little") and b"UInt8" in r.content and b"String" in r.content
    elif fmt == "Arrow":
        assert pa.ipc.open_file(io.BytesIO(r.content)).read_all().to_pydict() == {"a": [1], "b": ["x"]}
    elif fmt == "JSONCompact":
        assert r.json()["data"] == [[1, "x"]]
    else:
        assert r.content and b"UInt8" in r.content


# ------------------------------------------------------------------------------------- compression --
@pytest.mark.parametrize("enc", ["gzip", "zstd", "lz4", "deflate"])
def test_compressed_request_bodies(endpoint, enc):
    import zlib

    import lz4.frame
    import zstandard

    base, users, _ = endpoint
    name = f"c_{enc}"
    _table(base, users, name)
    raw = _encode("CSV")
    body = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress, "lz4": lz4.frame.compress,
            "deflate": zlib.compress}[enc](raw)
    r = httpx.post(base, auth=_w(users), params={"query": f"INSERT INTO t.{name} FORMAT CSV"}, content=body,
                   headers={"Content-Encoding": enc})
    assert r.status_code == 200, r.text
    assert _rows(base, users, name) == [tuple(x) for x in ROWS]


def test_compressed_responses_only_when_asked(endpoint):
    base, users, _ = endpoint
    q = {"query": "SELECT number FROM numbers(1000)"}
    with httpx.Client(auth=_w(users)) as c:
        plain = c.get(base, params=q, headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in plain.headers  # enable_http_compression not set
        r = c.get(base, params={**q, "enable_http_compression": "1"}, headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        assert r.text == plain.text == "".join(f"{i}\n" for i in range(1000))


# ---------------------------------------------------------------------------------- clickhouse-connect --
def test_clickhouse_connect_end_to_end(endpoint):
    import clickhouse_connect

    base, users, port = endpoint
    c = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="platform_writer",
                                      password=users["platform_writer"], database="t")
    c.command("CREATE OR REPLACE TABLE t.cc (id UInt32, ts DateTime64(3, 'UTC'), price Decimal(18, 2), "
              "qty Nullable(Int64), sku LowCardinality(String)) ENGINE = MergeTree ORDER BY id "
              "SETTINGS non_replicated_deduplication_window = 100")
    df = pd.DataFrame({"id": [1, 2, 3], "ts": pd.to_datetime(["2024-01-01 10:00:00", "2024-01-02 00:00:00", "2024-01-03 00:00:00"], utc=True),
                       "price": [1.5, 2.25, 3.0], "qty": [None, 4, -1], "sku": ["a", "b", "a"]})
    c.insert_df("cc", df)
    c.insert_arrow("cc", pa.Table.from_pandas(df.assign(id=df["id"] + 10), preserve_index=False))
    got = c.query_df("SELECT * FROM cc ORDER BY id")
    assert got["id"].tolist() == [1, 2, 3, 11, 12, 13]
    assert [None if pd.isna(x) else int(x) for x in got["qty"]] == [None, 4, -1] * 2
    arrow = c.query_arrow("SELECT id, ts FROM cc WHERE id = 1")
    assert str(arrow.schema.field("ts").type.tz) == "UTC"
    assert c.query("SELECT sum(price) FROM cc WHERE sku = {s:String}", parameters={"s": "a"}).result_rows[0][0] == 9
    assert c.query("SELECT %(x)s * 2", parameters={"x": 21}).result_rows == [(42,)]
    assert c.command("SELECT count() FROM cc") == 6
    # idempotent retries: the same insert_deduplication_token twice lands once
    for _ in range(2):
        c.insert_df("cc", df.assign(id=df["id"] + 100), settings={"insert_deduplication_token": "batch-7"})
    assert c.command("SELECT count() FROM cc") == 9
    ro = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="bi_reader", password=users["bi_reader"],
                                       database="t")
    assert ro.query("SELECT count() FROM cc").result_rows == [(9,)]
    with pytest.raises(Exception, match="164"):
        ro.command("INSERT INTO cc (id) VALUES (99)")


def test_concurrent_clients_get_correct_results(endpoint):
    import clickhouse_connect

    base, users, port = endpoint
    _table(base, users, "conc")

    def work(k: int) -> list[int]:
        c = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="platform_writer",
                                          password=users["platform_writer"], database="t")
        out = []
        for i in range(20):
            if i % 4 == 0:
                c.insert_df("conc", pd.DataFrame({"id": [k * 1000 + i], "name": [f"w{k}"], "v": [float(i)]}))
            out.append(c.query("SELECT {k:UInt32} * 1000 + {i:UInt32}", parameters={"k": k, "i": i}).result_rows[0][0])
        c.close()
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [[k * 1000 + i for i in range(20)] for k in range(8)]
    assert _post(base, _w(users), "SELECT count() FROM t.conc").text == "40\n"


def test_missing_password_fails_fast_naming_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKHOUSE_")}
    env.update({"RETAIL_CACHE_DIR": str(tmp_path), "RETAIL_STATE_DIR": str(tmp_path), "CLICKHOUSE_HTTP_PORT": str(free_port()),
                "CLICKHOUSE_ADMIN_PASSWORD": secrets.token_urlsafe(12),
                "CLICKHOUSE_WRITER_PASSWORD": secrets.token_urlsafe(12)})
    r = subprocess.run([sys.executable, "-m", "chserver"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "CLICKHOUSE_BI_PASSWORD" in r.stderr and "Traceback" not in r.stderr
    assert not Path(tmp_path, "chdb").exists()


def test_large_inserts_in_many_compressed_blocks(endpoint):
    """clickhouse-connect sends a large insert as many Native blocks, each its own LZ4 (or zstd) frame: every
    frame must land (a first version kept only the first 16,384 rows)."""
    import clickhouse_connect
    import lz4.frame
    import zstandard

    base, users, port = endpoint
    n = 100_000
    for comp in ("lz4", "zstd", "gzip"):
        c = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="platform_writer",
                                          password=users["platform_writer"], database="t", compress=comp)
        c.command("CREATE OR REPLACE TABLE t.many (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
        c.insert_df("many", pd.DataFrame({"id": range(n), "s": [f"r{i}" for i in range(n)]}))
        assert [int(x) for x in c.command("SELECT count(), sum(id) FROM many")] == [n, n * (n - 1) // 2], comp
        c.close()
    # and by hand: two frames concatenated in one body
    _table(base, users, "frames")
    a, b = _encode("CSV").split(b"\n", 2)[:2], _encode("CSV").split(b"\n", 2)[2]
    head = b"\n".join(a) + b"\n"
    for enc, f in (("lz4", lz4.frame.compress), ("zstd", zstandard.ZstdCompressor().compress)):
        _post(base, _w(users), "TRUNCATE TABLE t.frames")
        r = httpx.post(base, auth=_w(users), params={"query": "INSERT INTO t.frames FORMAT CSV"},
                       content=f(head) + f(b), headers={"Content-Encoding": enc})
        assert r.status_code == 200, r.text
        assert _rows(base, users, "frames") == [tuple(x) for x in ROWS], enc


def test_odbc_driver_request_shape_as_bi_reader(endpoint):
    """What ClickHouse's ODBC driver sends (clickhouse-odbc: POST, chunked body, Basic auth, database,
    default_format=ODBCDriver2, session_id, param_<name>), as the read-only bi_reader."""
    base, users, _ = endpoint
    _table(base, users, "odbc")
    _post(base, _w(users), "INSERT INTO t.odbc VALUES (1, 'a', 1.5), (2, 'b', 2.5)")

    def chunks():
        yield b"SELECT name, v FROM odbc "
        yield b"WHERE id = {id:UInt32}"

    r = httpx.post(base, auth=("bi_reader", users["bi_reader"]), content=chunks(),
                   params={"database": "t", "default_format": "ODBCDriver2", "session_id": "odbc-1", "param_id": "2"},
                   headers={"User-Agent": "clickhouse-odbc/1.2.1"})
    assert r.status_code == 200, r.text
    assert r.headers["X-ClickHouse-Format"] == "ODBCDriver2"
    body = r.content
    assert body[:4] == (2).to_bytes(4, "little")  # two columns
    assert b"name" in body and b"Float64" in body and b"b" in body and b"2.5" in body
    assert b"1.5" not in body  # the {id:UInt32} filter applied: only row 2


def test_platform_clients_open_no_http_session(endpoint):
    """core.clickhouse.new_client sends no session_id: no request depends on another, so a request cut by an
    outage cannot leave the client refusing its next query ("concurrent queries within the same session")."""
    from core.clickhouse import new_client
    from core.settings import Settings

    base, users, port = endpoint
    s = Settings(clickhouse_url=f"http://platform_writer:{users['platform_writer']}@127.0.0.1:{port}",
                 clickhouse_database="t", clickhouse_bi_password=users["bi_reader"])
    for c in (new_client(s), new_client(s, readonly=True)):
        assert "session_id" not in c.params
        assert [c.command(f"SELECT {i}") for i in range(3)] == [0, 1, 2]
        c.close()


# ------------------------------------------------------------------------------- bounded bodies --
def _bomb(enc: str, size: int) -> bytes:
    """``size`` zero bytes compressed with ``enc``, built in 1 MiB steps (never held whole)."""
    import zlib

    import lz4.frame
    import zstandard

    block = bytes(1 << 20)
    if enc in ("gzip", "deflate"):
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
        return b"".join(c.compress(block) for _ in range(size >> 20)) + c.flush()
    if enc == "zstd":
        c = zstandard.ZstdCompressor().compressobj()
        return b"".join(c.compress(block) for _ in range(size >> 20)) + c.flush()
    c = lz4.frame.LZ4FrameCompressor()
    return c.begin() + b"".join(c.compress(block) for _ in range(size >> 20)) + c.flush()


@pytest.mark.parametrize("enc", ["gzip", "deflate", "zstd", "lz4"])
def test_decompression_is_bounded_while_it_runs(enc):
    """A 256 MiB bomb against a 1 MiB limit is refused (202) with Python's peak allocation far below 256 MiB;
    bodies within the limit round-trip, concatenated members / frames included; corrupt or truncated data is
    271; with no limit the bomb expands whole (the bound is what stops it)."""
    import tracemalloc

    from chserver.app import decompress
    from chserver.engine import ClickHouseError

    bomb = _bomb(enc, 256 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ClickHouseError) as err:
            decompress(bomb, enc, limit=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.code == 202 and "CLICKHOUSE_MAX_BODY_MB" in err.value.message
    assert peak < 16 << 20, peak
    exact = _bomb(enc, 1 << 20)
    assert decompress(exact, enc, limit=1 << 20) == bytes(1 << 20)      # exactly at the limit: accepted
    with pytest.raises(ClickHouseError, match="QUERY_IS_TOO_LARGE"):
        decompress(exact, enc, limit=(1 << 20) - 1)
    if enc != "deflate":                                                 # zlib streams have no members
        two = _bomb(enc, 1 << 20) + _bomb(enc, 2 << 20)
        assert decompress(two, enc, limit=3 << 20) == bytes(3 << 20)
    with pytest.raises(ClickHouseError) as err:
        decompress(exact[: len(exact) // 2], enc, limit=1 << 20)
    assert err.value.code == 271, err.value.message
    assert len(decompress(_bomb(enc, 32 << 20), enc)) == 32 << 20


def test_zstd_bodies_are_decompressed_once(monkeypatch):
    """Every byte zstandard produces for a body is produced once: a 3-frame, 24 MiB body yields 24 MiB of
    decompressor output (it yielded 48 MiB: a bounded read, then every frame again to check it ends)."""
    import zstandard

    from chserver.app import decompress

    real, produced = zstandard.ZstdDecompressor, []

    class Obj:
        def __init__(self, obj):
            self.obj = obj

        def decompress(self, data):
            out = self.obj.decompress(data)
            produced.append(len(out))
            return out

        def __getattr__(self, name):   # eof, unused_data, ...
            return getattr(self.obj, name)

    class Reader:
        def __init__(self, reader):
            self.reader = reader

        def __enter__(self):
            self.reader.__enter__()
            return self

        def __exit__(self, *exc):
            return self.reader.__exit__(*exc)

        def read(self, *a):
            out = self.reader.read(*a)
            produced.append(len(out))
            return out

    class Counting:
        def __init__(self, *a, **k):
            self.d = real(*a, **k)

        def decompressobj(self, *a, **k):
            return Obj(self.d.decompressobj(*a, **k))

        def stream_reader(self, *a, **k):
            return Reader(self.d.stream_reader(*a, **k))

        def decompress(self, *a, **k):
            out = self.d.decompress(*a, **k)
            produced.append(len(out))
            return out

    rng = __import__("random").Random(7)
    frames = [bytes(rng.getrandbits(8) for _ in range(1 << 16)) * (8 << 4) for _ in range(3)]   # 3 x 8 MiB
    body = b"".join(zstandard.ZstdCompressor(level=1).compress(f) for f in frames)
    monkeypatch.setattr(zstandard, "ZstdDecompressor", Counting)
    assert decompress(body, "zstd", limit=32 << 20) == b"".join(frames)
    assert sum(produced) == 24 << 20, sum(produced)


def _peak_rss(port: int) -> int:
    """Peak resident set (VmHWM, bytes) of the process listening on ``port``."""
    import psutil

    pid = next(c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
               and c.status == psutil.CONN_LISTEN)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_bombs_and_oversized_streams_are_refused_and_the_server_stays_up(endpoint):
    """512 MiB decompression bombs in each encoding and a 12 MiB chunked body: 413 each, nothing inserted, the
    server's peak memory grows by far less than one bomb's expansion, and a body within the limits still lands."""
    base, users, port = endpoint                  # CLICKHOUSE_MAX_BODY_MB=8
    peak_before = _peak_rss(port)
    r = _post(base, _w(users), "CREATE OR REPLACE TABLE t.bomb (id UInt32) ENGINE = Memory")
    assert r.status_code == 200, r.text
    for enc in ("gzip", "zstd", "lz4", "deflate"):
        r = httpx.post(base, auth=_w(users), params={"query": "INSERT INTO t.bomb FORMAT CSV"},
                       content=_bomb(enc, 512 << 20), headers={"Content-Encoding": enc}, timeout=60)
        assert r.status_code == 413 and "Code: 202" in r.text, (enc, r.text)
        assert httpx.get(base + "/ping").text == "Ok.\n"

    def chunks():                                 # no Content-Length: 12 MiB sent chunked
        for _ in range(12):
            yield b"1\n" * (1 << 19)

    r = httpx.post(base, auth=_w(users), params={"query": "INSERT INTO t.bomb FORMAT CSV"}, content=chunks(),
                   timeout=60)
    assert "content-length" not in {k.lower() for k in r.request.headers} and r.status_code == 413, r.text
    assert "Code: 202" in r.text
    assert _post(base, _w(users), "SELECT count() FROM t.bomb").text == "0\n"
    assert _peak_rss(port) - peak_before < 128 << 20, (peak_before, _peak_rss(port))
    # within the limits both ways: 4 MiB gzip-compressed CSV expands to 4 MiB and lands
    body = b"7\n" * (2 << 20)
    r = httpx.post(base, auth=_w(users), params={"query": "INSERT INTO t.bomb FORMAT CSV"},
                   content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert _post(base, _w(users), "SELECT count(), sum(id) FROM t.bomb").text.split() == [str(2 << 20),
                                                                                       str(7 * (2 << 20))]


# ------------------------------------------------------------------------------ what a server refuses --
def test_into_outfile_and_file_functions_are_refused(endpoint, tmp_path):
    """Over HTTP a ClickHouse server refuses INTO OUTFILE (358 INTO_OUTFILE_NOT_ALLOWED) and confines file() to
    user_files_path; chDB (clickhouse-local) does neither, so the endpoint refuses them: no role writes or reads a
    server file through SQL (a first version wrote INTO OUTFILE files, even as bi_reader over GET, and read any
    file, e.g. .cache/local.env, with file())."""
    base, users, _ = endpoint
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret\n")
    bi, w = ("bi_reader", users["bi_reader"]), _w(users)
    for n, (auth, get) in enumerate(((bi, True), (bi, False), (w, True), (w, False))):
        out = tmp_path / f"out{n}.txt"
        for sql in (f"SELECT 1 INTO OUTFILE '{out}'", f"SELECT 1 INTO OUTFILE '{out}' TRUNCATE",
                    f"SELECT 1 INTO OUTFILE '{out}' APPEND FORMAT CSV"):
            r = httpx.get(base, params={"query": sql}, auth=auth) if get else _post(base, auth, sql)
            assert (r.status_code, r.headers.get("X-ClickHouse-Exception-Code")) == (500, "358"), (sql, r.text)
            assert r.text.startswith("Code: 358. DB::Exception:") and "INTO_OUTFILE_NOT_ALLOWED" in r.text
        assert not out.exists()
        for sql in (f"SELECT * FROM file('{secret}', 'LineAsString')",
                    f"SELECT * FROM `file`('{secret}', LineAsString)",
                    f"SELECT file('{secret}')", f"SELECT * FROM url('file://{secret}', LineAsString)",
                    f"INSERT INTO FUNCTION file('{out}', 'CSV', 'a String') VALUES ('x')",
                    f"CREATE TABLE t.leak (a String) ENGINE = File(LineAsString, '{secret}')",
                    f"DESCRIBE TABLE file('{secret}', CSVWithNames)", f"BACKUP TABLE t.fn TO File('{out}')"):
            r = httpx.get(base, params={"query": sql}, auth=auth) if get else _post(base, auth, sql)
            assert (r.status_code, r.headers.get("X-ClickHouse-Exception-Code")) == (403, "497"), (sql, r.text)
            assert "s3cret" not in r.text and "ACCESS_DENIED" in r.text
        assert not out.exists()
    # the words in strings, comments and table names are no calls; INSERT with data (file() inside) still works
    for sql in ("CREATE OR REPLACE TABLE t.url (a UInt8) ENGINE = Memory", "INSERT INTO t.url (a) VALUES (1)"):
        assert _post(base, w, sql).status_code == 200, sql
    r = _post(base, w, "SELECT 'file(x) INTO OUTFILE' AS s /* file('/etc/passwd') */ FORMAT TSV")
    assert (r.status_code, r.text) == (200, "file(x) INTO OUTFILE\n"), r.text
    _table(base, users, "fn")
    assert _post(base, w, "INSERT INTO t.fn FORMAT CSV", b"1,a,1.5\n").status_code == 200
    assert _rows(base, users, "fn") == [(1, "a", 1.5)]


def test_multi_statement_bodies_are_refused(endpoint):
    """A server answers 400, code 62 "Multi-statements are not allowed"; chDB ran every statement, and a trailing
    SET was never reset (after ``SELECT 1; SET readonly=1`` every later write of that role failed)."""
    base, users, _ = endpoint
    w = _w(users)
    _table(base, users, "multi")
    for sql in ("SELECT 1; SELECT 2", "SELECT 1; SET readonly = 1", "SELECT 1;SET max_result_rows=1 -- c",
                "INSERT INTO t.multi VALUES (1, 'a;b', 1); INSERT INTO t.multi VALUES (2, 'c', 2)",
                "SELECT ';' AS s; /* c */ SELECT 2"):
        r = _post(base, w, sql)
        assert (r.status_code, r.headers.get("X-ClickHouse-Exception-Code")) == (400, "62"), (sql, r.text)
        assert "Multi-statements are not allowed" in r.text
    assert _rows(base, users, "multi") == []
    r = _post(base, w, "INSERT INTO t.multi VALUES (3, 'x', 3)")
    assert r.status_code == 200, r.text                     # no SET readonly=1 was left behind
    assert _post(base, w, "SELECT number FROM numbers(3)").text == "0\n1\n2\n"
    for sql, want in (("SELECT 1;", "1\n"), ("SELECT 1; -- done\n", "1\n"), ("SELECT ';' AS s /* ; */", ";\n"),
                      ("SELECT 'a'';b' AS s ;  ", "a\\';b\n")):
        r = _post(base, w, sql)
        assert (r.status_code, r.text) == (200, want), (sql, r.text)


def test_the_statement_checks_cannot_be_fooled_by_a_heredoc_and_read_typographic_quotes():
    """An unclosed ``$x$`` is part of a name for ClickHouse, but a first scanner read it as a heredoc running to the
    end and checked nothing after it, while chDB ran it (a review read a file as platform_writer, wrote INTO
    OUTFILE under readonly=1 and ran two statements that way). A heredoc is scanned as code now; ClickHouse's
    typographic quotes are strings; tables named outfile / infile are no clauses."""
    from chserver.engine import ClickHouseError
    from chserver.sqlscan import check_statement

    refused = {"SELECT 1 AS $x$, line FROM file('/etc/passwd', LineAsString)": 497,
               "SELECT 1 AS $x$, line FROM file('/etc/passwd', LineAsString) -- $x$": 497,
               "SELECT 1 AS $x$ INTO OUTFILE '/tmp/o'": 358, "SELECT 1 INTO OUTFILE $x$/tmp/o$x$": 358,
               "SELECT 1 AS $x$; SELECT 2 AS b": 62, "INSERT INTO t FROM INFILE $f$/etc/passwd$f$": 358,
               "ATTACH TABLE t FROM $p$/var/x$p$ (a UInt8) ENGINE = Memory": 497}
    for sql, code in refused.items():
        with pytest.raises(ClickHouseError) as e:
            check_statement(sql)
        assert e.value.code == code, (sql, e.value)
    for sql in ("SELECT \u2018a;b\u2019", "SELECT \u201cfile\u201d FROM t", "INSERT INTO outfile VALUES (1)",
                "SELECT * FROM infile", "SELECT 'it''s; fine' AS s;"):
        check_statement(sql)


def test_requests_queued_behind_a_replaced_connection_run(endpoint):
    """A request whose readonly=1 cannot be reset replaces the writers' shared connection; the requests queued
    behind it must run on the new one (a first version took the connection before the lock: they failed with
    "'NoneType' object has no attribute 'query'" and a queued INSERT was lost)."""
    base, users, _ = endpoint
    w = _w(users)
    _table(base, users, "queued")

    def slow():
        return _post(base, w, "SELECT sleep(1.5)", readonly="1")

    def quick(i):
        if i == 0:
            return _post(base, w, "INSERT INTO t.queued VALUES (7, 'q', 7)")
        return _post(base, w, f"SELECT {i}")

    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(slow)
        time.sleep(0.5)                      # the slow request holds the lock; the others queue behind it
        rest = list(pool.map(quick, range(5)))
        assert first.result().status_code == 200, first.result().text
    assert [(r.status_code, r.text) for r in rest[1:]] == [(200, f"{i}\n") for i in range(1, 5)], \
        [r.text for r in rest]
    assert rest[0].status_code == 200, rest[0].text
    assert _rows(base, users, "queued") == [(7, "q", 7.0)]


def test_temporary_tables_last_one_request(endpoint):
    """Without session_id a server drops a request's temporary tables with it; on chDB they lived on the role's
    shared connection, visible to the next request of any user on it (and shadowing a table of that name)."""
    base, users, _ = endpoint
    w, admin = _w(users), ("admin", users["admin"])
    r = _post(base, w, "CREATE TEMPORARY TABLE tmp_x (a UInt8) ENGINE = Memory")
    assert r.status_code == 200, r.text
    r = _post(base, admin, "SELECT * FROM tmp_x")
    assert (r.status_code, r.headers.get("X-ClickHouse-Exception-Code")) == (404, "60"), r.text
    assert _post(base, w, "EXISTS TEMPORARY TABLE tmp_x").text == "0\n"
    r = _post(base, w, "CREATE TEMPORARY TABLE tmp_y AS SELECT 5 AS a")
    assert r.status_code == 200, r.text
    assert _post(base, w, "SELECT count() FROM system.tables WHERE is_temporary").text == "0\n"
    r = httpx.get(base, params={"query": "CREATE TEMPORARY TABLE tmp_z (a UInt8)"}, auth=w)  # readonly=2 may
    assert r.status_code == 200, r.text
    r = httpx.get(base, params={"query": "SELECT * FROM tmp_z"}, auth=w)
    assert r.headers.get("X-ClickHouse-Exception-Code") == "60", r.text


def test_format_clause_before_settings_or_a_comment(endpoint):
    """X-ClickHouse-Format and Content-Type name the format of the body also when FORMAT is not the last clause
    (the ODBC driver picks its reader from X-ClickHouse-Format); a first version said TabSeparated."""
    base, users, _ = endpoint
    for sql in ("SELECT 1 AS x FORMAT JSONEachRow SETTINGS max_threads = 1", "SELECT 1 AS x FORMAT JSONEachRow -- c",
                "SELECT 1 AS x FORMAT JSONEachRow /* c */ ;",
                "SELECT 1 AS x SETTINGS max_threads = 1 FORMAT JSONEachRow"):
        r = _post(base, _w(users), sql)
        assert r.status_code == 200 and json.loads(r.text) == {"x": 1}, (sql, r.text)
        assert r.headers["X-ClickHouse-Format"] == "JSONEachRow", sql
        assert r.headers["Content-Type"].startswith("application/x-ndjson"), sql
    r = _post(base, _w(users), "SELECT 'FORMAT JSON' AS s -- FORMAT CSV")
    assert (r.text, r.headers["X-ClickHouse-Format"]) == ("FORMAT JSON\n", "TabSeparated")


def test_summary_compression_flags_and_head(endpoint):
    """X-ClickHouse-Summary's result_rows is the result's row count (read_rows what was read); Accept-Encoding
    ``q=0`` refuses a method; enable_http_compression takes ClickHouse's boolean forms; HEAD / answers as GET /."""
    base, users, _ = endpoint
    r = _post(base, _w(users), "SELECT number FROM numbers(10) WHERE number % 4 = 0")
    summary = json.loads(r.headers["X-ClickHouse-Summary"])
    assert (summary["result_rows"], summary["read_rows"]) == ("3", "10"), summary
    q = {"query": "SELECT number FROM numbers(1000)"}
    want = "".join(f"{i}\n" for i in range(1000))
    with httpx.Client(auth=_w(users)) as c:
        for flag, accept, enc in (("1", "gzip;q=0, identity", None), ("1", "gzip; q=0.0, deflate", "deflate"),
                                  ("true", "gzip", "gzip"), ("True", "gzip", "gzip"), ("false", "gzip", None),
                                  ("0", "gzip", None)):
            r = c.get(base, params={**q, "enable_http_compression": flag}, headers={"Accept-Encoding": accept})
            assert (r.status_code, r.headers.get("content-encoding"), r.text) == (200, enc, want), (flag, accept)
    r = httpx.head(base + "/")
    assert r.status_code == 200, r.status_code
    assert httpx.head(base + "/ping").status_code == 200


def _expected_rows(n: int, fmt: str) -> bytes:
    """The independent expectation of ``SELECT number AS n, toString(number * 7) AS s FROM numbers(n)`` in
    ``fmt``, built from ClickHouse's documented layouts (https://clickhouse.com/docs/interfaces/formats)."""
    import struct

    def leb(v: int) -> bytes:
        out = bytearray()
        while True:
            b, v = v & 0x7F, v >> 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)

    def lp(s: str) -> bytes:
        return leb(len(s.encode())) + s.encode()

    def odbc(s: str) -> bytes:
        return struct.pack("<i", len(s.encode())) + s.encode()

    if fmt == "TSVWithNamesAndTypes":
        return b"n\ts\nUInt64\tString\n" + "".join(f"{i}\t{i * 7}\n" for i in range(n)).encode()
    if fmt == "RowBinaryWithNamesAndTypes":
        return leb(2) + lp("n") + lp("s") + lp("UInt64") + lp("String") + b"".join(
            struct.pack("<Q", i) + lp(str(i * 7)) for i in range(n))
    if fmt == "ODBCDriver2":
        return (struct.pack("<ii", 2, 3) + odbc("name") + odbc("n") + odbc("s") + struct.pack("<i", 3)
                + odbc("type") + odbc("UInt64") + odbc("String") + b"".join(odbc(str(i)) + odbc(str(i * 7))
                                                                           for i in range(n)))
    raise ValueError(fmt)


def test_large_results_stream_in_one_document_and_free_the_engine(endpoint):
    """A result larger than the spool's memory part (8 MiB) is produced as chDB's streaming query, spooled, and
    sent in blocks: the body is one document equal to the format's layout built independently (the header formats
    Power BI's ODBC driver and clickhouse-connect read: each chunk of chDB's stream repeats the header, which the
    endpoint keeps once), compressed as one stream when asked, an empty result still has its header, an error
    after some chunks is answered as an error with nothing of the partial result, the engine is free for the
    next query while a client is still reading (the lock is held only while the result is produced), and a 330 MB
    result raises the endpoint's peak memory by less than 200 MiB."""
    import lz4.frame
    import zstandard

    base, users, port = endpoint
    n = 700_000   # ~11 MB of TSV: spooled to disk, streamed
    sql = f"SELECT number AS n, toString(number * 7) AS s FROM numbers({n})"
    with httpx.Client(auth=("bi_reader", users["bi_reader"]), timeout=120) as c:
        for fmt in ("TSVWithNamesAndTypes", "RowBinaryWithNamesAndTypes", "ODBCDriver2"):
            r = c.get(base, params={"query": sql, "default_format": fmt})
            assert r.status_code == 200, r.text[:300]
            want = _expected_rows(n, fmt)
            assert r.content == want, (fmt, len(r.content), len(want))
            assert json.loads(r.headers["X-ClickHouse-Summary"])["result_rows"] == str(n), fmt
            empty = c.get(base, params={"query": sql + " WHERE 0", "default_format": fmt})
            assert empty.content == _expected_rows(0, fmt), (fmt, empty.content)
        want = _expected_rows(n, "TSVWithNamesAndTypes")
        decoders = {"gzip": gzip.decompress, "deflate": __import__("zlib").decompress,
                    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
                    "lz4": lz4.frame.decompress}
        for enc, decode in decoders.items():
            with c.stream("GET", base, params={"query": sql, "default_format": "TSVWithNamesAndTypes",
                                               "enable_http_compression": "1"},
                          headers={"Accept-Encoding": enc}) as r:
                raw = b"".join(r.iter_raw())
            assert r.headers["content-encoding"] == enc and decode(raw) == want, enc
        r = c.get(base, params={"query": f"SELECT throwIf(number = {n - 10}) FROM numbers({n})"})
        assert r.status_code == 500 and r.headers["X-ClickHouse-Exception-Code"] == "395", r.text[:200]
        assert r.text.startswith("Code: 395.") and "\n0\n" not in r.text, r.text[:200]
        with c.stream("GET", base, params={"query": sql, "default_format": "TSVWithNamesAndTypes"}) as r:
            blocks = r.iter_raw()
            first = next(blocks)
            other = httpx.post(base, auth=_w(users), content="SELECT 41 + 1", timeout=30)
            assert (other.status_code, other.text) == (200, "42\n")
            assert first + b"".join(blocks) == want
    # 20 M rows, ~330 MB of RowBinary: built whole, it raised the endpoint's peak RSS by ~1.3 GB
    peak_before, size = _peak_rss(port), 0
    with httpx.stream("GET", base, params={"query": "SELECT number, toString(number) FROM numbers(20000000)",
                                           "default_format": "RowBinaryWithNamesAndTypes"}, auth=_w(users),
                      timeout=300) as r:
        for block in r.iter_raw():
            size += len(block)
    assert r.status_code == 200 and size > 300 << 20, (r.status_code, size)
    assert _peak_rss(port) - peak_before < 200 << 20, (peak_before, _peak_rss(port))


@pytest.mark.parametrize("fmt, header", [
    ("TSVWithNames", b"a\n"), ("CSVWithNamesAndTypes", b'"a"\n"UInt8"\n'),
    ("RowBinaryWithNamesAndTypes", b"\x01\x01a\x05UInt8"),
    ("ODBCDriver2", b"".join(n.to_bytes(4, "little") + s for n, s in
                             [(2, b""), (2, b""), (4, b"name"), (1, b"a"), (2, b""), (4, b"type"), (5, b"UInt8")]))])
def test_an_empty_result_in_a_header_format_runs_its_query_once(endpoint, fmt, header):
    """An empty result in a header format is its header alone, from one run of the query: the engine GETs a
    url() source once per request (it fetched it twice: the streamed run gave no chunk to take the header from,
    so the query ran again whole). Header layouts from ClickHouse's formats documentation."""
    import http.server
    import threading

    base, users, _ = endpoint
    hits: list[str] = []

    class Source(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.command)
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"1\n2\n3\n")

        do_HEAD = do_GET

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Source)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        src = f"url('http://127.0.0.1:{server.server_address[1]}/d.csv', 'CSV', 'a UInt8')"
        admin = ("admin", users["admin"])
        r = _post(base, admin, f"SELECT a FROM {src} WHERE a > 100 FORMAT {fmt}")
        assert r.status_code == 200, r.text
        assert r.content == header
        assert r.headers["X-ClickHouse-Format"] == fmt
        assert hits.count("GET") == 1, hits     # the data fetched once (a HEAD may ask for its size first)
        hits.clear()
        r = _post(base, admin, f"SELECT a FROM {src} WHERE a > 1 FORMAT {fmt}")   # with rows: as before
        assert r.status_code == 200 and r.content.startswith(header) and len(r.content) > len(header), r.content
        assert hits.count("GET") == 1, hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_read_only_user_may_not_run_system_or_kill(endpoint):
    """bi_reader's SYSTEM and KILL statements are refused (403, 497), as on the compose server where it holds only
    SELECT (a first version answered 200 to its global SYSTEM STOP MERGES and KILL QUERY); the writer's SYSTEM
    statements still run."""
    base, users, _ = endpoint
    bi = ("bi_reader", users["bi_reader"])
    for sql in ("SYSTEM STOP MERGES", "system stop ttl merges", "/* c */ SYSTEM STOP MOVES",
                "KILL QUERY WHERE query_id = 'x' SYNC", "kill mutation where 1"):
        for method in ("GET", "POST"):
            r = (httpx.get(base, params={"query": sql}, auth=bi) if method == "GET"
                 else httpx.post(base, content=sql, auth=bi))
            assert (r.status_code, r.headers.get("X-ClickHouse-Exception-Code")) == (403, "497"), (sql, r.text)
    assert httpx.get(base, params={"query": "SELECT 'SYSTEM' AS system"}, auth=bi).text == "SYSTEM\n"
    assert _post(base, _w(users), "SYSTEM START MERGES").status_code == 200


def test_a_request_body_that_stops_coming_is_refused_after_the_receive_timeout(endpoint, tmp_path_factory):
    """A client announces a 100-byte body, sends 7 bytes and then nothing: the endpoint answers 408 SOCKET_TIMEOUT
    once ``http_receive_timeout`` (here 2 s; default 30 s, ClickHouse's) passes without data, naming the bytes
    received, and closes nothing else; other queries run meanwhile. A bad value is refused with 400. Until
    2026-12-06 such a connection stayed open for good (no answer after 90 s). A client that disconnects while
    sending is logged as a disconnect, not as an internal error with a traceback."""
    import base64
    import socket

    base, users, port = endpoint
    token = base64.b64encode(f"platform_writer:{users['platform_writer']}".encode()).decode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST /?http_receive_timeout=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
                     "Content-Length: 100\r\n\r\nSELECT ".encode())
        other = httpx.post(base, auth=("platform_writer", users["platform_writer"]), content="SELECT 41 + 1")
        assert (other.status_code, other.text) == (200, "42\n")
        sock.settimeout(60)   # the answer is awaited (a bound, not a measurement): it came never before
        data = b""
        while b"\r\n\r\n" not in data or b"SOCKET_TIMEOUT" not in data:
            got = sock.recv(65536)
            assert got, data
            data += got
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"x-clickhouse-exception-code: 209" in head.lower(), head
    assert b"Code: 209." in body and b"7 bytes received" in body, body
    r = httpx.post(base, params={"http_receive_timeout": "soon"}, auth=("platform_writer", users["platform_writer"]),
                   content="SELECT 1")
    assert r.status_code == 400 and "BAD_ARGUMENTS" in r.text, r.text
    # the parameter belongs to the HTTP layer: a read-only user may pass it (a setting change would be code 164)
    r = httpx.get(base, params={"query": "SELECT 1", "http_receive_timeout": "5"},
                  auth=("bi_reader", users["bi_reader"]))
    assert (r.status_code, r.text) == (200, "1\n"), r.text

    (log_path,) = {p.resolve() for p in tmp_path_factory.getbasetemp().glob("chserver*/chserver.log")   # the
                   if f"127.0.0.1:{port} " in p.read_text()}   # endpoint fixture's log (a "...current" link too)
    with socket.create_connection(("127.0.0.1", port)) as sock:   # gone while sending its body
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
                     "Content-Length: 100\r\n\r\nSELECT ".encode())
        assert httpx.get(base + "/ping").text == "Ok.\n"
    deadline = time.monotonic() + 60
    while "disconnected while sending" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log_path.read_text()
    assert "disconnected while sending" in text and "ClientDisconnect" not in text, text[-3000:]
    assert httpx.post(base, auth=("platform_writer", users["platform_writer"]), content="SELECT 2").text == "2\n"
