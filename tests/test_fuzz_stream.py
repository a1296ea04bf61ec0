"""Property-based fuzzing of the stream (issue 10, part 6): Hypothesis generates >= 10,000 malformed and edge-case
Kafka values for the four input topics (arbitrary bytes and text, JSON of the wrong shape, wrong types, nulls,
missing/unknown fields, duplicate keys, valid events of another type, ISO times with offsets, ids that are huge, empty, hold control characters or start/end with
white space of any Unicode kind, extreme and non-finite numbers, bad timestamps), plus a few near the broker's 1 MB limit and tombstones. They are sent in
bulk with 300 known-valid sales interleaved, then the real stream (real Kafka, Spark, ClickHouse endpoint, MinIO)
drains everything once (available-now) and must:

* stay up (no query error);
* account for every record: each offset is in the lake (valid) or in ``quarantine_events`` with a non-empty
  reason, or was dropped as a duplicate event id (counted in the query progress); nothing twice;
* agree with the producers' validation (``contracts.check_payload``, the same rules) record by record;
* count every valid sale in the windows (the 300 known ones and the fuzz records that happen to be valid).

Per Hypothesis example the producer side is checked too: ``check_payload`` returns a record or raises
``ContractError``, never anything else.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, Phase, given, settings as hsettings, strategies as st

pytestmark = pytest.mark.integration

N_FUZZ = 10_000
N_VALID = 300
INPUT_TYPES = ["sales_transaction", "inventory_update", "price_change", "customer_event"]
NOW_MS = int(datetime.now(timezone.utc).timestamp() * 1000)
BASE_TS = NOW_MS - 2 * 3_600_000


def base_record(event_type: str, i: int) -> dict:
    """A valid record of each input type (ids made unique by ``i``)."""
    ts = BASE_TS - i
    return {
        "sales_transaction": {"transaction_id": f"F{i}", "store_id": "S1", "product_id": "P1", "quantity": 2,
                              "unit_price": 1.25, "timestamp": ts, "customer_id": None, "payment_method": "CARD",
                              "invoice_id": None},
        "inventory_update": {"inventory_id": f"FI{i}", "store_id": "S1", "product_id": "P1", "quantity_change": -1,
                             "new_quantity": 9, "reason": "SALE", "reorder_point": 5, "timestamp": ts},
        "price_change": {"price_change_id": f"FP{i}", "store_id": "S1", "product_id": "P1", "old_price": 1.0,
                         "new_price": 0.9, "reason": "PROMOTION", "timestamp": ts},
        "customer_event": {"event_id": f"FC{i}", "customer_id": "C1", "store_id": "S1", "event_type": "STORE_VISIT",
                           "product_id": None, "timestamp": ts},
    }[event_type]


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                            st.dictionaries(st.text(max_size=5), c, max_size=3)),
                           max_leaves=6)
#: white space of every kind (Zs incl. NBSP, Zl, Zp, the Cc ones) and format characters that look like it (Cf)
SPACES = " \u00a0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000\t\x85\x1f\u180e\u200b\ufeff"
ids = st.one_of(st.text(max_size=80), st.just(""), st.just("   "), st.text(min_size=65, max_size=300),
                st.sampled_from(["S\x001", "S\u200b1", "\ufeffS1", "S\n", "\x7f", "é" * 64, "S" * 64, " SKU-1",
                                 "SKU-1 ", "S1\u00a0", "\u2028", "\u3000", "\u180e", "\u200b", "\ufeff"]),
                # an id with white space before / after it (a second series beside the trimmed id), or only that
                st.builds(lambda a, t, b: a + t + b, st.text(SPACES, max_size=2), st.text(max_size=10),
                          st.text(SPACES, max_size=2)),
                st.text(SPACES, min_size=1, max_size=4))
numbers = st.one_of(st.integers(min_value=-(2 ** 64), max_value=2 ** 64),
                    st.sampled_from([0, -1, 100_000, 100_001, -100_001, 10_000_000, 10_000_001, 2 ** 31 - 1, 2 ** 31,
                                     -(2 ** 31) - 1, 0.5, -0.0, 1e308, -1e308, 1e-320]),
                    st.floats(allow_nan=True, allow_infinity=True))
timestamps = st.one_of(st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
                       st.sampled_from([-1, 0, 946_684_799_999, 946_684_800_000, 1_291_161_600_000,
                                        NOW_MS + 59 * 60_000, NOW_MS + 180 * 60_000, 2 ** 53]),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=25),
                       # ISO texts with offsets other than Z, a leap second, and epoch ms as a string
                       st.sampled_from(["2026-12-06T10:00:00+02:00", "2026-12-06T10:00:00-05:30",
                                        "2016-12-31T23:59:60Z", "2026-12-06T10:00:00Z", str(BASE_TS)]))


def render(rec: dict, dup: str | None = None, dup_value=None) -> str:
    """JSON text of ``rec`` (NaN/Infinity tokens allowed: invalid JSON to a strict parser), optionally with the
    key ``dup`` repeated (value ``dup_value``) after the others."""
    text = json.dumps(rec, allow_nan=True)
    if dup is None:
        return text
    extra = f"{json.dumps(dup)}: {json.dumps(dup_value, allow_nan=True)}"
    return text[:-1] + (", " if len(rec) else "") + extra + "}"


@st.composite
def payloads(draw) -> tuple[str, bytes | None]:
    """(event type, Kafka value bytes or None for a tombstone)."""
    et = draw(st.sampled_from(INPUT_TYPES))
    kind = draw(st.sampled_from(["bytes", "text", "json_value", "mutate", "mutate", "mutate", "mutate", "dup_key",
                                 "valid", "tombstone", "pad_id", "other_topic"]))
    if kind == "tombstone":
        return et, None
    if kind == "other_topic":   # a valid event of another input type on this topic
        other = draw(st.sampled_from([t for t in INPUT_TYPES if t != et]))
        return et, render(base_record(other, draw(st.integers(min_value=0, max_value=10 ** 9)))).encode()
    if kind == "bytes":
        return et, draw(st.binary(max_size=200))
    if kind == "text":
        return et, draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "json_value":
        return et, json.dumps(draw(json_values), allow_nan=True).encode()
    rec = base_record(et, draw(st.integers(min_value=0, max_value=10 ** 9)))
    if kind == "pad_id":  # a valid record but for white space around one id (or an id of white space only)
        field = draw(st.sampled_from([f for f in rec if f.endswith("_id") and rec[f] is not None]))
        rec[field] = draw(st.one_of(st.builds(lambda a, b: a + rec[field] + b, st.text(SPACES, max_size=2),
                                              st.text(SPACES, max_size=2)),
                                    st.text(SPACES, min_size=1, max_size=3)))
        return et, render(rec).encode()
    if kind == "dup_key":
        key = draw(st.sampled_from(list(rec)))
        return et, render(rec, key, draw(st.one_of(st.just(rec[key]), json_values))).encode()
    if kind == "mutate":
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            field = draw(st.sampled_from(list(rec) + ["coupon"]))
            how = draw(st.sampled_from(["drop", "null", "wrong", "id", "number", "timestamp"]))
            if how == "drop":
                rec.pop(field, None)
            elif how == "null":
                rec[field] = None
            elif how == "wrong":
                rec[field] = draw(json_values)
            elif how == "id":
                rec[field] = draw(ids)
            elif how == "number":
                rec[field] = draw(numbers)
            else:
                rec["timestamp"] = draw(timestamps)
    return et, render(rec).encode("utf-8", "surrogatepass")


@st.composite
def variants(draw) -> list[tuple[str, bytes | None]]:
    """One :func:`payloads` value and three edge cases derived from it with drawn positions: cut short, one byte
    replaced (often breaking UTF-8 or the JSON), and the JSON text with a key repeated or trailing data."""
    et, value = draw(payloads())
    if value is None:
        return [(et, None), (et, b""), (et, b"null"), (et, b"{}")]
    cut = draw(st.integers(min_value=0, max_value=max(0, len(value) - 1)))
    pos = draw(st.integers(min_value=0, max_value=max(0, len(value) - 1)))
    byte = draw(st.integers(min_value=0, max_value=255))
    flipped = value[:pos] + bytes([byte]) + value[pos + 1:] if value else bytes([byte])
    tail = draw(st.sampled_from([b"}", b' "x"', b', "timestamp": 1}', b"\x00", b" ", b"{}"]))
    extra = value[:-1] + b', "' + draw(st.sampled_from([b"store_id", b"timestamp", b"quantity", b"zz"])) + \
        b'": 0}' if value.endswith(b"}") else value + tail
    return [(et, value), (et, value[:cut]), (et, flipped), (et, extra)]


class _Enough(Exception):
    """Raised inside the Hypothesis test once ``n`` distinct payloads are collected (ends generation early)."""


def generate(n: int) -> list[tuple[str, bytes | None]]:
    """Run Hypothesis over :func:`variants` until ``n`` *distinct* payloads are collected (4 per example keeps
    Hypothesis' per-example cost at a quarter); each is checked on the producer side (``contracts.check_payload``
    returns or raises ContractError only)."""
    from contracts import ContractError, check_payload

    out: dict[tuple[str, bytes | None], None] = {}

    @hsettings(max_examples=n, database=None, deadline=None, derandomize=True, print_blob=False,
               suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(variants())
    def collect(batch):
        for et, value in batch:
            if value is not None:
                try:
                    check_payload(et, value, now_ms=NOW_MS, max_future_minutes=60)
                except ContractError:
                    pass
            out[(et, value)] = None
        if len(out) >= n:
            raise _Enough

    try:
        collect()
    except _Enough:
        pass
    return list(out)


def edge_cases() -> list[tuple[str, bytes | None]]:
    """Values Hypothesis does not reach in a CI budget: near the broker's 1 MB limit, a 1 MB id."""
    rng = random.Random(5)
    big_id = dict(base_record("sales_transaction", 1), transaction_id="X" * 900_000)
    return [("sales_transaction", rng.randbytes(900_000)), ("inventory_update", json.dumps(big_id).encode()),
            ("price_change", b"{" * 100_000), ("customer_event", b"[" * 50_000 + b"]" * 50_000),
            ("sales_transaction", b"\x00" * 1000), ("sales_transaction", b""),
            ("inventory_update", b'{"inventory_id": "\xed\xa0\x80"}'),  # an encoded surrogate: not UTF-8
            # surrogate escapes (json.dumps writes \uXXXX): unpaired high / low (rejected), a pair and an escaped
            # backslash before "ud800" (valid)
            ("sales_transaction", json.dumps(dict(base_record("sales_transaction", 2), store_id="S\ud800")).encode()),
            ("price_change", json.dumps(dict(base_record("price_change", 3), product_id="P\udc00")).encode()),
            ("customer_event", json.dumps(dict(base_record("customer_event", 4), customer_id="C\U0001F600")).encode()),
            ("inventory_update", json.dumps(dict(base_record("inventory_update", 5), store_id="S\\ud800")).encode())]


