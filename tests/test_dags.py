"""DagBag import test and rule tests for every DAG in dags/.

The DAG folder is parsed in a *fresh subprocess* (so this pytest process's Airflow configuration and
chDB state do not matter) with the network and the engines made unavailable: every socket connect
raises, CLICKHOUSE_URL points below a regular file (chDB cannot open it) and LAKE_URL at a closed port.
A DAG file that does I/O at import therefore fails to import or is caught by the probes below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime as dt_
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"

PROBE = r"""
import json, socket, sys
attempts = []
def _deny(self, address, *a, **k):
    attempts.append(repr(address))
    raise OSError("network disabled while parsing DAG files")
socket.socket.connect = _deny
socket.socket.connect_ex = lambda self, address: (attempts.append(repr(address)), 111)[1]
before = set(sys.modules)
from airflow.dag_processing.dagbag import DagBag
airflow_loaded = set(sys.modules)
bag = DagBag(dag_folder=sys.argv[1])
loaded_by_dags = set(sys.modules) - airflow_loaded
out = {"import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()}, "dags": {},
       "socket_attempts": attempts,
       "engines_imported": sorted(m for m in loaded_by_dags if m.split(".")[0] in
                                  ("chdb", "clickhouse_connect", "pyspark", "kafka", "minio"))}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "fileloc": dag.fileloc, "catchup": dag.catchup, "tags": sorted(dag.tags or []),
        "owner": dag.owner, "schedule": str(getattr(dag.timetable, "summary", dag.timetable)),
        "max_active_runs": dag.max_active_runs, "doc": bool(dag.doc_md or dag.description),
        "tasks": {t.task_id: {"retries": t.retries, "owner": t.owner, "pool": t.pool} for t in dag.tasks},
    }
print("@@JSON@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    """Parse dags/ in a subprocess with network and engines unavailable; returns the probe's JSON."""
    tmp = tmp_path_factory.mktemp("dagbag")
    blocker = tmp / "not-a-dir"
    blocker.write_text("chDB cannot create a data path below a regular file")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(tmp / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONPATH": str(REPO),
        "CLICKHOUSE_URL": f"chdb://{blocker}/chdb", "LAKE_URL": "http://127.0.0.1:9",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "RETAIL_STATE_DIR": str(tmp / "state"),
    })
    r = subprocess.run([sys.executable, "-c", PROBE, str(DAGS)], env=env, capture_output=True, text=True,
                       cwd=tmp, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("@@JSON@@")), None)
    assert r.returncode == 0 and line, f"DagBag probe failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(line[len("@@JSON@@"):])


def test_dagbag_imports_without_errors(parsed):
    assert parsed["import_errors"] == {}
    assert "daily_etl" in parsed["dags"]
    # every .py file in dags/ defines at least one DAG (helpers live in importable packages)
    files = {Path(d["fileloc"]).name for d in parsed["dags"].values()}
    assert files == {p.name for p in DAGS.glob("*.py")}


def test_no_io_at_import(parsed):
    assert parsed["socket_attempts"] == [], "a DAG file opened a network connection while being parsed"
    assert parsed["engines_imported"] == [], "DAG files must import engine clients inside tasks only"


def test_every_dag_follows_the_rules(parsed):
    assert parsed["dags"], "no DAGs parsed"
    for dag_id, d in parsed["dags"].items():
        # daily_etl catches up (a missed night is a day of demand lost otherwise); the ML DAGs serve the latest only
        assert d["catchup"] is (dag_id == "daily_etl"), f"{dag_id}: catchup must be {'on' if dag_id == 'daily_etl' else 'off'}"
        assert d["tags"], f"{dag_id}: tags missing"
        assert d["owner"] and d["owner"] != "airflow", f"{dag_id}: owner not set"
        assert d["doc"], f"{dag_id}: no doc_md/description"
        assert d["tasks"], f"{dag_id}: no tasks"
        for task_id, t in d["tasks"].items():
            assert t["retries"] >= 2, f"{dag_id}.{task_id}: retries {t['retries']} < 2"
            assert t["owner"] and t["owner"] != "airflow", f"{dag_id}.{task_id}: owner not set"


