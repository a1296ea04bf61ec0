"""Syntetos-Boylan classification and the slow-moving flag on hand-computed series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.slow_moving import classify, classify_series, parse_m5_labels, stability


def test_classes_hand_computed():
    # smooth: demand every day (ADI = 1), sizes 4,6 -> mean 5, pop. std 1 -> CV^2 = 0.04
    adi, cv2, cls = classify_series([4, 6] * 10)
    assert (adi, cls) == (1.0, "smooth") and cv2 == pytest.approx(0.04)
    # erratic: every day, sizes 1,9 -> mean 5, std 4 -> CV^2 = 0.64 >= 0.49
    adi, cv2, cls = classify_series([1, 9] * 10)
    assert cls == "erratic" and cv2 == pytest.approx(0.64)
    # intermittent: one sale of 3 every 3 days -> ADI = 3, CV^2 = 0
    adi, cv2, cls = classify_series([0, 0, 3] * 10)
    assert (adi, cv2, cls) == (3.0, 0.0, "intermittent")
    # lumpy: sales 1 and 9 every 3 days -> ADI = 3, CV^2 = 0.64
    adi, cv2, cls = classify_series([0, 0, 1, 0, 0, 9] * 5)
    assert adi == 3.0 and cls == "lumpy"
    assert classify_series([0, 0, 0])[2] == "no_demand"


def test_classify_frame_slow_flag_and_recency():
    dates = pd.date_range("2024-01-01", periods=60, freq="D")
    fast = pd.DataFrame({"date": dates, "store_id": "S", "product_id": "FAST", "units": 5.0})
    # slow: a single sale on day 1 -> mean 1/60 < 0.5, last sale 59 days before the end
    slow = pd.DataFrame({"date": dates[:1], "store_id": "S", "product_id": "SLOW", "units": [1.0]})
    out = classify(pd.concat([fast, slow]), window_days=60).set_index("product_id")
    assert out.loc["FAST", "is_slow_moving"] == 0 and out.loc["FAST", "demand_class"] == "smooth"
    assert out.loc["SLOW", "is_slow_moving"] == 1 and out.loc["SLOW", "days_since_last_sale"] == 59
    assert out.loc["SLOW", "n_days"] == 60 and out.loc["SLOW", "mean_daily_demand"] == pytest.approx(1 / 60)
    with pytest.raises(ValueError):
        classify(fast.drop(columns=["units"]))


def test_window_starts_at_the_window_start_for_a_sku_older_than_the_window():
    end = pd.Timestamp("2024-12-31")
    # OLD sold 15 on 2023-01-10 (before the 365-day window 2024-01-02..2024-12-31) and 15 twenty days before the
    # end: it existed all the window -> mean 15 / 365, n_days 365, ADI 365 (not 15 / 21 over its last 21 days);
    # NEW first sold 9 days before the end -> its window starts there: 10 days, mean 4 / 10
    daily = pd.DataFrame({"date": [pd.Timestamp("2023-01-10"), end - pd.Timedelta(days=20), end - pd.Timedelta(days=9)],
                          "store_id": "S", "product_id": ["OLD", "OLD", "NEW"], "units": [15.0, 15.0, 4.0]})
    out = classify(daily, end_date=end, window_days=365).set_index("product_id")
    assert out.loc["OLD", "window_start"] == pd.Timestamp("2024-01-02") and out.loc["OLD", "n_days"] == 365
    assert out.loc["OLD", "mean_daily_demand"] == pytest.approx(15 / 365) and out.loc["OLD", "adi"] == 365.0
    assert out.loc["OLD", "days_since_last_sale"] == 20 and out.loc["OLD", "is_slow_moving"] == 1
    assert out.loc["NEW", "window_start"] == end - pd.Timedelta(days=9) and out.loc["NEW", "n_days"] == 10
    assert out.loc["NEW", "mean_daily_demand"] == pytest.approx(0.4)


def test_stability_second_window_counts_days_before_a_late_sale():
    # 3 units every 3 days over the first 60-day window (mean 1/day, not slow); in the second 60-day window a
    # single sale of 3 two days before the end: the series existed all that window -> mean 3/60 = 0.05 < 0.5,
    # slow (not a 3-day window with mean 1) -> the slow flag changes between the windows
    dates = pd.date_range("2024-01-01", periods=120, freq="D")
    units = np.r_[np.tile([0.0, 0.0, 3.0], 20), np.zeros(60)]
    units[-3] = 3.0
    sales = pd.DataFrame({"date": dates, "store_id": "S", "product_id": "P", "units": units}).query("units > 0")
    st = stability(sales, end_date=dates[-1], window_days=60)   # rows only on sale days
    assert st == {"class_agreement": 1.0, "slow_flag_agreement": 0.0, "n_series": 1}

def test_stability_of_a_stationary_pattern_is_one():
    dates = pd.date_range("2024-01-01", periods=120, freq="D")
    d = pd.DataFrame({"date": dates, "store_id": "S", "product_id": "P", "units": np.tile([0, 0, 3], 40)})
    st = stability(d, window_days=60)
    assert st == {"class_agreement": 1.0, "slow_flag_agreement": 1.0, "n_series": 1}


def test_m5_readme_labels(shared_data):
    readme = shared_data / "m5_walmart_tiny" / "README.md"
    if not readme.exists():
        pytest.skip("M5 README absent")
    labels = parse_m5_labels(readme)
    assert len(labels) == 28 and pd.Series(labels).value_counts().to_dict() == {
        "smooth": 7, "intermittent": 7, "lumpy": 7, "erratic": 7}


def test_timezone_aware_dates_are_local_calendar_days():
    """Europe/London dates across the March DST change, with a timezone-aware end date: 20 calendar days of 1
    unit (before: a TypeError comparing aware dates with the naive window start)."""
    d = pd.DataFrame({"date": pd.date_range("2024-03-20", periods=20, freq="D", tz="Europe/London"),
                      "store_id": "S", "product_id": "P", "units": 1.0})
    r = classify(d, end_date=pd.Timestamp("2024-04-08", tz="Europe/London"), window_days=30).iloc[0]
    assert (str(r["window_start"].date()), str(r["window_end"].date())) == ("2024-03-20", "2024-04-08")
    assert r["n_days"] == 20 and r["mean_daily_demand"] == 1.0


def test_stocked_series_without_a_sale_in_the_window_are_dead_stock():
    """``include`` (the series with stock on hand): one that sold only before the window and one that never sold
    are classified over the whole window as no_demand, mean 0, slow-moving; without ``include`` they are left out;
    a series that sells in the window is unchanged by being included too."""
    end = pd.Timestamp("2024-12-31")
    d = pd.DataFrame({"date": [pd.Timestamp("2023-06-01"), end - pd.Timedelta(days=3), end],
                      "store_id": "S", "product_id": ["OLD", "LIVE", "LIVE"], "units": [5.0, 2.0, 3.0]})
    plain = classify(d, end_date=end, window_days=365)
    assert plain["product_id"].tolist() == ["LIVE"]
    inc = pd.DataFrame({"store_id": "S", "product_id": ["OLD", "NEVER", "LIVE"]})
    got = classify(d, end_date=end, window_days=365, include=inc).set_index("product_id")
    assert sorted(got.index) == ["LIVE", "NEVER", "OLD"]
    for p in ("OLD", "NEVER"):
        r = got.loc[p]
        assert (r["demand_class"], r["mean_daily_demand"], r["is_slow_moving"], r["n_days"]) == ("no_demand", 0.0, 1,
                                                                                                 365)
        assert str(r["window_start"].date()) == "2024-01-02"
    pd.testing.assert_series_equal(got.loc["LIVE"], plain.set_index("product_id").loc["LIVE"])
