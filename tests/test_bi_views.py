"""The Power BI views of clickhouse/migrations/030_bi_views.sql and 080_stream_health_views.sql on the real
ClickHouse engine (chDB).

Runs every migration into a fresh database of the session's chDB path (``native_stack``: chDB allows one
path per process), checks that every view the Power BI dataset uses exists and is queryable, and that the
views' figures equal an independent pandas computation over the same rows: daily sales aggregation,
ReplacingMergeTree deduplication (FINAL), days of cover, forecast accuracy (WAPE, bias, coverage), the
"latest run" filters and the current-inventory join, the stream health views (each micro-batch once however
often stream_batches holds it; offsets reached per topic from the JSON end offsets).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
VIEWS_SQL = REPO / "clickhouse" / "migrations" / "030_bi_views.sql"
#: every migration that defines BI views: 030's, the stream health views of 080, 091's order_velocity views
#: every migration defining a BI view (v_*): 030, 080, 084, 086, 091, 094, 097
VIEW_FILES = [f for f in sorted((REPO / "clickhouse" / "migrations").glob("*.sql"))
              if "CREATE OR REPLACE VIEW {db}.v_" in f.read_text()]
DATASET_MD = REPO / "powerbi" / "dataset.md"
UTC = dt.timezone.utc

pytestmark = pytest.mark.integration


def view_names() -> list[str]:
    names = [v for f in VIEW_FILES for v in re.findall(r"CREATE OR REPLACE VIEW \{db\}\.(\w+)", f.read_text())]
    return list(dict.fromkeys(names))


#: settings update for a database holding the fixtures' dated micro-batches (2026-05-04 here, 2026-01 in
#: test_powerbi): stream_batches' TTL (migration 083, 14 days by default) would delete them at once
KEEP_BATCHES = {"clickhouse_stream_batches_retention_days": 3_650}


@pytest.fixture(scope="module")
def bi(native_stack):
    """(client, database): all migrations applied to a fresh database, twice (idempotence)."""
    from core.clickhouse import get_client, migrate

    db = f"bi_{uuid.uuid4().hex[:8]}"
    first = migrate(native_stack.model_copy(update=KEEP_BATCHES), database=db)
    second = migrate(native_stack.model_copy(update=KEEP_BATCHES), database=db)
    assert first == second and "030_bi_views.sql" in first
    client = get_client(native_stack, db)
    yield client, db
    client.command(f"DROP DATABASE IF EXISTS {db}")


def q(client, sql: str) -> pd.DataFrame:
    return client.query_df(sql)


def test_every_view_exists_and_is_queryable(bi):
    client, db = bi
    names = view_names()
    assert len(names) >= 15
    tables = set(client.query(f"SELECT name FROM system.tables WHERE database = '{db}' AND engine = 'View'")
                 .result_columns[0])
    assert set(names) <= tables
    for v in names:
        cols = client.query(f"DESCRIBE TABLE {db}.{v}").result_columns[0]
        assert cols, v
        client.query(f"SELECT * FROM {db}.{v} LIMIT 1")


def test_each_view_is_defined_once_and_keeps_order_velocity_through_a_migrate(bi, native_stack):
    """Review of c9001c9: 030 re-created v_restock_alerts / v_live_sku_metrics without order_velocity on every
    migrate() and 091 added it back, so a dashboard or Power BI query in between failed (unknown column). Each view
    is now defined by one migration file, and once 030's statements have run again (the state in the middle of a
    migrate()) both views still carry order_velocity. The same held for v_quarantine_summary (030, then 084 with
    is_refused_row), v_stream_quarantine_hourly (080, 084) and v_stream_health_latest / v_stream_offsets_latest
    (080, 085, 086): each is now defined by its latest file only (2026-12-07; this test failed on them)."""
    from core.clickhouse import MIGRATIONS_DIR, migrate, render_migration, split_statements

    defined = [v for f in VIEW_FILES for v in re.findall(r"CREATE OR REPLACE VIEW \{db\}\.(\w+)", f.read_text())]
    assert sorted(defined) == sorted(set(defined)), [v for v in set(defined) if defined.count(v) > 1]
    client, db = bi
    try:
        for stmt in split_statements(render_migration((MIGRATIONS_DIR / "030_bi_views.sql").read_text(), db)):
            client.command(stmt)
        for view in ("v_restock_alerts", "v_live_sku_metrics"):
            assert "order_velocity" in client.query(f"DESCRIBE TABLE {db}.{view}").result_columns[0], view
            client.query(f"SELECT order_velocity FROM {db}.{view} LIMIT 1")
    finally:   # the rest of migrate() (084 re-defines 030's v_quarantine_summary): the module's database as before
        migrate(native_stack.model_copy(update=KEEP_BATCHES), database=db)


def test_views_expose_bi_friendly_types(bi):
    """Keys and counts are Int64 (Power BI loads UInt64 as binary); no view column is UInt32/UInt64."""
    client, db = bi
    bad, keys = [], 0
    for v in view_names():
        for name, typ, *_ in client.query(f"DESCRIBE TABLE {db}.{v}").result_rows:
            if "UInt32" in typ or "UInt64" in typ:
                bad.append((v, name, typ))
            if name.endswith("_key") or name in ("model_version", "version", "events", "pos_lines"):
                keys += 1
                if typ.replace("Nullable(", "").rstrip(")") != "Int64":
                    bad.append((v, name, typ))
    assert keys >= 20 and not bad, bad


def test_surrogate_keys_keep_their_relationships(bi):
    """reinterpretAsInt64 maps UInt64 keys above Int64's maximum one-to-one: fact rows still find their dims."""
    client, db = bi
    big = 2 ** 63 + 12345                       # a hash-derived key above Int64's maximum
    client.insert("dim_store", [[big, "S-BIG", "Big store", 1]], column_names=["store_key", "store_id", "store_name",
                                                                             "is_known"], database=db)
    client.insert("fact_sales", [["big-1", 19990101, dt.datetime(1999, 1, 1, tzinfo=UTC), 1, big, "CARD", 2, 1.5,
                                  Decimal("3.0"), None, None, 0]],
                  column_names=["sale_id", "date_key", "event_time", "product_key", "store_key", "payment_method",
                                "quantity", "unit_price", "revenue", "cost", "profit", "is_return"], database=db)
    got = client.query(f"SELECT d.store_id, f.store_key FROM {db}.v_fact_sales AS f "
                       f"INNER JOIN {db}.v_dim_store AS d ON f.store_key = d.store_key "
                       f"WHERE f.sale_id = 'big-1'").result_rows
    assert got == [("S-BIG", big - 2 ** 64)]
    client.command(f"ALTER TABLE {db}.fact_sales DROP PARTITION 19990101")


