"""Forecast metrics, interval construction and prediction checks (pure pandas, hand-computed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ml.forecast import (apply_intervals, backtest_origins, ForecastConfig, metrics_table, naive_scales,
                         residual_quantiles, training_rows)
from ml.features import build_daily_features, make_supervised
from ml.pipeline import check_predictions, metrics_rows


def test_metrics_hand_computed():
    o = pd.Timestamp("2024-01-10")
    pred = pd.DataFrame({"store_id": "S", "product_id": "P", "origin": o, "h": [1, 2],
                         "y": [10.0, 0.0], "yhat": [8.0, 2.0], "seasonal_naive": [10.0, 5.0]})
    scales = pd.DataFrame({"store_id": ["S"], "product_id": ["P"], "origin": [o], "scale": [4.0]})
    m = metrics_table(pred, scales).set_index(["model", "h"])
    # GBT: |e| = 2, 2 -> WAPE 4/10; MAE 2; RMSE sqrt(8/2) = 2; RMSSE sqrt(mean(4, 4) / 4) = 1
    g = m.loc[("gbt", 0)]
    assert (g["wape"], g["mae"], g["rmse"], g["rmsse"]) == pytest.approx((0.4, 2.0, 2.0, 1.0))
    # seasonal naive: |e| = 0, 5 -> WAPE 0.5; MAE 2.5; RMSE sqrt(25/2); RMSSE sqrt(12.5/4)
    n = m.loc[("seasonal_naive", 0)]
    assert (n["wape"], n["mae"], n["rmse"], n["rmsse"]) == pytest.approx(
        (0.5, 2.5, math.sqrt(12.5), math.sqrt(12.5 / 4)))
    assert m.loc[("gbt", 1), "wape"] == pytest.approx(0.2)
    assert math.isnan(m.loc[("gbt", 2), "wape"])  # no demand at h=2: WAPE undefined, not infinite


def test_naive_scale_uses_only_in_sample_days():
    f = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=5, freq="D"), "store_id": "S", "product_id": "P",
                      "units": [1.0, 3.0, 2.0, 100.0, np.nan]})
    # up to 2024-01-03: diffs 2, -1 -> (4 + 1) / 2 = 2.5 (the 100 after the origin is ignored)
    assert naive_scales(f, "2024-01-03").iloc[0] == pytest.approx(2.5)


def test_training_rows_never_reach_past_origin_and_sample_one_horizon():
    d = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=60, freq="D"), "store_id": "S",
                      "product_id": "P", "units": np.arange(60.0), "price": 1.0})
    sup = make_supervised(build_daily_features(d, default_country=None))
    cfg = ForecastConfig(train_window_days=20)
    o = pd.Timestamp("2024-02-10")
    tr = training_rows(sup, o, cfg)
    assert tr["date"].max() <= o and tr["date"].min() > o - pd.Timedelta(days=20)
    assert len(tr) == 20 and tr["date"].is_unique  # one sampled horizon per target day
    assert len(training_rows(sup, o, ForecastConfig(train_window_days=20, rows_per_target=7))) == 20 * 7
    f = build_daily_features(d, default_country=None)
    origins = backtest_origins(f, ForecastConfig(n_origins=3, origin_step_days=5))
    assert origins == [pd.Timestamp("2024-02-29") - pd.Timedelta(days=7 + k) for k in (10, 5, 0)]


def test_intervals_are_ordered_and_nonnegative():
    rng = np.random.default_rng(1)
    n = 400
    bt = pd.DataFrame({"h": rng.integers(1, 8, n), "level_bucket": rng.integers(0, 4, n),
                       "y": rng.poisson(5, n).astype(float), "yhat": rng.normal(5, 1, n)})
    q = residual_quantiles(bt)
    assert len(q) == 7 * 4
    assert (q["lower95"] <= q["lower80"]).all() and (q["lower80"] <= 0).all()
    assert (q["upper80"] >= 0).all() and (q["upper95"] >= q["upper80"]).all()
    rows = pd.DataFrame({"h": [1, 2, 3], "level_bucket": [0, 1, 3], "yhat": [0.0, 0.3, 9.0]})
    out = apply_intervals(rows, q)
    assert ((out["lower95"] <= out["lower80"]) & (out["lower80"] <= out["yhat"]) & (out["yhat"] <= out["upper80"])
            & (out["upper80"] <= out["upper95"]) & (out["lower95"] >= 0)).all()
    # the 80 % bounds are the h/bucket residual quantiles added to the point forecast
    e = bt[(bt["h"] == 3) & (bt["level_bucket"] == 3)].eval("y - yhat")
    if len(e) >= 20:
        assert out.loc[2, "upper80"] == pytest.approx(9.0 + max(e.quantile(0.9), 0.0))


def test_check_predictions_rejects_gaps_and_disorder():
    good = pd.DataFrame({"store_id": "S", "product_id": "P", "horizon": range(1, 8), "yhat": 2.0,
                         "lower95": 0.0, "lower80": 1.0, "upper80": 3.0, "upper95": 4.0})
    check_predictions(good)
    with pytest.raises(ValueError, match="horizons"):
        check_predictions(good[good["horizon"] != 4])
    bad = good.copy()
    bad.loc[0, "upper80"] = 1.5
    with pytest.raises(ValueError, match="out of order"):
        check_predictions(bad)


def test_metrics_rows_long_format():
    m = pd.DataFrame({"model": ["gbt", "seasonal_naive"], "h": [0, 0], "wape": [0.4, 0.5], "rmsse": [1.0, np.nan]})
    rows = metrics_rows(m, 3, pd.Timestamp("2024-01-01").date())
    assert sorted(zip(rows["model"], rows["metric"], rows["value"])) == [
        ("gbt", "rmsse", 1.0), ("gbt", "wape", 0.4), ("seasonal_naive", "wape", 0.5)]
    assert (rows["model_version"] == 3).all() and (rows["model_name"] == "demand-forecast").all()
