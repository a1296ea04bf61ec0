"""Feature engineering: gap filling, rolling windows on a toy series, and no leakage past the origin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.features import (HISTORY_COLUMNS, build_daily_features, complete_series, feature_columns,
                         make_supervised, sorted_by_series, validate_daily)


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
    vals = rng.poisson(5, 240).astype(float)
    t = pd.Timestamp("2024-01-01") + pd.Timedelta(days=150)  # forecast origin
    a = toy(vals)
    b = a.copy()
    after = b["date"] > t
    b.loc[after, "units"] = rng.poisson(50, int(after.sum()))  # completely different future
    # and prices paid after t (the platform's price is revenue / units: it reveals the sales of its day)
    b.loc[after, "price"] = rng.choice([1.0, 1.5, 3.0], int(after.sum()))
    # a second series in the same store and of the same item: the item/store-level features must not leak either
    a = pd.concat([a, toy(vals[::-1].copy(), store="S2")], ignore_index=True)
    b = pd.concat([b, a[a["store_id"] == "S2"]], ignore_index=True)
    b.loc[(b["store_id"] == "S2") & (b["date"] > t), "units"] = 99.0
    sa = make_supervised(build_daily_features(a, default_country=None, extend_days=28), origins=[t])
    sb = make_supervised(build_daily_features(b, default_country=None, extend_days=28), origins=[t])
    cols = feature_columns(sa) + ["seasonal_naive", "trailing_mean_28"]
    assert len(sa) == 2 * 28 and sorted(sa["h"].unique()) == list(range(1, 29))
    pd.testing.assert_frame_equal(sa[cols], sb[cols])
    assert not np.allclose(sa["y"], sb["y"])  # the targets (after t) differ, the features do not
    assert (sa["price"] == 2.0).all()
    # a price list published ahead (M5's sell prices): the target day's price is a legitimate input
    fb = build_daily_features(b, default_country=None, extend_days=28)
    ahead = make_supervised(fb, origins=[t], prices_known_ahead=True).set_index(["store_id", "date"])
    want = fb.set_index(["store_id", "date"]).loc[ahead.index, "price"]
    np.testing.assert_array_equal(ahead["price"].to_numpy(), want.to_numpy())
    assert not (ahead.loc["S1", "price"] == 2.0).all()


def test_no_price_is_filled_back_from_a_day_after_the_row():
    """A series sold for 10 days before its first known price (day 11): rows before it knew no price. Until
    2026-12-06 the price was back-filled, so the features at an origin before day 11 carried day 11's price
    (3.0 in one table, 5.0 in the other: the backtest's covariates differed with a price first seen later)."""
    vals = np.r_[np.full(10, 2.0), np.full(30, 1.0)]
    a = toy(vals, price=np.nan)
    a.loc[10:, "price"] = 3.0
    b = a.copy()
    b.loc[10:, "price"] = 5.0
    t = pd.Timestamp("2024-01-08")  # origin before the first price (2024-01-11)
    fa = build_daily_features(a, default_country=None, extend_days=0)
    fb = build_daily_features(b, default_country=None, extend_days=0)
    cols = ["price", "price_change_7", "price_rel_28", "promo"]
    early = fa["date"] < pd.Timestamp("2024-01-11")
    pd.testing.assert_frame_equal(fa.loc[early, cols], fb.loc[early, cols])
    # independently: no price known yet -> price 0, neutral ratios, no promotion
    assert (fa.loc[early, "price"] == 0).all() and (fa.loc[early, "price_rel_28"] == 1).all()
    assert (fa.loc[early, "price_change_7"] == 0).all() and (fa.loc[early, "promo"] == 0).all()
    assert (fa.loc[~early, "price"] == 3.0).all()
    sa = make_supervised(fa, origins=[t], horizons=range(1, 8))
    sb = make_supervised(fb, origins=[t], horizons=range(1, 8))
    assert len(sa) == 7
    pd.testing.assert_frame_equal(sa[feature_columns(sa)], sb[feature_columns(sb)])


def test_supervised_alignment_against_direct_computation():
    vals = np.arange(200, dtype=float)
    sup = make_supervised(build_daily_features(toy(vals), default_country=None))
    t = pd.Timestamp("2024-01-01") + pd.Timedelta(days=100)  # y_t = 100
    rows = sup[sup["origin"] == t].set_index("h")
    assert sorted(rows.index) == list(range(1, 29))
    for h in range(1, 29):
        k = -(-h // 7)
        assert rows.loc[h, "y"] == 100 + h                       # target y_{t+h}
        assert rows.loc[h, "lag_1"] == 100                       # last observed value y_t
        assert rows.loc[h, "rmean_7"] == np.mean(np.arange(94, 101))
        assert rows.loc[h, "trailing_mean_28"] == np.mean(np.arange(73, 101))
        assert rows.loc[h, "rmean_365"] == np.mean(np.arange(0, 101))  # shorter history: all of it
        assert rows.loc[h, "seasonal_naive"] == 100 + h - 7 * k  # last same-weekday value <= t
        assert rows.loc[h, "seas_lag_2"] == 100 + h - 7 * k - 7
        assert rows.loc[h, "seas_mean_4"] == np.mean([100 + h - 7 * (k + m) for m in range(4)])
        assert rows.loc[h, "seas_mean_52"] == np.mean([v for m in range(52) if (v := 100 + h - 7 * (k + m)) >= 0])
        assert rows.loc[h, "level"] == np.mean(np.arange(73, 101))  # the trailing 28-day mean
        assert rows.loc[h, "n_lag_1"] == pytest.approx(100 / rows.loc[h, "level"])
        assert rows.loc[h, "date"] == t + pd.Timedelta(days=h)
        assert rows.loc[h, "dow"] == (t + pd.Timedelta(days=h)).dayofweek
    assert set(HISTORY_COLUMNS) <= set(sup.columns)


def test_same_weekday_means_stay_within_each_series():
    """seas_mean_4 / seas_mean_52 against a direct list of same-weekday values, for two series back to back in
    the table: a long one (the 52-week window lies inside it) and a short one starting later (the window is
    cut at its first day, never reaching into the previous series)."""
    long_vals, short_vals = np.arange(500, dtype=float), 1000.0 + np.arange(120, dtype=float)
    f = build_daily_features(pd.concat([toy(long_vals, product="P1"), toy(short_vals, start="2025-01-01", product="P2")]),
                             default_country=None)
    sup = make_supervised(f).set_index(["product_id", "origin", "h"])
    for product, vals, start, t in (("P1", long_vals, "2024-01-01", 450), ("P2", short_vals, "2025-01-01", 60)):
        origin = pd.Timestamp(start) + pd.Timedelta(days=t)
        for h in (1, 7, 8, 28):
            k = -(-h // 7)
            same = [vals[d] for m in range(52) if (d := t + h - 7 * (k + m)) >= 0]
            row = sup.loc[(product, origin, h)]
            assert row["seas_mean_52"] == pytest.approx(np.mean(same), rel=1e-12)
            assert row["seas_mean_4"] == pytest.approx(np.mean(same[:4]), rel=1e-12)
    assert len(same) < 52  # the short series' window was cut at its start


def test_level_is_trailing_mean_floored_for_slow_movers():
    from ml.features import LEVEL_FLOOR

    vals = np.zeros(120)
    vals[[10, 50, 95]] = 1.0  # 1 unit in the 28 days before origin 100: mean 1/28 < floor
    sup = make_supervised(build_daily_features(toy(vals), default_country=None), horizons=[1, 5])
    rows = sup[sup["origin"] == pd.Timestamp("2024-01-01") + pd.Timedelta(days=100)]
    assert len(rows) == 2
    assert rows["trailing_mean_28"].tolist() == pytest.approx([1 / 28] * 2)
    assert (rows["level"] == LEVEL_FLOOR).all() and 0 < LEVEL_FLOOR <= 1
    assert rows["n_rmean_28"].tolist() == pytest.approx([1 / 28 / LEVEL_FLOOR] * 2)


def test_item_and_store_levels_average_other_series_history():
    a = toy(np.full(60, 2.0), store="S1", product="P1")
    b = toy(np.full(60, 6.0), store="S2", product="P1")
    c = toy(np.full(60, 10.0), store="S1", product="P2")
    sup = make_supervised(build_daily_features(pd.concat([a, b, c]), default_country=None),
                          origins=[pd.Timestamp("2024-02-15")], horizons=[1])
    r = sup.set_index(["store_id", "product_id"])
    assert r.loc[("S1", "P1"), "item_rmean_28"] == 4.0 and r.loc[("S1", "P1"), "store_rmean_28"] == 6.0
    assert r.loc[("S1", "P1"), "item_trend"] == 1.0


def test_trailing_means_count_days_before_a_first_sale_as_zero_back_to_the_data_start():
    """A series first sold 40 days into the data (B) and one sold from its first day (A): the trailing means divide
    the window's sum by min(window, days since the data's first day), as a day-by-day loop computes them."""
    rng = np.random.default_rng(3)
    a = toy(rng.poisson(3.0, 80), product="A")
    b = toy(rng.poisson(2.0, 40) + 1, start="2024-02-10", product="B")  # first sale 2024-02-10, day 40
    start = pd.Timestamp("2024-01-01")
    feats = build_daily_features(pd.concat([a, b]), default_country=None)
    origins = [start + pd.Timedelta(days=d) for d in (10, 45, 60, 79)]
    sup = make_supervised(feats, horizons=[1, 3], origins=origins).set_index(["product_id", "origin", "h"])
    history = {p: d.set_index("date")["units"] for p, d in (("A", a), ("B", b))}

    def loop_mean(p, origin, w):
        total = sum(history[p].get(origin - pd.Timedelta(days=i), 0.0) for i in range(w))
        return total / min(w, (origin - start).days + 1)

    checked = 0
    for (p, o, h), row in sup.iterrows():
        assert row["rmean_28"] == pytest.approx(loop_mean(p, o, 28), rel=1e-12), (p, o, h)
        assert row["rmean_365"] == pytest.approx(loop_mean(p, o, 365), rel=1e-12), (p, o, h)
        assert row["trailing_mean_28"] == row["rmean_28"]
        checked += 1
    assert checked == 2 * 4 + 2 * 3  # B has no rows at the origin before its first sale
    young = sup.loc[("B", origins[1], 1), "rmean_28"]  # 6 days after B's first sale
    assert young == pytest.approx(history["B"].iloc[:6].sum() / 28) and young < history["B"].iloc[:6].mean()
    # the backtest's sample of series passes the chain's first day: B alone then gets the same own levels (the
    # store-level means differ: A is no longer in the store)
    own = ["rmean_28", "rmean_365", "trailing_mean_28", "level", "item_rmean_28"]
    alone = make_supervised(feats[feats["product_id"] == "B"], horizons=[1, 3], origins=origins, data_start=start)
    pd.testing.assert_frame_equal(alone.set_index(["product_id", "origin", "h"])[own], sup.loc[["B"], own])
    bare = make_supervised(feats[feats["product_id"] == "B"], horizons=[1], origins=[origins[1]])
    assert bare["rmean_28"].iloc[0] == pytest.approx(history["B"].iloc[:6].mean())  # its own first day


def test_a_table_in_any_row_order_gives_the_rows_of_the_sorted_one():
    """make_supervised gathers by position: a feature table read back unordered (ClickHouse without ORDER BY) must
    give the same rows as the sorted table, not lags mixed across series."""
    rng = np.random.default_rng(5)
    daily = pd.concat([toy(rng.poisson(lam, 70), store=s, product=p)
                       for lam, s, p in ((1.0, "S1", "P1"), (4.0, "S1", "P2"), (9.0, "S2", "P1"))])
    feats = build_daily_features(daily, default_country=None)
    assert sorted_by_series(feats) is feats   # already sorted: no copy
    shuffled = feats.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert not shuffled[["store_id", "product_id", "date"]].equals(feats[["store_id", "product_id", "date"]])
    pd.testing.assert_frame_equal(sorted_by_series(shuffled), feats.reset_index(drop=True))
    kw = {"horizons": [1, 7], "origins": [pd.Timestamp("2024-02-20"), pd.Timestamp("2024-03-01")]}
    want, got = make_supervised(feats, **kw), make_supervised(shuffled, **kw)
    assert len(want) == 2 * 2 * 3
    pd.testing.assert_frame_equal(got, want)


def test_future_rows_for_forecast_and_sampling():
    f = build_daily_features(toy(np.ones(50)), default_country=None, extend_days=7)
    sup = make_supervised(f, horizons=range(1, 8))
    T = pd.Timestamp("2024-01-01") + pd.Timedelta(days=49)
    fut = sup[sup["origin"] == T]
    assert sorted(fut["h"]) == list(range(1, 8)) and fut["y"].isna().all()
    assert (fut["lag_1"] == 1).all() and (fut["rmean_7"] == 1).all()
    with pytest.raises(ValueError):
        make_supervised(f, horizons=[29])
    one = make_supervised(f, horizons=range(1, 8), sample_per_target=1, seed=1)
    assert one["date"].is_unique and 45 <= len(one) <= 56  # at most one horizon per target day (drawn h beyond the
    # series start are dropped)
    assert one["h"].nunique() > 1


def test_weather_joined_on_day_and_country():
    d = toy([1, 2, 3]).assign(country_code="GB")
    w = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=4, freq="D"), "country_code": "GB",
                      "temp_c": [1.0, 2.0, 3.0, 4.0], "precip_mm": [0.0, 0.5, 0.0, 9.0]})
    f = build_daily_features(d, extend_days=1, default_country=None, weather=w).set_index("date")
    assert f["temp_c"].tolist() == [1.0, 2.0, 3.0, 4.0]  # the future day gets the (forecast) weather too
    assert "temp_c" in feature_columns(f)
    with pytest.raises(ValueError, match="weather table"):
        build_daily_features(d, default_country=None, weather=w.drop(columns=["temp_c"]))