def test_dataset_definition_uses_only_existing_views_and_columns(bi):
    """powerbi/dataset.md lists each table as `v_name(col, col, ...)`: all must exist in ClickHouse."""
    client, db = bi
    text = DATASET_MD.read_text()
    specs = re.findall(r"^\| `(v_\w+)` \| [^|]* \| ([^|]+) \|", text, re.M)
    assert len(specs) >= 10
    for view, cols in specs:
        have = set(client.query(f"DESCRIBE TABLE {db}.{view}").result_columns[0])
        wanted = {c.strip(" `") for c in cols.split(",") if c.strip()}
        assert wanted <= have, f"{view}: {sorted(wanted - have)} not in the view"


def test_sales_daily_and_fact_sales_match_pandas(bi):
    client, db = bi
    rng = np.random.default_rng(7)
    rows = []
    for i in range(400):
        day = dt.date(2026, 1, 1 + int(rng.integers(0, 3)))
        qty = int(rng.choice([-2, -1, 1, 2, 3, 5]))
        price = float(rng.choice([1.25, 2.5, 9.99]))
        revenue = Decimal(str(round(qty * price, 4)))
        has_cost = rng.random() > 0.1
        cost = Decimal(str(round(qty * price * 0.6, 4))) if has_cost else None
        rows.append([f"s{i}", day.year * 10000 + day.month * 100 + day.day,
                     dt.datetime(day.year, day.month, day.day, 10, tzinfo=UTC),
                     int(rng.integers(1, 4)), int(rng.integers(1, 3)), "CARD", qty, price, revenue, cost,
                     None if cost is None else revenue - cost, int(qty < 0)])
    cols = ["sale_id", "date_key", "event_time", "product_key", "store_key", "payment_method", "quantity",
            "unit_price", "revenue", "cost", "profit", "is_return"]
    client.insert("fact_sales", rows, column_names=cols, database=db)
    src = pd.DataFrame(rows, columns=cols)
    from etl.star_schema import rebuild_sales_daily

    for _ in range(2):   # the nightly ETL's step; a re-run replaces the day's partition, never adds to it
        for dk in sorted(src["date_key"].unique()):
            rebuild_sales_daily(client, db, int(dk))
    src["rev"] = src["revenue"].astype(float)
    src["cst"] = src["cost"].map(lambda v: np.nan if v is None else float(v))
    src["prf"] = src["profit"].map(lambda v: np.nan if v is None else float(v))
    exp = src.groupby(["date_key", "store_key", "product_key"]).agg(
        units_sold=("quantity", lambda s: s[s > 0].sum()), units_returned=("quantity", lambda s: -s[s < 0].sum()),
        net_units=("quantity", "sum"), revenue=("rev", "sum"), cost=("cst", lambda s: s.fillna(0).sum()),
        profit=("prf", lambda s: s.fillna(0).sum()), pos_lines=("sale_id", "count"),
        return_lines=("is_return", "sum")).reset_index()
    exp["revenue_with_cost"] = src[src["cst"].notna()].groupby(["date_key", "store_key", "product_key"])["rev"] \
        .sum().reindex(pd.MultiIndex.from_frame(exp[["date_key", "store_key", "product_key"]])).fillna(0).to_numpy()
    got = q(client, f"SELECT * FROM {db}.v_sales_daily ORDER BY date_key, store_key, product_key")
    assert len(got) == len(exp)
    for c in ["units_sold", "units_returned", "net_units", "pos_lines", "return_lines"]:
        assert got[c].astype(int).tolist() == exp[c].astype(int).tolist(), c
    for c in ["revenue", "cost", "profit", "revenue_with_cost"]:
        np.testing.assert_allclose(got[c].to_numpy(float), exp[c].to_numpy(float), rtol=0, atol=1e-6, err_msg=c)
    lines = q(client, f"SELECT sale_id, units_sold, units_returned, cost FROM {db}.v_fact_sales ORDER BY sale_id")
    assert len(lines) == len(rows)
    assert int(lines["units_sold"].sum()) == int(src.loc[src.quantity > 0, "quantity"].sum())
    assert int(lines["cost"].isna().sum()) == int(src["cst"].isna().sum())


def test_dimensions_are_deduplicated_with_final(bi):
    client, db = bi
    cols = ["product_key", "sku", "product_name", "category", "sub_category", "brand", "supplier", "is_known"]
    client.insert("dim_product", [[11, "SKU-1", "placeholder", "", "", "", "", 0]], column_names=cols, database=db)
    client.insert("dim_product", [[11, "SKU-1", "Tea 80 bags", "Grocery", "Tea", "Acme", "Acme Ltd", 1]],
                  column_names=cols, database=db)
    got = q(client, f"SELECT sku, product_name, is_known FROM {db}.v_dim_product WHERE product_key = 11")
    assert got.to_dict("records") == [{"sku": "SKU-1", "product_name": "Tea 80 bags", "is_known": 1}]


