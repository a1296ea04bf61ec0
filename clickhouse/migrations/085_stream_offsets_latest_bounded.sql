-- 085_stream_offsets_latest_bounded.sql: v_stream_offsets_latest (080_stream_health_views.sql) without reading every
-- micro-batch's end offsets through FINAL. Same columns and figures: per streaming query and Kafka topic, the sum over
-- the topic's partitions of the end offsets of the query's latest micro-batch (by commit time) that recorded them.
--
-- 080's definition took argMax(end_offsets, committed_at) over stream_batches FINAL: every row's ~1 KB JSON merged
-- and compared. Measured 2026-12-06 (make bench-bi ARGS="--only stream-health": 30 days of 5 s micro-batches per
-- query, 1,243,633 rows, 40 Kafka partitions in the raw query's end offsets; 2 cores at load 7-8): health_offsets
-- p50 884 ms, p95 1,623 ms (goal 500). Here the latest commit with end offsets per query is found first from
-- committed_at and the offsets' lengths only (no FINAL: a batch's rows carry the same end offsets, and a later row
-- of the same batch, the one FINAL keeps, is at least as late), and only the rows of that commit are read whole.
-- A batch whose latest row lacks end offsets (a checkpoint that is not a local folder) while an earlier row of the
-- same batch has them now shows that batch's offsets (080: the batch before it; both are the same planned offsets).
-- Idempotent: CREATE OR REPLACE.
CREATE OR REPLACE VIEW {db}.v_stream_offsets_latest AS
SELECT o.query AS query, tupleElement(t, 1) AS topic, toInt64(length(tupleElement(t, 2))) AS partitions,
       toInt64(arraySum(p -> tupleElement(p, 2), tupleElement(t, 2))) AS offsets_reached,
       o.last_batch AS batch_id, o.last_commit AS committed_at
FROM (SELECT b.query AS query, argMax(b.end_offsets, b.committed_at) AS last_offsets,
             argMax(b.batch_id, b.committed_at) AS last_batch, max(b.committed_at) AS last_commit
      FROM {db}.stream_batches AS b
      WHERE (b.query, b.committed_at) IN (SELECT query, max(committed_at) FROM {db}.stream_batches
                                          WHERE notEmpty(end_offsets) GROUP BY query)
        AND notEmpty(b.end_offsets)
      GROUP BY b.query) AS o
ARRAY JOIN arrayMap(kv -> (kv.1, JSONExtractKeysAndValues(kv.2, 'Int64')),
                    JSONExtractKeysAndValuesRaw(o.last_offsets)) AS t;
