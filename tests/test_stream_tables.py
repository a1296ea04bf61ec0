"""The streaming tables' schema and the synthetic data written into them, on the real ClickHouse endpoint (chserver
over chDB): the one-off materialisation of the time skip indexes (``045``), the column comments (``040``) and the
BI load test's windows (``ops.bench_bi``) against the stream's own velocity definition."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_db(native_stack):
    """Settings of a migrated database of its own on the session's ClickHouse endpoint, and its writer client."""
    from core.clickhouse import get_client, migrate

    s = native_stack.model_copy(update={"clickhouse_database": f"{native_stack.clickhouse_database}_t"
                                                               f"{uuid.uuid4().hex[:6]}"})
    migrate(s)
    return s, get_client(s)


def _granules(client, db: str, index: str, sql_where: str) -> tuple[int, int]:
    """(granules kept, granules in all) by the skip index ``index`` for a count over ``sales_metrics_5m``."""
    plan = "\n".join(r[0] for r in client.query(
        f"EXPLAIN indexes = 1 SELECT count() FROM {db}.sales_metrics_5m WHERE {sql_where}").result_rows)
    m = re.search(rf"Name: {index}\n(?:.*\n)*?\s*Granules: (\d+)/(\d+)", plan)
    assert m, plan
    return int(m.group(1)), int(m.group(2))


def test_the_time_indexes_are_built_once_in_the_parts_written_before_they_existed(fresh_db):
    """035 added the minmax indexes with ADD INDEX, which covers new parts only: a part written before it is read
    whole by a window_end-bounded query (every granule) until a merge. 045 materialises them, once: a second
    migrate() neither runs it nor rewrites a part. Measured: the last day of a month of one series kept 106 of 106
    granules before, 5 of 106 after."""
    from core.clickhouse import migrate

    s, client = fresh_db
    db = s.clickhouse_database
    for idx in ("idx_window_end", "idx_window_start"):   # the table as it was before 035
        client.command(f"ALTER TABLE {db}.sales_metrics_5m DROP INDEX {idx}")
    client.command(f"""INSERT INTO {db}.sales_metrics_5m (window_start, window_end, store_id, product_id, units_sold,
        units_returned, revenue, transaction_count, inventory_update_count, sales_velocity, stockout_risk,
        anomaly_score, last_event_time, batch_id, version, updated_at)
        SELECT ws, ws + INTERVAL 5 MINUTE, 'S1', 'P1', 1, 0, 1.0, 1, 0, 0.5, 'UNKNOWN', 0, ws, 0, 1, now64(3)
        FROM (SELECT toDateTime64('2026-11-01 00:00:00', 3, 'UTC') + toIntervalSecond(3 * number) AS ws
              FROM numbers(864000))""")   # one series, one month (a window start every 3 s: time-ordered granules)
    for stmt in ("ADD INDEX IF NOT EXISTS idx_window_end window_end TYPE minmax GRANULARITY 1",
                 "ADD INDEX IF NOT EXISTS idx_window_start window_start TYPE minmax GRANULARITY 1"):
        client.command(f"ALTER TABLE {db}.sales_metrics_5m {stmt}")   # 035 on an existing table
    client.command(f"TRUNCATE TABLE {db}.schema_migrations")           # a database migrated before 045 existed
    last_day = "window_end > toDateTime64('2026-11-30 00:00:00', 3, 'UTC')"
    kept, total = _granules(client, db, "idx_window_end", last_day)
    assert total > 100 and kept == total, "a part written before ADD INDEX carries no index"

    def index_bytes() -> list[int]:
        return [int(r[0]) for r in client.query(
            f"SELECT secondary_indices_compressed_bytes FROM system.parts WHERE database = '{db}' AND "
            "table = 'sales_metrics_5m' AND active").result_rows]
    assert index_bytes() and max(index_bytes()) == 0

    ran = migrate(s)
    assert "045_materialize_stream_time_indexes.sql" in ran
    kept, total = _granules(client, db, "idx_window_end", last_day)
    # the last day is the last 1/30 of the rows: ~1/30 of the granules (+ the one it starts in)
    assert kept <= total // 30 + 2, (kept, total)
    # both indexes' files now exist in every part (before: none)
    assert index_bytes() and min(index_bytes()) > 0

    parts = sorted(r[0] for r in client.query(f"SELECT name FROM system.parts WHERE database = '{db}' AND "
                                              "table = 'sales_metrics_5m' AND active").result_rows)
    assert migrate(s) == ran   # every file applied; 045 not run again: no part rewritten
    runs = client.query(f"SELECT count() FROM {db}.schema_migrations WHERE name = '045_materialize_stream_time_indexes.sql'")
    assert runs.result_rows[0][0] == 1
    assert sorted(r[0] for r in client.query(f"SELECT name FROM system.parts WHERE database = '{db}' AND "
                                             "table = 'sales_metrics_5m' AND active").result_rows) == parts


