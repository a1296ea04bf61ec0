"""foreachBatch sinks of the streaming job (run in the Spark driver = the process that owns the chDB client).

Two queries, two sinks:

* :meth:`StreamSinks.raw_batch` (query ``raw``, all input topics): parse + validate every record; valid events
  -> the lake as Parquet ``raw-data/<event_type>/year=YYYY/month=MM/day=DD/batch-<batchId><tag>.parquet``
  (:meth:`StreamSinks.run_tag`)
  (day of the event time, UTC; deterministic names so a replayed micro-batch overwrites its own files);
  invalid records -> ClickHouse ``quarantine_events`` (keyed by topic/partition/offset/topic id) with the reason and
  the raw payload. Late events are *not* dropped here: the lake holds every valid event.
* :meth:`StreamSinks.windows_batch` (query ``windows``, update output mode): the windows updated by the
  micro-batch are enriched (:func:`streaming.transforms.enrich_windows`) with the recent history read back
  from ClickHouse, upserted into ``sales_metrics_5m``; the touched (store, window) pairs are recomputed into
  ``store_metrics_5m``; restock episodes are detected (:func:`streaming.transforms.restock_episodes`) and new
  alerts go to Kafka ``retail-restock-alerts`` (Avro-validated), ClickHouse ``restock_alerts`` and the lake;
  finally ``inventory_levels`` (latest stock + episode state) is upserted.

Rows ClickHouse refuses for their values (:data:`ROW_ERROR_CODES`, e.g. a constraint) do not fail the micro-batch:
the insert is bisected (:func:`insert_isolating_refused`), the other rows written, the refused ones quarantined with
ClickHouse's error (:meth:`StreamSinks._insert_df`); schema errors and outages behave as before. A refusal of
nearly every row of a frame of 16 or more (the first 16 rows tried alone and every piece still pending refused,
none written) sets the pending pieces aside whole, at a bounded cost, and stops nothing either.

Idempotency: every ClickHouse table is a ReplacingMergeTree keyed by its natural key (read with FINAL), lake
files are named by batch id, alert ids are deterministic and an alert already in ``restock_alerts`` is not
sent to Kafka again; nor is one Kafka acknowledged in an earlier attempt of the same micro-batch whose insert
into ``restock_alerts`` failed (a retry after an outage), nor one ClickHouse refused (quarantined: found there by
key, also by a restarted process). Ordering inside :meth:`windows_batch` (alerts before ``inventory_levels``) makes
a crash of the process between the Kafka acknowledgement and the ClickHouse insert re-send an alert with the same id
rather than lose it (Kafka side: at-least-once across crashes, consumers dedupe by ``alert_id``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from contracts import DEAD_LETTER, EVENT_TYPES, validate_event
from core.logs import RepeatedLog
from core.settings import STREAM_ANCHOR_LOOKBACK_HOURS, STREAM_HISTORY_HOURS, Settings, interval_hours
from streaming import schema as S
from streaming import transforms as TR

log = logging.getLogger(__name__)

#: alert ids (or SKUs) per look-up query: ~30 bytes each, so a query stays far below ClickHouse's max_query_size
#: (256 KiB)
ALERT_ID_CHUNK = 2_000
#: hours of earlier windows an anomaly score's baseline reaches back (enrich_windows' horizon_hours)
ANOMALY_HORIZON_HOURS = STREAM_HISTORY_HOURS
#: hours before a query's lower time bound searched first for a per-SKU anchor (the latest earlier window, or the
#: latest earlier closed window with a stock count); only the SKUs without one in that span are looked up further
#: back, by their sorting key. Keeps a micro-batch's reads of ``sales_metrics_5m`` bounded in event time
#: (parts and granules outside are skipped) instead of reading the table's whole history
ANCHOR_LOOKBACK_HOURS = STREAM_ANCHOR_LOOKBACK_HOURS
#: natural key of each table the stream writes (its ReplacingMergeTree ORDER BY): identifies a refused row's
#: quarantine row (:meth:`StreamSinks._set_aside`), so a re-run batch replaces it instead of adding one
SINK_KEYS = {"sales_metrics_5m": ["store_id", "product_id", "window_start"],
             "store_metrics_5m": ["store_id", "window_start"],
             "inventory_levels": ["store_id", "product_id"], "restock_alerts": ["alert_id"],
             "stream_batches": ["query", "batch_id", "query_id"]}
#: characters of a refused quarantine row's payload kept (JSON-escaped) in its second attempt
QUARANTINE_PAYLOAD_CHARS = 65_536
#: characters of a refused quarantine row's reason kept in its later attempts (ClickHouse's error is added)
QUARANTINE_REASON_CHARS = 2_000
#: the timestamp columns of :func:`streaming.transforms.window_metrics` rows (converted to UTC pandas timestamps)
_WINDOW_TIMES = ("window_start", "window_end", "window_stock_time", "last_event_time")
#: event types read from Kafka by the job (restock alerts are produced by it)
INPUT_EVENT_TYPES = ["sales_transaction", "inventory_update", "price_change", "customer_event"]


def processing_time():
    """Processing time of each row (TIMESTAMP, ms precision), read from the JVM clock as the row is processed.

    Not ``current_timestamp()``: Spark puts the micro-batch time into the plan as a literal, the optimizer pushes
    that projection through the union into every topic's validation stage, and whole-stage codegen then
    recompiles those stages in every micro-batch (rate-source check with a watermarked dedup: 65 compilations in
    25 s with ``current_timestamp()``, 25 with this column; ``reflect`` is not folded, so it is no literal).
    A function, not a module constant: building the Column needs an active SparkContext.
    """
    return F.timestamp_millis(F.expr("cast(reflect('java.lang.System', 'currentTimeMillis') as bigint)"))


def lake_arrow_schema(event_type: str) -> pa.Schema:
    """Arrow schema of a raw lake file: contract fields (timestamp-millis as ``timestamp[ms, UTC]``, enums as
    strings) + ``ingested_at`` (timestamp[ms, UTC]), ``kafka_partition`` (int32), ``kafka_offset`` (int64)."""
    out = []
    for f in S.fields(event_type):
        if f.timestamp_millis:
            t = pa.timestamp("ms", tz="UTC")
        elif f.enum_symbols:
            t = pa.string()
        else:
            t = {"string": pa.string(), "integer": pa.int32(), "long": pa.int64(), "double": pa.float64(),
                 "float": pa.float32(), "boolean": pa.bool_()}[f.spark_type.typeName()]
        out.append(pa.field(f.name, t, nullable=f.nullable))
    out += [pa.field("ingested_at", pa.timestamp("ms", tz="UTC")), pa.field("kafka_partition", pa.int32()),
            pa.field("kafka_offset", pa.int64())]
    return pa.schema(out)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def is_infrastructure_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) means a service is unreachable or failing rather
    than a bug: connection refused/reset, timeouts, socket and S3 I/O errors (pyarrow raises OSError),
    clickhouse-connect's OperationalError, HTTP transport errors, Kafka errors, a 5xx status. (A request cut by
    an outage cannot leave the sinks' client refusing queries as a busy session: :func:`core.clickhouse.new_client`
    opens no session.)"""
    from clickhouse_connect.driver.exceptions import OperationalError
    from kafka.errors import KafkaError

    try:
        import urllib3.exceptions as u3
        transport: tuple[type, ...] = (u3.HTTPError,)
    except ImportError:  # pragma: no cover
        transport = ()
    try:
        import httpx
        transport += (httpx.TransportError,)
    except ImportError:  # pragma: no cover
        pass
    if clickhouse_error_code(exc) in ROW_ERROR_CODES:
        return False   # ClickHouse answered, about the rows (whose values its message quotes: "timed out" in an id)
    for e in _chain(exc):
        if isinstance(e, (ConnectionError, TimeoutError, OSError, OperationalError, KafkaError) + transport):
            return True
        msg = str(e)
        if any(t in msg for t in ("Connection refused", "Connection reset", "timed out", "Service Unavailable",
                                  "HTTP 502", "HTTP 503", "HTTP 504", "Max retries exceeded")):
            return True
    return False


class NotSentStopping(ConnectionAbortedError):
    """A ClickHouse request of the sinks not sent because the job is stopping while ClickHouse fails
    (:meth:`StreamSinks._ch_request`). A ``ConnectionError``, so an outage to :func:`is_infrastructure_error`: the
    micro-batch fails uncommitted and is re-run from the checkpoint at the next start."""


def retrying_call(settings: Settings, what: str, fn, args: tuple = (), kwargs: dict | None = None, *,
                  error_kind: str = "infrastructure error", before_retry=None, on_wait=None,
                  logger: logging.Logger | None = None, stop_event: threading.Event | None = None,
                  max_seconds: float | None = None):
    """``fn(*args, **kwargs)``, called again on an infrastructure error (:func:`is_infrastructure_error`): the one
    retry policy of the stream's writes (:meth:`StreamSinks.retrying`) and Kafka look-ups
    (:func:`streaming.job.kafka_retrying`). tenacity, exponential backoff from 0.5 s doubling, at most
    ``settings.stream_sink_retry_max_wait_s`` (STREAM_SINK_RETRY_MAX_WAIT_S) seconds between calls, for up to
    ``settings.stream_sink_retry_seconds`` (STREAM_SINK_RETRY_SECONDS) seconds; each wait logged as a warning
    naming ``what``, ``error_kind``, the error, the wait (s) and the next attempt's number.

    Args:
        settings: platform settings (the two retry settings above).
        what: the call, for the log (e.g. ``windows micro-batch 7``).
        fn, args, kwargs: the call.
        error_kind: the log's name of the error (``infrastructure error``, ``Kafka error``).
        before_retry: called (no arguments) before every attempt after the first, inside it (its error is retried
            as the call's): the sinks' ClickHouse client reset.
        on_wait: called (no arguments) at every wait: the sinks' ``retries`` count.
        logger: where the waits are logged (default this module's).
        stop_event: once set (the job is stopping: SIGTERM, :meth:`streaming.job.StreamingJob.stop`), a wait ends
            at once and no further attempt is made: the last error is raised (logged as given up for the stop), so
            a micro-batch retrying through an outage fails uncommitted and its query can stop (re-run from the
            checkpoint at the next start) instead of holding the stop for up to STREAM_SINK_RETRY_SECONDS.
        max_seconds: a shorter bound (s) than STREAM_SINK_RETRY_SECONDS for this call (the smaller one applies):
            bookkeeping that must not hold a start (:meth:`StreamSinks.write_pending_rows`).
    Returns:
        what ``fn`` returns.
    Raises:
        the last infrastructure error after STREAM_SINK_RETRY_SECONDS, or after ``stop_event`` was set; any other
        error at once.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_delay, stop_when_event_set, wait_exponential

    last: list[BaseException] = []   # the latest attempt's error: raised again, not retried, once the job stops

    def before_sleep(rs) -> None:
        if on_wait is not None:
            on_wait()
        exc = rs.outcome.exception()
        last[:] = [exc]
        (logger or log).warning("%s: %s (%s: %s); waiting %.1f s before attempt %d", what, error_kind,
                                type(exc).__name__, str(exc)[:300], rs.next_action.sleep, rs.attempt_number + 1)

    seconds = settings.stream_sink_retry_seconds
    stop = stop_after_delay(seconds if max_seconds is None else min(seconds, max_seconds))
    extra: dict[str, Any] = {}
    if stop_event is not None:
        stop = stop | stop_when_event_set(stop_event)
        extra["sleep"] = stop_event.wait   # a wait ends when the job stops
    try:
        for attempt in Retrying(retry=retry_if_exception(is_infrastructure_error),
                                wait=wait_exponential(multiplier=0.5, min=0.5, max=settings.stream_sink_retry_max_wait_s),
                                stop=stop, before_sleep=before_sleep, reraise=True, **extra):
            with attempt:
                if stop_event is not None and stop_event.is_set() and last:
                    raise last[0]   # stopped during the wait: no further attempt
                if before_retry is not None and attempt.retry_state.attempt_number > 1:
                    before_retry()
                return fn(*args, **(kwargs or {}))
    except Exception as exc:
        if stop_event is not None and stop_event.is_set() and is_infrastructure_error(exc):
            (logger or log).warning("%s: %s (%s: %s) not retried: the job is stopping; not committed, run again "
                                    "from the checkpoint at the next start", what, error_kind, type(exc).__name__,
                                    str(exc)[:300])
        raise


#: ClickHouse error codes of an insert refused for the *values* of its rows (not the schema, not the server): a
#: constraint, a value outside a column's type, text or numbers its parser refuses, NULL into a non-Nullable column,
#: ``throwIf`` in a constraint or materialized view. Only these are bisected down to the refused rows
#: (:func:`insert_isolating_refused`; for a refusal of nearly every row, to pieces of rows); every
#: other code (:data:`SCHEMA_ERROR_CODES`, server errors, unknown codes) still fails the write as before.
ROW_ERROR_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT", 26: "CANNOT_PARSE_QUOTED_STRING", 27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME", 53: "TYPE_MISMATCH", 69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE", 72: "CANNOT_PARSE_NUMBER", 117: "INCORRECT_DATA", 131: "TOO_LARGE_STRING_SIZE",
    190: "SIZES_OF_ARRAYS_DONT_MATCH", 321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", 395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO", 407: "DECIMAL_OVERFLOW",
    469: "VIOLATED_CONSTRAINT", 691: "UNKNOWN_ELEMENT_OF_ENUM"}
#: ClickHouse error codes meaning the table or a column is missing (dropped while running): never a row's fault.
#: The write fails and the query stops naming the table, so a restart's migrations create it again.
SCHEMA_ERROR_CODES: dict[int, str] = {
    8: "THERE_IS_NO_COLUMN", 10: "NOT_FOUND_COLUMN_IN_BLOCK", 16: "NO_SUCH_COLUMN_IN_TABLE", 47: "UNKNOWN_IDENTIFIER",
    60: "UNKNOWN_TABLE", 81: "UNKNOWN_DATABASE"}
_CODE_RE = re.compile(r"\bCode:\s*(\d+)")
#: ClickHouse's ``(version 25.8.2.1 (chDB))`` trailer, with clickhouse-connect's `` (for url ...)`` after it
_VERSION_TRAILER_RE = re.compile(r"\s?\(version [^()]*(?:\([^()]*\)[^()]*)?\)(?: ?\(for url [^()]*\))? ?$")
#: characters at the end of an error message searched for that trailer (:func:`error_text`)
_TRAILER_CHARS = 600
#: single rows refused in a row, none of the frame written, after which :func:`insert_isolating_refused` tries the
#: pending pieces whole once and sets aside those still refused without bisecting them (a refusal of every row: a
#: migration, a constraint no row meets)
ALL_REFUSED_AFTER = 16


def _chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from (``__cause__`` / ``__context__``), each once."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def clickhouse_error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of ``exc`` or an exception it was raised from: clickhouse-connect's ``code`` (from
    the ``X-ClickHouse-Exception-Code`` header our ``chserver`` and ClickHouse servers send), else the ``Code: N.``
    of the message (the embedded chDB engine, or a body without the header); None when no ClickHouse server
    answered (a transport error, a client-side error)."""
    from clickhouse_connect.driver.exceptions import Error

    for e in _chain(exc):
        code = getattr(e, "code", None) if isinstance(e, Error) else None
        if isinstance(code, int):
            return code
        m = _CODE_RE.search(str(e))
        if m:
            return int(m.group(1))
    return None


