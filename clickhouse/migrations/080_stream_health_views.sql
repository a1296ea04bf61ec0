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
CREATE OR REPLACE VIEW {db}.v_stream_health_latest AS
SELECT b.query AS query, toInt64(count()) AS micro_batches,
       argMax(b.batch_id, b.committed_at) AS last_batch_id, max(b.committed_at) AS last_committed_at,
       dateDiff('second', max(b.committed_at), now64(3, 'UTC')) / 60 AS minutes_since_last_batch,
       max(b.event_time_max) AS latest_event_time,                 -- windows query only; NULL for raw
       toInt64(sum(b.input_rows)) AS input_rows, toInt64(sum(b.output_rows)) AS output_rows,
       toInt64(sum(b.duplicates_dropped)) AS duplicates_dropped,
       toInt64(sum(b.records_expired)) AS records_expired,
       toInt64(sum(b.late_rows_dropped)) AS late_rows_dropped,
       toInt64(sum(b.rows_set_aside)) AS rows_set_aside,
       toInt64(countIf(b.records_expired > 0)) AS batches_with_expired,
       toInt64(countIf(b.late_rows_dropped > 0)) AS batches_with_late_rows
FROM {db}.stream_batches AS b FINAL
GROUP BY query;

-- offsets reached per streaming query and Kafka topic: the sum over the topic's partitions of the end offsets of
-- the query's latest micro-batch (by commit time) that recorded them; compare with the topic's end offsets
-- (records produced) to see what the stream has not read yet
CREATE OR REPLACE VIEW {db}.v_stream_offsets_latest AS
SELECT o.query AS query, tupleElement(t, 1) AS topic, toInt64(length(tupleElement(t, 2))) AS partitions,
       toInt64(arraySum(p -> tupleElement(p, 2), tupleElement(t, 2))) AS offsets_reached,
       o.last_batch AS batch_id, o.last_commit AS committed_at
FROM (SELECT query, argMax(end_offsets, committed_at) AS last_offsets, argMax(batch_id, committed_at) AS last_batch,
             max(committed_at) AS last_commit
      FROM {db}.stream_batches FINAL WHERE end_offsets != '' GROUP BY query) AS o
ARRAY JOIN arrayMap(kv -> (kv.1, JSONExtractKeysAndValues(kv.2, 'Int64')),
                    JSONExtractKeysAndValuesRaw(o.last_offsets)) AS t;

-- quarantined (stream) and dead-lettered (producers) records per hour of arrival, event type, topic and reason
CREATE OR REPLACE VIEW {db}.v_stream_quarantine_hourly AS
SELECT toInt64(toYYYYMMDD(q.ingested_at)) AS date_key, toStartOfHour(q.ingested_at) AS hour_start,
       q.event_type AS event_type, q.topic AS topic, q.reason AS reason, toInt64(count()) AS events,
       max(q.ingested_at) AS last_seen
FROM {db}.quarantine_events AS q FINAL
GROUP BY date_key, hour_start, event_type, topic, reason;
