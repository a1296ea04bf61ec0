"""Benchmark of the demand forecaster on real data: ``python -m ops.bench_forecast --out reports/bench-forecast.json``.

Runs the *same* code as the nightly training (:func:`ml.forecast.train_and_evaluate`: features,
rolling-origin backtest of the GBT and the baselines seasonal naive, trailing 28-day mean and statsforecast
(AutoETS / CrostonOptimized), split-conformal intervals, final fit) on

* **M5 tiny** (``../shared/data/m5_walmart_tiny``): 28 Walmart items x 10 stores, daily units and weekly
  prices 2011-01-29..2015-10-31; the M5 calendar supplies per-state SNAP days (``snap``), any event
  (``event``) and National events as ``holiday``; price drops are the promotion proxy. The price covariates are
  the target day's (``ForecastConfig.prices_known_ahead``): M5's weekly sell prices are a price list, given on
  days without sales, and the competition's price file covered the forecast days too (``sell_prices``, weekly
  per store x item), so they are known ahead; ``--m5-prices-at-origin`` takes them as known at the origin instead.
* **UCI Online Retail** (``../shared/data/uci_online_retail/transactions.csv.gz``): the United
  Kingdom market (92 % of rows; "store" = country), the ``--uci-top`` products with the most demand;
  demand and price as the platform reads the log (:mod:`ops.uci_demand`: the replay's products, so no
  postage / manual / fee codes and one product per stock code whatever its case; units sold less orders
  cancelled the same day, through ClickHouse's ``demand_daily`` view; price = revenue / units sold, the price
  paid, so its covariates are taken at the origin as on the platform);
  holiday = England & Wales bank holidays from ``calendar_uk.csv``. Series with no line on a day have
  zero demand that day. Top-N is chosen on the whole slice, a mild selection effect that does not
  favour either model.

The M5 section also evaluates the slow-moving classifier (:mod:`ml.slow_moving`) against the README's
hand labels of the 28 items and its 182-day hold-out stability.

M5 runs the M5 protocol's 28-day horizon from 6 origins 61 days apart (spanning the last year); UCI (one
year of data) 14 days from 4 origins 30 days apart.

The report holds, per dataset: WAPE, MAE, RMSE, RMSSE and the 80 % / 95 % interval coverage per horizon day
(and "0" = pooled) for every model, the GBT's reductions against the best baseline and the trailing mean,
the champion of the backtest, backtest origins, rows, series and training times, and the cycle service level
the reorder step's safety stock reaches at a 95 % target (``safety_stock_service``: sigma from the intervals
against sigma from the lead-time totals, lead times 3 and 7 days). Its goals (:func:`forecast_goals`, in the shared
goal block of :mod:`ops.goals`: ``goals``, ``verdict``, ``goals_missed``): per dataset, the GBT's WAPE and RMSSE
each >= 10 % below the best baseline's; the command exits 1 after writing the report when one is missed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from ml.forecast import ForecastConfig, get_spark, train_and_evaluate
from ml.slow_moving import evaluate_against_labels, parse_m5_labels, stability
from core.settings import REPO_ROOT
from ops.goals import exit_on_missed, goal, judge

DEFAULT_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


def load_m5(folder: Path, stores: list[str] | None = None, items: list[str] | None = None,
            start: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """M5 tiny -> (daily demand table, calendar of known-in-advance flags per store x date).

    Args:
        stores, items: optional subsets; start: optional first date kept (YYYY-MM-DD).
    Raises:
        FileNotFoundError: the folder lacks sales_daily.csv.gz or calendar.csv.
    """
    folder = Path(folder)
    for f in ("sales_daily.csv.gz", "calendar.csv"):
        if not (folder / f).exists():
            raise FileNotFoundError(f"{folder / f} not found (M5 tiny slice)")
    s = pd.read_csv(folder / "sales_daily.csv.gz", usecols=["date", "store_id", "state_id", "item_id", "units", "sell_price"],
                    parse_dates=["date"])
    if stores:
        s = s[s["store_id"].isin(stores)]
    if items:
        s = s[s["item_id"].isin(items)]
    if start:
        s = s[s["date"] >= pd.Timestamp(start)]
    daily = s.rename(columns={"item_id": "product_id", "sell_price": "price"})[
        ["date", "store_id", "product_id", "units", "price"]]
    cal = pd.read_csv(folder / "calendar.csv", parse_dates=["date"])
    store_state = s[["store_id", "state_id"]].drop_duplicates()
    rows = []
    for store, state in store_state.itertuples(index=False):
        c = pd.DataFrame({
            "date": cal["date"], "store_id": store,
            "snap": cal[f"snap_{state}"].astype("int8"),
            "event": (cal["event_name_1"].notna() | cal["event_name_2"].notna()).astype("int8"),
            "holiday": ((cal["event_type_1"] == "National") | (cal["event_type_2"] == "National")).astype("int8"),
        })
        rows.append(c)
    return daily, pd.concat(rows, ignore_index=True)


def load_uci(folder: Path, top_n: int = 100, country: str = "United Kingdom") -> tuple[pd.DataFrame, pd.DataFrame]:
    """UCI transaction log -> (daily demand table of the top-N products in ``country``, holiday calendar).

    Demand is the platform's (:func:`ops.uci_demand.daily_demand`: the ``demand_daily`` view, units sold less the
    units of orders cancelled the same day, per the replay's product ids); top-N by that demand over the whole
    slice. Returns (DataFrame date, store_id, product_id, units, price; DataFrame date, holiday).
    Raises FileNotFoundError: the folder lacks transactions.csv.gz or calendar_uk.csv.
    """
    from ops.uci_demand import daily_demand
    from producers.replay import load_transactions

    folder = Path(folder)
    cal_file = folder / "calendar_uk.csv"
    if not cal_file.exists():
        raise FileNotFoundError(f"{cal_file} not found (UCI Online Retail slice)")
    tx = load_transactions(folder / "transactions.csv.gz")
    d = daily_demand(tx[tx["country"] == country])
    top = d.groupby("product_id")["units"].sum().nlargest(top_n).index
    daily = d.loc[d["product_id"].isin(top), ["date", "store_id", "product_id", "units", "price"]]
    cal = pd.read_csv(cal_file, parse_dates=["date"])
    calendar = pd.DataFrame({"date": cal["date"], "holiday": cal["is_bank_holiday_eng"].astype("int8")})
    return daily.reset_index(drop=True), calendar


def model_table(metrics: pd.DataFrame) -> dict:
    """Metrics table -> {model: {h: {wape, mae, rmse, rmsse, bias, coverage80, coverage95}}} (h "0" = pooled)."""
    keys = ("wape", "mae", "rmse", "rmsse", "bias", "coverage80", "coverage95")
    out = {}
    for model, mm in metrics.groupby("model", sort=False):
        out[model] = {str(int(r["h"])): {k: (None if pd.isna(r[k]) else round(float(r[k]), 4)) for k in keys}
                      for _, r in mm.sort_values("h").iterrows()}
    return out


def comparison(metrics: pd.DataFrame, goal: float = 0.10) -> dict:
    """GBT vs the best baseline (lowest pooled WAPE) and vs the trailing 28-day mean: relative reductions."""
    from ml.forecast import BASELINES

    allm = metrics[metrics["h"] == 0].set_index("model")
    base = [b for b in BASELINES if b in allm.index]
    best = min(base, key=lambda b: allm.loc[b, "wape"])
    g = allm.loc["gbt"]

    def red(ref: str) -> dict:
        r = allm.loc[ref]
        return {"wape_reduction": round(1 - float(g["wape"]) / float(r["wape"]), 4),
                "rmsse_reduction": round(1 - float(g["rmsse"]) / float(r["rmsse"]), 4)}

    vs_best = red(best)
    best_rmsse = min(base, key=lambda b: allm.loc[b, "rmsse"])
    return {"best_baseline_wape": best, "best_baseline_rmsse": best_rmsse, "vs_best_baseline": vs_best,
            "vs_best_rmsse_baseline": red(best_rmsse),
            "vs_trailing_mean_28": red("trailing_mean_28") if "trailing_mean_28" in allm.index else None,
            "goal_reduction": goal,
            "goal_met": bool(vs_best["wape_reduction"] >= goal and red(best_rmsse)["rmsse_reduction"] >= goal)}


def hindsight_reference(bt, features: pd.DataFrame) -> dict:
    """Pooled WAPE / RMSSE of a clairvoyant flat forecast: each (series, origin) gets the mean of its own actual
    demand over the horizon. Not a model (it reads the future): it shows how far knowing the exact level alone
    would get below the trailing mean, i.e. how much of a goal needs within-horizon patterns (weekday, events)."""
    p = bt.predictions.copy()
    p["hindsight_flat_mean"] = p.groupby(["store_id", "product_id", "origin"])["y"].transform("mean")
    return _pooled(p, "hindsight_flat_mean", features, bt.origins)


def _pooled(pred: pd.DataFrame, column: str, features: pd.DataFrame, origins) -> dict:
    """Pooled (all horizons) WAPE / RMSSE of the forecast ``column`` of backtest rows, M5-scaled at each origin."""
    from ml.forecast import metrics_table, naive_scales

    sc = pd.concat([naive_scales(features, o).reset_index().assign(origin=o) for o in origins], ignore_index=True)
    r = metrics_table(pred, sc, [column]).query("h == 0").iloc[0]
    return {"wape": round(float(r["wape"]), 4), "rmsse": round(float(r["rmsse"]), 4)}


def hindsight_weekday_reference(bt, features: pd.DataFrame, weeks: int = 52) -> dict:
    """Pooled WAPE / RMSSE of a clairvoyant level with a known weekly shape: each (series, origin) gets the mean
    of its actual demand over the horizon times its weekday index from the ``weeks`` weeks up to the origin
    (mean on that weekday / overall mean; 1 when the series did not sell). Only the level reads the future:
    the gap to :func:`hindsight_reference` is what the weekday pattern is worth once the level is known."""
    from ml.features import KEYS

    p = bt.predictions.copy()
    p["dow"] = p["date"].dt.dayofweek
    idx = []
    for o in bt.origins:
        f = features[(features["date"] <= o) & (features["date"] > o - pd.Timedelta(days=7 * weeks))
                     & features["units"].notna()]
        f = f.assign(dow=f["date"].dt.dayofweek)
        wd = f.groupby(KEYS + ["dow"], observed=True)["units"].mean().rename("wd").reset_index()
        wd = wd.merge(f.groupby(KEYS, observed=True)["units"].mean().rename("all").reset_index(), on=KEYS)
        wd["index"] = np.where(wd["all"] > 0, wd["wd"] / wd["all"].where(wd["all"] > 0, 1.0), 1.0)
        idx.append(wd[KEYS + ["dow", "index"]].assign(origin=o))
    p = p.merge(pd.concat(idx, ignore_index=True), on=KEYS + ["origin", "dow"], how="left")
    p["hindsight_mean_x_weekday"] = (p.groupby(KEYS + ["origin"])["y"].transform("mean")
                                     * p["index"].fillna(1.0))
    return _pooled(p, "hindsight_mean_x_weekday", features, bt.origins)


def safety_stock_service(bt, lead_times=(3, 7), service_level: float = 0.95) -> dict:
    """Cycle service level the reorder step's safety stock reaches on the backtest, leave-one-origin-out, per
    model and lead time L (days): for each origin, the interval bounds and lead-time sigmas are calibrated on the
    other origins (:func:`ml.forecast.interval_table`); per (series, origin) the reorder point is ROP = d_bar * L
    + z * sigma_d * sqrt(L) from the reorder step's own functions (:func:`ml.optimize.inputs_from_forecast`,
    :func:`ml.optimize.safety_stock`, :func:`ml.optimize.reorder_point`; d_bar = mean point forecast over the
    horizon, z = Phi^-1(service_level)), with sigma_d either from the 80 % intervals (``interval``: the forecasts
    without lead_sigma: the mean daily (upper80 - lower80) / 2.563) or from the lead-time total's error spread
    (``lead_time``: lead_sigma(L) / sqrt(L), :func:`ml.forecast.lead_time_sigma`) or from that total's empirical
    error quantile at the service level (``empirical``: the reorder step's choice, SS = q(E_L),
    :func:`ml.forecast.lead_time_quantiles`). A cycle is served when the demand over days 1..L is <= ROP. An
    inactive series (``inactive``, :func:`ml.forecast.inactive_series`) gets no safety stock and ROP 0, as the
    reorder step orders nothing for it with stock on hand (the backtest has no stock: the out-of-stock restock,
    order_bound ``inactive_out_of_stock``, is not modelled); until 2026-12-07 the bench planned their safety stock.

    Returns:
        {model: {"L=<days>": {method: {"service_level": share of cycles served, "mean_safety_stock": units}},
        "cycles": n}}, the target under "target".
    """
    from ml.forecast import apply_intervals, interval_table
    from ml.optimize import inputs_from_forecast, reorder_point, safety_stock

    pred = bt.predictions
    keys = ["store_id", "product_id"]   # one origin at a time
    out: dict = {"target": service_level}
    for m in bt.models:
        res: dict = {}
        for L in lead_times:
            methods = ("interval", "lead_time", "empirical")
            hits: dict[str, list] = {k: [] for k in methods}
            ss: dict[str, list] = {k: [] for k in methods}
            for o in bt.origins:
                cal, test = pred[pred["origin"] != o], pred[pred["origin"] == o]
                if cal.empty or test.empty:
                    continue
                t = apply_intervals(test, interval_table(cal, m), m).assign(yhat=lambda x: x[m])
                first = t[t["h"] <= L].groupby(keys).agg(demand=("y", "sum"), days=("h", "size"))
                for method, rows, level in (("interval", t.drop(columns="lead_sigma"), None),
                                            ("lead_time", t, None), ("empirical", t, service_level)):
                    # the reorder step's own inputs and formulas (ml.pipeline.optimise_stock)
                    per = inputs_from_forecast(rows, lead_time_days=L, service_level=level)
                    per = per.set_index(keys).join(first, how="inner")
                    per = per[per["days"] == L]
                    safety = safety_stock(per["sigma_d"].to_numpy(float), L, service_level)
                    rop = reorder_point(per["mean_demand"].to_numpy(float), L, safety)
                    if "inactive" in per.columns:   # production orders nothing for them (stock on hand assumed)
                        off = per["inactive"].astype("boolean").fillna(False).to_numpy(bool)
                        safety, rop = np.where(off, 0.0, safety), np.where(off, 0.0, rop)
                    hits[method] += (per["demand"].to_numpy() <= rop).tolist()
                    ss[method] += np.asarray(safety).tolist()
            res[f"L={L}"] = {k: {"service_level": round(float(np.mean(v)), 4) if v else None,
                                 "mean_safety_stock": round(float(np.nanmean(ss[k])), 3) if v else None}
                             for k, v in hits.items()}
            res[f"L={L}"]["cycles"] = len(hits["interval"])
        out[m] = res
    return out


def run_dataset(spark, name: str, daily: pd.DataFrame, calendar: pd.DataFrame, cfg: ForecastConfig,
                default_country: str | None) -> dict:
    """Features + backtest (GBT and baselines) + final fit of one dataset; returns its JSON-able report section."""
    t0 = time.perf_counter()
    res = train_and_evaluate(spark, daily, cfg, calendar=calendar, default_country=default_country,
                             log=lambda m: print(f"[{name}] {m}", flush=True))
    total = time.perf_counter() - t0
    bt = res["backtest"]
    m = bt.metrics
    feats = res["features"]
    pooled = m[m["h"] == 0].set_index("model")[["wape", "mae", "rmse", "rmsse", "bias", "coverage80", "coverage95"]]
    return {
        "config": json.loads(cfg.to_json()),
        "series": int(feats.groupby(["store_id", "product_id"]).ngroups),
        "daily_rows": int(feats["units"].notna().sum()),
        "date_range": [str(feats.loc[feats["units"].notna(), "date"].min().date()),
                       str(feats.loc[feats["units"].notna(), "date"].max().date())],
        "backtest_origins": [str(o.date()) for o in bt.origins],
        "backtest_train_rows": bt.train_rows,
        "backtest_test_rows": int(len(bt.predictions)),
        "training_seconds": {
            "gbt_backtest_fits": [round(x, 1) for x in bt.fit_seconds],
            "gbt_final_fit": round(res["fit_seconds"], 1),
            "statsforecast_all_origins": round(bt.baseline_seconds.get("statsforecast", 0.0), 1),
            "backtest_total": round(res["backtest_seconds"], 1),
        },
        "final_train_rows": int(res["train_rows"]),
        "total_seconds": round(total, 1),
        "pooled": {k: {c: (None if pd.isna(v) else round(float(v), 4)) for c, v in r.items()}
                   for k, r in pooled.iterrows()},
        "metrics": model_table(m),
        "comparison": comparison(m),
        "reference_hindsight_flat_mean": hindsight_reference(bt, feats),
        "reference_hindsight_mean_x_weekday": hindsight_weekday_reference(bt, feats),
        "champion_selection": {k: v for k, v in res["selection"].items() if k in ("champion", "best_baseline", "reason")},
        "safety_stock_service": safety_stock_service(bt),
    }


def forecast_goals(report: dict) -> list[dict]:
    """The report's goals (:func:`ops.goals.goal`), two per dataset of ``report["datasets"]``: the GBT's pooled WAPE
    reduction against the baseline with the lowest WAPE, and its RMSSE reduction against the baseline with the
    lowest RMSSE (fractions, ``1 - gbt / baseline``: 0.071 is 7.1 % lower), each >= the comparison's
    ``goal_reduction`` (0.10)."""
    out = []
    for name, sec in report["datasets"].items():
        c = sec["comparison"]
        target = c["goal_reduction"]
        out.append(goal(f"{name}: GBT WAPE >= {target:.0%} below {c['best_baseline_wape']}",
                        c["vs_best_baseline"]["wape_reduction"], target))
        out.append(goal(f"{name}: GBT RMSSE >= {target:.0%} below {c['best_baseline_rmsse']}",
                        c["vs_best_rmsse_baseline"]["rmsse_reduction"], target))
    return out


app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])


@app.command()
def main(out: Path = typer.Option(REPO_ROOT / "reports" / "bench-forecast.json", help="JSON report path."),
         data: Path = typer.Option(DEFAULT_DATA, help="Folder holding m5_walmart_tiny/ and uci_online_retail/."),
         uci_top: int = typer.Option(100, help="UCI: number of top UK SKUs."),
         horizon: int = typer.Option(28, help="M5: forecast horizon in days (the M5 protocol: 28)."),
         n_origins: int = typer.Option(6, help="M5: backtest origins."),
         origin_step_days: int = typer.Option(61, help="M5: days between origins (6 x 61: the origins span the last year; not a multiple of 7)."),
         uci_horizon: int = typer.Option(14, help="UCI: horizon (one year of data)."),
         uci_n_origins: int = typer.Option(4, help="UCI: backtest origins."),
         uci_origin_step_days: int = typer.Option(30, help="UCI: days between origins."),
         train_window_days: int = typer.Option(365, help="Training window (target days)."),
         max_iter: int = typer.Option(ForecastConfig.max_iter, help="GBT trees."),
         max_depth: int = typer.Option(ForecastConfig.max_depth, help="GBT depth."),
         seed: int = typer.Option(ForecastConfig.seed, help="Seed of the GBT and of its seeded samples (horizon "
                                  "per target day, row cap, backtest series); the baselines ignore it."),
         m5_prices_at_origin: bool = typer.Option(
             False, "--m5-prices-at-origin", help="M5: price covariates as known at the origin, as for the platform's "
             "price paid, instead of M5's sell prices of the target day (published for the horizon in M5)."),
         datasets: str = typer.Option("m5,uci", help="Comma list of datasets to run.")) -> None:
    """Run the benchmark and write the JSON report (with its goals, :func:`forecast_goals`, the verdict and the
    missed goals); exit 1 afterwards when a goal is missed."""
    cfg = ForecastConfig(horizon=horizon, n_origins=n_origins, origin_step_days=origin_step_days,
                         train_window_days=train_window_days, max_iter=max_iter, max_depth=max_depth,
                         seed=seed, stats_jobs=-1)
    spark = get_spark("bench-forecast", shuffle_partitions=cfg.shuffle_partitions)
    report = {"generated_at": pd.Timestamp.now(tz="UTC").isoformat(), "spark_master": spark.sparkContext.master,
              "cores": os.cpu_count(), "python": platform.python_version(),
              "metrics_note": "h=0 pools horizons; WAPE=sum|e|/sum y; RMSSE per series scaled by the in-sample "
                              "one-step naive MSE from the series' first non-zero sale (M5), unweighted mean over "
                              "series; coverage leave-one-origin-out of split-conformal intervals per (h, level "
                              "bucket)", "datasets": {}}
    try:
        names = [x.strip() for x in datasets.split(",") if x.strip()]
        if "m5" in names:
            daily, cal = load_m5(data / "m5_walmart_tiny")
            m5cfg = replace(cfg, prices_known_ahead=not m5_prices_at_origin)
            report["datasets"]["m5_walmart_tiny"] = run_dataset(spark, "m5", daily, cal, m5cfg, default_country=None)
            on_sale = daily[daily["price"].notna() | (daily["units"] > 0)]
            labels = parse_m5_labels(data / "m5_walmart_tiny" / "README.md")
            report["slow_moving_m5"] = {"against_readme_labels": evaluate_against_labels(on_sale, labels),
                                        "holdout_stability_182d": stability(on_sale, window_days=182)}
        if "uci" in names:
            ucfg = replace(cfg, horizon=uci_horizon, n_origins=uci_n_origins, origin_step_days=uci_origin_step_days)
            daily, cal = load_uci(data / "uci_online_retail", top_n=uci_top)
            report["datasets"]["uci_online_retail_uk_top%d" % uci_top] = run_dataset(
                spark, "uci", daily, cal, ucfg, default_country=None)
    finally:
        spark.stop()
    report["goals"] = forecast_goals(report)
    judge(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for name, sec in report["datasets"].items():
        print(f"{name} (h 1..{sec['config']['horizon']}, {len(sec['backtest_origins'])} origins): {sec['total_seconds']} s")
        for model, r in sec["pooled"].items():
            print(f"  {model:18s} WAPE {r['wape']:.4f} RMSSE {r['rmsse']:.4f} bias {r['bias']:+.4f} "
                  f"coverage80 {r['coverage80']} coverage95 {r['coverage95']}")
        c = sec["comparison"]
        print(f"  GBT vs best baseline ({c['best_baseline_wape']}): WAPE {-100 * c['vs_best_baseline']['wape_reduction']:+.1f} %, "
              f"vs {c['best_baseline_rmsse']} RMSSE {-100 * c['vs_best_rmsse_baseline']['rmsse_reduction']:+.1f} %; "
              f"champion {sec['champion_selection']['champion']}")
    print(f"verdict {report['verdict']}; report: {out}")
    exit_on_missed(report)


if __name__ == "__main__":
    app()
