"""The settings module: defaults derive from the state folder, bad configuration fails fast naming the variable."""

import secrets

import pytest

from core.settings import ConfigError, Settings, get_settings


@pytest.fixture(autouse=True)
def _clear_cache():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_derive_from_state_dir(monkeypatch, tmp_path):
    for var in ("CLICKHOUSE_URL", "LAKE_URL", "SPARK_CHECKPOINT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RETAIL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MINIO_PORT", "9123")
    monkeypatch.setenv("CLICKHOUSE_HTTP_PORT", "8124")
    token = secrets.token_urlsafe(12)  # [A-Za-z0-9_-]: left as is by URL quoting
    monkeypatch.setenv("CLICKHOUSE_WRITER_PASSWORD", token + "/+@")
    s = get_settings()
    # one client path: the native endpoint over HTTP as platform_writer, password URL-quoted
    assert s.clickhouse_url == f"http://platform_writer:{token}%2F%2B%40@127.0.0.1:8124"  # CLICKHOUSE_HTTP_HOST
    assert s.clickhouse_chdb_path == tmp_path / "chdb"
    assert s.lake_url == "http://localhost:9123"
    assert s.spark_checkpoint_dir == str(tmp_path / "checkpoints")
    assert s.lake_is_s3
    assert s.topic("sales-transactions") == "retail-sales-transactions"


