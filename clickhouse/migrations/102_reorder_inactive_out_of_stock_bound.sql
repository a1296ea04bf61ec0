-- 102_reorder_inactive_out_of_stock_bound.sql (2026-12-07): an inactive series (no sale for more than max(56 days,
-- 3 x its mean inter-demand interval up to its last sale): ml.forecast.inactive_series) whose closing stock is <= 0
-- may be silent because its shelf is empty (censored demand: no stock, no sale). From 101 until this migration it
-- was ordered nothing ('inactive') and so never sold again (a SKU selling 3/day, out of stock for 57 days: 0 units
-- night after night). Now it is restocked to the reorder point of its selling rate (units sold / days from its
-- first to its last sale; ml.optimize.recommend): order_bound 'inactive_out_of_stock' (24 units for that SKU at
-- L 7, sigma_d 0.5, 95 %). Metadata only: COMMENT COLUMN is idempotent and re-run by every migrate(); it replaces
-- 101's comment (ALTER ... COMMENT COLUMN keeps the last one applied).
ALTER TABLE {db}.reorder_recommendations
    COMMENT COLUMN order_bound 'rule that set reorder_qty: none | eoq | rop_gap | cover_cap | capacity | shelf_life | inactive (the series stopped selling, stock on hand: forecast 0, nothing ordered; since 101) | inactive_out_of_stock (flagged inactive but out of stock: restocked to the reorder point of its selling rate; since 102) (empty: written before 094)';
