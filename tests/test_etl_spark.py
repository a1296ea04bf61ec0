"""The Spark fact job (etl/spark_facts.py, etl/jobs/daily_facts.py) against an independent plain computation.

A known day of raw events is written in the streaming job's raw layout into a lake in a local folder
(``LAKE_URL`` = a temp directory: no MinIO needed): sales with replayed copies (later ingestion), rows misfiled
from the next day, returns, SKUs and stores without reference data, prices whose float product needs rounding,
null customer/payment, inventory updates with ties in event time and null reorder points. The expected facts
are computed here line by line with plain Python (dict of first copies, ``decimal`` money, ``hashlib`` keys),
not with etl.star_schema's pandas code, and compared with what the job staged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import INV_SCHEMA, SALES_SCHEMA

REPO = Path(__file__).resolve().parent.parent
DAY = dt.date(2011, 8, 29)
UTC = dt.timezone.utc


def key(natural: str) -> int:
    return int.from_bytes(hashlib.blake2b(natural.encode(), digest_size=8).digest(), "big")


def dk(d: dt.date) -> int:
    return int(d.strftime("%Y%m%d"))


def write_raw(lake, event_type: str, day: dt.date, files: dict[str, list[dict]], schema: pa.Schema) -> None:
    part = f"{event_type}/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"
    lake.delete_dir("raw-data", part)
    for name, rows in files.items():
        lake.write_table(pa.Table.from_pylist(rows, schema=schema), "raw-data", part, name)


def write_small_day(lake, day: dt.date, quantities: list[int], prefix: str) -> list[str]:
    """One raw sales file of ``day``: a line per quantity (ids ``<prefix><i>``, 10:00 UTC); returns the ids."""
    ts = dt.datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    rows = [{"transaction_id": f"{prefix}{i}", "store_id": "S0", "product_id": "P001", "quantity": q,
             "unit_price": 1.0, "timestamp": ts, "customer_id": None, "payment_method": "CARD", "invoice_id": "I",
             "ingested_at": ts, "kafka_partition": 0, "kafka_offset": i} for i, q in enumerate(quantities)]
    write_raw(lake, "sales_transaction", day, {"batch-1.parquet": rows}, SALES_SCHEMA)
    return [r["transaction_id"] for r in rows]


def make_day(seed: int = 11):
    """Raw sales + inventory rows of DAY (and a few misfiled from DAY+1), reference products/stores."""
    rng = np.random.default_rng(seed)
    stores = [f"S{i}" for i in range(6)]            # S5 has no reference row
    skus = [f"P{i:03d}" for i in range(40)]         # P035..P039 have no reference row
    base = dt.datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    sales, offset = [], 0
    for i in range(3000):
        ts = base + dt.timedelta(seconds=int(rng.integers(0, 86400)))
        if i % 250 == 0:
            ts = base + dt.timedelta(days=1, seconds=int(rng.integers(0, 3600)))   # misfiled: tomorrow's event
        q = int(rng.choice([1, 2, 3, 5, 12, -1, -4], p=[.4, .2, .15, .1, .05, .07, .03]))
        price = float(rng.choice([0.1, 0.29, 1.15, 2.55, 4.95, 10.0, 0.0, 33.33]))
        offset += 1
        sales.append({"transaction_id": f"T{i:05d}", "store_id": stores[int(rng.integers(0, 6))],
                      "product_id": skus[int(rng.integers(0, 40))], "quantity": q, "unit_price": price,
                      "timestamp": ts, "customer_id": None if i % 7 == 0 else f"C{i % 97}",
                      "payment_method": None if i % 11 == 0 else "CARD", "invoice_id": f"I{i // 3}",
                      "ingested_at": ts + dt.timedelta(seconds=2), "kafka_partition": i % 3, "kafka_offset": offset})
    replay = []
    for r in sales[::13]:                              # replayed later with a different (wrong) quantity
        replay.append({**r, "quantity": r["quantity"] * 10 or 1, "ingested_at": r["ingested_at"] + dt.timedelta(hours=1),
                       "kafka_offset": r["kafka_offset"] + 100_000})
    inv, offset = [], 0
    for i in range(2000):
        st, sk = stores[int(rng.integers(0, 6))], skus[int(rng.integers(0, 40))]
        ts = base + dt.timedelta(minutes=int(rng.integers(0, 1440)))   # minute grain: ties in event time
        offset += 1
        restock = i % 7 == 0   # every 7th a receipt of 1..40 units (fact_inventory.units_received)
        inv.append({"inventory_id": f"V{i:05d}", "store_id": st, "product_id": sk,
                    "quantity_change": 1 + i % 40 if restock else -1,
                    "new_quantity": int(rng.integers(0, 500)), "reason": "RESTOCK" if restock else "SALE",
                    "reorder_point": None if rng.random() < 0.5 else int(rng.integers(5, 50)), "timestamp": ts,
                    "ingested_at": ts + dt.timedelta(seconds=1), "kafka_partition": 0, "kafka_offset": offset})
    inv_replay = [{**r, "new_quantity": 9999, "ingested_at": r["ingested_at"] + dt.timedelta(hours=2),
                   "kafka_offset": r["kafka_offset"] + 50_000} for r in inv[::17]]
    products = pd.DataFrame({"product_id": skus[:35], "product_name": [f"n{s}" for s in skus[:35]], "category": "c",
                             "sub_category": "s", "brand": "b", "supplier": "x",
                             "unit_cost": [round(0.05 + 0.37 * i, 2) for i in range(35)],
                             "unit_price": 1.0, "shelf_life_days": 30, "reorder_point": 10, "storage_capacity": 500})
    stores_ref = pd.DataFrame({"store_id": stores[:5], "store_name": stores[:5], "city": "", "country": "UK",
                               "country_code": "GB", "region": "EU"})
    return sales, replay, inv, inv_replay, products, stores_ref


def expected(sales, replay, inv, inv_replay, products):
    """Plain computation of the day's facts (first ingested copy, exact decimal money, blake2b keys)."""
    first: dict[str, dict] = {}
    for r in sorted(sales + replay, key=lambda r: (r["ingested_at"], r["kafka_partition"], r["kafka_offset"])):
        first.setdefault(r["transaction_id"], r)
    cost = {p: Decimal(repr(c)) for p, c in zip(products["product_id"], products["unit_cost"])}
    lines = {}
    for tid, r in first.items():
        if r["timestamp"].date() != DAY:
            continue
        q = Decimal(r["quantity"])
        rev = (q * Decimal(repr(r["unit_price"]))).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)
        c = (q * cost[r["product_id"]]).quantize(Decimal("0.0001"), ROUND_HALF_EVEN) if r["product_id"] in cost else None
        lines[tid] = {"store_key": key(r["store_id"]), "product_key": key(r["product_id"]), "quantity": r["quantity"],
                      "revenue": rev, "cost": c, "profit": None if c is None else rev - c,
                      "is_return": int(r["quantity"] < 0), "payment_method": r["payment_method"] or "UNKNOWN",
                      "customer_id": r["customer_id"], "event_time": r["timestamp"], "unit_price": r["unit_price"]}
    daily: dict[tuple, dict] = {}
    for ln in lines.values():
        d = daily.setdefault((ln["store_key"], ln["product_key"]), {"units_sold": 0, "units_returned": 0, "net_units": 0,
                                                                    "revenue": Decimal(0), "pos_lines": 0, "return_lines": 0})
        d["units_sold"] += max(ln["quantity"], 0)
        d["units_returned"] += max(-ln["quantity"], 0)
        d["net_units"] += ln["quantity"]
        d["revenue"] += ln["revenue"]
        d["pos_lines"] += 1
        d["return_lines"] += ln["is_return"]
    firsti: dict[str, dict] = {}
    for r in sorted(inv + inv_replay, key=lambda r: (r["ingested_at"], r["kafka_partition"], r["kafka_offset"])):
        firsti.setdefault(r["inventory_id"], r)
    closing: dict[tuple, dict] = {}
    for r in sorted(firsti.values(), key=lambda r: (r["timestamp"], r["kafka_offset"])):
        k = (key(r["store_id"]), key(r["product_id"]))
        prev = closing.get(k, {})
        closing[k] = {"closing_stock": r["new_quantity"], "last_update_time": r["timestamp"],
                      "reorder_point": r["reorder_point"] if r["reorder_point"] is not None else prev.get("reorder_point"),
                      "units_received": prev.get("units_received", 0)
                      + (r["quantity_change"] if r["reason"] == "RESTOCK" else 0)}
    return lines, daily, closing, len(sales) + len(replay) - len(first)


