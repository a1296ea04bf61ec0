"""spark-submit application: 7-day forecasts with 80 % / 95 % intervals from the champion model.

    spark-submit --master local[2] ml/jobs/predict.py --features latest

Loads ``models/demand-forecast/champion.json`` -> version N, the Spark model and its interval quantiles
from ``models/demand-forecast/v<N>/``, forecasts horizons 1..7 for every active store x SKU of the
feature table (:func:`ml.forecast.forecast`) and writes
``models/demand-forecast/predictions/origin=YYYY-MM-DD/predictions.parquet`` and ``.../latest.parquet``
(overwritten: idempotent). Never opens ClickHouse; ``load_predictions`` in the DAG loads them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # launched as a file by spark-submit: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", default="latest", help="lake path of the feature table, or 'latest'")
    ap.add_argument("--version", type=int, default=None, help="model version (default: the champion)")
    a = ap.parse_args(argv)

    import pyarrow as pa

    from ml.forecast import MODEL_PREFIX, forecast, get_spark, load_model_version
    from ml.pipeline import read_features
    from core.lake import Lake
    from core.settings import get_settings

    s = get_settings()
    lake = Lake(s)
    bucket = s.lake_models_bucket
    version = a.version
    if version is None:
        if not lake.exists(bucket, MODEL_PREFIX, "champion.json"):
            raise SystemExit(f"no champion model: {bucket}/{MODEL_PREFIX}/champion.json missing (run demand_forecast_training)")
        with lake.fs.open_input_stream(lake.path(bucket, MODEL_PREFIX, "champion.json")) as f:
            version = int(json.loads(f.read().decode())["version"])
    feats = read_features(lake, a.features)
    spark = get_spark("demand-forecast-predict", shuffle_partitions=2)
    try:
        model, meta, quantiles = load_model_version(lake, version)
        cols = meta["feature_columns"]
        missing = [c for c in cols if c != "h" and c not in feats.columns]  # h is added per forecast row
        if missing:
            raise SystemExit(f"feature table lacks column(s) {missing} the model v{version} was trained on")
        pred = forecast(spark, model, feats, quantiles, meta["bucket_edges"], cols)
    finally:
        spark.stop()
    out = pred.rename(columns={"origin": "forecast_origin", "date": "target_date", "h": "horizon"})
    out["horizon"] = out["horizon"].astype("uint8")
    out["model_version"] = version
    table = pa.Table.from_pandas(out, preserve_index=False)
    origin = str(out["forecast_origin"].iloc[0].date())
    lake.write_table(table, bucket, MODEL_PREFIX, "predictions", f"origin={origin}", "predictions.parquet")
    lake.write_table(table, bucket, MODEL_PREFIX, "predictions", "latest.parquet")
    print(f"model v{version}: {len(out):,} forecasts for {out.groupby(['store_id', 'product_id']).ngroups} series "
          f"from origin {origin}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
