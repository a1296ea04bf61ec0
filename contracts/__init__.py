"""Event contracts: the Avro schemas in ``contracts/schemas/*.avsc`` are the single source of truth.

Producers validate every record here before sending; the Spark job derives its parse schema from the
same files (``streaming.schema``). Unknown fields are rejected (fastavro lets them pass).
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.validation import ValidationError as _AvroValidationError
from fastavro.validation import validate

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

#: event type -> (schema file stem, topic suffix)
EVENT_TYPES: dict[str, str] = {
    "sales_transaction": "sales-transactions",
    "inventory_update": "inventory-updates",
    "price_change": "price-changes",
    "customer_event": "customer-events",
    "restock_alert": "restock-alerts",
}
#: topic suffix -> partitions
TOPIC_PARTITIONS: dict[str, int] = {
    "sales-transactions": 3, "inventory-updates": 3, "price-changes": 2,
    "customer-events": 1, "restock-alerts": 1, "dead-letter": 1,
}
DEAD_LETTER = "dead-letter"

#: Stock-out risk vocabulary shared by the stream (hours of cover), the batch stock optimisation (stock
#: against lead-time demand and reorder point) and every dashboard: worst first. UNKNOWN only where no
#: stock level is known yet (stream).
RISK_HIGH, RISK_MEDIUM, RISK_LOW, RISK_UNKNOWN = "HIGH", "MEDIUM", "LOW", "UNKNOWN"
RISK_LEVELS: tuple[str, ...] = (RISK_HIGH, RISK_MEDIUM, RISK_LOW, RISK_UNKNOWN)


class ContractError(ValueError):
    """A record does not satisfy its event contract; ``str(err)`` is the reason."""


@functools.lru_cache(maxsize=None)
def raw_schema(event_type: str) -> dict[str, Any]:
    """The JSON of ``schemas/<event_type>.avsc``. Raises KeyError for an unknown event type."""
    if event_type not in EVENT_TYPES:
        raise KeyError(f"unknown event type {event_type!r}; known: {sorted(EVENT_TYPES)}")
    return json.loads((SCHEMA_DIR / f"{event_type}.avsc").read_text())


@functools.lru_cache(maxsize=None)
def parsed_schema(event_type: str):
    """fastavro-parsed schema of an event type (cached per type).

    Raises:
        KeyError: an unknown event type (not in :data:`EVENT_TYPES`; from :func:`raw_schema`).
    """
    return parse_schema(raw_schema(event_type))


def field_names(event_type: str) -> list[str]:
    """Field names of an event type's schema, in schema order (a new list per call).

    Raises:
        KeyError: an unknown event type (not in :data:`EVENT_TYPES`; from :func:`raw_schema`).
    """
    return list(_field_names(event_type))


@functools.lru_cache(maxsize=None)
def _field_names(event_type: str) -> tuple[str, ...]:
    return tuple(f["name"] for f in raw_schema(event_type)["fields"])


def enum_symbols(event_type: str, field: str) -> tuple[str, ...]:
    """The symbols of an enum field of an event type, in schema order, read from its ``.avsc`` (the one source of
    enum values: producers draw from it, :func:`require_symbols` checks the fixed values they emit against it).

    Raises:
        KeyError: an unknown event type, or ``field`` is not an enum field of it (nullable enums included).
    """
    for f in raw_schema(event_type)["fields"]:
        if f["name"] != field:
            continue
        for t in f["type"] if isinstance(f["type"], list) else [f["type"]]:
            if isinstance(t, dict) and t.get("type") == "enum":
                return tuple(t["symbols"])
        raise KeyError(f"{event_type}.{field} is not an enum field")
    raise KeyError(f"{event_type} has no field {field!r}")


def require_symbols(event_type: str, field: str, used, *, user: str) -> tuple[str, ...]:
    """Check that every value in ``used`` (the fixed enum values a producer emits) is a symbol of
    ``event_type.field`` (:func:`enum_symbols`); returns the schema's symbols.

    Raises:
        ContractError: naming ``user``, the values the schema lacks and its symbols (a renamed or removed symbol
            fails the producer at start instead of dead-lettering its records one by one).
    """
    symbols = enum_symbols(event_type, field)
    missing = [u for u in used if u not in symbols]
    if missing:
        raise ContractError(f"{user} emits {event_type}.{field} value(s) {missing} that "
                            f"{event_type}.avsc does not define (symbols: {list(symbols)}); "
                            "update the producer with the contract")
    return symbols


@functools.lru_cache(maxsize=None)
def _field_set(event_type: str) -> frozenset[str]:
    """Field names as a set, computed once per event type (the unknown-field check runs per record)."""
    return frozenset(_field_names(event_type))


def validate_event(event_type: str, record: dict[str, Any], *, now_ms: int | None = None,
                   max_future_minutes: int | None = None) -> None:
    """Validate one record against its Avro schema (unknown fields rejected), then :func:`rule_violations`
    (ids, event time within [2000-01-01, now + STREAM_MAX_FUTURE_MINUTES], numeric bounds).

    Raises:
        ContractError: with a reason naming the field(s).
    """
    known = _field_set(event_type)
    if not known.issuperset(record):
        extra = set(record) - known
        raise ContractError(f"unknown field(s) {sorted(extra)} for {event_type}")
    pre = _pre_avro_problems(event_type, record)
    if pre:
        raise ContractError("; ".join(pre))
    # the schema is parsed once per event type (parsed_schema is cached); fastavro's compiled validator
    # runs on every record: the contract applies to each one, there is no sampling
    if not validate(record, parsed_schema(event_type), raise_errors=False):
        try:  # slow path only for the reason (~3x): raise_errors=True builds an exception per union branch
            validate(record, parsed_schema(event_type), raise_errors=True)
        except _AvroValidationError as exc:
            raise ContractError(f"{event_type} fails its Avro schema: {exc}") from None
        raise ContractError(f"{event_type} fails its Avro schema")  # fastavro gave no detail
    problems = rule_violations(event_type, record, now_ms=now_ms, max_future_minutes=max_future_minutes)
    if problems:
        raise ContractError("; ".join(problems))


#: rules beside the Avro schemas, shared by the producers (dead-letter topic) and the stream (quarantine,
#: ``streaming.transforms.validate_events``), one definition each:
#:
#: * ids (``*_id`` string fields) of input events are not blank (white space / control characters only), at most
#:   ID_MAX_CHARS characters, free of control/format characters (Unicode categories Cc, Cf) and unpaired surrogates
#:   (Cs; a JSON value holding one is rejected whole, :data:`LONE_SURROGATE_REASON`), and neither start nor end
#:   with white space (:func:`white_space_chars`: " SKU-1" would be a second series beside "SKU-1"); case is kept
#:   (ids are case-sensitive);
#: * event times (``timestamp``, epoch ms UTC) are not before MIN_EVENT_TIME_MS (2000-01-01) and not more than
#:   ``STREAM_MAX_FUTURE_MINUTES`` (core.settings) after *now*;
#: * numbers lie within :data:`NUMERIC_BOUNDS` (units / currency units below), finite, quantity of a POS line != 0;
#: * a JSON value has each top-level key once (:func:`parse_json_object`; the stream: ``duplicate JSON key(s)``).
ID_MAX_CHARS = 64
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z; the UCI replay's 2009-2011 dates stay valid
#: event types the rules apply to (the platform's own restock alerts are built from checked ids)
RULE_TYPES = ("sales_transaction", "inventory_update", "price_change", "customer_event")

#: largest |quantity| of one POS line, units (the full UCI log's largest line is 80,995 units)
QUANTITY_MAX = 100_000
#: largest stock figure, units: new_quantity, |quantity_change| and reorder_point of an inventory update
STOCK_MAX = 10_000_000
#: largest price per unit, store currency units (unit_price of a sale, old/new price of a price change)
PRICE_MAX = 100_000.0


@dataclass(frozen=True)
class Bound:
    """Closed range ``[lo, hi]`` of a numeric field (NaN and +-inf are outside every range).

    Attributes:
        field: contract field name.
        lo, hi: inclusive bounds in ``unit``.
        unit: unit of the field (``"units"`` = items of stock, ``"currency units"`` = store currency per unit).
        nonzero: 0 is not allowed either (a POS line of quantity 0 is no sale and no return).
    """

    field: str
    lo: float
    hi: float
    unit: str
    nonzero: bool = False

    @property
    def reason(self) -> str:
        """Reason of a value outside the range, e.g. ``unit_price must be within [0, 100000] currency units``."""
        return f"{self.field} must be within [{_num(self.lo)}, {_num(self.hi)}] {self.unit}"

    @property
    def zero_reason(self) -> str:
        """Reason of a value 0 where :attr:`nonzero` forbids it, e.g. ``quantity must not be 0`` (producers:
        :func:`rule_violations`; stream: ``streaming.transforms``). The text does not depend on ``nonzero``."""
        return f"{self.field} must not be 0"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


#: event type -> numeric bounds, checked by producers (:func:`rule_violations`) and stream alike
NUMERIC_BOUNDS: dict[str, tuple[Bound, ...]] = {
    "sales_transaction": (Bound("quantity", -QUANTITY_MAX, QUANTITY_MAX, "units", nonzero=True),
                          Bound("unit_price", 0, PRICE_MAX, "currency units")),
    "inventory_update": (Bound("quantity_change", -STOCK_MAX, STOCK_MAX, "units"),
                         Bound("new_quantity", 0, STOCK_MAX, "units"),
                         Bound("reorder_point", 0, STOCK_MAX, "units")),
    "price_change": (Bound("old_price", 0, PRICE_MAX, "currency units"),
                     Bound("new_price", 0, PRICE_MAX, "currency units")),
    "customer_event": (),
}


def _pre_avro_problems(event_type: str, record: dict[str, Any]) -> list[str]:
    """Problems the Avro check would hide or mis-state, found before it runs.

    * An event time (``timestamp-millis`` field) that is not an integer: fastavro accepts a ``datetime`` there
      and converts it, so the event-time rules would be skipped and the JSON sent would hold a text the stream
      (and :func:`check_payload`) rejects: ``timestamp must be an integer (epoch ms UTC), got datetime``.
    * A number outside its :data:`NUMERIC_BOUNDS` range that Avro's ``int`` cannot hold either (beyond 32 bits):
      fastavro's message (``... expected int``) reads as if the value were not an integer; the range's own
      reason (``quantity must be within [-100000, 100000] units``) says what is wrong.
    """
    out = []
    for f in _timestamp_fields(event_type):
        v = record.get(f)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            out.append(f"{f} must be an integer (epoch ms UTC), got {type(v).__name__}")
    for b in NUMERIC_BOUNDS.get(event_type, ()):
        v = record.get(b.field)
        if isinstance(v, int) and not isinstance(v, bool) and not -2 ** 31 <= v < 2 ** 31 and not b.lo <= v <= b.hi:
            out.append(b.reason)
    return out


@functools.lru_cache(maxsize=None)
def _timestamp_fields(event_type: str) -> tuple[str, ...]:
    out = []
    for f in raw_schema(event_type)["fields"]:
        for t in f["type"] if isinstance(f["type"], list) else [f["type"]]:
            if isinstance(t, dict) and t.get("logicalType") == "timestamp-millis":
                out.append(f["name"])
    return tuple(out)


def future_reason(field: str, max_future_minutes: int) -> str:
    """Reason of an event time more than ``max_future_minutes`` ahead of now (same text in producers and stream)."""
    return f"{field} more than STREAM_MAX_FUTURE_MINUTES={max_future_minutes} in the future"


def duplicate_keys_reason(keys: list[str]) -> str:
    """Reason of a JSON object with repeated top-level keys (``keys``: each repeated key once, in order)."""
    return "duplicate JSON key(s): " + ",".join(keys)


def default_max_future_minutes() -> int:
    """``STREAM_MAX_FUTURE_MINUTES`` from the platform settings (the stream reads the same setting)."""
    from core.settings import get_settings

    return int(get_settings().stream_max_future_minutes)


def id_fields(event_type: str) -> list[str]:
    """The fields named ``*_id`` whose type is or includes ``string`` (nullable ids too), in schema order, of an
    event type (e.g. ``transaction_id, store_id, product_id``); a new list per call.

    Raises:
        KeyError: an unknown event type (not in :data:`EVENT_TYPES`; from :func:`raw_schema`).
    """
    return list(_id_fields(event_type))


@functools.lru_cache(maxsize=None)
def _id_fields(event_type: str) -> tuple[str, ...]:
    out = []
    for f in raw_schema(event_type)["fields"]:
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if f["name"].endswith("_id") and "string" in types:
            out.append(f["name"])
    return tuple(out)


def _id_problem(name: str, v: str) -> str | None:
    """The id rule's reason for value ``v`` of field ``name``, or None (see :func:`rule_violations`).

    One reason per id, the first that applies in this order (the stream's check, ``streaming.transforms``,
    gives the same one): ``<name> is empty``, ``<name> longer than 64 characters``, ``<name> contains control
    characters``, ``<name> has leading or trailing white space``, ``<name> contains an unpaired UTF-16
    surrogate``."""
    if v.isascii() and v.isprintable():
        # fast path, same verdicts: printable ASCII holds no Cc/Cf character and its only Z-category
        # character is the space (Zs); the general loop below decides every other string
        if not v.strip(" "):
            return f"{name} is empty"
        if len(v) > ID_MAX_CHARS:
            return f"{name} longer than {ID_MAX_CHARS} characters"
        if v[0] == " " or v[-1] == " ":
            return f"{name} has leading or trailing white space"
        return None
    if all(ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc") for ch in v):
        return f"{name} is empty"  # nothing but white space / control characters (stream: [\p{Z}\p{Cc}]*)
    if len(v) > ID_MAX_CHARS:
        return f"{name} longer than {ID_MAX_CHARS} characters"
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in v):
        return f"{name} contains control characters"
    ws = white_space_chars()
    if v[0] in ws or v[-1] in ws:
        return f"{name} has leading or trailing white space"
    if _SURROGATE.search(v):
        return f"{name} contains an unpaired UTF-16 surrogate"
    return None


@functools.cache
def white_space_chars() -> frozenset[str]:
    """The characters an id must not start or end with: every code point Python's ``str.isspace`` calls white
    space (Unicode categories Zs, Zl, Zp, e.g. U+00A0 no-break space, U+3000, U+2028, and the Cc characters
    tab, line feed ... U+001C-U+001F, U+0085), 29 in Python 3.11's Unicode 14. ``str.strip()`` removes exactly
    these (the UCI replay strips its ids with it). The stream tests an id's first and last character against the
    same set (``streaming.transforms``). Format characters (Cf: U+200B, U+FEFF, U+180E) are not white space here:
    the control-character rule rejects them anywhere in an id."""
    return frozenset(ch for ch in map(chr, range(0x110000))
                     if ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp"))


@functools.cache
def control_char_class() -> str:
    """A Java regex character class (``\\x{H}`` ranges) of every code point this Python's ``unicodedata`` puts
    in category Cc or Cf: the characters :func:`_id_problem` calls control characters. The stream tests ids with
    it (``streaming.transforms``), so both sides judge with one Unicode table: the JVM's ``\\p{Cf}`` follows
    Java 17's Unicode 13, Python 3.11's is Unicode 14, and U+0890 / U+0891 (Cf since 14) passed the stream while
    the producers refused them."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)) in ("Cc", "Cf"):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "[" + "".join(f"\\x{{{a:X}}}" + (f"-\\x{{{b:X}}}" if b > a else "") for a, b in ranges) + "]"


