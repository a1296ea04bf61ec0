"""spark-submit application: forecasts with 80 % / 95 % intervals from the champion model.

    spark-submit --master local[2] ml/jobs/predict.py --features latest

Loads ``models/demand-forecast/champion.json`` -> version N and the champion's model name (the GBT or a
baseline: seasonal naive, trailing 28-day mean, statsforecast), the Spark model and the interval bounds
from ``models/demand-forecast/v<N>/``, forecasts horizons 1..H (the version's horizon; the GBT with the
version's ``target`` and ``shrink_k`` from meta.json, :func:`ml.forecast.model_shrink_k`) for every active
store x SKU of the feature table with that model (:func:`ml.forecast.forecast`; Spark reads the table and builds
the forecast rows, the GBT scores them in Spark, and only series x horizon rows reach pandas) and writes
``models/demand-forecast/predictions/origin=YYYY-MM-DD/predictions.parquet`` and ``.../latest.parquet``
(overwritten: idempotent). Never opens ClickHouse; ``load_predictions`` in the DAG loads them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # launched as a file by spark-submit: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    """Forecast every active series of a feature table with one saved model (the module docstring's job).

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``): ``--features`` (lake
            path of the feature table, or ``latest``: the table ``features/daily/latest.json`` points at; default
            ``latest``), ``--version N`` (default: the champion's version from
            ``models/demand-forecast/champion.json``), ``--model`` (``gbt`` or a baseline; default the champion's
            model when the version comes from champion.json, else ``gbt``).

    Reads champion.json (without ``--version``), the feature table (Spark) and version N's ``meta.json``,
    ``spark_model/`` and ``intervals.parquet`` under ``models/demand-forecast/v<N>/``. Writes (overwriting) the
    forecasts (``store_id``, ``product_id``, ``forecast_origin``, ``target_date``, ``horizon`` 1..H, ``yhat``,
    ``lower80``/``upper80``, ``lower95``/``upper95`` in units, ``inactive``: the series stopped selling, its yhat 0
    and no reorder unless out of stock, :func:`ml.forecast.inactive_series`; ``selling_rate``: units/day over its
    selling span, what an inactive series out of stock is restocked on; ``model_version``) to
    ``models/demand-forecast/predictions/origin=YYYY-MM-DD/predictions.parquet`` and
    ``.../predictions/latest.parquet`` (bucket LAKE_MODELS_BUCKET), after the SparkSession is stopped. Prints a
    summary line on stdout; shrinkage warnings go to stderr.

    Returns:
        0 on success (the caller exits with it: ``sys.exit(main())``).

    Raises:
        SystemExit: status 1 with a message when there is no champion.json (and no ``--version``) or the feature
            table lacks a stored feature column (:data:`ml.features.STORED_COLUMNS`); status 2 (argparse) on a bad
            option.
        FileNotFoundError: no feature table at ``--features``, no ``latest.json``, or version N has no
            ``spark_model`` or no ``meta.json``.
        OSError: the lake cannot be reached.
        ValueError: an unknown ``--model``, or the table has no future rows for a horizon
            (:func:`ml.forecast.forecast`).
        Exception: anything else (``ConfigError``, the lake or Spark unavailable) propagates. Every failure ends
            the process with a non-zero status, which the DAG's operator retries.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", default="latest", help="lake path of the feature table, or 'latest'")
    ap.add_argument("--version", type=int, default=None, help="model version (default: the champion)")
    ap.add_argument("--model", default=None, help="gbt or a baseline (default: the champion's model, else gbt)")
    a = ap.parse_args(argv)

    import pyarrow as pa

    from ml.features import STORED_COLUMNS
    from ml.forecast import (MODEL_PREFIX, forecast, get_spark, load_model_version, model_ets_model,
                             model_inactive_rule, model_prices_known_ahead, model_shrink_k)
    from ml.pipeline import read_features_frame
    from core.lake import Lake
    from core.settings import get_settings

    s = get_settings()
    lake = Lake(s)
    bucket = s.lake_models_bucket
    version, model_name = a.version, a.model
    if version is None:
        champ = lake.read_json(bucket, MODEL_PREFIX, "champion.json")
        if champ is None:
            raise SystemExit(f"no champion model: {bucket}/{MODEL_PREFIX}/champion.json missing (run demand_forecast_training)")
        version, model_name = int(champ["version"]), model_name or champ.get("model", "gbt")
    model_name = model_name or "gbt"
    spark = get_spark("demand-forecast-predict", shuffle_partitions=2, lake=True)   # reads the model through S3A
    try:
        feats = read_features_frame(spark, lake, a.features)  # Spark reads the table: it never passes the driver
        model, meta, quantiles = load_model_version(lake, version)
        cols = meta["feature_columns"]
        missing = [c for c in STORED_COLUMNS if c not in feats.columns]  # make_supervised derives the rest
        if missing:
            raise SystemExit(f"feature table lacks column(s) {missing} the model v{version} needs")
        cfg = meta.get("config", {})
        # the shrinkage the model was backtested (and its intervals calibrated) with; older models: the default
        shrink_k = model_shrink_k(meta, log=lambda m: print(f"WARNING {m}", file=sys.stderr, flush=True))
        pred = forecast(spark, model, feats, quantiles, meta["bucket_edges"], cols, horizon=int(meta.get("horizon", 7)),
                        model_name=model_name, target=meta.get("target", "raw"),
                        stats_window_days=int(cfg.get("stats_window_days", 365)), shrink_k=shrink_k,
                        stats_jobs=s.forecast_stats_jobs, ets_model=model_ets_model(meta),
                        prices_known_ahead=model_prices_known_ahead(meta),
                        **dict(zip(("inactive_days", "inactive_intervals"), model_inactive_rule(meta))))
    finally:
        spark.stop()
    out = pred.rename(columns={"origin": "forecast_origin", "date": "target_date", "h": "horizon"})
    out["horizon"] = out["horizon"].astype("uint8")
    out["model_version"] = version
    table = pa.Table.from_pandas(out, preserve_index=False)
    origin = str(out["forecast_origin"].iloc[0].date())
    lake.write_table(table, bucket, MODEL_PREFIX, "predictions", f"origin={origin}", "predictions.parquet")
    lake.write_table(table, bucket, MODEL_PREFIX, "predictions", "latest.parquet")
    print(f"model v{version} ({model_name}, shrink_k {shrink_k}): {len(out):,} forecasts for {out.groupby(['store_id', 'product_id']).ngroups} series "
          f"from origin {origin}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