def contract_key(event_type: str, value: bytes | None, i: int) -> bytes | None:
    """The key a producer gives the value (core.kafka.event_key of its JSON object, as the stream checks it); for a
    value that is not one, no key or a junk one (it is quarantined for its own reasons); a tombstone (value None)
    always a junk one: Kafka refuses a record with neither (kafka-python: 'Need at least one: key or value')."""
    from core.kafka import event_key

    try:
        key = event_key(event_type, json.loads(value))
    except (TypeError, ValueError, RecursionError):
        key = None
    if key is None:
        return None if i % 7 == 0 and value is not None else b"k"
    return key.encode("utf-8", "surrogatepass")


def _passes(event_type: str, value: bytes, now_ms: int) -> bool:
    """Whether the producers' rules accept ``value`` as an ``event_type`` event at ``now_ms``."""
    from contracts import ContractError, check_payload

    try:
        check_payload(event_type, value, now_ms=now_ms, max_future_minutes=60)
        return True
    except ContractError:
        return False


def test_fuzzed_payloads_are_all_accounted_for_and_valid_events_all_count(native_stack, spark):
    from kafka import KafkaProducer

    from contracts import EVENT_TYPES, ContractError, check_payload
    from core.clickhouse import get_client
    from core.lake import Lake
    from streaming.job import run_stream
    from streaming.transforms import EVENT_ID
    from tests.test_streaming_guarantees import namespace

    s = namespace(native_stack, f"fz{uuid.uuid4().hex[:6]}", stream_max_future_minutes=60)
    fuzz = generate(N_FUZZ) + edge_cases()
    assert len(fuzz) >= N_FUZZ
    valid = [("sales_transaction", json.dumps(dict(base_record("sales_transaction", 0), transaction_id=f"VALID-{i}",
                                                   timestamp=BASE_TS + i * 1000)).encode()) for i in range(N_VALID)]
    step = len(fuzz) // N_VALID
    sent = []
    for i, v in enumerate(valid):  # the valid sales interleaved with the fuzz
        sent += fuzz[i * step:(i + 1) * step] + [v]
    sent += fuzz[N_VALID * step:]

    p = KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), acks="all", linger_ms=20,
                      max_request_size=1_048_000)
    futs = [(et, value, p.send(s.topic(EVENT_TYPES[et]), key=contract_key(et, value, i), value=value))
            for i, (et, value) in enumerate(sent)]
    p.flush()
    where, sent_at = {}, {}
    for et, value, f in futs:
        md = f.get(timeout=60)
        where[(md.topic, md.partition, md.offset)] = (et, value)
        sent_at[(md.topic, md.partition, md.offset)] = md.timestamp  # the stream's "now" for the record
    p.close()
    assert len(where) == len(sent)

    stats = run_stream(s, available_now=True, timeout=900, spark=spark)  # raises if a query failed
    assert stats["raw"]["input_rows"] + stats["raw"]["duplicates_dropped"] == len(sent)

    client, db = get_client(s), s.clickhouse_database
    q = client.query_df(f"SELECT topic, partition, offset, reason FROM {db}.quarantine_events FINAL")
    quarantined = {(r.topic, int(r.partition), int(r.offset)): r.reason for r in q.itertuples()}
    assert all(r.strip() for r in quarantined.values()), "every quarantined record has a reason"
    lake = Lake(s)
    in_lake: dict[tuple, str] = {}
    for et in INPUT_TYPES:
        t = lake.read_table(s.lake_raw_bucket, et)
        if t is None:
            continue
        topic = s.topic(EVENT_TYPES[et])
        for part, off, eid in zip(t["kafka_partition"].to_pylist(), t["kafka_offset"].to_pylist(),
                                  t[EVENT_ID[et]].to_pylist()):
            assert (topic, part, off) not in in_lake, "a record twice in the lake"
            in_lake[(topic, part, off)] = eid
    assert not set(in_lake) & set(quarantined), "a record both valid and quarantined"
    accounted = len(in_lake) + len(quarantined)
    assert accounted + stats["raw"]["duplicates_dropped"] == len(sent)
    assert set(in_lake) | set(quarantined) <= set(where)

    # the producers' rules agree record by record, each judged at its Kafka timestamp as the stream judges it;
    # of the copies of one valid id, the lake holds one
    groups: dict[tuple[str, str], list[tuple]] = {}
    for key, (et, value) in where.items():
        try:
            rec = None if value is None else check_payload(et, value, now_ms=sent_at[key], max_future_minutes=60)
        except ContractError:
            rec = None
        if rec is None:
            assert key in quarantined, (et, value[:200] if value else value, "valid for the stream, not the producers")
            others = [o for o in INPUT_TYPES if o != et and value is not None and _passes(o, value, sent_at[key])]
            if others:   # a valid event of another type: the reason says so first
                assert quarantined[key].startswith(f"wrong topic: a valid {others[0]} event on the {et} topic"), \
                    (et, value[:200], quarantined[key])
        else:
            assert key not in quarantined, (et, value[:200], quarantined.get(key))
            groups.setdefault((key[0], rec[EVENT_ID[et]]), []).append(key)
    for (topic, eid), keys in groups.items():
        assert sum(k in in_lake for k in keys) == 1, (topic, eid, len(keys))
    assert sum(len(k) - 1 for k in groups.values()) == stats["raw"]["duplicates_dropped"]
    valid_sales = {eid for (topic, eid) in groups if topic == s.topic(EVENT_TYPES["sales_transaction"])}
    assert {f"VALID-{i}" for i in range(N_VALID)} <= valid_sales
    n_windows = int(client.command(f"SELECT toInt64(sum(transaction_count)) FROM {db}.sales_metrics_5m FINAL"))
    assert n_windows == len(valid_sales), "every valid sale counts once in the windows"
    assert math.isfinite(float(client.command(f"SELECT sum(revenue) FROM {db}.sales_metrics_5m FINAL")))