def test_days_of_cover_matches_a_trailing_28_day_mean(bi):
    client, db = bi
    rng = np.random.default_rng(3)
    days = [dt.date(2026, 2, 1) + dt.timedelta(days=i) for i in range(40)]
    sold = rng.integers(0, 9, size=len(days))
    sold[:3] = 0  # no sales yet: days of cover undefined (NULL)
    stock = rng.integers(0, 60, size=len(days))
    cols = ["date_key", "store_key", "product_key", "closing_stock", "is_carried_forward", "units_sold",
            "units_returned", "reorder_point", "safety_stock", "safety_stock_method", "below_reorder_point"]
    rows = [[d.year * 10000 + d.month * 100 + d.day, 5, 9, int(s), 0, int(u), 0, 20.0, 5.0, "sigma", int(s < 20)]
            for d, s, u in zip(days, stock, sold)]
    client.insert("fact_inventory", rows, column_names=cols, database=db)
    got = q(client, f"SELECT date_key, days_of_cover, is_stockout, avg_daily_units_28d FROM {db}.v_fact_inventory "
                    f"WHERE store_key = 5 AND product_key = 9 ORDER BY date_key")
    mean28 = pd.Series(sold, dtype=float).rolling(28, min_periods=1).mean()
    expected = np.where(mean28 > 0, stock / mean28.where(mean28 > 0), np.nan)
    np.testing.assert_allclose(got["avg_daily_units_28d"].to_numpy(float), mean28.to_numpy(), atol=1e-9)
    np.testing.assert_allclose(got["days_of_cover"].to_numpy(float), expected, atol=1e-9)
    assert got["is_stockout"].tolist() == [int(s <= 0) for s in stock]



def test_fact_inventory_shows_the_units_received(bi):
    """Review of 093 (2026-12-07): fact_inventory.units_received (the day's RESTOCK units, which the reorder plan
    nets against its open orders) was not in v_fact_inventory, so Power BI could not show receipts beside closing
    stock. Since migration 097 the view carries it, read here through the real endpoint; a row inserted without the
    column (as a day loaded before 093) reads 0."""
    client, db = bi
    cols = ["date_key", "store_key", "product_key", "closing_stock", "is_carried_forward", "units_sold",
            "units_returned", "reorder_point", "safety_stock", "safety_stock_method", "below_reorder_point"]
    rows = [[20260301 + i, 6, 13, 40 - 3 * i + received, 0, 3, 0, 20.0, 5.0, "sigma", 0]
            for i, received in enumerate([0, 24, 0, 7])]
    client.insert("fact_inventory", [r + [rec] for r, rec in zip(rows[1:], [24, 0, 7])],
                  column_names=cols + ["units_received"], database=db)
    client.insert("fact_inventory", rows[:1], column_names=cols, database=db)
    got = q(client, f"SELECT date_key, units_received, closing_stock FROM {db}.v_fact_inventory "
                    f"WHERE store_key = 6 AND product_key = 13 ORDER BY date_key")
    assert got["date_key"].tolist() == [20260301, 20260302, 20260303, 20260304]
    assert got["units_received"].astype(int).tolist() == [0, 24, 0, 7]
    assert dict(q(client, f"SELECT name, type FROM system.columns WHERE database = '{db}' "
                          f"AND table = 'v_fact_inventory' AND name = 'units_received'").values) == {
        "units_received": "Int64"}

def _metrics_row(store, sku, start, units, velocity, cover, risk, z, version):
    ws = start
    # updated_at = the write time, now: the table keeps a window CLICKHOUSE_STREAM_RETENTION_DAYS after it
    return [ws, ws + dt.timedelta(minutes=5), store, sku, units, 0, units * 2.0, units, 0, None, None, 40, 10,
            velocity, cover, risk, z, ws, 1, version, dt.datetime.now(UTC)]


METRIC_COLS = ["window_start", "window_end", "store_id", "product_id", "units_sold", "units_returned", "revenue",
               "transaction_count", "inventory_update_count", "window_stock", "window_stock_time", "stock_level",
               "reorder_point", "sales_velocity", "hours_of_cover", "stockout_risk", "anomaly_score",
               "last_event_time", "batch_id", "version", "updated_at"]


def test_live_metrics_final_and_current_inventory(bi):
    client, db = bi
    t0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    client.insert("sales_metrics_5m", [
        _metrics_row("S1", "P1", t0, 4, 48.0, 10.0, "HIGH", 0.5, 1),
        _metrics_row("S1", "P1", t0, 6, 72.0, 5.0, "HIGH", 3.5, 2),      # replayed batch, newer version
        _metrics_row("S1", "P1", t0 + dt.timedelta(minutes=5), 1, 12.0, 80.0, "LOW", -0.2, 1),
    ], column_names=METRIC_COLS, database=db)
    live = q(client, f"SELECT window_start, units_sold, is_anomaly, date_key FROM {db}.v_live_sku_metrics "
                     f"WHERE store_id = 'S1' ORDER BY window_start")
    assert live["units_sold"].tolist() == [6, 1]
    assert live["is_anomaly"].tolist() == [1, 0]
    assert live["date_key"].tolist() == [20260301, 20260301]
    client.insert("inventory_levels", [["S1", "P1", 12, t0, 40, 1, t0, t0, 1, 1, t0],
                                       ["S1", "P2", 0, t0, 40, 1, t0, None, 1, 1, t0]],
                  column_names=["store_id", "product_id", "stock_level", "stock_time", "reorder_point", "in_episode",
                                "episode_start", "last_window_start", "batch_id", "version", "updated_at"],
                  database=db)
    cur = q(client, f"SELECT product_id, stock_level, sales_velocity, hours_of_cover, stockout_risk, is_stockout "
                    f"FROM {db}.v_current_inventory WHERE store_id = 'S1' ORDER BY product_id")
    p1, p2 = cur.to_dict("records")
    assert (p1["stock_level"], p1["sales_velocity"], p1["hours_of_cover"], p1["stockout_risk"], p1["is_stockout"]) \
        == (12, 12.0, 80.0, "LOW", 0)   # the latest window's values
    assert p2["is_stockout"] == 1 and p2["stockout_risk"] == "UNKNOWN"   # no window yet for P2
    latest = q(client, f"SELECT window_start, units_sold FROM {db}.sku_window_latest FINAL "
                       f"WHERE store_id = 'S1' AND product_id = 'P1'")
    assert latest["units_sold"].tolist() == [1] and len(latest) == 1   # one row per series: the newest window


