"""Idempotent creation of the platform's Kafka topics (KafkaAdminClient).

Topics (partitions from :data:`contracts.TOPIC_PARTITIONS`, names ``settings.topic(suffix)``):
retail-sales-transactions (3), retail-inventory-updates (3), retail-price-changes (2),
retail-customer-events (1), retail-restock-alerts (1), retail-dead-letter (1); replication factor 1
(single-node broker; override with ``replication_factor``), ``retention.ms = KAFKA_RETENTION_MS``
(default 7 days). Existing topics are left alone (their partitions/config are not altered).
"""

from __future__ import annotations

from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from contracts import TOPIC_PARTITIONS
from core.settings import Settings, get_settings


def topic_specs(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """{topic name: {"num_partitions": int, "configs": {"retention.ms": KAFKA_RETENTION_MS as str}}} of every
    platform topic (:data:`contracts.TOPIC_PARTITIONS`). Computed from the settings only: no broker is contacted.

    Raises:
        ConfigError: only when ``settings`` is None and the environment's settings are invalid
            (:func:`core.settings.get_settings`).
    """
    s = settings or get_settings()
    return {s.topic(suffix): {"num_partitions": n, "configs": {"retention.ms": str(s.kafka_retention_ms)}}
            for suffix, n in TOPIC_PARTITIONS.items()}


def admin_client(settings: Settings | None = None, **kw: Any) -> KafkaAdminClient:
    """A KafkaAdminClient on ``KAFKA_BOOTSTRAP_SERVERS`` (caller closes it)."""
    s = settings or get_settings()
    return KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap_servers.split(","),
                            client_id="retail-admin", **kw)


def ensure_topics(settings: Settings | None = None, replication_factor: int = 1) -> dict[str, list[str]]:
    """Create the missing platform topics; tolerate existing ones (also under a creation race).

    Returns:
        {"created": [...], "existed": [...]} topic names, sorted.
    Raises:
        kafka.errors.KafkaError: any error other than TopicAlreadyExists (e.g. broker unreachable).
    """
    s = settings or get_settings()
    specs = topic_specs(s)
    created, existed = [], []
    admin = admin_client(s)
    try:
        present = set(admin.list_topics())
        for name, spec in specs.items():
            if name in present:
                existed.append(name)
                continue
            try:
                admin.create_topics({name: {"num_partitions": spec["num_partitions"],
                                            "replication_factor": replication_factor,
                                            "configs": spec["configs"]}},
                                    wait_for_metadata=True)
                created.append(name)
            except TopicAlreadyExistsError:
                existed.append(name)
    finally:
        admin.close()
    return {"created": sorted(created), "existed": sorted(existed)}


def describe_topics(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """{topic: {"partitions": n, "retention.ms": str | None}} for the platform topics that exist ({} when none
    does); topics of other names are not listed. ``retention.ms`` is the broker's effective value (ms, as text).

    Raises:
        kafka.errors.KafkaTimeoutError: the bootstrap servers cannot be reached within the admin client's
            ``bootstrap_timeout_ms`` (30 s by default; kafka-python 3 raises this, not NoBrokersAvailable).
        kafka.errors.KafkaError: the broker fails a metadata or describe request.
        ConfigError: ``settings`` is None and the environment's settings are invalid.
    """
    from kafka.admin import ConfigResource, ConfigResourceType

    s = settings or get_settings()
    names = list(topic_specs(s))
    admin = admin_client(s)
    try:
        existing = set(admin.list_topics())
        present = [n for n in names if n in existing]
        if not present:
            return {}
        out: dict[str, dict[str, Any]] = {t["name"]: {"partitions": len(t["partitions"])}
                                          for t in admin.describe_topics(present)}
        # kafka-python 3: {"topic": {name: {config: {"value": ..., ...}}}}
        cfgs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in present],
                                      config_filter="all").get("topic", {})
        for name in out:
            out[name]["retention.ms"] = cfgs.get(name, {}).get("retention.ms", {}).get("value")
        return out
    finally:
        admin.close()
