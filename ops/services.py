"""The native stack's services: how each one runs in the foreground and how its health is checked.

``python -m ops.services run <name>`` is the command the supervisor (:mod:`ops.local`) starts for each
program; it prepares what the service needs, then replaces itself (``exec``) with the real server so the
supervisor signals the server itself. Names match ``docker-compose.yml``:

=============  ===============================================================  =================================
service        process                                                          healthy when
=============  ===============================================================  =================================
kafka          Apache Kafka broker, KRaft (jars from Maven Central)             a metadata request is answered
minio          MinIO server (built by ``go install``)                           ``/minio/health/live`` is 200
clickhouse     ClickHouse HTTP interface over chDB (``python -m chserver``)     ``GET /ping`` answers ``Ok.``
streaming      Spark Structured Streaming job (``python -m streaming.job run``)  its heartbeat file is fresh
airflow        ``airflow standalone`` (API server/UI, scheduler, DAG processor) ``/api/v2/monitor/health``
dashboard      live browser dashboard, Streamlit (``python -m dashboard``)      ``/_stcore/health`` is ``ok``
=============  ===============================================================  =================================
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

from core.settings import ConfigError, Settings, get_settings

#: start order (dependencies first); the supervisor's program names
SERVICES: tuple[str, ...] = ("kafka", "minio", "clickhouse", "streaming", "airflow", "dashboard")
#: what each service needs healthy before it starts
DEPENDS: dict[str, tuple[str, ...]] = {
    "streaming": ("kafka", "minio", "clickhouse"),
    "airflow": ("minio", "clickhouse"),
    "dashboard": ("clickhouse",),
}


def state_dir(s: Settings) -> Path:
    """$RETAIL_STATE_DIR, with its ``logs/`` folder created.

    Raises:
        ConfigError: the folder cannot be created or is not writable (a read-only file system, no permission, a
            path under a file), naming RETAIL_STATE_DIR and the cause (until 2026-12-06 ``ops.cli up`` / ``down``
            ended in a FileNotFoundError / PermissionError traceback that named neither).
    """
    d = Path(s.retail_state_dir)
    try:
        (d / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"RETAIL_STATE_DIR={d}: cannot create the platform's state folder there "
                          f"({exc.strerror or exc}); point RETAIL_STATE_DIR at a writable folder") from None
    if not os.access(d / "logs", os.W_OK | os.X_OK):   # EROFS too, also for root
        raise ConfigError(f"RETAIL_STATE_DIR={d}: the state folder is not writable (read-only file system or no "
                          "permission); point RETAIL_STATE_DIR at a writable folder")
    return d


def kafka_host_port(s: Settings) -> tuple[str, int]:
    """(host, port) of the first bootstrap server."""
    host, _, port = s.kafka_bootstrap_servers.split(",")[0].rpartition(":")
    return host, int(port)


#: the lowest port :func:`free_port` hands out (the services' default ports, 8080-9093, lie below it)
PICK_FLOOR = 20000
#: where :func:`free_port` records its reservations: one ``<port>.lock`` file per port, ``flock``-ed by the process
#: that picked it (shared by every user's test sessions and benchmarks on the machine)
RESERVATIONS = Path(tempfile.gettempdir()) / "retail-ports"
_reserved: dict[int, tuple[int, int]] = {}   # port -> (pid that reserved it, descriptor of its locked file)
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports() -> tuple[int, int]:
    """(low, high) of the kernel's ephemeral port range (``/proc/sys/net/ipv4/ip_local_port_range``; Linux's
    default 32768-60999 when it cannot be read): the ports the kernel gives a ``bind(("", 0))`` or an outgoing
    connection of any process."""
    try:
        lo, hi = (int(v) for v in _EPHEMERAL.read_text().split()[:2])
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    """True when ``port`` can be bound on every IPv4 address and on every IPv6 one (so nothing listens on it on any
    address, nor holds it in a connection)."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:   # no IPv6 on this host
            continue
        with sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((addr, port))
            except OSError:
                return False
    return True


