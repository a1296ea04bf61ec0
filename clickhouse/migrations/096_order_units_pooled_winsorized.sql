-- 096_order_units_pooled_winsorized.sql (2026-12-07): the column comment of units_for_order as amended after the
-- review of 092's pooled cap: the pool holds the store's windows' units_for_order (winsorized), not their units
-- sold (streaming.transforms.pooled_order_bound; pooling raw units, one earlier 80,995-unit line of another SKU
-- lifted a store's cap from 6.24 to 22,668.9 units, so a first-seen SKU's 5,000-unit line counted whole), and the
-- bound is computed once, from the windows stored when the window is first enriched. Replaces 092's comment (092
-- still runs first). Idempotent: COMMENT COLUMN only changes metadata; re-run by every migrate().
ALTER TABLE {db}.sales_metrics_5m COMMENT COLUMN units_for_order 'units: units_sold winsorized at mean + 3 x max(std, sqrt(mean)) of the SKU''s previous <= 12 selling windows within 24 h; with fewer than 3 at most reorder_point x STREAM_VELOCITY_HOURS / (24 x LEAD_TIME_DAYS) units, and with no reorder point known or LEAD_TIME_DAYS 0 at most mean + 3 x max(std, sqrt(mean)) of the units_for_order of the store''s selling windows (all SKUs) of the previous 24 h stored when the window is first enriched, plus its micro-batch''s (since 2026-12-07; no bound when the store has fewer than 3); what the restock order''s rate counts';
