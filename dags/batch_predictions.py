"""batch_predictions: champion model -> FORECAST_HORIZON-day forecasts with intervals -> stock optimisation -> SKU classes.

wait_for_etl (:class:`etl.operators.EtlLoadedSensor`: a run with a logical date, PREDICTIONS_SCHEDULE or manual, waits
until daily_etl has loaded and reconciled its date; an asset-triggered run passes, its training run waited) ->
predict (SparkSubmitOperator, ``conn_id='spark_default'``, application ``ml/jobs/predict.py``: the champion
of ``models/demand-forecast/champion.json`` on the latest feature table; writes Parquet to the lake, never
opens chDB) -> load_predictions (``forecast_predictions``: every active store x SKU x horizon 1..H with
80 % / 95 % intervals; H = the champion's horizon, the setting FORECAST_HORIZON (1..28, 14 by default) when
it was trained) -> optimise_stock (``reorder_recommendations``: safety stock, reorder point, EOQ
bounded by storage and shelf life, days until stock-out, risk) -> classify_skus (``sku_classification``
+ the classifier's hold-out stability in ``ml_model_metrics``). Logic: :mod:`ml.pipeline`.

Schedule: PREDICTIONS_SCHEDULE (cron, UTC) when set, else whenever demand_forecast_training updates the
``demand_forecast_champion`` asset. Loads are ReplacingMergeTree upserts: re-running is idempotent.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from core.dagconf import CLICKHOUSE_POOL, DEFAULT_ARGS, target_date
from core.settings import REPO_ROOT, get_settings
from etl.operators import EtlLoadedSensor, LakeSparkSubmitOperator

_s = get_settings()


def _run_date():
    """UTC date of the logical date; asset-triggered runs (no logical date) use their run_after."""
    ctx = get_current_context()
    return target_date(ctx.get("logical_date") or ctx["dag_run"].run_after)


@dag(
    dag_id="batch_predictions",
    schedule=(CronDataIntervalTimetable(_s.predictions_schedule, timezone="UTC") if _s.predictions_schedule
              else [Asset("demand_forecast_champion")]),
    start_date=pendulum.datetime(2009, 12, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["ml", "forecast", "inventory", "spark", "nightly"],
    doc_md=__doc__,
)
def batch_predictions():
    predict = LakeSparkSubmitOperator(   # reads the champion model from the lake through Spark
        task_id="predict",
        conn_id="spark_default",
        application=str(REPO_ROOT / "ml" / "jobs" / "predict.py"),
        application_args=["--features", "latest"],
        name="demand-forecast-predict",
        conf={"spark.sql.shuffle.partitions": "2", "spark.driver.memory": _s.spark_driver_memory,
              "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
              "spark.ui.enabled": "false"},
    )

    @task(pool=CLICKHOUSE_POOL)
    def load_predictions() -> dict:
        """Lake forecasts -> forecast_predictions (checked: all horizons, ordered intervals)."""
        from ml.pipeline import load_predictions as run

        return run(_run_date())

    @task(pool=CLICKHOUSE_POOL)
    def optimise_stock(loaded: dict) -> dict:
        """Forecasts + closing stock + product master -> reorder_recommendations."""
        from ml.pipeline import optimise_stock as run

        return run(_run_date())

    @task(pool=CLICKHOUSE_POOL)
    def classify_skus(optimised: dict) -> dict:
        """Syntetos-Boylan classes and slow-moving flags -> sku_classification (+ evaluation metrics)."""
        from ml.pipeline import classify_skus as run

        return run(_run_date())

    # a cron or manual run waits for daily_etl's load of its date (closing stock); an asset-triggered one passes
    wait_for_etl = EtlLoadedSensor(task_id="wait_for_etl")
    loaded = load_predictions()
    wait_for_etl >> predict >> loaded
    classify_skus(optimise_stock(loaded))


batch_predictions()
