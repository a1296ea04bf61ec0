"""daily_etl run for real with ``dag.test()`` against the native stack (MinIO lake + chDB).

The ``native_stack`` fixture already opened chDB in this pytest process, and chDB allows one process
per path, so the DAG runs *in-process* (``dag.test()`` runs every task in the calling process).

Raw events are built from real UCI Online Retail lines (``../shared/data/uci_online_retail``) and
written in the streaming job's exact raw layout (``raw-data/<event_type>/year=/month=/day=/batch-<n>.parquet``,
Avro fields + ingested_at/kafka_partition/kafka_offset), including replayed duplicates. Every assertion
compares the star schema with an independent pandas/Decimal computation over the Parquet files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import uuid
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import INV_SCHEMA, SALES_SCHEMA, cancelled_units

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

DAY1, DAY2, DAY3 = dt.date(2011, 8, 24), dt.date(2011, 8, 25), dt.date(2011, 8, 26)
COUNTRY_CODES = {"United Kingdom": "GB", "France": "FR", "Germany": "DE", "EIRE": "IE", "Spain": "ES",
                 "Netherlands": "NL", "Belgium": "BE", "Switzerland": "CH", "Portugal": "PT", "Italy": "IT",
                 "Norway": "NO", "Australia": "AU", "Sweden": "SE", "Finland": "FI", "Denmark": "DK"}
NOT_IN_REFERENCE = {"POST", "M", "DOT"}  # SKUs left out of the product master data -> placeholder rows


def store_id(country: str) -> str:
    return "UCI-" + re.sub(r"[^A-Z0-9]+", "-", country.upper()).strip("-")


# ------------------------------------------------------------------------------ raw data builder --
@pytest.fixture(scope="module")
def uci_days(shared_data) -> pd.DataFrame:
    src = shared_data / "uci_online_retail" / "transactions.csv.gz"
    if not src.exists():
        pytest.skip(f"{src} missing")
    return uci_events(src)


def uci_events(src: Path) -> pd.DataFrame:
    """UCI lines of DAY1..DAY3 as sales_transaction events (UK local time -> UTC)."""
    df = pd.read_csv(src, dtype={"invoice": str, "stock_code": str, "customer_id": "Int64", "description": str})
    df = df[df["invoice_ts"].str[:10].isin([d.isoformat() for d in (DAY1, DAY2, DAY3)])]
    df = df[~df["invoice"].str.startswith("A") & (df["quantity"] != 0) & (df["unit_price"] >= 0)]
    ts = pd.to_datetime(df["invoice_ts"]).dt.tz_localize("Europe/London").dt.tz_convert("UTC")
    ev = pd.DataFrame({
        "transaction_id": df["invoice"] + "-" + df["line_no"].astype(str),
        "store_id": df["country"].map(store_id), "product_id": df["stock_code"],
        "quantity": df["quantity"].astype("int32"), "unit_price": df["unit_price"].astype("float64"),
        "timestamp": ts, "customer_id": df["customer_id"].astype("string").astype(object).where(
            df["customer_id"].notna(), None),
        "payment_method": "ONLINE", "invoice_id": df["invoice"],
        "country": df["country"], "description": df["description"].fillna(""),
    }).reset_index(drop=True)
    ev["day"] = ev["timestamp"].dt.date
    return ev


def _write_raw(lake, event_type: str, day: dt.date, batches: dict[int, pd.DataFrame], schema: pa.Schema):
    part = f"{event_type}/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"
    lake.delete_dir(lake.settings.lake_raw_bucket, part)
    for batch_id, df in batches.items():
        t = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
        lake.write_table(t, lake.settings.lake_raw_bucket, part, f"batch-{batch_id}.parquet")


def land_day(lake, ev: pd.DataFrame, day: dt.date, seed: int) -> None:
    """Write the day's sales and synthetic inventory updates in the raw layout, with ~8 % of the sales
    lines replayed (same event, later ingestion) in a second micro-batch file."""
    rng = np.random.default_rng(seed)
    s = ev[ev["day"] == day].copy().reset_index(drop=True)
    s["kafka_partition"] = (s["store_id"].str.len() + s["product_id"].str.len()) % 3
    s["kafka_offset"] = np.arange(len(s)) + seed * 100_000
    s["ingested_at"] = s["timestamp"] + pd.Timedelta(seconds=2)
    half = len(s) // 2
    replay = s.sample(frac=0.08, random_state=seed).copy()
    replay["ingested_at"] = replay["ingested_at"] + pd.Timedelta(minutes=30)
    _write_raw(lake, "sales_transaction", day, {1: s.iloc[:half], 2: s.iloc[half:], 3: replay}, SALES_SCHEMA)
    # inventory: one update per sale line, stock running down from an opening level; SKUs of every
    # 5th store x SKU get no update on this day (-> carried forward on the next day)
    s = s.sort_values(["timestamp", "kafka_offset"])
    keys = s[["store_id", "product_id"]].drop_duplicates()
    keep = keys.sample(frac=0.8, random_state=seed + 1)
    s = s.merge(keep, on=["store_id", "product_id"])
    opening = s.groupby(["store_id", "product_id"])["quantity"].transform(lambda q: int(q.clip(lower=0).sum()) + 50)
    new_q = opening - s.groupby(["store_id", "product_id"])["quantity"].cumsum()
    inv = pd.DataFrame({
        "inventory_id": "inv-" + s["transaction_id"], "store_id": s["store_id"], "product_id": s["product_id"],
        "quantity_change": (-s["quantity"]).astype("int32"), "new_quantity": new_q.astype("int32"),
        "reason": np.where(s["quantity"] > 0, "SALE", "RETURN"),
        "reorder_point": pd.array(rng.choice([20, None], len(s)), dtype="Int32"),
        "timestamp": s["timestamp"] + pd.Timedelta(milliseconds=1), "ingested_at": s["ingested_at"],
        "kafka_partition": s["kafka_partition"], "kafka_offset": s["kafka_offset"]})
    _write_raw(lake, "inventory_update", day, {1: inv, 2: inv.head(25)}, INV_SCHEMA)  # 25 replayed updates


def land_reference(lake, ev: pd.DataFrame) -> None:
    prices = ev.groupby("product_id").agg(name=("description", "last"), price=("unit_price", "median")).reset_index()
    prices = prices[~prices["product_id"].isin(NOT_IN_REFERENCE)]
    products = pd.DataFrame({
        "product_id": prices["product_id"], "product_name": prices["name"], "category": "giftware",
        "sub_category": "home", "brand": "UCI", "supplier": "UCI supplier",
        "unit_cost": (prices["price"] * 0.6).round(2), "unit_price": prices["price"], "shelf_life_days": 3650,
        "reorder_point": 20, "storage_capacity": 5000})
    countries = sorted(ev["country"].unique())
    stores = pd.DataFrame({"store_id": [store_id(c) for c in countries], "store_name": countries, "city": "",
                           "country": countries, "country_code": [COUNTRY_CODES.get(c, "GB") for c in countries],
                           "region": "EU"})
    lake.write_table(pa.Table.from_pandas(products, preserve_index=False), lake.settings.lake_raw_bucket, "reference/products/products.parquet")
    lake.write_table(pa.Table.from_pandas(stores, preserve_index=False), lake.settings.lake_raw_bucket, "reference/stores/stores.parquet")


# ---------------------------------------------------------------------------- independent truth --
def raw_files(lake, event_type: str, day: dt.date) -> pd.DataFrame:
    """Every Parquet file of the raw partition, read one by one with pyarrow (no etl.star_schema code)."""
    part = f"{lake.settings.lake_raw_bucket}/{event_type}/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"
    files = lake.list_files(part)
    return pd.concat([pq.read_table(f, filesystem=lake.fs).to_pandas() for f in files], ignore_index=True)


def truth_sales(lake, day: dt.date) -> pd.DataFrame:
    df = raw_files(lake, "sales_transaction", day).drop_duplicates("transaction_id")
    df["revenue"] = [Decimal(int(q)) * Decimal(repr(float(p))) for q, p in zip(df["quantity"], df["unit_price"])]
    return df


def star(client, db: str, sql: str) -> pd.DataFrame:
    return client.query_df(sql.replace("{db}", db))


def table_fingerprint(client, db: str) -> dict:
    """Row count and column sums of every star-schema table (dims read FINAL)."""
    fp = {}
    for t, cols, final in (("fact_sales", "sum(quantity), sum(revenue), sum(cost), sum(profit), sum(is_return)", ""),
                           ("fact_inventory", "sum(closing_stock), sum(reorder_point), sum(safety_stock), "
                                              "sum(is_carried_forward), sum(units_sold), sum(units_received)", ""),
                           ("dim_product", "sum(product_key % 1000003), sum(unit_cost), sum(is_known)", "FINAL"),
                           ("dim_store", "sum(store_key % 1000003), sum(is_known)", "FINAL"),
                           ("dim_date", "sum(date_key), sum(is_holiday), sum(length(holiday_countries))", "FINAL")):
        fp[t] = client.query(f"SELECT count(), {cols} FROM {db}.{t} {final}").result_rows[0]
        fp[t + "_rows_raw"] = client.query(f"SELECT count() FROM {db}.{t}").result_rows[0][0] if not final else None
    return fp


# ------------------------------------------------------------------------------------- fixtures --
@pytest.fixture(scope="module")
def etl_dag(native_stack, tmp_path_factory):
    """Airflow metadata DB (SQLite) in a temp AIRFLOW_HOME, and the daily_etl DAG object."""
    from ops.airflow import DAGS_FOLDER, configure_in_process

    configure_in_process(tmp_path_factory.mktemp("airflow-home"), native_stack)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER / "daily_etl.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["daily_etl"]
    for t in dag.tasks:  # an unexpected error fails at once here instead of waiting for retry delays
        t.retries = 0
    return dag


@pytest.fixture(scope="module")
def landed(native_stack, uci_days):
    from core.lake import Lake

    lake = Lake(native_stack)
    land_reference(lake, uci_days)
    for i, d in enumerate((DAY1, DAY2, DAY3)):
        land_day(lake, uci_days, d, seed=i + 1)
    return lake


def run(dag, day: dt.date):
    from airflow.utils.state import DagRunState

    dr = dag.test(logical_date=dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc))
    return dr, dr.state == DagRunState.SUCCESS


# ---------------------------------------------------------------------------------------- tests --
def test_daily_etl_reconciles_with_lake_and_is_idempotent(etl_dag, landed, native_stack):
    from core.clickhouse import get_client

    client, db, lake = get_client(native_stack), native_stack.clickhouse_database, landed
    for d in (DAY1, DAY2):
        dr, ok = run(etl_dag, d)
        assert ok, f"daily_etl {d} ended {dr.state}"

    demand_by_day = {}  # the oracle's demand per (store_id, product_id): units sold less same-day cancellations
    for d in (DAY1, DAY2):
        dk = int(d.strftime("%Y%m%d"))
        truth = truth_sales(lake, d)
        sold_d = truth[truth["quantity"] > 0].groupby(["store_id", "product_id"])["quantity"].sum()
        canc_d = pd.Series(cancelled_units(truth, ["store_id", "product_id"], time="timestamp"), dtype="float64")
        demand_by_day[d] = sold_d.astype("float64").sub(canc_d.reindex(sold_d.index, fill_value=0.0))
        raw_rows = len(raw_files(lake, "sales_transaction", d))
        assert raw_rows > len(truth) > 500  # replayed duplicates exist and were dropped
        got = star(client, db, f"SELECT count() n, sum(quantity) units, sumIf(quantity, quantity < 0) ret, "
                               f"countIf(is_return = 1) n_ret, toString(sum(revenue)) rev FROM {{db}}.fact_sales "
                               f"WHERE date_key = {dk}").iloc[0]
        assert got["n"] == len(truth)
        assert got["units"] == truth["quantity"].sum()
        assert got["ret"] == truth.loc[truth.quantity < 0, "quantity"].sum() < 0
        assert got["n_ret"] == (truth["quantity"] < 0).sum()
        assert Decimal(got["rev"]) == sum(truth["revenue"], Decimal(0))  # exact, to the 1/10000
        # per store x SKU units and revenue through the dimensions' natural keys
        per = star(client, db, f"""
            SELECT s.store_id, p.sku, sum(f.quantity) AS units, toString(sum(f.revenue)) AS rev
            FROM {{db}}.fact_sales f
            JOIN (SELECT * FROM {{db}}.dim_product FINAL) p ON p.product_key = f.product_key
            JOIN (SELECT * FROM {{db}}.dim_store FINAL) s ON s.store_key = f.store_key
            WHERE f.date_key = {dk} GROUP BY s.store_id, p.sku""").rename(columns={"sku": "product_id"}) \
            .set_index(["store_id", "product_id"])
        exp = truth.groupby(["store_id", "product_id"]).agg(units=("quantity", "sum"), rev=("revenue", "sum"))
        assert len(per) == len(exp)
        joined = exp.join(per, how="inner", rsuffix="_star")
        assert len(joined) == len(exp)
        assert (joined["units"] == joined["units_star"]).all()
        assert (joined["rev"] == joined["rev_star"].map(Decimal)).all()
        # demand_daily (the forecasts' demand): units sold less the orders the same customer cancelled that day,
        # against the independent matching of the lake's lines (the real log cancels 2 such lines on DAY1)
        dem = star(client, db, f"""
            SELECT s.store_id, p.sku AS product_id, d.units_sold, d.units_cancelled, d.units
            FROM {{db}}.demand_daily d
            JOIN (SELECT * FROM {{db}}.dim_product FINAL) p ON p.product_key = d.product_key
            JOIN (SELECT * FROM {{db}}.dim_store FINAL) s ON s.store_key = d.store_key
            WHERE d.date_key = {dk}""").set_index(["store_id", "product_id"])
        cancelled = cancelled_units(truth, ["store_id", "product_id"], time="timestamp")
        assert {k: int(v) for k, v in dem["units_cancelled"].items() if v} == cancelled
        assert (sum(cancelled.values()) > 0) == (d == DAY1)
        sold = truth[truth["quantity"] > 0].groupby(["store_id", "product_id"])["quantity"].sum()
        assert (dem["units_sold"] == sold.reindex(dem.index, fill_value=0)).all()
        assert (dem["units"] == dem["units_sold"] - dem["units_cancelled"]).all()
        # cost = quantity * unit_cost of the product master data (NULL for SKUs without it), profit = revenue - cost
        ref = lake.read_table(lake.settings.lake_raw_bucket, "reference/products").to_pandas().set_index("product_id")["unit_cost"]
        known = truth[truth["product_id"].isin(ref.index)]
        exp_cost = sum((Decimal(int(q)) * Decimal(repr(float(ref[p]))) for q, p in
                        zip(known["quantity"], known["product_id"])), Decimal(0))
        c = star(client, db, f"SELECT toString(sum(cost)) total_cost, "
                             f"toString(sumIf(revenue, cost IS NOT NULL) - sum(profit)) rc, "
                             f"countIf(cost IS NULL) n_null FROM {{db}}.fact_sales WHERE date_key = {dk}").iloc[0]
        assert Decimal(c["total_cost"]) == exp_cost
        assert Decimal(c["rc"]) == exp_cost  # profit = revenue - cost, line by line
        assert c["n_null"] == (~truth["product_id"].isin(ref.index)).sum() > 0

    # fact_inventory: last new_quantity of the day; store x SKU without an update carried forward
    order = ["timestamp", "kafka_offset"]  # same store x SKU -> same Kafka partition: offset breaks ties
    inv1 = raw_files(lake, "inventory_update", DAY1).drop_duplicates("inventory_id").sort_values(order, kind="stable")
    inv2 = raw_files(lake, "inventory_update", DAY2).drop_duplicates("inventory_id").sort_values(order, kind="stable")
    close1 = inv1.groupby(["store_id", "product_id"])["new_quantity"].last()
    close2 = inv2.groupby(["store_id", "product_id"])["new_quantity"].last()
    exp2 = pd.concat([close2, close1[~close1.index.isin(close2.index)]])
    fi = star(client, db, """
        SELECT f.date_key AS date_key, s.store_id AS store_id, p.sku AS product_id, f.closing_stock AS closing_stock,
               f.is_carried_forward AS is_carried_forward, f.safety_stock AS safety_stock,
               f.reorder_point AS rop
        FROM {db}.fact_inventory f
        JOIN (SELECT * FROM {db}.dim_product FINAL) p ON p.product_key = f.product_key
        JOIN (SELECT * FROM {db}.dim_store FINAL) s ON s.store_key = f.store_key""")
    got1 = fi[fi.date_key == 20110824].set_index(["store_id", "product_id"])["closing_stock"]
    got2 = fi[fi.date_key == 20110825].set_index(["store_id", "product_id"])
    assert {k: int(v) for k, v in got1.items()} == {k: int(v) for k, v in close1.items()}
    assert {k: int(v) for k, v in got2["closing_stock"].items()} == {k: int(v) for k, v in exp2.items()}
    assert got2["is_carried_forward"].sum() == (~close1.index.isin(close2.index)).sum() > 0
    # safety stock = z(SERVICE_LEVEL) x sigma of daily demand over the window (here DAY1..DAY2, the days loaded; a
    # day without demand counts 0) x sqrt(LEAD_TIME_DAYS), recomputed from the lake for every store x SKU row
    from statistics import NormalDist

    both = pd.concat(demand_by_day, axis=1).reindex(got2.index).fillna(0.0)
    z = NormalDist().inv_cdf(native_stack.service_level)
    want_ss = z * both.std(axis=1, ddof=1) * np.sqrt(native_stack.lead_time_days)
    np.testing.assert_allclose(got2["safety_stock"].astype("float64").to_numpy(), want_ss.to_numpy(), rtol=1e-6,
                               atol=1e-6)
    assert (want_ss > 0).sum() > 10 and (want_ss == 0).sum() > 0  # both kinds of rows are checked
    # reorder point from the events, else carried, else the product master data; SKUs without master
    # data and without an event reorder point stay NULL
    assert (got2["rop"].dropna() == 20).all()
    assert set(got2[got2["rop"].isna()].index.get_level_values("product_id")) <= NOT_IN_REFERENCE

    # dim_date: the calendar year, with the England & Wales bank holiday of 29 Aug 2011
    dd = star(client, db, "SELECT date_key, is_holiday, is_weekend, day_of_week FROM {db}.dim_date FINAL "
                          "WHERE date_key IN (20110824, 20110827, 20110829)").set_index("date_key")
    assert dd.loc[20110829, "is_holiday"] == 1 and dd.loc[20110827, "is_weekend"] == 1
    assert dd.loc[20110824, "is_holiday"] == 0 and dd.loc[20110824, "day_of_week"] == 3

    runs = star(client, db, "SELECT date_key, status FROM {db}.etl_runs")
    assert set(runs[runs.status == "success"].date_key) == {20110824, 20110825}

    # re-running both dates leaves every table unchanged
    before = table_fingerprint(client, db)
    for d in (DAY1, DAY2):
        assert run(etl_dag, d)[1]
    assert table_fingerprint(client, db) == before
    runs = star(client, db, "SELECT date_key, status FROM {db}.etl_runs")
    assert (runs.status == "success").sum() == 4  # etl_runs is the audit log: one row per run

    # fact_sales_daily (the dashboards' daily grain) equals fact_sales aggregated, after the re-runs too
    daily = star(client, db, "SELECT date_key, sum(units_sold) AS u, sum(net_units) AS net, sum(pos_lines) AS n "
                             "FROM {db}.fact_sales_daily GROUP BY date_key ORDER BY date_key")
    lines = star(client, db, "SELECT date_key, sumIf(quantity, quantity > 0) AS u, sum(quantity) AS net, count() AS n "
                             "FROM {db}.fact_sales GROUP BY date_key ORDER BY date_key")
    assert daily.values.tolist() == lines.values.tolist() and len(daily) == 2
    # backfilling history: a day before the first loaded one, without any sales, loads too
    early = DAY1 - dt.timedelta(days=3)
    assert run(etl_dag, early)[1]
    runs = star(client, db, "SELECT date_key, status FROM {db}.etl_runs")
    assert int(early.strftime("%Y%m%d")) in set(runs[runs.status == "success"].date_key)


def test_quality_check_fails_loudly_on_late_data(etl_dag, landed, native_stack):
    """A file that lands in the day's raw partition after the load makes the star schema disagree with
    the lake: the quality check fails with LakeChangedError (the lake changed during the run: retried, not failed
    fast as bad data) and records why; a full re-run repairs it."""
    from airflow.utils.state import TaskInstanceState

    from etl import star_schema as etl
    from core.clickhouse import get_client

    client, db, lake = get_client(native_stack), native_stack.clickhouse_database, landed
    assert run(etl_dag, DAY3)[1]
    late = raw_files(lake, "sales_transaction", DAY3).head(3).copy()
    late["transaction_id"] = late["transaction_id"] + "-late"
    late["quantity"] = 7
    lake.write_table(pa.Table.from_pandas(late[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                     lake.settings.lake_raw_bucket, "sales_transaction/year=2011/month=08/day=26/batch-99.parquet")

    with pytest.raises(etl.LakeChangedError) as err:
        etl.quality_check(DAY3)
    msg = str(err.value)
    assert "2011-08-26" in msg and "batch-99.parquet" in msg
    assert "rows" in msg and "units_net" in msg and "revenue" in msg

    # through Airflow: keep the stale load (mark build_facts/load success), run the check: LakeChangedError, then
    # the retry builds the day again (build_facts' spark-submit), loads it and reconciles. Before, the retry only
    # repeated the check and failed the same way (try 2 FAILED, the late lines never loaded by this run).
    qc = etl_dag.get_task("quality_check")
    qc.retries, qc.retry_delay, qc.retry_exponential_backoff = 1, dt.timedelta(0), False
    try:
        dr = etl_dag.test(logical_date=dt.datetime(2011, 8, 26, tzinfo=dt.timezone.utc),
                          mark_success_pattern="build_facts|load")
    finally:
        qc.retries = 0
    ti = next(t for t in dr.get_task_instances() if t.task_id == "quality_check")
    assert (ti.state, ti.try_number) == (TaskInstanceState.SUCCESS, 2)   # retried, and the retry rebuilt the day
    runs = star(client, db, "SELECT status, message, fact_sales_rows FROM {db}.etl_runs WHERE date_key = 20110826 "
                            "ORDER BY finished_at")
    failed = runs[runs.status == "failed"]
    assert len(failed) == 2 and failed["message"].str.contains("deduplicated lake has").all()
    assert runs.iloc[-1]["status"] == "success" and runs.iloc[-1]["fact_sales_rows"] == len(truth_sales(lake, DAY3))
    n = client.query("SELECT count() FROM {db}.fact_sales WHERE date_key = 20110826".replace("{db}", db)).result_rows[0][0]
    assert n == len(truth_sales(lake, DAY3)) == len(truth_sales(lake, DAY3).query("~transaction_id.str.endswith('-late')")) + 3

    # a full run afterwards changes nothing and reconciles
    assert run(etl_dag, DAY3)[1]
    n = client.query("SELECT count() FROM {db}.fact_sales WHERE date_key = 20110826".replace("{db}", db)).result_rows[0][0]
    assert n == len(truth_sales(lake, DAY3))


def test_contract_violation_fails_transform_fast(etl_dag, landed, native_stack):
    """A raw line breaking the contract (quantity 0) fails the run in the Spark job (build_facts) at once,
    without retries, with a clear reason."""
    from airflow.utils.state import TaskInstanceState

    day = dt.date(2011, 8, 28)
    bad = raw_files(landed, "sales_transaction", DAY3).head(2).copy()
    bad["timestamp"] = pd.Timestamp("2011-08-28 10:00", tz="UTC")
    bad["quantity"] = [0, 1]
    _write_raw(landed, "sales_transaction", day, {1: bad}, SALES_SCHEMA)
    facts = etl_dag.get_task("build_facts")
    facts.retries = 2   # as deployed: the bad-data failure must not be retried (a retry would wait 2 min here)
    try:
        dr, ok = run(etl_dag, day)
    finally:
        facts.retries = 0
    assert not ok
    states = {t.task_id: (t.state, t.try_number) for t in dr.get_task_instances()}
    assert states["build_facts"] == (TaskInstanceState.FAILED, 1)
    assert states["load"][0] == TaskInstanceState.UPSTREAM_FAILED


def test_rerun_with_a_late_inventory_update_rebuilds_the_later_days(etl_dag, landed, native_stack):
    """An inventory update of DAY1 that lands after DAY1..DAY3 were loaded (a store x SKU without updates on DAY2
    and DAY3) and a re-run of DAY1: the later days' carried-forward stock follows it, and every later partition
    equals what a reload in date order builds."""
    from core.clickhouse import get_client
    from etl import star_schema as etl

    client, db, lake = get_client(native_stack), native_stack.clickhouse_database, landed
    loaded = set(star(client, db, "SELECT DISTINCT date_key FROM {db}.fact_inventory").date_key)
    for d in (DAY1, DAY2, DAY3):
        if etl.date_key(d) not in loaded:
            assert run(etl_dag, d)[1]
    # a store x SKU updated on DAY1 only (independently of the ETL: the raw files)
    keys = {d: set(map(tuple, raw_files(lake, "inventory_update", d)[["store_id", "product_id"]].values))
            for d in (DAY1, DAY2, DAY3)}
    key = sorted(keys[DAY1] - keys[DAY2] - keys[DAY3])[0]
    inv1 = raw_files(lake, "inventory_update", DAY1)
    old = int(inv1[(inv1.store_id == key[0]) & (inv1.product_id == key[1])].sort_values(
        ["timestamp", "kafka_offset"])["new_quantity"].iloc[-1])
    late = inv1.head(1).copy()
    late[["inventory_id", "store_id", "product_id"]] = ["inv-late-1", key[0], key[1]]
    late["new_quantity"], late["quantity_change"] = old + 1234, 1234
    late["reason"] = "RESTOCK"   # a receipt: fact_inventory.units_received (since 2026-12-07, migration 093)
    mine = inv1[(inv1.store_id == key[0]) & (inv1.product_id == key[1])]
    received = int(mine.loc[mine["reason"] == "RESTOCK", "quantity_change"].sum())
    late["timestamp"] = pd.Timestamp(f"{DAY1} 23:30", tz="UTC")
    late["kafka_offset"] = 10**9
    path = (lake.settings.lake_raw_bucket, "inventory_update/year=2011/month=08/day=24/batch-97.parquet")
    sk, pk = etl.surrogate_key(key[0]), etl.surrogate_key(key[1])

    def stock() -> dict:
        df = star(client, db, f"SELECT date_key, closing_stock, is_carried_forward, units_received "
                              f"FROM {{db}}.fact_inventory WHERE store_key = {sk} AND product_key = {pk} ORDER BY date_key")
        return {int(r.date_key): (int(r.closing_stock), int(r.is_carried_forward), int(r.units_received))
                for r in df.itertuples()}

    assert stock() == {20110824: (old, 0, received), 20110825: (old, 1, 0), 20110826: (old, 1, 0)}
    lake.write_table(pa.Table.from_pandas(late[INV_SCHEMA.names], schema=INV_SCHEMA, preserve_index=False), *path)
    try:
        assert run(etl_dag, DAY1)[1]
        # the late receipt counts on its day only (carried days received nothing)
        assert stock() == {20110824: (old + 1234, 0, received + 1234), 20110825: (old + 1234, 1, 0),
                           20110826: (old + 1234, 1, 0)}
        cascaded = table_fingerprint(client, db)["fact_inventory"]
        # the same partitions built in date order, each day loaded after the one before it
        for d in (DAY2, DAY3):
            out = etl.load(d, migrate=False)
            assert out["later_inventory_days"] == (1 if d == DAY2 else 0) and not out["later_inventory_not_rebuilt"]
        assert table_fingerprint(client, db)["fact_inventory"] == cascaded
    finally:
        lake.fs.delete_file(lake.path(*path))
    assert run(etl_dag, DAY1)[1]   # the late file gone: the stock of every day is back
    assert stock() == {20110824: (old, 0, received), 20110825: (old, 1, 0), 20110826: (old, 1, 0)}


def test_a_rechecked_day_whose_build_fails_does_not_stop_the_night(etl_dag, landed, native_stack):
    """A raw file of 0 bytes lands in DAY1's sales partition after DAY1 was loaded: the re-check of night DAY2 builds
    DAY1 again and the Spark job raised EtlError ("raw file(s) of 0 bytes") for it, exit 3, build_facts failed without
    retry (old code): DAY2 was never built nor loaded, and so every night while DAY1 stayed in the 7-day window. Now
    DAY1 is left out and recorded 'failed' ("re-check build failed: ..."), DAY2 is built, loaded and reconciled, and
    check_gaps fails the run naming DAY1 and the reason; removing the file and a backfill of DAY1 load it."""
    from airflow.utils.state import TaskInstanceState

    from core.clickhouse import get_client
    from etl import star_schema as etl

    client, db, lake = get_client(native_stack), native_stack.clickhouse_database, landed
    assert run(etl_dag, DAY1)[1]
    path = (lake.settings.lake_raw_bucket, "sales_transaction/year=2011/month=08/day=24/batch-bad.parquet")
    with lake.fs.open_output_stream(lake.path(*path)):
        pass   # 0 bytes
    try:
        assert etl.days_to_recheck(lake, DAY2, native_stack.etl_recheck_days) == [DAY1]
        dr, ok = run(etl_dag, DAY2)
        states = {t.task_id: t.state for t in dr.get_task_instances()}
        assert states == {"build_facts": TaskInstanceState.SUCCESS, "load": TaskInstanceState.SUCCESS,   # old code:
                          "quality_check": TaskInstanceState.SUCCESS,                   # build_facts FAILED, the
                          "check_gaps": TaskInstanceState.FAILED}                       # rest upstream_failed
        assert not ok   # the run's outcome shows it
        ok2, why = etl.etl_load_status(DAY2, client, db)
        assert ok2, why   # the night's own day loaded and reconciled: training goes on
        ok1, why = etl.etl_load_status(DAY1, client, db)
        assert not ok1 and "re-check build failed: EtlError: raw file(s) of 0 bytes" in why
        with pytest.raises(etl.LoadGapError, match=r"2011-08-24 at load .*re-check build failed") as gap:
            etl.check_load_gaps(DAY2)
        assert gap.value.days == [DAY1]
    finally:
        lake.delete_file(*path)
    assert run(etl_dag, DAY1)[1]   # the backfill check_gaps prints, once the file is gone
    assert etl.loaded_days(client, db, DAY1, DAY2) == {DAY1, DAY2}
    assert etl.check_load_gaps(DAY2) == []
    # the night DAY2 run again (check_gaps failed it: a backfill of DAY2, make nightly DATE=DAY2 BACKFILL=1, a cleared
    # load task): DAY1's listing equals its loaded_manifest, so the build does not re-check it. The record of its
    # failed re-check build (written by night DAY2) stayed (old code: removed only by a later re-check of DAY1), and
    # this load recorded DAY1 'failed' again with the stale reason: DAY1 not loaded, check_gaps failed the run
    dr, ok = run(etl_dag, DAY2)
    states = {t.task_id: t.state for t in dr.get_task_instances()}
    assert ok, states
    assert etl.loaded_days(client, db, DAY1, DAY2) == {DAY1, DAY2}
    assert not lake.exists(*etl._staging(DAY1, etl.RECHECK_ERROR))   # removed by the backfill's build of DAY1


# ------------------------------------------------------------- small scenarios in a fresh database --
D1, D2, D3, D4 = dt.date(2024, 3, 29), dt.date(2024, 3, 30), dt.date(2024, 3, 31), dt.date(2024, 4, 1)


@contextlib.contextmanager
def fresh_database():
    """A fresh ClickHouse database and fresh lake buckets on the module's services for one scenario (migrations
    applied); the module's settings are restored afterwards. Yields (settings, lake, client)."""
    from core.clickhouse import get_client, migrate
    from core.lake import Lake, get_lake
    from core.settings import get_settings

    tag = uuid.uuid4().hex[:8]
    env = {"CLICKHOUSE_DATABASE": f"test_{tag}", "LAKE_RAW_BUCKET": f"raw-{tag}",
           "LAKE_MODELS_BUCKET": f"models-{tag}", "LAKE_FEATURES_BUCKET": f"features-{tag}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear(), get_lake.cache_clear()
    try:
        s = get_settings()
        lake = Lake(s)
        lake.ensure_buckets()
        migrate(s)
        yield s, lake, get_client(s)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        get_settings.cache_clear(), get_lake.cache_clear()


def _ts(day: dt.date, h: int = 0) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime(day.year, day.month, day.day, h, tzinfo=dt.timezone.utc))


