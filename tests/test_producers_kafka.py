"""Integration: producers against the real native Kafka broker (and MinIO for the reference data).

Topics are created twice (idempotent, partitions and retention checked); a mix of valid and invalid
events is published; everything is consumed back with kafka-python and compared with an independent
expectation built from the same events: every valid event exactly once on its topic (same key, same
partition for one store x SKU, in order), every invalid one on the dead-letter topic with its reason,
delivery counters matching.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pandas as pd
import pytest

from contracts import DEAD_LETTER, EVENT_TYPES, TOPIC_PARTITIONS, ContractError, validate_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka_settings(native_stack):
    """The stack's settings with a topic prefix of this module's own: other suites sharing the broker
    cannot add records to the topics compared here."""
    import uuid

    return native_stack.model_copy(update={"kafka_topic_prefix": f"ptest-{uuid.uuid4().hex[:6]}-"})


def consume_all(settings, topic: str) -> list:
    """Every record of ``topic`` from the beginning to the current end offsets (no consumer group)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=10_000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out = []
        while any(consumer.position(tp) < end[tp] for tp in parts):
            batch = consumer.poll(timeout_ms=2000)
            if not batch and all(consumer.position(tp) >= end[tp] for tp in parts):
                break
            for recs in batch.values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def test_topics_are_created_idempotently(kafka_settings):
    from core.kafka_admin import describe_topics, ensure_topics

    s = kafka_settings
    first = ensure_topics(s)
    second = ensure_topics(s)
    names = sorted(s.topic(t) for t in TOPIC_PARTITIONS)
    assert sorted(first["created"] + first["existed"]) == names
    assert second == {"created": [], "existed": names, "altered": [], "warnings": []}
    desc = describe_topics(s)
    assert {t: d["partitions"] for t, d in desc.items()} == {s.topic(t): n for t, n in TOPIC_PARTITIONS.items()}
    assert {d["retention.ms"] for d in desc.values()} == {str(s.kafka_retention_ms)}
    assert {d["cleanup.policy"] for d in desc.values()} == {"delete"}
    assert {d["message.timestamp.type"] for d in desc.values()} == {"LogAppendTime"}  # the broker's clock


def test_an_existing_topic_with_another_layout_is_reported(kafka_settings):
    """A topic pre-created with 1 partition, retention.ms=60000 and Kafka's default CreateTime timestamps was
    reported as "existed", nothing more; now each difference of partitions or retention is a warning naming topic,
    setting, expected and actual, its timestamp type is set to LogAppendTime (the broker's clock; the stream's
    future-time check needs it), and a compacted topic (which would keep only the last record per key) fails
    ensure_topics."""
    import uuid

    from kafka.admin import NewTopic

    from core.kafka_admin import admin_client, ensure_topics

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"ptest-{uuid.uuid4().hex[:6]}-lay-"})
    sales, prices = s.topic("sales-transactions"), s.topic("price-changes")
    admin = admin_client(s)
    try:
        admin.create_topics([NewTopic(sales, 1, 1, topic_configs={"retention.ms": "60000"})])
    finally:
        admin.close()
    r = ensure_topics(s)
    assert r["existed"] == [sales] and len(r["created"]) == len(TOPIC_PARTITIONS) - 1
    assert r["warnings"] == [f"topic {sales}: partitions expected 3, actual 1 (fewer: less parallelism, keys on "
                             "other partitions)",
                             f"topic {sales}: retention.ms expected {s.kafka_retention_ms}, actual 60000"], r
    assert r["altered"] == [sales]
    from core.kafka_admin import describe_topics

    assert describe_topics(s)[sales]["message.timestamp.type"] == "LogAppendTime"
    assert describe_topics(s)[sales]["retention.ms"] == "60000"   # nothing else altered

    from core.kafka_admin import TopicLayoutError

    s2 = s.model_copy(update={"kafka_topic_prefix": f"ptest-{uuid.uuid4().hex[:6]}-cmp-"})
    prices = s2.topic("price-changes")
    admin = admin_client(s2)
    try:
        admin.create_topics([NewTopic(prices, 2, 1, topic_configs={"cleanup.policy": "compact",
                                                                   "retention.ms": str(s2.kafka_retention_ms)})])
    finally:
        admin.close()
    with pytest.raises(TopicLayoutError, match=f"topic {prices}: cleanup.policy expected delete, actual compact"):
        ensure_topics(s2)


def test_publish_valid_and_invalid_events_round_trip(kafka_settings):
    from core.kafka_admin import ensure_topics
    from producers.invalid import inject_invalid
    from core.kafka import EventPublisher, event_key
    from producers.simulator import SimConfig, Simulator

    s = kafka_settings
    ensure_topics(s)
    sim = Simulator(SimConfig(n_stores=2, n_skus=6, events_per_min_per_store=100, duration_minutes=15, seed=5,
                              customer_event_prob=0.2, price_changes_per_store_hour=20,
                              start=datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)))
    events = list(inject_invalid(sim.events(), 0.03, seed=9))
    events.append(("no_such_event", {"store_id": "S001", "product_id": "X"}))
    events.append(("sales_transaction", ["not", "a", "dict"]))

    expected: dict[str, list] = defaultdict(list)   # topic -> valid records in publish order
    expected_dlq: list[tuple[str, object, str]] = []
    for et, rec in events:
        try:
            if et not in EVENT_TYPES:
                raise ContractError(f"unknown event type {et!r}")
            if not isinstance(rec, dict):
                raise ContractError("record must be a JSON object")
            validate_event(et, rec)
            expected[s.topic(EVENT_TYPES[et])].append(rec)
        except ContractError as exc:
            expected_dlq.append((et, rec, str(exc)))
    assert len(expected_dlq) >= 10 and sum(map(len, expected.values())) > 1000

    with EventPublisher(s) as pub:
        flags = [pub.publish(et, rec) for et, rec in events]
    c = pub.counts
    n_valid = sum(map(len, expected.values()))
    assert flags.count(True) == c["sent"] == n_valid
    assert flags.count(False) == c["dead_lettered"] == len(expected_dlq)
    assert c["failed"] == 0 and c["pending"] == 0
    assert c["delivered"] == n_valid + len(expected_dlq)

    for et_topic in {s.topic(t) for t in EVENT_TYPES.values()} - {s.topic("restock-alerts")}:
        got = consume_all(s, et_topic)
        want = expected.get(et_topic, [])
        assert c["by_topic_delivered"].get(et_topic, 0) == len(got) == len(want)
        values = [json.loads(m.value) for m in got]
        id_field = next(iter(want[0])) if want else None
        assert Counter(v[id_field] for v in values) == Counter(r[id_field] for r in want)  # exactly once
        assert sorted(values, key=lambda v: v[id_field]) == sorted(want, key=lambda r: r[id_field])
        # keys: one key -> one partition, and the key's records keep publish order within it
        et = next(k for k, v in EVENT_TYPES.items() if s.topic(v) == et_topic)
        part_of_key: dict[str, set] = defaultdict(set)
        by_key_got: dict[str, list] = defaultdict(list)
        for m, v in zip(got, values):
            assert m.key.decode() == event_key(et, v)
            part_of_key[m.key].add(m.partition)
            by_key_got[m.key.decode()].append(v[id_field])
        assert all(len(p) == 1 for p in part_of_key.values())
        by_key_want: dict[str, list] = defaultdict(list)
        for r in want:
            by_key_want[event_key(et, r)].append(r[id_field])
        assert dict(by_key_got) == dict(by_key_want)
        if TOPIC_PARTITIONS[EVENT_TYPES[et]] > 1:
            assert len({m.partition for m in got}) > 1  # the keys do spread over the partitions

    dlq = [json.loads(m.value) for m in consume_all(s, s.topic(DEAD_LETTER))]
    assert c["by_topic_delivered"][s.topic(DEAD_LETTER)] == len(dlq) == len(expected_dlq)
    got_dlq = sorted((d["event_type"], json.dumps(d["payload"], sort_keys=True), d["reason"]) for d in dlq)
    want_dlq = sorted((et, json.dumps(rec, sort_keys=True), reason) for et, rec, reason in expected_dlq)
    for (get, gp, gr), (wet, wp, wr) in zip(got_dlq, want_dlq):
        assert (get, gp) == (wet, wp)
        assert gr.startswith(wr[:30]) and gr  # the validation error travels with the record
    assert all(isinstance(d["failed_at"], int) and d["failed_at"] > 0 for d in dlq)


def test_publish_file_of_raw_lines_to_the_real_broker(kafka_settings, tmp_path):
    """producers.raw.publish_file with the real EventPublisher and broker (the integration twin of
    test_contracts.py's unit test of the line decisions): valid lines are on their topic once, with their key;
    a duplicate-key object, bytes that are not UTF-8 and a line breaking the contract are on the dead-letter
    topic, in file order, each with its payload and reason; an empty line is skipped."""
    import uuid

    from core.kafka import EventPublisher, event_key
    from core.kafka_admin import ensure_topics
    from producers.raw import publish_file

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"ptest-{uuid.uuid4().hex[:6]}-raw-"})
    ensure_topics(s)
    now = int(time.time() * 1000)

    def sale(i: int, **kw) -> dict:
        return {"transaction_id": f"RAW{i}", "store_id": "S001", "product_id": f"SKU0000{i}", "quantity": i,
                "unit_price": 2.5, "timestamp": now - 60_000, "customer_id": None, "payment_method": "CARD",
                "invoice_id": None, **kw}

    valid = [sale(1), sale(2, customer_id="C7", payment_method="CASH")]
    dup = json.dumps(sale(3)).encode()[:-1] + b', "quantity": 7}'
    zero = json.dumps(sale(4, quantity=0)).encode()
    path = tmp_path / "pos.jsonl"
    path.write_bytes(b"\n".join([json.dumps(valid[0]).encode(), dup, b"\xfe\xff", b"", zero,
                                  json.dumps(valid[1]).encode()]) + b"\n")
    with EventPublisher(s, client_id="raw-file-test") as pub:
        assert publish_file(pub, "sales_transaction", path) == {"published": 2, "dead_lettered": 3}
    c = pub.counts
    assert c["sent"] == 2 and c["dead_lettered"] == 3
    assert c["delivered"] == 5 and c["failed"] == 0 and c["pending"] == 0

    got = consume_all(s, s.topic(EVENT_TYPES["sales_transaction"]))
    values = sorted((json.loads(m.value) for m in got), key=lambda v: v["transaction_id"])
    assert values == valid
    assert sorted(m.key.decode() for m in got) == sorted(event_key("sales_transaction", r) for r in valid)

    dlq = [json.loads(m.value) for m in consume_all(s, s.topic(DEAD_LETTER))]
    assert [(d["event_type"], d["payload"], d["reason"]) for d in dlq] == [
        ("sales_transaction", dup.decode(), "duplicate JSON key(s): quantity"),
        ("sales_transaction", "base64:/v8=", "value is not valid UTF-8"),
        ("sales_transaction", zero.decode(), "quantity must not be 0")]
    assert all(isinstance(d["failed_at"], int) and d["failed_at"] > 0 for d in dlq)


