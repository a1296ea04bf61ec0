"""Demand forecasting with Spark MLlib's GBTRegressor: rolling-origin backtest, intervals, model I/O.

Model design (direct multi-horizon, one global model)
------------------------------------------------------
One ``pyspark.ml`` pipeline (VectorAssembler -> GBTRegressor, squared loss) is trained for all
series and all horizons h = 1..7; **h is a feature**. Each training row is (series, origin t, h) with
target y_{t+h} and features known at t (see :mod:`ml.features`: demand history up to t, horizon-safe
seasonal lags y_{t+h-7}, y_{t+h-14}, known-in-advance covariates of the target day). A global model
with the horizon as a feature shares strength across horizons and needs one fit instead of seven.
To keep a fit tractable on 2 cores, each (series, target day) contributes **one** training row with a
horizon drawn uniformly from 1..7 (seeded), over a window of ``train_window_days`` target days before
the origin; the full 7 rows per origin are used for evaluation and prediction.

Rolling-origin backtest (never a random split)
----------------------------------------------
Origins o_k = T - 7 - k * ``origin_step_days`` for k = 0..n_origins-1 (T = last day with known demand;
default step 5 days, not a multiple of 7, so each horizon day is scored on several weekdays — with a
weekly step horizon h would always fall on the same weekday, e.g. a closed Saturday).
For each origin the model is trained only on rows whose target day is <= o_k and predicts o_k+1..o_k+7
(Tashman 2000, "Out-of-sample tests of forecasting accuracy", IJF 16(4)). The baseline is the
**seasonal naive** forecast y_{t+h-7} (the value 7 days before the target day).

Metrics per horizon day (pooled over series and origins) and over all horizons (h = 0):

* WAPE = sum |y - yhat| / sum y;
* MAE = mean |y - yhat|; RMSE = sqrt(mean (y - yhat)^2);
* RMSSE (Hyndman & Koehler 2006, "Another look at measures of forecast accuracy", IJF 22(4); the M5
  variant): per series sqrt( mean_h (y - yhat)^2 / s ), s = mean of squared one-step naive differences
  (y_t - y_{t-1})^2 over the series' in-sample history up to the origin; then the unweighted mean over
  series with s > 0.

Prediction intervals (empirical, from backtest residuals)
---------------------------------------------------------
Residuals e = y - yhat of the backtest are grouped by horizon h and by a demand-level bucket (quartiles
of the 30-day rolling mean at the origin, so slow movers get narrow and fast movers wide intervals).
The 80 % interval is yhat + [q_0.10, q_0.90] and the 95 % interval yhat + [q_0.025, q_0.975] of the
group's residuals, with q_0.025 <= min(q_0.10, 0) and q_0.975 >= max(q_0.90, 0) enforced so that
lower95 <= lower80 <= point <= upper80 <= upper95, and every bound clipped at 0 (demand >= 0). This is
the "empirical residual quantile" method (Hyndman & Athanasopoulos, "Forecasting: Principles and
Practice", 3rd ed., sec. 5.5, bootstrapped/empirical intervals). Coverage is checked leave-one-origin-out
(quantiles from the other origins, coverage on the held-out origin) and reported as ``coverage80`` /
``coverage95``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ml.features import KEYS, MAX_HORIZON, build_daily_features, feature_columns, make_supervised

QUANTILES = {"lower95": 0.025, "lower80": 0.10, "upper80": 0.90, "upper95": 0.975}
N_LEVEL_BUCKETS = 4
MIN_TRAIN_ROWS = 50


class InsufficientHistory(ValueError):
    """The demand history is too short for a rolling-origin backtest."""


@dataclass
class ForecastConfig:
    """Training / backtest settings (all durations in days)."""

    horizon: int = MAX_HORIZON
    n_origins: int = 4
    origin_step_days: int = 5  # not a multiple of 7: each horizon is scored on several weekdays
    train_window_days: int = 365
    rows_per_target: int = 1  # horizons sampled per (series, target day) for training; 7 = all
    max_iter: int = 40
    max_depth: int = 5
    step_size: float = 0.1
    subsampling_rate: float = 0.8
    max_bins: int = 32
    seed: int = 42
    shuffle_partitions: int = 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class BacktestResult:
    """Backtest output: row-level predictions, metrics table, interval quantiles, timing."""

    predictions: pd.DataFrame  # store_id, product_id, origin, date, h, y, yhat, seasonal_naive, level_bucket
    metrics: pd.DataFrame  # model, h, wape, mae, rmse, rmsse, n, coverage80, coverage95
    quantiles: pd.DataFrame  # h, level_bucket, lower95, lower80, upper80, upper95
    bucket_edges: list[float]
    origins: list[pd.Timestamp]
    fit_seconds: list[float] = field(default_factory=list)
    train_rows: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------------
def get_spark(app_name: str = "demand-forecast", master: str | None = None, shuffle_partitions: int = 2):
    """A SparkSession for MLlib (no Kafka connector): :func:`core.spark.build_spark`; the master from the
    argument, else SPARK_MASTER unless launched by spark-submit (which sets ``spark.master``)."""
    from core.spark import build_spark

    return build_spark(app_name, kafka=False, master=master, shuffle_partitions=shuffle_partitions)


def _to_spark(spark, pdf: pd.DataFrame, cols: list[str]):
    data = pdf[cols].astype("float64")
    return spark.createDataFrame(data)


def fit_gbt(spark, train: pd.DataFrame, cfg: ForecastConfig, cols: list[str]):
    """Fit the VectorAssembler -> GBTRegressor pipeline on ``train`` (pandas, column ``y`` = target).

    Returns:
        pyspark.ml.PipelineModel.
    Raises:
        ValueError: no training rows.
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import GBTRegressor

    if train.empty:
        raise ValueError("no training rows (series too short for the training window?)")
    sdf = _to_spark(spark, train, cols + ["y"]).repartition(cfg.shuffle_partitions).cache()
    pipe = Pipeline(stages=[
        VectorAssembler(inputCols=cols, outputCol="features", handleInvalid="keep"),
        GBTRegressor(featuresCol="features", labelCol="y", predictionCol="yhat", maxIter=cfg.max_iter,
                     maxDepth=cfg.max_depth, stepSize=cfg.step_size, subsamplingRate=cfg.subsampling_rate,
                     maxBins=cfg.max_bins, seed=cfg.seed, lossType="squared"),
    ])
    model = pipe.fit(sdf)
    sdf.unpersist()
    return model