def staged(lake, name: str, day: dt.date = DAY) -> pd.DataFrame:
    return pq.read_table(lake.path("features", f"staging/daily_etl/date={day}/{name}.parquet"), filesystem=lake.fs).to_pandas()


def test_spark_facts_equal_an_independent_computation(local_lake, spark):
    from etl import spark_facts as sf

    sales, replay, inv, inv_replay, products, stores_ref = make_day()
    write_raw(local_lake, "sales_transaction", DAY, {"batch-1.parquet": sales[:1500], "batch-2.parquet": sales[1500:],
                                                     "batch-3.parquet": replay}, SALES_SCHEMA)
    write_raw(local_lake, "inventory_update", DAY, {"batch-1.parquet": inv, "batch-2.parquet": inv_replay}, INV_SCHEMA)
    local_lake.write_table(pa.Table.from_pandas(products, preserve_index=False), "raw-data", "reference/products/p.parquet")
    local_lake.write_table(pa.Table.from_pandas(stores_ref, preserve_index=False), "raw-data", "reference/stores/s.parquet")
    lines, daily, closing, dups = expected(sales, replay, inv, inv_replay, products)

    out = sf.build_day(spark, DAY, local_lake)
    assert out["sales_lines"] == len(lines) > 2500
    assert out["duplicate_sales"] == dups == len(replay)
    assert out["misfiled_sales"] == 12                          # i % 250 == 0 for i < 3000
    assert out["duplicate_inventory"] == len(inv_replay)

    f = staged(local_lake, "fact_sales").set_index("sale_id")
    assert set(f.index) == set(lines) and f.index.is_unique
    assert (f["date_key"] == dk(DAY)).all()
    for tid, e in lines.items():
        g = f.loc[tid]
        assert (int(g["store_key"]), int(g["product_key"])) == (e["store_key"], e["product_key"]), tid
        assert int(g["quantity"]) == e["quantity"] and int(g["is_return"]) == e["is_return"]
        assert Decimal(int(g["revenue_e4"])).scaleb(-4) == e["revenue"], tid
        if e["cost"] is None:
            assert pd.isna(g["cost_e4"]) and pd.isna(g["profit_e4"]), tid
        else:
            assert Decimal(int(g["cost_e4"])).scaleb(-4) == e["cost"], tid
            assert Decimal(int(g["profit_e4"])).scaleb(-4) == e["profit"], tid
        assert g["payment_method"] == e["payment_method"] and g["unit_price"] == e["unit_price"]
        assert (None if pd.isna(g["customer_id"]) else g["customer_id"]) == e["customer_id"]
        assert pd.Timestamp(g["event_time"]) == pd.Timestamp(e["event_time"])
    assert f["cost_e4"].isna().sum() == sum(e["cost"] is None for e in lines.values()) > 0

    d = staged(local_lake, "fact_sales_daily")
    assert len(d) == len(daily)
    for r in d.itertuples():
        e = daily[(int(r.store_key), int(r.product_key))]
        assert (r.units_sold, r.units_returned, r.net_units, r.pos_lines, r.return_lines) == (
            e["units_sold"], e["units_returned"], e["net_units"], e["pos_lines"], e["return_lines"])
        assert abs(r.revenue - float(e["revenue"])) < 1e-6

    c = staged(local_lake, "inventory_closing")
    assert len(c) == len(closing) and out["inventory_rows"] == len(closing)
    for r in c.itertuples():
        e = closing[(int(r.store_key), int(r.product_key))]
        assert r.closing_stock == e["closing_stock"] != 9999
        assert pd.Timestamp(r.last_update_time) == pd.Timestamp(e["last_update_time"])
        assert (pd.isna(r.reorder_point) and e["reorder_point"] is None) or r.reorder_point == e["reorder_point"]
        assert r.units_received == e["units_received"]
    assert c["units_received"].sum() == sum(e["units_received"] for e in closing.values()) > 0

    # dimensions: reference rows + placeholders for what the events name without master data
    p = staged(local_lake, "dim_product").set_index("sku")
    assert p.loc["P039", "is_known"] == 0 and p.loc["P001", "is_known"] == 1
    assert int(p.loc["P039", "product_key"]) == key("P039")
    s = staged(local_lake, "dim_store").set_index("store_id")
    assert s.loc["S5", "is_known"] == 0 and int(s.loc["S0", "store_key"]) == key("S0")

    # the pandas transform of etl.star_schema (the in-process path) agrees on the fact lines too
    from etl import star_schema as etl

    raw = pd.concat([pd.DataFrame(sales + replay)], ignore_index=True)
    ded, _ = etl.deduplicate(raw, "transaction_id")
    day_rows, _ = etl.events_of_day(ded, DAY)
    pf = etl.build_fact_sales(day_rows, etl.build_dim_product(products, day_rows["product_id"]), DAY).set_index("sale_id")
    j = pf[["revenue_e4", "cost_e4"]].join(f[["revenue_e4", "cost_e4"]], rsuffix="_spark")
    assert (j["revenue_e4"].astype("int64") == j["revenue_e4_spark"].astype("int64")).all()
    assert (j["cost_e4"].fillna(-1).astype("int64") == j["cost_e4_spark"].fillna(-1).astype("int64")).all()

    # idempotent: a re-run stages the same rows
    sf.build_day(spark, DAY, local_lake)
    assert staged(local_lake, "fact_sales").sort_values("sale_id").reset_index(drop=True).equals(
        f.reset_index().sort_values("sale_id").reset_index(drop=True)[staged(local_lake, "fact_sales").columns])


