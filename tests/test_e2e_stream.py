"""End to end: real Kafka broker -> real Spark (Kafka source, local mode) -> real chDB ClickHouse + real MinIO lake.

A known event set (valid sales incl. returns, inventory updates, price changes, customer events, and invalid
records of every kind) is produced with kafka-python and drained with the available-now trigger. The test then
checks, against an *independent* pandas computation of the same events (written here, not reusing
streaming.transforms):

* every per-window store x SKU aggregate in ClickHouse (exactly; derived floats to 1e-9 / z-scores to 1e-6),
  and the per-store windows;
* the lake holds every valid event exactly once (count and ids);
* every invalid record sits in ``quarantine_events`` with the right reason;
* one restock alert per low-stock episode (ClickHouse and the Kafka topic);
* re-processing the last micro-batch after a restart from the checkpoint doubles nothing;
* events later than the watermark, produced after the first drain, are dropped from the aggregates but land
  in the lake.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration

STORES = ["S001", "S002"]
SKUS = {"P001": 2.55, "P002": 0.1, "P003": 12.99}
ROP = 10
WIN_MS = 5 * 60_000


def _floor(ms: int, step: int = WIN_MS) -> int:
    return ms - ms % step


def make_events(seed: int = 7):
    """(valid events [(event_type, record)], invalid [(event_type, payload, expected reason substring)], t0, t_end)."""
    rng = random.Random(seed)
    now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    t_end = _floor(now_ms) - 30 * 60_000
    t0 = t_end - 75 * 60_000
    ev: list[tuple[str, dict]] = []
    n = Counter()

    def sale(store, sku, qty, ts, price=None):
        n["s"] += 1
        return ("sales_transaction", {
            "transaction_id": f"T{n['s']:05d}", "store_id": store, "product_id": sku, "quantity": qty,
            "unit_price": SKUS.get(sku, 1.0) if price is None else price, "timestamp": ts,
            "customer_id": rng.choice([None, "C1", "C2"]), "payment_method": rng.choice(["CASH", "CARD", "MOBILE"]),
            "invoice_id": f"INV{n['s']:05d}"})

    def inv(store, sku, change, newq, reason, ts):
        n["i"] += 1
        return ("inventory_update", {"inventory_id": f"I{n['i']:05d}", "store_id": store, "product_id": sku,
                                     "quantity_change": change, "new_quantity": newq, "reason": reason,
                                     "reorder_point": ROP, "timestamp": ts})

    for store in STORES:
        for sku in SKUS:
            stock = 30
            ev.append(inv(store, sku, 30, 30, "OPENING", t0))
            t = t0 + 1000
            while True:
                t += rng.randint(20, 420) * 1000
                if t >= t_end:
                    break
                qty = -rng.randint(1, 2) if rng.random() < 0.12 else min(rng.randint(1, 4), stock)
                if qty == 0:
                    continue
                ev.append(sale(store, sku, qty, t))
                stock -= qty
                if rng.random() < 0.6:
                    ev.append(inv(store, sku, -qty, stock, "SALE" if qty > 0 else "RETURN", t + 500))
                if stock < 6 and rng.random() < 0.5:
                    stock += 25
                    ev.append(inv(store, sku, 25, stock, "RESTOCK", t + 1500))
    # a scripted SKU with two low-stock episodes (stock 20 -> 8 -> 5 -> 10 -> 15 -> 7) and sales in between
    for i, (newq, reason) in enumerate([(20, "OPENING"), (8, "ADJUSTMENT"), (5, "WASTE"), (10, "RESTOCK"),
                                        (15, "RESTOCK"), (7, "ADJUSTMENT")]):
        ts = t0 + i * 2 * WIN_MS + 60_000
        ev.append(inv("S003", "P009", 0, newq, reason, ts))
        ev.append(sale("S003", "P009", 1 + i % 3, ts + 30_000, price=4.2))
    for i in range(4):
        n["p"] += 1
        ev.append(("price_change", {"price_change_id": f"PC{n['p']}", "store_id": STORES[i % 2], "product_id": "P001",
                                    "old_price": 2.55, "new_price": 2.25, "reason": "PROMOTION", "timestamp": t0 + i * 60_000}))
        ev.append(("customer_event", {"event_id": f"CE{i}", "customer_id": f"C{i}", "store_id": STORES[i % 2],
                                      "event_type": "STORE_VISIT", "product_id": None, "timestamp": t0 + i * 90_000}))
    base = {"store_id": "S001", "product_id": "P001", "quantity": 1, "unit_price": 1.0, "timestamp": t0 + 5000,
            "customer_id": None, "payment_method": "CARD", "invoice_id": None}
    invalid = [
        ("sales_transaction", {**base, "transaction_id": "BAD-QTY0", "quantity": 0}, "quantity must not be 0"),
        ("sales_transaction", {**base, "transaction_id": "BAD-PRICE", "unit_price": -1.5}, "unit_price must be within [0, 100000] currency units"),
        ("sales_transaction", {**base, "transaction_id": "BAD-FUTURE", "timestamp": now_ms + 86_400_000},
         "in the future"),
        ("sales_transaction", {**base, "transaction_id": "BAD-ANCIENT", "timestamp": -5_364_662_400_000},
         "older than STREAM_MAX_EVENT_AGE_DAYS"),
        ("sales_transaction", '{"transaction_id": "BAD-JSON", "store_id": ', "malformed JSON"),
        ("sales_transaction", b"\xff", "value is not valid UTF-8"),              # a poison pill: not UTF-8
        ("inventory_update", b'{"inventory_id": "\xe9"}', "value is not valid UTF-8"),
        ("sales_transaction", {**base, "transaction_id": "BAD-ENUM", "payment_method": "BARTER"}, "invalid payment_method"),
        ("sales_transaction", {**base, "transaction_id": "BAD-EXTRA", "coupon": "X"}, "unknown field(s): coupon"),
        ("inventory_update", {"inventory_id": "BAD-NEGSTOCK", "store_id": "S001", "product_id": "P001",
                              "quantity_change": -50, "new_quantity": -5, "reason": "SALE", "reorder_point": ROP,
                              "timestamp": t0 + 5000}, "new_quantity must be within [0, 10000000] units"),
        ("price_change", {"price_change_id": "BAD-NEWPRICE", "store_id": "S001", "product_id": "P001", "old_price": 1.0,
                          "new_price": -2.0, "reason": "MARKDOWN", "timestamp": t0 + 5000}, "new_price must be"),
        ("customer_event", {"event_id": "BAD-CE", "customer_id": "C9", "store_id": "S001", "event_type": "DANCING",
                            "product_id": None, "timestamp": t0 + 5000}, "invalid event_type"),
        # valid payloads under a key that is not theirs (sent with key S001|P001) or without a key
        ("sales_transaction", {**base, "transaction_id": "BAD-KEY", "store_id": "S002"},
         "kafka key 'S001|P001' does not match the payload's store_id|product_id 'S002|P001'"),
        ("sales_transaction", {**base, "transaction_id": "BAD-NOKEY"},
         "kafka key missing: the contract keys sales_transaction by store_id|product_id ('S001|P001')"),
        # a price of 1,001 digits: Spark's parser refuses it; the reason is the range's, not "not a JSON object"
        ("sales_transaction", json.dumps({**base, "transaction_id": "BAD-DIGITS"}).replace(
            '"unit_price": 1.0', '"unit_price": ' + "9" * 1001), "unit_price must be within [0, 100000] currency units"),
    ]
    return ev, invalid, t0, t_end


def produce(settings, valid, invalid=()):
    """Send with kafka-python (key store|sku, customer events key customer_id); invalid payloads raw."""
    from kafka import KafkaProducer

    from contracts import EVENT_TYPES, validate_event

    p = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","), acks="all", linger_ms=10)
    meta = {}
    for et, rec in valid:
        validate_event(et, rec)  # the fixture's valid events honour the contract
        key = rec["customer_id"] if et == "customer_event" else f"{rec['store_id']}|{rec['product_id']}"
        p.send(settings.topic(EVENT_TYPES[et]), key=key.encode(), value=json.dumps(rec).encode())
    for et, payload, _ in invalid:
        value = payload if isinstance(payload, bytes) else (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        key = None if isinstance(payload, dict) and payload.get("transaction_id") == "BAD-NOKEY" else b"S001|P001"
        md = p.send(settings.topic(EVENT_TYPES[et]), key=key, value=value).get(timeout=30)
        meta[(md.topic, md.partition, md.offset)] = (et, payload)
    p.flush()
    p.close()
    return meta


def produce_dead_letters(settings) -> list[tuple[str, str, str]]:
    """Two records on the dead-letter topic: a producer's dead-letter document and bytes that are not one.
    Returns the expected quarantine rows [(event_type, reason, raw_payload)] in offset order."""
    from kafka import KafkaProducer

    from core.kafka import dead_letter_record
    from streaming.transforms import DEAD_LETTER_PREFIX

    doc = json.dumps(dead_letter_record("sales_transaction", {"transaction_id": "T-DLQ"}, "missing field store_id",
                                        failed_at_ms=1_700_000_000_000))
    p = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","), acks="all")
    for v in (doc.encode(), b"not a dead-letter document"):
        p.send(settings.topic("dead-letter"), value=v).get(timeout=30)
    p.close()
    return [("sales_transaction", DEAD_LETTER_PREFIX + "missing field store_id", doc),
            ("unknown", DEAD_LETTER_PREFIX + "(record is not a dead-letter document)", "not a dead-letter document")]


# ------------------------------------------------------------------------- independent expectation --
def expected_windows(valid, lead_time_days: int = 3):
    """Per store x SKU x 5-minute window, computed with plain pandas/Decimal from the produced events
    (``lead_time_days``: LEAD_TIME_DAYS, which bounds the order's units of a window without a baseline)."""
    sales = pd.DataFrame([r for et, r in valid if et == "sales_transaction"])
    inv = pd.DataFrame([r for et, r in valid if et == "inventory_update"]).reset_index(names="seq")
    sales["ws"] = sales["timestamp"] // WIN_MS * WIN_MS
    inv["ws"] = inv["timestamp"] // WIN_MS * WIN_MS
    rows = {}
    for (st, sku, ws), g in sales.groupby(["store_id", "product_id", "ws"]):
        rev = sum(Decimal(repr(p)) * q for p, q in zip(g["unit_price"], g["quantity"]))
        rows[(st, sku, ws)] = {"units_sold": int(g.loc[g.quantity > 0, "quantity"].sum()),
                               "units_returned": int(-g.loc[g.quantity < 0, "quantity"].sum()),
                               "revenue": float(rev), "transaction_count": len(g), "window_stock": None,
                               "inventory_update_count": 0}
    for (st, sku, ws), g in inv.groupby(["store_id", "product_id", "ws"]):
        r = rows.setdefault((st, sku, ws), {"units_sold": 0, "units_returned": 0, "revenue": 0.0,
                                            "transaction_count": 0})
        r["window_stock"] = int(g.sort_values(["timestamp", "seq"])["new_quantity"].iloc[-1])
        r["inventory_update_count"] = len(g)
    df = pd.DataFrame([{"store_id": k[0], "product_id": k[1], "ws": k[2], **v} for k, v in rows.items()])
    df = df.sort_values(["store_id", "product_id", "ws"]).reset_index(drop=True)
    stock_levels, zs, covers, risks, velocities = [], [], [], [], []
    for _, g in df.groupby(["store_id", "product_id"], sort=False):
        last = None
        units = g["units_sold"].tolist()
        wss = g["ws"].tolist()
        # trailing rate (STREAM_VELOCITY_HOURS = 24): a complete 5-minute grid from the SKU's first window, the
        # missing windows selling 0; over the last 288 grid windows: units sold less the units returned, these
        # at most the sold units the order's cap set aside (since 2026-12-07: cap = mean + 3 x max(std,
        # sqrt(mean)) of the previous <= 12 selling windows within 24 h; with fewer, ROP x 24 h / lead-time hours);
        # / the hours since the first window, at least 1 and at most 24
        idx = range(wss[0], wss[-1] + WIN_MS, WIN_MS)
        sold, ret, used = (pd.Series(0.0, index=idx) for _ in range(3))
        sold.loc[wss] = [float(u) for u in units]
        ret.loc[wss] = [float(r) for r in g["units_returned"].tolist()]
        span_h = pd.Series([(x - wss[0] + WIN_MS) / 3_600_000 for x in idx], index=idx).clip(lower=1, upper=24)
        selling = [(w, float(u)) for w, u in zip(wss, units) if u > 0]
        for w, u in zip(wss, units):
            prev = [x for v, x in selling if w - 24 * 3_600_000 <= v < w][-12:]
            if len(prev) >= 3:
                cap = np.mean(prev) + 3 * max(np.std(prev), np.sqrt(np.mean(prev)))
            else:
                cap = ROP * 24 / (24 * lead_time_days) if lead_time_days > 0 else float("inf")
            used[w] = min(float(u), cap)
        n = 24 * 3_600_000 // WIN_MS
        gs, rs, cs = (x.rolling(n, min_periods=1).sum() for x in (sold, ret, used))
        rates = ((gs - np.minimum(rs, gs - cs)).clip(lower=0) / span_h).loc[wss].tolist()
        for i, wstock in enumerate(g["window_stock"].tolist()):
            if wstock is not None and not (isinstance(wstock, float) and math.isnan(wstock)):
                last = int(wstock)
            stock_levels.append(last)
            prev = [units[j] for j in range(max(0, i - 12), i) if wss[j] >= wss[i] - 24 * 3_600_000]
            if len(prev) < 3 or np.std(prev) == 0:
                zs.append(0.0)
            else:
                zs.append((units[i] - np.mean(prev)) / np.std(prev))
            vel = rates[i]
            velocities.append(vel)
            cover = last / vel if (last is not None and vel > 0) else None
            covers.append(cover)
            if last is None:
                risks.append("UNKNOWN")
            elif last <= 0 or (cover is not None and cover < 24):
                risks.append("HIGH")
            elif cover is not None and cover < 72:
                risks.append("MEDIUM")
            else:
                risks.append("LOW")
    df["stock_level"], df["anomaly_score"], df["hours_of_cover"], df["stockout_risk"] = stock_levels, zs, covers, risks
    df["sales_velocity"] = velocities
    return df


def expected_alert_ids(exp, closed_until_ms):
    """Alert ids of the episodes in the *closed* windows (window end <= max event time - watermark): the stream
    evaluates a window once no event can change it, so the alerts do not depend on micro-batch boundaries."""
    ids = []
    for (st, sku), g in exp.groupby(["store_id", "product_id"], sort=False):
        in_ep = False
        for ws, stock in zip(g["ws"], g["stock_level"]):
            if ws + WIN_MS > closed_until_ms:
                break
            if stock is None:
                continue
            if not in_ep and stock < ROP:
                in_ep = True
                ids.append(f"{st}|{sku}|{ws}")
            elif in_ep and stock > ROP:
                in_ep = False
    return sorted(ids)


# ---------------------------------------------------------------------------------------- readers --
def ch_windows(client, db):
    df = client.query_arrow(f"SELECT * FROM {db}.sales_metrics_5m FINAL").to_pandas()
    df["ws"] = df["window_start"].map(lambda t: int(pd.Timestamp(t).timestamp() * 1000))
    return df.sort_values(["store_id", "product_id", "ws"]).reset_index(drop=True)


def lake_ids(lake, event_type, id_col):
    t = lake.read_table(lake.settings.lake_raw_bucket, event_type)
    return [] if t is None else t[id_col].to_pylist()


def assert_windows_match(client, db, exp):
    got = ch_windows(client, db)
    assert len(got) == len(exp), f"{len(got)} windows in ClickHouse, {len(exp)} expected"
    key = ["store_id", "product_id", "ws"]
    m = got.merge(exp, on=key, suffixes=("", "_exp"), how="outer", indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"][key + ["_merge"]]
    for c in ("units_sold", "units_returned", "transaction_count", "inventory_update_count"):
        assert (m[c].astype(int) == m[f"{c}_exp"].astype(int)).all(), c
    assert (m["revenue"] == m["revenue_exp"]).all(), m.loc[m["revenue"] != m["revenue_exp"], key + ["revenue", "revenue_exp"]]
    assert np.allclose(m["sales_velocity"].astype(float), m["sales_velocity_exp"].astype(float), rtol=1e-12, atol=0)
    for c in ("window_stock", "stock_level"):
        a = [None if pd.isna(x) else int(x) for x in m[c]]
        b = [None if x is None or (isinstance(x, float) and math.isnan(x)) else int(x) for x in m[f"{c}_exp"]]
        assert a == b, c
    assert m["stockout_risk"].tolist() == m["stockout_risk_exp"].tolist()
    for a, b in zip(m["hours_of_cover"], m["hours_of_cover_exp"]):
        assert (pd.isna(a) and pd.isna(b)) or a == pytest.approx(b, rel=1e-12)
    assert np.allclose(m["anomaly_score"].astype(float), m["anomaly_score_exp"].astype(float), atol=1e-6)
    assert (m["anomaly_score"] != 0).any(), "the event set should produce non-zero anomaly scores"
    # per-store windows = sums of the SKU windows
    st = client.query_df(f"SELECT store_id, window_start, units_sold, units_returned, revenue, transaction_count, "
                         f"sku_count FROM {db}.store_metrics_5m FINAL")
    st["ws"] = st["window_start"].map(lambda t: int(pd.Timestamp(t, tz="UTC").timestamp() * 1000))
    e = exp.groupby(["store_id", "ws"]).agg(units_sold=("units_sold", "sum"), units_returned=("units_returned", "sum"),
                                            revenue=("revenue", "sum"), transaction_count=("transaction_count", "sum"),
                                            sku_count=("product_id", "nunique")).reset_index()
    sm = st.merge(e, on=["store_id", "ws"], suffixes=("", "_exp"))
    assert len(sm) == len(st) == len(e)
    for c in ("units_sold", "units_returned", "transaction_count", "sku_count"):
        assert (sm[c] == sm[f"{c}_exp"]).all(), c
    assert np.allclose(sm["revenue"], sm["revenue_exp"], rtol=0, atol=1e-9)


def assert_lake_once(lake, valid):
    ids = {"sales_transaction": "transaction_id", "inventory_update": "inventory_id",
           "price_change": "price_change_id", "customer_event": "event_id"}
    for et, col in ids.items():
        want = sorted(r[col] for t, r in valid if t == et)
        got = sorted(lake_ids(lake, et, col))
        assert got == want, f"lake {et}: {len(got)} rows, {len(want)} expected (duplicates or losses)"


def alerts_end_offsets(settings) -> dict:
    """End offset of each partition of the restock-alerts topic: where this test's alerts start (the topic is
    shared by the session's test modules, which may have written alerts before this one)."""
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topic("restock-alerts")
    c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or {0})]
        return c.end_offsets(tps)
    finally:
        c.close()


