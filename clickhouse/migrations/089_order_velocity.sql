-- 089_order_velocity.sql (2026-12-07): the rate a restock alert's quantity is computed from, kept apart from the
-- trailing sales rate so a bulk line (a window many times the store x SKU's usual demand, e.g. the UCI log's
-- 80,995-unit line of 2011-12-09, cancelled 12 minutes later) does not multiply the order by thousands of units,
-- while stock, velocity, cover and risk keep the real sale (streaming.transforms.order_units / enrich_windows).
-- Rows written before this migration read their own units sold and trailing rate (the defaults), as before.
-- Amended the same day (090_order_velocity_baseline.sql, whose column comments replace these): a window without
-- a baseline is bounded by what the reorder point implies (here: no cap) and returns net only the capped excess
-- (here: every return, floored at 0; order_velocity = min of the two rates).
ALTER TABLE {db}.sales_metrics_5m
    ADD COLUMN IF NOT EXISTS units_for_order Float64 DEFAULT toFloat64(units_sold) COMMENT 'units: units_sold winsorized at mean + 3 x max(std, sqrt(mean)) of the SKU''s previous <= 12 selling windows within 24 h (none when fewer than 3); what the restock order''s rate counts',
    ADD COLUMN IF NOT EXISTS order_velocity Float64 DEFAULT sales_velocity COMMENT 'units/hour: min(sales_velocity, trailing rate of units_for_order); the rate of the restock alert''s recommended_quantity';
ALTER TABLE {db}.sales_metrics_5m COMMENT COLUMN sales_velocity 'units/hour, trailing rate: units sold less units returned (since 2026-12-07, floored at 0) by the store x SKU in its windows ending in the STREAM_VELOCITY_HOURS (24) up to window_end / min(STREAM_VELOCITY_HOURS, hours since its first known window, at least 1)';
ALTER TABLE {db}.restock_alerts
    ADD COLUMN IF NOT EXISTS order_velocity Nullable(Float64) COMMENT 'units/hour the recommended_quantity used (sales_velocity is the net trailing rate); NULL for alerts before migration 089';
