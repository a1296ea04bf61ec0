"""Conventions shared by every platform DAG (owner, retries, the ClickHouse pool, the date a run processes).

Imported by the DAG files at parse time: standard library only at import, nothing that opens a connection
(:func:`clickhouse_pool_slots` reads the settings when called).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.settings import Settings

#: owner of every platform DAG
OWNER = "retail-data-platform"
#: Airflow pool of the tasks that read or write ClickHouse. Through the HTTP endpoint (native stack) or a
#: server (compose) several tasks may run at once; the pool's slot count (AIRFLOW_CLICKHOUSE_POOL_SLOTS, 4 by
#: default; 1 when CLICKHOUSE_URL is chdb://, since chDB allows one process per data path) bounds them.
CLICKHOUSE_POOL = "clickhouse"
#: default_args of every platform DAG: retries >= 2 with exponential back-off
DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=20),
}


def utc_today() -> dt.date:
    """Today's UTC calendar date (a function, so that tests can pin the clock the DAG files are parsed with)."""
    return dt.datetime.now(dt.timezone.utc).date()


def etl_catchup_start(s: Settings, today: dt.date | None = None) -> dt.date:
    """The first UTC date the scheduler catches daily_etl up from (the DAG's start_date): ETL_START_DATE when
    set, else ETL_CATCHUP_DAYS days before ``today`` (default :func:`utc_today`, i.e. when the DAG file is parsed;
    day granularity, so the date moves once a day and a first unpause on any install date makes at most
    ETL_CATCHUP_DAYS runs).

    Args:
        s: the settings (``etl_start_date``, ``etl_catchup_days``).
        today: the UTC date to count back from (tests); None: :func:`utc_today`.
    Returns:
        a date; the DAG's start_date is its midnight UTC.
    """
    if s.etl_start_date is not None:
        return s.etl_start_date
    return (today or utc_today()) - dt.timedelta(days=s.etl_catchup_days)


def target_date(logical_date) -> dt.date:
    """The UTC calendar date a run processes: the UTC date of its logical date.

    With ``CronDataIntervalTimetable`` the 08:00 run on day D+1 has logical date D 08:00 (its data
    interval's start) and ``airflow dags test <dag> D`` has logical date D 00:00: both process day D.

    Raises:
        ValueError: the run has no logical date.
    """
    if logical_date is None:
        raise ValueError("this DAG needs a logical date: trigger it with one "
                         "(e.g. `airflow dags test <dag> YYYY-MM-DD`)")
    return logical_date.astimezone(dt.timezone.utc).date()


def clickhouse_pool_slots(s: Settings | None = None) -> int:
    """Slots of :data:`CLICKHOUSE_POOL`: AIRFLOW_CLICKHOUSE_POOL_SLOTS when set (validated by the settings: an
    integer >= 1), else 1 for an embedded ``chdb://`` CLICKHOUSE_URL (one process per data path) and 4 for an
    HTTP endpoint or server.

    Raises:
        core.settings.ConfigError: a setting is invalid (``s`` not given); the message names the variable.
    """
    if s is None:
        from core.settings import get_settings

        s = get_settings()
    if s.airflow_clickhouse_pool_slots is not None:
        return s.airflow_clickhouse_pool_slots
    return 1 if (s.clickhouse_url or "").startswith("chdb://") else 4