def small_sales(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["transaction_id", "store_id", "product_id", "quantity", "unit_price",
                                     "timestamp", "customer_id", "payment_method", "invoice_id", "kafka_partition",
                                     "kafka_offset"])
    df["ingested_at"] = df["timestamp"] + pd.Timedelta(seconds=2)
    return df


def small_inv(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["inventory_id", "store_id", "product_id", "quantity_change", "new_quantity",
                                     "reason", "reorder_point", "timestamp", "kafka_partition", "kafka_offset"])
    df["reorder_point"] = pd.array(df["reorder_point"], dtype="Int32")
    df["ingested_at"] = df["timestamp"] + pd.Timedelta(seconds=2)
    return df


def land_small(lake) -> None:
    """Four days: sales on D1 and D3, inventory updates on D1..D3, none on D4 (an empty day: 4 carried rows)."""
    products = pd.DataFrame({"product_id": ["P1", "P2"], "product_name": ["a", "b"], "category": "x",
                             "sub_category": "y", "brand": "z", "supplier": "w", "unit_cost": [0.6, 2.0],
                             "unit_price": [1.1, 3.0], "shelf_life_days": 30, "reorder_point": [10, 5],
                             "storage_capacity": 100})
    stores = pd.DataFrame({"store_id": ["S1", "S2"], "store_name": ["one", "two"], "city": "",
                           "country": ["UK", "France"], "country_code": ["GB", "FR"], "region": "EU"})
    for name, df in (("products", products), ("stores", stores)):
        lake.write_table(pa.Table.from_pandas(df, preserve_index=False), lake.settings.lake_raw_bucket,
                         f"reference/{name}/{name}.parquet")
    sales = {D1: small_sales([["t1", "S1", "P1", 3, 1.10, _ts(D1, 9), "c1", "CARD", "i1", 0, 1],
                              ["t2", "S1", "P2", 2, 1.25, _ts(D1, 12), "c2", "CARD", "i2", 0, 2],
                              ["t3", "S2", "P2", 1, 3.333, _ts(D1, 13), None, None, None, 1, 1]]),
             D3: small_sales([["t8", "S1", "P1", 4, 1.25, _ts(D3, 10), "c1", "CARD", "i8", 0, 10],
                              ["t9", "S2", "P2", -1, 3.0, _ts(D3, 11), "c3", "CASH", "C9", 1, 10]])}
    inv = {D1: small_inv([["u1", "S1", "P1", 50, 50, "OPENING", 10, _ts(D1, 1), 0, 1],
                          ["u2", "S1", "P2", 9, 9, "OPENING", None, _ts(D1, 2), 0, 2],
                          ["u3", "S2", "P2", 30, 30, "OPENING", None, _ts(D1, 3), 1, 1],
                          ["u4", "S2", "P1", 20, 20, "OPENING", None, _ts(D1, 4), 1, 2]]),
           D2: small_inv([["u9", "S1", "P2", 6, 15, "RESTOCK", None, _ts(D2, 9), 0, 3]]),
           D3: small_inv([["u10", "S1", "P1", -4, 44, "SALE", None, _ts(D3, 10), 0, 11]])}
    for days, event_type, schema in ((sales, "sales_transaction", SALES_SCHEMA), (inv, "inventory_update", INV_SCHEMA)):
        for d, df in days.items():
            _write_raw(lake, event_type, d, {1: df}, schema)


