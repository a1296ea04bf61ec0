-- 084_quarantine_refused_rows_apart.sql: quarantine_events holds two kinds of rows: Kafka records (invalid records
-- the stream read, producers' dead letters) and rows of a stream table that ClickHouse refused for their values
-- (topic refused:<table>, e.g. a 5-minute window; streaming.sinks.StreamSinks._set_aside): not Kafka records. Until
-- 2026-12-06 every count (the dashboard's cards, Power BI's Quarantined Events and Quarantine Rate = quarantined /
-- (quarantined + transactions read)) added both, so a refused window inflated the rate of Kafka records quarantined.
-- is_refused_row tells them apart (1 = topic refused:<table>); the Kafka-record counts and rates take 0, the refused
-- rows get a count of their own. Same views as 030 / 080 plus the column (CREATE OR REPLACE: idempotent).
CREATE OR REPLACE VIEW {db}.v_quarantine_summary AS
SELECT toInt64(toYYYYMMDD(ingested_at)) AS date_key, event_type, topic, reason, toInt64(count()) AS events,
       min(ingested_at) AS first_seen, max(ingested_at) AS last_seen,
       toInt64(startsWith(topic, 'refused:')) AS is_refused_row    -- 1: a stream table row ClickHouse refused
FROM {db}.quarantine_events FINAL
GROUP BY date_key, event_type, topic, reason;

CREATE OR REPLACE VIEW {db}.v_stream_quarantine_hourly AS
SELECT toInt64(toYYYYMMDD(q.ingested_at)) AS date_key, toStartOfHour(q.ingested_at) AS hour_start,
       q.event_type AS event_type, q.topic AS topic, q.reason AS reason, toInt64(count()) AS events,
       max(q.ingested_at) AS last_seen,
       toInt64(startsWith(q.topic, 'refused:')) AS is_refused_row  -- 1: a stream table row ClickHouse refused
FROM {db}.quarantine_events AS q FINAL
GROUP BY date_key, hour_start, event_type, topic, reason;
