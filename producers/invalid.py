"""Deliberately invalid records, to prove the dead-letter path end to end.

:func:`corrupt` breaks one record so that it fails its Avro contract in a known way;
:func:`inject_invalid` interleaves such broken copies into an event stream at a given rate.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Iterable, Iterator

from contracts import field_names

#: event type -> (an enum field, a numeric field, a required string field)
_FIELDS = {
    "sales_transaction": ("payment_method", "quantity", "store_id"),
    "inventory_update": ("reason", "quantity_change", "store_id"),
    "price_change": ("reason", "new_price", "product_id"),
    "customer_event": ("event_type", "timestamp", "customer_id"),
    "restock_alert": ("priority", "current_stock", "store_id"),
}
CORRUPTIONS = ("wrong_type", "missing_field", "unknown_field", "bad_enum", "null_required")


def corrupt(event_type: str, record: dict[str, Any], kind: str) -> dict[str, Any]:
    """A copy of ``record`` broken by ``kind`` (one of :data:`CORRUPTIONS`); its id field gets an
    ``INVALID-`` prefix so it can never collide with the valid original. Raises KeyError on bad kind."""
    enum_f, num_f, str_f = _FIELDS[event_type]
    bad = copy.deepcopy(record)
    id_field = field_names(event_type)[0]
    bad[id_field] = f"INVALID-{bad.get(id_field)}"
    if kind == "wrong_type":
        bad[num_f] = str(bad.get(num_f))          # e.g. quantity "3" instead of 3
    elif kind == "missing_field":
        bad.pop(str_f, None)
    elif kind == "unknown_field":
        bad["coupon_code"] = "FREE100"
    elif kind == "bad_enum":
        bad[enum_f] = "NOT_A_SYMBOL"
    elif kind == "null_required":
        bad[num_f] = None
    else:
        raise KeyError(f"unknown corruption {kind!r}; known: {CORRUPTIONS}")
    return bad


def inject_invalid(events: Iterable[tuple[str, dict[str, Any]]], rate: float, seed: int = 0,
                   counter: dict[str, int] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield every event unchanged and, after each with probability ``rate`` (0..1), a corrupted copy.

    ``counter`` (optional dict) receives per-corruption counts under ``invalid_injected``/``kind``.
    """
    if not 0 <= rate <= 1:
        raise ValueError("invalid rate must be within [0, 1]")
    rng = random.Random(seed)
    for event_type, record in events:
        yield event_type, record
        if rate and rng.random() < rate:
            kind = CORRUPTIONS[rng.randrange(len(CORRUPTIONS))]
            if counter is not None:
                counter[kind] = counter.get(kind, 0) + 1
            yield event_type, corrupt(event_type, record, kind)
