-- 101_reorder_inactive_bound.sql (2026-12-07): a series that stopped selling (no sale for more than max(56 days, 3 x
-- its mean inter-demand interval) before the forecast origin: ml.forecast.inactive_series) is forecast 0 by every
-- model, in the backtest and the predictions alike, and the nightly plan orders nothing for it: order_bound
-- 'inactive' (ml.optimize.recommend). Until 2026-12-07 a statsforecast champion's Croston forecast the last demand
-- rate of such a series (2.00/day 110 days after its last sale: an EOQ order of 242 units at stock 0; on the M5
-- benchmark 9,022 units forecast over 28 days for series with no sale in 56+ days, 152 sold). Metadata only:
-- COMMENT COLUMN is idempotent and re-run by every migrate().
ALTER TABLE {db}.reorder_recommendations
    COMMENT COLUMN order_bound 'rule that set reorder_qty: none | eoq | rop_gap | cover_cap | capacity | shelf_life | inactive (the series stopped selling: forecast 0, nothing ordered; since 101) (empty: written before 094)';