def is_row_error(exc: BaseException) -> bool:
    """True when ``exc`` means ClickHouse (or clickhouse-connect, serializing the frame) refused rows of an insert
    for their values, so a smaller insert without them can succeed: a ClickHouse error code in
    :data:`ROW_ERROR_CODES`, or, with no ClickHouse code, clickhouse-connect's client-side ``DataError`` (a value
    its column type cannot carry) or an ``OverflowError``. False for outages (:func:`is_infrastructure_error`),
    schema errors (:data:`SCHEMA_ERROR_CODES`), other server errors and bugs."""
    from clickhouse_connect.driver.exceptions import DataError, OperationalError

    code = clickhouse_error_code(exc)
    if code is not None:
        return code in ROW_ERROR_CODES
    return any(isinstance(e, OverflowError) or (isinstance(e, DataError) and not isinstance(e, OperationalError))
               for e in _chain(exc))


def error_text(exc: BaseException, limit: int = 1_000) -> str:
    """``exc`` as a one-line reason (``Type: message``, clickhouse-connect's ``Received ClickHouse exception, code:
    N, server response:`` prefix and the version trailer left out; the exception it was raised from added in
    parentheses when its text is not in the message), cut to ``limit`` characters."""
    msg = " ".join(str(exc).split())
    msg = re.sub(r"^Received ClickHouse exception, code: \d+, server response: ", "", msg)
    # the trailer is searched in the message's tail only, by a regex without nested quantifiers: linear in the
    # message (before 2026-12-06 a backtracking regex over the whole message: 0.58 s at 16k characters)
    m = _VERSION_TRAILER_RE.search(msg, max(0, len(msg) - _TRAILER_CHARS))
    if m:
        msg = msg[:m.start()]
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in msg:   # clickhouse-connect's "...: error"
        msg += f" ({type(cause).__name__}: {' '.join(str(cause).split())})"
    return f"{type(exc).__name__}: {msg}"[:limit]


def insert_isolating_refused(df: pd.DataFrame, insert, is_refused=is_row_error,
                             all_refused_after: int | None = ALL_REFUSED_AFTER) -> list[tuple[int, BaseException]]:
    """Insert ``df`` with ``insert(frame)``; when an insert is refused for its rows (``is_refused(exc)``, default
    :func:`is_row_error`), insert its two halves instead, down to single rows, so every row but the refused ones is
    written. k refused rows among n cost at most 2·k·⌈log2 n⌉ + 1 inserts; none refused, one.

    A refusal of every row (a migration changed a column's type, a constraint no row meets) would cost 2n - 1
    inserts (n = 2,000: 3,999) under the sinks' ClickHouse lock: when ``all_refused_after`` single rows were
    refused and no piece of ``df`` was written yet, each piece still pending (at most ⌈log2 n⌉) is tried whole
    once, and when none of them is written either, they are returned whole, every row with its piece's error,
    without bisecting them (an error log says so): at most 2·⌈log2 n⌉ + 2·``all_refused_after`` inserts (2,000
    rows: 51, measured). Such rows are set aside like the others (quarantine with the error and payload): nothing
    is lost and the stream goes on (a review of 2026-12-06 rejected raising here: the batch would fail at every
    restart, for ever). A good row hidden in a pending piece with a refused one is set aside with it. A frame of
    fewer rows, or one where a piece was written (refused rows clustered at its start), is bisected to the end.
    ``None``: always bisect to the end (``quarantine_events``, whose refused rows have fallbacks of their own).

    A piece is retried whole, so rows of a piece written before ClickHouse refused a later block of it may be
    written twice: the stream's tables are ReplacingMergeTrees keyed by their natural key (read with FINAL).

    Args:
        df: the rows (any index; pieces are ``df.iloc`` slices, dtypes kept).
        insert: callable taking a frame; raises on failure.
        is_refused: predicate on the exception: True = the piece's rows are at fault, bisect it.
        all_refused_after: refused single rows, with none of ``df`` written, after which pending pieces still
            refused are returned whole (default :data:`ALL_REFUSED_AFTER`, 16); None = bisect to the end.
    Returns:
        [(position in ``df``, the exception refusing that row alone)], by position; [] when all were written.
    Raises:
        the first exception ``is_refused`` rejects (an outage, a dropped table, a bug), as raised by ``insert``.
    """
    def attempt(lo: int, hi: int) -> BaseException | None:
        """Insert rows [lo, hi): None when written, else the exception refusing them for their rows."""
        try:
            insert(df.iloc[lo:hi])
            return None
        except Exception as exc:  # noqa: BLE001  re-raised unless it is about the rows
            if not is_refused(exc):
                raise
            return exc

    refused: list[tuple[int, BaseException]] = []
    stack = [(0, len(df))] if len(df) else []
    written = False
    while stack:
        lo, hi = stack.pop()
        exc = attempt(lo, hi)
        if exc is None:
            written = True
        elif hi - lo == 1:
            refused.append((lo, exc))
        else:
            mid = (lo + hi) // 2
            stack += [(mid, hi), (lo, mid)]
        if all_refused_after is not None and not written and len(refused) >= all_refused_after:
            # the rows refused so far may be a cluster at the frame's start (a poison SKU's windows of a catch-up
            # batch): each piece still pending (at most ⌈log2 n⌉) is tried whole before calling it every row
            still = [(plo, phi, e) for plo, phi in stack if (e := attempt(plo, phi)) is not None]
            written = len(still) < len(stack)
            stack = [(plo, phi) for plo, phi, _ in still]
            if not written:   # every row refused: the pending pieces set aside whole, not bisected
                whole = [(pos, e) for plo, phi, e in still for pos in range(plo, phi)]
                log.error("insert of %d rows: the first %d rows tried alone and every pending piece were refused, "
                          "none written (a refusal of every row: a migration, a constraint no row meets?): the %d "
                          "rows of the pending pieces set aside with their piece's error, not tried alone (%s)",
                          len(df), len(refused), len(whole), error_text(still[0][2] if still else refused[0][1]))
                refused += whole
                stack = []
    return sorted(refused, key=lambda r: r[0])


def refused_row_offset(table: str, key_values: list) -> int:
    """``quarantine_events.offset`` of a row of ``table`` ClickHouse refused (:meth:`StreamSinks._set_aside`; topic
    ``refused:<table>``, partition -1): a 63-bit (non-negative Int64) blake2b hash of the table and the row's natural
    key values (:data:`SINK_KEYS`, in that order, each as ``str``). Deterministic, so a refusal of the same row
    replaces the earlier one and a look-up (:meth:`StreamSinks._recorded_alerts`) finds it by key."""
    ident = json.dumps([table, [str(v) for v in key_values]])
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "big") >> 1


def row_payload(row: Mapping[str, Any]) -> str:
    """One row (column -> value) as a JSON object: timestamps ISO 8601, NaN / NA / NaT as null, other values
    ``str`` when JSON has no type for them."""
    def val(v):
        if v is None or (not isinstance(v, (str, bytes, list, dict)) and pd.isna(v)):
            return None
        if isinstance(v, (pd.Timestamp, datetime)):
            return v.isoformat()
        if hasattr(v, "item"):   # numpy scalars
            return v.item()
        return v

    return json.dumps({str(k): val(v) for k, v in row.items()}, default=str, ensure_ascii=False)


#: seconds between two checks of :attr:`StreamSinks.stopping` while alerts await Kafka's acknowledgement
ACK_POLL_SECONDS = 0.25
#: seconds :meth:`StreamSinks.close` flushes the alert producer before it fails what is still buffered
CLOSE_FLUSH_SECONDS = 5.0
#: seconds :meth:`StreamSinks.write_pending_rows` retries (a ClickHouse outage) at a start before the queries start
#: without the rows (kept for the next start): bookkeeping must not hold the stream for STREAM_SINK_RETRY_SECONDS
PENDING_ROWS_WRITE_SECONDS = 30.0
#: seconds a micro-batch still awaits its restock alerts' acknowledgement once the job stops
#: (:meth:`StreamSinks._await_acknowledgements`): a healthy broker acknowledges within milliseconds (linger 10 ms + a
#: round trip), a down or frozen one never; well inside ``streaming.job.STOP_GRACE_SECONDS`` (40 s)
STOP_ACK_WAIT_SECONDS = 10.0


