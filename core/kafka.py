"""Publishing events to Kafka with contract validation and a dead-letter queue.

:class:`EventPublisher` wraps a kafka-python ``KafkaProducer`` (acks='all', retries, idempotence,
batch_size 16384, linger_ms 10, JSON values, string keys). Every record is validated against its Avro contract
(:func:`contracts.validate_event`) *before* it is sent:

* valid -> topic ``settings.topic(EVENT_TYPES[event_type])``, key ``store_id|product_id``
  (customer events: ``customer_id``) so one SKU at one store stays in one partition, in order;
* invalid -> the dead-letter topic ``settings.topic("dead-letter")`` as JSON
  ``{event_type, reason, payload, failed_at}`` (failed_at epoch ms UTC). Nothing is dropped silently.

Kafka record timestamps are the send time (CreateTime); the event time travels in the payload's
``timestamp`` field (replayed 2011 times would otherwise expire at once under the 7-day retention,
and the broker rejects timestamps more than ``log.message.timestamp.after.max.ms`` in the future).

Delivery is asynchronous; broker acknowledgements are counted by callbacks (``delivered``) and errors
by errbacks (``failed``). After :meth:`EventPublisher.flush` (called by :meth:`close` / on context exit)
``delivered + failed == sent + dead_lettered`` holds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.serializer import Serializer

from contracts import DEAD_LETTER, EVENT_TYPES, ContractError, validate_event
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: producer defaults required by the platform (issue 2, part 2); overridable per instance
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "retries": 5,
    "batch_size": 16384,
    "linger_ms": 10,
    "retry_backoff_ms": 200,
    # idempotent producer: retries never duplicate or reorder within a partition, even with
    # 5 requests in flight (KIP-98); needs acks=all, retries > 0, in-flight <= 5
    "enable_idempotence": True,
    "max_in_flight_requests_per_connection": 5,
    "request_timeout_ms": 30000,
    "max_block_ms": 30000,
}


def _json_default(obj: Any) -> Any:
    """JSON fallback for values an invalid record may carry (datetimes, bytes, sets...)."""
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def serialize_value(value: Any) -> bytes:
    """Kafka value serializer: compact UTF-8 JSON; unknown types fall back to ``str``."""
    return json.dumps(value, separators=(",", ":"), default=_json_default).encode("utf-8")


class JsonValueSerializer(Serializer):
    """kafka-python value serializer: :func:`serialize_value`."""

    def serialize(self, topic, headers, data):
        return None if data is None else serialize_value(data)


class StrKeySerializer(Serializer):
    """kafka-python key serializer: UTF-8 of ``str(key)``; None stays None (round-robin partition)."""

    def serialize(self, topic, headers, data):
        return None if data is None else str(data).encode("utf-8")


def make_producer(settings: Settings | None = None, *, client_id: str = "retail-producer",
                  **overrides: Any) -> KafkaProducer:
    """The platform's one Kafka producer configuration: :data:`PRODUCER_DEFAULTS` (acks=all, idempotence),
    UTF-8 string keys, compact JSON values, KAFKA_BOOTSTRAP_SERVERS.

    Args:
        settings: default :func:`get_settings`.
        client_id: Kafka client id.
        **overrides: keyword overrides of :data:`PRODUCER_DEFAULTS` (e.g. a larger ``batch_size`` for bulk sends).
    Raises:
        kafka.errors.NoBrokersAvailable: the bootstrap servers cannot be reached.
    """
    s = settings or get_settings()
    return KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), client_id=client_id,
                         key_serializer=StrKeySerializer(), value_serializer=JsonValueSerializer(),
                         **{**PRODUCER_DEFAULTS, **overrides})


def event_key(event_type: str, record: dict[str, Any]) -> str | None:
    """Partition key: ``customer_id`` for customer events, else ``"store_id|product_id"``.

    Returns None when the record lacks the key fields (only possible for invalid records).
    """
    if not isinstance(record, dict):
        return None
    if event_type == "customer_event":
        cid = record.get("customer_id")
        return None if cid is None else str(cid)
    if "store_id" not in record and "product_id" not in record:
        return None
    return f"{record.get('store_id')}|{record.get('product_id')}"


def dead_letter_record(event_type: str, payload: Any, reason: str, failed_at_ms: int | None = None) -> dict[str, Any]:
    """The JSON document sent to the dead-letter topic for a record that failed its contract."""
    return {"event_type": event_type, "reason": reason, "payload": payload,
            "failed_at": int(time.time() * 1000) if failed_at_ms is None else int(failed_at_ms)}


class EventPublisher:
    """Validate-then-send publisher with a dead-letter topic and delivery counters.

    Counters (:attr:`counts`): ``sent`` valid records handed to the producer, ``dead_lettered`` invalid
    records handed to the dead-letter topic, ``delivered`` / ``failed`` broker acknowledgements / errors
    of both, ``by_topic_delivered`` per topic. Use as a context manager, or call :meth:`close`.

    Args:
        settings: platform settings (bootstrap servers, topic prefix); default :func:`get_settings`.
        client_id: Kafka client id.
        **producer_overrides: KafkaProducer keyword overrides of :data:`PRODUCER_DEFAULTS`.
    Raises:
        kafka.errors.NoBrokersAvailable: when the bootstrap servers cannot be reached.
    """

    def __init__(self, settings: Settings | None = None, *, client_id: str = "retail-producer",
                 **producer_overrides: Any):
        self.settings = settings or get_settings()
        self._producer = make_producer(self.settings, client_id=client_id, **producer_overrides)
        self._lock = threading.Lock()
        self.sent = 0
        self.dead_lettered = 0
        self.delivered = 0
        self.failed = 0
        self.by_topic_delivered: Counter[str] = Counter()
        self.dead_letter_reasons: Counter[str] = Counter()
        self.errors: list[str] = []  # first few delivery errors, for the final report
        self.dead_letter_topic = self.settings.topic(DEAD_LETTER)
        self._closed = False

    # ------------------------------------------------------------------ callbacks (sender thread)
    def _on_success(self, metadata) -> None:
        with self._lock:
            self.delivered += 1
            self.by_topic_delivered[metadata.topic] += 1

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if len(self.errors) < 20:
                self.errors.append(repr(exc))
        log.error("kafka delivery failed: %r", exc)

    def _send(self, topic: str, key: str | None, value: dict[str, Any], timestamp_ms: int | None) -> None:
        try:
            fut = self._producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)
        except KafkaError as exc:  # e.g. metadata timeout, buffer exhausted: counted, not hidden
            self._on_error(exc)
            return
        fut.add_callback(self._on_success)
        fut.add_errback(self._on_error)

    # ------------------------------------------------------------------ public API
    def topic_for(self, event_type: str) -> str:
        """Topic name of an event type. Raises KeyError for an unknown event type."""
        return self.settings.topic(EVENT_TYPES[event_type])

    def publish(self, event_type: str, record: dict[str, Any]) -> bool:
        """Validate ``record`` against its contract and send it (asynchronously).

        Returns:
            True when sent to its topic, False when it was routed to the dead-letter topic
            (contract violation or unknown event type; the reason travels with it).
        """
        if self._closed:
            raise RuntimeError("EventPublisher is closed")
        try:
            if event_type not in EVENT_TYPES:
                raise ContractError(f"unknown event type {event_type!r}")
            if not isinstance(record, dict):
                raise ContractError(f"record must be a JSON object, got {type(record).__name__}")
            validate_event(event_type, record)
        except ContractError as exc:
            self.dead_letter(event_type, record, str(exc))
            return False
        with self._lock:
            self.sent += 1
        # The Kafka record timestamp stays the producer's send time (CreateTime), not the event time:
        # replayed 2011 event times would fall out of the 7-day retention at once, future ones are
        # rejected by the broker (log.message.timestamp.after.max.ms), and send time is what
        # freshness (produce -> visible) is measured from. Event time travels in the payload.
        self._send(self.topic_for(event_type), event_key(event_type, record), record, None)
        return True

    def dead_letter(self, event_type: str, payload: Any, reason: str) -> None:
        """Send a rejected record with its reason to the dead-letter topic (counted in ``dead_lettered``)."""
        with self._lock:
            self.dead_lettered += 1
            self.dead_letter_reasons[reason[:120]] += 1
        self._send(self.dead_letter_topic, event_key(event_type, payload),
                   dead_letter_record(event_type, payload, reason), None)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every buffered record is acknowledged or failed (callbacks have run)."""
        self._producer.flush(timeout=timeout)

    @property
    def counts(self) -> dict[str, Any]:
        """Snapshot: sent, dead_lettered, delivered, failed, pending, by_topic_delivered, errors."""
        with self._lock:
            return {
                "sent": self.sent, "dead_lettered": self.dead_lettered,
                "delivered": self.delivered, "failed": self.failed,
                "pending": self.sent + self.dead_lettered - self.delivered - self.failed,
                "by_topic_delivered": dict(self.by_topic_delivered),
                "dead_letter_reasons": dict(self.dead_letter_reasons),
                "errors": list(self.errors),
            }

    def close(self, timeout: float | None = 60) -> None:
        """Flush, then close the producer (idempotent)."""
        if self._closed:
            return
        try:
            self.flush(timeout=timeout)
        finally:
            self._producer.close(timeout=timeout)
            self._closed = True

    def __enter__(self) -> "EventPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
