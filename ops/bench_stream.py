"""Benchmark and load test of the streaming spine: Kafka -> Spark Structured Streaming -> ClickHouse.

Usage::

    python -m ops.bench_stream stream --events 50000 --out reports/bench-stream.json
    python -m ops.bench_stream load --rate 500 --duration 60 --stores 10 --out reports/load-test.json

Both run against the *configured* stack (KAFKA_BOOTSTRAP_SERVERS, CLICKHOUSE_URL, LAKE_URL; the native stack
by default: ``python -m ops.cli up`` first) but in an isolated namespace so they never mix with the
platform's data: topics prefixed ``bench<run>-``, ClickHouse database ``<CLICKHOUSE_DATABASE>_bench``
(recreated), lake bucket ``bench-raw-data`` and a temporary checkpoint folder (all removed afterwards except
the database, kept for inspection). The streaming job runs *in this process* (its queries run in Spark's
threads), so the driver can read chDB and the query progress directly.

Events come from :class:`producers.simulator.Simulator` (valid records of every contract, stock consistent
with sales), with ``timestamp`` replaced by the wall-clock send time so that event time ~ produce time.
They are sent with kafka-python using the platform's producer settings
(:data:`core.kafka.PRODUCER_DEFAULTS`: acks=all, linger 10 ms, batch 16384).

Measurement method
------------------
* **Bare producer rate**: the same client and settings send N pre-generated events to a scratch topic; rate =
  N / (time from the first ``send`` to the end of ``flush``), JSON serialisation included.
* **Freshness** (produce -> visible in ClickHouse) of an event = commit time of the first ``windows``
  micro-batch whose end offset (Spark query progress, via a StreamingQueryListener) on the event's partition
  is past the event's offset, minus the event's produce time (the Kafka record timestamp = CreateTime set by
  the producer at ``send``). The commit time is taken in the foreachBatch right after the ClickHouse inserts
  returned, so the rows are visible to any reader at that instant. Lake freshness is measured the same way on
  the ``raw`` query. Only sales and inventory events count for the ClickHouse figure (the other topics do not
  feed the windows).
* **Sustained end-to-end rate**: N / (last event visible - first event sent), after a warm-up that is not
  counted (the first micro-batch includes the query start-up).
* **Consumer lag** (load test): every second, sum over partitions of Kafka end offset minus the offset the
  ``windows`` query has processed (its last progress' end offsets).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import typer

from core.settings import REPO_ROOT, Settings, get_settings

app = typer.Typer(help="Benchmark and load test of the streaming spine.", no_args_is_help=True)
WINDOW_TOPICS = ("sales-transactions", "inventory-updates")
RAW_TOPICS = ("sales-transactions", "inventory-updates", "price-changes", "customer-events")


# ------------------------------------------------------------------------------------------ setup --
def bench_settings(base: Settings | None = None, trigger_seconds: float = 1.0) -> Settings:
    """Isolated copy of the settings: bench topic prefix, database, lake bucket, temp checkpoints."""
    b = base or get_settings()
    run = datetime.now(timezone.utc).strftime("%H%M%S") + uuid.uuid4().hex[:4]
    return b.model_copy(update={
        "kafka_topic_prefix": f"bench{run}-",
        "clickhouse_database": f"{b.clickhouse_database}_bench",
        "lake_raw_bucket": "bench-raw-data",
        "spark_checkpoint_dir": tempfile.mkdtemp(prefix="bench-checkpoints-"),
        "stream_trigger_seconds": trigger_seconds,
        "stream_starting_offsets": "earliest",
    })


def event_source(stores: int, skus: int, seed: int = 42) -> Iterator[tuple[str, dict[str, Any]]]:
    """Endless valid events from the POS simulator (stores x skus), in its event-time order."""
    from producers.simulator import SimConfig, Simulator

    cfg = SimConfig(n_stores=stores, n_skus=skus, events_per_min_per_store=400.0, duration_minutes=10_000_000,
                    seed=seed, start=datetime.now(timezone.utc))
    return Simulator(cfg).events()


def make_producer(s: Settings):
    """The platform's Kafka producer (:func:`core.kafka.make_producer`)."""
    from core.kafka import make_producer as _make

    return _make(s, client_id="retail-bench")