def test_alerts_and_live_windows_show_the_rate_the_order_used(bi):
    """v_restock_alerts and v_live_sku_metrics carry order_velocity (migration 091): the rate the restock quantity
    was computed from, next to sales_velocity, so a capped bulk line's alert explains its quantity (before 091 the
    column was in the tables only: the SELECT failed with an unknown column). An alert written before 089 reads
    NULL; the latest version of a window wins (FINAL)."""
    from streaming.transforms import recommended_quantity

    client, db = bi
    t0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    # the bulk window of the README's case: gross rate 3,377.9 units/h, order rate 3.33 units/h, rop 60, stock 0
    qty = recommended_quantity(0, 60, 10 / 3, 3)
    cols = ["alert_id", "store_id", "product_id", "current_stock", "reorder_point", "recommended_quantity",
            "sales_velocity", "hours_of_cover", "priority", "window_end", "alert_time", "batch_id", "ingested_at"]
    client.insert("restock_alerts", [["SOV|P1|1", "SOV", "P1", 0, 60, qty, 3377.9, None, "CRITICAL", t0, t0, 1, t0,
                                      10 / 3],
                                     ["SOV|P2|1", "SOV", "P2", 5, 60, 200, 1.5, 3.3, "HIGH", t0, t0, 1, t0, None]],
                  column_names=[*cols, "order_velocity"], database=db)
    got = q(client, f"SELECT alert_id, recommended_quantity, sales_velocity, order_velocity, current_stock, "
                    f"reorder_point FROM {db}.v_restock_alerts WHERE store_id = 'SOV' ORDER BY alert_id")
    assert got["alert_id"].tolist() == ["SOV|P1|1", "SOV|P2|1"]
    assert got["order_velocity"][0] == pytest.approx(10 / 3, rel=1e-15) and pd.isna(got["order_velocity"][1])
    assert got["recommended_quantity"][0] == 360 == recommended_quantity(0, 60, got["order_velocity"][0], 3)
    w1 = _metrics_row("SOV", "P1", t0, 80_995, 3377.9, None, "HIGH", 9.0, 1) + [3.0, 10 / 3]
    w2 = _metrics_row("SOV", "P1", t0, 80_995, 3377.9, None, "HIGH", 9.0, 2) + [3.0, 3.25]   # a re-run, newer
    client.insert("sales_metrics_5m", [w1, w2], column_names=[*METRIC_COLS, "units_for_order", "order_velocity"],
                  database=db)
    live = q(client, f"SELECT sales_velocity, order_velocity FROM {db}.v_live_sku_metrics WHERE store_id = 'SOV'")
    assert live["order_velocity"].tolist() == [3.25] and live["sales_velocity"].tolist() == [3377.9]