def rule_violations(event_type: str, record: dict[str, Any], *, now_ms: int | None = None,
                    max_future_minutes: int | None = None) -> list[str]:
    """Reasons a schema-valid record breaks the shared id, event-time and numeric rules ([] when none).

    Args:
        now_ms: "now" for the upper event-time bound, epoch ms UTC (default: the wall clock).
        max_future_minutes: allowed lead of an event time over now, minutes (default: the setting
            ``STREAM_MAX_FUTURE_MINUTES``, :func:`default_max_future_minutes`).
    """
    if event_type not in RULE_TYPES:
        return []
    out = []
    for name in _id_fields(event_type):
        v = record.get(name)
        if v is None:
            continue
        problem = _id_problem(name, v)
        if problem is not None:
            out.append(problem)
    ts = record.get("timestamp")
    if isinstance(ts, int):
        if ts < MIN_EVENT_TIME_MS:
            out.append("timestamp before 2000-01-01")
        if max_future_minutes is None:
            max_future_minutes = default_max_future_minutes()
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        if ts > now + max_future_minutes * 60_000:
            out.append(future_reason("timestamp", max_future_minutes))
    for b in NUMERIC_BOUNDS.get(event_type, ()):
        v = record.get(b.field)
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # absent/null optional field, or a type error the Avro schema reports
        if not (math.isfinite(v) and b.lo <= v <= b.hi):
            out.append(b.reason)
        elif b.nonzero and v == 0:
            out.append(b.zero_reason)
    return out