def test_daily_etl_shape(parsed):
    d = parsed["dags"]["daily_etl"]
    assert set(d["tasks"]) == {"build_facts", "load", "quality_check", "check_gaps"}   # build_facts: the Spark job
    assert d["schedule"] == "0 8 * * *"  # ETL_SCHEDULE default
    assert d["max_active_runs"] == 1
    # tasks that open ClickHouse share the clickhouse pool (core.dagconf.CLICKHOUSE_POOL)
    assert d["tasks"]["load"]["pool"] == d["tasks"]["quality_check"]["pool"] == d["tasks"]["check_gaps"]["pool"] \
        == "clickhouse"
    assert d["tasks"]["build_facts"]["pool"] != "clickhouse"   # the Spark job never opens ClickHouse


def test_ml_dags_wait_for_the_etl(parsed):
    """Training and predictions start with wait_for_etl (etl.operators.EtlLoadedSensor), in the ClickHouse pool."""
    for dag_id in ("demand_forecast_training", "batch_predictions"):
        t = parsed["dags"][dag_id]["tasks"]["wait_for_etl"]
        assert t["pool"] == "clickhouse" and t["retries"] >= 2


def test_stack_airflow_environment():
    """The environment every Airflow process gets (AIRFLOW_HOME, dags folder, Spark connection, PATH)."""
    from core.dagconf import target_date
    from ops.airflow import DAGS_FOLDER, airflow_env, spark_connection
    from core.settings import get_settings

    s = get_settings()
    env = airflow_env(s)
    assert env["AIRFLOW_HOME"] == str(Path(s.retail_state_dir) / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_FOLDER) == str(DAGS)
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False" and env["AIRFLOW__CORE__PARALLELISM"] == "4"
    from ops.airflow import spark_connection

    assert json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"]) == spark_connection(s.spark_master)
    assert spark_connection("local[2]")["host"] == "local[2]"
    assert spark_connection("spark://spark-master:7077")["host"] in ("spark://spark-master", "spark://spark-master:7077")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert (Path(env["PATH"].split(os.pathsep)[0]) / "spark-submit").exists()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert spark_connection("spark://spark-master:7077") == {
        "conn_type": "spark", "host": "spark://spark-master", "port": 7077,
        "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"}}
    assert spark_connection("local[2]")["host"] == "local[2]"
    import datetime as dt

    assert target_date(dt.datetime(2011, 8, 29, 8, 0, tzinfo=dt.timezone.utc)) == dt.date(2011, 8, 29)
    # a non-UTC logical date is converted first: 00:30 in London (BST) is the previous UTC day
    bst = dt.timezone(dt.timedelta(hours=1))
    assert target_date(dt.datetime(2011, 8, 30, 0, 30, tzinfo=bst)) == dt.date(2011, 8, 29)
    with pytest.raises(ValueError, match="logical date"):
        target_date(None)


# The runs Airflow's own timetable creates for the real DAG objects, 'now' pinned (the scheduler's
# DagModel.calculate_dagrun_date_fields / next_dagrun_info path: restriction from the DAG's start_date and catchup).
TIMETABLE_PROBE = r"""
import json, sys
from unittest import mock
import pendulum
from airflow.dag_processing.dagbag import DagBag
from airflow.timetables.base import DataInterval, TimeRestriction
now = pendulum.parse(sys.argv[2])
last = json.loads(sys.argv[3])   # {dag_id: [start, end] of the last automated run} or null
out = {}
with mock.patch("core.dagconf.utc_today", return_value=now.date()):   # the DAG files are parsed on 'now' too
    bag = DagBag(dag_folder=sys.argv[1])
for dag_id, dag in bag.dags.items():
    prev = last.get(dag_id) and DataInterval(*map(pendulum.parse, last[dag_id]))
    runs = []
    if not hasattr(dag.timetable, "next_dagrun_info"):   # asset-triggered: no time-based runs
        out[dag_id] = {"catchup": dag.catchup, "runs": None}
        continue
    with mock.patch("airflow.timetables.interval.utcnow", return_value=now):
        for _ in range(400):
            info = dag.timetable.next_dagrun_info(last_automated_data_interval=prev, restriction=TimeRestriction(
                earliest=dag.start_date, latest=None, catchup=dag.catchup))
            if info is None or info.run_after > now:
                break
            runs.append([info.data_interval.start.isoformat(), info.data_interval.end.isoformat()])
            prev = info.data_interval
    out[dag_id] = {"catchup": dag.catchup, "runs": runs}
print("@@JSON@@" + json.dumps(out))
"""


