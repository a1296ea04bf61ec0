"""Shared fixtures.

``native_services`` (session scope) starts the *real* native services under the supervisor (ops.local), on
free ports with a fresh state folder: the Kafka broker (KRaft), the MinIO server and the ClickHouse HTTP
endpoint over chDB (``chserver``); every test talks to ClickHouse over HTTP as platform_writer (the default
CLICKHOUSE_URL). Everything it starts is stopped in its finalizer, which checks no port stays bound.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pytest

from ops.services import free_port  # noqa: F401  (test modules import it from here)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RETAIL_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()




@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` or $RETAIL_SHARED_DATA (real UCI and M5 data); tests needing it skip with a reason
    when absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA


@contextlib.contextmanager
def platform_settings(state: Path, **extra: str):
    """The environment of a native platform whose state lives in ``state`` and whose services listen on free
    ports (CLICKHOUSE_URL and LAKE_URL derived: the endpoint and MinIO of that platform); yields its Settings
    and restores the environment, settings cache and client caches afterwards."""
    from core.clickhouse import reset_clients
    from core.lake import get_lake
    from core.settings import get_settings
    from ops import local

    env = {
        "RETAIL_STATE_DIR": str(state),
        "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{free_port()}",
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "MINIO_PORT": str(free_port()),
        "MINIO_CONSOLE_PORT": str(free_port()),
        "CLICKHOUSE_HTTP_PORT": str(free_port()),
        "AIRFLOW_PORT": str(free_port()),
        "SPARK_CHECKPOINT_DIR": str(state / "checkpoints"),
        "SPARK_MASTER": "local[2]",
        **extra,
    }
    old = {k: os.environ.get(k) for k in (*env, "CLICKHOUSE_URL", "LAKE_URL")}
    os.environ.update(env)
    for k in ("CLICKHOUSE_URL", "LAKE_URL"):
        os.environ.pop(k, None)
    get_settings.cache_clear()
    local.ensure_local_env(get_settings())
    get_settings.cache_clear()
    os.environ["LAKE_URL"] = get_settings().lake_url
    get_settings.cache_clear()
    reset_clients()
    get_lake.cache_clear()
    try:
        yield get_settings()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        reset_clients()
        get_lake.cache_clear()


@pytest.fixture(scope="session")
def native_services(tmp_path_factory):
    """Real Kafka, MinIO and the ClickHouse endpoint on free ports for the whole session; yields the Settings."""
    from ops import local

    with platform_settings(tmp_path_factory.mktemp("stack-state"),
                           CLICKHOUSE_DATABASE=f"test_{uuid.uuid4().hex[:8]}") as s:
        try:
            local.up(s, ["kafka", "minio", "clickhouse"])
            yield s
        finally:
            local.down(s)


@pytest.fixture(scope="module")
def native_stack(native_services):
    """The session's native services with a fresh ClickHouse database and fresh lake buckets for this test
    module (clickhouse-connect's layout: a fresh database per run), migrations applied; yields the Settings."""
    from core.clickhouse import migrate
    from core.lake import Lake, get_lake
    from core.settings import get_settings

    tag = uuid.uuid4().hex[:8]
    env = {"CLICKHOUSE_DATABASE": f"test_{tag}", "LAKE_RAW_BUCKET": f"raw-{tag}",
           "LAKE_MODELS_BUCKET": f"models-{tag}", "LAKE_FEATURES_BUCKET": f"features-{tag}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    get_lake.cache_clear()
    s = get_settings()
    try:
        Lake(s).ensure_buckets()
        migrate(s)
        yield s
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        get_lake.cache_clear()


@pytest.fixture(scope="session")
def spark():
    """The pytest process's one SparkSession, with the Kafka connector (core.spark.build_spark(kafka=True)):
    the first session of a process fixes the driver classpath, so streaming tests and MLlib tests share it
    (MLlib code's own builder, kafka=False, then returns this session). Stopped at the end of the session."""
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from core.spark import build_spark

    session = build_spark("retail-tests", kafka=True, master="local[2]", shuffle_partitions=2)
    yield session
    session.stop()