def test_forecast_accuracy_and_latest_filters_match_pandas(bi):
    client, db = bi
    rng = np.random.default_rng(11)
    origin_old, origin_new = dt.date(2026, 4, 1), dt.date(2026, 4, 8)
    frows, actual = [], {}
    for origin in (origin_old, origin_new):
        for sku in ("A", "B"):
            for h in range(1, 8):
                target = origin + dt.timedelta(days=h)
                yhat = float(rng.uniform(2, 10))
                frows.append([origin, target, h, "S1", sku, yhat, yhat - 2, yhat + 2, yhat - 4, yhat + 4, 3, origin,
                              dt.datetime(2026, 4, 9, tzinfo=UTC)])
                if target <= dt.date(2026, 4, 10):           # demand known up to 10 April
                    actual[(sku, target)] = float(rng.integers(0, 12))
    client.insert("forecast_predictions", frows, database=db, column_names=[
        "forecast_origin", "target_date", "horizon", "store_id", "product_id", "yhat", "lower80", "upper80",
        "lower95", "upper95", "model_version", "run_date", "created_at"])
    feat_cols = ["date", "store_id", "product_id", "units", "run_date", "computed_at"]
    feats = [[d, "S1", sku, u, d, dt.datetime(2026, 4, 10, tzinfo=UTC)] for (sku, d), u in actual.items()]
    feats.append([dt.date(2026, 4, 11), "S1", "A", float("nan"), dt.date(2026, 4, 11),
                  dt.datetime(2026, 4, 10, tzinfo=UTC)])   # future row: NaN demand, must be ignored
    client.insert("features_daily", feats, column_names=feat_cols, database=db)

    f = pd.DataFrame(frows, columns=["origin", "target", "h", "store", "sku", "yhat", "l80", "u80", "l95", "u95",
                                     "v", "run", "created"])
    f["actual"] = [actual.get((s, t), np.nan) for s, t in zip(f.sku, f.target)]
    f = f.dropna(subset=["actual"])
    wape = (f.yhat - f.actual).abs().sum() / f.actual.sum()
    bias = (f.yhat - f.actual).sum() / f.actual.sum()
    cov80 = ((f.actual >= f.l80) & (f.actual <= f.u80)).mean()
    got = q(client, f"SELECT sum(abs_error_units) / sum(actual_units) AS wape, "
                    f"sum(error_units) / sum(actual_units) AS bias, avg(within_80) AS cov80, count() AS n "
                    f"FROM {db}.v_forecast_accuracy").iloc[0]
    assert int(got["n"]) == len(f)
    assert got["wape"] == pytest.approx(wape, abs=1e-12)
    assert got["bias"] == pytest.approx(bias, abs=1e-12)
    assert got["cov80"] == pytest.approx(cov80, abs=1e-12)
    latest = q(client, f"SELECT DISTINCT forecast_origin FROM {db}.v_forecast_latest")
    assert [pd.Timestamp(x).date() for x in latest["forecast_origin"]] == [origin_new]

    rcols = ["as_of_date", "store_id", "product_id", "stock", "mean_daily_demand", "sigma_daily", "lead_time_days",
             "service_level", "safety_stock", "reorder_point", "eoq", "reorder_qty", "reorder_needed",
             "days_until_stockout", "stockout_risk", "unit_cost", "model_version", "run_date", "created_at",
             "on_order", "order_bound"]
    client.insert("reorder_recommendations", [
        [origin_old, "S1", "A", 5.0, 2.0, 1.0, 3.0, 0.95, 2.85, 8.85, 20.0, 30.0, 1, 2.5, "HIGH", 1.5, 3, origin_old,
         dt.datetime(2026, 4, 2, tzinfo=UTC), 0.0, "rop_gap"],
        [origin_new, "S1", "A", 40.0, 2.0, 1.0, 3.0, 0.95, 2.85, 8.85, 20.0, 0.0, 0, 20.0, "LOW", 1.5, 3, origin_new,
         dt.datetime(2026, 4, 9, tzinfo=UTC), 30.0, "none"],
        [origin_new, "S1", "B", 3.0, 4.0, 2.0, 3.0, 0.95, 5.7, 17.7, 20.0, 25.0, 1, 0.75, "HIGH", 2.0, 3, origin_new,
         dt.datetime(2026, 4, 9, tzinfo=UTC), 0.0, "capacity"]], column_names=rcols, database=db)
    ro = q(client, f"SELECT product_id, reorder_value, on_order, order_bound FROM {db}.v_reorder_latest "
                   "ORDER BY product_id")
    assert ro["product_id"].tolist() == ["A", "B"]
    assert ro["reorder_value"].tolist() == [0.0, 50.0]
    # what is on order and the rule that set the quantity (migration 094; the view lacked both until 2026-12-07)
    assert ro["on_order"].tolist() == [30.0, 0.0] and ro["order_bound"].tolist() == ["none", "capacity"]


def test_model_metrics_carry_the_champion_flag(bi):
    client, db = bi
    now = dt.datetime(2026, 4, 9, tzinfo=UTC)
    client.insert("model_registry", [["demand-forecast", 1, dt.date(2026, 4, 1), now, "models/demand-forecast/v1",
                                      0.40, 0.50, "{}", 0, None, now],
                                     ["demand-forecast", 2, dt.date(2026, 4, 8), now, "models/demand-forecast/v2",
                                      0.30, 0.50, "{}", 1, now, now]],
                  column_names=["model_name", "version", "run_date", "trained_at", "path", "backtest_wape",
                                "seasonal_naive_wape", "metrics", "is_champion", "promoted_at", "updated_at"],
                  database=db)
    client.insert("ml_model_metrics", [["demand-forecast", v, dt.date(2026, 4, 8), m, "wape", h, val, "platform", now]
                                       for v, m, h, val in [(2, "gbt", 1, 0.3), (2, "seasonal_naive", 1, 0.5),
                                                            (1, "gbt", 1, 0.4)]],
                  column_names=["model_name", "model_version", "run_date", "model", "metric", "horizon", "value",
                                "dataset", "computed_at"], database=db)
    got = q(client, f"SELECT model_version, model, is_champion FROM {db}.v_model_metrics ORDER BY model_version, model")
    # the champion version serves predictions with one model (model_registry.model, 'gbt' by default)
    assert got.values.tolist() == [[1, "gbt", 0], [2, "gbt", 1], [2, "seasonal_naive", 0]]
    client.insert("model_registry", [["demand-forecast", 2, "seasonal_naive", dt.date(2026, 4, 8), now, "p", 0.3, 0.5,
                                      "{}", 1, now, now + dt.timedelta(seconds=1)]],
                  column_names=["model_name", "version", "model", "run_date", "trained_at", "path", "backtest_wape",
                                "seasonal_naive_wape", "metrics", "is_champion", "promoted_at", "updated_at"],
                  database=db)
    got = q(client, f"SELECT model_version, model, is_champion FROM {db}.v_model_metrics ORDER BY model_version, model")
    assert got.values.tolist() == [[1, "gbt", 0], [2, "gbt", 0], [2, "seasonal_naive", 1]]
    reg = q(client, f"SELECT version, wape_improvement FROM {db}.v_model_registry ORDER BY version")
    assert reg["wape_improvement"].tolist() == pytest.approx([0.2, 0.4])


def _naive(t) -> pd.Timestamp:
    """``t`` as a UTC timestamp without a zone (query_df gives naive UTC, result_rows aware)."""
    t = pd.Timestamp(t)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo else t