def parse_json_object(raw: bytes | str) -> dict[str, Any]:
    """Decode one Kafka value the way the stream does, strictly: UTF-8, RFC 8259 JSON (no NaN/Infinity), a JSON
    object, each key once at every level (``json.loads`` would keep the last of repeated keys silently).

    Raises:
        ContractError: ``value is not valid UTF-8``, ``malformed JSON: ...``, ``value is not a JSON object`` or
            :func:`duplicate_keys_reason`.
    """
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ContractError("value is not valid UTF-8") from None
    dups: list[str] = []

    def pairs(items):
        seen: dict[str, Any] = {}
        for k, v in items:
            if k in seen and k not in dups:
                dups.append(k)
            seen[k] = v
        return seen

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(raw, object_pairs_hook=pairs, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise ContractError(f"malformed JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ContractError("malformed JSON: value is not a JSON object")
    if dups:
        raise ContractError(duplicate_keys_reason(dups))
    if ("\\u" in raw or not raw.isascii()) and _holds_surrogate(value):
        raise ContractError(LONE_SURROGATE_REASON)
    return value


#: a code point U+D800..U+DFFF: in a decoded Python str always an unpaired surrogate (json.loads joins a
#: high + low escape pair into one code point)
_SURROGATE = re.compile("[\ud800-\udfff]")
#: reason of a JSON value holding a \uD800-\uDFFF escape that is not half of a surrogate pair. RFC 8259 section
#: 8.2 leaves such a string's meaning unpredictable: json.loads keeps the lone code point (which UTF-8 cannot
#: encode: a Kafka key built from it fails), Spark turns it into "?" (so two distinct ids would become one and
#: the stream's dedup would drop one). Producers and stream both reject it (``streaming.transforms``: the same
#: rule on the raw text, :data:`SURROGATE_ESCAPE_PAIR` / :data:`SURROGATE_ESCAPE`).
LONE_SURROGATE_REASON = "value holds an unpaired UTF-16 surrogate (\\uD800-\\uDFFF escape)"
#: Java / Python regex of a JSON high + low surrogate escape pair (removed before :data:`SURROGATE_ESCAPE` is
#: searched; escaped backslashes are removed first, so every remaining backslash starts an escape)
SURROGATE_ESCAPE_PAIR = r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
#: Java / Python regex of any JSON surrogate escape
SURROGATE_ESCAPE = r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"


def _holds_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a surrogate code point in any key or string, at any depth (iterative:
    json.loads' own nesting limit is the only bound)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def check_payload(event_type: str, raw: bytes | str, *, now_ms: int | None = None,
                  max_future_minutes: int | None = None) -> dict[str, Any]:
    """A raw Kafka value of ``event_type`` -> the record, after :func:`parse_json_object` and
    :func:`validate_event` (producers route a ContractError to the dead-letter topic).

    Raises:
        ContractError: the reason.
    """
    record = parse_json_object(raw)
    validate_event(event_type, record, now_ms=now_ms, max_future_minutes=max_future_minutes)
    return record
