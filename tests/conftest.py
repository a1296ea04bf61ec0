"""Shared fixtures.

``native_stack`` (session scope) starts the *real* native services on free ports with a fresh state
folder: the Kafka broker (KRaft), the MinIO server, and points CLICKHOUSE_URL at a chDB path of its
own with a fresh database per run (chDB allows one path per process, so the whole session shares it).
Everything it starts is stopped in its finalizer.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RETAIL_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()


def free_port() -> int:
    """An unused TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` or $RETAIL_SHARED_DATA (real UCI and M5 data); tests needing it skip with a reason
    when absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def native_services(tmp_path_factory):
    """Real Kafka + MinIO on free ports and a chDB path for the whole session; yields the Settings in force."""
    from stack import local
    from stack.settings import get_settings

    state = tmp_path_factory.mktemp("stack-state")
    env = {
        "RETAIL_STATE_DIR": str(state),
        "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{free_port()}",
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "MINIO_PORT": str(free_port()),
        "MINIO_CONSOLE_PORT": str(free_port()),
        "CLICKHOUSE_URL": f"chdb://{state / 'chdb'}",
        "CLICKHOUSE_DATABASE": f"test_{uuid.uuid4().hex[:8]}",
        "SPARK_CHECKPOINT_DIR": str(state / "checkpoints"),
        "SPARK_MASTER": "local[2]",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.environ.pop("LAKE_URL", None)
    get_settings.cache_clear()
    s = get_settings()
    os.environ["LAKE_URL"] = s.lake_url
    local.ensure_local_env(s)
    get_settings.cache_clear()
    s = get_settings()
    try:
        local.up(s)
        yield s
    finally:
        local.down(s)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.environ.pop("LAKE_URL", None)
        get_settings.cache_clear()
        from stack.lake import get_lake

        get_lake.cache_clear()


@pytest.fixture(scope="module")
def native_stack(native_services):
    """The session's native services with a fresh ClickHouse database and fresh lake buckets for this test
    module (clickhouse-connect's layout: a fresh database per run), migrations applied; yields the Settings.

    chDB allows one data path per process, so modules are isolated by database, not by path.
    """
    from stack.ch import migrate
    from stack.lake import Lake, get_lake
    from stack.settings import get_settings

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
