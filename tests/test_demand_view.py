"""The demand the forecasts and the safety stock learn from: ClickHouse's ``demand_daily`` view
(``clickhouse/migrations/015_demand.sql``) through ``ml.pipeline.demand_sql``, on the real engine, against an
independent computation.

Same-day order cancellations are netted: a return line cancels a sale line of the same day, store, SKU and
customer with the same units, at or before it, that no earlier return cancelled. The oracle walks each group's
lines in time order and matches them one by one (a queue of open sale lines), where the view counts with
``arrayCumSumNonNegative``; random lines with few customers, quantities and minutes make ties, returns before
their sale, repeated returns, partial returns, anonymous customers and returns of another day common.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from conftest import cancelled_units

pytestmark = pytest.mark.integration

DAY0 = dt.date(2024, 3, 1)


def random_lines(seed: int = 11, n: int = 3_000) -> pd.DataFrame:
    """fact_sales lines: 3 days x 2 stores x 3 SKUs, customers C1..C3 / NULL / '', quantities 1..3 or 12,
    about a third of them returns, times on a 30-minute grid (ties)."""
    rng = np.random.default_rng(seed)
    day = rng.integers(0, 3, n)
    ret = rng.random(n) < 0.35
    qty = rng.choice([1, 2, 3, 12], n) * np.where(ret, -1, 1)
    t = [dt.datetime.combine(DAY0 + dt.timedelta(days=int(d)), dt.time(9), dt.timezone.utc)
         + dt.timedelta(minutes=30 * int(m)) for d, m in zip(day, rng.integers(0, 16, n))]
    cust = rng.choice(np.array(["C1", "C2", "C3", None, ""], dtype=object), n, p=[0.3, 0.25, 0.25, 0.1, 0.1])
    price = rng.choice([1.25, 2.5, 4.0], n)
    dates = [DAY0 + dt.timedelta(days=int(d)) for d in day]
    return pd.DataFrame({"sale_id": [f"L{i}" for i in range(n)], "date": dates,
                         "event_time": t, "store_key": rng.integers(1, 3, n).astype("uint64"),
                         "product_key": rng.integers(11, 14, n).astype("uint64"), "customer_id": cust,
                         "quantity": qty.astype("int32"), "unit_price": price, "is_return": ret.astype("uint8")})


def oracle(lines: pd.DataFrame) -> pd.DataFrame:
    """Per date x store x SKU: units_sold, units_cancelled (:func:`conftest.cancelled_units`, one-by-one
    matching in time order), units, revenue_sold; sorted by store, SKU, date."""
    keys = ["date", "store_key", "product_key"]
    cancelled = cancelled_units(lines, keys)
    sold = lines.assign(q=lines["quantity"].clip(lower=0), rev=lines["quantity"].clip(lower=0) * lines["unit_price"])
    out = sold.groupby(keys, as_index=False).agg(units_sold=("q", "sum"), revenue_sold=("rev", "sum"))
    out["units_cancelled"] = [cancelled.get(k, 0) for k in zip(out["date"], out["store_key"], out["product_key"])]
    out["units"] = out["units_sold"] - out["units_cancelled"]
    return out.sort_values(["store_key", "product_key", "date"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def star(native_stack):
    """The random lines in a fresh database's fact_sales, with their stores and SKUs in the dimensions."""
    from core.clickhouse import get_client

    client, db = get_client(native_stack), native_stack.clickhouse_database
    lines = random_lines()
    client.insert(f"{db}.dim_store",
                  [[k, f"ST-{k}", f"ST-{k}", "City", "United Kingdom", "GB", "EU", 1] for k in (1, 2)],
                  column_names=["store_key", "store_id", "store_name", "city", "country", "country_code", "region",
                                "is_known"])
    client.insert(f"{db}.dim_product", [[k, f"SKU-{k}", f"SKU-{k}", "c", "s", "b", "sup", 1.0, 2.0, 30, 10, 400, 1]
                                        for k in (11, 12, 13)],
                  column_names=["product_key", "sku", "product_name", "category", "sub_category", "brand", "supplier",
                                "unit_cost", "unit_price", "shelf_life_days", "reorder_point", "storage_capacity",
                                "is_known"])
    rows = [[r.sale_id, int(r.date.strftime("%Y%m%d")), r.event_time, r.product_key, r.store_key, r.customer_id,
             "CARD", r.quantity, r.unit_price, Decimal(int(r.quantity)) * Decimal(repr(r.unit_price)), r.is_return]
            for r in lines.itertuples(index=False)]
    client.insert(f"{db}.fact_sales", rows, column_names=["sale_id", "date_key", "event_time", "product_key",
                                                          "store_key", "customer_id", "payment_method", "quantity",
                                                          "unit_price", "revenue", "is_return"],
                  settings={"max_partitions_per_insert_block": 0})
    return client, db, lines


def test_demand_daily_nets_same_day_cancellations_as_one_by_one_matching_does(star):
    client, db, lines = star
    want = oracle(lines)
    # the generator makes every case common: matched and unmatched returns, in every day x store x SKU
    assert 0 < want["units_cancelled"].sum() < lines.loc[lines["is_return"] == 1, "quantity"].abs().sum()
    got = client.query_df(f"SELECT * FROM {db}.demand_daily WHERE store_key IN (1, 2)").sort_values(
        ["store_key", "product_key", "date_key"]).reset_index(drop=True)
    assert got["date_key"].tolist() == [int(d.strftime("%Y%m%d")) for d in want["date"]]
    for c in ("store_key", "product_key", "units_sold", "units_cancelled", "units"):
        assert got[c].astype("int64").tolist() == want[c].astype("int64").tolist(), c
    np.testing.assert_allclose(got["revenue_sold"].astype("float64"), want["revenue_sold"], rtol=1e-12)


