"""Event contracts: the Avro schemas in ``contracts/schemas/*.avsc`` are the single source of truth.

Producers validate every record here before sending; the Spark job derives its parse schema from the
same files (``streaming.schema``). Unknown fields are rejected (fastavro lets them pass).
"""

from __future__ import annotations

import functools
import json
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
    """fastavro-parsed schema of an event type."""
    return parse_schema(raw_schema(event_type))


def field_names(event_type: str) -> list[str]:
    """Field names in schema order."""
    return [f["name"] for f in raw_schema(event_type)["fields"]]


def validate_event(event_type: str, record: dict[str, Any]) -> None:
    """Validate one record against its Avro schema; unknown fields are rejected.

    Raises:
        ContractError: with a reason naming the field(s).
    """
    extra = set(record) - set(field_names(event_type))
    if extra:
        raise ContractError(f"unknown field(s) {sorted(extra)} for {event_type}")
    if not validate(record, parsed_schema(event_type), raise_errors=False):
        try:  # slow path only for the reason (~3x): raise_errors=True builds an exception per union branch
            validate(record, parsed_schema(event_type), raise_errors=True)
        except _AvroValidationError as exc:
            raise ContractError(f"{event_type} fails its Avro schema: {exc}") from None
        raise ContractError(f"{event_type} fails its Avro schema")  # fastavro gave no detail
    problems = rule_violations(event_type, record)
    if problems:
        raise ContractError("; ".join(problems))


#: rules beside the Avro schemas, shared by the producers (dead-letter topic) and the stream (quarantine,
#: ``streaming.transforms.validate_events``): ids of input events are non-empty, at most ID_MAX_CHARS characters
#: and free of control/format characters (Unicode categories Cc, Cf); event times are not before 2000-01-01.
ID_MAX_CHARS = 64
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z; the UCI replay's 2009-2011 dates stay valid
#: event types the rules apply to (the platform's own restock alerts are built from checked ids)
RULE_TYPES = ("sales_transaction", "inventory_update", "price_change", "customer_event")


def id_fields(event_type: str) -> list[str]:
    """The string fields named ``*_id`` of an event type (e.g. ``transaction_id, store_id, product_id``)."""
    out = []
    for f in raw_schema(event_type)["fields"]:
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if f["name"].endswith("_id") and "string" in types:
            out.append(f["name"])
    return out


def rule_violations(event_type: str, record: dict[str, Any]) -> list[str]:
    """Reasons a schema-valid record breaks the shared id and event-time rules ([] when none)."""
    import unicodedata

    if event_type not in RULE_TYPES:
        return []
    out = []
    for name in id_fields(event_type):
        v = record.get(name)
        if v is None:
            continue
        if not v.strip():
            out.append(f"{name} is empty")
        elif len(v) > ID_MAX_CHARS:
            out.append(f"{name} longer than {ID_MAX_CHARS} characters")
        elif any(unicodedata.category(ch) in ("Cc", "Cf") for ch in v):
            out.append(f"{name} contains control characters")
    ts = record.get("timestamp")
    if isinstance(ts, int) and ts < MIN_EVENT_TIME_MS:
        out.append("timestamp before 2000-01-01")
    return out
