-- 106_reorder_inactive_restock_sent_bound.sql (2026-12-07): an inactive series out of stock is restocked to the
-- reorder point of its selling rate (102: 'inactive_out_of_stock'), but only once per silence. Until this migration
-- a delisted SKU that stayed at stock 0 was topped up again every LEAD_TIME_DAYS + 1 nights (the open-order window
-- sums the orders of [as_of - L, as_of) only; ~46 orders a year at L 7, every night with
-- ORDER_COUNT_OPEN_RECOMMENDATIONS false). Now, when reorder_recommendations already holds an
-- 'inactive_out_of_stock' row with reorder_qty > 0 for the series dated after its last sale, nothing is ordered:
-- order_bound 'inactive_restock_sent' (ml.pipeline.optimise_stock, load_inactive_restocks). Metadata only: COMMENT
-- COLUMN is idempotent and re-run by every migrate(); it replaces 102's comment (the last one applied is kept).
ALTER TABLE {db}.reorder_recommendations
    COMMENT COLUMN order_bound 'rule that set reorder_qty: none | eoq | rop_gap | cover_cap | capacity | shelf_life | inactive (the series stopped selling, stock on hand: forecast 0, nothing ordered; since 101) | inactive_out_of_stock (flagged inactive but out of stock: restocked to the reorder point of its selling rate; since 102) | inactive_restock_sent (flagged inactive, out of stock, and already restocked since its last sale: nothing ordered again; since 106) (empty: written before 094)';
