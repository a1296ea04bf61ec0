"""Real Spark MLlib GBT and the statsforecast baseline on a subset of M5: every model is backtested and scored,
forecasts come from the champion (GBT or baseline), complete and ordered; the model round-trips through the lake.

Subset for a few minutes on 2 cores: 4 stores x 28 items (112 series) from 2014-06, 14-day horizon, 2 origins
30 days apart, 180-day training window, 15 trees. The baselines are recomputed independently from the raw table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration

STORES = ["CA_1", "CA_3", "TX_2", "WI_1"]
H = 14


@pytest.fixture(scope="module")
def m5(shared_data):
    from ops.bench_forecast import load_m5

    folder = shared_data / "m5_walmart_tiny"
    if not (folder / "sales_daily.csv.gz").exists():
        pytest.skip(f"{folder} not present")
    return load_m5(folder, stores=STORES, start="2014-06-01")


@pytest.fixture(scope="module")
def trained(spark, m5):
    from ml.forecast import ForecastConfig, train_and_evaluate

    daily, cal = m5
    cfg = ForecastConfig(horizon=H, n_origins=2, origin_step_days=30, train_window_days=180, max_iter=15,
                         max_depth=5, stats_window_days=180)
    return cfg, train_and_evaluate(spark, daily, cfg, calendar=cal, default_country=None, log=print)


def test_backtest_scores_every_model_and_gbt_beats_seasonal_naive(trained):
    cfg, res = trained
    m = res["backtest"].metrics
    print(m[m["h"] == 0].round(4).to_string())
    assert set(m["model"]) == {"gbt", "seasonal_naive", "trailing_mean_28", "statsforecast"}
    assert (m.groupby("model")["h"].apply(sorted).map(lambda hs: hs == list(range(0, H + 1)))).all()
    pooled = m[m["h"] == 0].set_index("model")
    assert pooled["wape"]["gbt"] < pooled["wape"]["seasonal_naive"]
    assert pooled["rmsse"]["gbt"] < pooled["rmsse"]["seasonal_naive"]
    assert pooled[["coverage80", "coverage95"]].notna().all().all()
    assert (pooled["coverage95"] >= pooled["coverage80"]).all()
    assert res["selection"]["champion"] in pooled.index


def test_backtest_is_time_based_and_baselines_match_independent_computation(trained, m5):
    cfg, res = trained
    bt = res["backtest"]
    daily, _ = m5
    d = daily.assign(date=pd.to_datetime(daily["date"]))
    y = d.set_index(["store_id", "product_id", "date"])["units"]
    last = d["date"].max()
    assert bt.origins == [last - pd.Timedelta(days=H + 30), last - pd.Timedelta(days=H)]
    p = bt.predictions
    assert ((p["date"] - p["origin"]).dt.days == p["h"]).all() and p["h"].between(1, H).all()
    assert len(p) == 2 * H * p[["store_id", "product_id"]].drop_duplicates().shape[0]
    # seasonal naive y_{o+h-7k} and the trailing mean of y_{o-27..o}, from the raw table
    series = p[["store_id", "product_id"]].drop_duplicates().itertuples(index=False)
    num_sn = num_tm = den = 0.0
    for st, pr in series:
        for o in bt.origins:
            tm = np.mean([y.get((st, pr, o - pd.Timedelta(days=j)), 0.0) for j in range(28)])
            for h in range(1, H + 1):
                k = -(-h // 7)
                yt = y.get((st, pr, o + pd.Timedelta(days=h)), 0.0)
                num_sn += abs(yt - y.get((st, pr, o + pd.Timedelta(days=h - 7 * k)), 0.0))
                num_tm += abs(yt - tm)
                den += yt
    m = bt.metrics.set_index(["model", "h"])
    assert m.loc[("seasonal_naive", 0), "wape"] == pytest.approx(num_sn / den, rel=1e-9)
    assert m.loc[("trailing_mean_28", 0), "wape"] == pytest.approx(num_tm / den, rel=1e-9)
    assert (p["statsforecast"] >= 0).all() and np.isfinite(p["statsforecast"]).all()


@pytest.mark.parametrize("model_name", ["gbt", "trailing_mean_28", "statsforecast"])
def test_forecast_from_champion_every_active_series_and_ordered_intervals(spark, trained, m5, model_name):
    from ml.forecast import forecast

    cfg, res = trained
    bt = res["backtest"]
    daily, _ = m5
    pred = forecast(spark, res["model"], res["features"], bt.quantiles, bt.bucket_edges, res["cols"], horizon=H,
                    model_name=model_name, target=cfg.target, stats_window_days=cfg.stats_window_days)
    last = pd.to_datetime(daily["date"]).max()
    d = daily.assign(date=pd.to_datetime(daily["date"]))
    active = d[(d["date"] <= last) & (d["price"].notna() | (d["units"] > 0))][["store_id", "product_id"]].drop_duplicates()
    got = pred[["store_id", "product_id"]].drop_duplicates()
    assert set(map(tuple, got.to_numpy())) == set(map(tuple, active.to_numpy()))
    per = pred.groupby(["store_id", "product_id"])["h"].apply(lambda s: sorted(s.tolist()))
    assert (per.map(lambda hs: hs == list(range(1, H + 1)))).all()
    assert (pred["origin"] == last).all() and ((pred["date"] - pred["origin"]).dt.days == pred["h"]).all()
    assert (pred["lower95"] <= pred["lower80"]).all() and (pred["lower80"] <= pred["yhat"]).all()
    assert (pred["yhat"] <= pred["upper80"]).all() and (pred["upper80"] <= pred["upper95"]).all()
    assert (pred["lower95"] >= 0).all() and np.isfinite(pred["yhat"]).all()
    assert (pred["upper95"] > pred["lower95"]).any()  # intervals are not degenerate
    if model_name == "trailing_mean_28":  # the baseline's point forecast: mean of the last 28 days, flat
        y = d.set_index(["store_id", "product_id", "date"])["units"]
        st, pr = got.iloc[0]
        tm = np.mean([y.get((st, pr, last - pd.Timedelta(days=j)), 0.0) for j in range(28)])
        assert pred[(pred["store_id"] == st) & (pred["product_id"] == pr)]["yhat"].to_numpy() == pytest.approx(tm)


def test_model_roundtrip_through_lake(spark, trained, tmp_path):
    from ml.forecast import forecast, list_versions, load_model_version, save_model_version
    from core.lake import Lake
    from core.settings import Settings

    cfg, res = trained
    bt = res["backtest"]
    lake = Lake(Settings(lake_url=str(tmp_path / "lake")))
    meta = {"run_date": "2015-10-31", "trained_at": "2015-11-01T00:00:00+00:00", "feature_columns": res["cols"],
            "bucket_edges": bt.bucket_edges}
    path = save_model_version(lake, res["model"], 1, meta, bt.quantiles, bt.metrics)
    assert path == "models/demand-forecast/v1" and list_versions(lake) == [1]
    model, meta2, q = load_model_version(lake, 1)
    a = forecast(spark, res["model"], res["features"], bt.quantiles, bt.bucket_edges, res["cols"], horizon=H)
    b = forecast(spark, model, res["features"], q, meta2["bucket_edges"], meta2["feature_columns"], horizon=H)
    pd.testing.assert_frame_equal(a, b)


def test_backtest_on_a_series_sample_and_parallel_statsforecast_match_the_serial_fit(trained):
    """FORECAST_BACKTEST_SERIES: the backtest scores exactly the sampled series; FORECAST_STATS_JOBS: the
    statsforecast baseline fitted in 2 processes equals the 1-process fit."""
    from dataclasses import replace

    from ml.forecast import backtest, sample_series, statsforecast_baseline

    cfg, res = trained
    feats = res["features"]
    small = replace(cfg, backtest_series=12, stats_jobs=2)
    bt = backtest(None, feats, small, with_gbt=False)
    want = sample_series(feats, 12, cfg.seed)[["store_id", "product_id"]].drop_duplicates()
    got = bt.predictions[["store_id", "product_id"]].drop_duplicates()
    assert len(want) == 12 and set(map(tuple, got.to_numpy())) == set(map(tuple, want.to_numpy()))
    assert set(bt.metrics["model"]) == set(cfg.baselines)
    sub = sample_series(feats, 12, cfg.seed)
    one = statsforecast_baseline(sub, bt.origins[-1], H, cfg.stats_window_days, n_jobs=1)
    two = statsforecast_baseline(sub, bt.origins[-1], H, cfg.stats_window_days, n_jobs=2)
    key = ["store_id", "product_id", "h"]
    one, two = (x.sort_values(key).reset_index(drop=True) for x in (one, two))
    assert len(one) == 12 * H
    pd.testing.assert_frame_equal(one, two)
    # the AutoETS model space reaches statsforecast: without season ("ANN", simple exponential smoothing) every
    # series' forecast is flat over the horizon; with an additive weekly season ("ANA") the non-intermittent
    # (AutoETS) series' forecasts are not
    flat = statsforecast_baseline(sub, bt.origins[-1], H, cfg.stats_window_days, ets_model="ANN")
    weekly = statsforecast_baseline(sub, bt.origins[-1], H, cfg.stats_window_days, ets_model="ANA")
    spread = lambda x: x.groupby(["store_id", "product_id"])["statsforecast"].agg(lambda v: v.max() - v.min())
    assert (spread(flat) < 1e-9).all() and (spread(weekly) > 1e-6).sum() >= 3


def test_backtest_takes_every_series_when_the_table_is_within_the_row_cap(trained):
    """A feature table of at most FORECAST_MAX_TRAIN_ROWS known rows is backtested on every series (its refits
    then see the rows the final model learns from); above the cap, or without one, the sample bounds it."""
    from dataclasses import replace

    from ml.forecast import backtest, backtest_sample_size

    cfg, res = trained
    feats = res["features"]
    known = int(feats["units"].notna().sum())
    assert backtest_sample_size(known, replace(cfg, backtest_series=12, max_train_rows=known)) == 0
    assert backtest_sample_size(known, replace(cfg, backtest_series=12, max_train_rows=known - 1)) == 12
    assert backtest_sample_size(known, replace(cfg, backtest_series=12, max_train_rows=0)) == 12
    assert backtest_sample_size(known, replace(cfg, backtest_series=0, max_train_rows=10)) == 0
    series = lambda bt: set(map(tuple, bt.predictions[["store_id", "product_id"]].drop_duplicates().to_numpy()))  # noqa: E731
    within = backtest(None, feats, replace(cfg, backtest_series=12, max_train_rows=known), with_gbt=False)
    every = backtest(None, feats, replace(cfg, backtest_series=0), with_gbt=False)
    above = backtest(None, feats, replace(cfg, backtest_series=12, max_train_rows=known - 1), with_gbt=False)
    assert series(within) == series(every) and len(series(every)) > 12
    assert len(series(above)) == 12


def test_gbt_fits_on_at_most_max_train_rows(spark, trained):
    """FORECAST_MAX_TRAIN_ROWS: the final fit uses a seeded sample of that many rows and still forecasts every
    series and horizon. (The backtest refits call the same cap_training_rows; the sample itself is checked in
    test_ml_metrics.)"""
    from dataclasses import replace

    from ml.forecast import forecast, train_final

    cfg, res = trained
    assert res["train_rows"] > 600
    model, cols, n = train_final(spark, res["features"], replace(cfg, max_train_rows=600))
    assert n == 600
    bt = res["backtest"]
    full, capped = (forecast(spark, m, res["features"], bt.quantiles, bt.bucket_edges, cols, horizon=H,
                             target=cfg.target, stats_window_days=cfg.stats_window_days)
                    for m in (res["model"], model))
    key = ["store_id", "product_id", "h"]
    assert full[key].equals(capped[key]) and np.isfinite(capped["yhat"]).all() and (capped["yhat"] >= 0).all()
    assert not np.allclose(full["yhat"], capped["yhat"])  # another model, fitted on the 600-row sample


def test_label_cap_bounds_what_the_gbt_learns_and_the_mass_is_restored(spark, trained):
    """ForecastConfig.label_cap reaches the MLlib fit: with the scaled label capped at 0.5 the GBT stage's scaled
    forecasts stay near 0.5 (boosting may overshoot a little), while the default model (cap 2) forecasts over
    twice that on the busy days this M5 subset has. The model's last stage multiplies by the mass ratio of
    :func:`cap_correction`, recomputed here from the rows: in sample the total forecast meets the total demand. (With
    ForecastConfig.restore_cap 0: at cap 0.5 the default per-series bound, 2 x a series' capped mass, would bite and
    restore less; the bound has its own test below.)"""
    from dataclasses import replace

    from ml.forecast import fit_gbt, predict_gbt, training_table

    cfg, res = trained
    feats = res["features"]
    T = feats.loc[feats["units"].notna(), "date"].max()
    rows = training_table(feats, T, T, cfg)
    level, y = rows["level"].to_numpy(), rows["y"].to_numpy()
    assert (y / level).max() > 3  # the cap bites on this data
    factor = y.sum() / np.minimum(y, 0.5 * level).sum()  # independent of cap_correction
    assert factor > 1.5
    capped_model = fit_gbt(spark, rows, replace(cfg, label_cap=0.5, restore_cap=0.0), res["cols"])
    sdf = spark.createDataFrame(rows[res["cols"]].astype("float64"))
    out = capped_model.transform(sdf).select("yhat_capped", "yhat").toPandas()
    assert out["yhat_capped"].max() <= 0.5 * 1.1
    assert np.allclose(out["yhat"], out["yhat_capped"] * factor, rtol=1e-9)
    total = (out["yhat"].to_numpy() * level).sum()
    assert abs(total / y.sum() - 1) < 0.03  # in sample, up to the 0.8 row subsampling of each tree
    free = predict_gbt(spark, res["model"], rows, res["cols"], "scaled", shrink_k=0.0) / level
    assert free.max() > 2 * 0.5


def test_final_fit_in_spark_trains_on_the_pandas_rows_and_restores_their_mass(spark, trained):
    """train_final builds its rows in Spark (ml.spark_supervised): with every horizon per target day it fits on
    exactly the rows of the pandas training_table, and the cap correction its model carries is the pandas
    cap_correction of those rows."""
    import re
    from dataclasses import replace

    from ml.forecast import cap_correction, train_final, training_table

    cfg, res = trained
    feats = res["features"]
    every_h = replace(cfg, rows_per_target=H, max_iter=2)
    T = feats.loc[feats["units"].notna(), "date"].max()
    rows = training_table(feats, T, T, every_h)
    model, cols, n = train_final(spark, spark.createDataFrame(feats), every_h)
    assert n == len(rows) and cols == res["cols"]
    factor = float(re.search(r"CAST\('([0-9.e+-]+)'", model.stages[-1].getStatement()).group(1))
    assert factor == pytest.approx(cap_correction(rows, every_h), rel=1e-12) and factor > 1


def test_forecasts_from_a_spark_feature_table_equal_the_pandas_path(spark, trained):
    """The predict job hands forecast() the feature table as a Spark DataFrame: the rows are built and the GBT
    applied in Spark. Forecasts and intervals must equal those of the pandas path for the GBT and the baselines."""
    from ml.forecast import forecast

    cfg, res = trained
    bt, feats = res["backtest"], res["features"]
    # cached: each Spark scan of a table made from pandas decodes every row of all its columns again (the three
    # models scan it many times); the same rows whether cached or not
    sdf = spark.createDataFrame(feats).cache()
    try:
        for name in ("gbt", "seasonal_naive", "statsforecast"):
            kw = dict(horizon=H, model_name=name, target=cfg.target, stats_window_days=cfg.stats_window_days)
            want = forecast(spark, res["model"], feats, bt.quantiles, bt.bucket_edges, res["cols"], **kw)
            got = forecast(spark, res["model"], sdf, bt.quantiles, bt.bucket_edges, res["cols"], **kw)
            assert len(got) == len(want) == want.groupby(["store_id", "product_id"]).ngroups * H, name
            pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, atol=1e-9, obj=name)
            # the inactive-series rule on both paths (FOODS_2_360 was delisted in 2014): flagged, forecast 0
            assert want["inactive"].any() and (want.loc[want["inactive"], "yhat"] == 0).all(), name
    finally:
        sdf.unpersist()


def test_statsforecast_from_a_spark_table_in_chunks_equals_one_pandas_fit(spark, trained):
    """A statsforecast champion served from the Spark table fits its series chunk by chunk in the driver
    (statsforecast_chunked): the forecasts must equal statsforecast_baseline on the whole pandas table, whatever the
    chunking, since each series is fitted on its own. The table's ``date`` is a Spark date, as the predict job reads
    it."""
    from pyspark.sql import functions as F

    from ml.forecast import last_known_day, statsforecast_baseline, statsforecast_chunked

    cfg, res = trained
    feats = res["features"]
    # cached: statsforecast_chunked scans the table once per chunk (about 50 with 2 series a chunk), and a table made
    # from pandas is decoded again, every column, at each scan (measured 2026-12-06: 56k rows x 44 columns, chunks of
    # 2 series, 55.5 s -> 33.8 s); the same rows whether cached or not
    sdf = spark.createDataFrame(feats).withColumn("date", F.to_date("date")).cache()
    try:
        T = last_known_day(feats)
        keys = ["store_id", "product_id", "origin", "h"]
        want = statsforecast_baseline(feats, T, H, cfg.stats_window_days).sort_values(keys).reset_index(drop=True)
        known = feats[feats["units"].notna() & (feats["date"] > T - pd.Timedelta(days=cfg.stats_window_days))]
        demand_days = known[known["units"] > 0].groupby(["store_id", "product_id"]).size()
        n_fitted = int((demand_days >= 3).sum())   # MIN_DEMAND_DAYS: fewer are left to the trailing mean
        assert n_fitted > 50 and len(want) == n_fitted * H and want["statsforecast"].ge(0).all()
        for chunk in (n_fitted, 7, 2):  # one chunk, a few, ~n/2 chunks (some may be empty)
            got = statsforecast_chunked(sdf, T, H, cfg.stats_window_days, chunk_series=chunk)
            got = got.sort_values(keys).reset_index(drop=True)
            pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, atol=1e-9, obj=f"chunk {chunk}")
        with pytest.raises(ValueError, match="chunk_series"):
            statsforecast_chunked(sdf, T, H, chunk_series=0)
    finally:
        sdf.unpersist()


def test_history_check_asks_for_the_horizon_before_the_last_backtest_origin():
    """The training DAG's history check fails before the features are built when the demand history cannot hold
    the backtest: MIN_HISTORY_DAYS (14) before the last origin, which lies FORECAST_HORIZON days before the end."""
    import datetime as dt

    from ml.pipeline import InsufficientData, history_end

    first, run = dt.date(2026, 1, 1), dt.date(2026, 3, 1)
    assert history_end(first, dt.date(2026, 1, 28), run, "db", horizon=14) == pd.Timestamp("2026-01-28")  # 28 days
    with pytest.raises(InsufficientData, match=r"covers 27 day\(s\).*at least 28 .*FORECAST_HORIZON=14"):
        history_end(first, dt.date(2026, 1, 27), run, "db", horizon=14)
    with pytest.raises(InsufficientData, match="at least 42"):
        history_end(first, dt.date(2026, 2, 10), run, "db", horizon=28)   # 41 days: enough for 14, not for 28
    assert history_end(first, dt.date(2026, 3, 20), run, "db", horizon=7) == pd.Timestamp(run)  # not past run_date


def test_latest_features_pointer_only_moves_forward(tmp_path):
    """Re-running the training DAG for an older date (a clear or a backfill) writes that date's table but leaves
    features/daily/latest.json on the newest run, which the predictions read."""
    import datetime as dt

    from core.lake import Lake
    from core.settings import Settings
    from ml.pipeline import _point_latest

    lake = Lake(Settings(_env_file=None, lake_url=str(tmp_path / "lake")))
    bucket = lake.settings.lake_features_bucket
    assert _point_latest(lake, dt.date(2026, 12, 4)).endswith("run_date=2026-12-04")
    assert _point_latest(lake, dt.date(2026, 11, 20)).endswith("run_date=2026-11-20")   # its own table's path
    assert lake.read_json(bucket, "daily", "latest.json")["run_date"] == "2026-12-04"
    _point_latest(lake, dt.date(2026, 12, 5))
    assert lake.read_json(bucket, "daily", "latest.json")["run_date"] == "2026-12-05"


def _small_chain(bulk: float | None, bulk_sku: str = "BULK") -> pd.DataFrame:
    """A 12-series chain (2 stores x 6 SKUs, Poisson 0.5-8 units a day, 120 days to 2012-03-25, the Europe/London
    DST day, across 2012-02-29) and, with ``bulk``, one order of that many units on 2012-03-22 for ST-1 x ``bulk_sku``
    (BULK sells about 1 a day, ~2.4 % of the chain's capped mass; A 8 a day, ~20 %)."""
    rng = np.random.default_rng(3)
    dates = pd.date_range("2011-11-27", "2012-03-25", freq="D")
    rows = []
    for st in ("ST-1", "ST-2"):
        for sku, lam in (("A", 8.0), ("B", 3.0), ("C", 0.5), ("D", 5.0), ("E", 2.0), ("BULK", 1.0)):
            rows.append(pd.DataFrame({"date": dates, "store_id": st, "product_id": sku,
                                      "units": rng.poisson(lam, len(dates)).astype(float), "price": 2.0}))
    d = pd.concat(rows, ignore_index=True)
    if bulk is not None:
        d.loc[(d["store_id"] == "ST-1") & (d["product_id"] == bulk_sku) & (d["date"] == "2012-03-22"), "units"] = bulk
    return d


def test_one_bulk_order_no_longer_scales_every_series_forecast(spark):
    """The label cap's mass correction is one factor for every series. Unbounded (before 2026-12-07) the real log's
    largest line, 80,995 units (had it not been cancelled), on one day of a SKU selling ~1 a day made the final
    model's factor 25.06 on this 12-series chain (1.026 without the order): every series' GBT forecast ~20 times
    its demand. Each series now restores at most ForecastConfig.restore_cap (2) times its own capped mass (factor
    1.069); the factor is recomputed here per series in plain numpy, and the other series' forecasts barely move.

    What the bound does not do: a series holding a share p of the chain's capped mass still lifts every series'
    factor by up to restore_cap x p. The same order on ST-1 x A (~20 % of the capped mass) makes the factor ~1.43
    (every SKU's forecast +43 %); the assertion is that bound, p measured on the rows."""
    import re
    from dataclasses import replace

    from ml.features import build_daily_features
    from ml.forecast import ForecastConfig, cap_correction, forecast, train_final, training_table

    cfg = ForecastConfig(horizon=H, rows_per_target=H, max_iter=5, max_depth=3, min_instances_per_node=20,
                         train_window_days=90)
    out = {}
    for bulk, sku in ((None, "BULK"), (80995.0, "BULK"), (80995.0, "A")):
        feats = build_daily_features(_small_chain(bulk, sku), default_country="GB", extend_days=H)
        T = feats.loc[feats["units"].notna(), "date"].max()
        rows = training_table(feats, T, T, cfg)
        model, cols, n = train_final(spark, spark.createDataFrame(feats), cfg)
        assert n == len(rows)
        factor = float(re.search(r"CAST\('([0-9.e+-]+)'", model.stages[-1].getStatement()).group(1))
        y = rows["y"].to_numpy()
        c = np.minimum(y, 2.0 * rows["level"].to_numpy())
        g = pd.DataFrame({"s": rows["store_id"] + "|" + rows["product_id"], "y": y, "c": c}).groupby("s").sum()
        want = (g["c"] + np.minimum(g["y"] - g["c"], 2.0 * g["c"])).sum() / g["c"].sum()
        unbounded = y.sum() / c.sum()   # the factor before 2026-12-07
        assert cap_correction(rows, replace(cfg, restore_cap=0.0)) == pytest.approx(unbounded, rel=1e-9)
        s1a = g.loc["ST-1|" + sku]
        share, rest = s1a["c"] / g["c"].sum(), 1 + (np.minimum(g["y"] - g["c"], 2.0 * g["c"]).sum()
                                                    - min(s1a["y"] - s1a["c"], 2.0 * s1a["c"])) / g["c"].sum()
        if sku == "A":   # the order on a big SKU: only the bound restore_cap x its share holds
            out[sku] = (factor, rest, share, want)
            print(f"bulk {bulk} on {sku}: factor {factor:.4f}, unbounded {unbounded:.4f}, share {share:.4f}")
            continue
        q = pd.DataFrame({"model": "gbt", "h": range(1, H + 1), "level_bucket": 0, "lower95": 0.0, "lower80": 0.0,
                          "upper80": 0.0, "upper95": 0.0})
        f = forecast(spark, model, feats, q, [], cols, H, "gbt")
        out[bulk] = (factor, unbounded, f[f["product_id"] != "BULK"]["yhat"].sum(), want)
        print(f"bulk {bulk} on {sku}: factor {factor:.4f}, unbounded {unbounded:.4f}")
    (f0, u0, y0, w0), (f1, u1, y1, w1) = out[None], out[80995.0]
    fa, rest_a, p_a, wa = out["A"]
    assert fa == pytest.approx(wa, rel=1e-9)
    assert 0.15 < p_a < 0.25 and fa > 1.3               # every series' forecast lifted by over 30 %
    assert fa - rest_a <= 2.0 * p_a + 1e-12             # ... but by at most restore_cap x the SKU's share
    assert (f0, f1) == (pytest.approx(w0, rel=1e-9), pytest.approx(w1, rel=1e-9))
    assert u1 > 20 * u0            # what the unbounded factor would have been
    assert f1 < 1.1 * f0           # one series moves the chain's factor by at most 2 x its own capped share
    assert y1 < 1.2 * y0           # the other SKUs' forecasts barely move (another GBT fit)
    with pytest.raises(ValueError, match="restore_cap"):
        ForecastConfig(restore_cap=float("nan"))


def _gbt_factor(model) -> float:
    """The cap correction's factor a fitted pipeline carries (its last SQLTransformer stage; 1.0 without one)."""
    import re

    m = re.search(r"CAST\('([0-9.e+-]+)'", model.stages[-1].getStatement()) if hasattr(model.stages[-1],
                                                                                         "getStatement") else None
    return float(m.group(1)) if m else 1.0


def _bounded_factor(rows: pd.DataFrame, cap: float = 2.0, restore: float = 2.0) -> float:
    """The per-series bounded cap correction recomputed in plain numpy from supervised rows (y, level, keys)."""
    y = rows["y"].to_numpy(dtype="float64")
    c = np.minimum(y, cap * rows["level"].to_numpy(dtype="float64"))
    g = pd.DataFrame({"s": rows["store_id"].astype(str) + "|" + rows["product_id"].astype(str), "y": y, "c": c}) \
        .groupby("s").sum()
    return float((g["c"] + np.minimum(g["y"] - g["c"], restore * g["c"])).sum() / g["c"].sum())


def test_the_cap_correction_is_computed_before_the_row_sample(spark, monkeypatch):
    """The per-series bound of the cap correction is not the same on a row sample: a one-row spike's restored
    excess shrinks with the sampled fraction f (kept with probability f, and then bounded by f x the series'
    capped mass). Until 2026-12-07 both paths computed it on the sample: the backtest's series sample (all its
    rows) and the final fit (~27 % of a chain's rows at max_train_rows) then carried different factors, so the
    scored model was not the served one. Now both compute it on the whole training window: with one bulk order
    (one row per target day) and max_train_rows ~27 % of the rows, each fit's factor equals the factor of all the
    window's rows (recomputed here in numpy), which the sample's is not."""
    from dataclasses import replace

    import ml.forecast as mf
    from ml.features import build_daily_features
    from ml.spark_supervised import supervised_frame, table_span

    chain = _small_chain(80995.0)   # and three within the backtest's window (its origin is T - 14 days)
    for st, sku, day in (("ST-2", "BULK", "2012-02-20"), ("ST-1", "C", "2012-01-15"), ("ST-2", "E", "2012-02-01")):
        chain.loc[(chain["store_id"] == st) & (chain["product_id"] == sku) & (chain["date"] == day), "units"] = 80995.0
    feats = build_daily_features(chain, default_country="GB", extend_days=H)
    cfg = mf.ForecastConfig(horizon=H, rows_per_target=1, max_iter=3, max_depth=3, min_instances_per_node=20,
                            train_window_days=90, n_origins=1, baselines=("trailing_mean_28",))
    # the final fit (Spark): the whole window's rows, as the train job draws them before the sample
    sdf = spark.createDataFrame(feats)
    start, T = table_span(sdf)
    T = pd.Timestamp(T)
    full = supervised_frame(sdf, range(1, H + 1), min_target_date=T - pd.Timedelta(days=cfg.train_window_days - 1),
                            max_target_date=T, sample_per_target=1, seed=cfg.seed, known_only=True,
                            data_start=start).select("store_id", "product_id", "y", "level").toPandas()
    sampled = replace(cfg, max_train_rows=int(0.27 * len(full)))
    model, _, n = mf.train_final(spark, sdf, sampled)
    assert n == sampled.max_train_rows < len(full)
    assert _gbt_factor(model) == pytest.approx(_bounded_factor(full), rel=1e-9)
    # the backtest (pandas rows, fit_gbt): the factor of the origin's whole window, not of cap_training_rows' sample
    fits, real = [], mf.fit_gbt

    def recording(spark_, train, cfg_, cols, **kw):
        fits.append((train, real(spark_, train, cfg_, cols, **kw)))
        return fits[-1][1]

    monkeypatch.setattr(mf, "fit_gbt", recording)
    mf.backtest(spark, feats, sampled, log=lambda *_: None)
    (o,) = mf.backtest_origins(feats, sampled)
    window = mf.training_rows(mf.training_table(feats, o, o, sampled), o, sampled)
    (train, bt_model), = fits
    assert len(train) == sampled.max_train_rows < len(window)
    assert _gbt_factor(bt_model) == pytest.approx(_bounded_factor(window), rel=1e-9)
    assert abs(_bounded_factor(train) - _bounded_factor(window)) > 0.01   # the sample's own factor differs
    for bad in (float("inf"), -1.0, float("nan")):
        with pytest.raises(ValueError, match="restore_cap must be a finite number"):
            mf.ForecastConfig(restore_cap=bad)


def stopped_seller() -> pd.DataFrame:
    """Two series over 400 days from 2024-01-01: "STOP" sold 2 units every day for 290 days, then nothing for 110
    days (delisted); "RUN" sells Poisson(5) every day (seeded)."""
    dates = pd.date_range("2024-01-01", periods=400, freq="D")
    stop = np.where(np.arange(400) < 290, 2.0, 0.0)
    run = np.random.default_rng(7).poisson(5.0, 400).astype(float)
    return pd.concat([pd.DataFrame({"date": dates, "store_id": "S1", "product_id": sku, "units": u, "price": 3.0})
                      for sku, u in (("STOP", stop), ("RUN", run))], ignore_index=True)


def test_a_series_that_stopped_selling_is_forecast_zero_and_not_reordered():
    """statsforecast's Croston (the STOP series: 255 of its last 365 days with a sale, ADI 1.43: intermittent)
    forecast the last demand rate, 2.00/day, 110 days after the last sale; as champion that made an order of the
    EOQ (242 units, stock 0). Now a series with no sale for more than
    max(56 days, 3 x its mean inter-demand interval) is inactive: every model forecasts 0 for it, in the backtest
    (so the champion is chosen on what is served) and in the predictions; the reorder plan orders nothing for it
    (order_bound 'inactive'). The RUN series is untouched."""
    from ml.features import build_daily_features
    from ml.forecast import ForecastConfig, backtest, forecast
    from ml.optimize import inputs_from_forecast, recommend

    feats = build_daily_features(stopped_seller(), default_country=None, extend_days=H)
    cfg = ForecastConfig(horizon=H, n_origins=2, origin_step_days=30)
    bt = backtest(None, feats, cfg, with_gbt=False, log=print)
    p = bt.predictions
    stop, run = p[p["product_id"] == "STOP"], p[p["product_id"] == "RUN"]
    assert len(stop) == 2 * H and (stop[list(cfg.baselines)] == 0).all().all()   # old code: statsforecast 2.00
    assert run["statsforecast"].mean() > 3 and run["trailing_mean_28"].mean() > 3

    pred = forecast(None, None, feats, bt.quantiles, bt.bucket_edges, [], horizon=H, model_name="statsforecast")
    s = pred[pred["product_id"] == "STOP"]
    assert len(s) == H and s["yhat"].max() == 0.0           # old code: 2.00 every day
    assert s["inactive"].all() and not pred.loc[pred["product_id"] == "RUN", "inactive"].any()
    assert pred.loc[pred["product_id"] == "RUN", "yhat"].mean() > 3

    assert s["selling_rate"].eq(2.0).all()       # 580 units over its 290 selling days
    inp = inputs_from_forecast(pred, lead_time_days=7, service_level=0.95).assign(stock=3.0, unit_cost=1.0)
    kw = dict(lead_time_days=7, service_level=0.95, order_cost=10.0, holding_cost_rate=0.25, max_cover_days=180)
    rec = recommend(inp, **kw).set_index("product_id")
    # stock on hand: nothing ordered (before the rule: the EOQ, 242 units)
    assert rec.loc["STOP", "reorder_qty"] == 0 and rec.loc["STOP", "order_bound"] == "inactive"
    assert rec.loc["STOP", "reorder_needed"] == 0
    assert rec.loc["RUN", "reorder_qty"] > 0 and rec.loc["RUN", "order_bound"] != "inactive"
    # out of stock, its silence may be the empty shelf's: restocked to the reorder point of its selling rate
    # (2/day x 7 days + the safety stock), not the EOQ; until 2026-12-07 (review of the rule) 0 units, 'inactive'
    rec0 = recommend(inp.assign(stock=0.0), **kw).set_index("product_id")
    assert rec0.loc["STOP", "order_bound"] == "inactive_out_of_stock" and rec0.loc["STOP", "stockout_risk"] == "HIGH"
    assert 14 <= rec0.loc["STOP", "reorder_qty"] == np.ceil(rec0.loc["STOP", "reorder_point"] - 1e-9) < 242


def test_inactive_rule_scales_with_the_series_own_interval():
    """The rule of ml.forecast.inactive_series: a daily seller is inactive after 56 days without a sale, a series
    selling every 30 days only after 3 x 30 (90); 0 days turns the rule off; bad settings are refused naming them."""
    from ml.forecast import ForecastConfig, inactive_series

    o = pd.Timestamp("2024-12-31")
    last = [o - pd.Timedelta(days=d) for d in (57, 56, 80, 92)]
    summary = pd.DataFrame({"store_id": ["S"] * 4, "product_id": ["daily57", "daily56", "monthly80", "monthly92"],
                            "first_sale": [last[0] - pd.Timedelta(days=299), last[1] - pd.Timedelta(days=299),
                                           last[2] - pd.Timedelta(days=330), last[3] - pd.Timedelta(days=330)],
                            "last_sale": last, "demand_days": [300, 300, 12, 12]})
    got = inactive_series(summary, o).set_index("product_id")
    assert got["inactive"].to_dict() == {"daily57": True, "daily56": False, "monthly80": False, "monthly92": True}
    assert got.loc["monthly80", "interval"] == pytest.approx(30.0)
    assert got.loc["daily57", "days_since_sale"] == 57
    assert not inactive_series(summary, o, days=0)["inactive"].any()
    for bad in (dict(inactive_days=-1), dict(inactive_days=1.5), dict(inactive_intervals=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ForecastConfig(**bad)


def few_sales_table(o: pd.Timestamp) -> pd.DataFrame:
    """Daily rows 2023-06-01 .. ``o`` + 5 of five series (store S1), units 0 except on their sale days: "k1_57" and
    "k1_56" sold once, 57 / 56 days before ``o``; "k3" sold 40 units on 3 consecutive days, the last 297 days
    before ``o``; "k10_91" and "k10_90" sold 5 units every 30 days, 10 times, the last 91 / 90 days before ``o``.
    A sale 5 days after ``o`` (k1_57) lies beyond the origin."""
    dates = pd.date_range("2023-06-01", o + pd.Timedelta(days=5), freq="D")
    sales = {"k1_57": {57: 1.0}, "k1_56": {56: 1.0}, "k3": {297: 40.0, 298: 40.0, 299: 40.0},
             "k10_91": {91 + 30 * j: 5.0 for j in range(10)}, "k10_90": {90 + 30 * j: 5.0 for j in range(10)}}
    parts = []
    for sku, by_ago in sales.items():
        ago = (o - dates).days
        units = np.array([by_ago.get(int(a), 0.0) for a in ago])
        if sku == "k1_57":
            units[ago == -5] = 9.0
        parts.append(pd.DataFrame({"date": dates, "store_id": "S1", "product_id": sku, "units": units}))
    return pd.concat(parts, ignore_index=True)


def test_inactive_rule_uses_the_interval_up_to_the_last_sale(spark):
    """The mean inter-demand interval is (last sale - first sale) / (demand days - 1), the silence after the last
    sale excluded; with one demand day there is none and the 56-day floor alone applies. Until 2026-12-07 it was
    (origin - first sale + 1) / demand days: three 40-unit orders on consecutive days then 297 silent days gave
    interval 100 and were never inactive (3 x 100 > 297; statsforecast went on forecasting 1.22/day), and 10 sales
    30 days apart became inactive only after ~129 silent days, not 90. The pandas and Spark summaries agree."""
    from ml.forecast import inactive_series, sale_summary

    o = pd.Timestamp("2024-12-31")
    t = few_sales_table(o)
    summ = sale_summary(t, o)
    got = inactive_series(summ, o).set_index("product_id").sort_index()
    assert got["inactive"].to_dict() == {"k1_56": False, "k1_57": True, "k10_90": False, "k10_91": True,
                                         "k3": True}                      # old code: k3 and k10_91 False
    assert got.loc["k3", "interval"] == 1.0                               # old code: 100.0
    assert got.loc["k10_91", "interval"] == 30.0                          # old code: 36.2
    assert np.isnan(got.loc["k1_57", "interval"]) and got.loc["k1_57", "days_since_sale"] == 57
    # the selling span is floored at the rule's 56 days: 120 units over 3 days is no rate of 40/day
    assert got.loc["k3", "selling_rate"] == pytest.approx(120 / 56)       # old code: 40.0
    assert got.loc["k1_57", "selling_rate"] == pytest.approx(1 / 56)      # old code: 1.0
    assert got.loc["k10_91", "selling_rate"] == pytest.approx(50 / 271)   # a span over 56 days: unchanged
    sdf = spark.createDataFrame(t.assign(date=t["date"].dt.date))
    from_spark = sale_summary(sdf, o)
    key = ["store_id", "product_id"]
    pd.testing.assert_frame_equal(from_spark.sort_values(key).reset_index(drop=True),
                                  summ.sort_values(key).reset_index(drop=True), check_dtype=True)


@pytest.mark.parametrize("option", ["inactive_days", "inactive_intervals"])
def test_inactive_rule_settings_are_refused_naming_the_option(option):
    """check_inactive_rule promises a ValueError naming the option; until 2026-12-07 inf raised OverflowError
    (inactive_days), NaN and 'x' a ValueError naming neither (float('x') / int(nan)), None a TypeError."""
    from ml.forecast import ForecastConfig, check_inactive_rule, model_inactive_rule

    for bad in (float("inf"), float("-inf"), float("nan"), "x", None, True, np.bool_(True), -1, [3]):   # np.bool_:
        # old code took it as 1 (numpy's bool is no Python bool)
        with pytest.raises(ValueError, match=option):
            ForecastConfig(**{option: bad})
        with pytest.raises(ValueError, match=option):
            model_inactive_rule({"config": {option: bad}})
    assert check_inactive_rule(56.0, 3) == (56, 3.0) and check_inactive_rule(np.int64(0), np.float32(2.5)) == (0, 2.5)
