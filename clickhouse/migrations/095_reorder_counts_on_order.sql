-- 095_reorder_counts_on_order.sql (2026-12-07): which reorder_recommendations rows the nightly plan takes as placed
-- orders (ml.pipeline.load_open_orders). Rows written with ORDER_COUNT_OPEN_RECOMMENDATIONS false (orders placed
-- outside the platform) or before this file repeat the same shortage every night until stock arrives: counted as
-- orders, three nights of one shortage read as three orders (found by review the day 094 came). Only rows written
-- with the setting true (1) count. Idempotent (IF NOT EXISTS).
ALTER TABLE {db}.reorder_recommendations
    ADD COLUMN IF NOT EXISTS counts_on_order UInt8 DEFAULT 0 COMMENT '1: written with ORDER_COUNT_OPEN_RECOMMENDATIONS true, so later nights take this row''s reorder_qty as a placed order; 0: setting off or written before 095';
