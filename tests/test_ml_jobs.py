"""The ML spark-submit jobs (ml/jobs/train.py, ml/jobs/predict.py) on a lake in a local folder (no MinIO, no
ClickHouse: the train job is given ``--registry-max-version 0``, so neither job opens it): the credibility shrinkage ``shrink_k`` a model is trained with is stored in
its meta.json and the predict job forecasts with it, not with the module default.

Data: 6 store x SKU series of 100 days of seeded Poisson demand with a weekend uplift (one slow mover, so the
shrinkage toward the trailing mean matters), features from ``ml.features.build_daily_features``. The train job
runs with ``--shrink-k 3``; its predictions are compared with an in-process :func:`ml.forecast.forecast` of the
same saved model with k = 3 (equal) and with the default k (different: the test can tell them apart).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import local_lake_env

REPO = Path(__file__).resolve().parent.parent
DAY = dt.date(2024, 6, 30)
H = 7
SHRINK = 3.0


@pytest.fixture(scope="module")
def local_lake(tmp_path_factory):
    """Settings with LAKE_URL = a local folder (buckets created) and a small GBT; restores the environment."""
    with local_lake_env(tmp_path_factory.mktemp("lake"), FORECAST_HORIZON=str(H), FORECAST_GBT_MAX_ITER="5",
                        FORECAST_GBT_MAX_DEPTH="3", FORECAST_BACKTEST_ORIGINS="2",
                        FORECAST_TRAIN_WINDOW_DAYS="60") as lake:
        yield lake


def demand() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    dates = pd.date_range(DAY - dt.timedelta(days=99), DAY, freq="D")
    rows = []
    for st in ("S1", "S2"):
        for sku, rate, price in (("A", 12.0, 3.0), ("B", 2.0, 9.5), ("C", 0.3, 40.0)):
            lam = rate * np.where(dates.dayofweek >= 5, 1.7, 1.0)
            rows.append(pd.DataFrame({"date": dates, "store_id": st, "product_id": sku,
                                      "units": rng.poisson(lam).astype(float), "price": price}))
    return pd.concat(rows, ignore_index=True)


def submit(app: str, args: list[str]) -> subprocess.CompletedProcess:
    """spark-submit ``app`` with ``args``; the train job gets ``--registry-max-version 0`` (no ClickHouse here: without
    the option it reads model_registry itself, or exits 2 naming the option)."""
    if app.endswith("train.py") and "--registry-max-version" not in args:
        args = [*args, "--registry-max-version", "0"]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    exe = str(Path(sys.executable).parent / "spark-submit")
    return subprocess.run([exe, "--master", "local[2]", "--conf", "spark.ui.enabled=false", str(REPO / app), *args],
                          env=env, capture_output=True, text=True, timeout=900)


def test_model_shrink_k_from_meta_and_logged_fallback():
    from ml.forecast import SHRINK_K, model_shrink_k

    seen = []
    assert model_shrink_k({"shrink_k": 1.25, "config": {"shrink_k": 9.0}}, log=seen.append) == 1.25
    assert model_shrink_k({"config": {"shrink_k": 0.0}}, log=seen.append) == 0.0   # 0 = no shrinkage, not "absent"
    assert seen == []
    assert model_shrink_k({"version": 4, "config": {"horizon": 7}}, log=seen.append) == SHRINK_K
    assert len(seen) == 1 and "v4" in seen[0] and "no shrink_k" in seen[0] and str(SHRINK_K) in seen[0]
    with pytest.raises(ValueError, match="shrink_k"):
        model_shrink_k({"shrink_k": -1})
    with pytest.raises(ValueError, match="shrink_k"):
        model_shrink_k({"shrink_k": float("nan")})


def test_model_ets_model_from_meta_else_the_legacy_space():
    from ml.forecast import ETS_MODEL, LEGACY_ETS_MODEL, model_ets_model

    assert LEGACY_ETS_MODEL != ETS_MODEL
    assert model_ets_model({"config": {"ets_model": "ANA"}}) == "ANA"
    assert model_ets_model({"config": {"horizon": 14}}) == LEGACY_ETS_MODEL   # saved before it was recorded
    assert model_ets_model({}) == LEGACY_ETS_MODEL
    with pytest.raises(ValueError, match="ets_model"):
        model_ets_model({"config": {"ets_model": "ZZ"}})


@pytest.mark.integration
def test_train_stores_shrink_k_and_predict_uses_it(local_lake, spark):
    import pyarrow as pa

    from ml.features import build_daily_features
    from ml.forecast import MODEL_PREFIX, SHRINK_K, forecast, load_model_version, read_meta
    from ml.pipeline import read_features

    assert SHRINK_K != SHRINK
    feats = build_daily_features(demand(), default_country=None, extend_days=H)
    key = f"run_date={DAY.isoformat()}"
    local_lake.write_table(pa.Table.from_pandas(feats, preserve_index=False), "features", "daily", key, "features.parquet")
    local_lake.write_json({"run_date": DAY.isoformat(), "path": f"features/daily/{key}"}, "features", "daily",
                          "latest.json")

    r = submit("ml/jobs/train.py", ["--features", f"features/daily/{key}", "--run-date", DAY.isoformat(),
                                    "--shrink-k", str(SHRINK)])
    assert r.returncode == 0, r.stderr[-3000:]
    meta = read_meta(local_lake, 1)
    assert meta["shrink_k"] == SHRINK and meta["config"]["shrink_k"] == SHRINK and meta["horizon"] == H
    # serve the GBT (whatever this tiny backtest selected): the shrinkage only applies to it
    local_lake.write_json({"version": 1, "model": "gbt"}, "models", MODEL_PREFIX, "champion.json")

    r = submit("ml/jobs/predict.py", ["--features", "latest"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"shrink_k {SHRINK}" in r.stdout and "no shrink_k" not in r.stderr
    got = local_lake.read_table("models", MODEL_PREFIX, "predictions", "latest.parquet").to_pandas()
    got = got.sort_values(["store_id", "product_id", "horizon"]).reset_index(drop=True)
    assert len(got) == 6 * H and (got["model_version"] == 1).all()

    model, meta2, q = load_model_version(local_lake, 1)
    f = read_features(local_lake, "latest")
    args = (spark, model, f, q, meta2["bucket_edges"], meta2["feature_columns"])
    kw = {"horizon": H, "model_name": "gbt", "target": meta2["target"]}
    want = forecast(*args, **kw, shrink_k=SHRINK)
    default = forecast(*args, **kw, shrink_k=SHRINK_K)
    np.testing.assert_allclose(got["yhat"].to_numpy(), want["yhat"].to_numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["upper95"].to_numpy(), want["upper95"].to_numpy(), rtol=1e-9, atol=1e-12)
    # the default k gives other forecasts (mostly on the slow mover C, whose GBT weight m / (m + k) moves most)
    diff = np.abs(got["yhat"].to_numpy() - default["yhat"].to_numpy())
    assert diff.max() > 1e-3, diff.max()


def test_train_too_little_history_is_bad_data_and_a_rerun_clears_it(local_lake):
    """A feature table with too little history for any backtest origin: the job exits 3 (bad data: the DAG's
    operator fails the task without retries) after staging train_error.json with the reason, and writes no model
    version; a re-run of the same date on a longer table removes the error record and stages its result."""
    import pyarrow as pa

    from core.jobs import EXIT_BAD_DATA
    from ml import train_records
    from ml.features import build_daily_features
    from ml.forecast import list_versions

    day = DAY + dt.timedelta(days=1)   # a run date of its own (the other test's model is v1)
    before = list_versions(local_lake)
    short = demand()
    short = short[(short["date"] > pd.Timestamp(DAY - dt.timedelta(days=20))) & (short["product_id"] == "A")
                  & (short["store_id"] == "S1")]
    key = f"run_date={day.isoformat()}"
    local_lake.write_table(pa.Table.from_pandas(build_daily_features(short, default_country=None, extend_days=H),
                                                preserve_index=False), "features", "daily", key, "features.parquet")
    r = submit("ml/jobs/train.py", ["--features", f"features/daily/{key}", "--run-date", day.isoformat()])
    assert r.returncode == EXIT_BAD_DATA, (r.returncode, r.stderr[-3000:])
    # spark-submit passes the Python driver's stderr on through its own stdout
    assert f"train {day.isoformat()}: bad data: no backtest origin has" in r.stdout, r.stdout[-3000:]
    err = local_lake.read_json(*train_records.staging(local_lake, day, train_records.ERROR_NAME))
    assert err["error"] == "InsufficientHistory" and err["run_date"] == day.isoformat()
    assert "too short" in err["message"] and list_versions(local_lake) == before

    # a malformed run date is refused by the parser, naming the option
    r = submit("ml/jobs/train.py", ["--features", f"features/daily/{key}", "--run-date", "yesterday"])
    assert r.returncode == 2 and "--run-date" in r.stdout and "not an ISO date" in r.stdout, r.stdout[-3000:]

    local_lake.write_table(pa.Table.from_pandas(build_daily_features(demand(), default_country=None, extend_days=H),
                                                preserve_index=False), "features", "daily", key, "features.parquet")
    r = submit("ml/jobs/train.py", ["--features", f"features/daily/{key}", "--run-date", day.isoformat()])
    assert r.returncode == 0, r.stderr[-3000:]
    assert not local_lake.exists(*train_records.staging(local_lake, day, train_records.ERROR_NAME))
    res = local_lake.read_json(*train_records.staging(local_lake, day, train_records.RESULT_NAME))
    assert res["version"] == max(before, default=0) + 1 and res["series"] == 6
    assert list_versions(local_lake) == sorted([*before, res["version"]])


def test_a_corrupt_champion_file_fails_the_predict_job_naming_it(local_lake):
    """The model store's champion.json cut short (a folder lake's write killed half-way, an operator's edit): the
    predict job forecast nothing and failed with "Expecting value: line 1 column 1 (char 0)", naming no file
    (JSONDecodeError of json.loads). Now the error names the lake file and its size; no prediction is written."""
    import json

    import pyarrow.fs as pafs

    from ml.forecast import MODEL_PREFIX
    from ml.jobs.predict import main

    bucket = local_lake.settings.lake_models_bucket
    path = local_lake.path(bucket, MODEL_PREFIX, "champion.json")
    had = local_lake.read_json(bucket, MODEL_PREFIX, "champion.json")
    predictions = local_lake.path(bucket, MODEL_PREFIX, "predictions")

    def written() -> dict:   # the predictions' files (an earlier test of the module may have written some)
        sel = pafs.FileSelector(predictions, allow_not_found=True, recursive=True)
        return {i.path: i.mtime for i in local_lake.fs.get_file_info(sel)}

    before = written()
    local_lake.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    try:
        for raw in (b"", b'{"version": 3, "mod'):
            with local_lake.fs.open_output_stream(path) as f:
                f.write(raw)
            with pytest.raises(json.JSONDecodeError,
                               match=rf"lake file {bucket}/{MODEL_PREFIX}/champion\.json \({len(raw)} bytes\) is not JSON"):
                main(["--features", "latest"])
        assert written() == before
    finally:
        if had is None:
            local_lake.delete_file(bucket, MODEL_PREFIX, "champion.json")
        else:
            local_lake.write_json(had, bucket, MODEL_PREFIX, "champion.json")
