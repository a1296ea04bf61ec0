"""The ML pipeline's tasks (``ml.pipeline``) on a small chain in the real ClickHouse and lake: one store, two
SKUs, days without any sale, etl_runs, no inventory rows.

The last day of known demand the tasks use (``history_end`` / ``loaded_through``): a day daily_etl loaded and reconciled without a sale anywhere in the chain (a closed day:
the UCI log has 121 of them in 639 days) is zero demand, a day it has not loaded (or whose latest load failed)
is not. Until 2026-12-06 the history ended on the last day with sales: a run on a closed day left the known zero
days out and forecast days already past.

Also ``register_model``'s champion under operational accidents (since 2026-12-07), on versions saved as the train
job saves them (meta.json, metrics.parquet) in a models bucket of their own: an older date re-run, the model store
lost, a corrupt meta.json, a champion.json left behind by a stopped registration.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

FIRST = dt.date(2024, 3, 1)
LAST_SALE = dt.date(2024, 4, 4)            # then the chain sells nothing on 04-05 .. 04-08
CLOSED = [dt.date(2024, 4, 5), dt.date(2024, 4, 6), dt.date(2024, 4, 7), dt.date(2024, 4, 8)]
RETRYING = dt.date(2024, 4, 7)             # loaded, then a later attempt failed: not loaded


@pytest.fixture(scope="module")
def chain(native_stack):
    """One store, two SKUs sold every day FIRST..LAST_SALE (SKU-12 last on 03-30), etl_runs: a success for every
    day FIRST..04-08, and for 04-07 a later failed attempt."""
    from core.clickhouse import get_client

    client, db = get_client(native_stack), native_stack.clickhouse_database
    client.insert(f"{db}.dim_store", [[1, "ST-1", "ST-1", "City", "United Kingdom", "GB", "EU", 1]],
                  column_names=["store_key", "store_id", "store_name", "city", "country", "country_code", "region",
                                "is_known"])
    client.insert(f"{db}.dim_product", [[k, f"SKU-{k}", f"SKU-{k}", "c", "s", "b", "sup", 1.0, 2.0, 30, 10, 400, 1]
                                        for k in (11, 12)],
                  column_names=["product_key", "sku", "product_name", "category", "sub_category", "brand", "supplier",
                                "unit_cost", "unit_price", "shelf_life_days", "reorder_point", "storage_capacity",
                                "is_known"])
    rows = []
    for i, d in enumerate(pd.date_range(FIRST, LAST_SALE, freq="D").date):
        for k in (11, 12):
            if k == 12 and d > dt.date(2024, 3, 30):
                continue
            t = dt.datetime.combine(d, dt.time(10), dt.timezone.utc)
            rows.append([f"L{i}-{k}", int(d.strftime("%Y%m%d")), t, k, 1, None, "CARD", 2, 1.5, Decimal("3.0"), 0])
    client.insert(f"{db}.fact_sales", rows, column_names=["sale_id", "date_key", "event_time", "product_key",
                                                          "store_key", "customer_id", "payment_method", "quantity",
                                                          "unit_price", "revenue", "is_return"],
                  settings={"max_partitions_per_insert_block": 0})
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    runs = [[d, "success", t0] for d in pd.date_range(FIRST, CLOSED[-1], freq="D").date]
    runs.append([RETRYING, "failed", t0 + dt.timedelta(hours=1)])
    client.insert(f"{db}.etl_runs", [[f"r{i}", "dag", int(d.strftime("%Y%m%d")), t, t, st, "quality_check", 0, 0, 0, 0, 0,
                                      Decimal(0), ""] for i, (d, st, t) in enumerate(runs)],
                  column_names=["run_id", "dag_run_id", "date_key", "started_at", "finished_at", "status", "stage",
                                "raw_sales_rows", "duplicate_sales_rows", "fact_sales_rows", "fact_inventory_rows",
                                "units_net", "revenue", "message"])
    return client, db


@pytest.mark.parametrize("run_date, want", [
    (LAST_SALE, LAST_SALE),                 # the run's own day has sales
    (CLOSED[0], CLOSED[0]),                 # closed and loaded: zero demand (was 04-04)
    (CLOSED[1], CLOSED[1]),                 # two closed days in a row (was 04-04)
    (CLOSED[2], CLOSED[1]),                 # 04-07's latest load failed: not known
    (CLOSED[3], CLOSED[1]),                 # 04-08 is loaded, but 04-07 before it is not: no gap becomes zero
])
def test_staged_history_ends_on_the_last_loaded_day_without_a_gap(native_stack, chain, run_date, want):
    from ml.pipeline import stage_demand

    assert stage_demand(run_date, native_stack)["end_date"] == want.isoformat()


def test_features_and_classes_count_a_loaded_closed_day_as_zero_demand(native_stack, chain):
    from ml.pipeline import build_features, classify_skus

    client, db = chain
    run = CLOSED[1]
    out = build_features(run, native_stack)
    assert out["last_date"] == run.isoformat()
    f = client.query_df(f"SELECT product_id, date, units FROM {db}.features_daily FINAL "
                        f"WHERE run_date = '{run}' AND date > '{LAST_SALE}' AND date <= '{run}' ORDER BY product_id, date")
    assert f["units"].tolist() == [0.0] * 4 and sorted(set(f["product_id"])) == ["SKU-11", "SKU-12"]
    classify_skus(run, native_stack)
    c = client.query_df(f"SELECT product_id, days_since_last_sale FROM {db}.sku_classification "
                        f"WHERE run_date = '{run}' ORDER BY product_id")
    # days from each SKU's last sale to the run's (closed, loaded) day
    assert c["days_since_last_sale"].tolist() == [(run - LAST_SALE).days, (run - dt.date(2024, 3, 30)).days]


def test_history_end_prefers_a_later_loaded_day_but_never_passes_the_run_date():
    from ml.pipeline import history_end

    first, last = dt.date(2024, 1, 1), dt.date(2024, 3, 1)
    assert history_end(first, last, dt.date(2024, 3, 5), "db", 14, dt.date(2024, 3, 4)) == pd.Timestamp("2024-03-04")
    assert history_end(first, last, dt.date(2024, 3, 5), "db", 14, None) == pd.Timestamp(last)
    assert history_end(first, last, dt.date(2024, 3, 2), "db", 14, dt.date(2024, 3, 4)) == pd.Timestamp("2024-03-02")


def test_classes_and_reorders_of_a_chain_without_inventory_rows(native_stack, chain):
    """No fact_inventory row yet (no inventory update loaded): the SKUs are classified from their sales alone.
    Until 2026-12-06 ``load_inventory``'s empty result had no columns and classify_skus failed (KeyError 'stock')."""
    from ml.pipeline import classify_skus, load_inventory

    client, db = chain
    inv = load_inventory(client, db, LAST_SALE)
    assert inv.empty and {"store_id", "product_id", "stock"} <= set(inv.columns)
    out = classify_skus(LAST_SALE, native_stack)
    c = client.query_df(f"SELECT product_id, days_since_last_sale FROM {db}.sku_classification "
                        f"WHERE run_date = '{LAST_SALE}' ORDER BY product_id")
    assert out["rows"] == 2 and c["product_id"].tolist() == ["SKU-11", "SKU-12"]
    assert c["days_since_last_sale"].tolist() == [0, (LAST_SALE - dt.date(2024, 3, 30)).days]


