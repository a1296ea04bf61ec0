"""``make demo``: the platform running as one on the native stack, under the supervisor.

1. Start every native service under supervisord (``ops.local``): Kafka (KRaft), MinIO, the ClickHouse HTTP
   endpoint over chDB (migrations applied), the Spark Structured Streaming job, Airflow (standalone).
2. While the supervised stream runs, replay real POS transactions (the shipped UCI Online Retail sample,
   >= 100,000 product lines) with the inventory updates, price observations and customer events derived from
   them, then a synthetic simulator run (Faker catalogue) and three POS glitches the stream must quarantine.
3. At the same time: ``daily_etl`` (Airflow, ``airflow dags test``) loads the newest complete replayed day (the
   last UTC date before the handover to the simulator; none in a sample of a few hours: skipped with the reason)
   into the star schema once the stream has landed it, and 4 dashboard clients query the BI views through the
   endpoint as the read-only ``bi_reader``, in a loop.
4. Wait until the stream has caught up with every topic (checkpoint offsets = end offsets), then print a
   summary read back from ClickHouse and the lake, with how long each concurrent part took, and write it to
   ``reports/demo-summary.json``.
5. Stop every service (unless ``--keep-stack``); the data stays in ``.cache/state`` for ``make nightly``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from ops import local
from ops.bench_stream import pct
from ops.services import wait_until
from core.settings import REPO_ROOT, Settings, get_settings

console = Console()


def lake_counts(s: Settings) -> dict[str, dict[str, int]]:
    """Rows, distinct event ids and Parquet files per raw event type in the lake."""
    from contracts import EVENT_TYPES, field_names
    from core.lake import Lake

    lake = Lake(s)
    out: dict[str, dict[str, int]] = {}
    for et in EVENT_TYPES:
        files = [f for f in lake.list_files(s.lake_raw_bucket, et) if f.endswith(".parquet")]
        if not files:
            out[et] = {"rows": 0, "distinct_ids": 0, "files": 0}
            continue
        id_col = field_names(et)[0]
        t = lake.read_table(s.lake_raw_bucket, et, columns=[id_col])
        out[et] = {"rows": t.num_rows, "distinct_ids": len(set(t.column(id_col).to_pylist())), "files": len(files)}
    return out


def clickhouse_summary(s: Settings) -> dict[str, Any]:
    """Aggregates read back from ClickHouse (FINAL: deduplicated view of the idempotent tables)."""
    from core.clickhouse import get_client

    c = get_client(s)
    db = s.clickhouse_database
    one = lambda sql: c.query(sql).first_row  # noqa: E731
    w = one(f"""SELECT count(), sum(transaction_count), sum(units_sold), sum(units_returned), round(sum(revenue), 2),
                       uniqExact(store_id), uniqExact(product_id), min(window_start), max(window_end)
                FROM {db}.sales_metrics_5m FINAL""")
    risk = c.query(f"""SELECT stockout_risk, count() FROM (
                         SELECT store_id, product_id, argMax(stockout_risk, window_start) AS stockout_risk
                         FROM {db}.sales_metrics_5m FINAL GROUP BY store_id, product_id)
                       GROUP BY stockout_risk ORDER BY stockout_risk""").result_rows
    # one tuple per key, so stock, velocity and cover come from the same (latest) window: argMax of a Nullable
    # column skips NULLs and would take the cover of an older window than the velocity
    top = c.query(f"""SELECT store_id, product_id, t.1, round(t.2, 2), round(t.3, 1)
                      FROM (SELECT store_id, product_id,
                                   argMax(tuple(stock_level, sales_velocity, hours_of_cover), window_start) AS t
                            FROM {db}.sales_metrics_5m FINAL GROUP BY store_id, product_id)
                      WHERE t.3 IS NOT NULL ORDER BY t.3 LIMIT 5""").result_rows
    quarantine = c.query(f"SELECT event_type, count() FROM {db}.quarantine_events FINAL GROUP BY event_type "
                         "ORDER BY event_type").result_rows
    alerts = one(f"SELECT count(), countIf(priority IN ('CRITICAL','HIGH')) FROM {db}.restock_alerts FINAL")
    stores = one(f"SELECT count(), round(sum(revenue), 2) FROM {db}.store_metrics_5m FINAL")
    anomalies = one(f"SELECT countIf(abs(anomaly_score) >= 3) FROM {db}.sales_metrics_5m FINAL")
    return {
        "sku_windows": w[0], "transactions": w[1], "units_sold": w[2], "units_returned": w[3], "revenue": w[4],
        "stores": w[5], "skus": w[6], "first_window": str(w[7]), "last_window_end": str(w[8]),
        "store_windows": stores[0], "store_revenue": stores[1],
        "latest_risk": {r[0]: r[1] for r in risk},
        "lowest_cover": [dict(zip(("store_id", "product_id", "stock", "units_per_hour", "hours_of_cover"), r))
                         for r in top],
        "quarantined": {r[0]: r[1] for r in quarantine},
        "restock_alerts": alerts[0], "restock_alerts_high_or_critical": alerts[1],
        "anomalous_windows_abs_z_ge_3": anomalies[0],
    }


def publish_pos_glitches(s: Settings, at: datetime) -> dict[str, int]:
    """Publish records that satisfy the Avro contract but break the business rules (quantity 0, negative
    price, an event time decades away), as a misconfigured till would; the stream must quarantine them.

    Returns {kind: count sent}.
    """
    from contracts import EVENT_TYPES
    from core.kafka import make_producer

    ms = int(at.timestamp() * 1000)
    base = {"store_id": "UCI-GB", "product_id": "85123A", "customer_id": None, "payment_method": "CARD",
            "invoice_id": "GLITCH"}
    glitches = {
        "zero_quantity": {**base, "transaction_id": "glitch-qty0", "quantity": 0, "unit_price": 2.55, "timestamp": ms},
        "negative_price": {**base, "transaction_id": "glitch-price", "quantity": 1, "unit_price": -2.55, "timestamp": ms},
        "absurd_timestamp": {**base, "transaction_id": "glitch-ts", "quantity": 1, "unit_price": 2.55,
                             "timestamp": ms + 20 * 365 * 86_400_000},
    }
    # sent straight to the topic, as a till that bypasses the platform's producer would: the EventPublisher
    # applies the same rules (contracts.rule_violations) and would dead-letter them instead
    prod = make_producer(s, client_id="retail-pos-glitch")
    try:
        for rec in glitches.values():
            prod.send(s.topic(EVENT_TYPES["sales_transaction"]), key=f"{rec['store_id']}|{rec['product_id']}",
                      value=rec).get(timeout=30)
    finally:
        prod.close()
    return {k: 1 for k in glitches}


def _print(summary: dict[str, Any]) -> None:
    ch, lake, rep = summary["clickhouse"], summary["lake"], summary["producers"]
    t = Table(title="Demo summary (read back from ClickHouse and the lake)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    pub = rep["replay"]["generator"]["events"]
    rows = [
        ("UCI rows read / product lines replayed", f"{rep['replay']['generator']['rows']:,} / "
                                                   f"{pub.get('sales_transaction', 0):,}"),
        ("synthetic sales published", f"{rep['synthetic']['generator'].get('events', {}).get('sales_transaction', 0):,}"),
        ("POS lines in ClickHouse windows", f"{ch['transactions']:,}"),
        ("units sold / returned", f"{ch['units_sold']:,} / {ch['units_returned']:,}"),
        ("revenue (store currency)", f"{ch['revenue']:,.2f}"),
        ("stores x SKUs", f"{ch['stores']} x {ch['skus']:,}"),
        ("5-min store x SKU windows", f"{ch['sku_windows']:,}"),
        ("event time covered", f"{ch['first_window']} .. {ch['last_window_end']}"),
        ("latest stock-out risk per store x SKU", json.dumps(ch["latest_risk"])),
        ("restock alerts (HIGH/CRITICAL)", f"{ch['restock_alerts']:,} ({ch['restock_alerts_high_or_critical']:,})"),
        ("windows with |z| >= 3", f"{ch['anomalous_windows_abs_z_ge_3']:,}"),
        ("quarantined (invalid) events", json.dumps(ch["quarantined"])),
    ]
    rows += [(f"lake raw-data/{et}", f"{v['rows']:,} rows, {v['distinct_ids']:,} ids, {v['files']} files")
             for et, v in lake.items()]
    tm, etl, bi = summary["timings_s"], summary["daily_etl"], summary["bi_queries"]
    rows += [
        (f"platform up ({len(tm.get('services_healthy', []))} services healthy)", f"{tm['platform_up_s']} s"),
        ("replay published / stream caught up", f"{tm['replay_publish_s']} s / +{tm['stream_catch_up_after_replay_s']} s"),
        ("stream busy (t from start)", f"{tm['stream_window'][0]} .. {tm['stream_window'][1]} s"),
        (f"daily_etl for {etl.get('date')}", f"skipped: {etl['skipped']}" if etl.get("skipped") else
                                             f"{'ok' if etl.get('ok') else 'FAILED'} in {etl.get('seconds')} s "
                                             f"(t {etl.get('window')})"),
        (f"BI queries as bi_reader ({bi['clients']} clients)", f"{bi['queries']} ok, {bi['errors']} errors, p50 "
                                                               f"{bi['latency_ms']['p50']} ms, p95 {bi['latency_ms']['p95']} ms"),
        ("overlap with the stream: daily_etl / BI", f"{summary['checks']['overlap']['etl_during_stream']} s / "
                                                    f"{summary['checks']['overlap']['bi_during_stream']} s"),
    ]
    ml = etl.get("ml")
    if ml:
        rows.append(("nightly ML (backfill, training, predictions)",
                     f"skipped: {ml['skipped']}" if ml.get("skipped") else
                     "FAILED" if not ml.get("ok") else
                     f"{ml['backfill_days']} days in {ml.get('backfill_s')} s, training "
                     f"{ml.get('demand_forecast_training_s')} s, predictions {ml.get('batch_predictions_s')} s"))
    for r in rows:
        t.add_row(*r)
    console.print(t)


class BIClients:
    """``n`` dashboard clients running the live dashboard's own queries (:data:`dashboard.queries.QUERIES`, all
    stores, the last 7 days of star-schema data) in a loop as ``bi_reader`` until stopped; records each query's
    latency (s) and errors."""

    def __init__(self, s: Settings, n: int = 4):
        self.s, self.n = s, n
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.started = self.ended = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _loop(self, i: int) -> None:
        from core.clickhouse import new_client

        from dashboard import queries as Q

        client = new_client(self.s, readonly=True)  # one client per thread, as bi_reader
        db = self.s.clickhouse_database
        names = list(Q.QUERIES)
        filters = Q.Filters()
        k = i
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                if k % len(names) == 0:   # follow the data: the star schema fills while the demo runs
                    last = Q.data_range(client, db)[1]
                    filters = Q.Filters(start=last - timedelta(days=6) if last else None, end=last)
                Q.run(client, db, names[k % len(names)], filters)
                self.latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the loop goes on
                self.errors.append(f"{names[k % len(names)]}: {str(exc)[:200]}")
            k += 1
            self._stop.wait(0.5)
        client.close()

    def start(self) -> None:
        """Start the client threads."""
        self.started = time.time()
        self._threads = [threading.Thread(target=self._loop, args=(i,), name=f"bi-{i}", daemon=True)
                         for i in range(self.n)]
        for th in self._threads:
            th.start()

    def stop(self) -> dict[str, Any]:
        """Stop the clients; returns {clients, queries, errors, latency_ms (:func:`ops.bench_stream.pct`), seconds,
        first_errors}."""
        self._stop.set()
        for th in self._threads:
            th.join(30)
        self.ended = time.time()
        return {"clients": self.n, "queries": len(self.latencies), "errors": len(self.errors),
                "latency_ms": pct(np.array(self.latencies) * 1000),
                "seconds": round(self.ended - self.started, 1), "first_errors": self.errors[:5]}


def wait_caught_up(s: Settings, timeout: float, what: str = "stream") -> float:
    """Wait until the supervised stream's checkpoints reach the topics' end offsets; returns the seconds waited.

    Raises:
        TimeoutError: still behind after ``timeout`` seconds (the message gives the lag per query).
    """
    from ops.streamstate import job_queries, lag

    queries = job_queries(s)
    behind: dict[str, int] = {}

    def caught_up() -> bool:
        behind.update(lag(s, queries))
        return not any(behind.values())

    try:
        return wait_until(caught_up, timeout, what, interval=2)
    except TimeoutError:
        raise TimeoutError(f"{what} still behind after {timeout:.0f} s: {behind} records") from None


def replayed_days(s: Settings, before: datetime) -> list:
    """UTC dates before ``before`` that have 5-minute windows in ClickHouse, ascending."""
    from core.clickhouse import get_client

    rows = get_client(s).query(
        f"SELECT DISTINCT toDate(window_start) AS d FROM {s.clickhouse_database}.sales_metrics_5m "
        f"WHERE window_start < toDateTime('{before:%Y-%m-%d} 00:00:00', 'UTC') ORDER BY d").result_rows
    return [r[0] for r in rows]


#: training settings of the demo's nightly run: two backtest origins over the replayed history, fewer trees
DEMO_TRAINING = {"FORECAST_BACKTEST_ORIGINS": "2", "FORECAST_TRAIN_WINDOW_DAYS": "90", "FORECAST_GBT_MAX_ITER": "20"}
#: days of replayed history the demo loads into the star schema before training (the newest ones)
DEMO_HISTORY_DAYS = 60


def short_history(s: Settings, day) -> str | None:
    """Why the training DAG cannot run for ``day`` on the star schema's demand history, or None when it can: the
    training's own check (:func:`ml.pipeline.history_end` on the rows of :func:`ml.pipeline.demand_sql`)."""
    from core.clickhouse import get_client
    from ml.pipeline import InsufficientData, demand_sql, history_end

    db = s.clickhouse_database
    rows, first, last = get_client(s).query(
        f"SELECT count(), min(date), max(date) FROM ({demand_sql(db, day)})").result_rows[0]
    try:
        history_end(first if rows else None, last, day, db, s.forecast_horizon)
    except InsufficientData as exc:
        return str(exc)
    return None