def test_empty_day_and_contract_violation(local_lake, spark):
    from etl import spark_facts as sf
    from etl.star_schema import EtlError

    empty = DAY - dt.timedelta(days=5)
    out = sf.build_day(spark, empty, local_lake)
    assert out["sales_lines"] == 0 and out["inventory_rows"] == 0
    bad_day = DAY - dt.timedelta(days=1)
    write_small_day(local_lake, bad_day, [0, 1, 2], "B")  # B0: quantity 0 breaks the contract
    with pytest.raises(EtlError, match="1 sales lines violate the contract.*B0"):
        sf.build_day(spark, bad_day, local_lake)


@pytest.mark.parametrize("column", ["quantity", "timestamp"])
def test_null_quantity_or_timestamp_breaks_the_contract(local_lake, spark, column):
    """A sales line with a null quantity (it passed the check, then failed the load with decimal.InvalidOperation,
    retried as an outage) or a null event time (dropped as misfiled, QC passed) is a contract violation: EtlError
    naming it, so the job exits 3 and the task fails without retries. Inventory updates without an event time too."""
    from etl import spark_facts as sf
    from etl.star_schema import EtlError

    day = DAY - dt.timedelta(days=20 + (column == "timestamp"))
    ts = dt.datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    rows = [{"transaction_id": f"N{i}", "store_id": "S0", "product_id": "P001", "quantity": 2, "unit_price": 1.0,
             "timestamp": ts, "customer_id": None, "payment_method": "CARD", "invoice_id": "I", "ingested_at": ts,
             "kafka_partition": 0, "kafka_offset": i} for i in range(3)]
    rows[1][column] = None
    write_raw(local_lake, "sales_transaction", day, {"batch-1.parquet": rows}, SALES_SCHEMA)
    match = (r"1 sales lines violate the contract \(quantity 0/null.*N1" if column == "quantity"
             else "1 sales_transaction events violate the contract: null timestamp")
    with pytest.raises(EtlError, match=match):
        sf.build_day(spark, day, local_lake)
    if column == "timestamp":
        rows[1][column] = ts
        write_raw(local_lake, "sales_transaction", day, {"batch-1.parquet": rows}, SALES_SCHEMA)
        inv = [{"inventory_id": "U1", "store_id": "S0", "product_id": "P001", "quantity_change": 1, "new_quantity": 5,
                "reason": "RESTOCK", "reorder_point": None, "timestamp": None, "ingested_at": ts,
                "kafka_partition": 0, "kafka_offset": 1}]
        write_raw(local_lake, "inventory_update", day, {"batch-1.parquet": inv}, INV_SCHEMA)
        with pytest.raises(EtlError, match="1 inventory_update events violate the contract: null timestamp"):
            sf.build_day(spark, day, local_lake)


