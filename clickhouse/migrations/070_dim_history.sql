-- 070_dim_history.sql: version history (slowly changing dimension, type 2) of the product master and the stores
-- (owner: ETL; loaded by etl.star_schema.load from the lake's reference history, etl.star_schema.reference_history).
--
-- dim_product / dim_store (010) hold each key's current version; these tables hold every version with the UTC dates
-- it was valid on, inclusive: a change of raw-data/reference/<name> is valid from the UTC date the ETL first saw it,
-- a key's first version from 1970-01-01, the open version until 2149-06-06 (Date's last day). fact_sales carries the
-- cost of the version valid on its day; for other attributes as of a fact's day join on the key and
--   toDate(f.event_time) BETWEEN h.valid_from AND h.valid_to
-- Read with FINAL: a version whose valid_to closes is inserted again with a higher revision. The load keeps each
-- table an exact mirror of the lake history (etl.star_schema.sync_history): it inserts only the versions that are
-- new or changed (valid_to or fingerprint) and deletes those no longer in the lake (a deleted history file).

CREATE TABLE IF NOT EXISTS {db}.dim_product_history (
    product_key       UInt64,
    sku               String,
    product_name      String,
    category          LowCardinality(String),
    sub_category      LowCardinality(String),
    brand             LowCardinality(String),
    supplier          LowCardinality(String),
    unit_cost         Nullable(Float64),
    unit_price        Nullable(Float64),
    shelf_life_days   Nullable(UInt32),
    reorder_point     Nullable(UInt32),
    storage_capacity  Nullable(UInt32),
    valid_from        Date,
    valid_to          Date,
    fingerprint       String,                     -- the lake history row's _fp (its reference values as JSON)
    revision          UInt64                      -- nanoseconds since the epoch of the load that wrote the row
) ENGINE = ReplacingMergeTree(revision)
ORDER BY (product_key, valid_from);

CREATE TABLE IF NOT EXISTS {db}.dim_store_history (
    store_key         UInt64,
    store_id          String,
    store_name        String,
    city              String,
    country           String,
    country_code      LowCardinality(String),
    region            LowCardinality(String),
    valid_from        Date,
    valid_to          Date,
    fingerprint       String,
    revision          UInt64
) ENGINE = ReplacingMergeTree(revision)
ORDER BY (store_key, valid_from);

-- tables created before the fingerprint column (2026-12-06): their rows get '' and are rewritten once by the next load
ALTER TABLE {db}.dim_product_history ADD COLUMN IF NOT EXISTS fingerprint String AFTER valid_to;
ALTER TABLE {db}.dim_store_history ADD COLUMN IF NOT EXISTS fingerprint String AFTER valid_to;
