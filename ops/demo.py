"""``make demo``: the platform end to end on the native stack, in one process.

1. Start the real Kafka broker (KRaft) and MinIO; apply the ClickHouse migrations (chDB, this process).
2. Start the Spark Structured Streaming job (processing-time trigger) in this process.
3. Replay real POS transactions (the shipped UCI Online Retail sample, >= 100,000 product lines) together
   with the inventory updates, price observations and customer events the replay derives from them, plus a
   short synthetic simulator run (Faker catalogue, separate stores) — through Kafka, while the job runs.
4. Drain what is left with an available-now pass from the same checkpoints, stop the queries.
5. Print a summary read back from ClickHouse and from the lake, and write it to ``reports/demo-summary.json``.
6. Stop every process it started (also on error or Ctrl-C).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ops import local
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
    top = c.query(f"""SELECT store_id, product_id, stock_level, round(sales_velocity, 2), round(hours_of_cover, 1)
                      FROM (SELECT store_id, product_id, argMax(stock_level, window_start) AS stock_level,
                                   argMax(sales_velocity, window_start) AS sales_velocity,
                                   argMax(hours_of_cover, window_start) AS hours_of_cover
                            FROM {db}.sales_metrics_5m FINAL GROUP BY store_id, product_id)
                      WHERE hours_of_cover IS NOT NULL ORDER BY hours_of_cover LIMIT 5""").result_rows
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
    from core.kafka import EventPublisher

    ms = int(at.timestamp() * 1000)
    base = {"store_id": "UCI-GB", "product_id": "85123A", "customer_id": None, "payment_method": "CARD",
            "invoice_id": "GLITCH"}
    glitches = {
        "zero_quantity": {**base, "transaction_id": "glitch-qty0", "quantity": 0, "unit_price": 2.55, "timestamp": ms},
        "negative_price": {**base, "transaction_id": "glitch-price", "quantity": 1, "unit_price": -2.55, "timestamp": ms},
        "absurd_timestamp": {**base, "transaction_id": "glitch-ts", "quantity": 1, "unit_price": 2.55,
                             "timestamp": ms + 20 * 365 * 86_400_000},
    }
    with EventPublisher(s, client_id="retail-pos-glitch") as pub:
        for rec in glitches.values():
            pub.publish("sales_transaction", rec)
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
    rows.append(("stream wall time (s)", str(summary["stream"].get("seconds"))))
    for r in rows:
        t.add_row(*r)
    console.print(t)


def run_demo(sample: Path | None = None, synthetic_minutes: float = 180.0, invalid_rate: float = 0.001,
             keep_stack: bool = False, fresh: bool = True) -> dict[str, Any]:
    """Run the whole demo (see module docstring) and return the summary dict.

    ``fresh`` (default) stops the native services and deletes the Kafka, MinIO, chDB and checkpoint folders of
    RETAIL_STATE_DIR first, so re-runs do not accumulate data; what the demo lands stays there for
    ``make nightly`` and for inspection.

    Raises:
        ops.local.StackError: a native service failed to start (message names the log).
        RuntimeError: the stream dropped or duplicated sales (lake ids vs published count differ).
    """
    from producers.cli import DEFAULT_SAMPLE, run_replay, run_synthetic
    from streaming.job import StreamingJob, build_spark

    s = get_settings()
    if fresh:
        # A demo starts from empty topics, lake, checkpoints and ClickHouse so its summary is about this run.
        local.down(s)
        for part in ("kafka", "minio", "chdb", "checkpoints"):
            shutil.rmtree(Path(s.retail_state_dir) / part, ignore_errors=True)
    console.rule(f"starting the native stack (Kafka KRaft, MinIO) with state in {s.retail_state_dir}")
    local.up(s)
    spark = None
    try:
        spark = build_spark(s)
        job = StreamingJob(s, spark=spark)  # migrates ClickHouse, creates topics
        console.rule("streaming job running; replaying real POS data through Kafka")
        job.start(available_now=False)
        produced: dict[str, Any] = {}

        # Event time is one timeline: the replay ends `synthetic_minutes` ago and the simulator continues
        # from there to now, so neither is behind the other's watermark.
        handover = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=synthetic_minutes)

        def produce() -> None:
            produced["replay"] = run_replay(s, sample or DEFAULT_SAMPLE, invalid_rate=invalid_rate, end_at=handover)
            produced["synthetic"] = run_synthetic(s, stores=3, skus=40, events_per_min_per_store=200,
                                                  duration_minutes=synthetic_minutes, start=handover,
                                                  invalid_rate=invalid_rate)
            produced["glitches"] = publish_pos_glitches(s, handover + timedelta(minutes=synthetic_minutes / 2))

        producer = threading.Thread(target=produce, name="producers")
        producer.start()
        while producer.is_alive():
            producer.join(2)
            for q in job.queries.values():
                if not q.isActive and q.exception() is not None:
                    raise q.exception()
        if "synthetic" not in produced:
            raise RuntimeError("the producers did not finish; see the errors above")
        job.stop()
        console.rule("draining the rest of the topics (available-now from the same checkpoints)")
        t0 = time.time()
        job = StreamingJob(s, spark=spark, migrate=False)
        try:
            job.start(available_now=True)
            job.await_available_now()
            stream_stats = job.stats()
        finally:
            job.stop()
        stream_stats["drain_seconds"] = round(time.time() - t0, 1)
        summary = {"producers": produced, "stream": stream_stats,
                   "clickhouse": clickhouse_summary(s), "lake": lake_counts(s)}
        sales_pub = sum(produced[k]["generator"]["events"].get("sales_transaction", 0)
                        for k in ("replay", "synthetic"))
        lake_sales = summary["lake"]["sales_transaction"]
        summary["checks"] = {"sales_published_valid": sales_pub, "lake_sales_rows": lake_sales["rows"],
                             "lake_sales_distinct_ids": lake_sales["distinct_ids"]}
        out = REPO_ROOT / "reports" / "demo-summary.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, default=str))
        _print(summary)
        console.print(f"full summary: {out}")
        return summary
    finally:
        if spark is not None:
            spark.stop()
        if not keep_stack:
            console.rule("stopping the native stack")
            local.down(s)


def main(sample: Path = typer.Option(None, help="UCI transactions CSV(.gz) to replay (default: the shipped sample)."),
         synthetic_minutes: float = typer.Option(180.0, help="Simulated minutes of synthetic traffic."),
         invalid_rate: float = typer.Option(0.001, help="Fraction of deliberately invalid records (dead-letter path)."),
         keep_stack: bool = typer.Option(False, help="Leave Kafka and MinIO running afterwards."),
         fresh: bool = typer.Option(True, help="Start from an empty RETAIL_STATE_DIR.")) -> None:
    """Run the end-to-end demo on the native stack."""
    run_demo(sample, synthetic_minutes, invalid_rate, keep_stack, fresh)


if __name__ == "__main__":
    typer.run(main)
