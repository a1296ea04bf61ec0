"""Publishing events to Kafka with contract validation and a dead-letter queue.

:class:`EventPublisher` wraps a kafka-python ``KafkaProducer`` (acks='all', retries, idempotence,
batch_size 16384, linger_ms 10, JSON values, string keys; :data:`BULK_OVERRIDES` for as-fast-as-possible sends).
Every record is validated against its Avro contract (:func:`contracts.validate_event`) *before* it is sent:

* valid -> topic ``settings.topic(EVENT_TYPES[event_type])``, key ``store_id|product_id``
  (customer events: ``customer_id``) so one SKU at one store stays in one partition, in order;
* invalid -> the dead-letter topic ``settings.topic("dead-letter")`` as JSON
  ``{event_type, reason, payload, failed_at}`` (failed_at epoch ms UTC). Nothing is dropped silently.

The producer stamps records with its send time (CreateTime), which the platform's topics replace by the
broker's append time (``message.timestamp.type=LogAppendTime``, :mod:`core.kafka_admin`: a producer clock
running ahead cannot move the stream's reference); the event time travels in the payload's ``timestamp`` field (replayed 2011 times would otherwise expire at once under the 7-day retention,
and the broker rejects timestamps more than ``log.message.timestamp.after.max.ms`` in the future).

Delivery is asynchronous; broker acknowledgements are counted by callbacks (``delivered``) and errors
by errbacks (``failed``). After :meth:`EventPublisher.flush` (called by :meth:`close` / on context exit)
``delivered + failed == sent + dead_lettered`` holds.

Per-record cost (issue 9, part 3; profiled with cProfile): valid records are serialised with orjson
(:func:`serialize_fast`, same JSON value as the stdlib's), partitions come from a per-key cache of Kafka's murmur2
(:class:`CachedKeyPartitioner`, same partition as the default partitioner), topics are looked up once, and bulk sends use larger batches
(:data:`BULK_OVERRIDES`) so the sender thread wakes up less often.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from typing import Any, Callable

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.serializer import Serializer

try:  # orjson: ~10x faster JSON; the stdlib stays the reference and the fallback
    import orjson
except ImportError:  # pragma: no cover - pinned in pyproject.toml
    orjson = None

from contracts import DEAD_LETTER, EVENT_TYPES, ContractError, validate_event
from core.logs import RepeatedLog
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: producer defaults required by the platform (issue 2, part 2); overridable per instance
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    # retry until delivery_timeout_ms: a broker restart or leader move is waited out, not reported as lost
    "retries": 2**31 - 1,
    "batch_size": 16384,
    "linger_ms": 10,
    "retry_backoff_ms": 200,
    # idempotent producer: retries never duplicate or reorder within a partition, even with
    # 5 requests in flight (KIP-98); needs acks=all, retries > 0, in-flight <= 5
    "enable_idempotence": True,
    "max_in_flight_requests_per_connection": 5,
    "request_timeout_ms": 30000,
    # the buffering bound while the broker cannot be reached: send() blocks up to max_block_ms when the
    # buffer (buffer_memory, 32 MB) is full or the topic's metadata is unknown, then raises; a buffered
    # record not acknowledged within delivery_timeout_ms (2 min) fails its future. Both are counted and
    # reported (EventPublisher.failed / errors), never dropped silently.
    "max_block_ms": 30000,
    "delivery_timeout_ms": 120000,
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


#: bulk-send overrides of :data:`PRODUCER_DEFAULTS` (simulator and replay as fast as possible, benchmarks):
#: 256 KiB batches and 50 ms linger fill a batch per partition with ~1,000 events instead of ~60, so the
#: sender thread (which competes with the producing thread for the GIL) runs per batch far less often.
#: acks=all and idempotence are unchanged. Paced (real-time) sends keep linger 10 ms for freshness.
BULK_OVERRIDES: dict[str, Any] = {"batch_size": 262144, "linger_ms": 50}

_ORJSON_OPTS = 0 if orjson is None else (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                                         | orjson.OPT_PASSTHROUGH_SUBCLASS)


def _has_nonfinite(obj: Any) -> bool:
    """True when a float NaN/inf occurs anywhere in ``obj`` (dicts, lists, tuples; float subclasses too)."""
    t = type(obj)
    if t is dict:
        values = obj.values()
    elif t is list or t is tuple:
        values = obj
    elif isinstance(obj, float):
        return not math.isfinite(obj)
    else:
        return False
    for v in values:  # a plain loop: this runs once per record
        tv = type(v)
        if tv is float:
            if v - v != 0.0:  # NaN - NaN and inf - inf are NaN; finite - itself is 0.0
                return True
        elif tv is dict or tv is list or tv is tuple or (tv is not str and tv is not int and isinstance(v, float)):
            if _has_nonfinite(v):
                return True
    return False


def serialize_fast(value: Any) -> bytes:
    """The JSON value of :func:`serialize_value`, through orjson when it gives the same value.

    Same decoded JSON as the stdlib path: datetimes, dataclasses and subclasses of builtins go to the same
    ``default`` (``str``), tuples/sets become lists. Non-ASCII text is written as UTF-8 instead of ``\\u``
    escapes (same value). The stdlib path is taken for what orjson would write differently or refuses:
    NaN/inf (stdlib writes ``NaN``, orjson ``null``), non-string keys, integers beyond 64 bits, lone surrogates.
    """
    if orjson is None or _has_nonfinite(value):
        return serialize_value(value)
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTS)
    except (orjson.JSONEncodeError, TypeError):
        return serialize_value(value)


class Encoded:
    """A value already serialised to its JSON bytes (``.data``): :class:`JsonValueSerializer` sends those bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class JsonValueSerializer(Serializer):
    """kafka-python value serializer: :func:`serialize_fast` (same JSON value as :func:`serialize_value`);
    :class:`Encoded` bytes pass through unchanged."""

    def serialize(self, topic, headers, data):
        """The value bytes of a record (kafka-python's ``Serializer`` interface; ``topic`` and ``headers``
        unused): None for None (a null value), ``data.data`` unchanged for an :class:`Encoded`, else compact UTF-8
        JSON of :func:`serialize_fast`.

        Raises:
            TypeError: a dict key JSON cannot take (e.g. a tuple).
            RecursionError: a circular or too deeply nested value.
        """
        if data is None:
            return None
        if type(data) is Encoded:
            return data.data
        return serialize_fast(data)


class CachedKeyPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2 of the key bytes, positive, modulo the partition count;
    random among available partitions for a null key) with the pure-Python murmur2 computed once per key.

    The keys are ``store|sku`` (or customer ids): a bounded set, so the cache is cleared when it reaches
    :attr:`MAX_KEYS`. The partition of a key is exactly the default partitioner's (Kafka's Java client too).
    """

    MAX_KEYS = 200_000

    def __init__(self):
        self._hash: dict[bytes, int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        """The partition id (int) of a record: for a key, ``sorted(partitions)[(murmur2(key bytes) & 0x7fffffff)
        % n]`` with n the topic's partition count (the hash cached per key bytes), None when the topic has no
        partition; for a null key, the default partitioner's random choice among the available partitions (all
        when none is available). ``key``, ``value`` and ``serialized_value`` are unused.

        Raises:
            ValueError: ``topic`` is not in the cluster metadata (the default partitioner's message).
        """
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        parts = cluster.partitions_for_topic(topic)
        if parts is None:
            raise ValueError("Topic %s not found in ClusterMetadata" % (topic,))
        h = self._hash.get(serialized_key)
        if h is None:
            if len(self._hash) >= self.MAX_KEYS:
                self._hash.clear()
            h = self._hash[serialized_key] = murmur2(serialized_key) & 0x7fffffff
        n = len(parts)
        return sorted(parts)[h % n] if n else None


class StrKeySerializer(Serializer):
    """kafka-python key serializer: UTF-8 of ``str(key)``; None stays None (round-robin partition)."""

    def serialize(self, topic, headers, data):
        """The key bytes: UTF-8 of ``str(data)``, None for None (``topic``, ``headers`` unused). A lone surrogate
        (only in the key of a dead letter: the contracts reject it in ids) is written as its 3 bytes
        (``surrogatepass``), so the record is still sent; strict UTF-8 would raise and stop the publisher."""
        return None if data is None else str(data).encode("utf-8", "surrogatepass")


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
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), client_id=client_id,
                             key_serializer=StrKeySerializer(), value_serializer=JsonValueSerializer(),
                             **{"partitioner": CachedKeyPartitioner(), **PRODUCER_DEFAULTS, **overrides})
    reinit_after_producer_id_reset(producer)
    return producer


def reinit_after_producer_id_reset(producer: KafkaProducer) -> None:
    """Make an idempotent (non-transactional) kafka-python producer ask for a new producer id after it reset its own.

    kafka-python (3.0.12) resets the producer id when a batch it had already sent expires (``delivery_timeout_ms``
    passed while the broker did not answer: a frozen broker, a network partition), as it must: the batch may have
    landed, so its sequence numbers are unknown. But it leaves the transaction state READY, and its sender only
    asks for an id in state UNINITIALIZED; with no id it sends nothing, and expires nothing, for good: every later
    record stays buffered, ``flush()`` without a timeout never returns and ``close()`` hangs. Kafka's Java client
    (``TransactionManager.resetIdempotentProducerId``) goes back to UNINITIALIZED, so the next sender loop gets a
    new id and the buffered records go out (found 2026-12-07: a replay of two weeks of the UCI log with the broker
    frozen 150 s was still flushing 6 min later, deaf to SIGTERM; ``tests/test_producers_kafka.py``,
    ``test_a_producer_whose_batches_expired_while_the_broker_was_frozen_sends_again``). This does the same on
    ``producer``'s transaction manager (a no-op for a producer without one, i.e. idempotence off, or a
    transactional one, whose reset kafka-python refuses anyway).

    The producer-id request itself retries a retriable error other than a lost connection for every idempotent
    producer of the process (:func:`_retry_init_producer_id_on_retriable_errors`, installed at this module's import):
    kafka-python 3.0.12 took a timed-out ``InitProducerId`` (``RequestTimedOutError``: the broker frozen or slow after
    the connection's handshake) as a fatal error, and a producer in that state fails every record for good.

    Args:
        producer: a kafka-python ``KafkaProducer`` (its private ``_transaction_manager``; absent: nothing done).
    """
    from kafka.producer.transaction_manager import TransactionState

    tm = getattr(producer, "_transaction_manager", None)
    if tm is None or tm.is_transactional():
        return
    # the bound of the producer-id retry (_retry_init_producer_id_on_retriable_errors, fail_if_producer_id_overdue):
    # this producer's own delivery timeout, counted from the moment it is without an id (made, or reset below)
    tm._pid_retry_bound_s = producer.config["delivery_timeout_ms"] / 1000
    tm._pid_lost_at = time.monotonic()
    reset = tm.reset_producer_id

    def reset_and_reinit() -> None:
        # stamped before the id is cleared: a publishing thread's fail_if_producer_id_overdue between the two would
        # otherwise read the id gone and the stamp of the producer's making, long past the bound, and fail it
        # (second review of 2026-12-07)
        tm._pid_lost_at = time.monotonic()
        reset()
        with tm._lock:
            if not tm.has_producer_id() and tm._current_state == TransactionState.READY:
                log.warning("kafka producer %s: a batch expired after it was sent; asking the broker for a new "
                            "producer id (the records still buffered are sent under it)",
                            producer.config.get("client_id"))
                tm._current_state = TransactionState.UNINITIALIZED   # the sender's next loop: InitProducerId
                tm._pid_lost_at = time.monotonic()

    tm.reset_producer_id = reset_and_reinit


def _retry_init_producer_id_on_retriable_errors() -> None:
    """Make every idempotent (non-transactional) producer's ``InitProducerId`` request (kafka-python 3.0.12) retry on
    a retriable error, as on a lost connection, instead of failing the producer for good. Installed once, when this
    module is imported: before any producer of the process exists, so also a producer's very first request.

    kafka-python's ``TxnRequestHandler.on_complete`` re-enqueues a request only when it failed with a
    ``KafkaConnectionError``; any other exception, e.g. ``RequestTimedOutError`` (the request sent on a connection
    whose broker then froze, or a broker slower than ``request_timeout_ms`` to allocate an id), is a fatal error:
    the producer's state becomes FATAL_ERROR, from which no transition leads back, and its sender fails every
    record, buffered or sent later, with that error (found 2026-12-07 in review, provoked by
    ``tests/test_producers_kafka.py::test_a_producer_id_request_that_times_out_is_retried_not_fatal``). Kafka's Java
    client treats a timed-out request as a disconnection and retries it. Here ``InitProducerIdHandler.on_complete``
    hands such an error of a non-transactional producer to kafka-python's ``on_complete`` as a
    ``KafkaConnectionError`` (the original named in it); a transactional producer's requests keep kafka-python's
    behaviour. The retry is bounded: once the producer's ``delivery_timeout_ms`` (set on its transaction manager by
    :func:`reinit_after_producer_id_reset`; kafka-python's default, :data:`PRODUCER_DEFAULTS`, before that) has
    passed since the first failure not followed by an answer, the error is left to kafka-python, which makes the
    producer fatal: its sender then fails every buffered record with it (counted by their errbacks) and
    :func:`renew_if_fatal` replaces it at the next record. Without that bound (until the review of 2026-12-07) a
    broker whose ``InitProducerId`` always timed out held the records for good, neither delivered nor failed
    (kafka-python expires batches only in the sender's data path, which does not run without a producer id), and
    ``flush()`` without a timeout never returned (``tests/test_producers.py::
    test_a_producer_id_request_that_keeps_timing_out_fails_the_producer_after_delivery_timeout_ms``).
    Until the review of 2026-12-07 this was installed on each producer's transaction manager after
    ``KafkaProducer()`` returned, when its sender thread had already taken the first request (10 of 10 producers
    checked): a first request that timed out still made the producer fatal (``tests/test_producers.py::
    test_a_new_producers_first_producer_id_request_retries_a_timeout_instead_of_failing_for_good``). Idempotent: a
    second call changes nothing."""
    import kafka.errors as Errors
    from kafka.producer.transaction_manager import InitProducerIdHandler

    complete = InitProducerIdHandler.on_complete
    if getattr(complete, "_retries_retriable", False):
        return

    def on_complete(self, correlation_id, response_or_exc):
        tm = self.transaction_manager
        if not isinstance(response_or_exc, BaseException):
            tm._pid_failing_since = None   # an answer: a later failure starts a new bound
        elif (isinstance(response_or_exc, Errors.RetriableError)
                and not isinstance(response_or_exc, Errors.KafkaConnectionError)
                and not tm.is_transactional()):
            now = time.monotonic()
            since = getattr(tm, "_pid_failing_since", None)
            if since is None:
                since = tm._pid_failing_since = now
            bound_s = getattr(tm, "_pid_retry_bound_s", PRODUCER_DEFAULTS["delivery_timeout_ms"] / 1000)
            if now - since < bound_s:
                log.warning("kafka producer id request failed with %r: retried", response_or_exc)
                response_or_exc = Errors.KafkaConnectionError(f"InitProducerId: {response_or_exc!r} (retried)")
            else:
                log.error("kafka producer id request failed with %r, %.1f s after its first failure (past "
                          "delivery_timeout_ms, %.1f s): not retried, the producer is failed (its records fail, "
                          "core.kafka.renew_if_fatal replaces it)", response_or_exc, now - since, bound_s)
        return complete(self, correlation_id, response_or_exc)

    on_complete._retries_retriable = True
    on_complete.__doc__ = complete.__doc__
    InitProducerIdHandler.on_complete = on_complete


_retry_init_producer_id_on_retriable_errors()


def fail_if_producer_id_overdue(producer: KafkaProducer) -> bool:
    """Put ``producer`` (kafka-python, idempotent, made by :func:`make_producer`) in its fatal state when it has been
    without a producer id for longer than its ``delivery_timeout_ms`` (since it was made, or since its id was
    reset after a sent batch expired); True when it is (now or already) fatal. The complement of the bounded retry
    of :func:`_retry_init_producer_id_on_retriable_errors` for a request that cannot even be sent: kafka-python's
    sender holds the request in a loop of its own while the broker's node is not ready (a frozen broker after a
    reconnect: the connection's handshake is never answered), where no error reaches the handler and no batch
    expires. Review of 2026-12-07: records handed over then were neither delivered nor failed while the broker
    stayed frozen, and ``flush()`` without a timeout never returned (``tests/test_producers_kafka.py::
    test_a_broker_answering_no_producer_id_fails_the_records_and_a_close_that_raises_still_logs``). The caller then
    aborts it (:func:`abort_producer`, which fails its records) or replaces it (:func:`renew_if_fatal`).

    Args:
        producer: a kafka-python producer (without a transaction manager, or a transactional one: False).
    """
    tm = getattr(producer, "_transaction_manager", None)
    if tm is None or tm.is_transactional():
        return False
    if tm.has_fatal_error():
        return True
    lost_at, bound_s = getattr(tm, "_pid_lost_at", None), getattr(tm, "_pid_retry_bound_s", None)
    if lost_at is None or bound_s is None or tm.has_producer_id():
        return False
    if time.monotonic() - tm._pid_lost_at < bound_s:
        return False
    with tm._lock:   # re-read under the lock the reset's state change takes (an RLock: the transition takes it too)
        waited = time.monotonic() - tm._pid_lost_at
        if tm.has_producer_id() or waited < bound_s:
            return False
        exc = KafkaTimeoutError(f"no producer id from the broker within delivery_timeout_ms ({bound_s:.1f} s): "
                                f"waited {waited:.1f} s")
        tm.transition_to_fatal_error(exc)
    log.error("kafka producer %s: %s; the producer is failed (its records fail)", producer.config.get("client_id"),
              exc)
    return True


def producer_fatal_error(producer: KafkaProducer) -> BaseException | None:
    """The error that put ``producer`` (kafka-python, idempotent) in its fatal state, else None. A producer in that
    state fails every record it is given, for good (no transition leads back): only a new producer sends again."""
    tm = getattr(producer, "_transaction_manager", None)
    if tm is None or not tm.has_fatal_error():
        return None
    return tm.last_error or KafkaError("producer in a fatal state")


def renew_if_fatal(producer: KafkaProducer, make: Callable[[], KafkaProducer]) -> KafkaProducer:
    """``producer`` itself while it can send, else (:func:`producer_fatal_error`) a new one from ``make()`` after the
    failed one is closed at once (:func:`abort_producer` with no flush: its incomplete records are failed, counted by
    their errbacks). The one place the platform's long-lived producers are rebuilt: the runs' publishers
    (:class:`EventPublisher`) and the stream's restock-alert producer (``streaming.sinks.StreamSinks.producer``);
    until 2026-12-07 a fatal producer failed every later record of the run or of the stream's life."""
    exc = producer_fatal_error(producer)
    if exc is None:
        return producer
    log.error("kafka producer %s is in a fatal state (%r): closed, a new one built",
              getattr(producer, "config", {}).get("client_id"), exc)
    abort_producer(producer, 0)
    return make()


def abort_producer(producer: KafkaProducer, timeout: float = 5.0) -> None:
    """Close ``producer`` within about ``timeout`` seconds whatever the broker does: flush for at most ``timeout``
    seconds, then, if records are still buffered (broker down or frozen), stop its sender thread forcefully
    (kafka-python's ``close()`` flushes first and cannot force past a flush that waits up to
    ``delivery_timeout_ms``, 2 min), which fails every incomplete record (their futures and errbacks get
    ``Producer is closed forcefully``; none is delivered afterwards), and close it without waiting (a failed close
    is logged as a warning, not raised). Returns in about ``timeout`` seconds while Kafka acknowledges nothing
    (down or frozen: the first buffered batch's wait times out), then up to ``timeout`` more for the sender's join:
    at most ~2 x ``timeout`` in all. kafka-python applies the flush timeout to each buffered batch in turn, so a
    broker that answers each batch just in time could stretch the flush further; nothing bounds that but the
    producer's own ``delivery_timeout_ms``. Used by :meth:`EventPublisher.abort` and by
    the streaming job's alert producer at a stop (:meth:`streaming.sinks.StreamSinks.close`).

    Args:
        producer: a kafka-python producer (closing a closed one is a no-op).
        timeout: seconds, >= 0 (0: no flush, abort at once).
    """
    try:
        producer.flush(timeout=timeout)
    except KafkaTimeoutError:
        sender = getattr(producer, "_sender", None)   # kafka-python: close() cannot force past a flush
        if sender is not None:
            sender.force_close()          # aborts the incomplete batches: their errbacks count them failed
            sender.join(timeout)
    try:
        producer.close(timeout=0)
    except KafkaError as exc:   # the records' fates are settled above; only the client's resources are at stake
        log.warning("closing Kafka producer %s: %s", getattr(producer, "config", {}).get("client_id"), exc)


def flush_after_sender(producer: KafkaProducer, error_log: RepeatedLog) -> None:
    """Flush ``error_log`` (:class:`core.logs.RepeatedLog`) once ``producer``'s sender thread has ended, so that
    failures whose errbacks run after the caller's own flush (a sender that outlived :func:`abort_producer`'s join,
    e.g. waiting up to ``request_timeout_ms`` for a frozen broker's producer-id answer; the old producer of
    :func:`renew_if_fatal`, aborted without a join) are logged, not only counted (review of 2026-12-07: they were
    never logged). A daemon thread joins the sender and flushes; nothing is started when the sender has already
    ended. At the interpreter's exit ``core.logs`` flushes every live log anyway.

    Args:
        producer: a kafka-python ``KafkaProducer`` (its private ``_sender`` thread; absent: nothing done).
        error_log: the log its errbacks write to.
    """
    sender = getattr(producer, "_sender", None)
    if sender is None or not sender.is_alive():
        return

    def join_then_flush() -> None:
        sender.join()
        error_log.flush()

    threading.Thread(target=join_then_flush, name="kafka-error-log-flush", daemon=True).start()


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
        self._make = lambda: make_producer(self.settings, client_id=client_id, **producer_overrides)
        self._producer = self._make()
        self._tm = getattr(self._producer, "_transaction_manager", None)
        self._aborted_producer: KafkaProducer | None = None   # the producer a flush aborted (once per producer)
        self._lock = threading.Lock()
        self.sent = 0
        self.dead_lettered = 0
        self.delivered = 0
        self.failed = 0
        self.by_topic_delivered: Counter[str] = Counter()
        self.dead_letter_reasons: Counter[str] = Counter()
        self.errors: list[str] = []  # first few delivery errors, for the final report
        #: delivery failures logged bounded (per exception type: 5 in full, then one line per 10 s with the count,
        #: the rest at flush/close/abort); until 2026-12-07 one ERROR line per failed record (a frozen broker with
        #: 100,000 records in flight: 100,000 lines). The counts above stay exact.
        self.error_log = RepeatedLog(log, "kafka delivery failed")
        self.dead_letter_topic = self.settings.topic(DEAD_LETTER)
        self._topics = {et: self.settings.topic(t) for et, t in EVENT_TYPES.items()}
        self._max_future = int(self.settings.stream_max_future_minutes)
        self._closed = False
        #: the first send the producer refused after blocking ``max_block_ms`` (30 s): no topic metadata (broker
        #: unreachable, or the topic missing while the broker does not create topics) or no buffer space. From
        #: then on every send is counted as failed at once (``refused``) instead of blocking again per record
        #: (before: 30 s per event of each topic not used yet); the CLI stops its run (producers.cli).
        self.stalled: str | None = None
        self.refused = 0
        #: optional ``on_result(tag, ok)``, called once per record sent from now on (valid or dead letter) when the
        #: broker acknowledges it (ok True) or it fails (False; a refused send at once), in the sender thread;
        #: ``tag`` is the value of :attr:`tag` when the record was handed over (``producers.cli.run_replay``: the
        #: source row, so a stopped replay knows which rows are on the broker)
        self.on_result: Callable[[Any, bool], None] | None = None
        self.tag: Any = None

    # ------------------------------------------------------------------ callbacks (sender thread)
    def _on_success(self, metadata) -> None:
        with self._lock:  # kept: a callback added to an already completed future runs in the caller's thread
            self.delivered += 1
            self.by_topic_delivered[metadata.topic] += 1

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if len(self.errors) < 20:
                self.errors.append(repr(exc))
        self.error_log.log(type(exc).__name__, "kafka delivery failed: %r", exc)

    def _send(self, topic: str, key: str | None, value: dict[str, Any], timestamp_ms: int | None) -> None:
        hook, tag = self.on_result, self.tag
        self.error_log.tick()   # the failures' due summary lines (one per 10 s per type), also after a burst ended
        if self.stalled is not None:
            with self._lock:
                self.failed += 1
                self.refused += 1
            if hook is not None:
                hook(tag, False)
            return
        if self._tm is not None and fail_if_producer_id_overdue(self._producer):   # failed: a new one (renew_if_fatal)
            old = self._producer
            try:
                self._producer = renew_if_fatal(self._producer, self._make)
            except KafkaError as exc:
                # no broker for the new producer within bootstrap_timeout_ms: stalled, as a blocked send (review of
                # 2026-12-07: raised, it ended the run with a traceback, no report and no file of unpublished rows)
                self.stalled = f"{topic}: no new producer after a fatal error: {exc!r}"
                log.error("kafka producer could not be rebuilt (%s): later sends are counted as failed without "
                          "trying", self.stalled)
                self._on_error(exc)
                if hook is not None:
                    hook(tag, False)
                return
            self._tm = getattr(self._producer, "_transaction_manager", None)
            flush_after_sender(old, self.error_log)
        try:
            fut = self._producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)
        except KafkaTimeoutError as exc:
            self.stalled = f"{topic}: {exc}"
            log.error("kafka send blocked max_block_ms (%s): later sends are counted as failed without trying",
                      self.stalled)
            self._on_error(exc)
            if hook is not None:
                hook(tag, False)
            return
        except (KafkaError, ValueError, TypeError, RecursionError) as exc:
            # e.g. metadata timeout, buffer exhausted, a record too large, a key or value the serializers cannot
            # encode: counted as failed (the command exits non-zero, `errors` names it), not raised mid-stream
            self._on_error(exc)
            if hook is not None:
                hook(tag, False)
            return
        fut.add_callback(self._on_success)
        fut.add_errback(self._on_error)
        if hook is not None:
            fut.add_callback(lambda _meta: hook(tag, True))
            fut.add_errback(lambda _exc: hook(tag, False))

    # ------------------------------------------------------------------ public API
    def topic_for(self, event_type: str) -> str:
        """Topic name of an event type. Raises KeyError for an unknown event type."""
        return self.settings.topic(EVENT_TYPES[event_type])

    def publish(self, event_type: str, record: dict[str, Any]) -> bool:
        """Validate ``record`` against its contract and send it (asynchronously).

        Returns:
            True when sent to its topic, False when it was routed to the dead-letter topic
            (contract violation or unknown event type; the reason travels with it). Either way the send is
            asynchronous: a delivery failure shows in ``failed`` / ``errors`` (:attr:`counts`), and a send the
            producer refuses (a ``KafkaError``, e.g. no topic metadata or no buffer space within ``max_block_ms``,
            30 s by default, which the call may block for) is counted as failed, not raised.

        Raises:
            RuntimeError: the publisher is closed (:meth:`close`).
        """
        if self._closed:
            raise RuntimeError("EventPublisher is closed")
        try:
            if event_type not in EVENT_TYPES:
                raise ContractError(f"unknown event type {event_type!r}")
            if not isinstance(record, dict):
                raise ContractError(f"record must be a JSON object, got {type(record).__name__}")
            validate_event(event_type, record, max_future_minutes=self._max_future)
        except ContractError as exc:
            self.dead_letter(event_type, record, str(exc))
            return False
        self.sent += 1  # one writer: the publishing thread
        # No record timestamp is given (the producer stamps its send time, which the platform's LogAppendTime
        # topics replace by the broker's append time), never the event time: replayed 2011 event times would
        # fall out of the 7-day retention at once, and future ones are rejected by the broker
        # (log.message.timestamp.after.max.ms). Event time travels in the payload.
        self._send(self._topics[event_type], event_key(event_type, record), Encoded(serialize_fast(record)), None)
        return True

    def dead_letter(self, event_type: str, payload: Any, reason: str) -> None:
        """Send a rejected record with its reason to the dead-letter topic (counted in ``dead_lettered``)."""
        with self._lock:
            self.dead_lettered += 1
            self.dead_letter_reasons[reason[:120]] += 1
        # stdlib JSON, byte for byte as before (NaN, \\u escapes): dead letters are rare, and read back raw
        self._send(self.dead_letter_topic, event_key(event_type, payload),
                   Encoded(serialize_value(dead_letter_record(event_type, payload, reason))), None)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every buffered record is acknowledged or failed (callbacks have run), then log the delivery
        failures not logged yet (:attr:`error_log`: one line per exception type with its count).

        Waits in steps of at most 1 s; between two, a producer without a producer id for longer than its
        ``delivery_timeout_ms`` is failed and aborted (:func:`fail_if_producer_id_overdue`: its records fail,
        counted; the next send gets a new producer) and the due summary lines are written
        (:meth:`core.logs.RepeatedLog.tick`).

        Args:
            timeout: seconds in all; None waits until everything is settled (each record is, within its
                ``delivery_timeout_ms`` or the producer-id bound above, + up to 1 s).
        Raises:
            kafka.errors.KafkaTimeoutError: a batch was not completed within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:   # in steps of at most 1 s: a producer waiting for a producer id past its bound is failed
            step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            try:
                self._producer.flush(timeout=step)
                break
            except KafkaTimeoutError:
                # checked on every timed-out step, also of a flush of <= 1 s (producers.cli.flush_until_signal polls
                # flush(0.5): until the second review of 2026-12-07 the check came after this raise and never ran)
                self._abort_if_producer_id_overdue()
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            finally:
                self.error_log.tick()   # a flush that timed out (polled every 0.5 s): the due 10 s lines only
        # everything settled: the delivery failures not logged yet, one line per exception type (not after a flush
        # that timed out: producers.cli.flush_until_signal polls every 0.5 s, and the 10 s lines cover the wait)
        self.error_log.flush()

    def _abort_if_producer_id_overdue(self) -> None:
        """Abort the current producer once (its records fail, counted; the next send gets a new one) when it has been
        without a producer id past its bound or is fatal (:func:`fail_if_producer_id_overdue`). Once per producer:
        a fatal producer stays fatal, and each later step of a flush aborted it again, with a WARNING and a new
        flush thread each time (second review of 2026-12-07)."""
        producer = self._producer
        if producer is self._aborted_producer or not fail_if_producer_id_overdue(producer):
            return
        self._aborted_producer = producer
        abort_producer(producer, 0)
        flush_after_sender(producer, self.error_log)

    @property
    def counts(self) -> dict[str, Any]:
        """Snapshot: sent, dead_lettered, delivered, failed, pending, by_topic_delivered, errors."""
        with self._lock:
            return {
                "sent": self.sent, "dead_lettered": self.dead_lettered,
                "delivered": self.delivered, "failed": self.failed,
                "pending": self.sent + self.dead_lettered - self.delivered - self.failed,
                "stalled": self.stalled, "refused_after_stall": self.refused,
                "by_topic_delivered": dict(self.by_topic_delivered),
                "dead_letter_reasons": dict(self.dead_letter_reasons),
                "errors": list(self.errors),
            }

    def abort(self, timeout: float = 5.0) -> None:
        """Stop promptly: flush for at most ``timeout`` seconds, then close the producer without waiting for the
        rest, which fails every record still buffered (counted in ``failed``, error ``Producer is closed
        forcefully``): afterwards ``pending`` is 0, unless the producer's sender was waiting for a frozen broker's
        producer-id answer (up to ``request_timeout_ms``, which the force close does not cut short) and outlived the
        join: its records then stay pending (a replay counts their rows ``unconfirmed`` and saves them,
        ``producers.cli._RowTracker.report``). Used when a run stops (broker unreachable, SIGTERM)."""
        if self._closed:
            return
        abort_producer(self._producer, timeout)
        self._closed = True
        self.error_log.flush()
        flush_after_sender(self._producer, self.error_log)

    def close(self, timeout: float | None = 60) -> None:
        """Flush, then close the producer (idempotent: a closed publisher returns at once).

        Args:
            timeout: seconds for the flush and again for the producer's own close (which flushes once more and
                waits for its sender thread); None waits without limit. Default 60 s.
        Raises:
            kafka.errors.KafkaTimeoutError: records still pending after ``timeout``. The producer is closed
                anyway (its sender stopped) unless its own flush times out too; then the publisher stays open and
                ``close`` may be called again.
        """
        if self._closed:
            return
        try:
            self.flush(timeout=timeout)
        finally:
            try:
                self._producer.close(timeout=timeout)
                self._closed = True
            finally:   # also when kafka-python's close raises (its flush timed out): the failures counted so far
                self.error_log.flush()
                flush_after_sender(self._producer, self.error_log)   # a sender outliving close's join: its later ones

    def __enter__(self) -> "EventPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
