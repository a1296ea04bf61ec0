"""The native local stack: a real single-node KRaft Kafka broker and a real MinIO server, no Docker.

* Kafka: jars resolved from Maven Central by ``stack/kafka/pom.xml`` into ``$RETAIL_CACHE_DIR/kafka/libs``;
  the log directory is formatted once (``kafka.tools.StorageTool format --standalone``), then
  ``kafka.Kafka server.properties`` runs in the background.
* MinIO: built once with ``go install github.com/minio/minio@$MINIO_VERSION`` into ``$RETAIL_CACHE_DIR/bin``.
* Spark's Kafka connector: ``stack/spark/pom.xml`` resolves ``spark-sql-kafka-0-10`` of the pyspark version.

Processes write pid files and logs under ``$RETAIL_STATE_DIR``. ``start_*`` are idempotent (a healthy
running service is left alone) and wait until the service is healthy.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

from stack.settings import REPO_ROOT, Settings, get_settings

STACK_DIR = REPO_ROOT / "stack"
MAVEN_SETTINGS = STACK_DIR / "maven-settings.xml"


class StackError(RuntimeError):
    """A native service failed to build, start or become healthy; the message says which and where the log is."""


# --------------------------------------------------------------------------------------- setup --
def _mvn_copy(pom: Path, out: Path, cache: Path, extra: list[str] | None = None) -> None:
    if out.exists() and any(out.glob("*.jar")):
        return
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("Maven (mvn) is not on PATH; it resolves the Kafka and Spark jars from Maven Central")
    tmp = out.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-q", "-B", "-s", str(MAVEN_SETTINGS), "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime", f"-Dmaven.repo.local={cache / 'm2'}", *(extra or [])]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise StackError(f"maven resolution of {pom} failed:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    tmp.rename(out)


def kafka_libs(s: Settings | None = None) -> Path:
    """Folder of the broker's classpath jars (resolved on first use)."""
    s = s or get_settings()
    out = s.retail_cache_dir / f"kafka-{s.kafka_version}" / "libs"
    out.parent.mkdir(parents=True, exist_ok=True)
    _mvn_copy(STACK_DIR / "kafka" / "pom.xml", out, s.retail_cache_dir, [f"-Dkafka.version={s.kafka_version}"])
    return out


def spark_kafka_jars(s: Settings | None = None) -> list[str]:
    """Paths of spark-sql-kafka-0-10 (same version as pyspark) and the transitive jars pyspark lacks."""
    import pyspark

    s = s or get_settings()
    if pyspark.__version__ != s.spark_version:
        raise StackError(f"pyspark {pyspark.__version__} installed but SPARK_VERSION={s.spark_version}: "
                         "the Kafka connector must match the installed Spark exactly")
    out = s.retail_cache_dir / f"spark-kafka-{s.spark_version}"
    _mvn_copy(STACK_DIR / "spark" / "pom.xml", out, s.retail_cache_dir, [f"-Dspark.version={s.spark_version}"])
    have = {p.name.rsplit("-", 1)[0] for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return sorted(str(p) for p in out.glob("*.jar") if p.name.rsplit("-", 1)[0] not in have)


def minio_binary(s: Settings | None = None) -> Path:
    """Path of the MinIO server binary, built with ``go install`` from the Go module proxy on first use."""
    s = s or get_settings()
    bindir = s.retail_cache_dir / "bin" / f"minio-{s.minio_version}"
    exe = bindir / "minio"
    if exe.exists():
        return exe
    go = shutil.which("go")
    if not go:
        raise StackError("Go is not on PATH; it builds the MinIO server (go install github.com/minio/minio)")
    bindir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(bindir), "CGO_ENABLED": "0"}
    print(f"building MinIO {s.minio_version} with go install (several minutes, once)...", file=sys.stderr)
    r = subprocess.run([go, "install", f"github.com/minio/minio@{s.minio_version}"], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0 or not exe.exists():
        raise StackError(f"go install of MinIO failed:\n{r.stderr[-3000:]}")
    return exe


def ensure_local_env(s: Settings | None = None) -> Path:
    """Write ``$RETAIL_CACHE_DIR/local.env`` with generated MinIO/lake credentials once (never overwritten)."""
    s = s or get_settings()
    path = s.retail_cache_dir / "local.env"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        user, pw = "retail-" + secrets.token_hex(4), secrets.token_urlsafe(24)
        path.write_text(f"MINIO_ROOT_USER={user}\nMINIO_ROOT_PASSWORD={pw}\n"
                        f"LAKE_ACCESS_KEY={user}\nLAKE_SECRET_KEY={pw}\n")
        path.chmod(0o600)
    return path


def setup(s: Settings | None = None, minio: bool = True) -> None:
    """Resolve every artefact of the native stack (idempotent, cached under RETAIL_CACHE_DIR)."""
    s = s or get_settings()
    ensure_local_env(s)
    kafka_libs(s)
    spark_kafka_jars(s)
    if minio:
        minio_binary(s)


# ------------------------------------------------------------------------------------ processes --
def _state(s: Settings) -> Path:
    d = Path(s.retail_state_dir)
    (d / "logs").mkdir(parents=True, exist_ok=True)
    return d


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it when it is our exited child, and treats zombies as dead."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child (started by another process)
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _pid(s: Settings, name: str) -> int | None:
    f = _state(s) / f"{name}.pid"
    if not f.exists():
        return None
    pid = int(f.read_text().strip() or 0)
    if pid and _alive(pid):
        return pid
    f.unlink(missing_ok=True)
    return None


def _spawn(s: Settings, name: str, cmd: list[str], env: dict | None = None) -> int:
    log = open(_state(s) / "logs" / f"{name}.log", "ab")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    (_state(s) / f"{name}.pid").write_text(str(p.pid))
    return p.pid


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait(check, timeout: float, what: str, log: Path) -> None:
    @retry(stop=stop_after_delay(timeout), wait=wait_fixed(0.5), retry=retry_if_result(lambda ok: not ok))
    def _poll() -> bool:
        return check()

    try:
        _poll()
    except Exception:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise StackError(f"{what} did not become healthy within {timeout:.0f}s; log {log}:\n{tail}") from None


def _kafka_host_port(s: Settings) -> tuple[str, int]:
    host, _, port = s.kafka_bootstrap_servers.split(",")[0].rpartition(":")
    return host, int(port)


def kafka_healthy(s: Settings | None = None) -> bool:
    """True when the broker answers a metadata request."""
    from kafka import KafkaAdminClient

    s = s or get_settings()
    if not _port_open(*_kafka_host_port(s)):
        return False
    try:
        admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap_servers, request_timeout_ms=3000)
        admin.list_topics()
        admin.close()
        return True
    except Exception:
        return False