def test_run_replay_in_process_writes_reference_and_counts(kafka_settings):
    """The orchestrator's entry point: replay a slice of the shipped sample end to end."""
    import pyarrow.parquet as pq

    from producers.cli import DEFAULT_SAMPLE, run_replay
    from producers.replay import Replay, ReplayConfig, load_transactions
    from core.lake import Lake

    s = kafka_settings
    end = datetime.now(timezone.utc)
    result = run_replay(s, DEFAULT_SAMPLE, limit=2000, end_at=end, invalid_rate=0.01, progress=False)
    rep = Replay(load_transactions(DEFAULT_SAMPLE, limit=2000), ReplayConfig(end_at=end))
    events = list(rep.events())
    pub = result["published"]
    assert pub["sent"] == len(events) == sum(result["generator"]["events"].values())
    assert pub["dead_lettered"] == sum(result["invalid_injected"].values()) > 0
    assert pub["failed"] == 0 and pub["delivered"] == pub["sent"] + pub["dead_lettered"]
    assert result["generator"]["skipped"] == dict(rep.stats.skipped)

    lake = Lake(s)
    prods = pq.read_table(result["reference"]["products"], filesystem=lake.fs).to_pandas()
    stores = pq.read_table(result["reference"]["stores"], filesystem=lake.fs).to_pandas()
    assert set(rep.products.product_id) <= set(prods.product_id)
    merged = prods.set_index("product_id").loc[rep.products.product_id].reset_index()
    pd.testing.assert_frame_equal(merged, rep.products.reset_index(drop=True), check_dtype=False)
    assert set(rep.stores.store_id) <= set(stores.store_id)
    assert stores.set_index("store_id").loc["UCI-GB", "country_code"] == "GB"

    sales = consume_all(s, s.topic("sales-transactions"))
    ids = Counter(json.loads(m.value)["transaction_id"] for m in sales)
    replay_ids = [r["transaction_id"] for et, r in events if et == "sales_transaction"]
    assert all(ids[t] == 1 for t in replay_ids)
    # Kafka record timestamps are send times (CreateTime), event time is in the payload
    assert all(abs(m.timestamp - end.timestamp() * 1000) < 3_600_000 for m in sales)


def test_synthetic_over_two_processes_delivers_every_event_once(kafka_settings):
    """``synthetic --processes 2``: disjoint stores per process, summed report, every event once on its topic,
    each store|sku key's events in event-time order in one partition, dead letters counted."""
    import uuid

    from producers.cli import run_synthetic

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"ptest-{uuid.uuid4().hex[:6]}-mp-"})
    # a fixed start (a weekday noon): the simulator's volume follows the hour of day, so "now" would change what is
    # checked (5 % of start times produce no price change at all)
    result = run_synthetic(s, stores=4, skus=15, events_per_min_per_store=60, duration_minutes=10, seed=5,
                           start=datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc), invalid_rate=0.01,
                           write_reference=False, progress=False, processes=2)
    assert set(result["generator"]["events"]) == set(EVENT_TYPES) - {"restock_alert"}, result["generator"]["events"]
    pub = result["published"]
    assert pub["worker_errors"] == [] and pub["failed"] == 0 and pub["pending"] == 0
    assert pub["delivered"] == pub["sent"] + pub["dead_lettered"] == pub["events"]
    assert pub["dead_lettered"] == sum(result["invalid_injected"].values()) > 0
    assert pub["sent"] == sum(result["generator"]["events"].values())
    per = pub["per_process"]
    assert len(per) == 2 and set(per[0]["stores"]).isdisjoint(per[1]["stores"])
    assert set(per[0]["stores"]) | set(per[1]["stores"]) == {"S001", "S002", "S003", "S004"}
    for et, n in result["generator"]["events"].items():
        got = consume_all(s, s.topic(EVENT_TYPES[et]))
        values = [json.loads(m.value) for m in got]
        id_field = next(iter(values[0]))
        assert len(got) == n == len({v[id_field] for v in values})  # every event once, ids distinct
        if et in ("sales_transaction", "inventory_update"):
            by_key: dict[bytes, list] = defaultdict(list)
            for m, v in zip(got, values):
                by_key[m.key].append((m.partition, v["timestamp"]))
            for rows in by_key.values():
                assert len({p for p, _ in rows}) == 1
                assert [t for _, t in rows] == sorted(t for _, t in rows)
    assert len(consume_all(s, s.topic(DEAD_LETTER))) == pub["dead_lettered"]


def _cli(settings, *args, prefix: str, timeout: float = 300, **popen):
    """``python -m producers.cli *args`` against the test broker with topic prefix ``prefix``."""
    import os
    import subprocess
    import sys

    from core.settings import REPO_ROOT

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "KAFKA_TOPIC_PREFIX": prefix,
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "producers.cli", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, **popen)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_jsonl_creates_its_topics(kafka_settings, tmp_path):
    """``producers.cli jsonl`` on a fresh topic prefix (the broker does not create topics): before, each of 3 lines
    blocked 30 s on metadata and failed (93.6 s, exit 1); now the topics are created first and all 3 delivered."""
    import uuid

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-jl-"
    now = int(time.time() * 1000)
    lines = [json.dumps({"transaction_id": f"JL{i}", "store_id": "S1", "product_id": "P1", "quantity": 1,
                         "unit_price": 2.5, "timestamp": now, "customer_id": None, "payment_method": "CARD",
                         "invoice_id": None}) for i in range(3)]
    (tmp_path / "l.jsonl").write_text("\n".join(lines) + "\n")
    t0 = time.monotonic()
    r = _cli(kafka_settings, "jsonl", str(tmp_path / "l.jsonl"), "--event-type", "sales_transaction", prefix=prefix)
    took = time.monotonic() - t0
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    out = json.loads(r.stdout)
    assert out["lines"] == {"published": 3, "dead_lettered": 0}
    assert out["published"]["delivered"] == 3 and out["published"]["failed"] == 0, out
    assert prefix + "sales-transactions" in out["topics"]["created"]
    assert took < 28, took   # no 30 s metadata wait


def test_a_send_that_blocks_stops_the_run_and_reports_the_rest(kafka_settings, tmp_path):
    """A send that blocks ``max_block_ms`` (topic metadata unavailable: here the topics of a prefix never
    created, as for a stopped broker) stops the run: every later line / event is reported, not sent one by one
    after a 30 s block each (before: 6 lines x max_block_ms, no report of what was left)."""
    import uuid

    from core.kafka import EventPublisher
    from producers.cli import publish_events
    from producers.raw import publish_file
    from producers.simulator import SimConfig, Simulator

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"ptest-{uuid.uuid4().hex[:6]}-none-"})
    now = int(time.time() * 1000)
    path = tmp_path / "six.jsonl"
    path.write_text("\n".join(json.dumps({
        "transaction_id": f"N{i}", "store_id": "S1", "product_id": "P1", "quantity": 1, "unit_price": 2.5,
        "timestamp": now, "customer_id": None, "payment_method": "CARD", "invoice_id": None}) for i in range(6)) + "\n")
    t0 = time.monotonic()
    with EventPublisher(s, client_id="stall-test", max_block_ms=1500) as pub:
        counts = publish_file(pub, "sales_transaction", path)
        assert pub.stalled and "Failed to update metadata" in pub.stalled
        pub.abort(2)
    took = time.monotonic() - t0
    assert counts == {"published": 1, "dead_lettered": 0, "stopped_at_line": 1, "not_sent": 5}, counts
    c = pub.counts
    assert (c["sent"], c["delivered"], c["failed"], c["pending"]) == (1, 0, 1, 0), c
    assert took < 6, took

    events = Simulator(SimConfig(n_stores=1, n_skus=5, duration_minutes=60, seed=3)).events()
    t0 = time.monotonic()
    with EventPublisher(s, client_id="stall-test-2", max_block_ms=1500) as pub:
        rep = publish_events(events, pub, progress=False)
    assert time.monotonic() - t0 < 12
    assert rep["stopped"] and "max_block_ms" in rep["stopped"] and rep["events"] == 1, rep
    assert rep["failed"] == 1 and rep["pending"] == 0 and rep["delivered"] == 0, rep


