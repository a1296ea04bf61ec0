-- 040_stream_column_comments.sql: column comments of the streaming tables that no longer say what the stream
-- writes. Since 2026-12-06 sales_velocity is a trailing rate (streaming.transforms.trailing_velocity), while
-- 001_streaming.sql (applied, so left as it is) still calls it 'units_sold per hour' of the window.
-- Idempotent: COMMENT COLUMN only changes metadata; re-run by every migrate().
ALTER TABLE {db}.sales_metrics_5m COMMENT COLUMN sales_velocity 'units/hour, trailing rate: units sold by the store x SKU in its windows ending in the STREAM_VELOCITY_HOURS (24) up to window_end / min(STREAM_VELOCITY_HOURS, hours since its first known window, at least 1)';
ALTER TABLE {db}.store_metrics_5m COMMENT COLUMN sales_velocity 'units/hour, trailing rate: units sold by the store in its windows ending in the STREAM_VELOCITY_HOURS (24) up to window_end / min(STREAM_VELOCITY_HOURS, hours since its first known window, at least 1)';