def test_live_figures_take_each_stores_own_latest_24_hours(bi):
    """Two stores: LIVE-A streams up to T, LIVE-B's feed stopped 50 h before. The live figures (the Streamlit
    exec_live / store trend / anomaly queries and Power BI's in_store_last_24h flag) take each store's 24 hours up to
    its *own* latest window and show how old each store's latest window is (stalest_window_end): before, they all
    took the 24 h up to the newest window of any store, so LIVE-B's figures were NULL (a stopped feed showed nothing)
    and the chain's totals left LIVE-B out without saying so."""
    from dashboard import queries as Q

    client, db = bi
    t = dt.datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
    now = dt.datetime.now(UTC)
    rows = []
    for store, last, n in (("LIVE-A", t, 30), ("LIVE-B", t - dt.timedelta(hours=50), 30)):
        for h in range(n):   # one window an hour, the newest at ``last``
            ws = last - dt.timedelta(hours=h)
            rows.append([ws, ws + dt.timedelta(minutes=5), store, h + 1, 0, 10.0 * (h + 1), h + 1, 1, 0, 1.0,
                         3.5 if h % 7 == 0 else 0.0, 1, 1, now])
    client.insert("store_metrics_5m", rows, database=db,
                  column_names=["window_start", "window_end", "store_id", "units_sold", "units_returned", "revenue",
                                "transaction_count", "sku_count", "skus_high_risk", "sales_velocity", "anomaly_score",
                                "batch_id", "version", "updated_at"])
    client.insert("sales_metrics_5m", [_metrics_row(r[2], "P1", r[0], r[3], 1.0, 5.0, "LOW", r[10], 1) for r in rows],
                  column_names=METRIC_COLS, database=db)
    stored = q(client, f"SELECT window_start, window_end, store_id, revenue, units_sold, transaction_count "
                       f"FROM {db}.store_metrics_5m FINAL")
    latest = stored.groupby("store_id")["window_start"].transform("max")
    recent = stored[stored["window_start"] > latest - pd.Timedelta(hours=24)]
    for store in ("LIVE-A", "LIVE-B", ""):
        want = recent if not store else recent[recent["store_id"] == store]
        mine = stored if not store else stored[stored["store_id"] == store]
        got = Q.run(client, db, "exec_live", Q.Filters(store=store)).iloc[0]
        assert got["revenue"] == pytest.approx(want["revenue"].sum(), rel=1e-12), store
        assert got["transactions"] == want["transaction_count"].sum(), store
        assert _naive(got["latest_window_end"]) == _naive(mine["window_end"].max()), store
        stalest = mine.groupby("store_id")["window_end"].max().min()
        assert _naive(got["stalest_window_end"]) == _naive(stalest), store
        if store:
            trend = Q.run(client, db, "store_trend", Q.Filters(store=store))
            assert len(trend) == 24 and trend["revenue"].sum() == pytest.approx(want["revenue"].sum()), store
            anomalies = Q.run(client, db, "store_anomaly_count", Q.Filters(store=store)).iloc[0]["anomalies"]
            assert anomalies == 4, store   # windows h = 0, 7, 14, 21 of the store's last 24 h: z = 3.5
    flag = q(client, f"SELECT store_id, window_start, in_store_last_24h, store_latest_window "
                     f"FROM {db}.v_live_store_metrics WHERE store_id LIKE 'LIVE-%'")
    exp = stored[stored["store_id"].str.startswith("LIVE-")]
    exp = exp.assign(flag=(exp["window_start"] > exp.groupby("store_id")["window_start"].transform("max")
                           - pd.Timedelta(hours=24)).astype(int))
    m = flag.merge(exp, on=["store_id", "window_start"])
    assert len(m) == 60 and (m["in_store_last_24h"] == m["flag"]).all() and m["flag"].sum() == 48
    # Power BI's Minutes Since Last Window takes store_latest_window_end: the same instant as the dashboard's
    # stalest_window_end for each store (it took store_latest_window, the window's start: 5 minutes older)
    ends = q(client, f"SELECT store_id, any(store_latest_window_end) AS e FROM {db}.v_live_store_metrics "
                     f"WHERE store_id LIKE 'LIVE-%' GROUP BY store_id ORDER BY store_id")
    assert ends["store_id"].tolist() == ["LIVE-A", "LIVE-B"]
    for store, end in zip(ends["store_id"], ends["e"]):
        assert _naive(end) == _naive(stored[stored["store_id"] == store]["window_end"].max()), store
        dash = Q.run(client, db, "exec_live", Q.Filters(store=store)).iloc[0]["stalest_window_end"]
        assert _naive(end) == _naive(dash), store
    sku = q(client, f"SELECT store_id, toInt64(sum(in_store_last_24h)) AS n FROM {db}.v_live_sku_metrics "
                    f"WHERE store_id LIKE 'LIVE-%' GROUP BY store_id ORDER BY store_id")
    assert sku["n"].tolist() == [24, 24]


SB_COLS = ["query", "batch_id", "input_rows", "output_rows", "started_at", "committed_at", "duplicates_dropped",
           "records_expired", "late_rows_dropped", "event_time_max", "end_offsets", "rows_set_aside"]


