"""Idempotent creation of the platform's Kafka topics (KafkaAdminClient).

Topics (partitions from :data:`contracts.TOPIC_PARTITIONS`, names ``settings.topic(suffix)``):
retail-sales-transactions (3), retail-inventory-updates (3), retail-price-changes (2),
retail-customer-events (1), retail-restock-alerts (1), retail-dead-letter (1); replication factor 1
(single-node broker; override with ``replication_factor``), ``retention.ms = KAFKA_RETENTION_MS``
(default 7 days), ``cleanup.policy = delete``, ``message.timestamp.type = LogAppendTime`` (the broker stamps each
record with its own clock when it appends it, whatever the producer set: the stream bounds an event's time by
that stamp plus ``STREAM_MAX_FUTURE_MINUTES``, so a POS whose clock runs ahead is quarantined instead of lifting
the watermark; with ``CreateTime`` the producer's own clock was the reference). An existing topic gets only its
timestamp type set (records already written keep theirs); otherwise it is not altered, but its layout is compared
with the spec (:func:`layout_problems`): a different partition count, retention or timestamp type (the broker
refused to set it) is a warning naming topic, setting, expected and actual (logged, and returned under
``warnings``); a ``cleanup.policy`` with ``compact`` fails
(:class:`TopicLayoutError`), since compaction keeps only the last record per key (``store_id|product_id``) and so
deletes sales and stock movements the stream, the lake and the nightly ETL must each see.
"""

from __future__ import annotations

from typing import Any

import logging

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from contracts import TOPIC_PARTITIONS
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


#: the topic config naming whose clock stamps a record (``CreateTime``: the producer's; ``LogAppendTime``: the
#: broker's, at append; Kafka's topic-level ``message.timestamp.type``)
TIMESTAMP_TYPE = "message.timestamp.type"
LOG_APPEND_TIME = "LogAppendTime"


class TopicLayoutError(RuntimeError):
    """An existing platform topic breaks a platform guarantee (e.g. ``cleanup.policy=compact``); ``str`` names
    topic, setting, expected and actual."""


