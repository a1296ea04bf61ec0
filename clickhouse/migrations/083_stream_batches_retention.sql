-- 083_stream_batches_retention.sql: stream_batches keeps a micro-batch's row CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS (14)
-- after its commit ({stream_batches_retention_days} is replaced by core.clickhouse.migrate). Until 2026-12-06 it had
-- no TTL: 30 days of one micro-batch per 5 s per query (1,036,800 batches) made the health queries 21-364 ms p50.
-- What must outlive the TTL: the stream's start-up reads the latest row of a query (a lost checkpoint's resume
-- offsets, StreamingJob.lost_checkpoint_offsets; the restock alerts' closed-window bound,
-- StreamSinks._closed_window_alerts), and a query idle longer than the retention has no row left in stream_batches.
-- stream_batches_latest keeps that row per query without TTL: a materialized view copies every row with end
-- offsets, and ReplacingMergeTree(committed_at) ordered by query keeps the latest commit (read with FINAL).
-- Idempotent: CREATE ... IF NOT EXISTS; the back-fill adds only the queries the table lacks (a database whose
-- stream_batches predates this migration); the same TTL again is no mutation (as 050).
CREATE TABLE IF NOT EXISTS {db}.stream_batches_latest
(
    query               LowCardinality(String),
    query_id            String,
    batch_id            Int64,
    committed_at        DateTime64(3, 'UTC'),
    end_offsets         String,
    alerts_closed_until Nullable(DateTime64(3, 'UTC')),
    event_time_max      Nullable(DateTime64(3, 'UTC'))
)
ENGINE = ReplacingMergeTree(committed_at)
ORDER BY query;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.stream_batches_latest_mv TO {db}.stream_batches_latest AS
SELECT query, query_id, batch_id, committed_at, end_offsets, alerts_closed_until, event_time_max
FROM {db}.stream_batches WHERE end_offsets != '';

INSERT INTO {db}.stream_batches_latest
SELECT query, query_id, batch_id, committed_at, end_offsets, alerts_closed_until, event_time_max
FROM {db}.stream_batches
WHERE end_offsets != '' AND query NOT IN (SELECT query FROM {db}.stream_batches_latest)
ORDER BY committed_at DESC LIMIT 1 BY query;

ALTER TABLE {db}.stream_batches MODIFY TTL toDateTime(committed_at) + toIntervalDay({stream_batches_retention_days});