def test_build_day_rebuilds_loaded_days_whose_raw_files_changed(local_lake, spark):
    """With recheck_days the job builds again the loaded days of its window whose raw listing changed since they
    were loaded (a late file), before its own day, and stages their new listing; the load then finds them
    (rebuilt_days). Unchanged or never-loaded days are left alone."""
    from etl import spark_facts as sf
    from etl import star_schema as etl

    day = DAY - dt.timedelta(days=30)
    early, never = day - dt.timedelta(days=2), day - dt.timedelta(days=1)
    write_small_day(local_lake, early, [1, 2], "E")
    write_small_day(local_lake, never, [3], "V")
    assert sf.build_day(spark, early, local_lake)["rechecked_days"] == []
    etl.write_manifest(local_lake, early, etl.LOADED_MANIFEST, etl.read_manifest(local_lake, early, etl.RAW_MANIFEST))
    assert sf.build_day(spark, day, local_lake, recheck_days=7)["rechecked_days"] == []
    ts = dt.datetime(early.year, early.month, early.day, 22, tzinfo=UTC)
    late = [{"transaction_id": "E-late", "store_id": "S0", "product_id": "P001", "quantity": 5, "unit_price": 1.0,
             "timestamp": ts, "customer_id": None, "payment_method": "CARD", "invoice_id": "I",
             "ingested_at": ts + dt.timedelta(hours=12), "kafka_partition": 0, "kafka_offset": 9}]
    part = f"sales_transaction/year={early.year:04d}/month={early.month:02d}/day={early.day:02d}"
    local_lake.write_table(pa.Table.from_pylist(late, schema=SALES_SCHEMA), "raw-data", part, "batch-9.parquet")
    assert sf.build_day(spark, day, local_lake, recheck_days=1)["rechecked_days"] == []   # outside the window
    out = sf.build_day(spark, day, local_lake, recheck_days=7)
    assert out["rechecked_days"] == [early.isoformat()]
    assert sorted(staged(local_lake, "fact_sales", early)["sale_id"]) == ["E-late", "E0", "E1"]
    assert etl.rebuilt_days(local_lake, day, 7) == [early]


