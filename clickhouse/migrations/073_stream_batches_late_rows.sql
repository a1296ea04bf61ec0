-- 073_stream_batches_late_rows.sql: rows the windows query dropped per micro-batch as late (event time at or behind
-- the watermark, the largest event time seen - STREAM_WATERMARK; the query progress' numRowsDroppedByWatermark).
-- Until 2026-12-06 they were only in the in-process stats: a producer whose clock ran 10 minutes ahead (its events
-- and Kafka timestamps alike, so accepted) lifted the watermark to real time and 100 of 100 sales one minute late
-- (inside the 10-minute STREAM_WATERMARK) were dropped from the windows with no trace in ClickHouse or the log
-- (tests/test_streaming_guarantees.py). Idempotent (IF NOT EXISTS).
ALTER TABLE {db}.stream_batches
    ADD COLUMN IF NOT EXISTS late_rows_dropped Int64 DEFAULT 0 COMMENT 'rows: events dropped from the windows as late by this micro-batch (at or behind the watermark; still in the lake)';