def _stream_batch_inserts(rng) -> list[list[list]]:
    """stream_batches rows as the stream sink writes them, one insert per element: each micro-batch's row right
    after its writes, the same row again (same committed_at) with the counts its progress adds, and some batches
    re-run after a restart (a later committed_at, other counts); end offsets as JSON {topic: {partition: offset}},
    missing ('') on the windows query's latest batch (a checkpoint that is not a local folder)."""
    t0 = dt.datetime(2026, 5, 4, 9, 50, tzinfo=UTC)
    ends = {"retail-sales": [0, 0, 0], "retail-inventory": [0, 0, 0], "retail-prices": [0, 0]}
    inserts: list[list[list]] = []
    for b in range(40):                    # 40 batches a query, one every 5 minutes: 10:00 .. 13:15 (4 hours)
        for q in ("raw", "windows"):
            for parts in ends.values():
                for p in range(len(parts)):
                    parts[p] += int(rng.integers(0, 30)) if q == "raw" else 0
            at = t0 + dt.timedelta(minutes=5 * b + 10, seconds=3 if q == "windows" else 1)
            offs = "" if (q == "windows" and b == 39) else json.dumps(
                {t: {str(p): o for p, o in enumerate(parts)} for t, parts in ends.items()}, sort_keys=True)
            first = [q, b, int(rng.integers(0, 500)), int(rng.integers(0, 500)), at - dt.timedelta(seconds=2), at,
                     0, 0, 0, at - dt.timedelta(minutes=1) if q == "windows" else None, offs,
                     int(rng.integers(0, 3)) * (rng.random() < 0.2)]   # rows ClickHouse refused, set aside
            inserts.append([first])
            if rng.random() < 0.5:         # the progress adds counts: the row again, same committed_at
                again = list(first)
                again[6], again[7] = int(rng.integers(0, 4)), int(rng.integers(0, 3)) * (q == "raw")
                again[8] = int(rng.integers(0, 9)) * (q == "windows")
                inserts.append([again])
            if rng.random() < 0.15:        # re-run after a restart: a later commit with its own counts
                rerun = list(first)
                rerun[5] = at + dt.timedelta(seconds=30)
                rerun[2], rerun[8] = int(rng.integers(0, 500)), int(rng.integers(0, 5)) * (q == "windows")
                inserts.append([rerun])
    return inserts


def test_stream_health_views_count_each_batch_once_and_match_pandas(bi):
    """v_stream_health_hourly / _latest, v_stream_offsets_latest and v_stream_quarantine_hourly against pandas over
    the same rows: each (query, batch_id) once, its last write (the latest committed_at; at equal committed_at the
    last insert, as ReplacingMergeTree keeps it), whatever the merges did; offsets reached = the sum over a topic's
    partitions of the end offsets of the query's latest batch that recorded them."""
    from dashboard import queries as Q

    client, db = bi
    rng = np.random.default_rng(80)
    inserts = _stream_batch_inserts(rng)
    client.command(f"SYSTEM STOP MERGES {db}.stream_batches")   # parts stay apart: FINAL must collapse them
    for rows in inserts:
        client.insert("stream_batches", rows, column_names=SB_COLS, database=db)
    assert client.command(f"SELECT count() FROM {db}.stream_batches") == len(inserts)   # no merge: 80 batches, more rows
    qt = dt.datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    qrows = [["sales_transaction" if i % 3 else "inventory_update", "retail-sales", i % 3, i,
              qt, f"reason {i % 4}", "{}", i, qt + dt.timedelta(minutes=7 * i)] for i in range(30)]
    client.insert("quarantine_events", qrows + qrows[:5],  # 5 re-quarantined by a re-run batch: the same offsets
                  column_names=["event_type", "topic", "partition", "offset", "kafka_timestamp", "reason",
                                "raw_payload", "batch_id", "ingested_at"], database=db)

    raw = pd.DataFrame([r for rows in inserts for r in rows], columns=SB_COLS)
    raw["seq"] = range(len(raw))
    once = raw.sort_values(["committed_at", "seq"]).groupby(["query", "batch_id"]).tail(1)
    assert len(raw) > len(once) == 80      # the table holds batches more than once
    # the figure powerbi/dataset.md states: 125 rows; without FINAL the hourly batch counts
    # would be 18, 18, 20 ... (raw, windows per hour) instead of 12
    assert len(raw) == 125
    assert raw.groupby([raw["committed_at"].dt.floor("h"), "query"]).size().tolist()[:3] == [18, 18, 20]
    once = once.assign(hour_start=once["committed_at"].dt.floor("h").dt.tz_localize(None))

    got = q(client, f"SELECT * FROM {db}.v_stream_health_hourly ORDER BY hour_start, query")
    cnt = ["input_rows", "output_rows", "duplicates_dropped", "records_expired", "late_rows_dropped", "rows_set_aside"]
    want = once.groupby(["hour_start", "query"], as_index=False).agg(
        micro_batches=("batch_id", "size"), **{c: (c, "sum") for c in cnt})
    assert len(got) == len(want) == 8      # 2 queries x 4 hours
    for c in ["micro_batches", *cnt]:
        assert got[c].tolist() == want[c].tolist(), c
    assert [_naive(t) for t in got["hour_start"]] == want["hour_start"].tolist()
    assert want["late_rows_dropped"].sum() > 0 and want["records_expired"].sum() > 0 and want["rows_set_aside"].sum() > 0

    latest = q(client, f"SELECT * FROM {db}.v_stream_health_latest ORDER BY query")
    per = once.groupby("query")
    assert latest["query"].tolist() == ["raw", "windows"]
    assert latest["micro_batches"].tolist() == [40, 40]
    for c in cnt:
        assert latest[c].tolist() == per[c].sum().tolist(), c
    assert latest["batches_with_late_rows"].tolist() == per["late_rows_dropped"].apply(lambda s: (s > 0).sum()).tolist()
    assert latest["batches_with_expired"].tolist() == per["records_expired"].apply(lambda s: (s > 0).sum()).tolist()
    assert [_naive(t) for t in latest["last_committed_at"]] == [_naive(t) for t in per["committed_at"].max()]
    newest = once.sort_values("committed_at").groupby("query").tail(1).set_index("query")
    assert latest["last_batch_id"].tolist() == newest.loc[["raw", "windows"], "batch_id"].tolist()
    assert pd.isna(latest["latest_event_time"][0])
    assert _naive(latest["latest_event_time"][1]) == _naive(once[once["query"] == "windows"]["event_time_max"].max())
    assert (latest["minutes_since_last_batch"] > 0).all()

    offsets = q(client, f"SELECT * FROM {db}.v_stream_offsets_latest ORDER BY query, topic")
    exp = []
    for qn, g in once[once["end_offsets"] != ""].groupby("query"):
        last = g.sort_values("committed_at").iloc[-1]
        for topic, parts in sorted(json.loads(last["end_offsets"]).items()):
            exp.append((qn, topic, len(parts), sum(parts.values()), last["batch_id"]))
    assert [tuple(r) for r in offsets[["query", "topic", "partitions", "offsets_reached", "batch_id"]]
            .itertuples(index=False)] == exp
    assert offsets.loc[offsets["query"] == "windows", "batch_id"].tolist() == [38] * 3   # 39 recorded none
    assert offsets["offsets_reached"].sum() > 0

    qh = q(client, f"SELECT * FROM {db}.v_stream_quarantine_hourly ORDER BY hour_start, event_type, reason")
    qdf = pd.DataFrame(qrows, columns=["event_type", "topic", "partition", "offset", "kt", "reason", "raw", "batch_id",
                                       "ingested_at"])
    qdf["hour_start"] = qdf["ingested_at"].map(lambda t: t.replace(minute=0, second=0, tzinfo=None))
    qw = qdf.groupby(["hour_start", "event_type", "reason"], as_index=False).size().sort_values(
        ["hour_start", "event_type", "reason"])
    assert qh["events"].tolist() == qw["size"].tolist() and qh["events"].sum() == 30
    assert [_naive(t) for t in qh["hour_start"]] == [pd.Timestamp(t) for t in qw["hour_start"]]

    # the dashboard's queries over these views
    h = Q.run(client, db, "health_latest")
    assert h["late_rows_dropped"].tolist() == per["late_rows_dropped"].sum().tolist()
    hourly = Q.run(client, db, "health_hourly")
    assert len(hourly) == 8 and hourly["micro_batches"].sum() == 80   # all 4 hours are within the 48
    quar = Q.run(client, db, "health_quarantine")
    recent = qdf[qdf["hour_start"] > qdf["hour_start"].max() - pd.Timedelta(hours=24)]
    assert quar["events"].sum() == len(recent) == 30
    assert Q.run(client, db, "health_quarantine_total")["events"].tolist() == [30]   # the card's total
    client.command(f"SYSTEM START MERGES {db}.stream_batches")


