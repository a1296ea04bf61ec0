"""Store managers' row policies of the compose ClickHouse (ops/docker/clickhouse/access/store-managers.sql).

What can and cannot run here: chDB (the real ClickHouse 26.x engine, in-process) loads users, settings profiles
and ``users.xml`` row policies (``<databases><db><table><filter>``) from a config file, but has no writable
access storage (``CREATE ROLE`` / ``CREATE USER`` / ``CREATE ROW POLICY`` fail with
ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND, ``user_directories`` is ignored) and every query runs as ``default``
(``EXECUTE AS`` is disabled). So:

* the SQL file is checked statically: every statement parses (``EXPLAIN AST`` on the engine), and the policies
  cover every view and table with a store column of the migrated schema (derived from ``system.columns``, not
  listed here), every object the role may read is either policied or holds no store data;
* the policies' own ``USING`` expressions run on the real engine: a chDB process whose ``default`` user carries
  exactly those expressions as users.xml filters plus the role's profile ``manager_readonly`` (from
  users.d/platform-users.xml), mapped to two of three stores in ``retail_access.store_managers``, reads every
  view and table with a store column: only its stores' rows, as many as an independent count without policies,
  and its writes are refused (readonly).

chDB allows one data path per process, so both engine runs happen in subprocesses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ACCESS_SQL = REPO / "ops" / "docker" / "clickhouse" / "access" / "store-managers.sql"
USERS_XML = REPO / "ops" / "docker" / "clickhouse" / "users.d" / "platform-users.xml"
CONFIG_XML = REPO / "ops" / "docker" / "clickhouse" / "config.d" / "platform.xml"
COMPOSE_FILE = REPO / "docker-compose.yml"
MANAGED = ["S002", "S003"]   # the test manager's stores; S001 belongs to someone else
STORES = ["S001", "S002", "S003"]

_POLICY = re.compile(r"CREATE ROW POLICY OR REPLACE store_manager_scope ON (\w+)\.(\w+) FOR SELECT\s+USING (.+?) "
                     r"TO store_manager$", re.S)


def statements() -> list[str]:
    from core.clickhouse import split_statements

    return split_statements(ACCESS_SQL.read_text())


def policies() -> dict[tuple[str, str], str]:
    """{(database, table): USING expression} of the file's row policies."""
    out = {}
    for st in statements():
        if st.startswith("CREATE ROW POLICY"):
            m = _POLICY.fullmatch(st)
            assert m, f"unexpected row policy form: {st}"
            out[(m.group(1), m.group(2))] = m.group(3)
    return out


def grants() -> set[tuple[str, str]]:
    return {tuple(m.groups()) for st in statements()
            if (m := re.fullmatch(r"GRANT SELECT ON (\w+)\.(\w+) TO store_manager", st))}


