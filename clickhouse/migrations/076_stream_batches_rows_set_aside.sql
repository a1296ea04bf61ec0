-- 076_stream_batches_rows_set_aside.sql: rows of a micro-batch's ClickHouse writes that ClickHouse refused for
-- their values (a constraint, a value out of a column's range, text its parser refuses: streaming.sinks.ROW_ERROR_CODES)
-- and that the stream set aside in quarantine_events (or, when the quarantine row was refused too, in the dead-letter
-- topic) with ClickHouse's error, so the rest of the batch is written and the stream goes on. Until 2026-12-06 one
-- such row failed the query, and every restart re-ran the same batch and failed again. Idempotent (IF NOT EXISTS).
ALTER TABLE {db}.stream_batches
    ADD COLUMN IF NOT EXISTS rows_set_aside Int64 DEFAULT 0 COMMENT 'rows: rows of this micro-batch ClickHouse refused for their values, set aside in quarantine_events (topic refused:<table>) or the dead-letter topic';