def test_the_velocity_columns_say_trailing_rate_in_units_per_hour(fresh_db):
    """001 commented sales_velocity as 'units_sold per hour' (the window's own rate, replaced on 2026-12-06)."""
    s, client = fresh_db
    got = dict(client.query(f"SELECT table, comment FROM system.columns WHERE database = '{s.clickhouse_database}' "
                            "AND name = 'sales_velocity' AND table IN ('sales_metrics_5m', 'store_metrics_5m')")
               .result_rows)
    assert set(got) == {"sales_metrics_5m", "store_metrics_5m"}
    for comment in got.values():
        assert comment.startswith("units/hour, trailing rate") and "STREAM_VELOCITY_HOURS" in comment
    # 090 said a window without a baseline nor a reorder point had no bound; 092 (2026-12-07): the store's pooled cap
    (uo,), = client.query(f"SELECT comment FROM system.columns WHERE database = '{s.clickhouse_database}' "
                          "AND table = 'sales_metrics_5m' AND name = 'units_for_order'").result_rows
    assert "store's selling windows (all SKUs)" in uo and "no bound when no reorder point" not in uo
    # 096 (review of c9001c9): the pool holds the windows' winsorized units, not their raw units sold
    assert "units_for_order of the store's selling windows" in uo


@pytest.mark.parametrize("lead", [3, 0], ids=["lead-time-3", "lead-time-0"])
def test_the_bi_load_tests_windows_carry_the_streams_trailing_velocity(fresh_db, lead, monkeypatch):
    """ops.bench_bi wrote sales_velocity = units x 12 (one unit in a window read 12 units/h), and until 2026-12-07
    the gross trailing rate without returns, bulk lines or order_velocity (NULL order_velocity in its alerts, the
    column defaulting to sales_velocity in its windows). Its windows now carry the stream's rates: every SKU window's
    units_for_order, order_velocity and sales_velocity (net of returns, at least order_velocity) equal
    streaming.transforms.enrich_windows over the stored windows, cover = stock / velocity, some bulk lines are
    capped (order_velocity < sales_velocity) and every alert's quantity is recommended_quantity of its
    order_velocity; the store windows carry the gross trailing rate (trailing_velocity). With LEAD_TIME_DAYS 0 the
    stream caps a window without a baseline at the store's pooled cap (``pooled_bound=True``, as streaming/sinks.py
    calls it); until 2026-12-07 the bench counted it whole (review of c9001c9)."""
    import numpy as np

    from core.settings import get_settings
    from ops.bench_bi import ChainSize, load_chain
    from streaming.transforms import enrich_windows, recommended_quantity, trailing_velocity

    s, client = fresh_db
    db = s.clickhouse_database
    size = ChainSize(stores=4, skus=10, days=3, window_rows=5760, forecast_series=5, horizons=3, seed=3)
    monkeypatch.setenv("LEAD_TIME_DAYS", str(lead))     # load_chain reads the settings
    get_settings.cache_clear()
    try:
        load_chain(client, db, size, dt.date(2026, 11, 30))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    sku = client.query_df(f"SELECT window_start, window_end, store_id, product_id, units_sold, units_returned, "
                          f"stock_level, reorder_point, sales_velocity, hours_of_cover, units_for_order, order_velocity "
                          f"FROM {db}.sales_metrics_5m FINAL ORDER BY store_id, product_id, window_start")
    assert len(sku) == 5760
    want = enrich_windows(sku[["window_start", "window_end", "store_id", "product_id", "units_sold", "units_returned",
                               "reorder_point"]].assign(window_stock=np.nan),
                          None, window_len_hours=5 / 60, risk_high_hours=s.risk_high_hours,
                          risk_medium_hours=s.risk_medium_hours, velocity_hours=s.stream_velocity_hours,
                          lead_time_days=lead, pooled_bound=True)
    assert want["product_id"].tolist() == sku["product_id"].tolist()
    for col in ("units_for_order", "order_velocity", "sales_velocity"):
        assert np.allclose(sku[col], want[col], rtol=1e-9, atol=0), col
    capped = sku["units_for_order"] < sku["units_sold"]
    assert capped.sum() > 0 and (sku["order_velocity"] < sku["sales_velocity"]).sum() > 0
    assert (sku["units_returned"] > 0).sum() > 0
    cover = sku["stock_level"] / sku["sales_velocity"]
    assert np.allclose(sku["hours_of_cover"], cover, rtol=1e-9)
    alerts = client.query_df(f"SELECT current_stock, reorder_point, recommended_quantity, order_velocity "
                             f"FROM {db}.restock_alerts FINAL")
    assert len(alerts) > 0 and alerts["order_velocity"].notna().all()
    assert alerts["recommended_quantity"].tolist() == [
        recommended_quantity(a.current_stock, a.reorder_point, a.order_velocity, lead)
        for a in alerts.itertuples()]
    store = client.query_df(f"SELECT window_start, store_id, units_sold, sales_velocity FROM {db}.store_metrics_5m "
                            "FINAL")
    want = trailing_velocity(store, ["store_id"], window_len_hours=5 / 60, velocity_hours=s.stream_velocity_hours)
    assert len(store) > 0 and np.allclose(store["sales_velocity"], want, rtol=1e-9, atol=0)


