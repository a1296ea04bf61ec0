-- 071_inventory_levels_prior.sql: inventory_levels keeps, beside the latest count, the latest count before the
-- look-back of the micro-batch that last wrote the row (prior_*). The stream carries a long-silent series' stock
-- (windows gone with the window tables' TTL) from inventory_levels' counts before a micro-batch's look-back; a
-- micro-batch re-run from the checkpoint after a crash finds its own first run's newer count there, which replaced
-- the older one: until 2026-12-06 the re-run wrote such a series' windows before that count with stock NULL, risk
-- UNKNOWN, velocity 1.0 instead of 5, LOW, 1/24 units/h (tests/test_streaming_sinks.py). Idempotent (IF NOT EXISTS).
ALTER TABLE {db}.inventory_levels
    ADD COLUMN IF NOT EXISTS prior_stock_level Nullable(Int64) COMMENT 'units: the latest count before the look-back (window_start min - 24 h) of the micro-batch that last wrote the row, kept while stock_level is newer; NULL when none',
    ADD COLUMN IF NOT EXISTS prior_stock_time Nullable(DateTime64(3, 'UTC')) COMMENT 'event time of prior_stock_level',
    ADD COLUMN IF NOT EXISTS prior_reorder_point Nullable(Int64) COMMENT 'units: the reorder point stored with prior_stock_level';