class StreamSinks:
    """Holds the clients of the sinks (ClickHouse, lake, Kafka producer for alerts) and the batch log.

    Args:
        settings: platform settings.
        client: clickhouse-connect client (default a new one of their own, :func:`core.clickhouse.new_client` with
            STREAM_CLICKHOUSE_TIMEOUT_SECONDS as its socket timeout; replaced by a fresh one before each retry).
        lake: :class:`core.lake.Lake` (default :func:`core.lake.get_lake`).

    Attributes:
        batch_log: list of {"query", "batch_id", "input_rows", "output_rows", "started_at", "committed_at"
            (epoch seconds), "duplicates_dropped", "records_expired", "alerts_closed_until", "event_time_max"
            (epoch ms or None), "rows_set_aside" (rows ClickHouse refused, set aside: :meth:`_insert_df`)},
            appended after each micro-batch's writes are visible (used for freshness).
        alerts_sent: number of restock alerts delivered to Kafka by this process (each alert id once per process).
        retries: number of waits before a retried write (infrastructure errors, :meth:`retrying`).
    """

    def __init__(self, settings: Settings, client=None, lake=None):
        from core.clickhouse import new_client
        from core.lake import Lake

        self.s = settings
        self.db = settings.clickhouse_database
        # a client of their own, with STREAM_CLICKHOUSE_TIMEOUT_SECONDS: a request left unanswered (endpoint stalled,
        # a connection wedged after an insert was sent) fails as an outage and is retried on a new connection
        self.ch = client or new_client(settings, timeout=settings.stream_clickhouse_timeout_seconds)
        self._own_client = client is None  # replaced by a fresh one after an infrastructure error
        self.lake = lake or Lake(settings)
        self._ch_lock = threading.RLock()  # the two queries' batches run in different threads
        self._log_lock = threading.Lock()
        #: seconds between two summary lines of a table's refused rows within one micro-batch attempt
        #: (:attr:`refused_log`)
        self.refused_log_interval_s = 10.0
        self._refused_logs: dict[int, RepeatedLog] = {}   # thread id -> its running attempt's refused_log
        self.retries = 0
        #: set by :meth:`streaming.job.StreamingJob.stop`: retries give up at once (:func:`retrying_call`)
        self.stopping = threading.Event()
        #: the latest ClickHouse request ended in an infrastructure error (:meth:`_ch_request`)
        self._ch_failing = False
        self._producer = None
        self._producer_lock = threading.Lock()   # guards building and renewing _producer (:meth:`producer`)
        self.batch_log: list[dict[str, Any]] = []
        self.alerts_sent = 0
        #: alert id -> epoch ms of Kafka's acknowledgement, for alerts delivered but not yet in restock_alerts
        #: (kept across the retries of a micro-batch so a retry does not send them again; emptied by the insert,
        #: except of the alerts ClickHouse refused, which stay for the life of the process)
        self._sent_unrecorded: dict[str, int] = {}
        self.window_len_hours = interval_hours(settings.stream_window, "STREAM_WINDOW")
        self._reorder_points: dict[str, int] | None = None
        self.topics = {settings.topic(EVENT_TYPES[et]): et for et in INPUT_EVENT_TYPES}
        self.dead_letter_topic = settings.topic(DEAD_LETTER)
        self._run_tags: dict[str, str] = {}
        self._query_ids: dict[str, str] = {}   # {query: StreamingQuery.id}, :meth:`query_id`
        #: per thread (each query's batches run in a thread of their own): rows of the running micro-batch set
        #: aside because ClickHouse refused them (:meth:`_insert_df`)
        self._tls = threading.local()

    # ----------------------------------------------------------------------------------- helpers --
    def _insert_df(self, table: str, df: pd.DataFrame) -> list[int]:
        """Insert ``df`` into ``<db>.<table>``; rows ClickHouse refuses for their values (:func:`is_row_error`) are
        found by :func:`insert_isolating_refused`, the others written, and the refused ones set aside
        (:meth:`_set_aside`: ``quarantine_events`` with ClickHouse's error; a refused ``quarantine_events`` row goes
        through :meth:`_insert_quarantine`'s fallbacks).

        Returns:
            the positions (0-based, ``df.iloc``) of the rows set aside, ascending; [] when all were written. Their
            count is added to the running micro-batch's ``rows_set_aside`` (a row of a table once per attempt).
        Raises:
            what is not about rows (outage, dropped table, bug).
        """
        if not len(df):
            return []
        if table == "quarantine_events":
            return self._insert_quarantine(df)
        refused = insert_isolating_refused(df, lambda part: self._insert_raw_df(table, part))
        if refused:
            self._set_aside(table, df, refused)
        return [pos for pos, _ in refused]

    def _insert_raw_df(self, table: str, df: pd.DataFrame) -> None:
        self._ch_request(lambda ch: ch.insert_df(f"{self.db}.{table}", df))

    def _ch_request(self, send):
        """``send(client)``: one ClickHouse request of the sinks (every insert and query goes through here), under
        the client lock, so the two queries' batches never use the client at once.

        Once the job is stopping (:attr:`stopping`) while ClickHouse fails (the latest request ended in an
        infrastructure error: refused, reset, left unanswered for STREAM_CLICKHOUSE_TIMEOUT_SECONDS), nothing more
        is sent: a batch that waited for the lock behind a request that timed out, or the progress poller's last
        write, would otherwise wait out one more timeout each (until the review of 2026-12-07: up to three in a row
        against a frozen endpoint, past the supervisor's 60 s). A stop while ClickHouse answers sends as usual (the batch
        finishes, the last progress counts are written).

        Returns:
            what ``send`` returns.
        Raises:
            NotSentStopping: stopping and ClickHouse failing; nothing was sent (the batch is re-run at the next
                start, its writes are idempotent).
            what ``send`` raises.
        """
        with self._ch_lock:
            self._refuse_when_stopping("ClickHouse request not sent")
            try:
                out = send(self.ch)
            except Exception as exc:
                self._ch_failing = is_infrastructure_error(exc)
                raise
            self._ch_failing = False
            return out

    def _refuse_when_stopping(self, what: str) -> None:
        """Raise :class:`NotSentStopping` (``what`` + why) when the job is stopping while ClickHouse fails (its
        latest request ended in an infrastructure error): the guard of :meth:`_ch_request` and
        :meth:`_reset_client`."""
        if self.stopping.is_set() and self._ch_failing:
            raise NotSentStopping(f"{what}: the streaming job is stopping and ClickHouse's last request failed")

    @property
    def refused_log(self) -> RepeatedLog:
        """The rows ClickHouse refused, logged bounded (:class:`core.logs.RepeatedLog`) for this thread's running
        micro-batch attempt (:meth:`_begin_attempt`): per table the first 5 rows set aside in full, then one line
        per :attr:`refused_log_interval_s` (10 s) with the count since the last, and one at the attempt's end
        (:meth:`_end_attempt`); a row is logged once its quarantine row is written, once per attempt per table and
        key, so each table's last line states the count the attempt adds to ``rows_set_aside``. Until the review of
        2026-12-07 one log lived for the stream: only its first 5 rows in full, a row counted before its
        quarantine insert (again when the batch was retried: 80 for 40 rows set aside) and twice when refused by
        both ``inventory_levels`` writes. Outside an attempt: a log of its own for the thread."""
        rl = self._refused_logs.get(threading.get_ident())
        if rl is None:
            rl = self._new_refused_log("rows refused by ClickHouse")
        return rl

    def _new_refused_log(self, what: str) -> RepeatedLog:
        rl = RepeatedLog(log, what, interval_s=self.refused_log_interval_s)
        with self._log_lock:
            self._refused_logs[threading.get_ident()] = rl
        return rl

    def _begin_attempt(self, batch_id: int | None = None) -> None:
        """Start counting the rows set aside by this thread's micro-batch attempt (a retried attempt counts again),
        with a new :attr:`refused_log` (the previous attempt's, if it failed, flushed first)."""
        self._end_attempt()
        self._tls.set_aside = 0
        self._tls.set_aside_keys = set()
        self._new_refused_log("rows refused by ClickHouse" if batch_id is None else
                              f"micro-batch {int(batch_id)}: rows refused by ClickHouse")

    def _end_attempt(self) -> None:
        """Write this thread's :attr:`refused_log` lines not written yet (one per table with its count)."""
        rl = self._refused_logs.get(threading.get_ident())
        if rl is not None:
            rl.flush()

    def _count_set_aside(self, n: int) -> None:
        """Add ``n`` rows to the attempt's ``rows_set_aside`` (refused sink rows: only those :meth:`_new_keys` found
        not counted yet in this attempt, ``inventory_levels`` being written twice per batch)."""
        self._tls.set_aside = getattr(self._tls, "set_aside", 0) + int(n)

    def _new_keys(self, keys: list[int]) -> set[int]:
        """Of ``keys`` (quarantine offsets), those not counted yet in this thread's attempt; marks them counted."""
        seen = getattr(self._tls, "set_aside_keys", None)
        if seen is None:
            seen = self._tls.set_aside_keys = set()
        new = set(keys) - seen
        seen.update(new)
        return new

    def _set_aside(self, table: str, df: pd.DataFrame, refused: list[tuple[int, BaseException]]) -> None:
        """Quarantine the rows of ``df`` ClickHouse refused for ``table`` (positions and errors from
        :func:`insert_isolating_refused`), logged bounded once their quarantine rows are written (:attr:`refused_log`:
        per attempt the first 5 per table in full, then counts): ``quarantine_events`` rows with ``event_type`` =
        the table, ``topic`` = ``refused:<table>``, ``partition`` = -1, ``offset`` = a 63-bit hash of (table, the
        row's natural key :data:`SINK_KEYS`), so the latest refusal of a row replaces the earlier ones (a re-run
        batch, a window re-emitted by later micro-batches in update mode: one quarantine row per table and key;
        ``quarantine_events`` is a ReplacingMergeTree(ingested_at) keyed by (topic, partition, offset, topic_id);
        ``topic_id`` '' here), ``batch_id``
        = the latest refusing batch, ``reason`` = ClickHouse's error, ``raw_payload`` = the row as JSON
        (:func:`row_payload`). Counted once per attempt per (table, key) in ``rows_set_aside``."""
        now = pd.Timestamp(time.time(), unit="s", tz="UTC").floor("ms")
        key = SINK_KEYS.get(table) or [c for c in df.columns if c not in ("version", "updated_at", "ingested_at")]
        rows, lines = [], []
        for pos, exc in refused:
            r = df.iloc[pos].to_dict()
            batch = int(r["batch_id"]) if "batch_id" in r and not pd.isna(r["batch_id"]) else -1
            reason = f"ClickHouse refused the {table} row: {error_text(exc)}"
            lines.append((batch, reason, row_payload({k: r.get(k) for k in key})))
            rows.append({"event_type": table, "topic": f"refused:{table}", "partition": -1,
                         "offset": refused_row_offset(table, [r.get(k) for k in key]),
                         "topic_id": "", "kafka_timestamp": pd.NaT, "reason": reason, "raw_payload": row_payload(r),
                         "batch_id": batch, "ingested_at": now})
        q = pd.DataFrame(rows)
        q["partition"] = q["partition"].astype("int32")
        q["kafka_timestamp"] = pd.to_datetime(q["kafka_timestamp"], utc=True)
        self._insert_quarantine(q, count=False)
        # set aside: counted and logged once per attempt per key (inventory_levels is written twice per batch)
        new = self._new_keys(q["offset"].tolist())
        self._count_set_aside(len(new))
        rl = self.refused_log
        for offset, (batch, reason, shown) in zip(q["offset"].tolist(), lines):
            if offset in new:
                new.discard(offset)
                rl.log(table, "micro-batch %d: %s; row set aside in quarantine_events (topic refused:%s): %s",
                       batch, reason, table, shown)

    def _insert_quarantine(self, q: pd.DataFrame, count: bool = True) -> list[int]:
        """Insert ``quarantine_events`` rows; a row ClickHouse refuses is inserted again with its payload JSON-escaped
        (ASCII) and cut to :data:`QUARANTINE_PAYLOAD_CHARS` characters, then without payload and with an escaped reason
        cut to :data:`QUARANTINE_REASON_CHARS`, each time the error added to the reason; refused all three times, the
        record goes to the dead-letter topic (:func:`core.kafka.dead_letter_record`, reason + the errors), awaited,
        error log; a record read from the dead-letter topic is not sent there again (it would come back): error log
        naming its topic, partition and offset, where it stays (these logs bounded as :meth:`_set_aside`'s). Returns the rows refused at the first insert (added
        to ``rows_set_aside`` when ``count``): their positions in ``q``, ascending. Never gives up bisecting for a
        refusal of every row (its rows have the fallbacks above)."""
        refused = insert_isolating_refused(q, lambda part: self._insert_raw_df("quarantine_events", part),
                                           all_refused_after=None)
        for pos, exc in refused:
            row = q.iloc[[pos]].copy()
            r = row.iloc[0]
            reason, payload, errors = str(r["reason"]), str(r["raw_payload"]), [error_text(exc, 500)]
            tries = [
                (json.dumps(payload)[:QUARANTINE_PAYLOAD_CHARS], "payload JSON-escaped (ASCII) and cut to "
                                                                 f"{QUARANTINE_PAYLOAD_CHARS} characters"),
                ("", "payload left out")]
            landed = False
            for new_payload, what in tries:
                note = f" [ClickHouse refused this quarantine row ({' / '.join(errors)[:1_500]}): {what}]"
                new_reason = (json.dumps(reason)[1:-1] if not new_payload else reason)
                row["raw_payload"] = new_payload
                row["reason"] = (new_reason[:QUARANTINE_REASON_CHARS] + note)[:2 * QUARANTINE_REASON_CHARS]
                try:
                    self._insert_raw_df("quarantine_events", row)
                except Exception as exc2:  # noqa: BLE001
                    if not is_row_error(exc2):
                        raise
                    errors.append(error_text(exc2, 500))
                    continue
                self.refused_log.log("quarantine_events", "quarantine row %s/%s/%s refused by ClickHouse (%s): "
                                     "inserted with the %s", r["topic"], r["partition"], r["offset"], errors[0], what)
                landed = True
                break
            if landed:
                continue
            where = f"{r['topic']} partition {r['partition']} offset {r['offset']}"
            if r["topic"] == self.dead_letter_topic:
                self.refused_log.log("quarantine_events, dead letter", "quarantine row of dead-letter record %s "
                                     "refused by ClickHouse 3 times (%s): not quarantined; the record stays in the "
                                     "dead-letter topic", where, " / ".join(errors))
                continue
            self._dead_letter(str(r["event_type"]), payload,
                              f"{reason} [not quarantined: ClickHouse refused the quarantine row: "
                              f"{' / '.join(errors)}; source {where}]")
            self.refused_log.log("quarantine_events, sent to the dead-letter topic", "quarantine row %s refused by "
                                 "ClickHouse 3 times (%s): sent to the dead-letter topic %s", where, " / ".join(errors),
                                 self.dead_letter_topic)
        if count:
            self._count_set_aside(len(refused))
        return [pos for pos, _ in refused]

    def _dead_letter(self, event_type: str, payload: str, reason: str) -> None:
        """Send one record to the dead-letter topic (:func:`core.kafka.dead_letter_record`) and await Kafka's
        acknowledgement (raises its error)."""
        from core.kafka import dead_letter_record

        self.producer().send(self.dead_letter_topic, key=None,
                             value=dead_letter_record(event_type, payload, reason)).get(timeout=30)

    def _query(self, sql: str, parameters: dict | None = None) -> pd.DataFrame:
        return self._ch_request(
            lambda ch: ch.query_arrow(sql.replace("{db}", self.db), parameters=parameters or {})).to_pandas()

    def _log_batch(self, query: str, batch_id: int, input_rows: int, output_rows: int, started: float,
                   phases: dict[str, float] | None = None, alerts_closed_until: int | None = None,
                   event_time_max: int | None = None) -> None:
        rec = {"query": query, "batch_id": int(batch_id), "query_id": self.query_id(query),
               "input_rows": int(input_rows),
               "output_rows": int(output_rows), "started_at": started, "committed_at": time.time(),
               "alerts_closed_until": alerts_closed_until, "event_time_max": event_time_max,
               "duplicates_dropped": 0, "records_expired": 0,
               "end_offsets": self.checkpoint_end_offsets(query, batch_id), "late_rows_dropped": 0,
               "rows_set_aside": getattr(self._tls, "set_aside", 0)}
        self._end_attempt()   # the batch's end: each table's refused rows not logged in full, with their count
        if rec["rows_set_aside"]:
            log.error("query %s micro-batch %d: %d row(s) refused by ClickHouse set aside (quarantine_events topic "
                      "refused:<table>, or the dead-letter topic); the rest of the batch is written", query, batch_id,
                      rec["rows_set_aside"])
        self._insert_df("stream_batches", self._batch_row(rec))
        rec["phases_s"] = {k: round(v, 3) for k, v in (phases or {}).items()}
        with self._log_lock:
            self.batch_log.append(rec)

    def checkpoint_end_offsets(self, query: str, batch_id: int) -> str:
        """The end offsets of micro-batch ``batch_id`` as ``stream_batches.end_offsets`` holds them (JSON
        ``{topic: {partition: next offset}}`` over all sources, keys sorted), read from the query's checkpoint entry
        ``offsets/<batch_id>``, which Spark writes before it runs the batch (the same offsets as the progress'
        ``endOffset``). So the batch's first ``stream_batches`` row already carries them, and
        :meth:`record_progress` re-inserts the row only when the progress adds counts. ``""`` when the checkpoint is
        not a local folder or the entry cannot be read (then :meth:`record_progress` writes them)."""
        from streaming.checkpoint import local_checkpoint, read_offsets

        cp = local_checkpoint(self.s.spark_checkpoint_dir, query)
        if cp is None:
            return ""
        try:
            _, sources = read_offsets(cp, int(batch_id))
        except (OSError, ValueError):
            return ""
        out: dict[str, dict[str, int]] = {}
        for src in sources:
            for t, parts in (src or {}).items():
                out.setdefault(t, {}).update({str(p): int(o) for p, o in parts.items()})
        return json.dumps(out, sort_keys=True) if out else ""

    @staticmethod
    def _batch_row(rec: dict[str, Any]) -> pd.DataFrame:
        """One ``stream_batches`` row of a batch-log record; its columns are the record's fields it reads (named
        alike: :meth:`_keep_for_next_start` keeps those)."""
        def ts(ms):
            return pd.Series([None if ms is None else pd.Timestamp(ms, unit="ms", tz="UTC")],
                             dtype="datetime64[ms, UTC]")[0]

        return pd.DataFrame([{
            "query": rec["query"], "batch_id": rec["batch_id"], "query_id": rec.get("query_id") or "",
            "input_rows": rec["input_rows"],
            "output_rows": rec["output_rows"], "started_at": pd.Timestamp(rec["started_at"], unit="s", tz="UTC"),
            "committed_at": pd.Timestamp(rec["committed_at"], unit="s", tz="UTC"),
            "duplicates_dropped": int(rec.get("duplicates_dropped") or 0),
            "records_expired": int(rec.get("records_expired") or 0),
            "late_rows_dropped": int(rec.get("late_rows_dropped") or 0),
            "rows_set_aside": int(rec.get("rows_set_aside") or 0),
            "alerts_closed_until": ts(rec.get("alerts_closed_until")),
            "event_time_max": ts(rec.get("event_time_max")), "end_offsets": rec.get("end_offsets") or ""}])

    def record_progress(self, query: str, batch_id: int, duplicates: int, expired: int = 0,
                        end_offsets: str | None = None, late: int = 0) -> None:
        """Record what the query progress of a committed micro-batch tells: the event ids dropped as duplicates
        (``numDroppedDuplicateRows``) and the Kafka records its offset range covered but the source never read
        (``expired``: deleted by retention first, :func:`streaming.job.skipped_records`). Logged (a warning; an
        error for expired records, which are lost to the platform), kept in :attr:`batch_log` and written to
        ``stream_batches`` (the batch's row is re-inserted with the counts, same version, so the later row wins;
        only when the progress adds something: a count, or end offsets the first row lacked, e.g. a checkpoint that
        is not a local folder, :meth:`checkpoint_end_offsets`).
        ``end_offsets``: the batch's end offsets as JSON ({topic: {partition: next offset}}, all sources), kept in
        ``stream_batches.end_offsets`` so a query whose checkpoint is lost resumes there
        (:meth:`streaming.job.StreamingJob.lost_checkpoint_offsets`). ``late``: events the windows query dropped
        as late (``numRowsDroppedByWatermark``), logged as a warning and kept in ``stream_batches.late_rows_dropped``."""
        with self._log_lock:
            rec = next((r for r in reversed(self.batch_log)
                        if r["query"] == query and r["batch_id"] == int(batch_id)), None)
            offsets_known = rec is not None and rec["end_offsets"] == (end_offsets or "")
            if rec is not None:
                rec["duplicates_dropped"], rec["records_expired"] = int(duplicates), int(expired)
                rec["end_offsets"] = end_offsets or ""
                rec["late_rows_dropped"] = int(late)
        if duplicates:
            log.warning("query %s micro-batch %d: %d duplicate event id(s) dropped (seen again within "
                        "STREAM_WATERMARK=%s)", query, batch_id, duplicates, self.s.stream_watermark)
        if expired:
            log.error("query %s micro-batch %d: %d Kafka record(s) expired before they were read (topic retention "
                      "shorter than the stream's lag): lost, counted in stream_batches.records_expired",
                      query, batch_id, expired)
        if late:
            log.warning("query %s micro-batch %d: %d event(s) at or behind the watermark (largest event time seen - "
                        "STREAM_WATERMARK=%s) dropped from the windows, kept in the lake; many of them point to a "
                        "producer clock running ahead (stream_batches.event_time_max later than now)",
                        query, batch_id, late, self.s.stream_watermark)
        if rec is not None and (duplicates or expired or late or not offsets_known):
            try:
                self.retrying(f"{query} micro-batch {batch_id} progress counts",
                              self._insert_df, "stream_batches", self._batch_row(rec))
            except Exception:
                self._keep_for_next_start(query, rec)
                raise

    def _keep_for_next_start(self, query: str, rec: dict[str, Any]) -> None:
        """Keep the ``stream_batches`` row ``rec`` that :meth:`record_progress` could not write (a stop while
        ClickHouse fails: :class:`NotSentStopping`; an outage longer than STREAM_SINK_RETRY_SECONDS) in the query's
        checkpoint folder (:func:`streaming.checkpoint.keep_pending_batch_row`), so the next start writes it
        (:meth:`write_pending_rows`). The batch is committed, so nothing re-runs it, and its counts come from Spark's
        progress, held in memory only: until 2026-12-07 they were lost to ``stream_batches`` (log only). A checkpoint
        that is not a local folder keeps nothing (error log)."""
        from streaming.checkpoint import keep_pending_batch_row, local_checkpoint

        cp = local_checkpoint(self.s.spark_checkpoint_dir, query)
        where = "not kept: the checkpoint is not a local folder; the counts are in this log only"
        if cp is not None:
            try:
                keep_pending_batch_row(cp, {k: rec.get(k) for k in self._batch_row(rec).columns})   # the fields it reads
                where = f"kept in {cp}, written to stream_batches at the next start"
            except OSError as exc:
                where = f"not kept ({exc}); the counts are in this log only"
        log.error("query %s micro-batch %s: its stream_batches row with the progress counts (duplicates %s, expired "
                  "%s, late %s) could not be written: %s", query, rec["batch_id"], rec.get("duplicates_dropped"),
                  rec.get("records_expired"), rec.get("late_rows_dropped"), where)

    def write_pending_rows(self, query: str) -> int:
        """Write the ``stream_batches`` rows an earlier run of ``query`` kept for the next start
        (:meth:`_keep_for_next_start`) and forget them; called by :meth:`streaming.job.StreamingJob.start` before
        the queries start. Idempotent: each row carries its batch's key and version (``committed_at``), so a row
        written twice (a crash before the file was cleared) is one row to every ``FINAL`` read: no count doubles.
        Returns the rows written (0: none kept, or a checkpoint that is not a local folder). Never raises:
        bookkeeping never stops the stream. A failed write is retried for at most
        :data:`PENDING_ROWS_WRITE_SECONDS` (30 s; STREAM_SINK_RETRY_SECONDS, 3,600 s, until the review of
        2026-12-07), then logged, the rows kept for the next start; a pending file that cannot be updated afterwards
        (OSError) is logged and its rows written again by the next start (idempotent; until that review the
        OSError failed the start)."""
        from streaming.checkpoint import forget_pending_batch_rows, local_checkpoint, pending_batch_rows

        cp = local_checkpoint(self.s.spark_checkpoint_dir, query)
        rows = pending_batch_rows(cp) if cp is not None else {}
        if not rows:
            return 0
        try:
            self.retrying(f"{query}: stream_batches rows kept by the last stop", self._insert_df, "stream_batches",
                          pd.concat([self._batch_row(r) for r in rows.values()], ignore_index=True),
                          max_seconds=PENDING_ROWS_WRITE_SECONDS)
        except Exception as exc:  # noqa: BLE001  kept for the next start
            log.error("query %s: the %d stream_batches row(s) kept by the last stop could not be written (%s); kept "
                      "for the next start", query, len(rows), exc)
            return 0
        try:
            forget_pending_batch_rows(cp, rows)
        except OSError as exc:
            log.error("query %s: the %d stream_batches row(s) kept by the last stop were written but %s could not be "
                      "updated (%s): the next start writes them again (same key and version: no count doubles)",
                      query, len(rows), cp, exc)
        log.info("query %s: wrote the stream_batches rows of micro-batch(es) %s with the progress counts the last "
                 "stop could not write", query, ", ".join(sorted(rows, key=int)))
        return len(rows)

    # --------------------------------------------------------------------------------- retries --
    def _reset_client(self) -> None:
        """A new ClickHouse client (and connection pool) before a retry, so no connection the outage broke is
        reused; a client handed to the constructor is kept. Not opened once the job is stopping while ClickHouse
        fails (raises :class:`NotSentStopping`, as :meth:`_ch_request`); a stop that lands while the client is being
        opened waits for its requests (each up to STREAM_CLICKHOUSE_TIMEOUT_SECONDS)."""
        if not self._own_client:
            return
        self._refuse_when_stopping("no new ClickHouse client opened")   # opening a client sends requests
        from core.clickhouse import new_client

        try:
            fresh = new_client(self.s, timeout=self.s.stream_clickhouse_timeout_seconds)
        except Exception as exc:
            self._ch_failing = self._ch_failing or is_infrastructure_error(exc)
            raise
        with self._ch_lock:
            self.ch = fresh

    def retrying(self, what: str, fn, *args, max_seconds: float | None = None, **kwargs):
        """Call ``fn(*args, **kwargs)``; on an infrastructure error (:func:`is_infrastructure_error`: ClickHouse,
        lake or Kafka unreachable) wait with exponential backoff (0.5 s doubling, at most
        STREAM_SINK_RETRY_MAX_WAIT_S) and call it again, logging what it waits for, for up to
        STREAM_SINK_RETRY_SECONDS; then the error propagates (the query fails; a restart resumes from the
        checkpoint, nothing is lost). Every write of a micro-batch is idempotent, so a repeat writes nothing twice.
        Other errors propagate at once: a missing table or column, bugs. Rows ClickHouse refuses for their values
        never get here: :meth:`_insert_df` sets them aside and writes the rest. The policy is
        :func:`retrying_call`'s; before each repeat the ClickHouse client is replaced (:meth:`_reset_client`, which
        raises, and is retried, while ClickHouse is still unreachable) and each wait counts in :attr:`retries`. Once
        :attr:`stopping` is set (the job stops) a wait ends and the last error propagates at once. ``max_seconds``:
        a shorter bound for this call (:func:`retrying_call`)."""
        def count() -> None:
            self.retries += 1

        return retrying_call(self.s, what, fn, args, kwargs, before_retry=lambda: self._reset_client(), on_wait=count,
                             stop_event=self.stopping, max_seconds=max_seconds)

    def run_tag(self, query: str) -> str:
        """The suffix of the lake file names of ``query``'s micro-batches (``batch-<id><tag>.parquet``,
        ``alerts-batch-<id><tag>.parquet``): ``-<first 8 hex digits of the query id>`` (Spark's id of the query, in
        ``<SPARK_CHECKPOINT_DIR>/<query>/metadata``, written before the first batch) when the checkpoint's naming
        is tagged, ``""`` when it is untagged (:func:`streaming.checkpoint.lake_file_naming`: kept in the
        checkpoint's ``lake-file-tag``; untagged for a checkpoint the code before 2026-12-06 made, whose
        interrupted batch must rewrite its own ``batch-<id>.parquet``). Tagged, a re-run batch rewrites its own
        files while a query on a new checkpoint (the old one lost), whose batch ids start at 0 again, cannot
        overwrite the old run's files of the same ids. ``""`` also when the checkpoint has no metadata file here (a
        checkpoint that is not a local folder; sinks driven directly); then nothing is written to the checkpoint.

        Raises:
            OSError: the checkpoint's naming file cannot be written (first use).
        """
        from streaming.checkpoint import UNTAGGED, lake_file_naming, local_checkpoint

        cp = local_checkpoint(self.s.spark_checkpoint_dir, query)
        if cp is None:
            # not a local folder: no naming file to keep here (the query id :meth:`remember_query_id` may know is for
            # stream_batches only; before that hand-over such a checkpoint's files were untagged, and must stay so)
            return ""
        tag = self._run_tags.get(query)
        if tag is None:
            qid = self.query_id(query)
            tag = f"-{qid.replace('-', '')[:8]}" if qid else ""
            if tag:
                if lake_file_naming(cp) == UNTAGGED:
                    tag = ""
                self._run_tags[query] = tag
        return tag

    def query_id(self, query: str) -> str:
        """Spark's persistent id of ``query``'s checkpoint (``StreamingQuery.id``, a UUID text, read from
        ``<SPARK_CHECKPOINT_DIR>/<query>/metadata``, which Spark writes before the first micro-batch): the same
        across restarts from that checkpoint, new for a new checkpoint (not ``runId``, new at every restart).
        Kept in ``stream_batches.query_id`` (migration 081) so a lost checkpoint's new run, whose batch ids restart
        at 0, adds rows instead of replacing the old run's; it also tags the lake file names (:meth:`run_tag`).
        ``""`` when the checkpoint is not a local folder or has no readable metadata (sinks driven directly);
        cached once found."""
        from streaming.checkpoint import local_checkpoint

        ids = self._query_ids
        if query not in ids:
            cp = local_checkpoint(self.s.spark_checkpoint_dir, query)
            try:
                qid = "" if cp is None else str(json.loads((cp / "metadata").read_text())["id"])
            except (OSError, ValueError, KeyError, TypeError):
                qid = ""
            if not qid:
                return ""
            ids[query] = qid
        return ids[query]

    def remember_query_id(self, query: str, qid: str) -> None:
        """Keep ``qid`` (the running ``StreamingQuery.id`` of ``query``) as its :meth:`query_id` unless one is known
        already: the id of a checkpoint without a readable local metadata file."""
        if qid:
            self._query_ids.setdefault(query, qid)

    def topic_ids(self, query: str = "raw") -> dict[str, str]:
        """{topic: Kafka topic id} of ``query``'s topics as its micro-batch's topic check stored them before it read
        (``<SPARK_CHECKPOINT_DIR>/<query>/topic-ids.json``, :meth:`streaming.job.StreamingJob.check_topics`): the
        incarnation of each topic the running batch reads, kept in ``quarantine_events.topic_id`` (migration 082) so
        a record of a re-created topic does not replace the old topic's record at the same partition and offset.
        {} for a checkpoint that is not a local folder or without the file (sinks driven directly)."""
        from streaming.checkpoint import local_checkpoint, stored_topic_ids

        cp = local_checkpoint(self.s.spark_checkpoint_dir, query)
        return {} if cp is None else stored_topic_ids(cp)

    def producer(self):
        """Lazily created producer for restock alerts (:func:`core.kafka.make_producer`), rebuilt when it is in a
        fatal state (:func:`core.kafka.renew_if_fatal`: it would fail every later alert of the stream's life)."""
        from core.kafka import make_producer, renew_if_fatal

        def make():
            return make_producer(self.s, client_id="retail-restock-alerts")

        with self._producer_lock:   # both queries' threads send (alerts, dead letters): one producer, none leaked
            self._producer = make() if self._producer is None else renew_if_fatal(self._producer, make)
            return self._producer

    def _await_acknowledgements(self, prod, futures: list, what: str) -> None:
        """Wait until Kafka has answered every future of ``futures`` (acknowledged or failed; the producer's
        ``delivery_timeout_ms``, 2 min, bounds it while the broker is up but slow or down, and also while a frozen
        broker leaves the producer without a producer id after an expiry: after each poll that timed out a producer
        without an id for longer than its ``delivery_timeout_ms`` is failed and aborted once
        (:func:`core.kafka.fail_if_producer_id_overdue`, :func:`core.kafka.abort_producer`: the futures fail, the
        micro-batch fails uncommitted and is re-run, :meth:`producer` builds a new one; since the second review of
        2026-12-07, before which such a wait lasted until the broker answered or the job stopped),
        checking :attr:`stopping`
        every :data:`ACK_POLL_SECONDS`. Once the job stops it waits at most :data:`STOP_ACK_WAIT_SECONDS` (10 s) more,
        then returns with the futures still unanswered (their ``get(timeout=0)`` raises ``KafkaTimeoutError``, an
        infrastructure error), so the caller records none of them and its micro-batch fails uncommitted, re-run
        (alerts sent again, same ids) at the next start: only with Kafka down or frozen. Since the review of
        2026-12-07 a stop with Kafka healthy lets the acknowledgements come (milliseconds): before, it gave up at the
        first check, right after the send, and a routine SIGTERM re-sent the batch's alerts at the next start.
        Until 2026-12-07 an unbounded ``flush()`` held a stop while Kafka was down for up to 2 min, past the
        supervisor's ``stopwaitsecs`` (60 s): SIGKILL. ``what`` names the records in the warning logged at a stop."""
        from kafka.errors import KafkaTimeoutError

        from core.kafka import abort_producer, fail_if_producer_id_overdue

        aborted = None   # the producer aborted here, once
        stop_seen: float | None = None   # monotonic s when the stop was first seen here
        while not all(f.is_done for f in futures):
            if self.stopping.is_set():
                if stop_seen is None:
                    stop_seen = time.monotonic()
                elif time.monotonic() - stop_seen >= STOP_ACK_WAIT_SECONDS:
                    log.warning("%s: %d of %d not acknowledged by Kafka %.0f s after the job began to stop: not "
                                "recorded, not committed; sent again when the micro-batch is re-run at the next start",
                                what, sum(not f.is_done for f in futures), len(futures), STOP_ACK_WAIT_SECONDS)
                    return
            try:
                prod.flush(timeout=ACK_POLL_SECONDS)
            except KafkaTimeoutError:
                if prod is not aborted and fail_if_producer_id_overdue(prod):   # no producer id past its bound
                    aborted = prod
                    abort_producer(prod, 0)   # its records fail (the futures: done); the next producer() is new

    def close(self, timeout: float = CLOSE_FLUSH_SECONDS) -> None:
        """Close the alert producer within about ``timeout`` seconds (at most ~twice that: a flush, then the sender's
        join), whatever Kafka does (:func:`core.kafka.abort_producer`: a bounded flush, then records still buffered
        are failed). Nothing the
        stream recorded is lost: a micro-batch records and commits only alerts Kafka acknowledged
        (:meth:`_await_acknowledgements`) and awaits its dead letters, so a record still buffered belongs to a batch
        that failed uncommitted and is re-run. Until 2026-12-07 an unbounded ``flush()`` (up to
        ``delivery_timeout_ms``, 2 min, while Kafka was down) held :meth:`streaming.job.StreamingJob.stop`."""
        from core.kafka import abort_producer

        with self._log_lock:
            refused_logs = list(self._refused_logs.values())
        for rl in refused_logs:   # an attempt the stop cut short: its refused rows not logged yet, with their count
            rl.flush()
        if self._producer is not None:
            abort_producer(self._producer, timeout)
            self._producer = None

    def reorder_points(self) -> dict[str, int]:
        """product_id -> reorder point from the reference catalogue in the lake
        (``raw-data/reference/products/products.parquet``), {} when absent; read once."""
        if self._reorder_points is None:
            try:
                t = self.lake.read_table(self.s.lake_raw_bucket, "reference", "products",
                                         columns=["product_id", "reorder_point"])
            except Exception as exc:  # an unreadable catalogue must not stop the stream
                log.warning("reference products unreadable: %s", exc)
                t = None
            self._reorder_points = ({} if t is None else
                                    {p: int(r) for p, r in zip(t["product_id"].to_pylist(), t["reorder_point"].to_pylist())
                                     if r is not None})
        return self._reorder_points

    # --------------------------------------------------------------------------------- raw query --
    def validated(self, kafka_df: DataFrame, event_type: str, topic: str) -> DataFrame:
        """:func:`streaming.transforms.validate_events` of one topic's rows with the configured limits."""
        parsed = TR.parse_events(kafka_df.filter(F.col("topic") == topic), event_type)
        return TR.validate_events(parsed, event_type, max_age_days=self.s.stream_max_event_age_days,
                                  max_future_minutes=self.s.stream_max_future_minutes)

    def raw_frame(self, kafka: DataFrame | Mapping[str, DataFrame]) -> DataFrame:
        """The raw query's frame: every input topic parsed and validated, unioned by name (fields of the same name
        have the same type in every contract; a type's missing fields are NULL). Built once on the streaming
        frame, so a micro-batch costs one Spark job and no per-batch plan building.

        Args:
            kafka: {topic: :func:`streaming.transforms.kafka_frame` of that topic} for every input topic and the
                dead-letter topic (the job's one source per topic), or one frame holding all of them (each branch
                then filters its topic).

        Valid events are deduplicated by (topic, event id) within STREAM_WATERMARK of *arrival* (the processing
        time, :func:`processing_time`, as the watermark column: a processing-time watermark never makes a row
        late, so late events still reach the lake while a copy re-sent within the watermark is dropped). Invalid
        records are never deduplicated (each offset is quarantined): they pass the same deduplication under a key
        of their own (``NUL`` + partition:offset:Kafka timestamp in ms, which no valid id can equal: ids with control
        characters are invalid; the timestamp tells a re-created topic's record at the same offset from the old
        topic's), so the frame has no valid/invalid split and each source is scanned once per micro-batch.

        Returns:
            ``KAFKA_COLUMNS`` + the union of the contract fields + ``invalid_reason`` + ``event_key`` (the event id)
            + ``dead_letter_type``: the records of the producers' dead-letter topic come along as rejected rows
            (:func:`streaming.transforms.dead_letter_frame`), so ``quarantine_events`` counts them too.
        """
        frame = (lambda t: kafka[t]) if isinstance(kafka, Mapping) else (lambda t: kafka)
        union = TR.dead_letter_frame(frame(self.dead_letter_topic), self.dead_letter_topic)
        for topic, et in self.topics.items():
            union = union.unionByName(
                self.validated(frame(topic), et, topic)
                .select(*TR.KAFKA_COLUMNS, *S.field_names(et), TR.REASON, F.col(TR.EVENT_ID[et]).alias("event_key")),
                allowMissingColumns=True)
        # + the Kafka timestamp (ms): a topic deleted and re-created within STREAM_WATERMARK holds other records at
        # the same partitions and offsets; keyed by partition:offset alone, the new topic's invalid record was
        # dropped as a "duplicate" of the old topic's and never quarantined (until 2026-12-06). The same record read
        # again (a re-run, a rewind) keeps its timestamp, so it is still one record
        own_key = F.format_string("\u0000%d:%d:%d", F.col("partition"), F.col("offset"),
                                  F.coalesce(F.unix_millis(F.col("kafka_timestamp")), F.lit(-1)))
        return (union.withColumn("_dedup_key", F.when(F.col(TR.REASON).isNull(), F.col("event_key")).otherwise(own_key))
                .withColumn("_arrived", processing_time())
                .withWatermark("_arrived", self.s.stream_watermark)
                .dropDuplicatesWithinWatermark(["topic", "_dedup_key"]).drop("_arrived", "_dedup_key"))

    def raw_batch(self, df: DataFrame, batch_id: int) -> None:
        """foreachBatch of the raw query: lake Parquet for valid events, ``quarantine_events`` for invalid ones.
        The writes are retried on infrastructure errors (:meth:`retrying`); data never raises here (a row ClickHouse
        refuses is set aside, :meth:`_insert_df`).

        Args:
            df: micro-batch of :meth:`raw_frame` (validated events of every input topic).
            batch_id: Spark's micro-batch id (names the lake files).
        """
        started = time.time()
        whole = df.toArrow()
        spark_s = time.time() - started
        self.retrying(f"raw micro-batch {batch_id}", self._raw_writes, whole, batch_id, started, spark_s)

    def _raw_writes(self, whole: pa.Table, batch_id: int, started: float, spark_s: float) -> None:
        self._begin_attempt(batch_id)
        now_ms = int(started * 1000)
        n_in = n_valid = 0
        quarantine: list[pd.DataFrame] = []
        ph = {"spark": spark_s, "lake": 0.0, "clickhouse": 0.0}
        for topic, et in self.topics.items():
            tbl = whole.filter(pc.equal(whole["topic"], topic))
            if tbl.num_rows == 0:
                continue
            n_in += tbl.num_rows
            bad = pc.is_valid(tbl[TR.REASON])
            valid = tbl.filter(pc.invert(bad))
            invalid = tbl.filter(bad)
            n_valid += valid.num_rows
            t = time.time()
            self._write_raw(et, valid, batch_id, now_ms)
            ph["lake"] += time.time() - t
            if invalid.num_rows:
                q = invalid.select(["topic", "partition", "offset", "kafka_timestamp", TR.REASON, "value"]).to_pandas()
                q = q.rename(columns={"value": "raw_payload", TR.REASON: "reason"})
                kafka_ms = [None if pd.isna(t) else int(pd.Timestamp(t).timestamp() * 1000)
                            for t in q["kafka_timestamp"]]
                q["reason"] = TR.explain_parse_failures(et, q["raw_payload"], q["reason"], kafka_ms,
                                                        max_future_minutes=self.s.stream_max_future_minutes)
                q["raw_payload"] = q["raw_payload"].fillna("")
                q.insert(0, "event_type", et)
                q["batch_id"] = int(batch_id)
                q["ingested_at"] = pd.Timestamp(now_ms, unit="ms", tz="UTC")
                q["partition"] = q["partition"].astype("int32")
                quarantine.append(q)
        dead = whole.filter(pc.equal(whole["topic"], self.dead_letter_topic))
        if dead.num_rows:   # producers' dead-letter records: quarantined with the producer's reason and type
            n_in += dead.num_rows
            q = dead.select(["dead_letter_type", "topic", "partition", "offset", "kafka_timestamp", TR.REASON,
                             "value"]).to_pandas()
            q = q.rename(columns={"dead_letter_type": "event_type", "value": "raw_payload", TR.REASON: "reason"})
            q["raw_payload"] = q["raw_payload"].fillna("")
            q["batch_id"] = int(batch_id)
            q["ingested_at"] = pd.Timestamp(now_ms, unit="ms", tz="UTC")
            q["partition"] = q["partition"].astype("int32")
            quarantine.append(q)
        t = time.time()
        if quarantine:
            q = pd.concat(quarantine, ignore_index=True)
            q["topic_id"] = q["topic"].map(self.topic_ids("raw")).fillna("").astype(str)   # 082: the incarnation
            self._insert_df("quarantine_events", q)
        ph["clickhouse"] += time.time() - t
        self._log_batch("raw", batch_id, n_in, n_valid, started, ph)

    def _write_raw(self, event_type: str, valid: pa.Table, batch_id: int, now_ms: int) -> None:
        """Write valid events of one type, one file per event day: ``batch-<batchId><run_tag>.parquet``."""
        if valid.num_rows == 0:
            return
        schema = lake_arrow_schema(event_type)
        cols = {}
        for f in schema:
            if f.name == "ingested_at":
                cols[f.name] = pa.array([now_ms] * valid.num_rows, pa.int64()).cast(f.type)
            elif f.name == "kafka_partition":
                cols[f.name] = valid["partition"].cast(pa.int32())
            elif f.name == "kafka_offset":
                cols[f.name] = valid["offset"].cast(pa.int64())
            elif pa.types.is_timestamp(f.type):
                cols[f.name] = valid[f.name].cast(pa.int64()).cast(f.type)
            else:
                cols[f.name] = valid[f.name].cast(f.type)
        out = pa.table(cols, schema=schema)
        day = pc.strftime(out["timestamp"], format="%Y-%m-%d")
        for d in pc.unique(day).to_pylist():
            part = out.filter(pc.equal(day, d)).sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
            y, m, dd = d.split("-")
            self.lake.write_table(part, self.s.lake_raw_bucket, event_type, f"year={y}", f"month={m}", f"day={dd}",
                                  f"batch-{batch_id}{self.run_tag('raw')}.parquet")

    # ----------------------------------------------------------------------------- windows query --
    def windows_batch(self, df: DataFrame, batch_id: int) -> None:
        """foreachBatch of the windows query (update mode): upsert enriched windows, store windows, alerts and
        inventory levels. ``df``: :func:`streaming.transforms.window_metrics` rows updated by the batch. The
        writes are retried on infrastructure errors (:meth:`retrying`); rows ClickHouse refuses for their values are
        set aside in ``quarantine_events`` and the rest written (:meth:`_insert_df`)."""
        started = time.time()
        batch = df.toArrow().to_pandas()
        spark_s = time.time() - started
        self.retrying(f"windows micro-batch {batch_id}", self._windows_writes, batch, batch_id, started, spark_s)

    def _windows_writes(self, batch: pd.DataFrame, batch_id: int, started: float, spark_s: float) -> None:
        self._begin_attempt(batch_id)
        ph = {"spark": spark_s}
        now_ms = int(started * 1000)
        version = now_ms
        if batch.empty:
            t = time.time()
            until, seen = self._closed_window_alerts(batch_id, now_ms)
            ph["alerts"] = time.time() - t
            self._log_batch("windows", batch_id, 0, 0, started, ph, alerts_closed_until=until, event_time_max=seen)
            return
        batch = batch.copy()
        n_input = len(batch)
        for c in _WINDOW_TIMES:
            batch[c] = pd.to_datetime(batch[c], utc=True)
        t = time.time()
        # a stock update for a window before later stored ones (a late update within the watermark): those
        # windows carried the old stock, so they are evaluated again with the batch
        batch = pd.concat([batch, self._followers(batch)], ignore_index=True)
        stores = sorted(batch["store_id"].unique().tolist())
        lo = batch["window_start"].min() - pd.Timedelta(hours=ANOMALY_HORIZON_HOURS)
        hi = batch["window_start"].max() + pd.Timedelta(hours=ANOMALY_HORIZON_HOURS)
        history = self._sku_history(stores, lo, hi, pairs=batch[["store_id", "product_id"]])
        # a batch window before stored ones of its SKU changes their anomaly baseline and their trailing sales
        # rate (STREAM_VELOCITY_HOURS <= the 24 h look-back), so their cover and risk: evaluated again too
        batch = pd.concat([batch, self._anomaly_followers(batch, history)], ignore_index=True)
        ph["history"] = time.time() - t
        t = time.time()
        enriched = TR.enrich_windows(batch, history, window_len_hours=self.window_len_hours,
                                     risk_high_hours=self.s.risk_high_hours,
                                     risk_medium_hours=self.s.risk_medium_hours,
                                     horizon_hours=ANOMALY_HORIZON_HOURS, reorder_points=self.reorder_points(),
                                     velocity_hours=self.s.stream_velocity_hours,
                                     lead_time_days=self.s.lead_time_days, pooled_bound=True)
        out = enriched[["window_start", "window_end", "store_id", "product_id", "units_sold", "units_returned",
                        "revenue", "transaction_count", "inventory_update_count", "window_stock",
                        "window_stock_time", "stock_level", "reorder_point", "sales_velocity", "hours_of_cover",
                        "stockout_risk", "anomaly_score", "last_event_time", "units_for_order",
                        "order_velocity"]].copy()
        out["window_stock"] = pd.array([None if pd.isna(x) else int(x) for x in out["window_stock"]], dtype="Int64")
        out["batch_id"] = int(batch_id)
        out["version"] = version
        out["updated_at"] = pd.Timestamp(now_ms, unit="ms", tz="UTC")
        ph["enrich"] = time.time() - t
        t = time.time()
        self._insert_df("sales_metrics_5m", out)
        ph["insert"] = time.time() - t
        t = time.time()
        self._store_windows(enriched, batch_id, version, now_ms)
        ph["store_windows"] = time.time() - t
        t = time.time()
        until, seen = self._closed_window_alerts(batch_id, now_ms)
        self._levels(enriched, batch_id, version, now_ms, lo)
        ph["alerts_levels"] = time.time() - t
        self._log_batch("windows", batch_id, n_input, len(out), started, ph, alerts_closed_until=until,
                        event_time_max=seen)

    #: the window_metrics columns a stored window is read back with (:meth:`_followers`)
    _WINDOW_COLUMNS = ["window_start", "window_end", "store_id", "product_id", "units_sold", "units_returned",
                       "revenue", "transaction_count", "inventory_update_count", "window_stock", "window_stock_time",
                       "last_event_time"]

    def _followers(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Stored windows whose carried stock the batch changes: for each store x SKU with a stock update in the
        batch, the stored windows without an update of their own, not in the batch themselves, whose latest
        earlier window with an update is one of the batch's (after a batch update, up to the next stored or batch
        window with its own update: also the windows between two updates of one batch). Read back as
        :func:`streaming.transforms.window_metrics` rows (own reorder_point None: they hold no update), so
        :func:`streaming.transforms.enrich_windows` carries the new stock and reorder point into them and into
        the batch's later windows, and their cover and risk follow; their upsert replaces the stored row (a higher
        version). Empty in the usual order (the batch holds each SKU's latest windows).

        Returns:
            DataFrame with the batch's columns (UTC timestamps), possibly empty.
        """
        keys = ["store_id", "product_id"]
        counted = batch.loc[batch["window_stock"].notna(), [*keys, "window_start"]].drop_duplicates()
        last = (counted.groupby(keys, as_index=False)["window_start"].min().rename(columns={"window_start": "_last"}))
        if last.empty:
            return batch.iloc[0:0]
        stores, products = sorted(last["store_id"].unique().tolist()), sorted(last["product_id"].unique().tolist())
        sql = (f"SELECT {', '.join(self._WINDOW_COLUMNS)} FROM {{db}}.sales_metrics_5m FINAL "
               "WHERE store_id IN %(stores)s AND product_id IN %(products)s AND window_start > %(lo)s")
        parts = [self._query(sql, {"stores": stores, "products": products[i:i + ALERT_ID_CHUNK],   # bounded IN
                                   "lo": last["_last"].min().to_pydatetime()})                     # lists
                 for i in range(0, len(products), ALERT_ID_CHUNK)]
        later = pd.concat([x for x in parts if len(x)], ignore_index=True) if any(len(x) for x in parts) else parts[0]
        if later.empty:
            return batch.iloc[0:0]
        for c in _WINDOW_TIMES:
            later[c] = pd.to_datetime(later[c], utc=True)
        later = later.merge(last, on=keys)
        later = later[later["window_start"] > later["_last"]].drop(columns="_last")
        later = self._not_in_batch(later, batch)
        # each stored window without its own update follows the latest earlier update: keep it when that is the
        # batch's (a stored window with its own update is not re-evaluated and ends the batch update's reach)
        updates = pd.concat([counted.assign(_batch=True),
                             later.loc[later["window_stock"].notna(), [*keys, "window_start"]].assign(_batch=False)],
                            ignore_index=True).sort_values("window_start", kind="mergesort")
        updates["window_start"] = updates["window_start"].astype("datetime64[ns, UTC]")
        later = later[later["window_stock"].isna()].sort_values("window_start", kind="mergesort")
        later["window_start"] = later["window_start"].astype("datetime64[ns, UTC]")
        later = pd.merge_asof(later, updates, on="window_start", by=keys, direction="backward",
                              allow_exact_matches=False)
        later = later[later["_batch"].eq(True)].drop(columns="_batch").copy()
        later["reorder_point"] = None
        if len(later):
            log.info("windows: %d stored window(s) after a late stock update evaluated again", len(later))
        return later[list(batch.columns)].astype(batch.dtypes.to_dict(), errors="ignore")

    @staticmethod
    def _not_in_batch(stored: pd.DataFrame, batch: pd.DataFrame) -> pd.DataFrame:
        """The stored window rows whose (store_id, product_id, window_start) the batch does not hold: a window
        the batch holds is the newer copy (update mode emits the window's whole state)."""
        on = ["store_id", "product_id", "window_start"]
        m = stored.merge(batch[on].drop_duplicates(), on=on, how="left", indicator=True)
        return m[m["_merge"] == "left_only"].drop(columns="_merge")

    def _anomaly_followers(self, batch: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
        """Stored windows whose anomaly score or trailing sales rate the batch changes: per store x SKU, the stored
        windows (in ``history``, not in the batch) within :data:`ANOMALY_HORIZON_HOURS` after the SKU's earliest
        batch window (their baseline, the previous windows with activity, and their trailing span of
        STREAM_VELOCITY_HOURS <= that hold a window the batch changed; so their velocity, cover and risk are
        recomputed too, and a closed window's stored rate, which the restock alerts use, is final). Read back as
        window_metrics rows: own reorder point only with a stock update of their own (the stored value), so
        :func:`streaming.transforms.enrich_windows` scores them again (stock and the rest are recomputed from the
        same inputs); their upsert replaces the stored row. Empty in the usual order (the batch holds each SKU's
        latest windows).

        Returns:
            DataFrame with the batch's columns, possibly empty.
        """
        keys = ["store_id", "product_id"]
        if history is None or history.empty:
            return batch.iloc[0:0]
        first = batch.groupby(keys, as_index=False)["window_start"].min().rename(columns={"window_start": "_first"})
        h = history[~history["_anchor"].astype(bool)].drop(columns="_anchor").merge(first, on=keys)   # no anchors
        h = h[(h["window_start"] > h["_first"])
              & (h["window_start"] <= h["_first"] + pd.Timedelta(hours=ANOMALY_HORIZON_HOURS))].drop(columns="_first")
        h = self._not_in_batch(h, batch).copy()
        if h.empty:
            return batch.iloc[0:0]
        for c in _WINDOW_TIMES:
            h[c] = pd.to_datetime(h[c], utc=True)
        h["reorder_point"] = h["reorder_point"].where(h["window_stock"].notna(), None)
        log.info("windows: %d stored window(s) after a late event scored again (anomaly, velocity, cover, risk)",
                 len(h))
        return h[list(batch.columns)].astype(batch.dtypes.to_dict(), errors="ignore")

    def _pair_chunks(self, pairs: pd.DataFrame) -> list[list[tuple[str, str]]]:
        """Distinct (store_id, product_id) tuples of ``pairs`` in bounded IN lists (:data:`ALERT_ID_CHUNK`)."""
        t = sorted(set(zip(pairs["store_id"], pairs["product_id"])))
        return [t[i:i + ALERT_ID_CHUNK] for i in range(0, len(t), ALERT_ID_CHUNK)]

    def _missing_anchors(self, sql: str, found: pd.DataFrame, needed: pd.DataFrame | None, p: dict) -> pd.DataFrame:
        """Rows of ``sql`` (which filters ``(store_id, product_id) IN %(pairs)s``) for the pairs of ``needed`` not
        in ``found``: the rare SKUs without an anchor in the bounded span, looked up by the sorting key."""
        if needed is None or needed.empty:
            return found
        have = set(zip(found["store_id"], found["product_id"])) if len(found) else set()
        miss = needed[[k not in have for k in zip(needed["store_id"], needed["product_id"])]]
        parts = [found] + [self._query(sql, {**p, "pairs": chunk}) for chunk in self._pair_chunks(miss)]
        parts = [x for x in parts if len(x)]
        return pd.concat(parts, ignore_index=True) if parts else found

    def _sku_history(self, stores: list[str], lo: pd.Timestamp, hi: pd.Timestamp,
                     pairs: pd.DataFrame | None = None) -> pd.DataFrame:
        """Stored windows of ``stores`` with lo <= window_start <= hi (every window_metrics column, for
        :meth:`_anomaly_followers`), plus per store x SKU an *anchor*: the latest window before lo (its carried
        stock_level / reorder_point; ``_anchor`` True), so stock carries forward from before the horizon.

        The anchor is searched in the :data:`ANCHOR_LOOKBACK_HOURS` (24 h) before lo; a pair of ``pairs`` (the
        batch's store x SKU, which need one) without a window there is looked up before that by its key."""
        p = {"stores": stores, "lo": lo.to_pydatetime(), "hi": hi.to_pydatetime(),
             "alo": (lo - pd.Timedelta(hours=ANCHOR_LOOKBACK_HOURS)).to_pydatetime()}
        recent = self._query(
            f"SELECT {', '.join(self._WINDOW_COLUMNS)}, reorder_point, units_for_order "
            "FROM {db}.sales_metrics_5m FINAL WHERE store_id IN %(stores)s AND window_start >= %(lo)s "
            "AND window_start <= %(hi)s", p)
        cols = "window_start, store_id, product_id, units_sold, stock_level AS window_stock, reorder_point"
        anchor = self._query(
            f"SELECT {cols} FROM {{db}}.sales_metrics_5m FINAL WHERE store_id IN %(stores)s "
            "AND window_start >= %(alo)s AND window_start < %(lo)s "
            "ORDER BY window_start DESC LIMIT 1 BY store_id, product_id", p)
        anchor = self._missing_anchors(
            f"SELECT {cols} FROM {{db}}.sales_metrics_5m FINAL WHERE (store_id, product_id) IN %(pairs)s "
            "AND window_start < %(alo)s ORDER BY window_start DESC LIMIT 1 BY store_id, product_id",
            anchor, pairs, p)
        anchor = self._retained_stock(anchor, pairs, lo)
        recent["_anchor"], anchor["_anchor"] = False, True
        h = pd.concat([x for x in (anchor, recent) if len(x)], ignore_index=True) if len(recent) or len(anchor) else recent
        if len(h):
            h["window_start"] = pd.to_datetime(h["window_start"], utc=True)
        return h

    def _level_stock(self, pairs: pd.DataFrame | None, before: pd.Timestamp) -> pd.DataFrame:
        """``inventory_levels`` counts (store_id, product_id, stock_level, stock_time, reorder_point; stock known) of
        the pairs: per pair the latest stored count earlier than ``before``, the row's own (``stock_level``) when it
        is, else its ``prior_stock_level`` (the latest count before the look-back of the micro-batch that last
        wrote the row, :meth:`_levels`): so a micro-batch re-run after its first run stored a newer count still
        finds the older one. The stock every later window carries, kept without TTL while the window tables forget
        a window CLICKHOUSE_STREAM_RETENTION_DAYS after its write. Pairs with neither are absent."""
        cols = ["store_id", "product_id", "stock_level", "stock_time", "reorder_point"]
        if pairs is None or pairs.empty:
            return pd.DataFrame(columns=cols)
        own = "(stock_level IS NOT NULL AND stock_time < %(before)s)"
        # aliases other than the column names: ClickHouse substitutes an alias wherever its name appears in the
        # SELECT, so `... AS stock_level` would change what the next expression's condition reads
        sql = (f"SELECT store_id, product_id, if({own}, stock_level, prior_stock_level) AS c_stock, "
               f"if({own}, stock_time, prior_stock_time) AS c_time, "
               f"if({own}, reorder_point, prior_reorder_point) AS c_rop FROM {{db}}.inventory_levels FINAL "
               f"WHERE (store_id, product_id) IN %(pairs)s AND ({own} OR (prior_stock_level IS NOT NULL "
               "AND prior_stock_time < %(before)s))")
        before = pd.Timestamp(before).to_pydatetime()
        parts = [self._query(sql, {"pairs": chunk, "before": before}) for chunk in self._pair_chunks(pairs)]
        parts = [x.rename(columns={"c_stock": "stock_level", "c_time": "stock_time", "c_rop": "reorder_point"})
                 for x in parts if len(x)]
        out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
        out["stock_time"] = pd.to_datetime(out["stock_time"], utc=True)
        return out

    def _retained_stock(self, anchor: pd.DataFrame, pairs: pd.DataFrame | None, lo: pd.Timestamp) -> pd.DataFrame:
        """The history's anchors completed from ``inventory_levels`` where the window tables lost the stock: a
        store x SKU of ``pairs`` without any earlier window (all older than the tables' TTL) gets an anchor row
        in the window of its latest count (0 units sold, that count's stock and reorder point), an anchor
        without a stock its latest count when that is older than the anchor's window end (the count's own
        window expired before it). Only counts before ``lo`` (the history's start) are used: the carried stock
        then, whatever a re-run batch wrote since. Returns ``anchor`` with those rows/values."""
        keys = ["store_id", "product_id"]
        if pairs is None or pairs.empty:
            return anchor
        known = anchor[anchor["window_stock"].notna()] if len(anchor) else anchor
        have_stock = set(zip(known["store_id"], known["product_id"])) if len(known) else set()
        need = pairs[keys].drop_duplicates()
        need = need[[k not in have_stock for k in zip(need["store_id"], need["product_id"])]]
        lv = self._level_stock(need, lo)
        if lv.empty:
            return anchor
        win = pd.Timedelta(hours=self.window_len_hours)
        lv["window_start"] = lv["stock_time"].dt.floor(win)
        found = {(r.store_id, r.product_id): r for r in lv.itertuples()}
        a = anchor.copy()
        if len(a):
            a["window_start"] = pd.to_datetime(a["window_start"], utc=True)
            for i, r in a.iterrows():
                f = found.pop((r["store_id"], r["product_id"]), None)
                if f is not None and pd.isna(r["window_stock"]) and f.stock_time < r["window_start"] + win:
                    a.at[i, "window_stock"] = int(f.stock_level)
                    if pd.isna(r["reorder_point"]) and not pd.isna(f.reorder_point):
                        a.at[i, "reorder_point"] = int(f.reorder_point)
        new = pd.DataFrame([{"window_start": f.window_start, "store_id": k[0], "product_id": k[1], "units_sold": 0,
                             "window_stock": int(f.stock_level),
                             "reorder_point": None if pd.isna(f.reorder_point) else int(f.reorder_point)}
                            for k, f in found.items()])
        if len(new):
            log.info("windows: %d store x SKU(s) without a stored earlier window carry the stock of inventory_levels",
                     len(new))
        return pd.concat([x for x in (a, new) if len(x)], ignore_index=True)

    def _store_windows(self, enriched: pd.DataFrame, batch_id: int, version: int, now_ms: int) -> None:
        """Recompute ``store_metrics_5m`` for the (store, window) pairs of ``enriched`` and for the stored store
        windows whose anomaly baseline or trailing sales rate they change: per store, the stored windows within
        :data:`ANOMALY_HORIZON_HOURS` (24 h, >= STREAM_VELOCITY_HOURS) after its earliest changed window (a late
        sale of one SKU changes the store's total of that window, and so the score and the velocity of the
        store's later windows, also where they hold only other SKUs). Each is rebuilt from its complete per-SKU
        rows in ``sales_metrics_5m`` (already upserted); the store's stored windows of the 24 h before, and its
        latest earlier one (searched in the :data:`ANCHOR_LOOKBACK_HOURS` before, then by key: it only tells that
        the store is older than the span), are the baseline and the trailing rate's history."""
        pairs = enriched[["store_id", "window_start"]].drop_duplicates()
        stores = sorted(pairs["store_id"].unique().tolist())
        first = pairs.groupby("store_id", as_index=False)["window_start"].min().rename(columns={"window_start": "_first"})
        horizon = pd.Timedelta(hours=ANOMALY_HORIZON_HOURS)
        later = self._query(
            "SELECT window_start, store_id FROM {db}.store_metrics_5m FINAL WHERE store_id IN %(stores)s "
            "AND window_start > %(lo)s AND window_start <= %(hi)s",
            {"stores": stores, "lo": first["_first"].min().to_pydatetime(),
             "hi": (first["_first"].max() + horizon).to_pydatetime()})
        if len(later):
            later["window_start"] = pd.to_datetime(later["window_start"], utc=True)
            later = later.merge(first, on="store_id")
            later = later[(later["window_start"] > later["_first"])
                          & (later["window_start"] <= later["_first"] + horizon)][["store_id", "window_start"]]
            n_pairs = len(pairs)
            pairs = pd.concat([pairs, later], ignore_index=True).drop_duplicates()
            if len(pairs) > n_pairs:
                log.info("windows: %d stored store window(s) after a changed one scored again", len(pairs) - n_pairs)
        p = {"stores": stores, "lo": pairs["window_start"].min().to_pydatetime(),
             "hi": pairs["window_start"].max().to_pydatetime(),
             "hlo": (pairs["window_start"].min() - horizon).to_pydatetime()}
        skus = self._query(
            "SELECT window_start, window_end, store_id, product_id, units_sold, units_returned, revenue, "
            "transaction_count, stockout_risk FROM {db}.sales_metrics_5m FINAL WHERE store_id IN %(stores)s "
            "AND window_start >= %(lo)s AND window_start <= %(hi)s", p)
        skus["window_start"] = pd.to_datetime(skus["window_start"], utc=True)
        skus = skus.merge(pairs, on=["store_id", "window_start"])
        hist = self._query(
            "SELECT window_start, store_id, units_sold FROM {db}.store_metrics_5m FINAL WHERE store_id IN %(stores)s "
            "AND window_start >= %(hlo)s AND window_start <= %(hi)s", p)
        # the latest store window before the loaded span: the store is older than it, so its rate's span is T
        p["alo"] = (pd.Timestamp(p["hlo"]) - pd.Timedelta(hours=ANCHOR_LOOKBACK_HOURS)).to_pydatetime()
        anchor_sql = ("SELECT window_start, store_id, units_sold FROM {db}.store_metrics_5m FINAL "
                      "WHERE store_id IN %(stores)s AND window_start < %(hlo)s AND ")
        anchor = self._query(anchor_sql + "window_start >= %(alo)s ORDER BY window_start DESC LIMIT 1 BY store_id", p)
        missing = sorted(set(stores) - set(anchor["store_id"].tolist() if len(anchor) else []))
        for i in range(0, len(missing), ALERT_ID_CHUNK):
            more = self._query(anchor_sql + "window_start < %(alo)s ORDER BY window_start DESC LIMIT 1 BY store_id",
                               {**p, "stores": missing[i:i + ALERT_ID_CHUNK]})
            anchor = pd.concat([x for x in (anchor, more) if len(x)], ignore_index=True) if len(more) else anchor
        hist = pd.concat([x for x in (anchor, hist) if len(x)], ignore_index=True) if len(anchor) else hist
        if len(hist):
            hist["window_start"] = pd.to_datetime(hist["window_start"], utc=True)
        st = TR.store_windows(skus, hist, window_len_hours=self.window_len_hours,
                              velocity_hours=self.s.stream_velocity_hours)
        st["batch_id"] = int(batch_id)
        st["version"] = version
        st["updated_at"] = pd.Timestamp(now_ms, unit="ms", tz="UTC")
        self._insert_df("store_metrics_5m", st)

    @staticmethod
    def _ms(ts) -> int | None:
        return None if ts is None or pd.isna(ts) else int(pd.Timestamp(ts).timestamp() * 1000)

    def _episode_state(self, keys_sql: str, p: dict) -> tuple[dict, dict]:
        """(state for :func:`streaming.transforms.restock_episodes`, stored inventory_levels rows) by key."""
        prior = self._query(f"SELECT * FROM {{db}}.inventory_levels FINAL WHERE {keys_sql}", p)
        state: dict[tuple[str, str], dict] = {}
        rows: dict[tuple[str, str], dict] = {}
        for r in prior.to_dict("records"):
            key = (r["store_id"], r["product_id"])
            rows[key] = r
            state[key] = {"in_episode": bool(r["in_episode"]), "episode_start": self._ms(r["episode_start"]),
                          "last_window_start": self._ms(r["last_window_start"])}
        return state, rows

    def _closed_window_alerts(self, batch_id: int, now_ms: int) -> tuple[int | None, int | None]:
        """Restock episodes over the windows *closed* since the previous micro-batch, so the alerts (ids,
        episodes, priorities) do not depend on micro-batch boundaries.

        A window is closed once no later micro-batch can change it: Spark drops an event as late by the
        *previous* micro-batch's watermark (``eventTimeWatermarkForLateEvents`` in Spark's IncrementalExecution,
        since Spark 3.4 with ``spark.sql.streaming.statefulOperator.allowMultiple``, the default), which is the
        latest event time counted up to the batch before this one less STREAM_WATERMARK. So the bound is the
        ``stream_batches.event_time_max`` recorded by the earlier batches (the latest ``last_event_time`` in
        ``sales_metrics_5m`` after each) less STREAM_WATERMARK: a window closes one micro-batch after its end
        falls behind the watermark. Each micro-batch evaluates the windows with ``previous bound < window_end <=
        bound`` (the previous bound is the latest ``stream_batches.alerts_closed_until`` of an earlier batch, so
        a re-run batch evaluates the same windows), with the stock carried forward from the latest earlier closed
        window, and updates the episode state in ``inventory_levels``.

        Returns:
            (the bound used, or the previous one: None before any; the latest event time counted now, to be
            recorded as this batch's ``event_time_max``), both epoch ms.
        """
        # the earlier batches of this checkpoint's run only (query_id, migration 081; '' = rows written before it):
        # a lost checkpoint's new run starts from batch 0 again, and the old run's rows, kept since 081, are not its
        # earlier batches (before 081 the new run's rows replaced them, with the same effect). The run's latest row
        # is also kept in stream_batches_latest (083, no TTL): a query idle longer than CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS
        # has no row left in stream_batches; both bounds only grow, so its latest row holds their maxima
        prev_df = self._query(
            "SELECT max(p) AS p, max(e) AS e FROM ("
            "SELECT alerts_closed_until AS p, event_time_max AS e FROM {db}.stream_batches FINAL "
            "WHERE query = 'windows' AND batch_id < %(b)s AND query_id IN (%(r)s, '') UNION ALL "
            "SELECT alerts_closed_until, event_time_max FROM {db}.stream_batches_latest FINAL "
            "WHERE query = 'windows' AND batch_id < %(b)s AND query_id IN (%(r)s, ''))",
            {"b": int(batch_id), "r": self.query_id("windows")})
        prev, earlier = (self._ms(prev_df[c].iloc[0]) if len(prev_df) else None for c in ("p", "e"))
        win_ms = round(self.window_len_hours * 3_600_000)
        # a window starting win_ms or more before the earlier batches' latest event time holds no later event:
        # only the windows after that bound can raise the maximum (the stored maximum is at least ``earlier``)
        m = self._query("SELECT max(last_event_time) AS m FROM {db}.sales_metrics_5m"
                        + ("" if earlier is None else " WHERE window_start > %(w)s"),
                        {} if earlier is None else {"w": _utc(earlier - win_ms)})
        seen = self._ms(m["m"].iloc[0]) if len(m) else None   # _ms: NULL -> None
        if earlier is None:
            return prev, seen
        seen = earlier if seen is None else max(seen, earlier)
        # rounded: 31 minutes is 0.51666... h, whose product with 3,600,000 truncates 1 ms short
        bound = earlier - round(interval_hours(self.s.stream_watermark, "STREAM_WATERMARK") * 3_600_000)
        if prev is not None and bound <= prev:
            return prev, seen
        lo_ms = prev if prev is not None else 0
        # window_start bounds too (window_end - window_start = STREAM_WINDOW): window_start is the partition and
        # sorting key's time, so parts and granules outside the span are skipped instead of read and merged
        p = {"lo": _utc(lo_ms), "hi": _utc(bound), "slo": _utc(max(lo_ms - win_ms, 0)),
             "alo": _utc(max(lo_ms - round(ANCHOR_LOOKBACK_HOURS * 3_600_000), 0))}
        closed = self._query(
            "SELECT window_start, window_end, store_id, product_id, units_sold, window_stock, reorder_point, "
            "sales_velocity, order_velocity FROM {db}.sales_metrics_5m FINAL WHERE window_end > %(lo)s AND window_end <= %(hi)s "
            "AND window_start >= %(slo)s AND window_start < %(hi)s", p)
        if closed.empty:
            return bound, seen
        for c in ("window_start", "window_end"):
            closed[c] = pd.to_datetime(closed[c], utc=True)
        stores = sorted(closed["store_id"].unique().tolist())
        p["stores"] = stores
        # the stock carried into the closed windows: the latest earlier closed window with a count, searched in
        # the ANCHOR_LOOKBACK_HOURS before lo first, then further back by key for the SKUs without one there
        anchor_sql = ("SELECT store_id, product_id, argMax(window_stock, window_start) AS stock "
                      "FROM {db}.sales_metrics_5m FINAL WHERE window_end <= %(lo)s AND window_stock IS NOT NULL AND ")
        anchors_df = self._missing_anchors(
            anchor_sql + "(store_id, product_id) IN %(pairs)s AND window_end <= %(alo)s GROUP BY store_id, product_id",
            self._query(anchor_sql + "store_id IN %(stores)s AND window_end > %(alo)s AND window_start >= %(aslo)s "
                        "GROUP BY store_id, product_id",
                        {**p, "aslo": _utc(max(self._ms(p["alo"]) - win_ms, 0))}),
            closed[["store_id", "product_id"]], p) if prev is not None else pd.DataFrame()
        anchors = {(r.store_id, r.product_id): int(r.stock) for r in anchors_df.itertuples()}
        if prev is not None:
            # a SKU whose counted window is older than the window tables' TTL: its latest count in inventory_levels
            # (no TTL) when that count's window is closed by lo, i.e. it is the latest count up to lo
            pairs = closed[["store_id", "product_id"]].drop_duplicates()
            pairs = pairs[[k not in anchors for k in zip(pairs["store_id"], pairs["product_id"])]]
            lv = self._level_stock(pairs, pd.Timestamp(_utc(lo_ms)))
            win = pd.Timedelta(milliseconds=win_ms)
            for r in lv.itertuples():
                if r.stock_time.floor(win) + win <= pd.Timestamp(_utc(lo_ms)):
                    anchors[(r.store_id, r.product_id)] = int(r.stock_level)
        windows = TR.closed_window_stock(closed, anchors, window_len_hours=self.window_len_hours,
                                         reorder_points=self.reorder_points())
        state, rows = self._episode_state("store_id IN %(stores)s", {"stores": stores})
        alerts, new_state = TR.restock_episodes(windows, state, high_hours=self.s.risk_high_hours,
                                                medium_hours=self.s.risk_medium_hours,
                                                lead_time_days=self.s.lead_time_days, now_ms=now_ms)
        if alerts:
            self._emit_alerts(alerts, batch_id, now_ms)
        # the episode state is written after the alerts: a crash in between re-sends the same alert ids
        out = []
        for key, st in new_state.items():
            r = rows.get(key, {})
            out.append(self._level_row(key, r.get("stock_level"), r.get("stock_time"), r.get("reorder_point"), st,
                                       batch_id, now_ms, prior=self._prior(r)))
        self._insert_levels(out)
        return bound, seen

    #: inventory_levels' columns of the latest count before a micro-batch's look-back (071_inventory_levels_prior)
    _PRIOR = ("prior_stock_level", "prior_stock_time", "prior_reorder_point")

    @classmethod
    def _prior(cls, row: dict, lo: pd.Timestamp | None = None) -> tuple:
        """(stock, time, reorder point) of the latest count before ``lo`` among a stored inventory_levels row's own
        and its prior one; with ``lo`` None, or neither before ``lo``, the stored prior (kept, never lost). Newer
        counts are in the window tables (written with them, within their retention)."""
        stored = tuple(row.get(c) for c in cls._PRIOR)
        if lo is None:
            return stored
        lo, best = pd.to_datetime(lo, utc=True), None   # naive times are UTC, as everywhere in the sinks
        for cand in ((row.get("stock_level"), row.get("stock_time"), row.get("reorder_point")), stored):
            if cand[0] is None or pd.isna(cand[0]) or cand[1] is None or pd.isna(cand[1]):
                continue
            t = pd.to_datetime(cand[1], utc=True)
            if t < lo and (best is None or t > best[1]):
                best = (cand[0], t, cand[2])
        return stored if best is None else best

    def _level_row(self, key, stock, stock_time, rop, st: dict, batch_id: int, now_ms: int,
                   prior: tuple = (None, None, None)) -> dict:
        none = lambda x: x is None or pd.isna(x)  # noqa: E731
        return {"store_id": key[0], "product_id": key[1],
                "prior_stock_level": None if none(prior[0]) else int(prior[0]),
                "prior_stock_time": None if none(prior[1]) else pd.Timestamp(prior[1]),
                "prior_reorder_point": None if none(prior[2]) else int(prior[2]),
                "stock_level": None if stock is None or pd.isna(stock) else int(stock),
                "stock_time": None if stock_time is None or pd.isna(stock_time) else pd.Timestamp(stock_time),
                "reorder_point": None if rop is None or pd.isna(rop) else int(rop),
                "in_episode": int(st["in_episode"]),
                "episode_start": None if st["episode_start"] is None else pd.Timestamp(st["episode_start"], unit="ms", tz="UTC"),
                "last_window_start": None if st["last_window_start"] is None else pd.Timestamp(st["last_window_start"], unit="ms", tz="UTC"),
                "batch_id": int(batch_id), "version": now_ms, "updated_at": pd.Timestamp(now_ms, unit="ms", tz="UTC")}

    def _insert_levels(self, rows: list[dict]) -> None:
        if not rows:
            return
        lv = pd.DataFrame(rows)
        for c in ("stock_level", "reorder_point", "prior_stock_level", "prior_reorder_point"):
            lv[c] = pd.array([None if x is None or pd.isna(x) else int(x) for x in lv[c]], dtype="Int64")
        for c in ("stock_time", "episode_start", "last_window_start", "prior_stock_time"):
            lv[c] = pd.to_datetime(lv[c], utc=True)
        self._insert_df("inventory_levels", lv)

    def _levels(self, enriched: pd.DataFrame, batch_id: int, version: int, now_ms: int,
                lo: pd.Timestamp | None = None) -> None:
        """Latest known stock per store x SKU of the batch (``inventory_levels``), keeping the episode state.

        The stock replaces the stored one when its update time is at or after the stored ``stock_time``; the
        reorder point (the batch's latest window's, carried or its own) when that window ends after the stored
        ``stock_time`` (a late window's carried reorder point does not replace a later count's). ``prior_*``
        becomes the latest stored count before ``lo``, the batch's look-back start (:meth:`_prior`): the count a
        re-run of the batch carries (:meth:`_level_stock`), whatever its first run stored."""
        stores = sorted(enriched["store_id"].unique().tolist())
        state, prior_rows = self._episode_state("store_id IN %(stores)s", {"stores": stores})
        srt = enriched.sort_values("window_start", kind="mergesort")
        last_stock = (srt[srt["window_stock"].notna()].groupby(TR.WINDOW_KEY)[["window_stock", "window_stock_time"]]
                      .last().to_dict("index"))
        with_rop = srt[srt["reorder_point"].notna()].groupby(TR.WINDOW_KEY)
        last_rop = with_rop["reorder_point"].last().to_dict()
        # the window that reorder point belongs to ends at or before a stored later count: that count's is newer
        rop_end = (with_rop["window_start"].last() + pd.Timedelta(hours=self.window_len_hours)).to_dict()
        rows = []
        for key in sorted(set(zip(enriched["store_id"], enriched["product_id"]))):
            p = prior_rows.get(key, {})
            stock, stock_time = p.get("stock_level"), p.get("stock_time")
            rop = p.get("reorder_point")
            stored_time = None if stock_time is None or pd.isna(stock_time) else pd.Timestamp(stock_time)
            if key in last_stock:
                t = pd.Timestamp(last_stock[key]["window_stock_time"])
                if stored_time is None or t >= stored_time:
                    stock, stock_time = int(last_stock[key]["window_stock"]), t
            if key in last_rop and (rop is None or pd.isna(rop) or stored_time is None
                                    or pd.Timestamp(rop_end[key]) > stored_time):
                rop = int(last_rop[key])
            st = state.get(key, {"in_episode": False, "episode_start": None, "last_window_start": None})
            rows.append(self._level_row(key, stock, stock_time, rop, st, batch_id, now_ms, prior=self._prior(p, lo)))
        self._insert_levels(rows)

    def _emit_alerts(self, alerts: list[dict], batch_id: int, now_ms: int) -> None:
        """Validate against the restock_alert contract; send the ones not yet recorded in ClickHouse to Kafka
        (flush) and record them there; then write the batch's alerts to the lake.

        The lake file is named by the micro-batch id under the day of the batch's first window end (event time),
        so a retried batch writes the same file. It is written whenever it is missing, also when ClickHouse knows
        every alert already: a batch that failed after the insert (e.g. MinIO down) would otherwise never reach the
        lake. A batch with new alerts rewrites it whole."""
        for a in alerts:
            validate_event("restock_alert", a)
        if not alerts:
            return
        known, refused = self._recorded_alerts([a["alert_id"] for a in alerts])
        new = [a for a in alerts if a["alert_id"] not in known]
        d = _utc(int(min(a["window_end"] for a in alerts)))
        where = (self.s.lake_raw_bucket, "restock_alert", f"year={d:%Y}", f"month={d:%m}", f"day={d:%d}",
                 f"alerts-batch-{batch_id}{self.run_tag('windows')}.parquet")
        if new:
            self._send_and_record_alerts(new, batch_id, now_ms, delivered=refused)
        elif self.lake.exists(*where):
            return
        df = pd.DataFrame(alerts)
        schema = lake_arrow_schema("restock_alert")
        # a field the alert lacks is one the contract makes optional (default null: order_velocity of an alert
        # built before 2026-12-07); a required one still fails with its name
        def values(f: pa.Field) -> list:
            return df[f.name].tolist() if f.name in df or not f.nullable else [None] * len(df)

        cols = {f.name: pa.array(values(f), pa.int64()).cast(f.type) if pa.types.is_timestamp(f.type)
                else pa.array(values(f), f.type) for f in schema
                if f.name not in ("ingested_at", "kafka_partition", "kafka_offset")}
        cols["ingested_at"] = pa.array([now_ms] * len(df), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        cols["kafka_partition"] = pa.nulls(len(df), pa.int32())
        cols["kafka_offset"] = pa.nulls(len(df), pa.int64())
        self.lake.write_table(pa.table(cols, schema=schema), *where)

    def _recorded_alerts(self, ids: list[str]) -> tuple[set[str], set[str]]:
        """Which of the alert ids ClickHouse already holds: (those in ``restock_alerts``, those ``restock_alerts``
        refused and :meth:`_set_aside` quarantined: ``quarantine_events`` topic ``refused:restock_alerts``, partition
        -1, offset :func:`refused_row_offset`). One query per :data:`ALERT_ID_CHUNK` ids (both look-ups in it, bounded
        IN lists: ~55 bytes an id, far below max_query_size). A quarantined alert was acknowledged by Kafka (the
        insert follows the send), so it is not sent again, also by a restarted process (before 2026-12-06 only the
        process that sent it knew, :attr:`_sent_unrecorded`: a batch re-run after a crash sent it again)."""
        known: set[str] = set()
        refused: set[str] = set()
        sql = ("SELECT alert_id AS k, 0 AS refused FROM {db}.restock_alerts WHERE alert_id IN %(ids)s UNION ALL "
               "SELECT toString(offset) AS k, 1 AS refused FROM {db}.quarantine_events WHERE topic = %(topic)s "
               "AND partition = -1 AND offset IN %(offsets)s")
        for i in range(0, len(ids), ALERT_ID_CHUNK):  # bounded IN lists: a query stays under max_query_size
            chunk = ids[i:i + ALERT_ID_CHUNK]
            by_offset = {refused_row_offset("restock_alerts", [a]): a for a in chunk}
            got = self._query(sql, {"ids": chunk, "topic": "refused:restock_alerts", "offsets": list(by_offset)})
            for k, r in zip(got["k"].tolist(), got["refused"].tolist()):
                if int(r):
                    refused.add(by_offset[int(k)])
                else:
                    known.add(k)
        return known, refused

    def _send_and_record_alerts(self, new: list[dict], batch_id: int, now_ms: int,
                                delivered: set[str] | frozenset = frozenset()) -> None:
        """Send alerts to the restock-alerts topic, each delivery awaited, then insert them into ``restock_alerts``.

        An alert whose delivery Kafka acknowledged is remembered (:attr:`_sent_unrecorded`, alert id -> epoch ms
        of the acknowledgement) until its ClickHouse insert succeeds, so a micro-batch retried after a failed insert
        (ClickHouse unreachable, :meth:`retrying`) or after a partly failed send records it without sending it
        again. An alert ``restock_alerts`` refuses for its values (set aside in ``quarantine_events``,
        :meth:`_insert_df`) stays there for the life of the process: a retry of the batch (e.g. after a lake failure)
        or a later batch quarantines it again without sending it again (before 2026-12-06 every retry sent it). Only
        a crash of the process between the acknowledgement and the insert, or a stop while Kafka does not acknowledge
        within :data:`STOP_ACK_WAIT_SECONDS` (down or frozen: :meth:`_await_acknowledgements`), re-sends it (same
        ``alert_id``) when the batch is re-run from the checkpoint. ``delivered``: alert ids found quarantined as refused by
        ``restock_alerts`` (:meth:`_recorded_alerts`), delivered by an earlier run, also of another process: not sent
        again, their insert tried again (set aside again while still refused)."""
        topic = self.s.topic(EVENT_TYPES["restock_alert"])
        to_send = [a for a in new if a["alert_id"] not in self._sent_unrecorded and a["alert_id"] not in delivered]
        if len(to_send) < len(new):
            log.info("restock alerts: %d already delivered to Kafka by an earlier attempt of this batch or found "
                     "quarantined (refused by restock_alerts after their delivery), not sent again",
                     len(new) - len(to_send))
        if to_send:
            from kafka.errors import KafkaTimeoutError

            prod = self.producer()
            futures = [(a["alert_id"], prod.send(topic, key=f"{a['store_id']}|{a['product_id']}", value=a))
                       for a in to_send]
            self._await_acknowledgements(prod, [f for _, f in futures], f"micro-batch {batch_id}'s restock alerts")
            failed: BaseException | None = None
            for alert_id, f in futures:
                try:
                    f.get(timeout=0)   # done (acknowledged or failed), or unacknowledged at a stop: its error
                except Exception as exc:  # noqa: BLE001  re-raised below, after the delivered ones are noted
                    if not f.is_done:   # the job stopped first (:meth:`_await_acknowledgements`)
                        exc = KafkaTimeoutError(f"restock alert {alert_id} not acknowledged by Kafka when the "
                                                f"streaming job stopped: not recorded")
                    failed = failed or exc
                else:
                    self._sent_unrecorded[alert_id] = int(time.time() * 1000)
                    self.alerts_sent += 1
            if failed is not None:
                raise failed  # a failed delivery: the batch fails and is retried (only the undelivered are sent)
        df = pd.DataFrame(new)
        ch = df.drop(columns=["timestamp"]).assign(
            window_end=pd.to_datetime(df["window_end"], unit="ms", utc=True),
            alert_time=pd.to_datetime(df["timestamp"], unit="ms", utc=True),
            hours_of_cover=pd.array(df["hours_of_cover"].tolist(), dtype="Float64"),
            batch_id=int(batch_id), ingested_at=pd.Timestamp(now_ms, unit="ms", tz="UTC"))
        refused = set(self._insert_df("restock_alerts", ch))
        for i, a in enumerate(new):
            if i not in refused:   # a refused alert was delivered and stays unrecorded: never sent again here
                self._sent_unrecorded.pop(a["alert_id"], None)