@pytest.fixture
def models(native_stack):
    """A models bucket of its own on the module's database: (settings, lake, client, db)."""
    import uuid

    from core.clickhouse import get_client
    from core.lake import Lake

    s = native_stack.model_copy(update={"lake_models_bucket": f"models-{uuid.uuid4().hex[:8]}"})
    lake = Lake(s)
    lake.ensure_buckets()
    client = get_client(s)
    client.command(f"TRUNCATE TABLE {s.clickhouse_database}.model_registry")
    return s, lake, client, s.clickhouse_database


def trained(models, v: int, day: dt.date, gbt_wape: float, gbt_rmsse: float) -> None:
    """What the train job saves for version ``v`` of run date ``day`` (meta.json, the backtest's metrics.parquet;
    no Spark model: register_model reads neither it nor the intervals)."""
    import pyarrow as pa

    from ml.forecast import MODEL_PREFIX

    s, lake = models[0], models[1]
    w = {"gbt": gbt_wape, "seasonal_naive": 0.50, "trailing_mean_28": 0.42, "statsforecast": 0.43}
    r = {"gbt": gbt_rmsse, "seasonal_naive": 1.0, "trailing_mean_28": 0.80, "statsforecast": 0.79}
    m = pd.DataFrame([{"model": k, "h": h, "wape": w[k], "rmsse": r[k]} for k in w for h in (0, 1)])
    lake.write_table(pa.Table.from_pandas(m, preserve_index=False), s.lake_models_bucket, MODEL_PREFIX,
                     f"v{v}", "metrics.parquet")
    lake.write_json({"run_date": day.isoformat(), "trained_at": f"{day}T10:00:00+00:00", "horizon": 14,
                     "path": f"{s.lake_models_bucket}/{MODEL_PREFIX}/v{v}"},
                    s.lake_models_bucket, MODEL_PREFIX, f"v{v}", "meta.json")


