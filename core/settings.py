"""The platform's one settings module.

Every component (producers, streaming job, DAGs, ML jobs, native stack scripts) reads its hosts,
ports, paths and credentials from here, and only from here. Values come from environment
variables (prefix-free names, documented in the README's configuration table), then from an
optional ``.env`` file in the working directory, then from ``$RETAIL_CACHE_DIR/local.env``
(written once by ``python -m ops.cli setup`` with generated local credentials), then from the
defaults below. Defaults describe the *native local stack*; the compose stack overrides them.

Bad configuration fails fast: :func:`get_settings` raises :class:`ConfigError` whose message
names the offending environment variable.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlparse

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Repository root (the folder holding this package's parent).
REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_cache_dir() -> Path:
    return Path(os.environ.get("RETAIL_CACHE_DIR", REPO_ROOT / ".cache")).resolve()


class ConfigError(ValueError):
    """Raised when a setting is missing or invalid; the message names the environment variable."""


#: name of the read-only ClickHouse user (dashboards, Power BI); its password is CLICKHOUSE_BI_PASSWORD
BI_USER = "bi_reader"
#: name of the ClickHouse user that writes (default CLICKHOUSE_URL); its password is CLICKHOUSE_WRITER_PASSWORD
WRITER_USER = "platform_writer"

#: Spark interval units accepted by :func:`interval_hours` -> hours per unit
#: hours of window history the streaming job loads back per micro-batch (the anomaly baseline's look-back,
#: ``streaming.sinks.ANOMALY_HORIZON_HOURS``): the upper bound of STREAM_VELOCITY_HOURS
STREAM_HISTORY_HOURS = 24.0
#: hours before a micro-batch's history look-back searched first for a per-SKU stock anchor
#: (``streaming.sinks.ANCHOR_LOOKBACK_HOURS``)
STREAM_ANCHOR_LOOKBACK_HOURS = 24.0
#: the largest STREAM_CLICKHOUSE_TIMEOUT_SECONDS (seconds): a stop waits for a request already sent, within
#: ``streaming.job.STOP_GRACE_SECONDS`` (40 s) and the supervisor's ``stopwaitsecs`` for the stream (60 s,
#: ``ops.local``)
STREAM_CLICKHOUSE_TIMEOUT_MAX_S = 30

#: Settings checked against each other by the model validators below (a test derives these sets from the
#: validators' code): a process receiving one of a set must receive the others, or it checks against their
#: defaults (ops.entrypoint.required_env adds the partners; compose passes them)
CROSS_CHECKS: tuple[frozenset[str], ...] = (
    frozenset({"risk_high_hours", "risk_medium_hours"}),
    frozenset({"clickhouse_stream_retention_days", "kafka_retention_ms", "stream_watermark"}),
    frozenset({"stream_max_future_minutes", "stream_watermark"}),
    frozenset({"etl_gap_check_days", "etl_recheck_days"}),
    frozenset({"order_max_cover_days", "lead_time_days"}),
)

_INTERVAL_UNITS = {"second": 1 / 3600, "minute": 1 / 60, "hour": 1.0, "day": 24.0}


def interval_hours(value: str, variable: str = "STREAM_WINDOW") -> float:
    """Length of a Spark interval string in hours, e.g. ``"5 minutes"`` -> 0.0833 (the parser of STREAM_WINDOW
    and STREAM_WATERMARK, used by the settings' validation and by the streaming job).

    Raises:
        ValueError: naming ``variable``, for a string that is not ``<number> <unit>`` with a finite number >= 0
            and unit seconds/minutes/hours/days (singular or plural).
    """
    parts = str(value).strip().split()
    if len(parts) != 2:
        raise ValueError(f"{variable}: interval {value!r}: expected '<number> <unit>', e.g. '5 minutes'")
    unit = parts[1].lower().rstrip("s")
    if unit not in _INTERVAL_UNITS:
        raise ValueError(f"{variable}: interval {value!r}: unit must be seconds, minutes, hours or days")
    try:
        number = float(parts[0])
    except ValueError:
        raise ValueError(f"{variable}: interval {value!r}: {parts[0]!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{variable}: interval {value!r}: the number must be finite and >= 0")
    if unit != "second" and not number.is_integer():  # Spark's interval strings take fractions of seconds only
        raise ValueError(f"{variable}: interval {value!r}: only seconds may be fractional (Spark), e.g. "
                         f"'{int(number * 60 * _INTERVAL_UNITS[unit] * 60)} seconds'")
    return number * _INTERVAL_UNITS[unit]


#: an unquoted ClickHouse identifier (CLICKHOUSE_DATABASE is spliced into SQL as is)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Spark byte strings (JavaUtils.byteStringAs: number + b, k, kb, m, mb, g, gb, t, tb, p, pb; case-insensitive)
_SPARK_MEMORY = re.compile(r"(\d+)(?:[kmgtp]b?|b)?", re.IGNORECASE)
#: the JVM's -Xmx sizes (number + k, m, g, t; a bare number is bytes)
_JVM_MEMORY = re.compile(r"(\d+)[kmgt]?", re.IGNORECASE)
#: S3 bucket names (lower case, digits, '.', '-', 3-63 characters, alphanumeric at both ends)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")
#: characters of a Kafka topic name
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]*")

#: Airflow's cron presets (airflow.utils.dates.cron_presets), which its CronDataIntervalTimetable expands
_CRON_PRESETS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *",
                 "@quarterly": "0 0 1 */3 *", "@yearly": "0 0 1 1 *"}


def cron_schedule(value: str, variable: str, daily: bool = False) -> str:
    """Check a cron schedule as Airflow's ``CronDataIntervalTimetable`` reads it (presets such as ``@daily``
    expanded, five fields, parsed by croniter, Airflow's own cron library, imported here on first use).

    ``daily``: the DAG processes one UTC date per run, the date its data interval starts on (core.dagconf.target_date),
    so the schedule must fire exactly once every day, at one time of day: then each interval [D hh:mm, D+1 hh:mm)
    ends after day D did, and every date is loaded exactly once. ``0 8 * * 1-5`` would skip the weekend's dates,
    ``0 */12 * * *`` load each date twice, the first time while it is half over.

    Returns:
        ``value`` without surrounding blanks.
    Raises:
        ValueError: naming ``variable``, for a string that is not such a cron schedule.
    """
    from croniter import croniter

    expr = _CRON_PRESETS.get(value.strip(), value.strip())
    if len(expr.split()) != 5:
        raise ValueError(f"{variable} {value!r}: expected a cron expression of 5 fields (minute hour day-of-month "
                         f"month day-of-week, UTC), e.g. '0 8 * * *', or a preset ({', '.join(_CRON_PRESETS)})")
    try:
        cron = croniter(expr)
        cron.get_next(dt.datetime)   # a schedule that never fires (e.g. '0 0 30 2 *') fails here
    except Exception as exc:  # croniter's CroniterBadCronError / CroniterBadDateError / ValueError
        raise ValueError(f"{variable} {value!r}: not a valid cron expression ({exc})") from None
    if daily:
        minute, hour, dom, month, dow = cron.expanded[:5]
        if not (len(minute) == len(hour) == 1 and "*" not in (minute[0], hour[0])
                and dom == month == dow == ["*"]):
            raise ValueError(f"{variable} {value!r}: must fire exactly once every day (minute and hour fixed, "
                             "e.g. '0 8 * * *'): each run processes one UTC date, the day its data interval starts "
                             "on, so a schedule on some days only skips dates and one firing several times a day "
                             "processes a date more than once, the first time before it is over")
    return value.strip()


@functools.lru_cache(maxsize=1)
def _holiday_countries() -> dict[str, list[str]]:
    """{country code: its subdivision codes} of the ``holidays`` package (imported on first use)."""
    import holidays

    return holidays.list_supported_countries()


class Settings(BaseSettings):
    """Platform configuration. Field name == environment variable name (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_file=(str(_default_cache_dir() / "local.env"), ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,  # VAR= (empty, e.g. compose's ${VAR:-}) means "not set": default applies
    )

    # ---- paths -----------------------------------------------------------------------------
    retail_cache_dir: Path = Field(default_factory=_default_cache_dir,
                                   description="Cache for venv, jars, MinIO binary and local stack state.")
    retail_state_dir: Path | None = Field(default=None,
                                          description="Data of the native stack (Kafka logs, MinIO data, chDB, checkpoints). Default: $RETAIL_CACHE_DIR/state.")

    # ---- Kafka ------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(default="localhost:9092", description="Kafka bootstrap servers, host:port[,host:port].")
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535,
                                       description="Native broker's KRaft controller port.")
    kafka_version: str = Field(default="4.1.1", description="Native broker version (must match ops/kafka/pom.xml).")
    kafka_heap: str = Field(default="512m", description="Native broker JVM heap (-Xmx).")
    kafka_topic_prefix: str = Field(default="retail-", description="Prefix of every platform topic.")
    kafka_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, description="Topic retention (default 7 days).")

    # ---- ClickHouse -------------------------------------------------------------------------
    clickhouse_url: str | None = Field(
        default=None,
        description="http(s)://user:password@host:port of a ClickHouse HTTP interface (default: the native endpoint, "
                    "http://platform_writer:$CLICKHOUSE_WRITER_PASSWORD@$CLICKHOUSE_HTTP_HOST:$CLICKHOUSE_HTTP_PORT, "
                    "a wildcard host as 127.0.0.1) or chdb:///abs/path to open the embedded engine in this process "
                    "(single-process use only).")
    clickhouse_database: str = Field(default="retail", description="ClickHouse database of the platform.")
    clickhouse_http_host: str = Field(default="127.0.0.1", description="Native stack: address the ClickHouse HTTP endpoint (chserver, over chDB) listens on.")
    clickhouse_http_port: int = Field(
        default=8123, ge=1, le=65535,
        description="Port of the ClickHouse HTTP interface (native endpoint and compose's server).")
    clickhouse_chdb_path: Path | None = Field(default=None, description="Native stack: chDB data folder the HTTP endpoint owns. Default: $RETAIL_STATE_DIR/chdb.")
    clickhouse_admin_password: str | None = Field(default=None, description="Password of ClickHouse user `admin` (generated into local.env by setup).")
    clickhouse_writer_password: str | None = Field(default=None, description="Password of ClickHouse user `platform_writer`, used by the default CLICKHOUSE_URL (generated into local.env by setup).")
    clickhouse_bi_password: str | None = Field(default=None, description="Password of the read-only ClickHouse user `bi_reader` (dashboards, Power BI; generated into local.env by setup).")
    clickhouse_max_body_mb: int = Field(default=512, ge=1, description="Native endpoint: largest accepted request body (MiB, after decompression).")
    clickhouse_stream_batches_retention_days: int = Field(default=14, ge=2, le=3650, description="Days stream_batches (the streaming micro-batch log read by the stream-health views, the dashboard and Power BI) keeps a micro-batch's row after its commit (TTL on committed_at, applied by the migrations; whole days, 2 to 3650: the stream-health verdicts read the last 48 hours; a TTL past ClickHouse's DateTime range, 2106, wraps round and deletes every row). The latest row per query that the stream's start-up reads (a lost checkpoint's resume offsets, the restock alerts' closed-window bound) is kept without TTL in stream_batches_latest.")
    clickhouse_stream_retention_days: int = Field(default=30, description="Days the streaming window tables (sales_metrics_5m, store_metrics_5m) keep a window after its last write (TTL on updated_at, applied by the migrations). At least KAFKA_RETENTION_MS + the stream's look-backs (24 h history + 24 h stock anchors) + STREAM_WATERMARK: 10 days with the defaults. A store x SKU without any window in this span carries its stock from inventory_levels (no TTL).")

    # ---- Lake (MinIO / S3 or a local folder) --------------------------------------------------
    lake_url: str | None = Field(
        default=None,
        description="http(s)://host:port of MinIO/S3 (buckets raw-data, models, features) or a local folder "
                    "path / file:// URL. Default: the native MinIO at http://localhost:$MINIO_PORT.")
    lake_access_key: str | None = Field(default=None, description="Lake access key (S3 lakes only).")
    lake_secret_key: str | None = Field(default=None, description="Lake secret key (S3 lakes only).")
    lake_region: str = Field(default="us-east-1", description="S3 region name for the lake.")
    lake_raw_bucket: str = Field(default="raw-data", description="Bucket of raw events.")
    lake_models_bucket: str = Field(default="models", description="Bucket of trained models.")
    lake_features_bucket: str = Field(default="features", description="Bucket of feature tables and the ETL/ML staging files (reference data: the raw bucket, reference/).")

    # ---- native MinIO server ------------------------------------------------------------------
    minio_version: str = Field(default="v0.0.0-20260212201848-7aac2a2c5b7c",
                               description="Go module version of github.com/minio/minio built by setup.")
    minio_port: int = Field(default=9000, ge=1, le=65535, description="Native MinIO API port.")
    minio_console_port: int = Field(default=9001, ge=1, le=65535, description="Native MinIO console port.")
    minio_root_user: str | None = Field(default=None, description="Native MinIO root user (generated into local.env by setup; the native MinIO's root is LAKE_ACCESS_KEY when set, so compose's .env cannot split them).")
    minio_root_password: str | None = Field(default=None, description="Native MinIO root password (generated into local.env by setup; the native MinIO's root password is LAKE_SECRET_KEY when set).")

    # ---- Spark --------------------------------------------------------------------------------
    spark_master: str = Field(default="local[2]", description="Spark master URL.")
    spark_version: str = Field(default="4.0.0", description="Spark version; the Kafka connector uses the same.")
    spark_awssdk_version: str = Field(default="2.29.52", description="AWS SDK v2 modules (s3, s3-transfer-manager, sts) resolved with hadoop-aws for Spark's S3A lake access (ops/spark/s3a-pom.xml).")
    spark_driver_memory: str = Field(default="2g", description="Spark driver memory.")
    spark_shuffle_partitions: int = Field(default=4, ge=1, description="spark.sql.shuffle.partitions.")
    spark_checkpoint_dir: str | None = Field(default=None, description="Durable checkpoint root. Default: $RETAIL_STATE_DIR/checkpoints.")

    # ---- Streaming semantics -----------------------------------------------------------------
    stream_window: str = Field(default="5 minutes", description="Tumbling event-time window length.")
    stream_watermark: str = Field(default="10 minutes", description="Watermark delay (allowed lateness).")
    stream_trigger_seconds: float = Field(default=5.0, gt=0, description="Micro-batch trigger interval, seconds.")
    stream_max_offsets_per_trigger: int = Field(default=200_000, ge=1, description="Kafka maxOffsetsPerTrigger: at most this many records per micro-batch from each of the raw query's sources (one per topic) and from the windows query's source (sales + inventory updates together).")
    stream_state_store: Literal["rocksdb", "hdfs"] = Field(default="rocksdb", description="Streaming state store (deduplication and window state): rocksdb = Spark's RocksDB provider with changelog checkpointing, hdfs = Spark's default in-heap provider. New checkpoints only.")
    stream_starting_offsets: str = Field(default="earliest", description="Kafka startingOffsets for a new checkpoint.")
    stream_resume_lost_checkpoint: bool = Field(default=True, description="true: a raw query whose checkpoint holds no offsets while stream_batches records its micro-batches (the checkpoint was lost) resumes at the last recorded end offsets, each partition checked against the topic's current offsets (an offset beyond the end: that partition from its earliest offset, logged as an error); false: it starts from STREAM_STARTING_OFFSETS (a deliberate rebuild: records already in the lake are read into new files again). true or false.")
    stream_max_event_age_days: int = Field(default=36500, ge=1, description="Events older than this (vs the Kafka record timestamp: the broker's append time on the platform's topics) are quarantined as absurd.")
    stream_heartbeat_max_age_s: float = Field(default=60.0, gt=0, description="The streaming job counts as healthy while its heartbeat file ($RETAIL_STATE_DIR/streaming.heartbeat, touched every second while both queries run) is younger than this (seconds).")
    stream_max_future_minutes: int = Field(default=5, ge=0, description="Events whose event time is more than this many minutes ahead are rejected: dead-lettered by the producers (ahead of the send time), quarantined by the stream (ahead of the Kafka record timestamp: the broker's append time on the platform's topics, message.timestamp.type=LogAppendTime) (contracts.rule_violations). Must be below STREAM_WATERMARK: an accepted event lifts the windows' watermark to at most its send time + this - STREAM_WATERMARK, so on-time events are never dropped as late.")
    stream_sink_retry_seconds: float = Field(default=3600.0, ge=0, description="A micro-batch whose writes fail for an infrastructure reason (ClickHouse, lake or Kafka unreachable) is retried with exponential backoff for up to this many seconds, then the query fails (restart resumes from the checkpoint).")
    stream_startup_wait_seconds: float = Field(default=3600.0, ge=0, description="At start the streaming job waits for ClickHouse (migrations), Kafka (topics) and the lake, retrying on infrastructure errors with the sinks' backoff (0.5 s doubling up to STREAM_SINK_RETRY_MAX_WAIT_S) for up to this many seconds in all, logging what it waits for; then it exits with the error (the supervisor starts it again).")
    stream_clickhouse_timeout_seconds: int = Field(default=30, ge=1, description="Socket timeout (seconds) of the streaming job's ClickHouse requests (clickhouse-connect's send_receive_timeout; its own default, 300 s, applied until 2026-12-07): a request the endpoint leaves without an answer this long (endpoint stalled or frozen, a connection wedged after the insert was sent) fails as an outage and the micro-batch is retried on a new connection (STREAM_SINK_RETRY_SECONDS; its writes are idempotent). At most 30 (2026-12-07; the default was 60 that day): a stop waits for a request already sent, and must end within streaming.job.STOP_GRACE_SECONDS (40 s) and the supervisor's stopwaitsecs (60 s). Keep it well above the stream's longest request under load (a loaded micro-batch's history, inserts and alerts took 1.2 s together, its restock episodes and inventory_levels 1.9 s, on 2 busy cores: docs/benchmarks.md, Streaming). Batch jobs and migrations keep 300 s (the dashboard: DASHBOARD_CLICKHOUSE_TIMEOUT_SECONDS).")
    stream_sink_retry_max_wait_s: float = Field(default=30.0, gt=0, description="Longest wait between two retries of a micro-batch's writes (seconds; backoff 0.5 s doubling up to this).")
    stream_velocity_hours: float = Field(default=24.0, description="Trailing span of the streaming sales velocity, hours: a window's sales_velocity (units/hour) is the units sold by the store x SKU (or store) in the windows of the last STREAM_VELOCITY_HOURS up to the window's end (store x SKU: less the units returned in them, these netting at most the units the order's cap set aside, so never below order_velocity), divided by that span (shorter for a series first seen less than that ago); hours of cover, stock-out risk and restock quantities follow it (the quantities with an anomalous window winsorized: order_velocity). Must be > 0 and at most 24 (the window history the stream loads per micro-batch).")
    risk_high_hours: float = Field(default=24.0, description="Hours of cover below which stock-out risk is HIGH.")
    risk_medium_hours: float = Field(default=72.0, description="Hours of cover below which stock-out risk is MEDIUM.")

    # ---- Airflow ------------------------------------------------------------------------------
    airflow_port: int = Field(default=8080, ge=1, le=65535,
                              description="Native stack: port of the Airflow API server / UI (service `airflow`).")
    airflow_host: str = Field(default="127.0.0.1", min_length=1,
                              description="Native stack: address the Airflow API server / UI listens on (this machine only "
                                          "by default, as every native service).")
    airflow_worker_log_port: int = Field(default=8793, ge=1, le=65535,
                                         description="Native stack: port of the scheduler's task-log server (Airflow's "
                                                     "[logging] worker_log_server_port; Airflow 3.3 binds it on every "
                                                     "interface).")
    airflow_trigger_log_port: int = Field(default=8794, ge=1, le=65535,
                                          description="Native stack: port of the triggerer's log server (Airflow's "
                                                      "[logging] trigger_log_server_port; Airflow 3.3 binds it on every "
                                                      "interface).")
    airflow_clickhouse_pool_slots: int | None = Field(
        default=None, ge=1,
        description="Slots of the DAGs' Airflow pool `clickhouse` (tasks reading or writing ClickHouse at once; "
                    "python -m ops.entrypoint airflow-init, ops.airflow init). Default: 1 when CLICKHOUSE_URL is "
                    "chdb:// (one process per data path), else 4.")
    dashboard_port: int = Field(default=8501, ge=1, le=65535, description="Port of the live browser dashboard (Streamlit, service `dashboard`).")
    dashboard_host: str = Field(
        default="127.0.0.1", min_length=1,
        description="Address the live browser dashboard (Streamlit) listens on: this machine only by default; "
                    "compose sets 0.0.0.0 (all interfaces of the container, for its published port).")
    dashboard_refresh_s: float = Field(default=5.0, gt=0, le=10, description="Seconds between refreshes of the dashboard's live sections (at most 10).")
    dashboard_clickhouse_timeout_seconds: int = Field(default=30, ge=1, description="Socket timeout (seconds) of the live dashboard's ClickHouse requests: a request the endpoint leaves without an answer this long (endpoint frozen or stalled) fails, and the page says ClickHouse is not reachable and checks again every DASHBOARD_REFRESH_S (clickhouse-connect's own 300 s applied until 2026-12-07: the page showed nothing for 5 minutes). Keep it above the slowest dashboard query under load.")
    etl_schedule: str = Field(default="0 8 * * *", description="Cron schedule of daily_etl (UTC; once every day, minute and hour fixed: each run loads one date).")
    etl_start_date: dt.date | None = Field(
        default=None,
        description="First UTC date the scheduler catches daily_etl up from (YYYY-MM-DD, the DAG's start_date). "
                    "Unset (the default): ETL_CATCHUP_DAYS days before the day the DAG file is parsed, so a first "
                    "unpause on any install date loads a bounded number of nights. Set it to catch up from a fixed "
                    "date (a date years back makes years of runs when the DAG is first unpaused). Airflow creates no "
                    "task for a manual run dated before it (the run succeeds empty): load older dates with a "
                    "backfill (`airflow backfill create`, the UI's backfill) or `make nightly`.")
    etl_catchup_days: int = Field(
        default=14, ge=1, le=366,
        description="When ETL_START_DATE is unset: how many days before today (UTC) daily_etl catches up from "
                    "(days, 1..366). Nights missed while the scheduler was down longer than this are not created "
                    "by the scheduler: load them with a backfill or `make nightly`.")
    etl_recheck_days: int = Field(
        default=7, ge=0,
        description="Each daily_etl run also re-checks this many loaded days before its date (days): a day whose "
                    "raw partition changed since it was loaded (files added, replaced or removed: names, sizes, "
                    "modification times) is rebuilt, reloaded and reconciled again. 0 = no re-check.")
    etl_gap_check_days: int = Field(
        default=62, ge=1, le=3660,
        description="daily_etl's check_gaps looks this many days back from each run's date (days, 1..3660): days "
                    "with raw events never loaded, and loaded days older than ETL_RECHECK_DAYS whose raw files "
                    "changed since, are named every night until they lie more than this many days back; older ones "
                    "are not looked at, so the lake requests stay bounded as history grows (~4 per day checked). "
                    "Must be above ETL_RECHECK_DAYS.")
    training_schedule: str = Field(default="0 10 * * *", description="Cron schedule of demand_forecast_training (UTC; once every day, minute and hour fixed; after daily_etl, so it sees the day just loaded).")
    predictions_schedule: str | None = Field(default=None, description="Cron schedule of batch_predictions (default: triggered after training).")
    store_country_default: str = Field(default="GB", description="ISO country used for holidays when a store has none.")
    service_level: float = Field(default=0.95, description="Target cycle service level for safety stock.")
    lead_time_days: int = Field(default=3, ge=0, description="Supplier lead time in days.")
    weather_file: str | None = Field(default=None, description="Optional CSV (date, country, temp_c, precip_mm) of daily weather.")
    order_cost: float = Field(default=50.0, gt=0, description="Fixed cost per replenishment order (EOQ's S), currency.")
    holding_cost_rate: float = Field(
        default=0.25, gt=0,
        description="Yearly holding cost as a fraction of unit cost (EOQ's H = rate * unit cost).")
    order_max_cover_days: int = Field(
        default=180, ge=1, le=3650,
        description="No reorder beyond this many days of forecast demand (stock + on order + order; days, "
                    "1..3650, above LEAD_TIME_DAYS) unless the reorder point needs more: caps the EOQ's time "
                    "supply, which for cheap slow movers is years of demand (Silver, Pyke & Thomas 2017 ch. 4, "
                    "limits on the EOQ's time supply). 180 = half a year.")
    order_count_open_recommendations: bool = Field(
        default=True,
        description="true: the nightly reorder plan takes its own recommendations as placed orders: on order = the "
                    "units recommended on the LEAD_TIME_DAYS nights before (reorder_recommendations) less the "
                    "RESTOCK units received since (fact_inventory.units_received, first in first out over twice the lead "
                    "time); older orders count as received or lost; only rows written with this setting true count. false: nothing is on order (orders are placed elsewhere and the "
                    "platform does not see them; an order not yet received is recommended again). true or false.")
    forecast_horizon: int = Field(default=14, ge=1, le=28, description="Forecast horizon in days (1..28): backtest, intervals and the batch predictions.")
    forecast_backtest_origins: int = Field(default=4, description="Rolling-origin backtest: number of forecast origins (FORECAST_ORIGIN_STEP_DAYS apart).")
    forecast_origin_step_days: int = Field(default=30, ge=1, description="Days between backtest origins (not a multiple of 7, so each horizon falls on several weekdays).")
    forecast_backtest_series: int = Field(default=2000, ge=0, description="Backtest (GBT refits + baselines + scores) on at most this many store x SKU series, a seeded bottom-k hash sample stable across nights; 0 = all. Every series when the feature table holds at most FORECAST_MAX_TRAIN_ROWS known rows (the sample's refits would learn from a fraction of the final model's rows). The final model trains on every series.")
    forecast_max_train_rows: int = Field(default=1_000_000, ge=0, description="Each GBT fit (backtest refits and the final model) on a seeded uniform sample of at most this many training rows (series x target day); 0 = all. Bounds the fit's time at chain scale; raise it with the Spark cluster.")
    forecast_stats_jobs: int = Field(default=-1, ge=-1, description="Processes fitting the statsforecast baseline in the training driver (-1 = all its cores).")
    forecast_train_window_days: int = Field(default=365, description="Forecast training window, days of targets before the origin.")
    forecast_gbt_max_iter: int = Field(default=40, ge=1, description="GBTRegressor maxIter (trees).")
    forecast_gbt_max_depth: int = Field(default=5, ge=1, description="GBTRegressor maxDepth.")

    # ---- validators ---------------------------------------------------------------------------
    @field_validator("stream_clickhouse_timeout_seconds")
    @classmethod
    def _check_stream_clickhouse_timeout(cls, v: int) -> int:
        if v > STREAM_CLICKHOUSE_TIMEOUT_MAX_S:
            raise ValueError(f"{v} s is above {STREAM_CLICKHOUSE_TIMEOUT_MAX_S}: a stop (SIGTERM) waits for a "
                             "ClickHouse request already sent, and must end within streaming.job.STOP_GRACE_SECONDS "
                             "(40 s) and the supervisor's stopwaitsecs for the streaming program (60 s; then SIGKILL)")
        return v

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, v: str) -> str:
        for part in v.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {v!r}")
        return v

    @field_validator("service_level")
    @classmethod
    def _check_service_level(cls, v: float) -> float:
        if not 0.5 <= v < 1:
            raise ValueError("must be in [0.5, 1)")
        return v

    @field_validator("lake_url")
    @classmethod
    def _check_lake_url(cls, v: str | None) -> str | None:
        # core.lake treats anything but http(s) as a local folder: s3://bucket or minio:9000 would silently
        # write below the working directory, so only the forms it understands pass
        if v is None:
            return v
        u = urlparse(v)
        if u.scheme in ("http", "https"):
            if not u.hostname:
                raise ValueError(f"LAKE_URL {v!r}: an http(s) lake URL needs a host, e.g. http://localhost:9000")
        elif u.scheme == "file":
            if u.netloc not in ("", "localhost") or not u.path.startswith("/"):
                raise ValueError(f"LAKE_URL {v!r}: a file URL needs an absolute path, e.g. file:///data/lake")
        elif u.scheme or not v.startswith("/"):
            raise ValueError(f"LAKE_URL {v!r}: expected http://host:port, https://host:port, file:///abs/path "
                             "or an absolute folder path")
        return v

    @field_validator("stream_window", "stream_watermark")
    @classmethod
    def _check_interval(cls, v: str, info: ValidationInfo) -> str:
        hours = interval_hours(v, info.field_name.upper())  # the streaming job parses them with it too (streaming.sinks)
        if info.field_name == "stream_window" and hours <= 0:
            raise ValueError(f"STREAM_WINDOW {v!r}: the window length must be > 0")
        return v

    @field_validator("etl_schedule", "training_schedule")
    @classmethod
    def _check_daily_schedule(cls, v: str, info: ValidationInfo) -> str:
        # both DAGs process the UTC date their data interval starts on (core.dagconf.target_date)
        return cron_schedule(v, info.field_name.upper(), daily=True)

    @field_validator("predictions_schedule")
    @classmethod
    def _check_predictions_schedule(cls, v: str | None) -> str | None:
        # a bad cron otherwise surfaced only as the DAG missing from the DagBag (AirflowTimetableInvalid)
        return v if v is None else cron_schedule(v, "PREDICTIONS_SCHEDULE")

    @field_validator("clickhouse_database")
    @classmethod
    def _check_database(cls, v: str) -> str:
        # spliced unquoted into every statement (CREATE DATABASE {db}, {db}.fact_sales): an identifier only
        if not _IDENTIFIER.fullmatch(v):
            raise ValueError(f"CLICKHOUSE_DATABASE {v!r}: expected an identifier (letters, digits, _; not starting "
                             "with a digit), e.g. retail_prod")
        return v

    @field_validator("spark_driver_memory", "kafka_heap")
    @classmethod
    def _check_memory(cls, v: str, info: ValidationInfo) -> str:
        # Spark's byte strings (spark.driver.memory: 512m, 2g, 1024mb; a bare number is MiB) / the JVM's -Xmx
        # (512m, 2g, no 'b'); anything else fails only when spark-submit or the broker starts
        pattern = _SPARK_MEMORY if info.field_name == "spark_driver_memory" else _JVM_MEMORY
        m = pattern.fullmatch(v.strip())
        if not m or int(m.group(1)) <= 0:
            raise ValueError(f"{info.field_name.upper()} {v!r}: expected a JVM memory size > 0 such as 512m or 2g")
        return v.strip()

    @field_validator("lake_raw_bucket", "lake_models_bucket", "lake_features_bucket")
    @classmethod
    def _check_bucket(cls, v: str, info: ValidationInfo) -> str:
        # S3 bucket naming rules (MinIO refuses others when the buckets are created)
        if not _BUCKET.fullmatch(v) or ".." in v or _IPV4.fullmatch(v):
            raise ValueError(f"{info.field_name.upper()} {v!r}: not an S3 bucket name (3-63 characters: lower-case "
                             "letters, digits, '.', '-'; starting and ending with a letter or digit)")
        return v

    @field_validator("kafka_topic_prefix")
    @classmethod
    def _check_topic_prefix(cls, v: str) -> str:
        if not _TOPIC_CHARS.fullmatch(v) or len(v) > 200:
            raise ValueError(f"KAFKA_TOPIC_PREFIX {v!r}: Kafka topic names take letters, digits, '.', '_', '-' "
                             "only (at most 200 characters for the prefix)")
        return v

    @field_validator("kafka_retention_ms")
    @classmethod
    def _check_retention(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError(f"KAFKA_RETENTION_MS {v}: must be >= 1 (milliseconds) or -1 (no limit)")
        return v

    @field_validator("stream_resume_lost_checkpoint", mode="before")
    @classmethod
    def _check_resume_lost_checkpoint(cls, v):
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        raise ValueError(f"STREAM_RESUME_LOST_CHECKPOINT {v!r}: expected true or false")

    @field_validator("stream_starting_offsets")
    @classmethod
    def _check_starting_offsets(cls, v: str) -> str:
        # Spark's Kafka source: earliest, latest or a JSON object of offsets per topic/partition
        if v in ("earliest", "latest"):
            return v
        import json

        try:
            ok = isinstance(json.loads(v), dict)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"STREAM_STARTING_OFFSETS {v!r}: expected earliest, latest or a JSON object "
                             '(e.g. {"retail-sales-transactions": {"0": 42}})')
        return v

    @field_validator("forecast_backtest_origins", "forecast_train_window_days")
    @classmethod
    def _check_positive(cls, v: int, info: ValidationInfo) -> int:
        # 0 origins: no backtest, so no champion; a window <= 0 days: nothing to train on
        if v < 1:
            raise ValueError(f"{info.field_name.upper()} {v}: must be >= 1")
        return v

    @field_validator("forecast_stats_jobs")
    @classmethod
    def _check_stats_jobs(cls, v: int) -> int:
        if v == 0:  # ml.forecast.ForecastConfig refuses it, at training time
            raise ValueError("FORECAST_STATS_JOBS 0: must be -1 (all cores) or >= 1")
        return v

    @field_validator("risk_high_hours", "risk_medium_hours")
    @classmethod
    def _check_risk_hours_bound(cls, v: float, info: ValidationInfo) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{info.field_name.upper()} {v}: hours of cover, must be finite and >= 0")
        return v

    @field_validator("store_country_default")
    @classmethod
    def _check_country(cls, v: str) -> str:
        # the forms etl.star_schema looks up: "GB" or an ISO 3166-2 subdivision such as "GB-SCT"
        country, _, subdiv = v.strip().upper().partition("-")
        supported = _holiday_countries()
        if country not in supported:
            raise ValueError(f"STORE_COUNTRY_DEFAULT {v!r}: not a country code the holidays package supports "
                             "(holidays.list_supported_countries(), e.g. GB, US, DE)")
        if subdiv and subdiv not in supported[country]:
            raise ValueError(f"STORE_COUNTRY_DEFAULT {v!r}: {country} has no subdivision {subdiv!r} in the holidays "
                             f"package (known: {', '.join(supported[country]) or 'none'})")
        return v.strip().upper()

    @model_validator(mode="after")
    def _check_risk_hours(self) -> "Settings":
        if not self.risk_high_hours < self.risk_medium_hours:
            raise ValueError(f"RISK_HIGH_HOURS ({self.risk_high_hours}) must be below RISK_MEDIUM_HOURS "
                             f"({self.risk_medium_hours}): below the first stock-out risk is HIGH, below the second "
                             "MEDIUM")
        return self

    @field_validator("stream_velocity_hours")
    @classmethod
    def _check_velocity_hours(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 < v <= STREAM_HISTORY_HOURS):
            raise ValueError(f"STREAM_VELOCITY_HOURS ({v}) must be > 0 and at most {STREAM_HISTORY_HOURS:g}: the "
                             "streaming job loads that many hours of window history per micro-batch (the anomaly "
                             "look-back), and the trailing sales rate is summed from it")
        return v

    @model_validator(mode="after")
    def _check_order_cover(self) -> "Settings":
        # a cover cap not beyond the lead time leaves ROP - IP as the only order size: one top-up per sale
        if not self.order_max_cover_days > self.lead_time_days:
            raise ValueError(
                f"ORDER_MAX_COVER_DAYS ({self.order_max_cover_days}) must be above LEAD_TIME_DAYS "
                f"({self.lead_time_days}): an order capped at less cover than the lead time only tops the "
                "inventory position up to the reorder point, one small order after each sale")
        return self

    @model_validator(mode="after")
    def _check_gap_look_back(self) -> "Settings":
        # check_gaps names loaded days whose raw files changed only once they are older than the re-check window
        # (etl.star_schema.late_changed_days: ETL_RECHECK_DAYS + 1 .. ETL_GAP_CHECK_DAYS days back): a look-back
        # not beyond the window would check no such day, silently
        if not self.etl_gap_check_days > self.etl_recheck_days:
            raise ValueError(
                f"ETL_GAP_CHECK_DAYS ({self.etl_gap_check_days}) must be above ETL_RECHECK_DAYS "
                f"({self.etl_recheck_days}): check_gaps names late raw files only on loaded days older than the "
                "re-check window, and looks back ETL_GAP_CHECK_DAYS days")
        return self

    @model_validator(mode="after")
    def _check_stream_retention(self) -> "Settings":
        # a restarted stream reads Kafka back up to KAFKA_RETENTION_MS, and each micro-batch reads the stored
        # windows of its own span less 24 h (anomaly baseline, velocity) less 24 h (stock anchors): those must
        # not have been deleted by the TTL when it does
        need_h = (self.kafka_retention_ms / 3_600_000 + STREAM_HISTORY_HOURS + STREAM_ANCHOR_LOOKBACK_HOURS
                  + interval_hours(self.stream_watermark, "STREAM_WATERMARK"))
        if self.clickhouse_stream_retention_days * 24 < need_h:
            raise ValueError(
                f"CLICKHOUSE_STREAM_RETENTION_DAYS ({self.clickhouse_stream_retention_days}) must be at least "
                f"{math.ceil(need_h / 24)} days: the stream may re-read Kafka back KAFKA_RETENTION_MS "
                f"({self.kafka_retention_ms / 86_400_000:g} days) and then reads the windows of the "
                f"{STREAM_HISTORY_HOURS:g} h + {STREAM_ANCHOR_LOOKBACK_HOURS:g} h before them, plus STREAM_WATERMARK "
                f"({self.stream_watermark!r}); a shorter TTL deletes windows it still reads")
        return self

    @model_validator(mode="after")
    def _check_future_below_watermark(self) -> "Settings":
        # the windows' watermark is the largest event time seen - STREAM_WATERMARK; an event accepted up to
        # STREAM_MAX_FUTURE_MINUTES ahead of its send time would otherwise lift it past the events sent with it
        watermark_min = interval_hours(self.stream_watermark, "STREAM_WATERMARK") * 60
        if not self.stream_max_future_minutes < watermark_min:
            raise ValueError(
                f"STREAM_MAX_FUTURE_MINUTES ({self.stream_max_future_minutes} min) must be below STREAM_WATERMARK "
                f"({self.stream_watermark!r} = {watermark_min:g} min): an event accepted that far ahead of its send "
                "time lifts the watermark (largest event time - STREAM_WATERMARK) to or past the send time, and the "
                "on-time events of every store sent after it are dropped from the windows as late")
        return self

    @model_validator(mode="after")
    def _derive(self) -> "Settings":
        if self.retail_state_dir is None:
            self.retail_state_dir = self.retail_cache_dir / "state"
        if self.clickhouse_chdb_path is None:
            self.clickhouse_chdb_path = self.retail_state_dir / "chdb"
        if self.clickhouse_url is None:
            pw = quote(self.clickhouse_writer_password or "", safe="")
            host = self.clickhouse_http_host.strip("[]")
            host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # a wildcard address: this machine
            host = f"[{host}]" if ":" in host else host
            self.clickhouse_url = f"http://{WRITER_USER}:{pw}@{host}:{self.clickhouse_http_port}"
        scheme = urlparse(self.clickhouse_url).scheme
        if scheme not in ("chdb", "http", "https"):
            raise ValueError(f"CLICKHOUSE_URL must start with chdb://, http:// or https://, got {self.clickhouse_url!r}")
        if self.lake_url is None:
            self.lake_url = f"http://localhost:{self.minio_port}"
        if self.spark_checkpoint_dir is None:
            self.spark_checkpoint_dir = str(self.retail_state_dir / "checkpoints")
        return self

    # ---- derived helpers ----------------------------------------------------------------------
    @property
    def lake_is_s3(self) -> bool:
        """True when the lake is an S3 endpoint (MinIO), False for a local folder."""
        return urlparse(self.lake_url).scheme in ("http", "https")

    def require(self, *names: str) -> None:
        """Fail fast unless every named setting is set.

        Raises:
            ConfigError: naming the first missing environment variable.
        """
        for name in names:
            if getattr(self, name) in (None, ""):
                raise ConfigError(f"setting {name.upper()} is required but not set "
                                  f"(export it, or run `python -m ops.cli setup` to generate local credentials)")

    def clickhouse_users(self) -> dict[str, tuple[str | None, bool]]:
        """The endpoint's users: ``{name: (password, readonly)}``; ``admin`` and ``platform_writer`` may write,
        ``bi_reader`` is read-only (ClickHouse's readonly=1). There is no passwordless ``default`` user."""
        return {"admin": (self.clickhouse_admin_password, False),
                WRITER_USER: (self.clickhouse_writer_password, False),
                BI_USER: (self.clickhouse_bi_password, True)}

    def topic(self, name: str) -> str:
        """Full topic name for a logical name, e.g. ``topic('sales-transactions')``."""
        return f"{self.kafka_topic_prefix}{name}"


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` after changing env).

    Raises:
        ConfigError: a setting is invalid; the message names the environment variable.
    """
    try:
        return Settings()
    except ValidationError as exc:  # translate to a message naming the variable
        msgs = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            msgs.append(f"{loc.upper()}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(msgs)) from None


def config_table_markdown() -> str:
    """The README's configuration table: one Markdown row per environment variable of :class:`Settings`.

    Returns:
        Markdown table text (header, separator, then ``| `NAME` | default | description |`` rows in declaration
        order, no trailing newline); a default built by a factory or ``None`` reads ``(derived)``.
    """
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = None if field.default_factory is not None else field.default
        default = "(derived)" if default is None else f"`{default}`"
        rows.append(f"| `{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(rows)