@pytest.mark.parametrize("var,value,needle", [
    ("KAFKA_BOOTSTRAP_SERVERS", "no-port-here", "KAFKA_BOOTSTRAP_SERVERS"),
    ("CLICKHOUSE_URL", "mysql://x", "CLICKHOUSE_URL"),
    ("MINIO_PORT", "not-a-number", "MINIO_PORT"),
    ("SERVICE_LEVEL", "1.5", "SERVICE_LEVEL"),
    # LAKE_URL: only http(s)://host, file:///abs or an absolute folder (core.lake writes anything else locally)
    ("LAKE_URL", "s3://bucket", "LAKE_URL"),
    ("LAKE_URL", "minio:9000", "LAKE_URL"),
    ("LAKE_URL", "relative/lake", "LAKE_URL"),
    ("LAKE_URL", "file://relative/lake", "LAKE_URL"),
    ("LAKE_URL", "http://", "LAKE_URL"),
    # ports 1..65535
    ("KAFKA_CONTROLLER_PORT", "0", "KAFKA_CONTROLLER_PORT"),
    ("CLICKHOUSE_HTTP_PORT", "65536", "CLICKHOUSE_HTTP_PORT"),
    ("MINIO_PORT", "0", "MINIO_PORT"),
    ("MINIO_CONSOLE_PORT", "-1", "MINIO_CONSOLE_PORT"),
    ("AIRFLOW_PORT", "70000", "AIRFLOW_PORT"),
    ("DASHBOARD_PORT", "0", "DASHBOARD_PORT"),
    # bounds of the batch and streaming knobs
    ("LEAD_TIME_DAYS", "-1", "LEAD_TIME_DAYS"),
    ("ORDER_COST", "0", "ORDER_COST"),
    ("HOLDING_COST_RATE", "0", "HOLDING_COST_RATE"),
    ("HOLDING_COST_RATE", "-0.25", "HOLDING_COST_RATE"),
    ("ORDER_MAX_COVER_DAYS", "0", "ORDER_MAX_COVER_DAYS"),
    ("ORDER_MAX_COVER_DAYS", "3651", "ORDER_MAX_COVER_DAYS"),
    ("ORDER_MAX_COVER_DAYS", "half-a-year", "ORDER_MAX_COVER_DAYS"),
    ("ORDER_MAX_COVER_DAYS", "3", "LEAD_TIME_DAYS (3)"),   # not above the default lead time: top-ups only
    ("ORDER_COUNT_OPEN_RECOMMENDATIONS", "sometimes", "ORDER_COUNT_OPEN_RECOMMENDATIONS"),   # true or false
    ("SPARK_SHUFFLE_PARTITIONS", "0", "SPARK_SHUFFLE_PARTITIONS"),
    ("STREAM_TRIGGER_SECONDS", "0", "STREAM_TRIGGER_SECONDS"),
    ("FORECAST_GBT_MAX_ITER", "0", "FORECAST_GBT_MAX_ITER"),
    ("FORECAST_GBT_MAX_DEPTH", "0", "FORECAST_GBT_MAX_DEPTH"),
    ("AIRFLOW_CLICKHOUSE_POOL_SLOTS", "0", "AIRFLOW_CLICKHOUSE_POOL_SLOTS"),
    ("AIRFLOW_CLICKHOUSE_POOL_SLOTS", "four", "AIRFLOW_CLICKHOUSE_POOL_SLOTS"),
    # interval strings, parsed as the streaming job parses them
    ("STREAM_WINDOW", "5 fortnights", "STREAM_WINDOW"),
    ("STREAM_WINDOW", "five minutes", "STREAM_WINDOW"),
    ("STREAM_WINDOW", "5minutes", "STREAM_WINDOW"),
    ("STREAM_WINDOW", "0 minutes", "STREAM_WINDOW"),
    ("STREAM_WATERMARK", "10", "STREAM_WATERMARK"),
    ("STREAM_WATERMARK", "-1 minutes", "STREAM_WATERMARK"),
    ("STREAM_WINDOW", "2.5 minutes", "STREAM_WINDOW"),                  # Spark: only seconds may be fractional
    ("STREAM_MAX_EVENT_AGE_DAYS", "0", "STREAM_MAX_EVENT_AGE_DAYS"),    # would quarantine every event
    ("STREAM_MAX_OFFSETS_PER_TRIGGER", "0", "STREAM_MAX_OFFSETS_PER_TRIGGER"),
    ("CLICKHOUSE_MAX_BODY_MB", "0", "CLICKHOUSE_MAX_BODY_MB"),
    ("STREAM_HEARTBEAT_MAX_AGE_S", "-5", "STREAM_HEARTBEAT_MAX_AGE_S"),
    # the trailing sales rate: > 0 and within the 24 h of window history the stream loads
    ("STREAM_VELOCITY_HOURS", "0", "STREAM_VELOCITY_HOURS"),
    ("STREAM_VELOCITY_HOURS", "-1", "STREAM_VELOCITY_HOURS"),
    ("STREAM_VELOCITY_HOURS", "24.5", "STREAM_VELOCITY_HOURS"),
    ("STREAM_VELOCITY_HOURS", "nan", "STREAM_VELOCITY_HOURS"),
    # a country (or ISO 3166-2 subdivision) the holidays package has a calendar for
    ("STORE_COUNTRY_DEFAULT", "XX", "STORE_COUNTRY_DEFAULT"),
    ("STORE_COUNTRY_DEFAULT", "GB-XYZ", "STORE_COUNTRY_DEFAULT"),
    # daily_etl and demand_forecast_training process the date their data interval starts on: once every day
    ("ETL_SCHEDULE", "0 8 * * 1-5", "ETL_SCHEDULE"),
    ("ETL_SCHEDULE", "0 */12 * * *", "ETL_SCHEDULE"),
    ("TRAINING_SCHEDULE", "0 10 * * 0", "TRAINING_SCHEDULE"),    # would train on a week-old date
    ("TRAINING_SCHEDULE", "@hourly", "TRAINING_SCHEDULE"),
    # cron syntax: before, the DAG vanished from the DagBag with AirflowTimetableInvalid naming no variable
    ("ETL_SCHEDULE", "every night", "ETL_SCHEDULE"),
    ("ETL_SCHEDULE", "0 25 * * *", "ETL_SCHEDULE"),
    ("TRAINING_SCHEDULE", "0 10 * * * *", "TRAINING_SCHEDULE"),
    ("PREDICTIONS_SCHEDULE", "bogus", "PREDICTIONS_SCHEDULE"),
    ("PREDICTIONS_SCHEDULE", "0 0 30 2 *", "PREDICTIONS_SCHEDULE"),      # never fires
    ("ETL_START_DATE", "yesterday", "ETL_START_DATE"),
    ("ETL_CATCHUP_DAYS", "0", "ETL_CATCHUP_DAYS"),       # no day to catch up: the first unpause would load nothing
    ("ETL_CATCHUP_DAYS", "-3", "ETL_CATCHUP_DAYS"),
    # spliced unquoted into SQL: before, migrate() failed with a ClickHouse syntax error
    ("CLICKHOUSE_DATABASE", "retail-prod", "CLICKHOUSE_DATABASE"),
    ("CLICKHOUSE_DATABASE", "1retail", "CLICKHOUSE_DATABASE"),
    ("CLICKHOUSE_DATABASE", "retail; DROP DATABASE x", "CLICKHOUSE_DATABASE"),
    # bounds: before, accepted and failing (or meaningless) only in the nightly jobs
    ("FORECAST_BACKTEST_ORIGINS", "0", "FORECAST_BACKTEST_ORIGINS"),
    ("FORECAST_TRAIN_WINDOW_DAYS", "-5", "FORECAST_TRAIN_WINDOW_DAYS"),
    ("FORECAST_STATS_JOBS", "0", "FORECAST_STATS_JOBS"),
    ("RISK_HIGH_HOURS", "-3", "RISK_HIGH_HOURS"),
    ("RISK_MEDIUM_HOURS", "inf", "RISK_MEDIUM_HOURS"),
    ("KAFKA_RETENTION_MS", "0", "KAFKA_RETENTION_MS"),
    # JVM memory sizes: before, failing when spark-submit or the broker started
    ("SPARK_DRIVER_MEMORY", "lots", "SPARK_DRIVER_MEMORY"),
    ("SPARK_DRIVER_MEMORY", "2.5g", "SPARK_DRIVER_MEMORY"),
    ("SPARK_DRIVER_MEMORY", "0g", "SPARK_DRIVER_MEMORY"),
    ("KAFKA_HEAP", "512mb", "KAFKA_HEAP"),
    # names MinIO / Kafka / Spark's Kafka source refuse later
    ("LAKE_RAW_BUCKET", "Raw_Data", "LAKE_RAW_BUCKET"),
    ("LAKE_MODELS_BUCKET", "m", "LAKE_MODELS_BUCKET"),
    ("LAKE_FEATURES_BUCKET", "-features", "LAKE_FEATURES_BUCKET"),
    ("KAFKA_TOPIC_PREFIX", "retail prod/", "KAFKA_TOPIC_PREFIX"),
    ("STREAM_STARTING_OFFSETS", "oldest", "STREAM_STARTING_OFFSETS"),
])
def test_bad_configuration_names_the_variable(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert needle in str(err.value)


@pytest.mark.parametrize("high,medium", [("72", "24"), ("24", "24")])
def test_risk_thresholds_must_be_ordered(monkeypatch, high, medium):
    monkeypatch.setenv("RISK_HIGH_HOURS", high)
    monkeypatch.setenv("RISK_MEDIUM_HOURS", medium)
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert "RISK_HIGH_HOURS" in str(err.value) and "RISK_MEDIUM_HOURS" in str(err.value)


@pytest.mark.parametrize("gap,recheck,ok", [("7", "7", False), ("62", "90", False), ("8", "7", True),
                                             ("62", None, True), ("1", "0", True)])
def test_gap_look_back_must_exceed_the_recheck_window(monkeypatch, gap, recheck, ok):
    """check_gaps names late raw files only on loaded days older than the re-check window, up to ETL_GAP_CHECK_DAYS
    back: a look-back not beyond ETL_RECHECK_DAYS (7 and 7, or 62 and 90) checked no such day and said nothing."""
    monkeypatch.setenv("ETL_GAP_CHECK_DAYS", gap)
    if recheck is not None:
        monkeypatch.setenv("ETL_RECHECK_DAYS", recheck)
    if ok:
        assert get_settings().etl_gap_check_days == int(gap)
        return
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert "ETL_GAP_CHECK_DAYS" in str(err.value) and "ETL_RECHECK_DAYS" in str(err.value)


@pytest.mark.parametrize("future,watermark", [("60", "10 minutes"), ("10", "10 minutes"), ("5", "300 seconds"),
                                              ("0", "0 seconds"), ("2", "90 seconds")])
def test_future_bound_must_be_below_the_watermark(monkeypatch, future, watermark):
    """An event accepted STREAM_MAX_FUTURE_MINUTES ahead of its send time lifts the global watermark to send time +
    that - STREAM_WATERMARK: at or past the send time, it drops every store's on-time events (the default 60 min
    against a 10 min watermark dropped 300 of 300)."""
    monkeypatch.setenv("STREAM_MAX_FUTURE_MINUTES", future)
    monkeypatch.setenv("STREAM_WATERMARK", watermark)
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert "STREAM_MAX_FUTURE_MINUTES" in str(err.value) and "STREAM_WATERMARK" in str(err.value)


def test_velocity_span_default_edges_and_the_sinks_look_back():
    from core.settings import STREAM_HISTORY_HOURS
    from streaming.sinks import ANOMALY_HORIZON_HOURS

    assert Settings(_env_file=None).stream_velocity_hours == 24.0
    assert Settings(_env_file=None, stream_velocity_hours=0.25).stream_velocity_hours == 0.25
    assert STREAM_HISTORY_HOURS == ANOMALY_HORIZON_HOURS == 24.0   # the bound is the history the sink loads


@pytest.mark.parametrize("days,kafka_ms,watermark", [("9", None, None), ("3", None, None),
                                                       ("30", str(40 * 86_400_000), None), ("10", None, "2 days")])
def test_stream_retention_must_cover_what_the_stream_reads_back(monkeypatch, days, kafka_ms, watermark):
    """The windows' TTL (CLICKHOUSE_STREAM_RETENTION_DAYS) must outlast a re-read of Kafka (KAFKA_RETENTION_MS) plus
    the stream's look-backs (24 h history + 24 h stock anchors) plus STREAM_WATERMARK: 7 + 2 + 10 min = 10 days."""
    monkeypatch.setenv("CLICKHOUSE_STREAM_RETENTION_DAYS", days)
    if kafka_ms:
        monkeypatch.setenv("KAFKA_RETENTION_MS", kafka_ms)
    if watermark:
        monkeypatch.setenv("STREAM_WATERMARK", watermark)
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert "CLICKHOUSE_STREAM_RETENTION_DAYS" in str(err.value) and "KAFKA_RETENTION_MS" in str(err.value)


def test_stream_retention_default_and_edge():
    from core.settings import STREAM_ANCHOR_LOOKBACK_HOURS
    from streaming.sinks import ANCHOR_LOOKBACK_HOURS

    assert Settings(_env_file=None).clickhouse_stream_retention_days == 30
    assert Settings(_env_file=None, clickhouse_stream_retention_days=10).clickhouse_stream_retention_days == 10
    assert ANCHOR_LOOKBACK_HOURS == STREAM_ANCHOR_LOOKBACK_HOURS   # the bound is what the sink reads back


@pytest.mark.parametrize("days", ["0", "1", "-3", "two weeks", "36500"])
def test_stream_batches_retention_must_be_a_whole_number_of_days_from_2_to_3650(monkeypatch, days):
    """CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS (the TTL of stream_batches, migration 083) refuses 0, 1 (the stream-health
    verdicts read the last 48 hours), negatives, text and more than 3650 days (measured on chDB: a TTL of 36,500 days wraps past DateTime's 2106 and deleted every row
    at the next merge), naming the variable; the default is 14."""
    monkeypatch.setenv("CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS", days)
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert "CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS" in str(err.value)
    assert Settings(_env_file=None, clickhouse_stream_batches_retention_days=2).clickhouse_stream_batches_retention_days == 2
    monkeypatch.delenv("CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS")
    assert Settings(_env_file=None).clickhouse_stream_batches_retention_days == 14


def test_future_bound_default_and_edges():
    d = Settings(_env_file=None)
    assert d.stream_max_future_minutes == 5 and d.stream_watermark == "10 minutes"
    assert Settings(_env_file=None, stream_max_future_minutes=9).stream_max_future_minutes == 9
    assert Settings(_env_file=None, stream_max_future_minutes=1, stream_watermark="61 seconds").stream_watermark \
        == "61 seconds"


def test_valid_edge_values_are_accepted(monkeypatch, tmp_path):
    """The validations reject only what the code cannot use: these forms keep working."""
    for url in (str(tmp_path / "lake"), f"file://{tmp_path}/lake", "https://lake.example:9443", "http://minio:9000"):
        assert Settings(_env_file=None, lake_url=url).lake_url == url
    s = Settings(_env_file=None, lead_time_days=0, stream_watermark="30 seconds", stream_window="1 hour",
                 stream_max_future_minutes=0,
                 store_country_default="gb-sct", risk_high_hours=0, risk_medium_hours=0.5,
                 airflow_clickhouse_pool_slots=1)
    assert s.lead_time_days == 0 and s.store_country_default == "GB-SCT" and s.airflow_clickhouse_pool_slots == 1
    defaults = Settings(_env_file=None)
    assert defaults.dashboard_host == "127.0.0.1" and defaults.airflow_clickhouse_pool_slots is None
    assert Settings(_env_file=None, stream_window="90.5 seconds").stream_window == "90.5 seconds"
    # the forms the new checks keep accepting
    ok = Settings(_env_file=None, etl_schedule="@daily", training_schedule=" 30 23 * * * ",
                  predictions_schedule="0 */6 * * 1-5", clickhouse_database="retail_prod2", spark_driver_memory="1024mb",
                  kafka_heap="1G", lake_raw_bucket="raw.data-2", kafka_topic_prefix="", kafka_retention_ms=-1,
                  stream_starting_offsets='{"retail-sales-transactions": {"0": 42}}', forecast_stats_jobs=2,
                  forecast_backtest_origins=1, forecast_train_window_days=1)
    assert ok.training_schedule == "30 23 * * *" and ok.spark_driver_memory == "1024mb"
    assert Settings(_env_file=None, stream_starting_offsets="latest", spark_driver_memory="512").spark_driver_memory == "512"
    # the default CLICKHOUSE_URL reaches the endpoint where CLICKHOUSE_HTTP_HOST says it listens
    token = secrets.token_hex(8)
    for host, want in (("10.9.8.7", "10.9.8.7"), ("0.0.0.0", "127.0.0.1"), ("::1", "[::1]")):
        url = Settings(_env_file=None, clickhouse_url=None, clickhouse_http_host=host, clickhouse_http_port=8125,
                       clickhouse_writer_password=token).clickhouse_url
        assert url == f"http://platform_writer:{token}@{want}:8125"


def test_interval_parser():
    from core.settings import interval_hours

    assert interval_hours("5 minutes") == pytest.approx(1 / 12)
    assert interval_hours("1 hour") == 1.0
    assert interval_hours("2 days", "STREAM_WATERMARK") == 48.0
    with pytest.raises(ValueError, match="STREAM_WINDOW"):
        interval_hours("5 fortnights")
    with pytest.raises(ValueError, match="STREAM_WATERMARK"):
        interval_hours("ten minutes", "STREAM_WATERMARK")


def test_clickhouse_pool_slots_follow_the_setting(monkeypatch, tmp_path):
    """AIRFLOW_CLICKHOUSE_POOL_SLOTS when set, else 1 for chdb:// and 4 for an HTTP endpoint (core.dagconf)."""
    from core.dagconf import clickhouse_pool_slots

    assert clickhouse_pool_slots(Settings(_env_file=None, clickhouse_url=f"chdb://{tmp_path}/chdb")) == 1
    assert clickhouse_pool_slots(Settings(_env_file=None, clickhouse_url="http://u:p@clickhouse:8123")) == 4
    assert clickhouse_pool_slots(Settings(_env_file=None, clickhouse_url=f"chdb://{tmp_path}/chdb",
                                          airflow_clickhouse_pool_slots=3)) == 3
    monkeypatch.setenv("AIRFLOW_CLICKHOUSE_POOL_SLOTS", "2")
    assert clickhouse_pool_slots() == 2   # get_settings()
    get_settings.cache_clear()
    monkeypatch.setenv("AIRFLOW_CLICKHOUSE_POOL_SLOTS", "-2")
    with pytest.raises(ConfigError, match="AIRFLOW_CLICKHOUSE_POOL_SLOTS"):
        clickhouse_pool_slots()


def test_scheduler_health_port_names_the_airflow_variable():
    from ops.entrypoint import SCHEDULER_HEALTH_PORT_ENV, scheduler_health_port

    assert scheduler_health_port({}) == 8974
    assert scheduler_health_port({SCHEDULER_HEALTH_PORT_ENV: "9100"}) == 9100
    for bad in ("http", "0", "70000"):
        with pytest.raises(ValueError, match=SCHEDULER_HEALTH_PORT_ENV):
            scheduler_health_port({SCHEDULER_HEALTH_PORT_ENV: bad})


def test_services_listen_and_probe_where_the_settings_say(monkeypatch):
    """The dashboard binds DASHBOARD_HOST (127.0.0.1 unless configured); the healthchecks probe the configured
    ports of the dashboard and the Airflow API server instead of fixed ones."""
    import http.server
    import threading

    from dashboard.__main__ import command
    from ops import entrypoint

    cmd = command(8600)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[cmd.index("--server.port") + 1] == "8600"
    assert command(8600, "0.0.0.0")[cmd.index("--server.address") + 1] == "0.0.0.0"

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        monkeypatch.setenv("DASHBOARD_PORT", str(port))
        monkeypatch.setenv("DASHBOARD_HOST", "127.0.0.1")
        monkeypatch.setenv("AIRFLOW_PORT", str(port))
        get_settings.cache_clear()
        assert entrypoint.healthcheck("dashboard") and entrypoint.healthcheck("airflow-api-server")
        monkeypatch.setenv(entrypoint.SCHEDULER_HEALTH_PORT_ENV, str(port))
        assert entrypoint.healthcheck("airflow-scheduler")
    finally:
        srv.shutdown()
        srv.server_close()
    assert not entrypoint.healthcheck("dashboard")


def test_require_names_missing_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("LAKE_URL", "http://localhost:9000")
    s = Settings(lake_access_key=None, _env_file=None)
    with pytest.raises(ConfigError, match="LAKE_ACCESS_KEY"):
        s.require("lake_access_key")


def test_local_folder_lake(monkeypatch, tmp_path):
    monkeypatch.setenv("LAKE_URL", str(tmp_path / "lake"))
    s = get_settings()
    assert not s.lake_is_s3
    from core.lake import Lake
    import pyarrow as pa

    lake = Lake(s)
    lake.ensure_buckets()
    lake.write_table(pa.table({"a": [1, 2]}), "raw-data", "x", "year=2024", "part.parquet")
    lake.write_table(pa.table({"a": [1, 2]}), "raw-data", "x", "year=2024", "part.parquet")  # overwrite
    assert lake.read_table("raw-data", "x").num_rows == 2



def test_readme_documents_every_setting():
    """The README's configuration table lists every environment variable the settings module reads."""
    from core.settings import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert not missing, f"README lacks configuration rows for {missing}: run python -m ops.cli config-table"


def test_readme_configuration_table_is_the_generated_one():
    """The README says `python -m ops.cli config-table` prints its table: defaults, order and meanings agree
    (until 2026-12-06 two rows were out of order and two meanings had drifted from the code)."""
    from core.settings import REPO_ROOT, config_table_markdown

    readme = (REPO_ROOT / "README.md").read_text()
    table = config_table_markdown()
    assert table.count("\n") == len(Settings.model_fields) + 1
    assert table in readme, "README's configuration table differs from the code: paste python -m ops.cli config-table"


def test_readme_and_ci_run_the_same_test_command():
    from core.settings import REPO_ROOT

    assert "make test" in (REPO_ROOT / "README.md").read_text()
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("seconds", ["31", "60", "0"])
def test_stream_clickhouse_timeout_must_fit_the_stop_grace(monkeypatch, seconds):
    """STREAM_CLICKHOUSE_TIMEOUT_SECONDS above 30 is refused, naming the variable and the stop's bounds: a stop waits
    for a ClickHouse request already sent, and StreamingJob.stop() (STOP_GRACE_SECONDS, 40 s) must end within the
    supervisor's stopwaitsecs (60 s). 60 was the default until the review of 2026-12-07 (a frozen endpoint then
    held a stop past stopwaitsecs); the default is now 30, the bound sits below STOP_GRACE_SECONDS, which sits
    below stopwaitsecs."""
    from core.settings import STREAM_CLICKHOUSE_TIMEOUT_MAX_S
    from ops.local import _PROGRAM
    from streaming.job import STOP_GRACE_SECONDS

    monkeypatch.setenv("STREAM_CLICKHOUSE_TIMEOUT_SECONDS", seconds)
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert "STREAM_CLICKHOUSE_TIMEOUT_SECONDS" in str(err.value)
    if seconds != "0":
        assert "STOP_GRACE_SECONDS" in str(err.value) and "stopwaitsecs" in str(err.value)
    monkeypatch.delenv("STREAM_CLICKHOUSE_TIMEOUT_SECONDS")
    assert Settings(_env_file=None).stream_clickhouse_timeout_seconds == 30 == STREAM_CLICKHOUSE_TIMEOUT_MAX_S
    assert Settings(_env_file=None, stream_clickhouse_timeout_seconds=1).stream_clickhouse_timeout_seconds == 1
    assert STREAM_CLICKHOUSE_TIMEOUT_MAX_S < STOP_GRACE_SECONDS < _PROGRAM["streaming"]["stopwaitsecs"]