def champion(models) -> tuple:
    """(champion.json's version or None, the registry's champion versions)."""
    from ml.forecast import MODEL_PREFIX

    s, lake, client, db = models
    reg = client.query(f"SELECT version FROM {db}.model_registry FINAL WHERE is_champion = 1").result_rows
    champ = lake.read_json(s.lake_models_bucket, MODEL_PREFIX, "champion.json")
    return (champ or {}).get("version"), sorted(r[0] for r in reg)


def test_a_rerun_of_an_older_training_date_does_not_take_the_champion_back(models):
    """Training for D1 then D2 (the GBT of D2, v2, promoted), then D1 re-run (a manual clear or a backfill): its
    version v1, re-trained, scores better on its own, older backtest. Until 2026-12-07 register_model promoted it over
    v2 (WAPE 0.30 < v2's recorded 0.36): champion.json and the registry went back to the model trained on less
    history, and batch_predictions forecast with it. Now a run older than the champion's run date stays challenger."""
    from ml.pipeline import register_model

    s, lake, client, db = models
    d1, d2 = dt.date(2024, 4, 1), dt.date(2024, 4, 2)
    trained(models, 1, d1, 0.45, 0.90)
    assert register_model(d1, s)["promoted"]                 # the first champion: the best baseline
    trained(models, 2, d2, 0.36, 0.70)
    assert register_model(d2, s)["promoted"] and champion(models) == (2, [2])
    trained(models, 1, d1, 0.30, 0.60)                       # D1 re-run: the train job overwrites v1
    out = register_model(d1, s)
    assert not out["promoted"] and "trained for a later date (2024-04-02)" in out["reason"]
    assert champion(models) == (2, [2])                      # old code: (1, [1])
    assert client.query(f"SELECT count() FROM {db}.model_registry FINAL").result_rows[0][0] == 2
    assert register_model(d2, s)["promoted"] and champion(models) == (2, [2])   # the newer date re-run: still v2


def test_a_lost_model_store_does_not_leave_the_predictions_without_a_champion(models):
    """The model store emptied (MinIO's volume re-created, the bucket deleted) after v2 became champion: the next
    training saves v1 again (the train job numbers versions from the lake) with a backtest (WAPE 0.40) worse than the
    lost champion's recorded 0.36. Until 2026-12-07 nothing was promoted: no champion.json, so every predict job
    failed "no champion model" until a version beat the lost one. Now a champion whose model is gone is replaced."""
    from ml.forecast import MODEL_PREFIX
    from ml.pipeline import register_model

    s, lake, client, db = models
    d1, d2, d3 = dt.date(2024, 4, 1), dt.date(2024, 4, 2), dt.date(2024, 4, 3)
    trained(models, 1, d1, 0.45, 0.90)
    register_model(d1, s)
    trained(models, 2, d2, 0.36, 0.70)
    assert register_model(d2, s)["promoted"] and champion(models) == (2, [2])
    lake.delete_dir(s.lake_models_bucket, MODEL_PREFIX)      # the store lost
    trained(models, 1, d3, 0.40, 0.75)
    out = register_model(d3, s)
    assert out["promoted"] and "v2's model is gone from the lake" in out["reason"]   # old code: not promoted
    assert champion(models) == (1, [1])


