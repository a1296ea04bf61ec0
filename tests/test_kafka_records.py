"""Kafka-level records other clients produce (2026-12-07), through the real broker, Spark, ClickHouse endpoint and
MinIO: transactions committed and ABORTED, records with headers, batches compressed with every codec the broker
and Spark read (gzip, lz4, zstd from kafka-python; snappy from the broker's own console producer, python-snappy not
being installed), keys that are not UTF-8, empty keys and tombstones.

Every record must land in the lake or be quarantined with its reason, and nothing of an aborted transaction may
reach the lake, the quarantine or the windows (the stream reads with ``isolation.level=read_committed``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import uuid

import pytest

from tests.test_fuzz_stream import BASE_TS, base_record

pytestmark = pytest.mark.integration


def _sale(tag: str, i: int) -> dict:
    """A valid sale with transaction id ``tag-i`` (one second apart per ``i``)."""
    return dict(base_record("sales_transaction", 0), transaction_id=f"{tag}-{i}", timestamp=BASE_TS + i * 1000)


def _value(rec: dict) -> bytes:
    return json.dumps(rec).encode()


def _key(rec: dict) -> bytes:
    return f"{rec['store_id']}|{rec['product_id']}".encode()


def test_aborted_transactions_count_nowhere_and_other_clients_records_land_or_are_quarantined(native_stack, spark):
    """A transactional producer commits 20 sales, aborts 15 sales and 5 inventory updates (stock 1 in an aborted
    update), commits 10 more; plain producers send 10 sales with headers, 10 per codec (gzip, lz4, zstd), the
    console producer 10 snappy ones; 3 records are bad at the Kafka level (a key of invalid UTF-8, an empty key,
    a tombstone); last, a transaction of 5 sales is left open. One available-now run: the 80 non-aborted sales
    are in the lake and count once in the windows, the 3 bad records are quarantined with their key or tombstone
    reason, and none of the 20 aborted records is in the lake, the quarantine or the windows (read with Kafka's
    default read_uncommitted before 2026-12-07: the 15 aborted sales and 5 updates in the lake, 95 window
    transactions, a window's stock level the aborted count of 1), nor the open transaction's sales; committed, a
    second run adds them: 85 in the lake and the windows, and counts no record expired (its range's commit marker
    was counted expired, logged as lost, until 2026-12-07)."""
    from kafka import KafkaProducer

    from contracts import EVENT_TYPES
    from core.clickhouse import get_client
    from streaming.job import run_stream
    from tests.test_streaming_guarantees import lake_ids, namespace

    s = namespace(native_stack, f"krec{uuid.uuid4().hex[:6]}", stream_max_future_minutes=60)
    sales, inv = s.topic(EVENT_TYPES["sales_transaction"]), s.topic(EVENT_TYPES["inventory_update"])
    servers = s.kafka_bootstrap_servers.split(",")

    tx = KafkaProducer(bootstrap_servers=servers, transactional_id=f"tx-{uuid.uuid4().hex[:6]}")
    tx.init_transactions()
    for tag, n, commit in [("TXC", 20, True), ("TXA", 15, False), ("TXC2", 10, True)]:
        tx.begin_transaction()
        for i in range(n):
            rec = _sale(tag, i)
            tx.send(sales, key=_key(rec), value=_value(rec))
        if not commit:
            for i in range(5):
                upd = dict(base_record("inventory_update", 0), inventory_id=f"TXA-INV-{i}", new_quantity=1,
                           timestamp=BASE_TS + i * 1000)
                tx.send(inv, key=_key(upd), value=_value(upd))
        tx.flush()
        tx.commit_transaction() if commit else tx.abort_transaction()
    tx.close()

    expected_sales = {f"{t}-{i}" for t, n in [("TXC", 20), ("TXC2", 10)] for i in range(n)}
    for codec, headers in [(None, [("source", b"pos-7"), ("trace", b"\xff\x00")]),
                           ("gzip", None), ("lz4", None), ("zstd", None)]:
        p = KafkaProducer(bootstrap_servers=servers, acks="all", compression_type=codec, linger_ms=50)
        tag = "HDR" if codec is None else codec.upper()
        for i in range(10):
            rec = _sale(tag, i)
            p.send(sales, key=_key(rec), value=_value(rec), headers=headers)
            expected_sales.add(rec["transaction_id"])
        p.flush()
        p.close()
    lines = []
    for i in range(10):
        rec = _sale("SNAPPY", i)
        lines.append(_key(rec).decode() + "\t" + json.dumps(rec))
        expected_sales.add(rec["transaction_id"])
    from ops.install import kafka_libs

    # the broker's console producer (its JVM client, with snappy-java): kafka-python has no snappy without python-snappy
    subprocess.run([shutil.which("java") or "java", "-cp", f"{kafka_libs(s)}/*",
                    "org.apache.kafka.tools.ConsoleProducer",
                    "--bootstrap-server", s.kafka_bootstrap_servers, "--topic", sales,
                    "--compression-codec", "snappy", "--property", "parse.key=true", "--property",
                    "key.separator=\t"], input="\n".join(lines) + "\n", text=True, check=True, timeout=300,
                   capture_output=True)

    p = KafkaProducer(bootstrap_servers=servers, acks="all")
    bad = {"BAD-UTF8": (b"S1|\xff\xfe", "kafka key"), "BAD-EMPTY": (b"", "kafka key")}
    where = {}
    for tid, (key, _) in bad.items():
        md = p.send(sales, key=key, value=_value(_sale(tid, 0))).get(timeout=60)
        where[(md.topic, md.partition, md.offset)] = tid
    md = p.send(sales, key=b"S1|P1", value=None).get(timeout=60)
    where[(md.topic, md.partition, md.offset)] = "TOMBSTONE"
    p.close()
    # a transaction still open while the stream runs (sent last, so it holds back no other record of the test):
    # not read until it commits (the broker's limit for a transaction's time, transaction.max.timeout.ms, is 15 min:
    # the run below is bounded well within it; a failure aborts the transaction and closes the producer)
    open_tx = KafkaProducer(bootstrap_servers=servers, transactional_id=f"tx-open-{uuid.uuid4().hex[:6]}",
                            transaction_timeout_ms=900_000)
    committed = False
    try:
        open_tx.init_transactions()
        open_tx.begin_transaction()
        for i in range(5):
            rec = _sale("OPEN", i)
            open_tx.send(sales, key=_key(rec), value=_value(rec))
        open_tx.flush()
        stats = run_stream(s, available_now=True, timeout=600, spark=spark)
        _check_first_run(s, stats, expected_sales, where, bad)
        open_tx.commit_transaction()
        committed = True
    finally:
        if not committed:
            with contextlib.suppress(Exception):
                open_tx.abort_transaction()
        open_tx.close()
    stats2 = run_stream(s, available_now=True, timeout=900, spark=spark)
    client, db = get_client(s), s.clickhouse_database
    landed = lake_ids(s, "sales_transaction", "transaction_id")
    assert sorted(landed) == sorted(expected_sales | {f"OPEN-{i}" for i in range(5)}), sorted(landed)[-10:]
    assert int(client.command(f"SELECT toInt64(sum(transaction_count)) FROM {db}.sales_metrics_5m FINAL")) == 85
    # the second run's range holds the 5 records and the transaction's commit marker, which is no record: nothing
    # expired (until 2026-12-07 the marker was counted as a record deleted by retention and logged as lost)
    expired = {q: stats2[q]["records_expired"] for q in ("raw", "windows")}
    expired["stream_batches"] = int(client.command(
        f"SELECT toInt64(sum(records_expired)) FROM {db}.stream_batches FINAL"))
    assert expired == {"raw": 0, "windows": 0, "stream_batches": 0}, expired


def _check_first_run(s, stats, expected_sales, where, bad) -> None:
    """The first run's figures: nothing aborted or still open counted, the 80 committed / plain sales once each, the
    bad keys and the tombstone quarantined with their reasons."""
    from core.clickhouse import get_client
    from tests.test_streaming_guarantees import lake_ids

    client, db = get_client(s), s.clickhouse_database
    landed = lake_ids(s, "sales_transaction", "transaction_id")
    q = client.query_df(f"SELECT topic, partition, offset, reason, raw_payload FROM {db}.quarantine_events FINAL")
    figures = {
        "aborted sales in the lake": sum(t.startswith("TXA") for t in landed),
        "aborted updates in the lake": sum(i.startswith("TXA")
                                           for i in lake_ids(s, "inventory_update", "inventory_id")),
        "aborted records quarantined": int(q["raw_payload"].str.contains("TXA").sum()),
        "open transaction's sales in the lake": sum(t.startswith("OPEN") for t in landed),
        "window transactions": int(client.command(
            f"SELECT toInt64(sum(transaction_count)) FROM {db}.sales_metrics_5m FINAL")),
        # the aborted stock count of 1 must never become a window's stock level
        "windows with the aborted stock level": int(client.command(
            f"SELECT count() FROM {db}.sales_metrics_5m FINAL WHERE stock_level = 1")),
    }
    assert figures == {"aborted sales in the lake": 0, "aborted updates in the lake": 0,
                       "aborted records quarantined": 0, "open transaction's sales in the lake": 0,
                       "window transactions": 80,
                       "windows with the aborted stock level": 0}, figures
    assert sorted(landed) == sorted(expected_sales), f"missing: {sorted(expected_sales - set(landed))[:5]}"
    reasons = {where[(r.topic, int(r.partition), int(r.offset))]: r.reason for r in q.itertuples()
               if (r.topic, int(r.partition), int(r.offset)) in where}
    assert set(reasons) == set(where.values()), reasons
    for tid, (_, text) in bad.items():
        assert text in reasons[tid], (tid, reasons[tid])
    assert reasons["TOMBSTONE"], reasons
    assert len(q) == len(where), q[["topic", "offset", "reason"]]
    assert len(expected_sales) == 80 and stats["raw"]["duplicates_dropped"] == 0

