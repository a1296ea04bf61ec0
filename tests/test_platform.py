"""The native platform running as one, under the real supervisor (supervisord): every service at once.

A module fixture brings the whole native platform up in a state folder and on ports of its own (kafka, minio,
clickhouse endpoint over chDB, the supervised streaming job, airflow standalone). Then:

* real UCI lines (>= 20,000) are replayed through Kafka while ``daily_etl`` runs (``airflow dags test``) and 4
  dashboard clients query the BI views as ``bi_reader`` in a loop: everything succeeds, no lock error, and
  ClickHouse's 5-minute windows equal an independent pandas/Decimal recompute from the published events;
* a service killed with SIGKILL is restarted by the supervisor, with its data intact;
* ``local.down`` leaves no process of the platform and no bound port.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest


pytestmark = pytest.mark.integration

WIN_MS = 5 * 60_000
N_LINES = 22_000


def _platform_pids(state: Path) -> list[int]:
    """Pids whose command line or environment names the state folder (supervisord and its programs)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(state).encode() in blob:
            out.append(int(proc.name))
    return out


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """Every native service up under supervisord, in a fresh state folder and on free ports; yields Settings."""
    from ops import local

    with local.platform_up(tmp_path_factory.mktemp("platform"), None, CLICKHOUSE_DATABASE="retail",
                           LAKE_RAW_BUCKET="raw-data", LAKE_MODELS_BUCKET="models", LAKE_FEATURES_BUCKET="features",
                           STREAM_TRIGGER_SECONDS="2") as s:
        try:
            yield s
        finally:
            local.down(s)


def test_every_service_healthy_under_the_supervisor(platform):
    import httpx

    from ops import local

    st = local.status(platform)
    assert set(st) == {"kafka", "minio", "clickhouse", "streaming", "airflow", "dashboard"}
    sick = {n: r for n, r in st.items() if not (r["state"] == "RUNNING" and r["healthy"] and r["pid"])}
    assert not sick, sick
    r = httpx.get(f"http://localhost:{platform.clickhouse_http_port}/ping")
    assert (r.status_code, r.text) == (200, "Ok.\n")
    r = httpx.get(f"http://localhost:{platform.dashboard_port}/_stcore/health")   # the supervised dashboard
    assert (r.status_code, r.text.strip()) == (200, "ok")


def _replay_events(end_at: datetime) -> tuple[list[tuple[str, dict]], dict]:
    from contracts import ContractError, validate_event
    from producers.cli import DEFAULT_SAMPLE
    from producers.replay import Replay, ReplayConfig, load_transactions

    rep = Replay(load_transactions(DEFAULT_SAMPLE, limit=N_LINES), ReplayConfig(end_at=end_at, seed=11))
    events, rejected = [], Counter()
    for et, rec in rep.events():
        try:
            validate_event(et, rec)
            events.append((et, rec))
        except ContractError:
            rejected[et] += 1
    return events, {"rows": rep.stats.as_dict(), "rejected": dict(rejected)}


def _expected_windows(events) -> pd.DataFrame:
    """Additive window measures per store x SKU x 5-minute window, with plain pandas and Decimal."""
    sales = pd.DataFrame([r for et, r in events if et == "sales_transaction"])
    inv = pd.DataFrame([r for et, r in events if et == "inventory_update"])
    sales["ws"] = sales["timestamp"] // WIN_MS * WIN_MS
    inv["ws"] = inv["timestamp"] // WIN_MS * WIN_MS
    rows: dict[tuple, dict] = {}
    for (st, sku, ws), g in sales.groupby(["store_id", "product_id", "ws"]):
        rows[(st, sku, ws)] = {
            "units_sold": int(g.loc[g.quantity > 0, "quantity"].sum()),
            "units_returned": int(-g.loc[g.quantity < 0, "quantity"].sum()),
            "revenue": float(sum(Decimal(repr(p)) * q for p, q in zip(g["unit_price"], g["quantity"]))),
            "transaction_count": len(g), "inventory_update_count": 0}
    for (st, sku, ws), g in inv.groupby(["store_id", "product_id", "ws"]):
        rows.setdefault((st, sku, ws), {"units_sold": 0, "units_returned": 0, "revenue": 0.0,
                                        "transaction_count": 0})["inventory_update_count"] = len(g)
    return pd.DataFrame([{"store_id": k[0], "product_id": k[1], "ws": k[2], **v} for k, v in rows.items()])


