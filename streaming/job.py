"""The streaming job: Kafka -> Spark Structured Streaming -> lake + ClickHouse (+ restock alerts to Kafka).

Usage::

    python -m streaming.job run                      # continuous, processing-time trigger (STREAM_TRIGGER_SECONDS)
    python -m streaming.job run --available-now      # drain everything available, then stop (demo, tests)
    python -m streaming.job run --timeout 600        # stop after 600 s

In-process API (the demo, tests and benchmarks): :func:`run_stream` (blocking) or :class:`StreamingJob`
(``start`` / ``await_available_now`` / ``stop``).

Two streaming queries share one SparkSession (Spark's own Kafka source, ``spark-sql-kafka-0-10`` jars from
:func:`core.spark.spark_kafka_jars`; state in RocksDB by default, STREAM_STATE_STORE):

* ``raw``: all input topics (one Kafka source per topic: each record is read once) (sales, inventory, price changes, customer events) -> validation -> lake Parquet +
  ``quarantine_events`` (:meth:`streaming.sinks.StreamSinks.raw_batch`). Checkpoint ``<SPARK_CHECKPOINT_DIR>/raw``.
* ``windows``: valid sales + inventory updates (one source for both topics, so they advance together in event time) -> watermark (STREAM_WATERMARK) -> tumbling windows
  (STREAM_WINDOW) per store x SKU in *update* output mode -> ClickHouse upserts, store windows, alerts
  (:meth:`streaming.sinks.StreamSinks.windows_batch`). Checkpoint ``<SPARK_CHECKPOINT_DIR>/windows``.

Late data: an event whose event time is behind the previous micro-batch's watermark (Spark >= 3.4 with
``spark.sql.streaming.statefulOperator.allowMultiple``, the default: max event time seen up to two micro-batches
back minus STREAM_WATERMARK) is dropped by Spark from the window aggregates (counted in the query progress as
``numRowsDroppedByWatermark``) but still lands in the lake through the ``raw`` query.

Delivery semantics: Kafka offsets and state are checkpointed; foreachBatch writes are idempotent (see
:mod:`streaming.sinks`), so a micro-batch re-run after a crash/restart does not double count.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Optional

import typer
from kafka.errors import KafkaError

from contracts import DEAD_LETTER, EVENT_TYPES
from core.settings import Settings, get_settings
from streaming import transforms as TR
from streaming.sinks import CLOSE_FLUSH_SECONDS, INPUT_EVENT_TYPES, StreamSinks

log = logging.getLogger(__name__)
QUERY_NAMES = ("raw", "windows")


class TopicRecreatedError(RuntimeError):
    """A micro-batch found a topic of its query deleted and re-created while the stream ran; its offsets were
    rewound to the new topic's start and it was failed before reading (:meth:`StreamingJob.check_topics`)."""


class TopicIdUnknownError(KafkaError):
    """A topic of a query has no id on the broker right now (missing from the topic list, or described with an error
    code and the zero id: deleted and not yet re-created, metadata lagging after a CreateTopics). A Kafka error, so
    :func:`kafka_retrying` asks again with the sinks' backoff: a micro-batch must not read a topic it could not
    check (its records could be read unchecked and then again after a later rewind)."""
    retriable = True


def build_spark(settings: Settings | None = None):
    """The streaming job's SparkSession: :func:`core.spark.build_spark` with the Kafka connector."""
    from core.spark import build_spark as _build

    return _build("retail-streaming", kafka=True, settings=settings)


#: ``spark.sql.streaming.stateStore.providerClass`` per STREAM_STATE_STORE
STATE_STORE_PROVIDERS = {
    "rocksdb": "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
    "hdfs": "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider",
}


def state_store_conf(settings: Settings) -> dict[str, str]:
    """Spark SQL confs of the streaming state store chosen by STREAM_STATE_STORE.

    ``rocksdb``: Spark's RocksDB provider (state off the JVM heap, in native memory and local SST files) with
    changelog checkpointing (each micro-batch uploads only its changes); ``hdfs``: Spark's default in-heap
    provider (a full map per version in the JVM heap). A query keeps the provider it started with: the choice is
    recorded in its checkpoint, so changing the setting applies to new checkpoints only.
    """
    conf = {"spark.sql.streaming.stateStore.providerClass": STATE_STORE_PROVIDERS[settings.stream_state_store]}
    if settings.stream_state_store == "rocksdb":
        conf["spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled"] = "true"
    return conf


def source_end_offsets(progress: dict | Any) -> dict[str, dict[str, int]]:
    """{topic: {partition: next offset}} of a query progress (dict or ``StreamingQueryProgress``), merged over
    all its sources (the job reads one Kafka source per topic)."""
    sources = progress.get("sources", []) if isinstance(progress, dict) else progress.sources
    out: dict[str, dict[str, int]] = {}
    for src in sources or []:
        end = src.get("endOffset") if isinstance(src, dict) else src.endOffset
        if isinstance(end, str):
            end = json.loads(end)
        for t, parts in (end or {}).items():
            out.setdefault(t, {}).update({str(p): int(o) for p, o in parts.items()})
    return out


def heartbeat_path(settings: Settings) -> Path:
    """``$RETAIL_STATE_DIR/streaming.heartbeat``: touched about every second while both queries are active."""
    return Path(settings.retail_state_dir) / "streaming.heartbeat"


def stream_healthy(settings: Settings) -> bool:
    """True while the job's heartbeat is younger than STREAM_HEARTBEAT_MAX_AGE_S (both queries active)."""

    try:
        return time.time() - heartbeat_path(settings).stat().st_mtime < settings.stream_heartbeat_max_age_s
    except OSError:
        return False


def checkpoint_path(settings: Settings, query: str) -> str:
    """Checkpoint folder of a query: ``<SPARK_CHECKPOINT_DIR>/<query>`` (created)."""
    root = settings.spark_checkpoint_dir
    if "://" not in root:
        Path(root, query).mkdir(parents=True, exist_ok=True)
    return f"{root.rstrip('/')}/{query}"


#: how many times a query's plan scans each of its Kafka sources per micro-batch (``numInputRows`` counts every
#: scan): the windows query's one source feeds two branches (sales, inventory updates)
SOURCE_SCANS = {"raw": 1, "windows": 2}


def _offsets(v) -> dict:
    return json.loads(v) if isinstance(v, str) else (v or {})


