"""Nightly ETL: raw events in the lake -> ClickHouse star schema (``clickhouse/migrations/010_star_schema.sql``).

Run by ``dags/daily_etl.py`` as three tasks; every task reads its input from the lake and writes its
output to the lake or ClickHouse, so tasks exchange only small XComs (paths and counts):

1. ``build_facts``: the Spark job ``etl/jobs/daily_facts.py`` (:mod:`etl.spark_facts`) reads the day's raw
   partitions ``raw-data/<event_type>/year=YYYY/month=MM/day=DD/*.parquet`` (sales_transaction,
   inventory_update), deduplicates events on their event id, builds the fact rows (fact_sales lines,
   fact_sales_daily, closing stock) in Spark and the dimension rows with the pandas builders below, and stages
   them as Parquet in ``features/staging/daily_etl/date=YYYY-MM-DD/`` (deterministic names: a re-run overwrites).
   :func:`extract` + :func:`transform` are the same step in pandas, in-process (scripts, :func:`run_day`;
   tests use them as a second implementation).
2. :func:`load` (the only task besides 3 that opens ClickHouse) upserts the dimensions
   (ReplacingMergeTree), replaces the date's ``fact_sales`` / ``fact_sales_daily`` / ``fact_inventory``
   partition atomically
   (``ALTER TABLE ... REPLACE PARTITION ... FROM`` a staging table of the call's own, :func:`own_staging`;
   ``DROP PARTITION`` when the day is empty) and computes safety stock from the trailing fact_sales.
3. :func:`quality_check` re-reads the raw lake partition independently and requires fact_sales to
   reconcile *exactly* (rows, units, revenue) plus referential integrity; it records the run in
   ``etl_runs`` and raises :class:`DataQualityError` on any mismatch.

Conventions
-----------
* The ETL date is a UTC calendar date (event time is epoch-ms UTC); ``date_key`` = YYYYMMDD.
* Money is exact: a line amount is ``round(quantity * price, 4)`` computed as an integer number of
  1/10000 currency units (``*_e4`` columns in staging) and stored as ``Decimal(18, 4)``.
* Returns and cancellations are sales lines with ``quantity < 0``; they keep their sign, so revenue,
  cost and profit of a return are negative and sums are net. ``is_return`` flags them.
* Price at time of sale = ``unit_price`` of the event; cost = ``quantity * unit_cost`` of the product master
  version valid on the line's day (:func:`reference_history`: a later change of the master does not rewrite a
  re-run day; NULL when the SKU has no reference data); profit = revenue - cost. ``dim_product`` holds the current
  version.
* Surrogate keys are deterministic hashes of the natural keys (:func:`surrogate_key`), so dims and facts
  can be built in any order and re-runs produce the same keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SALES = "sales_transaction"
INVENTORY = "inventory_update"
EVENT_ID = {SALES: "transaction_id", INVENTORY: "inventory_id", "price_change": "price_change_id",
            "customer_event": "event_id", "restock_alert": "alert_id"}
#: trailing window of daily demand used for the fallback safety stock
SAFETY_STOCK_WINDOW_DAYS = 28
#: ISO-3166-2 subdivision used for a bare country code's holidays (``holidays`` has no England-only
#: bank holidays for plain "GB": Easter Monday and the Summer bank holiday need subdiv ENG).
DEFAULT_SUBDIVISIONS = {"GB": "ENG"}
STAGING_PREFIX = "staging/daily_etl"

PRODUCT_COLUMNS = ["product_key", "sku", "product_name", "category", "sub_category", "brand", "supplier",
                   "unit_cost", "unit_price", "shelf_life_days", "reorder_point", "storage_capacity", "is_known"]
STORE_COLUMNS = ["store_key", "store_id", "store_name", "city", "country", "country_code", "region", "is_known"]


class EtlError(RuntimeError):
    """The ETL cannot run (missing input, bad data shape); the message says what and where."""


class LakeChangedError(RuntimeError):
    """The day's raw partition changed between the build and the quality check (a late file landed during the
    run). Not bad data and not an :class:`EtlError`: the run is retryable, and the next night's re-check
    (:func:`days_to_recheck`) reloads the day since its listing differs from the one that was loaded."""


class DataQualityError(EtlError):
    """The loaded star schema does not reconcile with the lake; ``failures`` lists each failed check."""

    def __init__(self, day: dt.date, failures: list[str]):
        self.day, self.failures = day, failures
        super().__init__(f"daily_etl data-quality check failed for {day.isoformat()}: " + "; ".join(failures))


# ------------------------------------------------------------------------------------------ keys --
def date_key(day: dt.date) -> int:
    """YYYYMMDD integer of a date, e.g. 2011-08-29 -> 20110829."""
    return day.year * 10000 + day.month * 100 + day.day


def surrogate_key(natural_key: str) -> int:
    """Deterministic UInt64 surrogate key: first 8 bytes (big-endian) of BLAKE2b(natural_key, utf-8)."""
    return int.from_bytes(hashlib.blake2b(str(natural_key).encode(), digest_size=8).digest(), "big")


def _keys(values: pd.Series) -> pd.Series:
    uniq = {v: surrogate_key(v) for v in pd.unique(values)}
    return values.map(uniq).astype("uint64")


def amount_e4(quantity: pd.Series, price: pd.Series) -> pd.Series:
    """Line amount ``round(quantity * price, 4)`` as Int64 ten-thousandths (NA where price is NA).

    Rounding is half-to-even on the float product (numpy.rint); the integer result makes sums exact.
    """
    prod = quantity.astype("float64") * price.astype("float64")
    out = np.rint(prod * 10000.0)
    return pd.Series(out, index=quantity.index).astype("Int64")


def e4_to_decimal(v: int | None) -> Decimal | None:
    """Ten-thousandths -> Decimal with 4 places (None stays None)."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    return Decimal(int(v)).scaleb(-4)


# ----------------------------------------------------------------------------------- transforms --
def deduplicate(events: pd.DataFrame, id_column: str) -> tuple[pd.DataFrame, int]:
    """Keep one row per event id (at-least-once delivery and replays repeat events).

    The kept row is the first ingested copy: order by (``ingested_at``, ``kafka_partition``,
    ``kafka_offset``) when those columns exist, else by input order.

    Args:
        events: raw events, one row per delivered copy.
        id_column: the event id column (e.g. ``transaction_id``).

    Returns:
        (deduplicated frame with a fresh RangeIndex, number of dropped duplicate rows).

    Raises:
        EtlError: the id column is missing or holds nulls.
    """
    if id_column not in events.columns:
        raise EtlError(f"event id column {id_column!r} missing; columns: {list(events.columns)}")
    if events[id_column].isna().any():
        raise EtlError(f"{int(events[id_column].isna().sum())} events have a null {id_column}")
    order = [c for c in ("ingested_at", "kafka_partition", "kafka_offset") if c in events.columns]
    ev = events.sort_values(order, kind="stable") if order else events
    out = ev.drop_duplicates(subset=[id_column], keep="first").reset_index(drop=True)
    return out, len(events) - len(out)


def events_of_day(events: pd.DataFrame, day: dt.date, ts_column: str = "timestamp") -> tuple[pd.DataFrame, int]:
    """Rows whose event time (UTC) falls on ``day``; returns (rows, number of rows outside the day).

    Rows outside the day are misfiled in the partition (they belong to another date's partition) and
    are left out and counted, never loaded twice.

    Raises:
        EtlError: rows without an event time (null ``ts_column``): a contract violation, never dropped as misfiled.
    """
    if events.empty:
        return events, 0
    ts = pd.to_datetime(events[ts_column], utc=True)
    if ts.isna().any():
        raise EtlError(f"{int(ts.isna().sum())} raw events violate the contract: null {ts_column} (event time)")
    mask = (ts.dt.date == day).to_numpy()
    return events.loc[mask].reset_index(drop=True), int((~mask).sum())


#: product master columns that must be numbers >= 0 when given (null = unknown): money per unit, days, units
PRODUCT_NUMBERS = ("unit_cost", "unit_price", "shelf_life_days", "reorder_point", "storage_capacity")
#: largest value of UInt32 (dim_product / dim_product_history's shelf_life_days, reorder_point, storage_capacity)
UINT32_MAX = 4_294_967_295
#: largest amount of Decimal(18, 4) (fact_sales' revenue and cost): one unit's price or cost must fit
DECIMAL_18_4_MAX = 99_999_999_999_999.9999
#: upper bound of each of :data:`PRODUCT_NUMBERS`, from the ClickHouse columns it is loaded into
#: (clickhouse/migrations/010_star_schema.sql, 070_dim_history.sql): a larger value failed later, and retried
#: (1e30: TypeError in build_dim_product; 5e9: clickhouse_connect DataError for UInt32 in ``load``)
PRODUCT_NUMBER_MAX = {"unit_cost": DECIMAL_18_4_MAX, "unit_price": DECIMAL_18_4_MAX,
                      "shelf_life_days": UINT32_MAX, "reorder_point": UINT32_MAX, "storage_capacity": UINT32_MAX}
#: the integer columns among them (rounded before they are stored; the bound applies to the rounded value)
_PRODUCT_INTEGERS = ("shelf_life_days", "reorder_point", "storage_capacity")


def _not_a_number(v) -> bool:
    """True for a value that pandas would turn into a number but is none: a boolean, a date/time or a duration."""
    return isinstance(v, (bool, np.bool_, dt.date, dt.time, dt.timedelta, np.datetime64, np.timedelta64))


def bad_product_numbers(products: pd.DataFrame) -> dict[str, pd.Series]:
    """The bad cells of a product master's :data:`PRODUCT_NUMBERS`, per column present.

    A cell is good when null or blank text (a blank CSV cell: unknown) or a finite number in
    [0, :data:`PRODUCT_NUMBER_MAX`] (integer columns: after rounding); bad when text that is no number, a boolean,
    a date/time or duration, negative, infinite or above the column's bound.

    Returns: {column: boolean Series aligned with ``products`` (True = bad)}, only columns with a bad cell.
    """
    out = {}
    for col in PRODUCT_NUMBERS:
        if col not in products.columns:
            continue
        raw = products[col]
        if pd.api.types.is_bool_dtype(raw) or pd.api.types.is_datetime64_any_dtype(raw) \
                or pd.api.types.is_timedelta64_dtype(raw):
            wrong = raw.notna()
        else:
            textual = raw.dtype == object or pd.api.types.is_string_dtype(raw)   # object or pandas' string dtype
            kind = raw.map(_not_a_number).astype(bool) if textual else pd.Series(False, index=raw.index)
            blank = raw.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool) if textual else kind
            num = pd.to_numeric(raw.mask(blank | kind), errors="coerce").astype("float64")
            size = num.round() if col in _PRODUCT_INTEGERS else num
            wrong = kind | (raw.notna() & ~blank & num.isna()) | (num < 0) | np.isinf(num) \
                | (size > PRODUCT_NUMBER_MAX[col])
        if wrong.any():
            out[col] = wrong.astype(bool)
    return out


def _examples(products: pd.DataFrame, col: str, wrong: pd.Series) -> str:
    ids = products["product_id"] if "product_id" in products.columns else pd.Series(products.index, index=products.index)
    def plain(v):   # numpy scalars as Python values: 'P1': -1.5, not np.float64(-1.5)
        return v.item() if isinstance(v, np.generic) else v

    return ", ".join(f"{plain(ids[i])!r}: {plain(products[col][i])!r}" for i in wrong[wrong].index[:3])


def check_product_master(products: pd.DataFrame) -> None:
    """Refuse a product master (``raw-data/reference/products``) whose numeric attributes are not numbers >= 0
    that fit their ClickHouse columns.

    Only the rows kept by the de-duplication (the last row of each product_id, as :func:`build_dim_product` and
    :func:`reference_history` keep) are checked. Each of :data:`PRODUCT_NUMBERS` present must be null or blank
    (unknown) or a finite number in [0, :data:`PRODUCT_NUMBER_MAX`] (unit_cost and unit_price in currency per unit,
    at most 99,999,999,999,999.9999, Decimal(18, 4); shelf_life_days in days, reorder_point and storage_capacity in
    units, at most 4,294,967,295 after rounding, UInt32; 0 is allowed) (:func:`bad_product_numbers`). A value that
    is text, a boolean, a date, negative or infinite would otherwise become NULL unseen (text) or a wrong cost,
    margin, reorder point or capacity in the star schema and the reorder plan; one too large failed later and
    retried (TypeError, or a DataError in ``load``).

    Raises:
        EtlError: naming each bad column, its count of bad rows and up to 3 of their product ids and values
            (the Spark job exits 3: bad data, no retry).
    """
    if "product_id" in products.columns:
        products = products.drop_duplicates("product_id", keep="last")
    bad = [f"{col} in {int(wrong.sum())} row(s) (e.g. {_examples(products, col, wrong)})"
           for col, wrong in bad_product_numbers(products).items()]
    if bad:
        raise EtlError("the product master (raw-data/reference/products) has values that are not numbers >= 0 "
                       "within their column's bound (UInt32 4,294,967,295; money 99,999,999,999,999.9999): "
                       + "; ".join(bad) + ". Correct the reference file and re-run the date.")


def coerce_product_numbers(products: pd.DataFrame, where: str) -> pd.DataFrame:
    """``products`` with the bad cells of :func:`bad_product_numbers` set to null (unknown), logging a warning that
    names ``where`` (the history file), the columns and their product ids.

    For the stored version history (:func:`reference_history`): versions written before the check existed held
    such values (coerced unseen then); the operator cannot edit them through the reference file, so they must
    never block a night. Returns a copy (the input when nothing is bad)."""
    bad = bad_product_numbers(products)
    if not bad:
        return products
    out = products.copy()
    for col, wrong in bad.items():
        log.warning("%s: %s of %d version(s) is not a number >= 0 within its bound, read as unknown (NULL): %s",
                    where, col, int(wrong.sum()), _examples(products, col, wrong))
        out[col] = out[col].astype(object).where(~wrong, None)
    return out


