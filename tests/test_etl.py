"""Unit tests of the pure ETL transforms in etl/star_schema.py (no services)."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from etl import star_schema as etl

DAY = dt.date(2011, 8, 29)  # Late Summer Bank Holiday (England & Wales), a Monday


def ts(h: int, m: int = 0, day: dt.date = DAY) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime(day.year, day.month, day.day, h, m, tzinfo=dt.timezone.utc))


def sales(rows):
    cols = ["transaction_id", "store_id", "product_id", "quantity", "unit_price", "timestamp", "customer_id",
            "payment_method", "invoice_id", "ingested_at", "kafka_partition", "kafka_offset"]
    return pd.DataFrame(rows, columns=cols)


def test_date_and_surrogate_keys_are_deterministic():
    assert etl.date_key(DAY) == 20110829
    k = etl.surrogate_key("85048")
    assert k == etl.surrogate_key("85048") and 0 <= k < 2**64
    assert k != etl.surrogate_key("85049")


def test_deduplicate_keeps_first_ingested_copy():
    df = sales([
        ["t1", "S1", "P1", 2, 1.5, ts(9), None, "CARD", "i1", ts(10), 0, 7],   # replayed later copy
        ["t1", "S1", "P1", 2, 1.5, ts(9), None, "CARD", "i1", ts(9, 1), 0, 3],  # first copy
        ["t2", "S1", "P2", 1, 4.0, ts(9), None, "CASH", "i1", ts(9, 1), 0, 4],
    ])
    out, dropped = etl.deduplicate(df, "transaction_id")
    assert dropped == 1
    assert sorted(out["transaction_id"]) == ["t1", "t2"]
    assert out.loc[out.transaction_id == "t1", "kafka_offset"].item() == 3


def test_deduplicate_rejects_null_ids():
    df = sales([[None, "S1", "P1", 2, 1.5, ts(9), None, "CARD", "i1", ts(10), 0, 7]])
    with pytest.raises(etl.EtlError, match="null transaction_id"):
        etl.deduplicate(df, "transaction_id")


def test_events_of_day_drops_and_counts_misfiled_rows():
    df = sales([["t1", "S1", "P1", 1, 1.0, ts(23, 59), None, "CARD", None, ts(10), 0, 1],
                 ["t2", "S1", "P1", 1, 1.0, ts(0, 0, DAY + dt.timedelta(days=1)), None, "CARD", None, ts(10), 0, 2]])
    out, misfiled = etl.events_of_day(df, DAY)
    assert list(out["transaction_id"]) == ["t1"] and misfiled == 1


def test_fact_sales_returns_cost_profit_exact():
    products = pd.DataFrame({"product_id": ["P1", "P2"], "product_name": ["a", "b"], "category": ["c", "c"],
                             "unit_cost": [0.7, 2.5], "shelf_life_days": [365, 30]})
    df = sales([
        ["t1", "S1", "P1", 3, 0.1, ts(9), "c1", "CARD", "i1", ts(9), 0, 1],
        ["t2", "S1", "P2", -2, 4.25, ts(10), "c1", "CARD", "C1", ts(10), 0, 2],  # a return
        ["t3", "S2", "P9", 5, 1.0, ts(11), None, None, None, ts(11), 1, 1],  # SKU without reference data
    ])
    dim = etl.build_dim_product(products, df["product_id"])
    f = etl.build_fact_sales(df, dim, DAY).set_index("sale_id")
    # revenue = quantity * price at time of sale, exact to 1/10000: 3 * 0.1 = 0.3 (not 0.30000000000000004)
    assert f.loc["t1", "revenue_e4"] == 3000 and f.loc["t1", "cost_e4"] == 21000 - 0  # 3 * 0.7 = 2.1
    assert f.loc["t1", "profit_e4"] == 3000 - 21000
    assert f.loc["t2", "is_return"] == 1 and f.loc["t2", "revenue_e4"] == -85000
    assert f.loc["t2", "cost_e4"] == -50000 and f.loc["t2", "profit_e4"] == -35000
    assert f.loc["t1", "is_return"] == 0
    assert pd.isna(f.loc["t3", "cost_e4"]) and pd.isna(f.loc["t3", "profit_e4"])
    assert f.loc["t3", "payment_method"] == "UNKNOWN"
    assert (f["date_key"] == 20110829).all()
    assert f.loc["t3", "product_key"] == etl.surrogate_key("P9")
    assert etl.e4_to_decimal(int(f["revenue_e4"].sum())) == Decimal("-8.2000") + Decimal("5")
    # the unknown SKU gets a placeholder dimension row that never overrides reference rows
    p9 = dim.set_index("sku").loc["P9"]
    assert p9["is_known"] == 0 and pd.isna(p9["unit_cost"])
    assert dim.set_index("sku").loc["P1", "is_known"] == 1


def test_fact_sales_rejects_contract_violations():
    dim = etl.build_dim_product(None, pd.Series(["P1"]))
    df = sales([["t1", "S1", "P1", 0, 1.0, ts(9), None, "CARD", None, ts(9), 0, 1]])
    with pytest.raises(etl.EtlError, match="violate the contract"):
        etl.build_fact_sales(df, dim, DAY)


def test_null_quantity_and_null_timestamp_are_contract_violations():
    """A null quantity is refused like quantity 0 (it used to pass the check and fail the load with
    decimal.InvalidOperation, retried as an outage); a null event time is refused, not dropped as misfiled."""
    dim = etl.build_dim_product(None, pd.Series(["P1"]))
    df = sales([["t1", "S1", "P1", 2, 1.0, ts(9), None, "CARD", None, ts(9), 0, 1],
                ["t2", "S1", "P1", None, 2.0, ts(10), None, "CARD", None, ts(10), 0, 2]])
    with pytest.raises(etl.EtlError, match=r"1 sales lines violate the contract \(quantity 0/null.*t2"):
        etl.build_fact_sales(df, dim, DAY)
    df = sales([["t1", "S1", "P1", 2, 1.0, ts(9), None, "CARD", None, ts(9), 0, 1],
                ["t2", "S1", "P1", 3, 2.0, None, None, "CARD", None, ts(10), 0, 2]])
    with pytest.raises(etl.EtlError, match="1 raw events violate the contract: null timestamp"):
        etl.events_of_day(df, DAY)


def test_dim_date_uk_bank_holiday_weekend_and_other_countries():
    days = [DAY, dt.date(2011, 8, 27), dt.date(2011, 8, 30), dt.date(2011, 7, 14), dt.date(2011, 4, 29)]
    d = etl.build_dim_date(days, ["FR", "GB"], "GB").set_index("date_key")
    bh = d.loc[20110829]
    assert bh["is_holiday"] == 1 and "Bank Holiday" in bh["holiday_name"]
    assert bh["is_weekend"] == 0 and bh["day_of_week"] == 1 and bh["quarter"] == 3 and bh["month"] == 8
    sat = d.loc[20110827]
    assert sat["is_weekend"] == 1 and sat["is_holiday"] == 0 and sat["day_of_week"] == 6
    assert d.loc[20110830, "is_holiday"] == 0 and d.loc[20110830, "holiday_countries"] == []
    # 14 July is a French public holiday but not a British one
    assert d.loc[20110714, "is_holiday"] == 0 and d.loc[20110714, "holiday_countries"] == ["FR"]
    # the royal wedding bank holiday
    assert d.loc[20110429, "is_holiday"] == 1
    assert len(etl.calendar_days(dt.date(2011, 12, 15))) == 365 + 366  # 2011 and 2012


def test_closing_stock_last_update_and_carry_forward():
    upd = pd.DataFrame({
        "inventory_id": ["a", "b", "c"], "store_id": ["S1", "S1", "S2"], "product_id": ["P1", "P1", "P1"],
        "quantity_change": [-1, 10, -2], "new_quantity": [4, 14, 7], "reason": ["SALE", "RESTOCK", "SALE"],
        "reorder_point": [5, None, None], "timestamp": [ts(9), ts(15), ts(11)], "kafka_offset": [1, 2, 1]})
    c = etl.closing_stock(upd).set_index(["store_id", "product_id"])
    assert c.loc[("S1", "P1"), "closing_stock"] == 14       # the last update of the day wins
    assert c.loc[("S1", "P1"), "reorder_point"] == 5        # the last non-null reorder point
    assert math.isnan(c.loc[("S2", "P1"), "reorder_point"])
    # units received: the day's RESTOCK quantity_change (a receipt, 10), none for S2 (the nightly plan's on order)
    assert c["units_received"].to_dict() == {("S1", "P1"): 10, ("S2", "P1"): 0}
    today = pd.DataFrame({"store_key": [1, 2], "product_key": [10, 10], "closing_stock": [14, 7],
                          "last_update_time": [ts(15), ts(11)], "reorder_point": [5.0, np.nan],
                          "units_received": [10, 0]})
    prev = pd.DataFrame({"store_key": [2, 3], "product_key": [10, 10], "closing_stock": [9, 3],
                         "last_update_time": [ts(8), ts(8)], "reorder_point": [6.0, 2.0]})
    out = etl.carry_forward(today, prev).set_index(["store_key", "product_key"])
    assert len(out) == 3
    assert out.loc[(2, 10), "closing_stock"] == 7 and out.loc[(2, 10), "is_carried_forward"] == 0
    assert out.loc[(2, 10), "reorder_point"] == 6.0        # kept from the previous snapshot
    assert out.loc[(3, 10), "closing_stock"] == 3 and out.loc[(3, 10), "is_carried_forward"] == 1
    assert out["units_received"].to_dict() == {(1, 10): 10, (2, 10): 0, (3, 10): 0}   # carried forward: nothing came


def test_safety_stock_hand_computed():
    # 4-day window, one SKU sells 2, 0 (absent), 4, 2 -> mean 2, sample sigma = sqrt(8/3)
    daily = pd.DataFrame({"store_key": [1, 1, 1], "product_key": [7, 7, 7], "date_key": [1, 3, 4], "units": [2, 4, 2]})
    sig = etl.demand_sigma(daily, [1, 2, 3, 4])
    assert sig["sigma_daily"].item() == pytest.approx(math.sqrt(8 / 3))
    ss = etl.safety_stock_formula(sig["sigma_daily"].item(), 0.95, 4)
    assert ss == pytest.approx(1.6448536269514722 * math.sqrt(8 / 3) * 2)
    # the ETL's per-row safety stock (ml.optimize when present) agrees with the formula; NaN sigma stays NaN
    vals, method = etl.safety_stock(pd.Series([sig["sigma_daily"].item(), np.nan]), 0.95, 4)
    assert vals.iloc[0] == pytest.approx(ss) and math.isnan(vals.iloc[1]) and "sigma_28d" in method


def test_reconcile_reports_every_mismatch():
    exp = etl.LakeTotals(raw_rows=5, lines=4, units_net=10, units_sold=12, units_returned=2,
                         revenue=Decimal("12.3400"), duplicates=1)
    ok = {"rows": 4, "distinct_ids": 4, "units_net": 10, "units_sold": 12, "units_returned": 2,
          "revenue": Decimal("12.3400"), "orphan_products": 0, "orphan_stores": 0, "inventory_rows": 2,
          "inventory_keys": 2, "negative_stock": 0, "dim_date_rows": 1}
    assert etl.reconcile(exp, ok) == []
    bad = {**ok, "revenue": Decimal("12.3401"), "rows": 5, "distinct_ids": 4, "orphan_stores": 1}
    fails = etl.reconcile(exp, bad)
    assert any("revenue" in f for f in fails) and any("rows = 5" in f for f in fails)
    assert any("duplicate sale_id" in f for f in fails) and any("without dimension" in f for f in fails)
    err = etl.DataQualityError(DAY, fails)
    assert "2011-08-29" in str(err) and "revenue" in str(err)


def test_recheck_window_setting_and_changed_days(tmp_path, monkeypatch):
    """ETL_RECHECK_DAYS: 7 by default, a negative value fails fast naming it. days_to_recheck lists the loaded
    days whose raw listing changed since they were loaded (a file added), and only those."""
    import pyarrow as pa
    from conftest import local_lake_env

    from core.settings import ConfigError, get_settings

    monkeypatch.setenv("ETL_RECHECK_DAYS", "-1")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="ETL_RECHECK_DAYS"):
        get_settings()
    monkeypatch.delenv("ETL_RECHECK_DAYS")
    with local_lake_env(tmp_path) as lake:
        assert lake.settings.etl_recheck_days == 7
        days = [DAY - dt.timedelta(days=i) for i in (3, 2, 1)]
        for d in days:
            lake.write_table(pa.table({"transaction_id": ["a"]}), *etl.raw_partition(lake, etl.SALES, d), "batch-1.parquet")
            etl.write_manifest(lake, d, etl.LOADED_MANIFEST, etl.raw_manifest(lake, d))
        assert etl.days_to_recheck(lake, DAY, 7) == []
        lake.write_table(pa.table({"transaction_id": ["b"]}), *etl.raw_partition(lake, etl.SALES, days[0]), "batch-2.parquet")
        assert etl.days_to_recheck(lake, DAY, 7) == [days[0]]
        assert etl.days_to_recheck(lake, DAY, 2) == []   # outside the window
        with pytest.raises(ValueError, match=">= 0"):
            etl.days_to_recheck(lake, DAY, -1)


def test_a_product_master_with_text_negative_or_infinite_numbers_is_refused_by_name():
    """Until 2026-12-07 build_dim_product coerced the product master's numbers: a capacity written "n/a" became NULL
    (no capacity bound) and a cost of -1.5 a negative cost, margin and holding cost, both unseen. Now each bad column
    is named with its count and product ids; null (unknown) and 0 stay allowed."""
    good = pd.DataFrame({"product_id": ["P1", "P2", "P3"], "product_name": "x", "unit_cost": [1.0, None, 0.0],
                         "unit_price": [2.0, 3.0, 0.0], "shelf_life_days": [30, None, 0],
                         "reorder_point": [5, 0, None], "storage_capacity": [100, 0, None]})
    dim = etl.build_dim_product(good, pd.Series(["P1", "P9"]))
    assert dim.set_index("sku").loc["P3", ["unit_cost", "unit_price", "shelf_life_days"]].tolist() == [0.0, 0.0, 0]
    assert pd.isna(dim.set_index("sku").loc["P2", "unit_cost"]) and len(dim) == 4   # unknown kept; P9 a placeholder
    bad = good.astype({"storage_capacity": object, "unit_cost": object})
    bad.loc[0, "unit_cost"] = -1.5
    bad.loc[2, "unit_cost"] = float("inf")
    bad.loc[1, "storage_capacity"] = "n/a"
    with pytest.raises(etl.EtlError) as e:
        etl.build_dim_product(bad, pd.Series(["P1"]))
    msg = str(e.value)
    assert "unit_cost in 2 row(s)" in msg and "'P1': -1.5" in msg and "'P3': inf" in msg
    assert "storage_capacity in 1 row(s)" in msg and "'P2': 'n/a'" in msg
    assert "unit_price" not in msg and "reference/products" in msg


def test_product_master_bounds_blanks_kinds_and_duplicates(caplog):
    """Until 2026-12-07 (after the check above) numbers too large for their ClickHouse column passed the check and
    failed later, retried: storage_capacity 1e30 a TypeError in build_dim_product, 5e9 a DataError for UInt32 in
    ``load``; a blank cell (a CSV's empty field) was refused though null is accepted; True and a date were taken as
    numbers (1 and nanoseconds); a superseded duplicate row (the de-duplication keeps the last) refused the file.
    Versions read from the stored history are never refused: their bad numbers are read as unknown, with a
    warning naming the history file, the column and the product id."""
    import logging

    base = {"product_id": ["P1", "P2"], "product_name": "x", "unit_cost": [1.0, 2.0], "unit_price": [2.0, 3.0],
            "shelf_life_days": [30, 20], "reorder_point": [5, 6], "storage_capacity": [100, 200]}

    def refused(col: str, value) -> str:
        bad = pd.DataFrame(base).astype({col: object})
        bad.loc[1, col] = value
        with pytest.raises(etl.EtlError) as e:
            etl.build_dim_product(bad, pd.Series(dtype=object))
        return str(e.value)

    for value in (1e30, 5e9, 4_294_967_295.6):   # above UInt32 (the last after rounding)
        assert f"storage_capacity in 1 row(s) (e.g. 'P2': {value!r})" in refused("storage_capacity", value)
    assert "unit_cost in 1 row(s)" in refused("unit_cost", 1e15)        # above Decimal(18, 4)
    assert "reorder_point in 1 row(s) (e.g. 'P2': True)" in refused("reorder_point", True)
    assert "shelf_life_days in 1 row(s)" in refused("shelf_life_days", pd.Timestamp("2026-01-01"))
    bool_col = pd.DataFrame(base).assign(reorder_point=[True, False])   # a whole boolean column
    with pytest.raises(etl.EtlError, match="reorder_point in 2 row"):
        etl.build_dim_product(bool_col, pd.Series(dtype=object))
    edge = pd.DataFrame(base).astype({"storage_capacity": object, "unit_price": object})
    edge.loc[0, "storage_capacity"], edge.loc[1, "storage_capacity"] = 4_294_967_295, ""    # the max; blank = null
    edge.loc[0, "unit_price"] = " "
    dim = etl.build_dim_product(edge, pd.Series(dtype=object)).set_index("sku")
    assert dim.loc["P1", "storage_capacity"] == 4_294_967_295 and pd.isna(dim.loc["P2", "storage_capacity"])
    assert pd.isna(dim.loc["P1", "unit_price"])
    dup = pd.concat([pd.DataFrame(base).assign(unit_cost=[-1.0, 2.0]), pd.DataFrame(base)], ignore_index=True)
    assert etl.build_dim_product(dup, pd.Series(dtype=object)).set_index("sku").loc["P1", "unit_cost"] == 1.0
    with pytest.raises(etl.EtlError, match=r"unit_cost in 1 row\(s\) \(e.g. 'P1': -1.0\)"):
        etl.build_dim_product(dup.iloc[::-1].reset_index(drop=True), pd.Series(dtype=object))   # the last is bad
    hist = pd.DataFrame(base).astype({"storage_capacity": object})
    hist.loc[0, "unit_cost"], hist.loc[1, "storage_capacity"] = -1.5, "n/a"
    with caplog.at_level(logging.WARNING, logger=etl.log.name):
        dim = etl.build_dim_product(hist, pd.Series(dtype=object), history="features/h/products.parquet")
    dim = dim.set_index("sku")
    assert pd.isna(dim.loc["P1", "unit_cost"]) and pd.isna(dim.loc["P2", "storage_capacity"])
    assert dim.loc["P2", "unit_cost"] == 2.0 and dim.loc["P1", "storage_capacity"] == 100
    warned = " | ".join(r.getMessage() for r in caplog.records)
    assert "features/h/products.parquet: unit_cost of 1 version(s)" in warned and "'P1': -1.5" in warned
    assert "storage_capacity of 1 version(s)" in warned and "'P2': 'n/a'" in warned
