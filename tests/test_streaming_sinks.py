"""The streaming sink's restock-alert path against the real ClickHouse endpoint, Kafka and MinIO."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

pytestmark = pytest.mark.integration


def _alerts(n: int, t_ms: int) -> list[dict]:
    return [{"alert_id": f"UCI-GB|SKU{i:06d}|{t_ms}", "store_id": "UCI-GB", "product_id": f"SKU{i:06d}",
             "current_stock": 1, "reorder_point": 10, "recommended_quantity": 20, "sales_velocity": 2.0,
             "hours_of_cover": 0.5, "priority": "HIGH", "window_end": t_ms, "timestamp": t_ms} for i in range(n)]


def alert_ids_in_kafka(s) -> list[str]:
    """alert_id of every record on the restock-alerts topic, from the beginning to the end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    topic = s.topic("restock-alerts")
    c = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), enable_auto_commit=False,
                      group_id=None, consumer_timeout_ms=10_000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        end = c.end_offsets(parts)
        ids: list[str] = []
        while any(c.position(tp) < end[tp] for tp in parts):
            batch = c.poll(timeout_ms=5000)
            if not batch:
                break
            ids += [json.loads(m.value)["alert_id"] for recs in batch.values() for m in recs]
        return ids
    finally:
        c.close()


def test_many_alerts_in_one_batch_stay_under_max_query_size(native_stack):
    """12,000 alerts in one micro-batch (~360 KB of ids: one IN list would exceed ClickHouse's 256 KiB
    max_query_size, as the demo's first batch did); a re-run of the same batch sends and records nothing new."""
    import pyarrow.parquet as pq

    from core.clickhouse import get_client
    from core.kafka_admin import ensure_topics
    from core.lake import Lake
    from streaming.sinks import StreamSinks

    s = native_stack
    ensure_topics(s)
    sinks = StreamSinks(s)
    now = int(time.time() * 1000)
    alerts = _alerts(12_000, now - 300_000)
    try:
        sinks._emit_alerts(alerts, batch_id=1, now_ms=now)
        assert sinks.alerts_sent == 12_000
        sinks._emit_alerts(alerts, batch_id=1, now_ms=now)  # a retried micro-batch
        assert sinks.alerts_sent == 12_000
        # a retry after the ClickHouse insert but before the lake write (MinIO down): the lake still gets the batch
        d = datetime.fromtimestamp(min(a["window_end"] for a in alerts) / 1000, timezone.utc)
        where = (s.lake_raw_bucket, "restock_alert", f"year={d:%Y}", f"month={d:%m}", f"day={d:%d}",
                 "alerts-batch-1.parquet")
        lake = Lake(s)
        assert lake.exists(*where)
        lake.fs.delete_file(lake.path(*where))
        sinks._emit_alerts(alerts, batch_id=1, now_ms=now + 60_000)
        assert sinks.alerts_sent == 12_000
        got = pq.read_table(lake.path(*where), filesystem=lake.fs).column("alert_id").to_pylist()
        assert sorted(got) == sorted(a["alert_id"] for a in alerts)
    finally:
        sinks.close()
    want = {a["alert_id"] for a in alerts}
    # restock_alerts is a ReplacingMergeTree: FINAL or uniq would hide a second insert of the same ids (stored rows
    # until a merge). The re-run must insert nothing: the rows as stored (no FINAL) are the first run's 12,000.
    rows = get_client(s).query(f"SELECT alert_id FROM {s.clickhouse_database}.restock_alerts "
                               f"WHERE endsWith(alert_id, '|{now - 300_000}')").result_rows
    assert len(rows) == 12_000 and {r[0] for r in rows} == want
    # and each alert is on the restock-alerts topic exactly once (the topic is shared by the session's modules)
    in_kafka = [i for i in alert_ids_in_kafka(s) if i in want]
    assert len(in_kafka) == 12_000 and set(in_kafka) == want


def test_sinks_client_has_no_session_and_only_infrastructure_errors_are_retried(native_stack):
    """A request cut by an outage once left the sinks' client refusing every later query ("concurrent queries
    within the same session"): the client they open has no session. Bugs are not retried."""
    from clickhouse_connect.driver.exceptions import ProgrammingError

    from streaming.sinks import StreamSinks, is_infrastructure_error

    sinks = StreamSinks(native_stack)
    try:
        assert "session_id" not in sinks.ch.params
        sinks._reset_client()  # the retry path's fresh client
        assert "session_id" not in sinks.ch.params
    finally:
        sinks.close()
    assert not is_infrastructure_error(ProgrammingError("Unrecognized column 'x' in table t"))
    assert not is_infrastructure_error(ValueError("bad data"))