def _key(et: str, rec: dict) -> str:
    return rec["customer_id"] if et == "customer_event" else f"{rec['store_id']}|{rec['product_id']}"


@dataclass
class SendLog:
    """Thread-safe record of delivered events: (topic, partition, offset, produce time ms) and errors."""

    rows: list[tuple[str, int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, md) -> None:
        with self.lock:
            self.rows.append((md.topic, md.partition, md.offset, md.timestamp))

    def err(self, exc) -> None:
        with self.lock:
            self.errors.append(repr(exc))


def send(producer, s: Settings, et: str, rec: dict, log: SendLog) -> None:
    """Send one event (timestamp := now) to its topic, recording delivery in ``log``."""
    from contracts import EVENT_TYPES

    rec = dict(rec, timestamp=int(time.time() * 1000))
    try:
        fut = producer.send(s.topic(EVENT_TYPES[et]), key=_key(et, rec), value=rec)
    except Exception as exc:  # buffer full / metadata timeout: counted as an error
        log.err(exc)
        return
    fut.add_callback(log.ok)
    fut.add_errback(log.err)


class ProgressListener:
    """Collects every micro-batch's end offsets per query (a pyspark StreamingQueryListener)."""

    def __new__(cls):
        from pyspark.sql.streaming import StreamingQueryListener

        class _L(StreamingQueryListener):
            def __init__(self):
                self.progress: dict[tuple[str, int], dict[str, dict[str, int]]] = {}
                self.lock = threading.Lock()

            def onQueryStarted(self, event):
                pass

            def onQueryProgress(self, event):
                p = event.progress
                try:
                    end = p.sources[0].endOffset if p.sources else None
                    end = json.loads(end) if isinstance(end, str) else (end or {})
                except Exception:
                    end = {}
                with self.lock:
                    self.progress[(p.name, int(p.batchId))] = {t: {int(k): int(v) for k, v in parts.items()}
                                                               for t, parts in end.items()}

            def onQueryIdle(self, event):
                pass

            def onQueryTerminated(self, event):
                pass

            def latest(self, query: str) -> dict[str, dict[int, int]]:
                with self.lock:
                    ids = [b for (q, b) in self.progress if q == query]
                    return self.progress[(query, max(ids))] if ids else {}

        return _L()


def freshness_ms(sent: list[tuple[str, int, int, int]], batch_log: list[dict], progress: dict, query: str,
                 topics: set[str]) -> np.ndarray:
    """Per delivered event on ``topics``: visible time (commit of the first ``query`` batch covering its offset)
    minus produce time, in ms. Events not yet covered are left out."""
    commits = {b["batch_id"]: b["committed_at"] for b in batch_log if b["query"] == query}
    batches = sorted(b for (q, b) in progress if q == query and b in commits)
    out = []
    by_tp: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for t, p, o, ts in sent:
        if t in topics:
            by_tp.setdefault((t, p), []).append((o, ts))
    for (t, p), rows in by_tp.items():
        ends = np.array([progress[(query, b)].get(t, {}).get(p, 0) for b in batches], dtype=np.int64)
        ends = np.maximum.accumulate(ends) if len(ends) else ends
        at = np.array([commits[b] * 1000 for b in batches])
        offs = np.array([o for o, _ in rows], dtype=np.int64)
        tss = np.array([ts for _, ts in rows], dtype=np.float64)
        idx = np.searchsorted(ends, offs, side="right")
        ok = idx < len(ends)
        out.append(at[idx[ok]] - tss[ok])
    return np.concatenate(out) if out else np.array([])


def pct(a: np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/max of an array (ms, rounded), Nones when empty."""
    if len(a) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1), "n": int(len(a))}


class BenchStack:
    """Isolated topics/database/lake bucket + the in-process streaming job and a progress listener."""

    def __init__(self, s: Settings):
        from core.kafka_admin import ensure_topics
        from core.clickhouse import get_client
        from streaming.job import StreamingJob, build_spark

        self.s = s
        admin = get_client(s, database="default")  # not the bench database: a client is bound to its database
        admin.command(f"DROP DATABASE IF EXISTS {s.clickhouse_database}")
        admin.command(f"CREATE DATABASE {s.clickhouse_database}")
        ensure_topics(s)
        self.spark = build_spark(s)
        self.listener = ProgressListener()
        self.spark.streams.addListener(self.listener)
        self.job = StreamingJob(s, spark=self.spark)

    def start(self) -> None:
        self.job.start(available_now=False, trigger_seconds=self.s.stream_trigger_seconds)

    def covered(self, query: str, targets: dict[tuple[str, int], int]) -> bool:
        """True when ``query`` has committed past every (topic, partition) -> next offset in ``targets``."""
        logged = {b["batch_id"] for b in self.job.sinks.batch_log if b["query"] == query}
        with self.listener.lock:
            done = [(b, e) for (q, b), e in self.listener.progress.items() if q == query and b in logged]
        if not done:
            return not targets
        best: dict[tuple[str, int], int] = {}
        for _, e in done:
            for t, parts in e.items():
                for p, o in parts.items():
                    best[(t, p)] = max(best.get((t, p), 0), o)
        return all(best.get(tp, 0) >= o for tp, o in targets.items())

    def wait_covered(self, targets_by_query: dict[str, dict[tuple[str, int], int]], timeout: float) -> float:
        """Block until every query covers its targets; returns the time it happened (raises TimeoutError)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(self.covered(q, t) for q, t in targets_by_query.items()):
                return time.time()
            self.job.await_any(0.0)  # raises if a query died
            time.sleep(0.1)
        raise TimeoutError(f"the streaming queries did not catch up within {timeout:.0f} s")

    def close(self, drop_topics: bool = True) -> None:
        try:
            self.job.stop()
        finally:
            try:
                self.spark.streams.removeListener(self.listener)
            except Exception:
                pass
            shutil.rmtree(self.s.spark_checkpoint_dir, ignore_errors=True)
            try:
                from core.lake import Lake

                Lake(self.s).delete_dir(self.s.lake_raw_bucket)
            except Exception:
                pass
            if drop_topics:
                try:
                    from core.kafka_admin import admin_client, topic_specs

                    a = admin_client(self.s)
                    a.delete_topics(list(topic_specs(self.s)) + [self.s.topic("bench-producer")])
                    a.close()
                except Exception:
                    pass


def targets_of(sent: list[tuple[str, int, int, int]], topics: set[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> next offset to be covered, for the delivered events on ``topics``."""
    out: dict[tuple[str, int], int] = {}
    for t, p, o, _ in sent:
        if t in topics:
            out[(t, p)] = max(out.get((t, p), 0), o + 1)
    return out


def environment(s: Settings) -> dict[str, Any]:
    import kafka
    import pyspark

    return {"cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version(),
            "pyspark": pyspark.__version__, "kafka_python": kafka.__version__, "spark_master": s.spark_master,
            "shuffle_partitions": s.spark_shuffle_partitions, "trigger_seconds": s.stream_trigger_seconds,
            "kafka": s.kafka_bootstrap_servers, "clickhouse": s.clickhouse_url.split("://")[0]}


def write_report(report: dict, out: Path) -> Path:
    out = Path(out)
    if not out.is_absolute():
        out = REPO_ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return out


# ----------------------------------------------------------------------------------------- stream --
def bench_stream(events: int = 50_000, stores: int = 10, skus: int = 100, trigger_seconds: float = 1.0,
                 warmup: int = 1_000, timeout: float = 900, settings: Settings | None = None) -> dict[str, Any]:
    """Bare producer rate, then sustained end-to-end rate and freshness (see module docstring).

    Returns the report dict (also see :func:`write_report`).
    """
    from core.kafka_admin import admin_client

    s = bench_settings(settings, trigger_seconds)
    src = event_source(stores, skus)
    stack = BenchStack(s)
    try:
        # 1. bare producer rate (same client + settings, scratch topic, nothing consuming)
        from kafka.admin import NewTopic

        a = admin_client(s)
        a.create_topics([NewTopic(s.topic("bench-producer"), 3, 1)])
        a.close()
        batch = [next(src) for _ in range(events)]
        p = make_producer(s)
        log0 = SendLog()
        t0 = time.time()
        for et, rec in batch:
            rec = dict(rec, timestamp=int(time.time() * 1000))
            p.send(s.topic("bench-producer"), key=_key(et, rec), value=rec).add_callback(log0.ok).add_errback(log0.err)
        p.flush()
        producer_s = time.time() - t0

        # 2. end to end: start the job, warm up (not counted), then the measured burst
        stack.start()
        wlog = SendLog()
        for _ in range(warmup):
            send(p, s, *next(src), wlog)
        p.flush()
        win_topics = {s.topic(t) for t in WINDOW_TOPICS}
        raw_topics = {s.topic(t) for t in RAW_TOPICS}
        stack.wait_covered({"windows": targets_of(wlog.rows, win_topics), "raw": targets_of(wlog.rows, raw_topics)}, timeout)
        batch = [next(src) for _ in range(events)]
        log1 = SendLog()
        t_first = time.time()
        for et, rec in batch:
            send(p, s, et, rec, log1)
        p.flush()
        t_sent = time.time()
        t_visible = stack.wait_covered({"windows": targets_of(log1.rows, win_topics)}, timeout)
        stack.wait_covered({"raw": targets_of(log1.rows, raw_topics)}, timeout)
        p.close()
        bl = stack.job.sinks.batch_log
        prog = dict(stack.listener.progress)
        fresh_ch = freshness_ms(log1.rows, bl, prog, "windows", win_topics)
        fresh_lake = freshness_ms(log1.rows, bl, prog, "raw", raw_topics)
        n_win = sum(1 for r in log1.rows if r[0] in win_topics)
        first_batch = min(b["batch_id"] for b in bl if b["query"] == "windows" and b["committed_at"] >= t_first) \
            if any(b["query"] == "windows" and b["committed_at"] >= t_first for b in bl) else None
        report = {
            "benchmark": "bench-stream", "generated_at": datetime.now(timezone.utc).isoformat(),
            "events": events, "stores": stores, "skus": skus,
            "producer_only": {"events": len(log0.rows), "errors": len(log0.errors), "seconds": round(producer_s, 3),
                              "events_per_s": round(len(log0.rows) / producer_s, 1)},
            "end_to_end": {
                "events": len(log1.rows), "events_feeding_windows": n_win, "errors": len(log1.errors),
                "produce_seconds": round(t_sent - t_first, 3), "seconds": round(t_visible - t_first, 3),
                "events_per_s": round(len(log1.rows) / (t_visible - t_first), 1),
                "freshness_clickhouse_ms": pct(fresh_ch), "freshness_lake_ms": pct(fresh_lake),
                "windows_batches": sum(1 for b in bl if b["query"] == "windows" and b["committed_at"] >= t_first),
                "first_measured_batch": first_batch,
                "batches": [b for b in bl if b["committed_at"] >= t_first],
            },
            "method": ("producer_only: same kafka-python client/settings to a scratch topic, first send -> flush. "
                       "end_to_end: after a warm-up, N events sent as fast as possible while the in-process "
                       "streaming job runs (processing-time trigger); rate = N / (last event visible in ClickHouse "
                       "- first send). freshness: commit time of the first windows micro-batch whose end offset "
                       "covers the event (Spark progress via StreamingQueryListener; commit taken after the "
                       "ClickHouse insert returned) - Kafka CreateTime of the event."),
            "environment": environment(s),
        }
        report["ratio_end_to_end_vs_producer"] = round(report["end_to_end"]["events_per_s"]
                                                       / report["producer_only"]["events_per_s"], 3)
        return report
    finally:
        stack.close()


# ------------------------------------------------------------------------------------------- load --
def load_test(rate: float, duration: float, stores: int, skus: int = 100, trigger_seconds: float = 1.0,
              settings: Settings | None = None, drain_timeout: float = 300, show: bool = True,
              warmup: int = 1_000) -> dict[str, Any]:
    """Drive the simulator at ``rate`` events/s for ``duration`` s over ``stores`` stores while the streaming
    job runs; sample consumer lag every second; report achieved rate, lag series, freshness p50/p95/p99, errors.
    """
    from kafka import KafkaConsumer, TopicPartition
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    if rate <= 0 or duration <= 0 or stores < 1:
        raise typer.BadParameter("RATE and DURATION must be > 0 and STORES >= 1")
    s = bench_settings(settings, trigger_seconds)
    src = event_source(stores, skus)
    stack = BenchStack(s)
    console = Console(stderr=True)
    lag_series: list[dict[str, Any]] = []
    try:
        stack.start()
        p = make_producer(s)
        win_topics = [s.topic(t) for t in WINDOW_TOPICS]
        # warm-up (not measured): the first micro-batches include query start-up and code generation
        wlog = SendLog()
        for _ in range(warmup):
            send(p, s, *next(src), wlog)
        p.flush()
        stack.wait_covered({"windows": targets_of(wlog.rows, set(win_topics))}, drain_timeout)
        n_warm_batches = len(stack.job.sinks.batch_log)
        cons = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers.split(","))
        tps = [TopicPartition(t, pp) for t in win_topics for pp in sorted(cons.partitions_for_topic(t) or [])]
        log = SendLog()
        sent = 0

        def lag_now() -> int:
            end = cons.end_offsets(tps)
            done = stack.listener.latest("windows")
            return int(sum(max(0, end[tp] - done.get(tp.topic, {}).get(tp.partition, 0)) for tp in tps))

        def table(elapsed: float, lag: int) -> Table:
            t = Table(title=f"load test: {rate:g} events/s for {duration:g} s, {stores} stores")
            for c in ("elapsed s", "sent", "achieved ev/s", "delivered", "errors", "consumer lag", "batches"):
                t.add_column(c, justify="right")
            nb = sum(1 for b in stack.job.sinks.batch_log if b["query"] == "windows")
            t.add_row(f"{elapsed:.0f}", f"{sent}", f"{sent / max(elapsed, 1e-9):.0f}", f"{len(log.rows)}",
                      f"{len(log.errors)}", f"{lag}", f"{nb}")
            return t

        t0 = time.time()
        next_sample = t0
        lag = 0
        with Live(table(0, 0), console=console, refresh_per_second=4, transient=not show) as live:
            while True:
                now = time.time()
                el = now - t0
                if el >= duration:
                    break
                due = int(el * rate) - sent
                for _ in range(min(due, 2000)):
                    send(p, s, *next(src), log)
                    sent += 1
                if now >= next_sample:
                    lag = lag_now()
                    lag_series.append({"t": round(el, 2), "lag": lag, "sent": sent})
                    live.update(table(el, lag))
                    next_sample += 1.0
                if due <= 0:
                    time.sleep(min(0.005, 1.0 / rate))
            p.flush()
            t_end = time.time()
            targets = {"windows": targets_of(log.rows, set(win_topics))}
            deadline = time.time() + drain_timeout
            while time.time() < deadline and not stack.covered("windows", targets["windows"]):
                lag = lag_now()
                lag_series.append({"t": round(time.time() - t0, 2), "lag": lag, "sent": sent})
                live.update(table(time.time() - t0, lag))
                stack.job.await_any(0.0)
                time.sleep(1.0)
            drained = stack.covered("windows", targets["windows"])
            t_drained = time.time()
            lag = lag_now()
            lag_series.append({"t": round(time.time() - t0, 2), "lag": lag, "sent": sent})
            live.update(table(time.time() - t0, lag))
        p.close()
        cons.close()
        fresh = freshness_ms(log.rows, stack.job.sinks.batch_log, dict(stack.listener.progress), "windows",
                             set(win_topics))
        lags = [x["lag"] for x in lag_series]
        report = {
            "benchmark": "load-test", "generated_at": datetime.now(timezone.utc).isoformat(),
            "target_rate": rate, "duration_s": duration, "stores": stores, "skus": skus,
            "sent": sent, "delivered": len(log.rows), "errors": len(log.errors), "error_samples": log.errors[:5],
            "achieved_rate": round(sent / (t_end - t0), 1),
            "delivered_rate": round(len(log.rows) / (t_end - t0), 1),
            "drained": drained, "drain_seconds_after_end": round(t_drained - t_end, 2),
            "consumer_lag": {"max": max(lags) if lags else None,
                             "mean": round(float(np.mean(lags)), 1) if lags else None,
                             "final": lags[-1] if lags else None, "series": lag_series},
            "freshness_clickhouse_ms": pct(fresh),
            "windows_batches": sum(1 for b in stack.job.sinks.batch_log[n_warm_batches:] if b["query"] == "windows"),
            "batches": stack.job.sinks.batch_log[n_warm_batches:],
            "method": ("after a warm-up of 1,000 events (not measured), a fixed-rate loop (events due = elapsed x rate) sending simulator events with kafka-python; "
                       "lag = sum over sales/inventory partitions of Kafka end offset - end offset of the windows "
                       "query's last progress, sampled every second; freshness as in bench-stream."),
            "environment": environment(s),
        }
        return report
    finally:
        stack.close()


@app.callback()
def _main() -> None:
    """Benchmark and load test of the streaming spine."""


@app.command("stream")
def stream_cmd(events: int = typer.Option(50_000, help="Events per phase."),
               out: Path = typer.Option(Path("reports/bench-stream.json"), help="JSON report path."),
               stores: int = 10, skus: int = 100,
               trigger_seconds: float = typer.Option(1.0, help="Processing-time trigger of the job.")) -> None:
    """Bare producer rate vs sustained end-to-end rate and p50/p95 freshness -> JSON report."""
    rep = bench_stream(events=events, stores=stores, skus=skus, trigger_seconds=trigger_seconds)
    path = write_report(rep, out)
    typer.echo(json.dumps({k: rep[k] for k in ("producer_only", "end_to_end", "ratio_end_to_end_vs_producer")}, indent=2))
    typer.echo(f"report: {path}")


@app.command("load")
def load_cmd(rate: float = typer.Option(..., help="Target events/s (RATE)."),
             duration: float = typer.Option(..., help="Seconds to produce (DURATION)."),
             stores: int = typer.Option(..., help="Number of stores (STORES)."),
             skus: int = 100,
             out: Path = typer.Option(Path("reports/load-test.json"), help="JSON report path."),
             trigger_seconds: float = 1.0) -> None:
    """Fixed-rate load with a live display; report achieved rate, lag over time, freshness, errors."""
    rep = load_test(rate=rate, duration=duration, stores=stores, skus=skus, trigger_seconds=trigger_seconds)
    path = write_report(rep, out)
    summary = {k: v for k, v in rep.items() if k not in ("consumer_lag", "environment", "method")}
    summary["consumer_lag"] = {k: v for k, v in rep["consumer_lag"].items() if k != "series"}
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"report: {path}")


if __name__ == "__main__":
    app()