def timetable_runs(tmp_path, now: str, last: dict, env_extra: dict | None = None) -> dict:
    """{dag_id: {"catchup", "runs": [[interval start, end], ...]}}: what the scheduler would create at ``now`` after
    the ``last`` automated runs, by Airflow's timetable on the DAG files of dags/ (parsed in a subprocess)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "PYTHONPATH": str(REPO), "CLICKHOUSE_URL": f"chdb://{tmp_path}/chdb", "LAKE_URL": str(tmp_path / "lake"),
                "RETAIL_STATE_DIR": str(tmp_path / "state"), **(env_extra or {})})
    r = subprocess.run([sys.executable, "-c", TIMETABLE_PROBE, str(DAGS), now, json.dumps(last)], env=env,
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("@@JSON@@")), None)
    assert r.returncode == 0 and line, f"timetable probe failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(line[len("@@JSON@@"):])


def test_daily_etl_loads_the_nights_the_scheduler_missed(tmp_path):
    """Last loaded day 12-01 (run of [12-01 08:00, 12-02 08:00)), scheduler down from 12-02, back on 12-05 09:00:
    daily_etl gets a run for 12-02, 12-03 and 12-04, in that order (with catchup off only 12-04: 12-02 and 12-03
    were never loaded, and the features zero-fill them as days without demand). The ML DAGs make one run, the
    latest (they read all history). A first unpause creates runs from ETL_START_DATE only, not from years back."""
    last = {"daily_etl": ["2026-12-01T08:00:00+00:00", "2026-12-02T08:00:00+00:00"],
            "demand_forecast_training": ["2026-12-01T10:00:00+00:00", "2026-12-02T10:00:00+00:00"]}
    got = timetable_runs(tmp_path, "2026-12-05T09:00:00+00:00", last)
    etl = [dt_.fromisoformat(a).date().isoformat() for a, _ in got["daily_etl"]["runs"]]
    assert etl == ["2026-12-02", "2026-12-03", "2026-12-04"]
    # each run's interval ends by the next 08:00: the day it loads is complete when it runs
    assert [b for _, b in got["daily_etl"]["runs"]][-1] == "2026-12-05T08:00:00+00:00"
    assert got["demand_forecast_training"]["catchup"] is False
    assert got["demand_forecast_training"]["runs"] == [["2026-12-03T10:00:00+00:00", "2026-12-04T10:00:00+00:00"]]
    assert got["batch_predictions"]["catchup"] is False and got["batch_predictions"]["runs"] is None  # asset-triggered: after each training run, never backlogged

    first = timetable_runs(tmp_path, "2026-12-05T09:00:00+00:00", {}, {"ETL_START_DATE": "2026-12-02"})
    assert [a[:10] for a, _ in first["daily_etl"]["runs"]] == ["2026-12-02", "2026-12-03", "2026-12-04"]


def test_first_unpause_catches_up_a_bounded_number_of_days_on_any_install_date(tmp_path):
    """ETL_START_DATE defaulted to 2026-12-01: a first unpause on 2027-12-05 created 369 runs (2026-12-01 ..
    2027-12-04, a year of empty days). Unset, the catch-up now starts ETL_CATCHUP_DAYS (14) days before the day the
    DAG file is parsed: 14 runs, the 14 dates before today, on 2027-12-05 as on 2031-06-30; an explicit
    ETL_START_DATE or ETL_CATCHUP_DAYS still rules."""
    import datetime as dt

    for now in ("2027-12-05T09:00:00+00:00", "2031-06-30T09:00:00+00:00"):
        today = dt_.fromisoformat(now).date()
        runs = timetable_runs(tmp_path, now, {}, {"ETL_START_DATE": ""})["daily_etl"]["runs"]
        assert [a[:10] for a, _ in runs] == [(today - dt.timedelta(days=i)).isoformat() for i in range(14, 0, -1)]
    runs = timetable_runs(tmp_path, "2027-12-05T09:00:00+00:00", {}, {"ETL_START_DATE": "", "ETL_CATCHUP_DAYS": "3"})
    assert [a[:10] for a, _ in runs["daily_etl"]["runs"]] == ["2027-12-02", "2027-12-03", "2027-12-04"]
    runs = timetable_runs(tmp_path, "2027-12-05T09:00:00+00:00", {}, {"ETL_START_DATE": "2027-11-30"})
    assert [a[:10] for a, _ in runs["daily_etl"]["runs"]][0] == "2027-11-30" and len(runs["daily_etl"]["runs"]) == 5


def test_dags_test_runs_dates_before_etl_start_date(monkeypatch, tmp_path):
    """`make nightly` / the demo run daily_etl with `airflow dags test` for history before ETL_START_DATE: Airflow
    creates no task instance for a manual run before the DAG's start_date (the run "succeeds" with nothing loaded),
    so ops.airflow.dags_test moves ETL_START_DATE back to that date in the subprocess."""
    import datetime as dt
    import types

    from core.settings import Settings
    from ops import airflow as af

    seen = []
    monkeypatch.setattr(af.subprocess, "run", lambda cmd, env: seen.append((cmd, env)) or types.SimpleNamespace(returncode=0))
    s = Settings(_env_file=None, etl_start_date=dt.date(2026, 12, 1), retail_state_dir=tmp_path)
    af.dags_test("daily_etl", dt.date(2026, 11, 12), s, tmp_path)
    af.dags_test("daily_etl", dt.date(2026, 12, 3), s, tmp_path)
    assert seen[0][1]["ETL_START_DATE"] == "2026-11-12" and seen[0][0][-1] == "2026-11-12"
    assert seen[1][1].get("ETL_START_DATE") in (None, os.environ.get("ETL_START_DATE"))


@pytest.mark.parametrize("schedule", ["0 8 * * *", "@daily", "30 23 * * *", "0 8 * * 1-5", "0 */12 * * *",
                                      "0 8,20 * * *", "@hourly", "0 8 */2 * *", "@weekly"])
def test_every_etl_schedule_loads_each_date_once_and_complete(tmp_path, schedule):
    """Whatever ETL_SCHEDULE the settings accept, Airflow's timetable on the real daily_etl (catchup from
    2026-11-02, 'now' 2026-11-17 00:00) makes one run per UTC date 11-02..11-15, each date exactly once and never
    before it is over (the run processes core.dagconf.target_date of its logical date). Any other schedule is
    refused at start, naming ETL_SCHEDULE. Before: '0 8 * * 1-5' made 10 runs and never loaded 11-07, 11-08,
    11-14; '0 */12 * * *' loaded every date twice, the first time at noon of that day."""
    import datetime as dt
    from collections import Counter

    from core.dagconf import target_date
    from core.settings import ConfigError, Settings

    try:
        Settings(_env_file=None, etl_schedule=schedule)
    except (ConfigError, ValueError) as exc:
        assert "ETL_SCHEDULE" in str(exc)
        assert schedule not in ("0 8 * * *", "@daily", "30 23 * * *"), f"a daily schedule refused: {exc}"
        return
    got = timetable_runs(tmp_path, "2026-11-17T00:00:00+00:00", {},
                         {"ETL_SCHEDULE": schedule, "ETL_START_DATE": "2026-11-02"})["daily_etl"]["runs"]
    loaded = Counter()
    for start, end in got:
        day = target_date(dt_.fromisoformat(start))
        loaded[day] += 1
        assert dt_.fromisoformat(end) >= dt_.combine(day + dt.timedelta(days=1), dt_.min.time(), dt.timezone.utc), \
            f"{schedule!r}: {day} loaded by the run of [{start}, {end}), before the day was over"
    want = {dt.date(2026, 11, 2) + dt.timedelta(days=i) for i in range(14)}
    assert want <= set(loaded) <= want | {dt.date(2026, 11, 16)}, \
        f"{schedule!r}: dates never loaded {sorted(want - set(loaded))}"
    assert max(loaded.values()) == 1, f"{schedule!r}: loaded more than once {[d for d, n in loaded.items() if n > 1]}"
