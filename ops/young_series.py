"""How much a trailing mean counted from each series' first sale over-forecasts young series, on the real UCI log.

The feature table starts each store x SKU series at its first sale (M5's convention), so the trailing 28-day mean
of a series first sold fewer than 28 days ago averages only the days since that sale, which began with a sale. This
measures that trailing mean against the same sum over all 28 days (days before the first sale as zero demand) on
the platform's daily demand of ``transactions.csv.gz`` of ``../shared/data/uci_online_retail`` (country = store;
:mod:`ops.uci_demand`: the replay's products, units sold less orders cancelled the same day): at origins 28 days
apart, each series with demand in the 28 days up to the origin is forecast flat for the next ``horizon`` days.

Output (stdout and ``reports/young-series.json``): per method (``first_sale``, ``padded``) and series group
(``all`` active series, ``young``: first sold fewer than 28 days before the origin) the series-origins ``n``,
WAPE = sum |y - f| / sum y and bias = sum f / sum y - 1 (Hyndman & Athanasopoulos 2021, "Forecasting: principles
and practice", 3rd ed., section 5.8).

    python -m ops.young_series [--data PATH] [--first 2010-09-01] [--last 2011-08-17] [--horizon 14]
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


def daily_matrix(path: Path) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """(demand, shape (series, days), float64 units; the calendar days) of a UCI transaction log: one row per
    country x product with demand, every day from the first to the last day with demand, 0 where there is none.
    Demand as the platform reads it (:func:`ops.uci_demand.daily_demand`).

    Raises:
        FileNotFoundError: no such file. ValueError: a column of the UCI format is missing.
    """
    from ops.uci_demand import daily_demand
    from producers.replay import load_transactions

    d = daily_demand(load_transactions(path))
    d = d[d["units"] > 0]
    days = pd.date_range(d["date"].min(), d["date"].max(), freq="D")
    piv = d.pivot_table(index=["store_id", "product_id"], columns="date", values="units", aggfunc="sum",
                        fill_value=0).reindex(columns=days, fill_value=0)
    return piv.to_numpy(dtype="float64"), days


def compare(units: np.ndarray, days: pd.DatetimeIndex, origins: pd.DatetimeIndex, horizon: int) -> pd.DataFrame:
    """WAPE and bias of the two trailing 28-day means per series group, pooled over ``origins``.

    Args:
        units: (series, days) daily units; days: its calendar; origins: last days of history (each needs 27 days
            before it and ``horizon`` after it inside ``days``); horizon: days forecast after each origin.
    Returns:
        DataFrame indexed by (series, method) with columns n, wape, bias.
    Raises:
        KeyError: an origin outside ``days``. ValueError: an origin too close to either end.
    """
    first = (units > 0).argmax(axis=1)
    rows = []
    for origin in origins:
        o = days.get_loc(origin)
        if o < WINDOW - 1 or o + horizon >= len(days):
            raise ValueError(f"origin {origin.date()} needs {WINDOW - 1} days before and {horizon} after it")
        hist = units[:, o - WINDOW + 1:o + 1].sum(axis=1)
        active = hist > 0
        since = o - first + 1                         # days from the first sale to the origin, inclusive
        young = active & (since < WINDOW)
        future = units[:, o + 1:o + 1 + horizon]
        means = {"first_sale": hist / np.clip(since, 1, WINDOW), "padded": hist / WINDOW}
        for method, f in means.items():
            for group, m in (("all", active), ("young", young)):
                y, fc = future[m], np.repeat(f[m][:, None], horizon, axis=1)
                rows.append({"series": group, "method": method, "n": int(m.sum()), "abs": float(np.abs(y - fc).sum()),
                             "y": float(y.sum()), "f": float(fc.sum())})
    g = pd.DataFrame(rows).groupby(["series", "method"]).sum()
    g["wape"] = g["abs"] / g["y"]
    g["bias"] = g["f"] / g["y"] - 1
    return g[["n", "wape", "bias"]]


def main(data: Path = typer.Option(DEFAULT_DATA, help="UCI transactions.csv(.gz)."),
         first: str = typer.Option("2010-09-01", help="First origin (last day of history)."),
         last: str = typer.Option("2011-08-17", help="No origin after this day."),
         horizon: int = typer.Option(14, min=1, help="Days forecast after each origin."),
         out: Path = typer.Option(REPO_ROOT / "reports" / "young-series.json", help="JSON report.")) -> None:
    """Print and write the comparison (see the module docstring)."""
    units, days = daily_matrix(data)
    origins = pd.date_range(first, last, freq=f"{WINDOW}D")
    table = compare(units, days, origins, horizon)
    report = {"data": str(data), "origins": [str(o.date()) for o in origins], "horizon": horizon,
              "window": WINDOW, "series": int(units.shape[0]),
              "results": [{"series": s, "method": m, **{k: (int(v) if k == "n" else round(float(v), 4))
                                                          for k, v in r.items()}}
                          for (s, m), r in table.iterrows()]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(table.round(4).to_string())


if __name__ == "__main__":
    typer.run(main)
