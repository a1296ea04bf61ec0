"""What netting same-day order cancellations out of demand changes, on the real UCI log, through ClickHouse's own view.

The UCI transaction log (``../shared/data/uci_online_retail/transactions.csv.gz``) goes through the platform's
``demand_daily`` view as :mod:`ops.uci_demand` does it (the replay's sale and return lines, country = store, the
replay's product ids, in a throwaway chDB database of a child process), which gives per day x store x SKU the units
sold and the units of orders cancelled the same day (see the view). Then at origins 28 days apart each
store x SKU with a line in the 28 days up to the origin is forecast flat for the next ``horizon`` days by its
trailing 28-day mean, computed from the units sold (``gross``) or from the units less the cancelled ones (``net``),
and scored against either as the truth: WAPE = sum |y - f| / sum y and bias = sum f / sum y - 1 (Hyndman &
Athanasopoulos 2021, "Forecasting: principles and practice", 3rd ed., section 5.8), over all of them and over those
with a cancellation in their 28 days.

Output (stdout and ``reports/cancelled-orders.json``): the cancelled lines and units, the largest ones, the scores.

    python -m ops.cancelled_orders [--data PATH] [--first 2010-09-01] [--last 2011-08-17] [--horizon 14]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from core.settings import REPO_ROOT

WINDOW = 28
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "uci_online_retail" / "transactions.csv.gz"


def compare(daily: pd.DataFrame, origins: pd.DatetimeIndex, horizon: int) -> pd.DataFrame:
    """Trailing 28-day mean from ``gross`` (units_sold) or ``net`` (units) history scored against either truth
    (see the module docstring). Returns rows (history, truth, series) with n (series-origins), wape, bias."""
    d = daily.assign(date=pd.to_datetime(daily["date_key"].astype(str), format="%Y%m%d"))
    key = pd.MultiIndex.from_frame(d[["store_key", "product_key"]])
    codes, uniq = pd.factorize(key)
    days = pd.date_range(d["date"].min(), d["date"].max(), freq="D")
    col = (d["date"] - days[0]).dt.days.to_numpy()
    shape = (len(uniq), len(days))
    mats = {}
    for name, c in (("gross", "units_sold"), ("net", "units"), ("cancelled", "units_cancelled"), ("lines", None)):
        m = np.zeros(shape)
        np.add.at(m, (codes, col), 1.0 if c is None else d[c].to_numpy(dtype="float64"))
        mats[name] = m
    acc: dict[tuple, list] = {}
    for o in origins:
        t = days.get_loc(o)
        hist = slice(t - WINDOW + 1, t + 1)
        active = mats["lines"][:, hist].sum(axis=1) > 0
        touched = active & (mats["cancelled"][:, hist].sum(axis=1) > 0)
        for group, sel in (("all", active), ("cancelled_in_window", touched)):
            for h in ("gross", "net"):
                f = mats[h][sel, hist].mean(axis=1)[:, None]
                for y_name in ("gross", "net"):
                    y = mats[y_name][sel, t + 1:t + 1 + horizon]
                    a = acc.setdefault((h, y_name, group), [0, 0.0, 0.0, 0.0])
                    a[0] += int(sel.sum())
                    a[1] += float(np.abs(y - f).sum())
                    a[2] += float(y.sum())
                    a[3] += float(f.sum() * y.shape[1])
    rows = [{"history": h, "truth": y, "series": g, "n": a[0], "wape": a[1] / a[2], "bias": a[3] / a[2] - 1}
            for (h, y, g), a in acc.items()]
    return pd.DataFrame(rows).set_index(["series", "truth", "history"]).sort_index()


def main(data: Path = typer.Option(DEFAULT_DATA, help="UCI transactions.csv(.gz)."),
         first: str = typer.Option("2010-09-01", help="First origin (last day of history)."),
         last: str = typer.Option("2011-08-17", help="No origin after this day."),
         horizon: int = typer.Option(14, min=1, help="Days forecast after each origin."),
         out: Path = typer.Option(REPO_ROOT / "reports" / "cancelled-orders.json", help="JSON report.")) -> None:
    """Print and write the comparison (see the module docstring)."""
    from ops.uci_demand import fact_lines, view_demand
    from producers.replay import load_transactions

    lines, _, _ = fact_lines(load_transactions(data))
    daily = view_demand(lines)
    origins = pd.date_range(first, last, freq=f"{WINDOW}D")
    table = compare(daily, origins, horizon)
    top = daily.nlargest(5, "units_cancelled")
    report = {
        "data": str(data), "origins": [str(o.date()) for o in origins], "horizon": horizon, "window": WINDOW,
        "fact_lines": len(lines), "units_sold": int(daily["units_sold"].sum()),
        "units_cancelled": int(daily["units_cancelled"].sum()),
        "series_days_with_cancellations": int((daily["units_cancelled"] > 0).sum()),
        "largest": [{"date_key": int(r.date_key), "units_sold": int(r.units_sold),
                     "units_cancelled": int(r.units_cancelled)} for r in top.itertuples()],
        "results": [{"series": s, "truth": y, "history": h, "n": int(r["n"]), "wape": round(float(r["wape"]), 4),
                     "bias": round(float(r["bias"]), 4)} for (s, y, h), r in table.iterrows()]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps({k: v for k, v in report.items() if k not in ("results", "origins")}, indent=1))
    typer.echo(table.round(4).to_string())


if __name__ == "__main__":
    typer.run(main)
