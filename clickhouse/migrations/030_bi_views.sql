-- 030_bi_views.sql: read-only views for Power BI (powerbi/dataset.md describes the model built on them).
--
-- Conventions
-- * ReplacingMergeTree tables are read with FINAL, so a re-processed micro-batch or a re-run DAG never
--   shows twice in a report.
-- * Decimals become Float64 (the ODBC driver and DAX handle doubles best); money keeps 4 decimals upstream.
-- * Every fact view carries `date_key` (YYYYMMDD, UInt32) for the relationship to v_dim_date, and either the
--   surrogate keys (store_key, product_key: star schema) or the natural keys (store_id, product_id: streaming
--   and ML tables), which relate to v_dim_store.store_id / v_dim_product.sku.
-- * Views only; the BI user `bi_reader` has SELECT on the database and nothing else.

-- ------------------------------------------------------------------------------------ dimensions --
CREATE OR REPLACE VIEW {db}.v_dim_date AS
SELECT date_key, date, day_of_week, day_name, day_of_month, week_of_year, month, month_name, quarter, year,
       is_weekend, is_holiday, holiday_name, holiday_country,
       toStartOfWeek(date, 3) AS week_start,                      -- ISO week, Monday
       toStartOfMonth(date) AS month_start
FROM {db}.dim_date FINAL;

CREATE OR REPLACE VIEW {db}.v_dim_product AS
SELECT product_key, sku, product_name, category, sub_category, brand, supplier,
       unit_cost, unit_price, shelf_life_days, reorder_point, storage_capacity, is_known
FROM {db}.dim_product FINAL;

CREATE OR REPLACE VIEW {db}.v_dim_store AS
SELECT store_key, store_id, store_name, city, country, country_code, region, is_known
FROM {db}.dim_store FINAL;

-- ------------------------------------------------------------------------------ star-schema facts --
-- one row per POS line (sale or return) of the nightly ETL
CREATE OR REPLACE VIEW {db}.v_fact_sales AS
SELECT s.sale_id AS sale_id, s.date_key AS date_key, s.event_time AS event_time, s.store_key AS store_key,
       s.product_key AS product_key, s.payment_method AS payment_method, s.customer_id AS customer_id,
       s.quantity AS quantity,
       if(s.quantity > 0, s.quantity, 0)       AS units_sold,
       if(s.quantity < 0, -s.quantity, 0)      AS units_returned,
       s.unit_price AS unit_price,
       toFloat64(s.revenue)                    AS revenue,
       toFloat64(s.cost)                       AS cost,     -- Nullable: unknown unit cost
       toFloat64(s.profit)                     AS profit,
       s.is_return AS is_return
FROM {db}.fact_sales AS s;

-- daily grain per store x SKU (Import mode friendly: about 1/100 of the line count).
-- Source columns are table-qualified: ClickHouse would otherwise resolve `revenue` to the output alias.
CREATE OR REPLACE VIEW {db}.v_sales_daily AS
SELECT s.date_key AS date_key, s.store_key AS store_key, s.product_key AS product_key,
       sum(if(s.quantity > 0, s.quantity, 0))                   AS units_sold,
       sum(if(s.quantity < 0, -s.quantity, 0))                  AS units_returned,
       sum(s.quantity)                                          AS net_units,
       sum(toFloat64(s.revenue))                                AS revenue,
       sum(ifNull(toFloat64(s.cost), 0))                        AS cost,
       sum(ifNull(toFloat64(s.profit), 0))                      AS profit,
       sumIf(toFloat64(s.revenue), s.cost IS NOT NULL)          AS revenue_with_cost,  -- denominator of margin %
       count()                                                  AS pos_lines,
       countIf(s.is_return = 1)                                 AS return_lines
FROM {db}.fact_sales AS s
GROUP BY s.date_key, s.store_key, s.product_key;

-- daily closing stock per store x SKU with days of cover (closing stock / mean daily units sold over the
-- trailing 28 snapshots) and a stock-out flag
CREATE OR REPLACE VIEW {db}.v_fact_inventory AS
SELECT date_key, store_key, product_key, closing_stock, is_carried_forward, units_sold, units_returned,
       reorder_point, safety_stock, below_reorder_point,
       toUInt8(closing_stock <= 0)                                                   AS is_stockout,
       avg(units_sold) OVER (PARTITION BY store_key, product_key ORDER BY date_key
                             ROWS BETWEEN 27 PRECEDING AND CURRENT ROW)               AS avg_daily_units_28d,
       if(avg_daily_units_28d > 0, closing_stock / avg_daily_units_28d, NULL)         AS days_of_cover
FROM {db}.fact_inventory;

-- --------------------------------------------------------------------------- streaming (near real time) --
CREATE OR REPLACE VIEW {db}.v_live_sku_metrics AS
SELECT toYYYYMMDD(window_start) AS date_key, window_start, window_end, store_id, product_id,
       units_sold, units_returned, revenue, transaction_count, stock_level, reorder_point,
       sales_velocity, hours_of_cover, stockout_risk, anomaly_score,
       toUInt8(abs(anomaly_score) >= 3) AS is_anomaly,
       last_event_time, updated_at
FROM {db}.sales_metrics_5m FINAL;

CREATE OR REPLACE VIEW {db}.v_live_store_metrics AS
SELECT toYYYYMMDD(window_start) AS date_key, window_start, window_end, store_id,
       units_sold, units_returned, revenue, transaction_count, sku_count, skus_high_risk,
       sales_velocity, anomaly_score, updated_at
FROM {db}.store_metrics_5m FINAL;

