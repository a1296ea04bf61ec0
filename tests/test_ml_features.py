"""Feature engineering: gap filling, rolling windows on a toy series, and no leakage past the origin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.features import (HISTORY_COLUMNS, build_daily_features, complete_series, feature_columns,
                         make_supervised, validate_daily)


def toy(values, start="2024-01-01", store="S1", product="P1", price=2.0):
    dates = pd.date_range(start, periods=len(values), freq="D")
    return pd.DataFrame({"date": dates, "store_id": store, "product_id": product,
                         "units": np.asarray(values, dtype=float), "price": price})


def test_complete_series_fills_gaps_with_zero_and_extends_future():
    d = toy([3, 5, 7, 9]).drop(index=[1, 2])  # days 2 and 3 missing
    out = complete_series(d, extend_days=2)
    assert out["date"].tolist() == list(pd.date_range("2024-01-01", periods=6, freq="D"))
    assert out["units"].tolist()[:4] == [3.0, 0.0, 0.0, 9.0]
    assert out["units"].iloc[4:].isna().all()
    assert (out["price"] == 2.0).all()


def test_series_start_is_first_active_day():
    d = toy([0, 0, 4, 1])
    d.loc[:1, "price"] = np.nan  # not on sale on the first two days
    out = complete_series(d)
    assert out["date"].min() == pd.Timestamp("2024-01-03") and len(out) == 2


def test_validate_rejects_negative_and_duplicates():
    with pytest.raises(ValueError, match="negative units"):
        validate_daily(toy([1, -2]))
    with pytest.raises(ValueError, match="duplicate"):
        validate_daily(pd.concat([toy([1]), toy([2])]))
    with pytest.raises(ValueError, match="lacks column"):
        validate_daily(toy([1]).drop(columns=["price"]))


def test_lags_and_rolling_windows_on_toy_series():
    vals = np.arange(1, 41, dtype=float)  # y = 1, 2, ..., 40 on 2024-01-01..
    f = build_daily_features(toy(vals), extend_days=0, default_country=None)
    r = f.set_index("date")
    d = pd.Timestamp("2024-01-31")  # y_d = 31; history strictly before d: 1..30
    row = r.loc[d]
    assert row["units"] == 31
    assert row["lag_1"] == 30 and row["lag_7"] == 24 and row["lag_14"] == 17 and row["lag_28"] == 3
    assert row["rmean_7"] == pytest.approx(np.mean(np.arange(24, 31)))       # 24..30 -> 27
    assert row["rstd_7"] == pytest.approx(np.std(np.arange(24, 31), ddof=1))
    assert row["rmean_14"] == pytest.approx(np.mean(np.arange(17, 31)))
    assert row["rmean_30"] == pytest.approx(np.mean(np.arange(1, 31)))       # all 30 days before d
    assert row["rmean_90"] == pytest.approx(np.mean(np.arange(1, 31)))       # shorter history: min_periods=1
    assert row["days_since_sale"] == 0 and row["zero_share_28"] == 0
    assert row["dow"] == d.dayofweek and row["month"] == 1 and row["season"] == 0


def test_days_since_sale_and_zero_share():
    f = build_daily_features(toy([5, 0, 0, 0, 2, 0]), extend_days=0, default_country=None).set_index("date")
    # row 2024-01-05: last sale before it was 2024-01-01 -> 3 empty days in between
    assert f.loc["2024-01-05", "days_since_sale"] == 3
    assert f.loc["2024-01-05", "zero_share_28"] == pytest.approx(3 / 4)
    assert f.loc["2024-01-06", "days_since_sale"] == 0


def test_price_change_and_promo_proxy():
    d = toy([1] * 20)
    d.loc[d.index[-3:], "price"] = 1.5  # 25 % price cut for the last three days
    f = build_daily_features(d, extend_days=0, default_country=None).set_index("date")
    assert f["promo"].iloc[-1] == 1 and f["promo"].iloc[0] == 0
    assert f.loc["2024-01-18", "price_change_7"] == pytest.approx(1.5 / 2.0 - 1)


def test_holidays_from_package_for_country():
    d = toy([1] * 10, start="2024-12-20")
    f = build_daily_features(d, extend_days=0, default_country="GB").set_index("date")
    assert f.loc["2024-12-25", "holiday"] == 1 and f.loc["2024-12-27", "holiday"] == 0


def test_no_leakage_features_at_origin_ignore_later_data():
    rng = np.random.default_rng(0)
    vals = rng.poisson(5, 200).astype(float)
    t = pd.Timestamp("2024-01-01") + pd.Timedelta(days=150)  # forecast origin
    a = toy(vals)
    b = a.copy()
    after = b["date"] > t
    b.loc[after, "units"] = rng.poisson(50, int(after.sum()))  # completely different future
    b.loc[after, "price"] = 2.0  # known-in-advance covariates identical
    sa = make_supervised(build_daily_features(a, default_country=None))
    sb = make_supervised(build_daily_features(b, default_country=None))
    cols = feature_columns(sa) + ["seasonal_naive"]
    ra = sa[sa["origin"] == t].sort_values("h").reset_index(drop=True)
    rb = sb[sb["origin"] == t].sort_values("h").reset_index(drop=True)
    assert len(ra) == 7
    pd.testing.assert_frame_equal(ra[cols], rb[cols])
    assert not np.allclose(ra["y"], rb["y"])  # the targets (after t) differ, the features do not


def test_supervised_alignment_against_direct_computation():
    vals = np.arange(100, dtype=float)
    sup = make_supervised(build_daily_features(toy(vals), default_country=None))
    t = pd.Timestamp("2024-01-01") + pd.Timedelta(days=60)  # y_t = 60
    rows = sup[sup["origin"] == t].set_index("h")
    for h in range(1, 8):
        assert rows.loc[h, "y"] == 60 + h                  # target y_{t+h}
        assert rows.loc[h, "lag_1"] == 60                  # last observed value y_t
        assert rows.loc[h, "rmean_7"] == np.mean(np.arange(54, 61))
        assert rows.loc[h, "seasonal_naive"] == 60 + h - 7  # y_{t+h-7} <= y_t
        assert rows.loc[h, "lag_14"] == 60 + h - 14
        assert rows.loc[h, "date"] == t + pd.Timedelta(days=h)
    assert set(HISTORY_COLUMNS) <= set(sup.columns)


def test_future_rows_for_forecast():
    sup = make_supervised(build_daily_features(toy(np.ones(50)), default_country=None, extend_days=7))
    T = pd.Timestamp("2024-01-01") + pd.Timedelta(days=49)
    fut = sup[sup["origin"] == T]
    assert sorted(fut["h"]) == list(range(1, 8)) and fut["y"].isna().all()
    assert (fut["lag_1"] == 1).all() and (fut["rmean_7"] == 1).all()
    with pytest.raises(ValueError):
        make_supervised(build_daily_features(toy(np.ones(10)), default_country=None), horizons=[8])


def test_weather_joined_on_day_and_country():
    d = toy([1, 2, 3]).assign(country_code="GB")
    w = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=4, freq="D"), "country_code": "GB",
                      "temp_c": [1.0, 2.0, 3.0, 4.0], "precip_mm": [0.0, 0.5, 0.0, 9.0]})
    f = build_daily_features(d, extend_days=1, default_country=None, weather=w).set_index("date")
    assert f["temp_c"].tolist() == [1.0, 2.0, 3.0, 4.0]  # the future day gets the (forecast) weather too
    assert "temp_c" in feature_columns(f)
    with pytest.raises(ValueError, match="weather table"):
        build_daily_features(d, default_country=None, weather=w.drop(columns=["temp_c"]))
