"""Install the native stack's artefacts once, cached under ``$RETAIL_CACHE_DIR`` (``make setup``).

* Kafka: broker jars resolved from Maven Central by ``ops/kafka/pom.xml`` into ``$RETAIL_CACHE_DIR/kafka-<v>/libs``.
* MinIO: built once with ``go install github.com/minio/minio@$MINIO_VERSION`` into ``$RETAIL_CACHE_DIR/bin``.
* Spark's Kafka connector: ``ops/spark/pom.xml`` resolves ``spark-sql-kafka-0-10`` of the pyspark version.
* ``local.env``: generated credentials (MinIO/lake, the ClickHouse endpoint's users).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from core.settings import REPO_ROOT, Settings, get_settings

OPS_DIR = REPO_ROOT / "ops"
MAVEN_SETTINGS = OPS_DIR / "maven-settings.xml"


class StackError(RuntimeError):
    """An artefact failed to build or resolve, or a native service failed to start or become healthy; the
    message says which and where the log is."""


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
    _mvn_copy(OPS_DIR / "kafka" / "pom.xml", out, s.retail_cache_dir, [f"-Dkafka.version={s.kafka_version}"])
    return out


def spark_kafka_jars(s: Settings | None = None) -> list[str]:
    """Resolve Spark's Kafka connector (same version as pyspark) from Maven Central once; return its jars."""
    from core.spark import kafka_connector_dir, spark_kafka_jars as jars

    s = s or get_settings()
    _mvn_copy(OPS_DIR / "spark" / "pom.xml", kafka_connector_dir(s), s.retail_cache_dir,
              [f"-Dspark.version={s.spark_version}"])
    return jars(s)


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
    """Write ``$RETAIL_CACHE_DIR/local.env`` with generated credentials (MinIO/lake, ClickHouse users); keys
    already present are kept, missing ones are added. File mode 0600."""
    s = s or get_settings()
    path = s.retail_cache_dir / "local.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    have = {}
    if path.exists():
        for line in path.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                have[k.strip()] = v.strip()
    user = have.get("MINIO_ROOT_USER") or "retail-" + secrets.token_hex(4)
    pw = have.get("MINIO_ROOT_PASSWORD") or secrets.token_urlsafe(24)
    want = {"MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": pw, "LAKE_ACCESS_KEY": user, "LAKE_SECRET_KEY": pw,
            "CLICKHOUSE_ADMIN_PASSWORD": secrets.token_urlsafe(24),
            "CLICKHOUSE_WRITER_PASSWORD": secrets.token_urlsafe(24),
            "CLICKHOUSE_BI_PASSWORD": secrets.token_urlsafe(24)}
    missing = {k: v for k, v in want.items() if k not in have}
    if missing:
        with path.open("a") as f:
            f.writelines(f"{k}={v}\n" for k, v in missing.items())
        get_settings.cache_clear()
    path.chmod(0o600)
    return path


#: Debian packages of the headless browser the dashboard's browser tests drive (Selenium)
BROWSER_PACKAGES = ("chromium", "chromium-driver")


def browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths; installs Debian's ``chromium`` and ``chromium-driver`` with apt-get when
    missing (``apt-get update`` first; needs root).

    Raises:
        StackError: not installed and apt-get is unavailable or fails (the message says what to install).
    """
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    apt = shutil.which("apt-get")
    if not apt or os.geteuid() != 0:
        raise StackError(f"headless Chromium is missing: install the Debian packages {' '.join(BROWSER_PACKAGES)} "
                         "(apt-get install, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", *BROWSER_PACKAGES]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        raise StackError(f"apt-get installed {BROWSER_PACKAGES} but chromium/chromedriver are not on PATH")
    return found  # type: ignore[return-value]


def spark_s3a_jars(s: Settings | None = None) -> list[str]:
    """Resolve Hadoop's S3A connector (hadoop-aws of pyspark's Hadoop version) and the AWS SDK modules it uses
    (``ops/spark/s3a-pom.xml``, SPARK_AWSSDK_VERSION) from Maven Central once; return its jars."""
    from core.spark import hadoop_version, s3a_connector_dir, spark_s3a_jars as jars

    s = s or get_settings()
    _mvn_copy(OPS_DIR / "spark" / "s3a-pom.xml", s3a_connector_dir(s), s.retail_cache_dir,
              [f"-Dhadoop.version={hadoop_version()}", f"-Dawssdk.version={s.spark_awssdk_version}"])
    return jars(s)


def setup(s: Settings | None = None, minio: bool = True) -> None:
    """Resolve every artefact of the native stack (idempotent, cached under RETAIL_CACHE_DIR)."""
    s = s or get_settings()
    ensure_local_env(s)
    kafka_libs(s)
    spark_kafka_jars(s)
    spark_s3a_jars(s)
    if minio:
        minio_binary(s)