def _end_offsets(settings, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","), group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        return sum(c.end_offsets(parts).values()) if parts else 0
    finally:
        c.close()


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_stops_flushes_and_reports(kafka_settings, processes):
    """SIGTERM (compose stop with ``init: true``, supervisor stop) to a running synthetic producer: it stops
    producing, flushes, prints the delivery report and exits 143 (128 + SIGTERM), every record it handed over
    delivered and on its topic; with ``--processes 2`` the parent forwards it to its workers and sums their reports.
    Before: killed at once, exit 143 (-15 here) with no flush and no report."""
    import signal
    import subprocess
    import uuid

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-term-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    proc = _cli(kafka_settings, "synthetic", "--stores", "5", "--skus", "20", "--events-per-min-per-store", "300",
                "--duration-minutes", "600", "--realtime", "--no-reference", "--quiet", "--processes", str(processes),
                prefix=prefix,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:   # SIGTERM once records reach the broker (the run is publishing)
            time.sleep(2)
            assert proc.poll() is None, proc.communicate()
            try:
                if _end_offsets(s, s.topic("sales-transactions")) > 0:
                    break
            except Exception:
                pass
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        _kill_if_running(proc)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    pub = json.loads(out)["published"]
    assert pub["signal"] == "SIGTERM" and "SIGTERM" in pub["stopped"], pub
    assert pub["failed"] == 0 and pub["pending"] == 0 and pub["delivered"] == pub["sent"] + pub["dead_lettered"] > 0
    for suffix in ("sales-transactions", "inventory-updates"):
        assert _end_offsets(s, s.topic(suffix)) == pub["by_topic_delivered"].get(s.topic(suffix), 0), suffix


def _poll(cond, what: str, proc=None, timeout: float = 60.0):
    """``cond()``'s first truthy value, checked every 20 ms (a process ``proc`` that ends first fails the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the producer ended (rc {proc.returncode}) before {what}: {proc.communicate()}")
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _kill_if_running(proc) -> None:
    """Kill a producer process the test did not see end (a failed wait or assertion), and drain its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def _producer(bootstrap: str, prefix: str, *args):
    """``python -m producers.cli *args`` (Popen, text pipes) with SIGINT at its default, as from a terminal (a
    test runner started in the background may ignore it, and that would be inherited)."""
    import os
    import signal
    import subprocess
    import sys

    from core.settings import REPO_ROOT

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-m", "producers.cli", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _fifo_has_reader(fifo) -> int | None:
    """A write end of the FIFO once a process reads it (non-blocking open: ENXIO while no reader), else None."""
    import errno
    import os

    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        return None


@pytest.mark.parametrize("sig, rc", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_the_replay_reads_its_file_stops_with_a_report(tmp_path, sig, rc):
    """A signal during start-up (here: the replay reading its file, a FIFO with a writer and no data yet, so the
    read blocks until the test decides) stops the producer as one during publishing does: the report, nothing
    published, the phase named, exit 128 + the signal. Before 2026-12-06: killed at once, no report (exit -15;
    SIGINT: exit 130 and an empty stdout)."""
    import os
    import signal

    fifo = tmp_path / "log.csv"
    os.mkfifo(fifo)
    proc = _producer("127.0.0.1:9", "ptest-startup-", "replay", "--path", str(fifo), "--quiet", "--no-reference")
    fd = None
    try:
        fd = _poll(lambda: _fifo_has_reader(fifo), "the replay to open its file", proc)
        proc.send_signal(getattr(signal, sig))
        # a read blocked inside pandas' C parser retries on EINTR without running Python's handlers (the full
        # suite on 9375b8a: both cases hung 60 s; alone they pass): end the file, so the read returns and the
        # pending handler runs before any other line of the replay; the phase asserted below is still the read's
        os.close(fd)
        fd = None
        out, err = proc.communicate(timeout=60)
    finally:
        _kill_if_running(proc)
        if fd is not None:
            os.close(fd)
    assert proc.returncode == rc, (proc.returncode, out[-1000:], err[-2000:])
    report = json.loads(out)
    pub = report["published"]
    assert pub["signal"] == sig and pub["events"] == pub["sent"] == pub["delivered"] == pub["failed"] == 0, pub
    assert pub["stopped"] == f"{sig} received during start-up (reading the transaction log); nothing published"
    assert report["topics"] is None and "Traceback" not in err, err[-2000:]


def test_sigterm_while_topics_are_created_stops_with_a_report():
    """``synthetic --processes 2`` stopped while it creates its topics (a broker that accepts the connection and
    never answers, so the admin request waits): report, nothing published, exit 143, no worker started.
    Before 2026-12-06: killed at once, exit -15, no report."""
    import signal
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent.settimeout(0.02)
    proc = _producer(f"127.0.0.1:{silent.getsockname()[1]}", "ptest-silent-", "synthetic", "--stores", "2",
                     "--processes", "2", "--no-reference", "--quiet")
    conns = []

    def accepted() -> bool:
        try:
            conns.append(silent.accept()[0])
        except socket.timeout:
            return False
        return True

    try:
        _poll(accepted, "the producer's admin client to connect", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        _kill_if_running(proc)
        for c in conns:
            c.close()
        silent.close()
    assert proc.returncode == 143, (proc.returncode, out[-1000:], err[-2000:])
    pub = json.loads(out)["published"]
    assert pub["stopped"] == "SIGTERM received during start-up (creating topics); nothing published", pub
    assert pub["signal"] == "SIGTERM" and pub["events"] == pub["sent"] == pub["delivered"] == 0, pub
    assert "worker_errors" not in pub and "Traceback" not in err, err[-2000:]


def test_sigterm_while_the_worker_processes_start_is_handled_by_them(kafka_settings):
    """SIGTERM to ``synthetic --processes 2`` as soon as its worker processes exist (they still import and build
    their simulators): forwarded to them, each stops and reports; exit 143, no process error, every record
    handed over delivered and on its topic. Before 2026-12-06 a worker that got the forwarded SIGTERM while
    starting died: BrokenProcessPool in ``worker_errors``, exit 1."""
    import signal
    import uuid

    import psutil

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-wstart-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    proc = _producer(kafka_settings.kafka_bootstrap_servers, prefix, "synthetic", "--stores", "4", "--skus", "10",
                     "--events-per-min-per-store", "300", "--duration-minutes", "600", "--realtime",
                     "--no-reference", "--quiet", "--processes", "2")
    try:
        parent = psutil.Process(proc.pid)
        def cmdline(c) -> str:   # a child that ends between the listing and the read (e.g. a helper) has none
            try:
                return " ".join(c.cmdline())
            except psutil.Error:
                return ""

        _poll(lambda: len([c for c in parent.children() if "spawn_main" in cmdline(c)]) >= 2,
              "two worker processes", proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        _kill_if_running(proc)
    assert proc.returncode == 143, (proc.returncode, out[-3000:], err[-3000:])
    pub = json.loads(out)["published"]
    assert pub["worker_errors"] == [] and pub["signal"] == "SIGTERM", pub
    assert len(pub["per_process"]) == 2 and pub["failed"] == pub["pending"] == 0, pub
    assert pub["delivered"] == pub["sent"] + pub["dead_lettered"], pub
    for suffix in ("sales-transactions", "inventory-updates"):
        assert _end_offsets(s, s.topic(suffix)) == pub["by_topic_delivered"].get(s.topic(suffix), 0), suffix


@pytest.mark.parametrize("fifo", [True, False])
def test_jsonl_stops_on_sigterm_flushes_and_reports(kafka_settings, tmp_path, fifo):
    """``jsonl`` reading a FIFO (a gateway's stream): 50 valid lines and a bad one are written, delivered, then
    SIGTERM while it waits for the next line: it stops at once (line 52, the rest not read), the delivered ones
    reported, exit 143. A regular file of 200,000 lines, SIGTERM once records arrive: the lines not sent are counted,
    sent + dead-lettered + not sent = the file. Before 2026-12-06: no handler, killed at once (exit -15), no
    report."""
    if not fifo:
        return _jsonl_file_sigterm(kafka_settings, tmp_path)
    import os
    import signal
    import uuid

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-jlterm-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    now = int(time.time() * 1000)

    def line(i: int) -> bytes:
        return (json.dumps({"transaction_id": f"JT{i}", "store_id": "S1", "product_id": f"P{i % 3}",
                            "quantity": 1, "unit_price": 2.5, "timestamp": now, "customer_id": None,
                            "payment_method": "CARD", "invoice_id": None}) + "\n").encode()

    fifo = tmp_path / "gateway.jsonl"
    os.mkfifo(fifo)
    proc = _producer(kafka_settings.kafka_bootstrap_servers, prefix, "jsonl", str(fifo),
                     "--event-type", "sales_transaction")
    fd = None
    try:
        fd = _poll(lambda: _fifo_has_reader(fifo), "jsonl to open its file", proc, timeout=120)
        os.set_blocking(fd, True)
        os.write(fd, b"".join(line(i) for i in range(50)) + b'{"transaction_id": "bad"}\n')
        _poll(lambda: _end_offsets(s, s.topic("sales-transactions")) == 50
              and _end_offsets(s, s.topic(DEAD_LETTER)) == 1, "the first 51 lines on their topics", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)   # the writer stays open: no EOF ends the read
    finally:
        if fd is not None:
            os.close(fd)
        _kill_if_running(proc)
    assert proc.returncode == 143, (proc.returncode, out[-1000:], err[-2000:])
    report = json.loads(out)
    assert report["lines"] == {"published": 50, "dead_lettered": 1, "stopped_at_line": 52, "not_sent": None}, report
    pub = report["published"]
    assert pub["signal"] == "SIGTERM" and "before line 52, the rest not read" in pub["stopped"], pub
    assert (pub["sent"], pub["dead_lettered"], pub["delivered"], pub["failed"], pub["pending"]) == (50, 1, 51, 0, 0)
    assert _end_offsets(s, s.topic("sales-transactions")) == 50 and _end_offsets(s, s.topic(DEAD_LETTER)) == 1


def test_restock_alerts_come_back_out_once_each(kafka_settings, tmp_path, monkeypatch):
    """``producers.cli alerts`` reads the alerts topic in a consumer group: each valid alert printed once as a JSON
    line (a re-sent alert_id, as the stream re-sends after a crash, skipped, also in a later run), a malformed
    message and one off the contract go to the dead-letter topic with their reason and do not stop the run; a
    second run of the group prints only what came since. Checked against the messages written here."""
    import uuid

    from kafka import KafkaProducer

    from core.kafka_admin import ensure_topics

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-al-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    ensure_topics(s)
    now = int(time.time() * 1000)

    def alert(i: int) -> dict:
        return _alert(i, now)

    def send(values) -> None:                   # raw bytes, as any producer might write them
        producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), acks="all")
        for v in values:
            producer.send(s.topic("restock-alerts"), key=b"S1|P1", value=v)
        producer.flush(30)
        producer.close()

    send([json.dumps(alert(1)).encode(), b"{not json", json.dumps(alert(2)).encode(),
          json.dumps(alert(1)).encode(), json.dumps({**alert(3), "priority": "URGENT"}).encode()])
    monkeypatch.setenv("RETAIL_STATE_DIR", str(tmp_path))      # the group's seen ids: tmp_path/alerts/
    r = _cli(s, "alerts", "--idle-seconds", "3", prefix=prefix)
    assert r.returncode == 0, r.stderr[-2000:]
    printed = [json.loads(line) for line in r.stdout.splitlines()]
    assert printed == [alert(1), alert(2)], (printed, r.stderr[-3000:])
    report = json.loads(r.stderr[r.stderr.index("{"):])
    assert (report["alerts"], report["duplicates"], report["invalid"]) == (2, 1, 2), report
    dead = [json.loads(m.value) for m in consume_all(s, s.topic(DEAD_LETTER))]
    assert [d["event_type"] for d in dead] == ["restock_alert", "restock_alert"], dead
    assert "offset 1" in dead[0]["reason"] and "URGENT" in dead[1]["payload"], dead
    send([json.dumps(alert(2)).encode(), json.dumps(alert(4)).encode()])     # a re-send and a new one
    r = _cli(s, "alerts", "--idle-seconds", "3", prefix=prefix)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [json.loads(line) for line in r.stdout.splitlines()] == [alert(4)], r.stdout


def _jsonl_file_sigterm(kafka_settings, tmp_path) -> None:
    """The regular-file half of test_jsonl_stops_on_sigterm_flushes_and_reports."""
    import signal
    import uuid

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-jlfile-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    now = int(time.time() * 1000)
    n = 200_000   # seconds of sending: the signal lands mid-file
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({
        "transaction_id": f"JF{i}", "store_id": "S1", "product_id": f"P{i % 7}", "quantity": 1, "unit_price": 2.5,
        "timestamp": now, "customer_id": None, "payment_method": "CARD", "invoice_id": None}) + "\n"
        for i in range(n)))
    proc = _producer(kafka_settings.kafka_bootstrap_servers, prefix, "jsonl", str(path),
                     "--event-type", "sales_transaction")
    try:
        _poll(lambda: _end_offsets(s, s.topic("sales-transactions")) > 0, "records on the topic", proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        _kill_if_running(proc)
    assert proc.returncode == 143, (proc.returncode, out[-1000:], err[-2000:])
    lines, pub = json.loads(out)["lines"], json.loads(out)["published"]
    assert lines["published"] + lines["not_sent"] == n and lines["not_sent"] > 0, lines
    assert lines["stopped_at_line"] == lines["published"] + 1 and lines["dead_lettered"] == 0, lines
    assert pub["failed"] == pub["pending"] == 0 and pub["delivered"] == pub["sent"] == lines["published"], pub
    assert _end_offsets(s, s.topic("sales-transactions")) == lines["published"]


def test_sigterm_stops_a_replay_waiting_on_a_silent_fifo_and_keeps_what_it_read(kafka_settings, tmp_path):
    """The replay reading a FIFO whose writer wrote 6 sale lines and a cut seventh and stays open (no EOF), started
    with SIGTERM / SIGINT blocked (a launcher that spawns with them masked; the handler of a blocked signal never
    runs): SIGTERM stops it while the writer is still open, exit 143, the report names the read, and the bytes it
    read are saved under $RETAIL_STATE_DIR/replay (a FIFO's bytes are gone once read). Replaying that file into the
    real broker publishes the 6 sales and dead-letters the cut line: rows in = published + dead-lettered.
    Before 2026-12-06: no exit until the writer closed the FIFO (20 s measured, then exit 1, no report, the bytes
    lost)."""
    import os
    import signal
    import subprocess
    import sys
    import termios
    import uuid
    import fcntl
    import struct

    from core.settings import REPO_ROOT
    from producers.cli import run_replay

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-rpfifo-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    head = "invoice,line_no,stock_code,description,quantity,unit_price,invoice_ts,customer_id,country\n"
    rows = [f"55{i:04d},1,2{i:04d},ITEM {i},{i + 1},1.25,2011-05-16 08:{10 + i}:00,15813,United Kingdom\n"
            for i in range(6)]
    data = (head + "".join(rows) + "559999,1,23000,CUT LI").encode()   # the writer's last line is cut
    fifo = tmp_path / "pos.csv"
    os.mkfifo(fifo)
    state = tmp_path / "state"

    def masked() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers, "KAFKA_TOPIC_PREFIX": prefix,
           "RETAIL_STATE_DIR": str(state), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "producers.cli", "replay", "--path", str(fifo), "--quiet",
                             "--no-reference"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=masked)
    fd = None
    try:
        fd = _poll(lambda: _fifo_has_reader(fifo), "the replay to open its file", proc)
        os.write(fd, data)

        def unread() -> int:
            return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]

        _poll(lambda: unread() == 0, "the replay to read what was written", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)   # the writer stays open: no EOF ends the read
    finally:
        _kill_if_running(proc)
        if fd is not None:
            os.close(fd)
    assert proc.returncode == 143, (proc.returncode, out[-1000:], err[-2000:])
    report = json.loads(out)
    assert report["published"]["stopped"] == ("SIGTERM received during start-up (reading the transaction log); "
                                              "nothing published"), report
    saved = report["unread_saved"]
    assert saved["bytes"] == len(data) and saved["lines"] == 7, saved
    part = state / "replay" / os.path.basename(saved["path"])
    assert part.read_bytes() == data
    got = run_replay(s, part, keep_dates=True, write_reference=False, progress=False)
    sales = [json.loads(m.value) for m in consume_all(s, s.topic("sales-transactions"))]
    dead = [json.loads(m.value) for m in consume_all(s, s.topic(DEAD_LETTER))]
    assert sorted(x["transaction_id"] for x in sales) == sorted(f"55{i:04d}-1" for i in range(6)), sales
    assert [d["event_type"] for d in dead] == ["uci_source_line"] and "559999" in dead[0]["payload"]["text"], dead
    assert got["published"]["failed"] == 0 and got["generator"]["rows"] == 7, got


