"""ML DAGs: rule tests (DagBag) and a real run of demand_forecast_training + batch_predictions.

The real run uses the native stack (MinIO lake + chDB): a star schema (dim_store, dim_product,
fact_sales, fact_inventory) is seeded with 120 days of synthetic weekly-seasonal demand for 3 stores x
4 SKUs, then both DAGs run in-process with ``dag.test()`` (chDB is open in this process; the
SparkSubmitOperator's spark-submit subprocess only touches the lake). Results are checked against
independent computations (pandas / scipy).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parent.parent
ML_DAGS = ("demand_forecast_training", "batch_predictions")


# -------------------------------------------------------------------------------- rule tests ----
@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    # the platform's Airflow environment (dags folder, no examples) unless Airflow is already configured in
    # this process: dag.test() later syncs the configured dags folder, so it must be ours
    if "airflow" not in sys.modules:
        from ops.airflow import airflow_env

        env = airflow_env(home=tmp_path_factory.mktemp("af-rules"))
        env.pop("PATH"), env.pop("PYTHONPATH")
        os.environ.update(env)
    from airflow.dag_processing.dagbag import DagBag

    bags = {d: DagBag(dag_folder=str(REPO / "dags" / f"{d}.py")) for d in ML_DAGS}
    return bags


@pytest.mark.parametrize("dag_id", ML_DAGS)
def test_dag_rules(dagbag, dag_id):
    bag = dagbag[dag_id]
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[dag_id]
    assert dag.owner == "retail-data-platform"
    assert {"ml", "forecast", "nightly"} <= set(dag.tags)
    assert dag.catchup is False and dag.max_active_runs == 1
    for t in dag.tasks:
        assert t.retries >= 2, f"{dag_id}.{t.task_id} retries {t.retries}"
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    # the Spark jobs: features + training, predictions; each on spark_default, none in the ClickHouse pool
    spark = {t.task_id: t for t in dag.tasks if isinstance(t, SparkSubmitOperator)}
    assert set(spark) == {"demand_forecast_training": {"build_features", "train_gbt"},
                          "batch_predictions": {"predict"}}[dag_id]
    for t in spark.values():
        assert t._conn_id == "spark_default" and Path(t.application).is_file() and t.pool != "clickhouse"
    # the jobs whose Spark reads or writes the lake (staged demand and feature table, model) get the S3A
    # connector's jars at execution
    from etl.operators import LakeSparkSubmitOperator

    lake_jobs = {k for k, t in spark.items() if isinstance(t, LakeSparkSubmitOperator) and t.reads_lake}
    assert lake_jobs == {"demand_forecast_training": {"build_features", "train_gbt"},
                         "batch_predictions": {"predict"}}[dag_id]


def test_dag_order_and_schedules(dagbag):
    tr = dagbag["demand_forecast_training"].dags["demand_forecast_training"]
    assert tr.get_task("extract_demand").downstream_task_ids == {"build_features"}
    assert tr.get_task("build_features").downstream_task_ids == {"load_features"}
    assert tr.get_task("load_features").downstream_task_ids == {"train_gbt"}
    assert tr.get_task("build_features").application.endswith("ml/jobs/build_features.py")
    assert tr.get_task("train_gbt").downstream_task_ids == {"register_model"}
    assert [a.name for a in tr.get_task("register_model").outlets] == ["demand_forecast_champion"]
    bp = dagbag["batch_predictions"].dags["batch_predictions"]
    assert bp.get_task("predict").downstream_task_ids == {"load_predictions"}
    assert bp.get_task("load_predictions").downstream_task_ids == {"optimise_stock"}
    assert bp.get_task("optimise_stock").downstream_task_ids == {"classify_skus"}
    assert "Asset" in type(bp.timetable).__name__  # after training, unless PREDICTIONS_SCHEDULE is set


def test_no_io_at_import(tmp_path):
    """Importing the DAG files opens neither chDB nor the lake: their paths stay absent."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(REPO)!r})
        for name in {list(ML_DAGS)!r}:
            spec = importlib.util.spec_from_file_location(name, {str(REPO / 'dags')!r} + '/' + name + '.py')
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print('imported')
    """)
    env = {**os.environ, "CLICKHOUSE_URL": f"chdb://{tmp_path}/chdb", "LAKE_URL": str(tmp_path / "lake"),
           "AIRFLOW_HOME": str(tmp_path / "af"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-2000:]
    assert not (tmp_path / "chdb").exists() and not (tmp_path / "lake").exists()


# ---------------------------------------------------------------------------------- real run ----
DAY = dt.date(2024, 6, 30)
STORES = {"ST-1": 11, "ST-2": 12, "ST-3": 13}
SKUS = {"SKU-A": (20.0, 8.0, 4.0), "SKU-B": (5.0, 3.0, 1.0), "SKU-C": (1.0, 10.0, 6.0), "SKU-D": (0.2, 30.0, 15.0)}
N_DAYS = 120
H = 14  # FORECAST_HORIZON's default


def synthetic_demand() -> pd.DataFrame:
    """Poisson demand with a weekend uplift: (date, store_id, product_id, units, price)."""
    rng = np.random.default_rng(7)
    dates = pd.date_range(DAY - dt.timedelta(days=N_DAYS - 1), DAY, freq="D")
    rows = []
    for st in STORES:
        for sku, (rate, price, _) in SKUS.items():
            lam = rate * np.where(dates.dayofweek >= 5, 1.8, 1.0)
            rows.append(pd.DataFrame({"date": dates, "store_id": st, "product_id": sku,
                                      "units": rng.poisson(lam), "price": price}))
    return pd.concat(rows, ignore_index=True)


def seed_star_schema(client, db: str, demand: pd.DataFrame) -> None:
    client.insert(f"{db}.dim_store", [[k, sid, sid, "City", "United Kingdom", "GB", "EU", 1] for sid, k in STORES.items()],
                  column_names=["store_key", "store_id", "store_name", "city", "country", "country_code", "region", "is_known"])
    pkeys = {sku: 100 + i for i, sku in enumerate(SKUS)}
    client.insert(f"{db}.dim_product", [[pkeys[s], s, s, "food", "fresh", "b", "sup", c, p, 30, 10, 400, 1]
                                         for s, (_, p, c) in SKUS.items()],
                  column_names=["product_key", "sku", "product_name", "category", "sub_category", "brand", "supplier",
                                "unit_cost", "unit_price", "shelf_life_days", "reorder_point", "storage_capacity",
                                "is_known"])
    sales = demand[demand["units"] > 0]
    rows = []
    for r in sales.itertuples(index=False):
        price = SKUS[r.product_id][1]
        rev = Decimal(int(r.units)) * Decimal(repr(price))
        rows.append([f"{r.store_id}-{r.product_id}-{r.date.date()}", int(r.date.strftime("%Y%m%d")),
                     r.date.to_pydatetime().replace(hour=12, tzinfo=dt.timezone.utc), pkeys[r.product_id],
                     STORES[r.store_id], "CASH", int(r.units), price, rev, 0])
    # one return line (must not count as demand)
    rows.append(["ret-1", int(DAY.strftime("%Y%m%d")), dt.datetime(2024, 6, 30, 13, tzinfo=dt.timezone.utc),
                 pkeys["SKU-A"], STORES["ST-1"], "CASH", -3, 8.0, Decimal("-24"), 1])
    client.insert(f"{db}.fact_sales", rows, column_names=["sale_id", "date_key", "event_time", "product_key",
                                                          "store_key", "payment_method", "quantity", "unit_price",
                                                          "revenue", "is_return"],
                  settings={"max_partitions_per_insert_block": 0})  # one partition per date_key
    inv = [[int(DAY.strftime("%Y%m%d")), k, pkeys[s], stock, 0, 0, 0]
           for (st, k) in STORES.items() for s, stock in zip(SKUS, (30, 200, 2, 5))]
    client.insert(f"{db}.fact_inventory", inv, column_names=["date_key", "store_key", "product_key", "closing_stock",
                                                             "is_carried_forward", "units_sold", "units_returned"])
    # the DAGs wait for daily_etl's reconciled load of their date (etl.operators.EtlLoadedSensor): record it
    from etl.star_schema import record_run

    record_run(client, db, DAY, "success", "quality_check", dt.datetime.now(dt.timezone.utc), dag_run_id="seeded")


@pytest.fixture(scope="module")
def ml_dags(native_stack, tmp_path_factory):
    from ops.airflow import DAGS_FOLDER, configure_in_process

    configure_in_process(tmp_path_factory.mktemp("airflow-home-ml"), native_stack)
    os.environ.update({"FORECAST_GBT_MAX_ITER": "8", "FORECAST_GBT_MAX_DEPTH": "4",
                       "FORECAST_BACKTEST_ORIGINS": "2", "FORECAST_TRAIN_WINDOW_DAYS": "90"})
    from airflow.dag_processing.dagbag import DagBag

    out = {}
    for d in ML_DAGS:
        bag = DagBag(dag_folder=str(DAGS_FOLDER / f"{d}.py"))
        assert not bag.import_errors, bag.import_errors
        out[d] = bag.dags[d]
    yield out
    for k in ("FORECAST_GBT_MAX_ITER", "FORECAST_GBT_MAX_DEPTH", "FORECAST_BACKTEST_ORIGINS",
              "FORECAST_TRAIN_WINDOW_DAYS"):
        os.environ.pop(k, None)


def _run(dag, day):
    from airflow.utils.state import DagRunState

    dr = dag.test(logical_date=dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc))
    assert dr.state == DagRunState.SUCCESS, f"{dag.dag_id} ended {dr.state}"


@pytest.mark.integration
@pytest.mark.airflow
def test_training_and_predictions_dags_end_to_end(ml_dags, native_stack):
    from scipy.stats import norm

    from core.clickhouse import get_client

    from ml.pipeline import InsufficientData, build_features

    client, db = get_client(native_stack), native_stack.clickhouse_database
    with pytest.raises(InsufficientData, match="no sales"):  # empty star schema: clear error, nothing written
        build_features(DAY, native_stack)
    from ops.demo import short_history  # the demo's skip rule is the training's own check

    assert "no sales" in short_history(native_stack, DAY)
    demand = synthetic_demand()
    seed_star_schema(client, db, demand)
    assert short_history(native_stack, DAY) is None
    first = pd.Timestamp(demand["date"].min()).date()
    assert short_history(native_stack, first + dt.timedelta(days=5)).startswith(f"{db}.fact_sales covers 6 day(s)")
    n_series = len(STORES) * len(SKUS)

    _run(ml_dags["demand_forecast_training"], DAY)
    q = lambda sql: client.query_df(sql.replace("{db}", db))  # noqa: E731
    feats = q("SELECT * FROM {db}.features_daily FINAL")
    # each series runs from its first sale to DAY, + FORECAST_HORIZON (14) future days
    first = demand[demand["units"] > 0].groupby(["store_id", "product_id"])["date"].min()
    n_feature_rows = int(sum((pd.Timestamp(DAY) - f).days + 1 + H for f in first))
    assert len(feats) == n_feature_rows
    known = feats[feats["units"].notna()]
    assert known["units"].sum() == demand["units"].sum()  # the return line is not demand
    # features_daily came from the Spark job (build_features); the pandas feature code on the same demand
    # is the reference, column by column
    from ml.features import build_daily_features
    from ml.pipeline import FEATURE_TABLE_COLUMNS, load_daily_demand

    ref = build_daily_features(load_daily_demand(client, db, DAY), end_date=pd.Timestamp(DAY), extend_days=H,
                               default_country=native_stack.store_country_default)

    def same_as_ref(feats: pd.DataFrame) -> None:
        got = feats.sort_values(["store_id", "product_id", "date"]).reset_index(drop=True)
        assert len(ref) == len(got)
        assert pd.to_datetime(got["date"]).tolist() == ref["date"].tolist()
        for c in FEATURE_TABLE_COLUMNS[1:-2]:
            g, w = got[c].to_numpy(), ref[c].to_numpy()
            if c in ("store_id", "product_id"):
                assert g.tolist() == w.tolist(), c
            else:  # NaN (future units, short-history lags) must stay NaN: equal_nan
                np.testing.assert_allclose(g.astype("float64"), w.astype("float64"), rtol=1e-9, atol=1e-9, err_msg=c)

    same_as_ref(feats)
    # the demand extract_demand staged is ClickHouse's own Parquet encoding; it holds the rows query_df decodes
    from core.lake import Lake
    from ml import spark_features as sf

    lake = Lake(native_stack)
    staged = lake.read_table(*sf.staging(lake, DAY, sf.DEMAND_NAME))
    staged = staged.drop_columns([c for c in staged.column_names if c == "run_date"])   # the path's hive key
    assert staged.schema.field("date").type == pa.date32()
    staged = staged.to_pandas().assign(date=lambda d: pd.to_datetime(d["date"]))
    pd.testing.assert_frame_equal(staged.reset_index(drop=True), load_daily_demand(client, db, DAY),
                                  check_dtype=False)
    sold = demand[demand["units"] > 0]
    assert len(staged) == len(sold) and staged["units"].sum() == sold["units"].sum()
    # load_features reconciles the table with the job's record before inserting anything
    from ml.pipeline import load_features

    rec_parts = sf.staging(lake, DAY, sf.RESULT_NAME)
    record = lake.read_json(*rec_parts)
    lake.write_json({**record, "rows": record["rows"] + 1}, *rec_parts)
    with pytest.raises(RuntimeError, match=f"holds {record['rows']} rows, the build_features job wrote"):
        load_features(DAY, native_stack)
    lake.write_json(record, *rec_parts)
    assert load_features(DAY, native_stack)["rows"] == n_feature_rows   # a re-load replaces: count below
    reg = q("SELECT * FROM {db}.model_registry FINAL")
    assert reg[["version", "is_champion"]].values.tolist() == [[1, 1]]
    # train_gbt (TrainSubmitOperator) ran the job for the run's date with load_features' table
    from ml import train_records
    from ml.forecast import MODELS

    trained = lake.read_json(*train_records.staging(lake, DAY, train_records.RESULT_NAME))
    assert trained["version"] == 1 and trained["run_date"] == DAY.isoformat()
    assert trained["features_path"] == record["lake_path"] and trained["best_of_backtest"] in MODELS
    assert not lake.exists(*train_records.staging(lake, DAY, train_records.ERROR_NAME))
    m = q("SELECT model, metric, horizon, value FROM {db}.ml_model_metrics FINAL WHERE model_name = 'demand-forecast'")
    wape = m[m["metric"] == "wape"]
    assert set(wape["model"]) == {"gbt", "seasonal_naive", "trailing_mean_28", "statsforecast"}
    assert sorted(wape["horizon"].unique()) == list(range(H + 1))
    # champion / challenger: the first champion is the best baseline unless the GBT beats it in WAPE and RMSSE
    pooled = m[m["horizon"] == 0].pivot(index="model", columns="metric", values="value")
    best = pooled.drop(index="gbt")["wape"].idxmin()
    gbt_wins = (pooled.loc["gbt", "wape"] < pooled.loc[best, "wape"]) and (pooled.loc["gbt", "rmsse"] < pooled.loc[best, "rmsse"])
    champion = "gbt" if gbt_wins else best
    assert reg["model"].iloc[0] == champion
    assert reg["backtest_wape"].iloc[0] == pytest.approx(pooled.loc[champion, "wape"])
    assert reg["backtest_rmsse"].iloc[0] == pytest.approx(pooled.loc[champion, "rmsse"])

    # re-running the date's ClickHouse-writing tasks keeps one version and does not duplicate rows
    # (the train job re-uses the version of its run date: ml.pipeline.version_for_run)
    from ml.pipeline import register_model

    n_metrics = len(m)
    build_features(DAY, native_stack)
    again = register_model(DAY, native_stack)
    assert again["version"] == 1 and again["promoted"] and again["model"] == champion
    assert q("SELECT count() AS n FROM {db}.model_registry FINAL")["n"].iloc[0] == 1
    assert len(q("SELECT * FROM {db}.ml_model_metrics FINAL WHERE model_name = 'demand-forecast'")) == n_metrics
    feats = q("SELECT * FROM {db}.features_daily FINAL")
    assert len(feats) == n_feature_rows
    same_as_ref(feats)  # now the in-process (pandas) table's insert

    _run(ml_dags["batch_predictions"], DAY)
    p = q("SELECT * FROM {db}.forecast_predictions FINAL")
    assert len(p) == n_series * H
    assert p.groupby(["store_id", "product_id"])["horizon"].apply(sorted).map(lambda h: h == list(range(1, H + 1))).all()
    assert (p["forecast_origin"].astype(str) == str(DAY)).all()
    assert ((p["lower95"] <= p["lower80"]) & (p["lower80"] <= p["yhat"]) & (p["yhat"] <= p["upper80"])
            & (p["upper80"] <= p["upper95"])).all()

    r = q("SELECT * FROM {db}.reorder_recommendations FINAL").set_index(["store_id", "product_id"])
    assert len(r) == n_series
    # independent recomputation of safety stock and reorder point from the stored forecasts and the lead-time
    # error quantiles the lake's forecasts carry (the champion's backtest: quantiles of the total over days 1..L
    # at the stored service levels, read off at SERVICE_LEVEL by linear interpolation)
    from core.lake import Lake
    from ml.forecast import LEAD_LEVELS, LEAD_QUANTILE_COLUMNS
    from ml.pipeline import read_predictions

    lead = read_predictions(Lake(native_stack)).set_index(["store_id", "product_id", "horizon"])
    a = native_stack.service_level
    z = norm.ppf(a)
    L = native_stack.lead_time_days
    assert 1 <= L <= H and lead[LEAD_QUANTILE_COLUMNS].notna().all().all() and LEAD_LEVELS[0] <= a <= LEAD_LEVELS[-1]
    for (st, sku), g in p.groupby(["store_id", "product_id"]):
        d = g["yhat"].mean()
        ss = max(0.0, float(np.interp(a, LEAD_LEVELS, lead.loc[(st, sku, L), LEAD_QUANTILE_COLUMNS].to_numpy(float))))
        row = r.loc[(st, sku)]
        assert row["safety_stock"] == pytest.approx(ss, rel=1e-6, abs=1e-9)
        assert row["sigma_daily"] == pytest.approx(ss / (z * np.sqrt(L)), rel=1e-6, abs=1e-9)
        assert row["reorder_point"] == pytest.approx(d * L + ss, rel=1e-6, abs=1e-9)
        high = row["stock"] <= 0 or (d > 0 and row["stock"] <= d * L)
        expected = "HIGH" if high else ("MEDIUM" if row["stock"] <= row["reorder_point"] else "LOW")
        assert row["stockout_risk"] == expected
        assert row["reorder_qty"] <= max(0.0, 400 - row["stock"]) + 1e-9

    c = q("SELECT * FROM {db}.sku_classification FINAL")
    assert len(c) == n_series
    assert set(c.loc[c["product_id"] == "SKU-A", "demand_class"]) == {"smooth"}
    assert (c.loc[c["product_id"] == "SKU-D", "is_slow_moving"] == 1).all()  # 0.2-0.36 units/day < 0.5
    ev = q("SELECT metric FROM {db}.ml_model_metrics FINAL WHERE model_name = 'slow-moving'")
    assert {"class_agreement", "slow_flag_agreement"} <= set(ev["metric"])

    # ORDER_MAX_COVER_DAYS reaches optimise_stock: re-run at 1 day of cover (same as_of_date: the rows are replaced),
    # no order above max(ceil(ROP - IP), floor(d_bar * 1 - IP)) (IP = stock: no night before DAY, nothing on order), while
    # the default run (180 days) ordered more than that for some rows (before 2026-12-07 the task passed no cap)
    from ml.pipeline import optimise_stock

    d_bar = p.groupby(["store_id", "product_id"])["yhat"].mean()
    def cover_bound(t):
        return np.maximum(np.maximum(np.ceil(t["reorder_point"] - t["stock"] - 1e-9),
                                     np.floor(d_bar.reindex(t.index) * 1 - t["stock"] + 1e-9)), 0.0)
    assert (r["reorder_qty"] > cover_bound(r)).any()
    optimise_stock(DAY, native_stack.model_copy(update={"order_max_cover_days": 1}))
    r1 = q("SELECT * FROM {db}.reorder_recommendations FINAL").set_index(["store_id", "product_id"])
    assert len(r1) == n_series
    assert (r1["reorder_qty"] <= cover_bound(r1)).all()
    assert ((r1["reorder_qty"] > 0) == (r1["reorder_needed"] == 1)).all()
    optimise_stock(DAY, native_stack)   # back to the settings' run


# ------------------------------------------------------------------------- orders on order ----
OO_DAY = dt.date(2024, 9, 2)   # after DAY's rows: the nights below are this store's only ones


def _write_forecast(native_stack, origin: dt.date, yhat: float = 10.0) -> None:
    """The lake's latest predictions as the predict job writes them: one series (OO-1, OO-A), H days of yhat
    units/day with an 80 % interval yhat -/+ 2 (sigma_d = 4 / (2 x 1.2816) = 1.5606 units/day)."""
    from core.lake import Lake
    from ml.forecast import MODEL_PREFIX

    f = pd.DataFrame({"forecast_origin": origin, "target_date": [origin + dt.timedelta(days=h) for h in range(1, H + 1)],
                      "horizon": range(1, H + 1), "store_id": "OO-1", "product_id": "OO-A", "yhat": yhat,
                      "lower80": yhat - 2, "upper80": yhat + 2, "lower95": yhat - 3, "upper95": yhat + 3,
                      "model_version": 1})
    lake = Lake(native_stack)
    lake.write_table(pa.Table.from_pandas(f, preserve_index=False), native_stack.lake_models_bucket, MODEL_PREFIX,
                     "predictions", "latest.parquet")


def _store_and_product(client, db: str, store_key: int, store_id: str, product_key: int, sku: str) -> None:
    """One store and one product (unit cost 2, price 4, shelf life 365 days, reorder point 10, capacity 300) in the
    dimensions, for the on-order tests."""
    client.insert(f"{db}.dim_store", [[store_key, store_id, store_id, "City", "United Kingdom", "GB", "EU", 1]],
                  column_names=["store_key", "store_id", "store_name", "city", "country", "country_code", "region",
                                "is_known"])
    client.insert(f"{db}.dim_product", [[product_key, sku, sku, "food", "dry", "b", "sup", 2.0, 4.0, 365, 10, 300, 1]],
                  column_names=["product_key", "sku", "product_name", "category", "sub_category", "brand", "supplier",
                                "unit_cost", "unit_price", "shelf_life_days", "reorder_point", "storage_capacity",
                                "is_known"])


@pytest.mark.integration
def test_optimise_stock_counts_what_is_on_order(native_stack):
    """Night 1 recommends Q; night 2, nothing received, counts Q on order and recommends nothing (it recommended
    Q again until 2026-12-07: the task passed no stock on order); a RESTOCK receipt of 200 on night 3 leaves
    Q - 200 on order. Re-running a night gives the same rows (its own rows are never on order), and each row
    says which rule set its quantity (order_bound)."""
    from core.clickhouse import get_client
    from ml.pipeline import optimise_stock

    client, db = get_client(native_stack), native_stack.clickhouse_database
    assert native_stack.lead_time_days == 3 and native_stack.order_count_open_recommendations
    _store_and_product(client, db, 21, "OO-1", 201, "OO-A")

    def night(day: dt.date, stock: int, received: int, settings=native_stack) -> pd.Series:
        client.command(f"ALTER TABLE {db}.fact_inventory DELETE WHERE date_key = {int(day.strftime('%Y%m%d'))} "
                       "AND store_key = 21 SETTINGS mutations_sync = 1")
        client.insert(f"{db}.fact_inventory", [[int(day.strftime("%Y%m%d")), 21, 201, stock, 0, 0, 0, received]],
                      column_names=["date_key", "store_key", "product_key", "closing_stock", "is_carried_forward",
                                    "units_sold", "units_returned", "units_received"])
        _write_forecast(native_stack, day)
        optimise_stock(day, settings)
        r = client.query_df(f"SELECT * FROM {db}.reorder_recommendations FINAL WHERE store_id = 'OO-1' "
                            f"AND as_of_date = '{day}'")
        assert len(r) == 1
        return r.iloc[0]

    # night 1, stock 5: d 10/day, SS = 1.6449 x 1.5606 x sqrt(3) = 4.45, ROP = 30 + 4.45 = 34.45 >= IP 5;
    # EOQ sqrt(2 x 3650 x 50 / (0.25 x 2)) = 854.4 -> 855, storage capacity 300 - 5 = 295 binds
    n1 = night(OO_DAY, stock=5, received=0)
    assert n1["reorder_point"] == pytest.approx(34.446, abs=1e-3) and n1["eoq"] == pytest.approx(854.4, abs=0.1)
    assert (n1["on_order"], n1["reorder_qty"], n1["order_bound"]) == (0.0, 295.0, "capacity")
    # night 2, nothing received: the 295 are on order, IP 300 > ROP -> nothing to order
    n2 = night(OO_DAY + dt.timedelta(days=1), stock=5, received=0)
    assert (n2["on_order"], n2["reorder_qty"], n2["reorder_needed"], n2["order_bound"]) == (295.0, 0.0, 0, "none")
    # re-run of night 2: the same (night 2's own row is not on order); re-run of night 1: nothing before it
    assert night(OO_DAY + dt.timedelta(days=1), stock=5, received=0)[["on_order", "reorder_qty"]].tolist() == [295.0, 0.0]
    assert night(OO_DAY, stock=5, received=0)[["on_order", "reorder_qty"]].tolist() == [0.0, 295.0]
    # ORDER_COUNT_OPEN_RECOMMENDATIONS=false: nothing on order, the 295 are recommended again (the old behaviour)
    off = night(OO_DAY + dt.timedelta(days=1), stock=5, received=0,
                settings=native_stack.model_copy(update={"order_count_open_recommendations": False}))
    assert (off["on_order"], off["reorder_qty"]) == (0.0, 295.0)
    night(OO_DAY + dt.timedelta(days=1), stock=5, received=0)   # back to the default: night 2 orders nothing
    # night 3: 200 of the 295 received (RESTOCK, fact_inventory.units_received), stock 5 + 200 - 20 sold = 185:
    # 95 still on order, IP 280 > ROP -> nothing to order
    n3 = night(OO_DAY + dt.timedelta(days=2), stock=185, received=200)
    assert (n3["on_order"], n3["reorder_qty"], n3["order_bound"]) == (95.0, 0.0, "none")
    # the BI view shows the latest night's on order and bound
    v = client.query_df(f"SELECT on_order, order_bound, reorder_qty FROM {db}.v_reorder_latest WHERE store_id = 'OO-1'")
    assert v.iloc[0].tolist() == [95.0, "none", 0.0]
    # night 4: night 1's order is 3 days back, still within LEAD_TIME_DAYS: 95 on order. Night 5: 4 days back,
    # taken as received or lost: nothing on order; stock 20 <= ROP 34.45 -> ordered, capacity 300 - 20 = 280
    n4 = night(OO_DAY + dt.timedelta(days=3), stock=175, received=0)
    assert n4["on_order"] == 95.0
    n6 = night(OO_DAY + dt.timedelta(days=4), stock=20, received=0)
    assert (n6["on_order"], n6["reorder_qty"], n6["order_bound"]) == (0.0, 280.0, "capacity")


@pytest.mark.integration
def test_optimise_stock_restocks_an_inactive_series_that_is_out_of_stock(native_stack):
    """A series the forecasts flag inactive (no sale for more than max(56 days, 3 x its mean inter-demand
    interval)) orders nothing while it has stock on hand (order_bound 'inactive'). Out of stock its silence may be
    the empty shelf's (no stock, no sale): until 2026-12-07 it was ordered 0 units ('inactive') night after night
    and never sold again. Now it is restocked to the reorder point of its selling rate (3/day over its selling
    span): L 3, sigma max(1 / 2.5631 = 0.3902, sqrt(3)) = 1.732 (the Poisson floor), SS = 1.6449 x 1.732 x sqrt(3)
    = 4.935, ROP 9 + 4.93 = 13.93 -> 14 units, order_bound 'inactive_out_of_stock', counted apart in the task's
    result; and only once per silence: L + 2 nights later, still at 0 with no receipt, 0 ('inactive_restock_sent')."""
    from core.clickhouse import get_client
    from core.lake import Lake
    from ml.forecast import MODEL_PREFIX
    from ml.pipeline import optimise_stock

    client, db = get_client(native_stack), native_stack.clickhouse_database
    assert native_stack.lead_time_days == 3
    _store_and_product(client, db, 23, "IN-1", 203, "IN-A")
    day0 = OO_DAY + dt.timedelta(days=90)   # after the on-order tests' nights (their loaders see none of these rows)

    def night(day: dt.date, stock: int) -> tuple[pd.Series, dict]:
        client.insert(f"{db}.fact_inventory", [[int(day.strftime("%Y%m%d")), 23, 203, stock, 0, 0, 0, 0]],
                      column_names=["date_key", "store_key", "product_key", "closing_stock", "is_carried_forward",
                                    "units_sold", "units_returned", "units_received"])
        f = pd.DataFrame({"forecast_origin": day, "target_date": [day + dt.timedelta(days=h) for h in range(1, H + 1)],
                          "horizon": range(1, H + 1), "store_id": "IN-1", "product_id": "IN-A", "yhat": 0.0,
                          "lower80": 0.0, "upper80": 1.0, "lower95": 0.0, "upper95": 1.5, "inactive": True,
                          "selling_rate": 3.0, "model_version": 1})
        Lake(native_stack).write_table(pa.Table.from_pandas(f, preserve_index=False), native_stack.lake_models_bucket,
                                       MODEL_PREFIX, "predictions", "latest.parquet")
        res = optimise_stock(day, native_stack)
        r = client.query_df(f"SELECT * FROM {db}.reorder_recommendations FINAL WHERE store_id = 'IN-1' "
                            f"AND as_of_date = '{day}'")
        assert len(r) == 1
        return r.iloc[0], res

    stocked, res1 = night(day0, stock=5)      # stock on hand: nothing ordered
    assert (stocked["reorder_qty"], stocked["order_bound"]) == (0.0, "inactive")
    empty, res2 = night(day0 + dt.timedelta(days=1), stock=0)    # out of stock: restocked
    assert (empty["reorder_qty"], empty["reorder_needed"], empty["order_bound"]) == (14.0, 1, "inactive_out_of_stock")
    assert empty["reorder_point"] == pytest.approx(13.9346, abs=1e-3)              # old code: 0 units, 'inactive'
    assert empty["stockout_risk"] == "HIGH" and empty["mean_daily_demand"] == 0.0
    assert (res1["inactive"], res1.get("inactive_out_of_stock")) == (1, 0)
    assert (res2["inactive"], res2["inactive_out_of_stock"], res2["inactive_out_of_stock_units"]) == (0, 1, 14.0)
    v = client.query_df(f"SELECT order_bound, reorder_qty FROM {db}.v_reorder_latest WHERE store_id = 'IN-1'")
    assert v.iloc[0].tolist() == ["inactive_out_of_stock", 14.0]
    # L + 2 nights later the top-up has left the open-order window ([as_of - L, as_of)) with no receipt: still at
    # stock 0, it is not recommended again (restocked once per silence; old code: the top-up again every L + 1 nights)
    again, res3 = night(day0 + dt.timedelta(days=1 + 3 + 2), stock=0)
    assert again["on_order"] == 0.0
    assert (again["reorder_qty"], again["reorder_needed"], again["order_bound"]) == (0.0, 0, "inactive_restock_sent")
    assert again["stockout_risk"] == "HIGH"
    assert (res3["inactive_out_of_stock"], res3["inactive_restock_sent"]) == (0, 1)
    again2, _ = night(day0 + dt.timedelta(days=1 + 3 + 2), stock=0)        # a re-run of that night: the same
    assert (again2["reorder_qty"], again2["order_bound"]) == (0.0, "inactive_restock_sent")


@pytest.mark.integration
def test_the_train_jobs_registry_read_creates_no_database(native_stack):
    """A hand run of the train job reads model_registry's highest version itself (ml.jobs.train.
    registry_max_from_clickhouse). With a mistyped CLICKHOUSE_DATABASE it fails (the job then exits 2 naming
    --registry-max-version); until 2026-12-07 its writer client first ran CREATE DATABASE IF NOT EXISTS and left
    an empty database of the mistyped name behind. The right name reads the registry (0: nothing registered),
    without CLICKHOUSE_BI_PASSWORD (the read's first version used bi_reader, which compose's airflow services lack)."""
    from core.clickhouse import get_client
    from ml.jobs.train import registry_max_from_clickhouse

    client, typo = get_client(native_stack), native_stack.clickhouse_database + "_typo"
    assert native_stack.clickhouse_bi_password
    client.command(f"DROP DATABASE IF EXISTS {typo}")
    with pytest.raises(Exception, match="(?i)database"):
        registry_max_from_clickhouse(native_stack.model_copy(update={"clickhouse_database": typo}))
    names = set(client.query_df("SELECT name FROM system.databases")["name"])
    assert typo not in names and native_stack.clickhouse_database in names     # old code: typo created
    # no CLICKHOUSE_BI_PASSWORD needed (compose's airflow services have none); old code: ConfigError naming it
    n = registry_max_from_clickhouse(native_stack.model_copy(update={"clickhouse_bi_password": None}))
    assert n == int(client.query_df(f"SELECT max(version) AS v FROM {native_stack.clickhouse_database}"
                                    ".model_registry")["v"].fillna(0).iloc[0])


@pytest.mark.integration
def test_open_orders_net_receipts_over_twice_the_lead_time_and_only_placed_orders(native_stack):
    """load_open_orders through the endpoint on rows written as the nightly task writes them (LEAD_TIME_DAYS 3).
    Orders of store OO-2 x OO-B: night 1 100 units, night 3 50 (both written with ORDER_COUNT_OPEN_RECOMMENDATIONS
    true); night 2 70 written with the setting off and night 0 90 written before migration 095 (counts_on_order 0:
    a repeated recommendation, no placed order); 100 units received on day 4. At night 5 night 1's order is past
    its lead time, and the day-4 receipt was its delivery: 50 on order (night 3's). Until the review of
    2026-12-07 the loader read only [t - 3, t) and every row: nights 2 and 3 (120), the receipt netted against
    them, 20 on order."""
    from core.clickhouse import get_client
    from ml.pipeline import load_open_orders

    client, db = get_client(native_stack), native_stack.clickhouse_database
    d = [OO_DAY + dt.timedelta(days=30 + i) for i in range(6)]   # nights 0..5, after the other test's nights
    _store_and_product(client, db, 22, "OO-2", 202, "OO-B")
    rows = [[d[0], 90.0, 0], [d[1], 100.0, 1], [d[2], 70.0, 0], [d[3], 50.0, 1]]
    client.insert(f"{db}.reorder_recommendations",
                  [[day, "OO-2", "OO-B", qty, 1, counts, "capacity"] for day, qty, counts in rows],
                  column_names=["as_of_date", "store_id", "product_id", "reorder_qty", "reorder_needed",
                                "counts_on_order", "order_bound"])
    client.insert(f"{db}.fact_inventory", [[int(d[4].strftime("%Y%m%d")), 22, 202, 150, 0, 0, 0, 100]],
                  column_names=["date_key", "store_key", "product_key", "closing_stock", "is_carried_forward",
                                "units_sold", "units_returned", "units_received"])
    got = load_open_orders(client, db, d[5], 3).set_index(["store_id", "product_id"])["on_order"].to_dict()
    assert got == {("OO-2", "OO-B"): 50.0}
    # night 4: both placed orders within the lead time; the day-4 receipt is night 4's stock and fills night 1's
    assert load_open_orders(client, db, d[4], 3)["on_order"].tolist() == [50.0]
    # night 3: nothing received yet: 100 on order (night 3's own 50 is not before it)
    assert load_open_orders(client, db, d[3], 3)["on_order"].tolist() == [100.0]
