"""The platform's one SparkSession builder (streaming job, ML jobs, tests, benchmarks).

``build_spark(app, kafka=True)`` adds Spark's Kafka connector (``spark-sql-kafka-0-10`` of exactly the installed
pyspark version, resolved from Maven Central by ``ops.install`` into ``$RETAIL_CACHE_DIR/spark-kafka-<version>``);
MLlib jobs call it with ``kafka=False`` and need no connector. The first SparkSession of a process fixes the
driver classpath: a process that will run streaming queries must create its session with ``kafka=True`` first.

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
    out = kafka_connector_dir(s)
    jars = list(out.glob("*.jar")) if out.exists() else []
    if not jars:
        raise ConfigError(f"Spark's Kafka connector is missing from {out} (RETAIL_CACHE_DIR): run `make setup`")
    have = {p.name.rsplit("-", 1)[0] for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return sorted(str(p) for p in jars if p.name.rsplit("-", 1)[0] not in have)


def build_spark(app_name: str, *, kafka: bool = False, settings: Settings | None = None,
                master: str | None = None, shuffle_partitions: int | None = None):
    """The process's SparkSession (``getOrCreate``).

    Args:
        app_name: Spark application name.
        kafka: add the Kafka connector jars and check the driver JVM can load the Kafka source.
        settings: defaults to :func:`core.settings.get_settings`.
        master: Spark master URL; default SPARK_MASTER, unless launched by ``spark-submit`` (which sets it).
        shuffle_partitions: ``spark.sql.shuffle.partitions``; default SPARK_SHUFFLE_PARTITIONS.

    Returns:
        ``pyspark.sql.SparkSession`` with UTC session time zone, UI off, Arrow for ``toPandas``.

    Raises:
        ConfigError: the Kafka connector is missing or the session was created earlier without it.
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
    if kafka and not launched_by_submit:
        b = b.config("spark.jars", ",".join(spark_kafka_jars(s)))
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
