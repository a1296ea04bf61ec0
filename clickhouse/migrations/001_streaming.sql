-- Streaming tables (owner: streaming/). Idempotent: every statement is CREATE ... IF NOT EXISTS or ADD COLUMN IF NOT EXISTS.
-- Writes are idempotent through ReplacingMergeTree: a micro-batch re-processed after a restart from the
-- checkpoint writes rows with the same sorting key, so reading with FINAL (or after a merge) shows each
-- window / quarantined offset / alert once. `version` = write wall time in ms (the latest write wins).

-- One row per 5-minute event-time window x store x SKU (update output mode: a window is rewritten while
-- it is open; events later than the watermark are dropped from these aggregates but kept in the lake).
CREATE TABLE IF NOT EXISTS {db}.sales_metrics_5m
(
    window_start           DateTime64(3, 'UTC'),
    window_end             DateTime64(3, 'UTC'),
    store_id               LowCardinality(String),
    product_id             String,
    units_sold             Int64   COMMENT 'sum of quantity over sales lines with quantity > 0',
    units_returned         Int64   COMMENT 'sum of -quantity over return lines (quantity < 0)',
    revenue                Float64 COMMENT 'sum(quantity * unit_price) over sales and returns (exact decimal sum)',
    transaction_count      Int64   COMMENT 'POS lines (sales + returns) in the window',
    inventory_update_count Int64,
    window_stock           Nullable(Int64) COMMENT 'latest new_quantity of an inventory update inside the window',
    window_stock_time      Nullable(DateTime64(3, 'UTC')),
    stock_level            Nullable(Int64) COMMENT 'last known stock: window_stock or carried forward from earlier windows',
    reorder_point          Nullable(Int64),
    sales_velocity         Float64 COMMENT 'units_sold per hour',
    hours_of_cover         Nullable(Float64) COMMENT 'stock_level / sales_velocity; NULL when velocity = 0 or stock unknown',
    stockout_risk          LowCardinality(String) COMMENT 'HIGH / MEDIUM / LOW, UNKNOWN without a known stock',
    anomaly_score          Float64 COMMENT 'z-score of units_sold vs the previous <= 12 windows (24 h), 0 when < 3',
    last_event_time        DateTime64(3, 'UTC'),
    batch_id               Int64,
    version                UInt64,
    updated_at             DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (store_id, product_id, window_start);

-- One row per 5-minute window x store, recomputed from sales_metrics_5m FINAL for the windows a batch touched.
CREATE TABLE IF NOT EXISTS {db}.store_metrics_5m
(
    window_start      DateTime64(3, 'UTC'),
    window_end        DateTime64(3, 'UTC'),
    store_id          LowCardinality(String),
    units_sold        Int64,
    units_returned    Int64,
    revenue           Float64,
    transaction_count Int64,
    sku_count         Int64,
    skus_high_risk    Int64,
    sales_velocity    Float64,
    anomaly_score     Float64,
    batch_id          Int64,
    version           UInt64,
    updated_at        DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (store_id, window_start);

-- Dead-letter store of the streaming job: one row per invalid Kafka record (keyed by its offset).
CREATE TABLE IF NOT EXISTS {db}.quarantine_events
(
    event_type      LowCardinality(String),
    topic           LowCardinality(String),
    partition       Int32,
    offset          Int64,
    kafka_timestamp Nullable(DateTime64(3, 'UTC')),
    reason          String,
    raw_payload     String,
    batch_id        Int64,
    ingested_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (topic, partition, offset);

-- One alert per store x SKU low-stock episode; alert_id = store|sku|episode start (epoch ms).
CREATE TABLE IF NOT EXISTS {db}.restock_alerts
(
    alert_id             String,
    store_id             LowCardinality(String),
    product_id           String,
    current_stock        Int64,
    reorder_point        Int64,
    recommended_quantity Int64,
    sales_velocity       Float64,
    hours_of_cover       Nullable(Float64),
    priority             LowCardinality(String) COMMENT 'CRITICAL (out of stock) / HIGH / MEDIUM / LOW by hours of cover',
    window_end           DateTime64(3, 'UTC'),
    alert_time           DateTime64(3, 'UTC'),
    batch_id             Int64,
    ingested_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY alert_id;

-- Latest known stock per store x SKU and the restock-episode state of the alerting.
CREATE TABLE IF NOT EXISTS {db}.inventory_levels
(
    store_id          LowCardinality(String),
    product_id        String,
    stock_level       Nullable(Int64),
    stock_time        Nullable(DateTime64(3, 'UTC')),
    reorder_point     Nullable(Int64),
    in_episode        UInt8,
    episode_start     Nullable(DateTime64(3, 'UTC')),
    last_window_start Nullable(DateTime64(3, 'UTC')),
    batch_id          Int64,
    version           UInt64,
    updated_at        DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (store_id, product_id);

-- Micro-batch log of the streaming queries (monitoring, freshness).
CREATE TABLE IF NOT EXISTS {db}.stream_batches
(
    query        LowCardinality(String),
    batch_id     Int64,
    input_rows   Int64,
    output_rows  Int64,
    started_at   DateTime64(3, 'UTC'),
    committed_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(committed_at)
ORDER BY (query, batch_id);

-- Per micro-batch: event ids dropped as duplicates (seen again within STREAM_WATERMARK; from the query progress)
-- and, for the windows query, the event-time bound up to which windows are closed and evaluated for restock
-- alerts (alerts do not depend on micro-batch boundaries). Idempotent: ADD COLUMN IF NOT EXISTS.
ALTER TABLE {db}.stream_batches ADD COLUMN IF NOT EXISTS duplicates_dropped Int64 DEFAULT 0;
ALTER TABLE {db}.stream_batches ADD COLUMN IF NOT EXISTS alerts_closed_until Nullable(DateTime64(3, 'UTC'));
-- The windows query's latest event time counted after the batch (max last_event_time of sales_metrics_5m): the
-- next batch closes windows up to it less STREAM_WATERMARK. Spark judges late events by the previous batch's
-- watermark, so a bound from the batch's own events would close windows Spark still changes.
ALTER TABLE {db}.stream_batches ADD COLUMN IF NOT EXISTS event_time_max Nullable(DateTime64(3, 'UTC'));
-- Kafka records a micro-batch's offset range covered but its source never read: deleted by the topic's retention
-- before the query reached them (failOnDataLoss=false skips them with a warning only). Lost to the platform.
ALTER TABLE {db}.stream_batches ADD COLUMN IF NOT EXISTS records_expired Int64 DEFAULT 0;
