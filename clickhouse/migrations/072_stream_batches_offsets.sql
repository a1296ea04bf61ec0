-- 072_stream_batches_offsets.sql: each committed micro-batch's Kafka end offsets (the query progress' endOffset of
-- every source, {topic: {partition: next offset}} as JSON), so a query whose checkpoint was lost resumes where it
-- ended instead of re-reading the topics from the earliest offsets: until 2026-12-06 a deleted raw checkpoint
-- re-read every retained record into the lake again, and its new batch ids (from 0 again) overwrote the old run's
-- files of the same ids (tests/test_streaming_guarantees.py). Idempotent (IF NOT EXISTS).
ALTER TABLE {db}.stream_batches
    ADD COLUMN IF NOT EXISTS end_offsets String DEFAULT '' COMMENT 'JSON {topic: {partition: next offset}} the micro-batch ended at (query progress endOffset, all sources); empty until its progress is recorded';
