"""What the order cover cap (``ORDER_MAX_COVER_DAYS``) changes on the real UCI log, without services.

The UCI transaction log (``../shared/data/uci_online_retail/transactions.csv.gz``) of ``first`` .. ``last`` goes
through :class:`producers.replay.Replay` (dates kept): its simulated closing stock per store x SKU (the last
``new_quantity``) and its product master (unit cost, shelf life, storage capacity = the maximum over stores, as
``ml.pipeline.load_inventory`` reads ``dim_product``). Demand d_bar per store x SKU is the mean of the platform's
daily demand (:func:`ops.uci_demand.daily_demand`: the ``demand_daily`` view's units sold less orders cancelled the
same day, 0 on days without a line) over the ``window`` days to ``last`` and sigma_d its standard deviation: a
reconstruction standing in for the nightly forecast and its error, which need the services (until the review of
2026-12-07 d_bar netted every return of the window: 978 orders, 85,870 units before the cap, against the services
run's 586 orders, 38,259 units). Then :func:`ml.optimize.recommend`
with the settings' lead time, service level and costs, once without the cap and once with
``ORDER_MAX_COVER_DAYS``; cover of an order = reorder_qty / d_bar in days.

Output (stdout and ``reports/order-cover.json``): orders, units, orders above 180 / 365 / 730 days of demand, the
longest cover in years, the orders the cap cut and their units before / after.

    python -m ops.order_cover [--data PATH] [--first 2010-11-22] [--last 2010-12-23] [--window 28]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from core.settings import REPO_ROOT, get_settings

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "uci_online_retail" / "transactions.csv.gz"


def order_inputs(data: Path, first: str, last: str, window: int) -> pd.DataFrame:
    """recommend() inputs per store x SKU with a sale or return in the ``window`` days to ``last``.

    Returns columns store_id, product_id, mean_demand, sigma_d (units/day; the platform's daily demand, above),
    stock (units), unit_cost (unit price when the cost is 0), shelf_life_days, storage_capacity; rows without a
    positive cost dropped.
    """
    from ops.uci_demand import daily_demand
    from producers.replay import Replay, ReplayConfig, load_transactions, store_for_country

    df = load_transactions(data)
    day = df["invoice_ts"].str.slice(0, 10)
    r = Replay(df[(day >= first) & (day <= last)].reset_index(drop=True), ReplayConfig(keep_dates=True))
    stock = {}
    for et, rec in r.events():
        if et == "inventory_update":
            stock[(rec["store_id"], rec["product_id"])] = rec["new_quantity"]
    days = pd.date_range(end=pd.Timestamp(last), periods=window, freq="D")
    d = daily_demand(df[(day >= str(days[0].date())) & (day <= last)].reset_index(drop=True))
    d["store_id"] = d["store_id"].map(lambda c: store_for_country(c)[0])
    daily = (d.groupby(["store_id", "product_id", "date"])["units"].sum().unstack(fill_value=0)
             .reindex(columns=days, fill_value=0))
    out = pd.DataFrame({"store_id": daily.index.get_level_values(0), "product_id": daily.index.get_level_values(1),
                        "mean_demand": daily.mean(axis=1).clip(lower=0).to_numpy(),
                        "sigma_d": daily.std(axis=1).to_numpy()})
    out["stock"] = [float(stock.get(k, 0)) for k in zip(out["store_id"], out["product_id"])]
    p = r.products.set_index("product_id")
    cost = out["product_id"].map(p["unit_cost"])
    out["unit_cost"] = cost.where(cost > 0, out["product_id"].map(p["unit_price"]))
    out["shelf_life_days"] = out["product_id"].map(p["shelf_life_days"]).astype(float)
    out["storage_capacity"] = out["product_id"].map(p["storage_capacity"]).astype(float)
    return out[out["unit_cost"] > 0].reset_index(drop=True)


def summary(rec: pd.DataFrame) -> dict:
    """Orders (reorder_qty > 0), their units and cover (reorder_qty / mean_demand, days) of a recommend() frame."""
    o = rec[rec["reorder_qty"] > 0]
    cover = np.where(o["mean_demand"] > 0, o["reorder_qty"] / o["mean_demand"].where(o["mean_demand"] > 0), np.nan)
    return {"orders": int(len(o)), "units": float(o["reorder_qty"].sum()),
            **{f"orders_over_{n}_days": int(np.nansum(cover > n)) for n in (180, 365, 730)},
            "units_over_365_days": float(o["reorder_qty"][cover > 365].sum()),
            "longest_cover_years": round(float(np.nanmax(cover)) / 365, 2) if np.isfinite(cover).any() else 0.0}


def main(data: Path = typer.Option(DEFAULT_DATA), first: str = "2010-11-22", last: str = "2010-12-23",
         window: int = 28, out: Path = typer.Option(REPO_ROOT / "reports" / "order-cover.json")) -> None:
    """Print and write the before / after comparison (module docstring)."""
    from ml.optimize import recommend

    s = get_settings()
    inp = order_inputs(data, first, last, window)
    kw = dict(lead_time_days=s.lead_time_days, service_level=s.service_level, order_cost=s.order_cost,
              holding_cost_rate=s.holding_cost_rate)
    a, b = recommend(inp, **kw), recommend(inp, max_cover_days=s.order_max_cover_days, **kw)
    cut = a["reorder_qty"] != b["reorder_qty"]
    res = {"data": str(data), "first": first, "last": last, "window_days": window, "series": int(len(inp)),
           "max_cover_days": s.order_max_cover_days, "before": summary(a), "after": summary(b),
           "orders_cut": int(cut.sum()), "cut_units_before": float(a["reorder_qty"][cut].sum()),
           "cut_units_after": float(b["reorder_qty"][cut].sum()),
           "reorder_needed_unchanged": bool((a["reorder_needed"] == b["reorder_needed"]).all())}
    text = json.dumps(res, indent=2)
    print(text)
    out.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