def run_pandas(day: dt.date, **load_kw) -> dict:
    """The DAG's steps for ``day`` in this process with the pandas build (extract + transform)."""
    from etl import star_schema as etl

    started = dt.datetime.now(dt.timezone.utc)
    etl.extract(day), etl.transform(day)
    return {"load": etl.load(day, migrate=False, **load_kw), "qc": etl.quality_check(day, started)}


def nightly_pandas(lake, s, day: dt.date) -> dict:
    """The DAG's steps with the pandas build: build (re-check window, then the day), load_recorded, quality checks."""
    from etl import star_schema as etl

    for d in etl.days_to_recheck(lake, day, s.etl_recheck_days):
        etl.extract(d), etl.transform(d)
    etl.extract(day), etl.transform(day)
    loaded = etl.load_recorded(day)
    started = dt.datetime.fromisoformat(loaded["started_at"])
    for d in loaded["rechecked_days"]:
        etl.quality_check(dt.date.fromisoformat(d), started)
    return {**loaded, "qc": etl.quality_check(day, started)}


def star_tables(client, db: str) -> dict:
    """Every fact row of the scenario (sorted), for comparisons of whole tables."""
    out = {}
    for t, cols in (("fact_sales", "date_key, sale_id, quantity, toString(revenue)"),
                    ("fact_sales_daily", "date_key, store_key, product_key, units_sold, units_returned, revenue"),
                    ("fact_inventory", "date_key, store_key, product_key, closing_stock, is_carried_forward, "
                                       "reorder_point, round(safety_stock, 9), units_sold, units_returned")):
        out[t] = sorted(tuple(r) for r in client.query(f"SELECT {cols} FROM {db}.{t}").result_rows)
    return out