def test_an_alert_consumer_killed_after_its_commit_skips_the_streams_resend(kafka_settings, tmp_path, monkeypatch):
    """``alerts --follow`` prints 2 alerts and commits their offsets, then is killed (SIGKILL: no clean exit); the
    stream re-sends alert 1 (same alert_id: its crash between Kafka's acknowledgement and the ClickHouse insert)
    and sends alert 3. The next run prints alert 3 only: each alert_id printed once over both runs, none lost.
    Before 2026-12-06 the ids were saved only when a run ended: the re-send was printed a second time."""
    import subprocess
    import threading
    import uuid

    from kafka import KafkaAdminClient, KafkaProducer

    from core.kafka_admin import ensure_topics

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-alk-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    ensure_topics(s)
    now = int(time.time() * 1000)

    def alert(i: int) -> dict:
        return _alert(i, now)

    def send(alerts) -> None:
        producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), acks="all")
        for a in alerts:
            producer.send(s.topic("restock-alerts"), key=f"S1|{a['product_id']}".encode(), value=json.dumps(a).encode())
        producer.flush(30)
        producer.close()

    monkeypatch.setenv("RETAIL_STATE_DIR", str(tmp_path))
    send([alert(1), alert(2)])
    proc = _cli(s, "alerts", "--follow", "--group", "crash", prefix=prefix, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap_servers.split(","))
    try:
        def committed() -> int:
            from kafka.errors import KafkaError

            try:
                offsets = admin.list_group_offsets("crash").get("crash", {})
            except KafkaError:   # the group's coordinator is not there yet (first group of the broker)
                return -1
            return sum(o.offset for tp, o in offsets.items() if tp.topic == s.topic("restock-alerts"))

        _poll(lambda: committed() == 2, "the consumer to commit the 2 alerts", proc)
        proc.kill()   # no clean exit: nothing written at the end of the run
        proc.wait(30)
        reader.join(30)
    finally:
        admin.close()
        _kill_if_running(proc)
    first = [json.loads(line) for line in lines]
    assert first == [alert(1), alert(2)], first
    send([alert(1), alert(3)])   # the stream's re-send after its crash, and a new alert
    r = _cli(s, "alerts", "--group", "crash", "--idle-seconds", "3", prefix=prefix)
    assert r.returncode == 0, r.stderr[-2000:]
    second = [json.loads(line) for line in r.stdout.splitlines()]
    assert second == [alert(3)], second
    printed = [a["alert_id"] for a in first + second]
    assert sorted(printed) == sorted({alert(i)["alert_id"] for i in (1, 2, 3)}), printed


def _uci_file(path, rows: list[dict], header: list[str], *, encoding: str = "utf-8", bom: bool = False,
              newline: str = "\n", cut: int = 0, encoding_errors: str = "strict", sep: str = ",",
              names: list[str] | None = None, gz: bool = False) -> None:
    """A transaction log with ``rows`` under ``header`` written by the csv module (quotes where needed), in
    ``encoding`` (``encoding_errors``: "surrogateescape" writes a lone byte given as a surrogate, e.g. "\\udcc9"),
    with a byte-order mark, ``newline`` line ends, its last ``cut`` characters cut off, fields separated by ``sep``,
    the header line written as ``names`` (default ``header``), gzip-compressed when ``gz``."""
    import csv
    import gzip
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=newline, delimiter=sep)
    w.writerow(names or header)
    for r in rows:
        w.writerow([r.get(h, "") for h in header])
    text = buf.getvalue()[:-cut] if cut else buf.getvalue()
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding, encoding_errors)
    path.write_bytes(gzip.compress(data) if gz else data)


UCI_COLUMNS = ["invoice", "line_no", "stock_code", "description", "quantity", "unit_price", "invoice_ts",
               "customer_id", "country"]


def _uci_row(i: int, **kw) -> dict:
    return {"invoice": f"57{i:04d}", "line_no": "1", "stock_code": f"2{i % 7:04d}", "description": f"ITEM {i}",
            "quantity": str(i % 5 + 1), "unit_price": "1.25", "invoice_ts": f"2011-05-16 08:{i:02d}:00",
            "customer_id": "15813", "country": "United Kingdom", **kw}


