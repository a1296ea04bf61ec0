"""Task logic of the ML DAGs (``demand_forecast_training``, ``batch_predictions``); the DAG files stay thin.

Process model (chDB allows one process per data path): the Python tasks here own the ClickHouse client;
the Spark jobs (:mod:`ml.jobs.train`, :mod:`ml.jobs.predict`, run by spark-submit in a subprocess) never
open ClickHouse and exchange data through the lake:

* ``features/daily/run_date=YYYY-MM-DD/features.parquet`` — the daily feature table (build_features),
  ``features/daily/latest.json`` points at the newest one;
* ``models/demand-forecast/v<N>/`` — Spark model, ``metrics.parquet``, ``intervals.parquet``, ``meta.json``
  (train job); ``models/demand-forecast/champion.json`` — the promoted version (register_model);
* ``models/demand-forecast/predictions/latest.parquet`` (+ ``origin=YYYY-MM-DD/``) — 7-day forecasts
  with intervals (predict job).

Every ClickHouse write goes to a ReplacingMergeTree keyed on its natural key (see
``clickhouse/migrations/020_ml.sql``), so re-running a task replaces rows instead of adding them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from ml.features import build_daily_features
from ml.forecast import MODEL_PREFIX, list_versions, read_meta

log = logging.getLogger(__name__)
#: minimum days of demand history for training: 7 days of backtest targets + 7 days before the last origin
MIN_HISTORY_DAYS = 14


class InsufficientData(ValueError):
    """The star schema does not hold enough demand history (a retry cannot fix it)."""
MODEL_NAME = "demand-forecast"
FEATURE_TABLE_COLUMNS = [
    "date", "store_id", "product_id", "units", "lag_1", "lag_7", "lag_14", "lag_28",
    "rmean_7", "rmean_14", "rmean_30", "rmean_90", "rstd_7", "rstd_14", "rstd_30", "rstd_90",
    "zero_share_28", "days_since_sale", "dow", "month", "season", "day_of_month", "is_weekend",
    "price", "price_change_7", "price_rel_28", "promo", "holiday", "event", "snap", "temp_c", "precip_mm",
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ctx(settings=None):
    from core.clickhouse import get_client
    from core.lake import Lake
    from core.settings import get_settings

    s = settings or get_settings()
    return s, get_client(s), s.clickhouse_database, Lake(s)


def _write_json(lake, obj: dict, *parts: str) -> None:
    path = lake.path(*parts)
    lake.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with lake.fs.open_output_stream(path) as f:
        f.write(json.dumps(obj, indent=2, default=str).encode())


def _read_json(lake, *parts: str) -> dict:
    if not lake.exists(*parts):
        raise FileNotFoundError(f"lake file {'/'.join(parts)} not found")
    with lake.fs.open_input_stream(lake.path(*parts)) as f:
        return json.loads(f.read().decode())


# ------------------------------------------------------------------------------------- demand ------
def load_daily_demand(client, db: str, end_date: dt.date | None = None) -> pd.DataFrame:
    """Daily demand per store x SKU x day from the star schema (fact_sales joined to dim_store/dim_product).

    units = sum of quantity of sale lines (``is_return = 0``; returns are not negative demand);
    price = revenue / units of those lines (the realised price of the day; days without sales get the
    series' last price in :mod:`ml.features`); country_code from dim_store (holidays).

    Returns:
        DataFrame date, store_id, product_id, units, price, country_code (empty when no sales).
    """
    where = f"WHERE f.date_key <= {int(end_date.strftime('%Y%m%d'))}" if end_date else ""
    sql = f"""
        SELECT makeDate(intDiv(f.date_key, 10000), intDiv(f.date_key, 100) % 100, f.date_key % 100) AS date,
               s.store_id AS store_id, p.sku AS product_id,
               toFloat64(sumIf(f.quantity, f.is_return = 0)) AS units,
               sumIf(toFloat64(f.revenue), f.is_return = 0) / nullIf(sumIf(f.quantity, f.is_return = 0), 0) AS price,
               any(s.country_code) AS country_code
        FROM {db}.fact_sales AS f
        INNER JOIN (SELECT store_key, store_id, country_code FROM {db}.dim_store FINAL) AS s ON f.store_key = s.store_key
        INNER JOIN (SELECT product_key, sku FROM {db}.dim_product FINAL) AS p ON f.product_key = p.product_key
        {where}
        GROUP BY date, store_id, product_id
        ORDER BY store_id, product_id, date"""
    df = client.query_df(sql)
    if df.empty:
        return pd.DataFrame(columns=["date", "store_id", "product_id", "units", "price", "country_code"])
    df["date"] = pd.to_datetime(df["date"])
    df["units"] = df["units"].clip(lower=0)
    df["country_code"] = df["country_code"].replace("", np.nan)
    return df


def read_weather(path: str | None) -> pd.DataFrame | None:
    """WEATHER_FILE CSV (date, country [ISO-2], temp_c, precip_mm) -> weather table, or None when unset.

    Raises:
        ValueError: the file lacks a column (the message names WEATHER_FILE).
    """
    if not path:
        return None
    w = pd.read_csv(path)
    need = {"date", "country", "temp_c", "precip_mm"}
    if not need <= set(w.columns):
        raise ValueError(f"WEATHER_FILE {path} needs columns {sorted(need)}; has {list(w.columns)}")
    return w.rename(columns={"country": "country_code"})


# ----------------------------------------------------------------------------------- training ------
def build_features(run_date: dt.date, settings=None) -> dict:
    """Task ``build_features``: demand up to ``run_date`` -> feature table -> ClickHouse features_daily
    and the lake (``features/daily/run_date=<d>/features.parquet`` + ``latest.json``).

    Raises:
        InsufficientData: no sales in fact_sales up to the date, or fewer than MIN_HISTORY_DAYS days.
    """
    s, client, db, lake = _ctx(settings)
    daily = load_daily_demand(client, db, run_date)
    if daily.empty:
        raise InsufficientData(f"no sales in {db}.fact_sales up to {run_date}: run daily_etl first")
    # the last day with sales (<= run_date): a day the ETL has not loaded yet must not become zero demand
    end = min(pd.Timestamp(run_date), daily["date"].max())
    span = int((end - daily["date"].min()).days) + 1
    if span < MIN_HISTORY_DAYS:
        raise InsufficientData(
            f"{db}.fact_sales covers {span} day(s) ({daily['date'].min().date()}..{end.date()}); the rolling-origin "
            f"backtest needs at least {MIN_HISTORY_DAYS}: run daily_etl for the earlier dates first (backfill)")
    feats = build_daily_features(daily, end_date=end, default_country=s.store_country_default,
                                 weather=read_weather(s.weather_file), extend_days=7)
    out = feats.copy()
    for c in ("temp_c", "precip_mm"):
        if c not in out.columns:
            out[c] = np.nan
    out = out[FEATURE_TABLE_COLUMNS]
    rows = out.copy()
    rows["date"] = rows["date"].dt.date
    rows["temp_c"] = rows["temp_c"].astype(object).where(rows["temp_c"].notna(), None)
    rows["precip_mm"] = rows["precip_mm"].astype(object).where(rows["precip_mm"].notna(), None)
    rows["run_date"] = run_date
    rows["computed_at"] = _now()
    client.insert_df(f"{db}.features_daily", rows, settings={"max_partitions_per_insert_block": 0})  # monthly parts
    bucket = s.lake_features_bucket
    key = f"run_date={run_date.isoformat()}"
    lake.write_table(pa.Table.from_pandas(out, preserve_index=False), bucket, "daily", key, "features.parquet")
    _write_json(lake, {"run_date": run_date.isoformat(), "path": f"{bucket}/daily/{key}"}, bucket, "daily", "latest.json")
    known = out["units"].notna()
    return {"rows": int(len(out)), "series": int(out.groupby(["store_id", "product_id"]).ngroups),
            "last_date": str(out.loc[known, "date"].max().date()), "lake_path": f"{bucket}/daily/{key}",
            "run_date": run_date.isoformat()}


def read_features(lake, path: str) -> pd.DataFrame:
    """Feature table from a lake path (``latest`` resolves ``features/daily/latest.json``)."""
    if path == "latest":
        path = _read_json(lake, lake.settings.lake_features_bucket, "daily", "latest.json")["path"]
    t = lake.read_table(path)
    if t is None:
        raise FileNotFoundError(f"feature table {path} not found in the lake (run build_features first)")
    df = t.to_pandas()
    df["date"] = pd.to_datetime(df["date"])
    drop = [c for c in ("temp_c", "precip_mm") if c in df.columns and df[c].isna().all()]
    return df.drop(columns=drop).sort_values(["store_id", "product_id", "date"]).reset_index(drop=True)


def version_for_run(lake, run_date: str) -> int | None:
    """The model version whose meta.json has this run_date, if any."""
    for v in reversed(list_versions(lake)):
        if read_meta(lake, v).get("run_date") == run_date:
            return v
    return None


def metrics_rows(metrics: pd.DataFrame, version: int, run_date: dt.date, dataset: str = "platform",
                 model_name: str = MODEL_NAME) -> pd.DataFrame:
    """Wide backtest metrics (model, h, wape, ...) -> long ml_model_metrics rows."""
    cols = [c for c in ("wape", "mae", "rmse", "rmsse", "n", "coverage80", "coverage95") if c in metrics.columns]
    long = metrics.melt(id_vars=["model", "h"], value_vars=cols, var_name="metric", value_name="value").dropna(subset=["value"])
    return pd.DataFrame({"model_name": model_name, "model_version": int(version), "run_date": run_date,
                         "model": long["model"], "metric": long["metric"], "horizon": long["h"].astype("uint8"),
                         "value": long["value"].astype("float64"), "dataset": dataset, "computed_at": _now()})


def current_champion(client, db: str) -> dict | None:
    """The registry's champion row (latest state), or None."""
    df = client.query_df(f"SELECT version, backtest_wape, path FROM {db}.model_registry FINAL "
                         f"WHERE model_name = '{MODEL_NAME}' AND is_champion = 1 ORDER BY version DESC LIMIT 1")
    return None if df.empty else df.iloc[0].to_dict()


def register_model(run_date: dt.date, settings=None) -> dict:
    """Task ``register_model``: load the run's backtest metrics into ml_model_metrics, add the version to
    model_registry, and promote it to champion only when its backtest WAPE (GBT, all horizons) is lower
    than the champion's (the first model is promoted). Writes ``models/demand-forecast/champion.json``.

    Note: champion and challenger WAPEs come from their own backtests (origins of their training dates);
    with nightly retraining the windows overlap by all but a day.

    Raises:
        FileNotFoundError: the training job wrote no model for this run date.
    """
    s, client, db, lake = _ctx(settings)
    v = version_for_run(lake, run_date.isoformat())
    if v is None:
        raise FileNotFoundError(f"no model version with run_date {run_date} under "
                                f"{s.lake_models_bucket}/{MODEL_PREFIX}/ (did the train job fail?)")
    meta = read_meta(lake, v)
    metrics = lake.read_table(s.lake_models_bucket, MODEL_PREFIX, f"v{v}", "metrics.parquet").to_pandas()
    client.insert_df(f"{db}.ml_model_metrics", metrics_rows(metrics, v, run_date))
    allm = metrics[metrics["h"] == 0].set_index("model")
    wape, naive = float(allm.loc["gbt", "wape"]), float(allm.loc["seasonal_naive", "wape"])
    champ = current_champion(client, db)
    now = _now()
    if champ is not None and int(champ["version"]) == v:
        promote, reason = True, "already champion (re-run)"
    elif champ is None:
        promote, reason = True, "no champion yet"
    elif wape < float(champ["backtest_wape"]):
        promote, reason = True, f"WAPE {wape:.4f} < champion v{int(champ['version'])} {float(champ['backtest_wape']):.4f}"
    else:
        promote, reason = False, f"WAPE {wape:.4f} >= champion v{int(champ['version'])} {float(champ['backtest_wape']):.4f}"
    base = {"model_name": MODEL_NAME, "run_date": run_date, "metrics": json.dumps({
        "backtest": metrics.to_dict("records"), "meta": meta}, default=str)}
    rows = [{**base, "version": v, "trained_at": pd.Timestamp(meta["trained_at"]).to_pydatetime(),
             "path": meta["path"], "backtest_wape": wape, "seasonal_naive_wape": naive,
             "is_champion": int(promote), "promoted_at": now if promote else None, "updated_at": now}]
    if promote and champ is not None and int(champ["version"]) != v:
        old = client.query_df(f"SELECT * FROM {db}.model_registry FINAL WHERE model_name = '{MODEL_NAME}' "
                              f"AND version = {int(champ['version'])}").iloc[0].to_dict()
        old.update(is_champion=0, updated_at=now)
        rows.append(old)
    df = pd.DataFrame(rows)
    df["promoted_at"] = df["promoted_at"].astype(object).where(df["promoted_at"].notna(), None)
    client.insert_df(f"{db}.model_registry", df[["model_name", "version", "run_date", "trained_at", "path",
                                                 "backtest_wape", "seasonal_naive_wape", "metrics", "is_champion",
                                                 "promoted_at", "updated_at"]])
    if promote:
        _write_json(lake, {"version": v, "path": meta["path"], "promoted_at": now.isoformat(), "backtest_wape": wape},
                    s.lake_models_bucket, MODEL_PREFIX, "champion.json")
    log.info("model v%s: %s -> %s", v, reason, "promoted" if promote else "kept challenger")
    return {"version": v, "promoted": promote, "reason": reason, "wape": wape, "seasonal_naive_wape": naive}


# -------------------------------------------------------------------------------- predictions ------
PRED_COLUMNS = ["forecast_origin", "target_date", "horizon", "store_id", "product_id", "yhat",
                "lower80", "upper80", "lower95", "upper95", "model_version"]


def read_predictions(lake) -> pd.DataFrame:
    """``models/demand-forecast/predictions/latest.parquet`` written by the predict job."""
    t = lake.read_table(lake.settings.lake_models_bucket, MODEL_PREFIX, "predictions", "latest.parquet")
    if t is None:
        raise FileNotFoundError("no predictions in the lake: the predict job did not run")
    df = t.to_pandas()
    for c in ("forecast_origin", "target_date"):
        df[c] = pd.to_datetime(df[c]).dt.date
    return df


def load_predictions(run_date: dt.date, settings=None) -> dict:
    """Task ``load_predictions``: lake predictions -> forecast_predictions, after checking that every
    active store x SKU has horizons 1..7 and lower95 <= lower80 <= yhat <= upper80 <= upper95.

    Raises:
        ValueError: a series lacks a horizon or an interval is out of order.
    """
    s, client, db, lake = _ctx(settings)
    p = read_predictions(lake)
    check_predictions(p)
    rows = p[PRED_COLUMNS].copy()
    rows["run_date"] = run_date
    rows["created_at"] = _now()
    client.insert_df(f"{db}.forecast_predictions", rows)
    return {"rows": int(len(rows)), "series": int(rows.groupby(["store_id", "product_id"]).ngroups),
            "forecast_origin": str(rows["forecast_origin"].iloc[0]), "model_version": int(rows["model_version"].iloc[0])}


def check_predictions(p: pd.DataFrame, horizon: int = 7) -> None:
    """Raise ValueError unless every series has horizons 1..horizon and the intervals are ordered."""
    hs = p.groupby(["store_id", "product_id"])["horizon"].agg(lambda x: sorted(x.tolist()))
    bad = hs[hs.map(lambda x: x != list(range(1, horizon + 1)))]
    if len(bad):
        raise ValueError(f"{len(bad)} series without horizons 1..{horizon}, e.g. {bad.index[0]}")
    eps = 1e-9
    order = ((p["lower95"] <= p["lower80"] + eps) & (p["lower80"] <= p["yhat"] + eps) & (p["yhat"] <= p["upper80"] + eps)
             & (p["upper80"] <= p["upper95"] + eps) & (p["lower95"] >= 0))
    if not order.all():
        raise ValueError(f"{int((~order).sum())} prediction rows with intervals out of order")


def load_inventory(client, db: str, as_of: dt.date) -> pd.DataFrame:
    """Latest closing stock per store x SKU on or before ``as_of`` (fact_inventory) with product attributes."""
    sql = f"""
        SELECT s.store_id AS store_id, p.sku AS product_id,
               toFloat64(argMax(i.closing_stock, i.date_key)) AS stock,
               max(i.date_key) AS stock_date_key,
               any(p.unit_cost) AS unit_cost, any(p.unit_price) AS unit_price,
               any(p.storage_capacity) AS storage_capacity, any(p.shelf_life_days) AS shelf_life_days
        FROM {db}.fact_inventory AS i
        INNER JOIN (SELECT store_key, store_id FROM {db}.dim_store FINAL) AS s ON i.store_key = s.store_key
        INNER JOIN (SELECT product_key, sku, unit_cost, unit_price, storage_capacity, shelf_life_days
                    FROM {db}.dim_product FINAL) AS p ON i.product_key = p.product_key
        WHERE i.date_key <= {int(as_of.strftime('%Y%m%d'))}
        GROUP BY store_id, product_id"""
    return client.query_df(sql)


def optimise_stock(run_date: dt.date, settings=None) -> dict:
    """Task ``optimise_stock``: forecasts + closing stock + product master -> reorder_recommendations
    (:func:`ml.optimize.recommend`, settings SERVICE_LEVEL, LEAD_TIME_DAYS, ORDER_COST, HOLDING_COST_RATE).

    Series without an inventory record are skipped (counted in the result; their forecasts stay in
    forecast_predictions). A missing unit cost falls back to the list unit price for the holding cost.
    """
    from ml.optimize import inputs_from_forecast, recommend

    s, client, db, lake = _ctx(settings)
    p = read_predictions(lake)
    origin = p["forecast_origin"].iloc[0]
    demand = inputs_from_forecast(p)
    inv = load_inventory(client, db, origin)
    m = demand.merge(inv, on=["store_id", "product_id"], how="inner")
    skipped = len(demand) - len(m)
    if m.empty:
        return {"rows": 0, "skipped_no_inventory": skipped}
    m["unit_cost"] = m["unit_cost"].where(m["unit_cost"] > 0, m["unit_price"])
    no_cost = ~(m["unit_cost"] > 0)
    m = m[~no_cost].copy()
    for c in ("storage_capacity", "shelf_life_days", "unit_cost"):
        m[c] = pd.to_numeric(m[c], errors="coerce").astype("float64")
    rec = recommend(m, lead_time_days=s.lead_time_days, service_level=s.service_level, order_cost=s.order_cost,
                    holding_cost_rate=s.holding_cost_rate)
    k = rec["stock_date_key"].astype(int)
    rec["stock_date"] = [dt.date(x // 10000, x // 100 % 100, x % 100) for x in k]
    out = pd.DataFrame({
        "as_of_date": origin, "store_id": rec["store_id"], "product_id": rec["product_id"], "stock": rec["stock"],
        "stock_date": rec["stock_date"], "mean_daily_demand": rec["mean_demand"], "sigma_daily": rec["sigma_d"],
        "lead_time_days": rec["lead_time_days"].astype(float), "service_level": rec["service_level"],
        "safety_stock": rec["safety_stock"], "reorder_point": rec["reorder_point"], "eoq": rec["eoq"],
        "reorder_qty": rec["reorder_qty"], "reorder_needed": rec["reorder_needed"].astype("uint8"),
        "days_until_stockout": rec["days_until_stockout"], "stockout_risk": rec["stockout_risk"],
        "storage_capacity": rec["storage_capacity"].astype(object).where(rec["storage_capacity"].notna(), None),
        "shelf_life_days": rec["shelf_life_days"].astype(object).where(rec["shelf_life_days"].notna(), None),
        "unit_cost": rec["unit_cost"], "model_version": int(p["model_version"].iloc[0]), "run_date": run_date,
        "created_at": _now()})
    client.insert_df(f"{db}.reorder_recommendations", out)
    return {"rows": int(len(out)), "skipped_no_inventory": int(skipped), "skipped_no_cost": int(no_cost.sum()),
            "risk": out["stockout_risk"].value_counts().to_dict(), "reorders": int(out["reorder_needed"].sum())}


def classify_skus(run_date: dt.date, settings=None, window_days: int = 365) -> dict:
    """Task ``classify_skus``: Syntetos-Boylan classes + slow-moving flag per store x SKU on the demand up
    to ``run_date`` -> sku_classification; hold-out stability -> ml_model_metrics (model_name 'slow-moving')."""
    from ml.slow_moving import classify, stability

    s, client, db, lake = _ctx(settings)
    daily = load_daily_demand(client, db, run_date)
    if daily.empty:
        raise ValueError(f"no sales in {db}.fact_sales up to {run_date}")
    end = pd.Timestamp(run_date)
    cls = classify(daily, end_date=end, window_days=window_days)
    now = _now()
    out = cls.assign(as_of_date=run_date, window_days=window_days, run_date=run_date, created_at=now)
    out["days_since_last_sale"] = out["days_since_last_sale"].astype("uint32")
    out["cv2"] = out["cv2"].fillna(0.0)
    out["adi"] = out["adi"].replace(np.inf, 1e9)
    client.insert_df(f"{db}.sku_classification", out[[
        "as_of_date", "store_id", "product_id", "window_days", "adi", "cv2", "demand_class", "mean_daily_demand",
        "days_since_last_sale", "is_slow_moving", "run_date", "created_at"]])
    half = max(7, min(182, int((end - daily["date"].min()).days // 2)))
    st = stability(daily, end_date=end, window_days=half)
    ev = pd.DataFrame([{"metric": k, "value": float(v)} for k, v in st.items() if k != "n_series"]
                      + [{"metric": "n_series", "value": float(st["n_series"])},
                         {"metric": "slow_moving_share", "value": float(cls["is_slow_moving"].mean())}])
    ev = ev.assign(model_name="slow-moving", model_version=0, run_date=run_date, model="syntetos-boylan",
                   horizon=0, dataset=f"platform-holdout-{half}d", computed_at=now)
    client.insert_df(f"{db}.ml_model_metrics", ev[["model_name", "model_version", "run_date", "model", "metric",
                                                   "horizon", "value", "dataset", "computed_at"]])
    return {"rows": int(len(out)), "classes": cls["demand_class"].value_counts().to_dict(),
            "slow_moving": int(cls["is_slow_moving"].sum()), "stability": st}