def build_dim_product(products: pd.DataFrame | None, skus_seen: pd.Series, history: str | None = None) -> pd.DataFrame:
    """dim_product rows: every reference product (is_known=1) plus a placeholder (is_known=0, unknown
    attributes, NULL unit_cost) for each SKU seen in events but absent from the reference data.

    Args:
        products: ``raw-data/reference/products`` (product_id, product_name, category, sub_category,
            brand, supplier, unit_cost, unit_price, shelf_life_days, reorder_point, storage_capacity) or None.
        skus_seen: SKUs (product_id) of the day's events.
        history: None for the reference file (refused when bad); the history file's path for versions read from
            the stored history (:func:`reference_as_of`, :func:`history_rows`): bad numbers become null with a
            warning naming it (:func:`coerce_product_numbers`), never an error.

    Returns: frame with :data:`PRODUCT_COLUMNS`, one row per SKU.
    Raises:
        EtlError: (``history`` None) a numeric attribute is text, negative, infinite or too large for its column
            (:func:`check_product_master`).
    """
    if products is not None and not products.empty:
        if history is None:
            check_product_master(products)
        else:
            products = coerce_product_numbers(products, history)
        p = products.drop_duplicates("product_id", keep="last").rename(columns={"product_id": "sku"}).copy()
        p["is_known"] = 1
    else:
        p = pd.DataFrame({"sku": pd.Series(dtype="object"), "is_known": pd.Series(dtype="int64")})
    missing = sorted(set(skus_seen.dropna().astype(str)) - set(p["sku"].astype(str)))
    if missing:
        p = pd.concat([p, pd.DataFrame({"sku": missing, "product_name": "", "is_known": 0})], ignore_index=True)
    for col in PRODUCT_COLUMNS:
        if col not in p.columns:
            p[col] = None
    p["sku"] = p["sku"].astype(str)
    for col in ("product_name", "category", "sub_category", "brand", "supplier"):
        p[col] = p[col].fillna("unknown" if col != "product_name" else "").astype(str)
    for col in ("unit_cost", "unit_price"):
        p[col] = pd.to_numeric(p[col], errors="coerce").astype("float64")
    for col in ("shelf_life_days", "reorder_point", "storage_capacity"):
        p[col] = pd.to_numeric(p[col], errors="coerce").round().astype("Int64")
    p["product_key"] = _keys(p["sku"])
    p["is_known"] = p["is_known"].astype("uint8")
    return p[PRODUCT_COLUMNS].reset_index(drop=True)


def build_dim_store(stores: pd.DataFrame | None, store_ids_seen: pd.Series, default_country: str) -> pd.DataFrame:
    """dim_store rows: reference stores (is_known=1) plus placeholders for stores seen only in events
    (country_code = ``default_country``). Returns frame with :data:`STORE_COLUMNS`."""
    if stores is not None and not stores.empty:
        s = stores.drop_duplicates("store_id", keep="last").copy()
        s["is_known"] = 1
    else:
        s = pd.DataFrame({"store_id": pd.Series(dtype="object"), "is_known": pd.Series(dtype="int64")})
    missing = sorted(set(store_ids_seen.dropna().astype(str)) - set(s["store_id"].astype(str)))
    if missing:
        s = pd.concat([s, pd.DataFrame({"store_id": missing, "store_name": missing, "is_known": 0})],
                      ignore_index=True)
    for col in STORE_COLUMNS:
        if col not in s.columns:
            s[col] = None
    s["store_id"] = s["store_id"].astype(str)
    s["country_code"] = s["country_code"].fillna(default_country).astype(str).str.upper()
    for col in ("store_name", "city", "country", "region"):
        s[col] = s[col].fillna("").astype(str)
    s["store_key"] = _keys(s["store_id"])
    s["is_known"] = s["is_known"].astype("uint8")
    return s[STORE_COLUMNS].reset_index(drop=True)


#: country codes already reported as having no calendar (warned once per process, not once per loaded day)
_NO_CALENDAR: set[str] = set()


def _country_holidays(code: str, years: list[int]):
    import holidays

    country, _, subdiv = code.upper().partition("-")
    subdiv = subdiv or DEFAULT_SUBDIVISIONS.get(country)
    try:
        return holidays.country_holidays(country, subdiv=subdiv, years=years)
    except NotImplementedError:
        if code not in _NO_CALENDAR:
            _NO_CALENDAR.add(code)
            log.warning("holidays package has no calendar for %r; treating it as having no holidays", code)
        return {}


def build_dim_date(days: list[dt.date], country_codes: list[str], default_country: str) -> pd.DataFrame:
    """dim_date rows, one per date (not per country).

    ``is_holiday``/``holiday_name`` are for ``default_country`` (STORE_COUNTRY_DEFAULT, recorded in
    ``holiday_country``); ``holiday_countries``/``holiday_names`` list every country of
    ``country_codes`` (the stores' countries) where the date is a public holiday, so a fact row's
    own-country flag is ``has(d.holiday_countries, s.country_code)``. Holidays come from the PyPI
    ``holidays`` package; a bare "GB" uses the England & Wales bank holidays (subdivision ENG);
    "GB-SCT"-style ISO-3166-2 codes select another subdivision.

    day_of_week is ISO (1 = Monday .. 7 = Sunday); is_weekend = Saturday or Sunday.
    """
    days = sorted(set(days))
    codes = sorted({c.upper() for c in country_codes} | {default_country.upper()})
    years = sorted({d.year for d in days})
    cal = {c: _country_holidays(c, years) for c in codes}
    rows = []
    for d in days:
        names = {c: str(cal[c].get(d)) for c in codes if d in cal[c]}
        rows.append({
            "date_key": date_key(d), "date": d, "day_of_week": d.isoweekday(), "day_name": d.strftime("%A"),
            "day_of_month": d.day, "week_of_year": d.isocalendar()[1], "month": d.month,
            "month_name": d.strftime("%B"), "quarter": (d.month - 1) // 3 + 1, "year": d.year,
            "is_weekend": int(d.isoweekday() >= 6),
            "is_holiday": int(default_country.upper() in names), "holiday_name": names.get(default_country.upper(), ""),
            "holiday_country": default_country.upper(),
            "holiday_countries": sorted(names), "holiday_names": names,
        })
    return pd.DataFrame(rows)