def test_replay_of_malformed_files_publishes_every_good_row_and_dead_letters_every_bad_one(kafka_settings,
                                                                                           tmp_path):
    """The replay over files it never saw, each into the real broker: a byte-order mark with CRLF, another column
    order with extra columns, no description / customer columns, quoted commas and quotes in descriptions, Latin-1
    bytes, zero and negative quantities, thousands separators, day-first dotted dates, a header only, a last line
    cut in its country, a Latin-1 line in a UTF-8 file. Rows in (the csv module's count of the file) = sales on the topic (each good row is one
    sale or return, its transaction_id) + source lines dead-lettered with a reason, and the report's rows say the
    same; an empty file (0 bytes) is a report of 0 rows and a file whose every date is bad has every row
    dead-lettered (until 2026-12-06 both were refused whole). Before 2026-12-06: the file without the optional columns and the dotted dates were refused
    whole (10 rows, 0 published), a zero quantity was neither published nor dead-lettered (2 of 9 rows) and the cut
    line was published as a store "UCI-X-UNITEDK", and a UTF-8 file with one Latin-1 line was refused whole."""
    import csv
    import gzip
    import io
    import uuid

    from producers.cli import run_replay

    good = [_uci_row(i) for i in range(6)]
    cases = {   # name -> (rows, header, options, ids of the good rows, number of bad rows)
        "bom_crlf": (good, UCI_COLUMNS, {"bom": True, "newline": "\r\n"}),
        "order_extra": ([{**r, "till": "3", "note": "a,b"} for r in good], ["note"] + UCI_COLUMNS[::-1] + ["till"], {}),
        "no_optional": (good, [c for c in UCI_COLUMNS if c not in ("description", "customer_id")], {}),
        "quoted": ([{**r, "description": 'BAG, "RED", 2,5 CM'} for r in good], UCI_COLUMNS, {}),
        "latin1": ([{**r, "description": "CAFÉ CRÈME £2"} for r in good], UCI_COLUMNS, {"encoding": "latin-1"}),
        "quantities": (good + [_uci_row(6, quantity="0"), _uci_row(7, quantity="-0"),
                               _uci_row(8, invoice="C570008", quantity="-2")], UCI_COLUMNS, {}),
        "thousands": (good + [_uci_row(6, unit_price="1,234.50"), _uci_row(7, quantity="1,200")], UCI_COLUMNS, {}),
        "dotted_dates": ([{**r, "invoice_ts": f"16.05.2011 08:{i:02d}"} for i, r in enumerate(good)], UCI_COLUMNS, {}),
        "header_only": ([], UCI_COLUMNS, {}),
        "empty": ([], [], {"cut": 1}),   # 0 bytes
        "quoted_newline": ([{**r, "description": 'A "BIG",\r\nRED BAG'} for r in good], UCI_COLUMNS, {}),
        "semicolon": ([{**r, "unit_price": "1,25"} for r in good], UCI_COLUMNS, {"sep": ";"}),
        "gzip": (good, UCI_COLUMNS, {"gz": True, "newline": "\r\n"}),
        "header_case": (good, UCI_COLUMNS, {"names": [" Invoice", "Line_No", "STOCK CODE", "Description ",
                                                      "Quantity", "Unit Price", "Invoice TS", "Customer ID",
                                                      "Country"]}),
        "trailing_commas": (good, UCI_COLUMNS + ["", ""], {}),
        "blank_lines": (good, UCI_COLUMNS, {"newline": "\n\n"}),
        "prices": (good + [_uci_row(6, unit_price="-1.00"), _uci_row(7, unit_price="0")], UCI_COLUMNS, {}),
        "sci_quantity": (good + [_uci_row(6, quantity="1e3"), _uci_row(7, quantity="1,000")], UCI_COLUMNS, {}),
        "header_mid": (good[:3] + [{h: h for h in UCI_COLUMNS}] + good[3:], UCI_COLUMNS, {}),
        "long_lines": (good + [_uci_row(6, description="X" * 1_200_000),
                               _uci_row(7, description="Y" * 1_200_000, quantity="a")], UCI_COLUMNS, {}),
        "bad_dates": ([{**r, "invoice_ts": ts} for r, ts in zip(good, ["2011-13-45 10:00:00", "not a date", "16/05",
                                                                      "", "12/1/201O 8:26", "2011-05-16 25:00"])],
                      UCI_COLUMNS, {}),
        "cut_last_line": (good + [_uci_row(6)], UCI_COLUMNS, {"cut": len("gdom\n")}),
        "mixed_encoding": ([{**r, "description": "CAFÉ CRÈME"} for r in good] + [_uci_row(6, description="\udcc9")],
                           UCI_COLUMNS, {"encoding_errors": "surrogateescape"}),   # a Latin-1 "É" in UTF-8 text
    }
    expect = {   # name -> (transaction ids published, rows dead-lettered)
        "quantities": ({f"57{i:04d}-1" for i in range(6)} | {"C570008-1"}, 2),
        "thousands": ({f"57{i:04d}-1" for i in range(6)}, 2),
        "header_only": (set(), 0),
        "empty": (set(), 0),
        "prices": ({f"57{i:04d}-1" for i in (0, 1, 2, 3, 4, 5, 7)}, 1),
        "sci_quantity": ({f"57{i:04d}-1" for i in range(7)}, 1),
        "header_mid": ({f"57{i:04d}-1" for i in range(6)}, 1),
        "long_lines": ({f"57{i:04d}-1" for i in range(7)}, 1),
        "bad_dates": (set(), 6),
        "cut_last_line": ({f"57{i:04d}-1" for i in range(6)}, 1),
        "mixed_encoding": ({f"57{i:04d}-1" for i in range(6)}, 1),
    }
    problems = {}
    for name, (rows, header, opts) in cases.items():
        path = tmp_path / f"{name}.csv"
        _uci_file(path, rows, header, **opts)
        raw = gzip.decompress(path.read_bytes()) if opts.get("gz") else path.read_bytes()
        text = raw.decode(opts.get("encoding", "utf-8-sig"), "surrogateescape")
        limit = csv.field_size_limit(10_000_000)   # the count of a file with a 1.2 MB field
        try:
            rows_in = max(0, sum(1 for rec in csv.reader(io.StringIO(text, newline=""), delimiter=opts.get("sep", ","))
                                 if rec) - 1)
        finally:
            csv.field_size_limit(limit)
        s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"ptest-{uuid.uuid4().hex[:6]}-bad-"})
        try:
            got = run_replay(s, path, keep_dates=True, write_reference=False, progress=False)
        except ValueError as exc:
            problems[name] = f"refused: {str(exc)[:300]}"
            continue
        sales = [json.loads(m.value) for m in consume_all(s, s.topic("sales-transactions"))]
        ids = [x["transaction_id"] for x in sales]
        dead = [json.loads(m.value) for m in consume_all(s, s.topic(DEAD_LETTER))]
        want_ids, want_dead = expect.get(name, ({f"57{i:04d}-1" for i in range(6)}, 0))
        stores = {json.loads(m.value)["store_id"] for m in consume_all(s, s.topic("inventory-updates"))}
        if (sorted(ids) != sorted(want_ids) or len(dead) != want_dead or len(ids) + len(dead) != rows_in
                or not all(d["event_type"] == "uci_source_line" and d["reason"] for d in dead)
                or got["published"]["failed"] or stores - {"UCI-GB"}
                or got["rows"]["in"] != rows_in or got["rows"]["published"] != len(ids)
                or {x["unit_price"] for x in sales} - {1.25, 0.0}):
            problems[name] = {"rows_in": rows_in, "ids": sorted(ids), "dead": [d["reason"][:200] for d in dead],
                              "stores": sorted(stores), "failed": got["published"]["failed"], "rows": got["rows"],
                              "prices": sorted({x["unit_price"] for x in sales})}
    assert not problems, problems


def _alert(i: int, now: int) -> dict:
    """A valid restock alert of store S1 / product P<i> at ``now`` (epoch ms)."""
    return {"alert_id": f"S1|P{i}|{now}", "store_id": "S1", "product_id": f"P{i}", "current_stock": i,
            "reorder_point": 10, "recommended_quantity": 20 - i, "sales_velocity": 1.5, "hours_of_cover": None,
            "priority": "HIGH", "window_end": now, "timestamp": now}


def _dead_letters_of_a_bad_alert_between_two(kafka_settings, tmp_path, monkeypatch, bad: bytes | None) -> list[dict]:
    """Two valid alerts with the message ``bad`` (None: a tombstone) between them on a fresh alerts topic, read by
    ``producers.cli alerts``: asserts exit 0 and both alerts printed; returns the dead letters (decoded)."""
    import uuid

    from kafka import KafkaProducer

    from core.kafka_admin import ensure_topics

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-albad-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    ensure_topics(s)
    now = int(time.time() * 1000)
    alerts = [_alert(i, now) for i in (1, 2)]
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), acks="all")
    for value in (json.dumps(alerts[0]).encode(), bad, json.dumps(alerts[1]).encode()):
        producer.send(s.topic("restock-alerts"), key=b"S1|P1", value=value)
    producer.flush(30)
    producer.close()
    monkeypatch.setenv("RETAIL_STATE_DIR", str(tmp_path))
    r = _cli(s, "alerts", "--idle-seconds", "3", prefix=prefix)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [json.loads(line) for line in r.stdout.splitlines()] == alerts, r.stdout
    return [json.loads(m.value) for m in consume_all(s, s.topic(DEAD_LETTER))]


def test_a_tombstone_on_the_alerts_topic_is_dead_lettered_and_the_alerts_after_it_come_out(kafka_settings, tmp_path,
                                                                                           monkeypatch):
    """A record with a key and no value (a tombstone, as a compaction tool or a careless producer writes) between two
    alerts: dead-lettered with its reason and offset, both alerts printed, exit 0. Before 2026-12-06: TypeError,
    exit 1, the offset not committed, so every later run stopped at it and no alert after it came out."""
    dead = _dead_letters_of_a_bad_alert_between_two(kafka_settings, tmp_path, monkeypatch, None)
    assert len(dead) == 1 and dead[0]["payload"] is None and "tombstone" in dead[0]["reason"] \
        and "offset 1" in dead[0]["reason"], dead


@pytest.mark.parametrize("bad", [b'"' * 700_000, "\u00e9".encode() * 300_000, b"\xff" * 600_000],
                         ids=["quotes", "accented", "undecodable"])
def test_a_bad_alert_too_large_for_its_dead_letter_is_dead_lettered_cut(kafka_settings, tmp_path, monkeypatch, bad):
    """A bad message under 1 MB (the broker takes it) between two alerts, whose text JSON escaping blows past the
    producer's 1 MB request size in a dead letter: 700,000 '"' (x2), 300,000 'e-acute' (x6 as \\u00e9), 600,000
    undecodable bytes (each a U+FFFD, x6). It is dead-lettered with the longest prefix of its text whose escaped
    JSON fits DEAD_LETTER_PAYLOAD_MAX bytes (checked against json.dumps), the reason saying so and naming its
    offset; both alerts are printed. Before 2026-12-06 the dead letter failed, the offset was committed all the
    same: the message was in neither the dead-letter topic nor a later run; cut to 200,000 characters the
    'accented' and 'undecodable' cases still failed (1.2 MB), and every later run stopped at the message."""
    from producers.alerts import DEAD_LETTER_PAYLOAD_MAX

    dead = _dead_letters_of_a_bad_alert_between_two(kafka_settings, tmp_path, monkeypatch, bad)
    assert len(dead) == 1, [d["reason"] for d in dead]
    text = bad.decode("utf-8", "replace")   # the message as the consumer reads it; its dead letter holds a prefix
    payload = dead[0]["payload"]
    assert 0 < len(payload) < len(text) and text.startswith(payload)
    assert len(json.dumps(payload)) <= DEAD_LETTER_PAYLOAD_MAX < len(json.dumps(text[:len(payload) + 1]))
    assert "offset 1" in dead[0]["reason"] and f"of {len(text):,} characters" in dead[0]["reason"], dead[0]["reason"]