# ------------------------------------------------------------- named adversarial values, one stream run --
def _sale(i: int, **over) -> dict:
    return dict(base_record("sales_transaction", 0), transaction_id=f"ADV-{i}", **over)


def _dump(rec: dict) -> bytes:
    return json.dumps(rec, allow_nan=True).encode("utf-8", "surrogatepass")


def adversarial_cases() -> list[tuple[str, str, bytes, str | None]]:
    """(label, event type of the topic, Kafka value, expected: None = valid (lands in the lake), else a text the
    quarantine reason must hold). Each targets one rule; the values are fixed (no randomness)."""
    ts = BASE_TS
    deep = {"a": None}
    for _ in range(200):   # 200 levels: JSON a parser accepts (its limit is 1,000), an unknown field
        deep = {"a": deep}
    inv = base_record("inventory_update", 7)
    price = base_record("price_change", 8)
    cust = base_record("customer_event", 9)
    return [
        ("duplicate key, same value", "sales_transaction",
         _dump(_sale(1))[:-1] + b', "quantity": 2}', "duplicate JSON key"),
        ("duplicate key, other value", "sales_transaction",
         _dump(_sale(2))[:-1] + b', "unit_price": 0.01}', "duplicate JSON key"),
        ("quantity as a string", "sales_transaction", _dump(_sale(3, quantity="2")), "quantity"),
        ("unit_price as a string", "sales_transaction", _dump(_sale(4, unit_price="1.25")), "unit_price"),
        ("timestamp as a string of digits", "sales_transaction", _dump(_sale(5, timestamp=str(ts))), "timestamp"),
        ("NaN literal", "sales_transaction", _dump(_sale(6, unit_price=float("nan"))), "unit_price"),
        ("Infinity literal", "sales_transaction", _dump(_sale(7, unit_price=float("inf"))), "unit_price"),
        ("-Infinity literal", "price_change", _dump(dict(price, price_change_id="ADV-8", new_price=float("-inf"))),
         "new_price"),
        ("NaN as a string", "price_change", _dump(dict(price, price_change_id="ADV-9", old_price="NaN")),
         "old_price"),
        ("quantity 2^63", "sales_transaction", _dump(_sale(10, quantity=2 ** 63)), "quantity"),
        ("timestamp 2^64 + 1", "sales_transaction", _dump(_sale(11, timestamp=2 ** 64 + 1)), "timestamp"),
        ("new_quantity -2^63 - 1", "inventory_update", _dump(dict(inv, inventory_id="ADV-12", new_quantity=-2 ** 63 - 1)),
         "new_quantity"),
        ("timestamp 1e30 (a float)", "sales_transaction", _dump(_sale(13)).replace(str(ts).encode(), b"1e30"),
         "timestamp"),
        ("200 levels of nesting in an unknown field", "sales_transaction", _dump(_sale(14, coupon=deep)),
         "unknown field"),
        ("3,000 levels of nesting", "customer_event",
         _dump(dict(cust, event_id="ADV-15"))[:-1] + b', "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
         "malformed JSON"),
        ("nesting in an id field", "inventory_update",
         _dump(dict(inv, inventory_id="ADV-16", store_id=[[["S1"]]])), "store_id"),
        ("1 MB string in an optional id", "sales_transaction", _dump(_sale(17, customer_id="C" * 1_000_000)),
         "customer_id"),
        ("1 MB string in an unknown field", "customer_event",
         _dump(dict(cust, event_id="ADV-18", note="n" * 1_000_000)), "unknown field"),
        ("event time year 9999", "sales_transaction", _dump(_sale(19, timestamp=253_402_300_799_000)),
         "in the future"),
        ("event time before 1970", "sales_transaction", _dump(_sale(20, timestamp=-86_400_000)), "timestamp"),
        ("event time 1969-12-31T23:59:59.999", "inventory_update",
         _dump(dict(inv, inventory_id="ADV-21", timestamp=-1)), "timestamp"),
        ("ISO time with +02:00", "sales_transaction", _dump(_sale(22, timestamp="2026-12-06T10:00:00+02:00")),
         "timestamp"),
        ("ISO time with -05:30", "price_change",
         _dump(dict(price, price_change_id="ADV-23", timestamp="2026-12-06T10:00:00-05:30")), "timestamp"),
        ("ISO time, a leap second", "sales_transaction", _dump(_sale(24, timestamp="2016-12-31T23:59:60Z")),
         "timestamp"),
        ("epoch ms of the 2016 leap second's end", "sales_transaction", _dump(_sale(25, timestamp=1_483_228_800_000)),
         None),
        ("null byte in an id (escaped)", "sales_transaction", _dump(_sale(26, store_id="S\x001")), "store_id"),
        ("null byte in an id (raw)", "sales_transaction",
         _dump(_sale(27)).replace(b'"S1"', b'"S\x001"', 1), "malformed JSON: Invalid control character"),
        ("null byte in the event id", "customer_event", _dump(dict(cust, event_id="ADV-28\x00")), "event_id"),
        ("an inventory update on the sales topic", "sales_transaction", _dump(dict(inv, inventory_id="ADV-29")),
         "wrong topic: a valid inventory_update event on the sales_transaction topic"),
        ("a sale on the inventory topic", "inventory_update", _dump(_sale(30)),
         "wrong topic: a valid sales_transaction event on the inventory_update topic"),
        ("a price change on the customer topic", "customer_event", _dump(dict(price, price_change_id="ADV-31")),
         "wrong topic: a valid price_change event on the customer_event topic"),
        ("a customer event on the price topic", "price_change", _dump(dict(cust, event_id="ADV-32")),
         "wrong topic: a valid customer_event event on the price_change topic"),
        ("valid with unicode escapes", "sales_transaction",
         b'{"transaction_id": "ADV-\\u0033\\u0033", ' + _dump(_sale(33))[1:].split(b", ", 1)[1], None),
        ("valid, keys in another order", "sales_transaction",
         _dump(dict(reversed(list(_sale(34).items())))), None),
        ("quantity 2.0 (a float for an int)", "sales_transaction",
         _dump(_sale(35)).replace(b'"quantity": 2', b'"quantity": 2.0'), "quantity"),
    ]