def alerts_in_kafka(settings, start: dict):
    """alert_ids on the restock-alerts topic from ``start`` (:func:`alerts_end_offsets` before the test) on."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","), enable_auto_commit=False,
                      consumer_timeout_ms=3000)
    c.assign(list(start))
    for tp, off in start.items():
        c.seek(tp, off)
    ids = [json.loads(m.value)["alert_id"] for m in c]
    c.close()
    return ids


def rewind(checkpoint: Path, to_batch: int) -> None:
    """Simulate a crash after the sink wrote batch ``to_batch`` but before Spark committed it: remove its commit
    entry (and every later offset/commit entry), so a restart re-processes exactly that batch."""
    for sub, first in (("commits", to_batch), ("offsets", to_batch + 1)):
        for f in (checkpoint / sub).iterdir():
            if f.name.isdigit() and int(f.name) >= first:
                f.unlink()
            elif f.name.startswith(".") and f.name.endswith(".crc"):
                num = f.name[1:].split(".")[0]
                if num.isdigit() and int(num) >= first:
                    f.unlink()


# ------------------------------------------------------------------------------------------- test --
def test_stream_end_to_end(native_stack, spark):
    from core.kafka_admin import ensure_topics
    from core.clickhouse import get_client
    from core.lake import get_lake
    from streaming.job import run_stream

    s = native_stack
    ensure_topics(s)
    alerts_start = alerts_end_offsets(s)   # alerts of earlier test modules are not this test's
    valid, invalid, t0, t_end = make_events()
    meta = produce(s, valid, invalid)
    dead = produce_dead_letters(s)
    client, lake, db = get_client(s), get_lake(), s.clickhouse_database

    # ---- first drain ---------------------------------------------------------------------------------
    stats1 = run_stream(s, available_now=True, timeout=600, spark=spark)
    assert stats1["raw"]["input_rows"] == len(valid) + len(invalid) + len(dead)
    # the raw query fetches each Kafka record once (one source per topic, no branch re-reads its source); the
    # windows query's single source (sales + inventory updates advance together) is scanned by its two branches
    assert stats1["raw"]["source_rows"] == len(valid) + len(invalid) + len(dead)
    windows_types = ("sales_transaction", "inventory_update")
    n_windows_input = sum(et in windows_types for et, _ in valid) + sum(et in windows_types for et, *_ in invalid)
    assert n_windows_input <= stats1["windows"]["source_rows"] <= 2 * n_windows_input  # at most one scan a branch
    exp = expected_windows(valid, s.lead_time_days)
    assert_windows_match(client, db, exp)
    assert_lake_once(lake, valid)

    q = client.query_df(f"SELECT topic, partition, offset, event_type, reason, raw_payload FROM {db}.quarantine_events FINAL")
    assert len(q) == len(invalid) + len(dead)
    # the producers' dead-letter records are counted in the quarantine with their own reason and event type
    dl = q[q["topic"] == s.topic("dead-letter")].sort_values("offset")
    assert [(r.event_type, r.reason, r.raw_payload) for r in dl.itertuples()] == dead
    q = q[q["topic"] != s.topic("dead-letter")]
    for r in q.itertuples():
        et, payload = meta[(r.topic, r.partition, r.offset)]
        reason = next(x[2] for x in invalid if x[1] is payload)
        assert r.event_type == et and reason in r.reason, (r.reason, reason)
        if isinstance(payload, bytes):  # not UTF-8: the raw bytes are kept, in base64
            assert r.raw_payload == "base64:" + base64.b64encode(payload).decode()
        else:
            assert r.raw_payload == (payload if isinstance(payload, str) else json.dumps(payload))

    max_event = max(r["timestamp"] for et, r in valid if et in ("sales_transaction", "inventory_update"))
    want_alerts = expected_alert_ids(exp, max_event - 10 * 60_000)
    assert any(a.startswith("S003|P009|") for a in want_alerts)
    assert sum(a.startswith("S003|P009|") for a in want_alerts) == 2  # two scripted episodes, not one per window
    got_alerts = client.query_df(f"SELECT alert_id, priority, current_stock, reorder_point FROM {db}.restock_alerts FINAL")
    assert sorted(got_alerts["alert_id"]) == want_alerts
    assert (got_alerts["current_stock"] < got_alerts["reorder_point"]).all()
    assert sorted(alerts_in_kafka(s, alerts_start)) == want_alerts
    levels = client.query_df(f"SELECT store_id, product_id, stock_level FROM {db}.inventory_levels FINAL")
    last_stock = {(r["store_id"], r["product_id"]): r["new_quantity"]
                  for _, r in sorted(((t, r) for t, r in valid if t == "inventory_update"), key=lambda x: x[1]["timestamp"])}
    assert {(r.store_id, r.product_id): int(r.stock_level) for r in levels.itertuples()} == last_stock

    # ---- crash/restart: re-process the last micro-batch of both queries from the checkpoint -----------
    lake_files = sorted(lake.list_files(lake.settings.lake_raw_bucket))
    cp = Path(s.spark_checkpoint_dir)
    for name in ("raw", "windows"):
        rewind(cp / name, 0)  # batch 0 held all the data: re-run it
    stats2 = run_stream(s, available_now=True, timeout=600, spark=spark)
    assert stats2["raw"]["input_rows"] == len(valid) + len(invalid) + len(dead), "batch 0 must have been re-processed"
    assert stats2["windows"]["output_rows"] == len(exp)
    assert_windows_match(client, db, exp)
    assert_lake_once(lake, valid)
    assert sorted(lake.list_files(lake.settings.lake_raw_bucket)) == lake_files
    assert client.query_df(f"SELECT count() AS n FROM {db}.quarantine_events FINAL")["n"][0] == len(invalid) + len(dead)
    assert sorted(client.query_df(f"SELECT alert_id FROM {db}.restock_alerts FINAL")["alert_id"]) == want_alerts
    assert sorted(alerts_in_kafka(s, alerts_start)) == want_alerts, "no alert re-sent on replay"

    # ---- late events beyond the watermark -------------------------------------------------------------
    late = [("sales_transaction", {"transaction_id": "LATE-1", "store_id": "S001", "product_id": "P001", "quantity": 7,
                                   "unit_price": 2.55, "timestamp": t0 + 2000, "customer_id": None,
                                   "payment_method": "CASH", "invoice_id": None}),
            ("sales_transaction", {"transaction_id": "LATE-2", "store_id": "S002", "product_id": "P002", "quantity": 3,
                                   "unit_price": 0.1, "timestamp": t0 - 3_600_000, "customer_id": None,
                                   "payment_method": "CASH", "invoice_id": None}),
            ("inventory_update", {"inventory_id": "LATE-3", "store_id": "S001", "product_id": "P003",
                                  "quantity_change": -1, "new_quantity": 1, "reason": "SALE", "reorder_point": ROP,
                                  "timestamp": t0 + 3000})]
    produce(s, late)
    stats3 = run_stream(s, available_now=True, timeout=600, spark=spark)
    assert stats3["raw"]["input_rows"] == len(late)
    assert_windows_match(client, db, exp)           # aggregates unchanged: late events dropped
    assert_lake_once(lake, valid + late)            # ... but they are in the lake
    assert stats3["windows"]["rows_dropped_by_watermark"] == len(late)