def test_sigterm_while_a_fifo_replay_publishes_saves_only_the_unpublished_rows(kafka_settings, tmp_path):
    """A replay of a FIFO (its writer wrote 40 sale lines over 40 minutes of event time and closed it), dates
    shifted (no --keep-dates), paced at real time so it is still publishing: SIGTERM stops it (exit 143, what was
    handed over delivered), the report counts the rows published and saved (published + saved = 40) and the saved
    file holds only the rows not published. Replaying that file, every input row is on the sales topic exactly once
    (counted by invoice-line, the file's own key). Before 2026-12-06 the whole input was saved: re-replaying it
    published the rows already out a second time (each published row twice)."""
    import collections
    import os
    import signal
    import subprocess
    import sys
    import threading
    import uuid

    from core.settings import REPO_ROOT
    from producers.cli import run_replay

    prefix = f"ptest-{uuid.uuid4().hex[:6]}-rppub-"
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": prefix})
    head = "invoice,line_no,stock_code,description,quantity,unit_price,invoice_ts,customer_id,country\n"
    data = (head + "".join(f"58{i:04d},1,2{i % 5:04d},ITEM {i},1,1.25,2011-05-16 08:{i:02d}:00,15813,United Kingdom\n"
                           for i in range(40))).encode()
    keys = [f"58{i:04d}-1" for i in range(40)]   # invoice-line of each input row
    fifo = tmp_path / "pos.csv"
    os.mkfifo(fifo)
    state = tmp_path / "state"

    def write() -> None:   # opens the FIFO once the replay does, writes everything, closes it (EOF)
        with open(fifo, "wb") as fh:
            fh.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers, "KAFKA_TOPIC_PREFIX": prefix,
           "RETAIL_STATE_DIR": str(state), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "producers.cli", "replay", "--path", str(fifo), "--quiet",
                             "--no-reference", "--speed", "1"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _poll(lambda: _end_offsets(s, s.topic("sales-transactions")) > 0 if s.topic("sales-transactions") in
              _topics(s) else False, "the first sale on its topic", proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        _kill_if_running(proc)
        writer.join(10)
    assert proc.returncode == 143, (proc.returncode, out[-1000:], err[-2000:])
    report = json.loads(out)
    pub = report["published"]
    assert pub["signal"] == "SIGTERM" and pub["failed"] == pub["pending"] == 0, pub
    first = [json.loads(m.value)["transaction_id"] for m in consume_all(s, s.topic("sales-transactions"))]
    assert 0 < len(first) < 40, first
    part = state / "replay" / os.path.basename(report["unread_saved"]["path"])
    again = run_replay(s, part, write_reference=False, progress=False)
    on_topic = collections.Counter(json.loads(m.value)["transaction_id"]
                                   for m in consume_all(s, s.topic("sales-transactions")))
    assert on_topic == collections.Counter(keys), (len(first), {k: c for k, c in on_topic.items() if c != 1})
    assert report["rows"] == {"in": 40, "published": len(first), "dead_lettered": 0, "skipped": 0,
                              "saved": 40 - len(first), "partial": 0, "unconfirmed": 0}, report["rows"]
    assert again["published"]["failed"] == 0 and again["rows"]["published"] == 40 - len(first), again["rows"]


def _topics(settings) -> set[str]:
    """The broker's topic names."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","))
    try:
        return set(consumer.topics())
    finally:
        consumer.close()


def sale_event(transaction_id: str, product_id: str, unit_price: float = 1.0,
               timestamp: int | None = None) -> dict:
    """A valid one-unit sale of store S001 (``timestamp``: epoch ms, default now) for the frozen-broker tests."""
    return {"transaction_id": transaction_id, "store_id": "S001", "product_id": product_id, "quantity": 1,
            "unit_price": unit_price, "timestamp": int(time.time() * 1000) if timestamp is None else timestamp,
            "customer_id": None, "payment_method": "CARD"}


@contextlib.contextmanager
def broker_frozen(settings):
    """The session's Kafka broker SIGSTOPped for the block (connections accepted by the kernel, nothing answered:
    a frozen broker, e.g. a GC pause, a hung disk or a paused VM, as a client sees it), SIGCONTed afterwards
    whatever happens, then waited for until a record round-trips (:func:`wait_for_broker`): a freeze longer than
    KRaft's ``broker.session.timeout.ms`` (9 s) fences the broker, and the next test must not meet partitions
    without a leader. The broker is this test session's own (``native_services``). Yields a function that thaws
    it early (idempotent: a watchdog may call it from another thread)."""
    import os
    import signal
    import threading

    from ops import services as svc

    pgid = int(svc.pgid_file("kafka", settings).read_text().split()[0])
    lock = threading.Lock()
    frozen = [True]

    def thaw() -> None:
        with lock:
            if frozen[0]:
                frozen[0] = False
                os.killpg(pgid, signal.SIGCONT)

    os.killpg(pgid, signal.SIGSTOP)
    try:
        yield thaw
    finally:
        thaw()
        wait_for_broker(settings)


def wait_for_broker(settings, within: float = 90.0) -> None:
    """Return once the broker acknowledges a record (the dead-letter topic of ``settings``' prefix), trying for at
    most ``within`` seconds (a wait, not an assertion: a broker still fenced then is for the next test to meet)."""
    from core.kafka import make_producer
    from kafka.errors import KafkaError

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        prod = None
        try:
            prod = make_producer(settings, client_id="thaw-check", request_timeout_ms=5_000,
                                 bootstrap_timeout_ms=5_000, delivery_timeout_ms=10_000, max_block_ms=10_000)
            prod.send(settings.topic(DEAD_LETTER), key=None, value={"thaw_check": time.time()}).get(timeout=15)
            return
        except KafkaError:
            time.sleep(1)
        finally:
            if prod is not None:
                prod.close(timeout=5)


def await_producer_id(pub, within: float = 60.0) -> None:
    """Return once ``pub``'s idempotent producer holds a producer id again (after a reset, the broker answered its
    request), waiting at most ``within`` seconds (a wait, not an assertion): records handed over before that wait
    for the id inside their delivery timeout, which a loaded machine could outrun."""
    tm = pub._producer._transaction_manager
    deadline = time.monotonic() + within
    while not tm.has_producer_id() and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def sigterm_ignored():
    """SIGTERM does nothing in this process for the block (the previous handler restored afterwards): a test that
    sends itself SIGTERM for the code under test to handle cannot kill pytest if that code has already returned."""
    import signal

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.timeout(240)
def test_a_producer_whose_batches_expired_while_the_broker_was_frozen_sends_again(kafka_settings):
    """The broker frozen longer than ``delivery_timeout_ms`` while records are in flight: kafka-python expires them
    (reported failed) and, since they may have reached the broker, resets the idempotent producer id, but (3.0.12)
    leaves its state READY, so its sender never asks for a new id: it sent nothing more and expired nothing more,
    for good, and ``flush()`` without a timeout (the end of a replay or simulator run, ``close()``) never returned,
    SIGTERM included (found 2026-12-07: a replay of 2010-11-01..14 with the broker frozen for 150 s, 3 s in, still
    flushing 6 min later; frozen for 45 s, every record was delivered once). :func:`core.kafka.make_producer` asks
    for a new producer id then, as Kafka's Java client does. Here (delivery timeout 4 s, the broker frozen until the
    first expiry) every record is delivered or reported failed, those sent once the producer has its new id are all delivered, and no
    record is on the topic twice. Old code: the second flush raised ``KafkaTimeoutError`` after 60 s."""
    import uuid

    from core.kafka import EventPublisher
    from core.kafka_admin import ensure_topics

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"frz-{uuid.uuid4().hex[:6]}-"})
    ensure_topics(s)
    topic = s.topic(EVENT_TYPES["sales_transaction"])

    def sale(i: int) -> dict:
        return sale_event(f"FRZ-{i}", f"SKU{i % 7}", unit_price=2.5)

    pub = EventPublisher(s, client_id="frozen-broker-test", request_timeout_ms=2_000, delivery_timeout_ms=4_000,
                         linger_ms=0)
    fate: dict[int, bool] = {}
    pub.on_result = lambda i, ok: fate.__setitem__(i, ok)

    def send(ids) -> None:
        for i in ids:
            pub.tag = i
            pub.publish("sales_transaction", sale(i))

    try:
        send(range(20))
        pub.flush(timeout=30)
        assert pub.counts["delivered"] == 20
        with broker_frozen(s):
            send(range(20, 40))
            deadline = time.monotonic() + 30
            while not pub.counts["failed"] and time.monotonic() < deadline:
                time.sleep(0.2)
            frozen = pub.counts
        # the batches in flight expired and are reported (they may have reached the broker: failed, at most once)
        assert frozen["failed"] >= 1 and any("Expiring" in e for e in frozen["errors"]), frozen
        send(range(40, 60))
        pub.flush(timeout=60)   # old code: KafkaTimeoutError, nothing sent after the reset, nothing expired
        await_producer_id(pub)   # records sent before it has its new id may expire (4 s): not those asserted below
        send(range(60, 80))
        pub.flush(timeout=60)
        c = pub.counts
    finally:
        pub.abort(5)
    print("fates after the freeze:", {i: fate.get(i) for i in range(20, 80)}, c)
    assert c["pending"] == 0 and c["delivered"] + c["failed"] == 80 and len(fate) == 80, c
    assert all(fate[i] for i in range(60, 80)), fate   # the producer sends again
    ids = Counter(json.loads(m.value)["transaction_id"] for m in consume_all(s, topic))
    assert all(ids[f"FRZ-{i}"] == 1 for i in range(80) if fate[i]), ids   # every delivered record once
    assert max(ids.values()) == 1   # an expired record may have landed (reported failed: at most once), none twice


@pytest.mark.timeout(240)
def test_a_signal_while_the_last_flush_waits_for_a_frozen_broker_stops_the_run_with_a_report(kafka_settings,
                                                                                          monkeypatch):
    """A replay or simulator run ends with a flush; while the broker stays frozen past ``delivery_timeout_ms`` that
    flush waits for the producer's new id, for as long as the broker is frozen (kafka-python expires nothing
    meanwhile). Until 2026-12-07 SIGTERM / SIGINT only set the stop event there: the run went on waiting (no
    report, no rows saved; a supervisor's SIGKILL ended it). Now (:func:`producers.cli.flush_until_signal`) the
    signal stops the wait: the records still buffered get ``STOP_FLUSH_S`` (0.2 s here) and are reported failed, or
    stay pending when the sender does not stop in time, ``stopped`` names the cause, and the run returns while the
    broker is still frozen. Old code: it returned only when the test's watchdog thawed the broker (60 s), with
    ``stopped`` None. The SIGTERM is sent by a timer cancelled at the end, with SIGTERM ignored by the test process
    meanwhile (:func:`sigterm_ignored`), and the broker is thawed and waited for whatever happens
    (:func:`broker_frozen`)."""
    import os
    import signal
    import threading
    import uuid

    import producers.cli as cli
    from core.kafka import EventPublisher
    from core.kafka_admin import ensure_topics
    from producers.cli import publish_events

    monkeypatch.setattr(cli, "STOP_FLUSH_S", 0.2)   # the freeze lasts ~4 s of expiry + 0.5 s + ~1 s of stop
    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"frs-{uuid.uuid4().hex[:6]}-"})
    ensure_topics(s)
    pub = EventPublisher(s, client_id="frozen-flush-test", request_timeout_ms=2_000, delivery_timeout_ms=4_000,
                         linger_ms=0)
    timers: list[threading.Timer] = []
    thawed_by_watchdog = threading.Event()

    def events():
        ts = int(time.time() * 1000)
        for i in range(60):
            if i == 30:   # the first 30 were sent: wait until their batches expired and the producer id was reset
                deadline = time.monotonic() + 30
                while not pub.counts["failed"] and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert pub.counts["failed"], "no batch expired while the broker was frozen"
            yield "sales_transaction", sale_event(f"FRS-{i}", f"SKU{i % 5}", timestamp=ts)
        term = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))   # the flush is waiting by then
        timers.append(term)
        term.start()

    pub.publish("sales_transaction", sale_event("FRS-warm", "SKU0"))
    pub.flush(timeout=30)   # the topic's metadata known, as in a run that has been sending
    try:
        with sigterm_ignored(), broker_frozen(s) as thaw:
            def watchdog_thaw() -> None:
                thawed_by_watchdog.set()
                thaw()

            watchdog = threading.Timer(60.0, watchdog_thaw)
            timers.append(watchdog)
            watchdog.start()
            out = publish_events(events(), pub, progress=False)
            still_frozen = not thawed_by_watchdog.is_set()
            watchdog.cancel()
    finally:
        for timer in timers:
            timer.cancel()
        pub.abort(5)
    assert out["signal"] == "SIGTERM" and out["events"] == 60, out
    assert still_frozen, out   # it returned on the signal, not on the thaw
    assert out["stopped"] and "while waiting for the broker" in out["stopped"], out
    # every record handed over is settled or counted pending (a sender stuck waiting for the frozen broker's
    # producer id is not interrupted by the stop): none unaccounted for
    assert out["delivered"] + out["failed"] + out["pending"] == out["sent"] == 61, out
    assert out["failed"] + out["pending"] >= 30, out   # at least the 30 sent after the reset, never sent


@pytest.mark.timeout(240)
def test_a_replay_stopped_while_its_sender_waits_for_a_frozen_broker_counts_no_unanswered_row_published(
        kafka_settings, tmp_path, monkeypatch):
    """A replay (40 sale rows) whose broker freezes after its first 10 records: the next ones expire
    (request timeout 3 s, delivery timeout 4 s), the producer resets its id and its sender waits for a new one
    inside ``await_ready`` (up to ``request_timeout_ms``), which a force close does not interrupt; SIGTERM during
    the last flush stops the run, ``abort_producer`` joins the sender for ``STOP_FLUSH_S`` (0.2 s here) and the
    report is made with records neither acknowledged nor failed (``pending``). Those rows are ``unconfirmed`` and
    saved with the rows not published; every row the report counts ``published`` has its sale on the topic, and
    published + saved file + partial covers every input row. Old code: the rows with unanswered records counted
    ``published`` (not saved, not on the topic: lost) whenever the sender outlived the join (most runs: it waits
    up to 3 s)."""
    import os
    import signal
    import threading
    import uuid

    import core.kafka as ck
    import producers.cli as cli
    from core.kafka_admin import ensure_topics
    from producers.cli import run_replay

    monkeypatch.setattr(cli, "STOP_FLUSH_S", 0.2)
    for k, v in {"request_timeout_ms": 3_000, "delivery_timeout_ms": 4_000, "linger_ms": 0}.items():
        monkeypatch.setitem(ck.PRODUCER_DEFAULTS, k, v)
    broker = kafka_settings.model_copy(update={"kafka_topic_prefix": f"frr-{uuid.uuid4().hex[:6]}-"})
    ensure_topics(broker)
    s = broker.model_copy(update={"retail_state_dir": tmp_path / "state"})   # the broker's pgid stays under broker's
    path = tmp_path / "pos.csv"
    _uci_file(path, [_uci_row(i, invoice=f"59{i:04d}") for i in range(40)], UCI_COLUMNS)
    keys = {f"59{i:04d}-1" for i in range(40)}
    timers: list[threading.Timer] = []
    stack = contextlib.ExitStack()

    class FreezingPublisher(ck.EventPublisher):
        """The replay's publisher: every topic's metadata known at once, the first 10 records acknowledged, then
        the broker frozen; at the 31st record it waits until records expired (the producer id reset) and arms
        SIGTERM 1.5 s later (the run's last flush is waiting by then)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for topic in {*self._topics.values(), self.dead_letter_topic}:   # every topic a replay may use
                self._producer.partitions_for(topic)
            self.handed = 0

        def publish(self, event_type, record):
            self.handed += 1
            if self.handed == 11:   # the first 10 records acknowledged, then the freeze
                self.flush(timeout=30)
                stack.enter_context(broker_frozen(broker))
            if self.handed == 31:
                deadline = time.monotonic() + 30
                while not self.counts["failed"] and time.monotonic() < deadline:
                    time.sleep(0.2)
                term = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
                timers.append(term)
                term.start()
            return super().publish(event_type, record)

    monkeypatch.setattr(ck, "EventPublisher", FreezingPublisher)
    try:
        with sigterm_ignored(), stack:
            report = run_replay(s, path, write_reference=False, create_topics=False, progress=False)
    finally:
        for timer in timers:
            timer.cancel()
    rows, pub = report["rows"], report["published"]
    print(rows, {k: pub[k] for k in ("sent", "delivered", "failed", "pending", "stopped")})
    assert pub["signal"] == "SIGTERM" and pub["failed"] >= 1, pub
    assert rows["in"] == 40 == sum(v for k, v in rows.items() if k not in ("in", "partial_rows")), rows
    assert (pub["pending"] > 0) <= (rows["unconfirmed"] > 0), (rows, pub)   # unanswered records: rows unconfirmed
    saved = pd.read_csv(report["unread_saved"]["path"], dtype=str)
    saved_keys = set(saved["invoice"] + "-" + saved["line_no"])
    assert len(saved_keys) == len(saved) == rows["saved"] + rows["unconfirmed"], (rows, len(saved))
    partial = {f"{p['invoice']}-{p['line_no']}" for p in rows.get("partial_rows", [])}
    published = keys - saved_keys - partial
    assert len(published) == rows["published"], (rows, sorted(published))
    on_topic = {json.loads(m.value)["transaction_id"] for m in consume_all(s, s.topic(EVENT_TYPES["sales_transaction"]))}
    assert published <= on_topic, sorted(published - on_topic)   # old code: unanswered rows counted published


@pytest.mark.timeout(240)
def test_a_producer_id_request_that_times_out_is_retried_not_fatal(kafka_settings, caplog):
    """The producer asks for a new producer id (as after a sent batch expired: :func:`core.kafka.make_producer`'s
    reset) on a connection still open to a broker that froze: the ``InitProducerId`` request times out
    (``RequestTimedOutError``, request timeout 2 s). kafka-python 3.0.12 took that as a fatal error: the producer
    failed every record from then on, for good, also after the broker answered again (the stream's alert producer
    and a run's publisher are never rebuilt). Now the request is retried as on a lost connection: once the broker
    answers, the producer gets its id and the records sent then are delivered. Old code: ``has_fatal_error()``."""
    import logging
    import uuid

    from core.kafka import EventPublisher
    from core.kafka_admin import ensure_topics

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"pid-{uuid.uuid4().hex[:6]}-"})
    ensure_topics(s)
    pub = EventPublisher(s, client_id="pid-timeout-test", request_timeout_ms=2_000, delivery_timeout_ms=4_000,
                         linger_ms=0)
    tm = pub._producer._transaction_manager

    def send(ids) -> None:
        for i in ids:
            pub.publish("sales_transaction", sale_event(f"PID-{i}", f"SKU{i % 3}"))

    caplog.set_level(logging.WARNING, logger="core.kafka")
    try:
        send(range(10))
        pub.flush(timeout=30)
        assert pub.counts["delivered"] == 10, pub.counts
        with broker_frozen(s):
            tm.reset_producer_id()   # what the sender does after a sent batch expired: a new id is asked for
            pub._producer._sender.wakeup()
            deadline = time.monotonic() + 30   # the request times out after 2 s: fatal (old) or retried (new)
            while (time.monotonic() < deadline and not tm.has_fatal_error()
                   and not any("producer id request failed" in r.getMessage() for r in caplog.records)):
                time.sleep(0.1)
            fatal_while_frozen = tm.has_fatal_error()
            retried = any("producer id request failed" in r.getMessage() for r in caplog.records)
            frozen_s = round(time.monotonic() - deadline + 30, 1)
        t0 = time.monotonic()
        await_producer_id(pub)
        send(range(10, 20))
        pub.flush(timeout=60)
        c = pub.counts
    finally:
        pub.abort(5)
    print(f"frozen {frozen_s} s, retried {retried}, fatal {fatal_while_frozen}, "
          f"10 records after the thaw flushed in {time.monotonic() - t0:.1f} s")
    assert not fatal_while_frozen, tm.last_error   # old code: fatal, every later record failed
    assert retried   # the request did time out while the broker was frozen (the case under test)
    assert c["delivered"] == 20 and c["failed"] == 0, c


