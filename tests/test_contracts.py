"""The shared validation rules of ``contracts`` (used by the producers and, as Spark expressions, by the stream):
numeric bounds, event time <= now + STREAM_MAX_FUTURE_MINUTES, strict JSON with each key once; the producers'
raw-JSON path dead-letters what breaks them. (The stream's side: tests/test_streaming_transforms.py compares
reasons record by record; tests/test_fuzz_stream.py does so over 10,000 generated payloads.)"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from contracts import (NUMERIC_BOUNDS, PRICE_MAX, QUANTITY_MAX, STOCK_MAX, ContractError, check_payload,
                       parse_json_object, rule_violations, validate_event)

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def sale(**kw) -> dict:
    r = {"transaction_id": "T1", "store_id": "S1", "product_id": "P1", "quantity": 1, "unit_price": 2.5,
         "timestamp": NOW_MS - 60_000, "customer_id": None, "payment_method": "CARD", "invoice_id": None}
    r.update(kw)
    return r


def reasons(rec: dict, et: str = "sales_transaction", minutes: int = 60) -> list[str]:
    return rule_violations(et, rec, now_ms=NOW_MS, max_future_minutes=minutes)


@pytest.mark.parametrize("field,value,ok", [
    ("quantity", QUANTITY_MAX, True), ("quantity", -QUANTITY_MAX, True), ("quantity", QUANTITY_MAX + 1, False),
    ("quantity", -QUANTITY_MAX - 1, False), ("quantity", 0, False),
    ("unit_price", 0.0, True), ("unit_price", PRICE_MAX, True), ("unit_price", PRICE_MAX + 0.01, False),
    ("unit_price", -0.01, False), ("unit_price", float("nan"), False), ("unit_price", float("inf"), False),
])
def test_sales_bounds(field, value, ok):
    got = reasons(sale(**{field: value}))
    assert (got == []) is ok, got
    if not ok:
        assert got[0].startswith(field + " must")


def test_inventory_and_price_bounds_are_documented_with_units():
    inv = {"inventory_id": "I1", "store_id": "S1", "product_id": "P1", "quantity_change": -STOCK_MAX,
           "new_quantity": STOCK_MAX, "reason": "SALE", "reorder_point": None, "timestamp": NOW_MS}
    assert reasons(inv, "inventory_update") == []
    assert reasons({**inv, "new_quantity": -1}, "inventory_update") == ["new_quantity must be within [0, 10000000] units"]
    assert reasons({**inv, "reorder_point": STOCK_MAX + 1}, "inventory_update") == \
        ["reorder_point must be within [0, 10000000] units"]
    pc = {"price_change_id": "C1", "store_id": "S1", "product_id": "P1", "old_price": 1.0, "new_price": 1e9,
          "reason": "MARKDOWN", "timestamp": NOW_MS}
    assert reasons(pc, "price_change") == ["new_price must be within [0, 100000] currency units"]
    for bounds in NUMERIC_BOUNDS.values():
        for b in bounds:
            assert b.unit in ("units", "currency units") and b.lo <= 0 < b.hi


def test_event_time_window_from_2000_to_now_plus_future_minutes():
    assert reasons(sale(timestamp=NOW_MS + 60 * 60_000)) == []
    assert reasons(sale(timestamp=NOW_MS + 60 * 60_000 + 1)) == ["timestamp more than STREAM_MAX_FUTURE_MINUTES=60 in the future"]
    assert reasons(sale(timestamp=NOW_MS + 10 * 60_000), minutes=5) == \
        ["timestamp more than STREAM_MAX_FUTURE_MINUTES=5 in the future"]
    assert reasons(sale(timestamp=-1)) == ["timestamp before 2000-01-01"]
    assert reasons(sale(timestamp=1_291_161_600_000)) == []  # 2010-12-01, a UCI date


def test_the_future_bound_defaults_to_the_setting(monkeypatch):
    from core.settings import get_settings

    now = int(time.time() * 1000)
    rec = sale(timestamp=now + 7 * 60_000)
    monkeypatch.setenv("STREAM_MAX_FUTURE_MINUTES", "5")
    get_settings.cache_clear()
    try:
        with pytest.raises(ContractError, match="STREAM_MAX_FUTURE_MINUTES=5"):
            validate_event("sales_transaction", rec)
        monkeypatch.setenv("STREAM_MAX_FUTURE_MINUTES", "9")  # below STREAM_WATERMARK (10 minutes)
        get_settings.cache_clear()
        validate_event("sales_transaction", rec)
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("value", ["-5", "soon"])
def test_a_bad_future_setting_fails_fast_naming_the_variable(monkeypatch, value):
    from core.settings import ConfigError, get_settings

    monkeypatch.setenv("STREAM_MAX_FUTURE_MINUTES", value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="STREAM_MAX_FUTURE_MINUTES"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_the_uci_replay_keeps_its_2009_2011_dates():
    from producers.cli import DEFAULT_SAMPLE
    from producers.replay import Replay, ReplayConfig, load_transactions

    rep = Replay(load_transactions(DEFAULT_SAMPLE, limit=3000), ReplayConfig(keep_dates=True, seed=1))
    bad = Counter()
    n = 0
    for et, rec in rep.events():
        n += 1
        try:
            validate_event(et, rec)
        except ContractError as exc:
            bad[str(exc)[:80]] += 1
    assert n > 3000 and not bad, bad


@pytest.mark.parametrize("raw,reason", [
    (b'{"a": 1, "a": 2}', "duplicate JSON key(s): a"),
    ('{"a": 1, "b": {"c": 1, "c": 2}, "b": 3}', "duplicate JSON key(s): c,b"),
    (b"\xff{}", "value is not valid UTF-8"),
    ('{"a": NaN}', "malformed JSON"),
    ("{'a': 1}", "malformed JSON"),
    ("[1, 2]", "malformed JSON: value is not a JSON object"),
    ("", "malformed JSON"),
    ("[" * 100_000, "malformed JSON"),
])
def test_parse_json_object_is_strict(raw, reason):
    with pytest.raises(ContractError) as exc:
        parse_json_object(raw)
    assert str(exc.value).startswith(reason)


def test_check_payload_accepts_a_valid_value():
    assert check_payload("sales_transaction", json.dumps(sale()).encode(), now_ms=NOW_MS, max_future_minutes=60) == sale()


class FakePublisher:
    """Stands in for core.kafka.EventPublisher in a unit test: records what would be sent or dead-lettered."""

    def __init__(self):
        from core.settings import get_settings

        self.settings = get_settings()
        self.sent, self.dead = [], []

    def publish(self, event_type, record):
        validate_event(event_type, record)
        self.sent.append(record)
        return True

    def dead_letter(self, event_type, payload, reason):
        self.dead.append((payload, reason))


def test_producers_dead_letter_duplicate_keys_and_bad_bytes(tmp_path):
    """Unit test of publish_file's line decisions (publish, or dead-letter with which payload and reason) with a
    fake publisher; the same through the real EventPublisher and broker, read back from the topics:
    test_producers_kafka.py::test_publish_file_of_raw_lines_to_the_real_broker."""
    from producers.raw import publish_file

    now = int(time.time() * 1000)
    good = json.dumps(sale(timestamp=now)).encode()
    dup = good[:-1] + b', "quantity": 7}'
    path = tmp_path / "pos.jsonl"
    path.write_bytes(b"\n".join([good, dup, b"\xfe\xff", json.dumps(sale(quantity=0, timestamp=now)).encode(), b""]))
    pub = FakePublisher()
    assert publish_file(pub, "sales_transaction", path) == {"published": 1, "dead_lettered": 3}
    assert pub.sent == [sale(timestamp=now)]
    assert [r for _, r in pub.dead] == ["duplicate JSON key(s): quantity", "value is not valid UTF-8",
                                        "quantity must not be 0"]
    assert pub.dead[1][0] == "base64:/v8="


@pytest.mark.parametrize("text,lone", [
    ('"S\\ud800"', True), ('"S\\udc00x"', True), ('"S\\uD83D\\uDE00"', False), ('"S\\\\ud800"', False),
    ('"S\\\\\\ud800"', True), ('"\\ud800\\ud800\\udc00"', True), ('"\\ud83d\\ude00\\udc00"', True),
    ('"S\\u0041"', False),
])
def test_an_unpaired_surrogate_escape_is_rejected(text, lone):
    """A JSON string holding a \\uD800-\\uDFFF escape that is not half of a pair is rejected whole (Spark would read
    it as "?", json.loads keeps a code point UTF-8 cannot encode); a pair, an escaped backslash before "ud800"
    and other escapes are fine. The stream's rule on the raw text gives the same verdicts
    (tests/test_streaming_transforms.py)."""
    from contracts import LONE_SURROGATE_REASON

    raw = json.dumps(sale(store_id="S")).replace('"store_id": "S"', f'"store_id": {text}')
    if lone:
        with pytest.raises(ContractError, match="unpaired UTF-16 surrogate"):
            check_payload("sales_transaction", raw.encode(), now_ms=NOW_MS, max_future_minutes=60)
        with pytest.raises(ContractError) as exc:
            check_payload("sales_transaction", raw.encode(), now_ms=NOW_MS, max_future_minutes=60)
        assert str(exc.value) == LONE_SURROGATE_REASON
    else:
        assert check_payload("sales_transaction", raw.encode(), now_ms=NOW_MS, max_future_minutes=60)["store_id"] \
            == json.loads(text)
    # a record built in Python (the publisher's path) holding the code point itself
    with pytest.raises(ContractError, match="store_id contains an unpaired UTF-16 surrogate"):
        validate_event("sales_transaction", sale(store_id="S\ud800"), now_ms=NOW_MS, max_future_minutes=60)


def test_event_times_must_be_integers_and_big_numbers_name_their_range():
    """fastavro accepts a datetime for timestamp-millis (and would skip the event-time rules, then send a text the
    stream rejects); a number beyond 32 bits gets the range's reason, not Avro's "expected int"."""
    from datetime import datetime, timezone

    for ts in (datetime(2100, 1, 1, tzinfo=timezone.utc), datetime(2020, 1, 1), 1.5e12, "1767225600000"):
        with pytest.raises(ContractError, match="timestamp must be an integer"):
            validate_event("sales_transaction", sale(timestamp=ts), now_ms=NOW_MS, max_future_minutes=60)
    with pytest.raises(ContractError) as exc:
        validate_event("sales_transaction", sale(quantity=2 ** 40), now_ms=NOW_MS, max_future_minutes=60)
    assert str(exc.value) == f"quantity must be within [-{QUANTITY_MAX}, {QUANTITY_MAX}] units"
    with pytest.raises(ContractError, match=r"new_quantity must be within \[0, 10000000\] units"):
        validate_event("inventory_update", {"inventory_id": "I1", "store_id": "S1", "product_id": "P1",
                                            "quantity_change": -1, "new_quantity": -(2 ** 40), "reason": "SALE",
                                            "reorder_point": 5, "timestamp": NOW_MS - 1000},
                       now_ms=NOW_MS, max_future_minutes=60)


def test_a_dead_letter_key_with_a_lone_surrogate_is_still_encoded():
    from core.kafka import StrKeySerializer

    assert StrKeySerializer().serialize("t", None, "S\ud800|P1") == b"S\xed\xa0\x80|P1"
    assert StrKeySerializer().serialize("t", None, None) is None


def test_ids_with_leading_or_trailing_white_space_are_dead_lettered(tmp_path):
    """An id that starts or ends with white space (any character str.strip() removes: space, NBSP, U+3000,
    U+2028 ...) is dead-lettered with the reason and its line kept whole; before 2026-12-06 " SKU-1", "SKU-1 " and
    "S1\\u00a0" were published as ids of their own (a second series beside "SKU-1"). Inner white space and case are
    kept (ids are case-sensitive)."""
    from producers.raw import publish_file

    now = int(time.time() * 1000)
    bad = [("product_id", " SKU-1"), ("product_id", "SKU-1 "), ("store_id", "S1\u00a0"), ("store_id", "\u3000S1"),
           ("transaction_id", "T1\u2028"), ("customer_id", "\u2007C1"), ("product_id", "SKU-1\u205f")]
    good = [("product_id", "SKU-1"), ("product_id", "sku-1"), ("product_id", "SKU 1"), ("store_id", "S\u00a01")]
    lines = [json.dumps(sale(timestamp=now, **{f: v})).encode() for f, v in bad + good]
    for f, v in bad:  # the independent definition: str.strip() would change the id
        assert v != v.strip()
    path = tmp_path / "pos.jsonl"
    path.write_bytes(b"\n".join(lines))
    pub = FakePublisher()
    assert publish_file(pub, "sales_transaction", path) == {"published": len(good), "dead_lettered": len(bad)}
    assert [r for _, r in pub.dead] == [f"{f} has leading or trailing white space" for f, _ in bad]
    assert [json.loads(p) for p, _ in pub.dead] == [json.loads(x) for x in lines[:len(bad)]]
    assert [(r["product_id"], r["store_id"]) for r in pub.sent] == [("SKU-1", "S1"), ("sku-1", "S1"),
                                                                     ("SKU 1", "S1"), ("P1", "S\u00a01")]
    with pytest.raises(ContractError, match="^product_id has leading or trailing white space$"):
        validate_event("sales_transaction", sale(product_id=" SKU-1"), now_ms=NOW_MS, max_future_minutes=60)