def nightly_ml(s: Settings, days: list, day, home: Path) -> dict[str, Any]:
    """The batch side of the demo after its ``daily_etl`` run for ``day``: the star schema for the other replayed
    ``days`` in this process with the DAG's own code (the Spark fact job's :func:`etl.spark_facts.build_day` on one
    in-process SparkSession, then load, quality_check; each load rebuilds the later days already loaded, so ``day``'s
    inventory snapshot carries the earlier days' stock forward and its safety stock has its 28-day window; the
    forecast needs history, and ``airflow dags test`` per day would take about 30 s each), then
    ``demand_forecast_training`` and ``batch_predictions`` for ``day`` with ``airflow dags test``.

    When the star schema then holds too little history to train (a short ``--sample``, e.g. the 9 days of December
    2011, of which 6 lie up to ``day``), training and predictions are skipped with the training's own reason
    (:func:`short_history`) and the demo goes on: the nightly DAG itself fails on it (``make nightly``).

    Returns: {"backfill_days", "backfill_s", "<dag_id>_s", "ok", "error" or "skipped" (the reason)}.
    """
    from core.spark import build_spark
    from etl import spark_facts
    from etl import star_schema as etl_mod
    from ops.airflow import dags_test

    # a demo-sized training run (the DAG's own code; these are settings, see the README's configuration table)
    for k, v in DEMO_TRAINING.items():
        os.environ.setdefault(k, v)
    get_settings.cache_clear()
    out: dict[str, Any] = {"backfill_days": 0, "ok": False}
    t = time.time()
    spark = None
    try:
        for d in days:
            if d == day:
                continue
            spark = spark or build_spark("demo-etl-backfill", lake=True)   # one session for every day (the DAG's Spark job code)
            spark_facts.build_day(spark, d)
            started = datetime.now(timezone.utc)
            etl_mod.load(d, migrate=False)
            etl_mod.quality_check(d, started, dag_run_id="demo-backfill")
            out["backfill_days"] += 1
        out["backfill_s"] = round(time.time() - t, 1)
        if spark is not None:
            spark.stop()
            spark = None
        reason = short_history(s, day)
        if reason:
            out["skipped"] = reason
            console.print(f"[yellow]training and predictions skipped:[/] {reason}")
        else:
            for dag_id in ("demand_forecast_training", "batch_predictions"):
                out[f"{dag_id}_s"] = round(dags_test(dag_id, day, s, home), 1)
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported in the summary and fails the demo
        out["error"] = str(exc)[-1500:]
    finally:
        if spark is not None:
            spark.stop()
    return out


