-- 035_stream_time_indexes.sql: granule-level time indexes for the streaming sink's per-micro-batch reads.
-- sales_metrics_5m is ordered by (store_id, product_id, window_start), so a query bounded only in event time
-- cannot use the start of the sorting key; the sink's queries (streaming/sinks.py) bound window_start, which
-- the partition key (month) and each part's min-max already prune, and these minmax skip indexes let a part's
-- granules outside the span be skipped as well (window_end: the closed-window and stock-anchor queries).
-- Idempotent: ADD INDEX IF NOT EXISTS. Parts written or merged after this runs carry the indexes; older parts
-- are not rewritten here (MATERIALIZE INDEX would be a mutation of the whole table on every migrate()).
ALTER TABLE {db}.sales_metrics_5m ADD INDEX IF NOT EXISTS idx_window_end window_end TYPE minmax GRANULARITY 1;
ALTER TABLE {db}.sales_metrics_5m ADD INDEX IF NOT EXISTS idx_window_start window_start TYPE minmax GRANULARITY 1;
