-- 050_stream_windows_ttl.sql: the streaming window tables keep a window CLICKHOUSE_STREAM_RETENTION_DAYS after its
-- last write ({stream_retention_days} is replaced by core.clickhouse.migrate). Until this, sales_metrics_5m had no
-- TTL and grew by every window of every series for ever (one row per store x SKU x 5 minutes: 576,000 a day for
-- 2,000 series). The TTL is on updated_at, the write time, not on window_start: the UCI replay writes windows of
-- 2010-2011, which a TTL on event time would delete at once. The readers' look-backs: the stream's micro-batches
-- 24 h + 24 h before their windows (and a re-read of Kafka up to KAFKA_RETENTION_MS; core.settings refuses a
-- shorter retention), the dashboard 24 h back from the latest window, Power BI's live measures 1 day; the demo and
-- the chaos suite read their own run's windows. Idempotent: the same TTL again is no mutation (measured on chDB:
-- system.mutations unchanged, parts unchanged); a new value is applied to the existing parts once.
ALTER TABLE {db}.sales_metrics_5m MODIFY TTL toDateTime(updated_at) + toIntervalDay({stream_retention_days});
ALTER TABLE {db}.store_metrics_5m MODIFY TTL toDateTime(updated_at) + toIntervalDay({stream_retention_days});
