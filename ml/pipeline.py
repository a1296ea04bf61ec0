"""Task logic of the ML DAGs (``demand_forecast_training``, ``batch_predictions``); the DAG files stay thin.

Process model (chDB allows one process per data path): the Python tasks here own the ClickHouse client;
the Spark jobs (:mod:`ml.jobs.build_features`, :mod:`ml.jobs.train`, :mod:`ml.jobs.predict`, run by spark-submit in a subprocess) never
open ClickHouse and exchange data through the lake:

* ``features/daily/run_date=YYYY-MM-DD/features.parquet`` — the daily feature table (a folder of Parquet files
  written by the Spark job ``ml/jobs/build_features.py`` between :func:`stage_demand` and :func:`load_features`
  in the DAG; one file from the in-process pandas :func:`build_features`),
  ``features/daily/latest.json`` points at the newest one;
* ``models/demand-forecast/v<N>/`` — Spark model, ``metrics.parquet``, ``intervals.parquet``, ``meta.json``
  (train job); ``models/demand-forecast/champion.json`` — the promoted version (register_model);
* ``models/demand-forecast/predictions/latest.parquet`` (+ ``origin=YYYY-MM-DD/``) — FORECAST_HORIZON-day
  forecasts with intervals from the champion (the GBT or a baseline; predict job).

Every ClickHouse write goes to a ReplacingMergeTree keyed on its natural key (see
``clickhouse/migrations/020_ml.sql``), so re-running a task replaces rows instead of adding them.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.lake import json_text
from ml.features import DEFAULT_HORIZON, build_daily_features
from ml.forecast import MODEL_PREFIX, list_versions, read_meta

log = logging.getLogger(__name__)
#: minimum days of demand history before the last backtest origin (which lies FORECAST_HORIZON days before the
#: last known day): the history check asks for MIN_HISTORY_DAYS + the horizon
MIN_HISTORY_DAYS = 14


class InsufficientData(ValueError):
    """The star schema does not hold enough demand history (a retry cannot fix it)."""
MODEL_NAME = "demand-forecast"
FEATURE_TABLE_COLUMNS = [
    "date", "store_id", "product_id", "units", "lag_1", "lag_7", "lag_14", "lag_28",
    "rmean_7", "rmean_14", "rmean_30", "rmean_90", "rstd_7", "rstd_14", "rstd_30", "rstd_90",
    "zero_share_28", "days_since_sale", "dow", "month", "season", "day_of_month", "is_weekend",
    "price", "price_change_7", "price_rel_28", "promo", "holiday", "event", "snap", "temp_c", "precip_mm",
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ctx(settings=None):
    from core.clickhouse import get_client
    from core.lake import Lake
    from core.settings import get_settings

    s = settings or get_settings()
    return s, get_client(s), s.clickhouse_database, Lake(s)


# ------------------------------------------------------------------------------------- demand ------
def demand_sql(db: str, end_date: dt.date | None = None) -> str:
    """The daily demand query (ClickHouse SQL, no FORMAT clause): one row per day x store x SKU with a line in
    ``db.fact_sales`` (up to ``end_date`` inclusive when given), from the ``demand_daily`` view
    (``clickhouse/migrations/015_demand.sql``) joined to dim_store / dim_product.

    Columns: ``date`` Date; ``store_id``, ``product_id`` String; ``units`` Float64 = units sold less the units of
    orders cancelled the same day (the view's ``units``; returns are not negative demand), at least 0; ``price``
    Nullable(Float64) = revenue / units of the day's sale lines (the realised price; null without sale lines);
    ``country_code`` Nullable(String) from dim_store (null when blank). Ordered by store_id, product_id, date.
    """
    where = f"WHERE d.date_key <= {int(end_date.strftime('%Y%m%d'))}" if end_date else ""
    return f"""
        SELECT makeDate(intDiv(d.date_key, 10000), intDiv(d.date_key, 100) % 100, d.date_key % 100) AS date,
               s.store_id AS store_id, p.sku AS product_id, toFloat64(d.units) AS units,
               d.revenue_sold / nullIf(d.units_sold, 0) AS price, nullIf(s.country_code, '') AS country_code
        FROM {db}.demand_daily AS d
        INNER JOIN (SELECT store_key, store_id, country_code FROM {db}.dim_store FINAL) AS s ON d.store_key = s.store_key
        INNER JOIN (SELECT product_key, sku FROM {db}.dim_product FINAL) AS p ON d.product_key = p.product_key
        {where}
        ORDER BY store_id, product_id, date"""


def load_daily_demand(client, db: str, end_date: dt.date | None = None) -> pd.DataFrame:
    """Daily demand per store x SKU x day from the star schema (:func:`demand_sql`) as a pandas frame, for the
    in-process path (:func:`build_features`) and tests; the DAG stages the same rows as Parquet without pandas
    (:func:`stage_demand`). Days without sales get the series' last price in :mod:`ml.features`.

    Returns:
        DataFrame date (datetime64), store_id, product_id, units, price, country_code (NaN when unknown);
        empty with those columns when there are no sales.
    """
    df = client.query_df(demand_sql(db, end_date))
    if df.empty:
        return pd.DataFrame(columns=["date", "store_id", "product_id", "units", "price", "country_code"])
    df["date"] = pd.to_datetime(df["date"])
    df["country_code"] = df["country_code"].astype(object).where(df["country_code"].notna(), np.nan)
    return df


def read_weather(path: str | None) -> pd.DataFrame | None:
    """WEATHER_FILE CSV (date, country [ISO-2], temp_c, precip_mm) -> weather table, or None when unset.

    Raises:
        ValueError: the file lacks a column (the message names WEATHER_FILE); ``pandas.errors.EmptyDataError``
            (a ValueError) for an empty file.
        FileNotFoundError: no file at ``path`` (pandas' own error: it names the path, not WEATHER_FILE);
            another OSError, e.g. IsADirectoryError, for a path that cannot be read as a file.
    """
    if not path:
        return None
    w = pd.read_csv(path)
    need = {"date", "country", "temp_c", "precip_mm"}
    if not need <= set(w.columns):
        raise ValueError(f"WEATHER_FILE {path} needs columns {sorted(need)}; has {list(w.columns)}")
    return w.rename(columns={"country": "country_code"})


#: rows per features_daily insert request (~100 MB of request body at ~200 bytes a row)
FEATURE_INSERT_ROWS = 500_000


# ----------------------------------------------------------------------------------- training ------
def loaded_through(client, db: str, last_sale, run_date: dt.date) -> dt.date | None:
    """The last day d <= ``run_date`` such that daily_etl loaded and reconciled every day after ``last_sale`` up to d
    (the latest ``etl_runs`` row of each such day, by ``(started_at, finished_at)``, is a success: the rule of
    :func:`etl.star_schema.loaded_days`); None when the day after ``last_sale`` is not loaded (or
    ``last_sale`` is None). A loaded day without sales is known zero demand: a day the chain was closed (the UCI
    log has 121 such days in its 639, 90 of them Saturdays, 2010-12-24 .. 2011-01-03 in a row).

    Args: client / db: ClickHouse; last_sale: the last day with sales (date-like); run_date: the run's date.
    """
    if last_sale is None or pd.isna(last_sale):
        return None
    first = pd.Timestamp(last_sale).date() + dt.timedelta(days=1)
    if first > run_date:
        return None
    from etl.star_schema import loaded_days

    loaded = loaded_days(client, db, first, run_date)   # the one "day is loaded" rule, shared with check_gaps
    day = None
    while first <= run_date and first in loaded:   # contiguous from the day after the last sale
        day, first = first, first + dt.timedelta(days=1)
    return day


def known_demand_end(last, loaded: dt.date | None, run_date: dt.date) -> pd.Timestamp:
    """min(run_date, the later of ``last`` (last day with sales) and ``loaded`` (:func:`loaded_through`; None =
    none)) as a midnight Timestamp: the last day whose demand is known (shared by :func:`history_end` and
    :func:`classify_skus`)."""
    known = pd.Timestamp(last) if loaded is None else max(pd.Timestamp(last), pd.Timestamp(loaded))
    return min(pd.Timestamp(run_date), known)


def history_end(first: dt.date | None, last: dt.date | None, run_date: dt.date, db: str,
                horizon: int = DEFAULT_HORIZON, loaded: dt.date | None = None) -> pd.Timestamp:
    """The last day with known demand: min(run_date, the last day with sales, or ``loaded`` when later): a day
    the ETL has not loaded yet must not become zero demand, a day it loaded without a sale is zero demand.
    ``first`` / ``last``: the first and last days with sales up to ``run_date``; ``loaded``: the last day of the
    loaded days that follow ``last`` without a gap (:func:`loaded_through`; None = none); ``horizon``: the
    forecast horizon in days (FORECAST_HORIZON), by which the last backtest origin precedes that end. Until
    2026-12-06 ``loaded`` was not read: a run on a day the chain sold nothing (UCI: 121 of 639 days) ended its
    history on the last day with sales, left the known zero days out and forecast days already past (the run
    of 2011-01-03 from 2010-12-23: 11 of its 14 days).

    Returns:
        the end day as a midnight Timestamp.

    Raises:
        InsufficientData: no sales (``first`` is None), or fewer than MIN_HISTORY_DAYS + ``horizon`` days of
            history (checked here, before features are built, rather than by the training job after them).
    """
    if first is None or pd.isna(first):
        raise InsufficientData(f"no sales in {db}.fact_sales up to {run_date}: run daily_etl first")
    end = known_demand_end(last, loaded, run_date)
    span = int((end - pd.Timestamp(first)).days) + 1
    need = MIN_HISTORY_DAYS + int(horizon)
    if span < need:
        raise InsufficientData(
            f"{db}.fact_sales covers {span} day(s) ({pd.Timestamp(first).date()}..{end.date()}); the rolling-origin "
            f"backtest needs at least {need} ({MIN_HISTORY_DAYS} before its last origin + FORECAST_HORIZON={horizon}): "
            "run daily_etl for the earlier dates first (backfill)")
    return end


def demand_for_features(client, db: str, run_date: dt.date,
                        horizon: int = DEFAULT_HORIZON) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Daily demand up to ``run_date`` (:func:`load_daily_demand`) and the last day with known demand
    (:func:`history_end`).

    Returns:
        (daily demand table, end day as a midnight Timestamp).

    Raises:
        InsufficientData: no sales in fact_sales up to the date, or fewer than MIN_HISTORY_DAYS + FORECAST_HORIZON days.
    """
    daily = load_daily_demand(client, db, run_date)
    first, last = (daily["date"].min(), daily["date"].max()) if len(daily) else (None, None)
    return daily, history_end(first, last, run_date, db, horizon, loaded_through(client, db, last, run_date))


def insert_features(client, db: str, out, run_date: dt.date, computed_at: dt.datetime | None = None) -> int:
    """Insert a feature table (:data:`FEATURE_TABLE_COLUMNS`; ``temp_c`` / ``precip_mm`` may be absent) into
    ``features_daily`` with ``run_date`` and ``computed_at``, in slices of FEATURE_INSERT_ROWS rows so one
    request stays far below the endpoint's body limit (CLICKHOUSE_MAX_BODY_MB) at chain scale. Idempotent:
    features_daily is a ReplacingMergeTree on (store_id, product_id, date), so a re-run (or a retried slice)
    replaces rather than adds.

    ``out``: a pandas DataFrame or an Arrow table (the Spark job's Parquet as read from the lake). Either is
    sent as ``FORMAT Arrow``, which ClickHouse parses and casts to the table's types itself: 3.78 M rows in
    12.5 s against 27.6 s through ``insert_df`` (which encodes every value in Python), the same rows. Missing
    values (NaN or null) land as NaN in the Float64 columns (future ``units``, short-history lags) and as NULL
    in the Nullable weather columns. ``computed_at`` (UTC; default now) is the ReplacingMergeTree's version:
    a caller inserting one table in several calls passes one value. Returns the rows inserted.
    """
    table = (pa.Table.from_pandas(out[[c for c in FEATURE_TABLE_COLUMNS if c in out.columns]], preserve_index=False)
             if isinstance(out, pd.DataFrame) else out)  # of a pandas frame, only the table's columns are converted
    n = table.num_rows
    for c in ("temp_c", "precip_mm"):
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(n, pa.float64()))
    table = table.select(FEATURE_TABLE_COLUMNS)
    for i, f in enumerate(table.schema):  # an Arrow null in a non-Nullable Float64 would land as 0
        if pa.types.is_floating(f.type) and f.name not in ("temp_c", "precip_mm") and table.column(i).null_count:
            table = table.set_column(i, f.name, pc.fill_null(table.column(i), pa.scalar(float("nan"), f.type)))
    if not pa.types.is_date32(table.schema.field("date").type):
        table = table.set_column(0, "date", table.column("date").cast(pa.timestamp("ms")).cast(pa.date32()))
    table = (table.append_column("run_date", pa.repeat(pa.scalar(run_date, pa.date32()), n))
             .append_column("computed_at", pa.repeat(pa.scalar(computed_at or _now(), pa.timestamp("ms", tz="UTC")), n)))
    for i in range(0, n, FEATURE_INSERT_ROWS):
        client.insert_arrow(f"{db}.features_daily", table.slice(i, FEATURE_INSERT_ROWS),
                            settings={"max_partitions_per_insert_block": 0})  # monthly parts
    return n


def _point_latest(lake, run_date: dt.date) -> str:
    """Point ``features/daily/latest.json`` at the run's feature table unless it points at a newer run already (a
    re-run or backfill of an older date must not move "latest" back: the predictions read it); returns the run's
    table's lake path either way."""
    bucket = lake.settings.lake_features_bucket
    key = f"run_date={run_date.isoformat()}"
    current = lake.read_json(bucket, "daily", "latest.json") or {}
    if str(current.get("run_date", "")) <= run_date.isoformat():
        lake.write_json({"run_date": run_date.isoformat(), "path": f"{bucket}/daily/{key}"}, bucket, "daily",
                        "latest.json")
    return f"{bucket}/daily/{key}"


def _summary(out: pd.DataFrame, lake_path: str, run_date: dt.date) -> dict:
    known = out["units"].notna()
    return {"rows": int(len(out)), "series": int(out.groupby(["store_id", "product_id"]).ngroups),
            "last_date": str(pd.Timestamp(out.loc[known, "date"].max()).date()), "lake_path": lake_path,
            "run_date": run_date.isoformat()}


def build_features(run_date: dt.date, settings=None) -> dict:
    """In-process (pandas) feature building, for scripts and the benchmark: demand up to ``run_date`` ->
    :func:`ml.features.build_daily_features` -> ClickHouse features_daily and the lake
    (``features/daily/run_date=<d>/features.parquet`` + ``latest.json``). The DAG runs the same table as a
    Spark job instead (:func:`stage_demand` -> ``ml/jobs/build_features.py`` -> :func:`load_features`).

    Returns:
        dict rows, series, last_date, lake_path, run_date.

    Raises:
        InsufficientData: no sales in fact_sales up to the date, or fewer than MIN_HISTORY_DAYS + FORECAST_HORIZON days.
    """
    s, client, db, lake = _ctx(settings)
    daily, end = demand_for_features(client, db, run_date, s.forecast_horizon)
    feats = build_daily_features(daily, end_date=end, default_country=s.store_country_default,
                                 weather=read_weather(s.weather_file), extend_days=s.forecast_horizon)
    out = feats.copy()
    for c in ("temp_c", "precip_mm"):
        if c not in out.columns:
            out[c] = np.nan
    out = out[FEATURE_TABLE_COLUMNS]
    insert_features(client, db, out, run_date)
    bucket = s.lake_features_bucket
    key = f"run_date={run_date.isoformat()}"
    lake.write_table(pa.Table.from_pandas(out, preserve_index=False), bucket, "daily", key, "features.parquet")
    return _summary(out, _point_latest(lake, run_date), run_date)


def stage_demand(run_date: dt.date, settings=None) -> dict:
    """Task ``extract_demand`` of the Spark feature path: daily demand up to ``run_date`` from the star schema
    (:func:`demand_sql`) -> ``features/staging/build_features/run_date=<d>/demand.parquet`` and ``params.json``
    (end_date = the last day with known demand, extend_days = FORECAST_HORIZON, default_country =
    STORE_COUNTRY_DEFAULT) for ``ml/jobs/build_features.py``. ClickHouse encodes the rows as Parquet itself
    (``FORMAT Parquet`` over HTTP) and the response is copied to the lake in 1 MiB chunks: no row passes
    through pandas or Arrow in the Airflow worker (peak RSS at 10,000 series: that of the imports). A first
    aggregate query over the same rows gives the history's extent for the checks. Overwrites: idempotent.

    Returns:
        dict run_date, end_date, demand_rows, series, staged_bytes.

    Raises:
        InsufficientData: no sales in fact_sales up to the date, or fewer than MIN_HISTORY_DAYS + FORECAST_HORIZON days.
    """
    import shutil

    from ml import spark_features as sf

    s, client, db, lake = _ctx(settings)
    sql = demand_sql(db, run_date)
    rows, series, first, last = client.query(
        f"SELECT count(), uniqExact(store_id, product_id), min(date), max(date) FROM ({sql})").result_rows[0]
    end = history_end(first if rows else None, last, run_date, db, s.forecast_horizon,
                      loaded_through(client, db, last if rows else None, run_date))
    parts = sf.staging(lake, run_date, sf.DEMAND_NAME)
    path = lake.path(*parts)
    lake.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with client.raw_stream(sql, fmt="Parquet") as src, lake.fs.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    params = sf.write_params(lake, run_date, end, s.forecast_horizon, s.store_country_default)
    return {"run_date": run_date.isoformat(), "end_date": params["end_date"], "demand_rows": int(rows),
            "series": int(series), "staged_bytes": lake.fs.get_file_info(path).size}


def load_features(run_date: dt.date, settings=None) -> dict:
    """Task ``load_features``: the Spark job's feature table ``features/daily/run_date=<d>/features.parquet``
    -> ClickHouse features_daily (:func:`insert_features`, idempotent), then ``features/daily/latest.json``
    points at it (only once ClickHouse holds it, as in :func:`build_features`).

    The rows stored (the files' footers) are first reconciled with the job's result record
    (``features_result.json``, counted by Spark from the written files), so a partial or foreign table inserts
    nothing; then the table is read in batches of at most FEATURE_INSERT_ROWS rows, each inserted as it arrives,
    instead of the whole table (peak RSS 1,241 vs 1,536 MB at 10,000 series); every row of the load carries the
    same ``computed_at``. The record's series and last_date are returned.

    Returns:
        dict rows, series, last_date, lake_path, run_date (``lake_path`` is the train job's ``--features``),
        registry_max_version (:func:`registry_max_version`: the train job's ``--registry-max-version``).

    Raises:
        FileNotFoundError: the Spark job wrote no feature table or no result record for the date.
        RuntimeError: the table's rows differ from the job's record (a partial or foreign table).
    """
    from ml import spark_features as sf

    s, client, db, lake = _ctx(settings)
    parts = sf.features_path(lake, run_date)
    d = lake.dataset(*parts)
    record = lake.read_json(*sf.staging(lake, run_date, sf.RESULT_NAME))
    if d is None or record is None:
        raise FileNotFoundError(f"no feature table or result record for {run_date} at {'/'.join(parts)}: the "
                                f"build_features Spark job did not run")
    stored = d.count_rows()   # from the files' footers: checked before anything is inserted
    if stored != record["rows"]:
        raise RuntimeError(f"{'/'.join(parts)} holds {stored} rows, the build_features job wrote {record['rows']}: "
                           f"re-run build_features for {run_date}")
    at, n = _now(), 0
    for batch in d.to_batches(batch_size=FEATURE_INSERT_ROWS):
        if batch.num_rows:
            n += insert_features(client, db, pa.Table.from_batches([batch]), run_date, computed_at=at)
    return {"rows": n, "series": int(record["series"]), "last_date": record["last_date"],
            "lake_path": _point_latest(lake, run_date), "run_date": run_date.isoformat(),
            "registry_max_version": registry_max_version(client, db)}


def read_features(lake, path: str) -> pd.DataFrame:
    """Feature table from a lake path (``latest`` resolves ``features/daily/latest.json``): a file or a folder of
    Parquet files (the Spark job's), sorted by store_id, product_id, date, ``date`` as datetime64[ns]; the
    weather columns are dropped when entirely null."""
    path = features_location(lake, path)
    t = lake.read_table(path)
    if t is None:
        raise FileNotFoundError(f"feature table {path} not found in the lake (run build_features first)")
    df = t.to_pandas()
    drop = [c for c in ("temp_c", "precip_mm") if c in df.columns and df[c].isna().all()]
    return _feature_frame(df.drop(columns=drop))


def _feature_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A feature table read into pandas as the forecasting code expects it: ``date`` datetime64[ns] (from date32,
    the Spark job's, or a timestamp, the pandas path's), sorted by store_id, product_id, date, a RangeIndex."""
    df["date"] = pd.to_datetime(df["date"]).astype("datetime64[ns]")
    return df.sort_values(["store_id", "product_id", "date"]).reset_index(drop=True)


def features_location(lake, path: str) -> str:
    """The lake path of a feature table (``latest`` resolves ``features/daily/latest.json``)."""
    if path == "latest":
        path = lake.read_json(lake.settings.lake_features_bucket, "daily", "latest.json", required=True)["path"]
    return path


def read_features_frame(spark, lake, path: str):
    """The feature table as a Spark DataFrame read by Spark itself (``s3a://`` or ``file://``, never through the
    driver) from a table's path, a run folder holding ``features.parquet``, or ``latest``: the columns of
    :func:`read_features` (``date`` a DateType, the weather columns dropped when entirely null, one aggregate
    pass), unordered.

    Raises:
        FileNotFoundError: no table at the path.
    """
    from pyspark.sql import functions as F

    path = features_location(lake, path)
    if not lake.exists(path):
        raise FileNotFoundError(f"feature table {path} not found in the lake (run build_features first)")
    if not path.endswith(".parquet") and lake.exists(path, "features.parquet"):  # a run folder: its table
        path = f"{path}/features.parquet"
    # a table the in-process pandas path wrote has nanosecond timestamps, which Spark refuses: read them as
    # nanoseconds since the epoch and take the UTC day (the Spark job writes dates)
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    df = spark.read.parquet(lake.spark_uri(path))
    day = (F.date_from_unix_date(F.floor(F.col("date") / F.lit(86_400 * 10**9)).cast("int"))
           if dict(df.dtypes)["date"] == "bigint" else F.to_date("date"))
    df = df.withColumn("date", day)
    weather = [c for c in ("temp_c", "precip_mm") if c in df.columns]
    if weather:
        known = df.agg(*[F.count(c).alias(c) for c in weather]).first().asDict()
        df = df.drop(*[c for c in weather if not known[c]])
    return df


def collect_series(features, keys: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of the series ``keys`` (store_id, product_id; None = every series) of a Spark feature table as
    pandas, as :func:`read_features` gives them: sorted by store_id, product_id, date, ``date`` datetime64[ns]."""
    from pyspark.sql import functions as F

    if keys is not None:
        chosen = features.sparkSession.createDataFrame(keys[["store_id", "product_id"]].astype(str))
        features = features.join(F.broadcast(chosen), ["store_id", "product_id"], "inner")
    return _feature_frame(features.toPandas())


def version_for_run(lake, run_date: str) -> int | None:
    """The model version whose meta.json has this run_date (ISO date), if any; a version whose meta.json is not JSON
    (cut short, overwritten) is skipped with a warning naming it (until 2026-12-07 it failed the train job and
    register_model of every later run: one corrupt file stopped the training for good).

    Raises: OSError: the lake cannot be reached.
    """
    for v in reversed(list_versions(lake)):
        try:
            meta = read_meta(lake, v)
        except ValueError as exc:   # json.JSONDecodeError naming the file (core.lake.Lake.read_json)
            log.warning("model version v%s skipped: %s", v, exc)
            continue
        if meta.get("run_date") == run_date:
            return v
    return None


def metrics_rows(metrics: pd.DataFrame, version: int, run_date: dt.date, dataset: str = "platform",
                 model_name: str = MODEL_NAME) -> pd.DataFrame:
    """Wide backtest metrics (model, h, wape, ...) -> long ml_model_metrics rows."""
    cols = [c for c in ("wape", "mae", "rmse", "rmsse", "bias", "n", "coverage80", "coverage95") if c in metrics.columns]
    long = metrics.melt(id_vars=["model", "h"], value_vars=cols, var_name="metric", value_name="value").dropna(subset=["value"])
    return pd.DataFrame({"model_name": model_name, "model_version": int(version), "run_date": run_date,
                         "model": long["model"], "metric": long["metric"], "horizon": long["h"].astype("uint8"),
                         "value": long["value"].astype("float64"), "dataset": dataset, "computed_at": _now()})


def registry_max_version(client, db: str) -> int:
    """The highest version model_registry holds for the model (0 when none): the train job numbers new versions
    above it (``ml.forecast.new_version``), so a lost model store does not reuse a registered number.

    Raises: ClickHouse's errors (unreachable, model_registry missing).
    """
    return int(client.query(f"SELECT max(version) FROM {db}.model_registry WHERE model_name = '{MODEL_NAME}'"
                            ).result_rows[0][0] or 0)


def current_champion(client, db: str) -> dict | None:
    """The registry's champion row (latest state): version, model, run_date (datetime.date), backtest_wape,
    backtest_rmsse, path, promoted_at; or None."""
    df = client.query_df(f"SELECT version, model, run_date, backtest_wape, backtest_rmsse, path, promoted_at "
                         f"FROM {db}.model_registry FINAL "
                         f"WHERE model_name = '{MODEL_NAME}' AND is_champion = 1 ORDER BY version DESC LIMIT 1")
    return None if df.empty else df.iloc[0].to_dict()


def decide_promotion(metrics: pd.DataFrame, version: int, champion: dict | None, horizon: int | None = None,
                     run_date: dt.date | None = None) -> dict:
    """Champion / challenger rule (pure): which model of run ``version`` serves, and is it promoted?

    The run's challenger is :func:`ml.forecast.select_champion` of its backtest: the GBT when its pooled
    WAPE and RMSSE are both below the best baseline's, else that best baseline. Then:

    * no champion yet: the challenger is promoted (so the first champion is the best baseline unless
      the GBT beats it);
    * the champion is this version (re-run): it stays champion with the challenger's model;
    * the champion's model is gone from the lake (``champion["missing"]``: its ``meta.json`` not found, e.g. the
      model store lost or emptied, or not JSON): it cannot serve, so the challenger is promoted (until 2026-12-07
      it was compared with the lost model's recorded figures and, when not better, nothing was promoted: no
      ``champion.json``, and every predict job failed "no champion model" until a version beat the lost one);
    * the champion was trained for a later run date than ``run_date`` (a re-run or backfill of an older date after
      newer runs; ``champion["run_date"]``): not promoted, whatever its scores (its model has seen less history and
      its backtest other origins; until 2026-12-07 such a re-run replaced the newer champion whenever its older
      backtest scored better, or the champion's horizon differed, or it was the same baseline "re-calibrated");
    * the champion was trained for another horizon (``champion["horizon"]`` != ``horizon``, e.g. after
      FORECAST_HORIZON changed): its backtest is not comparable and it cannot serve the horizon, so the
      challenger is promoted;
    * the champion is a baseline: it is scored on this run's backtest too, so the challenger is promoted
      when it beats that baseline there in WAPE and RMSSE (or is the same baseline: re-calibrated), or when that
      baseline forecast nothing there (``null_forecasts`` of the selection: its WAPE of 1 is no score);
    * the champion is an older GBT: the challenger is promoted when its WAPE and RMSSE are below the
      champion's recorded backtest figures (backtests of consecutive runs share all but their newest days).

    Returns:
        dict model (the challenger's model name), wape, rmsse, promote (bool), reason, selection.
    """
    from ml.forecast import select_champion

    sel = select_champion(metrics)
    model = sel["champion"]
    wape, rmsse = sel["wape"][model], sel["rmsse"][model]
    out = {"model": model, "wape": wape, "rmsse": rmsse, "selection": sel}
    if champion is None:
        return {**out, "promote": True, "reason": f"no champion yet: {model} ({sel['reason']})"}
    cv, cm = int(champion["version"]), str(champion.get("model") or "gbt")
    if cv == int(version):
        return {**out, "promote": True, "reason": "already champion (re-run)"}
    if champion.get("missing"):
        return {**out, "promote": True,
                "reason": f"champion v{cv}'s model is gone from the lake or unreadable: {model} replaces it"}
    crd = champion.get("run_date")
    if run_date is not None and crd is not None and pd.notna(crd) and pd.Timestamp(crd).date() > run_date:
        return {**out, "promote": False, "reason": f"champion v{cv} was trained for a later date "
                                                   f"({pd.Timestamp(crd).date()}): this run for {run_date} stays "
                                                   "challenger"}
    ch = champion.get("horizon")
    if horizon is not None and ch is not None and int(ch) != int(horizon):
        return {**out, "promote": True, "reason": f"champion v{cv} forecasts {int(ch)} days, this run {int(horizon)}: "
                                                  f"{model} replaces it"}
    if cm != "gbt" and cm in sel["wape"]:
        if cm in sel.get("null_forecasts", []) and cm != model:
            return {**out, "promote": True, "reason": f"champion baseline {cm} forecast nothing on this backtest "
                                                      f"(total 0 units): {model} replaces it"}
        if cm == model:
            return {**out, "promote": True, "reason": f"champion baseline {cm} is again the best: re-calibrated v{version}"}
        cw, cr = sel["wape"][cm], sel["rmsse"][cm]
        where = "on this backtest"
    else:
        cw, cr = float(champion["backtest_wape"]), float(champion.get("backtest_rmsse", float("nan")))
        where = "recorded"
    beats = wape < cw and (not np.isfinite(cr) or rmsse < cr)
    verdict = "<" if beats else "does not beat"
    return {**out, "promote": bool(beats),
            "reason": f"{model} WAPE {wape:.4f} / RMSSE {rmsse:.4f} {verdict} champion v{cv} {cm} ({where}) "
                      f"{cw:.4f} / {cr:.4f}"}


def _heal_champion_file(lake, client, db: str, rounds: int = 5) -> bool:
    """Rewrite ``models/demand-forecast/champion.json`` from the registry's champion row, read afresh
    (:func:`current_champion`), when the file names another version, is missing or is not JSON: the state a
    ``register_model`` leaves when it stopped between its registry insert and that write (MinIO down through every
    retry). The predict job follows the file, so until 2026-12-07 it served the old champion for good while the
    registry (and the BI) named the new one. Returns True when the file was rewritten; False when it already names
    the registry's champion or the registry has none.

    Read afresh, not the champion the caller read at its start: until 2026-12-07 a registration that promoted
    nothing healed the file to the champion it had read (v5) after a concurrent registration had promoted v6 and
    written the file, rewinding it to v5 (predictions from v5 while the registry said v6).

    Read again after each write, until a registry read finds the file naming its champion (at most ``rounds``
    writes; more is logged as a warning): a promotion whose registry insert landed between this heal's registry read
    and its write (v3 promoted and its file written after the heal read v2) is put back (v3) by the next round, and
    a promotion inserted after the last read writes the file itself after it. Until 2026-12-07 the heal wrote once:
    that promotion's file was rewound to v2 while the registry named v3. The lake has no conditional write (pyarrow's
    S3 filesystem sends no If-Match), hence the re-read.

    Raises: OSError: the lake cannot be reached; ClickHouse's errors from the registry read.
    """
    bucket = lake.settings.lake_models_bucket
    wrote = False
    for attempt in range(rounds + 1):   # the last attempt only checks
        champ = current_champion(client, db)
        if champ is None:
            return wrote
        try:
            cur = lake.read_json(bucket, MODEL_PREFIX, "champion.json")
        except ValueError:   # not JSON
            cur = None
        if cur is not None and int(cur.get("version", -1)) == int(champ["version"]):
            return wrote
        if attempt == rounds:
            break
        log.warning("champion.json names %s, the registry's champion is v%s: rewritten",
                    "nothing readable" if cur is None else f"v{cur.get('version')}", champ["version"])
        promoted = champ.get("promoted_at")
        lake.write_json({"version": int(champ["version"]), "model": str(champ.get("model") or "gbt"),
                         "path": champ["path"],
                         "promoted_at": (None if promoted is None or pd.isna(promoted)
                                         else pd.Timestamp(promoted).isoformat()),
                         "backtest_wape": float(champ["backtest_wape"]),
                         "backtest_rmsse": float(champ["backtest_rmsse"])},
                        bucket, MODEL_PREFIX, "champion.json")
        wrote = True
    log.warning("champion.json still differs from the registry's champion after %d rewrites (registrations racing)",
                rounds)
    return wrote


def register_model(run_date: dt.date, settings=None) -> dict:
    """Task ``register_model``: load the run's backtest metrics (GBT and every baseline) into
    ml_model_metrics, add the version to model_registry with the model it would serve, and promote it per
    :func:`decide_promotion` (champion / challenger). Writes ``models/demand-forecast/champion.json``
    ({version, model}): the predict job forecasts with that model (the GBT, or a baseline). A run that promotes
    nothing rewrites that file from the registry's champion when it names another version or cannot be read
    (:func:`_heal_champion_file`); so does a run that promoted, after its own write: a concurrent registration
    that promoted a later version between this one's registry insert and its file write (registry v4, file v4)
    was rewound by that write to this version until 2026-12-07.

    Raises:
        FileNotFoundError: the training job wrote no model for this run date.
    """
    s, client, db, lake = _ctx(settings)
    v = version_for_run(lake, run_date.isoformat())
    if v is None:
        raise FileNotFoundError(f"no model version with run_date {run_date} under "
                                f"{s.lake_models_bucket}/{MODEL_PREFIX}/ (did the train job fail?)")
    meta = read_meta(lake, v)
    metrics = lake.read_table(s.lake_models_bucket, MODEL_PREFIX, f"v{v}", "metrics.parquet").to_pandas()
    client.insert_df(f"{db}.ml_model_metrics", metrics_rows(metrics, v, run_date))
    allm = metrics[metrics["h"] == 0].set_index("model")
    naive = float(allm.loc["seasonal_naive", "wape"])
    champ = current_champion(client, db)
    if champ is not None:  # the champion's horizon (models before issue 11 forecast 7 days)
        try:
            champ["horizon"] = int(read_meta(lake, int(champ["version"])).get("horizon", 7))
        except (FileNotFoundError, ValueError):   # its model is gone from the lake, or its meta.json is not JSON:
            champ["horizon"], champ["missing"] = None, int(champ["version"]) != v   # it cannot serve
        except OSError:
            champ["horizon"] = None
    d = decide_promotion(metrics, v, champ, horizon=int(meta.get("horizon", 7)), run_date=run_date)
    promote, reason, model = d["promote"], d["reason"], d["model"]
    now = _now()
    base = {"model_name": MODEL_NAME, "run_date": run_date, "metrics": json_text({
        "backtest": metrics.to_dict("records"), "selection": d["selection"], "meta": meta})}
    rows = [{**base, "version": v, "model": model, "trained_at": pd.Timestamp(meta["trained_at"]).to_pydatetime(),
             "path": meta["path"], "backtest_wape": d["wape"], "backtest_rmsse": d["rmsse"],
             "seasonal_naive_wape": naive, "is_champion": int(promote), "promoted_at": now if promote else None,
             "updated_at": now}]
    if promote and champ is not None and int(champ["version"]) != v:
        old = client.query_df(f"SELECT * FROM {db}.model_registry FINAL WHERE model_name = '{MODEL_NAME}' "
                              f"AND version = {int(champ['version'])}").iloc[0].to_dict()
        old.update(is_champion=0, updated_at=now)
        rows.append(old)
    df = pd.DataFrame(rows)
    df["promoted_at"] = df["promoted_at"].astype(object).where(df["promoted_at"].notna(), None)
    client.insert_df(f"{db}.model_registry", df[["model_name", "version", "model", "run_date", "trained_at", "path",
                                                 "backtest_wape", "backtest_rmsse", "seasonal_naive_wape", "metrics",
                                                 "is_champion", "promoted_at", "updated_at"]])
    if promote:
        lake.write_json({"version": v, "model": model, "path": meta["path"], "promoted_at": now.isoformat(),
                           "backtest_wape": d["wape"], "backtest_rmsse": d["rmsse"]},
                    s.lake_models_bucket, MODEL_PREFIX, "champion.json")
    if promote or champ is not None:   # after a promotion too: a concurrent one may have landed before this write
        _heal_champion_file(lake, client, db)
    log.info("model v%s (%s): %s -> %s", v, model, reason, "promoted" if promote else "kept challenger")
    return {"version": v, "model": model, "promoted": promote, "reason": reason, "wape": d["wape"],
            "rmsse": d["rmsse"], "seasonal_naive_wape": naive}


# -------------------------------------------------------------------------------- predictions ------
PRED_COLUMNS = ["forecast_origin", "target_date", "horizon", "store_id", "product_id", "yhat",
                "lower80", "upper80", "lower95", "upper95", "model_version"]


def read_predictions(lake) -> pd.DataFrame:
    """``models/demand-forecast/predictions/latest.parquet`` written by the predict job."""
    t = lake.read_table(lake.settings.lake_models_bucket, MODEL_PREFIX, "predictions", "latest.parquet")
    if t is None:
        raise FileNotFoundError("no predictions in the lake: the predict job did not run")
    df = t.to_pandas()
    for c in ("forecast_origin", "target_date"):
        df[c] = pd.to_datetime(df[c]).dt.date
    return df


def load_predictions(run_date: dt.date, settings=None) -> dict:
    """Task ``load_predictions``: lake predictions -> forecast_predictions, after checking that every
    active store x SKU has horizons 1..H (H = the champion's horizon, FORECAST_HORIZON when trained
    with it) and lower95 <= lower80 <= yhat <= upper80 <= upper95.

    Raises:
        ValueError: a series lacks a horizon or an interval is out of order.
    """
    s, client, db, lake = _ctx(settings)
    p = read_predictions(lake)
    check_predictions(p, horizon=int(p["horizon"].max()))
    rows = p[PRED_COLUMNS].copy()
    rows["run_date"] = run_date
    rows["created_at"] = _now()
    client.insert_df(f"{db}.forecast_predictions", rows)
    return {"rows": int(len(rows)), "series": int(rows.groupby(["store_id", "product_id"]).ngroups),
            "forecast_origin": str(rows["forecast_origin"].iloc[0]), "model_version": int(rows["model_version"].iloc[0])}


def check_predictions(p: pd.DataFrame, horizon: int = DEFAULT_HORIZON) -> None:
    """Raise ValueError unless every series has horizons 1..horizon and the intervals are ordered."""
    hs = p.groupby(["store_id", "product_id"])["horizon"].agg(lambda x: sorted(x.tolist()))
    bad = hs[hs.map(lambda x: x != list(range(1, horizon + 1)))]
    if len(bad):
        raise ValueError(f"{len(bad)} series without horizons 1..{horizon}, e.g. {bad.index[0]}")
    eps = 1e-9
    order = ((p["lower95"] <= p["lower80"] + eps) & (p["lower80"] <= p["yhat"] + eps) & (p["yhat"] <= p["upper80"] + eps)
             & (p["upper80"] <= p["upper95"] + eps) & (p["lower95"] >= 0))
    if not order.all():
        raise ValueError(f"{int((~order).sum())} prediction rows with intervals out of order")


def load_inventory(client, db: str, as_of: dt.date) -> pd.DataFrame:
    """Latest closing stock per store x SKU on or before ``as_of`` (fact_inventory) with product attributes.

    Returns:
        DataFrame store_id, product_id, stock (units), stock_date_key (YYYYMMDD), unit_cost, unit_price,
        storage_capacity, shelf_life_days; empty with those columns when no stock is recorded (the client's
        empty result has no columns: ``classify_skus`` failed with KeyError 'stock' on a chain without
        inventory rows until 2026-12-06).
    """
    sql = f"""
        SELECT s.store_id AS store_id, p.sku AS product_id,
               toFloat64(argMax(i.closing_stock, i.date_key)) AS stock,
               max(i.date_key) AS stock_date_key,
               any(p.unit_cost) AS unit_cost, any(p.unit_price) AS unit_price,
               any(p.storage_capacity) AS storage_capacity, any(p.shelf_life_days) AS shelf_life_days
        FROM {db}.fact_inventory AS i
        INNER JOIN (SELECT store_key, store_id FROM {db}.dim_store FINAL) AS s ON i.store_key = s.store_key
        INNER JOIN (SELECT product_key, sku, unit_cost, unit_price, storage_capacity, shelf_life_days
                    FROM {db}.dim_product FINAL) AS p ON i.product_key = p.product_key
        WHERE i.date_key <= {int(as_of.strftime('%Y%m%d'))}
        GROUP BY store_id, product_id"""
    df = client.query_df(sql)
    if df.empty:
        return pd.DataFrame(columns=INVENTORY_COLUMNS)
    return df


#: columns of :func:`load_inventory`
INVENTORY_COLUMNS = ["store_id", "product_id", "stock", "stock_date_key", "unit_cost", "unit_price",
                     "storage_capacity", "shelf_life_days"]


def load_open_orders(client, db: str, as_of: dt.date, lead_time_days: int) -> pd.DataFrame:
    """Units on order per store x SKU at night ``as_of``: the platform takes its own recommendations as placed
    orders.

    Orders: each store x SKU's latest reorder_recommendations row (FINAL: the ReplacingMergeTree keeps the newest
    ``created_at`` per store x SKU x as_of_date) with reorder_needed = 1, written with
    ORDER_COUNT_OPEN_RECOMMENDATIONS true (counts_on_order = 1: rows written with the setting off, whose
    recommendation repeats every night, or before migration 095 are no placed orders) and as_of_date in
    [as_of - 2 x lead_time_days, as_of): strictly earlier nights, so a re-run of night ``as_of`` never counts its
    own rows and gives the same result. Receipts: fact_inventory.units_received (the day's RESTOCK units, the
    source of the nightly stock) on the days after the oldest such order up to ``as_of``, netted first in first
    out (:func:`ml.optimize.open_orders`: a receipt fills the oldest order placed before its day and due no
    earlier than it; no order below 0). Only the orders of [as_of - lead_time_days, as_of) are summed; older
    ones are taken as received or lost, and the lookback of twice the lead time keeps a receipt that filled one
    of them from filling a newer order again.

    Args: client (ClickHouse), db (database), as_of (the night's as_of_date, the forecast origin),
    lead_time_days (days >= 0; 0 = nothing on order).
    Returns:
        DataFrame store_id, product_id, on_order (units > 0 or 0), one row per store x SKU with an open order.
    """
    from ml.optimize import open_orders

    t, lt = as_of.isoformat(), int(lead_time_days)
    orders = client.query_df(f"""
        SELECT store_id, product_id, as_of_date, reorder_qty
        FROM {db}.reorder_recommendations FINAL
        WHERE reorder_needed = 1 AND reorder_qty > 0 AND counts_on_order = 1
          AND as_of_date >= toDate('{t}') - {2 * lt} AND as_of_date < toDate('{t}')""")
    if orders.empty:
        return open_orders(orders, orders)   # no order: an empty frame, no receipt looked up
    first = int(pd.Timestamp(orders["as_of_date"].min()).strftime("%Y%m%d"))
    receipts = client.query_df(f"""
        SELECT s.store_id AS store_id, p.sku AS product_id, toDate(toString(i.date_key)) AS date,
               toFloat64(i.units_received) AS units_received
        FROM {db}.fact_inventory AS i
        INNER JOIN (SELECT store_key, store_id FROM {db}.dim_store FINAL) AS s ON i.store_key = s.store_key
        INNER JOIN (SELECT product_key, sku FROM {db}.dim_product FINAL) AS p ON i.product_key = p.product_key
        WHERE i.date_key > {first} AND i.date_key <= {int(as_of.strftime('%Y%m%d'))} AND i.units_received > 0""")
    if receipts.empty:
        receipts = pd.DataFrame(columns=["store_id", "product_id", "date", "units_received"])
    return open_orders(orders, receipts, lead_time_days=lt, as_of=as_of)


def load_inactive_restocks(client, db: str, as_of: dt.date) -> pd.DataFrame:
    """The store x SKUs already restocked once in their current silence at night ``as_of``: those with a
    reorder_recommendations row (FINAL) of order_bound ``inactive_out_of_stock`` and reorder_qty > 0 dated after
    the series' last sale (the last day with units > 0 in the ``demand_daily`` view up to ``as_of``, the forecasts'
    demand source; none: every such row counts) and strictly before ``as_of`` (a re-run of the night gives the same
    result). One query for all series.

    Returns:
        DataFrame store_id, product_id, restock_date (the latest such as_of_date), one row per store x SKU.
    """
    t, k = as_of.isoformat(), int(as_of.strftime("%Y%m%d"))
    df = client.query_df(f"""
        SELECT r.store_id AS store_id, r.product_id AS product_id, r.sent AS restock_date
        FROM (SELECT store_id, product_id, max(as_of_date) AS sent
              FROM {db}.reorder_recommendations FINAL
              WHERE order_bound = 'inactive_out_of_stock' AND reorder_qty > 0 AND as_of_date < toDate('{t}')
              GROUP BY store_id, product_id) AS r
        LEFT JOIN (SELECT s.store_id AS store_id, p.sku AS product_id,
                          toDate(toString(max(d.date_key))) AS last_sale
                   FROM {db}.demand_daily AS d
                   INNER JOIN (SELECT store_key, store_id FROM {db}.dim_store FINAL) AS s
                       ON d.store_key = s.store_key
                   INNER JOIN (SELECT product_key, sku FROM {db}.dim_product FINAL) AS p
                       ON d.product_key = p.product_key
                   WHERE d.units > 0 AND d.date_key <= {k}
                   GROUP BY store_id, product_id) AS l
            ON r.store_id = l.store_id AND r.product_id = l.product_id
        WHERE l.last_sale IS NULL OR l.last_sale < toDate('1971-01-01') OR r.sent > l.last_sale""")
    if df.empty:
        return pd.DataFrame(columns=["store_id", "product_id", "restock_date"])
    return df


def optimise_stock(run_date: dt.date, settings=None) -> dict:
    """Task ``optimise_stock``: forecasts + closing stock + what is on order + product master ->
    reorder_recommendations (:func:`ml.optimize.recommend`, settings SERVICE_LEVEL, LEAD_TIME_DAYS, ORDER_COST,
    HOLDING_COST_RATE, ORDER_MAX_COVER_DAYS, ORDER_COUNT_OPEN_RECOMMENDATIONS).

    On order (ORDER_COUNT_OPEN_RECOMMENDATIONS true, the default): the platform's own recommendations of the
    LEAD_TIME_DAYS nights before are taken as placed orders, less the RESTOCK receipts since
    (:func:`load_open_orders`); the inventory position is stock + on_order. Each row stores on_order and
    order_bound (the rule that set reorder_qty, :func:`ml.optimize.order_terms`; ``inactive``: the forecasts flag the
    series as stopped selling, :func:`ml.forecast.inactive_series`, and nothing is ordered while stock is on hand;
    ``inactive_out_of_stock``: flagged but its closing stock is <= 0, so its silence may be the empty shelf's and
    it is restocked to the reorder point of its selling rate, :func:`ml.optimize.recommend`; ``inactive_restock_sent``:
    such a restock was already recommended after its last sale, :func:`load_inactive_restocks`, so 0 is ordered:
    once per silence; until 2026-12-07 the top-up dropped out of the open-order window and was recommended again
    every LEAD_TIME_DAYS + 1 nights, ~46 a year at L 7). The result counts them (``inactive``,
    ``inactive_out_of_stock`` and the latter's units, ``inactive_out_of_stock_units``, ``inactive_restock_sent``).
    Series without an inventory record are skipped (counted in the result; their forecasts stay in
    forecast_predictions). A missing unit cost falls back to the list unit price for the holding cost.
    """
    from ml.optimize import inputs_from_forecast, recommend

    s, client, db, lake = _ctx(settings)
    p = read_predictions(lake)
    origin = p["forecast_origin"].iloc[0]
    demand = inputs_from_forecast(p, lead_time_days=s.lead_time_days, service_level=s.service_level)
    inv = load_inventory(client, db, origin)
    m = demand.merge(inv, on=["store_id", "product_id"], how="inner")
    skipped = len(demand) - len(m)
    if m.empty:
        return {"rows": 0, "skipped_no_inventory": skipped}
    m["unit_cost"] = m["unit_cost"].where(m["unit_cost"] > 0, m["unit_price"])
    no_cost = ~(m["unit_cost"] > 0)
    m = m[~no_cost].copy()
    m["on_order"] = 0.0
    if s.order_count_open_recommendations:
        oo = load_open_orders(client, db, origin, s.lead_time_days)
        m = m.drop(columns="on_order").merge(oo, on=["store_id", "product_id"], how="left")
        m["on_order"] = m["on_order"].fillna(0.0).astype("float64")
    for c in ("storage_capacity", "shelf_life_days", "unit_cost"):
        m[c] = pd.to_numeric(m[c], errors="coerce").astype("float64")
    rec = recommend(m, lead_time_days=s.lead_time_days, service_level=s.service_level, order_cost=s.order_cost,
                    holding_cost_rate=s.holding_cost_rate, max_cover_days=s.order_max_cover_days)
    # restocked once per silence: a delisted SKU that stays at 0 is not topped up again every L + 1 nights
    top = rec["order_bound"].eq("inactive_out_of_stock").to_numpy()
    if top.any():
        sent = load_inactive_restocks(client, db, origin)
        keys = set(zip(sent["store_id"], sent["product_id"]))
        again = top & np.array([k in keys for k in zip(rec["store_id"], rec["product_id"])], dtype=bool)
        rec.loc[again, "reorder_qty"] = 0.0
        rec.loc[again, "reorder_needed"] = 0
        rec.loc[again, "order_bound"] = "inactive_restock_sent"
    k = rec["stock_date_key"].astype(int)
    rec["stock_date"] = [dt.date(x // 10000, x // 100 % 100, x % 100) for x in k]
    out = pd.DataFrame({
        "as_of_date": origin, "store_id": rec["store_id"], "product_id": rec["product_id"], "stock": rec["stock"],
        "stock_date": rec["stock_date"], "mean_daily_demand": rec["mean_demand"], "sigma_daily": rec["sigma_d"],
        "lead_time_days": rec["lead_time_days"].astype(float), "service_level": rec["service_level"],
        "safety_stock": rec["safety_stock"], "reorder_point": rec["reorder_point"], "eoq": rec["eoq"],
        "reorder_qty": rec["reorder_qty"], "reorder_needed": rec["reorder_needed"].astype("uint8"),
        "days_until_stockout": rec["days_until_stockout"], "stockout_risk": rec["stockout_risk"],
        "storage_capacity": rec["storage_capacity"].astype(object).where(rec["storage_capacity"].notna(), None),
        "shelf_life_days": rec["shelf_life_days"].astype(object).where(rec["shelf_life_days"].notna(), None),
        "unit_cost": rec["unit_cost"], "model_version": int(p["model_version"].iloc[0]), "run_date": run_date,
        "created_at": _now(), "on_order": rec["on_order"].astype(float), "order_bound": rec["order_bound"].astype(str),
        "counts_on_order": int(bool(s.order_count_open_recommendations))})
    client.insert_df(f"{db}.reorder_recommendations", out)
    return {"rows": int(len(out)), "skipped_no_inventory": int(skipped), "skipped_no_cost": int(no_cost.sum()),
            "risk": out["stockout_risk"].value_counts().to_dict(), "reorders": int(out["reorder_needed"].sum()),
            "on_order_units": float(out["on_order"].sum()),
            "order_bound": out["order_bound"].value_counts().to_dict(),
            "inactive": int((out["order_bound"] == "inactive").sum()),
            "inactive_out_of_stock": int((out["order_bound"] == "inactive_out_of_stock").sum()),
            "inactive_out_of_stock_units": float(out.loc[out["order_bound"] == "inactive_out_of_stock",
                                                         "reorder_qty"].sum()),
            "inactive_restock_sent": int((out["order_bound"] == "inactive_restock_sent").sum())}


def classify_skus(run_date: dt.date, settings=None, window_days: int = 365) -> dict:
    """Task ``classify_skus``: Syntetos-Boylan classes + slow-moving flag per store x SKU on the demand up
    to ``run_date`` -> sku_classification; hold-out stability -> ml_model_metrics (model_name 'slow-moving').

    The classification ends at the last day with sales up to ``run_date``, or the last loaded day after it
    (:func:`loaded_through`, as the training's :func:`history_end`): a run triggered the day after the last loaded day (``batch_predictions`` runs on the
    champion asset) would otherwise count that unloaded day as zero demand for every series (one more day since
    the last sale, a higher ADI, the stale flag a day early). Rows keep ``as_of_date = run_date``.

    Besides the series with sales in the window, every store x SKU with stock on hand (fact_inventory's latest
    closing stock up to that day > 0) is classified: one that sold nothing in the window is ``no_demand`` and
    slow-moving (dead stock), where it used to be left out."""
    from ml.slow_moving import classify, stability

    s, client, db, lake = _ctx(settings)
    daily = load_daily_demand(client, db, run_date)
    if daily.empty:
        raise ValueError(f"no sales in {db}.fact_sales up to {run_date}")
    last = daily["date"].max()
    loaded = loaded_through(client, db, last, run_date)   # loaded days without a sale are zero demand
    end = known_demand_end(last, loaded, run_date)
    stocked = load_inventory(client, db, end.date())   # stock on hand without a sale in the window: dead stock
    stocked = stocked.loc[stocked["stock"] > 0, ["store_id", "product_id"]]
    cls = classify(daily, end_date=end, window_days=window_days, include=stocked)
    now = _now()
    out = cls.assign(as_of_date=run_date, window_days=window_days, run_date=run_date, created_at=now)
    out["days_since_last_sale"] = out["days_since_last_sale"].astype("uint32")
    out["cv2"] = out["cv2"].fillna(0.0)
    out["adi"] = out["adi"].replace(np.inf, 1e9)
    client.insert_df(f"{db}.sku_classification", out[[
        "as_of_date", "store_id", "product_id", "window_days", "adi", "cv2", "demand_class", "mean_daily_demand",
        "days_since_last_sale", "is_slow_moving", "run_date", "created_at"]])
    half = max(7, min(182, int((end - daily["date"].min()).days // 2)))
    st = stability(daily, end_date=end, window_days=half)
    ev = pd.DataFrame([{"metric": k, "value": float(v)} for k, v in st.items() if k != "n_series"]
                      + [{"metric": "n_series", "value": float(st["n_series"])},
                         {"metric": "slow_moving_share", "value": float(cls["is_slow_moving"].mean())}])
    ev = ev.assign(model_name="slow-moving", model_version=0, run_date=run_date, model="syntetos-boylan",
                   horizon=0, dataset=f"platform-holdout-{half}d", computed_at=now)
    client.insert_df(f"{db}.ml_model_metrics", ev[["model_name", "model_version", "run_date", "model", "metric",
                                                   "horizon", "value", "dataset", "computed_at"]])
    return {"rows": int(len(out)), "classes": cls["demand_class"].value_counts().to_dict(),
            "slow_moving": int(cls["is_slow_moving"].sum()), "stability": st}