def test_a_corrupt_model_meta_neither_stops_the_training_nor_keeps_its_champion(models):
    """v1's meta.json cut short (0 bytes: a folder lake's write killed half-way, an operator's edit) while v1 is
    champion: until 2026-12-07 the next run's register_model (and the train job's version choice,
    ml.pipeline.version_for_run, reading every version's meta.json) failed with JSONDecodeError, every night, naming
    no file. Now the corrupt version is skipped (a warning names it), the run's v2 is registered and, v1 unable to
    serve, promoted."""
    from ml.forecast import MODEL_PREFIX
    from ml.pipeline import register_model, version_for_run

    s, lake, client, db = models
    d1, d2 = dt.date(2024, 4, 1), dt.date(2024, 4, 2)
    trained(models, 1, d1, 0.45, 0.90)
    assert register_model(d1, s)["promoted"] and champion(models) == (1, [1])
    with lake.fs.open_output_stream(lake.path(s.lake_models_bucket, MODEL_PREFIX, "v1", "meta.json")) as f:
        f.write(b"")
    trained(models, 2, d2, 0.50, 1.00)                       # worse than v1's recorded figures
    assert version_for_run(lake, d2.isoformat()) == 2 and version_for_run(lake, d1.isoformat()) is None
    out = register_model(d2, s)
    assert out["promoted"] and "v1's model is gone from the lake" in out["reason"]
    assert champion(models) == (2, [2])


def file_left_at_v1(models, d1: dt.date, d2: dt.date) -> None:
    """v1 (run date d1) registered, then v2 (d2, better) promoted, and champion.json put back to v1: a registration
    of v2 stopped between its registry insert and its file write (champion() == (1, [2]))."""
    from ml.forecast import MODEL_PREFIX
    from ml.pipeline import register_model

    s, lake = models[0], models[1]
    trained(models, 1, d1, 0.45, 0.90)
    register_model(d1, s)
    left = lake.read_json(s.lake_models_bucket, MODEL_PREFIX, "champion.json")
    trained(models, 2, d2, 0.36, 0.70)
    assert register_model(d2, s)["promoted"]
    lake.write_json(left, s.lake_models_bucket, MODEL_PREFIX, "champion.json")   # the write that did not happen
    assert champion(models) == (1, [2])


def test_a_champion_file_left_behind_by_a_stopped_registration_is_rewritten(models):
    """register_model of D2 stopped between its registry insert (v2 champion) and its champion.json write (MinIO
    down through every retry): the file still names v1. Until 2026-12-07 the next night, promoting nothing (D3's
    v3 worse than v2), left it so: the predict job served v1 for good while the registry named v2. Now a run that
    promotes nothing rewrites the file from the registry's champion; so too a file that is not JSON."""
    from ml.forecast import MODEL_PREFIX
    from ml.pipeline import register_model

    s, lake, client, db = models
    d1, d2, d3, d4 = (dt.date(2024, 4, d) for d in (1, 2, 3, 4))
    file_left_at_v1(models, d1, d2)
    trained(models, 3, d3, 0.40, 0.75)
    assert not register_model(d3, s)["promoted"]
    assert champion(models) == (2, [2])                      # old code: (1, [2])
    champ = lake.read_json(s.lake_models_bucket, MODEL_PREFIX, "champion.json")
    assert champ["model"] == "gbt" and champ["backtest_wape"] == pytest.approx(0.36)
    with lake.fs.open_output_stream(lake.path(s.lake_models_bucket, MODEL_PREFIX, "champion.json")) as f:
        f.write(b'{"version": 2, "mo')
    trained(models, 4, d4, 0.40, 0.75)
    assert not register_model(d4, s)["promoted"] and champion(models) == (2, [2])


def test_a_registration_promoting_nothing_does_not_rewind_a_concurrent_promotion(models, monkeypatch):
    """Registration A (D2's v2, worse than the champion v1) read the champion (v1); registration B (D3's v3, better)
    then promoted v3 and wrote champion.json; A, promoting nothing, healed the file from the v1 it had read: the
    predict job served v1 while the registry named v3. Now the heal reads the registry's champion afresh: v3 stays.
    The interleaving is forced: B runs in full between A's champion read and A's decision."""
    from ml import pipeline
    from ml.pipeline import register_model

    s, lake, client, db = models
    d1, d2, d3 = (dt.date(2024, 4, d) for d in (1, 2, 3))
    trained(models, 1, d1, 0.36, 0.70)                       # the GBT of v1 champion
    register_model(d1, s)
    trained(models, 2, d2, 0.60, 1.10)
    trained(models, 3, d3, 0.30, 0.60)
    decide = pipeline.decide_promotion

    def b_between(metrics, version, champion_, **kw):   # A has read the champion (v1): B registers now
        if kw.get("run_date") == d2:
            assert register_model(d3, s)["promoted"]
        return decide(metrics, version, champion_, **kw)

    monkeypatch.setattr(pipeline, "decide_promotion", b_between)
    assert not register_model(d2, s)["promoted"]
    assert champion(models) == (3, [3])                      # old code: (1, [3])