def test_spark_submit_job_exit_codes(local_lake):
    """The spark-submit application: exit 0 and staged facts for a good day, exit 3 and a staged error record
    for a day breaking the contract (the DAG's operator fails that task without retries)."""
    from etl import spark_facts as sf

    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    submit = str(Path(sys.executable).parent / "spark-submit")
    app = str(REPO / "etl" / "jobs" / "daily_facts.py")

    def run(day: dt.date) -> subprocess.CompletedProcess:
        return subprocess.run([submit, "--master", "local[1]", "--conf", "spark.ui.enabled=false", app,
                               "--date", day.isoformat()], env=env, capture_output=True, text=True, timeout=600)

    good_day = DAY - dt.timedelta(days=2)
    ids = write_small_day(local_lake, good_day, [1, 2, -1], "G")
    r = run(good_day)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sf.read_json(local_lake, good_day, sf.ERROR_NAME) is None
    res = sf.read_json(local_lake, good_day, sf.RESULT_NAME)
    assert res and res["date"] == good_day.isoformat() and res["sales_lines"] == 3, res
    f = staged(local_lake, "fact_sales", good_day)
    assert sorted(f["sale_id"]) == ids and (f["date_key"] == dk(good_day)).all()

    bad_day = DAY - dt.timedelta(days=1)
    write_small_day(local_lake, bad_day, [0, 1, 2], "B")  # the day of test_empty_day_and_contract_violation
    r = run(bad_day)
    assert r.returncode == 3, r.stderr[-3000:]
    err = sf.read_json(local_lake, bad_day, sf.ERROR_NAME)
    assert err and err["date"] == bad_day.isoformat() and "violate the contract" in err["message"], err
    assert "B0" in err["message"]


