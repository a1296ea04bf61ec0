"""`make bench-nightly`'s code at a tiny size: its own platform (MinIO + ClickHouse endpoint on free ports), the
synthetic chain, then the night's real spark-submit jobs (ETL through S3A, features, training with backtest,
predictions reading the model through S3A) and the reorder step. Checks the report's shape and that each stage's
rows agree with the chain it generated; no timing is asserted (the benchmark measures, the test runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.bench_nightly import STAGES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SERIES = 40


def test_bench_nightly_small_chain(tmp_path):
    out = tmp_path / "bench-nightly.json"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    r = subprocess.run([sys.executable, "-m", "ops.bench_nightly", "--series", str(SERIES), "--days", "150",
                        "--origins", "2", "--trees", "5", "--end-day", "2026-06-30", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    report = json.loads(out.read_text())
    assert out.with_suffix(".html").is_file()
    assert report["night"] == "2026-06-30" and report["training_settings"]["origins"] == 2
    (run,) = report["runs"]
    assert run["series"] == SERIES and not run.get("partial")
    st = run["stages"]
    assert list(st) == list(STAGES)
    assert all(st[k]["seconds"] > 0 for k in STAGES)
    raw_sales = run["data"]["rows"]["raw sales_transaction"]
    etl = st["etl"]["detail"]
    # every raw event falls on the night's day: fact lines = raw lines - replayed copies (reconciled with the lake)
    assert etl["raw_sales_rows"] == raw_sales and 0 < etl["duplicates"] < raw_sales
    assert st["etl"]["rows"] == raw_sales - etl["duplicates"]
    assert etl["fact_inventory_rows"] == SERIES
    assert st["features"]["detail"]["series"] == SERIES
    assert st["training"]["detail"]["backtest_series"] == SERIES
    assert st["predictions"]["rows"] == SERIES * report["training_settings"]["horizon"]
    assert st["reorder"]["rows"] == st["reorder"]["detail"]["rows_in_clickhouse"] == SERIES
    assert report["summary"]["largest_series"] == SERIES
    assert report["summary"]["bounding_stage"] in STAGES
