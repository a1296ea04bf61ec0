"""The training job's staged records (``ml/jobs/train.py``), read by its Airflow operator
(:class:`ml.operators.TrainSubmitOperator`) the way :mod:`ml.spark_features` stages the feature job's.

``train_result.json`` (version, model path, the backtest's best model, seconds) after a saved version;
``train_error.json`` (``{"run_date", "error", "message"}``) when the feature table cannot train a model
(:class:`ml.forecast.InsufficientHistory`: no backtest origin has enough training rows). The job then exits 3
(:data:`core.jobs.EXIT_BAD_DATA`) and the operator fails the task without retries: a retry reads the same table.
Both live under ``features/staging/train/run_date=YYYY-MM-DD/``; a re-run overwrites them (the error record is
removed before the job starts). Lake I/O only: no Spark, no ClickHouse.
"""

from __future__ import annotations

import datetime as dt

STAGING_PREFIX = "staging/train"
RESULT_NAME = "train_result"
#: staged when the feature table cannot train a model (the job exits 3, the operator fails without retries)
ERROR_NAME = "train_error"


def staging(lake, run_date: dt.date, name: str) -> tuple[str, str]:
    """Lake path (bucket, key) of a staged record of the run: ``features/staging/train/run_date=<d>/<name>.json``
    (bucket LAKE_FEATURES_BUCKET)."""
    return lake.settings.lake_features_bucket, f"{STAGING_PREFIX}/run_date={run_date.isoformat()}/{name}.json"


def clear_error(lake, run_date: dt.date) -> None:
    """Remove the run's staged error record (before a new run of the job); nothing when there is none."""
    lake.delete_file(*staging(lake, run_date, ERROR_NAME))


def write_error(lake, run_date: dt.date, exc: BaseException) -> dict:
    """Stage ``train_error.json`` for ``run_date``: ``{"run_date": "YYYY-MM-DD", "error": <exception class name>,
    "message": str(exc)}``. Returns the record written."""
    rec = {"run_date": run_date.isoformat(), "error": type(exc).__name__, "message": str(exc)}
    lake.write_json(rec, *staging(lake, run_date, ERROR_NAME))
    return rec


def write_result(lake, run_date: dt.date, result: dict) -> None:
    """Stage ``train_result.json`` for ``run_date`` (``result``: JSON-serialisable; overwritten: idempotent)."""
    lake.write_json(result, *staging(lake, run_date, RESULT_NAME))
