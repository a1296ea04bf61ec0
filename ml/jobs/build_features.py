"""spark-submit application: the staged daily demand of a run date -> the daily feature table in the lake.

    spark-submit --master local[2] ml/jobs/build_features.py --run-date 2011-08-31

Runs :func:`ml.spark_features.build_run`: reads the demand and parameters the ``extract_demand`` task of
``demand_forecast_training`` staged under ``features/staging/build_features/run_date=YYYY-MM-DD/`` (daily demand
per store x SKU from ClickHouse, the last day with known demand, FORECAST_HORIZON, STORE_COUNTRY_DEFAULT),
builds the feature table as Spark DataFrame code (holidays and the optional WEATHER_FILE as small pandas
dimensions, broadcast-joined) and writes ``features/daily/run_date=YYYY-MM-DD/features.parquet`` (a folder of
Parquet files) and the staged ``features_result.json`` (overwritten: idempotent). Spark reads and writes both tables
itself (``s3a://`` on MinIO/S3, ``file://`` on a folder lake), so neither passes through the driver. Never opens ClickHouse; the ``load_features`` task inserts
the table into ``features_daily``.
Exit 0 on success; exit 3 after staging ``features_error.json`` when the staged demand breaks the contract
(negative units, duplicates, null keys, no active series: the DAG's operator fails the task without retries);
any other error exits non-zero and is retried.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # launched as a file by spark-submit: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.jobs import EXIT_BAD_DATA, bad_data, parse_job_date  # noqa: E402  (after the bootstrap)

__all__ = ["EXIT_BAD_DATA", "main"]


def main(argv: list[str] | None = None) -> int:
    """Build the feature table of one run date (the module docstring's job).

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``): ``--run-date
            YYYY-MM-DD``, required, the logical date of the DAG run.

    First removes a ``features_error.json`` left by an earlier run, then reads WEATHER_FILE when set
    (:func:`ml.pipeline.read_weather`, before Spark starts) and, with Spark, ``params.json`` and
    ``demand.parquet`` staged under ``features/staging/build_features/run_date=YYYY-MM-DD/``. Writes
    (overwriting) ``features/daily/run_date=YYYY-MM-DD/features.parquet`` (a folder of Parquet files) and
    ``features_result.json`` in the staging folder (:func:`ml.spark_features.build_run`); on bad data,
    ``features_error.json`` there (``{"run_date", "error", "message"}``). ``features/daily/latest.json`` is not
    touched (``load_features`` moves it). Prints ``build_features <run date>: <result>`` on stdout; the
    SparkSession is stopped either way.

    Returns:
        0 on success; :data:`EXIT_BAD_DATA` (3) when the staged demand breaks the contract
        (``ml.spark_features.FeatureError``: reported on stderr after staging ``features_error.json``). The
        caller exits with it (``sys.exit(main())``).

    Raises:
        SystemExit: status 2 (argparse) when ``--run-date`` is missing.
        ValueError: a malformed ``--run-date``, or a WEATHER_FILE without the needed columns.
        FileNotFoundError: nothing staged for the run date, or WEATHER_FILE does not exist.
        Exception: anything else (``ConfigError``, the lake or Spark unavailable) propagates. Each of these ends
            the process with status 1; the DAG's operator retries the task (no error record is staged).
    """
    run_date, day = parse_job_date(argv, __doc__, "--run-date", "logical date of the DAG run (YYYY-MM-DD)")

    from core.lake import Lake
    from core.settings import get_settings
    from core.spark import build_spark
    from ml import spark_features as sf
    from ml.pipeline import read_weather

    s = get_settings()
    lake = Lake(s)
    sf.clear_error(lake, day)
    weather = read_weather(s.weather_file)
    # reads the staged demand and writes the feature table through S3A (file:// on a folder lake)
    spark = build_spark("demand-features", shuffle_partitions=s.spark_shuffle_partitions, lake=True)
    try:
        out = sf.build_run(spark, lake, day, weather=weather)
    except sf.FeatureError as exc:
        lake.write_json({"run_date": run_date, "error": type(exc).__name__, "message": str(exc)},
                        *sf.staging(lake, day, sf.ERROR_NAME))
        return bad_data("build_features", run_date, exc)
    finally:
        spark.stop()
    print(f"build_features {run_date}: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