def skipped_records(progress: dict | Any, scans: int = 1,
                    earliest: dict[str, dict[str, int]] | None = None) -> int:
    """Kafka records a micro-batch's offset ranges covered but its sources never read: records deleted from the
    topic (retention, ``delete_records``) before the query reached them, which the Kafka source skips with a
    warning only (``failOnDataLoss=false``, so one expired record cannot stop the stream).

    A partition whose endOffset is below its startOffset counts endOffset, an upper bound: Spark reads nothing of
    it in that batch and the next one starts at endOffset, so records below endOffset that the query never read
    are passed over. A topic re-created where :meth:`StreamingJob.check_topics` does not rewind (a checkpoint that
    is not a local folder, a query's first batch): the new topic's records [0, endOffset), all skipped. The same
    topic id (an unclean leader election truncated the log to some T <= endOffset): the records [T, endOffset)
    written after the truncation were skipped, those below T had been read; T is not known here, so up to
    endOffset are counted (until a review of 2026-12-06 a change counted 0, hiding the skipped ones).

    Per source: sum over its partitions of endOffset - startOffset, less ``numInputRows / scans``; 0 for a source
    without a start (a query's first batch) or with a partition its start lacks (added to the topic since). Exact
    for the producers' topics: non-transactional, not compacted, so every offset holds one record.

    A transactional producer's topic holds offsets that are no records to read: each transaction's commit or
    abort marker, and an aborted transaction's records (the sources read committed records only). With
    ``earliest`` (each partition's earliest offset on the broker now,
    :func:`streaming.checkpoint.partition_offset_bounds`) a forward range counts at most its offsets below that
    earliest offset (deleted; the others were on the broker and not records the query should have read); a
    partition missing from ``earliest`` counts whole (an upper bound). Until 2026-12-07 every marker and aborted
    record was counted expired, logged as lost (tests/test_kafka_records.py: a run reading a committed
    transaction counted its commit marker, 1 per query).

    Args:
        progress: a micro-batch progress (dict of Spark's JSON, or a ``StreamingQueryProgress``).
        scans: times the plan scans each source per batch (:data:`SOURCE_SCANS`).
        earliest: None, or {topic: {partition (text): earliest offset}}.
    Returns:
        records skipped in this micro-batch (>= 0).
    """
    sources = progress.get("sources", []) if isinstance(progress, dict) else progress.sources
    total = 0
    for src in sources or []:
        get = src.get if isinstance(src, dict) else (lambda k, _s=src: getattr(_s, k))
        start, end = _offsets(get("startOffset")), _offsets(get("endOffset"))
        if not start or not end:
            continue
        try:   # an offset gone back: up to the records [0, end) were skipped (exactly those for a re-created topic)
            covered = sum(int(o) - int(start[t][str(p)]) if int(o) >= int(start[t][str(p)]) else int(o)
                          for t, parts in end.items() for p, o in parts.items())
        except KeyError:   # a partition new since the last batch: its start is not known here
            continue
        gap = max(0, covered - int(get("numInputRows") or 0) // max(1, scans))
        if gap and earliest is not None:   # only offsets below the earliest one now can have been deleted unread
            first = lambda t, p, o: int(earliest.get(t, {}).get(str(p), o))  # noqa: E731  (unknown: all of them)
            gap = min(gap, sum(int(o) if int(o) < int(start[t][str(p)])
                               else max(0, min(int(o), first(t, p, o)) - int(start[t][str(p)]))
                               for t, parts in end.items() for p, o in parts.items()))
        total += gap
    return total


def offset_regressions(progress: dict | Any) -> list[tuple[str, int, int, int]]:
    """(topic, partition, start offset, end offset) of every partition whose end offset in a micro-batch progress
    is below its start: the topic was deleted and re-created while the query ran (the new one starts at 0)."""
    sources = progress.get("sources", []) if isinstance(progress, dict) else progress.sources
    out = []
    for src in sources or []:
        get = src.get if isinstance(src, dict) else (lambda k, _s=src: getattr(_s, k))
        start, end = _offsets(get("startOffset")), _offsets(get("endOffset"))
        for t, parts in (end or {}).items():
            for p, o in parts.items():
                if str(p) in (start or {}).get(t, {}) and int(o) < int(start[t][str(p)]):
                    out.append((t, int(p), int(start[t][str(p)]), int(o)))
    return out


def late_rows_dropped(progress: dict) -> int:
    """Rows a micro-batch's stateful operators dropped as late (event time at or behind the watermark): the sum of
    ``numRowsDroppedByWatermark`` over the progress' state operators (a row dropped by one never reaches the next);
    ``progress`` is a progress dict."""
    return sum(int(op.get("numRowsDroppedByWatermark", 0) or 0) for op in progress.get("stateOperators", []) or [])


def dropped_duplicates(progress: dict | Any) -> int:
    """Event ids dropped as duplicates by one micro-batch: the sum of ``numDroppedDuplicateRows`` over the
    progress' state operators (``dropDuplicatesWithinWatermark``); ``progress`` is a progress dict or
    a ``StreamingQueryProgress``."""
    ops = progress.get("stateOperators", []) if isinstance(progress, dict) else progress.stateOperators
    total = 0
    for op in ops or []:
        cm = op.get("customMetrics", {}) if isinstance(op, dict) else op.customMetrics
        total += int((cm or {}).get("numDroppedDuplicateRows", 0) or 0)
    return total


def last_progress(query) -> dict[str, Any] | None:
    """The last micro-batch progress of a ``StreamingQuery`` as a dict (Spark's own JSON), or None before the first.

    Read as one JSON string from the JVM. PySpark's ``StreamingQuery.lastProgress`` / ``recentProgress`` and a Python
    ``StreamingQueryListener`` convert the JVM object field by field; each Java collection they iterate ends in a
    ``NoSuchElementException`` that PySpark's exception hook inspects with about 13 ``is_instance_of`` calls, each
    a failed class lookup through every jar of the classpath: a JFR profile of a 2,000 events/s load test put
    about a fifth of the Spark JVM's task CPU in the listener thread's class lookups.
    """
    p = query._jsq.lastProgress()
    return json.loads(p.json()) if p is not None else None


def recent_progress(query) -> list[dict[str, Any]]:
    """The query's recent progress (the last ``spark.sql.streaming.numRecentProgressUpdates``) as dicts, oldest
    first; read as JSON strings like :func:`last_progress`."""
    arr = query._jsq.recentProgress()
    return [json.loads(arr[i].json()) for i in range(len(arr))]


class ProgressPoller:
    """Follows the queries' micro-batch progress from a daemon thread (every ``interval_s`` seconds) and calls
    each ``callback(query name, progress dict)`` once per new batch id, in batch order (a gap since the last
    poll is filled from :func:`recent_progress`). Used instead of a Python ``StreamingQueryListener`` (see
    :func:`last_progress` for why). :meth:`stop` polls one last time, so the batches of a finished query are
    all delivered.
    """

    def __init__(self, queries: dict[str, Any], callbacks: list, interval_s: float = 0.5):
        self.queries, self.callbacks, self.interval_s = queries, callbacks, interval_s
        self.seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-poller", daemon=True)

    def start(self) -> "ProgressPoller":
        """Start the daemon thread ``progress-poller``, which calls :meth:`poll` every ``interval_s`` seconds
        (first poll one interval after the start) until :meth:`stop`. Returns ``self`` (for chaining).

        Raises:
            RuntimeError: called a second time (a thread starts only once), also after :meth:`stop`.
        """
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        """Deliver the progress of every batch completed since the last poll (errors are logged, never raised)."""
        with self._lock:
            for name, q in list(self.queries.items()):
                try:
                    last = last_progress(q)
                    if last is None or int(last["batchId"]) <= self.seen.get(name, -1):
                        continue
                    seen, b = self.seen.get(name, -1), int(last["batchId"])
                    new = {b: last}
                    if b > seen + 1:
                        new.update({int(p["batchId"]): p for p in recent_progress(q) if seen < int(p["batchId"]) < b})
                    self.seen[name] = b
                except Exception as exc:  # a stopped session: nothing more to deliver
                    log.debug("progress of %s: %s", name, exc)
                    continue
                for bid in sorted(new):
                    for cb in self.callbacks:
                        try:
                            cb(name, new[bid])
                        except Exception as exc:  # monitoring must never stop the stream
                            log.warning("progress callback for %s batch %s: %s", name, bid, exc)

    def stop(self) -> None:
        """Stop the polling thread (waits for it at most 10 s, e.g. for a poll in progress), then :meth:`poll`
        once more in the calling thread so every batch completed so far is delivered. Errors of the queries or
        callbacks are logged, not raised (see :meth:`poll`); calling it again, or before :meth:`start`, only
        polls.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.poll()


def _where(url: str) -> str:
    """``scheme://host:port`` of a service URL, without its credentials (for log lines)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    return f"{u.scheme}://{u.hostname}:{u.port}" if u.hostname else url


def wait_for_services(settings: Settings) -> dict[str, float]:
    """The streaming job's start-up set-up, each step retried while its service cannot be reached: ClickHouse
    migrations (:func:`core.clickhouse.migrate`), the Kafka topics (:func:`core.kafka_admin.ensure_topics`, when
    the producers package is installed) and a look at the lake's raw bucket.

    The policy is the sinks' (:meth:`streaming.sinks.StreamSinks.retrying`): tenacity, retried only on an
    infrastructure error (:func:`streaming.sinks.is_infrastructure_error`), exponential backoff from 0.5 s doubling
    up to STREAM_SINK_RETRY_MAX_WAIT_S seconds, every wait logged with the service, its address and the error. The
    steps share one bound, STREAM_STARTUP_WAIT_SECONDS (seconds) from the call; then the last error propagates (the
    process exits and the supervisor starts it again). Other errors (bugs, a refused migration) propagate at once.

    Before this (until 2026-12-06) a ClickHouse or Kafka outage at start made the job exit within 11-14 s, inside
    the supervisor's 15 s ``startsecs``: after 3 retries the program went FATAL and stayed stopped after the
    outage ended.

    Returns:
        {step: seconds it took, waits included}.
    Raises:
        the step's last infrastructure error after STREAM_STARTUP_WAIT_SECONDS seconds.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    from core.clickhouse import migrate as ch_migrate
    from core.lake import Lake
    from streaming.sinks import is_infrastructure_error

    try:
        from core.kafka_admin import ensure_topics
    except ImportError:  # producers package not installed: topics must already exist
        ensure_topics = None
    s = settings
    steps = [(f"ClickHouse at {_where(s.clickhouse_url)} (migrations)", lambda: ch_migrate(s))]
    if ensure_topics:
        steps.append((f"Kafka at {s.kafka_bootstrap_servers} (topics)", lambda: ensure_topics(s)))
    steps.append((f"the lake at {_where(s.lake_url)} (bucket {s.lake_raw_bucket})",
                  lambda: Lake(s).exists(s.lake_raw_bucket)))
    deadline = time.monotonic() + s.stream_startup_wait_seconds
    took: dict[str, float] = {}
    for what, fn in steps:
        t0 = time.monotonic()

        def before_sleep(rs, what=what) -> None:
            exc = rs.outcome.exception()
            log.warning("start-up: waiting for %s (%s: %s); attempt %d in %.1f s, giving up %.0f s from now "
                        "(STREAM_STARTUP_WAIT_SECONDS=%g)", what, type(exc).__name__, str(exc)[:300],
                        rs.attempt_number + 1, rs.next_action.sleep, max(0.0, deadline - time.monotonic()),
                        s.stream_startup_wait_seconds)

        for attempt in Retrying(retry=retry_if_exception(is_infrastructure_error),
                                wait=wait_exponential(multiplier=0.5, min=0.5, max=s.stream_sink_retry_max_wait_s),
                                stop=stop_after_delay(max(0.0, deadline - time.monotonic())),
                                before_sleep=before_sleep, reraise=True):
            with attempt:
                fn()
        took[what] = round(time.monotonic() - t0, 1)
        if attempt.retry_state.attempt_number > 1:
            log.info("start-up: %s reachable after %.1f s", what, took[what])
    return took


def kafka_retrying(settings: Settings, what: str, fn, *args, stop_event: threading.Event | None = None, **kwargs):
    """``fn(*args, **kwargs)`` (a Kafka request: topic ids, offsets), called again on an infrastructure error
    (:func:`streaming.sinks.is_infrastructure_error`) with the sinks' backoff (tenacity: 0.5 s doubling, at most
    STREAM_SINK_RETRY_MAX_WAIT_S seconds between calls, for up to STREAM_SINK_RETRY_SECONDS seconds), each wait
    logged naming ``what``: :func:`streaming.sinks.retrying_call`, the policy both use. Unlike
    :meth:`streaming.sinks.StreamSinks.retrying` it leaves the sinks' shared ClickHouse client alone (no reset while
    the other query's batch writes through it) and counts no sink retry. ``stop_event`` (the sinks' ``stopping``):
    once set, no further attempt (:func:`streaming.sinks.retrying_call`).

    Returns:
        what ``fn`` returns.
    Raises:
        the last infrastructure error after STREAM_SINK_RETRY_SECONDS or once ``stop_event`` is set; any other
        error at once.
    """
    from streaming.sinks import retrying_call

    return retrying_call(settings, what, fn, args, kwargs, error_kind="Kafka error", logger=log, stop_event=stop_event)


#: seconds :meth:`StreamingJob.stop` waits for the queries' running triggers, all together, before it interrupts them:
#: below the supervisor's ``stopwaitsecs`` for the streaming program (60 s, ``ops.local``), which then sends SIGKILL
STOP_GRACE_SECONDS = 40.0
#: the start of Spark's status message while a trigger plans its batch (``MicroBatchExecution``: the sources' offsets,
#: before anything runs): :meth:`StreamingJob.stop` interrupts such a trigger at once instead of waiting for it (with
#: the broker stopped it waited the whole grace: a stop took 52.7 s, 2026-12-07)
PLANNING_STATUS = "Getting offsets from"
#: Spark's bound (ms) of ``StreamingQuery.stop()``'s wait for the query's thread (default 0: no bound), which
#: :meth:`StreamingJob.stop` sets before each ``stop()`` to what is left of :data:`STOP_BUDGET_SECONDS` and gives back
#: afterwards (since the review of 2026-12-07: before, the whole grace, 40 s, at the stop's start and never given back,
#: so a shared session's later ``stop()`` calls raised after 40 s, and a ``stop()`` at the grace's end could run to
#: ~80 s): a Kafka source planning against a stopped broker is not interrupted
#: before its admin request times out (``default.api.timeout.ms``, 60 s: the stop took 52.6-54.4 s, 2026-12-07)
STOP_TIMEOUT_CONF = "spark.sql.streaming.stopTimeout"
#: seconds from the start of :meth:`StreamingJob.stop` by which every ``StreamingQuery.stop()`` has returned: the
#: supervisor's ``stopwaitsecs`` for the streaming program (60 s, ``ops.local``) less the alert producer's close (up
#: to 2 x :data:`streaming.sinks.CLOSE_FLUSH_SECONDS`: a flush, then its sender's join); each ``stop()`` gets what is
#: left of it as :data:`STOP_TIMEOUT_CONF` (at least :data:`STOP_TIMEOUT_FLOOR_SECONDS`)
STOP_BUDGET_SECONDS = 60.0 - 2 * CLOSE_FLUSH_SECONDS
#: the least :data:`STOP_TIMEOUT_CONF` (s) a ``StreamingQuery.stop()`` is given, however little of the budget is left
STOP_TIMEOUT_FLOOR_SECONDS = 3.0
#: seconds a trigger must be seen planning (:data:`PLANNING_STATUS`, every read of its status in between) before
#: :meth:`StreamingJob.stop` interrupts it: a trigger that finishes planning between one status read and
#: ``StreamingQuery.stop()`` would be interrupted inside ``foreachBatch`` (SPARK-39218); a normal plan takes
#: milliseconds, one against a stopped broker up to ``default.api.timeout.ms`` (60 s)
PLANNING_STOP_SECONDS = 2.0
#: bootstrap / request timeout (ms) of :meth:`StreamingJob.expired_records`' one broker look-up (bookkeeping, not
#: retried: an unanswered look-up counts the upper bound)
EXPIRED_LOOKUP_TIMEOUT_MS = 5_000
#: micro-batches whose records_expired :meth:`StreamingJob.stats` reuses (Spark keeps 100 progress updates per query)
EXPIRED_KEPT = 1_000


class StreamingJob:
    """The two streaming queries of the platform on one SparkSession.

    Args:
        settings: platform settings (default :func:`get_settings`).
        spark: an existing SparkSession (default :func:`build_spark`).
        migrate: apply the ClickHouse migrations and create the Kafka topics before starting (idempotent), waiting
            for ClickHouse, Kafka and the lake while they cannot be reached (:func:`wait_for_services`, up to
            STREAM_STARTUP_WAIT_SECONDS seconds).
    """

    def __init__(self, settings: Settings | None = None, spark=None, migrate: bool = True):
        self.s = settings or get_settings()
        self.spark = spark or build_spark(self.s)
        if migrate:
            wait_for_services(self.s)
        self.sinks = StreamSinks(self.s)
        self._init_state()

    def _init_state(self) -> None:
        """The state every job starts with (no query running, nothing rewound); also used by tests that build a
        job without ``__init__`` (no Spark session, no services)."""
        self.queries: dict[str, Any] = {}
        self.started_at: float | None = None
        #: set by :meth:`stop`: the sinks' retries and the job's Kafka look-ups give up (the sinks' ``stopping``
        #: when they have one, else an event of the job's own)
        self.stopping: threading.Event = getattr(self.sinks, "stopping", None) or threading.Event()
        #: callbacks(query name, progress dict) called once per micro-batch (:class:`ProgressPoller`); the job's
        #: own records each batch's duplicates and the Kafka records it skipped (``stream_batches`` + log line)
        self.progress_callbacks: list = [self._record_progress]
        self._poller: ProgressPoller | None = None
        #: {query: {topic: details}} of the topics found re-created at the last start (:meth:`rewind_recreated_topics`)
        self.recreated_topics: dict[str, dict[str, Any]] = {}
        self._admins: dict[str, Any] = {}   # Kafka admin client per query of :meth:`_topic_ids_now`
        #: {query: {"batch", "topics"}} of a query whose micro-batch :meth:`check_topics` rewound and failed: started
        #: again by :meth:`await_any` / :meth:`await_available_now`
        self._rewound: dict[str, dict[str, Any]] = {}
        self._trigger: dict[str, Any] = {}
        #: [{"query", "batch", "topics": :func:`streaming.checkpoint.rewind_running_batch`'s result, "found":
        #: {topic: evidence}}] of every micro-batch :meth:`check_topics` rewound while this job ran
        self.rewinds: list[dict[str, Any]] = []
        #: {(query, batch id): records_expired recorded with that micro-batch} (:meth:`stats` sums these rather than
        #: asking the broker again, at another time), the latest EXPIRED_KEPT
        self._expired: dict[tuple[str, int], int] = {}
        #: a look-up of :meth:`expired_records` failed while the job was stopping (the later ones are not tried)
        self._lookup_failed_stopping = False

    def _record_progress(self, name: str, progress: dict[str, Any]) -> None:
        if name in QUERY_NAMES:
            for t, p, start, end in offset_regressions(progress):
                if self.recreated_topics.get(name, {}).get(t, {}).get("batch") == int(
                        progress["batchId"]):   # the start's own rewind of a topic re-created while the job was down
                    continue
                log.error("query %s micro-batch %s: topic %s partition %d went back from offset %d to %d without a "
                          "rewind (a log truncated by an unclean leader election, or a topic re-created where the "
                          "batch is not rewound: a checkpoint that is not a local folder, a query's first batch); up "
                          "to %d record(s) below %d were skipped unread (counted so, an upper bound, in "
                          "stream_batches.records_expired)", name, progress["batchId"], t, p, start, end, end, end)
            expired = self._expired[(name, int(progress["batchId"]))] = self.expired_records(name, progress)
            while len(self._expired) > EXPIRED_KEPT:   # oldest first (insertion order)
                self._expired.pop(next(iter(self._expired)), None)
            self.sinks.record_progress(name, int(progress["batchId"]), dropped_duplicates(progress),
                                       expired=expired,
                                       end_offsets=json.dumps(source_end_offsets(progress), sort_keys=True),
                                       late=late_rows_dropped(progress))

    def expired_records(self, name: str, progress: dict[str, Any]) -> int:
        """Kafka records query ``name``'s micro-batch ``progress`` skipped because retention deleted them first
        (:func:`skipped_records`). Only when its offsets covered more than it read are the partitions' earliest
        offsets asked of the broker (one try, clients' timeouts ``EXPIRED_LOOKUP_TIMEOUT_MS``), so transaction
        markers and aborted records are not counted; a broker that does not answer (or any error of the look-up)
        leaves the upper bound (every offset not read), with a warning; once a look-up has failed while the job is
        stopping, the later ones of that stop are not tried (upper bound, warning): a stop during a Kafka outage
        must end within the supervisor's wait, and :meth:`stop`'s last poll may deliver several batches."""
        scans = SOURCE_SCANS.get(name, 1)
        upper = skipped_records(progress, scans)
        if not upper:
            return 0
        if self.stopping.is_set() and self._lookup_failed_stopping:
            log.warning("query %s micro-batch %s: stopping and the broker did not answer, the topics' earliest "
                        "offsets not asked: %d offset(s) not read counted expired, an upper bound", name,
                        progress.get("batchId"), upper)
            return upper
        from streaming.checkpoint import partition_offset_bounds

        topics = sorted({t for src in progress.get("sources", []) or [] for t in _offsets(src.get("endOffset"))})
        try:
            bounds = partition_offset_bounds(self.s, topics, timeout_ms=EXPIRED_LOOKUP_TIMEOUT_MS)
        except Exception as exc:  # noqa: BLE001 - bookkeeping only: the batch's other counts must still be recorded
            self._lookup_failed_stopping = self.stopping.is_set()
            log.warning("query %s micro-batch %s: the topics' earliest offsets could not be read (%s): %d offset(s) "
                        "not read counted expired, an upper bound (transaction markers and aborted records "
                        "included)", name, progress.get("batchId"), exc, upper)
            return upper
        return skipped_records(progress, scans, {t: {p: b[0] for p, b in parts.items()}
                                                 for t, parts in bounds.items()})

    def _query_topics(self) -> dict[str, list[str]]:
        """{query: the Kafka topics its sources read}."""
        s = self.s
        topics = [s.topic(EVENT_TYPES[et]) for et in INPUT_EVENT_TYPES]
        return {"raw": [*topics, s.topic(DEAD_LETTER)],
                "windows": [s.topic(EVENT_TYPES["sales_transaction"]), s.topic(EVENT_TYPES["inventory_update"])]}

    def _topic_ids_now(self, name: str) -> dict[str, str]:
        """{topic: id} of every one of query ``name``'s topics on the broker, through an admin client kept per query
        (the queries' micro-batches run in threads of their own); a failed request closes it (the next call opens
        another).

        Raises:
            TopicIdUnknownError: a topic of the query has no valid id now (missing, or answered with an error: see
                :func:`streaming.checkpoint.valid_topic_ids`); retried by :func:`kafka_retrying` (until 2026-12-06's
                review the batch went on without checking it, and a re-creation seen by the next batch re-read what
                this one had read: doubled in lake and windows).
            kafka.errors.KafkaError: the broker cannot be reached or fails the request.
        """
        from core.kafka_admin import admin_client
        from streaming.checkpoint import topic_ids

        admins = self._admins
        topics = self._query_topics()[name]
        try:
            if admins.get(name) is None:
                admins[name] = admin_client(self.s)
            ids = topic_ids(self.s, topics, admin=admins[name])
        except Exception:
            self._close_admin(name)
            raise
        unknown = sorted(set(topics) - set(ids))
        if unknown:   # asked again by kafka_retrying: the batch waits until every topic it reads has an id
            raise TopicIdUnknownError(f"query {name}: Kafka topic(s) {unknown} have no topic id on the broker now "
                                      "(missing, or described with an error); the micro-batch waits to check them")
        return ids

    def check_topics(self, name: str, batch_id: int) -> None:
        """Called in query ``name``'s micro-batch ``batch_id`` before it reads anything (:meth:`_checked`): keeps the
        batch from skipping the records of a topic deleted and re-created while the stream runs.

        Spark plans batch N as [offsets entry N-1, offsets entry N) of the checkpoint; after a re-creation entry N-1
        holds the old topic's offsets, so the new topic's records below them would be skipped (measured until
        2026-12-06: of 100 sales sent to a sales topic re-created under a running stream that had read 40, 60
        reached the lake and the windows). Here the broker's topic ids are compared with those entry N-1 refers to
        (``<checkpoint>/<name>/topic-ids.json``, written at start and here) and the offsets of both entries
        (:func:`streaming.checkpoint.recreated_in_batch`). For a re-created topic, entries N-1 and N are rewritten
        to the new topic's earliest offsets and the planned end kept within it and within the planned number of
        records (:func:`streaming.checkpoint.rewind_running_batch`), the new ids are stored, and the batch fails with
        :class:`TopicRecreatedError` (logged as an error naming query, batch, topic, ids and offsets) before
        anything is written, so it is not committed: :meth:`await_any` / :meth:`await_available_now` start the query
        again in this process and Spark re-runs batch N over the new topic from its start, through the windows'
        state too. Otherwise the ids are stored (a topic created since is added). Batch 0 (no entry before it) is
        only logged. Nothing is checked for a checkpoint that is not a local folder.

        Raises:
            TopicRecreatedError: a topic of the query was re-created (the batch's offsets were rewound).
            kafka.errors.KafkaError: the broker stayed unreachable for STREAM_SINK_RETRY_SECONDS (retried with the
                sinks' backoff through :func:`kafka_retrying`, which leaves the ClickHouse client alone, each wait
                logged; the batch fails and is not committed).
        """
        from streaming.checkpoint import (batch_numbers, merged_offsets, partition_offset_bounds, read_offsets,
                                          local_checkpoint, recreated_in_batch, remember_topic_ids,
                                          rewind_running_batch, stored_topic_ids)

        cp = local_checkpoint(self.s.spark_checkpoint_dir, name)
        if cp is None:
            return
        ids = kafka_retrying(self.s, f"{name} micro-batch {batch_id} Kafka topic ids", self._topic_ids_now, name,
                             stop_event=self.stopping)
        known = stored_topic_ids(cp)
        has_prev = batch_id >= 1 and (batch_id - 1) in batch_numbers(cp / "offsets")
        start = merged_offsets(read_offsets(cp, batch_id - 1)[1]) if has_prev else {}
        end = merged_offsets(read_offsets(cp, batch_id)[1])
        found = recreated_in_batch(known, ids, start, end)
        if found and not has_prev:
            log.error("query %s micro-batch %d: topic(s) %s re-created since the query started (%s); a first batch "
                      "starts at offsets Spark keeps outside the offsets log, so it is not rewound: the new topic's "
                      "records below %s may be skipped", name, batch_id, sorted(found), found, end)
        elif found:
            bounds = kafka_retrying(self.s, f"{name} micro-batch {batch_id} offsets of re-created topics",
                                    partition_offset_bounds, self.s, sorted(found), stop_event=self.stopping)
            got = rewind_running_batch(cp, batch_id, {t: b for t, b in bounds.items() if t in found})
            remember_topic_ids(cp, ids)
            if got:
                self._rewound[name] = {"batch": batch_id, "topics": got}
                self.rewinds.append({"query": name, "batch": batch_id, "topics": got, "found": found})
                msg = "; ".join(f"topic {t} ({found[t]}): offsets {d['start']}..{d['end']} of the old topic given up, "
                                f"re-run over {d['new_start']}..{d['new_end']}" for t, d in sorted(got.items()))
                log.error("query %s micro-batch %d: topic(s) deleted and re-created while the stream ran: %s. The batch "
                          "is failed before it reads anything (not committed) and the query is started again in "
                          "this process: it re-runs micro-batch %d over the new topic from its earliest offsets (the "
                          "records below the old offsets are read, not skipped)", name, batch_id, msg, batch_id)
                raise TopicRecreatedError(f"query {name} micro-batch {batch_id}: {msg}; restart the query (the "
                                          f"job does so itself) to re-run the batch from the rewound offsets")
            return
        remember_topic_ids(cp, ids)

    def _checked(self, name: str, sink):
        """``sink(df, batch_id)`` (a foreachBatch function) preceded by :meth:`check_topics`.

        The function holds this job by a weak reference. Py4J keeps a foreachBatch function alive on the Python side
        for as long as the JVM's query holds its callback proxy, and this job holds that query (:attr:`queries`): a
        strong reference closed a cycle across the two runtimes that neither garbage collector sees whole, so every
        stopped job stayed alive with its queries' last plans (2026-12-07: 2 -> 26 ``MicroBatchExecution`` objects
        alive over 9 test runs in one process, the test session's 2 GB driver heap filled; docs/tests.md).

        Raises (inside the micro-batch, failing it uncommitted):
            RuntimeError: the job was garbage-collected while its query still ran (dropped without :meth:`stop`).
        """
        ref = weakref.ref(self)

        def batch(df, batch_id: int) -> None:
            job = ref()
            if job is None:
                raise RuntimeError(f"query {name}: its StreamingJob was garbage-collected while the query ran "
                                   "(stop() the job before dropping it); micro-batch not committed")
            q = job.queries.get(name)
            if q is not None:   # the checkpoint's persistent query id, for a checkpoint without a local metadata file
                job.sinks.remember_query_id(name, str(q.id))
            job.check_topics(name, int(batch_id))
            sink(df, batch_id)

        return batch

    def _close_admin(self, name: str | None = None) -> None:
        """Close the kept Kafka admin client of query ``name`` (every query's when None)."""
        admins = self._admins
        for n in [name] if name else list(admins):
            admin = admins.pop(n, None)
            if admin is not None:
                try:
                    admin.close()
                except Exception as exc:   # closing a client of an unreachable broker
                    log.debug("closing the Kafka admin client: %s", exc)

    def rewind_recreated_topics(self) -> dict[str, dict[str, Any]]:
        """Before the queries start: a truncated or corrupt latest offsets / commit entry of each query's
        checkpoint is set aside (:func:`streaming.checkpoint.set_aside_corrupt_entries`: the batch runs again);
        then, for each query, the topics deleted and re-created since its checkpoint
        (Kafka topic id changed) are read again from offset 0 (:func:`streaming.checkpoint.rewind_recreated_topics`),
        each logged as an error naming topic, old and new id and the offsets given up. Returns {query: {topic:
        details}}; {} for a checkpoint that is not a local folder (not checked).

        Raises:
            kafka.errors.KafkaError: the broker stayed unreachable for STREAM_SINK_RETRY_SECONDS (the topic ids are
                asked with :meth:`streaming.sinks.StreamSinks.retrying`, each wait logged).
            ValueError: a latest offsets entry is not Spark's format after the corrupt ones were set aside."""
        from streaming.checkpoint import rewind_recreated_topics, topic_ids

        from streaming.checkpoint import set_aside_corrupt_entries

        root = self.s.spark_checkpoint_dir
        if "://" in root:
            return {}
        for name in QUERY_NAMES:   # a truncated latest entry would fail the query at every start
            set_aside_corrupt_entries(Path(checkpoint_path(self.s, name)))
        out: dict[str, dict[str, Any]] = {}
        queries = self._query_topics()
        # retried like the sinks' writes: a broker blip between the start-up wait and here must not fail the start
        ids = self.sinks.retrying("Kafka topic ids at start", topic_ids, self.s,
                                  sorted({t for ts in queries.values() for t in ts}))
        for name, topics in queries.items():
            got = rewind_recreated_topics(Path(checkpoint_path(self.s, name)),
                                          {t: i for t, i in ids.items() if t in topics})
            for t, d in got.items():
                log.error("query %s: topic %s was deleted and re-created since its checkpoint (topic id %s, now %s); "
                          "the checkpoint's offsets %s belong to the old topic, so the new one is read from offset 0 "
                          "(checkpoint offsets entry %d)", name, t, d["old_id"], d["new_id"], d["offsets"], d["batch"])
            if got:
                out[name] = got
        return out

    def lost_checkpoint_offsets(self, query: str) -> dict[str, dict[str, int]] | None:
        """Starting offsets ({topic: {partition: offset}}, every current partition of the query's topics) for
        ``query`` when its checkpoint holds no offsets entry while ``stream_batches`` has batches of it: the
        checkpoint was deleted or lost. None otherwise (a first start, or a checkpoint that is not a local folder),
        and None with STREAM_RESUME_LOST_CHECKPOINT=false (a deliberate rebuild from STREAM_STARTING_OFFSETS).

        The end offsets of the last recorded micro-batch (``stream_batches.end_offsets``, the latest by commit time of
        any run of the query's checkpoints, as ``stream_batches_latest`` keeps it without TTL: migration 083; a
        query idle longer than CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS has no row left in ``stream_batches``)
        are checked against the topics' current earliest and end offsets
        (:func:`streaming.checkpoint.resume_offsets`): a recorded offset beyond a partition's end (the topic was
        re-created or the broker's data reset since that run; Spark would skip the new records below it with a
        warning only, uncounted in a first batch) starts that partition at its earliest offset; one below the
        earliest starts there (the records between were deleted by retention: lost). Each such partition is logged
        as an error naming topic, partition and offsets; the resume itself too, naming the checkpoint.

        Raises:
            the last infrastructure error once ClickHouse or Kafka stayed unreachable for STREAM_SINK_RETRY_SECONDS.
        """
        from streaming.checkpoint import batch_numbers, local_checkpoint, partition_offset_bounds, resume_offsets

        cp = local_checkpoint(self.s.spark_checkpoint_dir, query)
        if cp is None or batch_numbers(cp / "offsets"):
            return None
        got = self.sinks.retrying(
            f"{query} end offsets of the last recorded micro-batch", self.sinks._query,
            "SELECT argMax(end_offsets, committed_at) AS o, argMax(batch_id, committed_at) AS b, max(committed_at) AS t "
            "FROM {db}.stream_batches_latest FINAL WHERE query = {q:String} AND end_offsets != ''", {"q": query})
        if got.empty or not got["o"].iloc[0]:
            return None
        where = (f"query {query}: its checkpoint {cp} holds no offsets, but stream_batches records its "
                 f"micro-batches up to batch {got['b'].iloc[0]} ({got['t'].iloc[0]}): the checkpoint was lost or deleted")
        if not self.s.stream_resume_lost_checkpoint:
            log.error("%s; STREAM_RESUME_LOST_CHECKPOINT=false: starting from STREAM_STARTING_OFFSETS=%s (a rebuild: "
                      "records already in the lake are read into new files again)", where,
                      self.s.stream_starting_offsets)
            return None
        recorded = json.loads(got["o"].iloc[0])
        bounds = self.sinks.retrying(f"{query} offsets of its topics", partition_offset_bounds, self.s,
                                     self._query_topics()[query])
        start, problems = resume_offsets(recorded, bounds)
        for p in problems:
            if p["problem"] == "beyond_end":
                log.error("query %s: topic %s partition %d: the resume offset %d lies beyond the topic's end offset %d "
                          "(earliest %d): the topic was re-created or the broker's data reset since the recorded "
                          "batch; this partition is read from its earliest offset", query, p["topic"], p["partition"],
                          p["recorded"], p["end"], p["earliest"])
            elif p["problem"] == "expired":
                log.error("query %s: topic %s partition %d: the resume offset %d lies below the earliest offset %d: "
                          "%d record(s) were deleted by retention before they were read (lost); resuming at %d",
                          query, p["topic"], p["partition"], p["recorded"], p["earliest"],
                          p["earliest"] - p["recorded"], p["earliest"])
            else:
                log.warning("query %s: topic %s partition %d has no recorded end offset (added since); read from its "
                            "earliest offset %d", query, p["topic"], p["partition"], p["earliest"])
        log.error("%s; resuming at that batch's end offsets %s instead of STREAM_STARTING_OFFSETS=%s, each partition "
                  "checked against the topics' current offsets (%d not resumed there: see above). Records of the "
                  "recorded batches are not read again; records the broker no longer holds cannot be read",
                  where, start, self.s.stream_starting_offsets, len(problems))
        return start

    def _source(self, topics: list[str], resume: dict[str, dict[str, int]] | None = None):
        """A Kafka source of ``topics``; ``resume`` ({topic: {partition: offset}}, :meth:`lost_checkpoint_offsets`:
        every current partition, -2 = earliest): start there instead of STREAM_STARTING_OFFSETS (a new checkpoint
        only).

        Reads with ``isolation.level=read_committed``: records of a transaction its producer (any client writing
        the topics transactionally) aborted, or has not committed yet, are not read; the source stops at the last
        stable offset until the transaction ends (Kafka's consumer default, read_uncommitted, counted an aborted
        transaction's sales and stock updates in the lake and the windows: 20 of 20 aborted records before
        2026-12-07, tests/test_kafka_records.py)."""
        s = self.s
        starting = s.stream_starting_offsets
        if resume and all(t in resume for t in topics):
            starting = json.dumps({t: resume[t] for t in topics})
        return (self.spark.readStream.format("kafka")
                .option("kafka.bootstrap.servers", s.kafka_bootstrap_servers)
                .option("kafka.isolation.level", "read_committed")
                .option("subscribe", ",".join(topics))
                .option("startingOffsets", starting)
                .option("maxOffsetsPerTrigger", str(s.stream_max_offsets_per_trigger))
                .option("failOnDataLoss", "false")
                .load())

    def start(self, available_now: bool = False, trigger_seconds: float | None = None) -> dict[str, Any]:
        """Start both queries. ``available_now``: process everything available at start, then stop; otherwise
        a processing-time trigger of ``trigger_seconds`` (default STREAM_TRIGGER_SECONDS).

        Returns:
            {query name: StreamingQuery}.
        """
        s = self.s
        self.stopping.clear()   # a job stopped before and started again retries again
        self._lookup_failed_stopping = False
        self._trigger = ({"availableNow": True} if available_now
                         else {"processingTime": f"{trigger_seconds or s.stream_trigger_seconds} seconds"})
        for key, value in state_store_conf(s).items():  # read by a query when it starts (kept in its checkpoint)
            self.spark.conf.set(key, value)
        if "://" not in s.spark_checkpoint_dir:   # before any entry is set aside: a checkpoint of the old code keeps
            from streaming.checkpoint import lake_file_naming   # its plain lake file names

            for name in QUERY_NAMES:
                lake_file_naming(Path(checkpoint_path(s, name)), before_start=True)
        for name in QUERY_NAMES:   # the progress counts the last stop could not write (ClickHouse failing)
            self.sinks.write_pending_rows(name)
        self.recreated_topics = self.rewind_recreated_topics()
        self._start_query("raw", self.lost_checkpoint_offsets("raw"))
        self._start_query("windows")
        self.started_at = time.time()
        self._poller = ProgressPoller(self.queries, self.progress_callbacks).start()
        return self.queries

    def _start_query(self, name: str, resume: dict[str, dict[str, int]] | None = None):
        """Start query ``name`` (``raw`` or ``windows``) on its checkpoint with the trigger :meth:`start` chose, its
        foreachBatch preceded by :meth:`check_topics`; ``resume``: the raw query's starting offsets after a lost
        checkpoint (:meth:`lost_checkpoint_offsets`). Returns the StreamingQuery (also in ``self.queries``)."""
        s = self.s
        topics = {et: s.topic(EVENT_TYPES[et]) for et in INPUT_EVENT_TYPES}
        if name == "raw":
            # one Kafka source per topic, so each record is fetched and decoded once (a single multi-topic source
            # filtered per branch was scanned once per branch: 9 times per micro-batch); no event-time watermark
            # here, so topics advancing at different speeds change nothing
            frame = self.sinks.raw_frame({t: TR.kafka_frame(self._source([t], resume))
                                          for t in [*topics.values(), s.topic(DEAD_LETTER)]})
            writer = frame.writeStream.queryName("raw").foreachBatch(self._checked("raw", self.sinks.raw_batch))
        else:
            # one source for both topics here: maxOffsetsPerTrigger is then shared in proportion to each partition's
            # backlog, so sales and inventory updates advance together in event time; a source per topic would let
            # one run ahead, and its events would push the watermark past the other topic's unread ones (dropped as
            # late, and restock alerts that depend on the batch sizes). Its two branches scan the batch twice.
            lim = {"max_age_days": s.stream_max_event_age_days, "max_future_minutes": s.stream_max_future_minutes}
            k = TR.kafka_frame(self._source([topics["sales_transaction"], topics["inventory_update"]]))
            facts = TR.inventory_facts(TR.valid_events(k, "sales_transaction", topics["sales_transaction"], **lim),
                                       TR.valid_events(k, "inventory_update", topics["inventory_update"], **lim))
            win = TR.window_metrics(facts, s.stream_window, s.stream_watermark)
            writer = (win.writeStream.queryName("windows").outputMode("update")
                      .foreachBatch(self._checked("windows", self.sinks.windows_batch)))
        self.queries[name] = (writer.option("checkpointLocation", checkpoint_path(s, name))
                              .trigger(**self._trigger).start())
        return self.queries[name]

    def _restart_if_rewound(self, name: str) -> bool:
        """Start query ``name`` again when it stopped because :meth:`check_topics` rewound its micro-batch (True);
        False for any other end (the caller raises its error).

        The stopped query is first waited for (``awaitTermination``, its error swallowed: it is the rewind's):
        ``isActive`` turns False before Spark unregisters the query (``notifyQueryTermination``), and a start
        with the same name before that fails with "a query with that name is already active"."""
        got = self._rewound.pop(name, None)
        q = self.queries.get(name)
        if got is None or q is None or q.isActive:
            return False
        try:
            q.awaitTermination()   # returns (raises the rewind's error) once Spark has unregistered the query
        except Exception as exc:
            log.debug("query %s ended with the rewind's error: %s", name, str(exc)[:300])
        log.warning("query %s: started again in this process after micro-batch %d was rewound for re-created "
                    "topic(s) %s; Spark re-runs it from the rewound offsets", name, got["batch"], sorted(got["topics"]))
        self._start_query(name)
        return True

    def await_available_now(self, timeout: float | None = None) -> None:
        """Wait until both available-now queries finish; a query whose micro-batch was rewound for a re-created topic
        (:meth:`check_topics`) is started again and waited for.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds (queries are left running; call stop()).
            pyspark.errors.StreamingQueryException: a query failed (not for a rewind: ``awaitTermination`` raises
                the rewound query's deliberate failure too, which is caught and the query started again).
        """
        deadline = None if timeout is None else time.time() + timeout
        for name in list(self.queries):
            while True:
                q = self.queries[name]
                left = None if deadline is None else max(1.0, deadline - time.time())
                try:   # raises StreamingQueryException for a failed query, the rewound one's included
                    done = q.awaitTermination(left) if left is not None else q.awaitTermination()
                except Exception:
                    if self._restart_if_rewound(name):
                        continue
                    raise
                if done is False:
                    raise TimeoutError(f"streaming query {name!r} did not drain within {timeout} s")
                exc = q.exception()
                if exc is None:
                    break
                if not self._restart_if_rewound(name):
                    raise exc

    def await_any(self, timeout: float | None = None) -> None:
        """Block until a query terminates (raises its error) or ``timeout`` seconds pass; a query whose micro-batch
        was rewound for a re-created topic (:meth:`check_topics`) is started again instead. Meanwhile touch the
        heartbeat file (:func:`heartbeat_path`) every second while all queries are active. The queries are looked
        at at least once, also with ``timeout`` 0 (a poll: ``ops.bench_stream``).

        Raises:
            pyspark.errors.StreamingQueryException: a query failed (not for a rewind).
        """
        deadline = None if timeout is None else time.time() + timeout
        beat = heartbeat_path(self.s)
        beat.parent.mkdir(parents=True, exist_ok=True)
        last_beat = 0.0
        while True:
            for name, q in list(self.queries.items()):
                if not q.isActive:
                    exc = q.exception()
                    if exc is not None and self._restart_if_rewound(name):
                        continue
                    if exc is not None:
                        raise exc
                    return
            if time.time() - last_beat >= 1.0:  # liveness for the supervisor and compose healthchecks
                beat.touch()
                last_beat = time.time()
            if deadline is not None and time.time() >= deadline:
                return
            time.sleep(max(0.0, min(0.5, deadline - time.time())) if deadline is not None else 0.5)

    def processed_offsets(self, query: str = "windows") -> dict[str, dict[str, int]]:
        """{topic: {partition: next offset}} committed by the last micro-batch of ``query`` (from lastProgress)."""
        q = self.queries.get(query)
        prog = last_progress(q) if q is not None else None
        if not prog:
            return {}
        return source_end_offsets(prog)

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Stop every query between micro-batches (idempotent), then flush the alert producer.

        First the sinks' retries give up (``StreamSinks.stopping``): a micro-batch waiting out an outage fails at
        once, uncommitted (re-run from the checkpoint at the next start), instead of holding the stop for up to
        STREAM_SINK_RETRY_SECONDS; until 2026-12-07 a SIGTERM during a ClickHouse outage waited 120 s per query
        and then in ``StreamingQuery.stop()`` for the retrying batch, past the supervisor's ``stopwaitsecs`` (60 s):
        every such stop ended in SIGKILL. ``grace_seconds`` bounds the wait for the running triggers of all the
        queries together (default :data:`STOP_GRACE_SECONDS`, within the supervisor's 60 s). A ClickHouse request
        already sent waits for its answer, up to STREAM_CLICKHOUSE_TIMEOUT_SECONDS (at most 30, below the grace);
        once one has failed, the stopping sinks send nothing more (:meth:`streaming.sinks.StreamSinks._ch_request`),
        so a frozen endpoint costs one timeout, not one per queued request. A batch awaiting its restock alerts'
        acknowledgement gets it from a healthy broker (milliseconds); while Kafka is down or frozen it gives up
        :data:`streaming.sinks.STOP_ACK_WAIT_SECONDS` (10 s) into the stop (the alerts not acknowledged
        are not recorded, the batch fails uncommitted and is re-run, its alerts sent again with the same ids: at least
        once), and the alert producer is closed within what is left of the grace, at most
        :data:`streaming.sinks.CLOSE_FLUSH_SECONDS` (:meth:`streaming.sinks.StreamSinks.close`); until 2026-12-07
        both waited up to ``delivery_timeout_ms`` (2 min) each, and the supervisor SIGKILLed the job.

        ``StreamingQuery.stop()`` interrupts a running micro-batch; inside ``foreachBatch`` the interrupt
        surfaces as a Py4J error whose (long) text Spark's ``StreamExecution.isInterruptionException`` matches
        with a backtracking regex, which overflows the JVM stack (the ``java.lang.StackOverflowError`` with
        1,000+ ``java.util.regex`` frames; SPARK-39218/SPARK-48717). So each query is stopped only once its
        current trigger has finished (``status['isTriggerActive']`` false), waiting up to ``grace_seconds``;
        the next processing-time trigger is seconds away, so ``stop()`` lands between batches. A trigger seen
        planning its batch for :data:`PLANNING_STOP_SECONDS` (Spark's status :data:`PLANNING_STATUS`: asking the
        Kafka sources for offsets, outside ``foreachBatch``) is interrupted then: with the broker down it would hold
        the whole grace (since 2026-12-07). Each ``StreamingQuery.stop()`` waits for its query's thread at most what
        is left of :data:`STOP_BUDGET_SECONDS` (50 s) since the stop began (:data:`STOP_TIMEOUT_CONF`, given back
        afterwards), so queries and producer close end within the supervisor's 60 s. The interrupt does not end a
        trigger planning against a stopped broker (the Kafka source's offset request holds the thread): its
        ``stop()`` gives up at that timeout (logged) and the thread runs on until the request ends (in the CLI the
        process exits). Nothing is lost either way: an interrupted batch is not committed and is re-run from the
        checkpoint.
        """
        self.stopping.set()
        began = time.time()
        deadline = began + grace_seconds
        previous = None   # the session's STOP_TIMEOUT_CONF, given back once the queries are stopped
        if self.queries:
            try:
                previous = self.spark.conf.get(STOP_TIMEOUT_CONF)
            except Exception as exc:  # noqa: BLE001  a session already stopped: its queries are stopped too
                log.warning("stopping: %s not read (%s)", STOP_TIMEOUT_CONF, exc)
        # the queries side by side: each one's wait and StreamingQuery.stop() (which can take ~30 s while a stopped
        # broker holds its planning) do not add up (2026-12-07: one after the other, 52.6 s with the broker down)
        stoppers = [threading.Thread(target=self._stop_query, args=(name, q, began, deadline), name=f"stop-{name}",
                                     daemon=True) for name, q in self.queries.items()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        if previous is not None:
            try:
                self.spark.conf.set(STOP_TIMEOUT_CONF, previous)
            except Exception as exc:  # noqa: BLE001  logged: the session is gone
                log.warning("stopping: %s not restored to %s (%s)", STOP_TIMEOUT_CONF, previous, exc)
        if self._poller is not None:  # after the queries stopped: the last poll sees their final batches
            self._poller.stop()
            self._poller = None
        self._close_admin()
        # at least 1 s: the producer's sender thread fails what is buffered (abort_producer joins it that long)
        self.sinks.close(timeout=min(CLOSE_FLUSH_SECONDS, max(1.0, deadline - time.time())))

    def _stop_query(self, name: str, q, began: float, deadline: float) -> None:
        """Stop query ``q`` (named ``name``: the key of :attr:`queries`, no call into the JVM) for :meth:`stop`
        (errors logged, not raised): once its running trigger has finished, or once the trigger has been seen
        planning its batch (:data:`PLANNING_STATUS`) for :data:`PLANNING_STOP_SECONDS`, or at ``deadline`` (epoch s)
        with a warning naming what the trigger was doing (``began``: the stop's start, epoch s). Right before
        ``StreamingQuery.stop()`` the session's :data:`STOP_TIMEOUT_CONF` is set to what is left of
        :data:`STOP_BUDGET_SECONDS` since ``began`` (at least :data:`STOP_TIMEOUT_FLOOR_SECONDS`), so the stop ends
        within the supervisor's 60 s whenever it lands; a query whose thread outlives it is logged ("failed to stop
        within"), its batch uncommitted."""
        try:
            planning_since: float | None = None   # monotonic s since when every status read has said planning
            while q.isActive and time.time() < deadline:
                st = q.status
                if not st.get("isTriggerActive"):
                    break
                if str(st.get("message", "")).startswith(PLANNING_STATUS):
                    planning_since = planning_since if planning_since is not None else time.monotonic()
                    if time.monotonic() - planning_since >= PLANNING_STOP_SECONDS:
                        break   # still planning, outside foreachBatch: a stopped broker holds it (interrupted)
                else:
                    planning_since = None
                time.sleep(0.05)
            if q.isActive:
                st = q.status
                if st.get("isTriggerActive"):
                    log.warning("stopping query %s %.1f s into the stop with its trigger still active (%s): "
                                "interrupted, not committed, re-run at the next start", name,
                                time.time() - began, st.get("message"))
                left = max(STOP_TIMEOUT_FLOOR_SECONDS, began + STOP_BUDGET_SECONDS - time.time())
                try:
                    self.spark.conf.set(STOP_TIMEOUT_CONF, str(int(left * 1000)))
                except Exception as exc:  # noqa: BLE001  stopped all the same (a session gone: its queries too)
                    log.warning("stopping query %s: %s not set (%s)", name, STOP_TIMEOUT_CONF, exc)
                q.stop()
        except Exception as exc:  # noqa: BLE001  the other queries are stopped all the same
            log.warning("stopping query %s: %s", name, exc)

    def stats(self) -> dict[str, Any]:
        """Summary: batches and rows per query, duplicates dropped (event ids seen again within the watermark,
        from the query progress), Kafka records skipped because they expired before the query read them
        (``records_expired``, :meth:`expired_records`), dropped-by-watermark rows, alerts sent, sink retries,
        wall time.
        ``source_rows``: Kafka records the query's sources read (progress ``numInputRows``, over the last
        ``spark.sql.streaming.numRecentProgressUpdates`` batches): each record is read once per query, so it
        equals the records of the raw query's topics; the windows query's one source is scanned by its two branches
        (sales, inventory updates), so twice the records of its two topics."""
        out: dict[str, Any] = {"alerts_sent": self.sinks.alerts_sent, "sink_retries": self.sinks.retries,
                               "seconds": None if self.started_at is None else round(time.time() - self.started_at, 2)}
        for name in QUERY_NAMES:
            logs = [b for b in self.sinks.batch_log if b["query"] == name]
            q = self.queries.get(name)
            dropped = dups = read = expired = 0
            if q is not None:
                for p in recent_progress(q):
                    dups += dropped_duplicates(p)
                    key = (name, int(p.get("batchId", -1)))
                    # the count recorded with the batch (stream_batches); a look-up now would use the offsets of now
                    known = self._expired.get(key)
                    expired += known if known is not None else self.expired_records(name, p)
                    read += int(p.get("numInputRows", 0) or 0)
                    for op in p.get("stateOperators", []) or []:  # a row dropped by one never reaches the next
                        dropped += int(op.get("numRowsDroppedByWatermark", 0) or 0)
            out[name] = {"batches": len(logs), "input_rows": sum(b["input_rows"] for b in logs),
                         "output_rows": sum(b["output_rows"] for b in logs), "duplicates_dropped": dups,
                         "source_rows": read, "records_expired": expired}
            if name == "windows":
                out[name]["rows_dropped_by_watermark"] = dropped
        return out


def run_stream(settings: Settings | None = None, available_now: bool = True, timeout: float | None = None,
               trigger_seconds: float | None = None, spark=None) -> dict[str, Any]:
    """Run the streaming job in this process and return :meth:`StreamingJob.stats`.

    ``available_now=True`` drains what is in Kafka and returns; otherwise runs until ``timeout`` seconds pass
    (None: until interrupted or a query fails). Queries are always stopped on return (``finally``); the
    SparkSession is kept for reuse (``build_spark(...).stop()`` ends it).
    """
    job = StreamingJob(settings, spark=spark)
    try:
        job.start(available_now=available_now, trigger_seconds=trigger_seconds)
        if available_now:
            job.await_available_now(timeout)
        else:
            job.await_any(timeout)
        return job.stats()
    finally:
        job.stop()


app = typer.Typer(help="Spark Structured Streaming job of the retail platform.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """Spark Structured Streaming job of the retail platform."""


@app.command()
def run(available_now: bool = typer.Option(False, "--available-now", help="Drain what is available, then stop."),
        timeout: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
        trigger_seconds: Optional[float] = typer.Option(None, help="Processing-time trigger (default STREAM_TRIGGER_SECONDS).")) -> None:
    """Run the streaming queries (raw events -> lake + quarantine; windows -> ClickHouse + alerts)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    s = get_settings()

    def _sigterm(*_):  # the supervisor's stop signal: leave through the finally blocks (queries stopped cleanly)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    spark = build_spark(s)
    try:
        stats = run_stream(s, available_now=available_now, timeout=timeout, trigger_seconds=trigger_seconds, spark=spark)
        typer.echo(json.dumps(stats, indent=2))
    except KeyboardInterrupt:
        typer.echo("interrupted: queries stopped")
    finally:
        spark.stop()


if __name__ == "__main__":
    app()