def test_raw_files_of_two_contract_versions(local_lake, spark):
    """A day whose raw files were written under two contract versions: quantity widened int -> long (an Avro
    promotion) and a column added. Spark's own schema merge refuses that; the job reads the widest types, the new
    column null in the old file, and dedups exact copies by input order (file, then row). Incompatible types
    (string vs long) fail the run naming the column."""
    from etl import spark_facts as sf
    from etl import star_schema as etl
    from etl.star_schema import EtlError

    day = DAY - dt.timedelta(days=3)
    ts = dt.datetime(day.year, day.month, day.day, 9, tzinfo=UTC)

    def row(i, q, **kw):
        return {"transaction_id": f"V{i}", "store_id": "S0", "product_id": f"P00{i % 3}", "quantity": q,
                "unit_price": 2.5, "timestamp": ts + dt.timedelta(minutes=i), "customer_id": None,
                "payment_method": "CARD", "invoice_id": f"I{i}", "ingested_at": ts, "kafka_partition": 0,
                "kafka_offset": 0, **kw}

    old = [row(i, i + 1) for i in range(6)]
    new_schema = SALES_SCHEMA.set(SALES_SCHEMA.get_field_index("quantity"), pa.field("quantity", pa.int64())) \
                             .append(pa.field("channel", pa.string()))
    new = [row(i, 40_000 + i, channel="web") for i in range(6, 10)]
    copy = [row(2, 99)]          # same id, same ingestion metadata as old's V2, in a later file: not kept
    part = f"sales_transaction/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"
    local_lake.delete_dir("raw-data", part)
    local_lake.write_table(pa.Table.from_pylist(old, schema=SALES_SCHEMA), "raw-data", part, "batch-1.parquet")
    local_lake.write_table(pa.Table.from_pylist(new, schema=new_schema), "raw-data", part, "batch-2.parquet")
    local_lake.write_table(pa.Table.from_pylist(copy, schema=SALES_SCHEMA), "raw-data", part, "batch-3.parquet")

    raw = sf.read_raw(spark, local_lake, "sales_transaction", day)
    assert dict(raw.dtypes)["quantity"] == "bigint" and dict(raw.dtypes)["channel"] == "string"
    got = {r["transaction_id"] + "@" + r["_file"].rsplit("/", 1)[-1]: (r["quantity"], r["channel"])
           for r in raw.collect()}
    assert got == {**{f"V{i}@batch-1.parquet": (i + 1, None) for i in range(6)},
                   **{f"V{i}@batch-2.parquet": (40_000 + i, "web") for i in range(6, 10)},
                   "V2@batch-3.parquet": (99, None)}

    out = sf.build_day(spark, day, local_lake)
    assert (out["raw_sales_rows"], out["sales_lines"], out["duplicate_sales"]) == (11, 10, 1)
    f = staged(local_lake, "fact_sales", day).set_index("sale_id")
    quantities = {f"V{i}": (i + 1 if i < 6 else 40_000 + i) for i in range(10)}   # V2: batch-1's copy, 3
    assert {k: int(v) for k, v in f["quantity"].items()} == quantities
    assert int(f["revenue_e4"].astype("int64").sum()) == sum(q * 25_000 for q in quantities.values())
    assert len(etl.read_raw_day(local_lake, "sales_transaction", day)) == 11   # the reconciliation's reader too

    bad_day = day - dt.timedelta(days=1)
    bpart = f"sales_transaction/year={bad_day.year:04d}/month={bad_day.month:02d}/day={bad_day.day:02d}"
    local_lake.write_table(pa.Table.from_pylist(old, schema=SALES_SCHEMA), "raw-data", bpart, "batch-1.parquet")
    text = SALES_SCHEMA.set(SALES_SCHEMA.get_field_index("quantity"), pa.field("quantity", pa.string()))
    local_lake.write_table(pa.Table.from_pylist([row(7, "7")], schema=text), "raw-data", bpart, "batch-2.parquet")
    with pytest.raises(EtlError, match="cannot be read together.*quantity"):
        sf.build_day(spark, bad_day, local_lake)