def _reserve(port: int) -> bool:
    """Take the machine-wide reservation of ``port`` (an exclusive, non-blocking ``flock`` on
    :data:`RESERVATIONS`/``<port>.lock``, held while this process lives or until :func:`release_port`). False when
    another process (or this one) holds it.

    The file is opened read-only (``flock`` needs no write permission), so a file another user left is usable by
    everyone; a reservation counts only while the locked file is still the one at the path (same inode), because
    :func:`release_port` deletes the file before it unlocks it (the lock-file protocol of e.g. ``filelock`` /
    ``flock(1)`` users: a process that opened the old file before the delete sees another inode and tries again).
    """
    import fcntl

    if port in _reserved:
        return False
    with contextlib.suppress(OSError):
        RESERVATIONS.mkdir(mode=0o1777, exist_ok=True)
        RESERVATIONS.chmod(0o1777)
    path = RESERVATIONS / f"{port}.lock"
    for _ in range(10):   # each retry follows a delete by the holder's release: bounded, it cannot starve
        try:   # an existing file is opened without O_CREAT: with fs.protected_regular >= 1 (systemd's default) an
            fd = os.open(path, os.O_RDONLY)   # O_CREAT open of another user's file in sticky /tmp is refused
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:   # created by another process in between: open that one
                continue
            except OSError:
                return False
        except OSError:   # not readable (another user's file with mode 0600): theirs
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _reserved[port] = (os.getpid(), fd)
            return True
        os.close(fd)   # the holder released (and deleted) it between our open and our lock: open the new file
    return False


def release_port(port: int) -> None:
    """Give up this process's reservation of ``port`` (:func:`free_port`) and delete its lock file (kept when it
    is another user's, in the sticky folder); nothing when it holds none."""
    held = _reserved.pop(port, None)
    if held is not None:
        pid, fd = held
        if pid == os.getpid():   # a forked child inherits the table (and the descriptor, which shares the lock):
            with contextlib.suppress(OSError):   # only the picking process deletes the file, or a third process
                os.unlink(RESERVATIONS / f"{port}.lock")   # could reserve the port its parent still holds
        os.close(fd)   # closing the file releases its flock (the parent's copy keeps it in a forked child)


def free_port() -> int:
    """A TCP port that nothing listens on, that no process will be given by the kernel and that no other caller of
    this function on the machine gets while this process lives: for a service that tests and benchmarks start on
    it later.

    The port lies between :data:`PICK_FLOOR` and the kernel's ephemeral range (:func:`ephemeral_ports`; above it
    when there is no room below), picked at random, bindable on every address (:func:`_bindable`) and reserved
    (:func:`_reserve`, released by :func:`release_port` or when the process ends). Until 2026-12-06 it returned
    the port a ``bind(("localhost", 0))`` got: one of the ephemeral range, which the kernel hands to any process
    between the pick and the service's start (a Spark JVM's driver, block-manager or Py4J port, any client's
    outgoing connection): 24 of 200 ports picked were taken by another process holding 2,000 ``bind(0)`` sockets.

    Raises:
        RuntimeError: no free port after 2,000 tries, or fewer than 1,000 ports outside the ephemeral range (named:
            ``/proc/sys/net/ipv4/ip_local_port_range``).
    """
    lo, hi = ephemeral_ports()
    ranges = [(a, b) for a, b in ((PICK_FLOOR, min(lo, 65536)), (max(hi + 1, PICK_FLOOR), 65536)) if b > a]
    size = sum(b - a for a, b in ranges)
    if size < 1000:
        raise RuntimeError(f"{_EPHEMERAL} = {lo} {hi} leaves {size} ports from {PICK_FLOOR} up outside the "
                           "kernel's ephemeral range: free_port() needs 1,000")
    rng = random.SystemRandom()
    for _ in range(2000):
        i = rng.randrange(size)
        for a, b in ranges:
            if i < b - a:
                port = a + i
                break
            i -= b - a
        if _reserve(port):
            if _bindable(port):
                return port
            release_port(port)
    raise RuntimeError(f"no free port between {PICK_FLOOR} and 65535 outside the ephemeral range {lo}-{hi} after "
                       f"2,000 tries (reservations in {RESERVATIONS})")


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> float:
    """Poll ``check`` every ``interval`` seconds (tenacity) until it returns a true value.

    Returns:
        the seconds waited.
    Raises:
        TimeoutError: ``check`` stayed false for ``timeout`` seconds; the message names ``what``.
        Exception: whatever ``check`` raises, at once.
    """
    t0 = time.monotonic()

    @retry(stop=stop_after_delay(timeout), wait=wait_fixed(interval), retry=retry_if_result(lambda ok: not ok))
    def _poll() -> bool:
        return bool(check())

    try:
        _poll()
    except RetryError:
        raise TimeoutError(f"{what} not within {timeout:.0f} s") from None
    return time.monotonic() - t0