def test_demand_sql_serves_the_netted_units_and_the_realised_price(star):
    from ml.pipeline import load_daily_demand

    client, db, lines = star
    want = oracle(lines)
    got = load_daily_demand(client, db, DAY0 + dt.timedelta(days=1))   # end_date: the third day is left out
    want = want[want["date"] <= DAY0 + dt.timedelta(days=1)]
    assert len(got) == len(want) == 2 * 2 * 3
    assert got["store_id"].tolist() == [f"ST-{k}" for k in want["store_key"]]
    assert got["product_id"].tolist() == [f"SKU-{k}" for k in want["product_key"]]
    assert got["units"].tolist() == want["units"].astype("float64").tolist()
    np.testing.assert_allclose(got["price"], want["revenue_sold"] / want["units_sold"], rtol=1e-12)
    assert (got["country_code"] == "GB").all()


def test_a_cancelled_bulk_order_is_no_demand_a_later_return_is(native_stack):
    """The UCI case: 74,215 units keyed in and cancelled 16 minutes later by the same customer (invoice 541431,
    C541433) are no demand; the same order returned the next day was demand on its day."""
    from core.clickhouse import get_client

    client = get_client(native_stack)
    db = native_stack.clickhouse_database
    t0 = dt.datetime(2024, 4, 2, 10, 1, tzinfo=dt.timezone.utc)
    rows = [["B1", 20240402, t0, 21, 3, "12346", "CARD", 74215, 1.04, Decimal("77183.60"), 0],
            ["B2", 20240402, t0 + dt.timedelta(minutes=16), 21, 3, "12346", "CARD", -74215, 1.04,
             Decimal("-77183.60"), 1],
            ["B3", 20240402, t0, 22, 3, "12346", "CARD", 500, 1.0, Decimal("500"), 0],
            ["B4", 20240403, t0 + dt.timedelta(days=1), 22, 3, "12346", "CARD", -500, 1.0, Decimal("-500"), 1]]
    client.insert(f"{db}.fact_sales", rows, column_names=["sale_id", "date_key", "event_time", "product_key",
                                                          "store_key", "customer_id", "payment_method", "quantity",
                                                          "unit_price", "revenue", "is_return"],
                  settings={"max_partitions_per_insert_block": 0})
    got = client.query(f"SELECT product_key, date_key, units_sold, units_cancelled, units FROM {db}.demand_daily "
                       f"WHERE store_key = 3 ORDER BY product_key, date_key").result_rows
    assert [tuple(int(v) for v in r) for r in got] == [(21, 20240402, 74215, 74215, 0), (22, 20240402, 500, 0, 500),
                                                       (22, 20240403, 0, 0, 0)]


def test_cancelled_orders_comparison_scores_by_hand():
    """ops.cancelled_orders.compare on a table small enough to score by hand: one series, 28 days of history
    (2 units sold a day, 28 of day 10's cancelled), 2 days ahead (1 unit each)."""
    from ops.cancelled_orders import compare

    days = pd.date_range("2024-01-01", periods=30, freq="D")
    daily = pd.DataFrame({"date_key": [int(d.strftime("%Y%m%d")) for d in days], "store_key": 1, "product_key": 1,
                          "units_sold": [2] * 28 + [1, 1], "units_cancelled": 0})
    daily.loc[9, ["units_sold", "units_cancelled"]] = [30, 28]
    daily["units"] = daily["units_sold"] - daily["units_cancelled"]
    got = compare(daily, pd.DatetimeIndex([days[27]]), horizon=2)
    # gross history: (27 x 2 + 30) / 28 = 3 a day; net: 2 a day; the truth is 1, 1 either way
    for series in ("all", "cancelled_in_window"):
        g, n = got.loc[(series, "net", "gross")], got.loc[(series, "net", "net")]
        assert (g["n"], n["n"]) == (1, 1)
        assert g["wape"] == pytest.approx(2.0) and g["bias"] == pytest.approx(2.0)
        assert n["wape"] == pytest.approx(1.0) and n["bias"] == pytest.approx(1.0)


def test_revenue_is_summed_exactly(native_stack):
    """revenue_sold is the exact Decimal sum, converted once: ten sale lines of 0.10 make 1.0, where Float64
    addition makes 0.9999999999999999 (and sums in thread order, so a price's last bits varied between runs)."""
    from core.clickhouse import get_client

    client = get_client(native_stack)
    db = native_stack.clickhouse_database
    t0 = dt.datetime(2024, 5, 6, 10, 0, tzinfo=dt.timezone.utc)
    rows = [[f"R{i}", 20240506, t0 + dt.timedelta(minutes=i), 31, 4, None, "CASH", 1, 0.1, Decimal("0.1"), 0]
            for i in range(10)]
    client.insert(f"{db}.fact_sales", rows, column_names=["sale_id", "date_key", "event_time", "product_key",
                                                          "store_key", "customer_id", "payment_method", "quantity",
                                                          "unit_price", "revenue", "is_return"])
    got = client.query(f"SELECT units_sold, revenue_sold FROM {db}.demand_daily "
                       f"WHERE store_key = 4 AND product_key = 31").result_rows
    assert got == [(10, 1.0)]
