"""Demand-pattern classification of SKUs (Syntetos-Boylan) and the slow-moving flag (pure pandas).

Per series (store x SKU) over a window of days with zero-filled demand; the window of a series starts at
the later of the window's first day and the series' first row in all the history given (a sale, or any row
recording it, e.g. a listed price with 0 units), so a SKU launched inside the window is not penalised for
days before its launch while an older SKU is measured over the whole window:

* ADI = number of days / number of days with demand > 0 (average inter-demand interval, days);
* CV^2 = (std / mean)^2 of the *non-zero* demand sizes (population std).

Classes (Syntetos, Boylan & Croston 2005, "On the categorization of demand patterns", JORS 56(5),
cut-offs ADI = 1.32, CV^2 = 0.49):

=============  ================  ==================
class          ADI               CV^2
=============  ================  ==================
smooth         < 1.32            < 0.49
erratic        < 1.32            >= 0.49
intermittent   >= 1.32           < 0.49
lumpy          >= 1.32           >= 0.49
=============  ================  ==================

A series with a single demand day has an undefined CV^2, taken as 0 (so it is ``intermittent`` unless
it sold on most days); a series without any demand in the window is ``no_demand``.

Slow-moving flag: mean daily demand < ``slow_rate`` (default 0.5 units/day) **or** no sale in the last
``stale_days`` (default 28) days. Both are conventional inventory-review thresholds, configurable.

Evaluation (:func:`evaluate_against_labels`, :func:`stability`): agreement (accuracy) with reference
labels, e.g. the hand labels of the M5 tiny README for its 28 items (classified on the item's demand
summed over its 10 stores, and per store x item by majority vote), and hold-out stability: the share of
series whose class on the first half of the window equals the class on the second half.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ml.features import calendar_day, calendar_days

ADI_CUT = 1.32
CV2_CUT = 0.49
CLASSES = ("smooth", "erratic", "intermittent", "lumpy", "no_demand")


def classify_series(units: np.ndarray) -> tuple[float, float, str]:
    """(ADI, CV^2, class) of one zero-filled daily demand vector (see module docstring)."""
    u = np.asarray(units, dtype=float)
    nz = u[u > 0]
    if len(nz) == 0:
        return float("inf"), float("nan"), "no_demand"
    adi = len(u) / len(nz)
    cv2 = float((nz.std() / nz.mean()) ** 2) if len(nz) > 1 else 0.0
    if adi < ADI_CUT:
        cls = "smooth" if cv2 < CV2_CUT else "erratic"
    else:
        cls = "intermittent" if cv2 < CV2_CUT else "lumpy"
    return float(adi), cv2, cls


def classify(daily: pd.DataFrame, *, end_date=None, window_days: int = 365, slow_rate: float = 0.5,
             stale_days: int = 28, include: pd.DataFrame | None = None) -> pd.DataFrame:
    """Classify every (store_id, product_id) over the ``window_days`` days ending at ``end_date``.

    Args:
        daily: date, store_id, product_id, units (missing days = zero demand). Each series is considered
            from max(window start, its first row in ``daily`` up to ``end_date``): rows before the window
            are not counted but say the SKU already existed, so new SKUs are not penalised for days before
            launch and old ones are averaged over the whole window. Series without a row in the window are
            left out, unless ``include`` names them.
        end_date: last day (default the last date in ``daily``); window_days: window length in days;
        slow_rate: units/day; stale_days: days.
        include: store_id, product_id of series to classify even without a row in the window (e.g. the ones
            with stock on hand: a SKU that stopped selling but still holds stock is the slowest mover of all);
            each is measured from max(window start, its first row) (the window start when it has none):
            ``no_demand``, mean 0, slow-moving.
    Returns:
        DataFrame store_id, product_id, window_start (the series' first day), window_end, n_days (days from
        window_start to window_end), adi (days), cv2, demand_class, mean_daily_demand (units/day over n_days),
        days_since_last_sale (days; n_days when no sale in the window), is_slow_moving (0/1).
    Raises:
        ValueError: missing columns.
    """
    need = {"date", "store_id", "product_id", "units"}
    if not need <= set(daily.columns):
        raise ValueError(f"classify() needs columns {sorted(need)}; has {list(daily.columns)}")
    d = daily[["date", "store_id", "product_id", "units"]].copy()
    d["date"] = calendar_days(d["date"])   # a timezone-aware date keeps its local calendar day
    end = calendar_day(end_date) if end_date is not None else d["date"].max()
    start = end - pd.Timedelta(days=window_days - 1)
    d = d[d["date"] <= end]
    first_row = d.groupby(["store_id", "product_id"])["date"].min()   # over all the history given
    d = d[d["date"] >= start]
    d = d.groupby(["store_id", "product_id", "date"], as_index=False)["units"].sum()
    if include is not None and len(include):
        keys = include[["store_id", "product_id"]].drop_duplicates()
        seen = d[["store_id", "product_id"]].drop_duplicates()
        silent = keys.merge(seen, how="left", indicator=True)
        silent = silent[silent["_merge"] == "left_only"].drop(columns="_merge")
        d = pd.concat([d, silent.assign(date=end, units=0.0)], ignore_index=True)   # a zero row: in the window
    rows = []
    for (store, product), g in d.groupby(["store_id", "product_id"], sort=True):
        first = max(start, first_row.get((store, product), start))
        idx = pd.date_range(first, end, freq="D")
        u = g.set_index("date")["units"].reindex(idx, fill_value=0.0).clip(lower=0).to_numpy()
        adi, cv2, cls = classify_series(u)
        sold = idx[u > 0]
        dsl = int((end - sold.max()).days) if len(sold) else int(len(idx))
        mean = float(u.mean())
        rows.append({"store_id": store, "product_id": product, "window_start": first, "window_end": end,
                     "n_days": len(idx), "adi": adi, "cv2": cv2, "demand_class": cls,
                     "mean_daily_demand": mean, "days_since_last_sale": dsl,
                     "is_slow_moving": int(mean < slow_rate or dsl >= stale_days)})
    return pd.DataFrame(rows)


def parse_m5_labels(readme: Path) -> dict[str, str]:
    """item_id -> class from the M5 tiny README's "The 28 items" section (``- **class**: A, B, ...``)."""
    text = Path(readme).read_text()
    labels = {}
    for cls, items in re.findall(r"^- \*\*(smooth|intermittent|lumpy|erratic)\*\*: (.+)$", text, flags=re.M):
        for it in items.split(","):
            labels[it.strip()] = cls
    if not labels:
        raise ValueError(f"no demand-pattern labels found in {readme}")
    return labels