def test_the_heal_does_not_rewind_a_promotion_landing_between_its_registry_read_and_its_write(models, monkeypatch):
    """champion.json left at v1 by a stopped registration of v2 (the registry's champion). Registration A (D3's v3,
    worse) promotes nothing and heals the file: it reads the registry's champion (v2); registration B (D4's v4,
    better) then runs in full, inserting v4 as champion and writing champion.json = v4; A then wrote v2. Until
    2026-12-07 the file stayed at v2 (the predict job served v2 while the registry named v4). Now the heal reads the
    registry again after its write and puts v4 back. The interleaving is forced: B runs inside A's heal, right after
    its registry read."""
    from ml import pipeline
    from ml.pipeline import register_model

    s, lake, client, db = models
    d1, d2, d3, d4 = (dt.date(2024, 4, d) for d in (1, 2, 3, 4))
    file_left_at_v1(models, d1, d2)
    trained(models, 3, d3, 0.40, 0.75)
    trained(models, 4, d4, 0.30, 0.60)
    read = pipeline.current_champion
    state = {"calls": 0, "b": None}

    def b_after_the_heals_read(client_, db_):   # A's 1st read: its decision; its 2nd: the heal's
        champ = read(client_, db_)
        if state["b"] is None:
            state["calls"] += 1
            if state["calls"] == 2:
                assert int(champ["version"]) == 2
                state["b"] = register_model(d4, s)          # B: v4 promoted, champion.json written
                assert champion(models) == (4, [4])
        return champ

    monkeypatch.setattr(pipeline, "current_champion", b_after_the_heals_read)
    assert not register_model(d3, s)["promoted"]
    assert state["b"]["promoted"] and state["b"]["version"] == 4
    assert champion(models) == (4, [4])                      # old code: (2, [4])


def test_a_promotion_does_not_rewind_a_later_promotion_landing_before_its_file_write(models, monkeypatch):
    """Registration A (D2's v2, better than v1) inserted v2 as champion; registration B (D3's v3, better still) then
    ran in full: it read v2 as champion, promoted v3 and wrote champion.json = v3; A then wrote its file, v2. Until
    2026-12-07 the file stayed at v2 while the registry named v3. Now a registration that promoted checks the
    registry after its write (the heal) and puts v3 back. The interleaving is forced: B runs inside A's file
    write, before it."""
    from core.lake import Lake
    from ml.pipeline import register_model

    s, lake, client, db = models
    d1, d2, d3 = (dt.date(2024, 4, d) for d in (1, 2, 3))
    trained(models, 1, d1, 0.45, 0.90)
    register_model(d1, s)
    trained(models, 2, d2, 0.36, 0.70)
    trained(models, 3, d3, 0.30, 0.60)
    write = Lake.write_json
    state = {"b": None}

    def b_before_as_write(self, obj, *parts):
        if parts[-1] == "champion.json" and obj.get("version") == 2 and state["b"] is None:
            state["b"] = register_model(d3, s)            # B: v3 promoted over v2, its file written
            assert champion(models) == (3, [3])
        return write(self, obj, *parts)

    monkeypatch.setattr(Lake, "write_json", b_before_as_write)
    assert register_model(d2, s)["promoted"]
    assert state["b"]["promoted"] and state["b"]["version"] == 3
    assert champion(models) == (3, [3])                      # old code: (2, [3])


def test_a_lost_model_store_does_not_reuse_a_registered_version_number(models):
    """v1 and v2 registered, then the model store lost: the train job numbered the next version from the lake alone,
    v1 again (a registry version reused: the dashboard's backtest, max(model_version), and ml_model_metrics mixed
    the lost model's figures in). Now it numbers above the registry's highest too (the DAG passes load_features'
    registry_max_version as --registry-max-version): v3, registered as a version of its own."""
    from ml.forecast import MODEL_PREFIX, new_version
    from ml.pipeline import register_model, registry_max_version

    s, lake, client, db = models
    d1, d2, d3 = (dt.date(2024, 4, d) for d in (1, 2, 3))
    assert registry_max_version(client, db) == 0 and new_version(lake, 0) == 1
    trained(models, 1, d1, 0.45, 0.90)
    register_model(d1, s)
    trained(models, 2, d2, 0.36, 0.70)
    register_model(d2, s)
    lake.delete_dir(s.lake_models_bucket, MODEL_PREFIX)      # the store lost
    v = new_version(lake, registry_max_version(client, db))
    assert v == 3                                            # old code (the lake's versions alone): 1
    trained(models, v, d3, 0.40, 0.75)
    assert register_model(d3, s)["promoted"] and champion(models) == (3, [3])
    assert sorted(r[0] for r in client.query(f"SELECT version FROM {db}.model_registry FINAL").result_rows) == [1, 2, 3]



