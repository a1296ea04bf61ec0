-- 080_stream_health_views.sql: stream health for operators and store managers ("are the figures complete and
-- current?"), read by the dashboard's Stream health page (dashboard/queries.py: health_*) and the Power BI model
-- (powerbi/dataset.md). Until 2026-12-06 stream_batches' late_rows_dropped and end_offsets (migrations 072, 073)
-- were in no BI view, and quarantined records only per day (v_quarantine_summary). rows_set_aside (076): rows of a
-- micro-batch ClickHouse refused for their values, set aside in quarantine_events (topic refused:<table>).
--
-- Conventions as 030_bi_views.sql: counts Int64, date_key YYYYMMDD, views only (bi_reader reads them).
-- stream_batches is a ReplacingMergeTree(committed_at) ordered by (query, batch_id, query_id) (081; the run of the checkpoint): the sink inserts a batch's
-- row right after its writes and inserts it again (same committed_at) when the query progress adds counts
-- (duplicates, expired, late) or end offsets; a batch re-run after a restart inserts it again with a later
-- committed_at. Every view reads it with FINAL, so each micro-batch counts once, with its latest row.

-- per streaming query and hour of commit: micro-batches, rows read and written, and what did not reach the windows
CREATE OR REPLACE VIEW {db}.v_stream_health_hourly AS
SELECT toInt64(toYYYYMMDD(b.committed_at)) AS date_key, toStartOfHour(b.committed_at) AS hour_start, b.query AS query,
       toInt64(count()) AS micro_batches,
       toInt64(sum(b.input_rows)) AS input_rows, toInt64(sum(b.output_rows)) AS output_rows,
       toInt64(sum(b.duplicates_dropped)) AS duplicates_dropped,   -- event ids seen again within STREAM_WATERMARK
       toInt64(sum(b.records_expired)) AS records_expired,         -- Kafka records deleted (or skipped) before read
       toInt64(sum(b.late_rows_dropped)) AS late_rows_dropped,     -- rows behind the watermark, not in the windows
       toInt64(sum(b.rows_set_aside)) AS rows_set_aside,           -- rows ClickHouse refused, quarantined (076)
       min(b.committed_at) AS first_committed_at, max(b.committed_at) AS last_committed_at
FROM {db}.stream_batches AS b FINAL
GROUP BY date_key, hour_start, query;

-- one row per streaming query: totals, the last committed micro-batch (freshness) and the latest event time counted
-- v_stream_health_latest: defined in 086_stream_health_latest_outlives_retention.sql only (since 2026-12-07: every
-- migrate() re-runs every file, so until the later file ran again a query read this file's older definition)

-- offsets reached per streaming query and Kafka topic: the sum over the topic's partitions of the end offsets of
-- the query's latest micro-batch (by commit time) that recorded them; compare with the topic's end offsets
-- (records produced) to see what the stream has not read yet
-- v_stream_offsets_latest: defined in 086_stream_health_latest_outlives_retention.sql only (since 2026-12-07: every
-- migrate() re-runs every file, so until the later file ran again a query read this file's older definition)

-- quarantined (stream) and dead-lettered (producers) records per hour of arrival, event type, topic and reason
-- v_stream_quarantine_hourly: defined in 084_quarantine_refused_rows_apart.sql only (since 2026-12-07: every
-- migrate() re-runs every file, so until the later file ran again a query read this file's older definition)
