-- 091_order_velocity_bi_views.sql (2026-12-07): the managers' surfaces show the rate a restock alert's quantity was
-- computed from. Since 089/090 the stream writes order_velocity (units/hour: the trailing rate of the windows'
-- units winsorized for the order, streaming.transforms.enrich_windows) to sales_metrics_5m and restock_alerts, but
-- the views the dashboard (dashboard/queries.py) and Power BI (powerbi/RetailInventory.SemanticModel) read did not
-- carry it: an alert of a capped bulk line showed sales_velocity (the net rate, up to thousands of units/hour) next
-- to a quantity computed from a rate a thousand times smaller, with nothing to explain it. These two views are
-- defined here only (until 2026-12-07 030 created them without order_velocity first, on every migrate(), so a
-- dashboard or Power BI query between 030 and this file failed on the unknown column; 030 cannot name the column:
-- it runs before 089 adds it on a fresh database). recommended_quantity = max(1, 2 x reorder_point + ceil(order_velocity x 24 x
-- LEAD_TIME_DAYS) - current_stock), streaming.transforms.recommended_quantity. Alerts written before 089 have
-- order_velocity NULL (their quantity used sales_velocity). Idempotent: CREATE OR REPLACE VIEW.
CREATE OR REPLACE VIEW {db}.v_restock_alerts AS
SELECT toInt64(toYYYYMMDD(alert_time)) AS date_key, alert_id, alert_time, store_id, product_id, priority,
       current_stock, reorder_point, recommended_quantity, sales_velocity, hours_of_cover, window_end,
       order_velocity
FROM {db}.restock_alerts FINAL;

-- store_latest_window: the store's newest window (store_metrics_5m); in_store_last_24h = 1 for the windows of the 24
-- hours up to it. The live figures take each store's own last 24 hours: anchored on the newest window of all
-- stores, a store whose feed stopped showed nothing (or its stale figures looked current); its age is
-- now(UTC) - store_latest_window_end (v_live_store_metrics; Power BI's Minutes Since Last Window: the stalest store
-- in the filter context), the end of that window as the dashboard's stalest_window_end (until 2026-12-06 Power BI
-- measured from its start: one window length, 5 minutes, more than the dashboard).
CREATE OR REPLACE VIEW {db}.v_live_sku_metrics AS
SELECT toInt64(toYYYYMMDD(m.window_start)) AS date_key, m.window_start AS window_start, m.window_end AS window_end,
       m.store_id AS store_id, m.product_id AS product_id,
       m.units_sold AS units_sold, m.units_returned AS units_returned, m.revenue AS revenue,
       m.transaction_count AS transaction_count, m.stock_level AS stock_level, m.reorder_point AS reorder_point,
       m.sales_velocity AS sales_velocity, m.hours_of_cover AS hours_of_cover, m.stockout_risk AS stockout_risk,
       m.anomaly_score AS anomaly_score,
       toUInt8(abs(m.anomaly_score) >= 3) AS is_anomaly,
       m.last_event_time AS last_event_time, m.updated_at AS updated_at,
       a.store_latest_window AS store_latest_window,
       toUInt8(m.window_start > a.store_latest_window - INTERVAL 24 HOUR) AS in_store_last_24h,
       m.order_velocity AS order_velocity
FROM (SELECT * FROM {db}.sales_metrics_5m FINAL) AS m
LEFT JOIN (SELECT store_id, max(window_start) AS store_latest_window FROM {db}.store_metrics_5m GROUP BY store_id) AS a
    ON m.store_id = a.store_id;