def test_rerun_of_a_day_whose_raw_partition_is_gone_is_refused(native_stack):
    """Re-running a loaded day whose raw sales partition disappeared used to replace its fact_sales lines with
    nothing (D3: 2 lines -> 0) and pass the quality check; now the load stops with a clear EtlError, the rows stay
    and the run is recorded failed; allow_missing_raw empties the day on purpose."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2, D3):
            run_pandas(d)
        before = star_tables(client, db)
        assert sum(r[0] == 20240331 for r in before["fact_sales"]) == 2
        lake.delete_dir(lake.settings.lake_raw_bucket, "sales_transaction/year=2024/month=03/day=31")
        with pytest.raises(etl.EtlError, match=r"refusing to load 2024-03-31: .*sales_transaction/year=2024/month=03"
                                               r"/day=31 has no Parquet file but fact_sales holds 2 row"):
            etl.extract(D3), etl.transform(D3)
            etl.load_recorded(D3)
        assert star_tables(client, db) == before
        runs = star(client, db, "SELECT status, stage, message FROM {db}.etl_runs WHERE date_key = 20240331 "
                                "ORDER BY finished_at")
        assert runs.iloc[-1]["status"] == "failed" and "refusing to load" in runs.iloc[-1]["message"]
        # the inventory partition gone too: its own (not carried) rows are named as well
        lake.delete_dir(lake.settings.lake_raw_bucket, "inventory_update/year=2024/month=03/day=31")
        with pytest.raises(etl.EtlError, match="fact_inventory holds 1 row"):
            run_pandas(D3)
        # on purpose: the day is emptied (its stock carried from D2) and reconciles with the empty lake
        out = run_pandas(D3, allow_missing_raw=True)
        assert out["load"]["fact_sales_rows"] == 0 and out["qc"]["rows"] == 0
        assert client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key = 20240331").result_rows[0][0] == 0


def test_load_order_does_not_change_the_tables(native_stack):
    """A backfill newest-first (D4, D3, D1, D2) left D4 (no updates that day, loaded while nothing was stocked)
    with 0 fact_inventory rows instead of the 4 carried from D3: later days were chosen from fact_inventory rows.
    Every load order now gives the same tables as the date order."""
    orders = [(D1, D2, D3, D4), (D4, D3, D1, D2), (D2, D4, D1, D3)]
    tables = []
    for order in orders:
        with fresh_database() as (s, lake, client):
            land_small(lake)
            for d in order:
                run_pandas(d)
            tables.append(star_tables(client, s.clickhouse_database))
    d4 = [r for r in tables[0]["fact_inventory"] if r[0] == 20240401]
    assert len(d4) == 4 and all(r[4] == 1 for r in d4)   # every store x SKU carried into the empty day
    for order, t in zip(orders[1:], tables[1:]):
        for name in t:
            assert t[name] == tables[0][name], (order, name)


def test_late_events_of_a_loaded_day_are_reloaded_by_the_next_runs(native_stack):
    """Events landing in D1's raw partition after D1's run were never loaded (D1 stayed at 3 lines while the lake
    held 4, etl_runs said success). The next run's re-check sees D1's listing changed since it was loaded, builds
    and loads it again and reconciles it; a file landing during a run (after the build) is a LakeChangedError
    (retryable, not an EtlError), and the following run reloads that day."""
    from etl import star_schema as etl

    def nightly(day: dt.date) -> dict:
        return nightly_pandas(lake, s, day)

    def d1_sales() -> tuple:
        n, rev = client.query(f"SELECT count(), toString(sum(revenue)) FROM {s.clickhouse_database}.fact_sales "
                              "WHERE date_key = 20240329").result_rows[0]
        return n, Decimal(rev)

    with fresh_database() as (s, lake, client):
        assert s.etl_recheck_days == 7
        land_small(lake)
        assert nightly(D1)["rechecked_days"] == []
        assert d1_sales() == (3, Decimal("9.1330"))
        late = small_sales([["t10", "S1", "P2", 2, 3.5, _ts(D1, 22), "c9", "CARD", "i10", 1, 50]])
        late["ingested_at"] = _ts(D2, 9)   # delivered after D1's 08:00 run
        lake.write_table(pa.Table.from_pandas(late[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                         *etl.raw_partition(lake, etl.SALES, D1), "batch-3.parquet")
        assert etl.days_to_recheck(lake, D2, 7) == [D1] and etl.days_to_recheck(lake, D2, 0) == []
        out = nightly(D2)
        assert out["rechecked_days"] == ["2024-03-29"]
        assert d1_sales() == (4, Decimal("16.1330"))
        assert etl.reconcile(etl.lake_sales_totals(lake, D1), etl.star_sales_totals(client, s.clickhouse_database, D1)) == []
        last = star(client, s.clickhouse_database, "SELECT status, fact_sales_rows FROM {db}.etl_runs "
                                                   "WHERE date_key = 20240329 ORDER BY finished_at DESC LIMIT 1")
        assert (last.iloc[0]["status"], last.iloc[0]["fact_sales_rows"]) == ("success", 4)
        assert nightly(D3)["rechecked_days"] == []   # nothing changed since: nothing reloaded

        # a file landing in D3 during its run (after the build and load): retryable, not bad data
        etl.extract(D3), etl.transform(D3)
        loaded = etl.load_recorded(D3)
        late2 = small_sales([["t11", "S2", "P1", 1, 1.3, _ts(D3, 21), "c8", "CARD", "i11", 0, 51]])
        lake.write_table(pa.Table.from_pandas(late2[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                         *etl.raw_partition(lake, etl.SALES, D3), "batch-4.parquet")
        with pytest.raises(etl.LakeChangedError, match=r"2024-03-31 changed during the run .*batch-4.parquet.*"
                                                      r"deduplicated lake has 3") as err:
            etl.quality_check(D3, dt.datetime.fromisoformat(loaded["started_at"]))
        assert not isinstance(err.value, etl.EtlError)
        out = nightly(D4)
        assert out["rechecked_days"] == ["2024-03-31"]
        assert client.query(f"SELECT count() FROM {s.clickhouse_database}.fact_sales "
                            "WHERE date_key = 20240331").result_rows[0][0] == 3


def test_a_day_loaded_before_the_listings_existed_is_reloaded_once(native_stack):
    """D1 loaded by the ETL before raw listings were staged (no raw_manifest / loaded_manifest), then a late line
    lands in it: the next runs skipped D1 for good (fact_sales stayed at 3 lines while the lake held 4, the
    re-check never ran for it). Now D2's run reloads it once (4 lines, reconciled), and from then on it is
    re-checked like any day: D3's run leaves it alone."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        run_pandas(D1)
        for name in (etl.RAW_MANIFEST, etl.LOADED_MANIFEST):   # as the ETL left a day before the listings
            lake.delete_file(*etl._staging(D1, name))
        late = small_sales([["t10", "S1", "P2", 2, 3.5, _ts(D1, 22), "c9", "CARD", "i10", 1, 50]])
        lake.write_table(pa.Table.from_pandas(late[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                         *etl.raw_partition(lake, etl.SALES, D1), "batch-3.parquet")
        out = nightly_pandas(lake, s, D2)
        assert out["rechecked_days"] == ["2024-03-29"]
        n = client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key = 20240329").result_rows[0][0]
        assert n == len(raw_files(lake, "sales_transaction", D1).drop_duplicates("transaction_id")) == 4
        assert etl.read_manifest(lake, D1, etl.LOADED_MANIFEST) == etl.raw_manifest(lake, D1)
        assert nightly_pandas(lake, s, D3)["rechecked_days"] == []


def test_a_run_for_a_date_after_today_is_refused(native_stack):
    """A run whose logical date is in the future (a manual trigger with a wrong date) loaded an empty day and
    succeeded (fact_sales 0 rows, etl_runs 'success'); now load refuses it naming the date, and nothing is loaded."""
    from etl import star_schema as etl

    future = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=2)
    with fresh_database() as (s, lake, client):
        land_small(lake)
        with pytest.raises(etl.EtlError, match=f"refusing to load {future.isoformat()}: the date is after today"):
            run_pandas(future)
        assert client.query(f"SELECT count() FROM {s.clickhouse_database}.etl_runs "
                            f"WHERE status = 'success'").result_rows[0][0] == 0


def test_training_and_predictions_wait_for_the_etl_of_their_date(etl_dag, native_stack):
    """Nothing held demand_forecast_training / batch_predictions until that night's daily_etl had run: a training run
    for a date the ETL had not loaded (late, retried, failed) went on with the history up to the day before and
    succeeded. Both DAGs now start with wait_for_etl (EtlLoadedSensor): done only when the latest etl_runs row of
    the run's date is a reconciled success; an asset-triggered predictions run (no logical date) passes."""
    from airflow.dag_processing.dagbag import DagBag

    from etl import star_schema as etl
    from ops.airflow import DAGS_FOLDER

    sensors = {}
    for dag_id, first in (("demand_forecast_training", "extract_demand"), ("batch_predictions", "predict")):
        bag = DagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py"))
        assert not bag.import_errors, bag.import_errors
        sensors[dag_id] = bag.dags[dag_id].get_task("wait_for_etl")
        assert sensors[dag_id].downstream_task_ids == {first} and sensors[dag_id].mode == "reschedule"

    def done(dag_id: str, day: dt.date | None) -> bool:
        at = None if day is None else dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
        return sensors[dag_id].poke({"logical_date": at})

    with fresh_database() as (s, lake, client):
        land_small(lake)
        assert not done("demand_forecast_training", D1)   # nothing loaded
        run_pandas(D1)
        assert done("demand_forecast_training", D1) and done("batch_predictions", D1)
        assert not done("demand_forecast_training", D2) and not done("batch_predictions", D2)
        assert etl.etl_load_status(D2)[1].startswith("etl_runs has no daily_etl run for 2024-03-30")
        # a later failed attempt (e.g. a retry under way) makes the date incomplete again, until it succeeds
        etl.record_run(client, s.clickhouse_database, D1, "failed", "load", dt.datetime.now(dt.timezone.utc),
                       message="EtlError('boom')")
        assert not done("demand_forecast_training", D1)
        assert "failed at load" in etl.etl_load_status(D1)[1]
        run_pandas(D1)
        assert done("demand_forecast_training", D1)
        assert done("batch_predictions", None)   # asset-triggered: its training run waited


def test_days_never_loaded_behind_the_catch_up_start_are_reported(native_stack):
    """An Airflow outage longer than ETL_CATCHUP_DAYS left its oldest nights unloaded with no warning (the
    scheduler's catch-up starts ETL_CATCHUP_DAYS before today: with the last run on 11-10 and the scheduler back
    on 12-05, 11-11..11-20 got no run). Here D2 (inventory only) and D3 (sales) have raw events and no run, D4 is
    loaded: check_load_gaps (daily_etl's check_gaps task) fails naming both days and the backfill commands, loads
    nothing, and passes once they are loaded. Days before the first loaded one are not a gap. A line of D1 landing
    9 days late (after the 7-day re-check window) was never loaded and nothing said so: now it is named too."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        assert etl.check_load_gaps(D1) == []   # nothing loaded before D1: no gap
        run_pandas(D1)
        run_pandas(D4)
        # the lake's own listing, independently: the days with a raw Parquet file between D1 and D4
        with_raw = {d for d in (D2, D3) for t in ("sales_transaction", "inventory_update")
                    if any(f.endswith(".parquet") for f in lake.list_files(*etl.raw_partition(lake, t, d)))}
        assert with_raw == {D2, D3}
        with pytest.raises(etl.LoadGapError, match=r"2 day\(s\) with raw events before 2024-04-01 were never loaded"
                                                   r".*2024-03-30\.\.2024-03-31.*make nightly DATE=2024-03-31 "
                                                   r"BACKFILL=1.*--from-date 2024-03-30 --to-date 2024-03-31T23:59:59"
                           ) as err:
            etl.check_load_gaps(D4)
        assert isinstance(err.value, etl.EtlError) and err.value.days == [D2, D3]
        assert client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key IN (20240330, 20240331)"
                            ).result_rows[0][0] == 0   # the check loads nothing
        assert etl.check_load_gaps(D2) == []   # only D1 before D2, loaded
        run_pandas(D3)
        with pytest.raises(etl.LoadGapError, match=r"1 day\(s\) .*: 2024-03-30\. Load"):
            etl.check_load_gaps(D4)
        run_pandas(D2)
        assert etl.check_load_gaps(D4) == []
        # events of D1 arriving more than ETL_RECHECK_DAYS (7) late: no re-check reloads D1 any more, and nothing
        # said so (the late line never reached fact_sales); now named, with the command to re-run it
        late = small_sales([["t10", "S1", "P2", 2, 3.5, _ts(D1, 22), "c9", "CARD", "i10", 1, 50]])
        lake.write_table(pa.Table.from_pandas(late[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                         *etl.raw_partition(lake, etl.SALES, D1), "batch-3.parquet")
        far = D1 + dt.timedelta(days=9)
        assert etl.days_to_recheck(lake, far, s.etl_recheck_days) == []   # outside the window
        with pytest.raises(etl.LoadGapError, match=r"1 loaded day\(s\) older than the ETL_RECHECK_DAYS=7 re-check "
                                                   r"window .*: 2024-03-29\. Load them .*--reprocess-behavior completed"):
            etl.check_load_gaps(far)
        assert etl.check_load_gaps(D1 + dt.timedelta(days=7)) == []   # still in the window: the re-check's job
        run_pandas(D1)
        assert etl.check_load_gaps(far) == []


@contextlib.contextmanager
def _gap_check_days(n: int, recheck: int | None = None):
    """ETL_GAP_CHECK_DAYS=n (and ETL_RECHECK_DAYS=recheck when given: the settings want n above it) for the block
    (settings re-read), restored after."""
    from core.settings import get_settings

    env = {"ETL_GAP_CHECK_DAYS": str(n), **({} if recheck is None else {"ETL_RECHECK_DAYS": str(recheck)})}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        get_settings.cache_clear()


def test_gap_check_looks_back_only_etl_gap_check_days(native_stack):
    """check_gaps re-listed every raw partition and re-read every loaded day's manifest since the first loaded day
    each night (1,095 days: 7,716 lake calls, growing with history). Now only ETL_GAP_CHECK_DAYS days back: a gap
    (D2 never loaded) or a late change (a line of D1 landing after the re-check window) is named while it is within
    that many days of the run's date, and no longer looked at after."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        land_small(lake)
        run_pandas(D1), run_pandas(D3)
        assert any(f.endswith(".parquet") for f in lake.list_files(*etl.raw_partition(lake, etl.INVENTORY, D2)))
        with _gap_check_days(3, recheck=2):   # D2 + 3: D2 is 3 days back, named; D2 + 4: out of the look-back
            with pytest.raises(etl.LoadGapError, match=r"2024-03-30\. Load") as err:
                etl.check_load_gaps(D2 + dt.timedelta(days=3))
            assert err.value.days == [D2]
            assert etl.check_load_gaps(D2 + dt.timedelta(days=4)) == []
            assert "ETL_GAP_CHECK_DAYS=3 days" in str(err.value)   # the message says how long it is named
        run_pandas(D2)
        late = small_sales([["t10", "S1", "P2", 2, 3.5, _ts(D1, 22), "c9", "CARD", "i10", 1, 50]])
        lake.write_table(pa.Table.from_pandas(late[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                         *etl.raw_partition(lake, etl.SALES, D1), "batch-3.parquet")
        far = D1 + dt.timedelta(days=9)
        assert etl.stale_days(lake, [D1]) == [D1]   # independently: D1's raw listing changed since its load
        with _gap_check_days(9):
            with pytest.raises(etl.LoadGapError, match=r"1 loaded day\(s\) .*: 2024-03-29\. Load"):
                etl.check_load_gaps(far)
        with _gap_check_days(8):
            assert etl.check_load_gaps(far) == []


def test_a_loaded_day_whose_last_run_failed_is_a_gap(native_stack):
    """A day loaded, then re-run and failed, was "not loaded" for etl_load_status / ml's loaded_through (latest run
    by finished_at) but "loaded" for check_gaps (any past success): no gap named, nothing reloaded it. Now one rule
    (etl.loaded_days) for all: check_gaps names it."""
    from etl import star_schema as etl
    from ml.pipeline import loaded_through

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2, D3):
            run_pandas(d)
        assert etl.check_load_gaps(D4) == []
        etl.record_run(client, db, D2, "failed", "quality_check", dt.datetime.now(dt.timezone.utc), message="x")
        assert etl.etl_load_status(D2, client, db)[0] is False   # the training / prediction DAGs' rule
        assert loaded_through(client, db, D1 - dt.timedelta(days=1), D3) == D1   # stops before D2
        with pytest.raises(etl.LoadGapError, match=r"1 day\(s\) with raw events .*: 2024-03-30; 1 day\(s\) are not "
                                                   r"loaded because their latest run failed: 2024-03-30 at "
                                                   r"quality_check .*: x\. Load") as err:
            etl.check_load_gaps(D4)   # with its failure's stage and message (since 2026-12-07)
        assert err.value.days == [D2]
        assert etl.loaded_days(client, db, D1, D3) == {D1, D3}
        run_pandas(D2)
        etl.record_run(client, db, D2, "success", "quality_check", dt.datetime.now(dt.timezone.utc))
        assert etl.check_load_gaps(D4) == []


def test_a_reload_stopped_by_a_clickhouse_outage_leaves_the_day_not_loaded(native_stack, monkeypatch):
    """The ClickHouse endpoint stopped in the middle of a re-load of a reconciled day (D1: its late line's new
    fact_sales partition written, fact_inventory not yet), then back. The failed row could not be written (ClickHouse
    was down), so etl_runs' latest row of D1 stayed the earlier success: the training / prediction DAGs' sensor,
    loaded_through and check_gaps took the partly replaced day (4 fact_sales lines, fact_sales_daily and
    fact_inventory of the old 3) as loaded and reconciled. Now the load's "begun" row, written before the day's first
    write, is D1's latest: not loaded, named by check_gaps; the re-run completes with exact counts."""
    from ops import local

    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2, D3):
            nightly_pandas(lake, s, d)
        assert etl.etl_load_status(D1, client, db)[0]
        late = small_sales([["t10", "S1", "P2", 2, 3.5, _ts(D1, 22), "c9", "CARD", "i10", 1, 50]])
        lake.write_table(pa.Table.from_pandas(late[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                         *etl.raw_partition(lake, etl.SALES, D1), "batch-3.parquet")
        etl.extract(D1), etl.transform(D1)
        build_inventory = etl.build_inventory

        def stop_then_build(*args, **kwargs):   # after fact_sales and fact_sales_daily, before fact_inventory
            local.rpc(native_stack).supervisor.stopProcess("clickhouse", True)
            return build_inventory(*args, **kwargs)

        monkeypatch.setattr(etl, "build_inventory", stop_then_build)
        try:
            with pytest.raises(Exception) as err:
                etl.load_recorded(D1, dag_run_id="manual__reload")
            assert not isinstance(err.value, etl.EtlError)   # an outage: retried by Airflow, not bad data
        finally:
            monkeypatch.undo()
            local.start("clickhouse", native_stack)

        def d1(sql: str) -> int:
            return int(client.query(sql.format(db=db)).result_rows[0][0])

        # partly replaced: the new line is in fact_sales, fact_inventory still counts the 3 old lines' units
        assert d1("SELECT count() FROM {db}.fact_sales WHERE date_key = 20240329") == 4
        assert d1("SELECT sum(units_sold) FROM {db}.fact_inventory WHERE date_key = 20240329") == 6
        ok, why = etl.etl_load_status(D1, client, db)
        assert not ok and "begun at load" in why   # old code: True, "loaded and reconciled"
        assert etl.loaded_days(client, db, D1, D3) == {D2, D3}
        with pytest.raises(etl.LoadGapError) as gaps:
            etl.check_load_gaps(D3)
        assert gaps.value.days == [D1]
        # the re-run (Airflow's retry) completes: exact, nothing doubled
        out = nightly_pandas(lake, s, D1)
        assert out["qc"]["rows"] == 4 and etl.etl_load_status(D1, client, db)[0]
        assert d1("SELECT count() FROM {db}.fact_sales") == 6
        assert d1("SELECT sum(units_sold) FROM {db}.fact_inventory WHERE date_key = 20240329") == 8
        assert d1("SELECT sum(units_sold) FROM {db}.fact_sales_daily WHERE date_key = 20240329") == 8
        assert etl.check_load_gaps(D3) == []


def test_a_reload_stopped_by_a_minio_outage_fails_naming_the_object_and_the_rerun_is_exact(native_stack, monkeypatch):
    """MinIO stopped in the middle of a re-load of D1 (after D1's partitions, while the later days' inventory is
    rebuilt from their staged files), then back: the load fails with the lake's error naming the staged object it
    could not read (an outage, retried by Airflow, not bad data), D1 is not loaded (its failed row), D2 and D3 are
    unchanged, and the re-run completes with exact counts."""
    from ops import local

    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2, D3):
            nightly_pandas(lake, s, d)
        before = star_tables(client, db)
        build_inventory = etl.build_inventory

        def stop_then_build(*args, **kwargs):   # D1's own inventory: the later days' staged files are read next
            monkeypatch.setattr(etl, "build_inventory", build_inventory)
            local.rpc(native_stack).supervisor.stopProcess("minio", True)
            return build_inventory(*args, **kwargs)

        monkeypatch.setattr(etl, "build_inventory", stop_then_build)
        try:
            with pytest.raises(OSError, match=r"staging/daily_etl/date=2024-03-30/"):
                etl.load_recorded(D1, dag_run_id="manual__reload")
        finally:
            monkeypatch.undo()
            local.start("minio", native_stack)
        ok, why = etl.etl_load_status(D1, client, db)
        assert not ok and "failed at load" in why
        assert star_tables(client, db) == before
        assert nightly_pandas(lake, s, D1)["qc"]["rows"] == 3 and etl.etl_load_status(D1, client, db)[0]
        assert star_tables(client, db) == before


def test_two_loads_of_a_day_at_once_do_not_double_it(native_stack):
    """Two loads of the same day at once (`make nightly DATE=...` while the scheduler's run loads it, or a backfill
    with its default max_active_runs rebuilding a later day's inventory that day's own run also writes). Both went
    through one shared `<table>_staging` table: B's staging insert between A's "drop the staging partition" and A's
    REPLACE PARTITION doubled D1's fact_sales (3 lines -> 6; B's drop between A's insert and replace made A's replace
    fail, code 36). Each replacement now has its own staging table: 3 lines. The interleaving is forced: when A
    inserts, B has dropped and inserted and not yet replaced (it is stopped there)."""
    from core.clickhouse import get_client

    from etl import star_schema as etl

    class Stopped(Exception):
        pass

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        run_pandas(D1)
        lines = client.query_df(f"SELECT * FROM {db}.fact_sales WHERE date_key = 20240329")
        assert len(lines) == 3
        other = get_client(s)   # the other load's own connection

        class LoadB:   # stops before its REPLACE PARTITION
            def __getattr__(self, name):
                return getattr(other, name)

            def command(self, sql, *a, **kw):
                if "REPLACE PARTITION" in sql:
                    raise Stopped(sql)
                return other.command(sql, *a, **kw)

        class LoadA:   # B runs up to its REPLACE PARTITION just before A's staging insert
            def __getattr__(self, name):
                return getattr(client, name)

            def insert_df(self, table, df, **kw):
                with pytest.raises(Stopped):
                    etl._replace_partition(LoadB(), db, "fact_sales", 20240329, lines)
                return client.insert_df(table, df, **kw)

        etl._replace_partition(LoadA(), db, "fact_sales", 20240329, lines)
        assert client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key = 20240329").result_rows[0][0] == 3
        etl._replace_partition(other, db, "fact_sales", 20240329, lines)   # B's replace, when it goes on
        assert run_pandas(D1)["qc"]["rows"] == 3
        left = client.query(f"SELECT name FROM system.tables WHERE database = '{db}' AND name LIKE '%staging%' "
                            "AND name NOT IN ('fact_sales_staging', 'fact_sales_daily_staging', "
                            "'fact_inventory_staging')").result_rows
        assert left == []   # each call drops its own staging table


def test_a_rechecked_day_of_a_run_whose_load_failed_is_reconciled_by_the_retry(native_stack, monkeypatch):
    """Night D4 re-checks D1 (a late line landed): D1's 'begun' row, D1 reloaded (its loaded_manifest written), then
    D4's 'begun' and a ClickHouse outage in D4's load (the failed row unwritable). Airflow's retry of the load task
    found D1's loaded_manifest equal to its raw_manifest, so rechecked_days was [] and no quality check reconciled D1:
    its latest row stayed 'begun' for good (not loaded; check_gaps named it every night with a backfill command whose
    --reprocess-behavior failed skipped it). Now the retry loads the window's 'begun' days again and returns them as
    re-checked: D1 reconciled (4 lines, 8 units) and loaded."""
    from ops import local

    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2, D3):
            nightly_pandas(lake, s, d)
        late = small_sales([["t10", "S1", "P2", 2, 3.5, _ts(D1, 22), "c9", "CARD", "i10", 1, 50]])
        lake.write_table(pa.Table.from_pandas(late[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                         *etl.raw_partition(lake, etl.SALES, D1), "batch-3.parquet")
        for d in etl.days_to_recheck(lake, D4, s.etl_recheck_days) + [D4]:   # build_facts: D1 rebuilt, then D4
            etl.extract(d), etl.transform(d)
        build_inventory = etl.build_inventory

        def stop_in_d4(client_, db_, day, *args, **kwargs):   # D1's load done; D4's own inventory
            if day == D4:
                local.rpc(native_stack).supervisor.stopProcess("clickhouse", True)
            return build_inventory(client_, db_, day, *args, **kwargs)

        monkeypatch.setattr(etl, "build_inventory", stop_in_d4)
        try:
            with pytest.raises(Exception):
                etl.load_recorded(D4, dag_run_id="scheduled__d4")
        finally:
            monkeypatch.undo()
            local.start("clickhouse", native_stack)
        assert etl.rebuilt_days(lake, D4, s.etl_recheck_days) == []   # D1's loaded_manifest was written
        assert not etl.etl_load_status(D1, client, db)[0]              # D1: begun
        # Airflow's retry of the load task (build_facts is not re-run), then quality_check as the DAG runs it
        loaded = etl.load_recorded(D4, dag_run_id="scheduled__d4")
        assert loaded["rechecked_days"] == ["2024-03-29"]   # old code: []
        started = dt.datetime.fromisoformat(loaded["started_at"])
        assert etl.quality_check(D1, started)["rows"] == 4
        etl.quality_check(D4, started)
        assert etl.loaded_days(client, db, D1, D4) == {D1, D2, D3, D4}
        assert etl.check_load_gaps(D4) == []
        assert int(client.query(f"SELECT sum(units_sold) FROM {db}.fact_inventory WHERE date_key = 20240329"
                                ).result_rows[0][0]) == 8


def test_a_load_begun_after_another_loads_start_is_the_days_latest_run(native_stack):
    """Two overlapping loads of D1: A starts at 08:00, B writes its 'begun' at 08:05, A's quality check writes
    'success' at 08:10 (finished last), B is killed at 08:12 after replacing fact_sales, before fact_inventory. The
    latest row was taken by finished_at: A's success, so D1 counted as loaded over B's partial state (training, the
    sensors, check_gaps). Now the latest is the row of the run that started last (B's 'begun'): not loaded, named by
    check_gaps with a backfill command that redoes it (--reprocess-behavior completed: D1's own run succeeded)."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2):
            nightly_pandas(lake, s, d)
        a = dt.datetime.now(dt.timezone.utc)
        b = a + dt.timedelta(minutes=5)
        etl.record_run(client, db, D1, etl.BEGUN, "load", a, dag_run_id="manual__a")
        etl.record_run(client, db, D1, etl.BEGUN, "load", b, dag_run_id="manual__b")
        qc = etl.quality_check(D1, a, dag_run_id="manual__a")   # A's check: 'success', written after B's 'begun'
        assert qc["rows"] == 3
        ok, why = etl.etl_load_status(D1, client, db)
        assert not ok and "begun at load" in why   # old code: True (A's success finished last)
        assert etl.loaded_days(client, db, D1, D2) == {D2}
        with pytest.raises(etl.LoadGapError, match=r"--from-date 2024-03-29 .*--reprocess-behavior completed") as gap:
            etl.check_load_gaps(D3)
        assert gap.value.days == [D1]
        # B's retry (its own started_at) reconciles the day again
        etl.quality_check(D1, b, dag_run_id="manual__b")
        assert etl.etl_load_status(D1, client, db)[0] and etl.check_load_gaps(D3) == []


def test_a_check_retried_after_its_own_reload_records_under_that_reloads_start(native_stack):
    """A quality check retry that loaded the day again (its lake changed) writes 'begun' at S2, then fails before
    recording; the next attempt finds nothing stale and has only the load task's S1 (XCom). Its 'success' was
    recorded at S1, below its own run's 'begun' at S2: the day stayed not loaded (check_gaps, the training sensor).
    Now it is recorded at its own run's latest 'begun'; another run's later 'begun' (a load running now) still wins."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2):
            nightly_pandas(lake, s, d)
        s1 = dt.datetime.now(dt.timezone.utc)
        s2 = s1 + dt.timedelta(minutes=5)
        etl.record_run(client, db, D1, etl.BEGUN, "load", s1, dag_run_id="scheduled__r")
        etl.record_run(client, db, D1, etl.BEGUN, "load", s2, dag_run_id="scheduled__r")   # attempt 2's reload
        assert etl.own_latest_begun(client, db, D1, "scheduled__r") == s2.replace(microsecond=s2.microsecond // 1000 * 1000)
        assert etl.own_latest_begun(client, db, D1, "other") is None and etl.own_latest_begun(client, db, D1, "") is None
        etl.quality_check(D1, s1, dag_run_id="scheduled__r")   # attempt 3, with the load task's S1
        ok, why = etl.etl_load_status(D1, client, db)
        assert ok, why   # old code: False, 'begun at load' (the success sorted at S1 < S2)
        assert etl.loaded_days(client, db, D1, D2) == {D1, D2}
        etl.record_run(client, db, D1, etl.BEGUN, "load", s2 + dt.timedelta(minutes=5), dag_run_id="manual__b")
        etl.quality_check(D1, s1, dag_run_id="scheduled__r")   # another run's load under way stays the latest
        assert not etl.etl_load_status(D1, client, db)[0]


def _land_late_line_of_d1(lake) -> None:
    """A sales line of D1 landing after D1 was loaded (its raw listing changes: the re-check rebuilds D1)."""
    from etl import star_schema as etl

    late = small_sales([["t10", "S1", "P2", 2, 3.5, _ts(D1, 22), "c9", "CARD", "i10", 1, 50]])
    lake.write_table(pa.Table.from_pandas(late[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                     *etl.raw_partition(lake, etl.SALES, D1), "batch-3.parquet")


def _built_night_d4_rechecking_d1(lake, s) -> None:
    """D1..D3 loaded and reconciled, then a late line of D1, and night D4's build: D1 rebuilt, then D4 (not loaded)."""
    from etl import star_schema as etl

    land_small(lake)
    for d in (D1, D2, D3):
        nightly_pandas(lake, s, d)
    _land_late_line_of_d1(lake)
    for d in etl.days_to_recheck(lake, D4, s.etl_recheck_days) + [D4]:   # build_facts: D1 rebuilt, then D4
        etl.extract(d), etl.transform(d)


def test_a_retry_of_the_load_does_not_reload_the_rechecked_days_the_first_attempt_loaded(native_stack, monkeypatch):
    """Night D4 re-checks D1 (a late line): attempt 1 loads D1, then D4's load fails (ClickHouse unreachable: not
    bad data, retried). The retry loaded every 'begun' day of the window again: D1 a second time (loads
    [D1, D4, D1, D4], one extra reload per re-checked day and retry). Now a day whose load finished (its 'begun' row
    of stage load_done) is only reconciled: loads [D1, D4, D4]; D1 still reconciled (4 lines) and loaded."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        _built_night_d4_rechecking_d1(lake, s)
        calls, real_load = [], etl.load

        def counting_load(day, *args, **kwargs):
            calls.append(day)
            if day == D4 and calls.count(D4) == 1:
                raise ConnectionError("ClickHouse unreachable")   # attempt 1's load of D4
            return real_load(day, *args, **kwargs)

        monkeypatch.setattr(etl, "load", counting_load)
        with pytest.raises(ConnectionError):
            etl.load_recorded(D4, dag_run_id="scheduled__d4")
        loaded = etl.load_recorded(D4, dag_run_id="scheduled__d4")   # Airflow's retry of the load task
        monkeypatch.undo()
        assert calls == [D1, D4, D4]   # old code: [D1, D4, D1, D4]
        assert loaded["rechecked_days"] == ["2024-03-29"] and loaded["failed_rechecks"] == {}
        started = dt.datetime.fromisoformat(loaded["started_at"])
        assert etl.quality_check(D1, started, dag_run_id="scheduled__d4")["rows"] == 4   # the late line is in
        etl.quality_check(D4, started, dag_run_id="scheduled__d4")
        assert etl.loaded_days(client, db, D1, D4) == {D1, D2, D3, D4}
        assert int(client.query(f"SELECT sum(units_sold) FROM {db}.fact_inventory WHERE date_key = 20240329"
                                ).result_rows[0][0]) == 8


def test_a_rechecked_day_whose_load_done_row_failed_is_reloaded_by_the_retry(native_stack, monkeypatch):
    """Night D4 re-checks D1 (a late line): D1's load finishes (its loaded_manifest written), then the insert of its
    load_done row fails (a ClickHouse blip) while the best-effort 'failed' row goes in: D1's latest row was 'failed'
    at load (old code), so the retry neither reloaded it (rebuilt_days: listing = loaded_manifest; not 'begun') nor
    reconciled it: D1 stayed not loaded. Now nothing is recorded for a day whose load returned: its 'begun' row stays
    its latest, and the retry loads and reconciles it."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        _built_night_d4_rechecking_d1(lake, s)
        real_record = etl.record_run
        blips = []

        def flaky_record(client_, db_, day, status, stage, *args, **kwargs):
            if stage == etl.LOAD_DONE and day == D1 and not blips:
                blips.append(day)
                raise ConnectionError("ClickHouse blip")   # the load_done insert of D1, once
            return real_record(client_, db_, day, status, stage, *args, **kwargs)

        monkeypatch.setattr(etl, "record_run", flaky_record)
        with pytest.raises(ConnectionError):
            etl.load_recorded(D4, dag_run_id="scheduled__d4")
        assert blips == [D1]
        latest = etl.latest_runs(client, db, D1, D1)[D1]
        assert (latest.status, latest.stage) == (etl.BEGUN, "load")   # old code: ('failed', 'load')
        loaded = etl.load_recorded(D4, dag_run_id="scheduled__d4")   # Airflow's retry of the load task
        monkeypatch.undo()
        assert loaded["rechecked_days"] == ["2024-03-29"]   # old code: []
        started = dt.datetime.fromisoformat(loaded["started_at"])
        assert etl.quality_check(D1, started, dag_run_id="scheduled__d4")["rows"] == 4   # the late line is in
        etl.quality_check(D4, started, dag_run_id="scheduled__d4")
        assert etl.loaded_days(client, db, D1, D4) == {D1, D2, D3, D4}   # old code: {D2, D3, D4}


def test_a_stuck_rechecked_day_is_recorded_failed_and_the_night_still_loads_its_own_day(native_stack):
    """D1's raw sales partition disappears after D1 was loaded (its listing changed: re-checked every night of the
    window) and its reload is refused every time (refuse_missing_raw: fact_sales holds 3 lines of it). That
    EtlError failed the whole night D4 (old code: load_recorded raised 'refusing to load 2024-03-29'), and D5, ...
    while D1 stayed in the 7-day window: D4 never loaded, training and predictions waited. Now D1 is recorded
    'failed' with the reason, D4 and D5 are loaded and reconciled, and check_gaps names D1 with the reason and a
    backfill command that re-runs it (--reprocess-behavior completed: D1's own run succeeded)."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2, D3):
            nightly_pandas(lake, s, d)
        lake.delete_dir(lake.settings.lake_raw_bucket, "sales_transaction/year=2024/month=03/day=29")
        assert etl.days_to_recheck(lake, D4, s.etl_recheck_days) == [D1]
        for night in (D4, D4 + dt.timedelta(days=1)):
            out = nightly_pandas(lake, s, night)   # old code: EtlError refusing to load 2024-03-29
            assert list(out["failed_rechecks"]) == ["2024-03-29"]
            assert "has no Parquet file but fact_sales holds 3 row" in out["failed_rechecks"]["2024-03-29"]
            assert out["rechecked_days"] == []
            ok, why = etl.etl_load_status(night, client, db)
            assert ok, why   # the night's own day is loaded and reconciled
            ok, why = etl.etl_load_status(D1, client, db)
            assert not ok and "failed at load" in why and "re-check load failed: EtlError: refusing" in why
            with pytest.raises(etl.LoadGapError, match=r"1 day\(s\) are not loaded because their latest run failed: "
                                                       r"2024-03-29 at load .*refusing to load 2024-03-29") as gap:
                etl.check_load_gaps(night)
            assert gap.value.days == [D1]
            assert "--from-date 2024-03-29 --to-date 2024-03-29T23:59:59 --max-active-runs 1 --reprocess-behavior " \
                   "completed" in str(gap.value)
        assert client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key = 20240329").result_rows[0][0] == 3
        assert etl.loaded_days(client, db, D1, D4 + dt.timedelta(days=1)) == {D2, D3, D4, D4 + dt.timedelta(days=1)}
        # the remedy of a day emptied on purpose: check_gaps quoted the reason cut at 200 characters, before its
        # remedy, and printed commands without the param, which re-ran D1 into the same refusal (old code: no
        # command with --dag-run-conf, "allow_missing_raw" nowhere in the message). Now named first, with the param
        msg = str(gap.value)
        assert "allow_missing_raw" in msg and msg.index("allow_missing_raw") < msg.index("refusing to load")
        cmd = re.search(r"`airflow backfill create --dag-id daily_etl --from-date 2024-03-29 --to-date "
                        r"2024-03-29T23:59:59 [^`]*--dag-run-conf '([^']*)'`", msg)
        assert cmd is not None, msg   # old code: None
        conf = json.loads(cmd.group(1))
        assert conf == {"allow_missing_raw": True}
        assert '"allow_missing_raw": Param(' in (Path(__file__).parents[1] / "dags" / "daily_etl.py").read_text()
        etl.extract(D1), etl.transform(D1)   # the backfill's run of D1 with that conf: D1 emptied, reconciled
        loaded = etl.load_recorded(D1, dag_run_id="backfill__d1", **conf)
        etl.quality_check(D1, dt.datetime.fromisoformat(loaded["started_at"]), dag_run_id="backfill__d1")
        assert client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key = 20240329").result_rows[0][0] == 0
        assert etl.check_load_gaps(D4 + dt.timedelta(days=2)) == []


def test_run_day_records_a_stuck_rechecked_day_failed_and_loads_its_own_day(native_stack):
    """The script path (etl.star_schema.run_day) as the DAG: D1's raw sales partition gone after it was loaded, its
    re-check reload refused. run_day(D4) raised that EtlError (old code): D4 never loaded. Now D1 is recorded
    'failed' with the reason and left out (its 3 lines kept), D4 is loaded and reconciled."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2, D3):
            etl.run_day(d, recheck_days=s.etl_recheck_days)
        lake.delete_dir(lake.settings.lake_raw_bucket, "sales_transaction/year=2024/month=03/day=29")
        out = etl.run_day(D4, recheck_days=s.etl_recheck_days)   # old code: EtlError refusing to load 2024-03-29
        assert list(out["failed_rechecks"]) == ["2024-03-29"] and out["rechecked"] == {}
        assert "refusing to load 2024-03-29" in out["failed_rechecks"]["2024-03-29"]
        ok, why = etl.etl_load_status(D1, client, db)
        assert not ok and "re-check failed: EtlError: refusing to load 2024-03-29" in why
        assert etl.loaded_days(client, db, D1, D4) == {D2, D3, D4}
        assert client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key = 20240329").result_rows[0][0] == 3


def test_the_backfill_command_reruns_a_day_whose_own_run_succeeded(native_stack):
    """D3 was loaded by its own run (scheduled__d3, succeeded); night D4's re-check of D3 then failed its quality
    check (a fact_sales line of D3 lost: DataQualityError, recorded 'failed'). check_gaps named D3 with
    `airflow backfill create ... --reprocess-behavior failed` (old code): Airflow's backfill re-runs only failed
    runs, so it skipped D3, whose run succeeded, and D3 stayed not loaded. Now every range is printed with
    --reprocess-behavior completed (every day named is not loaded, whatever its Airflow run's state)."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2, D3):
            etl.extract(d), etl.transform(d)
            loaded = etl.load_recorded(d, dag_run_id=f"scheduled__{d}")
            etl.quality_check(d, dt.datetime.fromisoformat(loaded["started_at"]), dag_run_id=f"scheduled__{d}")
        client.command(f"ALTER TABLE {db}.fact_sales DELETE WHERE date_key = 20240331 AND quantity < 0 "
                       "SETTINGS mutations_sync = 2")
        with pytest.raises(etl.DataQualityError):
            etl.quality_check(D3, dt.datetime.now(dt.timezone.utc), dag_run_id="scheduled__d4")
        assert etl.loaded_days(client, db, D1, D3) == {D1, D2}
        with pytest.raises(etl.LoadGapError) as gap:
            etl.check_load_gaps(D4)
        assert gap.value.days == [D3]
        assert re.findall(r"--from-date (\S+) .*?--reprocess-behavior (\w+)`", str(gap.value)) == [
            ("2024-03-31", "completed")]   # old code: [('2024-03-31', 'failed')]


def test_a_quality_check_by_hand_after_a_reload_stopped_half_way_is_refused(native_stack, monkeypatch):
    """A reload of D1 (a re-run with the lake unchanged, e.g. after an ETL fix) killed after fact_sales was replaced,
    before fact_inventory: its 'begun' row is D1's latest (not loaded). A quality check run by hand (no started_at: no
    load task's XCom) reconciled fact_sales with the lake and recorded 'success' stamped now, after the 'begun': D1
    counted as loaded over the unfinished load (old code: loaded_days {D1, D2}, no error). Now it is refused with an
    EtlError naming the unfinished load and nothing is recorded; once a load finished, a check by hand records under
    that load's started_at (the day's latest row's)."""
    from etl import star_schema as etl

    class Killed(BaseException):   # the worker killed: no 'failed' row can be written
        pass

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        for d in (D1, D2):
            nightly_pandas(lake, s, d)
        etl.extract(D1), etl.transform(D1)
        build_inventory = etl.build_inventory

        def killed(client_, db_, day, *args, **kwargs):
            raise Killed()

        monkeypatch.setattr(etl, "build_inventory", killed)
        with pytest.raises(Killed):
            etl.load_recorded(D1, dag_run_id="manual__reload")
        monkeypatch.setattr(etl, "build_inventory", build_inventory)
        assert not etl.etl_load_status(D1, client, db)[0]   # the unfinished load's 'begun' is the latest row
        rows_before = client.query(f"SELECT count() FROM {db}.etl_runs").result_rows[0][0]
        with pytest.raises(etl.EtlError, match=r"quality check of 2024-03-29 refused: no started_at .* a load that "
                                               r"began and never finished .* by run 'manual__reload'"):
            etl.quality_check(D1)   # old code: passed, 'success' recorded at now
        assert etl.loaded_days(client, db, D1, D2) == {D2}   # old code: {D1, D2}
        assert client.query(f"SELECT count() FROM {db}.etl_runs").result_rows[0][0] == rows_before
        loaded = etl.load_recorded(D1, dag_run_id="manual__reload2")   # the load again, finished (load_done)
        qc = etl.quality_check(D1)   # by hand: recorded under that load's started_at, after its rows
        assert qc["rows"] == 3 and etl.loaded_days(client, db, D1, D2) == {D1, D2}
        latest = etl.latest_runs(client, db, D1, D1)[D1]
        assert latest.status == "success"
        assert abs(latest.started_at - dt.datetime.fromisoformat(loaded["started_at"])) < dt.timedelta(milliseconds=1)

def test_orphan_staging_tables_older_than_the_bound_are_dropped_and_fresh_ones_kept(native_stack):
    """A load killed between creating its own staging table and dropping it leaves the table behind; the next
    replacement of the same table drops such tables older than STAGING_ORPHAN_HOURS (6 h) and never a younger one
    (a load still running). The orphan is aged by setting its metadata file's time 7 h back (system.tables'
    metadata_modification_time, which the sweep reads); the other table is 1 s old."""
    import os
    import time

    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        run_pandas(D1)
        old, fresh = "fact_sales_staging_20240329_0rphan00", "fact_sales_staging_20240329_runn1ng0"
        for n in (old, fresh):
            client.command(f"CREATE TABLE {db}.{n} AS {db}.fact_sales")
        path = client.query(f"SELECT metadata_path FROM system.tables WHERE database = '{db}' AND name = '{old}'"
                            ).result_rows[0][0]
        path = os.path.join(native_stack.clickhouse_chdb_path, path)   # relative to the server's data path
        back = time.time() - (etl.STAGING_ORPHAN_HOURS + 1) * 3600
        os.utime(path, (back, back))
        ages = dict(client.query(f"SELECT name, dateDiff('hour', metadata_modification_time, now()) FROM "
                                 f"system.tables WHERE database = '{db}' AND name IN ('{old}', '{fresh}')").result_rows)
        assert ages[old] >= etl.STAGING_ORPHAN_HOURS + 1 and ages[fresh] == 0   # the scenario holds
        lines = client.query_df(f"SELECT * FROM {db}.fact_sales WHERE date_key = 20240329")
        etl._replace_partition(client, db, "fact_sales", 20240329, lines)
        left = {r[0] for r in client.query(f"SELECT name FROM system.tables WHERE database = '{db}' "
                                           "AND startsWith(name, 'fact_sales_staging_')").result_rows}
        assert left == {fresh}   # the orphan dropped, the running load's kept, the call's own dropped after
        assert client.query(f"SELECT count() FROM {db}.fact_sales WHERE date_key = 20240329").result_rows[0][0] == 3


def test_gap_commands_are_one_per_range(native_stack):
    """The backfill command spanned the oldest to the newest named day (gaps D2 and D4 around loaded D3: BACKFILL=2,
    redoing D3; a late change a year back plus a gap last week: BACKFILL=~360). Now one command per range."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        land_small(lake)
        _write_raw(lake, "inventory_update", D4, {1: small_inv([["u11", "S1", "P2", 1, 16, "RESTOCK", None,
                                                                  _ts(D4, 9), 0, 12]])}, INV_SCHEMA)
        run_pandas(D1), run_pandas(D3)
        with pytest.raises(etl.LoadGapError) as err:
            etl.check_load_gaps(D4 + dt.timedelta(days=1))
        msg = str(err.value)
        assert err.value.days == [D2, D4]
        assert re.findall(r"make nightly DATE=(\S+) BACKFILL=(\d+)", msg) == [("2024-03-30", "0"), ("2024-04-01", "0")]
        assert re.findall(r"--from-date (\S+) --to-date (\S+?)T", msg) == [("2024-03-30", "2024-03-30"),
                                                                          ("2024-04-01", "2024-04-01")]
        # Airflow 3 runs one backfill per DAG at a time, its own max_active_runs (10) overrides the DAG's 1, and
        # "none" (its default) would not re-run a day whose last run failed, "failed" one whose run succeeded (until
        # 2026-12-07 printed here): days in order, every named day again
        assert re.findall(r"T23:59:59 --max-active-runs (\d+) --reprocess-behavior (\w+)`", msg) == [("1", "completed")] * 2


def test_a_misfiled_line_without_price_does_not_fail_the_quality_check(native_stack):
    """The lake totals checked nulls over the whole raw partition, before de-duplication and the day filter, while
    the build checks the day's de-duplicated lines: a D1 partition holding a misfiled D0 23:00 line with a null
    unit_price built fine (the line left out as misfiled) but the quality check raised "1 row(s) without
    unit_price", failing the day without retry. Now the same rows as the build; a null price on a D1 line still
    raises."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        land_small(lake)
        odd = small_sales([["t0", "S1", "P1", 1, None, _ts(D1 - dt.timedelta(days=1), 23), "c1", "CARD", "i0", 0, 9]])
        t = pa.Table.from_pandas(odd[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False)
        assert t.column("unit_price").null_count == 1
        lake.write_table(t, *etl.raw_partition(lake, etl.SALES, D1), "batch-7.parquet")
        out = run_pandas(D1)   # raised EtlError "1 row(s) without unit_price" in the quality check
        assert out["load"]["fact_sales_rows"] == 3 and etl.etl_load_status(D1)[0] is True
        tot = etl.lake_sales_totals(lake, D1)
        # independently: land_small's three D1 lines (3 x 1.10 + 2 x 1.25 + 1 x 3.333)
        assert (tot.raw_rows, tot.lines, tot.units_net, tot.revenue) == (4, 3, 6, Decimal("9.1330"))
        bad = small_sales([["t11", "S1", "P1", 1, None, _ts(D1, 20), "c1", "CARD", "i11", 0, 10]])
        lake.write_table(pa.Table.from_pandas(bad[SALES_SCHEMA.names], schema=SALES_SCHEMA, preserve_index=False),
                         *etl.raw_partition(lake, etl.SALES, D1), "batch-8.parquet")
        with pytest.raises(etl.EtlError, match=r"1 row\(s\) without unit_price"):
            etl.lake_sales_totals(lake, D1)


def _day_money(client, db: str, dk: int) -> tuple:
    """fact_sales revenue, cost, profit and fact_sales_daily cost of one date_key (exact strings)."""
    fs = client.query(f"SELECT toString(sum(revenue)), toString(sum(cost)), toString(sum(profit)) FROM {db}.fact_sales "
                      f"WHERE date_key = {dk}").result_rows[0]
    daily = client.query(f"SELECT round(sum(cost), 4) FROM {db}.fact_sales_daily WHERE date_key = {dk}").result_rows[0][0]
    return tuple(Decimal(v) for v in fs) + (Decimal(repr(daily)),)


@pytest.mark.parametrize("build", ["pandas", "dag"])
def test_a_rerun_after_a_cost_change_keeps_the_cost_of_its_day(native_stack, build, request):
    """Re-running D1 after P2's unit cost changed (2.0 -> 2.6 in the product master) recomputed D1 with the new cost:
    D1's cost went 7.8000 -> 9.6000 and its profit 1.3330 -> -0.4670, so a re-run rewrote history. The facts now
    take the cost of the product-master version valid on their day (a version history kept in the lake, a change
    valid from the UTC date it is first seen): D1 re-run keeps 7.8000 / 1.3330, whatever the build (pandas or
    Spark job of the DAG); dim_product shows the current cost (2.6), a day first built after the change gets it,
    and the quality check still reconciles D1 exactly."""
    from etl import star_schema as etl

    def build_and_load(day: dt.date):
        if build == "pandas":
            return run_pandas(day)
        dr, ok = run(request.getfixturevalue("etl_dag"), day)
        assert ok, f"daily_etl {day} ended {dr.state}"
        return {"qc": etl.star_sales_totals(client, db, day)}

    def p2_cost() -> float:
        return client.query(f"SELECT unit_cost FROM {db}.dim_product FINAL WHERE sku = 'P2'").result_rows[0][0]

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        build_and_load(D1)
        # independent truth from the raw lines and the landed master: cost = sum(quantity * unit_cost)
        lines = raw_files(lake, "sales_transaction", D1).drop_duplicates("transaction_id")
        cost_v1 = {"P1": Decimal("0.6"), "P2": Decimal("2.0")}
        revenue = sum(Decimal(int(q)) * Decimal(repr(float(p))) for q, p in zip(lines["quantity"], lines["unit_price"]))
        cost = sum(Decimal(int(q)) * cost_v1[p] for q, p in zip(lines["quantity"], lines["product_id"]))
        expected = (revenue, cost, revenue - cost, cost)
        assert _day_money(client, db, 20240329) == expected == (Decimal("9.1330"), Decimal("7.8000"),
                                                                Decimal("1.3330"), Decimal("7.8000"))
        products = pq.read_table(lake.path(lake.settings.lake_raw_bucket, "reference/products/products.parquet"),
                                 filesystem=lake.fs).to_pandas()
        products.loc[products["product_id"] == "P2", "unit_cost"] = 2.6
        lake.write_table(pa.Table.from_pandas(products, preserve_index=False), lake.settings.lake_raw_bucket,
                         "reference/products/products.parquet")
        from core.dagconf import utc_today

        day_before = utc_today()
        out = build_and_load(D1)                     # the re-run of D1 after the change
        day_after = utc_today()
        assert out["qc"]["rows"] == len(lines)       # reconciled with the lake
        assert _day_money(client, db, 20240329) == expected
        assert p2_cost() == 2.6                      # the dimension is current
        build_and_load(D1)                           # and again: idempotent
        assert _day_money(client, db, 20240329) == expected
        assert p2_cost() == 2.6
        # a day after the change was seen takes the new cost (today: the first day the change is valid on, the UTC
        # date of the re-run that saw it; read once after the runs, the date was the next day's for a re-run
        # finished just before midnight, and the versions below failed)
        hist = etl.reference_history(lake, "products")
        (today,) = hist.loc[(hist["product_id"] == "P2") & (hist["unit_cost"] == 2.6), "valid_from"]
        assert today in (day_before, day_after), (today, day_before, day_after)
        now = etl.reference_as_of(hist, today)
        assert now.set_index("product_id").loc["P2", "unit_cost"] == 2.6
        assert etl.reference_as_of(hist, D1).set_index("product_id").loc["P2", "unit_cost"] == 2.0
        assert etl.reference_as_of(hist, today - dt.timedelta(days=1)).set_index("product_id").loc["P2", "unit_cost"] == 2.0
        # the versions in ClickHouse (070_dim_history.sql), and D1's lines as of their day through them
        versions = client.query(f"SELECT unit_cost, valid_from, valid_to FROM {db}.dim_product_history FINAL "
                                "WHERE sku = 'P2' ORDER BY valid_from").result_rows
        assert versions == [(2.0, dt.date(1970, 1, 1), today - dt.timedelta(days=1)),
                            (2.6, today, dt.date(2149, 6, 6))]
        as_of = client.query(f"SELECT toString(sum(f.quantity * toDecimal64(h.unit_cost, 4))) FROM {db}.fact_sales f "
                             f"JOIN (SELECT * FROM {db}.dim_product_history FINAL) h ON h.product_key = f.product_key "
                             "AND toDate(f.event_time) BETWEEN h.valid_from AND h.valid_to "
                             "WHERE f.date_key = 20240329").result_rows[0][0]
        assert Decimal(as_of) == cost
        assert client.query(f"SELECT count() FROM {db}.dim_store_history FINAL").result_rows[0][0] == 2
        runs = client.query(f"SELECT status FROM {db}.etl_runs WHERE date_key = 20240329").result_rows
        assert runs and all(r[0] in ("success", etl.BEGUN) for r in runs)   # no run failed


@pytest.mark.parametrize("build", ["pandas", "dag"])
def test_a_rerun_after_a_reorder_point_change_keeps_the_reorder_point_of_its_day(native_stack, build, request):
    """D1's inventory updates of P2 (S1: 9 units, S2: 30) and of P1 at S2 carry no reorder point, so fact_inventory
    takes the product master's (P2: 5, P1: 10). The master then changes P2's to 50 and P1's to 1, and D1 is re-run:
    before, the fallback read the current master (the staged dim_product): D1's P2 rows became 50 and below the
    reorder point (9 <= 50), P1 at S2 1; the facts of a day rewritten by a later change. Now the fallback is the
    version valid on D1 (dim_product_history), the same for the pandas build and the DAG's Spark build, and a
    second re-run changes nothing."""
    from etl import star_schema as etl

    def build_and_load(day: dt.date):
        if build == "pandas":
            return run_pandas(day)
        dr, ok = run(request.getfixturevalue("etl_dag"), day)
        assert ok, f"daily_etl {day} ended {dr.state}"

    def d1_inventory() -> dict:
        return {(st, sku): (rp, below) for st, sku, rp, below in client.query(
            f"SELECT s.store_id, p.sku, f.reorder_point, f.below_reorder_point FROM {db}.fact_inventory f "
            f"JOIN (SELECT * FROM {db}.dim_product FINAL) p ON p.product_key = f.product_key "
            f"JOIN (SELECT * FROM {db}.dim_store FINAL) s ON s.store_key = f.store_key "
            "WHERE f.date_key = 20240329").result_rows}

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        build_and_load(D1)
        # the landed master (land_small) and D1's events: S1/P1 has its own 10 from its update u1
        expected = {("S1", "P1"): (10, 0), ("S1", "P2"): (5, 0), ("S2", "P2"): (5, 0), ("S2", "P1"): (10, 0)}
        assert d1_inventory() == expected
        products = pq.read_table(lake.path(lake.settings.lake_raw_bucket, "reference/products/products.parquet"),
                                 filesystem=lake.fs).to_pandas()
        products["reorder_point"] = products["product_id"].map({"P1": 1, "P2": 50})
        lake.write_table(pa.Table.from_pandas(products, preserve_index=False), lake.settings.lake_raw_bucket,
                         "reference/products/products.parquet")
        build_and_load(D1)                           # the re-run of D1 after the change
        assert d1_inventory() == expected
        build_and_load(D1)                           # and again: idempotent
        assert d1_inventory() == expected
        # the current master is in dim_product, and the version valid today is the new one
        today = dt.datetime.now(dt.timezone.utc).date()
        assert client.query(f"SELECT reorder_point FROM {db}.dim_product FINAL WHERE sku = 'P2'").result_rows == [(50,)]
        dim = pd.DataFrame({"product_key": pd.Series(dtype="uint64"), "reorder_point": pd.Series(dtype="float64")})
        p2 = etl.surrogate_key("P2")
        assert etl.reorder_points_as_of(client, db, today, dim)[p2] == 50
        assert etl.reorder_points_as_of(client, db, D1, dim)[p2] == 5


def _set_master_cost(lake, sku: str, cost: float) -> None:
    products = pq.read_table(lake.path(lake.settings.lake_raw_bucket, "reference/products/products.parquet"),
                             filesystem=lake.fs).to_pandas()
    products.loc[products["product_id"] == sku, "unit_cost"] = cost
    lake.write_table(pa.Table.from_pandas(products, preserve_index=False), lake.settings.lake_raw_bucket,
                     "reference/products/products.parquet")


def _lake_versions(lake, name: str) -> set:
    """(natural key, valid_from, valid_to) of the lake history file, read with pyarrow (no etl code)."""
    key = {"products": "product_id", "stores": "store_id"}[name]
    t = pq.read_table(lake.path(lake.settings.lake_features_bucket,
                                f"staging/daily_etl/reference_history/{name}.parquet"), filesystem=lake.fs)
    return {(r[key], r["valid_from"], r["valid_to"]) for r in t.to_pylist()}


def test_dim_history_mirrors_the_lake_history_and_inserts_only_changes(native_stack):
    """The documented correction (delete the lake history file) left overlapping versions in dim_product_history:
    the new (P2, 1970-01-01, open) replaced only the row of its own (key, valid_from), the old (P2, D1, open) stayed,
    so the as-of join of D1's 3 fact lines returned 5 rows (P2's two lines twice); and every load re-inserted every
    version of both tables (an unchanged re-run: 4 rows again). Now the load mirrors the lake history exactly:
    the as-of join returns one row per fact line, the table holds the lake's versions, an unchanged re-run inserts
    0 rows, and a change of P1 inserts P1's two versions only (the closed one and the new one)."""
    from etl import star_schema as etl

    def versions(table: str, sku_col: str) -> set:
        return set(client.query(f"SELECT {sku_col}, valid_from, valid_to FROM {db}.{table} FINAL").result_rows)

    def inserted_since(table: str, rev: int) -> list:
        return client.query(f"SELECT * FROM {db}.{table} WHERE revision > {rev}").result_rows

    def max_rev(table: str) -> int:
        return client.query(f"SELECT max(revision) FROM {db}.{table}").result_rows[0][0]

    def as_of_rows() -> int:
        return client.query(f"SELECT count() FROM {db}.fact_sales f JOIN (SELECT * FROM {db}.dim_product_history "
                            "FINAL) h ON h.product_key = f.product_key AND toDate(f.event_time) BETWEEN h.valid_from "
                            "AND h.valid_to WHERE f.date_key = 20240329").result_rows[0][0]

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        etl.reference_history(lake, "products", today=D1 - dt.timedelta(days=30))   # P1, P2 from 1970
        _set_master_cost(lake, "P2", 2.6)
        etl.reference_history(lake, "products", today=D1)                           # P2 2.6 valid from D1
        run_pandas(D1)
        n_lines = len(raw_files(lake, "sales_transaction", D1).drop_duplicates("transaction_id"))
        assert n_lines == 3
        assert versions("dim_product_history", "sku") == _lake_versions(lake, "products") == {
            ("P1", etl.FIRST_VALID, etl.OPEN_VALID), ("P2", etl.FIRST_VALID, D1 - dt.timedelta(days=1)),
            ("P2", D1, etl.OPEN_VALID)}
        assert as_of_rows() == n_lines
        # (a) the correction: the current master holds for every day, one version per key and day
        lake.fs.delete_file(lake.path(s.lake_features_bucket, "staging/daily_etl/reference_history/products.parquet"))
        run_pandas(D1)
        assert versions("dim_product_history", "sku") == _lake_versions(lake, "products") == {
            ("P1", etl.FIRST_VALID, etl.OPEN_VALID), ("P2", etl.FIRST_VALID, etl.OPEN_VALID)}
        assert as_of_rows() == n_lines
        # (b) an unchanged reference: the re-run inserts nothing into either table
        revs = {t: max_rev(t) for t in ("dim_product_history", "dim_store_history")}
        out = run_pandas(D1)
        assert {t: len(inserted_since(t, r)) for t, r in revs.items()} == \
            {"dim_product_history": 0, "dim_store_history": 0}
        assert (out["load"]["dim_history_inserted"], out["load"]["dim_history_deleted"]) == (0, 0)
        # (c) a real change: only P1's versions are written (the closed one and the new one)
        _set_master_cost(lake, "P1", 0.7)
        etl.reference_history(lake, "products", today=D2)
        run_pandas(D1)
        new = client.query(f"SELECT sku, valid_from, valid_to, unit_cost FROM {db}.dim_product_history "
                           f"WHERE revision > {revs['dim_product_history']} ORDER BY valid_from").result_rows
        assert new == [("P1", etl.FIRST_VALID, D1, 0.6), ("P1", D2, etl.OPEN_VALID, 0.7)]
        assert inserted_since("dim_store_history", revs["dim_store_history"]) == []
        assert versions("dim_product_history", "sku") == _lake_versions(lake, "products")
        assert as_of_rows() == n_lines


def test_a_bad_version_in_the_history_does_not_block_the_night_once_the_master_is_corrected(native_stack, caplog):
    """Until 2026-12-07 the product master check also ran on the stored version history: a version written before
    the check (P2's unit_cost -1.5, coerced unseen then) made every run whose day it covers fail (transform's cost
    as of the day, then ``load``'s dim_product_history) even after the operator corrected the reference file as
    the error says; and extract wrote a bad reference file into the history before transform refused it. Now the
    reference file is checked before the history is written (refused by name, nothing written), and a history
    version's bad numbers are read as unknown (NULL cost) with a warning naming the history file, column and id."""
    import logging

    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        etl.reference_history(lake, "products", today=D1 - dt.timedelta(days=30))   # P1, P2 from 1970
        path = (s.lake_features_bucket, "staging/daily_etl/reference_history/products.parquet")
        hist = pq.read_table(lake.path(*path), filesystem=lake.fs).to_pandas(date_as_object=True)
        hist.loc[hist["product_id"] == "P2", "unit_cost"] = -1.5   # the version an older run stored unchecked
        hist["_fp"] = etl._fingerprint(hist.drop(columns=["_fp", "valid_from", "valid_to"]))
        lake.write_table(pa.Table.from_pandas(hist, preserve_index=False), *path)
        # the reference file says 2.0 (corrected): a new version from today; the bad one still covers D1
        with caplog.at_level(logging.WARNING, logger=etl.log.name):
            out = run_pandas(D1)
        assert out["qc"]   # the quality check raises on any mismatch
        warned = " | ".join(r.getMessage() for r in caplog.records)
        assert f"{s.lake_features_bucket}/staging/daily_etl/reference_history/products.parquet: unit_cost of 1 " \
               "version(s)" in warned and "'P2': -1.5" in warned
        costs = client.query(f"SELECT p.sku, f.cost FROM {db}.fact_sales f JOIN {db}.dim_product p USING product_key "
                             "WHERE f.date_key = 20240329 ORDER BY f.cost").result_rows
        assert sorted(c is None for _, c in costs) == [False, True, True]   # P2's 2 lines: cost unknown on D1
        versions = client.query(f"SELECT sku, valid_to, unit_cost FROM {db}.dim_product_history FINAL "
                                "WHERE sku = 'P2' ORDER BY valid_from").result_rows
        assert [v[2] for v in versions] == [None, 2.0] and versions[0][1] < etl.OPEN_VALID
        assert client.query(f"SELECT unit_cost FROM {db}.dim_product FINAL WHERE sku = 'P2'").result_rows == [(2.0,)]
        # a bad reference file is refused before the history is written: no version holds it
        before = _lake_versions(lake, "products")
        _set_master_cost(lake, "P1", -3.0)
        with pytest.raises(etl.EtlError, match=r"unit_cost in 1 row\(s\) \(e.g. 'P1': -3.0\)"):
            etl.extract(D2)
        assert _lake_versions(lake, "products") == before
        assert -3.0 not in pq.read_table(lake.path(*path), filesystem=lake.fs).column("unit_cost").to_pylist()


def test_a_raw_file_without_a_column_is_named_by_the_quality_check(native_stack):
    """A sales file written without ``unit_price`` landing in D1 during its run (after the load) crashed the quality
    check with ``ValueError: cannot convert float NaN to integer`` (neither the file nor the column named, and not
    the retryable LakeChangedError). Now the lake's totals refuse it as a contract violation naming the column, and
    the check reports the lake change (retryable); a re-run's build refuses the file as bad data (EtlError)."""
    from etl import star_schema as etl

    with fresh_database() as (s, lake, client):
        land_small(lake)
        etl.extract(D1), etl.transform(D1)
        loaded = etl.load_recorded(D1)
        late = small_sales([["t10", "S1", "P2", 2, 3.5, _ts(D1, 22), "c9", "CARD", "i10", 1, 50]])
        names = [n for n in SALES_SCHEMA.names if n != "unit_price"]
        lake.write_table(pa.Table.from_pandas(late[names], schema=pa.schema([SALES_SCHEMA.field(n) for n in names]),
                                              preserve_index=False), *etl.raw_partition(lake, etl.SALES, D1),
                         "batch-9.parquet")
        with pytest.raises(etl.EtlError, match=r"1 row\(s\) without unit_price \(raw-.*/sales_transaction/year=2024"):
            etl.lake_sales_totals(lake, D1)
        with pytest.raises(etl.LakeChangedError, match=r"batch-9\.parquet.*1 row\(s\) without unit_price"):
            etl.quality_check(D1, dt.datetime.fromisoformat(loaded["started_at"]))
        last = client.query(f"SELECT status, message FROM {s.clickhouse_database}.etl_runs WHERE date_key = 20240329 "
                            "ORDER BY finished_at DESC LIMIT 1").result_rows[0]
        assert last[0] == "failed" and "without unit_price" in last[1]
        with pytest.raises(etl.EtlError, match="violate the contract"):
            run_pandas(D1)


def test_dim_history_correction_deletes_thousands_of_versions(native_stack):
    """The correction (delete the lake history file) of a catalogue whose every product changed twice: 3,600 products
    x 2 later versions = 7,200 (key, valid_from) pairs to delete. One ALTER ... DELETE naming them all was ~270 KB,
    above ClickHouse's max_query_size (262,144 bytes: code 62), and every later load failed on it. Now the table
    ends equal to the lake history (one open version per product, from 1970-01-01)."""
    from etl import star_schema as etl

    n = 3_600
    with fresh_database() as (s, lake, client):
        db = s.clickhouse_database
        land_small(lake)
        master = pq.read_table(lake.path(s.lake_raw_bucket, "reference/products/products.parquet"),
                               filesystem=lake.fs).to_pandas()
        products = pd.concat([master.iloc[[0]]] * n, ignore_index=True)
        products["product_id"] = [f"CATALOGUE-{i:05d}" for i in range(n)]

        def write(cost: float) -> None:
            products["unit_cost"] = cost
            lake.write_table(pa.Table.from_pandas(products, preserve_index=False), s.lake_raw_bucket,
                             "reference/products/products.parquet")

        for cost, day in ((1.0, D1), (1.5, D2), (2.0, D3)):   # 3 versions a product: 1970.., D2.., D3..
            write(cost)
            hist = etl.reference_history(lake, "products", today=day)
        assert len(hist) == 3 * n
        assert etl.sync_history(client, db, "products", hist) == {"inserted": 3 * n, "deleted": 0}
        lake.fs.delete_file(lake.path(s.lake_features_bucket, f"{etl.HISTORY_PREFIX}/products.parquet"))
        hist = etl.reference_history(lake, "products", today=D4)   # the current master valid for every day
        assert len(hist) == n
        assert etl.sync_history(client, db, "products", hist)["deleted"] == 2 * n
        rows = client.query(f"SELECT sku, valid_from, valid_to, unit_cost FROM {db}.dim_product_history FINAL "
                            "WHERE startsWith(sku, 'CATALOGUE-')").result_rows
        assert len(rows) == n
        assert {(r[1], r[2]) for r in rows} == {(etl.FIRST_VALID, etl.OPEN_VALID)}
        assert {float(r[3]) for r in rows} == {2.0}
        assert {r[0] for r in rows} == set(products["product_id"])
