"""demand_forecast_training: features -> Spark MLlib GBT with rolling-origin backtest -> registry/promotion.

build_features (Python, owns ClickHouse: fact_sales + dims -> ``features_daily`` and the lake Parquet
``features/daily/run_date=<d>/``) -> train_gbt (SparkSubmitOperator, ``conn_id='spark_default'``,
application ``ml/jobs/train.py``: backtest vs seasonal naive, model to ``models/demand-forecast/v<N>/``;
the subprocess never opens chDB) -> register_model (Python: metrics -> ``ml_model_metrics``, version ->
``model_registry``, promoted to champion only when its backtest WAPE beats the champion's; emits the
``demand_forecast_champion`` asset that schedules ``batch_predictions``). Logic: :mod:`ml.pipeline`.

Schedule: TRAINING_SCHEDULE (cron, UTC, data-interval timetable); the run processes the UTC date of its
logical date. Re-running a date overwrites that date's model version and replaces its rows.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from core.dagconf import CLICKHOUSE_POOL, DEFAULT_ARGS, target_date
from core.settings import REPO_ROOT, get_settings

CHAMPION_ASSET = Asset("demand_forecast_champion")
_s = get_settings()


@dag(
    dag_id="demand_forecast_training",
    schedule=CronDataIntervalTimetable(_s.training_schedule, timezone="UTC"),
    start_date=pendulum.datetime(2009, 12, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["ml", "forecast", "spark", "nightly"],
    doc_md=__doc__,
)
def demand_forecast_training():
    @task(pool=CLICKHOUSE_POOL)
    def build_features() -> dict:
        """Daily demand from the star schema -> feature table in ClickHouse and the lake."""
        from airflow.sdk.exceptions import AirflowFailException

        from ml.pipeline import InsufficientData, build_features as run

        try:
            return run(target_date(get_current_context().get("logical_date")))
        except InsufficientData as exc:  # too little history: fail now, a retry cannot fix it
            raise AirflowFailException(str(exc)) from exc

    train_gbt = SparkSubmitOperator(
        task_id="train_gbt",
        conn_id="spark_default",
        application=str(REPO_ROOT / "ml" / "jobs" / "train.py"),
        application_args=["--features", "{{ ti.xcom_pull(task_ids='build_features')['lake_path'] }}",
                          "--run-date", "{{ ti.xcom_pull(task_ids='build_features')['run_date'] }}"],
        name="demand-forecast-train",
        conf={"spark.sql.shuffle.partitions": "2", "spark.driver.memory": _s.spark_driver_memory,
              "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
              "spark.ui.enabled": "false"},
    )

    @task(pool=CLICKHOUSE_POOL, outlets=[CHAMPION_ASSET])
    def register_model() -> dict:
        """Backtest metrics -> ml_model_metrics; version -> model_registry; promote if it beats the champion."""
        from ml.pipeline import register_model as run

        return run(target_date(get_current_context().get("logical_date")))

    build_features() >> train_gbt >> register_model()


demand_forecast_training()
