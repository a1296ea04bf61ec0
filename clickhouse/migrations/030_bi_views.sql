-- 030_bi_views.sql: read-only views for Power BI (powerbi/dataset.md describes the model built on them).
--
-- Conventions
-- * ReplacingMergeTree tables are read with FINAL, so a re-processed micro-batch or a re-run DAG never
--   shows twice in a report.
-- * Decimals become Float64 (the ODBC driver and DAX handle doubles best); money keeps 4 decimals upstream.
-- * Every fact view carries `date_key` (YYYYMMDD) for the relationship to v_dim_date, and either the
--   surrogate keys (store_key, product_key: star schema) or the natural keys (store_id, product_id: streaming
--   and ML tables), which relate to v_dim_store.store_id / v_dim_product.sku.
-- * Keys and counts are Int64, never UInt32/UInt64: BI tools (Power BI over ODBC) load UInt64 as binary and
--   cannot relate on it. Surrogate keys are stored as UInt64 (first 8 bytes of a hash) and exposed through
--   reinterpretAsInt64 (the same 64 bits read as signed: one-to-one, so relationships still hold).
-- * Current-state views read small up-to-date tables (025_bi_state.sql: fact_sales_daily,
--   sku_window_latest), never FINAL + GROUP BY over every 5-minute window.
-- * Views only; the BI user `bi_reader` has SELECT on the database and nothing else.

-- ------------------------------------------------------------------------------------ dimensions --
CREATE OR REPLACE VIEW {db}.v_dim_date AS
SELECT toInt64(d.date_key) AS date_key, date, day_of_week, day_name, day_of_month, week_of_year, month, month_name, quarter, year,
       is_weekend, is_holiday, holiday_name, holiday_country,
       toStartOfWeek(date, 3) AS week_start,                      -- ISO week, Monday
       toStartOfMonth(date) AS month_start
FROM {db}.dim_date AS d FINAL;

CREATE OR REPLACE VIEW {db}.v_dim_product AS
SELECT reinterpretAsInt64(p.product_key) AS product_key, sku, product_name, category, sub_category, brand, supplier,
       unit_cost, unit_price, toInt64(p.shelf_life_days) AS shelf_life_days, toInt64(p.reorder_point) AS reorder_point,
       toInt64(p.storage_capacity) AS storage_capacity, is_known
FROM {db}.dim_product AS p FINAL;

CREATE OR REPLACE VIEW {db}.v_dim_store AS
SELECT reinterpretAsInt64(st.store_key) AS store_key, store_id, store_name, city, country, country_code, region,
       is_known
FROM {db}.dim_store AS st FINAL;

-- ------------------------------------------------------------------------------ star-schema facts --
-- one row per POS line (sale or return) of the nightly ETL
CREATE OR REPLACE VIEW {db}.v_fact_sales AS
SELECT s.sale_id AS sale_id, toInt64(s.date_key) AS date_key, s.event_time AS event_time,
       reinterpretAsInt64(s.store_key) AS store_key, reinterpretAsInt64(s.product_key) AS product_key, s.payment_method AS payment_method, s.customer_id AS customer_id,
       s.quantity AS quantity,
       if(s.quantity > 0, s.quantity, 0)       AS units_sold,
       if(s.quantity < 0, -s.quantity, 0)      AS units_returned,
       s.unit_price AS unit_price,
       toFloat64(s.revenue)                    AS revenue,
       toFloat64(s.cost)                       AS cost,     -- Nullable: unknown unit cost
       toFloat64(s.profit)                     AS profit,
       s.is_return AS is_return
FROM {db}.fact_sales AS s;

-- daily grain per store x SKU (Import mode friendly: about 1/100 of the line count), from fact_sales_daily
-- which the nightly ETL rebuilds with each fact_sales partition
CREATE OR REPLACE VIEW {db}.v_sales_daily AS
SELECT toInt64(d.date_key) AS date_key, reinterpretAsInt64(d.store_key) AS store_key,
       reinterpretAsInt64(d.product_key) AS product_key, units_sold, units_returned, net_units, revenue, cost,
       profit, revenue_with_cost, pos_lines, return_lines
