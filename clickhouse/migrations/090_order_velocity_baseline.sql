-- 090_order_velocity_baseline.sql (2026-12-07): the column comments of the rule as amended the same day after a
-- review of 089: (1) a window without a baseline (fewer than 3 earlier selling windows within 24 h: a SKU's first
-- lines, e.g. the UCI log's 80,995-unit line, its SKU's first in the replayed data) counts for the order at most
-- reorder_point x STREAM_VELOCITY_HOURS / lead-time hours, a day of the planned rate (089: no cap, the line read as 80,995 units/h over the 1-hour minimum
-- span); (2) returns net only the units the cap set aside (089: every return netted, so a return of stock sold
-- before the span read as no demand for 24 h, for risk and order alike). streaming.transforms.order_units,
-- catalogue_order_bound, enrich_windows. Idempotent: COMMENT COLUMN only changes metadata; re-run by every migrate().
ALTER TABLE {db}.sales_metrics_5m COMMENT COLUMN units_for_order 'units: units_sold winsorized at mean + 3 x max(std, sqrt(mean)) of the SKU''s previous <= 12 selling windows within 24 h; with fewer than 3 at most reorder_point x STREAM_VELOCITY_HOURS / (24 x LEAD_TIME_DAYS) units, no bound when no reorder point is known or LEAD_TIME_DAYS is 0 (since 2026-12-07); what the restock order''s rate counts';
ALTER TABLE {db}.sales_metrics_5m COMMENT COLUMN order_velocity 'units/hour: trailing rate of units_for_order over the sales_velocity span; the rate of the restock alert''s recommended_quantity';
ALTER TABLE {db}.sales_metrics_5m COMMENT COLUMN sales_velocity 'units/hour, trailing rate: units sold less the units returned, these netting at most the units the order cap set aside (sold - units_for_order) in the span, i.e. never below order_velocity (since 2026-12-07), by the store x SKU in its windows ending in the STREAM_VELOCITY_HOURS (24) up to window_end / min(STREAM_VELOCITY_HOURS, hours since its first known window, at least 1)';
ALTER TABLE {db}.restock_alerts COMMENT COLUMN order_velocity 'units/hour the recommended_quantity used (the trailing rate of units_for_order; sales_velocity is the rate net of returns that net at most the excess the cap set aside); NULL for alerts before migration 089';
