"""daily_etl: raw events in the lake -> ClickHouse star schema, one UTC day per run.

build_facts -> load -> quality_check. ``build_facts`` is a Spark job (SparkSubmitOperator on ``spark_default``,
application ``etl/jobs/daily_facts.py``, logic in :mod:`etl.spark_facts`): the day's raw events -> deduplicated
fact_sales lines, fact_sales_daily and closing stock in Spark, dimensions in pandas, staged as Parquet in the lake
(``features/staging/daily_etl/date=YYYY-MM-DD/``). ``load`` and ``quality_check`` (logic in
:mod:`etl.star_schema`) open ClickHouse and use the ``clickhouse`` pool (core.dagconf); tasks exchange only
small XComs (counts). The Spark job never opens ClickHouse.

Schedule: ETL_SCHEDULE (default 08:00 UTC daily) as a data-interval cron timetable; the run processes
the UTC date of its logical date (the start of its interval = the previous day). Catchup is on from
ETL_START_DATE when set, else from ETL_CATCHUP_DAYS (default 14) days before today: a night missed while the
scheduler was down gets its run when it is back (oldest first, one run at a time), and a first unpause makes at
most that many runs on any install date. Airflow creates no task for a run dated before the start (it
"succeeds" empty): load older dates with a backfill (`airflow backfill create`, the UI's backfill) or
`make nightly`. A date after today (UTC) is refused by ``load``. Re-running a date
replaces its fact partitions (idempotent). A failed data-quality check, or raw data breaking the contract
(the Spark job's exit 3), fails the run without retries (AirflowFailException): retrying cannot fix bad data.
So does a raw partition that is gone while ClickHouse holds the day's rows (re-running would empty the day);
trigger with the param ``allow_missing_raw`` = true to empty it on purpose.

Gaps: ``check_gaps`` (after ``quality_check``) fails the run, without retry, when days with raw events between the
first loaded day (at most ETL_GAP_CHECK_DAYS back) and the run's date are not loaded (their latest etl_runs row is
not a success: ``etl.loaded_days``; an Airflow outage longer than
ETL_CATCHUP_DAYS: the catch-up start moved past them), or when loaded days older than the ETL_RECHECK_DAYS window
have raw files changed since their load (events that arrived later than the re-check looks), naming the dates and
the backfill commands (one per range); it loads nothing.

Late data: each run also re-checks the ETL_RECHECK_DAYS (default 7) loaded days before its date. The Spark job
compares each day's raw partition listing (file names, sizes, modification times) with the one staged when it was
loaded and builds the changed days again; ``load`` loads them again (oldest first) and ``quality_check``
reconciles them too (``rechecked_days``), so events that land after a day's run are picked up. A raw partition
that changed *during* the run (after the build) makes the quality check raise ``LakeChangedError``: not bad
data, so the task is retried per default_args, and the retry builds the day again (the same spark-submit as
``build_facts``, :meth:`etl.operators.StagedSparkSubmitOperator.resubmit`, while holding its ClickHouse pool slot),
loads it and reconciles it. A re-checked day that cannot be built, loaded or reconciled (e.g. a raw file that is
not Parquet, its raw partition gone) is recorded 'failed' with the reason and skipped: the run's own date is still
loaded and reconciled (training goes on), and ``check_gaps`` names the day and fails the run, every night until it
is loaded. A retry of ``load`` does not load again a re-checked day the first attempt loaded (its 'begun' row of
stage ``load_done``): it is only reconciled.
"""

from __future__ import annotations

import contextlib
import logging

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

import sys

from core.dagconf import CLICKHOUSE_POOL, DEFAULT_ARGS, etl_catchup_start, target_date
from core.settings import get_settings
from etl.operators import DailyFactsSubmitOperator

_s = get_settings()
log = logging.getLogger(__name__)
_start = etl_catchup_start(_s)   # ETL_START_DATE, else ETL_CATCHUP_DAYS before today (UTC)


def _day():
    return target_date(get_current_context().get("logical_date"))


@contextlib.contextmanager
def _fail_fast_on_bad_data():
    """Bad data (etl.star_schema.EtlError, incl. DataQualityError) fails the task at once (no retries: a retry
    cannot fix it); other errors (lake or ClickHouse unavailable) are retried per default_args."""
    from airflow.sdk.exceptions import AirflowFailException

    from etl.star_schema import EtlError

    try:
        yield
    except EtlError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