_PREPARE = r'''
import json, sys
sys.path.insert(0, {repo!r})
import chdb
from pathlib import Path
from core.clickhouse import render_migration, split_statements
args = json.loads(sys.argv[1])
c = chdb.connect(args["path"])
q = lambda sql: c.query(sql, "JSONCompact").bytes()
rows = lambda sql: json.loads(q(sql))["data"] if q(sql) else []
c.query("CREATE DATABASE IF NOT EXISTS retail")
for f in sorted(Path(args["migrations"]).glob("*.sql")):
    for st in split_statements(render_migration(f.read_text(), "retail")):
        c.query(st)
parsed = []
for st in args["access"]:
    c.query("EXPLAIN AST " + st)           # every statement parses (raises otherwise)
    parsed.append(st.split("(")[0][:40])
    if st.startswith(("CREATE DATABASE", "CREATE TABLE")):
        c.query(st)
cols = rows("SELECT c.table, t.engine, groupArray(c.name) FROM system.columns c JOIN system.tables t "
            "ON t.database = c.database AND t.name = c.table WHERE c.database = 'retail' "
            "AND c.name IN ('store_id', 'store_key') GROUP BY c.table, t.engine")
stores = args["stores"]
c.query("INSERT INTO retail.dim_store (store_key, store_id) SELECT cityHash64(s), s FROM "
        "(SELECT arrayJoin(%s) AS s)" % json.dumps(stores).replace('"', "'"))
for table, engine, names in cols:
    if engine in ("View", "MaterializedView") or table == "dim_store":
        continue
    if "store_id" in names:   # 2 + i rows per store, other columns at their defaults
        c.query(f"INSERT INTO retail.{{table}} (store_id) SELECT s FROM (SELECT arrayJoin(%s) AS s) "
                f"ARRAY JOIN range(2) AS i" % json.dumps(stores).replace('"', "'"))
    else:
        c.query(f"INSERT INTO retail.{{table}} (store_key, date_key) SELECT cityHash64(s), 20260101 + i FROM "
                f"(SELECT arrayJoin(%s) AS s) ARRAY JOIN range(3) AS i" % json.dumps(stores).replace('"', "'"))
c.query("INSERT INTO retail_access.store_managers (user_name, store_id) VALUES "
        + ",".join(f"('default', '{{s}}')" for s in args["managed"]) + ", ('someone_else', 'S001')")
expected = {{}}
for table, engine, names in cols:
    if engine == "MaterializedView":
        continue
    key = ("store_id IN %s" % (tuple(args["managed"]),)) if "store_id" in names else (
        "store_key IN (SELECT %s FROM retail.dim_store WHERE store_id IN %s)"
        % ("reinterpretAsInt64(store_key)" if engine == "View" else "store_key", tuple(args["managed"])))
    expected[table] = [rows(f"SELECT count() FROM retail.{{table}}")[0][0],
                       rows(f"SELECT count() FROM retail.{{table}} WHERE {{key}}")[0][0]]
c.close()
print(json.dumps({{"columns": cols, "expected": expected, "parsed": len(parsed)}}))
'''

_AS_MANAGER = r'''
import json, sys
import chdb
args = json.loads(sys.argv[1])
c = chdb.connect(args["path"] + "?config-file=" + args["config"])
rows = lambda sql: json.loads(c.query(sql, "JSONCompact").bytes())["data"]
out = {"user": rows("SELECT currentUser()")[0][0], "readonly": rows("SELECT getSetting('readonly')")[0][0],
       "counts": {}, "stores": {}}
for table, has_id in args["tables"]:
    out["counts"][table] = rows(f"SELECT count() FROM retail.{table}")[0][0]
    if has_id:
        out["stores"][table] = sorted(r[0] for r in rows(f"SELECT DISTINCT store_id FROM retail.{table}"))
out["mapping"] = rows("SELECT user_name, store_id FROM retail_access.store_managers ORDER BY store_id")
try:
    c.query("INSERT INTO retail.restock_alerts (store_id) VALUES ('S001')")
    out["write"] = "accepted"
except Exception as exc:  # noqa: BLE001 - the engine's refusal is the expected outcome
    out["write"] = str(exc)
c.close()
print(json.dumps(out))
'''


