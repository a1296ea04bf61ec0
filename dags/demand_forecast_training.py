"""demand_forecast_training: features (Spark) -> Spark MLlib GBT with rolling-origin backtest -> registry/promotion.

wait_for_etl (:class:`etl.operators.EtlLoadedSensor`: holds the run until daily_etl has loaded and reconciled its
UTC date, a success as the latest etl_runs row of the date; reschedule mode, 12 h at most) -> extract_demand (Python, owns ClickHouse: daily demand per store x SKU from fact_sales + dims, encoded as Parquet
by ClickHouse and copied to the lake under ``features/staging/build_features/run_date=<d>/``) -> build_features (SparkSubmitOperator on
``spark_default``, application ``ml/jobs/build_features.py``, logic in :mod:`ml.spark_features`: the gap-free
series, lags, rolling statistics, calendar, price and holiday covariates as DataFrame code; holidays and the
optional weather file as small pandas dimensions, broadcast-joined; Spark reads the staged demand and writes the
lake Parquet ``features/daily/run_date=<d>/`` itself) -> load_features (Python: that table -> ``features_daily``, a
ReplacingMergeTree, then ``features/daily/latest.json``) -> train_gbt (SparkSubmitOperator, application
``ml/jobs/train.py``: backtest vs the baselines, model to ``models/demand-forecast/v<N>/``; a feature table too
short for any backtest origin fails the task without retries) -> register_model
(Python: metrics -> ``ml_model_metrics``, version -> ``model_registry``, champion / challenger promotion; emits
the ``demand_forecast_champion`` asset that schedules ``batch_predictions``). The Spark jobs never open chDB.
Logic: :mod:`ml.pipeline`.

Schedule: TRAINING_SCHEDULE (cron, UTC, data-interval timetable); the run processes the UTC date of its
logical date. Re-running a date overwrites that date's staged files, feature table and model version and
replaces its rows.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from core.dagconf import CLICKHOUSE_POOL, DEFAULT_ARGS, target_date
from core.settings import get_settings
from etl.operators import EtlLoadedSensor
from ml.operators import FeaturesSubmitOperator, TrainSubmitOperator

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
    def extract_demand() -> dict:
        """Daily demand from the star schema -> staged in the lake for the Spark feature job."""
        from airflow.sdk.exceptions import AirflowFailException

        from ml.pipeline import InsufficientData, stage_demand

        try:
            return stage_demand(target_date(get_current_context().get("logical_date")))
        except InsufficientData as exc:  # too little history: fail now, a retry cannot fix it
            raise AirflowFailException(str(exc)) from exc

    spark_conf = {"spark.sql.shuffle.partitions": str(_s.spark_shuffle_partitions),
                  "spark.driver.memory": _s.spark_driver_memory,
                  "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
                  "spark.ui.enabled": "false"}
    build_features = FeaturesSubmitOperator(task_id="build_features", conf=spark_conf)

    @task(pool=CLICKHOUSE_POOL)
    def load_features() -> dict:
        """The Spark job's feature table -> ClickHouse features_daily (idempotent) and latest.json."""
        from ml.pipeline import load_features as run

        return run(target_date(get_current_context().get("logical_date")))

    train_gbt = TrainSubmitOperator(   # writes the model to the lake from Spark; too little history fails at once
        task_id="train_gbt",
        application_args=["--features", "{{ ti.xcom_pull(task_ids='load_features')['lake_path'] }}",
                          "--registry-max-version",   # a lost model store reuses no registered version number
                          "{{ ti.xcom_pull(task_ids='load_features').get('registry_max_version', 0) }}"],
        conf={"spark.sql.shuffle.partitions": "2", "spark.driver.memory": _s.spark_driver_memory,
              "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
              "spark.ui.enabled": "false"},
    )

    @task(pool=CLICKHOUSE_POOL, outlets=[CHAMPION_ASSET])
    def register_model() -> dict:
        """Backtest metrics -> ml_model_metrics; version -> model_registry; promote if it beats the champion."""
        from ml.pipeline import register_model as run

        return run(target_date(get_current_context().get("logical_date")))

    # the run's date must be loaded and reconciled by daily_etl first (etl_runs), else the features end a day early
    wait_for_etl = EtlLoadedSensor(task_id="wait_for_etl")
    loaded = load_features()
    wait_for_etl >> extract_demand() >> build_features >> loaded >> train_gbt >> register_model()


demand_forecast_training()
