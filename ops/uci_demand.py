"""The platform's daily demand of the UCI log, for the benchmarks and studies that read the log directly.

The platform learns from ClickHouse's ``demand_daily`` view (``clickhouse/migrations/015_demand.sql``): units sold
less the units of orders cancelled the same day, per day x store x SKU. The studies that read the UCI transaction
log without the platform (``make bench-forecast``'s UCI section, ``ops.young_series``, ``ops.replay_alignment``,
``ops.cancelled_orders``)
take their demand from the same view, so that they measure what the platform forecasts:

* the log's lines are classified as the replay does (:func:`producers.replay.classify_rows`: sale and return lines
  only; non-product codes, write-offs and ``A`` invoices left out), keyed by country (= store) and the replay's
  product id (:func:`producers.replay.product_ids`: stock code stripped and upper-cased), customer as given
  (anonymous = NULL);
* they go through the view's own SQL in a throwaway chDB database set up by the platform's own migration run
  (:func:`core.clickhouse.migrate`). chDB serves one data path per process, so that database lives in a child
  process of its own: the caller may hold another chDB path (a test session, the native ClickHouse endpoint).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.settings import REPO_ROOT

VIEW_COLUMNS = ["date_key", "store_key", "product_key", "units_sold", "units_cancelled", "units", "revenue_sold"]


def fact_lines(tx: pd.DataFrame, dates=None) -> tuple[pd.DataFrame, pd.Index, pd.Index]:
    """The log's sale and return lines as ``fact_sales`` rows.

    Args:
        tx: UCI transaction lines (:func:`producers.replay.load_transactions` columns, text as str).
        dates: optional date (datetime64, one per row of ``tx``) each line is counted on; default the log's own
            date of ``invoice_ts`` (UK local; the formats of :func:`producers.replay.parse_invoice_ts`). Rows whose
            date or ``invoice_ts`` does not parse are left out.
    Raises:
        ValueError: no ``invoice_ts`` parses in any format (:func:`producers.replay.parse_invoice_ts`).
    Returns:
        (lines, stores, products): ``lines`` has the fact_sales columns sale_id, date_key (YYYYMMDD), event_time
        (the log's instant), product_key / store_key (positions in ``products`` / ``stores``: product ids and
        country names), customer_id (None when anonymous), payment_method, quantity (units, < 0 for a return),
        unit_price (GBP), revenue_e4 (round(quantity x unit_price, 4) in 1/10000 GBP, as the ETL stages it:
        :func:`etl.star_schema.amount_e4`; a float would lose a ten-thousandth on its way into Decimal(18, 4)),
        is_return.
    """
    from etl.star_schema import amount_e4
    from producers.replay import classify_rows, customer_ids, parse_invoice_ts, product_ids, transaction_ids

    ts = parse_invoice_ts(tx["invoice_ts"], fmt=tx.attrs.get("invoice_ts_format"))   # the whole file's format
    day = ts.dt.normalize() if dates is None else pd.Series(pd.to_datetime(np.asarray(dates)), index=tx.index)
    kind, _ = classify_rows(tx)
    keep = np.isin(kind, ["sale", "return"]) & day.notna().to_numpy() & ts.notna().to_numpy()
    df, ts, day = tx[keep], ts[keep], day[keep]
    q = pd.to_numeric(df["quantity"]).astype("int32")   # whole numbers within contracts.QUANTITY_MAX (classify_rows)
    price = pd.to_numeric(df["unit_price"]).astype("float64")
    product_key, products = pd.factorize(product_ids(df["stock_code"]))
    store_key, stores = pd.factorize(df["country"])
    lines = pd.DataFrame({
        "sale_id": transaction_ids(df),
        "date_key": day.dt.strftime("%Y%m%d").astype("uint32"),
        "event_time": ts, "product_key": product_key.astype("uint64"), "store_key": store_key.astype("uint64"),
        "customer_id": customer_ids(df["customer_id"]).replace("", None), "payment_method": "ONLINE",
        "quantity": q, "unit_price": price, "revenue_e4": amount_e4(q, price).astype("int64"),
        "is_return": (q < 0).astype("uint8")})
    return lines.reset_index(drop=True), pd.Index(stores), pd.Index(products)


def _run_view(src: str, dst: str, columns: list[str]) -> None:
    """Child process: Parquet fact lines ``src`` through ``demand_daily`` in a throwaway chDB database (every
    migration, :func:`core.clickhouse.migrate`) -> ``dst``."""
    import pyarrow.parquet as pq

    from core.clickhouse import get_client, migrate
    from core.settings import Settings

    settings = Settings(clickhouse_url=f"chdb://{Path(dst).parent / 'chdb'}")
    migrate(settings, "m")
    client = get_client(settings, "m")
    exact = {"revenue_e4": "toDecimal64(revenue_e4, 4) / 10000"}  # Int64 1/10000 GBP -> Decimal(18, 4)
    cols = ", ".join(c.removesuffix("_e4") for c in columns)
    client.command(f"INSERT INTO m.fact_sales ({cols}) SELECT {', '.join(exact.get(c, c) for c in columns)} "
                   f"FROM file('{src}', Parquet) SETTINGS max_partitions_per_insert_block = 0")
    pq.write_table(client.query_arrow(f"SELECT {', '.join(VIEW_COLUMNS)} FROM m.demand_daily"), dst)


def view_demand(lines: pd.DataFrame) -> pd.DataFrame:
    """``lines`` (:func:`fact_lines`) through the platform's ``demand_daily`` view (in a child process, see the
    module docstring): one row per date_key x store_key x product_key with a line, columns :data:`VIEW_COLUMNS`
    (units as int64, revenue_sold GBP). Raises RuntimeError with the child's error output when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "lines.parquet", Path(tmp) / "demand.parquet"
        lines.to_parquet(src, index=False)
        run = subprocess.run([sys.executable, "-m", "ops.uci_demand", str(src), str(dst), ",".join(lines.columns)],
                             cwd=REPO_ROOT, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"demand_daily on {len(lines)} fact lines failed (rc {run.returncode}): "
                               f"{run.stderr.strip()[-2000:]}")
        return pd.read_parquet(dst)


def daily_demand(tx: pd.DataFrame, dates=None) -> pd.DataFrame:
    """The platform's daily demand of the log's lines ``tx`` (see :func:`fact_lines` for ``dates``).

    Returns:
        DataFrame date (datetime64), store_id (country), product_id (the replay's product id), units_sold,
        units_cancelled (orders cancelled the same day), units = units_sold - units_cancelled (float64, units),
        price (revenue / units of the day's sale lines, GBP; NaN without a sale line): one row per date x country x
        product with a sale or return line, sorted by store_id, product_id, date.
    """
    lines, stores, products = fact_lines(tx, dates)
    d = view_demand(lines)
    out = pd.DataFrame({
        "date": pd.to_datetime(d["date_key"].astype(str), format="%Y%m%d"),
        "store_id": stores[d["store_key"].to_numpy(dtype="int64")],
        "product_id": products[d["product_key"].to_numpy(dtype="int64")],
        "units_sold": d["units_sold"].astype("float64"), "units_cancelled": d["units_cancelled"].astype("float64"),
        "units": d["units"].astype("float64"),
        "price": d["revenue_sold"] / d["units_sold"].where(d["units_sold"] > 0)})
    return out.sort_values(["store_id", "product_id", "date"], ignore_index=True)


if __name__ == "__main__":  # the child process of view_demand: SRC DST COLUMNS
    _run_view(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