def test_replay_while_daily_etl_and_bi_clients_run(platform):
    from core.clickhouse import get_client
    from core.kafka import EventPublisher
    from ops.airflow import dags_test, init
    from ops.demo import BIClients, wait_caught_up

    s = platform
    end_at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    events, meta = _replay_events(end_at)
    sales = [r for et, r in events if et == "sales_transaction"]
    assert len(sales) >= 20_000, meta
    # phase 1 lands the first 60 % of the replay; daily_etl then loads its busiest complete day while phase 2
    # streams the rest, and the BI clients query throughout
    cut = int(len(events) * 0.6)
    day_of = lambda r: datetime.fromtimestamp(r["timestamp"] / 1000, timezone.utc).date()  # noqa: E731
    cut_day = day_of(events[cut][1])
    days = Counter(day_of(r) for et, r in events[:cut] if et == "sales_transaction" and day_of(r) < cut_day)
    etl_day = days.most_common(1)[0][0]
    day_sales = sum(1 for r in sales if day_of(r) == etl_day)

    bi = BIClients(s, 4)
    etl: dict = {}
    # its own AIRFLOW_HOME: the supervised standalone Airflow keeps its SQLite metadata DB to itself
    home = init(s, Path(s.retail_state_dir) / "airflow-cli")

    def run_etl():
        t = time.time()
        try:
            etl["seconds"] = dags_test("daily_etl", etl_day, s, home)
        except Exception as exc:  # noqa: BLE001 - asserted below with its message
            etl["error"] = str(exc)
        etl["window"] = (t, time.time())

    bi.start()
    t_pub = time.time()
    with EventPublisher(s, client_id="test-platform") as pub:
        for et, rec in events[:cut]:
            assert pub.publish(et, rec)
        pub.flush()
        wait_caught_up(s, 600, "supervised stream (phase 1)")
        etl_thread = threading.Thread(target=run_etl)
        etl_thread.start()  # daily_etl while the stream works through phase 2
        t_phase2 = time.time()
        for et, rec in events[cut:]:
            assert pub.publish(et, rec)
    assert pub.failed == 0 and pub.dead_lettered == 0
    wait_caught_up(s, 600, "supervised stream")
    t_caught_up = time.time()
    etl_thread.join(600)
    bi_stats = bi.stop()

    assert "error" not in etl, etl.get("error")
    assert etl["window"][0] < t_caught_up and etl["window"][1] > t_phase2, "daily_etl did not overlap the stream"
    assert bi_stats["queries"] >= 20 and bi_stats["errors"] == 0, bi_stats
    assert bi.started < t_pub and bi.ended > t_caught_up

    client = get_client(s)
    db = s.clickhouse_database
    got = client.query_df(f"""SELECT store_id, product_id, toUnixTimestamp64Milli(toDateTime64(window_start, 3)) AS ws,
                                     units_sold, units_returned, revenue, transaction_count, inventory_update_count
                              FROM {db}.sales_metrics_5m FINAL""")
    exp = _expected_windows(events)
    key = ["store_id", "product_id", "ws"]
    m = got.merge(exp, on=key, how="outer", suffixes=("", "_exp"), indicator=True)
    bad = m[m["_merge"] != "both"]
    assert bad.empty, (f"{len(bad)} of {len(m)} windows differ ({bad['_merge'].value_counts().to_dict()}); "
                       f"e.g.\n{bad.head(10).to_string()}\nClickHouse ws range {got['ws'].min()}..{got['ws'].max()}")
    for c in ("units_sold", "units_returned", "transaction_count", "inventory_update_count"):
        assert (m[c].astype(int) == m[f"{c}_exp"].astype(int)).all(), c
    assert (m["revenue"].round(2) == m["revenue_exp"].round(2)).all()
    # the star schema got the replayed day, reconciled with the lake by the DAG's own quality check
    n_fact = client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key = {etl_day:%Y%m%d}").first_row[0]
    assert n_fact == day_sales > 0
    log = Path(s.retail_state_dir, "logs", "clickhouse.log").read_text(errors="replace")
    assert "Cannot lock file" not in log and "Traceback" not in log


def test_supervisor_restarts_a_killed_service(platform):
    import httpx

    from core.clickhouse import get_client, reset_clients
    from ops import local

    s = platform
    before = get_client(s).query(f"SELECT count() FROM {s.clickhouse_database}.sales_metrics_5m").first_row[0]
    pid = local.status(s)["clickhouse"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 60
    while time.time() < deadline:
        row = local.status(s)["clickhouse"]
        if row["pid"] not in (None, pid) and row["healthy"]:
            break
        time.sleep(0.5)
    assert row["pid"] != pid and row["healthy"], row
    reset_clients()
    assert get_client(s).query(f"SELECT count() FROM {s.clickhouse_database}.sales_metrics_5m").first_row[0] == before
    assert httpx.get(f"http://localhost:{s.clickhouse_http_port}/ping").text == "Ok.\n"


def test_down_leaves_no_process_and_no_port(platform):
    from ops import local
    from ops.services import port_open

    s = platform
    ports = [int(s.kafka_bootstrap_servers.rsplit(":", 1)[1]), s.kafka_controller_port, s.minio_port,
             s.minio_console_port, s.clickhouse_http_port, s.airflow_port]
    assert _platform_pids(Path(s.retail_state_dir)), "the platform should be running before down"
    t0 = time.time()
    local.down(s)
    took = time.time() - t0
    deadline = time.time() + 30  # processes already reaped by their parents may linger a moment in /proc
    while _platform_pids(Path(s.retail_state_dir)) and time.time() < deadline:
        time.sleep(0.5)
    assert _platform_pids(Path(s.retail_state_dir)) == []
    assert [p for p in ports if port_open("localhost", p) or port_open("127.0.0.1", p)] == []
    print(f"local.down took {took:.1f} s")
