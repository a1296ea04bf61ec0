"""The Airflow operator of the feature-building Spark job (imported by ``dags/demand_forecast_training.py`` at
parse time: no engines here).

:class:`FeaturesSubmitOperator` is :class:`etl.operators.StagedSparkSubmitOperator` (the Spark provider's
``SparkSubmitOperator`` on connection ``spark_default``) running ``ml/jobs/build_features.py`` for the UTC date of
the run's logical date, like :class:`etl.operators.DailyFactsSubmitOperator`. When the job reports bad data (a
staged ``features_error.json``, exit 3) the task fails at once without retries (``AirflowFailException``); any
other failure (Spark or the lake unavailable) is retried per the DAG's default_args. Returns the job's result
record (rows, series, lake_path, run_date, ...) as the task's XCom.
"""

from __future__ import annotations

from core.settings import REPO_ROOT
from etl.operators import StagedSparkSubmitOperator

APPLICATION = str(REPO_ROOT / "ml" / "jobs" / "build_features.py")


class FeaturesSubmitOperator(StagedSparkSubmitOperator):
    """spark-submit of the feature job for the run's UTC date (``--run-date`` set at execution)."""

    job_application = APPLICATION
    job_name = "demand-features"
    date_flag = "--run-date"
    job_module = "ml.spark_features"
    reads_lake = True   # the staged demand and the feature table go through S3A on an S3 lake

    @staticmethod
    def read_record(sf, lake, day, name: str) -> dict | None:
        """The staged record ``name`` (``features_result`` / ``features_error``) of run date ``day``:
        the JSON file ``features/staging/build_features/run_date=<day>/<name>.json`` (:meth:`core.lake.Lake.read_json`);
        None when absent."""
        return lake.read_json(*sf.staging(lake, day, name))
