"""The Airflow operators of the feature-building and training Spark jobs (imported by
``dags/demand_forecast_training.py`` at parse time: no engines here).

:class:`FeaturesSubmitOperator` is :class:`etl.operators.StagedSparkSubmitOperator` (the Spark provider's
``SparkSubmitOperator`` on connection ``spark_default``) running ``ml/jobs/build_features.py`` for the UTC date of
the run's logical date, like :class:`etl.operators.DailyFactsSubmitOperator`. When the job reports bad data (a
staged ``features_error.json``, exit 3) the task fails at once without retries (``AirflowFailException``); any
other failure (Spark or the lake unavailable) is retried per the DAG's default_args. Returns the job's result
record (rows, series, lake_path, run_date, ...) as the task's XCom.

:class:`TrainSubmitOperator` runs ``ml/jobs/train.py`` the same way: a feature table too short to train on
(``train_error.json`` staged, exit 3) fails the task at once; its XCom is the job's ``train_result.json``.
"""

from __future__ import annotations

from core.settings import REPO_ROOT
from etl.operators import StagedSparkSubmitOperator

APPLICATION = str(REPO_ROOT / "ml" / "jobs" / "build_features.py")
TRAIN_APPLICATION = str(REPO_ROOT / "ml" / "jobs" / "train.py")


class FeaturesSubmitOperator(StagedSparkSubmitOperator):
    """spark-submit of the feature job for the run's UTC date (``--run-date`` set at execution)."""

    job_application = APPLICATION
    job_name = "demand-features"
    date_flag = "--run-date"
    job_module = "ml.spark_features"
    reads_lake = True   # the staged demand and the feature table go through S3A on an S3 lake
    # records: features/staging/build_features/run_date=<day>/features_{result,error}.json (the base's read_record)


class TrainSubmitOperator(StagedSparkSubmitOperator):
    """spark-submit of the training job for the run's UTC date (``--run-date`` appended at execution to the
    task's ``application_args``, e.g. ``["--features", <lake path>]``)."""

    job_application = TRAIN_APPLICATION
    job_name = "demand-forecast-train"
    date_flag = "--run-date"
    job_module = "ml.train_records"
    reads_lake = True   # the feature table and the model go through S3A on an S3 lake
    # records: features/staging/train/run_date=<day>/train_{result,error}.json (the base's read_record)
