"""``make bench-nightly``: the whole nightly batch at chain scale, stage by stage, at several sizes.

For each size (``--series``, e.g. 1,000 and 10,000 store x SKU series) a fresh native platform is started on free
ports (MinIO + the ClickHouse endpoint over chDB, migrated) and a synthetic chain is generated **through the real
tables**:

* one year of history (``--days`` - 1 days) as daily ``fact_sales`` lines + ``dim_store`` / ``dim_product`` (the
  ETL's own BLAKE2b surrogate keys) and the previous day's ``fact_inventory`` snapshot: what the night's stages
  read from ClickHouse;
* the night's day as **raw events in the lake** (``raw-data/sales_transaction`` and ``inventory_update``, the
  streaming job's layout, with 2 % replayed copies) and the reference data ``raw-data/reference/{products,stores}``:
  what the ETL reads.

Demand per series: Poisson with a log-normal level, a weekly profile and a yearly wave, some series intermittent.

Then the night runs with the DAGs' own code, each stage timed with its output rows:

1. ``etl``: ``etl/jobs/daily_facts.py`` by ``spark-submit`` (the ``build_facts`` task), then ``load`` and
   ``quality_check`` (reconciled with the lake exactly);
2. ``features``: :func:`ml.pipeline.stage_demand` (fact_sales -> staged daily demand), ``ml/jobs/build_features.py``
   by ``spark-submit`` (the feature table as Spark DataFrame code, to the lake), :func:`ml.pipeline.load_features`
   (-> ClickHouse ``features_daily``);
3. ``training``: ``ml/jobs/train.py`` by ``spark-submit`` (GBT + rolling-origin backtest against the baselines),
   then :func:`ml.pipeline.register_model`;
4. ``predictions``: ``ml/jobs/predict.py`` by ``spark-submit``, then :func:`ml.pipeline.load_predictions`;
5. ``reorder``: :func:`ml.pipeline.optimise_stock` (reorder recommendations).

The training settings come from the environment like the DAG's (FORECAST_BACKTEST_ORIGINS, FORECAST_GBT_MAX_ITER,
FORECAST_TRAIN_WINDOW_DAYS, FORECAST_HORIZON); ``--origins`` / ``--trees`` set them for the run and the report
records them. The JSON report (``reports/bench-nightly.json``) has per size and stage seconds and rows, the
night's total against the goal (<= 600 s at 10,000 series on 2 cores; judged on the largest size run, in the
shared goal block of :mod:`ops.goals`: ``goals``, ``verdict``, ``goals_missed``, exit 1 after the report and chart
when missed), the bounding stage, the machine's cores and load average (the report's start at its top level, each
size's start in its run: :func:`merge_report`); an HTML chart beside it shows seconds per
stage and size.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import typer

from core.settings import REPO_ROOT
from ops.charts import write_html
from ops.goals import exit_on_missed, goal, judge
from streaming.sinks import lake_arrow_schema

UTC = dt.timezone.utc
GOAL_SECONDS = 600.0
STAGES = ("etl", "features", "training", "predictions", "reorder")


def shape(series: int) -> tuple[int, int]:
    """(stores, SKUs per store) for a number of series: stores = series // 100 (at least 10), SKUs = the rest."""
    stores = max(10, series // 100)
    return stores, max(1, series // stores)


def demand_matrix(n_series: int, days: list[dt.date], rng) -> np.ndarray:
    """Units sold per series x day (Poisson; log-normal level, weekly profile, yearly wave, 20 % intermittent)."""
    level = rng.lognormal(0.3, 0.9, n_series)
    level[rng.random(n_series) < 0.2] *= 0.15
    dow = np.array([d.weekday() for d in days])
    weekly = np.array([0.9, 0.85, 0.9, 1.0, 1.15, 1.35, 0.85])[dow]
    doy = np.array([d.timetuple().tm_yday for d in days])
    yearly = 1 + 0.2 * np.sin(2 * np.pi * (doy - rng.uniform(0, 365, (n_series, 1))) / 365)
    return rng.poisson(level[:, None] * weekly[None, :] * yearly).astype(np.int32)


def generate(s, series: int, end_day: dt.date, days: int, seed: int = 7) -> dict[str, Any]:
    """The synthetic chain in the platform of settings ``s`` (migrated ClickHouse database, lake buckets):
    history through the star-schema tables, the night's day as raw lake events. Returns rows and seconds."""
    from core.clickhouse import get_client
    from core.lake import Lake
    from etl.star_schema import date_key, surrogate_key
    from ops.bench_bi import Loader

    rng = np.random.default_rng(seed)
    client, db, lake = get_client(s), s.clickhouse_database, Lake(s)
    t0 = time.perf_counter()
    n_st, n_sk = shape(series)
    n = n_st * n_sk
    store_ids = np.array([f"ST{i:04d}" for i in range(n_st)], dtype=object)
    skus = np.array([f"SKU{j:05d}" for j in range(n_sk)], dtype=object)
    store_keys = np.array([surrogate_key(x) for x in store_ids], dtype=np.uint64)
    product_keys = np.array([surrogate_key(x) for x in skus], dtype=np.uint64)
    price = np.round(rng.uniform(0.5, 20.0, n_sk), 2)
    cost = np.round(price * rng.uniform(0.4, 0.8, n_sk), 2)
    products = pd.DataFrame({"product_id": skus, "product_name": [f"Product {j}" for j in range(n_sk)],
                             "category": "Grocery", "sub_category": "Grocery", "brand": "Acme", "supplier": "Acme Ltd",
                             "unit_cost": cost, "unit_price": price, "shelf_life_days": 365, "reorder_point": 20,
                             "storage_capacity": 2000})
    stores = pd.DataFrame({"store_id": store_ids, "store_name": [f"Store {i}" for i in range(n_st)], "city": "",
                           "country": "United Kingdom", "country_code": "GB", "region": "North"})
    raw = s.lake_raw_bucket
    lake.write_table(pa.Table.from_pandas(products, preserve_index=False), raw, "reference/products/products.parquet")
    lake.write_table(pa.Table.from_pandas(stores, preserve_index=False), raw, "reference/stores/stores.parquet")
    ld = Loader(client, db, collect=False)
    ld.insert("dim_store", stores.drop(columns="store_id").assign(store_key=store_keys, store_id=store_ids,
                                                                   is_known=np.uint8(1)))
    ld.insert("dim_product", products.rename(columns={"product_id": "sku"}).assign(
        product_key=product_keys, is_known=np.uint8(1)))

    all_days = [end_day - dt.timedelta(days=k) for k in range(days - 1, -1, -1)]
    units = demand_matrix(n, all_days, rng)
    st_i, sk_i = np.arange(n) // n_sk, np.arange(n) % n_sk
    # ---- history: one POS line per selling series and day (days before the night's)
    batch: list[pd.DataFrame] = []
    for j, d in enumerate(all_days[:-1]):
        sel = np.flatnonzero(units[:, j] > 0)
        q = units[sel, j]
        rev, cst = np.round(q * price[sk_i[sel]], 4), np.round(q * cost[sk_i[sel]], 4)
        batch.append(pd.DataFrame({
            "sale_id": [f"H{date_key(d)}-{k}" for k in sel], "date_key": np.uint32(date_key(d)),
            "event_time": pd.Timestamp(d, tz=UTC) + pd.Timedelta(hours=12), "product_key": product_keys[sk_i[sel]],
            "store_key": store_keys[st_i[sel]], "payment_method": "CARD", "quantity": q, "unit_price": price[sk_i[sel]],
            "revenue": rev, "cost": cst, "profit": np.round(rev - cst, 4), "is_return": np.uint8(0)}))
        if sum(map(len, batch)) >= 1_000_000 or len(batch) >= 90 or j == len(all_days) - 2:  # <= 100 partitions
            ld.insert("fact_sales", pd.concat(batch, ignore_index=True))
            batch = []
    prev = all_days[-2]
    stock0 = rng.integers(0, 200, n)
    ld.insert("fact_inventory", pd.DataFrame({
        "date_key": np.uint32(date_key(prev)), "store_key": store_keys[st_i], "product_key": product_keys[sk_i],
        "closing_stock": stock0.astype(np.int64), "is_carried_forward": np.uint8(0),
        "last_update_time": pd.Timestamp(prev, tz=UTC) + pd.Timedelta(hours=20), "units_sold": np.int64(0),
        "units_returned": np.int64(0), "reorder_point": np.float64(20), "safety_stock": np.nan,
        "safety_stock_method": "", "below_reorder_point": np.uint8(0)}))

    # ---- the night's day as raw events: each unit sold in lines of 1-3 units, 2 % replayed, stock updates
    q_day = units[:, -1]
    lines_per = np.maximum(1, np.ceil(q_day / rng.integers(1, 4, n))).astype(int) * (q_day > 0)
    ser = np.repeat(np.arange(n), lines_per)
    split = np.zeros(len(ser), dtype=np.int32)
    start = np.concatenate([[0], np.cumsum(lines_per)[:-1]])
    for i in np.flatnonzero(lines_per):   # spread the series' units over its lines
        k = lines_per[i]
        split[start[i]:start[i] + k] = np.diff(np.round(np.linspace(0, q_day[i], k + 1)).astype(int))
    keep = split > 0
    ser, split = ser[keep], split[keep]
    base = pd.Timestamp(end_day, tz=UTC)
    ts = base + pd.to_timedelta(np.sort(rng.integers(7 * 3600_000, 22 * 3600_000, len(ser))), "ms")
    sales = pd.DataFrame({
        "transaction_id": [f"T{date_key(end_day)}-{i}" for i in range(len(ser))], "store_id": store_ids[st_i[ser]],
        "product_id": skus[sk_i[ser]], "quantity": split, "unit_price": price[sk_i[ser]], "timestamp": ts,
        "customer_id": None, "payment_method": "CARD", "invoice_id": [f"I{i // 3}" for i in range(len(ser))],
        "ingested_at": ts + pd.Timedelta(seconds=3), "kafka_partition": (ser % 3).astype(np.int32),
        "kafka_offset": np.arange(len(ser), dtype=np.int64)})
    replay = sales.sample(frac=0.02, random_state=seed).assign(ingested_at=lambda x: x["ingested_at"] + pd.Timedelta(hours=1))
    part = f"year={end_day.year:04d}/month={end_day.month:02d}/day={end_day.day:02d}"
    for name, df in (("batch-1.parquet", sales), ("batch-2.parquet", replay)):
        lake.write_table(pa.Table.from_pandas(df, schema=lake_arrow_schema("sales_transaction"), preserve_index=False), raw,
                         f"sales_transaction/{part}", name)
    cum = sales.groupby(["store_id", "product_id"])["quantity"].cumsum().to_numpy()
    inv = pd.DataFrame({
        "inventory_id": "U" + sales["transaction_id"], "store_id": sales["store_id"], "product_id": sales["product_id"],
        "quantity_change": -sales["quantity"], "new_quantity": (stock0[ser] + 500 - cum).astype(np.int32),
        "reason": "SALE", "reorder_point": np.int32(20), "timestamp": sales["timestamp"] + pd.Timedelta(milliseconds=1),
        "ingested_at": sales["ingested_at"], "kafka_partition": sales["kafka_partition"],
        "kafka_offset": sales["kafka_offset"]})
    lake.write_table(pa.Table.from_pandas(inv, schema=lake_arrow_schema("inventory_update"), preserve_index=False), raw,
                     f"inventory_update/{part}", "batch-1.parquet")
    return {"stores": n_st, "skus": n_sk, "series": n, "days": days, "seconds": round(time.perf_counter() - t0, 1),
            "rows": {**ld.rows, "raw sales_transaction": len(sales) + len(replay), "raw inventory_update": len(inv)},
            "units_per_series_day": round(float(units.mean()), 3),
            "zero_days_share": round(float((units == 0).mean()), 3)}


def spark_submit(app: str, args: list[str], s, lake: bool = False) -> float:
    """``spark-submit --master SPARK_MASTER <app> <args>`` as the DAG's SparkSubmitOperator runs it (``lake``:
    with the S3A connector's jars, :func:`core.spark.connector_jars`); seconds.

    Raises:
        RuntimeError: the application failed (its output tail in the message).
    """
    from core.spark import connector_jars

    exe = str(Path(sys.executable).parent / "spark-submit")
    jars = connector_jars(s, lake=lake)
    cmd = [exe, *(["--jars", ",".join(jars)] if jars else []), "--master", s.spark_master, "--conf", "spark.ui.enabled=false",
           "--conf", f"spark.driver.memory={s.spark_driver_memory}",
           "--conf", f"spark.pyspark.python={sys.executable}", "--conf", f"spark.pyspark.driver.python={sys.executable}",
           str(REPO_ROOT / app), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env={**os.environ, "PYSPARK_PYTHON": sys.executable,
                                 "PYSPARK_DRIVER_PYTHON": sys.executable}, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{app} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return time.perf_counter() - t0


def night(s, day: dt.date, progress=None) -> dict[str, dict[str, Any]]:
    """Run the five stages for ``day``; per stage seconds, rows and detail (sub-step seconds). ``progress(stages)``
    is called after each stage (the partial report is written there)."""
    from core.clickhouse import get_client
    from etl import spark_facts
    from etl import star_schema as etl
    from ml import pipeline

    client, db = get_client(s), s.clickhouse_database
    out: dict[str, dict[str, Any]] = {}

    t0 = time.perf_counter()
    submit = spark_submit("etl/jobs/daily_facts.py", ["--date", day.isoformat()], s, lake=True)
    job = spark_facts.read_json(etl.open_lake(), day, spark_facts.RESULT_NAME) or {}
    t1 = time.perf_counter()
    loaded = etl.load(day, migrate=False)
    t2 = time.perf_counter()
    qc = etl.quality_check(day, dag_run_id="bench-nightly")
    out["etl"] = {"seconds": round(time.perf_counter() - t0, 1), "rows": loaded["fact_sales_rows"],
                  "detail": {"spark_submit_s": round(submit, 1), "spark_job_s": job.get("seconds"),
                             "load_s": round(t2 - t1, 1), "quality_check_s": round(time.perf_counter() - t2, 1),
                             "raw_sales_rows": job.get("raw_sales_rows"), "duplicates": job.get("duplicate_sales"),
                             "fact_inventory_rows": loaded["fact_inventory_rows"], "reconciled_revenue": qc["revenue"]}}
    _tick(progress, out)

    t0 = time.perf_counter()   # the DAG's three tasks: extract_demand -> build_features (Spark) -> load_features
    staged = pipeline.stage_demand(day)
    t1 = time.perf_counter()
    feat_s = spark_submit("ml/jobs/build_features.py", ["--run-date", day.isoformat()], s, lake=True)
    from core.lake import Lake
    from ml import spark_features

    lake = Lake(s)
    job = lake.read_json(*spark_features.staging(lake, day, spark_features.RESULT_NAME)) or {}
    t2 = time.perf_counter()
    feats = pipeline.load_features(day)
    out["features"] = {"seconds": round(time.perf_counter() - t0, 1), "rows": feats["rows"],
                       "detail": {"series": feats["series"], "demand_rows": staged["demand_rows"],
                                  "staged_demand_bytes": staged["staged_bytes"],
                                  "extract_s": round(t1 - t0, 1), "spark_submit_s": round(feat_s, 1),
                                  "spark_job_s": job.get("seconds"), "load_s": round(time.perf_counter() - t2, 1)}}
    _tick(progress, out)

    t0 = time.perf_counter()
    train_s = spark_submit("ml/jobs/train.py", ["--features", feats["lake_path"], "--run-date", day.isoformat(),
                                                "--registry-max-version", str(feats["registry_max_version"])],
                           s, lake=True)   # as the DAG passes load_features' figure
    t1 = time.perf_counter()
    reg = pipeline.register_model(day)
    from core.lake import Lake
    from ml.forecast import list_versions, read_meta

    lake = Lake(s)
    meta = read_meta(lake, max(list_versions(lake)))
    out["training"] = {"seconds": round(time.perf_counter() - t0, 1), "rows": int(sum(meta.get("backtest_train_rows", []))
                                                                                 + meta.get("final_train_rows", 0)),
                       "detail": {"spark_submit_s": round(train_s, 1), "register_s": round(time.perf_counter() - t1, 1),
                                  "backtest_fit_seconds": meta.get("backtest_fit_seconds"),
                                  "final_fit_seconds": meta.get("final_fit_seconds"),
                                  "backtest_seconds": meta.get("backtest_seconds"),
                                  "backtest_baseline_seconds": meta.get("backtest_baseline_seconds"),
                                  "backtest_train_rows": meta.get("backtest_train_rows"),
                                  "final_train_rows": meta.get("final_train_rows"),
                                  "origins": meta.get("backtest_origins"),
                                  "backtest_series": meta.get("backtest_series"),
                                  "model": {k: reg.get(k) for k in ("version", "model", "promoted", "wape")}}}
    _tick(progress, out)

    t0 = time.perf_counter()
    pred_s = spark_submit("ml/jobs/predict.py", ["--features", "latest"], s, lake=True)
    lp = pipeline.load_predictions(day)
    out["predictions"] = {"seconds": round(time.perf_counter() - t0, 1), "rows": lp["rows"],
                          "detail": {"spark_submit_s": round(pred_s, 1), "series": lp["series"],
                                     "model_version": lp["model_version"]}}
    _tick(progress, out)

    t0 = time.perf_counter()
    rec = pipeline.optimise_stock(day)
    out["reorder"] = {"seconds": round(time.perf_counter() - t0, 1), "rows": rec["rows"],
                      "detail": {k: v for k, v in rec.items() if k != "rows"}}
    n = client.query(f"SELECT count() FROM {db}.reorder_recommendations").result_rows[0][0]
    out["reorder"]["detail"]["rows_in_clickhouse"] = int(n)
    return out


def _tick(progress, stages: dict) -> None:
    if progress is not None:
        progress(stages)
        last = list(stages)[-1]
        print(f"  {last}: {stages[last]['seconds']} s, {stages[last]['rows']:,} rows", flush=True)


def run_size(series: int, end_day: dt.date, days: int, progress=None) -> dict[str, Any]:
    """A fresh platform (MinIO + ClickHouse endpoint on free ports), the chain, the night. Stops the platform.

    Returns the size's run: ``series``, ``data``, ``stages`` (seconds and rows per stage), ``night_seconds``,
    ``bounding_stage`` / ``bounding_share``, ``started_at`` (ISO UTC, seconds, when this size began) and
    ``load_average_at_start`` (1 / 5 / 15-minute load then, before the platform comes up; since 2026-12-07: an
    ``--append`` run's own, no longer only the report's top level), ``load_average_before_after`` (the load after
    the platform came up and after the night)."""
    from core.clickhouse import migrate
    from core.lake import Lake
    from ops import local

    start = {"started_at": dt.datetime.now(UTC).isoformat(timespec="seconds"),
             "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp, \
            local.platform_up(Path(tmp), ["minio", "clickhouse"], CLICKHOUSE_DATABASE="bench_nightly") as s:
        try:
            migrate(s)
            Lake(s).ensure_buckets()
            load1 = os.getloadavg()
            data = generate(s, series, end_day, days)
            print(f"  data: {data['rows']} in {data['seconds']} s", flush=True)
            stages = night(s, end_day, (lambda st: progress({"series": data["series"], "data": data, "stages": st,
                                                             **start, "partial": True})) if progress else None)
            load2 = os.getloadavg()
        finally:
            local.down(s)
    total = round(sum(v["seconds"] for v in stages.values()), 1)
    bound = max(stages, key=lambda k: stages[k]["seconds"])
    return {"series": data["series"], "data": data, "stages": stages, "night_seconds": total,
            "bounding_stage": bound, "bounding_share": round(stages[bound]["seconds"] / total, 3), **start,
            "load_average_before_after": [round(x, 2) for x in (*load1, *load2)]}


def merge_report(report: dict[str, Any], previous: dict[str, Any] | None, series: list[int]) -> dict[str, Any]:
    """The report an ``--append`` invocation starts from: ``report`` (this invocation's top level, ``runs`` empty)
    with the ``previous`` report's complete runs of the sizes not in ``series`` (a partial run, cut by a failure,
    is dropped). When runs are kept, the top level's ``date`` and ``load_average_at_start`` stay the previous
    report's (the invocation that measured them first); until 2026-12-07 the appended invocation overwrote them,
    so the report named the 10,000 size's start, 13:44 UTC at load 9.2, as the start of a report whose 1,000 size
    ran from 13:03. Each run holds its own ``started_at`` / ``load_average_at_start`` (:func:`run_size`).

    Args: report: the new report's dict; previous: the JSON of the existing report, or None (no file, or no
    ``--append``); series: the sizes this invocation runs. Returns: a new dict (the inputs are not changed)."""
    if previous is None:
        return {**report, "runs": []}
    kept = [r for r in previous.get("runs", []) if r["series"] not in series and not r.get("partial")]
    if not kept:
        return {**report, "runs": []}
    return {**report, "date": previous.get("date", report["date"]),
            "load_average_at_start": previous.get("load_average_at_start", report["load_average_at_start"]),
            "runs": kept}


def chart(report: dict[str, Any], path: Path) -> None:
    """HTML stacked bars (plotly, self-contained): seconds per stage for each size, with the goal line."""
    import plotly.graph_objects as go

    sizes = [f"{r['series']:,} series" for r in report["runs"]]
    fig = go.Figure([go.Bar(name=st, x=sizes, y=[r["stages"].get(st, {}).get("seconds") for r in report["runs"]])
                     for st in STAGES])
    fig.add_hline(y=report["goal_seconds"], line_dash="dash", annotation_text="goal 600 s (10,000 series)")
    fig.update_layout(barmode="stack", yaxis_title="seconds",
                      title=f"Nightly batch per stage ({report['days']} days of history; {report['cores']} cores, "
                            f"{report['date'][:10]}; training: {report['training_settings']})")
    write_html(fig, Path(path).absolute())   # a relative path is under the working directory, as the JSON report


def nightly_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's goal (:func:`ops.goals.goal`): the night (seconds, the stages' sum) of the largest size in
    ``report["runs"]`` <= ``report["goal_seconds"]``; the goal is set for 10,000 series, and its name states the size
    it was measured at. No goal without a run."""
    if not report["runs"]:
        return []
    big = max(report["runs"], key=lambda r: r["series"])
    return [goal(f"night at {big['series']:,} series <= {report['goal_seconds']:.0f} s (goal set for 10,000 series)",
                 big["night_seconds"], report["goal_seconds"], higher_is_better=False)]


def main(out: Path = typer.Option(Path("reports/bench-nightly.json"), help="JSON report (chart beside it, .html)."),
         series: list[int] = typer.Option([1000, 10000], "--series", help="Store x SKU series per size (repeat)."),
         days: int = typer.Option(365, help="Days of history including the night's day."),
         origins: int = typer.Option(None, help="FORECAST_BACKTEST_ORIGINS for the run (default: the setting)."),
         trees: int = typer.Option(None, help="FORECAST_GBT_MAX_ITER for the run (default: the setting)."),
         end_day: str = typer.Option("", help="The night's day, YYYY-MM-DD (default: yesterday, UTC)."),
         append: bool = typer.Option(False, help="Keep the runs of other sizes already in the report.")) -> None:
    """Generate the chain at each size, run the nightly stages, write the JSON report (with the goal,
    :func:`nightly_goals`, the verdict and the missed goal) and the HTML chart; exit 1 when the goal is missed."""
    from core.settings import get_settings

    if origins:
        os.environ["FORECAST_BACKTEST_ORIGINS"] = str(origins)
    if trees:
        os.environ["FORECAST_GBT_MAX_ITER"] = str(trees)
    get_settings.cache_clear()
    st = get_settings()
    day = dt.date.fromisoformat(end_day) if end_day else dt.datetime.now(UTC).date() - dt.timedelta(days=1)
    report: dict[str, Any] = {
        "benchmark": "bench-nightly", "date": dt.datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "spark_master": st.spark_master, "days": days, "night": day.isoformat(), "goal_seconds": GOAL_SECONDS,
        "training_settings": {"horizon": st.forecast_horizon, "origins": st.forecast_backtest_origins,
                              "backtest_series": st.forecast_backtest_series, "stats_jobs": st.forecast_stats_jobs,
                              "max_train_rows": st.forecast_max_train_rows,
                              "origin_step_days": st.forecast_origin_step_days, "trees": st.forecast_gbt_max_iter,
                              "depth": st.forecast_gbt_max_depth, "train_window_days": st.forecast_train_window_days},
        "runs": []}
    report = merge_report(report, json.loads(out.read_text()) if append and out.exists() else None, series)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in series:
        typer.echo(f"bench-nightly: {n:,} series ...")
        done = list(report["runs"])

        def progress(partial: dict) -> None:   # the partial run of this size, after each stage
            out.write_text(json.dumps({**report, "runs": done + [partial]}, indent=2, default=str))

        r = run_size(n, day, days, progress)
        report["runs"] = done + [r]
        typer.echo(f"  night {r['night_seconds']} s: " + ", ".join(f"{k} {v['seconds']} s ({v['rows']:,} rows)"
                                                                   for k, v in r["stages"].items()))
        out.write_text(json.dumps(report, indent=2, default=str))   # partial report after each size
    report["runs"].sort(key=lambda r: r["series"])
    big = max(report["runs"], key=lambda r: r["series"])
    report["summary"] = {"largest_series": big["series"], "night_seconds": big["night_seconds"],
                         "meets_goal": big["night_seconds"] <= GOAL_SECONDS, "bounding_stage": big["bounding_stage"],
                         "growth": {st_: [r["stages"][st_]["seconds"] for r in report["runs"]] for st_ in STAGES}}
    report["goals"] = nightly_goals(report)
    judge(report)
    out.write_text(json.dumps(report, indent=2, default=str))
    chart(report, out.with_suffix(".html"))
    sm = report["summary"]
    typer.echo(f"{sm['largest_series']:,} series: night {sm['night_seconds']} s (goal {GOAL_SECONDS:.0f} s: "
               f"{'met' if sm['meets_goal'] else 'not met'}), bounded by {sm['bounding_stage']}; verdict {report['verdict']}; "
               f"report {out}")
    exit_on_missed(report)


if __name__ == "__main__":
    typer.run(main)
