"""Shared fixtures.

``native_services`` (session scope) starts the *real* native services under the supervisor (ops.local), on
free ports with a fresh state folder: the Kafka broker (KRaft), the MinIO server and the ClickHouse HTTP
endpoint over chDB (``chserver``); every test talks to ClickHouse over HTTP as platform_writer (the default
CLICKHOUSE_URL). Everything it starts is stopped in its finalizer, which checks no port stays bound.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from ops.local import platform_settings  # noqa: F401  (test modules import it from here)
from ops.services import free_port  # noqa: F401  (test modules import it from here)

# The suite runs in UTC whatever the machine's time zone (TZ, /etc/localtime): PySpark's collect() gives naive
# datetimes in the process's local time, which the tests compare with UTC ones (under TZ=Pacific/Chatham 7 tests of
# test_streaming_transforms / test_streaming_sinks failed, passing in UTC); the services the tests start inherit it.
os.environ["TZ"] = "UTC"
time.tzset()
# The suite's Spark JVMs (the session's SparkSession, every spark-submit of the DAGs, jobs and benchmarks it runs)
# live seconds to minutes on small data: C2 compilation of Spark's startup and planning code is CPU they never earn
# back on the shared cores. C1 only (-XX:TieredStopAtLevel=1) changes no result, only how the JVM compiles (the
# streaming benchmark's steady state gained nothing from it: docs/benchmarks.md); SPARK_SUBMIT_OPTS="" keeps the
# default JIT. Measured 2026-12-07: docs/tests.md.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1")
#: driver heap of the session's one SparkSession (the ``spark`` fixture); the jobs it spark-submits keep
#: SPARK_DRIVER_MEMORY
TEST_SPARK_DRIVER_MEMORY = "4g"

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RETAIL_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()
#: Arrow schemas of raw lake files as the ETL tests write them (ids etc. nullable, so a test can write a contract
#: violation the ETL must catch); the stream's own is streaming.sinks.lake_arrow_schema
SALES_SCHEMA = pa.schema([
    ("transaction_id", pa.string()), ("store_id", pa.string()), ("product_id", pa.string()),
    ("quantity", pa.int32()), ("unit_price", pa.float64()), ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("customer_id", pa.string()), ("payment_method", pa.string()), ("invoice_id", pa.string()),
    ("ingested_at", pa.timestamp("ms", tz="UTC")), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64())])
INV_SCHEMA = pa.schema([
    ("inventory_id", pa.string()), ("store_id", pa.string()), ("product_id", pa.string()),
    ("quantity_change", pa.int32()), ("new_quantity", pa.int32()), ("reason", pa.string()),
    ("reorder_point", pa.int32()), ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("ingested_at", pa.timestamp("ms", tz="UTC")), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64())])


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: a worker per core, whole modules per worker, ``--dist loadfile
    --no-loadscope-reorder``) the modules go out longest first (``tests/module_seconds.json``), so the longest
    ones do not start last and leave one worker alone at the end; the tests inside a module keep their order.
    A plain ``pytest`` run keeps the collection order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import json

    seconds = json.loads((Path(__file__).parent / "module_seconds.json").read_text())
    first = {}   # module -> its position in the collection (the tie-break: modules of equal time keep their order)
    for item in items:
        first.setdefault(item.path.stem, len(first))
    items.sort(key=lambda it: (-float(seconds.get(it.path.stem, 20)), first[it.path.stem]))


def cancelled_units(lines, keys: list[str], time: str = "event_time"):
    """Units of orders cancelled the same day per ``keys`` (which include the day), the independent oracle of the
    ``demand_daily`` view: within keys x customer x |quantity| the lines in time order (a sale before a return at
    the same instant), each return line matched one by one to a sale line still open. Lines without a customer
    (None, NaN or '') never match. ``lines``: pandas frame with ``keys``, ``customer_id``, ``quantity`` (< 0 for a
    return) and ``time``. Returns a dict {keys tuple: units}, only keys with a cancellation."""
    out: dict[tuple, int] = {}
    named = lines[lines["customer_id"].fillna("").astype(str) != ""].assign(
        _size=lambda d: d["quantity"].abs(), _ret=lambda d: d["quantity"] < 0)
    group = [*keys, "customer_id", "_size"]
    named = named[named.groupby(group, dropna=False)["_ret"].transform("any")]  # no return: nothing to match
    for key, g in named.groupby(group):
        open_sales = matched = 0
        for ret in g.sort_values([time, "_ret"], kind="stable")["_ret"]:
            if not ret:
                open_sales += 1
            elif open_sales:
                open_sales, matched = open_sales - 1, matched + 1
        if matched:
            k = tuple(key[:len(keys)])
            out[k] = out.get(k, 0) + matched * int(key[-1])
    return out


@contextlib.contextmanager
def settings_env(**env: str | None):
    """The settings with environment variables ``env`` set (a value) or unset (None) for the block: sets them,
    clears the settings and lake caches, yields :func:`core.settings.get_settings`, and afterwards restores every
    variable as it was and clears the caches again (whatever the block raised). Nest it for a setting that changes
    inside a block; ``local_lake_env`` and ``native_stack`` are built on it."""
    from core.lake import get_lake
    from core.settings import get_settings

    old = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        get_settings.cache_clear(), get_lake.cache_clear()
        yield get_settings()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        get_settings.cache_clear(), get_lake.cache_clear()


@contextlib.contextmanager
def local_lake_env(root: Path, **extra_env: str):
    """Settings with LAKE_URL = the local folder ``root`` (buckets created) and ``extra_env`` set; yields the
    Lake and restores the environment afterwards (:func:`settings_env`). The fixture factory behind
    :func:`local_lake`: a test module needing more settings (e.g. FORECAST_*) defines its own module fixture with it."""
    from core.lake import Lake

    with settings_env(LAKE_URL=str(root), LAKE_RAW_BUCKET="raw-data", LAKE_FEATURES_BUCKET="features",
                      LAKE_MODELS_BUCKET="models", **extra_env) as s:
        lake = Lake(s)
        lake.ensure_buckets()
        yield lake


@pytest.fixture(scope="module")
def local_lake(tmp_path_factory):
    """Settings with LAKE_URL = a local folder (buckets created); restores the environment afterwards."""
    with local_lake_env(tmp_path_factory.mktemp("lake")) as lake:
        yield lake


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` or $RETAIL_SHARED_DATA (real UCI and M5 data); tests needing it skip with a reason
    when absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def native_services(tmp_path_factory):
    """Real Kafka, MinIO and the ClickHouse endpoint on free ports for the whole session; yields the Settings."""
    from ops import local

    # a port taken by another program between the pick and the start: started again on other ports (reported)
    with local.platform_up(tmp_path_factory.mktemp("stack-state"), ["kafka", "minio", "clickhouse"],
                           CLICKHOUSE_DATABASE=f"test_{uuid.uuid4().hex[:8]}") as s:
        try:
            yield s
        finally:
            local.down(s)


@pytest.fixture(scope="module")
def native_stack(native_services):
    """The session's native services with a fresh ClickHouse database and fresh lake buckets for this test
    module (clickhouse-connect's layout: a fresh database per run), migrations applied; yields the Settings."""
    from core.clickhouse import migrate
    from core.lake import Lake

    tag = uuid.uuid4().hex[:8]
    # the modules run daily_etl with dag.test() on the UCI log's dates (2011): Airflow creates no task instance for
    # a manual run before the DAG's start_date (ETL_START_DATE)
    with settings_env(CLICKHOUSE_DATABASE=f"test_{tag}", LAKE_RAW_BUCKET=f"raw-{tag}", LAKE_MODELS_BUCKET=f"models-{tag}",
                      LAKE_FEATURES_BUCKET=f"features-{tag}", ETL_START_DATE="2009-12-01") as s:
        Lake(s).ensure_buckets()
        migrate(s)
        yield s


#: live heap (MB, after a full GC) above which the ``spark`` fixture starts a fresh driver JVM before the next module
TEST_SPARK_RECYCLE_MB = 1536


def _spark_jvm_answers(session) -> bool:
    """True when ``session``'s driver JVM answers a Py4J call (False: the process is gone, e.g. killed)."""
    try:
        session.sparkContext._jvm.java.lang.System.nanoTime()
        return True
    except Exception:
        return False


def _spark_live_heap_mb(session) -> float:
    """The driver JVM's used heap in MB right after a full GC (``System.gc()``)."""
    jvm = session.sparkContext._jvm
    jvm.java.lang.System.gc()
    rt = jvm.java.lang.Runtime.getRuntime()
    return (rt.totalMemory() - rt.freeMemory()) / 2**20


def _spark_jvm_shutdown() -> int | None:
    """Stops this process's SparkSession (if any) and ends its driver JVM, so the next ``build_spark`` launches a
    new one (PySpark keeps one gateway per process in ``SparkContext._gateway``; its JVM exits when its stdin, a
    pipe from this process, closes). Works on a JVM already gone. Returns the JVM's exit code (None: no JVM)."""
    import subprocess

    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    session = SparkSession._instantiatedSession
    if session is not None:
        with contextlib.suppress(Exception):
            session.stop()
    SparkSession._instantiatedSession = SparkSession._activeSession = None
    SparkContext._active_spark_context = None
    gateway, SparkContext._gateway, SparkContext._jvm = SparkContext._gateway, None, None
    if gateway is None:
        return None
    with contextlib.suppress(Exception):
        gateway.shutdown()
    proc = getattr(gateway, "proc", None)
    if proc is None:
        return None
    with contextlib.suppress(Exception):
        proc.stdin.close()
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(30)


def _spark_session(reason_if_new: list[str]):
    """This process's SparkSession with the Kafka connector, started when there is none, when its JVM no longer
    answers, or when it was created without the connector (by code building its own session first: the first
    session fixes the JVM's classpath). Appends to ``reason_if_new`` why a JVM was replaced."""
    import sys

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from core.settings import ConfigError, get_settings
    from core.spark import build_spark

    current = SparkSession._instantiatedSession
    if current is not None and not _spark_jvm_answers(current):
        code = _spark_jvm_shutdown()
        reason_if_new.append(f"the Spark driver JVM had exited (code {code}) before this module")
    settings = get_settings().model_copy(update={"spark_driver_memory": TEST_SPARK_DRIVER_MEMORY})

    def build():
        return build_spark("retail-tests", kafka=True, settings=settings, master="local[2]", shuffle_partitions=2)

    try:
        return build()
    except ConfigError:   # a session without the Kafka connector came first in this process
        _spark_jvm_shutdown()
        reason_if_new.append("the process's Spark session had no Kafka connector")
        return build()


@pytest.fixture(scope="module")
def spark(request):
    """This pytest process's SparkSession with the Kafka connector (core.spark.build_spark(kafka=True), local[2],
    a 4g driver heap): streaming and MLlib tests share it (MLlib code's own builder, kafka=False, returns it).

    One driver JVM serves the process's modules, but it is replaced (a warning says why, in the run's summary)
    when it no longer answers at a module's start, or when its live heap after a full GC exceeds
    TEST_SPARK_RECYCLE_MB at a module's end: one module's leak or crash cannot fail the modules after it. CI's runs
    of 4b86f75 and 98db077 lost the one session-long JVM in test_streaming_guarantees (Py4J: connection refused)
    and every Spark test after it failed. Ended at the session's end (``_spark_jvm_at_exit``)."""
    import warnings

    replaced: list[str] = []
    session = _spark_session(replaced)
    for why in replaced:
        warnings.warn(f"{request.module.__name__}: new Spark driver JVM: {why}", stacklevel=1)
    yield session
    if not _spark_jvm_answers(session):
        return   # replaced at the next module's start, which says so
    heap = _spark_live_heap_mb(session)
    if heap > TEST_SPARK_RECYCLE_MB:
        _spark_jvm_shutdown()
        warnings.warn(f"{request.module.__name__}: Spark driver JVM replaced after the module: live heap "
                      f"{heap:.0f} MB > TEST_SPARK_RECYCLE_MB {TEST_SPARK_RECYCLE_MB}", stacklevel=1)


@pytest.fixture(scope="session", autouse=True)
def _spark_jvm_at_exit():
    """Stops this process's SparkSession and its driver JVM (if a test started one) at the session's end."""
    yield
    import sys

    if "pyspark" in sys.modules:
        _spark_jvm_shutdown()


def url_on_port(url: str, port: int) -> str:
    """``url`` (``scheme://[user:pw@]host:port/...``) with its port replaced by ``port``, credentials and path kept
    (e.g. a gate's port, or a port nothing listens on)."""
    from urllib.parse import urlparse, urlunparse

    u = urlparse(url)
    return urlunparse(u._replace(netloc=u.netloc.rsplit(":", 1)[0] + f":{port}"))


class TcpGate:
    """A TCP forwarder on a free port to ``target`` (127.0.0.1) that can be opened and closed: a service outage as a
    client sees it (connection refused), without stopping the session's service."""

    def __init__(self, target: int):
        self.target, self.port, self.sock = target, free_port(), None
        #: :meth:`wedge_next`'s marker while armed; ``wedged``: the requests wedged so far
        self._wedge_marker: bytes | None = None
        self._wedge_lock = threading.Lock()
        self.wedged = 0
        self.frozen = False   # :meth:`freeze`
        self._held = threading.Event()   # set at close: releases the threads holding wedged answers
        #: connections accepted and forwarded so far; bytes of requests forwarded to ``target`` so far
        self.connections = 0
        self.request_bytes = 0
        #: the first line of every answer held (wedged or frozen), e.g. ``b"HTTP/1.1 200 OK"``: what the server said
        self.held_answers: list[bytes] = []

    def url(self, url: str) -> str:
        """``url`` (a service URL whose port is ``target``, credentials kept) routed through this gate: its port
        replaced by :attr:`port`."""
        return url_on_port(url, self.port)

    def wedge_next(self, marker: bytes) -> None:
        """Wedge the next connection whose request contains ``marker`` (e.g. ``b"INSERT"``): its request reaches the
        server whole, the server's answer is held, never forwarded (a frozen peer or a connection stuck after the
        body was sent, as a client sees it); connections made afterwards flow normally."""
        with self._wedge_lock:
            self._wedge_marker = marker

    def freeze(self, frozen: bool = True) -> None:
        """Hold every answer from now on (``frozen``; requests still reach the server): a frozen endpoint, e.g.
        SIGSTOPped or its disk hung, as a client sees it: connections accepted, nothing answered. ``freeze(False)``:
        connections made afterwards flow again (answers already held stay held until :meth:`close`)."""
        self.frozen = frozen

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.sock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, sock) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self.connections += 1
            wedged = threading.Event()   # set: this connection's answers are held
            threading.Thread(target=self._pipe, args=(client, upstream, None, wedged), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, wedged, None), daemon=True).start()

    def _pipe(self, src, dst, hold: threading.Event | None = None, wedge: threading.Event | None = None) -> None:
        """Forward ``src`` to ``dst``; a request (``wedge`` given) carrying the armed marker sets ``wedge``; the
        answers (``hold`` given) stop once ``hold`` is set, kept until :meth:`close`."""
        try:
            while data := src.recv(65536):
                if wedge is not None and self._wedge_marker is not None:
                    with self._wedge_lock:
                        if self._wedge_marker is not None and self._wedge_marker in data:
                            self._wedge_marker = None
                            self.wedged += 1
                            wedge.set()
                if hold is not None and (hold.is_set() or self.frozen):
                    self.held_answers.append(data.split(b"\r\n", 1)[0])
                    self._held.wait()
                    return
                if wedge is not None:
                    self.request_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                with contextlib.suppress(OSError):
                    x.close()

    def close(self) -> None:
        self._held.set()   # the threads holding wedged answers end (their connections close)
        self._held = threading.Event()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