def test_the_window_tables_forget_a_window_retention_days_after_its_last_write(fresh_db):
    """sales_metrics_5m and store_metrics_5m had no TTL: every window stayed for ever. Now a window written more than
    CLICKHOUSE_STREAM_RETENTION_DAYS (30) ago goes at the next merge, one written since stays, whatever its event time
    (the UCI replay's windows of 2010, written today, stay)."""
    s, client = fresh_db
    db = s.clickhouse_database
    assert s.clickhouse_stream_retention_days == 30
    for table, cols, vals in (
            ("sales_metrics_5m", "window_start, window_end, store_id, product_id, units_sold, units_returned, revenue, "
             "transaction_count, inventory_update_count, sales_velocity, stockout_risk, anomaly_score, last_event_time, "
             "batch_id, version, updated_at", "ws, ws + INTERVAL 5 MINUTE, 'S1', 'P1', 1, 0, 1.0, 1, 0, 0.5, 'LOW', 0, ws, "
             "0, 1, upd"),
            ("store_metrics_5m", "window_start, window_end, store_id, units_sold, units_returned, revenue, "
             "transaction_count, sku_count, skus_high_risk, sales_velocity, anomaly_score, batch_id, version, updated_at",
             "ws, ws + INTERVAL 5 MINUTE, 'S1', 1, 0, 1.0, 1, 1, 0, 0.5, 0, 0, 1, upd")):
        # 60 windows written d = 0..59 days ago (event times in 2010 and in the last 60 days alike)
        client.command(f"""INSERT INTO {db}.{table} ({cols}) SELECT {vals} FROM (
            SELECT if(number % 2 = 0, toDateTime64('2010-12-01 00:00:00', 3, 'UTC'), now64(3) - toIntervalDay(number))
                       + toIntervalMinute(5 * number) AS ws,
                   now64(3) - toIntervalDay(number) - toIntervalMinute(1) AS upd FROM numbers(60))""")
        client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
        ages = sorted(int(r[0]) for r in client.query(
            f"SELECT intDiv(dateDiff('second', updated_at, now64(3)), 86400) FROM {db}.{table}").result_rows)
        assert ages == list(range(30)), (table, ages)
