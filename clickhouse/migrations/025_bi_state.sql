-- 025_bi_state.sql: small, always up-to-date tables the dashboards read instead of scanning the facts.
-- Idempotent: CREATE ... IF NOT EXISTS, and each backfill only inserts what is missing.

-- Daily grain of fact_sales per store x SKU (about 1/100 of the POS lines). Written by the nightly ETL
-- right after it replaces the day's fact_sales partition (etl.star_schema.load: same staging +
-- REPLACE PARTITION, so a re-run replaces the day instead of adding to it).
CREATE TABLE IF NOT EXISTS {db}.fact_sales_daily (
    date_key          UInt32,
    store_key         UInt64,
    product_key       UInt64,
    units_sold        Int64,
    units_returned    Int64,
    net_units         Int64,
    revenue           Float64,
    cost              Float64,    -- lines with unknown cost count 0
    profit            Float64,
    revenue_with_cost Float64,    -- revenue of the lines whose cost is known (denominator of margin %)
    pos_lines         Int64,
    return_lines      Int64
) ENGINE = MergeTree
PARTITION BY date_key
ORDER BY (date_key, store_key, product_key);

CREATE TABLE IF NOT EXISTS {db}.fact_sales_daily_staging AS {db}.fact_sales_daily;

-- backfill the days loaded before this table existed (no-op once every day is present)
INSERT INTO {db}.fact_sales_daily
SELECT s.date_key, s.store_key, s.product_key,
       sum(if(s.quantity > 0, s.quantity, 0)), sum(if(s.quantity < 0, -s.quantity, 0)), sum(s.quantity),
       sum(toFloat64(s.revenue)), sum(ifNull(toFloat64(s.cost), 0)), sum(ifNull(toFloat64(s.profit), 0)),
       sumIf(toFloat64(s.revenue), s.cost IS NOT NULL), count(), countIf(s.is_return = 1)
FROM {db}.fact_sales AS s
WHERE s.date_key NOT IN (SELECT DISTINCT date_key FROM {db}.fact_sales_daily)
GROUP BY s.date_key, s.store_key, s.product_key;

-- Latest 5-minute window per store x SKU (one row per series: velocity, cover, risk, anomaly score).
-- Fed by a materialized view on every insert into sales_metrics_5m; ReplacingMergeTree(window_start)
-- keeps the newest window, and among rewrites of the same window the last inserted (the stream rewrites
-- an open window in later micro-batches only). Read with FINAL: the table has one row per series.
CREATE TABLE IF NOT EXISTS {db}.sku_window_latest (
    store_id        LowCardinality(String),
    product_id      String,
    window_start    DateTime64(3, 'UTC'),
    window_end      DateTime64(3, 'UTC'),
    units_sold      Int64,
    revenue         Float64,
    stock_level     Nullable(Int64),
    reorder_point   Nullable(Int64),
    sales_velocity  Float64,
    hours_of_cover  Nullable(Float64),
    stockout_risk   LowCardinality(String),
    anomaly_score   Float64,
    updated_at      DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(window_start)
ORDER BY (store_id, product_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sku_window_latest_mv TO {db}.sku_window_latest AS
SELECT store_id, product_id, window_start, window_end, units_sold, revenue, stock_level, reorder_point,
       sales_velocity, hours_of_cover, stockout_risk, anomaly_score, updated_at
FROM {db}.sales_metrics_5m;

-- backfill the series written before the materialized view existed (no-op once all are present)
INSERT INTO {db}.sku_window_latest
SELECT store_id, product_id,
       argMax(window_start, (window_start, version)), argMax(window_end, (window_start, version)),
       argMax(units_sold, (window_start, version)), argMax(revenue, (window_start, version)),
       argMax(stock_level, (window_start, version)), argMax(reorder_point, (window_start, version)),
       argMax(sales_velocity, (window_start, version)), argMax(hours_of_cover, (window_start, version)),
       argMax(stockout_risk, (window_start, version)), argMax(anomaly_score, (window_start, version)),
       argMax(updated_at, (window_start, version))
FROM {db}.sales_metrics_5m
WHERE (store_id, product_id) NOT IN (SELECT store_id, product_id FROM {db}.sku_window_latest)
GROUP BY store_id, product_id;
