-- 094_reorder_on_order_bound.sql (2026-12-07): the nightly reorder plan counts what is on order and says which rule
-- set each quantity (ml.pipeline.optimise_stock, ml.optimize.order_terms). Until 2026-12-07 the batch passed no
-- stock on order (IP = stock), so an order recommended one night and not yet received was recommended again every
-- night until it arrived, and nothing told a manager whether a quantity was the EOQ, the gap to the reorder point
-- or a bound. on_order = units of the earlier nights' recommendations within LEAD_TIME_DAYS (the platform's
-- recommendations are taken as placed orders; ORDER_COUNT_OPEN_RECOMMENDATIONS) less the RESTOCK receipts recorded
-- after them (fact_inventory.units_received, 093), first in first out. Rows written before this file read
-- on_order 0 and order_bound '' (unknown). v_reorder_latest is defined here only (030 runs before the columns
-- exist on a fresh database). Idempotent (IF NOT EXISTS, CREATE OR REPLACE VIEW).
ALTER TABLE {db}.reorder_recommendations
    ADD COLUMN IF NOT EXISTS on_order Float64 DEFAULT 0 COMMENT 'units on order at as_of_date: earlier recommendations within the lead time less the RESTOCK receipts since (FIFO); inventory position = stock + on_order',
    ADD COLUMN IF NOT EXISTS order_bound LowCardinality(String) DEFAULT '' COMMENT 'rule that set reorder_qty: none | eoq | rop_gap | cover_cap | capacity | shelf_life (empty: written before 094)';

-- stock optimisation of the latest run: safety stock, reorder point, quantity, days until stock-out, what is on
-- order and the rule that set the quantity
CREATE OR REPLACE VIEW {db}.v_reorder_latest AS
SELECT toInt64(toYYYYMMDD(as_of_date)) AS date_key, as_of_date, store_id, product_id, stock, mean_daily_demand,
       sigma_daily, lead_time_days, service_level, safety_stock, reorder_point, eoq, reorder_qty, reorder_needed,
       days_until_stockout, stockout_risk, reorder_qty * unit_cost AS reorder_value,
       toInt64(r.model_version) AS model_version, on_order, order_bound
FROM {db}.reorder_recommendations AS r FINAL
WHERE as_of_date = (SELECT max(as_of_date) FROM {db}.reorder_recommendations);
