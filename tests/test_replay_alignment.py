"""ops.replay_alignment: daily demand on whole-day and split-day dates, against a hand computation."""

from __future__ import annotations

import pandas as pd
import pytest

from ops.replay_alignment import daily_demand

pytestmark = pytest.mark.integration  # the demand_daily view on the real engine (chDB, ops.uci_demand)

COLS = ["invoice", "line_no", "stock_code", "description", "quantity", "unit_price", "invoice_ts", "customer_id",
        "country", "source"]
ROWS = [  # November: GMT, so London time = UTC
    ["536001", "1", "85123A", "HEART", "6", "2.55", "2010-11-01 19:30:00", "17850", "United Kingdom", "x"],
    ["536002", "1", "85123A", "HEART", "4", "2.00", "2010-11-02 08:00:00", "17850", "United Kingdom", "x"],
    ["536002", "2", "22633", "HAND WARMER", "12", "1.85", "2010-11-02 08:00:00", "17850", "France", "x"],
    ["C536003", "1", "85123A", "HEART", "-2", "2.55", "2010-11-02 09:00:00", "17850", "United Kingdom", "x"],
    ["536004", "1", "POST", "POSTAGE", "1", "18.00", "2010-11-02 09:30:00", "", "France", "x"],
]


@pytest.fixture()
def tx():
    return pd.DataFrame(ROWS, columns=COLS)


def _as_dict(d: pd.DataFrame) -> dict:
    return {(str(r.date.date()), r.store_id, r.product_id): (r.units, round(r.price, 4)) for r in d.itertuples()}


def test_whole_days_keep_each_trading_day_on_its_date(tx):
    # sale lines only (the return, the postage line skipped, as the replay decides); dates as in the log
    assert _as_dict(daily_demand(tx, 0)) == {
        ("2010-11-01", "United Kingdom", "85123A"): (6.0, 2.55),
        ("2010-11-02", "United Kingdom", "85123A"): (4.0, 2.0),
        ("2010-11-02", "France", "22633"): (12.0, 1.85)}
    # a whole-day shift moves every date by one day, nothing else
    assert _as_dict(daily_demand(tx, 24)) == {
        ("2010-11-02", "United Kingdom", "85123A"): (6.0, 2.55),
        ("2010-11-03", "United Kingdom", "85123A"): (4.0, 2.0),
        ("2010-11-03", "France", "22633"): (12.0, 1.85)}


def test_a_split_shift_puts_two_trading_days_on_one_date(tx):
    # +6 h: 19:30 -> 01:30 the next day, on the date of the next morning's 08:00 -> 14:00 sale
    got = _as_dict(daily_demand(tx, 6))
    assert got == {("2010-11-02", "United Kingdom", "85123A"): (10.0, round((6 * 2.55 + 4 * 2.0) / 10, 4)),
                   ("2010-11-02", "France", "22633"): (12.0, 1.85)}
