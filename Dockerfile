# syntax=docker/dockerfile:1
# The platform image: our code (core, contracts, producers, streaming, etl, ml, dags, ops, chserver) with the *same pinned packages*
# as the native venv (ops/docker/requirements.lock, generated from it), a Java 17 runtime for Spark,
# and the Spark Kafka connector jars resolved from Maven Central at build time.
# One image, one entrypoint, a role per service:  python -m ops.entrypoint <role> [args]
# Roles: producer, topics, stream, migrate, load-test, airflow-init, airflow-api-server,
#        airflow-scheduler, airflow-dag-processor, airflow-triggerer   (see ops/entrypoint.py)

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG MAVEN_IMAGE=maven:3.9.9-eclipse-temurin-17
ARG SPARK_VERSION=4.0.0
# Hadoop of pyspark SPARK_VERSION (its hadoop-client-api jar) and the AWS SDK modules of hadoop-aws (SPARK_AWSSDK_VERSION)
ARG HADOOP_VERSION=3.4.1
ARG SPARK_AWSSDK_VERSION=2.29.52

# ---- stage 1: Spark's Kafka connector + transitive jars (same resolution as the native stack) ------
FROM ${MAVEN_IMAGE} AS jars
ARG SPARK_VERSION
ARG HADOOP_VERSION
ARG SPARK_AWSSDK_VERSION
WORKDIR /build
COPY ops/maven-settings.xml ops/spark/pom.xml ops/spark/s3a-pom.xml ./
RUN mvn -q -B -s maven-settings.xml -f pom.xml dependency:copy-dependencies \
        -DoutputDirectory=/opt/retail-cache/spark-kafka-${SPARK_VERSION} -DincludeScope=runtime \
        -Dspark.version=${SPARK_VERSION} -Dmaven.repo.local=/build/m2 \
 && ls /opt/retail-cache/spark-kafka-${SPARK_VERSION}/*.jar > /dev/null
# Spark's S3A connector for the lake (core.spark.build_spark(lake=True)): ~10 MB, not the SDK's 558 MB bundle
RUN mvn -q -B -s maven-settings.xml -f s3a-pom.xml dependency:copy-dependencies \
        -DoutputDirectory=/opt/retail-cache/spark-s3a-${HADOOP_VERSION}-${SPARK_AWSSDK_VERSION} -DincludeScope=runtime \
        -Dhadoop.version=${HADOOP_VERSION} -Dawssdk.version=${SPARK_AWSSDK_VERSION} -Dmaven.repo.local=/build/m2 \
 && ls /opt/retail-cache/spark-s3a-${HADOOP_VERSION}-${SPARK_AWSSDK_VERSION}/hadoop-aws-${HADOOP_VERSION}.jar > /dev/null

# ---- stage 2: the virtualenv with the locked packages ----------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY ops/docker/requirements.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-deps -r /tmp/requirements.lock \
 && /opt/venv/bin/pip check

# ---- stage 3: runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG SPARK_VERSION
# Debian's OpenJDK 17 JRE (Spark 4.0 supports Java 17/21); the man dir must exist on slim images.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && ln -s "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)" /usr/lib/jvm/java-17 \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/lib/jvm/java-17/bin:$PATH \
    PYTHONPATH=/opt/retail \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    RETAIL_CACHE_DIR=/opt/retail-cache \
    RETAIL_STATE_DIR=/var/lib/retail/state \
    SPARK_CHECKPOINT_DIR=/var/lib/retail/checkpoints \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/retail/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    RETAIL_ENTRYPOINT_STRICT=1

# Non-root user; the folders named volumes mount over are created here so the volumes inherit the owner.
RUN groupadd --system --gid 10001 retail \
 && useradd --system --uid 10001 --gid retail --home-dir /home/retail --create-home retail \
 && mkdir -p /opt/retail /opt/retail-cache /var/lib/retail/state /var/lib/retail/checkpoints \
             /opt/airflow/logs /opt/airflow/auth /opt/retail/reports \
 && chown -R retail:retail /opt/retail /opt/retail-cache /var/lib/retail /opt/airflow

COPY --from=builder /opt/venv /opt/venv
COPY --from=jars --chown=retail:retail /opt/retail-cache /opt/retail-cache
WORKDIR /opt/retail
# The source tree itself (REPO_ROOT = /opt/retail: migrations, Avro schemas, dags found as natively).
COPY --chown=retail:retail pyproject.toml ./
COPY --chown=retail:retail core ./core
COPY --chown=retail:retail contracts ./contracts
COPY --chown=retail:retail ops ./ops
COPY --chown=retail:retail etl ./etl
COPY --chown=retail:retail chserver ./chserver
COPY --chown=retail:retail producers ./producers
COPY --chown=retail:retail streaming ./streaming
COPY --chown=retail:retail ml ./ml
COPY --chown=retail:retail dags ./dags
COPY --chown=retail:retail clickhouse ./clickhouse

USER retail
# Airflow API/UI, scheduler health server (the streaming job runs without a Spark UI: heartbeat healthcheck)
EXPOSE 8080 8974
ENTRYPOINT ["python", "-m", "ops.entrypoint"]
CMD ["--help"]
