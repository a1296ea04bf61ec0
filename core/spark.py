"""The platform's one SparkSession builder (streaming job, ML jobs, tests, benchmarks).

``build_spark(app, kafka=True)`` adds Spark's Kafka connector (``spark-sql-kafka-0-10`` of exactly the installed
pyspark version, resolved from Maven Central by ``ops.install`` into ``$RETAIL_CACHE_DIR/spark-kafka-<version>``);
MLlib jobs call it with ``kafka=False`` and need no connector. ``lake=True`` adds Hadoop's S3A connector
(``hadoop-aws`` and the AWS SDK modules it calls, resolved into ``$RETAIL_CACHE_DIR/spark-s3a-<hadoop>-<sdk>``) and
points it at LAKE_URL, so Spark reads and writes ``s3a://<bucket>/<key>``. The first SparkSession of a process fixes
the driver classpath: a process that will run streaming queries must create its session with ``kafka=True`` first;
under ``spark-submit`` the connectors' jars come from its ``--jars`` (the builder cannot add them to a running JVM).

This module reads settings only; it never runs a build tool or starts a service.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.settings import ConfigError, Settings, get_settings


def kafka_connector_dir(s: Settings | None = None) -> Path:
    """Folder holding the Kafka connector jars for SPARK_VERSION (filled by ``make setup``)."""
    s = s or get_settings()
    return Path(s.retail_cache_dir) / f"spark-kafka-{s.spark_version}"


def spark_kafka_jars(s: Settings | None = None) -> list[str]:
    """Paths of ``spark-sql-kafka-0-10`` and the transitive jars pyspark lacks.

    Raises:
        ConfigError: pyspark's version differs from SPARK_VERSION, or the jars were never resolved
            (``make setup`` / ``python -m ops.cli setup`` resolves them).
    """
    import pyspark

    s = s or get_settings()
    if pyspark.__version__ != s.spark_version:
        raise ConfigError(f"SPARK_VERSION={s.spark_version} but pyspark {pyspark.__version__} is installed: "
                          "the Kafka connector must match the installed Spark exactly")
    have = {p.name.rsplit("-", 1)[0] for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return [j for j in _connector_jars(kafka_connector_dir(s), "Kafka") if Path(j).name.rsplit("-", 1)[0] not in have]


def _connector_jars(folder: Path, what: str) -> list[str]:
    """The sorted jar paths in a connector's folder.

    Raises:
        ConfigError: the folder holds no jar (never resolved: ``make setup``).
    """
    jars = sorted(str(p) for p in folder.glob("*.jar")) if folder.exists() else []
    if not jars:
        raise ConfigError(f"Spark's {what} connector is missing from {folder} (RETAIL_CACHE_DIR): run `make setup`")
    return jars


def hadoop_version() -> str:
    """The Hadoop version pyspark ships (from its ``hadoop-client-api-<version>.jar``): hadoop-aws must match it.

    Raises:
        ConfigError: pyspark's jars folder holds no hadoop-client-api jar.
    """
    import pyspark

    api = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    if not api:
        raise ConfigError("pyspark ships no hadoop-client-api jar: cannot tell which hadoop-aws (S3A) to use")
    return api[-1].name[len("hadoop-client-api-"):-len(".jar")]


def s3a_connector_dir(s: Settings | None = None) -> Path:
    """Folder holding hadoop-aws (S3A) and the AWS SDK modules it needs (filled by ``make setup``)."""
    s = s or get_settings()
    return Path(s.retail_cache_dir) / f"spark-s3a-{hadoop_version()}-{s.spark_awssdk_version}"


def spark_s3a_jars(s: Settings | None = None) -> list[str]:
    """Paths of hadoop-aws and its AWS SDK v2 modules (``ops/spark/s3a-pom.xml``).

    Raises:
        ConfigError: the jars were never resolved (``make setup`` resolves them).
    """
    return _connector_jars(s3a_connector_dir(s), "S3A")


def connector_jars(s: Settings | None = None, *, kafka: bool = False, lake: bool = False) -> list[str]:
    """The jars a Spark application needs beyond pyspark's own: the Kafka connector (``kafka``) and, when
    LAKE_URL is S3 (not a folder), the S3A connector (``lake``). What :func:`build_spark` adds in-process and what
    a ``spark-submit`` launch passes as ``--jars`` (the DAGs' operators, the benchmarks).

    Raises:
        ConfigError: a needed connector was never resolved.
    """
    s = s or get_settings()
    return (spark_kafka_jars(s) if kafka else []) + (spark_s3a_jars(s) if lake and s.lake_is_s3 else [])


def s3a_conf(s: Settings | None = None) -> dict[str, str]:
    """Spark properties that point S3A (``s3a://bucket/key``) at the lake of LAKE_URL: endpoint, path-style
    access (MinIO), TLS by the URL's scheme, region LAKE_REGION, static keys LAKE_ACCESS_KEY / LAKE_SECRET_KEY.
    Empty for a local-folder lake (Spark reads it as files).

    Raises:
        ConfigError: an S3 lake without LAKE_ACCESS_KEY or LAKE_SECRET_KEY (named).
    """
    s = s or get_settings()
    if not s.lake_is_s3:
        return {}
    s.require("lake_access_key", "lake_secret_key")
    h = "spark.hadoop.fs.s3a."
    return {h + "endpoint": s.lake_url, h + "endpoint.region": s.lake_region, h + "path.style.access": "true",
            h + "connection.ssl.enabled": str(s.lake_url.startswith("https")).lower(),
            h + "access.key": s.lake_access_key, h + "secret.key": s.lake_secret_key,
            h + "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"}


def build_spark(app_name: str, *, kafka: bool = False, settings: Settings | None = None,
                master: str | None = None, shuffle_partitions: int | None = None, lake: bool = False):
    """The process's SparkSession (``getOrCreate``).

    Args:
        app_name: Spark application name.
        kafka: add the Kafka connector jars and check the driver JVM can load the Kafka source.
        lake: add the S3A connector jars (not under spark-submit: pass :func:`connector_jars` as ``--jars``) and
            :func:`s3a_conf`, so ``s3a://<bucket>/<key>`` (:meth:`core.lake.Lake.spark_uri`) reads and writes the
            lake from Spark, executors included.
        settings: defaults to :func:`core.settings.get_settings`.
        master: Spark master URL; default SPARK_MASTER, unless launched by ``spark-submit`` (which sets it).
        shuffle_partitions: ``spark.sql.shuffle.partitions``; default SPARK_SHUFFLE_PARTITIONS.

    Returns:
        ``pyspark.sql.SparkSession`` with UTC session time zone, UI off, Arrow for ``toPandas``.

    Raises:
        ConfigError: the Kafka connector is missing or the session was created earlier without it; the S3A
            connector is missing (``lake=True``).
    """
    from pyspark.sql import SparkSession

    s = settings or get_settings()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    parts = shuffle_partitions or s.spark_shuffle_partitions
    b = SparkSession.builder.appName(app_name)
    launched_by_submit = "PYSPARK_GATEWAY_PORT" in os.environ or bool(os.environ.get("SPARK_ENV_LOADED"))
    if not launched_by_submit:
        b = b.master(master or s.spark_master).config("spark.driver.memory", s.spark_driver_memory)
    elif master:
        b = b.master(master)
    if not launched_by_submit:  # under spark-submit the jars come from --jars: not looked up here
        jars = connector_jars(s, kafka=kafka, lake=lake)
        if jars:
            b = b.config("spark.jars", ",".join(jars))
    if lake:
        for k, v in s3a_conf(s).items():
            b = b.config(k, v)
    spark = (b.config("spark.sql.shuffle.partitions", str(parts))
             .config("spark.default.parallelism", str(parts))
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
             .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    if kafka:
        jvm = spark.sparkContext._jvm
        try:
            jvm.java.lang.Class.forName("org.apache.spark.sql.kafka010.KafkaSourceProvider", False,
                                        jvm.org.apache.spark.util.Utils.getContextOrSparkClassLoader())
        except Exception:
            raise ConfigError("this process's Spark driver JVM was started without the Kafka connector: the first "
                              "SparkSession of a process fixes the classpath; create it with "
                              "core.spark.build_spark(..., kafka=True)") from None
    return spark
