"""The Airflow operator of the feature-building Spark job (imported by ``dags/demand_forecast_training.py`` at
parse time: no engines here).

:class:`FeaturesSubmitOperator` is the Spark provider's ``SparkSubmitOperator`` (connection ``spark_default``:
``local[2]`` natively, ``spark://spark-master:7077`` in compose) running ``ml/jobs/build_features.py`` for the
UTC date of the run's logical date, the same pattern as :class:`etl.operators.DailyFactsSubmitOperator`. When
the job reports bad data (a staged ``features_error.json``, exit 3) the task fails at once without retries
(``AirflowFailException``); any other failure (Spark or the lake unavailable) is retried per the DAG's
default_args. Returns the job's result record (rows, series, lake_path, run_date, ...) as the task's XCom.
"""

from __future__ import annotations

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from core.settings import REPO_ROOT

APPLICATION = str(REPO_ROOT / "ml" / "jobs" / "build_features.py")


class FeaturesSubmitOperator(SparkSubmitOperator):
    """spark-submit of the feature job for the run's UTC date (``--run-date`` set at execution)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("application", APPLICATION)
        kwargs.setdefault("conn_id", "spark_default")
        kwargs.setdefault("name", "demand-features")
        super().__init__(**kwargs)

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowFailException

        from core.dagconf import target_date
        from core.lake import Lake
        from ml import spark_features as sf

        day = target_date(context.get("logical_date"))
        self.application_args = ["--run-date", day.isoformat()]
        lake = Lake()
        sf.clear_error(lake, day)
        try:
            super().execute(context)
        except Exception as exc:
            err = sf.read_json(lake, *sf.staging(lake, day, sf.ERROR_NAME))
            if err:
                raise AirflowFailException(f"{err['error']}: {err['message']}") from exc
            raise
        return sf.read_json(lake, *sf.staging(lake, day, sf.RESULT_NAME))
