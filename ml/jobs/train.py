"""spark-submit application: train the demand forecaster (GBT) with a rolling-origin backtest against the baselines.

    spark-submit --master local[2] ml/jobs/train.py --features latest --run-date 2011-08-31

Spark reads the daily feature table from the lake (``--features``: a lake path such as
``features/daily/run_date=YYYY-MM-DD`` or ``latest``; ``s3a://`` / ``file://``). Only the backtest's series
(FORECAST_BACKTEST_SERIES, the seeded hash sample of :func:`ml.forecast.sample_keys`; every series when the table
holds at most FORECAST_MAX_TRAIN_ROWS known rows, :func:`ml.forecast.backtest_sample_size`) are collected to pandas;
the final GBT's rows are built and fitted on every series in Spark (:func:`ml.forecast.train_final`). It runs
:func:`ml.forecast.train_and_evaluate` and
saves the model with its backtest metrics and interval bounds of every model (GBT, seasonal naive, trailing
28-day mean, statsforecast) to ``models/demand-forecast/v<N>/``; horizon FORECAST_HORIZON. meta.json records
what the predict job must reuse: ``horizon``, ``target``, ``shrink_k`` (the GBT's credibility shrinkage the
backtest scored and the intervals were calibrated with), ``feature_columns``, ``bucket_edges``.
N = the version already holding this run date (a re-run overwrites it: idempotent) or 1 + the highest of the
lake's and model_registry's (``--registry-max-version``, which the DAG passes: a lost model store reuses no number).
Run by hand without ``--registry-max-version``, the job reads that figure itself from model_registry over
CLICKHOUSE_URL's HTTP interface before Spark starts (:func:`registry_max_from_clickhouse`), or fails at once (exit 2)
naming the option when it cannot (until 2026-12-07 it took 0: a hand run after a lost model store numbered v1 again,
reusing a registered version). Otherwise it never opens ClickHouse; ``register_model`` in the DAG loads the
metrics and promotes.
Exit 0 after staging ``train_result.json`` (:mod:`ml.train_records`); exit 3 after staging ``train_error.json``
when no backtest origin has enough history (the DAG's operator fails the task without retries); any other error
exits non-zero and is retried.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # launched as a file by spark-submit: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.jobs import EXIT_BAD_DATA, bad_data  # noqa: E402  (after the bootstrap)

__all__ = ["EXIT_BAD_DATA", "main", "registry_max_from_clickhouse"]


def _iso_date(value: str) -> str:
    """argparse type of ``--run-date``: the value when it is a date written YYYY-MM-DD (the form meta.json and the
    staged records compare); otherwise argparse's error (exit 2) naming the option (also for 20261201 or
    2026-W48-2, which ``date.fromisoformat`` would accept)."""
    try:
        ok = dt.date.fromisoformat(value).isoformat() == value
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {value!r}")
    return value


def registry_max_from_clickhouse(settings) -> int:
    """The highest version model_registry holds for the forecaster (0 when none;
    :func:`ml.pipeline.registry_max_version`), read over CLICKHOUSE_URL's HTTP interface with a client of its own
    (30 s timeout) as CLICKHOUSE_URL's user without DDL (``create_database=False``: a mistyped
    CLICKHOUSE_DATABASE fails with UNKNOWN_DATABASE instead of being created): the figure a run without
    ``--registry-max-version`` numbers its version above. It needs no CLICKHOUSE_BI_PASSWORD (compose's airflow
    services have none, and compose's bi_reader may only SELECT ON retail.*: the bi_reader client of 2026-12-07's
    first version made a hand run in the airflow-scheduler container exit 2).

    Raises:
        ConfigError: CLICKHOUSE_URL is a ``chdb://`` path (the embedded engine locks its data path; the job must not
            take it from the endpoint that owns it) or names no credentials.
        Exception: ClickHouse unreachable or model_registry missing (clickhouse-connect's errors).
    """
    from urllib.parse import urlparse

    from core.clickhouse import new_client
    from core.settings import ConfigError
    from ml.pipeline import registry_max_version

    if urlparse(settings.clickhouse_url).scheme == "chdb":
        raise ConfigError("CLICKHOUSE_URL is an embedded chdb:// path, which the job must not open")
    # no DDL: a writer client runs CREATE DATABASE IF NOT EXISTS first, so until 2026-12-07 a mistyped
    # CLICKHOUSE_DATABASE left an empty database of that name behind; not bi_reader (CLICKHOUSE_BI_PASSWORD is not
    # in compose's airflow services, and compose's bi_reader reads retail.* only)
    client = new_client(settings, timeout=30, create_database=False)
    try:
        return registry_max_version(client, settings.clickhouse_database)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    """Backtest and train the forecaster on one feature table and save it as a model version (the module
    docstring's job).

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``): ``--features`` (lake
            path of the feature table, or ``latest``; default ``latest``), ``--run-date`` (required, YYYY-MM-DD;
            stored as given in meta.json, used to find the version to overwrite and to stage the run's records), and overrides
            of the settings' defaults: ``--horizon`` (days, FORECAST_HORIZON), ``--n-origins``,
            ``--origin-step-days``, ``--train-window-days`` (days), ``--max-iter``, ``--max-depth`` (GBT),
            ``--backtest-series`` (0 = all), ``--max-train-rows`` (0 = all), ``--stats-jobs`` (-1 = all cores),
            ``--shrink-k`` (units/day; default :data:`ml.forecast.SHRINK_K`), ``--registry-max-version`` (the
            highest version model_registry holds, >= 0; default: read from model_registry,
            :func:`registry_max_from_clickhouse`). The settings are read before the arguments are parsed, so even
            ``--help`` needs valid settings.

    Reads the feature table with Spark (``latest``: the table ``features/daily/latest.json`` points at) and the
    existing versions' meta.json. Writes version N (:func:`ml.forecast.save_model_version`: its folder
    ``models/demand-forecast/v<N>/`` replaced by ``spark_model/``, ``intervals.parquet``, ``metrics.parquet`` and
    ``meta.json`` last; bucket LAKE_MODELS_BUCKET). champion.json is not touched (``register_model`` promotes).
    Prints progress and a WAPE summary on stdout; the SparkSession is stopped either way.

    Also stages ``train_result.json`` (version, path, the backtest's best model, series, seconds) under
    ``features/staging/train/run_date=<d>/`` after removing a ``train_error.json`` left by an earlier run.

    Returns:
        0 on success; :data:`EXIT_BAD_DATA` (3) when no backtest origin has enough history
        (``ml.forecast.InsufficientHistory``: ``train_error.json`` staged, reported on stderr). The caller exits
        with it: ``sys.exit(main())``.

    Raises:
        SystemExit: status 2 (argparse) when ``--run-date`` is missing or not an ISO date, an option is
            malformed, or ``--registry-max-version`` is not given and model_registry cannot be read (the message
            names the option and the reason), before Spark starts.
        FileNotFoundError: no feature table at ``--features`` (or no ``latest.json``).
        ValueError: an invalid setting of :class:`ml.forecast.ForecastConfig` (e.g. horizon outside
            1..MAX_HORIZON, negative ``--shrink-k``), a table without a day of known units, or no training rows
            for the final fit.
        Exception: anything else (``ConfigError``, the lake or Spark unavailable) propagates. Each ends the
            process with a non-zero status, which the DAG's operator retries (no error record is staged); no
            version is written before training has finished.
    """
    from core.settings import get_settings

    s = get_settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", default="latest", help="lake path of the feature table, or 'latest'")
    ap.add_argument("--run-date", required=True, type=_iso_date, help="logical date of the DAG run (YYYY-MM-DD)")
    ap.add_argument("--horizon", type=int, default=s.forecast_horizon)
    ap.add_argument("--n-origins", type=int, default=s.forecast_backtest_origins)
    ap.add_argument("--origin-step-days", type=int, default=s.forecast_origin_step_days)
    ap.add_argument("--train-window-days", type=int, default=s.forecast_train_window_days)
    ap.add_argument("--max-iter", type=int, default=s.forecast_gbt_max_iter)
    ap.add_argument("--max-depth", type=int, default=s.forecast_gbt_max_depth)
    ap.add_argument("--backtest-series", type=int, default=s.forecast_backtest_series,
                    help="backtest on at most this many series (seeded sample; 0 = all)")
    ap.add_argument("--max-train-rows", type=int, default=s.forecast_max_train_rows,
                    help="each GBT fit on a seeded sample of at most this many rows (0 = all)")
    ap.add_argument("--stats-jobs", type=int, default=s.forecast_stats_jobs,
                    help="processes fitting the statsforecast baseline (-1 = all cores)")
    ap.add_argument("--shrink-k", type=float, default=None,
                    help="credibility shrinkage toward the trailing mean, units/day (default ml.forecast.SHRINK_K); "
                         "stored in meta.json, the predict job uses the same")
    ap.add_argument("--registry-max-version", type=int, default=None,
                    help="the highest version model_registry holds (the DAG passes load_features' figure): a new "
                         "version is numbered above it and above the lake's (a lost model store reuses no number); "
                         "default: read from model_registry over CLICKHOUSE_URL")
    a = ap.parse_args(argv)
    if a.registry_max_version is None:   # a hand run: the registry's figure, never 0 by default
        try:
            a.registry_max_version = registry_max_from_clickhouse(s)
        except Exception as exc:   # noqa: BLE001  (any reason the registry cannot be read: say which option to give)
            ap.error(f"--registry-max-version not given and model_registry could not be read "
                     f"({type(exc).__name__}: {exc}); pass the highest version model_registry holds")
        print(f"model_registry's highest version: {a.registry_max_version}", flush=True)
    if a.registry_max_version < 0:
        ap.error(f"--registry-max-version must be >= 0, got {a.registry_max_version}")

    import pandas as pd
    from ml.features import KEYS
    from ml import train_records
    from ml.forecast import (ForecastConfig, InsufficientHistory, backtest_sample_size, get_spark, new_version,
                             sample_keys, save_model_version, train_and_evaluate)
    from ml.pipeline import collect_series, read_features_frame, version_for_run
    from ml.spark_supervised import series_summary
    from core.lake import Lake

    lake = Lake(s)
    day = dt.date.fromisoformat(a.run_date)
    train_records.clear_error(lake, day)
    cfg = ForecastConfig(horizon=a.horizon, n_origins=a.n_origins, origin_step_days=a.origin_step_days,
                         train_window_days=a.train_window_days, max_iter=a.max_iter,
                         max_depth=a.max_depth, backtest_series=a.backtest_series, stats_jobs=a.stats_jobs,
                         max_train_rows=a.max_train_rows,
                         shuffle_partitions=min(s.spark_shuffle_partitions, 2),
                         **({} if a.shrink_k is None else {"shrink_k": a.shrink_k}))
    spark = get_spark("demand-forecast-train", shuffle_partitions=cfg.shuffle_partitions, lake=True)
    try:
        t0 = time.perf_counter()
        # the whole table stays in Spark (the final fit); only the backtest's series come to pandas
        table = read_features_frame(spark, lake, a.features)
        # one pass: the series, their known rows (every series is backtested within the row cap) and the table's span
        keys, span = series_summary(table)
        n = backtest_sample_size(int(keys["known"].sum()), cfg)
        feats = collect_series(table, sample_keys(keys[KEYS], n, cfg.seed))
        print(f"features {a.features}: {len(keys):,} series; backtest on {feats.groupby(KEYS).ngroups:,} "
              f"({len(feats):,} rows in pandas)", flush=True)
        try:
            res = train_and_evaluate(spark, None, cfg, features=feats, final_features=table, span=span,
                                     log=lambda m: print(m, flush=True))
        except InsufficientHistory as exc:   # the same table fails the same way: no retry
            train_records.write_error(lake, day, exc)
            return bad_data("train", a.run_date, exc)
        bt = res["backtest"]
        version = version_for_run(lake, a.run_date) or new_version(lake, a.registry_max_version)
        meta = {
            "run_date": a.run_date, "trained_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "features_path": a.features, "config": json.loads(cfg.to_json()), "feature_columns": res["cols"],
            "horizon": cfg.horizon, "target": cfg.target, "shrink_k": cfg.shrink_k, "selection": res["selection"],
            "backtest_series": int(bt.predictions.groupby(["store_id", "product_id"]).ngroups),
            "bucket_edges": bt.bucket_edges, "backtest_origins": [str(o.date()) for o in bt.origins],
            "backtest_train_rows": bt.train_rows, "backtest_fit_seconds": bt.fit_seconds,
            "final_train_rows": res["train_rows"], "final_fit_seconds": res["fit_seconds"],
            "backtest_seconds": res["backtest_seconds"],
            "backtest_baseline_seconds": {k: round(v, 2) for k, v in (bt.baseline_seconds or {}).items()},
            "last_known_date": str(res["span"][1]),
            "series": len(keys),
            "total_seconds": time.perf_counter() - t0,
        }
        path = save_model_version(lake, res["model"], version, meta, bt.quantiles, bt.metrics)
        train_records.write_result(lake, day, {
            "run_date": a.run_date, "version": version, "path": path, "features_path": a.features,
            "best_of_backtest": res["selection"]["champion"], "series": len(keys),
            "seconds": round(time.perf_counter() - t0, 2)})
        g = bt.metrics[(bt.metrics["h"] == 0)].set_index("model")["wape"]
        print(f"saved model v{version} to {path}: backtest WAPE " + ", ".join(f"{m} {w:.4f}" for m, w in g.items())
              + f"; best of this backtest: {res['selection']['champion']}", flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
