-- Star schema of the nightly ETL (owner: ETL, loaded by ml/etl.py via dags/daily_etl.py).
--
-- Keys: product_key / store_key are deterministic surrogate keys, UInt64 = first 8 bytes (big-endian)
-- of BLAKE2b(natural key) (ml.etl.surrogate_key), so every run computes the same key without a lookup.
-- date_key = YYYYMMDD (UTC event date).
-- Money: Decimal(18,4); a line amount is round(quantity * price, 4), so sums reconcile exactly.
-- Facts are PARTITION BY date_key: a run replaces the date's partition atomically
-- (ALTER TABLE ... REPLACE PARTITION ... FROM a staging table of the load's own, created AS the fact table and
-- dropped after: etl.star_schema.own_staging; the <fact>_staging tables below are no longer written since
-- 2026-12-07), so re-running a date is idempotent.
-- Dimensions are ReplacingMergeTree (upserts; read them with FINAL).

CREATE TABLE IF NOT EXISTS {db}.dim_date (
    date_key          UInt32,
    date              Date,
    day_of_week       UInt8,                      -- ISO: 1 = Monday .. 7 = Sunday
    day_name          LowCardinality(String),
    day_of_month      UInt8,
    week_of_year      UInt8,                      -- ISO week
    month             UInt8,
    month_name        LowCardinality(String),
    quarter           UInt8,
    year              UInt16,
    is_weekend        UInt8,                      -- Saturday or Sunday
    is_holiday        UInt8,                      -- public holiday in STORE_COUNTRY_DEFAULT (holiday_country)
    holiday_name      String,
    holiday_country   LowCardinality(String),
    holiday_countries Array(LowCardinality(String)),  -- every store country (ISO-2) where the date is a public holiday
    holiday_names     Map(LowCardinality(String), String),  -- country -> holiday name for those countries
    updated_at        DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY date_key;

CREATE TABLE IF NOT EXISTS {db}.dim_product (
    product_key       UInt64,
    sku               String,
    product_name      String,
    category          LowCardinality(String),
    sub_category      LowCardinality(String),
    brand             LowCardinality(String),
    supplier          LowCardinality(String),
    unit_cost         Nullable(Float64),
    unit_price        Nullable(Float64),          -- list price of the reference data (the sale price is on fact_sales)
    shelf_life_days   Nullable(UInt32),
    reorder_point     Nullable(UInt32),
    storage_capacity  Nullable(UInt32),
    is_known          UInt8,                      -- 1: from reference data; 0: placeholder for a SKU seen only in events
    updated_at        DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(is_known)
ORDER BY product_key;

CREATE TABLE IF NOT EXISTS {db}.dim_store (
    store_key         UInt64,
    store_id          String,
    store_name        String,
    city              String,
    country           String,
    country_code      LowCardinality(String),
    region            LowCardinality(String),
    is_known          UInt8,
    updated_at        DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(is_known)
ORDER BY store_key;

CREATE TABLE IF NOT EXISTS {db}.fact_sales (
    sale_id           String,                     -- transaction_id of the POS line (event id)
    date_key          UInt32,
    event_time        DateTime64(3, 'UTC'),
    product_key       UInt64,
    store_key         UInt64,
    invoice_id        Nullable(String),
    customer_id       Nullable(String),
    payment_method    LowCardinality(String),
    quantity          Int32,                      -- signed units; < 0 for a return / cancellation
    unit_price        Float64,                    -- price at time of sale (from the event)
    revenue           Decimal(18, 4),             -- round(quantity * unit_price, 4); negative for returns
    cost              Nullable(Decimal(18, 4)),   -- round(quantity * dim_product.unit_cost, 4); NULL when unknown
    profit            Nullable(Decimal(18, 4)),   -- revenue - cost
    is_return         UInt8,
    loaded_at         DateTime DEFAULT now()
) ENGINE = MergeTree
PARTITION BY date_key
ORDER BY (store_key, product_key, event_time, sale_id);

CREATE TABLE IF NOT EXISTS {db}.fact_sales_staging AS {db}.fact_sales;

CREATE TABLE IF NOT EXISTS {db}.fact_inventory (
    date_key            UInt32,
    store_key           UInt64,
    product_key         UInt64,
    closing_stock       Int64,                    -- last inventory_update.new_quantity of the day (carried forward when none)
    is_carried_forward  UInt8,
    last_update_time    Nullable(DateTime64(3, 'UTC')),
    units_sold          Int64,                    -- units of sale lines (quantity > 0) that day
    units_returned      Int64,
    reorder_point       Nullable(Float64),
    safety_stock        Nullable(Float64),
    safety_stock_method LowCardinality(String),
    below_reorder_point UInt8,
    loaded_at           DateTime DEFAULT now()
) ENGINE = MergeTree
PARTITION BY date_key
ORDER BY (store_key, product_key);

CREATE TABLE IF NOT EXISTS {db}.fact_inventory_staging AS {db}.fact_inventory;

CREATE TABLE IF NOT EXISTS {db}.etl_runs (
    run_id              String,
    dag_run_id          String,
    date_key            UInt32,
    started_at          DateTime64(3, 'UTC'),
    finished_at         DateTime64(3, 'UTC'),
    status              LowCardinality(String),   -- 'success' | 'failed' | 'begun' (a load's first row, since 2026-12-07;
                                                  -- a day's latest row = greatest (started_at, finished_at))
    stage               LowCardinality(String),   -- stage that finished, failed or began
    raw_sales_rows      UInt64,
    duplicate_sales_rows UInt64,
    fact_sales_rows     UInt64,
    fact_inventory_rows UInt64,
    units_net           Int64,
    revenue             Decimal(18, 4),
    message             String
) ENGINE = MergeTree
ORDER BY (date_key, started_at);