def start_kafka(s: Settings | None = None, timeout: float = 90) -> None:
    """Start the KRaft broker (formatting its log dir on first start) and wait until it is healthy."""
    s = s or get_settings()
    if _pid(s, "kafka") and kafka_healthy(s):
        return
    host, port = _kafka_host_port(s)
    libs = kafka_libs(s)
    d = _state(s) / "kafka"
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
    _spawn(s, "kafka", [java, f"-Xmx{s.kafka_heap}", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={log4j}",
                        "-cp", cp, "kafka.Kafka", str(props)])
    _wait(lambda: kafka_healthy(s), timeout, f"Kafka broker at {s.kafka_bootstrap_servers}",
          _state(s) / "logs" / "kafka.log")


def minio_healthy(s: Settings | None = None) -> bool:
    """True when MinIO's liveness endpoint answers 200."""
    s = s or get_settings()
    try:
        return httpx.get(f"http://localhost:{s.minio_port}/minio/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_minio(s: Settings | None = None, timeout: float = 60) -> None:
    """Start the MinIO server on MINIO_PORT with data under RETAIL_STATE_DIR/minio, create the buckets."""
    s = s or get_settings()
    if not (_pid(s, "minio") and minio_healthy(s)):
        s.require("minio_root_user", "minio_root_password")
        exe = minio_binary(s)
        data = _state(s) / "minio"
        data.mkdir(parents=True, exist_ok=True)
        _spawn(s, "minio", [str(exe), "server", str(data), "--address", f"localhost:{s.minio_port}",
                            "--console-address", f"localhost:{s.minio_console_port}", "--quiet"],
               env={"MINIO_ROOT_USER": s.minio_root_user, "MINIO_ROOT_PASSWORD": s.minio_root_password,
                    "MINIO_BROWSER": "on"})
        _wait(lambda: minio_healthy(s), timeout, f"MinIO on port {s.minio_port}", _state(s) / "logs" / "minio.log")
    if s.lake_is_s3:
        from stack.lake import Lake
        Lake(s).ensure_buckets()


def stop(name: str, s: Settings | None = None, timeout: float = 30) -> bool:
    """Stop a native service by pid file (SIGTERM, then SIGKILL). Returns True when one was running."""
    s = s or get_settings()
    pid = _pid(s, name)
    if not pid:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.3)
    else:
        os.killpg(pid, signal.SIGKILL)
        _alive(pid)
    (_state(s) / f"{name}.pid").unlink(missing_ok=True)
    return True


def status(s: Settings | None = None) -> dict[str, dict]:
    """Health of every native service: {name: {pid, healthy, endpoint}}."""
    s = s or get_settings()
    return {
        "kafka": {"pid": _pid(s, "kafka"), "healthy": kafka_healthy(s), "endpoint": s.kafka_bootstrap_servers},
        "minio": {"pid": _pid(s, "minio"), "healthy": minio_healthy(s),
                  "endpoint": f"http://localhost:{s.minio_port}", "console": f"http://localhost:{s.minio_console_port}"},
        "clickhouse": {"pid": None, "healthy": None, "endpoint": s.clickhouse_url},
    }


def up(s: Settings | None = None) -> None:
    """Start Kafka and (when the lake is S3) MinIO."""
    s = s or get_settings()
    start_kafka(s)
    if s.lake_is_s3:
        start_minio(s)


def down(s: Settings | None = None) -> None:
    """Stop every native service this module started."""
    s = s or get_settings()
    for name in ("kafka", "minio"):
        stop(name, s)