def predict_gbt(spark, model, rows: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Point forecasts (units, clipped at 0) for ``rows`` in their order."""
    if rows.empty:
        return np.zeros(0)
    data = rows[cols].astype("float64").copy()
    data["_row"] = np.arange(len(data), dtype="float64")
    out = model.transform(spark.createDataFrame(data)).select("_row", "yhat").toPandas()
    out = out.sort_values("_row")
    return np.clip(out["yhat"].to_numpy(dtype="float64"), 0.0, None)


# --------------------------------------------------------------------------------------------
# training rows, metrics, intervals (pure pandas)
# --------------------------------------------------------------------------------------------
def training_rows(sup: pd.DataFrame, origin, cfg: ForecastConfig) -> pd.DataFrame:
    """Rows whose target day is in (origin - train_window_days, origin], sampled to
    ``rows_per_target`` horizons per (series, target day) with a seeded draw."""
    o = pd.Timestamp(origin)
    m = (sup["date"] <= o) & (sup["date"] > o - pd.Timedelta(days=cfg.train_window_days)) & sup["y"].notna()
    tr = sup[m]
    if cfg.rows_per_target >= cfg.horizon:
        return tr
    rng = np.random.default_rng(cfg.seed)
    # one uniform key per row; keep the rows_per_target smallest keys per (series, day)
    key = pd.Series(rng.random(len(tr)), index=tr.index)
    rank = key.groupby([tr["store_id"], tr["product_id"], tr["date"]], sort=False).rank(method="first")
    return tr[rank <= cfg.rows_per_target]


def naive_scales(features: pd.DataFrame, origin) -> pd.Series:
    """RMSSE scale per series: mean of (y_t - y_{t-1})^2 over days <= origin (Hyndman & Koehler 2006)."""
    f = features[(features["date"] <= pd.Timestamp(origin)) & features["units"].notna()]
    d = f.groupby(KEYS, sort=False, observed=True)["units"].diff()
    return (d ** 2).groupby([f["store_id"], f["product_id"]], observed=True).mean().rename("scale")


def metrics_table(pred: pd.DataFrame, scales: pd.DataFrame) -> pd.DataFrame:
    """WAPE, MAE, RMSE, RMSSE per model (``gbt`` from column yhat, ``seasonal_naive``) and horizon.

    Args:
        pred: rows with store_id, product_id, origin, h, y, yhat, seasonal_naive.
        scales: store_id, product_id, origin, scale (in-sample naive one-step MSE).
    Returns:
        DataFrame model, h (0 = all horizons), wape, mae, rmse, rmsse, n, sum_y.
    """
    p = pred.merge(scales, on=["store_id", "product_id", "origin"], how="left")
    rows = []
    for model, col in (("gbt", "yhat"), ("seasonal_naive", "seasonal_naive")):
        e = p["y"] - p[col]
        p = p.assign(_ae=e.abs(), _se=e ** 2)
        p["_sse"] = p["_se"] / p["scale"]
        for h in [0] + sorted(p["h"].unique().tolist()):
            q = p if h == 0 else p[p["h"] == h]
            sum_y = float(q["y"].sum())
            ok = q[q["scale"] > 0]
            per_series = ok.groupby(["store_id", "product_id"], observed=True)["_sse"].mean()
            rows.append({
                "model": model, "h": int(h),
                "wape": float(q["_ae"].sum() / sum_y) if sum_y > 0 else float("nan"),
                "mae": float(q["_ae"].mean()), "rmse": float(np.sqrt(q["_se"].mean())),
                "rmsse": float(np.sqrt(per_series).mean()) if len(per_series) else float("nan"),
                "n": int(len(q)), "sum_y": sum_y,
            })
    return pd.DataFrame(rows)


def level_bucket(level: pd.Series, edges: list[float]) -> pd.Series:
    """Bucket index 0..len(edges) of the demand level (30-day rolling mean at the origin)."""
    return pd.Series(np.searchsorted(np.asarray(edges), level.to_numpy(), side="right"), index=level.index).astype("int8")


def residual_quantiles(pred: pd.DataFrame) -> pd.DataFrame:
    """Empirical residual quantiles per (h, level_bucket) with the monotone fix (module docstring).

    Groups with fewer than 20 residuals fall back to the horizon's pooled quantiles.
    """
    e = pred.assign(e=pred["y"] - pred["yhat"])

    def q(s: pd.Series) -> pd.Series:
        return pd.Series({k: float(s.quantile(v)) for k, v in QUANTILES.items()})

    by_h = e.groupby("h")["e"].apply(q).unstack()
    grp = e.groupby(["h", "level_bucket"])["e"]
    res = grp.apply(q).unstack()
    counts = grp.size()
    small = counts[counts < 20].index
    for idx in small:
        res.loc[idx] = by_h.loc[idx[0]]
    # fill absent buckets with the horizon's pooled values
    full = pd.MultiIndex.from_product([sorted(e["h"].unique()), range(N_LEVEL_BUCKETS)], names=["h", "level_bucket"])
    res = res.reindex(full)
    for (h, b) in res.index[res.isna().any(axis=1)]:
        res.loc[(h, b)] = by_h.loc[h]
    res["lower80"] = res["lower80"].clip(upper=0.0)
    res["upper80"] = res["upper80"].clip(lower=0.0)
    res["lower95"] = np.minimum(res["lower95"], res["lower80"])
    res["upper95"] = np.maximum(res["upper95"], res["upper80"])
    return res.reset_index()


def apply_intervals(pred: pd.DataFrame, quantiles: pd.DataFrame, point: str = "yhat") -> pd.DataFrame:
    """Add lower95, lower80, upper80, upper95 (units, >= 0) to rows with h, level_bucket and ``point``."""
    out = pred.drop(columns=[c for c in QUANTILES if c in pred.columns]).merge(
        quantiles, on=["h", "level_bucket"], how="left")
    for c in QUANTILES:
        out[c] = np.clip(out[point] + out[c].fillna(0.0), 0.0, None)
    return out


def _coverage(pred: pd.DataFrame) -> tuple[float, float]:
    """Leave-one-origin-out coverage of the 80 % and 95 % intervals."""
    origins = sorted(pred["origin"].unique())
    if len(origins) < 2:
        return float("nan"), float("nan")
    hits80 = hits95 = n = 0
    for o in origins:
        q = residual_quantiles(pred[pred["origin"] != o])
        t = apply_intervals(pred[pred["origin"] == o], q)
        hits80 += int(((t["y"] >= t["lower80"]) & (t["y"] <= t["upper80"])).sum())
        hits95 += int(((t["y"] >= t["lower95"]) & (t["y"] <= t["upper95"])).sum())
        n += len(t)
    return hits80 / n, hits95 / n


# --------------------------------------------------------------------------------------------
# backtest, final fit, forecast
# --------------------------------------------------------------------------------------------
def backtest_origins(features: pd.DataFrame, cfg: ForecastConfig) -> list[pd.Timestamp]:
    """Origins T - horizon - k * origin_step_days, k = n_origins-1..0 (oldest first)."""
    T = features.loc[features["units"].notna(), "date"].max()
    return [T - pd.Timedelta(days=cfg.horizon + k * cfg.origin_step_days) for k in range(cfg.n_origins - 1, -1, -1)]


def backtest(spark, features: pd.DataFrame, cfg: ForecastConfig, log=print) -> BacktestResult:
    """Rolling-origin backtest of the GBT against seasonal naive (see module docstring).

    Args:
        features: daily feature table from :func:`ml.features.build_daily_features`.
    Returns:
        :class:`BacktestResult`.
    """
    origins = backtest_origins(features, cfg)
    first = origins[0] - pd.Timedelta(days=cfg.train_window_days)
    sup = make_supervised(features, range(1, cfg.horizon + 1), min_target_date=first)
    cols = feature_columns(sup)
    sup[cols] = sup[cols].fillna(0.0)
    preds, scales, fit_s, n_train, used = [], [], [], [], []
    for o in origins:
        tr = training_rows(sup, o, cfg)
        if len(tr) < MIN_TRAIN_ROWS:
            log(f"backtest origin {o.date()} skipped: {len(tr)} training rows < {MIN_TRAIN_ROWS} (history too short)")
            continue
        used.append(o)
        t0 = time.perf_counter()
        model = fit_gbt(spark, tr, cfg, cols)
        fit_s.append(time.perf_counter() - t0)
        n_train.append(len(tr))
        te = sup[(sup["origin"] == o) & sup["y"].notna()].copy()
        te["yhat"] = predict_gbt(spark, model, te, cols)
        preds.append(te)
        sc = naive_scales(features, o).reset_index()
        sc["origin"] = o
        scales.append(sc)
        log(f"backtest origin {o.date()}: train rows {len(tr):,}, fit {fit_s[-1]:.1f} s, test rows {len(te):,}")
    if not preds:
        raise InsufficientHistory(
            f"no backtest origin has {MIN_TRAIN_ROWS}+ training rows: the demand history is too short "
            f"(need more than {cfg.horizon} days of known demand before the first origin {origins[-1].date()})")
    origins = used
    pred = pd.concat(preds, ignore_index=True)
    edges = [float(x) for x in np.quantile(pred["rmean_30"], [0.25, 0.5, 0.75])]
    pred["level_bucket"] = level_bucket(pred["rmean_30"], edges)
    metrics = metrics_table(pred, pd.concat(scales, ignore_index=True))
    cov80, cov95 = _coverage(pred)
    metrics["coverage80"] = np.where(metrics["model"] == "gbt", cov80, np.nan)
    metrics["coverage95"] = np.where(metrics["model"] == "gbt", cov95, np.nan)
    keep = ["store_id", "product_id", "origin", "date", "h", "y", "yhat", "seasonal_naive", "level_bucket", "rmean_30"]
    return BacktestResult(pred[keep], metrics, residual_quantiles(pred), edges, origins, fit_s, n_train)


def train_final(spark, features: pd.DataFrame, cfg: ForecastConfig):
    """Fit on every row whose target day is within the training window before the last known day."""
    T = features.loc[features["units"].notna(), "date"].max()
    sup = make_supervised(features, range(1, cfg.horizon + 1),
                          min_target_date=T - pd.Timedelta(days=cfg.train_window_days))
    cols = feature_columns(sup)
    sup[cols] = sup[cols].fillna(0.0)
    tr = training_rows(sup, T, cfg)
    return fit_gbt(spark, tr, cfg, cols), cols, len(tr)


def forecast(spark, model, features: pd.DataFrame, quantiles: pd.DataFrame, bucket_edges: list[float],
             cols: list[str], horizon: int = MAX_HORIZON) -> pd.DataFrame:
    """7-day forecasts with intervals from the last known day T for every active series.

    A series is *active* when it has a row at T (it is on sale). Requires the feature table to be
    extended past T (``extend_days >= horizon``).

    Returns:
        DataFrame store_id, product_id, origin (T), date (target day), h, yhat, lower95, lower80,
        upper80, upper95 (units).
    Raises:
        ValueError: the feature table has no future rows for some horizon.
    """
    T = features.loc[features["units"].notna(), "date"].max()
    sup = make_supervised(features, range(1, horizon + 1), min_target_date=T + pd.Timedelta(days=1))
    rows = sup[sup["origin"] == T].copy()
    hs = set(rows["h"].unique())
    if hs != set(range(1, horizon + 1)):
        raise ValueError(f"feature table has no future rows for horizons {sorted(set(range(1, horizon + 1)) - hs)}; "
                         "build it with extend_days >= horizon")
    rows[cols] = rows[cols].fillna(0.0)
    rows["yhat"] = predict_gbt(spark, model, rows, cols)
    rows["level_bucket"] = level_bucket(rows["rmean_30"], bucket_edges)
    out = apply_intervals(rows, quantiles)
    return out[["store_id", "product_id", "origin", "date", "h", "yhat", *QUANTILES]].sort_values(
        ["store_id", "product_id", "h"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# model persistence in the lake
# --------------------------------------------------------------------------------------------
MODEL_PREFIX = "demand-forecast"


def list_versions(lake) -> list[int]:
    """Model versions N present in the lake as ``models/demand-forecast/v<N>/meta.json``."""
    import pyarrow.fs as pafs

    base = lake.path(lake.settings.lake_models_bucket, MODEL_PREFIX)
    if not lake.exists(lake.settings.lake_models_bucket, MODEL_PREFIX):
        return []
    out = []
    for info in lake.fs.get_file_info(pafs.FileSelector(base)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("v") and name[1:].isdigit():
            if lake.exists(lake.settings.lake_models_bucket, MODEL_PREFIX, name, "meta.json"):
                out.append(int(name[1:]))
    return sorted(out)


def upload_dir(lake, local_dir: str, *parts: str) -> str:
    """Copy a local folder into the lake path ``parts`` (replacing it). Returns the lake fs path."""
    import pyarrow.fs as pafs

    dest = lake.path(*parts)
    lake.delete_dir(*parts)
    lake.fs.create_dir(dest, recursive=True)
    pafs.copy_files(local_dir, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=lake.fs)
    return dest


def download_dir(lake, local_dir: str, *parts: str) -> str:
    """Copy the lake folder ``parts`` to ``local_dir``; returns ``local_dir``."""
    import pyarrow.fs as pafs

    if not lake.exists(*parts):
        raise FileNotFoundError(f"lake path {'/'.join(parts)} does not exist")
    os.makedirs(local_dir, exist_ok=True)
    pafs.copy_files(lake.path(*parts), local_dir, source_filesystem=lake.fs, destination_filesystem=pafs.LocalFileSystem())
    return local_dir


def save_model_version(lake, model, version: int, meta: dict, quantiles: pd.DataFrame,
                       metrics: pd.DataFrame) -> str:
    """Save the Spark model, interval quantiles, metrics and meta.json to ``models/demand-forecast/v<N>/``.

    The Spark model is written to a local temp folder first (Spark has no S3A connector here) and the
    folder uploaded through the lake's pyarrow filesystem; meta.json is written last as the commit marker.
    Returns the lake path ``models/demand-forecast/v<N>``.
    """
    import pyarrow as pa

    bucket = lake.settings.lake_models_bucket
    vdir = f"v{version}"
    lake.delete_dir(bucket, MODEL_PREFIX, vdir)
    with tempfile.TemporaryDirectory(prefix="gbt-") as tmp:
        model.write().overwrite().save(os.path.join(tmp, "spark_model"))
        upload_dir(lake, os.path.join(tmp, "spark_model"), bucket, MODEL_PREFIX, vdir, "spark_model")
    lake.write_table(pa.Table.from_pandas(quantiles, preserve_index=False), bucket, MODEL_PREFIX, vdir, "intervals.parquet")
    lake.write_table(pa.Table.from_pandas(metrics, preserve_index=False), bucket, MODEL_PREFIX, vdir, "metrics.parquet")
    meta = {**meta, "version": version, "path": f"{bucket}/{MODEL_PREFIX}/{vdir}"}
    with lake.fs.open_output_stream(lake.path(bucket, MODEL_PREFIX, vdir, "meta.json")) as f:
        f.write(json.dumps(meta, indent=2, default=str).encode())
    return meta["path"]


def read_meta(lake, version: int) -> dict:
    """meta.json of model version N."""
    with lake.fs.open_input_stream(lake.path(lake.settings.lake_models_bucket, MODEL_PREFIX, f"v{version}", "meta.json")) as f:
        return json.loads(f.read().decode())


def load_model_version(lake, version: int):
    """(PipelineModel, meta dict, interval quantiles DataFrame) of version N (needs an active SparkSession)."""
    from pyspark.ml import PipelineModel

    bucket = lake.settings.lake_models_bucket
    meta = read_meta(lake, version)
    tmp = tempfile.mkdtemp(prefix="gbt-load-")
    download_dir(lake, os.path.join(tmp, "spark_model"), bucket, MODEL_PREFIX, f"v{version}", "spark_model")
    model = PipelineModel.load(os.path.join(tmp, "spark_model"))
    q = lake.read_table(bucket, MODEL_PREFIX, f"v{version}", "intervals.parquet").to_pandas()
    return model, meta, q


def train_and_evaluate(spark, daily: pd.DataFrame, cfg: ForecastConfig, *, calendar=None, weather=None,
                       default_country: str | None = "GB", features: pd.DataFrame | None = None, log=print) -> dict:
    """The one training path used by the spark-submit job, the DAG and the benchmark.

    Builds features (unless given), runs the rolling-origin backtest, fits the final model on the
    latest window. Returns a dict with keys features, backtest (:class:`BacktestResult`), model, cols,
    train_rows, fit_seconds, backtest_seconds.
    """
    if features is None:
        features = build_daily_features(daily, calendar=calendar, weather=weather, default_country=default_country,
                                        extend_days=cfg.horizon)
    t0 = time.perf_counter()
    bt = backtest(spark, features, cfg, log=log)
    t1 = time.perf_counter()
    model, cols, n = train_final(spark, features, cfg)
    t2 = time.perf_counter()
    log(f"final model: {n:,} rows, fit {t2 - t1:.1f} s")
    return {"features": features, "backtest": bt, "model": model, "cols": cols, "train_rows": n,
            "fit_seconds": t2 - t1, "backtest_seconds": t1 - t0}