def test_adversarial_values_are_quarantined_with_their_reason_and_lose_no_other_record(native_stack, spark):
    """Each value of :func:`adversarial_cases` is sent among 200 valid sales (positions drawn with a fixed seed) and
    the real stream drains them in one run: it stays up; each adversarial value lands in the lake when valid, else in
    quarantine_events with a reason naming its fault; count in = landed + quarantined; every valid sale is in the
    lake and counts once in the windows."""
    from kafka import KafkaProducer

    from contracts import EVENT_TYPES
    from core.clickhouse import get_client
    from core.lake import Lake
    from streaming.job import run_stream
    from streaming.transforms import EVENT_ID
    from tests.test_streaming_guarantees import namespace

    s = namespace(native_stack, f"adv{uuid.uuid4().hex[:6]}", stream_max_future_minutes=60)
    cases = adversarial_cases()
    valid = [("valid", "sales_transaction", _dump(dict(base_record("sales_transaction", 0), transaction_id=f"OK-{i}",
                                                       timestamp=BASE_TS + i * 1000)), None) for i in range(200)]
    sent = list(valid)
    rng = random.Random(27)
    for c in cases:
        sent.insert(rng.randrange(len(sent) + 1), c)
    p = KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), acks="all", linger_ms=20,
                      max_request_size=1_048_000)
    futs = [(c, p.send(s.topic(EVENT_TYPES[c[1]]), key=contract_key(c[1], c[2], 1), value=c[2])) for c in sent]
    p.flush()
    where = {}
    for c, f in futs:
        md = f.get(timeout=60)
        where[(md.topic, md.partition, md.offset)] = c
    p.close()

    stats = run_stream(s, available_now=True, timeout=900, spark=spark)   # raises if a query failed
    client, db = get_client(s), s.clickhouse_database
    q = client.query_df(f"SELECT topic, partition, offset, reason FROM {db}.quarantine_events FINAL")
    quarantined = {(r.topic, int(r.partition), int(r.offset)): r.reason for r in q.itertuples()}
    lake = Lake(s)
    in_lake = {}
    for et in INPUT_TYPES:
        t = lake.read_table(s.lake_raw_bucket, et)
        if t is not None:
            for part, off in zip(t["kafka_partition"].to_pylist(), t["kafka_offset"].to_pylist()):
                in_lake[(s.topic(EVENT_TYPES[et]), part, off)] = et
    wrong = []
    for key, (label, et, value, expected) in where.items():
        if expected is None and key not in in_lake:
            wrong.append(f"{label}: valid but not in the lake ({quarantined.get(key)})")
        elif expected is not None and expected not in quarantined.get(key, ""):
            wrong.append(f"{label}: expected a reason with {expected!r}, got "
                         f"{quarantined.get(key) if key in quarantined else 'in the lake' if key in in_lake else 'nothing'}")
    assert not wrong, "\n".join(wrong)
    assert not set(in_lake) & set(quarantined)
    assert len(in_lake) + len(quarantined) == len(sent) == stats["raw"]["input_rows"]
    n_valid_sales = sum(1 for (label, et, v, e) in sent if e is None and et == "sales_transaction")
    assert int(client.command(f"SELECT toInt64(sum(transaction_count)) FROM {db}.sales_metrics_5m FINAL")) \
        == n_valid_sales
    assert stats["raw"]["duplicates_dropped"] == 0 and EVENT_ID["sales_transaction"] == "transaction_id"
