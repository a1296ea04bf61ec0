"""Spark supervised rows (ml/spark_supervised.py) against the pandas oracle :func:`ml.features.make_supervised`.

A feature table of 7 series (pandas ``build_daily_features``: gap-free, 14 future days) with gaps in the demand,
an intermittent series, a fractional one, a series starting 20 days before the end (shorter than the 28-day
window and the seasonal lags) and one starting a year and a half before it (the 52-week means), over 3 stores
and 4 SKUs so the item- and store-level means pool several series. The Spark table must have the same rows and
the same values column by column (floats to 1e-9), read from a pandas frame (NaN for unknown units) and from
Parquet (null); the sampled horizons must be a deterministic subset of the full table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

END = pd.Timestamp("2024-06-30")
SORT = ["store_id", "product_id", "date", "h"]


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    from ml.features import build_daily_features

    rng = np.random.default_rng(11)
    plan = {("S1", "A"): (560, 6.0, 0.95, False), ("S1", "B"): (400, 0.3, 0.7, False),
            ("S2", "A"): (300, 4.0, 0.9, True), ("S2", "C"): (20, 2.0, 0.9, False),
            ("S3", "A"): (200, 3.0, 0.85, False), ("S3", "D"): (120, 0.8, 0.6, False),
            ("S1", "D"): (90, 1.5, 0.8, False)}
    rows = []
    for (st, sku), (days, rate, p_row, fractional) in plan.items():
        for d in pd.date_range(END - pd.Timedelta(days=days - 1), END, freq="D"):
            if rng.random() > p_row:
                continue  # a gap: zero demand that day
            u = rng.poisson(rate * (1.5 if d.dayofweek >= 5 else 1.0))
            rows.append((d, st, sku, u * (1.25 if fractional else 1.0), 2.0 + rng.random()))
    daily = pd.DataFrame(rows, columns=["date", "store_id", "product_id", "units", "price"])
    return build_daily_features(daily, end_date=END, extend_days=14, default_country="GB")


def to_pandas(sdf) -> pd.DataFrame:
    out = sdf.toPandas()
    for c in ("date", "origin"):
        out[c] = pd.to_datetime(out[c])
    return out.sort_values(SORT).reset_index(drop=True)


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same rows (keys, target day, h, origin) and every column of ``want`` equal: floats to 1e-9, NaN where NaN."""
    want = want.sort_values(SORT).reset_index(drop=True)
    assert len(got) == len(want) > 0
    for c in ["store_id", "product_id", "date", "origin"]:
        assert got[c].tolist() == want[c].tolist(), c
    assert (got["h"].to_numpy() == want["h"].to_numpy()).all()
    missing = [c for c in want.columns if c not in got.columns]
    assert not missing, missing
    for c in want.columns:
        if c in ("store_id", "product_id", "date", "origin", "h"):
            continue
        g, w = got[c].to_numpy(dtype="float64"), want[c].to_numpy(dtype="float64")
        assert (np.isnan(g) == np.isnan(w)).all(), (c, int((np.isnan(g) != np.isnan(w)).sum()))
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9, err_msg=c)


