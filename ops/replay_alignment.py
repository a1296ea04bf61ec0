"""What a replay shift that splits trading days over two dates does to the demo's forecasts, on the real UCI log.

The replay (``producers.replay``) moves the log's instants by one constant. Shifted by whole days (``align="day"``,
the default) each trading day stays one date; shifted to the exact second before a start time (``align="none"``,
the demo's behaviour before 2026-12-05), a UTC day holds the end of one trading day and the start of the next,
wherever the start time puts the cut. This aggregates one month of ``transactions.csv.gz`` to the platform's daily
demand per country x product (:mod:`ops.uci_demand`: the replay's lines and products, units sold less orders
cancelled the same date, through ClickHouse's ``demand_daily`` view) on the dates of each shift, then runs the
platform's backtest on it (pandas features, the demo's training settings: 14 days ahead, 2 origins of which the
ones with history are scored, a 90-day training window, 20 trees) and reports WAPE / RMSSE / bias per model and
shift (Hyndman & Athanasopoulos 2021, "Forecasting: principles and practice", 3rd ed., section 5.8; RMSSE as M5).

Output (stdout and ``reports/replay-alignment.json``)::

    python -m ops.replay_alignment [--month 2010-11] [--shift 0 --shift 12 ...] [--seed 42 ...] [--data PATH]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from core.settings import REPO_ROOT

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "uci_online_retail"
#: the demo's training settings (``ops.demo.DEMO_TRAINING``) for a 14-day horizon
DEMO_CONFIG = {"horizon": 14, "n_origins": 2, "train_window_days": 90, "max_iter": 20}


def daily_demand(tx: pd.DataFrame, shift_hours: float) -> pd.DataFrame:
    """The platform's daily demand per country x product after moving every line's UTC instant by ``shift_hours``.

    Args:
        tx: UCI transaction lines (:func:`producers.replay.load_transactions` columns, text as str).
        shift_hours: hours added to each line's instant (Europe/London local time read as UTC, see
            :func:`producers.replay.london_to_utc_ms`) before its date is taken; lines without an instant are
            left out.
    Returns:
        DataFrame date (datetime64, UTC date after the shift), store_id (country), product_id (the replay's
        product id), units (float64: units sold less orders cancelled the same date), price (revenue / units sold,
        GBP): :func:`ops.uci_demand.daily_demand` on the shifted dates, one row per date x country x product with a
        sale or return line as the replay classifies them.
    """
    from ops.uci_demand import daily_demand as platform_demand
    from producers.replay import london_to_utc_ms

    ms = london_to_utc_ms(tx["invoice_ts"], tx.attrs.get("invoice_ts_format"))
    dates = (pd.to_datetime(np.where(ms >= 0, ms, np.nan), unit="ms") + pd.Timedelta(hours=shift_hours)).normalize()
    d = platform_demand(tx, dates)
    return d[["date", "store_id", "product_id", "units", "price"]]


def run(data: Path, month: str, shifts: list[float], seeds: list[int] = (42,), spark=None) -> dict:
    """Backtest metrics of every model on ``month`` (``YYYY-MM``) of the UCI log for each shift (hours) and GBT seed.

    The GBT's seed (its row subsampling) moves its scores on one month of this log by several points, so each
    shift is backtested with every seed of ``seeds``; the baselines do not depend on it.

    Returns {"month", "lines", "config", "seeds", "shifts": {"<hours>": {"series", "points", "origins",
    "models": {model: {"wape", "rmsse", "bias"} (mean over the seeds)}, "gbt_by_seed": {seed: {...}}}}}.
    Raises FileNotFoundError (no log) and ml.forecast.InsufficientHistory (too short).
    """
    from ml.features import build_daily_features
    from ml.forecast import ForecastConfig, backtest, get_spark
    from producers.replay import load_transactions

    tx = load_transactions(Path(data) / "transactions.csv.gz")
    start = pd.Timestamp(f"{month}-01")
    tx = tx[(tx["invoice_ts"] >= str(start)) & (tx["invoice_ts"] < str(start + pd.offsets.MonthBegin(1)))]
    cal = pd.read_csv(Path(data) / "calendar_uk.csv", parse_dates=["date"])
    calendar = pd.DataFrame({"date": cal["date"], "holiday": cal["is_bank_holiday_eng"].astype("int8")})
    own = spark is None
    spark = spark or get_spark("replay-alignment")
    out = {"month": month, "lines": int(len(tx)), "config": DEMO_CONFIG, "seeds": list(seeds), "shifts": {}}
    cols = ("wape", "rmsse", "bias")
    try:
        for h in shifts:
            daily = daily_demand(tx, h)
            feats = build_daily_features(daily, calendar=calendar, default_country=None,
                                         extend_days=DEMO_CONFIG["horizon"])
            runs = {}
            for sd in seeds:
                bt = backtest(spark, feats, ForecastConfig(**DEMO_CONFIG, seed=sd),
                              log=lambda m: print(f"[shift {h:g} h, seed {sd}] {m}", flush=True))
                runs[sd] = bt.metrics[bt.metrics["h"] == 0].set_index("model")[list(cols)]
            mean = sum(runs.values()) / len(runs)
            out["shifts"][f"{h:g}"] = {
                "series": int(daily.groupby(["store_id", "product_id"]).ngroups), "points": int(len(bt.predictions)),
                "origins": [str(o.date()) for o in bt.origins],
                "models": {k: {c: round(float(r[c]), 4) for c in cols} for k, r in mean.iterrows()},
                "gbt_by_seed": {str(sd): {c: round(float(m.loc["gbt", c]), 4) for c in cols} for sd, m in runs.items()}}
            print(json.dumps({f"{h:g} h": out["shifts"][f"{h:g}"]["models"]}), flush=True)
    finally:
        if own:
            spark.stop()
    return out


def main(month: str = typer.Option("2010-11", help="Month of the log, YYYY-MM."),
         shift: list[float] = typer.Option([0.0, 24.0, 72.0, 12.0, 6.0], help="Hours to shift (repeatable)."),
         seed: list[int] = typer.Option([42, 1, 2], help="GBT seeds per shift (repeatable)."),
         data: Path = typer.Option(DEFAULT_DATA, help="Folder with transactions.csv.gz and calendar_uk.csv."),
         out: Path = typer.Option(REPO_ROOT / "reports" / "replay-alignment.json", help="JSON report path.")) -> None:
    """Backtest one month of the UCI log on whole-day and split-day dates; write the JSON report."""
    report = run(data, month, shift, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")


if __name__ == "__main__":
    typer.run(main)