def evaluate_against_labels(daily: pd.DataFrame, labels: dict[str, str], window_days: int = 100_000) -> dict:
    """Agreement with reference item labels.

    * ``item_accuracy``: classify each item on its demand summed over stores (the whole history by
      default) and compare with its label;
    * ``series_accuracy``: share of store x item series whose own class equals the item's label;
    * ``vote_accuracy``: majority class over the item's stores vs label.
    Returns also the confusion pairs for the report.
    """
    d = daily[daily["product_id"].isin(labels)].copy()
    agg = d.groupby(["date", "product_id"], as_index=False)["units"].sum().assign(store_id="ALL")
    items = classify(agg, window_days=window_days, slow_rate=0.0, stale_days=10**9)
    items["label"] = items["product_id"].map(labels)
    series = classify(d, window_days=window_days, slow_rate=0.0, stale_days=10**9)
    series["label"] = series["product_id"].map(labels)
    vote = series.groupby("product_id")["demand_class"].agg(lambda s: s.value_counts().index[0])
    vote_acc = float((vote == vote.index.map(labels)).mean())
    return {
        "item_accuracy": float((items["demand_class"] == items["label"]).mean()),
        "series_accuracy": float((series["demand_class"] == series["label"]).mean()),
        "vote_accuracy": vote_acc,
        "n_items": int(len(items)), "n_series": int(len(series)),
        "item_confusion": items.groupby(["label", "demand_class"]).size().rename("n").reset_index().to_dict("records"),
    }


def stability(daily: pd.DataFrame, *, end_date=None, window_days: int = 182) -> dict:
    """Hold-out stability: classes on the window ending ``window_days`` before ``end_date`` vs the window
    ending at ``end_date``; share of series (present in both) with the same class, and the same
    slow-moving flag.

    Both windows are ``window_days`` days long; in each a series starts at max(window start, its first row in
    the history up to that window's end) (:func:`classify`), so a series that existed before the second
    window is measured over all of it. Returns {"class_agreement", "slow_flag_agreement" (shares in [0, 1],
    NaN when no series is in both), "n_series"}.
    """
    d = daily.copy()
    d["date"] = calendar_days(d["date"])   # a timezone-aware date keeps its local calendar day
    end = calendar_day(end_date) if end_date is not None else d["date"].max()
    prev_end = end - pd.Timedelta(days=window_days)
    a = classify(d[d["date"] <= prev_end], end_date=prev_end, window_days=window_days)
    b = classify(d, end_date=end, window_days=window_days)
    m = a.merge(b, on=["store_id", "product_id"], suffixes=("_prev", "_cur"))
    if m.empty:
        return {"class_agreement": float("nan"), "slow_flag_agreement": float("nan"), "n_series": 0}
    return {"class_agreement": float((m["demand_class_prev"] == m["demand_class_cur"]).mean()),
            "slow_flag_agreement": float((m["is_slow_moving_prev"] == m["is_slow_moving_cur"]).mean()),
            "n_series": int(len(m))}
