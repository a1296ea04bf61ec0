-- 093_fact_inventory_units_received.sql (2026-12-07): the units a store x SKU received that day (the sum of its
-- inventory updates with reason RESTOCK, contracts/schemas/inventory_update.avsc: a receipt), so the nightly
-- reorder plan (ml.pipeline.optimise_stock) can net what arrived against the orders it recommended earlier (on
-- order). Days loaded before this column existed read 0 (no receipt known: their orders count as open until the
-- lead time has passed). Idempotent (IF NOT EXISTS).
ALTER TABLE {db}.fact_inventory
    ADD COLUMN IF NOT EXISTS units_received Int64 DEFAULT 0 COMMENT 'units received that day: sum of quantity_change of the RESTOCK inventory updates (0 on a carried-forward day)';
ALTER TABLE {db}.fact_inventory_staging
    ADD COLUMN IF NOT EXISTS units_received Int64 DEFAULT 0 COMMENT 'units received that day: sum of quantity_change of the RESTOCK inventory updates (0 on a carried-forward day)';