def topic_specs(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """{topic name: {"num_partitions": int, "configs": {"retention.ms": KAFKA_RETENTION_MS as str,
    "cleanup.policy": "delete", "message.timestamp.type": "LogAppendTime"}}} of every platform topic (:data:`contracts.TOPIC_PARTITIONS`). Computed from the settings only: no broker is contacted.

    Raises:
        ConfigError: only when ``settings`` is None and the environment's settings are invalid
            (:func:`core.settings.get_settings`).
    """
    s = settings or get_settings()
    return {s.topic(suffix): {"num_partitions": n, "configs": {"retention.ms": str(s.kafka_retention_ms),
                                                               "cleanup.policy": "delete",
                                                               TIMESTAMP_TYPE: LOG_APPEND_TIME}}
            for suffix, n in TOPIC_PARTITIONS.items()}


def layout_problems(name: str, spec: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(warnings, errors)`` of an existing topic ``name`` whose described layout is ``actual``
    (``{"partitions": n, config name: value, ...}``, as :func:`describe_topics` gives) against its ``spec``
    (:func:`topic_specs`).

    * partitions other than the contract's (:data:`contracts.TOPIC_PARTITIONS`): warning (each key still stays in
      one partition, in order; fewer partitions = less parallelism for the stream, and keys sit on other
      partitions than on a topic created by the platform);
    * ``retention.ms`` other than ``KAFKA_RETENTION_MS``: warning (shorter: records may expire before they are
      read; the stream counts them as expired);
    * ``message.timestamp.type`` other than ``LogAppendTime``: warning (the records carry the producers' clocks:
      a POS whose clock runs ahead by less than ``STREAM_MAX_FUTURE_MINUTES`` plus its lead is accepted and lifts
      the watermark, and other stores' on-time events are dropped from the windows as late);
    * ``cleanup.policy`` including ``compact``: error (the broker would keep only the last record per key).
    """
    warnings, errors = [], []
    want_p, got_p = spec["num_partitions"], actual.get("partitions")
    if got_p is not None and got_p != want_p:
        warnings.append(f"topic {name}: partitions expected {want_p}, actual {got_p}"
                        + (" (fewer: less parallelism, keys on other partitions)" if got_p < want_p else ""))
    want_r, got_r = spec["configs"]["retention.ms"], actual.get("retention.ms")
    if got_r is not None and str(got_r) != str(want_r):
        warnings.append(f"topic {name}: retention.ms expected {want_r}, actual {got_r}")
    got_c = actual.get("cleanup.policy")
    if got_c is not None and "compact" in str(got_c):
        errors.append(f"topic {name}: cleanup.policy expected delete, actual {got_c} (compaction keeps only the "
                      "last record per key: events would be deleted)")
    elif got_c is not None and str(got_c) != spec["configs"]["cleanup.policy"]:
        warnings.append(f"topic {name}: cleanup.policy expected {spec['configs']['cleanup.policy']}, actual {got_c}")
    got_t = actual.get(TIMESTAMP_TYPE)
    if got_t is not None and str(got_t) != spec["configs"][TIMESTAMP_TYPE]:
        warnings.append(f"topic {name}: {TIMESTAMP_TYPE} expected {spec['configs'][TIMESTAMP_TYPE]}, actual {got_t} "
                        "(records carry the producers' clocks: a fast one lifts the watermark)")
    return warnings, errors


def admin_client(settings: Settings | None = None, **kw: Any) -> KafkaAdminClient:
    """A KafkaAdminClient on ``KAFKA_BOOTSTRAP_SERVERS`` (caller closes it)."""
    s = settings or get_settings()
    return KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap_servers.split(","),
                            client_id="retail-admin", **kw)


def ensure_topics(settings: Settings | None = None, replication_factor: int = 1) -> dict[str, list[str]]:
    """Create the missing platform topics; tolerate existing ones (also under a creation race), set
    ``message.timestamp.type=LogAppendTime`` on existing ones that lack it (:func:`_stamp_with_broker_clock`), and
    compare their layout with the spec (:func:`layout_problems`; each warning is logged too).

    Returns:
        {"created": [...], "existed": [...], "altered": [...], "warnings": [...]}: topic names, sorted ("altered":
        existing topics whose timestamp type was set); the layout warnings.
    Raises:
        TopicLayoutError: an existing topic breaks a guarantee (``cleanup.policy`` compact), after the others
            were created.
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
        actual = _describe(admin, existed) if existed else {}
        altered = _stamp_with_broker_clock(admin, actual)
    finally:
        admin.close()
    warnings, errors = [], []
    for name in sorted(existed):
        w, e = layout_problems(name, specs[name], actual.get(name, {}))
        warnings += w
        errors += e
    for w in warnings:
        log.warning("%s", w)
    if errors:
        raise TopicLayoutError("; ".join(errors))
    return {"created": sorted(created), "existed": sorted(existed), "altered": altered, "warnings": warnings}


def _stamp_with_broker_clock(admin: KafkaAdminClient, actual: dict[str, dict[str, Any]]) -> list[str]:
    """Set ``message.timestamp.type=LogAppendTime`` on the described existing topics that have another type
    (created before 2026-12-07, or by hand with Kafka's default CreateTime), one incremental SET per topic (no
    other config touched; the records already written keep their timestamps); ``actual`` is updated with the
    re-described values, so a topic the broker did not change is still warned about.

    Returns:
        the altered topic names, sorted.
    Raises:
        kafka.errors.KafkaError: the broker fails the alter or describe request.
    """
    from kafka.admin import ConfigResource, ConfigResourceType

    stale = sorted(n for n, d in actual.items() if d.get(TIMESTAMP_TYPE) not in (None, LOG_APPEND_TIME))
    if not stale:
        return []
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, n, configs={TIMESTAMP_TYPE: LOG_APPEND_TIME})
                         for n in stale], incremental=True)
    actual.update(_describe(admin, stale))
    done = [n for n in stale if actual[n].get(TIMESTAMP_TYPE) == LOG_APPEND_TIME]
    log.warning("topics %s: %s set to %s (was CreateTime: the producers' clocks)", done, TIMESTAMP_TYPE,
                LOG_APPEND_TIME)
    return done


def _describe(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, Any]]:
    """{topic: {"partitions": n, "retention.ms": str | None, "cleanup.policy": str | None,
    "message.timestamp.type": str | None}} of existing topics."""
    from kafka.admin import ConfigResource, ConfigResourceType

    out: dict[str, dict[str, Any]] = {t["name"]: {"partitions": len(t["partitions"])}
                                      for t in admin.describe_topics(names)}
    # kafka-python 3: {"topic": {name: {config: {"value": ..., ...}}}}
    cfgs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in out],
                                  config_filter="all").get("topic", {})
    for name in out:
        for key in ("retention.ms", "cleanup.policy", TIMESTAMP_TYPE):
            out[name][key] = cfgs.get(name, {}).get(key, {}).get("value")
    return out


def describe_topics(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """{topic: {"partitions": n, "retention.ms": str | None, "cleanup.policy": str | None,
    "message.timestamp.type": str | None}} for the platform topics that exist ({} when none does); topics of other
    names are not listed. The configs are the broker's effective values (``retention.ms`` in ms, as text).

    Raises:
        kafka.errors.KafkaTimeoutError: the bootstrap servers cannot be reached within the admin client's
            ``bootstrap_timeout_ms`` (30 s by default; kafka-python 3 raises this, not NoBrokersAvailable).
        kafka.errors.KafkaError: the broker fails a metadata or describe request.
        ConfigError: ``settings`` is None and the environment's settings are invalid.
    """
    s = settings or get_settings()
    names = list(topic_specs(s))
    admin = admin_client(s)
    try:
        existing = set(admin.list_topics())
        present = [n for n in names if n in existing]
        if not present:
            return {}
        return _describe(admin, present)
    finally:
        admin.close()