def test_etl_run_lists_show_a_begun_row_only_when_it_is_the_days_latest(bi):
    """Every load appends a 'begun' row (zero counts) before its first write (2026-12-07): v_etl_runs listed them all,
    so they took half of the dashboard's 30-row ETL run list (dq_etl: ~15 nights instead of 30) and Power BI's
    reconciliation table showed a zero-count row per night. Since migration 098 a 'begun' row is listed only when it
    is its day's latest row (a load running or stopped half-way: the day not loaded), which Power BI's 'Last ETL
    Status' still sees; the ended runs are all listed."""
    from dashboard import queries as Q
    from etl.star_schema import BEGUN, record_run

    client, db = bi
    d1, d2 = dt.date(2031, 1, 1), dt.date(2031, 1, 2)
    t = dt.datetime(2031, 1, 3, 8, 0, tzinfo=UTC)
    record_run(client, db, d1, BEGUN, "load", t, dag_run_id="night_1")           # the night's load of d1, then its
    record_run(client, db, d1, "success", "quality_check", t, dag_run_id="night_1")   # reconciliation
    record_run(client, db, d2, "success", "quality_check", t - dt.timedelta(days=1), dag_run_id="night_2")
    record_run(client, db, d2, BEGUN, "load", t, dag_run_id="reload_2")            # a reload stopped half-way
    rows = q(client, f"SELECT date_key, status, dag_run_id FROM {db}.v_etl_runs WHERE date_key IN (20310101, 20310102) "
                     "ORDER BY date_key, status")
    assert list(rows.itertuples(index=False, name=None)) == [
        (20310101, "success", "night_1"), (20310102, "begun", "reload_2"), (20310102, "success", "night_2")]
    listed = Q.run(client, db, "dq_etl", Q.Filters())
    listed = listed[listed["date_key"].isin([20310101, 20310102])]
    assert sorted(zip(listed["date_key"], listed["status"])) == [
        (20310101, "success"), (20310102, "begun"), (20310102, "success")]   # old view: d1's 'begun' listed too
    # Power BI's 'Last ETL Status' (migration 099): the run a row belongs to, whether it is its day's latest row, and
    # the rank of its status (success 0, begun 1, failed 2); a run outside Airflow is keyed by its started_at
    record_run(client, db, dt.date(2031, 1, 3), "failed", "load", t, dag_run_id="")
    rows = q(client, f"SELECT date_key, status, run_label, is_day_latest, status_rank FROM {db}.v_etl_runs "
                     "WHERE date_key IN (20310101, 20310102, 20310103) ORDER BY date_key, status")
    assert list(rows.itertuples(index=False, name=None)) == [
        (20310101, "success", "night_1", 1, 0), (20310102, "begun", "reload_2", 1, 1),
        (20310102, "success", "night_2", 0, 0), (20310103, "failed", "2031-01-03 08:00:00.000", 1, 2)]
    # a quality check run by hand (dag_run_id '') records under the day's latest row's started_at (unattended_start):
    # since migration 104 it belongs to the run of the load it checks; 099 labelled it with its started_at as text,
    # which tied with 'night_1' at the latest started_at and left Power BI's 'Last ETL Status' BLANK
    record_run(client, db, d1, "success", "quality_check", t, dag_run_id="")
    rows = q(client, f"SELECT dag_run_id, run_label, is_day_latest FROM {db}.v_etl_runs WHERE date_key = 20310101 "
                     "ORDER BY finished_at")
    assert list(rows.itertuples(index=False, name=None)) == [
        ("night_1", "night_1", 0), ("", "night_1", 1)]   # 099: ("", "2031-01-03 08:00:00.000", 1)
