-- 086_stream_health_latest_outlives_retention.sql: v_stream_health_latest (080) and v_stream_offsets_latest (085)
-- also read stream_batches_latest (083: each query's latest micro-batch with end offsets, no TTL), so a query whose
-- micro-batches all fell out of CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS (a stream stopped for longer) still shows
-- its last batch, its commit time and how long ago that was, instead of vanishing: until this migration a stream
-- stopped for 15 days left both views empty and the dashboard said "no micro-batch committed yet" (one query
-- stopped: it left the table and the page said "complete and current").
-- The counts (micro_batches, rows, drops) stay those of the batches the retention keeps; the latest row of
-- stream_batches_latest adds no count, only its batch id, commit time and event time (argMax / max over both).
-- Idempotent: CREATE OR REPLACE.
CREATE OR REPLACE VIEW {db}.v_stream_health_latest AS
SELECT b.query AS query, toInt64(countIf(b.kept = 1)) AS micro_batches,
       argMax(b.batch_id, b.committed_at) AS last_batch_id, max(b.committed_at) AS last_committed_at,
       dateDiff('second', max(b.committed_at), now64(3, 'UTC')) / 60 AS minutes_since_last_batch,
       max(b.event_time_max) AS latest_event_time,                 -- windows query only; NULL for raw
       toInt64(sum(b.input_rows)) AS input_rows, toInt64(sum(b.output_rows)) AS output_rows,
       toInt64(sum(b.duplicates_dropped)) AS duplicates_dropped,
       toInt64(sum(b.records_expired)) AS records_expired,
       toInt64(sum(b.late_rows_dropped)) AS late_rows_dropped,
       toInt64(sum(b.rows_set_aside)) AS rows_set_aside,
       toInt64(countIf(b.kept = 1 AND b.records_expired > 0)) AS batches_with_expired,
       toInt64(countIf(b.kept = 1 AND b.late_rows_dropped > 0)) AS batches_with_late_rows
FROM (SELECT query, batch_id, committed_at, event_time_max, input_rows, output_rows, duplicates_dropped,
             records_expired, late_rows_dropped, rows_set_aside, toUInt8(1) AS kept
      FROM {db}.stream_batches FINAL
      UNION ALL
      SELECT query, batch_id, committed_at, event_time_max, toInt64(0), toInt64(0), toInt64(0), toInt64(0),
             toInt64(0), toInt64(0), toUInt8(0) AS kept
      FROM {db}.stream_batches_latest FINAL) AS b
GROUP BY query;

CREATE OR REPLACE VIEW {db}.v_stream_offsets_latest AS
SELECT o.query AS query, tupleElement(t, 1) AS topic, toInt64(length(tupleElement(t, 2))) AS partitions,
       toInt64(arraySum(p -> tupleElement(p, 2), tupleElement(t, 2))) AS offsets_reached,
       o.last_batch AS batch_id, o.last_commit AS committed_at
FROM (SELECT c.query AS query, argMax(c.end_offsets, c.committed_at) AS last_offsets,
             argMax(c.batch_id, c.committed_at) AS last_batch, max(c.committed_at) AS last_commit
      FROM (SELECT b.query AS query, b.end_offsets AS end_offsets, b.batch_id AS batch_id,
                   b.committed_at AS committed_at
            FROM {db}.stream_batches AS b
            WHERE (b.query, b.committed_at) IN (SELECT query, max(committed_at) FROM {db}.stream_batches
                                                WHERE notEmpty(end_offsets) GROUP BY query)
              AND notEmpty(b.end_offsets)
            UNION ALL
            SELECT query, end_offsets, batch_id, committed_at FROM {db}.stream_batches_latest FINAL
            WHERE notEmpty(end_offsets)) AS c
      GROUP BY c.query) AS o
ARRAY JOIN arrayMap(kv -> (kv.1, JSONExtractKeysAndValues(kv.2, 'Int64')),
                    JSONExtractKeysAndValuesRaw(o.last_offsets)) AS t;
