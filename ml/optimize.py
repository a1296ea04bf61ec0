"""Stock optimisation: safety stock, reorder point, economic order quantity, stock-out risk (pure).

Policy: continuous review (s, Q) — when the inventory position falls to the reorder point s = ROP, order
Q units (Silver, Pyke & Thomas, "Inventory and Production Management in Supply Chains", 4th ed., CRC
Press 2017, ch. 6; Chopra & Meindl, "Supply Chain Management: Strategy, Planning, and Operation", 6th
ed., Pearson 2016, ch. 12). Units: demand in units/day, lead time in days, costs in currency.

* Safety stock, fixed lead time:     SS = z * sigma_d * sqrt(L)
  with lead-time variability:        SS = z * sqrt(L * sigma_d^2 + d_bar^2 * sigma_L^2)
  (Chopra & Meindl eq. 12.13; Silver et al. sec. 6.10), z = Phi^-1(cycle service level).
* Reorder point:                     ROP = d_bar * L + SS                     (Chopra & Meindl eq. 12.5)
* Economic order quantity:           EOQ = sqrt(2 * D * S / H)               (Harris 1913, "How many parts
  to make at once", Factory 10(2); Silver et al. sec. 4.2), D annual demand, S cost per order,
  H = holding rate * unit cost per unit and year.
* Order quantity when IP <= ROP:     Q = max(EOQ, ROP - IP) rounded up to whole units, then capped at a
  maximum cover of C days of forecast demand unless the reorder point needs more:
  Q = min(Q, max(ceil(ROP - IP), floor(d_bar * C - IP))) (C = ORDER_MAX_COVER_DAYS, default 180; the EOQ's
  "time supply" bound, Silver, Pyke & Thomas 2017 ch. 4, e.g. at most ~12 months, and retail max-cover caps:
  the Harris EOQ of a cheap slow mover is years of demand; ROP - IP still wins: the position never stays below
  ROP because of the cap), then bounded by
  the free storage capacity left once what is on order arrives (capacity - IP) and by shelf life (no more
  than can sell before expiry: d_bar * shelf_life - IP), each bound rounded down to whole units, never
  negative; Q = 0 when IP > ROP. IP = stock + on order (inventory position); the nightly batch takes its own
  earlier recommendations within the lead time as placed orders, less the RESTOCK receipts since, first in first
  out (:func:`open_orders`, ml.pipeline.load_open_orders; ORDER_COUNT_OPEN_RECOMMENDATIONS).
* Order bound:                       which of these rules set Q (:func:`order_terms`): none, eoq, rop_gap,
  cover_cap, capacity, shelf_life; ``inactive`` / ``inactive_out_of_stock`` for a series that stopped selling
  (:func:`recommend`); ``inactive_restock_sent`` (Q = 0: the restock was already recommended in this silence,
  set by ml.pipeline.optimise_stock).
* Inactive series:                   no sale for more than max(56 days, 3 x its mean inter-demand interval)
  (:func:`ml.forecast.inactive_series`): its forecast is 0. With stock on hand (stock > 0) Q = 0, order_bound
  ``inactive`` (without the rule the safety stock of its level bucket alone made an order, and a statsforecast
  champion's Croston forecast the last demand rate, 2.00/day 110 days after the last sale: an EOQ order of 242
  units at stock 0). Out of stock (stock <= 0) its silence may be the empty shelf's (censored demand: no stock,
  no sale, so it would stay inactive and never be reordered; until 2026-12-07 a SKU selling 3/day out of stock
  for 57 days got 0 units): it is planned on its selling rate d_s (units sold / days from its first to its last
  sale, at least the rule's 56 days, ``selling_rate``; the forecast when unknown), restocked to the reorder point
  without an EOQ: ROP_s = d_s * L + SS with SS on sigma_s = max(sigma_d, sqrt(d_s)) (the Poisson floor: Poisson
  counts have variance = mean, Silver, Pyke & Thomas 2017 ch. 6; the level bucket's sigma_d is the near-zero
  sellers', e.g. 0.5/day, and a NaN sigma_d takes the floor: until 2026-12-07 NaN gave a NaN ROP and 0 units;
  reported as sigma_d), Q = ceil(ROP_s - IP) (then the capacity / shelf-life bounds), order_bound
  ``inactive_out_of_stock`` (also when Q = 0, e.g. an order is already on the way); safety_stock and
  reorder_point report ROP_s's terms, mean_demand stays the forecast (0). One lead time's demand at the old
  rate: a sale can happen and the series recover; a delisted SKU is a manager's call. The stock-out risk is HIGH.
* Reorder needed:                    Q > 0 (IP <= ROP but a bound leaves no room, or ROP = 0 with d_bar = 0,
  orders nothing and needs no reorder).
* Days until stock-out:              stock / d_bar (capped at 999); 0 when stock <= 0; 999 when d_bar = 0.
* Stock-out risk:                    HIGH when out of stock (stock <= 0: also with a zero forecast, which an
  empty shelf itself causes: censored sales; the stream's rule too) or when d_bar > 0 and stock <= d_bar * L
  (runs out before a replenishment ordered now can arrive; a stocked SKU expected to sell nothing cannot),
  MEDIUM when stock <= ROP (inside the safety-stock buffer), else LOW.

sigma_d should be the standard deviation of the *forecast error* per day (Silver et al. sec. 6.4). Here it is
the backtest's error spread of the demand total over the lead time expressed per day, lead_sigma(L) / sqrt(L)
(:func:`inputs_from_forecast`), or, for forecasts without it, derived from the 80 % prediction interval of the
forecast: sigma_d = (upper80 - lower80) / (2 * 1.2816).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from contracts import RISK_HIGH, RISK_LOW, RISK_MEDIUM

Z80 = float(norm.ppf(0.90))  # half-width of a central 80 % normal interval in sigmas (1.2816)
MAX_DAYS = 999.0


def z_value(service_level: float) -> float:
    """z = Phi^-1(service level) of the standard normal (cycle service level, e.g. 0.95 -> 1.6449).

    Raises:
        ValueError: service level outside (0, 1).
    """
    if not 0 < service_level < 1:
        raise ValueError(f"service level must be in (0, 1), got {service_level}")
    return float(norm.ppf(service_level))


def safety_stock(sigma_d, lead_time_days, service_level: float, mean_demand=0.0, sigma_lead_time=0.0):
    """Safety stock in units: z * sqrt(L * sigma_d^2 + d_bar^2 * sigma_L^2) (= z sigma_d sqrt(L) when sigma_L = 0).

    Args: sigma_d (units/day), lead_time_days L, service_level (cycle service level), mean_demand d_bar
    (units/day), sigma_lead_time sigma_L (days). Scalars or numpy arrays.
    Raises:
        ValueError: negative sigma or lead time.
    """
    sd, L = np.asarray(sigma_d, dtype=float), np.asarray(lead_time_days, dtype=float)
    if (sd < 0).any() or (L < 0).any() or np.any(np.asarray(sigma_lead_time) < 0):
        raise ValueError("sigma_d, lead time and sigma_lead_time must be >= 0")
    var = L * sd ** 2 + np.asarray(mean_demand, dtype=float) ** 2 * np.asarray(sigma_lead_time, dtype=float) ** 2
    out = z_value(service_level) * np.sqrt(var)
    return float(out) if out.ndim == 0 else out


def reorder_point(mean_demand, lead_time_days, safety):
    """ROP = d_bar * L + SS, in units."""
    out = np.asarray(mean_demand, dtype=float) * np.asarray(lead_time_days, dtype=float) + np.asarray(safety, dtype=float)
    return float(out) if out.ndim == 0 else out


def eoq(annual_demand, order_cost, holding_cost_per_unit_year):
    """EOQ = sqrt(2 D S / H) in units (Harris 1913). 0 when D = 0.

    Raises:
        ValueError: H <= 0 or S < 0 or D < 0.
    """
    D, S, H = (np.asarray(x, dtype=float) for x in (annual_demand, order_cost, holding_cost_per_unit_year))
    if (H <= 0).any() or (S < 0).any() or (D < 0).any():
        raise ValueError("EOQ needs annual demand >= 0, order cost >= 0 and holding cost > 0")
    out = np.sqrt(2.0 * D * S / H)
    return float(out) if out.ndim == 0 else out


def days_until_stockout(stock, mean_demand):
    """stock / d_bar in days (capped at 999); 0 when stock <= 0 (out of stock now, whatever the demand); 999 when
    demand is 0 and stock > 0."""
    st, d = np.asarray(stock, dtype=float), np.asarray(mean_demand, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(st <= 0, 0.0, np.where(d > 0, np.clip(st, 0, None) / d, MAX_DAYS))
    out = np.minimum(out, MAX_DAYS)
    return float(out) if out.ndim == 0 else out


def stockout_risk(stock, mean_demand, lead_time_days, rop):
    """Stock-out risk class: 'HIGH' when stock <= 0 or (d_bar > 0 and stock <= d_bar * L), 'MEDIUM' when
    stock <= ROP, else 'LOW'.

    Args: stock (units on hand), mean_demand d_bar (units/day), lead_time_days L (days), rop (units; Chopra &
    Meindl eq. 12.5). Scalars or numpy arrays of one shape. A stocked SKU with d_bar <= 0 is never HIGH: nothing
    is expected to sell before a replenishment arrives (its days until stock-out are 999); with stock <= ROP it
    is MEDIUM. An out-of-stock SKU is HIGH whatever its forecast (a zero forecast may be the empty shelf's own
    censored sales), as in the stream's rule. Returns a str for scalars, else an array of str.
    """
    st, d = np.asarray(stock, dtype=float), np.asarray(mean_demand, dtype=float)
    high = (st <= 0) | ((d > 0) & (st <= d * np.asarray(lead_time_days, dtype=float)))
    out = np.where(high, RISK_HIGH, np.where(st <= np.asarray(rop, dtype=float), RISK_MEDIUM, RISK_LOW))
    return str(out) if out.ndim == 0 else out


#: order_bound values: which rule set reorder_qty (:func:`order_terms`)
ORDER_BOUNDS = ("none", "eoq", "rop_gap", "cover_cap", "capacity", "shelf_life", "inactive",
                "inactive_out_of_stock", "inactive_restock_sent")


def order_terms(stock, on_order, rop, eoq_units, mean_demand, storage_capacity=None, shelf_life_days=None,
                max_cover_days=None):
    """Units to order now and the rule that set them, as (quantity, bound) arrays (pure, vectorized).

    quantity: whole units >= 0 (never -0.0), the module docstring's order-quantity line: 0 when the inventory
    position IP = stock + on_order > ROP; else max(EOQ, ROP - IP) rounded up, capped at
    ``max(ceil(ROP - IP), floor(mean_demand * max_cover_days - IP))`` (no more than ``max_cover_days`` of forecast
    demand counting what is on hand and on order, unless reaching ROP takes more; Silver, Pyke & Thomas 2017 ch. 4,
    the EOQ's time-supply bound), then bounded by the free space ``storage_capacity - IP`` and by what can sell
    before expiry ``mean_demand * shelf_life_days - IP`` (each rounded down; None/NaN = no bound), then clipped
    at 0. The physical bounds (capacity, shelf life) apply after the cover cap, so they still win over ROP - IP.

    bound (str, one of :data:`ORDER_BOUNDS`), the last rule in that order that lowered the quantity:

    * ``'none'``: IP > ROP (no reorder in the (s, Q) policy, Silver, Pyke & Thomas 2017 ch. 6), or nothing is
      needed (EOQ = 0 and ROP - IP <= 0: a series with no forecast demand at its reorder point);
    * ``'eoq'``: the economic order quantity EOQ >= ROP - IP (Harris 1913; Silver et al. sec. 4.2);
    * ``'rop_gap'``: ROP - IP above the EOQ (the order brings the position back to the reorder point);
    * ``'cover_cap'``: ``max_cover_days`` of forecast demand is less (ORDER_MAX_COVER_DAYS);
    * ``'capacity'``: the free storage capacity is less (also when it leaves no room: quantity 0);
    * ``'shelf_life'``: what can sell before expiry is less (also when it is <= 0: quantity 0).

    A bound equal to the quantity before it does not take over (the earlier rule keeps the name).
    Args: stock, on_order, rop, eoq_units in units; mean_demand in units/day; storage_capacity in units;
    shelf_life_days and max_cover_days in days (max_cover_days None/NaN = no cover cap). Scalars or numpy arrays
    of one shape; returns float64 and str (object) numpy arrays of that shape (0-d for scalars).
    Raises:
        ValueError: max_cover_days <= 0.
    """
    ip = np.asarray(stock, dtype=float) + np.asarray(on_order, dtype=float)
    r = np.asarray(rop, dtype=float)
    e = np.asarray(eoq_units, dtype=float)
    q = np.ceil(np.maximum(e, r - ip) - 1e-9)
    bound = np.where(r - ip > e, "rop_gap", "eoq").astype(object)

    def cut(q, limit, name):   # limit NaN: no bound
        lower = ~np.isnan(limit) & (limit < q)
        return np.where(lower, limit, q), np.where(lower, name, bound).astype(object)

    if max_cover_days is not None:
        mc = np.asarray(max_cover_days, dtype=float)
        if (mc <= 0).any():
            raise ValueError(f"max_cover_days must be > 0 days (ORDER_MAX_COVER_DAYS), got {max_cover_days}")
        cover = np.maximum(np.ceil(r - ip - 1e-9), np.floor(np.asarray(mean_demand, dtype=float) * mc - ip + 1e-9))
        q, bound = cut(q, np.where(np.isnan(mc), np.nan, cover), "cover_cap")   # an unknown demand (NaN): no cap
    if storage_capacity is not None:
        q, bound = cut(q, np.floor(np.asarray(storage_capacity, dtype=float) - ip + 1e-9), "capacity")
    if shelf_life_days is not None:
        sl = np.asarray(shelf_life_days, dtype=float)
        q, bound = cut(q, np.floor(np.asarray(mean_demand, dtype=float) * sl - ip + 1e-9), "shelf_life")
    need = ip <= r
    nothing = (bound == "eoq") | (bound == "rop_gap")
    bound = np.where(~need | (nothing & (np.nan_to_num(q) <= 0)), "none", bound).astype(object)
    q = np.where(need, np.clip(q, 0.0, None) + 0.0, 0.0)   # + 0.0 turns -0.0 into 0.0
    return q, bound


def order_quantity(stock, on_order, rop, eoq_units, mean_demand, storage_capacity=None, shelf_life_days=None,
                   max_cover_days=None):
    """Units to order now (whole units, >= 0, never -0.0): the quantity of :func:`order_terms` (same arguments,
    units and errors; see there and the module docstring's order-quantity line).

    Scalars or numpy arrays of one shape (float for scalars, else an array).
    (Silver, Pyke & Thomas 2017 ch. 6, (s, Q) policy; Chopra & Meindl 2016 ch. 12.)
    """
    q, _ = order_terms(stock, on_order, rop, eoq_units, mean_demand, storage_capacity, shelf_life_days,
                       max_cover_days)
    return float(q) if q.ndim == 0 else q


def order_bound(stock, on_order, rop, eoq_units, mean_demand, storage_capacity=None, shelf_life_days=None,
                max_cover_days=None):
    """Which rule set the order quantity: 'none', 'eoq', 'rop_gap', 'cover_cap', 'capacity' or 'shelf_life'
    (:func:`order_terms`, same arguments; Silver, Pyke & Thomas 2017 ch. 4 and 6). A str for scalars, else an
    array of str."""
    _, b = order_terms(stock, on_order, rop, eoq_units, mean_demand, storage_capacity, shelf_life_days,
                       max_cover_days)
    return str(b) if b.ndim == 0 else b


def open_orders(orders: pd.DataFrame, receipts: pd.DataFrame, lead_time_days: int | None = None,
                as_of=None) -> pd.DataFrame:
    """Units still on order per store x SKU: earlier orders less the receipts recorded after them, first in
    first out (pure).

    Each receipt (a day's RESTOCK units; a day whose total is <= 0 fills nothing) fills the oldest order placed
    strictly before its day that is still open and not yet full; what a receipt brings beyond those orders is not
    carried to later orders (it cannot belong to them), and no order falls below 0. With ``lead_time_days`` L an
    order of night a is open on the days (a, a + L] only (older ones are taken as received or lost: a receipt
    after a + L fills a newer order), and with ``as_of`` t only the orders of nights [t - L, t) are summed; the
    caller passes the orders of [t - 2L, t), which holds every order a receipt of (t - L, t] could fill. Without
    L every order is open and summed.
    Args:
        orders: store_id, product_id, as_of_date (the night the order was recommended), reorder_qty (units > 0).
        receipts: store_id, product_id, date (day received; a receipt on an order's own as_of_date is already in
            that night's stock and fills no order of that night), units_received (units).
        lead_time_days: L (days >= 0) or None; as_of: the night t (date) the result is for, with L.
    Returns:
        DataFrame store_id, product_id, on_order (units >= 0), one row per store x SKU with an order.
    """
    keys = ["store_id", "product_id"]
    if orders.empty:
        return pd.DataFrame({"store_id": pd.Series(dtype=object), "product_id": pd.Series(dtype=object),
                             "on_order": pd.Series(dtype="float64")})
    o = orders.assign(day=pd.to_datetime(orders["as_of_date"]), units=orders["reorder_qty"].astype(float), kind=1)
    r = receipts.assign(day=pd.to_datetime(receipts["date"]), units=receipts["units_received"].astype(float), kind=0)
    r = r[r["units"] > 0].merge(o[keys].drop_duplicates(), on=keys)
    parts = [x[[*keys, "day", "kind", "units"]] for x in (o, r) if len(x)]
    ev = pd.concat(parts, ignore_index=True)
    ev = ev.sort_values([*keys, "day", "kind"], kind="stable")   # a day's receipts before its orders
    lead = None if lead_time_days is None else pd.Timedelta(days=int(lead_time_days))
    first = None if lead is None or as_of is None else pd.Timestamp(as_of) - lead
    out = []
    for key, g in ev.groupby(keys, sort=True):
        queue: list[list] = []   # [day placed, units open]
        for kind, day, units in zip(g["kind"].to_numpy(), g["day"], g["units"].to_numpy()):
            if kind == 1:
                queue.append([day, units])
                continue
            for o in queue:
                if lead is not None and o[0] + lead < day:
                    continue   # due before this receipt: taken as received or lost
                take = min(o[1], units)
                o[1], units = o[1] - take, units - take
                if units <= 0:
                    break
        out.append((*key, float(sum(u for d, u in queue if first is None or d >= first))))
    return pd.DataFrame(out, columns=[*keys, "on_order"])


def sigma_from_interval(lower80, upper80):
    """Daily forecast-error sigma from an 80 % interval: (upper80 - lower80) / (2 * 1.2816)."""
    return (np.asarray(upper80, dtype=float) - np.asarray(lower80, dtype=float)) / (2 * Z80)


def recommend(inputs: pd.DataFrame, *, lead_time_days: float, service_level: float, order_cost: float,
              holding_cost_rate: float, sigma_lead_time: float = 0.0,
              max_cover_days: float | None = None) -> pd.DataFrame:
    """Reorder recommendations for every row (store x SKU).

    Args:
        inputs: columns store_id, product_id, stock (units on hand), mean_demand (forecast units/day),
            sigma_d (forecast-error sigma, units/day), unit_cost; optional on_order, storage_capacity,
            shelf_life_days, lead_time_days (per row; overrides the argument), inactive (bool: the series stopped
            selling, :func:`ml.forecast.inactive_series`: with stock > 0, reorder_qty 0 and order_bound
            ``inactive``; with stock <= 0 see the module docstring's inactive line, order_bound
            ``inactive_out_of_stock``), selling_rate (units/day over the series' selling span, the demand an
            out-of-stock inactive series is planned on; missing/NaN/0: its forecast mean_demand).
        lead_time_days: supplier lead time L (days); service_level: cycle service level;
        order_cost: S per order; holding_cost_rate: yearly holding cost as a fraction of unit cost.
        max_cover_days: no order beyond this many days of forecast demand (inventory position included) unless
            the reorder point needs it (setting ORDER_MAX_COVER_DAYS); None = no cover cap.
    Returns:
        inputs + safety_stock, reorder_point, eoq, reorder_qty (units, :func:`order_quantity`), order_bound (the
        rule that set reorder_qty, :func:`order_terms`), reorder_needed (0/1: 1 when reorder_qty > 0),
        days_until_stockout, stockout_risk, service_level, lead_time_days.
    Raises:
        ValueError: a required column is missing, unit_cost <= 0 or max_cover_days <= 0.
    """
    need = ["store_id", "product_id", "stock", "mean_demand", "sigma_d", "unit_cost"]
    miss = [c for c in need if c not in inputs.columns]
    if miss:
        raise ValueError(f"recommend() input lacks column(s) {miss}")
    df = inputs.copy()
    if (df["unit_cost"] <= 0).any():
        bad = df.loc[df["unit_cost"] <= 0, ["store_id", "product_id"]].head(3).to_dict("records")
        raise ValueError(f"unit_cost must be > 0 for EOQ holding cost; e.g. {bad}")
    L = df["lead_time_days"].astype(float) if "lead_time_days" in df.columns else pd.Series(float(lead_time_days), index=df.index)
    on_order = df["on_order"].fillna(0.0) if "on_order" in df.columns else 0.0
    d = df["mean_demand"].clip(lower=0).astype(float)
    df["safety_stock"] = safety_stock(df["sigma_d"].clip(lower=0).to_numpy(float), L.to_numpy(), service_level,
                                      d.to_numpy(), sigma_lead_time)
    df["reorder_point"] = reorder_point(d.to_numpy(), L.to_numpy(), df["safety_stock"].to_numpy())
    df["eoq"] = eoq(d.to_numpy() * 365.0, order_cost, holding_cost_rate * df["unit_cost"].to_numpy(float))
    df["reorder_qty"], df["order_bound"] = order_terms(
        df["stock"].to_numpy(float), np.broadcast_to(np.asarray(on_order, dtype=float), len(df)),
        df["reorder_point"].to_numpy(), df["eoq"].to_numpy(), d.to_numpy(),
        df["storage_capacity"].to_numpy(float) if "storage_capacity" in df.columns else None,
        df["shelf_life_days"].to_numpy(float) if "shelf_life_days" in df.columns else None,
        max_cover_days=max_cover_days)
    if "inactive" in df.columns:   # stopped selling: nothing ordered while stock is on hand
        off = df["inactive"].astype("boolean").fillna(False).to_numpy(bool)
        empty = off & (df["stock"].to_numpy(float) <= 0)   # the silence may be the empty shelf's: censored demand
        df["reorder_qty"] = np.where(off & ~empty, 0.0, df["reorder_qty"])
        df["order_bound"] = np.where(off & ~empty, "inactive", df["order_bound"]).astype(object)
        if empty.any():
            rate = (df["selling_rate"].to_numpy(float) if "selling_rate" in df.columns
                    else np.full(len(df), np.nan))
            du = np.where(np.isfinite(rate) & (rate > 0), rate, d.to_numpy())[empty]
            Le = L.to_numpy(float)[empty]
            # the top-up covers demand at rate d_s, not the near-zero bucket's: sigma at least the Poisson
            # sigma sqrt(d_s) (variance = mean); a NaN sigma takes it (until 2026-12-07: NaN ROP, 0 units)
            sig = np.fmax(df["sigma_d"].clip(lower=0).to_numpy(float)[empty], np.sqrt(du))
            df.loc[empty, "sigma_d"] = sig
            ss = safety_stock(sig, Le, service_level, du, sigma_lead_time)
            rop = reorder_point(du, Le, ss)
            cap = df["storage_capacity"].to_numpy(float)[empty] if "storage_capacity" in df.columns else None
            life = df["shelf_life_days"].to_numpy(float)[empty] if "shelf_life_days" in df.columns else None
            q, _ = order_terms(df["stock"].to_numpy(float)[empty],
                               np.broadcast_to(np.asarray(on_order, dtype=float), len(df))[empty], rop,
                               np.zeros(int(empty.sum())), du, cap, life, max_cover_days=max_cover_days)
            for col, v in (("safety_stock", ss), ("reorder_point", rop), ("reorder_qty", q)):
                df.loc[empty, col] = v
            df.loc[empty, "order_bound"] = "inactive_out_of_stock"
    df["reorder_needed"] = (df["reorder_qty"] > 0).astype("uint8")
    df["days_until_stockout"] = days_until_stockout(df["stock"].to_numpy(float), d.to_numpy())
    df["stockout_risk"] = stockout_risk(df["stock"].to_numpy(float), d.to_numpy(), L.to_numpy(),
                                        df["reorder_point"].to_numpy())
    df["service_level"] = float(service_level)
    df["lead_time_days"] = L
    return df


def inputs_from_forecast(pred: pd.DataFrame, lead_time_days: float | None = None,
                         service_level: float | None = None) -> pd.DataFrame:
    """Per (store_id, product_id): mean_demand = mean daily point forecast over the horizon (units/day) and
    sigma_d (units/day), the daily forecast-error sigma that :func:`safety_stock` scales by z * sqrt(L).

    sigma_d, for a lead time ``lead_time_days`` L > 0, from the backtest's errors of the demand *total* over
    days 1..h that the forecasts carry, taken at h = round(L) clamped to 1..H and scaled by sqrt(L / h) (an L
    beyond the horizon H or between whole days):

    * with ``service_level`` a within the levels the forecasts carry (``lead_q500`` .. ``lead_q999``,
      :func:`ml.forecast.lead_time_quantiles`; linear between two of them): the empirical safety stock
      SS = q_a(E_h) * sqrt(L / h) expressed as a normal-equivalent sigma_d = SS / (z_a * sqrt(L)), so that
      :func:`safety_stock` gives SS back (Trapero, Cardos & Kourentzes 2019, Omega 84: empirical safety stock).
      A negative quantile (the forecast over-shoots in that share of cycles) gives 0, and so does a = 0.5
      exactly (z = 0: no normal-equivalent sigma carries the median error's SS). It assumes no normal
      error: on lumpy demand z * RMS over-stocks (reports/bench-forecast.json, ``safety_stock_service``);
    * else with ``lead_sigma`` (:func:`ml.forecast.lead_time_sigma`, the root mean square of E_h): sigma_d =
      lead_sigma(h) * sqrt(L / h) / sqrt(L), so that z * sigma_d * sqrt(L) = z * lead_sigma(L);
    * else (forecasts without either, L not given or 0): the mean daily sigma from the 80 % intervals
      (:func:`sigma_from_interval`), which on the M5 backtest reached a lower service level than the target.

    Args:
        pred: forecast rows store_id, product_id, yhat, lower80, upper80 (units/day); optional lead_sigma and
            lead_q500 .. lead_q999 (units) with the horizon in ``h`` or ``horizon`` (1..H).
        lead_time_days: supplier lead time L (days).
        service_level: the cycle service level the safety stock is for (0.5 <= a < 1), as given to
            :func:`recommend`.
    Returns:
        DataFrame store_id, product_id, mean_demand, sigma_d, one row per series; and inactive (bool, any of the
        series' rows) and selling_rate (units/day, the largest of its rows; NaN when unknown) when ``pred`` has
        those columns (:func:`ml.forecast.forecast`).
    """
    from ml.forecast import LEAD_LEVELS, LEAD_QUANTILE_COLUMNS

    p = pred.assign(sigma=sigma_from_interval(pred["lower80"], pred["upper80"]))
    keys = ["store_id", "product_id"]
    agg = {"mean_demand": ("yhat", "mean"), "sigma_d": ("sigma", "mean")}
    if "inactive" in p.columns:
        p["inactive"] = p["inactive"].fillna(False).astype(bool)
        agg["inactive"] = ("inactive", "any")
    if "selling_rate" in p.columns:
        agg["selling_rate"] = ("selling_rate", "max")
    g = p.groupby(keys, as_index=False).agg(**agg)
    hcol = "h" if "h" in p.columns else "horizon"
    if not lead_time_days or lead_time_days <= 0 or "lead_sigma" not in p.columns or hcol not in p.columns:
        return g
    L = float(lead_time_days)
    h = min(max(1, int(round(L))), int(p[hcol].max()))
    qcols = [c for c in LEAD_QUANTILE_COLUMNS if c in p.columns]
    at = p.loc[p[hcol] == h, [*keys, "lead_sigma", *qcols]].drop_duplicates(keys)
    g = g.merge(at, on=keys, how="left")
    lead = g["lead_sigma"] * np.sqrt(L / h)   # L != h (beyond H, or not whole): sqrt(L / h)
    sigma = lead / np.sqrt(L)
    levels = [a for a, c in zip(LEAD_LEVELS, LEAD_QUANTILE_COLUMNS) if c in qcols]
    if service_level is not None and levels and levels[0] <= service_level <= levels[-1]:
        q = g[[LEAD_QUANTILE_COLUMNS[LEAD_LEVELS.index(a)] for a in levels]].to_numpy(float)
        i = min(int(np.searchsorted(levels, service_level, side="right")), len(levels) - 1)
        lo, hi = levels[i - 1], levels[i]   # a at a grid level: lo = a (weight 1) or hi = a (weight 1)
        w = (service_level - lo) / (hi - lo) if hi > lo else 0.0
        ss = np.clip((1 - w) * q[:, i - 1] + w * q[:, i], 0.0, None) * np.sqrt(L / h)
        z = z_value(service_level)
        emp = pd.Series(ss / (z * np.sqrt(L)) if z > 0 else np.zeros(len(g)), index=g.index)
        sigma = emp.where(np.isfinite(q[:, [i - 1, i]]).all(axis=1), sigma)
    g["sigma_d"] = sigma.where(sigma.notna(), g["sigma_d"])
    return g.drop(columns=["lead_sigma", *qcols])