def test_timezone_aware_dates_are_local_calendar_days_across_dst():
    # local midnights in Europe/London across the 2024-03-31 DST change (that day has 23 hours); units = day index
    dates = pd.date_range("2024-03-01", "2024-04-29", freq="D", tz="Europe/London")
    d = pd.DataFrame({"date": dates, "store_id": "S", "product_id": "P", "units": np.arange(len(dates), dtype=float),
                      "price": 1.0})
    f = build_daily_features(d, extend_days=7, default_country=None)
    assert f["date"].dt.tz is None and f["date"].is_unique
    assert f["date"].iloc[0] == pd.Timestamp("2024-03-01") and f["date"].iloc[-1] == pd.Timestamp("2024-05-06")
    assert (f["date"].diff().dropna() == pd.Timedelta(days=1)).all()
    assert f.loc[f["date"] == pd.Timestamp("2024-04-01"), "dow"].item() == 0   # a Monday
    # origin 2024-03-28 (local): targets 2024-03-29..2024-04-04, h 1..7 once each, y = 28..34, and every
    # history column from the origin row: lag_1 = y of 2024-03-28 = 27 (not the origin+1 day's 28)
    s = make_supervised(f, range(1, 8), origins=[pd.Timestamp("2024-03-28", tz="Europe/London")])
    assert s["h"].tolist() == list(range(1, 8)) and (s["origin"] == pd.Timestamp("2024-03-28")).all()
    assert s["date"].tolist() == list(pd.date_range("2024-03-29", periods=7, freq="D"))
    assert s["y"].tolist() == list(np.arange(28.0, 35.0)) and (s["lag_1"] == 27.0).all()
    assert s["seasonal_naive"].tolist() == list(np.arange(21.0, 28.0))
    # naive dates give the same rows; tz-aware bounds are read as local days too
    naive = make_supervised(build_daily_features(d.assign(date=dates.tz_localize(None)), extend_days=7,
                                                 default_country=None), range(1, 8), origins=["2024-03-28"])
    pd.testing.assert_frame_equal(s, naive)
    end = pd.Timestamp("2024-04-01", tz="Europe/London")
    assert complete_series(d, end_date=end)["date"].max() == pd.Timestamp("2024-04-01")
    b = make_supervised(f, [1], min_target_date=pd.Timestamp("2024-04-01", tz="Europe/London"),
                        max_target_date=end)
    assert b["date"].tolist() == [pd.Timestamp("2024-04-01")] and b["y"].tolist() == [31.0]


