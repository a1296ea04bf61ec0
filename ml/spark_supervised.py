"""Direct multi-horizon supervised rows as Spark DataFrame code: the rows of :func:`ml.features.make_supervised`.

The final GBT fit trains on every series of the chain, so its rows (series x target day x sampled horizon, a
table the size of the feature table) are built here from the feature table in the lake, and fitted by MLlib
without passing through the driver or pandas (:func:`ml.forecast.train_final`). The backtest, bounded to a sample
of series (``FORECAST_BACKTEST_SERIES``), keeps the pandas form. ``tests/test_ml_spark_supervised.py`` checks
this table equal to :func:`ml.features.make_supervised` column by column.

How the rows are gathered: ``make_supervised`` indexes arrays by position; here every lookup is an equi-join on
(store_id, product_id, date), exact because the feature table is gap-free per series (a row at day d - k exists
exactly when the series is at least k days old at d):

* target rows (day d, horizon h): the feature table's row d (its covariates, ``y`` = units of d);
* history known at the origin t = d - h: the row of day t + 1 (one join): :data:`ml.features.HISTORY_COLUMNS`,
  trailing 28- and 365-day means (``rmean_28``, ``rmean_365``); item- and store-level 7- and 28-day means from
  per-(SKU or store, day) aggregates (:func:`group_means`, dimension-sized: two small joins);
* seasonal values on the target's weekday: the row of day d - 7k, k = ceil(h / 7) (one join): its units
  (``seas_lag_1``), the units 7 days before it (``seas_lag_2``), the mean of the last 4 / 52 same-weekday
  values up to it (``seas_mean_4`` / ``seas_mean_52``).

Trailing means are differences of running sums over the gap-free rows (as in :mod:`ml.spark_features`), unknown
(future) units counting 0 as in the pandas form. No Python UDFs: executors need nothing but Spark.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from ml.features import (COVARIATE_COLUMNS, HISTORY_COLUMNS, KEYS, LEVEL_FLOOR, LEVEL_WEIGHTS, MAX_HORIZON,
                         PRICE_COLUMNS,
                         NORMALISED_SOURCES, SEASON, WEATHER_COLUMNS)
from ml.spark_features import _ratio_or, _series_window

#: group-level trailing means (name, grouping key, window in days) of :func:`ml.features.make_supervised`
GROUP_MEANS = [(f"{name}_rmean_{w}", by, w) for by, name in (("product_id", "item"), ("store_id", "store"))
               for w in (7, 28)]


def _known(col: str):
    """The double column with NaN read as null (a pandas frame handed to Spark keeps NaN, Parquet has null)."""
    from pyspark.sql import functions as F

    c = F.col(col).cast("double")
    return F.when(~F.isnan(c), c)


def _as_date(value) -> dt.date:
    import pandas as pd

    return pd.Timestamp(value).date()


def lookup_table(features, data_start: dt.date):
    """The feature table with the per-row values the supervised rows look up (one row per series x day).

    Adds, in units/day: ``_rm7`` / ``_rm28`` / ``_rm365`` (sum of the 7 / 28 / 365 rows strictly before the row
    within its series over min(days since ``data_start``, window), at least its row count: the days before the
    series' first sale count as zero demand, :func:`ml.features._trailing_mean`; null where that divisor is 0),
    ``_u`` (units, null when unknown), ``_u7``
    (units 7 rows before), ``_sm4`` / ``_sm52`` (mean of the row's and the previous 3 / 51 same-weekday rows'
    units, unknown counting 0), ``_pos`` (0-based row within the series) and ``_o_<c>`` (the previous row's
    :data:`ml.features.PRICE_COLUMNS`: on the row after an origin t, the price columns at t).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = _series_window()
    df = features.withColumn("date", F.to_date("date")).withColumn("_u", _known("units"))
    df = df.withColumns({"_pos": F.row_number().over(w) - 1, "_u0": F.coalesce(F.col("_u"), F.lit(0.0))})
    df = df.withColumn("_cs", F.sum("_u0").over(_series_window(Window.unboundedPreceding, 0)))

    days = F.greatest(F.datediff(F.col("date"), F.lit(data_start)), F.col("_pos"))

    def trailing_mean(n: int):
        s = F.lag("_cs", 1, 0.0).over(w) - F.lag("_cs", n + 1, 0.0).over(w)
        return F.when(days > 0, s / F.least(days, F.lit(n)))

    df = df.withColumns({"_rm7": trailing_mean(7), "_rm28": trailing_mean(28), "_rm365": trailing_mean(365),
                         "_u7": F.lag("_u", SEASON).over(w), "_wd": F.col("_pos") % SEASON,
                         **{f"_o_{c}": F.lag(c, 1).over(w) for c in PRICE_COLUMNS}})
    wd = Window.partitionBy(*KEYS, "_wd").orderBy("date")  # the series' rows on one weekday (every 7th row)
    df = df.withColumn("_ws", F.sum("_u0").over(wd.rowsBetween(Window.unboundedPreceding, 0)))
    n_same = F.floor(F.col("_pos") / SEASON) + 1  # same-weekday rows up to and including this one
    for k in (4, 52):
        df = df.withColumn(f"_sm{k}", (F.col("_ws") - F.lag("_ws", k, 0.0).over(wd)) / F.least(n_same, F.lit(k)))
    return df


def group_means(lookup, by: str):
    """Item- or store-level demand levels per (``by``, date): the mean over the rows sharing them of the series'
    trailing 7- and 28-day means (nulls skipped), as the :data:`GROUP_MEANS` columns of ``by``; one row per
    (``by``, date), a dimension-sized table (SKUs or stores x days) that an aggregate builds without moving the
    feature table's rows."""
    from pyspark.sql import functions as F

    names = [(name, n) for name, b, n in GROUP_MEANS if b == by]
    return lookup.groupBy(by, "date").agg(*[F.avg(f"_rm{n}").alias(name) for name, n in names])


def supervised_frame(features, horizons: Iterable[int], *, min_target_date=None, max_target_date=None,
                     max_origin=None, origins: Iterable | None = None, sample_per_target: int | None = None,
                     seed: int = 42, known_only: bool = False, max_rows: int = 0, data_start=None,
                     prices_known_ahead: bool = False):
    """Direct multi-horizon rows, one per (series, origin t, horizon h) with target y_{t+h}: the Spark form of
    :func:`ml.features.make_supervised` (same rows, same columns, same values; see there for each column).

    Args:
        features: Spark DataFrame of the daily feature table (gap-free per series; ``date`` a date or
            timestamp at midnight; ``units`` null or NaN where unknown), e.g. ``spark.read.parquet`` of
            ``features/daily/run_date=.../features.parquet``. Only its stored columns are read.
        horizons: horizons in days, each in 1..MAX_HORIZON (28).
        min_target_date / max_target_date: keep rows whose target day is within these bounds (inclusive).
        max_origin: keep rows whose origin is <= this.
        origins: only rows of these origins (target days origin+1..origin+max(horizons)).
        sample_per_target: this many distinct horizons per (series, target day) instead of all, drawn by a
            seeded hash of (seed, store_id, product_id, date, h): the same rows on every run and partitioning
            (not the pandas form's draw: its numpy generator depends on the row order).
        seed: seed of that draw.
        known_only: keep only rows whose target ``y`` is known.
        max_rows: keep exactly ``min(max_rows, rows)`` rows (0 = all), a seeded uniform sample without
            replacement drawn before the features are gathered: the rows with the smallest seeded hashes of
            (store_id, product_id, date, h) (bottom-k; Cohen & Kaplan 2007, PODC), the same on every run and
            partitioning. One extra pass over the target rows (count and k-th hash, longs only).
        data_start: the first day the chain's data covers (default: the table's first day, one aggregate over
            its ``date`` column); the trailing means count days before a series' first sale from there as 0.
        prices_known_ahead: the price columns of the target day instead of the origin's
            (:func:`ml.features.make_supervised`).

    Returns:
        Spark DataFrame with the columns of ``make_supervised``: store_id, product_id, date (target day, date),
        h (int), origin (date), y (double, null for the future), history and seasonal columns, covariates,
        ``seasonal_naive``, ``trailing_mean_28``, ``level``, ``n_*``, ``item_trend``, ``store_trend``; unordered.

    Raises:
        ValueError: a horizon outside 1..MAX_HORIZON, or sample_per_target < 1.
    """
    from pyspark.sql import functions as F

    hs = sorted(set(int(h) for h in horizons))
    if not hs or hs[0] < 1 or hs[-1] > MAX_HORIZON:
        raise ValueError(f"horizons must be within 1..{MAX_HORIZON}, got {hs}")
    if sample_per_target is not None and sample_per_target < 1:
        raise ValueError(f"sample_per_target must be >= 1, got {sample_per_target}")
    weather = [c for c in WEATHER_COLUMNS if c in features.columns]
    if data_start is None:
        data_start = features.agg(F.min(F.to_date("date"))).first()[0]
    look = lookup_table(features, _as_date(data_start))  # not cached: each use below reads only the columns it needs
    d = F.col("date")
    at_target = [c for c in COVARIATE_COLUMNS if prices_known_ahead or c not in PRICE_COLUMNS]
    at_origin = [] if prices_known_ahead else [F.col(f"_o_{c}").alias(c) for c in PRICE_COLUMNS]
    tgt = look.select(*KEYS, "date", "_pos", F.col("_u").alias("y"), *at_target, *weather)
    if origins is not None:
        ol = spark_dates(look.sparkSession, [_as_date(o) for o in origins], "origin")
        tgt = tgt.crossJoin(F.broadcast(ol)).withColumn("h", F.datediff(d, F.col("origin")))
        tgt = tgt.filter(F.col("h").isin(hs)).drop("origin")
        if min_target_date is not None:
            tgt = tgt.filter(d >= F.lit(_as_date(min_target_date)))
    else:
        if min_target_date is not None:
            tgt = tgt.filter(d >= F.lit(_as_date(min_target_date)))
        pick = F.array(*[F.lit(h) for h in hs])
        if sample_per_target is not None and sample_per_target < len(hs):
            keyed = F.transform(pick, lambda h: F.struct(
                F.xxhash64(F.lit(seed), *[F.col(k) for k in KEYS], d, h).alias("k"), h.alias("h")))
            pick = F.transform(F.slice(F.array_sort(keyed), 1, int(sample_per_target)), lambda s: s["h"])
        tgt = tgt.withColumn("h", F.explode(pick))
    tgt = tgt.filter(F.col("_pos") >= F.col("h"))  # the origin d - h lies within the series
    if max_origin is not None:
        tgt = tgt.filter(F.date_sub(d, F.col("h")) <= F.lit(_as_date(max_origin)))
    if max_target_date is not None:
        tgt = tgt.filter(d <= F.lit(_as_date(max_target_date)))
    if known_only:
        tgt = tgt.filter(F.col("y").isNotNull())
    if max_rows > 0:
        tgt = tgt.withColumn("_r", F.xxhash64(F.lit(seed + 1), *[F.col(k) for k in KEYS], d, F.col("h")))
        n, kth = tgt.select("_r").orderBy("_r").limit(int(max_rows)).agg(F.count("*"), F.max("_r")).first()
        if n >= max_rows:  # more rows than max_rows: keep the bottom max_rows hashes
            tgt = tgt.filter(F.col("_r") <= F.lit(kth))
        tgt = tgt.drop("_r")
    k = F.ceil(F.col("h") / SEASON)
    tgt = tgt.withColumns({"origin": F.date_sub(d, F.col("h")), "_hd": F.date_sub(d, F.col("h") - 1),
                           "_sd": F.date_sub(d, (SEASON * k).cast("int"))}).drop("_pos")

    extra = ["rmean_28", "rmean_365"] + [name for name, _, _ in GROUP_MEANS]
    hist = look.select(*KEYS, F.col("date").alias("_hd"), *[_known(c).alias(c) for c in HISTORY_COLUMNS],
                       F.col("_rm28").alias("rmean_28"), F.col("_rm365").alias("rmean_365"), *at_origin)
    seas = look.select(*KEYS, F.col("date").alias("_sd"), F.col("_u").alias("seas_lag_1"),
                       F.col("_u7").alias("seas_lag_2"), F.col("_sm4").alias("seas_mean_4"),
                       F.col("_sm52").alias("seas_mean_52"))
    out = tgt.join(hist, [*KEYS, "_hd"], "inner").join(seas, [*KEYS, "_sd"], "left")
    for by in ("product_id", "store_id"):  # levels of the item across stores, of the store across items, at t
        out = out.join(group_means(look, by).withColumnRenamed("date", "_hd"), [by, "_hd"], "left")
    out = out.drop("_hd", "_sd")
    out = out.withColumns({c: F.coalesce(F.col(c), F.lit(0.0)) for c in HISTORY_COLUMNS + extra})
    out = out.withColumns({c: F.coalesce(F.col(c), F.col("rmean_28"))
                           for c in ("seas_lag_1", "seas_lag_2", "seas_mean_4", "seas_mean_52")})
    out = out.withColumns({"seasonal_naive": F.col("seas_lag_1"), "trailing_mean_28": F.col("rmean_28"),
                           "level": F.greatest(sum(F.lit(float(wt)) * F.col(c) for c, wt in LEVEL_WEIGHTS.items()),
                                               F.lit(float(LEVEL_FLOOR)))})
    out = out.withColumns({f"n_{c}": F.col(c) / F.col("level") for c in NORMALISED_SOURCES})
    for name in ("item", "store"):
        num, den = F.col(f"{name}_rmean_7"), F.col(f"{name}_rmean_28")
        out = out.withColumn(f"{name}_trend", _ratio_or(num, den, 1.0))
    return out


def _span_aggregates():
    """The aggregate columns ``first`` (first day) and ``last`` (last day with known units) of a feature table."""
    from pyspark.sql import functions as F

    u = _known("units")
    return F.min(F.to_date("date")).alias("first"), F.max(F.when(u.isNotNull(), F.to_date("date"))).alias("last")


def table_span(features) -> tuple[dt.date, dt.date]:
    """(the first day of a Spark feature table, T: its last day with known (non-null, non-NaN) units), from one
    aggregate: the ``data_start`` of :func:`supervised_frame` and the origin of the final fit and the forecasts.

    Raises:
        ValueError: no day has known units.
    """
    first, t = features.agg(*_span_aggregates()).first()
    if t is None:
        raise ValueError("the feature table has no day with known units")
    return first, t


def series_summary(features):
    """One aggregate per series of a Spark feature table, for the train job: (pandas DataFrame store_id, product_id,
    ``known`` = its rows with known (non-null, non-NaN) units; the table's :func:`table_span`).

    Raises:
        ValueError: no day has known units.
    """
    from pyspark.sql import functions as F

    per = features.groupBy(*KEYS).agg(F.count(_known("units")).alias("known"), *_span_aggregates()).toPandas()
    last = per["last"].dropna()   # a series without known units has none
    if last.empty:
        raise ValueError("the feature table has no day with known units")
    return per[[*KEYS, "known"]], (per["first"].min(), last.max())


def spark_dates(spark, days: list[dt.date], name: str):
    """A one-column DataFrame of dates (a small dimension)."""
    from pyspark.sql.types import DateType, StructField, StructType

    return spark.createDataFrame([(x,) for x in days], StructType([StructField(name, DateType(), False)]))