-- latest known position per store x SKU: stock from inventory_levels, velocity / cover / risk from the
-- latest 5-minute window of that SKU
CREATE OR REPLACE VIEW {db}.v_current_inventory AS
SELECT i.store_id AS store_id, i.product_id AS product_id, i.stock_level AS stock_level, i.stock_time AS stock_time,
       i.reorder_point AS reorder_point, i.in_episode AS in_restock_episode,
       m.last_window_start AS last_window_start, m.sales_velocity AS sales_velocity,
       m.hours_of_cover AS hours_of_cover, m.stockout_risk AS stockout_risk,
       toUInt8(ifNull(i.stock_level, 1) <= 0) AS is_stockout
FROM (SELECT * FROM {db}.inventory_levels FINAL) AS i
LEFT JOIN
(
    SELECT store_id, product_id,
           max(window_start)                     AS last_window_start,
           argMax(sales_velocity, window_start)  AS sales_velocity,
           argMax(hours_of_cover, window_start)  AS hours_of_cover,
           argMax(stockout_risk, window_start)   AS stockout_risk
    FROM {db}.sales_metrics_5m FINAL
    GROUP BY store_id, product_id
) AS m ON i.store_id = m.store_id AND i.product_id = m.product_id;

CREATE OR REPLACE VIEW {db}.v_restock_alerts AS
SELECT toYYYYMMDD(alert_time) AS date_key, alert_id, alert_time, store_id, product_id, priority,
       current_stock, reorder_point, recommended_quantity, sales_velocity, hours_of_cover, window_end
FROM {db}.restock_alerts FINAL;

-- data quality: quarantined events per day, event type and reason
CREATE OR REPLACE VIEW {db}.v_quarantine_summary AS
SELECT toYYYYMMDD(ingested_at) AS date_key, event_type, topic, reason, count() AS events,
       min(ingested_at) AS first_seen, max(ingested_at) AS last_seen
FROM {db}.quarantine_events FINAL
GROUP BY date_key, event_type, topic, reason;

CREATE OR REPLACE VIEW {db}.v_etl_runs AS
SELECT run_id, dag_run_id, date_key, started_at, finished_at,
       dateDiff('second', started_at, finished_at) AS duration_s,
       status, stage, raw_sales_rows, duplicate_sales_rows, fact_sales_rows, fact_inventory_rows,
       units_net, toFloat64(e.revenue) AS revenue, message
FROM {db}.etl_runs AS e;

-- -------------------------------------------------------------------------------------------- ML --
-- forecasts of the latest origin (7 horizons per store x SKU) with 80 % / 95 % intervals
CREATE OR REPLACE VIEW {db}.v_forecast_latest AS
SELECT toYYYYMMDD(target_date) AS date_key, forecast_origin, target_date, horizon, store_id, product_id,
       yhat, lower80, upper80, lower95, upper95, model_version
FROM {db}.forecast_predictions FINAL
WHERE forecast_origin = (SELECT max(forecast_origin) FROM {db}.forecast_predictions);

-- every forecast whose target day has a known demand (features_daily.units), for WAPE / bias / coverage
CREATE OR REPLACE VIEW {db}.v_forecast_accuracy AS
SELECT toYYYYMMDD(f.target_date) AS date_key, f.forecast_origin AS forecast_origin, f.target_date AS target_date,
       f.horizon AS horizon, f.store_id AS store_id, f.product_id AS product_id, f.model_version AS model_version,
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

-- backtest metrics in long form (model x metric x horizon), with the registry's champion flag
CREATE OR REPLACE VIEW {db}.v_model_metrics AS
SELECT m.model_name AS model_name, m.model_version AS model_version, m.run_date AS run_date,
       toYYYYMMDD(m.run_date) AS date_key, m.model AS model, m.metric AS metric, m.horizon AS horizon,
       m.value AS value, m.dataset AS dataset, ifNull(r.is_champion, 0) AS is_champion
FROM (SELECT * FROM {db}.ml_model_metrics FINAL) AS m
LEFT JOIN (SELECT model_name, version, is_champion FROM {db}.model_registry FINAL) AS r
    ON m.model_name = r.model_name AND m.model_version = r.version;

CREATE OR REPLACE VIEW {db}.v_model_registry AS
SELECT model_name, version, run_date, trained_at, path, backtest_wape, seasonal_naive_wape,
       if(seasonal_naive_wape > 0, 1 - backtest_wape / seasonal_naive_wape, NULL) AS wape_improvement,
       is_champion, promoted_at
FROM {db}.model_registry FINAL;

-- stock optimisation of the latest run: safety stock, reorder point, quantity, days until stock-out
CREATE OR REPLACE VIEW {db}.v_reorder_latest AS
SELECT toYYYYMMDD(as_of_date) AS date_key, as_of_date, store_id, product_id, stock, mean_daily_demand,
       sigma_daily, lead_time_days, service_level, safety_stock, reorder_point, eoq, reorder_qty, reorder_needed,
       days_until_stockout, stockout_risk, reorder_qty * unit_cost AS reorder_value, model_version
FROM {db}.reorder_recommendations FINAL
WHERE as_of_date = (SELECT max(as_of_date) FROM {db}.reorder_recommendations);

CREATE OR REPLACE VIEW {db}.v_sku_classification_latest AS
SELECT as_of_date, store_id, product_id, demand_class, adi, cv2, mean_daily_demand, days_since_last_sale,
       is_slow_moving
FROM {db}.sku_classification FINAL
WHERE as_of_date = (SELECT max(as_of_date) FROM {db}.sku_classification);