def train_job(args: list[str], **env: str) -> "subprocess.CompletedProcess":
    """``spark-submit ml/jobs/train.py args`` run by hand (as an operator would, outside the DAG) in this process's
    environment plus ``env``; a small GBT and backtest (horizon 7, 2 origins, 5 trees)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from core.spark import connector_jars

    repo = Path(__file__).resolve().parent.parent
    full = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, **env}
    jars = connector_jars(lake=True)   # the S3A connector, as the DAG's operator passes it
    return subprocess.run([str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", "--conf",
                           "spark.ui.enabled=false", *(["--jars", ",".join(jars)] if jars else []),
                           str(repo / "ml" / "jobs" / "train.py"), *args,
                           "--horizon", "7", "--n-origins", "2", "--max-iter", "5", "--max-depth", "3",
                           "--train-window-days", "60", "--stats-jobs", "1"],
                          env=full, capture_output=True, text=True, timeout=900)


def test_a_hand_run_of_the_train_job_after_a_lost_store_numbers_above_the_registry(models):
    """v1 and v2 registered, then the model store lost; an operator runs the train job by hand (spark-submit, no
    --registry-max-version: only the DAG passes it). Until 2026-12-07 the option defaulted to 0 and the job saved
    v1 again, a version model_registry already holds. Now the job reads model_registry's highest version itself
    (v3 saved); with ClickHouse unreachable it fails at once (exit 2) naming the option, and saves nothing."""
    import numpy as np
    import pyarrow as pa

    from conftest import settings_env, url_on_port
    from ml import train_records
    from ml.features import build_daily_features
    from ml.forecast import MODEL_PREFIX, list_versions, read_meta
    from ml.pipeline import register_model

    s, lake, client, db = models
    d1, d2, day = dt.date(2024, 4, 1), dt.date(2024, 4, 2), dt.date(2024, 6, 30)
    trained(models, 1, d1, 0.45, 0.90)
    register_model(d1, s)
    trained(models, 2, d2, 0.36, 0.70)
    register_model(d2, s)
    lake.delete_dir(s.lake_models_bucket, MODEL_PREFIX)      # the store lost
    rng = np.random.default_rng(3)
    dates = pd.date_range(day - dt.timedelta(days=89), day, freq="D")
    demand = pd.concat([pd.DataFrame({"date": dates, "store_id": "S1", "product_id": sku, "price": 2.0,
                                      "units": rng.poisson(rate, len(dates)).astype(float)})
                        for sku, rate in (("A", 6.0), ("B", 1.5))], ignore_index=True)
    key = f"hand-{s.lake_models_bucket}"
    lake.write_table(pa.Table.from_pandas(build_daily_features(demand, default_country=None, extend_days=7),
                                          preserve_index=False), s.lake_features_bucket, key, "features.parquet")
    features = f"{s.lake_features_bucket}/{key}/features.parquet"
    with settings_env(LAKE_MODELS_BUCKET=s.lake_models_bucket):
        r = train_job(["--features", features, "--run-date", day.isoformat()])
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        assert list_versions(lake) == [3]                    # old code: [1]
        assert "model_registry's highest version: 2" in r.stdout
        assert read_meta(lake, 3)["run_date"] == day.isoformat()
        assert lake.read_json(*train_records.staging(lake, day, train_records.RESULT_NAME))["version"] == 3
        # the registry out of reach: no silent 0, the option named, nothing saved, before Spark starts
        r = train_job(["--features", features, "--run-date", "2024-07-01"],   # the same credentials, a dead port
                      CLICKHOUSE_URL=url_on_port(s.clickhouse_url, 9))
    assert r.returncode == 2, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    out = r.stdout + r.stderr
    assert "--registry-max-version not given and model_registry could not be read" in out, out[-3000:]
    assert list_versions(lake) == [3]