FROM {db}.fact_sales_daily AS d;

-- v_fact_inventory: defined in 097_fact_inventory_units_received_bi_view.sql only (since 2026-12-07, with
-- units_received; 030 cannot name that column: it runs before 093 adds it on a fresh database).

-- --------------------------------------------------------------------------- streaming (near real time) --
-- v_live_sku_metrics: defined in 091_order_velocity_bi_views.sql only (since 2026-12-07; this file re-created it
-- without order_velocity on every migrate() until 091 added it back, so a query in between failed; it cannot
-- carry order_velocity here: 030 runs before 089 adds the column on a fresh database).
-- in_store_last_24h below (v_live_store_metrics, as in v_live_sku_metrics): the windows of the store's own last 24 h.
CREATE OR REPLACE VIEW {db}.v_live_store_metrics AS
SELECT toInt64(toYYYYMMDD(m.window_start)) AS date_key, m.window_start AS window_start, m.window_end AS window_end,
       m.store_id AS store_id, m.units_sold AS units_sold, m.units_returned AS units_returned, m.revenue AS revenue,
       m.transaction_count AS transaction_count, m.sku_count AS sku_count, m.skus_high_risk AS skus_high_risk,
       m.sales_velocity AS sales_velocity, m.anomaly_score AS anomaly_score, m.updated_at AS updated_at,
       a.store_latest_window AS store_latest_window, a.store_latest_window_end AS store_latest_window_end,
       toUInt8(m.window_start > a.store_latest_window - INTERVAL 24 HOUR) AS in_store_last_24h
FROM (SELECT * FROM {db}.store_metrics_5m FINAL) AS m
LEFT JOIN (SELECT store_id, max(window_start) AS store_latest_window, max(window_end) AS store_latest_window_end
           FROM {db}.store_metrics_5m GROUP BY store_id) AS a
    ON m.store_id = a.store_id;

-- latest known position per store x SKU: stock from inventory_levels (one row per series), velocity / cover /
-- risk / anomaly score from the series' latest 5-minute window (sku_window_latest, one row per series)
CREATE OR REPLACE VIEW {db}.v_current_inventory AS
SELECT i.store_id AS store_id, i.product_id AS product_id, i.stock_level AS stock_level, i.stock_time AS stock_time,
       i.reorder_point AS reorder_point, i.in_episode AS in_restock_episode,
       m.window_start AS last_window_start, m.sales_velocity AS sales_velocity,
       m.hours_of_cover AS hours_of_cover, if(m.store_id = '', 'UNKNOWN', m.stockout_risk) AS stockout_risk,
       m.anomaly_score AS anomaly_score,
       toUInt8(ifNull(i.stock_level, 1) <= 0) AS is_stockout
FROM (SELECT * FROM {db}.inventory_levels FINAL) AS i
LEFT JOIN (SELECT * FROM {db}.sku_window_latest FINAL) AS m
    ON i.store_id = m.store_id AND i.product_id = m.product_id;

-- v_restock_alerts: defined in 091_order_velocity_bi_views.sql only (since 2026-12-07, see v_live_sku_metrics above)

