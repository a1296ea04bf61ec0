"""``make bench-clickhouse``: the ClickHouse HTTP endpoint (``chserver``) next to direct chDB, in one run.

Both sides get the same work on a fresh chDB path of their own: insert ``--rows`` rows of a 5-minute window
fact (``window_start, store_id, product_id, units, revenue``; 1,000 stores x 500 SKUs) with clickhouse-connect ``insert_df`` in chunks
of ``--chunk`` rows, then query a BI view (units and revenue per store over the last day) and the top 20 SKUs ``--runs`` times. Direct chDB runs in a child process (chDB allows one data path per process); the
endpoint runs as ``python -m chserver`` on a free port. Writes a JSON report (rows/s, p50/p95/max latency in
milliseconds, the ratios, cores, date).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from core.settings import WRITER_USER, get_settings
from ops.bench_stream import pct
from ops.services import free_port, local_address, wait_until

DDL = ("CREATE TABLE IF NOT EXISTS bench.windows (window_start DateTime('UTC'), store_id String, product_id String, "
       "units Int64, revenue Decimal(18, 2)) ENGINE = MergeTree ORDER BY (store_id, product_id, window_start)")
VIEW = ("CREATE OR REPLACE VIEW bench.v_store_last_day AS SELECT store_id, sum(units) AS units, sum(revenue) AS revenue "
        "FROM bench.windows WHERE window_start >= (SELECT max(window_start) FROM bench.windows) - INTERVAL 1 DAY "
        "GROUP BY store_id")
QUERIES = {
    "bi_view": "SELECT * FROM bench.v_store_last_day ORDER BY revenue DESC",
    "top_skus": "SELECT product_id, sum(units) AS units FROM bench.windows GROUP BY product_id ORDER BY units DESC LIMIT 20",
}


def make_chunk(i: int, n: int, stores: int = 1000, skus: int = 500) -> pd.DataFrame:
    """Chunk ``i`` of synthetic window rows (deterministic): ``n`` rows."""
    rng = np.random.default_rng(i)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame({
        "window_start": start + pd.to_timedelta(rng.integers(0, 30 * 288, n) * 300, unit="s"),
        "store_id": [f"S{x:04d}" for x in rng.integers(0, stores, n)],
        "product_id": [f"P{x:05d}" for x in rng.integers(0, skus, n)],
        "units": rng.integers(0, 20, n),
        "revenue": np.round(rng.random(n) * 100, 2),
    })


def workload(client, rows: int, chunk: int, runs: int) -> dict:
    """Insert then query through one clickhouse-connect client; returns the measurements."""
    client.command("CREATE DATABASE IF NOT EXISTS bench")
    client.command(DDL)
    client.command(VIEW)
    chunks = [make_chunk(i, min(chunk, rows - i * chunk)) for i in range((rows + chunk - 1) // chunk)]
    t0 = time.perf_counter()
    for df in chunks:
        client.insert_df("bench.windows", df)
    insert_s = time.perf_counter() - t0
    out = {"rows": rows, "insert_s": round(insert_s, 3), "insert_rows_per_s": round(rows / insert_s)}
    for name, sql in QUERIES.items():
        client.query(sql)  # warm-up
        lat = []
        for _ in range(runs):
            t = time.perf_counter()
            client.query(sql)
            lat.append(time.perf_counter() - t)
        out[name] = {"runs": runs, "latency_ms": pct(np.array(lat) * 1000),
                     "mean_ms": round(statistics.mean(lat) * 1000, 2)}
    return out


def _direct(path: str, rows: int, chunk: int, runs: int, q) -> None:
    import clickhouse_connect

    q.put(workload(clickhouse_connect.get_client(dsn=f"chdb://{path}"), rows, chunk, runs))


def _ping(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _exited(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


def run(rows: int = 1_000_000, chunk: int = 100_000, runs: int = 50) -> dict:
    """Both measurements in one run; returns the report.

    Raises:
        TimeoutError: the endpoint did not answer ``/ping`` within 60 s.
        RuntimeError: the endpoint exited before answering.
    """
    import clickhouse_connect

    tmp = Path(tempfile.mkdtemp(prefix="bench-ch-"))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_direct, args=(str(tmp / "direct"), rows, chunk, runs, q))
    p.start()
    direct = q.get()
    p.join()
    port, pw = free_port(), secrets.token_urlsafe(12)
    bind = get_settings().clickhouse_http_host   # the endpoint listens on CLICKHOUSE_HTTP_HOST
    env = {**os.environ, "CLICKHOUSE_CHDB_PATH": str(tmp / "endpoint"), "CLICKHOUSE_HTTP_PORT": str(port),
           "CLICKHOUSE_HTTP_HOST": bind,
           "CLICKHOUSE_ADMIN_PASSWORD": pw, "CLICKHOUSE_WRITER_PASSWORD": pw, "CLICKHOUSE_BI_PASSWORD": pw,
           "RETAIL_STATE_DIR": str(tmp)}
    srv = subprocess.Popen([sys.executable, "-m", "chserver"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT)
    try:
        host = local_address(bind)
        wait_until(lambda: _ping(f"http://{host}:{port}/ping") or _exited(srv), timeout=60,
                   what=f"the ClickHouse HTTP endpoint (python -m chserver) on {host}:{port}", interval=0.2)
        if srv.poll() is not None:
            raise RuntimeError(f"python -m chserver exited with code {srv.returncode} before answering /ping")
        client = clickhouse_connect.get_client(host=host, port=port, username=WRITER_USER, password=pw)
        endpoint = workload(client, rows, chunk, runs)
    finally:
        srv.terminate()
        srv.wait(30)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count(),
        "rows": rows, "chunk_rows": chunk, "runs": runs, "direct_chdb": direct, "http_endpoint": endpoint,
        "ratios_endpoint_vs_direct": {
            "insert_rows_per_s": round(endpoint["insert_rows_per_s"] / direct["insert_rows_per_s"], 3),
            **{f"{k}_{q}": round(endpoint[k]["latency_ms"][q] / direct[k]["latency_ms"][q], 3)
               for k in QUERIES for q in ("p50", "p95")}},
    }
    return report


def main(out: Path = typer.Option(Path("reports/bench-clickhouse.json"), help="JSON report path."),
         rows: int = typer.Option(1_000_000, help="Rows to insert."),
         chunk: int = typer.Option(100_000, help="Rows per insert_df call."),
         runs: int = typer.Option(50, help="Runs of each dashboard query.")) -> None:
    """Measure and write the report; print a short table."""
    rep = run(rows, chunk, runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2))
    d, e = rep["direct_chdb"], rep["http_endpoint"]
    typer.echo(f"{'':24}{'direct chDB':>14}{'HTTP endpoint':>16}")
    typer.echo(f"{'insert rows/s':24}{d['insert_rows_per_s']:>14,}{e['insert_rows_per_s']:>16,}")
    for k in QUERIES:
        dl, el = d[k]["latency_ms"], e[k]["latency_ms"]
        typer.echo(f"{k + ' p50 / p95 (ms)':24}{dl['p50']:>7} / {dl['p95']:<6}{el['p50']:>8} / {el['p95']}")
    typer.echo(f"report: {out}")


if __name__ == "__main__":
    typer.run(main)