@dag(
    dag_id="daily_etl",
    schedule=CronDataIntervalTimetable(_s.etl_schedule, timezone="UTC"),
    # catchup: nights missed while the scheduler was down are loaded when it is back (max_active_runs=1: in date
    # order); the start bounds the first unpause (core.dagconf.etl_catchup_start)
    start_date=pendulum.datetime(_start.year, _start.month, _start.day, tz="UTC"),
    catchup=True,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["etl", "star-schema", "clickhouse", "nightly"],
    doc_md=__doc__,
    params={"allow_missing_raw": Param(False, type="boolean",
                                       description="Load the date even when its raw partition is gone and "
                                                   "ClickHouse holds its rows (empties the day).")},
)
def daily_etl():
    build_facts = DailyFactsSubmitOperator(
        task_id="build_facts",
        conf={"spark.sql.shuffle.partitions": str(_s.spark_shuffle_partitions),
              "spark.driver.memory": _s.spark_driver_memory,
              "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
              "spark.ui.enabled": "false"},
    )

    @task(pool=CLICKHOUSE_POOL)
    def load() -> dict:
        """Upsert dims, replace the date's fact partitions in ClickHouse; a failed load is recorded in etl_runs."""
        from etl import star_schema as etl

        with _fail_fast_on_bad_data():
            ctx = get_current_context()
            return etl.load_recorded(_day(), dag_run_id=ctx["run_id"],
                                     allow_missing_raw=bool(ctx["params"].get("allow_missing_raw", False)))

    @task(pool=CLICKHOUSE_POOL)
    def quality_check(loaded: dict | None) -> dict:
        """Reconcile fact_sales with the raw lake exactly, for the days re-checked by this run (oldest first), then
        the run's date; record each in etl_runs. LakeChangedError (the lake changed during the run) is retried, and
        the retry first builds (build_facts' Spark job) and loads the day again, then reconciles. A re-checked day
        that fails (DataQualityError; or that the load could not load: ``failed_rechecks``) is recorded 'failed' and
        left to check_gaps, which names it and fails the run; the run's date is reconciled all the same."""
        import datetime as dt

        from etl import star_schema as etl

        ctx = get_current_context()
        run_id, day = ctx["run_id"], _day()
        with _fail_fast_on_bad_data():
            days = list((loaded or {}).get("rechecked_days", []))
            if ctx["ti"].try_number > 1 and etl.stale_days(etl.open_lake(), [*map(dt.date.fromisoformat, days), day]):
                ctx["dag"].get_task("build_facts").resubmit(ctx)   # the same spark-submit as build_facts
                loaded = etl.load_recorded(day, dag_run_id=run_id,
                                           allow_missing_raw=bool(ctx["params"].get("allow_missing_raw", False)))
                days = sorted(set(days) | set(loaded["rechecked_days"]))
            started = dt.datetime.fromisoformat(loaded["started_at"]) if loaded else None  # None: load not run here
            rechecked, failed = {}, dict((loaded or {}).get("failed_rechecks", {}))
            for d in days:   # a re-checked day that fails is recorded 'failed' (check_gaps names it): the date goes on
                try:
                    rechecked[d] = etl.quality_check(dt.date.fromisoformat(d), started, dag_run_id=run_id)
                except etl.EtlError as exc:
                    failed[d] = f"{type(exc).__name__}: {exc}"
                    log.error("re-checked day %s failed its quality check (recorded failed): %s", d, exc)
            return {**etl.quality_check(day, started, dag_run_id=run_id), "rechecked": rechecked,
                    "failed_rechecks": failed}

    @task(pool=CLICKHOUSE_POOL)
    def check_gaps() -> None:
        """Fail (no retry) naming the days with raw events, between the first loaded day and this run's date, that
        were never loaded (an outage longer than ETL_CATCHUP_DAYS), within ETL_GAP_CHECK_DAYS days before it, and the
        backfill commands; loads nothing. Runs
        after quality_check: the date itself is loaded and reconciled, so training waits for nothing."""
        from etl import star_schema as etl

        with _fail_fast_on_bad_data():
            etl.check_load_gaps(_day())

    loaded = load()
    build_facts >> loaded
    quality_check(loaded) >> check_gaps()


daily_etl()
