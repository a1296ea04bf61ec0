"""Pure transforms of the streaming job: Spark DataFrame -> DataFrame (work on streaming *and* static frames)
and pandas functions for the per-micro-batch enrichment. No I/O here; everything is unit-testable.

Pipeline (shapes):

1. :func:`kafka_frame`: Kafka source rows -> ``topic, partition, offset, kafka_timestamp, value`` (value as
   UTF-8 string).
2. :func:`parse_events`: -> + one column per Avro field (typed from the contract, :mod:`streaming.schema`)
   + ``_corrupt_record`` (Spark's PERMISSIVE JSON parse) + ``_keys`` (top-level JSON keys).
3. :func:`validate_events`: -> + ``invalid_reason`` (NULL when valid, else every failed rule joined by ``"; "``) +
   ``event_time`` (TimestampType, UTC, from the ``timestamp`` epoch-ms field). :func:`split_valid` splits.
4. :func:`inventory_facts` (valid sales + valid inventory updates, one row per event) ->
   :func:`window_metrics`: 5-minute tumbling event-time windows per store x SKU.
5. :func:`enrich_windows` (pandas, per micro-batch, with the recent history read from ClickHouse):
   last known stock, sales velocity, hours of cover, stock-out risk, anomaly z-score.
6. :func:`store_windows` (pandas): per-store windows from the per-SKU windows.
7. :func:`restock_episodes` (pandas): one restock alert per store x SKU low-stock episode.

Metric definitions (also in docs/streaming.md):

* ``units_sold`` = sum of ``quantity`` over sales lines with quantity > 0; ``units_returned`` = sum of
  ``-quantity`` over lines with quantity < 0 (returns); ``transaction_count`` = number of POS lines
  (sales and returns) in the window.
* ``revenue`` = sum(quantity x unit_price) over all lines (returns have negative quantity, so they are
  subtracted), computed in ``DECIMAL(38,4)`` (exact; the price is taken at 4 decimals) and converted to a
  float once at the end, so it is independent of summation order.
* ``sales_velocity`` (units/hour) = trailing sales rate (:func:`trailing_velocity`): the units sold by the store
  x SKU in its windows ending in ``(window_end - T, window_end]`` (windows without a row sold 0) / ``min(T,
  window_end - the key's first known window_start)`` hours, T = ``STREAM_VELOCITY_HOURS`` (default 24). Not the
  window's own units / window length: one unit in a 5-minute window is 12 units/h, so any sale made a SKU with
  less than 288 units HIGH risk and a window without a sale LOW. Since 2026-12-07 net of the units returned
  (cancellations) in the same span, these netting at most the units the order's cap set aside (sold -
  units_for_order), so never below ``order_velocity``. Store level: the same over the store's units sold (gross).
* ``order_velocity`` (units/hour, the rate of a restock alert's quantity) = the trailing rate of the windows'
  units winsorized at their baseline's mean + 3 sigma (:func:`order_units`), a window without a baseline bounded
  by what its reorder point implies (:func:`catalogue_order_bound`), or, with no reorder point or lead time, by
  the store's pooled cap (:func:`pooled_order_bound`, the stream's ``pooled_bound``).
* ``stock_level`` = ``new_quantity`` of the latest inventory update (by event time, ties by Kafka offset)
  in the window; a window without an update carries forward the stock of the latest earlier window of the
  same store x SKU that had one (NULL when none is known yet).
* ``hours_of_cover`` = stock_level / sales_velocity (the trailing rate); NULL when the velocity is 0 (no sales in
  the trailing span: infinite cover) or the stock is unknown.
* ``stockout_risk``: ``UNKNOWN`` without a known stock; ``HIGH`` when stock <= 0 or cover <
  RISK_HIGH_HOURS; ``MEDIUM`` when cover < RISK_MEDIUM_HOURS; else ``LOW`` (also when velocity is 0).
* ``anomaly_score`` = (units_sold - mean) / std over the same store x SKU's previous windows *with
  activity* (up to ``lookback`` = 12, within ``horizon`` = 24 h before the window), population standard
  deviation (ddof = 0); 0 when fewer than 3 previous windows or std = 0. Rounded to 6 decimals.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Iterable

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from contracts import (ID_MAX_CHARS, MIN_EVENT_TIME_MS, NUMERIC_BOUNDS, RISK_HIGH, RISK_LOW, RISK_MEDIUM,
                       LONE_SURROGATE_REASON, RISK_UNKNOWN, RULE_TYPES, SURROGATE_ESCAPE, SURROGATE_ESCAPE_PAIR,
                       control_char_class, duplicate_keys_reason, future_reason, id_fields, white_space_chars)
from streaming import schema as S

#: columns every parsed/validated frame carries from Kafka
KAFKA_COLUMNS = ["topic", "partition", "offset", "kafka_timestamp", "value"]
CORRUPT = "_corrupt_record"
KEYS = "_keys"
#: validation result column (not "reason": inventory updates and price changes have a field of that name)
REASON = "invalid_reason"

# ------------------------------------------------------------------------------------------ parse --
#: prefix of a ``value`` whose Kafka bytes were not valid UTF-8: the bytes follow in base64 (never lost)
NOT_UTF8_PREFIX = "base64:"


#: column of :func:`kafka_frame` holding the Kafka message key as text (NULL for a record without a key)
KAFKA_KEY = "kafka_key"


def kafka_frame(df: DataFrame) -> DataFrame:
    """Kafka source rows (``key, value`` binary, ``topic, partition, offset, timestamp``) ->
    ``topic, partition, offset, kafka_timestamp, value, kafka_key`` with ``value`` decoded as a UTF-8 string and
    ``kafka_key`` the key's bytes as a string (NULL without a key, ``"base64:" + base64(bytes)`` when not UTF-8;
    checked by :func:`validate_events`).

    A value that is not valid UTF-8 becomes ``"base64:" + base64(bytes)`` (valid UTF-8, so Arrow and pandas can
    carry it to the quarantine with its raw bytes; :func:`validate_events` gives the reason). A null value
    (tombstone) stays NULL.
    """
    def text(raw: Column) -> Column:
        # a string column must hold valid UTF-8: Spark's cast does not check, and Arrow refuses it later (the
        # conversion to pandas stopped the query on a key of invalid UTF-8 bytes, found by tests/test_fuzz_stream.py)
        t = raw.cast("string")
        return F.when(raw.isNull(), F.lit(None).cast("string")).when(F.is_valid_utf8(t), t) \
                .otherwise(F.concat(F.lit(NOT_UTF8_PREFIX), F.base64(raw)))

    return df.select("topic", "partition", "offset", F.col("timestamp").alias("kafka_timestamp"),
                     text(F.col("value")).alias("value"), text(F.col("key")).alias(KAFKA_KEY))


#: quarantine reason prefix of the records the producers dead-lettered (their own reason follows)
DEAD_LETTER_PREFIX = "dead-lettered by producer: "
#: ``event_type`` of a dead-letter record whose JSON names none (not JSON, or no such field)
DEAD_LETTER_UNKNOWN_TYPE = "unknown"


def dead_letter_frame(df: DataFrame, topic: str) -> DataFrame:
    """The producers' dead-letter records (``core.kafka.dead_letter_record`` JSON: event_type, reason, payload)
    of ``topic`` -> ``KAFKA_COLUMNS`` + ``invalid_reason`` (:data:`DEAD_LETTER_PREFIX` + the producer's reason, or
    a note that the record is not such a document) + ``dead_letter_type`` (its event type or
    :data:`DEAD_LETTER_UNKNOWN_TYPE`). Every record is kept, so the quarantine counts what was dead-lettered.
    """
    v = F.col("value")
    reason = F.get_json_object(v, "$.reason")
    et = F.get_json_object(v, "$.event_type")
    return (df.filter(F.col("topic") == topic)
            .select(*KAFKA_COLUMNS,
                    F.concat(F.lit(DEAD_LETTER_PREFIX),
                             F.coalesce(reason, F.lit("(record is not a dead-letter document)"))).alias(REASON),
                    F.coalesce(et, F.lit(DEAD_LETTER_UNKNOWN_TYPE)).alias("dead_letter_type")))


def parse_events(df: DataFrame, event_type: str) -> DataFrame:
    """Parse the JSON ``value`` of one event type with the schema derived from its Avro contract.

    Args:
        df: frame with at least :data:`KAFKA_COLUMNS` (rows of other topics must be filtered out before).
        event_type: a key of ``contracts.EVENT_TYPES``.

    Returns:
        ``KAFKA_COLUMNS`` + one column per contract field (NULL when absent or not of the contract type)
        + ``_corrupt_record`` (the raw value when Spark's PERMISSIVE parse failed, i.e. malformed JSON or a
        field whose JSON type does not match) + ``_keys`` (array of top-level JSON keys, NULL when the value
        is not a JSON object) + ``kafka_key`` when ``df`` has it (:func:`kafka_frame`).
    """
    st = S.struct_type(event_type).add(T.StructField(CORRUPT, T.StringType(), True))
    # allowSingleQuotes off: JSON strings are double-quoted (RFC 8259), as for the producers' json.loads
    parsed = F.from_json(F.col("value"), st, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT,
                                              "allowSingleQuotes": "false"})
    cols = [*KAFKA_COLUMNS, *([KAFKA_KEY] if KAFKA_KEY in df.columns else [])]
    return (df.select(*cols, parsed.alias("_p"), F.json_object_keys("value").alias(KEYS))
              .select(*cols, *[F.col(f"_p.{n}").alias(n) for n in S.field_names(event_type)],
                      F.col(f"_p.{CORRUPT}").alias(CORRUPT), KEYS))


def expected_key(event_type: str) -> Column:
    """The Kafka key the contract gives a record of ``event_type`` (``core.kafka.event_key``, the topic table
    of docs/contracts.md): ``customer_id`` for customer events, else ``store_id || '|' || product_id``; NULL when a part is NULL
    (an invalid record, or a customer event without a customer)."""
    if event_type == "customer_event":
        return F.col("customer_id")
    return F.concat(F.col("store_id"), F.lit("|"), F.col("product_id"))


def key_reason(event_type: str) -> Column:
    """Reason of a record whose Kafka key (``kafka_key``) is missing or is not :func:`expected_key`; NULL when it
    matches or when the payload gives no key.

    Why: the partition is chosen by the key, and the platform's order per store x SKU (docs/guarantees.md, Ordering) is the
    order within one partition. Two inventory updates of one SKU with the same event time are ordered by
    (partition, offset) (:func:`window_metrics`' latest stock); with a key that disagrees with the payload they
    can sit in two partitions, and the stock kept is the one in the higher partition, whatever the send order."""
    exp = expected_key(event_type)
    what = "customer_id" if event_type == "customer_event" else "store_id|product_id"
    key = F.col(KAFKA_KEY)
    shown = F.when(F.length(key) > 80, F.concat(F.substring(key, 1, 80), F.lit("..."))).otherwise(key)
    return (F.when(exp.isNull(), F.lit(None).cast("string"))
            .when(key.isNull(), F.concat(F.lit(f"kafka key missing: the contract keys {event_type} by {what} ('"),
                                         exp, F.lit("')")))
            .when(key != exp, F.concat(F.lit("kafka key '"), shown,
                                       F.lit(f"' does not match the payload's {what} '"), exp, F.lit("'"))))


def _now_ms(now: datetime | None) -> Column:
    """The reference time of the event-time rules, epoch ms: ``now`` when given, else the record's Kafka timestamp.

    The Kafka timestamp (since 2026-12-07 the broker's append time: the platform's topics are created with
    ``message.timestamp.type=LogAppendTime``, ``core.kafka_admin``; a topic created before with CreateTime, which
    ``ensure_topics`` warns about, carries the producer's send time) rather than the micro-batch time
    (``current_timestamp()``) because (1) a record gets the same verdict whenever it is processed, so a stream
    restarted after an outage, or a replay from the checkpoint, does not quarantine events that were fresh when
    they were sent, and the producers' own future check (at send time) agrees with the stream's; (2) Spark inlines
    the micro-batch time as a literal into the generated code, so ``current_timestamp()`` makes whole-stage
    codegen recompile the validation stage in every micro-batch (measured with the CodeGenerator log: 2 compiles
    per micro-batch with it, 2 per query run without). A record without a usable timestamp (Kafka's -1, or 0,
    which a CreateTime topic accepts) has a NULL reference: :func:`validate_events` quarantines it, since its
    event time cannot be bounded (one at 3000-01-01 would lift the watermark past every later event; one beyond
    year 292,278,994 overflowed the window arithmetic and stopped the stream).
    """
    if now is None:
        kts = F.unix_millis(F.col("kafka_timestamp"))
        return F.when(kts > 0, kts)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return F.lit(int(now.timestamp() * 1000)).cast("long")


def _json_type(field: str) -> Column:
    """The JSON type of the value's top-level ``field`` as ``schema_of_variant`` names it (STRING, BIGINT, DOUBLE,
    DECIMAL(p,s), BOOLEAN, OBJECT<...>, ARRAY<...>, VOID for null; NULL when absent or the value does not parse)."""
    return F.schema_of_variant(F.variant_get(F.try_parse_json(F.col("value")), f"$.{field}", "variant"))


def _mismatch_reason(event_type: str) -> Column:
    """``type mismatch: <fields> not of the Avro type`` for a row Spark's parse flagged (``_corrupt_record``): the
    fields present whose parsed value is NULL while their JSON value is not null; the generic text when none is
    found (a value the VARIANT parser refuses)."""
    names = F.concat_ws(",", *[F.when(F.array_contains(F.col(KEYS), f) & F.col(f).isNull()
                                      & (F.coalesce(_json_type(f), F.lit("VOID")) != "VOID"), F.lit(f))
                               for f in S.field_names(event_type)])
    return F.when(names != "", F.concat(F.lit("type mismatch: "), names, F.lit(" not of the Avro type"))) \
        .otherwise(F.lit("type mismatch: a field does not match its Avro type"))


def _wrapped_length(tail: str) -> Column:
    """json_array_length of '[' + value + ``tail``: the top-level values of the array Spark's parser reads first
    (NULL when that text does not start with a JSON array)."""
    return F.json_array_length(F.concat(F.lit("["), F.col("value"), F.lit(tail)))


def validate_events(parsed: DataFrame, event_type: str, *, max_age_days: int, max_future_minutes: int,
                    now: datetime | None = None) -> DataFrame:
    """Apply the contract and the business rules to a :func:`parse_events` frame.

    Rules, each adding a reason: a null value; a value that is not valid UTF-8 (see :func:`kafka_frame`);
    malformed JSON / not a JSON object; a field not matching its Avro type;
    a required (non-nullable) field missing; unknown top-level fields (the contract rejects them); an
    enum value outside the Avro symbols; a ``timestamp-millis`` older than ``max_age_days`` or more than
    ``max_future_minutes`` in the future relative to ``now`` (default: the record's Kafka timestamp, the
    broker's append time on the platform's topics; see :func:`_now_ms`; without ``now``, a record whose Kafka timestamp is missing or
    <= 0); text after the JSON object (``{...} {...}``: a parser stops after the first value, json.loads says
    "Extra data"); a top-level JSON key given more than once; a Kafka key missing or not the payload's
    (:func:`key_reason`, when the frame has ``kafka_key``); the numeric bounds of
    ``contracts.NUMERIC_BOUNDS`` (quantity != 0 and |quantity| <= QUANTITY_MAX units, prices finite in
    [0, PRICE_MAX] currency units, stock figures in [0, STOCK_MAX] units). Reasons of the shared rules are the
    producers' texts (``contracts.rule_violations``).

    Returns:
        the input columns + ``invalid_reason`` (STRING, NULL when valid) + ``event_time`` (TIMESTAMP, NULL when the
        timestamp is absent or out of range).
    """
    now_ms = _now_ms(now)
    lo = now_ms - F.lit(max_age_days * 86_400_000).cast("long")
    hi = now_ms + F.lit(max_future_minutes * 60_000).cast("long")
    names = S.field_names(event_type)
    checks: list[Column] = [
        F.when(F.col("value").isNull(), F.lit("null value (tombstone)")),
        F.when(F.col("value").startswith(NOT_UTF8_PREFIX),
               F.lit("value is not valid UTF-8 (raw bytes kept as base64)")),
        F.when(F.col(KEYS).isNull() & F.col("value").isNotNull() & ~F.col("value").startswith(NOT_UTF8_PREFIX),
               F.lit("malformed JSON: value is not a JSON object")),
        # which field: Spark keeps the others (partial results) and nulls the one it could not convert; one whose
        # JSON value is not null (the VARIANT parse, only for these rare rows: a branch value, see below)
        F.when(F.col(KEYS).isNotNull() & F.col(CORRUPT).isNotNull(), _mismatch_reason(event_type)),
        # Spark's parsers stop after the first JSON value, so '{A} {B}' or '{A}]' parse as A. Wrapped as
        # '[' + value + ',0]' and as '[' + value + ',0,0]', the texts are arrays of 2 and 3 values only when
        # nothing follows the object: another value counts more, anything else is not JSON (NULL), and a ']' in
        # the value closes the array before the sentinels, so both counts are equal ('{A},{B}]': 2 and 2). These
        # parses run only when the value's first '}' is not its last character: a value holding one '}', at its
        # end, is one object and nothing after it (the producers' JSON; white space after it: the parses)
        F.when(F.col(KEYS).isNotNull() & (F.instr(F.col("value"), "}") != F.length(F.col("value")))
               & ((F.coalesce(_wrapped_length(",0]"), F.lit(-1)) != 2)
                  | (F.coalesce(_wrapped_length(",0,0]"), F.lit(-1)) != 3)),
               F.lit("malformed JSON: extra data after the JSON object")),
        # an unpaired \uD800-\uDFFF escape, which Spark's parse turns into "?" (contracts.LONE_SURROGATE_REASON):
        # on the raw text, escaped backslashes removed first (left to right, as a JSON parser pairs them), then
        # the escape pairs; any surrogate escape left is unpaired. instr first: most values hold no \u at all
        F.when(F.col(KEYS).isNotNull() & (F.instr(F.col("value"), "\\u") > 0)
               & F.regexp_replace(F.regexp_replace(F.col("value"), r"\\\\", "__"), SURROGATE_ESCAPE_PAIR, "")
                  .rlike(SURROGATE_ESCAPE), F.lit(LONE_SURROGATE_REASON)),
    ]
    for f in S.required_fields(event_type):
        checks.append(F.when(F.col(KEYS).isNotNull() & F.col(f).isNull()
                             & ~F.array_contains(F.col(KEYS), f), F.lit(f"missing required field {f}")))
        checks.append(F.when(F.array_contains(F.col(KEYS), f) & F.col(f).isNull() & F.col(CORRUPT).isNull(),
                             F.lit(f"required field {f} is null")))
    # a key repeated at the top level (Spark's parse and Python's json.loads keep the last copy silently):
    # json_object_keys lists every occurrence, so the check costs no second parse
    # (the lambda naming the repeated keys runs only for a row that has one)
    dups = F.array_distinct(F.filter(F.col(KEYS), lambda x, i: F.array_position(F.col(KEYS), x) != i + 1))
    checks.append(F.when(F.size(F.array_distinct(F.col(KEYS))) < F.size(F.col(KEYS)),
                         F.concat(F.lit(duplicate_keys_reason([])), F.array_join(dups, ","))))
    unknown = F.array_except(F.col(KEYS), F.array(*[F.lit(n) for n in names]))
    checks.append(F.when(F.size(unknown) > 0, F.concat(F.lit("unknown field(s): "), F.array_join(unknown, ","))))
    # Spark's JSON parser turns any non-string JSON value of a string field into its JSON text ({"store_id": 5}
    # -> "5"); the contract (and the producers' Avro check) wants a JSON string. Cheap test first: the key
    # followed by a double quote in the raw value (a quote cannot occur unescaped inside a JSON string, so only
    # keys match). It can be fooled only by the same key inside a nested object ({"store_id": {"store_id": "S"}}),
    # which needs a second "{", and it misses a key written with escapes ("product\u005fid"): in those cases,
    # and only then, the value is parsed as a VARIANT and the field's JSON type read (schema_of_variant).
    # (the checks run only where the parsed text could be a JSON number, boolean, object or array)
    v = F.col("value")
    nested = F.expr("locate('{', value, locate('{', value) + 1) > 0")
    for f in S.string_fields(event_type):
        c = F.col(f)
        maybe_not_string = F.substring(c, 1, 1).isin(*"-0123456789{[") | c.isin("true", "false")
        quoted = v.rlike(f'"{f}"\\s*:\\s*"')
        json_type = _json_type(f)
        # the parse sits in a branch's value, not in a condition: subexpression elimination would otherwise hoist
        # the common try_parse_json(value) out of every field's condition and parse every record (measured: the
        # validation of 300,000 sales 2.43 -> 3.45 s with it in the condition)
        checks.append(F.when(c.isNotNull() & F.col(CORRUPT).isNull() & maybe_not_string & (~quoted | nested),
                             # a value the VARIANT parser refuses here (a key repeated inside the nested
                             # object) is not trusted to the raw-text test: the producers refuse it too
                             F.when(F.coalesce(json_type != F.lit("STRING"), F.lit(True)),
                                    F.lit(f"type mismatch: {f} is not a JSON string"))))
    if event_type in RULE_TYPES:  # the id and event-time rules shared with the producers (contracts)
        white = sorted(white_space_chars())
        for f in id_fields(event_type):
            c = F.col(f)
            # one reason per id, the first that applies, in the order of contracts._id_problem (the same text)
            checks.append(
                F.when(c.rlike(r"^[\p{Z}\p{Cc}]*$"), F.lit(f"{f} is empty"))
                 .when(F.length(c) > ID_MAX_CHARS, F.lit(f"{f} longer than {ID_MAX_CHARS} characters"))
                 # the class of Python's Cc/Cf code points (200+ ranges) only for an id that is not printable ASCII
                 .when(c.rlike(r"[^\x20-\x7E]") & c.rlike(control_char_class()),
                       F.lit(f"{f} contains control characters"))
                 # first / last character (code points) in contracts.white_space_chars: " SKU-1" is no second SKU
                 .when(F.substring(c, 1, 1).isin(*white) | F.substring(c, -1, 1).isin(*white),
                       F.lit(f"{f} has leading or trailing white space")))
        for f in S.timestamp_fields(event_type):
            checks.append(F.when(F.col(f) < F.lit(MIN_EVENT_TIME_MS).cast("long"),
                                 F.lit(f"{f} before 2000-01-01")))
    for f, symbols in S.enum_fields(event_type).items():
        checks.append(F.when(F.col(f).isNotNull() & ~F.col(f).isin(*symbols),
                             F.concat(F.lit(f"invalid {f} '"), F.col(f), F.lit("'"))))
    if KAFKA_KEY in parsed.columns and event_type in RULE_TYPES:  # the partition key (core.kafka.event_key)
        checks.append(F.when(F.col(KEYS).isNotNull(), key_reason(event_type)))
    if now is None:
        checks.append(F.when(F.col("value").isNotNull() & now_ms.isNull(),
                             F.lit("kafka timestamp missing or <= 0: the event time cannot be checked against "
                                   "the send time")))
    for f in S.timestamp_fields(event_type):
        checks.append(F.when(F.col(f) < lo, F.lit(f"{f} older than STREAM_MAX_EVENT_AGE_DAYS={max_age_days}")))
        checks.append(F.when(F.col(f) > hi, F.lit(future_reason(f, max_future_minutes))))
    # Spark reads the strings "NaN", "Infinity", "-INF" into a double field: the contract wants a JSON number
    for f in S.double_fields(event_type):
        c = F.col(f)
        checks.append(F.when(F.isnan(c) | (F.abs(c) == F.lit(float("inf"))),
                             F.when(_json_type(f) == "STRING", F.lit(f"type mismatch: {f} is a JSON string, "
                                                                      "not a number"))))
    for b in NUMERIC_BOUNDS.get(event_type, ()):  # the numeric bounds of the contracts (producers check the same)
        c = F.col(b.field).cast("double")
        checks.append(F.when(c.isNotNull() & (F.isnan(c) | (c < F.lit(float(b.lo))) | (c > F.lit(float(b.hi)))),
                             F.lit(b.reason)))
        if b.nonzero:
            checks.append(F.when(c == 0, F.lit(b.zero_reason)))
    # concat_ws skips NULL arguments and is compiled by whole-stage codegen (array_compact(array(...)) is a
    # higher-order function, evaluated row by row by the interpreter with every check inside it: 22 % of the
    # stream's CPU in a JFR profile of a 300,000-event drain)
    reason = F.concat_ws("; ", *checks)
    ts = F.col("timestamp")
    in_range = F.coalesce((ts >= lo) & (ts <= hi), F.lit(False))  # no reference time: quarantined, no time
    event_time = F.when(ts.isNotNull() & in_range, F.timestamp_millis(ts))
    return (parsed.withColumn(REASON, F.when(reason != "", reason))
                  .withColumn("event_time", event_time))


#: reasons :func:`validate_events` gives when Spark's JSON parser (Jackson) refused a value or could not type it
#: without saying why: the quarantine path asks the producers' parser for the true reason
#: (:func:`explain_parse_failures`)
GENERIC_PARSE_REASONS = ("malformed JSON: value is not a JSON object",
                         "type mismatch: a field does not match its Avro type")
#: reason of a value the producers' rules accept but Spark's JSON parser refuses: Jackson's
#: StreamReadConstraints (Spark 4.0's defaults)
JACKSON_LIMIT_REASON = ("malformed JSON: beyond the stream's JSON parser limits (a number of more than 1,000 "
                        "digits, a key of more than 50,000 characters or nesting deeper than 1,000 levels)")
#: longest reason :func:`explain_parse_failures` writes, characters (a 100,000-character unknown key is named in
#: the producers' reason; the raw payload is kept whole beside it)
REASON_MAX_CHARS = 1_000


#: start of validate_events' reason for a required field the value lacks
MISSING_FIELD_PREFIX = "missing required field "


def wrong_topic_reason(event_type: str, other: str) -> str:
    """Reason of a value read from ``event_type``'s topic that is a valid ``other`` event, e.g. ``wrong topic: a
    valid inventory_update event on the sales_transaction topic``."""
    return f"wrong topic: a valid {other} event on the {event_type} topic"


def wrong_topic_type(event_type: str, value: str, kafka_ms: int | None, *, max_future_minutes: int) -> str | None:
    """The other event type (of ``contracts.EVENT_TYPES``) whose contract ``value`` (raw JSON text read from
    ``event_type``'s topic) passes, checked by the producers' rules (``contracts.check_payload``) at the record's
    Kafka timestamp ``kafka_ms`` (epoch ms; None or <= 0: the wall clock); None when it passes none. The value is
    quarantined either way (the topic decides its contract); this only names the likely cause: a producer that
    sent an event to another type's topic."""
    from contracts import EVENT_TYPES, ContractError, check_payload

    now = None if kafka_ms is None or pd.isna(kafka_ms) or int(kafka_ms) <= 0 else int(kafka_ms)
    for other in EVENT_TYPES:
        if other == event_type:
            continue
        try:
            check_payload(other, value, now_ms=now, max_future_minutes=max_future_minutes)
        except (ContractError, ValueError, RecursionError, MemoryError):
            continue
        return other
    return None


def explain_parse_failures(event_type: str, values: Iterable[str | None], reasons: Iterable[str | None],
                           kafka_ms: Iterable[int | None], *, max_future_minutes: int) -> list[str | None]:
    """Replace the generic parse reasons (:data:`GENERIC_PARSE_REASONS`) of quarantined records with the true one.

    Spark's JSON parser gives no cause: a price of 1,001 digits (over Jackson's 1,000-digit limit), the literal
    ``NaN``, a nesting 2,000 deep or a 100,000-character key all read as "value is not a JSON object"; an
    unescaped control character or single quotes as "a field does not match its Avro type". For those rows only
    (Python, on the quarantine path: no cost on valid records) the value goes through the producers' check,
    ``contracts.check_payload`` at the record's Kafka timestamp, whose reason replaces the generic one (e.g.
    ``unit_price must be within [0, 100000] currency units``, ``malformed JSON: NaN is not JSON``); a value the
    producers accept gets :data:`JACKSON_LIMIT_REASON`. Other reasons of the row are kept. A named type mismatch
    of a number Spark's int/long cannot hold (``quantity`` = 2147483648) becomes the producers' range reason when
    that is what they give (``quantity must be within [-100000, 100000] units``). A row missing a required field
    whose value is a valid event of another type (:func:`wrong_topic_type`) gets :func:`wrong_topic_reason` first
    (before, only the other type's fields were listed as unknown and this type's as missing).

    Args:
        event_type: a key of ``contracts.EVENT_TYPES``.
        values: the raw values (str; ``base64:`` values and None are left as they are).
        reasons: their :func:`validate_events` reasons (``"; "``-joined), None for a valid row.
        kafka_ms: the records' Kafka timestamps, epoch ms (None or <= 0: the wall clock).
        max_future_minutes: STREAM_MAX_FUTURE_MINUTES.
    Returns:
        the reasons, aligned with the inputs; each rewritten one at most :data:`REASON_MAX_CHARS` characters.
    """
    from contracts import ContractError, check_payload

    bounds = {f"type mismatch: {b.field} not of the Avro type": b.reason for b in NUMERIC_BOUNDS.get(event_type, ())}
    out: list[str | None] = []
    for value, reason, ms in zip(values, reasons, kafka_ms):
        parts = reason.split("; ") if reason else []
        if value is not None and not value.startswith(NOT_UTF8_PREFIX) \
                and any(p.startswith(MISSING_FIELD_PREFIX) for p in parts):
            other = wrong_topic_type(event_type, value, ms, max_future_minutes=max_future_minutes)
            if other is not None:
                parts.insert(0, wrong_topic_reason(event_type, other))
                reason = "; ".join(parts)
        generic = any(p in GENERIC_PARSE_REASONS for p in parts)
        if (not generic and not any(p in bounds for p in parts)) or value is None or value.startswith(NOT_UTF8_PREFIX):
            out.append(reason)
            continue
        now = None if ms is None or pd.isna(ms) or int(ms) <= 0 else int(ms)
        try:
            check_payload(event_type, value, now_ms=now, max_future_minutes=max_future_minutes)
            true = JACKSON_LIMIT_REASON
        except ContractError as exc:
            true = str(exc)
        except (ValueError, RecursionError, MemoryError) as exc:   # the producers' side never raises these
            true = f"malformed JSON: {exc}"
        if not generic:   # a named mismatch: replaced only by the producers' range reason of that field
            theirs = true.split("; ")
            out.append("; ".join(bounds[p] if bounds.get(p) in theirs else p for p in parts))
            continue
        if len(true) > REASON_MAX_CHARS:
            true = true[:REASON_MAX_CHARS - 3] + "..."
        new: list[str] = []
        for p in parts:
            p = true if p in GENERIC_PARSE_REASONS else p
            if p not in new:
                new.append(p)
        out.append("; ".join(new))
    return out


def split_valid(validated: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(valid rows, invalid rows) of a :func:`validate_events` frame, split on ``invalid_reason IS NULL``."""
    return validated.filter(F.col(REASON).isNull()), validated.filter(F.col(REASON).isNotNull())


def valid_events(kafka_df: DataFrame, event_type: str, topic: str, *, max_age_days: int,
                 max_future_minutes: int, now: datetime | None = None) -> DataFrame:
    """Convenience: filter ``kafka_df`` (:func:`kafka_frame` shape) to ``topic``, parse, validate, keep valid."""
    v = validate_events(parse_events(kafka_df.filter(F.col("topic") == topic), event_type), event_type,
                        max_age_days=max_age_days, max_future_minutes=max_future_minutes, now=now)
    return split_valid(v)[0]


# ---------------------------------------------------------------------------------------- windows --
FACT_COLUMNS = ["store_id", "product_id", "event_time", "is_sale", "event_id", "quantity", "unit_price",
                "new_quantity", "reorder_point", "partition", "offset"]
#: the event id of each input event type (first field of its contract)
EVENT_ID = {"sales_transaction": "transaction_id", "inventory_update": "inventory_id",
            "price_change": "price_change_id", "customer_event": "event_id"}


def inventory_facts(valid_sales: DataFrame, valid_inventory: DataFrame) -> DataFrame:
    """One row per valid sales line or inventory update, in a common shape (:data:`FACT_COLUMNS`):
    sales carry quantity/unit_price, inventory updates carry new_quantity/reorder_point (others NULL);
    ``event_id`` = transaction_id / inventory_id (the deduplication key with ``is_sale``)."""
    sales = valid_sales.select("store_id", "product_id", "event_time", F.lit(True).alias("is_sale"),
                               F.col("transaction_id").alias("event_id"),
                               F.col("quantity").cast("int").alias("quantity"),
                               F.col("unit_price").cast("double").alias("unit_price"),
                               F.lit(None).cast("int").alias("new_quantity"),
                               F.lit(None).cast("int").alias("reorder_point"), "partition", "offset")
    inv = valid_inventory.select("store_id", "product_id", "event_time", F.lit(False).alias("is_sale"),
                                 F.col("inventory_id").alias("event_id"),
                                 F.lit(None).cast("int").alias("quantity"), F.lit(None).cast("double").alias("unit_price"),
                                 F.col("new_quantity").cast("int").alias("new_quantity"),
                                 F.col("reorder_point").cast("int").alias("reorder_point"), "partition", "offset")
    return sales.unionByName(inv)


def window_metrics(facts: DataFrame, window: str, watermark: str | None = None, dedup: bool = True) -> DataFrame:
    """Tumbling event-time windows per store x SKU.

    Args:
        facts: :func:`inventory_facts` frame (streaming or static).
        window: window length, e.g. ``"5 minutes"`` (STREAM_WINDOW).
        watermark: allowed lateness, e.g. ``"10 minutes"`` (STREAM_WATERMARK); None for static frames.
            Events older than the watermark are dropped from the aggregates by Spark (they still reach
            the lake through the raw query).
        dedup: with a watermark, count each event id once: a sales line / inventory update whose id was seen
            within the watermark (``dropDuplicatesWithinWatermark`` on ``is_sale, event_id``; state kept until
            the watermark passes the first copy's event time + the delay) is dropped, the first copy counts.
            Per micro-batch counts: the query progress' ``numDroppedDuplicateRows``.

    Returns:
        ``window_start, window_end, store_id, product_id, units_sold, units_returned, revenue (DOUBLE from an
        exact DECIMAL sum), transaction_count, inventory_update_count, window_stock (latest new_quantity in
        the window or NULL), window_stock_time, reorder_point (latest non-NULL in the window),
        last_event_time``.
    """
    if watermark:
        facts = facts.withWatermark("event_time", watermark)
        if dedup:
            facts = facts.dropDuplicatesWithinWatermark(["is_sale", "event_id"])
    sale = F.col("is_sale")
    qty = F.col("quantity")
    order = F.struct("event_time", "partition", "offset")
    line_rev = F.col("unit_price").cast("decimal(18,4)") * qty
    return (facts.groupBy(F.window("event_time", window).alias("w"), "store_id", "product_id")
            .agg(F.coalesce(F.sum(F.when(sale & (qty > 0), qty)), F.lit(0)).cast("long").alias("units_sold"),
                 F.coalesce(F.sum(F.when(sale & (qty < 0), -qty)), F.lit(0)).cast("long").alias("units_returned"),
                 F.sum(F.when(sale, line_rev)).alias("_rev"),
                 F.count(F.when(sale, F.lit(1))).alias("transaction_count"),
                 F.count(F.when(~sale, F.lit(1))).alias("inventory_update_count"),
                 F.max_by(F.col("new_quantity"), F.when(~sale, order)).alias("window_stock"),
                 F.max(F.when(~sale, F.col("event_time"))).alias("window_stock_time"),
                 F.max_by(F.col("reorder_point"), F.when(~sale & F.col("reorder_point").isNotNull(), order))
                  .alias("reorder_point"),
                 F.max("event_time").alias("last_event_time"))
            .select(F.col("w.start").alias("window_start"), F.col("w.end").alias("window_end"),
                    "store_id", "product_id", "units_sold", "units_returned",
                    F.coalesce(F.col("_rev").cast("double"), F.lit(0.0)).alias("revenue"),
                    "transaction_count", "inventory_update_count", "window_stock", "window_stock_time",
                    "reorder_point", "last_event_time"))


# ------------------------------------------------------------------------ pandas: derived metrics --
def hours_of_cover(stock: float | None, velocity: float) -> float | None:
    """stock / velocity in hours; None when the stock is unknown or the velocity is <= 0 (infinite cover)."""
    if stock is None or (isinstance(stock, float) and math.isnan(stock)) or velocity is None or velocity <= 0:
        return None
    return float(stock) / float(velocity)


def stockout_risk(stock: float | None, cover: float | None, high_hours: float, medium_hours: float) -> str:
    """Stock-out risk class: UNKNOWN (no stock known), HIGH (stock <= 0 or cover < high_hours), MEDIUM
    (cover < medium_hours), else LOW (including no sales = infinite cover)."""
    if stock is None or (isinstance(stock, float) and math.isnan(stock)):
        return RISK_UNKNOWN
    if stock <= 0:
        return RISK_HIGH
    if cover is None or (isinstance(cover, float) and math.isnan(cover)):
        return RISK_LOW
    if cover < high_hours:
        return RISK_HIGH
    if cover < medium_hours:
        return RISK_MEDIUM
    return RISK_LOW


def _mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, population standard deviation, ddof = 0) of a non-empty list of floats: the baseline of
    :func:`zscore` and :func:`order_units`."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / len(values))


def zscore(value: float, previous: Iterable[float], min_count: int = 3) -> float:
    """(value - mean(previous)) / std(previous), population std (ddof = 0); 0.0 when fewer than
    ``min_count`` previous values or std == 0. Rounded to 6 decimals."""
    prev = [float(x) for x in previous]
    if len(prev) < min_count:
        return 0.0
    mean, std = _mean_std(prev)
    if std == 0:
        return 0.0
    return round((float(value) - mean) / std, 6)


def _grouped_baselines(keys: list, ws_ns: list[int], units: list, in_batch, lookback: int, horizon_ns: int, *,
                       order_units_of: list | None = None, stored: np.ndarray | None = None,
                       bounds: np.ndarray | None = None,
                       pool_keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Both baselines of rows sorted by (key, window) in one walk back from each batch row (only the batch rows
    are walked; since 2026-12-07 one walk instead of one per baseline, ``enrich_windows`` 1.23-1.30 s -> see
    docs/benchmarks.md):

    * the anomaly score, :func:`zscore` of ``units[i]`` against the previous <= ``lookback`` rows of the same key
      within ``horizon_ns`` (any units, 0 included);
    * when ``order_units_of`` is given (units sold as floats, NaN-free), :func:`order_units` of the row against the
      previous <= ``lookback`` rows of the same key within ``horizon_ns`` *with a sale* (units > 0), without a
      baseline at most its ``bounds`` entry (:func:`catalogue_order_bound`); a row not in the batch keeps
      ``stored`` (float array, its stored ``units_for_order``; its units when that is NaN).

    Args:
        keys: hashable key per row (rows of a key contiguous, in window order); ws_ns: window starts, int ns.
        units: units sold per row (the z-score's values); in_batch: bool per row (list or array).
        lookback, horizon_ns: baseline size (rows) and span (ns).
        pool_keys: optional int code per row of the row's pool (the store; rows of a pool contiguous, codes
            ascending): a row without a baseline and without a ``bounds`` entry (NaN, or ``bounds`` None) then
            counts at most :func:`pooled_order_bound` of the units for the order of its pool's earlier selling
            windows; such rows are computed last, in window order, so every pooled value is final (stored or
            computed in this walk).
    Returns:
        (z-scores: float array, NaN for rows not in the batch; units for the order: float array, or None when
        ``order_units_of`` is None).
    """
    n = len(keys)
    scores = np.full(n, np.nan)
    ordered = None
    if order_units_of is not None:
        st = np.full(n, np.nan) if stored is None else stored
        ordered = np.where(np.isnan(st), np.asarray(order_units_of, dtype=float), st)
    deferred: list[tuple[int, int, list[float]]] = []      # (window, row, baseline) of rows needing the pool
    for i in np.flatnonzero(np.asarray(in_batch, dtype=bool)).tolist():
        k, lo = keys[i], ws_ns[i] - horizon_ns
        zprev: list = []
        oprev: list[float] = []
        need_o = order_units_of is not None
        j = i - 1
        # walked back from the row: at most the windows of the horizon, not the key's whole history
        while j >= 0 and keys[j] == k and ws_ns[j] >= lo and (len(zprev) < lookback or (need_o and len(oprev) < lookback)):
            if len(zprev) < lookback:
                zprev.append(units[j])
            if need_o and len(oprev) < lookback and order_units_of[j] > 0:
                oprev.append(order_units_of[j])
            j -= 1
        scores[i] = zscore(units[i], zprev[::-1])
        if need_o:
            b = None if bounds is None else float(bounds[i])
            if pool_keys is not None and len(oprev) < ORDER_BASELINE_MIN and (b is None or math.isnan(b)):
                deferred.append((ws_ns[i], i, oprev))
                continue
            ordered[i] = order_units(order_units_of[i], oprev[::-1], bound=b)
    # the pooled rows last, in window order: a pool then holds final winsorized units only (stored ones for
    # history rows, this walk's for the batch's, earlier pooled rows included), so another SKU's bulk line counts
    # what its own cap left of it, not its raw units (since 2026-12-07: pooled raw units, one 80,995-unit line
    # lifted a store's cap from 6.24 to 22,668.9 units)
    if deferred:   # the pool's arrays only when a row needs them (most batches have none)
        pk, pws = np.asarray(pool_keys), np.asarray(ws_ns, dtype=np.int64)
        sells = np.asarray(order_units_of, dtype=float) > 0
        cache: dict[tuple[int, int], float] = {}

        def pooled(i: int) -> float:
            """pooled_order_bound of the winsorized units (``ordered``) of row i's pool's selling windows in
            [ws - horizon, ws) (one per pool x window; every such row is final when asked: see the deferral)."""
            key = (int(pk[i]), int(pws[i]))
            if key not in cache:
                a, z = np.searchsorted(pk, pk[i], side="left"), np.searchsorted(pk, pk[i], side="right")
                w = pws[a:z]
                sel = (w >= pws[i] - horizon_ns) & (w < pws[i]) & sells[a:z]
                cache[key] = pooled_order_bound(ordered[a:z][sel])
            return cache[key]
    for _, i, oprev in sorted(deferred):
        ordered[i] = order_units(order_units_of[i], oprev[::-1], bound=pooled(i))
    return scores, ordered


def _grouped_zscores(keys: list, ws_ns: list[int], units: list, in_batch: list[bool], lookback: int,
                     horizon_ns: int) -> np.ndarray:
    """z-scores (:func:`zscore`) of rows sorted by (key, window): each row against the previous <= lookback
    rows of the same key within ``horizon_ns``; NaN for rows not in the batch (:func:`_grouped_baselines`)."""
    return _grouped_baselines(keys, ws_ns, units, in_batch, lookback, horizon_ns)[0]


#: previous windows of a baseline (anomaly score, order cap): :func:`enrich_windows`' default ``lookback``
BASELINE_WINDOWS = 12
#: sigmas above the baseline mean a window's units sold count at most in the restock order's rate (three-sigma rule)
ORDER_OUTLIER_SIGMAS = 3.0
#: fewest earlier selling windows a cap needs (as the anomaly score's baseline; fewer: :func:`catalogue_order_bound`)
ORDER_BASELINE_MIN = 3


def order_units(value: float, previous: Iterable[float], sigmas: float = ORDER_OUTLIER_SIGMAS,
                min_count: int = ORDER_BASELINE_MIN, bound: float | None = None) -> float:
    """The units of one window that a restock order's demand rate counts: the units sold, winsorized at
    ``mean + sigmas x max(std, sqrt(mean))`` of ``previous`` (the same store x SKU's earlier selling windows).

    Args:
        value: the window's units sold (>= 0).
        previous: units sold of the earlier windows *with a sale* (units > 0) of the same store x SKU, at most
            ``lookback`` (12) within 24 h, the anomaly score's span (:func:`_grouped_baselines` picks them).
        sigmas: the cap in standard deviations (:data:`ORDER_OUTLIER_SIGMAS`, 3).
        min_count: fewer previous windows than this: no baseline, the window counts at most ``bound``.
        bound: units a window without a baseline counts at most (:func:`catalogue_order_bound`: what the reorder
            point implies); None or NaN (no reorder point or lead time known): no bound, ``value`` unchanged.
    Returns:
        units (float), ``min(value, cap)``; ``min(value, bound)`` without a baseline; ``value`` itself when it is
        within the cap (or bound) or neither exists.

    Rule and source: winsorizing an outlier of the demand history before estimating the demand rate, as in
    Hyndman & Athanasopoulos, "Forecasting: Principles and Practice", 3rd ed. (2021), section 13.9 "Outliers and
    missing values" (an outlier that is a one-off, e.g. a bulk order later cancelled, is replaced before the
    estimate), with the three-sigma limit (mean + 3 standard deviations; Montgomery, "Introduction to Statistical
    Quality Control", 7th ed., ch. 5, control limits). The standard deviation is floored at the Poisson one,
    sqrt(mean) (unit sales counts are commonly modelled as Poisson; Silver, Pyke & Thomas 2017, ch. 4), so a
    series that always sold the same quantity (std 0, where :func:`zscore` gives 0) still has a finite cap.
    Only the order quantity uses it (:func:`recommended_quantity` via ``order_velocity``); stock keeps the real
    units, and velocity, cover and risk too, except that returns net only what the cap set aside
    (:func:`enrich_windows`).
    """
    prev = [float(x) for x in previous]
    if len(prev) < min_count:
        return float(value) if bound is None or math.isnan(bound) else min(float(value), float(bound))
    mean, std = _mean_std(prev)
    return min(float(value), float(order_cap(mean, std, sigmas)))


def order_cap(mean, std, sigmas: float = ORDER_OUTLIER_SIGMAS):
    """The most units a window with a baseline counts for the restock order (:func:`order_units`):
    ``mean + sigmas x max(std, sqrt(mean))``.

    Args:
        mean, std: the baseline's mean and population standard deviation (ddof 0), units per window (numbers or
            numpy arrays of one shape; ``ops.bench_bi`` passes arrays).
        sigmas: :data:`ORDER_OUTLIER_SIGMAS`.
    Returns:
        units (a numpy float, or an array).
    """
    return mean + sigmas * np.maximum(std, np.sqrt(mean))


def catalogue_order_bound(reorder_point, span_hours, lead_time_days: float | None):
    """The most units one window *without a baseline* (fewer than :data:`ORDER_BASELINE_MIN` earlier selling
    windows within 24 h: a SKU first seen, or one selling a line or two a day) counts for the restock order's rate:
    ``reorder_point x span_hours / (24 x lead_time_days)``, i.e. ``span_hours`` of the demand rate the catalogue
    plans for (:func:`enrich_windows` passes T = STREAM_VELOCITY_HOURS: one window counts at most a day of it, so a
    new SKU's ordinary windows are not bound while a bulk line is; with a reorder point of 60 units and a 3-day lead
    time, 20 units).

    Args:
        reorder_point: units (the window's, carried forward, else the catalogue's), a number or a numpy array;
            NaN: no bound for that window.
        span_hours: hours of the planned rate one window may count (:func:`enrich_windows`: T), a number or an
            array of the same shape.
        lead_time_days: supplier lead time, days (LEAD_TIME_DAYS); None or <= 0: no bound (the order then has no
            lead-time demand to bound).
    Returns:
        units (float, or a float array; NaN: no bound), or None for no bound at all.

    Rule and source: a reorder point is the demand expected over the lead time plus safety stock (Silver, Pyke &
    Thomas 2017, "Inventory and Production Management in Supply Chains", 4th ed., ch. 6: s = x_L + SS), so
    ``reorder_point / lead-time hours`` bounds the mean demand rate the catalogue plans for. Without a history to
    winsorize against, a window's units above that (the 80,995-unit line of 2011-12-09, a SKU's first line in the
    replayed data, read as 80,995 units/h over the 1-hour minimum span) are not extrapolated over the lead time;
    a catalogue consistent with demand is not binding (one line a day of at most ``reorder_point / lead-time
    days`` units).
    """
    if lead_time_days is None or lead_time_days <= 0:
        return None
    rop = np.asarray(reorder_point, dtype=float)
    out = np.maximum(rop, 0.0) * np.asarray(span_hours, dtype=float) / (24.0 * float(lead_time_days))
    return float(out) if out.ndim == 0 else out


def pooled_order_bound(previous) -> float:
    """The most units one window counts for the restock order when it has neither a baseline of its own (fewer
    than :data:`ORDER_BASELINE_MIN` earlier selling windows within 24 h) nor a :func:`catalogue_order_bound` (no
    reorder point known, or LEAD_TIME_DAYS 0): :func:`order_cap` of the units for the order (``units_for_order``,
    winsorized) of its store's earlier selling windows within 24 h, all SKUs pooled (the SKU's own included).

    Args:
        previous: units for the order of those windows (array-like of floats >= 0). :func:`enrich_windows` passes
            the windows its frame holds: the stream's (streaming/sinks.py) are the micro-batch's and every window of
            the store stored so far within 24 h (all SKUs; the stored ``units_for_order``: the units sold for a
            row written before migration 089, the column's default). Winsorized, not raw (since 2026-12-07):
            pooling raw units let one earlier bulk line of another SKU (80,995 units among 120 windows of 2) lift
            the cap from 6.24 to 22,668.9 units, so a first-seen SKU's 5,000-unit line counted whole.

    Limits: the bound is computed once, when the window is first enriched, from what the store has stored then. A
    store's earlier windows that arrive later (a lagging partition, late events) do not re-evaluate it, and a
    window enriched before the store has 3 selling windows within 24 h keeps no bound (stored whole, it lifts the
    pool of the next 24 h: a 5,000-unit first line, then 2-unit windows, let a new SKU's 5,000-unit line count
    1,406.7 units); only a late-arriving earlier window or stock update of the same SKU within the 24 h before it
    (streaming/sinks.py's followers) re-enriches it, against the pool stored at that time.
    Returns:
        units (float): ``mean + 3 x max(std, sqrt(mean))`` (population std) of ``previous``; NaN (no bound) with
        fewer than :data:`ORDER_BASELINE_MIN` of them.

    Rule and source: a series too short to estimate is estimated from similar series, here the store's other SKUs
    (forecasting by analogy, Hyndman & Athanasopoulos, "Forecasting: Principles and Practice", 3rd ed., ch. 6
    "Judgmental forecasts"; pooling short series, Silver, Pyke & Thomas 2017, ch. 4), with the same three-sigma
    winsorizing limit as :func:`order_units`. Without it such a window was counted whole: a first-seen SKU's
    bulk line with no reorder point (no alert: restock alerts need one) or LEAD_TIME_DAYS 0 (the quantity does not
    use the rate) set nothing aside, so its cancellation did not net out of ``sales_velocity`` and cover and risk
    stayed at the raw rate for STREAM_VELOCITY_HOURS.
    """
    prev = np.asarray(previous, dtype=float)
    if len(prev) < ORDER_BASELINE_MIN:
        return float("nan")
    return float(order_cap(np.mean(prev), np.std(prev)))


def _run_codes(*columns: np.ndarray) -> np.ndarray:
    """Int code per row of rows sorted by ``columns`` (arrays of one length n): 0 for the first run of equal
    values, +1 at each change (int64 array of n; empty for n = 0, where ``np.r_[True, ...]`` alone gave one code
    and enrich_windows of an empty batch without history raised ValueError until 2026-12-07)."""
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n - 1, dtype=bool)
    for c in columns:
        change |= c[1:] != c[:-1]
    return np.cumsum(np.r_[True, change]) - 1


def _ns(series: pd.Series) -> np.ndarray:
    """UTC timestamps -> int64 array of nanoseconds since the epoch."""
    return pd.to_datetime(series, utc=True).dt.as_unit("ns").astype("int64").to_numpy()


WINDOW_KEY = ["store_id", "product_id"]


#: shortest span a trailing rate is divided by, hours (or T when shorter): a series first seen minutes ago is
#: not extrapolated from one window (its first 5-minute window of 12 units read 144 units/h, and a restock alert
#: on it asked for 10,372 units against a reorder point of 2, in the demo of 2026-12-06)
VELOCITY_MIN_SPAN_HOURS = 1.0


def trailing_velocity(frame: pd.DataFrame, key: list[str], *, window_len_hours: float,
                      velocity_hours: float) -> pd.Series:
    """Trailing sales rate, units/hour, of every row of ``frame`` (one row per key x window; vectorised).

    For a row of ``key`` with window end ``e``: the units sold in that key's windows ending in
    ``(e - T, e]`` (the windows inside the T hours up to ``e``, the row's own included; a window without a row
    sold nothing) divided by the covered span ``min(T, max(e - first, min(T, VELOCITY_MIN_SPAN_HOURS)))`` hours,
    ``first`` being the key's earliest ``window_start`` in ``frame``. So a series first seen a few hours ago is
    not diluted over T hours, one first seen minutes ago is not extrapolated from one window
    (:data:`VELOCITY_MIN_SPAN_HOURS`), and a steady rate reads the same whatever the window length (1 unit/h is
    1.0, not 12 in the window of the sale and 0 in the 11 others).

    Args:
        frame: ``key`` columns, ``window_start`` (UTC timestamps), ``units_sold``; rows of several keys, any order.
            Must hold every stored window of the key in the T hours before the rows that matter (the callers
            load :data:`core.settings.STREAM_HISTORY_HOURS` >= T) and, when the key is older, one earlier row
            (the history's anchor), which makes the span T.
        window_len_hours: window length, hours (window_end = window_start + this).
        velocity_hours: T, hours (STREAM_VELOCITY_HOURS, > 0).

    Returns:
        float Series aligned with ``frame``'s index, units/hour, >= 0.
    """
    u = frame["units_sold"].astype(float).fillna(0.0).to_numpy() if len(frame) else []
    return _trailing_rates(frame, key, {"v": u}, window_len_hours=window_len_hours,
                           velocity_hours=velocity_hours)["v"].rename(None)


def _trailing_rates(frame: pd.DataFrame, key: list[str], values: dict, *, window_len_hours: float,
                    velocity_hours: float, codes: np.ndarray | None = None,
                    ws_ns: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`trailing_velocity` of several per-window unit arrays at once (one sort for all):
    ``values`` name -> units per row of ``frame`` (array-like, no NaN); returns a float frame with those columns,
    aligned with ``frame``'s index, each the trailing sum over the span floored at 0, / the span in hours.
    ``codes``: optional int code per row of ``frame`` naming its key (equal codes = equal ``key`` values), which
    spares factorizing the key columns, ``ws_ns`` the rows' ``window_start`` as int64 ns, converting them
    (:func:`enrich_windows` has both). The units of the windows ending at or
    before e - T are found by a binary search on (key code, window-end rank) (since 2026-12-07; was a
    ``merge_asof`` by the key's string columns: the same rows, the same sums; its cost is part of
    :func:`enrich_windows`'s in docs/streaming.md, "A bulk line and its cancellation")."""
    if velocity_hours <= 0:
        raise ValueError(f"velocity_hours must be > 0, got {velocity_hours}")
    if frame.empty:
        return pd.DataFrame({n: pd.Series([], dtype=float) for n in values}, index=frame.index)
    hour_ns = 3_600_000_000_000
    win_ns, t_ns = round(window_len_hours * hour_ns), round(velocity_hours * hour_ns)
    names = list(values)
    ws = _ns(frame["window_start"]) if ws_ns is None else np.asarray(ws_ns, dtype=np.int64)
    if codes is None:
        codes = frame.groupby(key, sort=False, dropna=False).ngroup().to_numpy()
    order = np.lexsort((ws, codes))                       # by key, then window (one row per key x window)
    c, w = np.asarray(codes, dtype=np.int64)[order], ws[order]
    vals = np.column_stack([np.asarray(values[n], dtype=float)[order] for n in names])
    # units of windows ending <= this end: the running sum within the key (pandas' grouped cumsum, as before)
    cum = pd.DataFrame(vals).groupby(c, sort=False).cumsum().to_numpy()
    end = w + win_ns
    n = len(c)
    starts = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]
    g0 = np.repeat(starts, np.diff(np.r_[starts, n]))     # index of each row's key's first row
    first = w[g0]
    # the key's last window ending at or before e - T (rows sorted by key code, then end): a search on
    # code x (rank of the end among all ends and bounds) finds it; none in the key: 0 units
    q = end - t_ns
    grid = np.sort(pd.unique(np.concatenate([end, q])))   # hashed: few distinct ends
    m = np.int64(len(grid) + 1)
    j = np.searchsorted(c * m + np.searchsorted(grid, end), c * m + np.searchsorted(grid, q), side="right") - 1
    before = np.where((j >= g0)[:, None], cum[np.maximum(j, 0)], 0.0)
    min_ns = min(t_ns, round(VELOCITY_MIN_SPAN_HOURS * hour_ns))
    span_h = (end - first).clip(min=min_ns, max=t_ns) / hour_ns
    rates = np.empty_like(cum)
    rates[order] = (cum - before).clip(min=0.0) / span_h[:, None]
    return pd.DataFrame(rates, columns=names, index=frame.index)


def enrich_windows(batch: pd.DataFrame, history: pd.DataFrame | None, *, window_len_hours: float,
                   risk_high_hours: float, risk_medium_hours: float, lookback: int = BASELINE_WINDOWS,
                   horizon_hours: float = 24.0, reorder_points: dict[str, int] | None = None,
                   velocity_hours: float = 24.0, lead_time_days: float | None = None,
                   pooled_bound: bool = False) -> pd.DataFrame:
    """Add last known stock, velocity, cover, risk and anomaly score to the windows of one micro-batch.

    Args:
        batch: :func:`window_metrics` rows emitted by the micro-batch (window_start as UTC timestamps).
        history: rows already stored for the same store x SKU (columns ``window_start, store_id,
            product_id, units_sold, window_stock, reorder_point``, and when stored ``units_returned,
            units_for_order``: missing, 0 returned and the units sold); rows with the same key and window as a
            batch row are ignored (the batch is newer). May be None/empty.
        window_len_hours: window length in hours (:func:`core.settings.interval_hours` of STREAM_WINDOW).
        risk_high_hours, risk_medium_hours: RISK_HIGH_HOURS / RISK_MEDIUM_HOURS.
        lookback, horizon_hours: anomaly baseline = up to ``lookback`` previous windows with activity
            within ``horizon_hours`` before the window.
        reorder_points: product_id -> reorder point fallback (reference data) when no inventory update
            carried one.
        velocity_hours: T of the trailing sales rate (STREAM_VELOCITY_HOURS); ``history`` must hold the key's
            windows of the T hours before the batch's (plus an earlier anchor row when the key is older).
        lead_time_days: LEAD_TIME_DAYS, days: bounds ``units_for_order`` of a window without a baseline
            (:func:`catalogue_order_bound`); None: no such bound.
        pooled_bound: a window with neither a baseline nor that bound (no reorder point, or no lead time) counts at
            most :func:`pooled_order_bound` of the units for the order of its store's earlier selling windows in
            the frame (batch and history, all SKUs; the stream passes
            True since 2026-12-07; False: counted whole, as before).

    Returns:
        the batch rows (same order of columns, sorted by store, product, window) + ``stock_level``
        (Int, nullable), ``sales_velocity`` (units/hour: :func:`trailing_velocity` over the batch and history
        rows, i.e. units sold in the T hours up to the window's end / min(T, hours since the key's first known
        window)), ``hours_of_cover`` (stock / that rate, nullable), ``stockout_risk``, ``anomaly_score``;
        ``reorder_point`` carried forward like the stock; ``units_for_order`` (units, float: the window's units
        sold winsorized by :func:`order_units`, without a baseline bounded by :func:`catalogue_order_bound`);
        ``order_velocity`` (units/hour: the trailing rate of ``units_for_order``, the rate
        :func:`recommended_quantity` is given); ``sales_velocity`` = max(the net trailing rate (units sold less
        returned, floored at 0), ``order_velocity``): returns and cancellations net at most the units the order's
        cap set aside in the same span (since 2026-12-07: a cancelled bulk line nets out, a return of stock sold
        before the span, or of ordinary sales, lowers neither rate).
    """
    b = batch.copy()
    b["_in_batch"] = True
    if history is not None and len(history):
        extra = [c for c in ("units_returned", "units_for_order") if c in history]
        h = history[["window_start", "store_id", "product_id", "units_sold", *extra, "window_stock",
                     "reorder_point"]].copy()
        h["_in_batch"] = False
        h = h.merge(b[["window_start", "store_id", "product_id"]], how="left", indicator=True,
                    on=["window_start", "store_id", "product_id"])
        h = h[h["_merge"] == "left_only"].drop(columns="_merge")
        allw = pd.concat([b, h], ignore_index=True)
    else:
        allw = b
    allw = allw.sort_values(["store_id", "product_id", "window_start"], kind="mergesort").reset_index(drop=True)
    g = allw.groupby(WINDOW_KEY, sort=False)
    allw["stock_level"] = g["window_stock"].ffill()
    allw["reorder_point"] = g["reorder_point"].ffill()
    if reorder_points:
        fallback = allw["product_id"].map(reorder_points)
        allw["reorder_point"] = allw["reorder_point"].where(allw["reorder_point"].notna(), fallback)
    # int code per store x SKU (rows sorted by it): cheaper to compare in the walks and to search than the strings
    sid, pid = allw["store_id"].to_numpy(), allw["product_id"].to_numpy()
    codes = _run_codes(sid, pid)
    keys = codes.tolist()
    ws_arr = _ns(allw["window_start"])
    ws_ns = ws_arr.tolist()
    units = allw["units_sold"].fillna(0).astype(float).tolist()
    stored = (pd.to_numeric(allw["units_for_order"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
              if "units_for_order" in allw else np.full(len(allw), np.nan))
    # a window without a baseline counts at most T hours of the catalogue's planned rate (the same for every
    # window, whatever the key's age: a new fast seller's ordinary windows stay below it)
    bounds = (None if lead_time_days is None else
              catalogue_order_bound(allw["reorder_point"].astype(float).to_numpy(), velocity_hours, lead_time_days))
    # one walk back from each batch row gives both baselines (anomaly score, order cap); anomaly_score is
    # assigned first: the columns keep their order (anomaly_score before units_for_order)
    scores, for_order = _grouped_baselines(
        keys, ws_ns, allw["units_sold"].tolist(), allw["_in_batch"].to_numpy(dtype=bool), lookback,
        int(horizon_hours * 3600e9), order_units_of=units, stored=stored, bounds=bounds,
        pool_keys=_run_codes(sid) if pooled_bound else None)
    allw["anomaly_score"] = scores
    allw["units_for_order"] = for_order
    if "units_returned" not in allw:
        allw["units_returned"] = 0
    # one sort/as-of join for both rates. The order's rate is the trailing rate of the winsorized units; the
    # sales rate (cover, risk) is the net rate but never below it: a return or cancellation nets at most the
    # excess the cap set aside in the span (sum = gross - min(returned, gross - capped)), so a cancelled bulk
    # line nets out once its cancellation arrives while a return of stock sold before the span (or of ordinary
    # sales) does not read as a stop in demand
    net = np.asarray(units) - allw["units_returned"].astype(float).fillna(0.0).to_numpy()
    r = _trailing_rates(allw, WINDOW_KEY, {"net": net, "capped": allw["units_for_order"].to_numpy(dtype=float)},
                        window_len_hours=window_len_hours, velocity_hours=velocity_hours, codes=codes,
                        ws_ns=ws_arr)
    allw["order_velocity"] = r["capped"].to_numpy()
    allw["sales_velocity"] = np.maximum(r["net"].to_numpy(), allw["order_velocity"].to_numpy())
    out = allw[allw["_in_batch"]].drop(columns="_in_batch").reset_index(drop=True)
    stock = [None if pd.isna(x) else int(x) for x in out["stock_level"]]
    out["stock_level"] = pd.array(stock, dtype="Int64")
    out["reorder_point"] = pd.array([None if pd.isna(x) else int(x) for x in out["reorder_point"]], dtype="Int64")
    cover = [hours_of_cover(s, v) for s, v in zip(stock, out["sales_velocity"])]
    out["hours_of_cover"] = pd.array(cover, dtype="Float64")
    out["stockout_risk"] = [stockout_risk(s, c, risk_high_hours, risk_medium_hours) for s, c in zip(stock, cover)]
    out["anomaly_score"] = out["anomaly_score"].astype(float)
    return out


def store_windows(sku_windows: pd.DataFrame, history: pd.DataFrame | None, *, window_len_hours: float,
                  lookback: int = 12, horizon_hours: float = 24.0, velocity_hours: float = 24.0) -> pd.DataFrame:
    """Per-store windows from the *complete* per-SKU windows of the affected (store, window) pairs.

    Args:
        sku_windows: every store x SKU row (enriched) of the (store, window) pairs to recompute.
        history: stored per-store rows (``window_start, store_id, units_sold``) for the anomaly baseline and the
            trailing rate: the store's windows of the ``velocity_hours`` before the recomputed ones, plus an
            earlier row when the store is older (so its span is the whole T).
        velocity_hours: T of the trailing sales rate (STREAM_VELOCITY_HOURS).

    Returns:
        ``window_start, window_end, store_id, units_sold, units_returned, revenue, transaction_count,
        sku_count, skus_high_risk, sales_velocity, anomaly_score``: ``sales_velocity`` (units/hour) = the store's
        units sold in the T hours up to the window's end / min(T, hours since the store's first known window)
        (:func:`trailing_velocity`); ``anomaly_score`` = z-score of the store's units against its previous
        windows, same rule as :func:`enrich_windows`.
    """
    agg = (sku_windows.assign(_high=(sku_windows["stockout_risk"] == "HIGH").astype(int))
           .groupby(["window_start", "window_end", "store_id"], as_index=False)
           .agg(units_sold=("units_sold", "sum"), units_returned=("units_returned", "sum"),
                revenue=("revenue", "sum"), transaction_count=("transaction_count", "sum"),
                sku_count=("product_id", "nunique"), skus_high_risk=("_high", "sum")))
    agg["_in_batch"] = True
    if history is not None and len(history):
        h = history[["window_start", "store_id", "units_sold"]].copy()
        h = h.merge(agg[["window_start", "store_id"]], how="left", indicator=True, on=["window_start", "store_id"])
        h = h[h["_merge"] == "left_only"].drop(columns="_merge")
        h["_in_batch"] = False
        allw = pd.concat([agg, h], ignore_index=True)
    else:
        allw = agg
    allw = allw.sort_values(["store_id", "window_start"], kind="mergesort").reset_index(drop=True)
    scores = _grouped_zscores(allw["store_id"].tolist(), _ns(allw["window_start"]).tolist(),
                              allw["units_sold"].tolist(), allw["_in_batch"].tolist(), lookback,
                              int(horizon_hours * 3600e9))
    allw["anomaly_score"] = scores
    allw["sales_velocity"] = trailing_velocity(allw, ["store_id"], window_len_hours=window_len_hours,
                                               velocity_hours=velocity_hours)
    out = allw[allw["_in_batch"]].drop(columns="_in_batch").reset_index(drop=True)
    out["anomaly_score"] = out["anomaly_score"].astype(float)
    return out[["window_start", "window_end", "store_id", "units_sold", "units_returned", "revenue",
                "transaction_count", "sku_count", "skus_high_risk", "sales_velocity", "anomaly_score"]]


def alert_priority(stock: int, cover: float | None, high_hours: float, medium_hours: float) -> str:
    """CRITICAL when out of stock, HIGH when cover < high_hours, MEDIUM when < medium_hours, else LOW."""
    if stock <= 0:
        return "CRITICAL"
    if cover is not None and not (isinstance(cover, float) and math.isnan(cover)):
        if cover < high_hours:
            return "HIGH"
        if cover < medium_hours:
            return "MEDIUM"
    return "LOW"


#: the largest recommended quantity a restock alert carries (Avro ``int``, 2**31 - 1)
ORDER_QTY_MAX = 2 ** 31 - 1


def recommended_quantity(stock: int, reorder_point: int, velocity: float, lead_time_days: int) -> int:
    """Units to order for a restock alert: ``max(1, S - stock)`` with the order-up-to level
    ``S = 2 * reorder_point + ceil(max(velocity, 0) * 24 * lead_time_days)``, i.e. twice the reorder point plus
    the demand over the supplier lead time at the current sales rate.

    Args:
        stock: stock on hand, units (the window's ``stock_level``).
        reorder_point: units (from the inventory updates, else the product reference).
        velocity: demand rate, units/hour (the window's ``order_velocity`` since 2026-12-07: the trailing rate of
            the winsorized units, :func:`order_units` / :func:`catalogue_order_bound`); a negative value counts as 0.
        lead_time_days: supplier lead time, days (LEAD_TIME_DAYS).
    Returns:
        the quantity, units (int, 1 <= q <= :data:`ORDER_QTY_MAX`: the restock_alert contract's Avro ``int``; a
        larger order, e.g. from a valid burst of QUANTITY_MAX lines, is capped there rather than failing the
        alert's contract check, which would fail the micro-batch on every restart).
    Raises:
        ValueError: ``velocity`` is NaN.
        OverflowError: ``velocity`` is infinite.

    Source: the shape of the (s, S) order-up-to policy of Silver, Pyke & Thomas (2017), "Inventory and Production
    Management in Supply Chains", 4th ed., CRC Press, ch. 6: when the stock position falls to the reorder point s,
    order up to S. Here s is the reorder point (:func:`restock_episodes` alerts once per episode, at stock < s) and
    the order is S minus stock. S itself is this platform's heuristic, not the book's: it is not derived from
    ordering and holding costs (a common simple choice there is S = s + Q with Q an economic order quantity); the
    lead-time demand is added on top of a reorder point that already covers demand over a lead time (the
    producers size it so), so S - s = reorder point + lead-time demand; the demand is the trailing rate of the
    last STREAM_VELOCITY_HOURS (24 h by default), not a forecast; and the order is taken from stock on hand, not from the inventory position (the stream does
    not know what is on order).
    """
    target = 2 * reorder_point + math.ceil(max(velocity, 0.0) * 24 * lead_time_days)
    return min(ORDER_QTY_MAX, max(1, int(target - stock)))


def restock_episodes(windows: pd.DataFrame, state: dict[tuple[str, str], dict], *, high_hours: float,
                     medium_hours: float, lead_time_days: int, now_ms: int) -> tuple[list[dict], dict]:
    """Detect the start of low-stock episodes: one alert per store x SKU episode, not per window.

    An episode starts at the first window (in window order) whose ``stock_level`` is strictly below its
    ``reorder_point`` while the SKU was not already in an episode; it ends at a window whose stock is
    strictly above the reorder point (stock == reorder point keeps the current state: hysteresis).
    Windows older than the last window already evaluated for the key are skipped (late updates do not
    reopen or close episodes), so re-processing a micro-batch against the state it produced emits nothing
    new.

    Args:
        windows: enriched windows (:func:`enrich_windows`).
        state: (store_id, product_id) -> {"in_episode": bool, "episode_start": ms|None,
            "last_window_start": ms|None}; not modified.
        now_ms: alert ``timestamp`` (epoch ms).

    Returns:
        (alerts as dicts matching the ``restock_alert`` contract, new state for the keys seen).
        ``recommended_quantity`` is computed from the window's ``order_velocity`` (units/hour, an anomalous window
        winsorized, :func:`enrich_windows`; its ``sales_velocity`` when the frame has
        none), and the alert carries both rates: ``sales_velocity`` (net trailing rate, the one of cover and
        risk) and ``order_velocity`` (the one the quantity used), so a capped bulk line is visible.
        ``alert_id`` = ``"<store_id>|<product_id>|<episode start window, epoch ms>"`` (deterministic).
    """
    alerts: list[dict] = []
    new_state: dict[tuple[str, str], dict] = {}
    w = windows.sort_values(["store_id", "product_id", "window_start"], kind="mergesort")
    ws_ms = (_ns(w["window_start"]) // 1_000_000).tolist()
    we_ms = (_ns(w["window_end"]) // 1_000_000).tolist()
    order_v = (w["order_velocity"] if "order_velocity" in w else w["sales_velocity"]).tolist()
    cols = zip(w["store_id"].tolist(), w["product_id"].tolist(), ws_ms, we_ms, w["stock_level"].tolist(),
               w["reorder_point"].tolist(), w["hours_of_cover"].tolist(), w["sales_velocity"].tolist(), order_v)
    st: dict | None = None
    key = None
    for store, product, ws, we, stock, rop, cover, velocity, ov in cols:
        if (store, product) != key:
            key = (store, product)
            st = dict(state.get(key, {"in_episode": False, "episode_start": None, "last_window_start": None}))
            new_state[key] = st
        if st["last_window_start"] is not None and ws < st["last_window_start"]:
            continue
        st["last_window_start"] = ws
        if pd.isna(stock) or pd.isna(rop):
            continue
        stock, rop = int(stock), int(rop)
        if not st["in_episode"] and stock < rop:
            cover = None if pd.isna(cover) else float(cover)
            # a window stored before migration 089 has no order rate: its trailing sales rate, as before
            ov = float(velocity) if ov is None or pd.isna(ov) else float(ov)
            st["in_episode"], st["episode_start"] = True, ws
            alerts.append({
                "alert_id": f"{store}|{product}|{ws}", "store_id": store, "product_id": product,
                "current_stock": stock, "reorder_point": rop,
                "recommended_quantity": recommended_quantity(stock, rop, ov, lead_time_days),
                "sales_velocity": float(velocity), "order_velocity": ov, "hours_of_cover": cover,
                "priority": alert_priority(stock, cover, high_hours, medium_hours),
                "window_end": we, "timestamp": now_ms,
            })
        elif st["in_episode"] and stock > rop:
            st["in_episode"], st["episode_start"] = False, None
    return alerts, new_state


def closed_window_stock(windows: pd.DataFrame, anchors: dict[tuple[str, str], int] | None, *,
                        window_len_hours: float, reorder_points: dict[str, int] | None = None) -> pd.DataFrame:
    """The inputs of :func:`restock_episodes` for *closed* windows (window_end at or behind the previous
    micro-batch's watermark, which Spark drops late events by, so no event can change them any more), computed from final values only, so the result does not depend on how the
    input was cut into micro-batches.

    Args:
        windows: closed windows of some store x SKU pairs: ``window_start, window_end`` (UTC timestamps),
            ``store_id, product_id, units_sold, window_stock`` (latest in-window stock, units, nullable),
            ``reorder_point`` (units, nullable), ``sales_velocity`` (the stored trailing rate of
            :func:`enrich_windows`, units/hour: final once the window is closed, since it depends only on the
            key's windows up to the window's end, all closed too, and the sink scores a stored window again
            whenever an earlier one within the trailing span changes).
        anchors: (store_id, product_id) -> stock (units) of the latest closed window with an in-window stock
            before these windows (the carry-forward start), or None.
        window_len_hours: window length, hours (unused since the velocity is the stored trailing rate; kept for
            the callers).
        reorder_points: product_id -> reorder point fallback (reference catalogue).
        An ``order_velocity`` column (units/hour, :func:`enrich_windows`) is passed through as float.

    Returns:
        the windows sorted by store, product, window_start + ``stock_level`` (carried forward, nullable),
        ``reorder_point`` (carried forward, fallback), ``sales_velocity`` (units/hour, as given),
        ``hours_of_cover`` (stock_level / sales_velocity).
    """
    w = windows.sort_values(["store_id", "product_id", "window_start"], kind="mergesort").reset_index(drop=True)
    if w.empty:
        return w.assign(stock_level=[], sales_velocity=[], hours_of_cover=[])
    keys = list(zip(w["store_id"], w["product_id"]))
    stock = w["window_stock"].astype("Float64")
    first = pd.Series([i == 0 or keys[i] != keys[i - 1] for i in range(len(w))])
    anchor = pd.Series([(anchors or {}).get(k) for k in keys], dtype="Float64")
    # carry forward inside each key, starting from the anchor at the key's first window
    seeded = stock.where(stock.notna() | ~first, anchor)
    w["stock_level"] = seeded.groupby(pd.Series(keys, dtype=object).astype(str)).ffill()
    rop = w["reorder_point"].astype("Float64").groupby(pd.Series(keys, dtype=object).astype(str)).ffill()
    if reorder_points:
        rop = rop.where(rop.notna(), w["product_id"].map(reorder_points).astype("Float64"))
    w["reorder_point"] = rop
    w["sales_velocity"] = w["sales_velocity"].astype(float)
    if "order_velocity" in w:
        w["order_velocity"] = w["order_velocity"].astype(float)
    w["hours_of_cover"] = [hours_of_cover(None if pd.isna(s) else float(s), v)
                           for s, v in zip(w["stock_level"], w["sales_velocity"])]
    return w


def utc_now_ms() -> int:
    """Current wall time, epoch milliseconds UTC."""
    return int(datetime.now(timezone.utc).timestamp() * 1000)
