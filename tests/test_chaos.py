"""Chaos (issue 10, part 5), against the real platform: Kafka, MinIO, the ClickHouse endpoint and the streaming job
as supervised processes.

* The short chaos profile (``make chaos CHAOS=short``): while the simulator produces at a fixed rate, the streaming
  job is killed with SIGKILL twice, the broker once, ClickHouse and MinIO are stopped for 10 s and 15 s (the stream's
  ClickHouse writes wait and retry with backoff through the first, the waits read from its log); afterwards every
  acknowledged event of each type is in the lake exactly once, and every 5-minute window in ClickHouse equals an
  independent recomputation from the acknowledged events (:func:`ops.chaos.run_chaos`, which brings up a platform
  of its own on free ports). The full profile (10 stream kills, 60 s outages) is ``make chaos``.
* A stream started during outages: the supervised streaming program started while ClickHouse and Kafka cannot be
  reached (closed TCP gates in front of the session's endpoint and broker) waits for them and lands the sales sent
  once they are back; it never goes FATAL.
* The producer's buffering bound: while the broker is down, a publisher reports every record it could not deliver
  within ``delivery_timeout_ms`` as failed (with the error), none is dropped silently; after the broker is back
  the same publisher delivers again.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid

import pytest

from conftest import TcpGate, settings_env

pytestmark = pytest.mark.integration


def test_short_chaos_profile_loses_and_duplicates_nothing(tmp_path):
    from ops.chaos import ID_FIELD, PROFILES, run_chaos

    rep = run_chaos(PROFILES["short"], seed=5, state=tmp_path / "state")
    kinds = [f["fault"] for f in rep["faults"]]
    assert kinds.count("kill -9 streaming") == 2 and kinds.count("kill -9 kafka") == 1, kinds
    assert {"clickhouse stopped", "minio stopped"} <= set(kinds), kinds
    for f in rep["faults"]:
        if f["fault"].startswith("kill -9"):
            assert f["new_pid"] != f["pid"], f  # the process really died and the supervisor started a new one
        if f["fault"] == "kill -9 streaming":
            assert f["stream_pid_changed"] is True, f
        elif f["fault"] in ("clickhouse stopped", "minio stopped"):
            # the sinks wait and retry through the outage: the streaming process stays up (sampled every second
            # while the service was stopped) and is the same process once new sales reach ClickHouse again
            up, sampled = map(int, f["stream_process_up_during_outage"].removesuffix(" s").split("/"))
            assert sampled > 0 and up == sampled, f
            assert f["stream_pid_changed"] is False, f
            # ... and for ClickHouse (connections refused at once) its writes waited and retried during the outage,
            # the backoff growing (0.5 s doubling up to STREAM_SINK_RETRY_MAX_WAIT_S): what the shorter outage must
            # still exercise. Not asserted for MinIO: a lake write fails only after the S3 client's own retries, and
            # under load none failed even in a 20 s stop (waits [] at load ~25, 2026-12-07; [0.5, 1.0, 2.0] and
            # [0.5, 1.0] in two 15 s stops)
            if f["fault"] == "clickhouse stopped":
                waits = f["sink_retry_waits_s"]
                assert len(waits) >= 2 and max(waits) > min(waits), f
    prod = rep["producer"]
    assert prod["sent"] == prod["delivered"] + prod["failed"], prod  # every record accounted for
    assert prod["failed"] == 0, rep["producer_failures"]
    assert rep["drained"], rep
    for et in ID_FIELD:
        t = rep["per_type"][et]
        assert t["delivered"] > 0, (et, t)
        assert t["lost"] == 0 and t["duplicated"] == 0 and t["unexpected"] == 0, (et, t)
        assert t["lake_rows"] == t["lake_distinct"] == t["delivered"], (et, t)
    sales = rep["per_type"]["sales_transaction"]
    assert sales["clickhouse_window_transactions"] == sales["delivered"]
    w = rep["windows"]
    assert w["windows_expected"] > 50 and w["windows_in_clickhouse"] == w["windows_expected"], w
    assert w["missing"] == w["extra"] == w["different"] == 0, w
    assert rep["quarantined"] == 0
    assert rep["ok"] is True


def test_producer_reports_what_it_could_not_deliver_while_the_broker_is_down(native_services):
    from core.kafka import EventPublisher
    from core.kafka_admin import ensure_topics
    from ops import local
    from producers.simulator import SimConfig, Simulator

    # topics of its own: the session's shared topics are read from the earliest offset by other modules' streams
    s = native_services.model_copy(update={"kafka_topic_prefix": f"bound{uuid.uuid4().hex[:6]}-"})
    ensure_topics(s)
    events = [e for e in Simulator(SimConfig(n_stores=1, n_skus=5, duration_minutes=30, seed=3)).events()
              if e[0] in ("sales_transaction", "inventory_update")][:40]
    pub = EventPublisher(s, client_id="bound-test", delivery_timeout_ms=4000, request_timeout_ms=1500,
                         linger_ms=0, max_block_ms=3000)
    try:
        for et, rec in events[:10]:
            pub.publish(et, rec)
        pub.flush(timeout=30)
        assert pub.counts["delivered"] == 10
        local.rpc(s).supervisor.stopProcess("kafka", True)
        try:
            for et, rec in events[10:]:
                pub.publish(et, rec)
            pub.flush(timeout=30)
            c = pub.counts
            # all 30 sent while the broker was down failed within the bound, each counted with its error
            assert c["sent"] == 40 and c["delivered"] == 10 and c["failed"] == 30 and c["pending"] == 0, c
            assert c["errors"] and all("Error" in e or "Timeout" in e for e in c["errors"]), c["errors"]
        finally:
            local.start("kafka", s)
    finally:
        pub.close(timeout=10)
    # the broker is back: a new publisher delivers at once (the chaos suite shows a long-lived one with the
    # default 2-minute bound riding out a broker restart with nothing failed)
    with EventPublisher(s, client_id="bound-test-after") as again:
        for et, rec in events[:5]:
            again.publish(et, rec)
    assert again.counts["delivered"] == 5 and again.counts["failed"] == 0, again.counts


#: seconds ClickHouse and Kafka stay unreachable after the streaming program is started: beyond one supervisor
#: start cycle (startsecs 15 s; the old job failed its start in ~11-14 s, restarted, and was FATAL after 3 retries,
#: ~1 min; its first failed start already shows as BACKOFF in the states). 40 s: ~3x the old job's exit, and the
#: start-up's waits (first ~12 s after the start, 0.5 s doubling) are at their 4 s cap for ~20 s of it (75 s until
#: 2026-12-07)
OUTAGE_S = 40


def test_a_stream_started_during_outages_waits_and_comes_up(native_services, tmp_path):
    """The supervised streaming program (ops.local's supervisord configuration) starts while ClickHouse and Kafka
    cannot be reached: its start-up waits for them (logged), the supervisor never gives up on it (the old job exited
    within ~14 s, inside startsecs, and was FATAL ~1 min into the outage, for good). ClickHouse comes back after
    OUTAGE_S, Kafka once the job waits for it; then the stream runs and 50 sales sent afterwards all reach the windows."""
    from kafka import KafkaProducer

    from contracts import EVENT_TYPES
    from core.clickhouse import new_client, reset_clients
    from core.lake import Lake
    from ops import local
    from streaming.job import stream_healthy

    base = native_services
    ch_gate = TcpGate(base.clickhouse_http_port)
    kafka_gate = TcpGate(int(base.kafka_bootstrap_servers.rsplit(":", 1)[1]))
    tag = uuid.uuid4().hex[:6]
    env = {"RETAIL_STATE_DIR": str(tmp_path / "state"), "CLICKHOUSE_HTTP_PORT": str(ch_gate.port),
           "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{kafka_gate.port}", "KAFKA_TOPIC_PREFIX": f"boot{tag}-",
           "CLICKHOUSE_DATABASE": f"{base.clickhouse_database}_boot{tag}", "LAKE_RAW_BUCKET": f"raw-boot{tag}",
           "SPARK_CHECKPOINT_DIR": str(tmp_path / "checkpoints"), "STREAM_TRIGGER_SECONDS": "2",
           "STREAM_SINK_RETRY_MAX_WAIT_S": "4"}
    with settings_env(**env, CLICKHOUSE_URL=None) as s:   # the job reaches the gates, not the endpoint
        Lake(s).ensure_buckets()  # MinIO is not part of this outage
        log_path = tmp_path / "state" / "logs" / "streaming.log"
        states: list[tuple[float, str]] = []

        def follow(seconds: float, until=None) -> bool:
            end = time.time() + seconds
            while time.time() < end:
                st = local.rpc(s).supervisor.getProcessInfo("streaming")["statename"]
                if not states or states[-1][1] != st:
                    states.append((round(time.time() - t0), st))
                if until is not None and until():
                    return True
                time.sleep(1)
            return False

        local.start_supervisord(s)  # its programs inherit this environment: the gates, still closed
        try:
            t0 = time.time()
            local.rpc(s).supervisor.startProcess("streaming", False)
            follow(OUTAGE_S)
            # one process waits through the outage (the old job exited within ~14 s and was restarted, then FATAL)
            assert [st for _, st in states] == ["STARTING", "RUNNING"], states
            ch_gate.open()
            # Kafka opens once the job waits for it (after the migrations, which take a while under load: a fixed
            # 30 s let the job reach Kafka after its gate had opened, with no wait to log)
            waits_for_kafka = f"start-up: waiting for Kafka at localhost:{kafka_gate.port}"
            assert follow(240, lambda: log_path.exists() and waits_for_kafka in log_path.read_text(errors="replace")), \
                f"the job did not wait for Kafka within 240 s of ClickHouse opening: {states}"
            kafka_gate.open()
            assert follow(300, lambda: stream_healthy(s)), f"stream not healthy 300 s after the outages: {states}"
            assert "FATAL" not in {st for _, st in states}, states
            p = KafkaProducer(bootstrap_servers=base.kafka_bootstrap_servers, acks="all")
            now = int(time.time() * 1000)
            for i in range(50):
                rec = {"transaction_id": f"BOOT{i:03d}", "store_id": "S1", "product_id": f"P{i % 4}", "quantity": 1,
                       "unit_price": 2.0, "timestamp": now - i * 1000, "customer_id": None, "payment_method": "CARD",
                       "invoice_id": None}
                p.send(s.topic(EVENT_TYPES["sales_transaction"]), key=f"S1|{rec['product_id']}".encode(),
                       value=json.dumps(rec).encode())
            p.flush()
            p.close()
            client = new_client(base)  # the session's endpoint directly

            def landed() -> int:
                return int(client.command(f"SELECT toInt64(sum(transaction_count)) FROM {s.clickhouse_database}"
                                          ".sales_metrics_5m FINAL") or 0)
            assert follow(240, lambda: landed() == 50), f"{landed()} of 50 sales in the windows; {states}"
            text = log_path.read_text(errors="replace")
            assert f"start-up: waiting for ClickHouse at http://127.0.0.1:{ch_gate.port}" in text
            assert f"start-up: waiting for Kafka at localhost:{kafka_gate.port}" in text
            # one process waited through both outages: the supervisor never had to start it again
            assert [st for _, st in states] == ["STARTING", "RUNNING"], states
        finally:
            with contextlib.suppress(Exception):
                local.down(s, timeout=60)
            ch_gate.close()
            kafka_gate.close()
            reset_clients()


def test_the_supervisor_restarts_the_stream_without_end(tmp_path):
    """supervisord's startretries bounds the failed starts (exit within startsecs) before a program is FATAL for
    good: 3 for the stream until 2026-12-06. The stream's is in effect unbounded, with autorestart."""
    import configparser

    from ops import local

    with settings_env(RETAIL_STATE_DIR=str(tmp_path)) as s:
        conf = configparser.ConfigParser(interpolation=None)
        conf.read(local.write_conf(s))
    prog = conf["program:streaming"]
    assert int(prog["startretries"]) >= 1000 and prog["autorestart"] == "true"
    assert int(prog["startsecs"]) == 15