@pytest.mark.timeout(120)
def test_a_producer_in_a_fatal_state_is_replaced_by_the_publisher_and_the_stream(kafka_settings):
    """A kafka-python producer in its fatal state (any error kafka-python deems fatal, e.g. one of its own
    producer-id request paths) fails every record from then on, for good. :func:`core.kafka.renew_if_fatal`
    replaces it: a run's :class:`EventPublisher` at its next record, the stream's restock-alert producer at its next
    use (``StreamSinks.producer``); records sent then are delivered. Old code: the publisher's 5 later records
    failed with the fatal error, and the stream kept the failed producer."""
    import uuid

    from core.kafka import EventPublisher, producer_fatal_error
    from core.kafka_admin import ensure_topics
    from kafka.errors import KafkaError
    from streaming.sinks import StreamSinks

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"ftl-{uuid.uuid4().hex[:6]}-"})
    ensure_topics(s)
    pub = EventPublisher(s, client_id="fatal-test")

    def send(ids) -> None:
        for i in ids:
            pub.publish("sales_transaction", sale_event(f"FTL-{i}", f"SKU{i % 3}"))

    sinks = StreamSinks(s)
    try:
        send(range(5))
        pub.flush(timeout=30)
        first = pub._producer
        first._transaction_manager.transition_to_fatal_error(KafkaError("fatal for the test"))
        send(range(5, 10))
        pub.flush(timeout=30)
        c = pub.counts
        alerts = sinks.producer()
        alerts._transaction_manager.transition_to_fatal_error(KafkaError("fatal for the test"))
        renewed = sinks.producer()
        meta = renewed.send(s.topic(DEAD_LETTER), key=None, value={"fatal_test": 1}).get(timeout=30)
    finally:
        pub.abort(5)
        sinks.close(5)
    assert c["delivered"] == 10 and c["failed"] == 0, c   # old code: 5 failed with the fatal error
    assert pub._producer is not first and producer_fatal_error(first) is not None
    assert renewed is not alerts and meta.offset >= 0
    on_topic = Counter(json.loads(m.value)["transaction_id"] for m in consume_all(s, s.topic(EVENT_TYPES["sales_transaction"])))
    assert on_topic == Counter(f"FTL-{i}" for i in range(10)), on_topic


@pytest.mark.timeout(120)
def test_a_fatal_producer_that_cannot_be_rebuilt_stalls_the_run_instead_of_raising(kafka_settings):
    """Review of 2026-12-07: :class:`EventPublisher` rebuilt a fatal producer outside its error handling, so a new
    producer finding no broker (here: bootstrap servers on a closed port, 1 s bootstrap timeout) raised out of
    ``publish`` and ended the run with a traceback, no report and no file of unpublished rows. Now the publisher
    is ``stalled``: that record and every later one counted failed (the runs' existing stop on a stalled
    publisher saves the rows). Old code: ``NoBrokersAvailable`` raised by ``publish``."""
    import socket
    import uuid

    from core.kafka import EventPublisher, make_producer
    from kafka.errors import KafkaError

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"fnb-{uuid.uuid4().hex[:6]}-"})
    with socket.socket() as sock:   # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    pub = EventPublisher(s, client_id="fatal-nobroker-test")
    fate: list[bool] = []
    pub.on_result = lambda _tag, ok: fate.append(ok)
    try:
        pub._producer._transaction_manager.transition_to_fatal_error(KafkaError("fatal for the test"))
        pub._make = lambda: make_producer(s.model_copy(update={"kafka_bootstrap_servers": closed}),
                                          client_id="fatal-nobroker-test", bootstrap_timeout_ms=1_000)
        for i in range(3):
            pub.publish("sales_transaction", sale_event(f"FNB-{i}", "SKU1"))
    finally:
        pub.abort(1)
    assert pub.stalled and "no new producer after a fatal error" in pub.stalled, pub.stalled
    assert fate == [False, False, False] and pub.counts["failed"] == 3, (fate, pub.counts)