def calendar_days(day: dt.date) -> list[dt.date]:
    """Dates whose dim_date rows a run upserts: the whole calendar year of ``day`` and of ``day + 31``
    (so forecasts up to a month ahead find their dates). Rows are deterministic: upserting is idempotent."""
    first = dt.date(day.year, 1, 1)
    last = dt.date((day + dt.timedelta(days=31)).year, 12, 31)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def build_fact_sales(sales: pd.DataFrame, dim_product: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """fact_sales rows from deduplicated sales_transaction events of one day.

    Args:
        sales: deduplicated events (transaction_id, store_id, product_id, quantity, unit_price,
            timestamp, customer_id, payment_method, invoice_id).
        dim_product: output of :func:`build_dim_product` (for unit_cost).
        day: the ETL date (UTC) -> date_key.

    Returns:
        One row per line: sale_id, date_key, event_time, product_key, store_key, invoice_id,
        customer_id, payment_method, quantity (signed), unit_price, revenue_e4, cost_e4, profit_e4
        (Int64 ten-thousandths; cost/profit NA when unit_cost is unknown), is_return.

    Raises:
        EtlError: a line has quantity 0 or null, or a negative/NaN/null price (contract violations that the
        streaming job should have quarantined).
    """
    if sales.empty:
        return pd.DataFrame(columns=["sale_id", "date_key", "event_time", "product_key", "store_key", "invoice_id",
                                     "customer_id", "payment_method", "quantity", "unit_price", "revenue_e4",
                                     "cost_e4", "profit_e4", "is_return"])
    bad = (sales["quantity"].eq(0) | sales["quantity"].isna() | sales["unit_price"].isna()
           | sales["unit_price"].lt(0)).fillna(True)
    if bad.any():
        raise EtlError(f"{int(bad.sum())} sales lines violate the contract (quantity 0/null or price < 0/null), "
                       f"e.g. {sales.loc[bad, 'transaction_id'].head(3).tolist()}")
    cost = sales["product_id"].astype(str).map(dim_product.set_index("sku")["unit_cost"])
    f = pd.DataFrame({
        "sale_id": sales["transaction_id"].astype(str),
        "date_key": date_key(day),
        "event_time": pd.to_datetime(sales["timestamp"], utc=True),
        "product_key": _keys(sales["product_id"].astype(str)),
        "store_key": _keys(sales["store_id"].astype(str)),
        "invoice_id": sales["invoice_id"] if "invoice_id" in sales else None,
        "customer_id": sales["customer_id"] if "customer_id" in sales else None,
        "payment_method": (sales["payment_method"] if "payment_method" in sales else "UNKNOWN"),
        "quantity": sales["quantity"].astype("int32"),
        "unit_price": sales["unit_price"].astype("float64"),
    })
    f["payment_method"] = f["payment_method"].fillna("UNKNOWN").astype(str)
    f["revenue_e4"] = amount_e4(f["quantity"], f["unit_price"])
    f["cost_e4"] = amount_e4(f["quantity"], cost)
    f["profit_e4"] = f["revenue_e4"] - f["cost_e4"]
    f["is_return"] = (f["quantity"] < 0).astype("uint8")
    return f.reset_index(drop=True)


def closing_stock(updates: pd.DataFrame) -> pd.DataFrame:
    """Closing stock per store x SKU from the day's deduplicated inventory_update events.

    The closing stock is ``new_quantity`` of the last update by event time (ties: Kafka offset; one
    store x SKU always lands in one partition because the key is ``store_id|product_id``).
    reorder_point is the last non-null reorder_point of the day (NA when none). units_received is the day's sum
    of quantity_change over the updates with reason RESTOCK (a receipt; 0 without one, or when the events carry
    no reason), which the nightly reorder plan nets against its earlier orders (ml.pipeline.load_open_orders).

    Returns: store_id, product_id, closing_stock, last_update_time, reorder_point, units_received (units).
    """
    cols = ["store_id", "product_id", "closing_stock", "last_update_time", "reorder_point", "units_received"]
    if updates.empty:
        return pd.DataFrame(columns=cols)
    order = ["timestamp"] + [c for c in ("kafka_offset",) if c in updates.columns]
    u = updates.sort_values(order, kind="stable")
    last = u.groupby(["store_id", "product_id"], sort=True).tail(1).set_index(["store_id", "product_id"])
    rp = u.dropna(subset=["reorder_point"]).groupby(["store_id", "product_id"])["reorder_point"].last() \
        if "reorder_point" in u else pd.Series(dtype="float64")
    out = pd.DataFrame({
        "closing_stock": last["new_quantity"].astype("int64"),
        "last_update_time": pd.to_datetime(last["timestamp"], utc=True),
    })
    out["reorder_point"] = rp.reindex(out.index).astype("float64")
    if "reason" in u.columns and "quantity_change" in u.columns:
        rec = u.loc[u["reason"] == "RESTOCK"].groupby(["store_id", "product_id"])["quantity_change"].sum()
        out["units_received"] = rec.reindex(out.index).fillna(0).astype("int64")
    else:
        out["units_received"] = np.int64(0)
    return out.reset_index()[cols]


def carry_forward(today: pd.DataFrame, previous: pd.DataFrame) -> pd.DataFrame:
    """Combine the day's closing stock with the previous snapshot (carried forward when no update).

    Args:
        today: store_key, product_key, closing_stock, last_update_time, reorder_point, optional units_received
            (the day's updates).
        previous: the latest earlier fact_inventory snapshot: store_key, product_key, closing_stock,
            last_update_time, reorder_point (may be empty).

    Returns: the union of both key sets; today's rows win (is_carried_forward=0), otherwise the
    previous row with is_carried_forward=1 and units_received 0 (nothing arrived that day). A day's update
    without reorder_point keeps the previous one.
    """
    key = ["store_key", "product_key"]
    cols = key + ["closing_stock", "last_update_time", "reorder_point"]
    t = today[cols].copy()
    t["units_received"] = today["units_received"].fillna(0).astype("int64") if "units_received" in today else 0
    t["is_carried_forward"] = 0
    if previous is None or previous.empty:
        return t.reset_index(drop=True)
    p = previous[cols].copy()
    p["units_received"] = 0
    p["is_carried_forward"] = 1
    prev_rp = p.set_index(key)["reorder_point"]
    t_idx = pd.MultiIndex.from_frame(t[key])
    t["reorder_point"] = t["reorder_point"].where(t["reorder_point"].notna(),
                                                  pd.Series(prev_rp.reindex(t_idx).to_numpy(), index=t.index))
    p = p[~pd.MultiIndex.from_frame(p[key]).isin(t_idx)]
    return pd.concat([t, p], ignore_index=True).sort_values(key).reset_index(drop=True)


def demand_sigma(daily_units: pd.DataFrame, days: list[int]) -> pd.DataFrame:
    """Sample standard deviation (ddof=1) of daily demand per store x SKU over ``days``.

    Args:
        daily_units: store_key, product_key, date_key, units (units/day: the ``demand_daily`` view's units sold
            less same-day order cancellations, ``clickhouse/migrations/015_demand.sql``; days without sales may be
            absent: they count as 0).
        days: the date_keys of the window (every day counts, zero-filled).

    Returns: store_key, product_key, sigma_daily, mean_daily (NaN sigma when fewer than 2 days).
    """
    key = ["store_key", "product_key"]
    if daily_units.empty:
        return pd.DataFrame(columns=key + ["sigma_daily", "mean_daily"])
    wide = daily_units.pivot_table(index=key, columns="date_key", values="units", aggfunc="sum", fill_value=0)
    wide = wide.reindex(columns=days, fill_value=0)
    sigma = wide.std(axis=1, ddof=1) if len(days) >= 2 else pd.Series(np.nan, index=wide.index)
    return pd.DataFrame({"sigma_daily": sigma, "mean_daily": wide.mean(axis=1)}).reset_index()


def safety_stock_formula(sigma_daily: pd.Series | float, service_level: float, lead_time_days: float):
    """Safety stock = z(service level) x sigma_daily x sqrt(lead time in days).

    Classic formula for normally distributed i.i.d. daily demand and a fixed lead time (Silver, Pyke &
    Peterson, *Inventory Management and Production Planning and Scheduling*, 3rd ed., ch. 7; z is the
    standard normal quantile of the cycle service level, e.g. z(0.95) = 1.645). Units: units of stock.
    """
    from scipy.stats import norm

    z = float(norm.ppf(service_level))
    return z * sigma_daily * math.sqrt(lead_time_days)


def safety_stock(sigma_daily: pd.Series, service_level: float, lead_time_days: float) -> tuple[pd.Series, str]:
    """Safety stock per row (units) with the stock optimisation's own function
    ``ml.optimize.safety_stock(sigma_d, lead_time_days, service_level)`` (same formula with a fixed lead
    time), so the ETL and the reorder recommendations agree; :func:`safety_stock_formula` when
    ml.optimize is unavailable. NaN sigma (fewer than 2 days of history) gives NaN. Returns (values, method)."""
    sd = sigma_daily.astype("float64")
    try:
        from ml.optimize import safety_stock as optimize_safety_stock  # owned by the ML helper
    except ImportError:
        return safety_stock_formula(sd, service_level, lead_time_days), "z*sigma_28d*sqrt(L)"
    values = optimize_safety_stock(sd.to_numpy(), lead_time_days, service_level)
    return pd.Series(np.asarray(values, dtype="float64"), index=sd.index), "ml.optimize.safety_stock(sigma_28d)"


# ----------------------------------------------------------------------------------------- I/O ---
def _staging(day: dt.date, name: str) -> tuple[str, str]:
    from core.settings import get_settings

    return get_settings().lake_features_bucket, f"{STAGING_PREFIX}/date={day.isoformat()}/{name}.parquet"


def open_lake():
    """A :class:`core.lake.Lake` on the current settings (LAKE_URL: MinIO/S3 or a local folder), opened per call, so
    a task sees the settings of its own environment.

    Raises:
        core.settings.ConfigError: invalid lake settings (the message names the variable).
    """
    from core.lake import Lake
    from core.settings import get_settings

    return Lake(get_settings())


def read_raw_day(lake, event_type: str, day: dt.date) -> pd.DataFrame:
    """All rows of the raw partition ``raw-data/<event_type>/year=YYYY/month=MM/day=DD`` (empty frame
    when the partition does not exist). Timestamps are timezone-aware UTC."""
    bucket = lake.settings.lake_raw_bucket
    part = f"{event_type}/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"
    t = lake.read_table(bucket, part)
    if t is None:
        log.warning("no raw partition %s/%s", bucket, part)
        return pd.DataFrame()
    df = t.to_pandas()
    return df.drop(columns=[c for c in ("year", "month", "day") if c in df.columns])


def read_reference(lake, name: str) -> pd.DataFrame | None:
    """``raw-data/reference/<name>`` (products or stores) or None when absent."""
    t = lake.read_table(lake.settings.lake_raw_bucket, f"reference/{name}")
    return None if t is None else t.to_pandas()


#: natural key of each reference table (``raw-data/reference/<name>``)
REFERENCE_KEYS = {"products": "product_id", "stores": "store_id"}
#: version history of the reference data in LAKE_FEATURES_BUCKET (one Parquet file per table)
HISTORY_PREFIX = "staging/daily_etl/reference_history"
#: valid_from of a key's first version (no older one is known) and valid_to of a key's open version
FIRST_VALID, OPEN_VALID = dt.date(1970, 1, 1), dt.date(2149, 6, 6)   # ClickHouse Date's first and last day


def history_file(name: str = "products") -> str:
    """``<LAKE_FEATURES_BUCKET>/staging/daily_etl/reference_history/<name>.parquet``: the path of a reference
    table's version history (:func:`reference_history`), for messages."""
    from core.settings import get_settings

    return f"{get_settings().lake_features_bucket}/{HISTORY_PREFIX}/{name}.parquet"


def _fingerprint(df: pd.DataFrame) -> pd.Series:
    """One string per row: its values as JSON, columns sorted by name (nulls and NaN as null)."""
    cols = sorted(df.columns)
    vals = df[cols].astype(object).where(df[cols].notna(), None)
    return pd.Series([json.dumps(list(r), default=str) for r in vals.itertuples(index=False)], index=df.index)


def reference_history(lake, name: str = "products", today: dt.date | None = None) -> pd.DataFrame | None:
    """The version history (slowly changing dimension, type 2) of ``raw-data/reference/<name>`` (``products`` or
    ``stores``), brought up to date with the current reference first.

    The reference data is a snapshot that is overwritten, with no effective dates; the history, staged as
    ``<LAKE_FEATURES_BUCKET>/staging/daily_etl/reference_history/<name>.parquet``, remembers what it held: a key
    whose row differs from its open version (any column) gets a new version valid from ``today`` (the UTC date the
    change is first seen; default :func:`core.dagconf.utc_today`), and the open version ends the day before (a
    second change on the same day replaces that day's version). A key's first version is valid from 1970-01-01 (no
    older one known); a key gone from the reference keeps its open version. Idempotent: an unchanged reference
    writes nothing. Deleting the file makes the current reference valid for every day (a correction meant for the
    past). The product master is checked (:func:`check_product_master`) before anything is written: a bad
    reference file never becomes a version.

    Returns:
        DataFrame: the reference columns plus ``valid_from`` / ``valid_to`` (dates, inclusive; 2149-06-06 = open)
        and ``_fp`` (the row's fingerprint), one row per key and version; None when there is neither a reference
        nor a history.
    Raises:
        EtlError: (``products``) the reference file's numbers are bad (:func:`check_product_master`).
    """
    import pyarrow.parquet as pq

    from core.dagconf import utc_today

    key, path = REFERENCE_KEYS[name], (lake.settings.lake_features_bucket, f"{HISTORY_PREFIX}/{name}.parquet")
    # date32 columns come back as datetime.date
    hist = pq.read_table(lake.path(*path), filesystem=lake.fs).to_pandas(date_as_object=True) \
        if lake.exists(*path) else None
    cur = read_reference(lake, name)
    if cur is None or cur.empty:
        return hist
    if name == "products":
        check_product_master(cur)   # before the history is written (a bad version would then be read every night)
    cur = cur.drop_duplicates(key, keep="last").reset_index(drop=True)
    cur[key] = cur[key].astype(str)
    cur["_fp"] = _fingerprint(cur.drop(columns=["_fp"], errors="ignore"))
    today = today or utc_today()
    if hist is None:
        new = cur.assign(valid_from=FIRST_VALID, valid_to=OPEN_VALID)
    else:
        is_open = hist["valid_to"] == OPEN_VALID
        open_fp = hist.loc[is_open].set_index(key)["_fp"]
        changed = cur[cur[key].map(open_fp) != cur["_fp"]]
        if changed.empty:
            return hist
        known = changed[key].isin(open_fp.index)
        ended = is_open & hist[key].isin(changed[key])
        hist = hist[~(ended & (hist["valid_from"] >= today))].copy()   # changed again the same day: replaced
        hist.loc[hist[key].isin(changed[key]) & (hist["valid_to"] == OPEN_VALID), "valid_to"] = \
            today - dt.timedelta(days=1)
        added = changed.assign(valid_from=[today if k else FIRST_VALID for k in known], valid_to=OPEN_VALID)
        new = pd.concat([hist, added], ignore_index=True)
        log.warning("reference %s: %d changed and %d new key(s) since the last version, valid from %s",
                    name, int(known.sum()), int((~known).sum()), today)
    new = new.sort_values([key, "valid_from"], kind="stable").reset_index(drop=True)
    import pyarrow as pa

    lake.write_table(pa.Table.from_pandas(new, preserve_index=False), *path)
    return new


def reference_as_of(history: pd.DataFrame | None, day: dt.date) -> pd.DataFrame | None:
    """The rows of a :func:`reference_history` valid on ``day`` (``valid_from <= day <= valid_to``), in the reference
    data's own columns (history columns dropped); None when ``history`` is None. Its rows may hold numbers the
    product master check refuses (versions written before it): build them with ``build_dim_product(...,
    history=history_file())``, which reads those as unknown with a warning."""
    if history is None:
        return None
    rows = history[(history["valid_from"] <= day) & (history["valid_to"] >= day)]
    return rows.drop(columns=["valid_from", "valid_to", "_fp"]).reset_index(drop=True)


#: ClickHouse table (070_dim_history.sql) and its surrogate key column of each reference history
HISTORY_TABLES = {"products": ("dim_product_history", "product_key"), "stores": ("dim_store_history", "store_key")}


def history_rows(hist: pd.DataFrame | None, name: str) -> pd.DataFrame:
    """Rows of ``dim_product_history`` / ``dim_store_history`` (``clickhouse/migrations/070_dim_history.sql``) for
    the versions ``hist`` (a :func:`reference_history` of ``products`` / ``stores``, or a subset of its rows): the
    dimension builders' columns and surrogate keys (without ``is_known``), ``valid_from``, ``valid_to``,
    ``fingerprint`` (the lake row's ``_fp``) and ``revision`` (now, ns); one row per version, empty frame when
    ``hist`` is None or empty. The builders run once per version rank (a key's 1st, 2nd, ... version), not once
    per version."""
    import time

    from core.settings import get_settings

    if hist is None or hist.empty:
        return pd.DataFrame()
    key = REFERENCE_KEYS[name]
    hist = hist.sort_values([key, "valid_from"], kind="stable")
    parts = []
    for _, rows in hist.groupby(hist.groupby(key).cumcount(), sort=True):   # one row per key in each rank
        ref = rows.drop(columns=["valid_from", "valid_to", "_fp"])
        if name == "products":
            d = build_dim_product(ref, pd.Series(dtype=object), history=history_file(name)).drop(columns=["is_known"])
        else:
            d = build_dim_store(ref, pd.Series(dtype=object), get_settings().store_country_default) \
                .drop(columns=["is_known"])
        # the builders keep the reference's row order and add no row (no key seen in events is passed)
        parts.append(d.assign(valid_from=rows["valid_from"].to_numpy(), valid_to=rows["valid_to"].to_numpy(),
                              fingerprint=rows["_fp"].astype(str).to_numpy()))
    out = pd.concat(parts, ignore_index=True)
    out["revision"] = np.uint64(time.time_ns())
    return out


#: (key, valid_from) pairs per ``ALTER TABLE ... DELETE`` of :func:`sync_history`: a pair is at most 36 bytes of
#: SQL, so 2,000 stay far below ClickHouse's max_query_size (262,144 bytes; 8,000 pairs in one statement: code 62)
HISTORY_DELETE_CHUNK = 2_000


def sync_history(client, db: str, name: str, hist: pd.DataFrame | None) -> dict[str, int]:
    """Make ``<db>.dim_product_history`` / ``dim_store_history`` an exact mirror of the lake history ``hist`` (a
    :func:`reference_history` of ``products`` / ``stores``), with work proportional to the change.

    Reads the table's (key, valid_from, valid_to, fingerprint) once (FINAL); inserts the versions that are new or
    whose valid_to or fingerprint differ (a higher ``revision`` replaces the row of the same (key, valid_from));
    deletes (``ALTER TABLE ... DELETE``, synchronous, :data:`HISTORY_DELETE_CHUNK` pairs a statement) the rows whose (key, valid_from) is no longer in ``hist``, e.g.
    after the history file was deleted as a correction: without it a version (key, D, open) stayed next to the
    new (key, 1970-01-01, open) and an as-of join counted the facts from D twice. Unchanged history: no insert, no
    delete. ``hist`` None (neither reference nor history in the lake): the table is left as it is.

    Returns: {"inserted": rows inserted, "deleted": (key, valid_from) pairs deleted}.
    Raises: clickhouse_connect DatabaseError from the server.
    """
    table, kcol = HISTORY_TABLES[name]
    if hist is None:
        return {"inserted": 0, "deleted": 0}
    want = pd.DataFrame({kcol: _keys(hist[REFERENCE_KEYS[name]].astype(str)).to_numpy(),
                         "valid_from": hist["valid_from"].to_numpy(), "valid_to": hist["valid_to"].to_numpy(),
                         "fingerprint": hist["_fp"].astype(str).to_numpy()})
    have = client.query(f"SELECT {kcol}, valid_from, valid_to, fingerprint FROM {db}.{table} FINAL").result_rows
    have_map = {(int(k), vf): (vt, fp) for k, vf, vt, fp in have}
    want_ids = list(zip(want[kcol].astype("uint64").map(int), want["valid_from"]))
    changed = [have_map.get(i) != (vt, fp) for i, vt, fp in zip(want_ids, want["valid_to"], want["fingerprint"])]
    gone = sorted(set(have_map) - set(want_ids))
    rows = history_rows(hist[np.asarray(changed, dtype=bool)], name)
    if len(rows):
        client.insert_df(f"{db}.{table}", _nullable(rows) if name == "products" else rows)
    for i in range(0, len(gone), HISTORY_DELETE_CHUNK):   # one statement for every pair overflowed max_query_size
        pairs = ", ".join(f"({k}, '{vf.isoformat()}')" for k, vf in gone[i:i + HISTORY_DELETE_CHUNK])
        client.command(f"ALTER TABLE {db}.{table} DELETE WHERE ({kcol}, valid_from) IN ({pairs})",
                       settings={"mutations_sync": 2})
    if len(rows) or gone:
        log.info("%s: %d version(s) inserted, %d deleted (lake history: %d)", table, len(rows), len(gone), len(hist))
    return {"inserted": len(rows), "deleted": len(gone)}


def _write(lake, df: pd.DataFrame, day: dt.date, name: str) -> str:
    import pyarrow as pa

    return lake.write_table(pa.Table.from_pandas(df, preserve_index=False), *_staging(day, name))


def _read(lake, day: dt.date, name: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    if not lake.exists(*_staging(day, name)):
        raise EtlError(f"staging file {'/'.join(_staging(day, name))} is missing: run the upstream task first")
    return pq.read_table(lake.path(*_staging(day, name)), filesystem=lake.fs).to_pandas()


def extract(day: dt.date) -> dict[str, Any]:
    """Snapshot the day's raw sales and inventory partitions and the reference data into staging.

    Returns: {"raw_sales_rows", "raw_inventory_rows", "products", "stores"} counts (XCom-sized).
    """
    lake = open_lake()
    out = {}
    write_manifest(lake, day, RAW_MANIFEST, raw_manifest(lake, day))   # listed before reading: never newer
    for event_type, name in ((SALES, "raw_sales"), (INVENTORY, "raw_inventory")):
        df = read_raw_day(lake, event_type, day)
        _write(lake, df, day, name)
        out[f"{name}_rows"] = len(df)
    for name in ("products", "stores"):
        ref = read_reference(lake, name)
        if ref is None:
            log.warning("reference data raw-data/reference/%s missing: dimension rows will be placeholders", name)
            ref = pd.DataFrame()
        _write(lake, ref, day, f"ref_{name}")
        out[name] = len(ref)
    # the product master valid on the day (the facts' unit cost): a later change does not rewrite the day
    asof = reference_as_of(reference_history(lake, "products"), day)
    _write(lake, asof if asof is not None else pd.DataFrame(), day, "ref_products_asof")
    log.info("extract %s: %s", day, out)
    return out


def transform(day: dt.date) -> dict[str, Any]:
    """Deduplicate and build the fact/dimension rows of ``day`` from the extract snapshot; stage them.

    Returns: counts {"sales_lines", "duplicate_sales", "misfiled_sales", "inventory_rows",
    "duplicate_inventory", "products", "stores"}.
    """
    from core.settings import get_settings

    s = get_settings()
    lake = open_lake()
    raw_sales, raw_inv = _read(lake, day, "raw_sales"), _read(lake, day, "raw_inventory")
    products, stores = _read(lake, day, "ref_products"), _read(lake, day, "ref_stores")
    sales, dup_s = deduplicate(raw_sales, EVENT_ID[SALES]) if not raw_sales.empty else (raw_sales, 0)
    sales, misfiled_s = events_of_day(sales, day)
    inv, dup_i = deduplicate(raw_inv, EVENT_ID[INVENTORY]) if not raw_inv.empty else (raw_inv, 0)
    inv, misfiled_i = events_of_day(inv, day)

    seen_skus = pd.concat([sales.get("product_id", pd.Series(dtype=object)),
                           inv.get("product_id", pd.Series(dtype=object))])
    seen_stores = pd.concat([sales.get("store_id", pd.Series(dtype=object)),
                             inv.get("store_id", pd.Series(dtype=object))])
    dim_product = build_dim_product(products if not products.empty else None, seen_skus)
    dim_store = build_dim_store(stores if not stores.empty else None, seen_stores, s.store_country_default)
    dim_date = build_dim_date(calendar_days(day), dim_store["country_code"].tolist(), s.store_country_default)
    asof = _read(lake, day, "ref_products_asof") if lake.exists(*_staging(day, "ref_products_asof")) else products
    fact = build_fact_sales(sales, build_dim_product(asof if not asof.empty else None, seen_skus,
                                                     history=history_file("products")), day)
    closing = closing_stock(inv)
    if not closing.empty:
        closing["store_key"] = _keys(closing["store_id"].astype(str))
        closing["product_key"] = _keys(closing["product_id"].astype(str))
    else:
        closing = closing.assign(store_key=pd.Series(dtype="uint64"), product_key=pd.Series(dtype="uint64"))
    dim_date["holiday_names"] = dim_date["holiday_names"].map(json.dumps)
    lake.delete_file(*_staging(day, "fact_sales_daily"))  # a Spark run's aggregate would be stale now
    for name, df in (("fact_sales", fact), ("dim_product", dim_product), ("dim_store", dim_store),
                     ("dim_date", dim_date), ("inventory_closing", closing)):
        _write(lake, df, day, name)
    out = {"sales_lines": len(fact), "duplicate_sales": dup_s, "misfiled_sales": misfiled_s,
           "inventory_rows": len(closing), "duplicate_inventory": dup_i, "misfiled_inventory": misfiled_i,
           "products": len(dim_product), "stores": len(dim_store)}
    log.info("transform %s: %s", day, out)
    return out


# ------------------------------------------------------------------------------ ClickHouse load --
def _client():
    from core.clickhouse import get_client

    return get_client()


def _db() -> str:
    from core.settings import get_settings

    return get_settings().clickhouse_database


#: a staging table older than this (hours) is a replacement's left by a killed load: dropped by the next one
STAGING_ORPHAN_HOURS = 6


@contextlib.contextmanager
def own_staging(client, db: str, table: str, dk: int):
    """A staging table of this call's own for a partition replacement of ``db.table``: ``<table>_staging_<dk>_<8
    hex>``, created ``AS`` the table (same columns, engine and partitioning), dropped on exit (best effort: a
    ClickHouse outage leaves it, and the next call drops such tables of ``table`` older than
    :data:`STAGING_ORPHAN_HOURS`). Yields its name (without the database).

    Why not one shared ``<table>_staging``: two loads writing a partition at once (a manual run while the
    scheduler's loads it, a backfill's runs side by side rebuilding the same later day's inventory) dropped and
    filled each other's staging partition: one's rows were replaced twice into the table (doubled), or its
    ``REPLACE PARTITION`` found nothing and failed (ClickHouse code 36).

    Raises: the client's errors (ClickHouse unreachable, the table missing) from the ``CREATE TABLE``.
    """
    name = f"{table}_staging_{int(dk)}_{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(Exception):   # orphans of killed loads; never one of a load still running
        old = client.query(f"SELECT name FROM system.tables WHERE database = '{db}' "
                           f"AND startsWith(name, '{table}_staging_') "
                           f"AND metadata_modification_time < now() - INTERVAL {STAGING_ORPHAN_HOURS} HOUR"
                           ).result_rows
        for (n,) in old:
            client.command(f"DROP TABLE IF EXISTS {db}.`{n}`")
    client.command(f"CREATE TABLE {db}.{name} AS {db}.{table}")
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            client.command(f"DROP TABLE IF EXISTS {db}.{name}")


def _replace_partition(client, db: str, table: str, dk: int, df: pd.DataFrame) -> None:
    """Atomically replace partition ``dk`` of ``table`` with ``df`` (``REPLACE PARTITION`` from a staging table of
    this call's own: :func:`own_staging`; ``DROP PARTITION`` when ``df`` is empty)."""
    if df.empty:
        client.command(f"ALTER TABLE {db}.{table} DROP PARTITION {dk}")
        return
    with own_staging(client, db, table, dk) as stg:
        client.insert_df(f"{db}.{stg}", df)
        client.command(f"ALTER TABLE {db}.{table} REPLACE PARTITION {dk} FROM {db}.{stg}")


#: fact_sales_daily (daily grain per store x SKU, read by the dashboards) from one fact_sales partition
_DAILY_SQL = """
INSERT INTO {db}.{staging}
SELECT s.date_key, s.store_key, s.product_key,
       sum(if(s.quantity > 0, s.quantity, 0)), sum(if(s.quantity < 0, -s.quantity, 0)), sum(s.quantity),
       sum(toFloat64(s.revenue)), sum(ifNull(toFloat64(s.cost), 0)), sum(ifNull(toFloat64(s.profit), 0)),
       sumIf(toFloat64(s.revenue), s.cost IS NOT NULL), count(), countIf(s.is_return = 1)
FROM {db}.fact_sales AS s WHERE s.date_key = {dk}
GROUP BY s.date_key, s.store_key, s.product_key"""


def rebuild_sales_daily(client, db: str, dk: int) -> None:
    """Replace partition ``dk`` (YYYYMMDD) of ``fact_sales_daily`` with the aggregate of the same
    ``fact_sales`` partition (a staging table of its own, :func:`own_staging`, + REPLACE PARTITION: a re-run
    replaces, never adds)."""
    with own_staging(client, db, "fact_sales_daily", dk) as stg:
        client.command(_DAILY_SQL.format(db=db, staging=stg, dk=dk))
        if not client.query(f"SELECT count() FROM {db}.{stg}").result_rows[0][0]:
            client.command(f"ALTER TABLE {db}.fact_sales_daily DROP PARTITION {dk}")
            return
        client.command(f"ALTER TABLE {db}.fact_sales_daily REPLACE PARTITION {dk} FROM {db}.{stg}")


def _nullable(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns with None for NA (clickhouse-connect inserts Nullable columns from None)."""
    out = df.copy()
    for c in out.columns:
        if str(out[c].dtype) in ("Int64", "Int32", "UInt32", "Float64", "object"):
            out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


def _first_sales_key(client, db: str) -> int:
    """fact_sales' first date_key (YYYYMMDD); 0 when the table is empty."""
    return client.query(f"SELECT min(date_key) FROM {db}.fact_sales").result_rows[0][0] or 0


def reorder_points_as_of(client, db: str, day: dt.date, dim_product: pd.DataFrame) -> pd.Series:
    """The product master's reorder point (units) per product_key valid on ``day``: the version of
    ``dim_product_history`` (070_dim_history.sql, synced from the lake's reference history by :func:`load` before
    fact_inventory is built) with ``valid_from <= day <= valid_to``, its value even when NULL; ``dim_product``'s
    (the staged dimension: the current master, placeholders) for a key without a version on the day (no history
    yet). Returns a float Series indexed by product_key (uint64), NaN = none."""
    cur = dim_product.set_index("product_key")["reorder_point"].astype("float64")
    d = day.isoformat()
    hist = client.query_df(f"SELECT product_key, reorder_point FROM {db}.dim_product_history FINAL "
                           f"WHERE valid_from <= '{d}' AND valid_to >= '{d}'")
    if hist.empty:
        return cur
    h = pd.Series(hist["reorder_point"].to_numpy(dtype="float64", na_value=np.nan),
                  index=hist["product_key"].astype("uint64").to_numpy())
    h = h[~h.index.duplicated(keep="last")]
    return pd.concat([h, cur[~cur.index.isin(h.index)]])


def build_inventory(client, db: str, day: dt.date, closing: pd.DataFrame, dim_product: pd.DataFrame,
                    settings, first_sales_key: int | None = None) -> pd.DataFrame:
    """The fact_inventory rows of ``day`` (one per store x SKU; empty frame when nothing is stocked).

    The day's closing stock (``closing``: its staged ``inventory_closing``, :func:`closing_stock`'s rows) carried
    forward over the latest earlier fact_inventory snapshot in ClickHouse (:func:`carry_forward`); reorder_point
    from the events, else the carried value, else the product master's valid on ``day``
    (:func:`reorder_points_as_of`: ``dim_product_history``, else ``dim_product``, the day's staged dimension);
    safety_stock from the trailing :data:`SAFETY_STOCK_WINDOW_DAYS` days of demand (the ``demand_daily`` view:
    fact_sales units sold less same-day order cancellations; days before the first loaded date are not counted;
    :func:`safety_stock` with SERVICE_LEVEL and LEAD_TIME_DAYS of ``settings``); units_sold / units_returned from
    the day's ``fact_sales_daily`` partition, which must be loaded first; units_received (RESTOCK units) from the
    day's closing rows (0 when carried forward). below_reorder_point = closing_stock <= reorder_point (0 without
    one).

    Returns:
        DataFrame date_key, store_key, product_key, closing_stock (units), is_carried_forward, last_update_time
        (UTC), units_sold, units_returned, reorder_point, safety_stock (units), safety_stock_method,
        below_reorder_point, units_received (units): the columns of ``fact_inventory``.

    ``first_sales_key``: fact_sales' first date_key (YYYYMMDD) when the caller knows it (one look-up for many
    days); None: asked here.
    """
    dk = date_key(day)
    prev = client.query_df(
        f"SELECT store_key, product_key, closing_stock, last_update_time, reorder_point FROM {db}.fact_inventory "
        f"WHERE date_key = (SELECT max(date_key) FROM {db}.fact_inventory WHERE date_key < {dk})")
    inv = carry_forward(closing, prev)
    if not inv.empty:
        pr = reorder_points_as_of(client, db, day, dim_product)
        fallback = pd.Series(inv["product_key"].map(pr).to_numpy(dtype="float64", na_value=np.nan), index=inv.index)
        inv["reorder_point"] = inv["reorder_point"].astype("float64").fillna(fallback)
        first = (first_sales_key if first_sales_key is not None else _first_sales_key(client, db)) or dk
        window = [date_key(day - dt.timedelta(days=i)) for i in range(SAFETY_STOCK_WINDOW_DAYS - 1, -1, -1)]
        window = [k for k in window if k >= min(first, dk)]   # a day without sales before the first loaded one
        daily = client.query_df(
            f"SELECT store_key, product_key, date_key, units FROM {db}.demand_daily "   # 015_demand.sql
            f"WHERE date_key >= {window[0]} AND date_key <= {dk}")
        sig = demand_sigma(daily, window)
        inv = inv.merge(sig, on=["store_key", "product_key"], how="left")
        if len(window) >= 2:  # a stocked SKU without demand in the window: sigma 0 (every day 0), not unknown
            inv["sigma_daily"] = inv["sigma_daily"].astype("float64").fillna(0.0)
        inv["safety_stock"], method = safety_stock(inv["sigma_daily"].astype("float64"), settings.service_level,
                                                    settings.lead_time_days)
        inv["safety_stock_method"] = method
        today_units = client.query_df(
            f"SELECT store_key, product_key, units_sold, units_returned FROM {db}.fact_sales_daily "
            f"WHERE date_key = {dk}")
        if len(today_units):
            inv = inv.merge(today_units, on=["store_key", "product_key"], how="left")
        for c in ("units_sold", "units_returned"):
            inv[c] = inv.get(c, pd.Series(0, index=inv.index)).fillna(0).astype("int64")
        inv["date_key"] = dk
        inv["closing_stock"] = inv["closing_stock"].astype("int64")
        inv["units_received"] = inv["units_received"].fillna(0).astype("int64")
        inv["below_reorder_point"] = (inv["closing_stock"] <= inv["reorder_point"].fillna(-np.inf)).astype("uint8")
        inv["last_update_time"] = pd.to_datetime(inv["last_update_time"], utc=True)
        inv = inv[["date_key", "store_key", "product_key", "closing_stock", "is_carried_forward", "last_update_time",
                   "units_sold", "units_returned", "reorder_point", "safety_stock", "safety_stock_method",
                   "below_reorder_point", "units_received"]]
        inv["is_carried_forward"] = inv["is_carried_forward"].astype("uint8")
        inv = _nullable(inv)
    return inv


def later_loaded_days(client, db: str, day: dt.date) -> list[int]:
    """date_keys (YYYYMMDD, ascending) of the days after ``day`` that were loaded: a successful run in
    ``etl_runs``, or rows in fact_inventory or fact_sales (days loaded by :func:`load` alone). A day loaded while
    nothing was stocked has no fact_inventory rows, yet it is loaded: choosing by fact_inventory alone left such a
    day empty when an earlier day was loaded after it (a backfill newest-first)."""
    dk = date_key(day)
    return [r[0] for r in client.query(
        f"SELECT date_key FROM (SELECT date_key FROM {db}.etl_runs WHERE status = 'success' AND date_key > {dk} "
        f"UNION DISTINCT SELECT DISTINCT date_key FROM {db}.fact_inventory WHERE date_key > {dk} "
        f"UNION DISTINCT SELECT DISTINCT date_key FROM {db}.fact_sales WHERE date_key > {dk}) "
        "GROUP BY date_key ORDER BY date_key").result_rows]


def recompute_later_inventory(client, db: str, lake, day: dt.date, settings) -> dict[str, Any]:
    """After ``day``'s fact_inventory was (re)loaded: rebuild every later loaded day's partition
    (:func:`later_loaded_days`: a successful run in etl_runs or fact rows; also days whose fact_inventory is
    empty), in date order, from its staged ``inventory_closing`` and ``dim_product`` (:func:`build_inventory`), so
    the stock carried forward, the reorder points carried and the safety stock's demand window follow the new day
    (a late update, a re-run, a backfill behind loaded days): the tables do not depend on the order days were
    loaded in. Each partition is replaced (idempotent); nothing to do in the usual nightly order (no later day
    loaded).

    Returns:
        {"later_inventory_days": days rebuilt, "later_inventory_not_rebuilt": ISO dates of later days whose staged
        files are gone (their rows are kept as they were and a warning is logged)}.
    """
    keys = later_loaded_days(client, db, day)
    rebuilt, missing = 0, []
    first = _first_sales_key(client, db) if keys else 0   # fixed while later days are rebuilt
    for k in keys:
        d = dt.date(k // 10000, k // 100 % 100, k % 100)
        if not all(lake.exists(*_staging(d, n)) for n in ("inventory_closing", "dim_product")):
            log.warning("fact_inventory %s not rebuilt after %s: its staged files are gone", d, day)
            missing.append(d.isoformat())
            continue
        inv = build_inventory(client, db, d, _read(lake, d, "inventory_closing"), _read(lake, d, "dim_product"),
                              settings, first_sales_key=first)
        _replace_partition(client, db, "fact_inventory", k, inv)
        rebuilt += 1
    if keys:
        log.info("fact_inventory after %s: %d later day(s) rebuilt, %d not", day, rebuilt, len(missing))
    return {"later_inventory_days": rebuilt, "later_inventory_not_rebuilt": missing}


def raw_partition(lake, event_type: str, day: dt.date) -> tuple[str, str]:
    """(bucket, path) of the raw partition ``<event_type>/year=YYYY/month=MM/day=DD`` of ``day``."""
    return lake.settings.lake_raw_bucket, f"{event_type}/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"


#: staged listing of the raw files a build read (``raw_manifest``) and of the build last loaded (``loaded_manifest``)
RAW_MANIFEST, LOADED_MANIFEST = "raw_manifest", "loaded_manifest"


def raw_manifest(lake, day: dt.date) -> list[tuple[str, int, int]]:
    """The listing of ``day``'s raw sales and inventory partitions: (path, size in bytes, modification time in ns
    since the epoch) of every Parquet file, sorted. One listing call per partition, no file opened: the cheap
    fingerprint the re-check compares."""
    import pyarrow.fs as pafs

    out = []
    for event_type in (SALES, INVENTORY):
        part = raw_partition(lake, event_type, day)
        if not lake.exists(*part):
            continue
        for info in lake.fs.get_file_info(pafs.FileSelector(lake.path(*part), recursive=True)):
            if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
                out.append((info.path, int(info.size or 0), int(info.mtime_ns or 0)))
    return sorted(out)


def write_manifest(lake, day: dt.date, name: str, manifest: list[tuple[str, int, int]]) -> None:
    """Stage a :func:`raw_manifest` listing as ``<name>.parquet`` in ``day``'s staging folder (overwrites)."""
    import pyarrow as pa

    cols = list(zip(*manifest)) if manifest else ([], [], [])
    lake.write_table(pa.table({"path": pa.array(cols[0], pa.string()), "size": pa.array(cols[1], pa.int64()),
                               "mtime_ns": pa.array(cols[2], pa.int64())}), *_staging(day, name))


def read_manifest(lake, day: dt.date, name: str) -> list[tuple[str, int, int]] | None:
    """A staged listing (:func:`write_manifest`), None when absent."""
    import pyarrow.parquet as pq

    if not lake.exists(*_staging(day, name)):
        return None
    t = pq.read_table(lake.path(*_staging(day, name)), filesystem=lake.fs).to_pydict()
    return sorted(zip(t["path"], t["size"], t["mtime_ns"]))


def days_to_recheck(lake, day: dt.date, window_days: int) -> list[dt.date]:
    """The loaded days among the ``window_days`` days before ``day`` whose raw partitions changed since they were
    loaded: the current :func:`raw_manifest` differs from the staged ``loaded_manifest`` (events that landed after
    the day's nightly run, a replaced or removed file). Ascending. Days never built are not checked.

    A day built and loaded before the listings were staged (staged ``fact_sales`` but neither ``raw_manifest`` nor
    ``loaded_manifest``) is loaded with an unknown listing: it gets an empty ``loaded_manifest`` here, so it is
    rebuilt and reloaded once (when its partitions hold a file) and re-checked normally from then on. Before, such a
    day was skipped for good: nothing ever staged its listing, so late events in it were never picked up.

    Raises:
        ValueError: ``window_days`` < 0.
    """
    if window_days < 0:
        raise ValueError(f"the re-check window must be >= 0 days, got {window_days}")
    return [d for d in (day - dt.timedelta(days=i) for i in range(window_days, 0, -1))
            if _changed_since_loaded(lake, d, adopt_unlisted=True)]


def stale_days(lake, days: list[dt.date]) -> list[dt.date]:
    """Those of ``days`` whose raw partitions changed since their last load: a staged ``loaded_manifest`` that
    differs from the current :func:`raw_manifest` (the case :func:`quality_check` reports as
    :class:`LakeChangedError`). Order kept; days without a ``loaded_manifest`` are not stale."""
    return [d for d in days if _changed_since_loaded(lake, d, adopt_unlisted=False)]


def _changed_since_loaded(lake, d: dt.date, adopt_unlisted: bool) -> bool:
    """Whether ``d``'s current raw listing differs from its staged ``loaded_manifest`` (each read once; False
    without one). With ``adopt_unlisted`` a day loaded before the listings existed (staged ``fact_sales``, neither
    manifest) first gets an empty ``loaded_manifest`` (:func:`days_to_recheck`)."""
    loaded = read_manifest(lake, d, LOADED_MANIFEST)
    if (adopt_unlisted and loaded is None and read_manifest(lake, d, RAW_MANIFEST) is None
            and lake.exists(*_staging(d, "fact_sales"))):   # loaded before the listings existed
        log.warning("%s was loaded before raw listings were staged: reloading it once", d)
        write_manifest(lake, d, LOADED_MANIFEST, [])
        loaded = []
    return loaded is not None and loaded != raw_manifest(lake, d)


def rebuilt_days(lake, day: dt.date, window_days: int) -> list[dt.date]:
    """The loaded days among the ``window_days`` days before ``day`` built again since they were loaded (their
    staged ``raw_manifest`` differs from their ``loaded_manifest``: the re-check of the build rebuilt them), which
    the load must load again. Ascending."""
    out = []
    for i in range(window_days, 0, -1):
        d = day - dt.timedelta(days=i)
        loaded = read_manifest(lake, d, LOADED_MANIFEST)
        if loaded is not None and loaded != read_manifest(lake, d, RAW_MANIFEST):
            out.append(d)
    return out


#: staged record (``features/staging/daily_etl/date=<re-checked day>/recheck_error.parquet``) of a re-checked day
#: whose build failed with an :class:`EtlError` (e.g. a raw file that is not readable Parquet): written by the Spark
#: job (:func:`etl.spark_facts.build_day`), read by :func:`load_recorded` of the same night
RECHECK_ERROR = "recheck_error"


def write_recheck_error(lake, day: dt.date, night: dt.date, exc: BaseException) -> None:
    """Stage the build failure of the re-checked ``day`` during the run of ``night``: one row, a string column
    ``json`` = ``{"date", "night", "error" (class name), "message"}``. Overwrites."""
    import pyarrow as pa

    rec = {"date": day.isoformat(), "night": night.isoformat(), "error": type(exc).__name__, "message": str(exc)}
    lake.write_table(pa.table({"json": [json.dumps(rec)]}), *_staging(day, RECHECK_ERROR))


def clear_recheck_error(lake, day: dt.date) -> None:
    """Remove ``day``'s staged :data:`RECHECK_ERROR` record (a later build of the day succeeded); no-op when none."""
    lake.delete_file(*_staging(day, RECHECK_ERROR))


def recheck_build_errors(lake, night: dt.date, window_days: int) -> dict[dt.date, str]:
    """The re-checked days of the ``window_days`` before ``night`` whose build failed during the build of ``night``
    (:data:`RECHECK_ERROR` records staged for that night; an older night's record is ignored): {day: "<error
    class>: <message>"}. One existence check per day of the window."""
    import pyarrow.parquet as pq

    out = {}
    for i in range(window_days, 0, -1):
        d = night - dt.timedelta(days=i)
        if not lake.exists(*_staging(d, RECHECK_ERROR)):
            continue
        rec = json.loads(pq.read_table(lake.path(*_staging(d, RECHECK_ERROR)), filesystem=lake.fs)["json"][0].as_py())
        if rec.get("night") == night.isoformat():
            out[d] = f"{rec.get('error')}: {rec.get('message')}"
    return out


def refuse_missing_raw(client, db: str, lake, day: dt.date) -> None:
    """Refuse to load ``day`` when a raw partition (sales or inventory updates) has no Parquet file while ClickHouse
    still holds that day's rows from it (``fact_sales`` lines; ``fact_inventory`` rows not carried forward): the
    load would replace them with nothing and the quality check, reading the same missing partition, would pass.
    A partition that is gone is an accident far more often than an intended empty day (a moved prefix, a wrong
    LAKE_RAW_BUCKET, a lifecycle rule).

    Raises:
        EtlError: naming the partition(s) and the rows that would be dropped; load with ``allow_missing_raw``
            (the DAG's param of that name) to empty the day on purpose.
    """
    dk = date_key(day)
    held = {SALES: f"SELECT count() FROM {db}.fact_sales WHERE date_key = {dk}",
            INVENTORY: f"SELECT count() FROM {db}.fact_inventory WHERE date_key = {dk} AND is_carried_forward = 0"}
    gone = []
    for event_type, table in ((SALES, "fact_sales"), (INVENTORY, "fact_inventory")):
        if any(f.endswith(".parquet") for f in lake.list_files(*raw_partition(lake, event_type, day))):
            continue
        n = client.query(held[event_type]).result_rows[0][0]
        if n:
            gone.append(f"{'/'.join(raw_partition(lake, event_type, day))} has no Parquet file but {table} holds "
                        f"{n} row(s) of it")
    if gone:
        raise EtlError(f"refusing to load {day.isoformat()}: " + "; ".join(gone) + ". Loading would replace them "
                       "with nothing; if the day is meant to be empty, load it with allow_missing_raw=True "
                       "(daily_etl param allow_missing_raw)")


#: the words of :func:`refuse_missing_raw`'s error that :func:`check_load_gaps` recognises in a failed run's message
MISSING_RAW_MARK = "has no Parquet file but"


class LoadGapError(EtlError):
    """Days with raw events between the first loaded day and a run's date were never loaded (``days``)."""

    def __init__(self, message: str, days: list[dt.date]):
        self.days = days
        super().__init__(message)


def _child_values(lake, key: str, *parts: str) -> list[int]:
    """The integer values ``v`` of the ``key=v`` sub-folders directly under a lake path (one listing, not
    recursive), [] when absent."""
    import pyarrow.fs as pafs

    if not lake.exists(*parts):
        return []
    out = []
    for info in lake.fs.get_file_info(pafs.FileSelector(lake.path(*parts), recursive=False)):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith(f"{key}=") and name[len(key) + 1:].isdigit():
            out.append(int(name[len(key) + 1:]))
    return out


def raw_days(lake, first: dt.date, last: dt.date) -> list[dt.date]:
    """The UTC dates in ``[first, last]`` whose raw sales or inventory partition holds a Parquet file, ascending.
    Lists the ``year=`` / ``month=`` / ``day=`` folders of the two event types under LAKE_RAW_BUCKET (one listing
    per year and month in range, not one per file), then the files of each day found."""
    found: set[dt.date] = set()
    bucket = lake.settings.lake_raw_bucket
    for event_type in (SALES, INVENTORY):
        for y in _child_values(lake, "year", bucket, event_type):
            if not first.year <= y <= last.year:
                continue
            for m in _child_values(lake, "month", bucket, event_type, f"year={y:04d}"):
                if not (first.year, first.month) <= (y, m) <= (last.year, last.month):
                    continue
                for d in _child_values(lake, "day", bucket, event_type, f"year={y:04d}", f"month={m:02d}"):
                    with contextlib.suppress(ValueError):   # a folder day=31 in a 30-day month: not a date
                        day = dt.date(y, m, d)
                        if first <= day <= last and day not in found and any(
                                f.endswith(".parquet") for f in lake.list_files(*raw_partition(lake, event_type, day))):
                            found.add(day)
    return sorted(found)


def _date_of(key: int) -> dt.date:
    """The date of a ``date_key`` (YYYYMMDD int)."""
    return dt.date(key // 10000, key // 100 % 100, key % 100)


def latest_status_days(client, db: str, first: dt.date, last: dt.date, status: str) -> set[dt.date]:
    """The dates in ``[first, last]`` whose latest ``etl_runs`` row has ``status`` ('success', 'failed' or
    :data:`BEGUN`). Latest = greatest ``(started_at, finished_at)``: the row of the run that started last, and of
    that run the row written last (a quality check, retried or not, records the load's ``started_at``). Until
    2026-12-07 it was the greatest ``finished_at``: load A of D started 08:00, load B wrote its 'begun' at 08:05, A's
    quality check wrote 'success' at 08:10 and B was killed at 08:12 half-way (fact_sales replaced, fact_inventory
    not): A's success was latest, so D counted as loaded over B's partial state.

    Args: client / db: ClickHouse (``etl_runs``); first / last: UTC dates, inclusive (empty set when first > last);
        status: the status wanted.
    Returns: a set of dates (one ClickHouse query).
    """
    if first > last:
        return set()
    rows = client.query(f"SELECT date_key FROM {db}.etl_runs WHERE date_key BETWEEN {date_key(first)} AND "
                        f"{date_key(last)} GROUP BY date_key HAVING argMax(status, (started_at, finished_at)) = "
                        f"'{status}'").result_rows
    return {_date_of(int(r[0])) for r in rows}


@dataclass(frozen=True)
class LatestRun:
    """A date's latest ``etl_runs`` row (the rule of :func:`latest_status_days`): status, stage, started_at (UTC),
    dag_run_id and the first 300 characters of its message."""

    status: str
    stage: str
    started_at: dt.datetime
    dag_run_id: str
    message: str


def latest_runs(client, db: str, first: dt.date, last: dt.date) -> dict[dt.date, LatestRun]:
    """Each date's latest ``etl_runs`` row (greatest ``(started_at, finished_at)``) in ``[first, last]`` (UTC dates,
    inclusive): {date: :class:`LatestRun`}; dates without a row are absent. One ClickHouse query."""
    if first > last:
        return {}
    rows = client.query(
        f"SELECT date_key, argMax((status, stage, started_at, dag_run_id, substring(message, 1, 300)), "
        f"(started_at, finished_at)) FROM {db}.etl_runs WHERE date_key BETWEEN {date_key(first)} AND "
        f"{date_key(last)} GROUP BY date_key").result_rows
    out = {}
    for k, (status, stage, started, run, msg) in rows:
        started = started if started.tzinfo else started.replace(tzinfo=dt.timezone.utc)
        out[_date_of(int(k))] = LatestRun(status, stage, started, run, msg)
    return out


def loaded_days(client, db: str, first: dt.date, last: dt.date) -> set[dt.date]:
    """The dates in ``[first, last]`` that daily_etl loaded and reconciled: the latest ``etl_runs`` row of the date
    (by ``(started_at, finished_at)``, :func:`latest_status_days`) has status ``success`` (a day loaded, then re-run
    and failed or begun again, is not loaded). The one rule of :func:`etl_load_status`, :func:`unloaded_days`,
    :func:`late_changed_days` and ``ml.pipeline.loaded_through``.

    Args: client / db: ClickHouse (``etl_runs``); first / last: UTC dates, inclusive (empty set when first > last).
    Returns: a set of dates (one ClickHouse query).
    """
    return latest_status_days(client, db, first, last, "success")


def _first_loaded_day(client, db: str, before: dt.date) -> dt.date | None:
    """The first date before ``before`` with a successful run in ``etl_runs`` (where the install started loading),
    None when there is none."""
    k = client.query(f"SELECT minIf(date_key, status = 'success'), countIf(status = 'success') FROM {db}.etl_runs "
                     f"WHERE date_key < {date_key(before)}").result_rows[0]
    return _date_of(int(k[0])) if k[1] else None


def unloaded_days(client, db: str, lake, day: dt.date, look_back_days: int | None = None) -> list[dt.date]:
    """The days before ``day`` and from the first day with a successful run in ``etl_runs`` on, whose raw partitions
    hold events but which are not loaded (:func:`loaded_days`: the latest run of the day is not a success): nights
    missed (an Airflow outage longer than ETL_CATCHUP_DAYS: the scheduler's catch-up starts after them) or failed
    and never loaded since. Days before the first loaded day are the install's choice, not a gap; nothing is loaded
    here. Ascending; [] when nothing was loaded before ``day``.

    Args:
        look_back_days: only the last this many days before ``day`` are listed (ETL_GAP_CHECK_DAYS in
            :func:`check_load_gaps`: the lake requests stay bounded as history grows); None = all since the first
            loaded day.
    """
    first = _first_loaded_day(client, db, day)
    if first is None:
        return []
    if look_back_days is not None:
        first = max(first, day - dt.timedelta(days=look_back_days))
    last = day - dt.timedelta(days=1)
    loaded = loaded_days(client, db, first, last)
    return [d for d in raw_days(lake, first, last) if d not in loaded]


def _runs(days: list[dt.date]) -> list[list[dt.date]]:
    """Sorted dates split into runs of consecutive days."""
    runs: list[list[dt.date]] = []
    for d in days:
        if runs and d - runs[-1][-1] == dt.timedelta(days=1):
            runs[-1].append(d)
        else:
            runs.append([d])
    return runs


def _ranges(days: list[dt.date]) -> str:
    """'2026-11-11..2026-11-14, 2026-11-20' for sorted dates (runs of consecutive days joined)."""
    return ", ".join(r[0].isoformat() if len(r) == 1 else f"{r[0].isoformat()}..{r[-1].isoformat()}"
                     for r in _runs(days))


def late_changed_days(client, db: str, lake, day: dt.date, window_days: int,
                      look_back_days: int | None = None) -> list[dt.date]:
    """The loaded days (:func:`loaded_days`) before the re-check window of ``day`` (older than ``window_days`` days)
    whose raw partitions changed since they were loaded (:func:`stale_days`: events that arrived more than
    ETL_RECHECK_DAYS late, which no re-check loads any more). Ascending. One manifest read and one listing per
    partition of each such day; with ``look_back_days`` only the days at most that many days before ``day``
    (ETL_GAP_CHECK_DAYS in :func:`check_load_gaps`), None = every loaded day."""
    last = day - dt.timedelta(days=window_days + 1)
    first = day - dt.timedelta(days=look_back_days) if look_back_days is not None else dt.date(1970, 1, 1)
    return stale_days(lake, sorted(loaded_days(client, db, first, last)))


def check_load_gaps(day: dt.date, client=None, db: str | None = None, lake=None) -> list[dt.date]:
    """Fail loudly when days before ``day`` are missing from the star schema: days with raw events that were never
    loaded (:func:`unloaded_days`), days whose latest run failed (with or without raw events, each with its stage,
    run and reason: e.g. a re-checked day :func:`load_recorded` could not load), or loaded days older than the
    re-check window whose raw partitions changed since (:func:`late_changed_days`). Run by daily_etl's
    ``check_gaps`` task after the day is loaded and reconciled; loads nothing itself.

    Returns:
        [] when there is no gap.
    Raises:
        LoadGapError: an :class:`EtlError` naming the dates (ranges) and the commands that load them, one per range
            of consecutive days (``make nightly DATE=<last> BACKFILL=<n>`` or ``airflow backfill create --dag-id
            daily_etl ... --reprocess-behavior completed``: every named day is re-run, also one whose own Airflow run
            succeeded), so no loaded day between two ranges is redone. A day refused because its raw partition is
            gone (:func:`refuse_missing_raw`, :data:`MISSING_RAW_MARK` in its message) is named first with a one-day
            backfill command carrying ``--dag-run-conf '{"allow_missing_raw": true}'`` (to empty it on purpose).
    Only the ETL_GAP_CHECK_DAYS days before ``day`` are looked at (a gap is named every night until it lies
    further back; a late change only from ETL_RECHECK_DAYS + 1 days back, and a missed night only once the
    scheduler's catch-up passed it): ~4 lake requests per day checked (1,095 loaded days: 7,716 calls before the bound, 411 at 62 days).
    """
    from core.settings import get_settings

    s = get_settings()
    client, db, lake = client or _client(), db or _db(), lake or open_lake()
    n = s.etl_gap_check_days
    gap = unloaded_days(client, db, lake, day, n)
    # days whose latest run failed, raw events or not (a re-checked day whose reload was refused: its raw partition
    # gone; or whose build failed), with the reason; until 2026-12-07 only days with raw events were named
    first = _first_loaded_day(client, db, day)
    failed = {} if first is None else {
        d: r for d, r in latest_runs(client, db, max(first, day - dt.timedelta(days=n)),
                                     day - dt.timedelta(days=1)).items() if r.status == "failed"}
    late = late_changed_days(client, db, lake, day, s.etl_recheck_days, n)
    if not gap and not late and not failed:
        return []
    days = sorted(set(gap) | set(late) | set(failed))
    runs = _runs(days)
    parts = []
    if gap:
        parts.append(f"{len(gap)} day(s) with raw events before {day.isoformat()} were never loaded (their latest "
                     f"run in etl_runs is not a success; the scheduler catches up only ETL_CATCHUP_DAYS={s.etl_catchup_days} days, so "
                     f"an outage longer than that leaves its oldest nights behind): {_ranges(gap)}")
    if failed:
        parts.append(f"{len(failed)} day(s) are not loaded because their latest run failed: " + "; ".join(
            f"{d.isoformat()} at {r.stage} ({r.started_at:%Y-%m-%d %H:%M} UTC, run {r.dag_run_id!r}): {r.message[:200]}"
            for d, r in sorted(failed.items())[:5]) + (" ..." if len(failed) > 5 else ""))
    if late:
        parts.append(f"{len(late)} loaded day(s) older than the ETL_RECHECK_DAYS={s.etl_recheck_days} re-check "
                     f"window have raw files added, changed or removed since they were loaded (events that arrived "
                     f"late): {_ranges(late)}")
    # a day refused because its raw partition is gone (refuse_missing_raw): the remedy first, a command with the param
    # (until 2026-12-07 only the reason, cut at 200 characters before its remedy, and commands without the param,
    # which re-ran the day into the same refusal: a day emptied on purpose failed check_gaps every night)
    refused = sorted(d for d, r in failed.items() if MISSING_RAW_MARK in r.message)
    if refused:
        parts.insert(0, f"{len(refused)} day(s) were refused because a raw partition is gone while ClickHouse holds "
                     "its rows: restore the raw files and load them with the commands below, or, if the day is meant "
                     "to be empty, load it with the daily_etl param allow_missing_raw: " + "; ".join(
                         f"`airflow backfill create --dag-id daily_etl --from-date {d.isoformat()} --to-date "
                         f"{d.isoformat()}T23:59:59 --max-active-runs 1 --reprocess-behavior completed "
                         f"--dag-run-conf '{{\"allow_missing_raw\": true}}'`" for d in refused))
    make = "; ".join(f"`make nightly DATE={r[-1].isoformat()} BACKFILL={(r[-1] - r[0]).days}`" for r in runs)
    # Airflow 3 runs one backfill per DAG at a time (AlreadyRunningBackfill) and a backfill's own max_active_runs
    # (default 10) overrides the DAG's 1: each day's inventory carries the day before forward, so days in order.
    # --reprocess-behavior completed: every day of a range is not loaded, and its own Airflow run may have
    # succeeded (a 'begun' left by a stopped reload, a re-check that failed, a late change); 'failed' (until
    # 2026-12-07 for ranges without a late-changed or 'begun' day) skipped those, and "none" skips every day with a run
    backfill = "; ".join(
        f"`airflow backfill create --dag-id daily_etl --from-date {r[0].isoformat()} --to-date "
        f"{r[-1].isoformat()}T23:59:59 --max-active-runs 1 --reprocess-behavior completed`" for r in runs)
    raise LoadGapError(
        "; ".join(parts) + f". Load them (one command per range, so no loaded day between is redone; in this "
        f"order, each after the previous finished) with {make}, or with {backfill}. Only the last "
        f"ETL_GAP_CHECK_DAYS={n} days before {day.isoformat()} are checked: this error repeats every night until "
        f"the days are loaded or lie more than {n} days back", days)


def refuse_future_day(day: dt.date, today: dt.date | None = None) -> None:
    """Refuse to load a UTC date after ``today`` (default: today, UTC): its raw partition cannot hold a complete
    day, and a run for it (a manual trigger with a wrong logical date) would load an empty day and succeed.
    Today itself loads (the partial day; the next run's re-check reloads it as files land).

    Raises:
        EtlError: naming the date and today's date.
    """
    from core.dagconf import utc_today

    today = today or utc_today()
    if day > today:
        raise EtlError(f"refusing to load {day.isoformat()}: the date is after today ({today.isoformat()} UTC), "
                       "its events cannot be in the lake yet; trigger the run with the logical date of a past day")


def load(day: dt.date, migrate: bool = True, allow_missing_raw: bool = False) -> dict[str, Any]:
    """Load the staged rows of ``day`` into ClickHouse (idempotent: dims upserted, fact partitions replaced).

    fact_inventory = :func:`build_inventory` (the day's closing stock carried forward over the latest earlier
    snapshot; reorder points; safety stock from the trailing demand). Each day reads the days before it, so the
    later days already loaded are rebuilt after it, in date order (:func:`recompute_later_inventory`): a re-run
    with late inventory updates, or a backfill behind loaded days, leaves no stale carried stock or safety stock.

    A raw partition without files whose rows ClickHouse still holds stops the load (:func:`refuse_missing_raw`)
    unless ``allow_missing_raw``.

    Returns: {"fact_sales_rows", "fact_inventory_rows", "dim_product_rows", "dim_store_rows", "dim_date_rows",
    "dim_history_inserted", "dim_history_deleted" (:func:`sync_history`, both tables), "later_inventory_days",
    "later_inventory_not_rebuilt"}.

    Raises:
        EtlError: a staged file is missing, a raw partition is gone while its rows are loaded, or ``day`` is after
            today (:func:`refuse_future_day`).
    """
    from core.settings import get_settings

    s = get_settings()
    refuse_future_day(day)
    lake, client, db, dk = open_lake(), _client(), _db(), date_key(day)
    if migrate:
        from core.clickhouse import migrate as run_migrations

        run_migrations(s)
    if not allow_missing_raw:
        refuse_missing_raw(client, db, lake, day)
    dim_product, dim_store = _read(lake, day, "dim_product"), _read(lake, day, "dim_store")
    dim_date, fact = _read(lake, day, "dim_date"), _read(lake, day, "fact_sales")
    closing = _read(lake, day, "inventory_closing")

    # dims: placeholders (is_known=0) never overwrite reference rows (ReplacingMergeTree(is_known))
    client.insert_df(f"{db}.dim_product", _nullable(dim_product))
    client.insert_df(f"{db}.dim_store", dim_store)
    dd = dim_date.copy()
    dd["date"] = pd.to_datetime(dd["date"]).dt.date
    dd["holiday_countries"] = dd["holiday_countries"].map(list)
    dd["holiday_names"] = dd["holiday_names"].map(json.loads)  # staged as JSON text (Parquet has no open map)
    client.insert_df(f"{db}.dim_date", dd)
    history = {name: sync_history(client, db, name, reference_history(lake, name))   # 070_dim_history
               for name in HISTORY_TABLES}

    # fact_sales
    fs = fact.copy()
    for c in ("revenue", "cost", "profit"):
        fs[c] = fs.pop(f"{c}_e4").map(e4_to_decimal) if len(fs) else pd.Series(dtype=object)
    fs = _nullable(fs)
    _replace_partition(client, db, "fact_sales", dk, fs)
    if lake.exists(*_staging(day, "fact_sales_daily")):   # built by the Spark job (etl.spark_facts)
        _replace_partition(client, db, "fact_sales_daily", dk, _read(lake, day, "fact_sales_daily"))
    else:                                                  # the pandas transform: aggregate in ClickHouse
        rebuild_sales_daily(client, db, dk)

    # fact_inventory: this day's, then every later day's already loaded (each carries the one before it forward)
    inv = build_inventory(client, db, day, closing, dim_product, s)
    _replace_partition(client, db, "fact_inventory", dk, inv)
    later = recompute_later_inventory(client, db, lake, day, s)
    # what was loaded: the listing the build read (the current one for staging from before manifests)
    built = read_manifest(lake, day, RAW_MANIFEST)
    write_manifest(lake, day, LOADED_MANIFEST, built if built is not None else raw_manifest(lake, day))
    out = {"fact_sales_rows": len(fs), "fact_inventory_rows": len(inv), "dim_product_rows": len(dim_product),
           "dim_store_rows": len(dim_store), "dim_date_rows": len(dim_date),
           "dim_history_inserted": sum(h["inserted"] for h in history.values()),
           "dim_history_deleted": sum(h["deleted"] for h in history.values()), **later}
    log.info("load %s: %s", day, out)
    return out


def load_recorded(day: dt.date, dag_run_id: str = "", allow_missing_raw: bool = False) -> dict[str, Any]:
    """:func:`load` as the ``load`` task of ``daily_etl`` runs it: the start time travels with the result (for
    :func:`quality_check`), and a failed load is recorded in ``etl_runs`` before the error propagates.

    Args:
        day: the UTC date to load.
        dag_run_id: the Airflow run id stored with every row written ("" outside Airflow).
        allow_missing_raw: passed to :func:`load` (empty a loaded day whose raw partition is gone, on purpose).
    Returns:
        :func:`load`'s counts of ``day`` plus ``started_at`` (ISO 8601, UTC: when this call started),
        ``rechecked_days`` (ISO dates the quality check must reconcile, ascending) and ``failed_rechecks``
        ({ISO date: reason} of the re-checked days that could not be loaded, recorded 'failed').

    Re-check window (ETL_RECHECK_DAYS before ``day``), oldest first, then ``day``:

    * days the build rebuilt because their raw partitions changed since they were loaded (:func:`rebuilt_days`)
      are loaded again;
    * days whose latest ``etl_runs`` row is :data:`BEGUN` (:func:`latest_runs`) are loaded again, unless that row
      is the :data:`LOAD_DONE` mark of a load that finished and the build did not rebuild them since (not named by
      :func:`rebuilt_days`, which compares the staged ``raw_manifest`` with the ``loaded_manifest``, not the current
      raw listing: a file landing after the build makes the quality check raise :class:`LakeChangedError`, and the
      retry builds and loads the day again): those are only returned for the quality check. Until 2026-12-07 every
      retry of the load task loaded all the window's 'begun' days again: a retry after ``day``'s load failed
      reloaded each re-checked day the first attempt had loaded (1 reload per re-checked day and retry);
    * a re-checked day that cannot be loaded (its load raises :class:`EtlError`, e.g. :func:`refuse_missing_raw`,
      or the Spark build of it failed: :func:`recheck_build_errors`) is recorded 'failed' (stage ``load``, the
      reason as message), logged and left out; ``day`` is still loaded. Until 2026-12-07 such a stuck day failed
      the whole night, every night while it stayed in the window (7 by default): ``day`` was never loaded, training
      and predictions waited. The 'failed' row keeps it not loaded: :func:`check_load_gaps` (the ``check_gaps``
      task) names it with its reason and fails the run, every night until it is loaded.

    Before each day's load a row with status :data:`BEGUN` (stage ``load``) is appended to ``etl_runs``, so until the
    quality check records its success the day is not loaded for :func:`loaded_days` (the training and prediction
    DAGs' sensor, ``check_gaps``, ``ml.pipeline.loaded_through``): a re-load stopped half-way (ClickHouse stopped
    after the day's ``fact_sales`` was replaced, when the failed row cannot be written either; the worker killed)
    used to leave the day's earlier success as its latest row over a partly replaced star schema. After the load
    finished, a second :data:`BEGUN` row with stage :data:`LOAD_DONE` (same ``started_at``) marks it complete but
    not reconciled. ClickHouse unreachable at the start: that row fails first, before any write.

    Raises:
        Exception: whatever :func:`load` of ``day`` raises (e.g. :class:`EtlError` for a missing staged file,
            ClickHouse or lake errors), and any error but an :class:`EtlError` of a re-checked day's load,
            unchanged, after a row with status ``failed``, stage ``load`` and ``repr`` of the error as message was
            appended to ``etl_runs`` (:func:`record_run`) for the day that failed. Recording is best effort: an
            error while recording (e.g. ClickHouse down) is suppressed, so the load's error is the one raised.
            An error after a day's :func:`load` returned (writing its :data:`LOAD_DONE` row, clearing its
            :data:`RECHECK_ERROR` record) records nothing: the day's 'begun' row of stage ``load`` stays its latest,
            so the retry loads it again. Until 2026-12-07 it was recorded 'failed' at ``load`` with its
            ``loaded_manifest`` written: a retry neither reloaded nor reconciled a re-checked day left so.

    A day's :data:`RECHECK_ERROR` record is removed once the day is loaded (and by every successful build of it:
    :func:`etl.spark_facts.build_day`).
    """
    from core.settings import get_settings

    started = dt.datetime.now(dt.timezone.utc)
    window = get_settings().etl_recheck_days
    lake = open_lake()
    again, broken = rebuilt_days(lake, day, window), recheck_build_errors(lake, day, window)
    if again:
        log.warning("raw partitions of %s changed since they were loaded: loading them again",
                    [d.isoformat() for d in again])
    from core.clickhouse import migrate as run_migrations

    d, loaded_day = day, None   # loaded_day: the day whose load(...) returned last (its bookkeeping follows)
    try:
        run_migrations(get_settings())   # etl_runs exists before the first "begun" row
        client, db = _client(), _db()
        latest = latest_runs(client, db, day - dt.timedelta(days=window), day - dt.timedelta(days=1))
        begun = {x for x, r in latest.items() if r.status == BEGUN} - set(again)
        done = {x for x in begun if latest[x].stage == LOAD_DONE} - set(broken)   # loaded, unchanged: reconcile
        if begun - done:
            log.warning("%s of the re-check window were begun and never reconciled (a load stopped, or a re-check "
                        "whose run's load of the day failed): loading them again",
                        sorted(x.isoformat() for x in begun - done))
        failed: dict[str, str] = {}
        for x, why in sorted(broken.items()):   # the Spark build of the re-checked day failed
            log.error("re-checked day %s could not be built, recorded failed: %s", x, why)
            record_run(client, db, x, "failed", "load", started, message=f"re-check build failed: {why}",
                       dag_run_id=dag_run_id)
            failed[x.isoformat()] = why
        again = sorted((set(again) | begun) - done - set(broken))
        loaded_again = []
        for d in again:
            record_run(client, db, d, BEGUN, "load", started, message="load started", dag_run_id=dag_run_id)
            try:
                load(d, migrate=False, allow_missing_raw=allow_missing_raw)
            except EtlError as exc:   # a stuck re-checked day: recorded, named by check_gaps; the night goes on
                why = f"{type(exc).__name__}: {exc}"
                log.error("re-checked day %s could not be loaded, recorded failed: %s", d, why)
                record_run(client, db, d, "failed", "load", started, message=f"re-check load failed: {why}",
                           dag_run_id=dag_run_id)
                failed[d.isoformat()] = why
                continue
            loaded_day = d
            record_run(client, db, d, BEGUN, LOAD_DONE, started, message="loaded, not reconciled yet",
                       dag_run_id=dag_run_id)
            clear_recheck_error(lake, d)   # loaded: a failed re-check build's record of it is stale
            loaded_again.append(d)
        d = day
        record_run(client, db, d, BEGUN, "load", started, message="load started", dag_run_id=dag_run_id)
        out = load(d, migrate=False, allow_missing_raw=allow_missing_raw)
        loaded_day = d
        record_run(client, db, d, BEGUN, LOAD_DONE, started, message="loaded, not reconciled yet",
                   dag_run_id=dag_run_id)
        clear_recheck_error(lake, d)
        return {**out, "started_at": started.isoformat(),
                "rechecked_days": [x.isoformat() for x in sorted(set(loaded_again) | done)],
                "failed_rechecks": failed}
    except Exception as exc:  # record the failed load in etl_runs, then let the caller fail
        if d == loaded_day:   # the load of d finished, its bookkeeping failed: its 'begun' row stays its latest
            raise             # (reloaded by the retry); a 'failed' row at load would leave it neither reloaded nor
        with contextlib.suppress(Exception):   # reconciled (rebuilt_days no longer names it: loaded_manifest written)
            record_run(_client(), _db(), d, "failed", "load", started, message=repr(exc), dag_run_id=dag_run_id)
        raise


# ------------------------------------------------------------------------------- quality checks --
@dataclass
class LakeTotals:
    """Independent expectation for one day from the raw lake: deduplicated sales lines."""

    raw_rows: int
    lines: int
    units_net: int
    units_sold: int
    units_returned: int
    revenue: Decimal
    duplicates: int
    extra: dict = field(default_factory=dict)


def lake_sales_totals(lake, day: dt.date) -> LakeTotals:
    """Re-read ``raw-data/sales_transaction`` for ``day`` straight from the lake (not the staging files)
    and total the deduplicated lines whose UTC event date is ``day``: rows, signed units, units sold
    (quantity > 0), units returned, revenue (sum of round(quantity*unit_price, 4), exact).

    Raises:
        EtlError: raw rows break the contract the totals need (a null or missing event id, event time, quantity or
            unit_price; e.g. a file written without a column), named, instead of a bare ValueError of the arithmetic.
    """
    raw = read_raw_day(lake, SALES, day)
    if raw.empty:
        return LakeTotals(0, 0, 0, 0, 0, Decimal("0.0000"), 0)
    def refuse(frame: pd.DataFrame, cols: tuple[str, ...]) -> None:
        bad = {c: (len(frame) if c not in frame.columns else int(frame[c].isna().sum())) for c in cols}
        if any(bad.values()):
            raise EtlError(f"raw sales of {day.isoformat()} violate the contract: "
                           + ", ".join(f"{n} row(s) without {c}" for c, n in bad.items() if n)
                           + f" ({'/'.join(raw_partition(lake, SALES, day))})")

    # the rows the build checks (deduplicate / events_of_day, build_fact_sales): id and event time over the whole
    # partition; quantity and price over the day's de-duplicated lines only (a misfiled line is not loaded here)
    refuse(raw, ("transaction_id", "timestamp"))
    uniq = raw.drop_duplicates("transaction_id")
    uniq = uniq[pd.to_datetime(uniq["timestamp"], utc=True).dt.date == day]
    refuse(uniq, ("quantity", "unit_price"))
    q = uniq["quantity"].astype("int64")
    e4 = int(np.rint(q.to_numpy(dtype="float64") * uniq["unit_price"].to_numpy(dtype="float64") * 10000).sum())
    return LakeTotals(len(raw), len(uniq), int(q.sum()), int(q[q > 0].sum()), int(-q[q < 0].sum()),
                      Decimal(e4).scaleb(-4), len(raw) - int(raw["transaction_id"].nunique()))


def star_sales_totals(client, db: str, day: dt.date) -> dict[str, Any]:
    """Totals of the loaded fact_sales partition of ``day`` (rows, distinct ids, units, revenue, orphans)."""
    dk = date_key(day)
    r = client.query(
        f"SELECT count(), uniqExact(sale_id), toInt64(sum(quantity)), toInt64(sumIf(quantity, quantity > 0)), "
        f"toInt64(-sumIf(quantity, quantity < 0)), toDecimal128(sum(revenue), 4) "
        f"FROM {db}.fact_sales WHERE date_key = {dk}").result_rows[0]
    orphans = client.query(
        f"SELECT countIf(product_key NOT IN (SELECT product_key FROM {db}.dim_product)), "
        f"countIf(store_key NOT IN (SELECT store_key FROM {db}.dim_store)) FROM {db}.fact_sales WHERE date_key = {dk}"
    ).result_rows[0]
    inv = client.query(
        f"SELECT count(), uniqExact(store_key, product_key), countIf(closing_stock < 0) "
        f"FROM {db}.fact_inventory WHERE date_key = {dk}").result_rows[0]
    has_date = client.query(f"SELECT count() FROM {db}.dim_date WHERE date_key = {dk}").result_rows[0][0]
    return {"rows": r[0], "distinct_ids": r[1], "units_net": r[2], "units_sold": r[3], "units_returned": r[4],
            "revenue": Decimal(r[5] or 0).quantize(Decimal("0.0001")), "orphan_products": orphans[0],
            "orphan_stores": orphans[1], "inventory_rows": inv[0], "inventory_keys": inv[1],
            "negative_stock": inv[2], "dim_date_rows": has_date}


def reconcile(expected: LakeTotals, actual: dict[str, Any]) -> list[str]:
    """Failed checks (empty = pass): exact equality of rows, units (net, sold, returned) and revenue;
    unique sale ids; no fact row without its product/store dimension; unique, non-negative inventory
    rows; the date present in dim_date."""
    fails = []
    for name, exp, act in (("rows", expected.lines, actual["rows"]),
                           ("units_net", expected.units_net, actual["units_net"]),
                           ("units_sold", expected.units_sold, actual["units_sold"]),
                           ("units_returned", expected.units_returned, actual["units_returned"]),
                           ("revenue", expected.revenue, actual["revenue"])):
        if exp != act:
            fails.append(f"fact_sales {name} = {act} but the deduplicated lake has {exp}")
    if actual["distinct_ids"] != actual["rows"]:
        fails.append(f"fact_sales has {actual['rows'] - actual['distinct_ids']} duplicate sale_id rows")
    if actual["orphan_products"] or actual["orphan_stores"]:
        fails.append(f"fact_sales rows without dimension: {actual['orphan_products']} product, "
                     f"{actual['orphan_stores']} store")
    if actual["inventory_keys"] != actual["inventory_rows"]:
        fails.append("fact_inventory has duplicate store x product rows")
    if actual["negative_stock"]:
        fails.append(f"fact_inventory has {actual['negative_stock']} negative closing_stock rows")
    if actual["dim_date_rows"] == 0:
        fails.append("dim_date has no row for the date")
    return fails


#: ``etl_runs.status`` of the row :func:`load_recorded` appends before a day's first write ("success" / "failed" end
#: a run): a load stopped half-way leaves it the day's latest row, so the day is not loaded (:func:`loaded_days`)
#: until a run reconciles it. Power BI's 'Last ETL Status' ranks it between "success" and "failed" (v_etl_runs
#: status_rank, migration 099).
BEGUN = "begun"
#: ``etl_runs.stage`` of the second :data:`BEGUN` row :func:`load_recorded` appends once a day's load finished (same
#: ``started_at``): loaded, not reconciled yet. A retry reconciles such a day without loading it again, and a quality
#: check run by hand records under its ``started_at`` (:func:`quality_check`).
LOAD_DONE = "load_done"


def record_run(client, db: str, day: dt.date, status: str, stage: str, started_at: dt.datetime,
               expected: LakeTotals | None = None, actual: dict | None = None, message: str = "",
               dag_run_id: str = "", inventory_rows: int = 0) -> str:
    """Append one row to ``etl_runs`` (an audit log: every run, successful or not). Returns the run id."""
    run_id = uuid.uuid4().hex
    row = {
        "run_id": run_id, "dag_run_id": dag_run_id, "date_key": date_key(day), "started_at": started_at,
        "finished_at": dt.datetime.now(dt.timezone.utc), "status": status, "stage": stage,
        "raw_sales_rows": expected.raw_rows if expected else 0,
        "duplicate_sales_rows": expected.duplicates if expected else 0,
        "fact_sales_rows": int(actual["rows"]) if actual else 0,
        "fact_inventory_rows": int(actual["inventory_rows"]) if actual else inventory_rows,
        "units_net": int(actual["units_net"]) if actual else 0,
        "revenue": actual["revenue"] if actual else Decimal(0), "message": message[:10000],
    }
    client.insert_df(f"{db}.etl_runs", pd.DataFrame([row]))
    return run_id


def own_latest_begun(client, db: str, day: dt.date, dag_run_id: str) -> dt.datetime | None:
    """The latest ``started_at`` (UTC) of the ``begun`` rows that the Airflow run ``dag_run_id`` wrote for ``day``,
    None when it wrote none (or ``dag_run_id`` is empty).

    A quality check records its result under the load's ``started_at`` (passed through XCom); a retry of the check
    that loaded the day again (its lake changed) wrote ``begun`` rows at a later time, and a later attempt that
    found nothing stale gets only the first load's time: recorded there, its ``success`` would sort below its own
    run's ``begun`` and the day would stay not loaded (:func:`latest_status_days`). Only the same run's rows count:
    another run's ``begun`` (a load of the day running now) must stay the latest.
    """
    if not dag_run_id:
        return None
    rows = client.query(f"SELECT max(started_at), count() FROM {db}.etl_runs WHERE date_key = {date_key(day)} "
                        f"AND status = '{BEGUN}' AND dag_run_id = {{r:String}}", parameters={"r": dag_run_id}
                        ).result_rows
    if not rows or not rows[0][1]:
        return None
    ts = rows[0][0]
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)


def unattended_start(client, db: str, day: dt.date) -> dt.datetime:
    """The ``started_at`` a quality check of ``day`` without the load's start records under: the day's latest
    ``etl_runs`` row's (:func:`latest_runs`; the load that row belongs to is the one the star schema holds), now
    (UTC) when the day has no row (a load outside :func:`load_recorded`, e.g. ``ops.bench_nightly``).

    Raises:
        EtlError: the latest row is a load that did not finish: a :data:`BEGUN` row of stage ``load`` (a load running,
            or stopped half-way) or a 'failed' load; the message names the row, its run and what to do.
    """
    latest = latest_runs(client, db, day, day).get(day)
    if latest is None:
        return dt.datetime.now(dt.timezone.utc)
    if (latest.status == BEGUN and latest.stage != LOAD_DONE) or (latest.status == "failed" and latest.stage == "load"):
        what = "began and never finished (running now, or stopped half-way)" if latest.status == BEGUN else "failed"
        raise EtlError(f"quality check of {day.isoformat()} refused: no started_at (the start of the load it checks) "
                       f"was given, and the day's latest etl_runs row is a load that {what}, started "
                       f"{latest.started_at.isoformat()} by run {latest.dag_run_id!r} ({latest.message[:200]}): the "
                       f"star schema may hold a partly replaced day. Load the day again (make nightly "
                       f"DATE={day.isoformat()}, or clear the run's load task), which the check then reconciles")
    return latest.started_at


def quality_check(day: dt.date, started_at: dt.datetime | None = None, dag_run_id: str = "") -> dict[str, Any]:
    """Reconcile the loaded star schema with the raw lake for ``day`` and record the run in etl_runs.

    First the raw partitions' listing is compared with the one the load read (the staged ``loaded_manifest``,
    when there is one): a file that landed, changed or went away since the build means the load is stale, not
    that the data is bad.

    The result is recorded under ``started_at`` (the start of the load it checks: the load task's XCom), or a later
    ``begun`` of the same Airflow run (:func:`own_latest_begun`). Without ``started_at`` (a check run by hand, or
    the DAG's task without the load's XCom) it is recorded under the ``started_at`` of the day's latest row
    (:func:`unattended_start`), and refused when that row is a load that did not finish. Until 2026-12-07 it was
    recorded under "now": after a reload stopped half-way (its 'begun' the latest row; fact_sales replaced,
    fact_inventory not), the check passed on fact_sales and its 'success' at "now" made the day loaded again.

    Returns: the actual totals (revenue as a string) when every check passes.

    Raises:
        LakeChangedError: the raw partitions changed since the build that was loaded (recorded 'failed' with the
            files and any failed check; retryable: not an EtlError).
        DataQualityError: listing every failed check (the run is recorded with status 'failed').
        EtlError: no ``started_at`` and the day's latest load did not finish (:func:`unattended_start`); nothing
            is recorded.
    """
    client, db, lake = _client(), _db(), open_lake()
    started_at = started_at or unattended_start(client, db, day)
    started_at = max(started_at, own_latest_begun(client, db, day, dag_run_id) or started_at)
    loaded, now = read_manifest(lake, day, LOADED_MANIFEST), raw_manifest(lake, day)
    actual = star_sales_totals(client, db, day)
    try:
        expected = lake_sales_totals(lake, day)
        fails = reconcile(expected, actual)
    except EtlError as exc:   # bad raw rows: a file that landed during the run is reported as such (retryable)
        if loaded is None or loaded == now:
            record_run(client, db, day, "failed", "quality_check", started_at, None, actual, str(exc), dag_run_id)
            raise
        expected, fails = None, [str(exc)]
    if loaded is not None and loaded != now:
        added = sorted({p for p, *_ in now} - {p for p, *_ in loaded})
        gone = sorted({p for p, *_ in loaded} - {p for p, *_ in now})
        changed = len(set(now) - set(loaded)) - len(added)
        err = LakeChangedError(
            f"raw partitions of {day.isoformat()} changed during the run ({len(loaded)} files loaded, {len(now)} now; "
            f"added {added}, removed {gone}, {changed} rewritten): the load is stale, re-run the date"
            + (": " + "; ".join(fails) if fails else ""))
        record_run(client, db, day, "failed", "quality_check", started_at, expected, actual, str(err), dag_run_id)
        raise err
    if fails:
        err = DataQualityError(day, fails)
        record_run(client, db, day, "failed", "quality_check", started_at, expected, actual, str(err), dag_run_id)
        raise err
    record_run(client, db, day, "success", "quality_check", started_at, expected, actual,
               f"{expected.duplicates} duplicate raw rows dropped", dag_run_id)
    return {**actual, "revenue": str(actual["revenue"]), "duplicates": expected.duplicates}


def etl_load_status(day: dt.date, client=None, db: str | None = None) -> tuple[bool, str]:
    """Whether daily_etl's load of ``day`` is complete: the latest ``etl_runs`` row of the date (by
    ``(started_at, finished_at)``, the rule of :func:`latest_status_days`) has status ``success`` (a reconciled quality check; a later failed load or check, e.g. a retry
    under way, makes it incomplete again). Read by the training and prediction DAGs before they use the day.

    Returns:
        (complete, a sentence saying what etl_runs holds for the date, for the log / error message).
    """
    client, db = client or _client(), db or _db()
    rows = client.query(f"SELECT status, stage, finished_at, substring(message, 1, 300) FROM {db}.etl_runs "
                        f"WHERE date_key = {date_key(day)} ORDER BY started_at DESC, finished_at DESC LIMIT 1"
                        ).result_rows
    if not rows:
        return False, f"etl_runs has no daily_etl run for {day.isoformat()} (not loaded yet)"
    status, stage, at, msg = rows[0]
    if status == "success":
        return True, f"daily_etl loaded and reconciled {day.isoformat()} at {at} UTC"
    return False, f"the last daily_etl run for {day.isoformat()} is {status} at {stage} ({at} UTC): {msg}"


def run_day(day: dt.date, recheck_days: int = 0) -> dict[str, Any]:
    """extract -> transform -> load -> quality_check in this process (for scripts; the DAG runs the same steps).
    With ``recheck_days`` > 0 the loaded days of that window whose raw partitions changed since they were loaded
    (:func:`days_to_recheck`) are rebuilt, reloaded and checked first, as the DAG does (``rechecked``).

    Returns: {"extract", "transform", "load", "quality_check" (each step's result for ``day``), "rechecked" ({ISO
    date: the same for each re-checked day that passed}), "failed_rechecks" ({ISO date: "<error class>: <message>"})}.

    A re-checked day whose build, load or quality check raises :class:`EtlError` (bad raw data, its raw partition
    gone: :func:`refuse_missing_raw`) is recorded 'failed' (stage ``load``, message ``re-check failed: ...``; a
    failed quality check records itself), logged and left out, as the DAG does; ``day`` is still loaded. Until
    2026-12-07 the error ended the call: ``day`` was not loaded.

    Raises:
        EtlError: from ``day``'s own steps; LakeChangedError (retryable) from any day's quality check.
    """
    started = dt.datetime.now(dt.timezone.utc)
    rechecked, failed = {}, {}
    for d in days_to_recheck(open_lake(), day, recheck_days):
        try:
            rechecked[d.isoformat()] = {"extract": extract(d), "transform": transform(d), "load": load(d),
                                        "quality_check": quality_check(d, started)}
        except EtlError as exc:   # a stuck re-checked day: recorded 'failed', named by check_gaps; the day goes on
            why = f"{type(exc).__name__}: {exc}"
            log.error("re-checked day %s failed, recorded failed: %s", d, why)
            if not isinstance(exc, DataQualityError):   # quality_check recorded its own failure
                record_run(_client(), _db(), d, "failed", "load", started, message=f"re-check failed: {why}")
            failed[d.isoformat()] = why
    return {"extract": extract(day), "transform": transform(day), "load": load(day),
            "quality_check": quality_check(day, started), "rechecked": rechecked, "failed_rechecks": failed}
