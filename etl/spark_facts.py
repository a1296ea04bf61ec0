"""The heavy part of the nightly ETL as Spark DataFrame code: one UTC day of raw events -> fact rows.

Run by the spark-submit application ``etl/jobs/daily_facts.py`` (the ``build_facts`` task of ``daily_etl``,
SparkSubmitOperator on ``spark_default``: ``local[2]`` natively, the compose Spark cluster with
``SPARK_MASTER=spark://spark-master:7077``) and, in-process, by the demo's backfill and ``make bench-nightly``:
:func:`build_day` takes any SparkSession.

What runs where
---------------
* **Spark** (per event row, JVM only, no Python UDFs, so executors of the compose cluster need nothing but
  Spark): deduplication on event ids (first ingested copy), the day filter (UTC event date; misfiled rows
  counted), the contract check, the fact_sales lines (keys, exact ``*_e4`` money, cost from the product
  master, returns), the daily store x SKU aggregate ``fact_sales_daily`` and the closing stock per store x SKU
  (last update of the day).
* **pandas** (dimension-sized): the distinct SKUs and stores seen (collected from Spark) become ``dim_product``
  / ``dim_store`` with :mod:`etl.star_schema`'s own builders (BLAKE2b surrogate keys), broadcast back to Spark
  as key maps; ``dim_date`` from the ``holidays`` calendar.
* **The lake**: Spark reads the day's raw partition itself (:func:`read_raw`; ``s3a://`` through Hadoop's S3A
  connector on MinIO/S3, so the cluster's executors read the files, or ``file://`` on a folder lake). The results
  (dimension- and day-sized) come back with ``toArrow`` and are staged through :class:`core.lake.Lake` (pyarrow)
  as one Parquet file each under ``features/staging/daily_etl/date=YYYY-MM-DD/``, exactly the files
  :func:`etl.star_schema.load` reads (plus ``fact_sales_daily``).

Surrogate keys are UInt64; Spark has no unsigned type, so they travel as the same 64 bits in a signed long
(:func:`to_signed` / :func:`to_unsigned`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from etl import star_schema as etl

log = logging.getLogger(__name__)

#: staged file with the job's counts (read by the DAG's load task and the benchmark)
RESULT_NAME = "facts_result"
#: staged file written when the day's data breaks the contract (the operator fails the task without retries)
ERROR_NAME = "facts_error"
KEY = ["store_key", "product_key"]


def to_signed(keys: pd.Series) -> pd.Series:
    """UInt64 surrogate keys -> the same 64 bits as Int64 (Spark's LongType)."""
    return pd.Series(keys.to_numpy(dtype="uint64").view("int64"), index=keys.index)


def to_unsigned(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Int64 from Spark -> the UInt64 surrogate key (bit-preserving cast)."""
    return pc.cast(arr, pa.uint64(), safe=False)


# ------------------------------------------------------------------------------------------ reads --
def read_raw(spark, lake, event_type: str, day: dt.date):
    """The raw partition ``raw-data/<event_type>/year=/month=/day=`` read by Spark from the lake
    (:meth:`core.lake.Lake.spark_uri`: ``s3a://`` on MinIO/S3, ``file://`` on a folder lake; executors read the
    files themselves), every file's columns merged, plus ``_file`` and ``_row`` (the row's file and its index
    in it: the input order, the last tie-break of the deduplication). None when the partition has no Parquet file.

    Files written under different contract versions are merged: a column added later is null in the older files;
    a column whose type was widened (Avro's promotions: int -> long -> float -> double) is read as the widest type
    (:func:`unified_schema`; Spark's own schema merge refuses any type change).

    Raises:
        EtlError: two files of the partition hold the same column with incompatible types (e.g. string and long); a
            file of 0 bytes or with an unreadable footer (named).
    """
    from pyspark.sql import functions as F

    bucket = lake.settings.lake_raw_bucket
    part = f"{event_type}/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"
    sizes = {f: n for f, n in lake.file_sizes(bucket, part).items() if f.endswith(".parquet")}
    files = sorted(sizes)
    if not files:
        log.warning("no raw files in %s/%s", bucket, part)
        return None
    empty = [f for f in files if sizes[f] == 0]   # sizes from the one listing (no HEAD request per file)
    if empty:   # an upload cut short: Spark failed on it with a JVM trace, retried twice
        raise etl.EtlError(f"raw file(s) of 0 bytes, not Parquet, in {bucket}/{part}: {empty}; remove or "
                           "rewrite them, then re-run the date")
    uri = lake.spark_uri(bucket, part)
    try:
        df = spark.read.option("mergeSchema", "true").parquet(uri)
    except Exception as exc:   # pyspark's wrapper of the JVM error: a failed schema merge, an unreadable file
        if "CANNOT_READ_FILE_FOOTER" in str(exc):   # a corrupt file: bad data, named (the message holds its path)
            why = next(ln for ln in str(exc).splitlines() if "CANNOT_READ_FILE_FOOTER" in ln)
            raise etl.EtlError(f"a raw file in {bucket}/{part} is not readable Parquet: {why.strip()[:500]}") from None
        if "CANNOT_MERGE_SCHEMAS" not in str(exc):
            raise
        df = spark.read.schema(unified_schema(lake, files, f"{bucket}/{part}")).parquet(uri)
    df = df.drop(*[c for c in ("year", "month", "day") if c in df.columns])
    return df.select("*", F.col("_metadata.file_path").alias("_file"), F.col("_metadata.row_index").alias("_row"))


def unified_schema(lake, files: list[str], where: str):
    """The Spark schema of Parquet ``files`` (lake filesystem paths) read together: their footers' schemas unified
    by pyarrow's permissive promotion (int32 + int64 -> int64, int + double -> double, a missing column nullable).
    Only the footers are read, on the driver.

    Raises:
        EtlError: a column has incompatible types across the files (named, with ``where``).
    """
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema

    schemas = [pq.read_schema(f, filesystem=lake.fs).remove_metadata() for f in files]
    try:
        return from_arrow_schema(pa.unify_schemas(schemas, promote_options="permissive"))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise etl.EtlError(f"raw files in {where} cannot be read together: {exc}") from None


def raw_counts(df, id_column: str, contract: bool) -> dict[str, int]:
    """One Spark action over the raw rows (before deduplication and the day filter): ``rows``, ``null_ids``
    (events without ``id_column``), ``null_timestamps`` (events without an event time, when the frame has a
    ``timestamp`` column: they belong to no day) and, with ``contract``, ``bad`` (sales rows with quantity 0 or
    null, or a negative/null/NaN price; only then the exact check runs on the day's deduplicated lines).

    Raises:
        EtlError: ``id_column`` (or, with ``contract``, ``quantity`` / ``unit_price``) is missing.
    """
    from pyspark.sql import functions as F

    for c in [id_column] + (["quantity", "unit_price"] if contract else []):
        if c not in df.columns:
            raise etl.EtlError(f"{'event id ' if c == id_column else ''}column {c!r} missing; columns: {df.columns}")
    aggs = [F.count(F.lit(1)).alias("rows"), F.count_if(F.col(id_column).isNull()).alias("null_ids")]
    if "timestamp" in df.columns:
        aggs.append(F.count_if(F.col("timestamp").isNull()).alias("null_timestamps"))
    if contract:
        p = F.col("unit_price").cast("double")
        aggs.append(F.count_if(F.coalesce((F.col("quantity") == 0) | (p < 0) | F.isnan(p), F.lit(True))).alias("bad"))
    return {k: int(v or 0) for k, v in df.agg(*aggs).first().asDict().items()}


# ------------------------------------------------------------------------------------- transforms --
def deduplicate(df, id_column: str):
    """One row per event id, the first ingested copy: order by ``ingested_at``, ``kafka_partition``,
    ``kafka_offset`` (those present), then ``_file``, ``_row`` (null ids are refused earlier: :func:`raw_counts`).

    Raises:
        EtlError: the id column is missing.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if id_column not in df.columns:
        raise etl.EtlError(f"event id column {id_column!r} missing; columns: {df.columns}")
    order = [c for c in ("ingested_at", "kafka_partition", "kafka_offset", "_file", "_row") if c in df.columns]
    w = Window.partitionBy(id_column).orderBy(*[F.col(c).asc_nulls_last() for c in order])
    return df.withColumn("_copy", F.row_number().over(w)).filter("_copy = 1").drop("_copy")


def of_day(df, day: dt.date, ts_column: str = "timestamp"):
    """Rows whose UTC event date is ``day`` (the session time zone is UTC: core.spark)."""
    from pyspark.sql import functions as F

    return df.filter(F.to_date(F.col(ts_column)) == F.lit(day))


def check_contract(sales) -> None:
    """Raise EtlError when a line has quantity 0 or null, or a negative/null/NaN price (the stream should have
    quarantined it), naming up to 3 of them (the same message as :func:`etl.star_schema.build_fact_sales`)."""
    from pyspark.sql import functions as F

    bad = sales.filter((F.col("quantity") == 0) | F.col("quantity").isNull() | F.col("unit_price").isNull()
                       | (F.col("unit_price") < 0) | F.isnan("unit_price"))
    n = bad.count()
    if n:
        ids = [r[0] for r in bad.select("transaction_id").limit(3).collect()]
        raise etl.EtlError(f"{n} sales lines violate the contract (quantity 0/null or price < 0/null), e.g. {ids}")


def _amount_e4(q, price):
    """round(quantity * price, 4) as a long of 1/10000 units: rint (half-to-even) of the double product, the
    same IEEE arithmetic as :func:`etl.star_schema.amount_e4`; null when price is null."""
    from pyspark.sql import functions as F

    return F.rint(q.cast("double") * price * F.lit(10000.0)).cast("long")


def fact_sales(sales, products, stores, dk: int):
    """fact_sales lines (the columns of :func:`etl.star_schema.build_fact_sales`, keys as signed longs).

    Args:
        sales: deduplicated sales of the day (Spark).
        products: Spark frame sku, product_key (signed), unit_cost (broadcast).
        stores: Spark frame store_id, store_key (signed) (broadcast).
    """
    from pyspark.sql import functions as F

    s = sales.withColumn("product_id", F.col("product_id").cast("string")) \
             .withColumn("store_id", F.col("store_id").cast("string"))
    s = s.join(F.broadcast(products.withColumnRenamed("sku", "product_id")), "product_id", "left") \
         .join(F.broadcast(stores), "store_id", "left")
    q, price = F.col("quantity"), F.col("unit_price").cast("double")
    opt = {c: (F.col(c).cast("string") if c in sales.columns else F.lit(None).cast("string"))
           for c in ("invoice_id", "customer_id", "payment_method")}
    rev = _amount_e4(q, price)
    uc = F.col("unit_cost").cast("double")
    cost = _amount_e4(q, F.when(F.isnan(uc), F.lit(None).cast("double")).otherwise(uc))
    return s.select(
        F.col("transaction_id").cast("string").alias("sale_id"), F.lit(dk).cast("long").alias("date_key"),
        F.col("timestamp").alias("event_time"), "product_key", "store_key",
        opt["invoice_id"].alias("invoice_id"), opt["customer_id"].alias("customer_id"),
        F.coalesce(opt["payment_method"], F.lit("UNKNOWN")).alias("payment_method"),
        q.cast("int").alias("quantity"), price.alias("unit_price"),
        rev.alias("revenue_e4"), cost.alias("cost_e4"), (rev - cost).alias("profit_e4"),
        (q < 0).cast("int").alias("is_return"))


def sales_daily(fact):
    """fact_sales_daily rows (daily grain per store x SKU) from fact_sales lines: units sold / returned / net,
    revenue, cost and profit (exact integer sums of the 1/10000 amounts, then one division; unknown cost
    counts 0), revenue of the lines with a known cost, POS lines, return lines."""
    from pyspark.sql import functions as F

    q = F.col("quantity")
    return fact.groupBy("date_key", "store_key", "product_key").agg(
        F.sum(F.when(q > 0, q).otherwise(0)).cast("long").alias("units_sold"),
        F.sum(F.when(q < 0, -q).otherwise(0)).cast("long").alias("units_returned"),
        F.sum(q).cast("long").alias("net_units"),
        (F.sum("revenue_e4") / F.lit(10000.0)).alias("revenue"),
        (F.coalesce(F.sum("cost_e4"), F.lit(0)) / F.lit(10000.0)).alias("cost"),
        (F.coalesce(F.sum("profit_e4"), F.lit(0)) / F.lit(10000.0)).alias("profit"),
        (F.coalesce(F.sum(F.when(F.col("cost_e4").isNotNull(), F.col("revenue_e4"))), F.lit(0))
         / F.lit(10000.0)).alias("revenue_with_cost"),
        F.count(F.lit(1)).cast("long").alias("pos_lines"),
        F.sum("is_return").cast("long").alias("return_lines"))


def closing_stock(updates, products, stores):
    """Closing stock per store x SKU: ``new_quantity`` of the day's last update by event time (ties: Kafka
    offset, then ingestion order), its time, the last non-null reorder_point (null when none) and units_received,
    the sum of quantity_change of the RESTOCK updates (0 without; :func:`etl.star_schema.closing_stock`)."""
    from pyspark.sql import functions as F

    order = [c for c in ("timestamp", "kafka_offset", "ingested_at", "kafka_partition", "_file", "_row")
             if c in updates.columns]
    o = F.struct(*[F.col(c) for c in order])
    has_rp = "reorder_point" in updates.columns
    rp = F.max_by(F.col("reorder_point"), F.when(F.col("reorder_point").isNotNull(), o)) if has_rp else F.lit(None)
    received = F.sum(F.when(F.col("reason") == "RESTOCK", F.col("quantity_change")).otherwise(0)) \
        if {"reason", "quantity_change"} <= set(updates.columns) else F.lit(0)
    u = updates.withColumn("product_id", F.col("product_id").cast("string")) \
               .withColumn("store_id", F.col("store_id").cast("string"))
    c = u.groupBy("store_id", "product_id").agg(
        F.max_by(F.col("new_quantity"), o).cast("long").alias("closing_stock"),
        F.max_by(F.col("timestamp"), o).alias("last_update_time"),
        rp.cast("double").alias("reorder_point"),
        F.coalesce(received, F.lit(0)).cast("long").alias("units_received"))
    return c.join(F.broadcast(products.select(F.col("sku").alias("product_id"), "product_key")), "product_id", "left") \
            .join(F.broadcast(stores), "store_id", "left")


def _refuse_null_ids(counts: dict[str, int], id_column: str, event_type: str = "") -> None:
    """Raise EtlError (a contract violation: the job exits 3, no retry) for events without an id or without an
    event time (a null ``timestamp`` falls on no day: it would be dropped as misfiled on every day)."""
    if counts["null_ids"]:
        raise etl.EtlError(f"{counts['null_ids']} events have a null {id_column}")
    if counts.get("null_timestamps"):
        raise etl.EtlError(f"{counts['null_timestamps']} {event_type or 'raw'} events violate the contract: "
                           "null timestamp (event time)")


def _dedup_of_day(df, id_column: str, day: dt.date):
    """(deduplicated rows of the day, cached; deduplicated rows of any day; of the day) in one Spark action."""
    from pyspark.sql import functions as F

    ded = deduplicate(df, id_column).withColumn("_of_day", F.to_date(F.col("timestamp")) == F.lit(day)).cache()
    counts = dict(ded.groupBy("_of_day").count().collect())
    return ded.filter("_of_day").drop("_of_day"), int(sum(counts.values())), int(counts.get(True, 0))


# --------------------------------------------------------------------------------------- the day --
def _empty(name: str) -> pd.DataFrame:
    if name == "fact_sales":
        return etl.build_fact_sales(pd.DataFrame(), pd.DataFrame(), dt.date(2000, 1, 1))
    if name == "fact_sales_daily":
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in (
            "date_key", "store_key", "product_key", "units_sold", "units_returned", "net_units")} |
            {c: pd.Series(dtype="float64") for c in ("revenue", "cost", "profit", "revenue_with_cost")} |
            {"pos_lines": pd.Series(dtype="int64"), "return_lines": pd.Series(dtype="int64")})
    return etl.closing_stock(pd.DataFrame()).assign(store_key=pd.Series(dtype="uint64"),
                                                    product_key=pd.Series(dtype="uint64"))


def _arrow_out(df, key_cols=("store_key", "product_key"), uint8=("is_return",)) -> pa.Table:
    t = df.toArrow()
    for c in key_cols:
        if c in t.column_names:
            t = t.set_column(t.column_names.index(c), c, to_unsigned(t[c]))
    for c in uint8:
        if c in t.column_names:
            t = t.set_column(t.column_names.index(c), c, pc.cast(t[c], pa.uint8()))
    return t


def _stage(lake, day: dt.date, name: str, table: pa.Table | pd.DataFrame) -> str:
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    return lake.write_table(table, *etl._staging(day, name))


def write_json(lake, day: dt.date, name: str, obj: dict) -> None:
    """Stage ``obj`` (the job's result or error record) for ``day`` as ``<name>.parquet`` in the ETL's staging
    folder ``features/staging/daily_etl/date=YYYY-MM-DD/`` (bucket LAKE_FEATURES_BUCKET): one row, one string
    column ``json`` holding ``json.dumps(obj, default=str)`` (values JSON cannot hold, e.g. dates, become their
    ``str``). Overwrites; :func:`read_json` reads it back.

    Raises:
        TypeError: a dict key JSON cannot take (e.g. a tuple).
        ValueError: a circular reference in ``obj``.
        OSError: the lake cannot be written (:meth:`core.lake.Lake.write_table`).
    """
    lake.write_table(pa.table({"json": [json.dumps(obj, default=str)]}), *etl._staging(day, name))


def read_json(lake, day: dt.date, name: str) -> dict | None:
    """A staged JSON record (result or error of the job), None when absent."""
    import pyarrow.parquet as pq

    if not lake.exists(*etl._staging(day, name)):
        return None
    return json.loads(pq.read_table(lake.path(*etl._staging(day, name)), filesystem=lake.fs)["json"][0].as_py())


def clear_error(lake, day: dt.date) -> None:
    """Remove the day's staged error record (before a new run of the job)."""
    lake.delete_file(*etl._staging(day, ERROR_NAME))


def build_day(spark, day: dt.date, lake=None, settings=None, recheck_days: int = 0) -> dict[str, Any]:
    """Raw lake events of ``day`` -> staged fact_sales, fact_sales_daily, inventory_closing, dim_product,
    dim_store, dim_date, ``raw_manifest`` (the listing of the raw files, taken before reading them) (+
    ``facts_result`` with the counts). Idempotent: the staged files are overwritten.

    With ``recheck_days`` > 0 (the job passes ETL_RECHECK_DAYS) the loaded days among the ``recheck_days`` days
    before ``day`` whose raw partitions changed since they were loaded (:func:`etl.star_schema.days_to_recheck`,
    a listing per partition) are built again first; the load then loads them again
    (:func:`etl.star_schema.rebuilt_days`). A re-checked day whose build raises ``EtlError`` (bad or unreadable raw
    data) is left out and staged as :data:`etl.star_schema.RECHECK_ERROR` for the load to record 'failed': until
    2026-12-07 it failed the job (exit 3), so the night's own day was never built, every night while the day stayed
    in the window.

    Returns: counts {"raw_sales_rows", "sales_lines", "duplicate_sales", "misfiled_sales", "raw_inventory_rows",
    "inventory_rows", "duplicate_inventory", "misfiled_inventory", "daily_rows", "products", "stores",
    "seconds", "rechecked_days" (ISO dates rebuilt; a day whose build failed is not among them)}.

    Raises:
        EtlError: contract violations (quantity 0 or null, price < 0 or null, null event time) or null event
            ids.
    """
    from pyspark.sql import functions as F

    from core.settings import get_settings

    s = settings or get_settings()
    lake = lake or etl.open_lake()
    rechecked = []
    for d in etl.days_to_recheck(lake, day, recheck_days):
        log.warning("raw partitions of %s changed since it was loaded: building it again", d)
        try:
            build_day(spark, d, lake, s)
        except etl.EtlError as exc:   # a stuck re-checked day: the load records it 'failed', the night goes on
            log.error("re-checked day %s cannot be built, left out (recorded by the load): %s", d, exc)
            etl.write_recheck_error(lake, d, day, exc)
            continue
        rechecked.append(d)   # its build cleared its record (below)
    t0 = time.perf_counter()
    dk = etl.date_key(day)
    manifest = etl.raw_manifest(lake, day)   # listed before reading: a file landing meanwhile makes it differ later
    raw_s, raw_i = read_raw(spark, lake, etl.SALES, day), read_raw(spark, lake, etl.INVENTORY, day)
    out: dict[str, Any] = {"date": day.isoformat(), "raw_sales_rows": 0, "raw_inventory_rows": 0}
    sales = inv = None
    seen = []
    if raw_s is not None:
        n = raw_counts(raw_s, etl.EVENT_ID[etl.SALES], contract=True)
        _refuse_null_ids(n, etl.EVENT_ID[etl.SALES], etl.SALES)
        sales, n_ded, out["sales_lines"] = _dedup_of_day(raw_s, etl.EVENT_ID[etl.SALES], day)
        out["raw_sales_rows"] = n["rows"]
        out["duplicate_sales"], out["misfiled_sales"] = n["rows"] - n_ded, n_ded - out["sales_lines"]
        if n["bad"]:   # only then the exact check on the day's deduplicated lines (an action)
            check_contract(sales)
        seen.append(sales.select(F.col("store_id").cast("string"), F.col("product_id").cast("string")))
    if raw_i is not None:
        n = raw_counts(raw_i, etl.EVENT_ID[etl.INVENTORY], contract=False)
        _refuse_null_ids(n, etl.EVENT_ID[etl.INVENTORY], etl.INVENTORY)
        inv, n_ded_i, n_inv = _dedup_of_day(raw_i, etl.EVENT_ID[etl.INVENTORY], day)
        out["raw_inventory_rows"] = n["rows"]
        out["duplicate_inventory"], out["misfiled_inventory"] = n["rows"] - n_ded_i, n_ded_i - n_inv
        seen.append(inv.select(F.col("store_id").cast("string"), F.col("product_id").cast("string")))
    for k in ("sales_lines", "duplicate_sales", "misfiled_sales", "duplicate_inventory", "misfiled_inventory"):
        out.setdefault(k, 0)

    # dimensions: dimension-sized, in pandas with the ETL's own builders
    pairs = seen[0].unionByName(seen[1]) if len(seen) == 2 else (seen[0] if seen else None)
    if pairs is not None:   # one action: the distinct store x SKU pairs (dimension-sized)
        pairs_pd = pairs.distinct().toPandas()
        skus, store_ids = pd.Series(pairs_pd["product_id"].unique()), pd.Series(pairs_pd["store_id"].unique())
    else:
        skus = store_ids = pd.Series(dtype=object)
    products, stores_ref = etl.read_reference(lake, "products"), etl.read_reference(lake, "stores")
    dim_product = etl.build_dim_product(products if products is not None and not products.empty else None, skus)
    # the facts' unit cost: the product master version valid on the day (a later change does not rewrite it)
    asof = etl.reference_as_of(etl.reference_history(lake, "products"), day)
    cost = etl.build_dim_product(asof if asof is not None and not asof.empty else None, skus,
                                 history=etl.history_file("products"))
    cost = dim_product[["sku"]].merge(cost[["sku", "unit_cost"]], on="sku", how="left")["unit_cost"]
    dim_store = etl.build_dim_store(stores_ref if stores_ref is not None and not stores_ref.empty else None,
                                    store_ids, s.store_country_default)
    dim_date = etl.build_dim_date(etl.calendar_days(day), dim_store["country_code"].tolist(), s.store_country_default)
    dim_date["holiday_names"] = dim_date["holiday_names"].map(json.dumps)
    # explicit schemas: on an empty day with no reference data yet the maps are empty and Spark cannot infer one
    pmap = spark.createDataFrame(pd.DataFrame({"sku": dim_product["sku"].astype(str),
                                               "product_key": to_signed(dim_product["product_key"]),
                                               "unit_cost": cost.astype("float64").to_numpy()}),
                                 schema="sku string, product_key long, unit_cost double")
    smap = spark.createDataFrame(pd.DataFrame({"store_id": dim_store["store_id"].astype(str),
                                               "store_key": to_signed(dim_store["store_key"])}),
                                 schema="store_id string, store_key long")

    if sales is not None:
        fact = fact_sales(sales, pmap, smap, dk).cache()
        fact_t = _arrow_out(fact)
        daily_t = _arrow_out(sales_daily(fact), uint8=())
        fact.unpersist()
    else:
        fact_t, daily_t = pa.Table.from_pandas(_empty("fact_sales"), preserve_index=False), _empty("fact_sales_daily")
    closing_t = _arrow_out(closing_stock(inv, pmap, smap).select(
        "store_id", "product_id", "closing_stock", "last_update_time", "reorder_point", "units_received", "store_key",
        "product_key"),
        uint8=()) if inv is not None else _empty("inventory_closing")
    for name, tab in (("fact_sales", fact_t), ("fact_sales_daily", daily_t), ("inventory_closing", closing_t),
                      ("dim_product", dim_product), ("dim_store", dim_store), ("dim_date", dim_date)):
        _stage(lake, day, name, tab)
    etl.write_manifest(lake, day, etl.RAW_MANIFEST, manifest)
    # the day built (as a re-checked day, or as its own day: a backfill): a failed re-check build's record of it is
    # stale. Until 2026-12-07 only a later night's re-check removed it, so after a backfill of the day, a re-run of
    # the night that wrote the record (whose build no longer re-checked the day) recorded the repaired day 'failed'
    etl.clear_recheck_error(lake, day)
    out.update(inventory_rows=len(closing_t), daily_rows=len(daily_t), products=len(dim_product),
               stores=len(dim_store), seconds=round(time.perf_counter() - t0, 2),
               rechecked_days=[d.isoformat() for d in rechecked])
    spark.catalog.clearCache()
    write_json(lake, day, RESULT_NAME, out)
    log.info("build_day %s: %s", day, out)
    return out
