"""Feature engineering for daily demand forecasting (pure pandas, no I/O).

Input: a *daily demand table*, one row per (date, store_id, product_id) with

============  ==========================================================================
column        meaning
============  ==========================================================================
date          calendar day (anything ``pd.to_datetime`` accepts; made a naive midnight: a
              timezone-aware value keeps its local calendar day, its zone is dropped)
store_id      store (or market) key, string
product_id    SKU key, string
units         units demanded that day, >= 0 (returns are not negative demand)
price         unit selling price that day (NaN allowed: forward filled per series; 0 before a series'
              first known price, never filled back from a later day)
promo         optional 0/1 promotion flag; absent -> proxy "price drop" (price < 98 % of
              the highest price of the previous 28 days)
holiday       optional 0/1; absent -> public holiday of ``country_code`` (``holidays`` pkg)
event         optional 0/1 special event (e.g. M5 calendar events)
snap          optional 0/1 SNAP day (M5), a promotion-like demand driver
country_code  optional ISO-3166 alpha-2 of the store (for holidays and weather)
============  ==========================================================================

Output of :func:`build_daily_features`: the *daily feature table* ``features_daily``, one row per
series x day, where **row d holds only information known at the end of day d-1** (the row's forecast
origin is d-1) plus *known-in-advance covariates of day d* (calendar, holiday, event, SNAP, planned
price/promotion, weather forecast):

* demand history (strictly before d): ``lag_1, lag_7, lag_14, lag_28`` (y_{d-k}); rolling mean and
  standard deviation over 7, 14, 30, 90 days ending at d-1 (``rmean_w``, ``rstd_w``); share of
  zero-demand days over 28 days (``zero_share_28``); ``days_since_sale`` (days since the last day with
  demand > 0, up to d-1, capped at 365);
* covariates of d: ``dow`` (0 = Monday), ``month``, ``season`` (0 winter .. 3 autumn, meteorological,
  northern hemisphere), ``day_of_month``, ``is_weekend``, ``price``, ``price_change_7``
  (price_d / price_{d-7} - 1), ``price_rel_28`` (price_d / mean price over the 28 days up to d-1),
  ``promo``, ``holiday``, ``event``, ``snap``, and ``temp_c``, ``precip_mm`` when a weather table is
  given.

Every date read (the table's, ``end_date``, the calendar's and weather's, the origins and bounds of
:func:`make_supervised`) is a naive calendar day: a timezone-aware value keeps its local day and loses its
zone (:func:`calendar_days`), so days, lags and horizons count calendar days across DST changes.

Missing days inside a series' *active range* (first day on sale, i.e. first non-missing price or
first positive demand, up to the last day of the table) are filled with zero demand; ``extend_days``
appends future rows (``units`` NaN) so that forecasts can be made for the next days.

Direct multi-horizon supervision (:func:`make_supervised`): for origin t and horizon h in 1..H
(H <= 28) the target is y_{t+h}; the demand-history features come from row t+1 (all <= t), the
covariates from the target row t+h, the seasonal lags from the last same-weekday days <= t
(y_{t+h-7k}, k = ceil(h/7)), and ``h`` itself is a feature: one global GBT model for all horizons
(see :mod:`ml.forecast`). No feature of a row with origin t depends on demand after t — tested in
``tests/test_ml_features.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

KEYS = ["store_id", "product_id"]
LAGS = (1, 7, 14, 28)
WINDOWS = (7, 14, 30, 90)
#: longest forecast horizon in days (the M5 protocol); the DAG's default is FORECAST_HORIZON (14).
MAX_HORIZON = 28
DEFAULT_HORIZON = 14
SEASON = 7  # weekly seasonality of daily retail demand
#: floor of the series level (units/day) that scales the GBT's target and history features. Measured with
#: the GBT's settings on the 6 M5 origins 2013-12-01..2014-10-02 that precede the benchmark's (28 days):
#: floor 0.1 / 0.3 / 0.6 / 1.0 gave WAPE 0.422 / 0.418 / 0.417 / 0.421 and RMSSE 0.778 / 0.766 / 0.763 / 0.769 (a
#: floor near the slow movers' rate keeps their scaled target and features from exploding on a quiet month).
LEVEL_FLOOR = 0.3
#: the series level: weighted mean of trailing means at the origin (units/day), floored at LEVEL_FLOOR
LEVEL_WEIGHTS = {"rmean_28": 1.0}

#: demand-history features of the feature table: taken from the origin row t+1 (information <= t).
HISTORY_COLUMNS = (
    ["lag_1", "lag_28"]
    + [f"rmean_{w}" for w in WINDOWS]
    + [f"rstd_{w}" for w in WINDOWS]
    + ["zero_share_28", "days_since_sale"]
)
#: the feature table's lags y_{d-7}, y_{d-14} (horizon-safe only for h <= 7: the supervised table uses
#: seas_lag_1/seas_lag_2 instead).
SEASONAL_COLUMNS = ["lag_7", "lag_14"]
#: known-in-advance covariates of the target day.
COVARIATE_COLUMNS = [
    "dow", "month", "season", "day_of_month", "is_weekend",
    "price", "price_change_7", "price_rel_28", "promo", "holiday", "event", "snap",
]
#: the covariates built from the price (:func:`build_daily_features`). The platform's price is the price paid
#: (``demand_daily``: revenue / units sold), so a day's price exists only when something sold that day, and a bulk
#: order changes it: the target day's price tells whether and how much sold. The supervised rows therefore take
#: these from the origin row t (the price known then, carried forward) unless the prices are a list published
#: ahead, e.g. M5's weekly sell prices, given for the forecast horizon (``prices_known_ahead``).
PRICE_COLUMNS = ["price", "price_change_7", "price_rel_28", "promo"]
WEATHER_COLUMNS = ["temp_c", "precip_mm"]
OPTIONAL_FLAGS = ("promo", "holiday", "event", "snap")
#: history / seasonal columns of the supervised table that enter the model divided by ``level`` (n_<col>)
NORMALISED_SOURCES = [
    "lag_1", "lag_28", "rmean_7", "rmean_14", "rmean_28", "rmean_30", "rmean_365",
    "rstd_7", "rstd_30", "rstd_90", "seas_lag_1", "seas_lag_2", "seas_mean_4", "seas_mean_52",
]
#: feature-table columns :func:`make_supervised` reads (besides the keys, date and units)
STORED_COLUMNS = HISTORY_COLUMNS + COVARIATE_COLUMNS


def feature_columns(df: pd.DataFrame | None = None) -> list[str]:
    """Model input columns of a supervised table, in a fixed order (weather only when present).

    All are known at the origin t: scale-free history (``n_*`` = value / level), the level itself
    (units/day), intermittency (zero share, days since sale), item/store trends, the horizon ``h``
    and the target day's known-in-advance covariates.
    """
    cols = (["h", "level"] + [f"n_{c}" for c in NORMALISED_SOURCES]
            + ["zero_share_28", "days_since_sale", "item_trend", "store_trend"] + COVARIATE_COLUMNS)
    if df is not None:
        cols += [c for c in WEATHER_COLUMNS if c in df.columns]
    return cols


def _season(month: pd.Series) -> pd.Series:
    """Meteorological season (northern hemisphere): 0 = Dec-Feb, 1 = Mar-May, 2 = Jun-Aug, 3 = Sep-Nov."""
    return ((month % 12) // 3).astype("int8")


def calendar_day(value) -> pd.Timestamp:
    """One date as a naive calendar day (midnight, no timezone); a timezone-aware value keeps its *local*
    calendar day (2024-04-01 00:00 Europe/London -> 2024-04-01, not 2024-03-31 23:00 UTC).

    Args: anything ``pd.Timestamp`` accepts. Returns a pd.Timestamp at midnight (NaT stays NaT).
    Raises: ValueError / TypeError of ``pd.Timestamp`` for an unparsable value.
    """
    t = pd.Timestamp(value)
    if t is pd.NaT:
        return t
    return (t.tz_localize(None) if t.tzinfo is not None else t).normalize()


def calendar_days(values) -> pd.Series:
    """Dates as naive calendar days (datetime64, midnight, no timezone), element-wise as :func:`calendar_day`.

    Timezone-aware values (one zone, or strings with mixed UTC offsets, which ``pd.to_datetime`` returns as
    objects) keep their local calendar day: day arithmetic then counts calendar days across a DST change
    (a 23- or 25-hour day is still one day). Args: a Series (index kept) or anything ``pd.to_datetime``
    accepts for a list. Returns a Series. Raises: the errors of ``pd.to_datetime``.
    """
    d = pd.to_datetime(values if isinstance(values, pd.Series) else pd.Series(list(values)))
    if isinstance(d.dtype, pd.DatetimeTZDtype):
        d = d.dt.tz_localize(None)
    elif d.dtype == object:  # mixed UTC offsets: each value's own local day
        d = pd.to_datetime(d.map(lambda t: t.tz_localize(None) if getattr(t, "tzinfo", None) else t))
    return d.dt.normalize()


def validate_daily(daily: pd.DataFrame) -> pd.DataFrame:
    """Check and normalise a daily demand table (copy); ``date`` becomes naive calendar days (:func:`calendar_days`).

    Raises:
        ValueError: a required column is missing, a key is null, units are negative or non-numeric,
            or (date, store_id, product_id) is not unique. The message names the problem and counts rows.
    """
    required = ["date", "store_id", "product_id", "units", "price"]
    missing = [c for c in required if c not in daily.columns]
    if missing:
        raise ValueError(f"daily demand table lacks column(s) {missing}; has {list(daily.columns)}")
    df = daily.copy()
    df["date"] = calendar_days(df["date"])
    for k in KEYS:
        if df[k].isna().any():
            raise ValueError(f"{int(df[k].isna().sum())} row(s) with null {k}")
        df[k] = df[k].astype(str)
    df["units"] = pd.to_numeric(df["units"], errors="raise").astype("float64")
    neg = df["units"] < 0
    if neg.any():
        raise ValueError(f"{int(neg.sum())} row(s) with negative units (returns must not be netted into demand)")
    df["price"] = pd.to_numeric(df["price"], errors="coerce").astype("float64")
    dup = df.duplicated(["date", *KEYS])
    if dup.any():
        raise ValueError(f"{int(dup.sum())} duplicate (date, store_id, product_id) row(s); aggregate first")
    return df


def complete_series(daily: pd.DataFrame, end_date=None, extend_days: int = 0) -> pd.DataFrame:
    """Gap-free daily series per (store_id, product_id).

    Each series spans from its first active day (first non-missing price or first positive demand)
    to ``end_date`` (default: the table's last date); missing days get ``units = 0``. Then
    ``extend_days`` future days are appended with ``units = NaN`` (to be forecast). Price is
    forward-filled within the series (future rows keep the last known price: the planned price); rows
    before the series' first known price keep NaN (0 in the feature table, its price ratios neutral):
    filling them back from a later day would hand a row a price first seen after its date. The optional 0/1 flags are filled with 0 (``holiday``/``event``/``snap`` are
    date-level and re-derived per date for future rows where the input gives them per date).

    Returns:
        DataFrame sorted by store_id, product_id, date with a RangeIndex.
    """
    df = validate_daily(daily)
    end = calendar_day(end_date) if end_date is not None else df["date"].max()
    df = df[df["date"] <= end]
    active = df[(df["units"] > 0) | df["price"].notna()]
    starts = active.groupby(KEYS, observed=True)["date"].min()
    if starts.empty:
        raise ValueError("no active series: every row has zero units and no price")
    last = end + pd.Timedelta(days=extend_days)
    pieces = []
    for (store, product), start in starts.items():
        dates = pd.date_range(start, last, freq="D")
        pieces.append(pd.DataFrame({"store_id": store, "product_id": product, "date": dates}))
    grid = pd.concat(pieces, ignore_index=True)
    out = grid.merge(df, on=["store_id", "product_id", "date"], how="left")
    known = out["date"] <= end
    out.loc[known, "units"] = out.loc[known, "units"].fillna(0.0)
    out.loc[~known, "units"] = np.nan
    out = out.sort_values(["store_id", "product_id", "date"], kind="mergesort").reset_index(drop=True)
    g = out.groupby(KEYS, sort=False, observed=True)
    out["price"] = g["price"].ffill()   # never back-filled: a row knows no price of a later day
    for flag in OPTIONAL_FLAGS:
        if flag in out.columns:
            out[flag] = pd.to_numeric(out[flag], errors="coerce").fillna(0).astype("int8")
    if "country_code" in df.columns:
        cc = df.dropna(subset=["country_code"]).groupby("store_id")["country_code"].first()
        out["country_code"] = out["store_id"].map(cc)
    return out


def holiday_flags(dates: pd.Series, country_codes: pd.Series | None, default_country: str | None) -> pd.Series:
    """0/1 public-holiday flag per row from the ``holidays`` package (country per row, else default).

    Unknown country codes give 0 (no holiday calendar) rather than an error.
    """
    import holidays as hol

    cc = (country_codes if country_codes is not None else pd.Series(default_country, index=dates.index))
    cc = cc.fillna(default_country) if default_country else cc
    years = list(range(int(dates.dt.year.min()), int(dates.dt.year.max()) + 1))
    out = np.zeros(len(dates), dtype="int8")
    d = dates.dt.date.to_numpy()
    for code in pd.unique(cc.dropna()):
        try:
            cal = hol.country_holidays(str(code), years=years)
        except NotImplementedError:
            continue
        mask = (cc == code).to_numpy()
        out[mask] = np.fromiter((x in cal for x in d[mask]), dtype="int8", count=int(mask.sum()))
    return pd.Series(out, index=dates.index, dtype="int8")


def build_daily_features(daily: pd.DataFrame, *, end_date=None, extend_days: int = DEFAULT_HORIZON,
                         default_country: str | None = "GB", weather: pd.DataFrame | None = None,
                         calendar: pd.DataFrame | None = None) -> pd.DataFrame:
    """The daily feature table (see module docstring for every column and its time reference).

    Args:
        daily: daily demand table (see module docstring).
        end_date: last day with known demand (default: max date of ``daily``; a calendar day,
            :func:`calendar_day`).
        extend_days: future days appended for forecasting (units NaN), default 14 (>= the horizon).
        default_country: ISO code for holidays of stores without ``country_code``; None = no holidays
            unless the input has a ``holiday`` column.
        weather: optional (date, country_code, temp_c, precip_mm) table, joined on the day.
        calendar: optional known-in-advance flags per date (columns date, [store_id], any of
            holiday/event/snap/promo); they override the daily table's flags and cover the future rows.

    Returns:
        DataFrame: store_id, product_id, date, units, every feature column; sorted, RangeIndex.
    """
    df = complete_series(daily, end_date=end_date, extend_days=extend_days)
    if calendar is not None:
        cal = calendar.copy()
        cal["date"] = calendar_days(cal["date"])
        on = ["date"] + (["store_id"] if "store_id" in cal.columns else [])
        flags = [c for c in OPTIONAL_FLAGS if c in cal.columns]
        if not flags:
            raise ValueError(f"calendar needs at least one of {OPTIONAL_FLAGS}; has {list(cal.columns)}")
        if "store_id" in cal.columns:
            cal["store_id"] = cal["store_id"].astype(str)
        df = df.drop(columns=[c for c in flags if c in df.columns]).merge(
            cal[on + flags].drop_duplicates(on), on=on, how="left")
        df[flags] = df[flags].fillna(0).astype("int8")
        df = df.sort_values(["store_id", "product_id", "date"], kind="mergesort").reset_index(drop=True)
    g = df.groupby(KEYS, sort=False, observed=True)
    y = df["units"]
    # ---- demand history: strictly before d ----
    for k in LAGS:
        df[f"lag_{k}"] = g["units"].shift(k)
    prev = g["units"].shift(1)
    gp = prev.groupby([df["store_id"], df["product_id"]], sort=False)
    for w in WINDOWS:
        df[f"rmean_{w}"] = gp.transform(lambda s, w=w: s.rolling(w, min_periods=1).mean())
        df[f"rstd_{w}"] = gp.transform(lambda s, w=w: s.rolling(w, min_periods=2).std()).fillna(0.0)
    df["zero_share_28"] = (prev == 0).astype("float64").where(prev.notna()).groupby(
        [df["store_id"], df["product_id"]], sort=False).transform(lambda s: s.rolling(28, min_periods=1).mean())
    # days since last sale up to d-1
    sold_day = df["date"].where(y > 0)
    last_sale = sold_day.groupby([df["store_id"], df["product_id"]], sort=False).transform(
        lambda s: s.ffill().shift(1))
    first_day = g["date"].transform("min")
    ref = last_sale.fillna(first_day - pd.Timedelta(days=1))
    df["days_since_sale"] = ((df["date"] - ref).dt.days - 1).clip(lower=0, upper=365).astype("float64")
    # ---- covariates of d ----
    df["dow"] = df["date"].dt.dayofweek.astype("int8")
    df["month"] = df["date"].dt.month.astype("int8")
    df["season"] = _season(df["month"])
    df["day_of_month"] = df["date"].dt.day.astype("int8")
    df["is_weekend"] = (df["dow"] >= 5).astype("int8")
    price = df["price"]
    df["price_change_7"] = (price / g["price"].shift(7) - 1.0).replace([np.inf, -np.inf], np.nan).fillna(0.0)
    pmean = g["price"].transform(lambda s: s.shift(1).rolling(28, min_periods=1).mean())
    df["price_rel_28"] = (price / pmean).replace([np.inf, -np.inf], np.nan).fillna(1.0)
    if "promo" not in df.columns:
        pmax = g["price"].transform(lambda s: s.shift(1).rolling(28, min_periods=1).max())
        df["promo"] = (price < 0.98 * pmax).astype("int8")
    if "holiday" not in df.columns:
        if default_country is None and "country_code" not in df.columns:
            df["holiday"] = np.int8(0)
        else:
            df["holiday"] = holiday_flags(df["date"], df.get("country_code"), default_country)
    for flag in ("event", "snap"):
        if flag not in df.columns:
            df[flag] = np.int8(0)
    if weather is not None:
        w = weather.copy()
        need = {"date", "temp_c", "precip_mm"}
        if not need <= set(w.columns):
            raise ValueError(f"weather table needs columns {sorted(need)} (+ optional country_code); has {list(w.columns)}")
        w["date"] = calendar_days(w["date"])
        on = ["date"]
        if "country_code" in w.columns:
            if "country_code" not in df.columns:
                df["country_code"] = default_country
            on.append("country_code")
        df = df.merge(w[on + ["temp_c", "precip_mm"]].drop_duplicates(on), on=on, how="left")
        df = df.sort_values(["store_id", "product_id", "date"], kind="mergesort").reset_index(drop=True)
    df["price"] = df["price"].fillna(0.0)
    return df


def sample_positions(n: int, k: int, seed: int = 42) -> np.ndarray:
    """Sorted positions of a seeded uniform sample of ``k`` of ``n`` rows without replacement, shape (k,)
    (all ``n`` when ``k`` is 0 or >= n): the same positions for the same (n, k, seed) every night."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def sorted_by_series(features: pd.DataFrame) -> pd.DataFrame:
    """``features`` in the order the positional gathers of :func:`make_supervised` assume (store_id, product_id,
    date ascending): the same object when it already is, else a sorted copy with a RangeIndex.

    A table read back from a store without an ORDER BY (e.g. ClickHouse's ``features_daily``) arrives in any
    order, and gathering by position would then mix the series' lags and trailing means silently. Measured on the
    November 2010 demo's table read from ``features_daily`` (230,239 rows; the demo's training settings, one
    origin, 14 days): backtest WAPE GBT 1.839 / seasonal naive 1.572 unsorted against 1.230 / 1.595 sorted.
    """
    if len(features) < 2 or pd.MultiIndex.from_frame(features[[*KEYS, "date"]]).is_monotonic_increasing:
        return features
    return features.sort_values([*KEYS, "date"], kind="stable").reset_index(drop=True)


def _series_positions(features: pd.DataFrame) -> np.ndarray:
    """0-based position of each row within its series (the table is sorted and gap-free per series)."""
    return features.groupby(KEYS, sort=False, observed=True).cumcount().to_numpy()


def _trailing_mean(units: np.ndarray, pos: np.ndarray, w: int, age: np.ndarray) -> np.ndarray:
    """Mean of the ``w`` days strictly before each row within its series, shape (n,), units/day.

    Days before the series' first row (its first sale) count as zero demand back to the first day the data
    covers: the divisor is min(age, w), ``age`` being the row's days since that first day (the series' own row
    count ``pos`` when ``age`` is smaller). NaN where the divisor is 0 (a row on the data's first day).
    Dividing by the days since the first sale instead (M5's convention for the RMSSE scale) overstates the level
    of a series first sold inside the window, since that window starts on a sale by construction: on the UCI log
    (``python -m ops.young_series``) the trailing 28-day mean's WAPE was 1.906 that way and 1.532 padded.
    ``units`` NaN (future) rows never enter a window that ends before them."""
    u = np.nan_to_num(units, nan=0.0)
    c = np.cumsum(u)
    prev = c - u  # sum of every value of the table before the row
    start = np.arange(len(u)) - pos  # index of the series' first row
    lo = np.maximum(np.arange(len(u)) - w, start)  # first row of the window
    before_lo = np.where(lo > 0, c[np.maximum(lo - 1, 0)], 0.0)  # sum of every value before it
    n = np.minimum(np.maximum(age, pos), w).astype("float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (prev - before_lo) / n, np.nan)


def _weekday_running_sum(units: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Running sum of ``units`` over the same weekday within each series (NaN counts 0), shape (n,):
    c[i] = units[i] + c[i - 7] while row i - 7 is in the series."""
    key = (np.arange(len(units)) - pos) * SEASON + pos % SEASON  # (series' first row, weekday) -> one group
    return pd.Series(np.nan_to_num(units, nan=0.0)).groupby(key, sort=False).cumsum().to_numpy()


def _same_weekday_mean(wsum: np.ndarray, pos: np.ndarray, idx: np.ndarray, weeks: int) -> np.ndarray:
    """Mean of units at rows idx, idx-7, ..., idx-7*(weeks-1) that lie within the series (NaN if none, or if
    idx < 0), from their :func:`_weekday_running_sum` ``wsum``: one difference per row instead of ``weeks``
    gathers."""
    i = np.maximum(idx, 0)
    n = np.where(idx >= 0, np.minimum(weeks, pos[i] // SEASON + 1), 0)
    full = pos[i] >= SEASON * weeks  # the window lies within the series: subtract the sum before it
    total = wsum[i] - np.where(full, wsum[np.maximum(i - SEASON * weeks, 0)], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan)


def _days_since(dates: np.ndarray, data_start) -> np.ndarray:
    """Whole days from ``data_start`` (default: the earliest of ``dates``) to each of ``dates`` (datetime64[ns]),
    int64 of shape (n,)."""
    if len(dates) == 0:
        return np.zeros(0, "int64")
    start = dates.min() if data_start is None else np.datetime64(calendar_day(data_start), "ns")
    return ((dates - start) // np.timedelta64(1, "D")).astype("int64")


def group_trailing_mean(features: pd.DataFrame, by: str, w: int, pos: np.ndarray | None = None,
                        age: np.ndarray | None = None) -> pd.Series:
    """Mean over the rows sharing ``by`` (e.g. product_id: across stores) and date of the series' trailing
    ``w``-day mean strictly before the day: an item- or store-level demand level known at d-1.

    ``pos``: the rows' positions within their series (:func:`_series_positions`), if the caller has them;
    ``age``: their days since the data's first day (:func:`_trailing_mean`; default: the table's first day).
    """
    pos = _series_positions(features) if pos is None else pos
    if age is None:
        d = features["date"]
        d = calendar_days(d) if isinstance(d.dtype, pd.DatetimeTZDtype) else d
        age = _days_since(d.to_numpy("datetime64[ns]"), None)
    rm = pd.Series(_trailing_mean(features["units"].to_numpy("float64"), pos, w, age), index=features.index)
    return rm.groupby([features[by], features["date"]], sort=False, observed=True).transform("mean")


def make_supervised(features: pd.DataFrame, horizons: Iterable[int] = range(1, MAX_HORIZON + 1),
                    min_target_date=None, max_origin=None, *, origins: Iterable | None = None,
                    sample_per_target: int | None = None, seed: int = 42, max_target_date=None,
                    known_only: bool = False, max_rows: int = 0, data_start=None,
                    prices_known_ahead: bool = False) -> pd.DataFrame:
    """Direct multi-horizon rows: one per (series, origin t, horizon h) with target y_{t+h}.

    Rows are gathered by position (the feature table is gap-free and sorted per series), so only the
    requested (target day, h) pairs are materialised: ``origins`` for evaluation and forecasting,
    ``sample_per_target`` horizons per target day for training (a full cross product at 28 horizons
    would be 28 x the table).

    Per row, with target row i (day t+h), origin t and k = ceil(h / 7):

    * history (<= t) from the origin row t+1 of the feature table: :data:`HISTORY_COLUMNS`, plus
      ``rmean_28`` (trailing 28-day mean, the ``trailing_mean_28`` baseline), ``rmean_365`` and the
      item-level (across stores) and store-level (across items) 7- and 28-day means; these count the days
      before a series' first sale as zero demand back to ``data_start`` (:func:`_trailing_mean`);
    * seasonal lags on the target's weekday, all <= t: ``seas_lag_1`` = y_{t+h-7k} (the
      ``seasonal_naive`` baseline), ``seas_lag_2`` = y_{t+h-7k-7}, ``seas_mean_4`` / ``seas_mean_52``
      = mean of the last 4 / 52 same-weekday values up to t;
    * known-in-advance covariates of the target day (:data:`COVARIATE_COLUMNS`, weather), except the price
      columns (:data:`PRICE_COLUMNS`), which come from the origin row t unless ``prices_known_ahead``;
    * ``level`` = max(rmean_28, LEVEL_FLOOR) units/day (history) and the history/seasonal columns divided by
      it (``n_*``, scale-free, see :mod:`ml.forecast`), ``item_trend`` / ``store_trend`` (7-day over
      28-day mean of the item across stores / of the store across items), ``h``.

    Args:
        features: output of :func:`build_daily_features` (gap-free per series; sorted by store_id,
            product_id, date here when it is not, :func:`sorted_by_series`). Only its stored columns are read.
        horizons: horizons in days, each in 1..MAX_HORIZON (28).
        min_target_date: keep rows whose target date is >= this (bounds the training window).
        max_origin: keep rows whose origin is <= this.
        origins: only rows of these origins (target days origin+1..origin+max(horizons)).
        sample_per_target: draw this many horizons per target day (seeded), instead of all.
        seed: seed of that draw and of ``max_rows``' sample.
        max_target_date: keep rows whose target date is <= this.
        known_only: keep only rows whose target ``y`` is known (training rows).
        max_rows: keep a seeded uniform sample of at most this many rows (0 = all), drawn before the rows'
            features are gathered: the rows :func:`sample_positions` picks from the full output (same
            filters, same order, same seed), at the cost of gathering only them.
        data_start: the first day the chain's data covers (default: the table's first day); pass it when
            ``features`` holds a sample of the series.
        Every date argument (origins, min_target_date, max_origin, max_target_date, data_start) and a
        timezone-aware ``date`` column are read as naive calendar days (:func:`calendar_day`), so horizons
        count calendar days across a DST change.
        prices_known_ahead: take :data:`PRICE_COLUMNS` from the target day (a price list published for the
            horizon) instead of the origin (the price paid, known only up to t; the default).

    Returns:
        DataFrame with store_id, product_id, origin, date (= target date), h, y (target, NaN for the
        future), the baselines ``seasonal_naive`` and ``trailing_mean_28`` (units) and
        :func:`feature_columns`. Rows whose origin lies before the series start are dropped.

    Raises:
        ValueError: a horizon outside 1..MAX_HORIZON.
    """
    hs = sorted(set(int(h) for h in horizons))
    if not hs or hs[0] < 1 or hs[-1] > MAX_HORIZON:
        raise ValueError(f"horizons must be within 1..{MAX_HORIZON}, got {hs}")
    f = sorted_by_series(features).reset_index(drop=True)
    if isinstance(f["date"].dtype, pd.DatetimeTZDtype):   # a table not from build_daily_features
        f = f.assign(date=calendar_days(f["date"]))
    pos = _series_positions(f)
    dates = f["date"].to_numpy("datetime64[ns]")
    n = len(f)
    if origins is not None:
        tidx_l, h_l = [], []
        ol = calendar_days(origins).to_numpy("datetime64[ns]")
        for o in ol:
            h_all = ((dates - o) // np.timedelta64(1, "D")).astype("int64")
            m = np.isin(h_all, hs)
            tidx_l.append(np.flatnonzero(m))
            h_l.append(h_all[m])
        tidx = np.concatenate(tidx_l) if tidx_l else np.zeros(0, "int64")
        h = np.concatenate(h_l) if h_l else np.zeros(0, "int64")
    else:
        cand = np.arange(n)
        if min_target_date is not None:
            cand = cand[dates[cand] >= np.datetime64(calendar_day(min_target_date), "ns")]
        if sample_per_target is not None and sample_per_target < len(hs):
            rng = np.random.default_rng(seed)
            k = int(sample_per_target)
            draws = np.argsort(rng.random((len(cand), len(hs))), axis=1)[:, :k]
            tidx = np.repeat(cand, k)
            h = np.asarray(hs)[draws.ravel()]
        else:
            tidx = np.repeat(cand, len(hs))
            h = np.tile(np.asarray(hs), len(cand))
    keep = pos[tidx] >= h  # origin t = d - h lies within the series
    if min_target_date is not None and origins is not None:
        keep &= dates[tidx] >= np.datetime64(calendar_day(min_target_date), "ns")
    if max_origin is not None:
        keep &= dates[tidx] - h.astype("timedelta64[D]") <= np.datetime64(calendar_day(max_origin), "ns")
    if max_target_date is not None:
        keep &= dates[tidx] <= np.datetime64(calendar_day(max_target_date), "ns")
    tidx, h = tidx[keep], h[keep].astype("int64")
    units = f["units"].to_numpy("float64")
    if known_only:
        known = ~np.isnan(units[tidx])
        tidx, h = tidx[known], h[known]
    # the output's order, set once here: origin, series (the table is sorted by store_id, product_id, date, so a
    # series' first row index orders store_id, product_id), h; then the sample keeps that order
    order = np.lexsort((h, tidx - pos[tidx], dates[tidx] - h.astype("timedelta64[D]")))
    tidx, h = tidx[order], h[order]
    if 0 < max_rows < len(tidx):
        sel = sample_positions(len(tidx), max_rows, seed)
        tidx, h = tidx[sel], h[sel]
    hidx = tidx - h + 1  # origin row t+1: its history columns hold information <= t
    k = -(-h // SEASON)
    sidx = tidx - SEASON * k  # y_{t+h-7k}, the last same-weekday value <= t

    out = pd.DataFrame({"store_id": f["store_id"].to_numpy()[tidx], "product_id": f["product_id"].to_numpy()[tidx],
                        "date": dates[tidx], "h": h.astype("int8")})
    out["origin"] = out["date"] - pd.to_timedelta(h, unit="D")
    out["y"] = units[tidx]
    for c in HISTORY_COLUMNS:
        out[c] = f[c].to_numpy("float64")[hidx]
    age = _days_since(dates, data_start)
    extra = {"rmean_28": _trailing_mean(units, pos, 28, age), "rmean_365": _trailing_mean(units, pos, 365, age)}
    for by, name in (("product_id", "item"), ("store_id", "store")):
        for w in (7, 28):
            extra[f"{name}_rmean_{w}"] = group_trailing_mean(f, by, w, pos, age).to_numpy("float64")
    for c, v in extra.items():
        out[c] = v[hidx]
    out["seas_lag_1"] = np.where(pos[tidx] >= SEASON * k, units[np.maximum(sidx, 0)], np.nan)
    out["seas_lag_2"] = np.where(pos[tidx] >= SEASON * (k + 1), units[np.maximum(sidx - SEASON, 0)], np.nan)
    wsum, last = _weekday_running_sum(units, pos), np.where(pos[tidx] >= SEASON * k, sidx, -1)
    out["seas_mean_4"] = _same_weekday_mean(wsum, pos, last, 4)
    out["seas_mean_52"] = _same_weekday_mean(wsum, pos, last, 52)
    oidx = tidx - h  # the origin row t (within the series: pos >= h above)
    for c in COVARIATE_COLUMNS + [c for c in WEATHER_COLUMNS if c in f.columns]:
        out[c] = f[c].to_numpy()[oidx if c in PRICE_COLUMNS and not prices_known_ahead else tidx]
    fill = HISTORY_COLUMNS + list(extra)
    out[fill] = out[fill].fillna(0.0)
    for c in ("seas_lag_1", "seas_lag_2", "seas_mean_4", "seas_mean_52"):
        out[c] = out[c].fillna(out["rmean_28"])  # too short a history: the trailing mean
    out["seasonal_naive"] = out["seas_lag_1"]
    out["trailing_mean_28"] = out["rmean_28"]
    out["level"] = np.maximum(sum(w * out[c] for c, w in LEVEL_WEIGHTS.items()), LEVEL_FLOOR)
    for c in NORMALISED_SOURCES:
        out[f"n_{c}"] = out[c] / out["level"]
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in ("item", "store"):
            r = out[f"{name}_rmean_7"] / out[f"{name}_rmean_28"]
            out[f"{name}_trend"] = r.replace([np.inf, -np.inf], np.nan).fillna(1.0)
    return out
