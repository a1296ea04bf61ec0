"""The daily feature table as Spark DataFrame code: the same table as :func:`ml.features.build_daily_features`.

Run by the spark-submit application ``ml/jobs/build_features.py`` (the ``build_features`` task of
``demand_forecast_training``, SparkSubmitOperator on ``spark_default``: ``local[2]`` natively, the compose Spark
cluster with ``SPARK_MASTER=spark://spark-master:7077``); :func:`build_features_df` takes any SparkSession and
any Spark DataFrame of daily demand. The pandas implementation (:mod:`ml.features`) stays as the reference
(``tests/test_ml_spark_features.py`` compares the two column by column) and for in-process scripts.

What runs where
---------------
* **Spark** (per series x day, JVM only, no Python UDFs, so executors of the compose cluster need nothing but
  Spark): validation, the gap-free grid per series (``sequence`` + ``explode``, first active day to the last
  day + ``extend_days``), the zero fill of missing days, price forward fill, lags, rolling means / standard
  deviations / zero share / price mean over trailing windows (window functions partitioned by store x SKU,
  ordered by date, counted in rows — exact because the grid has no gaps — as differences of running sums, one
  pass per series instead of a sliding frame re-aggregated for every row), the price max (sliding frame), days
  since the last sale, calendar covariates, promotion proxy.
  Precision of the running sums: integer units give exact sums; fractional units are shifted by the series'
  rounded mean before summing, which keeps the standard deviations within 7e-7 relative of a two-pass
  computation even at a level 40,000 standard deviations above zero (``tests/test_ml_spark_features.py``).
* **pandas** (dimension-sized, broadcast-joined): public holidays per (date, country) for the grid's date range
  and the stores' countries (:func:`ml.features.holiday_flags`, the ``holidays`` package), and the optional
  weather table (WEATHER_FILE).

Input (:data:`DEMAND_COLUMNS`): one row per (date, store_id, product_id) with ``date`` (DateType),
``store_id`` / ``product_id`` (string), ``units`` (double, units/day, >= 0), ``price`` (double, currency per
unit, null allowed), optional ``country_code`` (ISO-3166 alpha-2, null allowed) and optional 0/1 flags
``promo`` / ``holiday`` / ``event`` / ``snap`` (see :mod:`ml.features` for their meaning; a flag given in the
input replaces the derived one, as there).

Output (:func:`build_features_df`): :data:`OUTPUT_COLUMNS` = ``ml.pipeline.FEATURE_TABLE_COLUMNS``, one row per
series x day; history columns use only days < d (row d's forecast origin is d-1), covariates are those of day
d. Types: ``date`` DateType; ``units``, lags, rolling statistics, ``days_since_sale``, ``price*``, ``temp_c``,
``precip_mm`` double (null where pandas has NaN); ``dow`` ... ``snap`` byte (pandas int8).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ml.features import DEFAULT_HORIZON, KEYS, LAGS, OPTIONAL_FLAGS, WINDOWS, holiday_flags

log = logging.getLogger(__name__)

#: required input columns (``country_code`` and the OPTIONAL_FLAGS are optional)
DEMAND_COLUMNS = ["date", "store_id", "product_id", "units", "price"]
#: output columns, in order (the ClickHouse ``features_daily`` columns without run_date / computed_at)
OUTPUT_COLUMNS = [
    "date", "store_id", "product_id", "units", "lag_1", "lag_7", "lag_14", "lag_28",
    "rmean_7", "rmean_14", "rmean_30", "rmean_90", "rstd_7", "rstd_14", "rstd_30", "rstd_90",
    "zero_share_28", "days_since_sale", "dow", "month", "season", "day_of_month", "is_weekend",
    "price", "price_change_7", "price_rel_28", "promo", "holiday", "event", "snap", "temp_c", "precip_mm",
]
BYTE_COLUMNS = ["dow", "month", "season", "day_of_month", "is_weekend", "promo", "holiday", "event", "snap"]
#: trailing windows (days) of the price statistics (price_rel_28, the promotion proxy) and the zero share
PRICE_WINDOW = 28
ZERO_SHARE_WINDOW = 28
#: cap of days_since_sale (days)
MAX_DAYS_SINCE_SALE = 365
#: the promotion proxy: price below this share of the highest price of the previous PRICE_WINDOW days
PROMO_PRICE_SHARE = 0.98


class FeatureError(ValueError):
    """The daily demand table breaks its contract (negative units, null keys, duplicates, no active series)."""


# ------------------------------------------------------------------------------------------ input --
def _demand_kinds(columns) -> list[tuple[str, str]]:
    """(column, kind) of the daily demand columns present in ``columns``, in contract order; kind is ``date``,
    ``string``, ``double`` or ``int`` (the flags). Raises FeatureError when a required column is missing."""
    columns = list(columns)
    missing = [c for c in DEMAND_COLUMNS if c not in columns]
    if missing:
        raise FeatureError(f"daily demand table lacks column(s) {missing}; has {columns}")
    kinds = {"date": "date", "store_id": "string", "product_id": "string", "country_code": "string",
             "units": "double", "price": "double"}
    return [(c, kinds.get(c, "int")) for c in DEMAND_COLUMNS + [c for c in ("country_code", *OPTIONAL_FLAGS)
                                                                if c in columns]]


def demand_arrow(table: pa.Table) -> pa.Table:
    """Normalise a daily demand Arrow table for Spark: ``date`` to date32 (a timestamp is cut to its day),
    keys and ``country_code`` to string, ``units`` / ``price`` to float64, flags to int32; other columns dropped.

    Raises:
        FeatureError: a required column is missing (the message lists the table's columns).
    """
    arrow_type = {"date": pa.date32(), "string": pa.string(), "double": pa.float64(), "int": pa.int32()}
    cols, names = [], []
    for c, kind in _demand_kinds(table.column_names):
        a = table[c]
        if kind == "date" and pa.types.is_timestamp(a.type) and a.type.tz is not None:
            a = pc.local_timestamp(a)  # the day in the timestamp's own zone, as pandas' normalize()
        cols.append(pc.cast(a, arrow_type[kind]))
        names.append(c)
    return pa.table(cols, names=names)


def read_demand(spark, uri: str):
    """The staged daily demand Parquet (a file or a folder of files) at ``uri`` (``s3a://`` or ``file://``,
    :meth:`core.lake.Lake.spark_uri`), read by Spark itself (executors included), with the types of
    :func:`demand_arrow`: ``date`` DateType (a timestamp is cut to its day in the session time zone, UTC),
    keys and ``country_code`` string, ``units`` / ``price`` double, flags int; other columns dropped.

    Raises:
        FeatureError: a required column is missing (the message lists the file's columns).
    """
    from pyspark.sql import functions as F

    df = spark.read.parquet(uri)
    return df.select(*[(F.to_date(F.col(c)) if kind == "date" else F.col(c).cast(kind)).alias(c)
                       for c, kind in _demand_kinds(df.columns)])


def validate(demand) -> None:
    """Check a daily demand DataFrame (one Spark action): no null key, no negative units, (date, store_id,
    product_id) unique. The same contract as :func:`ml.features.validate_daily`.

    Raises:
        FeatureError: naming the problem and counting rows.
    """
    from pyspark.sql import functions as F

    per_key = demand.groupBy("date", *KEYS).agg(F.count(F.lit(1)).alias("n"),
                                                 F.sum((F.col("units") < 0).cast("int")).alias("neg"))
    k_null = F.col("date").isNull() | F.col("store_id").isNull() | F.col("product_id").isNull()
    r = per_key.agg(F.sum(F.when(k_null, F.col("n")).otherwise(0)).alias("null_keys"),
                    F.sum(F.when(F.col("n") > 1, F.col("n") - 1).otherwise(0)).alias("dups"),
                    F.sum("neg").alias("neg")).collect()[0]
    if r["null_keys"]:
        raise FeatureError(f"{int(r['null_keys'])} row(s) with a null date, store_id or product_id")
    if r["neg"]:
        raise FeatureError(f"{int(r['neg'])} row(s) with negative units (returns must not be netted into demand)")
    if r["dups"]:
        raise FeatureError(f"{int(r['dups'])} duplicate (date, store_id, product_id) row(s); aggregate first")


# -------------------------------------------------------------------------------------- transforms --
def _series_window(lo=None, hi=None):
    """Window per store x SKU ordered by date; with a frame of rows ``lo..hi`` relative to the row (days, since
    the grid is gap-free)."""
    from pyspark.sql import Window

    w = Window.partitionBy(*KEYS).orderBy("date")
    return w if lo is None else w.rowsBetween(lo, hi)


def complete_series(demand, end_date: dt.date, extend_days: int = DEFAULT_HORIZON):
    """Gap-free daily series per store x SKU (the Spark form of :func:`ml.features.complete_series`).

    Each series runs from its first active day (first day with units > 0 or a non-null price, on or before
    ``end_date``) to ``end_date + extend_days``; rows after ``end_date`` in the input are ignored. Days up to
    ``end_date`` without a row get units 0; the ``extend_days`` future days get units null. Price is forward-
    filled within the series (future days keep the last known price); days before the series' first known
    price stay null (0 in the feature table), never filled back from a later day. Flags given in the input are
    0/1 with 0 where missing. ``country_code``, when in the input, is the store's (the smallest non-null code
    of its rows; one per store in ``dim_store``), on every row of the store.

    Args:
        demand: daily demand DataFrame (:data:`DEMAND_COLUMNS`, date as DateType).
        end_date: last day with known demand.
        extend_days: future days appended (>= the forecast horizon).

    Returns:
        DataFrame store_id, product_id, date, units, price[, country_code][, flags]; unordered.
    """
    from pyspark.sql import functions as F

    end = F.lit(end_date)
    df = demand.filter(F.col("date") <= end)
    starts = df.filter((F.col("units") > 0) | F.col("price").isNotNull()) \
               .groupBy(*KEYS).agg(F.min("date").alias("_start"))
    last = end_date + dt.timedelta(days=int(extend_days))
    grid = starts.select(*KEYS, F.explode(F.sequence(F.col("_start"), F.lit(last))).alias("date"))
    flags = [c for c in OPTIONAL_FLAGS if c in df.columns]
    out = grid.join(df.select("date", *KEYS, "units", "price", *flags), ["date", *KEYS], "left")
    out = out.withColumn("units", F.when(F.col("date") <= end, F.coalesce(F.col("units"), F.lit(0.0)))
                         .otherwise(F.lit(None).cast("double")))
    # forward fill only: a day before the series' first known price gets no price of a later day
    out = out.withColumn("price", F.last("price", ignorenulls=True).over(_series_window(_unbounded_preceding(), 0)))
    for c in flags:
        out = out.withColumn(c, F.coalesce(F.col(c).cast("int"), F.lit(0)))
    if "country_code" in df.columns:
        cc = df.filter(F.col("country_code").isNotNull()).groupBy("store_id").agg(
            F.min("country_code").alias("country_code"))
        out = out.join(F.broadcast(cc), "store_id", "left")
    return out


def _unbounded_preceding():
    from pyspark.sql import Window

    return Window.unboundedPreceding


def _unbounded_following():
    from pyspark.sql import Window

    return Window.unboundedFollowing


def holiday_dimension(dates: pd.Series, countries: list[str]) -> pd.DataFrame:
    """Public holidays per (date, country_code) for the given dates and countries (pandas, dimension-sized:
    days x countries), with :func:`ml.features.holiday_flags` (the ``holidays`` package; a country without a
    calendar gives 0).

    Returns:
        DataFrame date (datetime.date), country_code (str), holiday (int 0/1).
    """
    days = pd.Series(pd.to_datetime(pd.Series(dates)).dt.normalize().unique())
    if days.empty or not countries:
        return pd.DataFrame({"date": pd.Series(dtype=object), "country_code": pd.Series(dtype=str),
                             "holiday": pd.Series(dtype="int32")})
    d = pd.DataFrame({"date": days}).merge(pd.DataFrame({"country_code": sorted(set(countries))}), how="cross")
    d["holiday"] = holiday_flags(d["date"], d["country_code"], None).astype("int32")
    d["date"] = d["date"].dt.date
    return d


def _ratio_or(num, den, default: float | None):
    """num / den, or ``default`` (None = null) where den is 0 or null or num is null (pandas: inf and NaN ->
    default; Spark's ANSI mode would raise on a division by zero)."""
    from pyspark.sql import functions as F

    ok = num.isNotNull() & den.isNotNull() & (den != 0)
    return F.when(ok, num / F.when(ok, den)).otherwise(F.lit(default))


def add_features(series, *, holidays=None, weather=None, default_country: str | None = "GB"):
    """History features and covariates on a gap-free series frame (the Spark form of the feature part of
    :func:`ml.features.build_daily_features`; see :mod:`ml.features` for each column's definition).

    * ``lag_k`` = units of day d-k (k in LAGS); ``rmean_w`` / ``rstd_w`` = mean / sample standard deviation of
      units over days d-w..d-1 (non-null days; std 0 with fewer than 2), ``zero_share_28`` = share of those
      28 days with units 0, ``days_since_sale`` = days between the last day < d with units > 0 (else the day
      before the series' first day) and d, minus 1, clipped to 0..365 — all in units/day or days;
    * ``dow`` (0 = Monday), ``month``, ``season`` (0 = Dec-Feb .. 3 = Sep-Nov), ``day_of_month``, ``is_weekend``;
      ``price_change_7`` = price_d / price_{d-7} - 1 (0 when undefined), ``price_rel_28`` = price_d / mean
      price of d-28..d-1 (1 when undefined), ``promo`` (input flag, else price_d < 0.98 x max price of
      d-28..d-1), ``holiday`` (input flag, else the holiday dimension on (date, country_code or
      ``default_country``); 0 when neither is known), ``event`` / ``snap`` (input flags, else 0); weather
      ``temp_c`` (deg C) / ``precip_mm`` (mm) joined on date (and country_code when the weather has it), null
      where absent; price null -> 0 at the end.

    Args:
        series: output of :func:`complete_series`.
        holidays: Spark DataFrame date, country_code, holiday (from :func:`holiday_dimension`), or None.
        weather: Spark DataFrame date, [country_code,] temp_c, precip_mm (one row per key), or None.
        default_country: country of stores without ``country_code`` (holidays, weather).

    Returns:
        DataFrame with :data:`OUTPUT_COLUMNS` (plus country_code when known); unordered.
    """
    from pyspark.sql import functions as F

    w = _series_window()
    u, p, d = F.col("units"), F.col("price"), F.col("date")
    # trailing-window statistics over rows d-n..d-1 as differences of running sums (O(1) per row; a sliding
    # frame of n rows recomputes its aggregate over the whole frame for every row): running sums up to and
    # including each row first, then window = running(d-1) - running(d-n-1), from two lags
    # Units are summed shifted by the series' rounded mean c (variance is shift-invariant, and the window mean
    # adds c back): running sums of squares then stay near the variance's scale instead of the level's, so
    # the difference n S2 - S^2 does not cancel catastrophically for fractional units at a high level; integer
    # units stay integers (exact sums).
    run = _series_window(_unbounded_preceding(), 0)
    series = series.withColumn("_c", F.coalesce(F.round(F.avg(u).over(
        _series_window(_unbounded_preceding(), _unbounded_following()))), F.lit(0.0)))
    uc = u - F.col("_c")
    pz = F.coalesce(p, F.lit(0.0))
    series = series.withColumns({
        "_su": F.coalesce(F.sum(uc).over(run), F.lit(0.0)), "_su2": F.coalesce(F.sum(uc * uc).over(run), F.lit(0.0)),
        "_nu": F.count(u).over(run), "_nz": F.sum((u == 0).cast("long")).over(run),
        "_sp": F.sum(pz).over(run), "_np": F.count(p).over(run)})

    def trailing(col: str, n: int):
        """sum of the running column's increments over rows d-n..d-1 (0 before the series' start)."""
        return F.lag(col, 1, 0).over(w) - F.lag(col, n + 1, 0).over(w)

    cols = {f"lag_{k}": F.lag(u, k).over(w) for k in LAGS}
    for n in WINDOWS:
        cnt, sm, sm2 = trailing("_nu", n), trailing("_su", n), trailing("_su2", n)
        cols[f"rmean_{n}"] = F.col("_c") + _ratio_or(sm, cnt, None)
        # sample variance = (n S2 - S^2) / (n (n - 1)): exact for integer units; clipped at 0 against rounding
        var = (cnt * sm2 - sm * sm) / F.when(cnt >= 2, cnt * (cnt - 1))
        cols[f"rstd_{n}"] = F.when(cnt >= 2, F.sqrt(F.greatest(var, F.lit(0.0)))).otherwise(F.lit(0.0))
    cols["zero_share_28"] = _ratio_or(trailing("_nz", ZERO_SHARE_WINDOW), trailing("_nu", ZERO_SHARE_WINDOW),
                                      None)
    last_sale = F.max(F.when(u > 0, d)).over(_series_window(_unbounded_preceding(), -1))
    first_day = F.min(d).over(_series_window(_unbounded_preceding(), _unbounded_following()))
    ref = F.coalesce(last_sale, F.date_sub(first_day, 1))
    cols["days_since_sale"] = F.least(F.greatest(F.datediff(d, ref) - 1, F.lit(0)),
                                      F.lit(MAX_DAYS_SINCE_SALE)).cast("double")
    cols["price_change_7"] = F.coalesce(_ratio_or(p, F.lag(p, 7).over(w), None) - F.lit(1.0), F.lit(0.0))
    pmean = _ratio_or(trailing("_sp", PRICE_WINDOW), trailing("_np", PRICE_WINDOW), None)
    cols["price_rel_28"] = _ratio_or(p, pmean, 1.0)
    if "promo" not in series.columns:
        pmax = F.max(p).over(_series_window(-PRICE_WINDOW, -1))  # a sliding frame: max has no running form
        cols["promo"] = F.coalesce(p < F.lit(PROMO_PRICE_SHARE) * pmax, F.lit(False)).cast("int")
    df = series.withColumns(cols)

    dow = F.weekday(d)
    month = F.month(d)
    df = df.withColumns({"dow": dow, "month": month, "season": F.floor((month % 12) / 3).cast("int"),
                         "day_of_month": F.dayofmonth(d), "is_weekend": (dow >= 5).cast("int")})
    has_cc = "country_code" in series.columns
    if "holiday" not in series.columns:
        if holidays is None or (default_country is None and not has_cc):
            df = df.withColumn("holiday", F.lit(0))
        else:
            cc = F.coalesce(F.col("country_code"), F.lit(default_country)) if has_cc else F.lit(default_country)
            df = df.withColumn("_cc", cc).join(
                F.broadcast(holidays.select("date", F.col("country_code").alias("_cc"), "holiday")),
                ["date", "_cc"], "left").withColumn("holiday", F.coalesce(F.col("holiday"), F.lit(0))).drop("_cc")
    for flag in ("event", "snap"):
        if flag not in df.columns:
            df = df.withColumn(flag, F.lit(0))
    if weather is not None:
        on = ["date"]
        wcols = weather.select("date", *(["country_code"] if "country_code" in weather.columns else []),
                               F.col("temp_c").cast("double"), F.col("precip_mm").cast("double"))
        if "country_code" in weather.columns:
            if not has_cc:
                df = df.withColumn("country_code", F.lit(default_country).cast("string"))
            on.append("country_code")
        df = df.join(F.broadcast(wcols), on, "left")
    else:
        df = df.withColumns({"temp_c": F.lit(None).cast("double"), "precip_mm": F.lit(None).cast("double")})
    df = df.withColumn("price", F.coalesce(p, F.lit(0.0)))
    out = [F.col(c).cast("byte") if c in BYTE_COLUMNS else F.col(c) for c in OUTPUT_COLUMNS]
    return df.select(*out, *(["country_code"] if "country_code" in df.columns else []))


def build_features_df(spark, demand, *, end_date: dt.date | None = None, extend_days: int = DEFAULT_HORIZON,
                      default_country: str | None = "GB", weather: pd.DataFrame | None = None):
    """The daily feature table of ``demand`` as a Spark DataFrame (lazy but for the checks).

    Args:
        spark: the SparkSession.
        demand: daily demand DataFrame (:data:`DEMAND_COLUMNS`, see the module docstring).
        end_date: last day with known demand (default: the latest date of ``demand``).
        extend_days: future days appended for forecasting (units null), >= the forecast horizon.
        default_country: ISO code for holidays of stores without ``country_code``; None = no holidays unless
            the input has a ``holiday`` column or country codes.
        weather: optional pandas table (date, [country_code,] temp_c, precip_mm), broadcast-joined on the day.

    Returns:
        DataFrame with :data:`OUTPUT_COLUMNS` (+ country_code when the input has it), one row per series x day.

    Raises:
        FeatureError: the demand breaks its contract (:func:`validate`) or has no active series.
        ValueError: the weather table lacks a column.
    """
    from pyspark.sql import functions as F

    validate(demand)
    if end_date is None:
        end_date = demand.agg(F.max("date")).collect()[0][0]
        if end_date is None:
            raise FeatureError("no active series: the daily demand table is empty")
    series = complete_series(demand, end_date, extend_days).cache()
    hol = None
    if "holiday" not in series.columns and (default_country is not None or "country_code" in series.columns):
        # one action for the dimension's extent: the grid's date range and the stores' countries
        r = series.agg(F.min("date").alias("lo"), F.max("date").alias("hi"),
                       *([F.collect_set("country_code").alias("cc")] if "country_code" in series.columns else []),
                       *([F.max(F.col("country_code").isNull().cast("int")).alias("cc_null")]
                         if "country_code" in series.columns else [])).collect()[0]
        if r["lo"] is None:
            series.unpersist()
            raise FeatureError("no active series: every row has zero units and no price")
        countries = set(r["cc"]) if "country_code" in series.columns else set()
        if default_country and ("country_code" not in series.columns or r["cc_null"]):
            countries.add(default_country)
        dates = pd.Series(pd.date_range(r["lo"], r["hi"], freq="D"))
        hol = spark.createDataFrame(holiday_dimension(dates, sorted(countries)),
                                    "date date, country_code string, holiday int") if countries else None
    wdf = None
    if weather is not None:
        wp = weather.copy()
        need = {"date", "temp_c", "precip_mm"}
        if not need <= set(wp.columns):
            raise ValueError(f"weather table needs columns {sorted(need)} (+ optional country_code); "
                             f"has {list(wp.columns)}")
        wp["date"] = pd.to_datetime(wp["date"]).dt.date
        on = ["date"] + (["country_code"] if "country_code" in wp.columns else [])
        wp = wp[on + ["temp_c", "precip_mm"]].drop_duplicates(on)
        wp[["temp_c", "precip_mm"]] = wp[["temp_c", "precip_mm"]].astype("float64")
        schema = "date date, " + ("country_code string, " if "country_code" in on else "") + \
                 "temp_c double, precip_mm double"
        wdf = spark.createDataFrame(wp, schema)
    return add_features(series, holidays=hol, weather=wdf, default_country=default_country)


def to_arrow(features) -> pa.Table:
    """Collect a feature DataFrame to one Arrow table sorted by store_id, product_id, date, with the pandas
    path's Parquet types: ``date`` timestamp[ns] (midnight), the flags int8, the rest float64 / string.

    Raises:
        FeatureError: the table is empty (no active series).
    """
    t = features.select(*OUTPUT_COLUMNS).toArrow()
    if t.num_rows == 0:
        raise FeatureError("no active series: every row has zero units and no price")
    t = t.sort_by([("store_id", "ascending"), ("product_id", "ascending"), ("date", "ascending")])
    cols = []
    for c in OUTPUT_COLUMNS:
        a = t[c]
        if c == "date":
            a = pc.cast(a, pa.timestamp("ns"))
        elif c in BYTE_COLUMNS:
            a = pc.cast(a, pa.int8())
        cols.append(a)
    return pa.table(cols, names=OUTPUT_COLUMNS)


def write_features(features, lake, parts: tuple[str, ...]) -> dict[str, Any]:
    """Write a feature DataFrame as Parquet under the lake path ``parts`` (a folder; Spark reaches it at
    :meth:`core.lake.Lake.spark_uri`, ``s3a://`` or ``file://``) from Spark itself, so the table never passes
    through the driver, and describe what was written.

    The folder is replaced (``overwrite``: a re-run leaves one copy). Columns :data:`OUTPUT_COLUMNS`: ``date``
    date32, the flags int8, the rest float64 / string; one file per shuffle partition, each holding whole series
    sorted by store_id, product_id, date (the windows' hash partitioning by series is kept: no extra shuffle).

    Returns:
        dict rows, series, first_date, last_date (last day with known units), ISO dates; read back from the
        written files (one scan), so they describe the table as stored.

    Raises:
        FeatureError: the table is empty (no active series); nothing is left at ``parts``.
    """
    from pyspark.sql import functions as F

    uri = lake.spark_uri(*parts)
    (features.select(*OUTPUT_COLUMNS).sortWithinPartitions(*KEYS, "date")
     .write.mode("overwrite").option("compression", "zstd").parquet(uri))
    r = features.sparkSession.read.parquet(uri).agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct(*KEYS).alias("series"), F.min("date").alias("first"),
        F.max(F.when(F.col("units").isNotNull(), F.col("date"))).alias("last")).collect()[0]
    if not r["rows"]:
        lake.delete_dir(*parts)
        raise FeatureError("no active series: every row has zero units and no price")
    return {"rows": int(r["rows"]), "series": int(r["series"]), "first_date": r["first"].isoformat(),
            "last_date": r["last"].isoformat() if r["last"] else None}


# ---------------------------------------------------------------------------------- lake staging --
STAGING_PREFIX = "staging/build_features"
DEMAND_NAME = "demand"
PARAMS_NAME = "params"
RESULT_NAME = "features_result"
#: staged when the demand breaks the contract (the job exits 3, the operator fails the task without retries)
ERROR_NAME = "features_error"


def staging(lake, run_date: dt.date, name: str) -> tuple[str, str]:
    """Lake path (bucket, key) of a staged file of the run: ``features/staging/build_features/run_date=<d>/<name>``."""
    ext = "parquet" if name == DEMAND_NAME else "json"
    return lake.settings.lake_features_bucket, f"{STAGING_PREFIX}/run_date={run_date.isoformat()}/{name}.{ext}"


def features_path(lake, run_date: dt.date) -> tuple[str, str, str, str]:
    """Lake path of the run's feature table: ``features/daily/run_date=<d>/features.parquet`` (as parts); the Spark
    job writes it as a folder of Parquet files (:func:`write_features`), the in-process pandas path as one file;
    :meth:`core.lake.Lake.read_table` reads either."""
    return lake.settings.lake_features_bucket, "daily", f"run_date={run_date.isoformat()}", "features.parquet"


def stage_inputs(lake, run_date: dt.date, daily: pd.DataFrame, end_date: dt.date, extend_days: int,
                 default_country: str | None) -> dict:
    """Stage the job's inputs for ``run_date``: the daily demand table (:data:`DEMAND_COLUMNS` + country_code,
    see :func:`demand_arrow`) as ``demand.parquet`` and ``params.json`` (end_date = last day with known
    demand, extend_days = future days, default_country). Overwrites: idempotent.

    Returns:
        the parameters written (run_date, end_date, extend_days, default_country).
    """
    table = demand_arrow(pa.Table.from_pandas(daily, preserve_index=False))
    lake.write_table(table, *staging(lake, run_date, DEMAND_NAME))
    return write_params(lake, run_date, end_date, extend_days, default_country)


def write_params(lake, run_date: dt.date, end_date, extend_days: int, default_country: str | None) -> dict:
    """Stage the job's ``params.json`` for ``run_date`` (end_date = last day with known demand, any date-like;
    extend_days = future days; default_country). Overwrites: idempotent. Returns the parameters written."""
    params = {"run_date": run_date.isoformat(), "end_date": pd.Timestamp(end_date).date().isoformat(),
              "extend_days": int(extend_days), "default_country": default_country}
    lake.write_json(params, *staging(lake, run_date, PARAMS_NAME))
    return params


def clear_error(lake, run_date: dt.date) -> None:
    """Remove the run's staged error record (before a new run of the job)."""
    lake.delete_file(*staging(lake, run_date, ERROR_NAME))


def build_run(spark, lake, run_date: dt.date, weather: pd.DataFrame | None = None) -> dict[str, Any]:
    """The spark-submit job's work: the staged demand and parameters of ``run_date`` (written by
    :func:`ml.pipeline.stage_demand`), read by Spark (:func:`read_demand`) -> the feature table at
    ``features/daily/run_date=<d>/features.parquet``, written by Spark (:func:`write_features`; overwritten:
    idempotent) and a result record (staged ``features_result.json``). Neither table passes through the driver.

    Returns:
        dict rows, series, first_date, last_date (last day with known demand), end_date, lake_path, run_date,
        seconds.

    Raises:
        FileNotFoundError: nothing staged for the run date (the upstream task did not run).
        FeatureError: the staged demand breaks the contract.
    """
    t0 = time.perf_counter()
    params = lake.read_json(*staging(lake, run_date, PARAMS_NAME))
    if params is None or not lake.exists(*staging(lake, run_date, DEMAND_NAME)):
        raise FileNotFoundError(f"nothing staged under {'/'.join(staging(lake, run_date, PARAMS_NAME)[:1])}/"
                                f"{STAGING_PREFIX}/run_date={run_date} (run the extract_demand task first)")
    demand = read_demand(spark, lake.spark_uri(*staging(lake, run_date, DEMAND_NAME)))
    feats = build_features_df(spark, demand, end_date=dt.date.fromisoformat(params["end_date"]),
                              extend_days=int(params["extend_days"]), default_country=params.get("default_country"),
                              weather=weather)
    parts = features_path(lake, run_date)
    written = write_features(feats, lake, parts)
    spark.catalog.clearCache()
    out = {**written, "end_date": params["end_date"], "lake_path": "/".join(parts[:3]),
           "run_date": run_date.isoformat(), "seconds": round(time.perf_counter() - t0, 2)}
    lake.write_json(out, *staging(lake, run_date, RESULT_NAME))
    log.info("build_features %s: %s", run_date, out)
    return out
