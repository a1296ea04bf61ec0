-- 092_order_units_pooled_bound.sql (2026-12-07): the column comment of units_for_order as amended the same day: a
-- window with neither a baseline (fewer than 3 earlier selling windows of its SKU within 24 h) nor a reorder-point
-- bound (no reorder point known, or LEAD_TIME_DAYS 0) counts at most the store's pooled cap, mean + 3 x max(std,
-- sqrt(mean)) of the store's selling windows (all SKUs) of the previous 24 h (streaming.transforms.pooled_order_bound;
-- 090's comment said "no bound" there: a first-seen SKU's bulk line counted whole and its cancellation netted
-- nothing). Idempotent: COMMENT COLUMN only changes metadata; re-run by every migrate().
ALTER TABLE {db}.sales_metrics_5m COMMENT COLUMN units_for_order 'units: units_sold winsorized at mean + 3 x max(std, sqrt(mean)) of the SKU''s previous <= 12 selling windows within 24 h; with fewer than 3 at most reorder_point x STREAM_VELOCITY_HOURS / (24 x LEAD_TIME_DAYS) units, and with no reorder point known or LEAD_TIME_DAYS 0 at most mean + 3 x max(std, sqrt(mean)) of the store''s selling windows (all SKUs) of the previous 24 h (since 2026-12-07; no bound when the store has fewer than 3); what the restock order''s rate counts';