def _run(script: str, args: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _manager_users_xml(path: Path) -> None:
    """users.xml for chDB: ``default`` with the role's profile and the file's policies as row filters."""
    root = ET.Element("clickhouse")
    profiles = ET.SubElement(root, "profiles")
    ET.SubElement(profiles, "default")
    src = ET.parse(USERS_XML).getroot().find("profiles").find("manager_readonly")
    assert src is not None, "profile manager_readonly missing from platform-users.xml"
    profiles.append(src)
    ET.SubElement(ET.SubElement(root, "quotas"), "default")
    user = ET.SubElement(ET.SubElement(root, "users"), "default")
    ET.SubElement(user, "password")
    ET.SubElement(ET.SubElement(user, "networks"), "ip").text = "::/0"
    ET.SubElement(user, "profile").text = "manager_readonly"
    ET.SubElement(user, "quota").text = "default"
    dbs = ET.SubElement(user, "databases")
    by_db: dict[str, ET.Element] = {}
    for (db, table), expr in policies().items():
        if db not in by_db:
            by_db[db] = ET.SubElement(dbs, db)
        ET.SubElement(ET.SubElement(by_db[db], table), "filter").text = expr
    ET.ElementTree(root).write(path)


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    """(schema and independent counts without policies, what the policied manager reads) on one chDB path."""
    tmp = tmp_path_factory.mktemp("ch-access")
    data = tmp / "chdb"
    prep = _run(textwrap.dedent(_PREPARE.format(repo=str(REPO))),
                {"path": str(data), "migrations": str(REPO / "clickhouse" / "migrations"),
                 "access": statements(), "stores": STORES, "managed": MANAGED})
    users = tmp / "users.xml"
    _manager_users_xml(users)
    config = tmp / "config.xml"
    config.write_text(f"<clickhouse><users_config>{users}</users_config></clickhouse>")
    tables = [[t, "store_id" in names] for t, engine, names in prep["columns"] if engine != "MaterializedView"]
    seen = _run(_AS_MANAGER, {"path": str(data), "config": str(config), "tables": tables})
    return prep, seen


def test_every_statement_parses_on_the_engine(engine_runs):
    prep, _ = engine_runs
    assert prep["parsed"] == len(statements()) >= 30


def test_policies_cover_every_view_and_table_with_a_store_column(engine_runs):
    """Derived from the migrated schema: every view with store_id/store_key has a policy; every granted table
    with a store column has one; the role reads nothing else that holds store data."""
    prep, _ = engine_runs
    pol = policies()
    with_store = {t: (engine, names) for t, engine, names in prep["columns"]}
    views = {t for t, (engine, _) in with_store.items() if engine == "View"}
    assert len(views) >= 10
    assert {("retail", v) for v in views} <= set(pol), sorted(views - {t for _, t in pol})
    granted = grants()
    for db, table in granted:
        if db == "retail" and table in with_store:
            assert (db, table) in pol, f"{table} is granted with a store column but has no row policy"
    no_store = {t for db, t in granted if t not in with_store}
    assert no_store == {"v_dim_date", "v_dim_product", "dim_date", "dim_product", "store_managers"}
    assert set(pol) <= granted | {("retail_access", "store_managers")}
    # the views' base tables with store columns are policied too (views run with the reader's rights)
    for t in ("fact_sales", "fact_sales_daily", "fact_inventory", "sales_metrics_5m", "forecast_predictions"):
        assert ("retail", t) in pol


def test_manager_sees_only_their_stores_and_independent_counts_match(engine_runs):
    prep, seen = engine_runs
    assert seen["user"] == "default" and seen["readonly"] in (1, "1")
    assert seen["mapping"] == [["default", s] for s in MANAGED], "own mapping rows only"
    nonempty = hidden = 0
    policied = {t for db, t in policies() if db == "retail"}   # the others are not granted to the role at all
    for table, (total, mine) in prep["expected"].items():
        if table not in policied:
            continue
        assert seen["counts"][table] == mine, (table, seen["counts"][table], mine, total)
        nonempty += bool(mine)
        hidden += mine < total   # S001's rows exist and are hidden (tables whose defaults collapse rows: equal)
        if table in seen["stores"]:
            assert set(seen["stores"][table]) <= set(MANAGED), table
    assert nonempty >= 20 and hidden >= 15, prep["expected"]
    assert "READONLY" in seen["write"] or "Code: 164" in seen["write"], seen["write"]


def test_compose_applies_the_policies_as_admin_after_migrations():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    svc = compose["services"]["clickhouse-access"]
    assert svc["image"] == compose["services"]["clickhouse"]["image"]
    assert "/access/store-managers.sql" in " ".join(svc["entrypoint"]) and "--user admin" in svc["entrypoint"][-1]
    assert svc["environment"]["CLICKHOUSE_ADMIN_PASSWORD"].startswith("${CLICKHOUSE_ADMIN_PASSWORD:?")
    assert "./ops/docker/clickhouse/access:/access:ro" in svc["volumes"]
    assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    profile = ET.parse(USERS_XML).getroot().find("profiles").find("manager_readonly")
    assert profile.find("readonly").text == "1"
    acl = ET.parse(CONFIG_XML).getroot().find("access_control_improvements")
    assert acl.find("users_without_row_policies_can_read_rows").text == "true"
    text = ACCESS_SQL.read_text()
    assert "ALTER ROLE store_manager SETTINGS PROFILE 'manager_readonly'" in text
    assert not re.search(r"IDENTIFIED\s+(WITH\s+\w+\s+)?BY\s+'(?!<password>)", text), "no literal password"