@pytest.mark.timeout(240)
def test_a_frozen_broker_failing_every_record_in_flight_logs_a_bounded_number_of_error_lines(kafka_settings, caplog):
    """2,000 records handed over while the broker is frozen (SIGSTOP): the batches in flight expire (delivery
    timeout 3 s; the others wait for the producer's new id), then the run stops (:meth:`EventPublisher.abort`, as
    at a SIGTERM or a stalled send) and every record still buffered fails. Until 2026-12-07 each failure was its own
    ERROR line (``kafka delivery failed: ...``): 2,000 lines here, 100,000 for a replay stopped with 100,000 records
    buffered. Now (:class:`core.logs.RepeatedLog`) the first 5 per exception type are logged in full, then one line
    per 10 s per type with the count since the last, and the rest at the abort: for a run of at most 240 s (this
    test's timeout), at most 5 + 24 + 1 lines per type. The counts stay exact: every record delivered or failed, the
    failures logged (in full or counted) exactly as many as ``failed``, and the last line of each type names its
    total. Old code: 2,000 ERROR lines."""
    import logging
    import re
    import uuid

    from core.kafka import EventPublisher
    from core.kafka_admin import ensure_topics

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"fld-{uuid.uuid4().hex[:6]}-"})
    ensure_topics(s)
    pub = EventPublisher(s, client_id="flood-test", request_timeout_ms=2_000, delivery_timeout_ms=3_000)
    n = 2_000
    caplog.set_level(logging.ERROR, logger="core.kafka")
    try:
        for i in range(20):
            pub.publish("sales_transaction", sale_event(f"FLD-{i}", f"SKU{i % 7}"))
        pub.flush(timeout=30)   # the topic's metadata known: the sends below are buffered, not blocked
        assert pub.counts["delivered"] == 20, pub.counts
        with broker_frozen(s):
            for i in range(20, 20 + n):
                pub.publish("sales_transaction", sale_event(f"FLD-{i}", f"SKU{i % 7}"))
            deadline = time.monotonic() + 30
            while not pub.counts["failed"] and time.monotonic() < deadline:
                time.sleep(0.2)
            expired = pub.counts["failed"]
            pub.abort(5)   # a run's stop (SIGTERM, a stalled send): every record still buffered failed at once
            c = pub.counts
    finally:
        pub.abort(5)
    lines = [r.getMessage() for r in caplog.records
             if r.name == "core.kafka" and r.levelno >= logging.ERROR and "kafka delivery failed" in r.getMessage()]
    totals = pub.error_log.totals
    print(f"{c['failed']} failed of {n + 20} ({expired} expired), {len(lines)} ERROR lines, totals {totals}")
    assert c["pending"] == 0 and c["delivered"] + c["failed"] == n + 20, c
    assert c["failed"] >= n // 2, c   # the case under test: a flood of failures (old code: as many ERROR lines)
    assert sum(totals.values()) == c["failed"], (totals, c)   # every failure counted, none lost or twice
    assert len(lines) <= len(totals) * (5 + 24 + 1), lines[:40]
    for kind, total in totals.items():   # the last line of each kind states its exact total
        last = [ln for ln in lines if f"[{kind}]" in ln]
        assert last and re.search(rf"\({total} in all\)", last[-1]), (kind, total, last[-3:])



@pytest.mark.timeout(300)
def test_a_broker_answering_no_producer_id_fails_the_records_and_a_close_that_raises_still_logs(kafka_settings,
                                                                                                 caplog):
    """The broker frozen (SIGSTOP) under a publisher with a 4 s delivery timeout (request timeout 2 s): of 20
    records handed over, the batches in flight expire (failed: the 20 records, one batch per partition with linger_ms 200;
    7 of them with linger_ms 0 in the first run), the producer resets its id and
    asks for a new one, which the frozen broker never gives (after the expiry the sender reconnects and waits for
    the connection's handshake, holding the request: no error, no expiry).

    1. :meth:`EventPublisher.close` while the rest and 10 more records wait for that id: kafka-python's
       ``close()`` raises ``KafkaTimeoutError`` (its flush timed out), and the failures' log is still flushed: each
       exception type's last line names its total. Until the review of 2026-12-07 the flush came after
       kafka-python's close in the same block: never run (the failures past the first 5 unlogged).
    2. The wait for a producer id is bounded by ``delivery_timeout_ms`` (:func:`core.kafka.
       fail_if_producer_id_overdue`, checked by the publisher's flush every second and at each send): then the
       producer is failed and aborted, its waiting records fail (counted, 30 failed in all), the flush returns, and
       after the thaw the next record gets a new producer (``renew_if_fatal``) and is delivered. Until the review
       of 2026-12-07 the wait had no bound: the records were neither delivered nor failed while the broker stayed
       frozen, and the flush (30 s here) raised ``KafkaTimeoutError`` (without a timeout: never returned)."""
    import logging
    import re
    import uuid

    from kafka.errors import KafkaTimeoutError

    from core.kafka import EventPublisher
    from core.kafka_admin import ensure_topics

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"pidb-{uuid.uuid4().hex[:6]}-"})
    ensure_topics(s)
    pub = EventPublisher(s, client_id="pid-bound-test", request_timeout_ms=2_000, delivery_timeout_ms=4_000,
                         linger_ms=200)   # the 20 records sent frozen share a batch per partition: all expire

    def send(ids) -> None:
        for i in ids:
            pub.publish("sales_transaction", sale_event(f"PIDB-{i}", f"SKU{i % 3}"))

    caplog.set_level(logging.ERROR, logger="core.kafka")
    try:
        send(range(10))
        pub.flush(timeout=30)
        assert pub.counts["delivered"] == 10, pub.counts
        with broker_frozen(s):
            send(range(10, 30))
            deadline = time.monotonic() + 60
            while pub.counts["failed"] < 6 and time.monotonic() < deadline:
                time.sleep(0.1)
            tm = pub._producer._transaction_manager
            if tm.has_producer_id():   # what the sender does after a sent batch expired (if it has not yet)
                tm.reset_producer_id()
                pub._producer._sender.wakeup()
            send(range(30, 40))   # held: no producer id
            with pytest.raises(KafkaTimeoutError):
                pub.close(timeout=1)
            totals = pub.error_log.totals
            lines = [r.getMessage() for r in caplog.records if "kafka delivery failed" in r.getMessage()]
            # polled as producers.cli.flush_until_signal does, flush(0.5) until settled (30 s at most): new, the wait
            # for a producer id gives up after 4 s and the 10 records fail; old, still waiting for it (until the
            # second review of 2026-12-07 a flush of <= 1 s raised before its check of that bound)
            flushed, poll_end = False, time.monotonic() + 30
            while not flushed and time.monotonic() < poll_end:
                try:
                    pub.flush(timeout=0.5)
                    flushed = True
                except KafkaTimeoutError:
                    pass
            held = pub.counts
        send(range(40, 45))   # the thawed broker: a new producer
        pub.flush(timeout=60)
        c = pub.counts
    finally:
        pub.abort(5)
    print(f"at the close: totals {totals}, {len(lines)} lines; after the flush {held}; at the end {c}")
    assert sum(totals.values()) >= 6, totals   # the case under test: more failures than the 5 logged in full
    for kind, total in totals.items():   # old code: the last line of each type is one of its first 5, in full
        last = [ln for ln in lines if f"[{kind}]" in ln or f"failed: {kind}" in ln]
        assert last and re.search(rf"\({total} in all\)", last[-1]), (kind, total, last[-3:])
    assert flushed and held["pending"] == 0 and held["failed"] == 30, held   # old: flush raised (20 failed, 10 pending: a flush(0.5) never checked the bound)
    assert c["delivered"] == 15 and c["failed"] == 30 and c["pending"] == 0, c


@pytest.mark.integration
def test_the_streams_alert_producer_fails_its_alerts_when_no_producer_id_comes_within_its_bound(kafka_settings):
    """The stream's restock-alert producer (``streaming.sinks.StreamSinks.producer``) behind a frozen broker after
    an expiry reset its producer id: the sender holds the id request (no error, no expiry), and
    ``_await_acknowledgements`` polled until the broker answered or the job stopped (until the second review of
    2026-12-07: here, still waiting after 20 s). Now a producer without an id past its bound
    (``delivery_timeout_ms``; shortened to 3 s on its transaction manager here, 2 min by default) is failed and
    aborted once: the alerts' futures fail (the micro-batch fails uncommitted and is re-run) and the next
    ``producer()`` is a new one, which delivers after the thaw."""
    import threading
    import uuid

    from core.kafka_admin import ensure_topics
    from streaming.sinks import StreamSinks

    s = kafka_settings.model_copy(update={"kafka_topic_prefix": f"apid-{uuid.uuid4().hex[:6]}-"})
    ensure_topics(s)
    topic = s.topic("restock-alerts")
    sinks = StreamSinks(s)
    renewed = None
    try:
        prod = sinks.producer()
        prod.send(topic, key="S1|A", value={"alert_id": "warm-up"}).get(timeout=60)   # a producer id
        tm = prod._transaction_manager
        tm._pid_retry_bound_s = 3.0
        with broker_frozen(s):
            tm.reset_producer_id()   # what the sender does after a sent batch expired
            prod._sender.wakeup()
            futures = [prod.send(topic, key=f"S1|A{i}", value={"alert_id": f"A{i}"}) for i in range(3)]
            waiter = threading.Thread(target=sinks._await_acknowledgements, args=(prod, futures, "restock alerts"))
            waiter.start()
            waiter.join(20)
            stuck = waiter.is_alive()
            sinks.stopping.set()   # releases the old code's wait (10 s after the stop)
            waiter.join(30)
            sinks.stopping.clear()
            failed = [f.is_done and f.failed() for f in futures]
        renewed = sinks.producer()
        renewed.send(topic, key="S1|B", value={"alert_id": "after-thaw"}).get(timeout=60)
    finally:
        sinks.close()
    assert not stuck   # old code: still polling for acknowledgements after 20 s
    assert failed == [True, True, True]
    assert renewed is not prod