def test_raw_counts_and_missing_columns(spark):
    """raw_counts over raw rows: rows, null ids, contract-breaking rows (quantity 0, price negative, NaN or null),
    and a clear error naming a missing column."""
    from etl import spark_facts as sf
    from etl.star_schema import EtlError

    df = spark.createDataFrame(
        [("T1", 1, 2.0), (None, 2, 1.0), ("T3", 0, 1.0), ("T4", 1, -0.5), ("T5", 1, float("nan")), ("T6", 3, None),
         ("T7", None, 1.0)], "transaction_id string, quantity int, unit_price double")
    assert sf.raw_counts(df, "transaction_id", contract=True) == {"rows": 7, "null_ids": 1, "bad": 5}
    assert sf.raw_counts(df, "transaction_id", contract=False) == {"rows": 7, "null_ids": 1}
    with pytest.raises(EtlError, match="column 'unit_price' missing"):
        sf.raw_counts(df.drop("unit_price"), "transaction_id", contract=True)
    with pytest.raises(EtlError, match="event id column 'inventory_id' missing"):
        sf.raw_counts(df, "inventory_id", contract=False)


def test_an_unreadable_raw_file_is_bad_data_named_by_the_job(local_lake, spark):
    """A raw partition holding, next to a good file, an empty Parquet file (a schema, no row: loads nothing) and a
    zero-byte object (an upload cut short), then a file of bytes without a footer. Both must stop the job as bad data naming the file
    (EtlError: exit 3, no retry), and the empty file alone must load the good file's lines."""
    from etl import spark_facts as sf
    from etl.star_schema import EtlError

    day = DAY - dt.timedelta(days=9)
    ids = write_small_day(local_lake, day, [1, 2, -1], "Z")
    part = f"sales_transaction/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"
    local_lake.write_table(pa.Table.from_pylist([], schema=SALES_SCHEMA), "raw-data", part, "batch-2.parquet")
    out = sf.build_day(spark, day, local_lake)
    assert out["sales_lines"] == len(ids) == 3
    with local_lake.fs.open_output_stream(local_lake.path("raw-data", part, "batch-3.parquet")):
        pass   # zero bytes
    with pytest.raises(EtlError, match=r"batch-3\.parquet"):
        sf.build_day(spark, day, local_lake)
    with local_lake.fs.open_output_stream(local_lake.path("raw-data", part, "batch-3.parquet")) as f:
        f.write(b"PAR1 truncated upload")   # bytes, but no footer
    with pytest.raises(EtlError, match=r"not readable Parquet.*batch-3\.parquet"):
        sf.build_day(spark, day, local_lake)