def run_demo(sample: Path | None = None, synthetic_minutes: float = 180.0, invalid_rate: float = 0.001,
             keep_stack: bool = False, fresh: bool = True, bi_clients: int = 4,
             services: list[str] | None = None, ml: bool = True) -> dict[str, Any]:
    """Run the whole demo (see module docstring) and return the summary dict.

    ``fresh`` (default) stops the native services and deletes the Kafka, MinIO, chDB and checkpoint folders of
    RETAIL_STATE_DIR first, so re-runs do not accumulate data. ``ml``: after the stream, load the other replayed
    days and train + predict (:func:`nightly_ml`), so the dashboard's analyst page has forecasts. When the
    platform was already running (``make local-up``), it is left running afterwards, as with ``keep_stack``.

    Raises:
        ops.install.StackError: a native service failed to start (message names the log).
        RuntimeError: the stream dropped or duplicated sales, daily_etl failed, or a BI query failed.
    """
    from ops.airflow import dags_test, init as airflow_init
    from producers.cli import DEFAULT_SAMPLE, run_replay, run_synthetic

    s = get_settings()
    keep_stack = keep_stack or local.supervisord_running(s)
    if fresh:
        local.down(s)
        for part in ("kafka", "minio", "chdb", "checkpoints"):
            shutil.rmtree(Path(s.retail_state_dir) / part, ignore_errors=True)
    console.rule(f"starting the platform under supervisord (state in {s.retail_state_dir})")
    t0 = time.time()
    local.up(None, services)
    s = get_settings()
    timings: dict[str, Any] = {"platform_up_s": round(time.time() - t0, 1)}
    timings["services_healthy"] = [n for n, r in local.status(s).items() if r["healthy"]]
    console.print("services healthy: " + ", ".join(timings["services_healthy"]))
    bi = BIClients(s, bi_clients)
    etl: dict[str, Any] = {}
    try:
        produced: dict[str, Any] = {}
        handover = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=synthetic_minutes)
        console.rule("replaying real POS data through Kafka; the supervised stream, BI clients and daily_etl run at once")
        bi.start()
        t_pub = time.time()
        produced["replay"] = run_replay(s, sample or DEFAULT_SAMPLE, invalid_rate=invalid_rate, end_at=handover)
        timings["replay_publish_s"] = round(time.time() - t_pub, 1)
        # daily_etl needs the replayed day in the lake: start it once the stream has caught up with the replay
        timings["stream_catch_up_after_replay_s"] = round(wait_caught_up(s, 900, "stream after the replay"), 1)
        # the newest complete replayed day: the days before the handover's date hold replayed events only, all
        # published (the simulator starts at the handover); a sample of months trains up to its end
        complete = replayed_days(s, handover)
        day = complete[-1] if complete else None
        # its own AIRFLOW_HOME: the supervised standalone Airflow keeps its SQLite metadata DB to itself
        home = airflow_init(s, Path(s.retail_state_dir) / "airflow-cli")

        def run_etl() -> None:
            t = time.time()
            etl["date"] = str(day)
            if day is None:   # e.g. a sample of a few hours: nothing complete to load or train on; not an error
                reason = (f"no complete replayed day before the handover ({handover:%Y-%m-%d %H:%M} UTC): the sample's "
                          "events all fall on the handover's own date")
                etl.update(ok=True, skipped=reason, seconds=0.0, ml={"ok": True, "skipped": reason})
                console.print(f"[yellow]daily_etl, training and predictions skipped:[/] {reason}")
                return
            try:
                etl["seconds"] = round(dags_test("daily_etl", day, s, home), 1)
                etl["ok"] = True
            except Exception as exc:  # noqa: BLE001 - reported in the summary and fails the demo below
                etl["ok"], etl["error"] = False, str(exc)[-1500:]
                etl["seconds"] = round(time.time() - t, 1)
            etl["window"] = [round(t - t0, 1), round(time.time() - t0, 1)]

        etl_thread = threading.Thread(target=run_etl, name="daily_etl")
        etl_thread.start()
        t_syn = time.time()
        produced["synthetic"] = run_synthetic(s, stores=3, skus=40, events_per_min_per_store=200,
                                              duration_minutes=synthetic_minutes, start=handover,
                                              invalid_rate=invalid_rate)
        produced["glitches"] = publish_pos_glitches(s, handover + timedelta(minutes=synthetic_minutes / 2))
        timings["synthetic_publish_s"] = round(time.time() - t_syn, 1)
        timings["stream_drain_s"] = round(wait_caught_up(s, 900, "stream after the simulator"), 1)
        timings["stream_window"] = [round(t_pub - t0, 1), round(time.time() - t0, 1)]
        etl_thread.join()
        if ml and etl.get("ok") and day is not None:
            console.rule("nightly batch: the other replayed days into the star schema, then training and predictions")
            etl["ml"] = nightly_ml(s, complete[-DEMO_HISTORY_DAYS:], day, home)   # complete ends with day
            timings["nightly_ml_s"] = round(sum(v for k, v in etl["ml"].items() if k.endswith("_s")), 1)
        bi_stats = bi.stop()
        bi_stats["window"] = [round(bi.started - t0, 1), round(bi.ended - t0, 1)]
        summary = {"producers": produced, "timings_s": timings, "daily_etl": etl, "bi_queries": bi_stats,
                   "stream": stream_batches(s), "clickhouse": clickhouse_summary(s), "lake": lake_counts(s)}
        sales_pub = sum(produced[k]["generator"]["events"].get("sales_transaction", 0)
                        for k in ("replay", "synthetic"))
        lake_sales = summary["lake"]["sales_transaction"]
        summary["checks"] = {"sales_published_valid": sales_pub, "lake_sales_rows": lake_sales["rows"],
                             "lake_sales_distinct_ids": lake_sales["distinct_ids"],
                             "overlap": {"etl_during_stream": _overlap(etl.get("window"), timings["stream_window"]),
                                         "bi_during_stream": _overlap(bi_stats["window"], timings["stream_window"])}}
        out = REPO_ROOT / "reports" / "demo-summary.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, default=str))
        _print(summary)
        console.print(f"full summary: {out}")
        problems = []
        if not etl.get("ok"):
            problems.append(f"daily_etl failed: {etl.get('error')}")
        if ml and not etl.get("ml", {}).get("ok"):
            problems.append(f"training / predictions failed: {etl.get('ml', {}).get('error')}")
        if bi_stats["errors"]:
            problems.append(f"{bi_stats['errors']} BI queries failed: {bi_stats['first_errors']}")
        if lake_sales["distinct_ids"] != lake_sales["rows"]:
            problems.append(f"lake holds duplicate sales ({lake_sales['rows']} rows, {lake_sales['distinct_ids']} ids)")
        if problems:
            raise RuntimeError("; ".join(problems))
        return summary
    finally:
        bi.stop()
        if not keep_stack:
            console.rule("stopping the platform")
            local.down(s)
        else:
            console.print(f"platform left running: dashboard http://localhost:{s.dashboard_port}, "
                          f"Airflow http://localhost:{s.airflow_port}; make local-down stops it")