def local_address(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (a wildcard address -> localhost)."""
    return "localhost" if host in ("", "0.0.0.0", "::", "[::]") else host


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def listeners(port: int) -> list[int | None]:
    """Processes listening on TCP ``port`` (any address, IPv4 or IPv6), from the kernel's socket table (psutil):
    their pids, None for a socket whose process this user cannot see (another user's, e.g. a container runtime's
    proxy). Unlike :func:`port_open` it does not connect, so a listener that stopped accepting (its backlog full:
    connects time out) still counts; empty when nothing listens."""
    import psutil

    return sorted({c.pid for c in psutil.net_connections(kind="tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port},
                  key=lambda p: (p is None, p or 0))


# ------------------------------------------------------------------------------------------ health --
def kafka_healthy(s: Settings) -> bool:
    """True when the broker answers a metadata request."""
    from kafka import KafkaAdminClient

    if not port_open(*kafka_host_port(s)):
        return False
    try:
        admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap_servers, request_timeout_ms=3000)
        admin.list_topics()
        admin.close()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not healthy yet"
        return False


def minio_healthy(s: Settings) -> bool:
    """True when MinIO's liveness endpoint answers 200 and its console (MINIO_CONSOLE_PORT) accepts connections.
    The console opens after the API: on loaded cores (two test workers) it was still closed 0.5 s after the API
    answered, so an ``up`` that waited for the API alone returned before the console (test_native_ops, 2026-12-08)."""
    try:
        live = httpx.get(f"http://localhost:{s.minio_port}/minio/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
    return live and port_open("localhost", s.minio_console_port)   # its --console-address (below)


def clickhouse_healthy(s: Settings) -> bool:
    """True when the ClickHouse HTTP interface answers ``GET /ping`` with ``Ok.``."""
    try:
        r = httpx.get(f"http://{s.clickhouse_http_host}:{s.clickhouse_http_port}/ping", timeout=1)
        return r.status_code == 200 and r.text.strip() == "Ok."
    except httpx.HTTPError:
        return False


def airflow_healthy(s: Settings) -> bool:
    """True when Airflow's API server reports the metadata DB and the scheduler healthy."""
    try:
        r = httpx.get(f"http://{local_address(s.airflow_host)}:{s.airflow_port}/api/v2/monitor/health", timeout=2)
        h = r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return False
    return all(h.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler"))


def streaming_healthy(s: Settings) -> bool:
    """True while the streaming job's heartbeat is fresh (both queries active; :func:`streaming.job.stream_healthy`)."""
    from streaming.job import stream_healthy

    return stream_healthy(s)


def dashboard_healthy(s: Settings) -> bool:
    """True when Streamlit's health endpoint answers ``ok``."""
    try:
        r = httpx.get(f"http://localhost:{s.dashboard_port}/_stcore/health", timeout=2)
        return r.status_code == 200 and r.text.strip() == "ok"
    except httpx.HTTPError:
        return False


HEALTH = {"dashboard": dashboard_healthy, "kafka": kafka_healthy, "minio": minio_healthy, "clickhouse": clickhouse_healthy,
          "airflow": airflow_healthy, "streaming": streaming_healthy}


def endpoint(name: str, s: Settings) -> str:
    """Where a service answers (for status output)."""
    return {"kafka": s.kafka_bootstrap_servers, "minio": f"http://localhost:{s.minio_port}",
            "clickhouse": f"http://{s.clickhouse_http_host}:{s.clickhouse_http_port}",
            "airflow": f"http://{local_address(s.airflow_host)}:{s.airflow_port}", "streaming": s.spark_checkpoint_dir,
            "dashboard": f"http://localhost:{s.dashboard_port}"}.get(name, "")


# --------------------------------------------------------------------------------------------- run --
def _kafka_argv(s: Settings) -> list[str]:
    from ops.install import StackError, kafka_libs

    host, port = kafka_host_port(s)
    libs = kafka_libs(s)
    d = state_dir(s) / "kafka"
    d.mkdir(parents=True, exist_ok=True)
    props = d / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller", "node.id=1",
        f"controller.quorum.bootstrap.servers={host}:{s.kafka_controller_port}",
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{s.kafka_controller_port}",
        f"advertised.listeners=PLAINTEXT://{host}:{port}",
        "controller.listener.names=CONTROLLER", "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={d / 'data'}", "num.partitions=1", "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1", "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1", "group.initial.rebalance.delay.ms=0",
        f"log.retention.ms={s.kafka_retention_ms}", "",
    ]))
    log4j = d / "log4j2.properties"
    log4j.write_text("status = warn\nappender.console.type = Console\nappender.console.name = STDOUT\n"
                     "appender.console.layout.type = PatternLayout\nappender.console.layout.pattern = [%d] %p %m (%c)%n\n"
                     "rootLogger.level = WARN\nrootLogger.appenderRef.stdout.ref = STDOUT\n"
                     "logger.server.name = kafka.server.KafkaRaftServer\nlogger.server.level = INFO\n")
    java = shutil.which("java") or "java"
    cp = f"{libs}/*"
    if not (d / "data" / "meta.properties").exists():
        cluster_id = "-"
        while cluster_id.startswith("-"):  # a leading '-' would be parsed as an option (as Kafka's Uuid avoids)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        r = subprocess.run([java, "-cp", cp, f"-Dlog4j2.configurationFile={log4j}", "kafka.tools.StorageTool",
                            "format", "-t", cluster_id, "-c", str(props), "--standalone"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise StackError(f"formatting the KRaft log dir failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
    return [java, f"-Xmx{s.kafka_heap}", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", cp, "kafka.Kafka", str(props)]


def minio_root(s: Settings) -> tuple[str, str]:
    """(user, password) of the native MinIO's root account: the lake keys every native client signs with
    (LAKE_ACCESS_KEY / LAKE_SECRET_KEY, generated equal to MINIO_ROOT_* into local.env by setup); MINIO_ROOT_USER /
    _PASSWORD only when no lake key is set. Compose's ``.env`` (``cp .env.example .env``) sets MINIO_ROOT_* for its
    own MinIO but no LAKE_ACCESS_KEY: the native MinIO took its root from ``.env`` and the clients their keys from
    local.env, and ``up minio`` failed (ACCESS_DENIED creating the buckets).

    Raises:
        ConfigError: neither pair is set (named).
    """
    if s.lake_access_key and s.lake_secret_key:
        return s.lake_access_key, s.lake_secret_key
    s.require("minio_root_user", "minio_root_password")
    return s.minio_root_user, s.minio_root_password  # type: ignore[return-value]


def check_config(name: str, s: Settings) -> None:
    """Check the settings service ``name`` needs before it is started (the supervisor retries a program that
    fails to start without end, so a missing setting must fail the caller, not the program).

    Raises:
        ConfigError: a setting is missing or invalid (names the environment variable).
        KeyError: unknown service name.
    """
    from core.settings import ConfigError

    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; services: {', '.join(SERVICES)}")
    if name == "kafka":
        try:
            kafka_host_port(s)
        except ValueError:
            raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS: expected host:port, got {s.kafka_bootstrap_servers!r}") from None
    elif name == "minio":
        minio_root(s)
    elif name == "clickhouse":
        s.require("clickhouse_admin_password", "clickhouse_writer_password", "clickhouse_bi_password")
    elif name == "dashboard":
        s.require("clickhouse_bi_password")
    elif name in ("streaming", "airflow") and s.lake_is_s3:   # both sign their lake requests with these keys
        s.require("lake_access_key", "lake_secret_key")


def argv_env(name: str, s: Settings | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of a service's foreground process.

    Raises:
        ConfigError: a setting the service needs is missing (named).
        KeyError: unknown service name.
    """
    s = s or get_settings()
    check_config(name, s)   # the settings each service needs (also checked by ops.local.start before a start)
    py = sys.executable
    if name == "kafka":
        return _kafka_argv(s), {}
    if name == "minio":
        from ops.install import minio_binary

        user, password = minio_root(s)
        data = state_dir(s) / "minio"
        data.mkdir(parents=True, exist_ok=True)
        return ([str(minio_binary(s)), "server", str(data), "--address", f"localhost:{s.minio_port}",
                 "--console-address", f"localhost:{s.minio_console_port}", "--quiet"],
                {"MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password,
                 "MINIO_BROWSER": "on"})
    if name == "clickhouse":
        return [py, "-m", "chserver"], {}
    if name == "streaming":
        return [py, "-m", "streaming.job", "run"], {"PYSPARK_PYTHON": py, "PYSPARK_DRIVER_PYTHON": py}
    if name == "airflow":
        from ops.airflow import airflow_env, init

        home = init(s)
        return [str(Path(py).parent / "airflow"), "standalone"], airflow_env(s, home, s.airflow_port)
    if name == "dashboard":
        from dashboard.__main__ import command

        return command(s.dashboard_port), {}
    raise KeyError(f"unknown service {name!r}; services: {', '.join(SERVICES)}")


# ------------------------------------------------------------------------------------ leftovers --
def pgid_file(name: str, s: Settings) -> Path:
    """``$RETAIL_STATE_DIR/run/<name>.pgid``: the process group of the program's last start (supervisord makes
    each program a group leader; a program's children, e.g. Airflow's scheduler, stay in its group)."""
    return state_dir(s) / "run" / f"{name}.pgid"


def _group_session(pid: int) -> tuple[int, int] | None:
    """(process group, session) of a live process (None for a zombie or a process gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[2]), int(fields[3]))


def group_members(pgid: int, sid: int) -> list[int]:
    """Live processes of process group ``pgid`` in session ``sid`` (supervisord's: a recycled group id is not taken
    for ours; environments and command lines cannot tell, Airflow's setproctitle overwrites both)."""
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and int(p.name) != os.getpid() and _group_session(int(p.name)) == (pgid, sid)]


def kill_leftovers(name: str, s: Settings, grace: float = 10.0) -> list[int]:
    """Stop what is left of the program's last process group (after a ``kill -9`` of supervisord or of a program's
    parent, e.g. ``airflow standalone``, its processes keep running and their ports): SIGTERM, SIGKILL after
    ``grace`` seconds. Returns the pids found."""
    import signal

    try:
        pgid, sid = (int(v) for v in pgid_file(name, s).read_text().split()[:2])
    except (OSError, ValueError):
        return []
    if pgid == os.getpgrp():
        return []
    found = group_members(pgid, sid)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        left = group_members(pgid, sid)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = group_members(pgid, sid)
        if not left:
            break
    return found


def run(name: str) -> None:
    """Prepare service ``name`` and replace this process with it (never returns). First stops what is left of the
    program's previous process group, then records this one (:func:`pgid_file`)."""
    s = get_settings()
    kill_leftovers(name, s)
    f = pgid_file(name, s)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(f"{os.getpgrp()} {os.getsid(0)}\n")
    argv, env = argv_env(name)
    os.execvpe(argv[0], argv, {**os.environ, **env})


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "run":
        sys.exit(f"usage: python -m ops.services run {{{'|'.join(SERVICES)}}}")
    run(sys.argv[2])