def test_calendar_days_keep_the_local_day():
    from ml.features import calendar_day, calendar_days

    # strings with mixed UTC offsets (a DST change) and one zone: each value's local calendar day
    with pytest.warns(FutureWarning):
        got = calendar_days(["2024-03-30T00:00+00:00", "2024-04-01T00:00+01:00"])
    assert got.tolist() == [pd.Timestamp("2024-03-30"), pd.Timestamp("2024-04-01")]
    got = calendar_days(pd.Series(pd.date_range("2024-03-30 23:30", periods=3, freq="D", tz="Europe/London")))
    assert got.dt.tz is None and got.dt.day.tolist() == [30, 31, 1]
    assert calendar_day("2024-04-01T00:00+01:00") == pd.Timestamp("2024-04-01")
    assert calendar_day(pd.Timestamp("2024-04-01 00:30", tz="Europe/London")) == pd.Timestamp("2024-04-01")
    # a weather table and a calendar with tz-aware dates join on the local day
    d = toy([1, 2, 3])
    w = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=3, freq="D", tz="America/New_York"),
                      "temp_c": [1.0, 2.0, 3.0], "precip_mm": 0.0})
    cal = pd.DataFrame({"date": [pd.Timestamp("2024-01-02", tz="Asia/Tokyo")], "event": [1]})
    f = build_daily_features(d, extend_days=0, default_country=None, weather=w, calendar=cal)
    assert f["temp_c"].tolist() == [1.0, 2.0, 3.0] and f["event"].tolist() == [0, 1, 0]
