"""ops.uci_demand: the platform's daily demand of the UCI log (the demand_daily view on the real engine, in a child
process), by hand on a few lines and against an independent pandas computation on the shipped real sample."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import cancelled_units
from ops.uci_demand import daily_demand
from producers.replay import classify_rows, load_transactions

pytestmark = pytest.mark.integration  # the real engine (chDB) in a child process

COLS = ["invoice", "line_no", "stock_code", "description", "quantity", "unit_price", "invoice_ts", "customer_id",
        "country"]
ROWS = [
    # UK, customer 17850: 6 + 4 units of one product (its code written in two cases), the 6 cancelled 20 min later
    ["536001", "1", "85123A", "HEART", "6", "2.55", "2010-11-01 10:00:00", "17850", "United Kingdom"],
    ["536002", "1", "85123a", "HEART", "4", "2.00", "2010-11-01 10:05:00", "17850", "United Kingdom"],
    ["C536003", "1", "85123A", "HEART", "-6", "2.55", "2010-11-01 10:20:00", "17850", "United Kingdom"],
    # anonymous sale and return: nothing ties them to one order, so the 12 stay demand
    ["536004", "1", "22633", "HAND WARMER", "12", "1.85", "2010-11-01 11:00:00", "", "United Kingdom"],
    ["C536005", "1", "22633", "HAND WARMER", "-12", "1.85", "2010-11-01 11:10:00", "", "United Kingdom"],
    # France: sold on the 1st, returned on the 2nd (a return, not a cancellation)
    ["536006", "1", "22633", "HAND WARMER", "5", "1.85", "2010-11-01 12:00:00", "12345", "France"],
    ["C536007", "1", "22633", "HAND WARMER", "-5", "1.85", "2010-11-02 09:00:00", "12345", "France"],
    # not demand: postage, a write-off, an A invoice, a line whose time does not parse
    ["536008", "2", "POST", "POSTAGE", "1", "18.00", "2010-11-01 12:00:00", "12345", "France"],
    ["536009", "1", "22633", "damaged", "-3", "0", "2010-11-01 13:00:00", "", "United Kingdom"],
    ["A536010", "1", "B", "Adjust bad debt", "1", "-11062.06", "2010-11-01 14:00:00", "", "United Kingdom"],
    ["536011", "1", "22633", "HAND WARMER", "7", "1.85", "not a time", "17850", "United Kingdom"],
]


def _as_dict(d: pd.DataFrame) -> dict:
    return {(str(r.date.date()), r.store_id, r.product_id): (r.units_sold, r.units_cancelled, r.units,
                                                             None if math.isnan(r.price) else round(r.price, 4))
            for r in d.itertuples()}


def test_by_hand_cancellations_cases_and_dates():
    tx = pd.DataFrame(ROWS, columns=COLS)
    want = {("2010-11-01", "United Kingdom", "85123A"): (10.0, 6.0, 4.0, round((6 * 2.55 + 4 * 2.0) / 10, 4)),
            ("2010-11-01", "United Kingdom", "22633"): (12.0, 0.0, 12.0, 1.85),
            ("2010-11-01", "France", "22633"): (5.0, 0.0, 5.0, 1.85),
            ("2010-11-02", "France", "22633"): (0.0, 0.0, 0.0, None)}
    got = daily_demand(tx)
    assert _as_dict(got) == want
    assert list(got.columns) == ["date", "store_id", "product_id", "units_sold", "units_cancelled", "units", "price"]
    # given dates (here each line's a day later; the unparseable line's NaT) replace the log's own
    dates = pd.to_datetime(tx["invoice_ts"], errors="coerce") + pd.Timedelta(days=1)
    shifted = {(str((pd.Timestamp(k[0]) + pd.Timedelta(days=1)).date()), *k[1:]): v for k, v in want.items()}
    assert _as_dict(daily_demand(tx, dates)) == shifted


def test_real_sample_against_pandas(shipped_sample_path):
    """The shipped real sample (129,997 lines): units sold, revenue and the same-day cancellations (the one-by-one
    oracle, tests/conftest.py) per date x country x product computed in pandas equal the view's."""
    tx = load_transactions(shipped_sample_path)
    got = daily_demand(tx).set_index(["date", "store_id", "product_id"]).sort_index()
    kind, _ = classify_rows(tx)
    t = tx[np.isin(kind, ["sale", "return"])]
    lines = pd.DataFrame({"date": pd.to_datetime(t["invoice_ts"].str[:10]), "store_id": t["country"],
                          "product_id": t["stock_code"].str.strip().str.upper(),
                          "quantity": t["quantity"].astype(int), "revenue": t["quantity"].astype(int)
                          * t["unit_price"].astype(float), "event_time": t["invoice_ts"],
                          "customer_id": t["customer_id"].str.strip()})
    keys = ["date", "store_id", "product_id"]
    sold = lines[lines["quantity"] > 0].groupby(keys)[["quantity", "revenue"]].sum()
    want = lines.groupby(keys).size().to_frame("n").join(sold).fillna(0.0)
    cancelled = pd.Series(cancelled_units(lines, keys), dtype="float64")
    want["units_cancelled"] = cancelled.reindex(want.index).fillna(0.0) if len(cancelled) else 0.0
    assert cancelled.sum() > 0  # the sample holds same-day cancellations (else this test checks less than it says)
    assert got.index.equals(want.index)
    assert np.array_equal(got["units_sold"], want["quantity"])
    assert np.array_equal(got["units_cancelled"], want["units_cancelled"])
    assert np.array_equal(got["units"], want["quantity"] - want["units_cancelled"])
    price = want["revenue"] / want["quantity"].where(want["quantity"] > 0)
    assert np.allclose(got["price"], price, rtol=1e-9, equal_nan=True)
    assert got.index.get_level_values("product_id").str.upper().equals(got.index.get_level_values("product_id"))


@pytest.fixture()
def shipped_sample_path():
    from core.settings import REPO_ROOT

    return REPO_ROOT / "producers" / "data" / "uci_online_retail_sample.csv.gz"
