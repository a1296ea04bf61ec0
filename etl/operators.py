"""The Airflow operator of the ETL's Spark job (imported by ``dags/daily_etl.py`` at parse time: no engines here).

:class:`DailyFactsSubmitOperator` is the Spark provider's ``SparkSubmitOperator`` (connection ``spark_default``:
``local[2]`` natively, ``spark://spark-master:7077`` in compose) running ``etl/jobs/daily_facts.py`` for the
UTC date of the run's logical date. When the job reports bad data (a staged ``facts_error`` record, exit 3) the
task fails at once without retries (``AirflowFailException``: a retry cannot fix the data); any other failure
(Spark or the lake unavailable) is retried per the DAG's default_args.
"""

from __future__ import annotations

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from core.settings import REPO_ROOT

APPLICATION = str(REPO_ROOT / "etl" / "jobs" / "daily_facts.py")


class DailyFactsSubmitOperator(SparkSubmitOperator):
    """spark-submit of the ETL's fact job for the run's UTC date (``--date`` set at execution)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("application", APPLICATION)
        kwargs.setdefault("conn_id", "spark_default")
        kwargs.setdefault("name", "daily-etl-facts")
        super().__init__(**kwargs)

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowFailException

        from core.dagconf import target_date
        from etl import spark_facts as sf
        from etl import star_schema as etl

        day = target_date(context.get("logical_date"))
        self.application_args = ["--date", day.isoformat()]
        lake = etl._lake()
        sf.clear_error(lake, day)
        try:
            super().execute(context)
        except Exception as exc:
            err = sf.read_json(lake, day, sf.ERROR_NAME)
            if err:
                raise AirflowFailException(f"{err['error']}: {err['message']}") from exc
            raise
        return sf.read_json(lake, day, sf.RESULT_NAME)