-- data quality: quarantined events per day, event type and reason
-- v_quarantine_summary: defined in 084_quarantine_refused_rows_apart.sql only (since 2026-12-07: every
-- migrate() re-runs every file, so until the later file ran again a query read this file's older definition)

-- v_etl_runs: defined in 098_etl_runs_bi_view_hides_begun.sql only (since 2026-12-07: it hides the 'begun' rows
-- that are not a day's latest)

-- -------------------------------------------------------------------------------------------- ML --
-- forecasts of the latest origin (FORECAST_HORIZON horizons per store x SKU, 14 by default) with 80 % / 95 % intervals
CREATE OR REPLACE VIEW {db}.v_forecast_latest AS
SELECT toInt64(toYYYYMMDD(target_date)) AS date_key, forecast_origin, target_date, horizon, store_id, product_id,
       yhat, lower80, upper80, lower95, upper95, toInt64(f.model_version) AS model_version
FROM {db}.forecast_predictions AS f FINAL
WHERE forecast_origin = (SELECT max(forecast_origin) FROM {db}.forecast_predictions);

-- every forecast whose target day has a known demand (features_daily.units), for WAPE / bias / coverage
CREATE OR REPLACE VIEW {db}.v_forecast_accuracy AS
SELECT toInt64(toYYYYMMDD(f.target_date)) AS date_key, f.forecast_origin AS forecast_origin, f.target_date AS target_date,
       f.horizon AS horizon, f.store_id AS store_id, f.product_id AS product_id, toInt64(f.model_version) AS model_version,
       f.yhat AS forecast_units, a.units AS actual_units,
       f.yhat - a.units AS error_units,
       abs(f.yhat - a.units) AS abs_error_units,
       toUInt8(a.units >= f.lower80 AND a.units <= f.upper80) AS within_80,
       toUInt8(a.units >= f.lower95 AND a.units <= f.upper95) AS within_95
FROM (SELECT * FROM {db}.forecast_predictions FINAL) AS f
INNER JOIN
(
    SELECT store_id, product_id, date, units FROM {db}.features_daily FINAL WHERE NOT isNaN(units)
) AS a ON f.store_id = a.store_id AND f.product_id = a.product_id AND f.target_date = a.date;

-- backtest metrics in long form (model x metric x horizon); is_champion = 1 for the model (GBT or a baseline) the
-- champion version serves predictions with (model_registry.model; '' for versions registered before that column)
CREATE OR REPLACE VIEW {db}.v_model_metrics AS
SELECT m.model_name AS model_name, toInt64(m.model_version) AS model_version, m.run_date AS run_date,
       toInt64(toYYYYMMDD(m.run_date)) AS date_key, m.model AS model, m.metric AS metric, m.horizon AS horizon,
       m.value AS value, m.dataset AS dataset,
       toUInt8(ifNull(r.is_champion, 0) = 1 AND r.model IN (m.model, '')) AS is_champion   -- the model serving
FROM (SELECT * FROM {db}.ml_model_metrics FINAL) AS m
LEFT JOIN (SELECT model_name, version, is_champion, model FROM {db}.model_registry FINAL) AS r
    ON m.model_name = r.model_name AND m.model_version = r.version;

CREATE OR REPLACE VIEW {db}.v_model_registry AS
SELECT model_name, toInt64(r.version) AS version, run_date, trained_at, path, backtest_wape, seasonal_naive_wape,
       if(seasonal_naive_wape > 0, 1 - backtest_wape / seasonal_naive_wape, NULL) AS wape_improvement,
       is_champion, promoted_at
FROM {db}.model_registry AS r FINAL;

-- v_reorder_latest (stock optimisation of the latest run) is defined in 094_reorder_on_order_bound.sql only: it
-- shows on_order and order_bound, which 094 adds after this file on a fresh database

CREATE OR REPLACE VIEW {db}.v_sku_classification_latest AS
SELECT as_of_date, store_id, product_id, demand_class, adi, cv2, mean_daily_demand,
       toInt64(c.days_since_last_sale) AS days_since_last_sale, is_slow_moving
FROM {db}.sku_classification AS c FINAL
WHERE as_of_date = (SELECT max(as_of_date) FROM {db}.sku_classification);

-- daily demand history per store x SKU as the forecasting model sees it (features_daily), for fan charts
CREATE OR REPLACE VIEW {db}.v_demand_history AS
SELECT toInt64(toYYYYMMDD(f.date)) AS date_key, f.date AS date, store_id, product_id, f.units AS units
FROM {db}.features_daily AS f FINAL
WHERE NOT isNaN(f.units);

-- the streaming job's committed micro-batches (freshness and throughput on the data-quality page)
CREATE OR REPLACE VIEW {db}.v_stream_batches AS
SELECT query, batch_id, input_rows, output_rows, started_at, committed_at,
       dateDiff('millisecond', started_at, committed_at) / 1000 AS duration_s,
       duplicates_dropped, records_expired
FROM {db}.stream_batches FINAL;