def _overlap(a, b) -> float:
    """Seconds two [start, end] intervals overlap (0 when either is missing)."""
    if not a or not b:
        return 0.0
    return round(max(0.0, min(a[1], b[1]) - max(a[0], b[0])), 1)


def stream_batches(s: Settings) -> dict[str, Any]:
    """Micro-batches the supervised job recorded in ``stream_batches``: count, input rows, seconds per query."""
    from core.clickhouse import get_client

    rows = get_client(s).query(
        f"SELECT query, count(), sum(input_rows), sum(output_rows), round(sum(dateDiff('millisecond', started_at, "
        f"committed_at)) / 1000, 1) FROM {s.clickhouse_database}.stream_batches FINAL GROUP BY query").result_rows
    return {r[0]: {"batches": r[1], "input_rows": r[2], "output_rows": r[3], "busy_seconds": r[4]} for r in rows}


def main(sample: Path = typer.Option(None, help="UCI transactions CSV(.gz) to replay (default: the shipped sample)."),
         synthetic_minutes: float = typer.Option(180.0, help="Simulated minutes of synthetic traffic."),
         invalid_rate: float = typer.Option(0.001, help="Fraction of deliberately invalid records (dead-letter path)."),
         keep_stack: bool = typer.Option(False, help="Leave the platform running afterwards (make local-down stops it)."),
         fresh: bool = typer.Option(True, help="Start from an empty RETAIL_STATE_DIR."),
         bi_clients: int = typer.Option(4, help="Dashboard clients querying the BI views during the run."),
         ml: bool = typer.Option(True, help="Load every replayed day, then train and predict (analyst dashboard).")) -> None:
    """Run the end-to-end demo on the native stack."""
    run_demo(sample, synthetic_minutes, invalid_rate, keep_stack, fresh, bi_clients, ml=ml)


if __name__ == "__main__":
    typer.run(main)
