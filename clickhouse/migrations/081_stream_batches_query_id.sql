-- 081_stream_batches_query_id.sql: which run of a checkpoint a stream_batches row belongs to. query_id = Spark's
-- persistent StreamingQuery.id (kept in <SPARK_CHECKPOINT_DIR>/<query>/metadata: the same across restarts from the
-- same checkpoint, new for a new checkpoint; not runId, which changes at every restart), added to the sorting key.
-- Until 2026-12-06 the key was (query, batch_id): after a lost checkpoint Spark's batch ids restart at 0 and the new
-- run's rows replaced the old run's rows of the same ids, so every all-time total over stream_batches (the health
-- views, v_stream_batches, Power BI) forgot them (tests/test_streaming_guarantees.py: raw input_rows 42 for 70
-- records read). A batch re-run from its checkpoint still replaces its own row (same query id, same batch id).
-- Rows written before this migration keep query_id '' (their own run's key, as before).
-- ClickHouse accepts a sorting key extended by a column only in the ALTER that adds it, and only without a DEFAULT
-- expression (a String column's implicit default is ''); run again (the runner applies every file at each start)
-- the column exists, ADD ... IF NOT EXISTS does nothing and the same ORDER BY is no change (checked on chDB).
ALTER TABLE {db}.stream_batches
    ADD COLUMN IF NOT EXISTS query_id String COMMENT 'Spark StreamingQuery.id of the checkpoint run that wrote the micro-batch ('''' before 2026-12-06)',
    MODIFY ORDER BY (query, batch_id, query_id);