def test_forecast_origins_equal_pandas(spark, features):
    from ml.features import make_supervised
    from ml.spark_supervised import supervised_frame

    # END - 14: six days into the short series (S2/C, from END - 19), where its seasonal lags fall before its start
    short_origin = END - pd.Timedelta(days=14)
    origins = [END - pd.Timedelta(days=61), END - pd.Timedelta(days=28), short_origin, END]
    want = make_supervised(features, range(1, 29), origins=origins)
    sdf = spark.createDataFrame(features)  # unknown units arrive as NaN
    got = to_pandas(supervised_frame(sdf, range(1, 29), origins=origins))
    assert_same_rows(got, want)
    ahead = make_supervised(features, range(1, 29), origins=origins, prices_known_ahead=True)
    assert_same_rows(to_pandas(supervised_frame(sdf, range(1, 29), origins=origins, prices_known_ahead=True)), ahead)
    assert not np.array_equal(ahead["price_rel_28"].to_numpy(), want["price_rel_28"].to_numpy())  # the two differ
    # independently of both, from the feature table: a series first sold 6 days before the origin, 540 days into
    # the data, has a trailing mean over the 28 calendar days up to the origin, the 22 days before its first sale
    # counting as zero demand; it stands in for a seasonal value whose day falls before the series start
    units = features[(features["store_id"] == "S2") & (features["product_id"] == "C")].set_index("date")["units"]
    start = units.index.min()
    assert start == END - pd.Timedelta(days=19)
    short = got[(got["store_id"] == "S2") & (got["product_id"] == "C") & (got["origin"] == short_origin)]
    assert sorted(short["h"]) == list(range(1, 29))
    window = pd.date_range(short_origin - pd.Timedelta(days=27), short_origin, freq="D")
    rmean = units.reindex(window, fill_value=0.0).mean()
    assert rmean < units[units.index <= short_origin].mean()  # not the mean since the first sale
    assert rmean > 0  # a fallback to 0 would not pass for the trailing mean
    np.testing.assert_allclose(short["rmean_28"], rmean, rtol=1e-12)
    lag1 = short["date"] - pd.to_timedelta(7 * (-(-short["h"].astype(int) // 7)), unit="D")  # y_{t+h-7k}
    before = lag1 < start
    assert before.any() and (~before).any()
    for c in ("seas_lag_1", "seasonal_naive", "seas_mean_4", "seas_mean_52"):
        np.testing.assert_allclose(short.loc[before, c], rmean, rtol=1e-12, err_msg=c)
    np.testing.assert_allclose(short.loc[~before, "seas_lag_1"], units.loc[lag1[~before]].to_numpy(), rtol=1e-12)
    assert (lag1 - pd.Timedelta(days=7) < start).all()  # y_{t+h-7k-7}: before the start for every horizon here
    np.testing.assert_allclose(short["seas_lag_2"], rmean, rtol=1e-12)
    future = got[got["origin"] == END]
    assert future["y"].isna().all() and set(future["h"]) == set(range(1, 15))  # 14 future days


def test_training_rows_from_parquet_equal_pandas(spark, features, tmp_path):
    from ml.features import make_supervised
    from ml.spark_supervised import supervised_frame

    path = tmp_path / "features.parquet"
    # as the feature job writes it: date32 days, unknown units null
    pq.write_table(pa.Table.from_pandas(features.assign(date=features["date"].dt.date), preserve_index=False), path)
    lo, hi = END - pd.Timedelta(days=200), END - pd.Timedelta(days=14)
    kw = dict(min_target_date=lo, max_target_date=hi, known_only=True)
    want = make_supervised(features, range(1, 15), **kw)
    got = to_pandas(supervised_frame(spark.read.parquet(str(path)), range(1, 15), **kw))
    assert_same_rows(got, want)
    assert got["date"].min() >= lo and got["date"].max() <= hi and got["y"].notna().all()
    # y is the day's units, read back independently from the feature table
    ref = features.set_index(["store_id", "product_id", "date"])["units"]
    assert np.allclose(got["y"], ref.loc[list(zip(got["store_id"], got["product_id"], got["date"]))].to_numpy())


def test_sampled_horizons_are_a_deterministic_subset(spark, features):
    from ml.features import make_supervised
    from ml.spark_supervised import supervised_frame

    sdf = spark.createDataFrame(features)
    kw = dict(min_target_date=END - pd.Timedelta(days=150), known_only=True)
    a = to_pandas(supervised_frame(sdf, range(1, 15), sample_per_target=2, seed=7, **kw))
    b = to_pandas(supervised_frame(sdf.repartition(3), range(1, 15), sample_per_target=2, seed=7, **kw))
    assert a[SORT].equals(b[SORT])  # the same draw whatever the partitioning
    c = to_pandas(supervised_frame(sdf, range(1, 15), sample_per_target=2, seed=8, **kw))
    assert not a[SORT].equals(c[SORT])
    per_day = a.groupby(["store_id", "product_id", "date"])["h"].agg(["size", "nunique"])
    assert (per_day["size"] == per_day["nunique"]).all() and per_day["size"].max() == 2
    old = a.merge(features.groupby(["store_id", "product_id"])["date"].min().rename("start").reset_index())
    assert (old[old["date"] - old["start"] >= pd.Timedelta(days=14)]
            .groupby(["store_id", "product_id", "date"]).size() == 2).all()
    assert set(a["h"]) == set(range(1, 15))
    full = make_supervised(features, range(1, 15), **kw)
    assert_same_rows(a, full.merge(a[SORT], on=SORT))


def test_series_summary_counts_known_rows_and_gives_the_table_span(spark, features):
    """The train job's one aggregate: per series the rows with known units (NaN from pandas counts as unknown, as
    the 14 future days per series are), and the same (first day, last known day) as table_span."""
    from ml.spark_supervised import series_summary, table_span

    sdf = spark.createDataFrame(features)
    keys, span = series_summary(sdf)
    want = features.groupby(["store_id", "product_id"])["units"].count()   # pandas' count skips NaN
    got = keys.set_index(["store_id", "product_id"])["known"]
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False, check_dtype=False)
    assert span == table_span(sdf)
    assert span == (features["date"].min().date(), END.date())
    with pytest.raises(ValueError, match="no day with known units"):
        series_summary(spark.createDataFrame(features[features["units"].isna()]))


def test_bad_horizons_raise(spark, features):
    from ml.spark_supervised import supervised_frame

    sdf = spark.createDataFrame(features.head(50))
    with pytest.raises(ValueError, match="horizons"):
        supervised_frame(sdf, [0, 3])
    with pytest.raises(ValueError, match="sample_per_target"):
        supervised_frame(sdf, [1, 2], sample_per_target=0)


@pytest.mark.parametrize("dates", ["timestamp_ns", "date32"])
def test_read_features_frame_gives_the_pandas_readers_table(spark, features, local_lake, dates):
    """The train and predict jobs read the feature table with Spark (ml.pipeline.read_features_frame): from a run
    folder, a table the pandas path wrote (nanosecond timestamps, which Spark's Parquet reader refuses) or the
    Spark job's (dates). Collected, it equals what the pandas reader (read_features) gives."""
    from ml.pipeline import collect_series, read_features, read_features_frame

    t = features.assign(date=features["date"].dt.date) if dates == "date32" else features
    local_lake.write_table(pa.Table.from_pandas(t, preserve_index=False), "features", "daily",
                           f"run_date={dates}", "features.parquet")
    path = f"features/daily/run_date={dates}"
    sdf = read_features_frame(spark, local_lake, path)
    assert dict(sdf.dtypes)["date"] == "date"
    got = collect_series(sdf, None)
    want = read_features(local_lake, path)
    pd.testing.assert_frame_equal(got, want[got.columns], check_dtype=False)
    assert got["date"].max() == END + pd.Timedelta(days=14)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_features_frame(spark, local_lake, "features/daily/run_date=1999-01-01")
