-- 082_quarantine_topic_id.sql: the Kafka topic id of a quarantined record's topic, added to quarantine_events'
-- sorting key. Until 2026-12-06 the key was (topic, partition, offset): when a topic is deleted and re-created
-- (same name, offsets from 0, a new topic id; the stream rewinds to it, StreamingJob.check_topics) a record
-- quarantined from the new topic at the partition and offset of one quarantined from the old topic replaced the
-- old row, and that quarantined record was lost from the quarantine (tests/test_streaming_sinks.py). The id comes
-- from the raw query's checkpoint (<checkpoint>/raw/topic-ids.json, stored by the micro-batch's topic check
-- before it reads), so a re-run of the same batch writes the same key (idempotent). Rows ClickHouse refused
-- (topic refused:<table>, partition -1, offset a hash of table + key) and rows written before this migration keep
-- topic_id ''. Same form as 081 (column without DEFAULT, sorting key extended in the ALTER that adds it; idempotent).
ALTER TABLE {db}.quarantine_events
    ADD COLUMN IF NOT EXISTS topic_id String COMMENT 'Kafka topic id (UUID) of the record''s topic incarnation; '''' for refused:<table> rows and rows before 2026-12-06',
    MODIFY ORDER BY (topic, partition, offset, topic_id);
