-- 097_fact_inventory_units_received_bi_view.sql (2026-12-07): v_fact_inventory shows units_received, the units a
-- store x SKU received that day (the sum of its RESTOCK inventory updates; fact_inventory column of migration 093,
-- which the nightly reorder plan nets against its open orders), so a report can put receipts beside closing stock
-- and units sold. The view is defined here only (until 2026-12-07 030 defined it without the column; 030 cannot
-- name it: it runs before 093 adds it on a fresh database, and every migrate() re-runs all files). Days loaded
-- before 093 read 0. Daily closing stock per store x SKU with days of cover (closing stock / mean daily units sold
-- over the trailing 28 snapshots) and a stock-out flag. Idempotent: CREATE OR REPLACE VIEW.
CREATE OR REPLACE VIEW {db}.v_fact_inventory AS
SELECT toInt64(i.date_key) AS date_key, reinterpretAsInt64(i.store_key) AS store_key,
       reinterpretAsInt64(i.product_key) AS product_key, closing_stock, is_carried_forward, units_sold, units_returned,
       reorder_point, safety_stock, below_reorder_point,
       toUInt8(closing_stock <= 0)                                                   AS is_stockout,
       avg(i.units_sold) OVER (PARTITION BY i.store_key, i.product_key ORDER BY i.date_key
                               ROWS BETWEEN 27 PRECEDING AND CURRENT ROW)             AS avg_daily_units_28d,
       if(avg_daily_units_28d > 0, closing_stock / avg_daily_units_28d, NULL)         AS days_of_cover,
       i.units_received AS units_received
FROM {db}.fact_inventory AS i;
